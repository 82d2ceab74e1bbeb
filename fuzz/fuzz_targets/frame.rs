//! Frame arbitrary bytes as a TCP stream. Frames lie within the buffer; a frame stays the
//! same frame when more bytes follow; every prefix of a frame is incomplete (never an
//! error, which would close a healthy connection); and a framed message parses the same
//! alone or followed by more bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sip_core::message::{Frame, MAX_MESSAGE_SIZE, frame_stream, parse};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    for _ in 0..16 {
        match frame_stream(rest) {
            Ok(Frame::KeepAlive(n)) => {
                assert!(n > 0 && n <= rest.len());
                assert!(rest[..n].iter().all(|&c| c == b'\r' || c == b'\n'));
                rest = &rest[n..];
            }
            Ok(Frame::Message(n)) => {
                assert!(n > 0 && n <= rest.len());
                assert_eq!(frame_stream(&rest[..n]), Ok(Frame::Message(n)));
                let step = (n / 16).max(1);
                for k in (1..n).step_by(step).chain([n - 1]) {
                    assert_eq!(
                        frame_stream(&rest[..k]),
                        Ok(Frame::Incomplete),
                        "prefix {k} of a {n}-byte frame"
                    );
                }
                // A framed message parses as the same datagram with or without what follows.
                if let Ok(m) = parse(&rest[..n]) {
                    if rest.len() <= MAX_MESSAGE_SIZE {
                        assert_eq!(parse(rest).as_ref(), Ok(&m));
                    }
                }
                rest = &rest[n..];
            }
            Ok(Frame::Incomplete) | Err(_) => break,
        }
    }
});
