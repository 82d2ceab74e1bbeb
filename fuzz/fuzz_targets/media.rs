//! Arbitrary bytes as what the gateway takes from the network on its media path: an SDP offer
//! (parsed, negotiated, answered, SRTP keys included) and an RTP or SRTP datagram. Nothing may
//! panic, no datagram may pass SRTP authentication, and an answer the gateway writes must
//! parse back as the law and transport it chose.

#![no_main]

use libfuzzer_sys::fuzz_target;
use media::g711::Law;
use media::sdp::{Direction, SessionParams, answer, negotiate, parse_audio, payload_type_for};

fuzz_target!(|data: &[u8]| {
    let _ = media::rtp::parse(data);
    let key = media::srtp::MasterKey::from_bytes(&[7; 30]);
    let mut rx = media::srtp::SrtpContext::new(media::srtp::Suite::AesCm128HmacSha1_80, &key);
    assert!(rx.unprotect(data).is_err(), "a forgery authenticated");
    let Ok(offer) = parse_audio(data) else { return };
    let Ok(law) = negotiate(&offer, Law::Pcmu) else { return };
    let Some(pt) = payload_type_for(&offer, law) else { return };
    let p = SessionParams {
        ip: "127.0.0.1".parse().expect("ip"),
        port: 4000,
        session_id: 1,
        version: 1,
        law,
        direction: Direction::SendRecv,
        // Answer SRTP with the offer's first usable line (our key: any will do here).
        crypto: offer.crypto.first().map(|c| c.answer(key.clone())),
    };
    if let Ok(a) = answer(data, &p, pt, None) {
        let back = parse_audio(&a).expect("our answer parses");
        assert_eq!(back.laws.first(), Some(&law));
        assert_eq!(back.transport, offer.transport);
    }
});
