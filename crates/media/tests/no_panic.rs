//! Parsers fed arbitrary bytes return a value or a typed error, never panic.

use proptest::prelude::*;
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

    #[test]
    fn wav_read_never_panics(file in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = wav::read(file.as_slice());
        let mut riff = b"RIFF\0\0\0\0WAVE".to_vec();
        riff.extend_from_slice(&file);
        let _ = wav::read_with_limit(riff.as_slice(), 1024);
    }
}
