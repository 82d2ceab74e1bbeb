//! Parsers fed arbitrary bytes return a value or a typed error, never panic.

use proptest::prelude::*;
use trustring_media::srtp::{Crypto, MasterKey, SrtpContext, SrtpError, Suite};
use trustring_media::{rtp, sdp, wav};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn rtp_parse_never_panics(datagram in proptest::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(p) = rtp::parse(&datagram) {
            prop_assert!(p.payload.len() + 12 <= datagram.len());
        }
    }

    /// A valid header followed by arbitrary bytes exercises the CSRC/extension/padding paths.
    #[test]
    fn rtp_parse_never_panics_on_v2(
        first in any::<u8>(),
        rest in proptest::collection::vec(any::<u8>(), 0..128),
    ) {
        let mut datagram = vec![0x80 | (first & 0x3F)];
        datagram.extend_from_slice(&rest);
        let _ = rtp::parse(&datagram);
    }

    #[test]
    fn rtp_write_parse_round_trip(
        pt in 0u8..128, marker: bool, seq: u16, ts: u32, ssrc: u32,
        payload in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut buf = Vec::new();
        rtp::write(pt, marker, seq, ts, ssrc, &payload, &mut buf);
        let p = rtp::parse(&buf).expect("own packet parses");
        prop_assert_eq!(
            (p.payload_type, p.marker, p.sequence, p.timestamp, p.ssrc, p.payload),
            (pt, marker, seq, ts, ssrc, payload.as_slice())
        );
    }

    #[test]
    fn sdp_parse_audio_never_panics(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = sdp::parse_audio(&body);
    }

    /// SDP-shaped text: lines drawn from the grammar's pieces with arbitrary values.
    #[test]
    fn sdp_parse_audio_never_panics_on_sdp_like_text(
        lines in proptest::collection::vec(
            ("[vcmat]", "[ -~]{0,40}").prop_map(|(k, v)| format!("{k}={v}")), 0..16),
    ) {
        let body = format!("v=0\r\n{}", lines.join("\r\n"));
        if let Ok(offer) = sdp::parse_audio(body.as_bytes()) {
            prop_assert_eq!(offer.laws.len(), offer.payload_types.len());
            prop_assert!(offer.port != 0);
        }
    }

    /// Whatever arrives on an SRTP port: a typed refusal (a forgery never authenticates),
    /// never a panic.
    #[test]
    fn srtp_unprotect_never_panics_nor_accepts_forgeries(
        first in any::<u8>(),
        rest in proptest::collection::vec(any::<u8>(), 0..256),
        short_tag: bool,
    ) {
        let suite = if short_tag { Suite::AesCm128HmacSha1_32 } else { Suite::AesCm128HmacSha1_80 };
        let mut rx = SrtpContext::new(suite, &MasterKey::from_bytes(&[5; 30]));
        let mut datagram = vec![0x80 | (first & 0x3F)];
        datagram.extend_from_slice(&rest);
        let r = rx.unprotect(&datagram);
        prop_assert!(matches!(r, Err(SrtpError::Malformed | SrtpError::Auth)), "{:?}", r);
    }

    /// Any packet survives protect then unprotect, across sequence numbers and suites; one
    /// flipped bit anywhere is refused.
    #[test]
    fn srtp_round_trip_and_any_flipped_bit_is_refused(
        seq: u16, ts: u32, ssrc: u32, key in proptest::collection::vec(any::<u8>(), 30),
        payload in proptest::collection::vec(any::<u8>(), 0..200),
        flip in any::<proptest::sample::Index>(), short_tag: bool,
    ) {
        let suite = if short_tag { Suite::AesCm128HmacSha1_32 } else { Suite::AesCm128HmacSha1_80 };
        let key: [u8; 30] = key.try_into().expect("30 bytes");
        let master = MasterKey::from_bytes(&key);
        let mut tx = SrtpContext::new(suite, &master);
        let mut rx = SrtpContext::new(suite, &master);
        let mut clear = Vec::new();
        rtp::write(0, false, seq, ts, ssrc, &payload, &mut clear);
        let sealed = tx.protect(&clear).expect("protects");
        let mut bad = sealed.clone();
        let bit = flip.index(bad.len() * 8);
        bad[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(rx.unprotect(&bad).is_err());
        prop_assert_eq!(rx.unprotect(&sealed).expect("opens"), clear);
    }

    #[test]
    fn crypto_parse_never_panics(value in "[ -~]{0,120}") {
        if let Ok(c) = Crypto::parse(&value) {
            prop_assert_eq!(Crypto::parse(&c.to_value()), Ok(c));
        }
    }

    #[test]
    fn wav_read_never_panics(file in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = wav::read(file.as_slice());
        let mut riff = b"RIFF\0\0\0\0WAVE".to_vec();
        riff.extend_from_slice(&file);
        let _ = wav::read_with_limit(riff.as_slice(), 1024);
    }
}
