//! RTP (RFC 3550 §5.1) fixed header: parse a received datagram, write one to send.
//!
//! Only what a G.711 endpoint needs: the payload type, marker, sequence number, timestamp
//! and SSRC of each packet, with its payload. Contributing sources and the header extension
//! are validated and skipped, padding is removed. RTCP is not parsed; [`looks_like_rtcp`]
//! lets a receiver that shares one port (RFC 5761) drop it.

/// The fixed header length (RFC 3550 §5.1).
pub const HEADER_LEN: usize = 12;

/// The only RTP version (RFC 3550 §5.1: "This specification defines the version to be two").
pub const VERSION: u8 = 2;

/// Why a datagram is not a valid RTP packet. A receiver drops such a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RtpError {
    /// Shorter than the 12-byte fixed header.
    #[error("datagram of {0} bytes is shorter than the RTP fixed header")]
    TooShort(usize),
    /// The version field is not 2.
    #[error("RTP version {0}, expected 2")]
    BadVersion(u8),
    /// The CSRC list announced by the CC field runs past the end of the datagram.
    #[error("CSRC list of {0} entries runs past the end of the datagram")]
    CsrcOverflow(u8),
    /// The header extension (X bit) runs past the end of the datagram.
    #[error("header extension runs past the end of the datagram")]
    ExtensionOverflow,
    /// The P bit is set but the padding count is zero or larger than the payload.
    #[error("padding count {0} is invalid for the packet")]
    BadPadding(u8),
}

/// A parsed RTP packet borrowing its payload from the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    /// The payload type (7 bits): 0 PCMU, 8 PCMA, 96..=127 dynamic (RFC 3551).
    pub payload_type: u8,
    /// The marker bit: for audio, the first packet of a talkspurt (RFC 3551 §4.1).
    pub marker: bool,
    /// The sequence number, +1 per packet, wrapping.
    pub sequence: u16,
    /// The sampling instant of the first octet of the payload, in clock-rate units.
    pub timestamp: u32,
    /// The synchronisation source.
    pub ssrc: u32,
    /// The payload, without CSRCs, header extension or padding.
    pub payload: &'a [u8],
}

impl RtpPacket<'_> {
    /// Serialises the packet (no CSRCs, no extension, no padding), appending to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        write(
            self.payload_type,
            self.marker,
            self.sequence,
            self.timestamp,
            self.ssrc,
            self.payload,
            out,
        );
    }
}

/// Parses an RTP datagram (RFC 3550 §5.1, with the validity checks of Appendix A.1 that a
/// single packet allows: version, padding, CSRC and extension lengths).
pub fn parse(datagram: &[u8]) -> Result<RtpPacket<'_>, RtpError> {
    let Some((header, _)) = datagram.split_first_chunk::<HEADER_LEN>() else {
        return Err(RtpError::TooShort(datagram.len()));
    };
    let version = header[0] >> 6;
    if version != VERSION {
        return Err(RtpError::BadVersion(version));
    }
    let has_padding = header[0] & 0x20 != 0;
    let has_extension = header[0] & 0x10 != 0;
    let csrc_count = header[0] & 0x0F;
    let marker = header[1] & 0x80 != 0;
    let payload_type = header[1] & 0x7F;
    let sequence = u16::from_be_bytes([header[2], header[3]]);
    let timestamp = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    let ssrc = u32::from_be_bytes([header[8], header[9], header[10], header[11]]);

    let mut start = HEADER_LEN + 4 * usize::from(csrc_count);
    if start > datagram.len() {
        return Err(RtpError::CsrcOverflow(csrc_count));
    }
    if has_extension {
        // 16 bits profile-defined, 16 bits length in 32-bit words, then the words.
        let Some(ext) = datagram.get(start..start + 4) else {
            return Err(RtpError::ExtensionOverflow);
        };
        let words = usize::from(u16::from_be_bytes([ext[2], ext[3]]));
        start += 4 + 4 * words;
        if start > datagram.len() {
            return Err(RtpError::ExtensionOverflow);
        }
    }
    let mut end = datagram.len();
    if has_padding {
        // The last octet counts the padding octets, itself included (RFC 3550 §5.1).
        let count = datagram[end - 1];
        if count == 0 || usize::from(count) > end - start {
            return Err(RtpError::BadPadding(count));
        }
        end -= usize::from(count);
    }
    Ok(RtpPacket {
        payload_type,
        marker,
        sequence,
        timestamp,
        ssrc,
        payload: &datagram[start..end],
    })
}

/// Writes an RTP packet with a 12-byte header (version 2, no padding, extension or CSRC),
/// appending to `out`. Only the low 7 bits of `payload_type` are used.
pub fn write(
    payload_type: u8,
    marker: bool,
    sequence: u16,
    timestamp: u32,
    ssrc: u32,
    payload: &[u8],
    out: &mut Vec<u8>,
) {
    out.reserve(HEADER_LEN + payload.len());
    out.push(VERSION << 6);
    out.push((u8::from(marker) << 7) | (payload_type & 0x7F));
    out.extend_from_slice(&sequence.to_be_bytes());
    out.extend_from_slice(&timestamp.to_be_bytes());
    out.extend_from_slice(&ssrc.to_be_bytes());
    out.extend_from_slice(payload);
}

/// Whether a datagram on a shared RTP/RTCP port is RTCP (RFC 5761 §4: second octet, the
/// RTCP packet type, in 192..=223, which RTP payload types 64..=95 with marker would alias).
pub fn looks_like_rtcp(datagram: &[u8]) -> bool {
    datagram.len() >= 8 && datagram[0] >> 6 == VERSION && (192..=223).contains(&datagram[1])
}

/// The sending side of one RTP stream: SSRC, sequence number and timestamp.
///
/// RFC 3550 §5.1 wants the initial sequence number and timestamp random, and §8 the SSRC;
/// this crate does no IO, so the caller supplies a random seed and the three values are
/// derived from it.
#[derive(Debug, Clone)]
pub struct RtpSender {
    payload_type: u8,
    ssrc: u32,
    sequence: u16,
    timestamp: u32,
    marker_next: bool,
}

impl RtpSender {
    /// A sender whose SSRC, first sequence number and first timestamp derive from `seed`
    /// (pass a random value). The first packet carries the marker bit (RFC 3551 §4.1).
    pub fn new(payload_type: u8, seed: u64) -> Self {
        let a = splitmix64(seed);
        let b = splitmix64(a);
        Self::with_state(payload_type, a as u32, (a >> 32) as u16, b as u32)
    }

    /// A sender with explicit initial values (tests, or continuing a stream).
    pub fn with_state(payload_type: u8, ssrc: u32, sequence: u16, timestamp: u32) -> Self {
        Self {
            payload_type: payload_type & 0x7F,
            ssrc,
            sequence,
            timestamp,
            marker_next: true,
        }
    }

    /// Appends the next packet carrying `payload` to `out`, then advances the sequence number
    /// by one and the timestamp by `samples` (160 for a 20 ms G.711 frame).
    pub fn next_packet(&mut self, payload: &[u8], samples: u32, out: &mut Vec<u8>) {
        write(
            self.payload_type,
            self.marker_next,
            self.sequence,
            self.timestamp,
            self.ssrc,
            payload,
            out,
        );
        self.marker_next = false;
        self.sequence = self.sequence.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(samples);
    }

    /// Skips `samples` of timestamp without sending (silence suppression), and marks the next
    /// packet as the start of a talkspurt.
    pub fn skip(&mut self, samples: u32) {
        self.timestamp = self.timestamp.wrapping_add(samples);
        self.marker_next = true;
    }

    /// Changes the payload type of the following packets (after a re-negotiation).
    pub fn set_payload_type(&mut self, payload_type: u8) {
        self.payload_type = payload_type & 0x7F;
    }

    /// The payload type of the next packet.
    pub fn payload_type(&self) -> u8 {
        self.payload_type
    }

    /// The stream's SSRC.
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// The sequence number the next packet will carry.
    pub fn sequence(&self) -> u16 {
        self.sequence
    }

    /// The timestamp the next packet will carry.
    pub fn timestamp(&self) -> u32 {
        self.timestamp
    }
}

/// SplitMix64: spreads a seed over 64 bits so that nearby seeds give unrelated streams.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_parse_round_trips() {
        let payload = [0xFFu8; 160];
        let mut buf = Vec::new();
        write(8, true, 65535, 0xDEAD_BEEF, 0x1234_5678, &payload, &mut buf);
        assert_eq!(buf.len(), 172);
        assert_eq!(&buf[..2], &[0x80, 0x88]);
        let p = parse(&buf).expect("valid packet");
        assert_eq!(
            p,
            RtpPacket {
                payload_type: 8,
                marker: true,
                sequence: 65535,
                timestamp: 0xDEAD_BEEF,
                ssrc: 0x1234_5678,
                payload: &payload,
            }
        );
        let mut again = Vec::new();
        p.write_to(&mut again);
        assert_eq!(again, buf);
    }

    #[test]
    fn empty_payload_is_valid() {
        let mut buf = Vec::new();
        write(0, false, 1, 2, 3, &[], &mut buf);
        assert_eq!(parse(&buf).expect("valid").payload, &[] as &[u8]);
    }

    #[test]
    fn skips_csrcs_extension_and_padding() {
        let mut buf = vec![0x80 | 0x20 | 0x10 | 2, 0x00, 0, 7, 0, 0, 0, 160, 1, 2, 3, 4];
        buf.extend_from_slice(&[0xAA; 8]); // two CSRCs
        buf.extend_from_slice(&[0xBE, 0xDE, 0x00, 0x01, 1, 2, 3, 4]); // one-word extension
        buf.extend_from_slice(&[9, 9, 9]); // payload
        buf.extend_from_slice(&[0, 0, 3]); // three octets of padding
        let p = parse(&buf).expect("valid");
        assert_eq!(p.payload, &[9, 9, 9]);
        assert_eq!(p.sequence, 7);
        assert_eq!(p.timestamp, 160);
        assert_eq!(p.ssrc, 0x0102_0304);
    }

    #[test]
    fn rejects_malformed_datagrams() {
        assert_eq!(parse(&[]), Err(RtpError::TooShort(0)));
        assert_eq!(parse(&[0x80; 11]), Err(RtpError::TooShort(11)));
        let mut v1 = vec![0x40, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(parse(&v1), Err(RtpError::BadVersion(1)));
        v1[0] = 0xC0;
        assert_eq!(parse(&v1), Err(RtpError::BadVersion(3)));
        // Fifteen CSRCs announced, none present.
        let csrc = [0x8F, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
        assert_eq!(parse(&csrc), Err(RtpError::CsrcOverflow(15)));
        // Extension header missing, then extension words missing.
        let mut ext = vec![0x90, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xBE, 0xDE];
        assert_eq!(parse(&ext), Err(RtpError::ExtensionOverflow));
        ext.extend_from_slice(&[0xFF, 0xFF, 0, 0, 0, 0]);
        assert_eq!(parse(&ext), Err(RtpError::ExtensionOverflow));
        // Padding count zero, and larger than what follows the header.
        let mut pad = vec![0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0];
        assert_eq!(parse(&pad), Err(RtpError::BadPadding(0)));
        *pad.last_mut().expect("non-empty") = 3;
        assert_eq!(parse(&pad), Err(RtpError::BadPadding(3)));
        *pad.last_mut().expect("non-empty") = 2;
        assert_eq!(parse(&pad).expect("all padding").payload, &[] as &[u8]);
    }

    #[test]
    fn sender_advances_and_marks_talkspurts() {
        let mut s = RtpSender::with_state(0, 42, 65535, u32::MAX - 100);
        let mut buf = Vec::new();
        s.next_packet(&[0xFF; 160], 160, &mut buf);
        let p = parse(&buf).expect("valid");
        assert!(p.marker);
        assert_eq!(
            (p.sequence, p.timestamp, p.ssrc),
            (65535, u32::MAX - 100, 42)
        );
        buf.clear();
        s.next_packet(&[0xFF; 160], 160, &mut buf);
        let p = parse(&buf).expect("valid");
        assert!(!p.marker);
        assert_eq!((p.sequence, p.timestamp), (0, 59));
        s.skip(320);
        s.set_payload_type(8);
        buf.clear();
        s.next_packet(&[0xD5; 160], 160, &mut buf);
        let p = parse(&buf).expect("valid");
        assert!(p.marker);
        assert_eq!((p.payload_type, p.sequence, p.timestamp), (8, 1, 539));
        assert_eq!((s.sequence(), s.timestamp(), s.payload_type()), (2, 699, 8));
    }

    #[test]
    fn seeds_give_distinct_streams() {
        let a = RtpSender::new(0, 1);
        let b = RtpSender::new(0, 2);
        assert_ne!(a.ssrc(), b.ssrc());
        assert_ne!((a.sequence(), a.timestamp()), (b.sequence(), b.timestamp()));
        assert_eq!(RtpSender::new(0, 1).ssrc(), a.ssrc());
    }

    #[test]
    fn rtcp_is_recognised() {
        // A receiver report header: V=2, RC=0, PT=201, length 1.
        assert!(looks_like_rtcp(&[0x80, 201, 0, 1, 0, 0, 0, 1]));
        let mut rtp = Vec::new();
        write(0, true, 1, 1, 1, &[0; 4], &mut rtp);
        assert!(!looks_like_rtcp(&rtp));
    }
}
