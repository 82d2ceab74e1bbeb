//! Parse arbitrary bytes. Whatever parses must serialize and parse back equal (header
//! sections that are not UTF-8 included: their raw bytes go out as received), and every
//! header `parse` validated must be readable by the typed parsers ("parse, don't validate").
//! A refused request's error response must serialize.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sip_core::message::{CSeq, HeaderName, MAX_MESSAGE_SIZE, Message, NameAddr, Via, parse};

fuzz_target!(|data: &[u8]| {
    let m = match parse(data) {
        Ok(m) => m,
        Err(e) => {
            if let Some(resp) = e.response() {
                assert!(matches!(resp.status, 400 | 505 | 513), "{}", resp.status);
                let _ = resp.to_bytes();
            }
            return;
        }
    };
    let headers = m.headers();
    assert!(!headers.contains(&HeaderName::ContentLength));
    for h in &headers.0 {
        match h.name {
            HeaderName::Via => {
                Via::parse(&h.value).unwrap_or_else(|e| panic!("Via {:?}: {e}", h.value));
            }
            HeaderName::From | HeaderName::To | HeaderName::Route | HeaderName::RecordRoute => {
                NameAddr::parse(&h.value).unwrap_or_else(|e| panic!("{:?}: {e}", h.value));
            }
            HeaderName::Contact if h.value != "*" => {
                NameAddr::parse(&h.value).unwrap_or_else(|e| panic!("{:?}: {e}", h.value));
            }
            HeaderName::CSeq => {
                CSeq::parse(&h.value).unwrap_or_else(|e| panic!("{:?}: {e}", h.value));
            }
            _ => {}
        }
    }
    let wire = match &m {
        Message::Request(r) => {
            assert_eq!(r.cseq().method, r.method);
            assert!(r.top_via().is_some() && r.from().is_some() && r.to().is_some());
            r.to_bytes()
        }
        Message::Response(r) => {
            assert!((100..=699).contains(&r.status));
            r.to_bytes()
        }
    };
    if wire.len() > MAX_MESSAGE_SIZE {
        return; // long names and one Via per line can grow a message past the limit
    }
    match parse(&wire) {
        Ok(again) => assert_eq!(again, m),
        Err(e) => panic!(
            "serialized message does not reparse: {e:?}\n{}",
            String::from_utf8_lossy(&wire)
        ),
    }
});
