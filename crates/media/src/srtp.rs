//! SRTP (RFC 3711) with the AES_CM_128_HMAC_SHA1_80 and _32 suites, keyed by SDES
//! (RFC 4568 `a=crypto` lines), for the gateway's media when signalling is protected by TLS
//! (R27).
//!
//! Why these suites: AES_CM_128_HMAC_SHA1_80 is the one suite RFC 4568 §6.2 makes mandatory
//! and every SDES client implements (baresip, linphone, Asterisk, hardware phones). Only RTP
//! is protected here; the gateway drops RTCP, so SRTCP is not needed.
//!
//! Per RFC 3711: session keys are derived from the master key and salt (key derivation rate
//! 0, §4.3); each packet's payload is encrypted with AES in counter mode under an IV built
//! from the session salt, the SSRC and the 48-bit packet index (§4.1.1); the authentication
//! tag is HMAC-SHA1 over the packet and the rollover counter, truncated (§4.2). The receiver
//! estimates the index from the sequence number (§3.3.1), checks the tag in constant time
//! before anything else, and refuses replays with a 64-packet window (§3.3.2).

use std::collections::HashMap;

use aes::Aes128;
use aes::cipher::{KeyInit, KeyIvInit, StreamCipher};
use hmac::{Hmac, Mac};
use sha1::Sha1;
use subtle::ConstantTimeEq;

type Aes128Ctr = ctr::Ctr128BE<Aes128>;

/// Master key length (AES-128).
pub const MASTER_KEY_LEN: usize = 16;
/// Master salt length (112 bits).
pub const MASTER_SALT_LEN: usize = 14;
const AUTH_KEY_LEN: usize = 20;
const REPLAY_WINDOW: u64 = 64;

/// Why an SRTP packet or a crypto attribute was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SrtpError {
    /// Too short for an RTP header and the tag, or a header that runs past the end.
    #[error("packet too short or malformed for SRTP")]
    Malformed,
    /// The authentication tag is wrong: forged, corrupted, or another key.
    #[error("SRTP authentication failed")]
    Auth,
    /// This packet index was already received (or is older than the replay window).
    #[error("SRTP replay")]
    Replay,
    /// An `a=crypto` attribute that is not `TAG SUITE inline:KEY[|…]` with a known suite and
    /// a 30-byte base64 key.
    #[error("unusable a=crypto attribute")]
    BadCrypto,
}

/// An SRTP crypto suite (RFC 4568 §6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Suite {
    /// AES-128 counter mode, HMAC-SHA1 tag of 80 bits.
    AesCm128HmacSha1_80,
    /// AES-128 counter mode, HMAC-SHA1 tag of 32 bits.
    AesCm128HmacSha1_32,
}

impl Suite {
    /// The suite's name in `a=crypto`.
    pub fn name(self) -> &'static str {
        match self {
            Self::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            Self::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
        }
    }

    /// The suite named `name` (case-insensitive), if supported.
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::AesCm128HmacSha1_80, Self::AesCm128HmacSha1_32]
            .into_iter()
            .find(|s| s.name().eq_ignore_ascii_case(name))
    }

    /// Bytes of authentication tag per packet.
    pub fn tag_len(self) -> usize {
        match self {
            Self::AesCm128HmacSha1_80 => 10,
            Self::AesCm128HmacSha1_32 => 4,
        }
    }
}

/// A master key and salt.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKey {
    /// The master key.
    pub key: [u8; MASTER_KEY_LEN],
    /// The master salt.
    pub salt: [u8; MASTER_SALT_LEN],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// Key and salt from 30 bytes (key first, as in the SDES `inline:` value).
    pub fn from_bytes(b: &[u8; MASTER_KEY_LEN + MASTER_SALT_LEN]) -> Self {
        let mut key = [0u8; MASTER_KEY_LEN];
        let mut salt = [0u8; MASTER_SALT_LEN];
        key.copy_from_slice(&b[..MASTER_KEY_LEN]);
        salt.copy_from_slice(&b[MASTER_KEY_LEN..]);
        Self { key, salt }
    }

    fn concat(&self) -> [u8; MASTER_KEY_LEN + MASTER_SALT_LEN] {
        let mut b = [0u8; MASTER_KEY_LEN + MASTER_SALT_LEN];
        b[..MASTER_KEY_LEN].copy_from_slice(&self.key);
        b[MASTER_KEY_LEN..].copy_from_slice(&self.salt);
        b
    }
}

/// One `a=crypto` attribute (RFC 4568 §9.1): `TAG SUITE inline:KEY_SALT[|LIFETIME][|MKI:LEN]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crypto {
    /// The attribute's tag (the answer echoes the offer's).
    pub tag: u32,
    /// The suite.
    pub suite: Suite,
    /// The key and salt of whoever *sends* with this attribute.
    pub key: MasterKey,
}

impl Crypto {
    /// Parses the value of an `a=crypto:` attribute (after the colon).
    ///
    /// The line is unusable ([`SrtpError::BadCrypto`]) unless it has exactly one `inline:`
    /// key of 30 bytes for a known suite. A lifetime is accepted and ignored (no re-keying:
    /// the suites allow 2^48 packets per key, far beyond any call). An MKI makes the line
    /// unusable (we send none and cannot strip one), and so do several keys in one line (they
    /// need MKIs) and every session parameter (RFC 4568 §6.3: `KDR`, `UNENCRYPTED_SRTP`,
    /// `UNAUTHENTICATED_SRTP`, `FEC_KEY`, … change how packets are protected, and one not
    /// understood must not be ignored) except the window size hint `WSH=`, which is only a
    /// hint.
    pub fn parse(value: &str) -> Result<Self, SrtpError> {
        use base64::Engine as _;
        let mut parts = value.split_ascii_whitespace();
        let tag = parts
            .next()
            .filter(|t| (1..=9).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|t| t.parse().ok())
            .ok_or(SrtpError::BadCrypto)?;
        let suite = parts
            .next()
            .and_then(Suite::from_name)
            .ok_or(SrtpError::BadCrypto)?;
        let params = parts.next().ok_or(SrtpError::BadCrypto)?;
        if parts.any(|session_param| !session_param.starts_with("WSH=")) {
            return Err(SrtpError::BadCrypto);
        }
        if params.contains(';') {
            return Err(SrtpError::BadCrypto); // several keys
        }
        let inline = params.strip_prefix("inline:").ok_or(SrtpError::BadCrypto)?;
        let mut fields = inline.split('|');
        let key_b64 = fields.next().ok_or(SrtpError::BadCrypto)?;
        if fields.any(|f| f.contains(':')) {
            return Err(SrtpError::BadCrypto); // an MKI
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(key_b64)
            .map_err(|_| SrtpError::BadCrypto)?;
        let bytes: [u8; MASTER_KEY_LEN + MASTER_SALT_LEN] =
            raw.try_into().map_err(|_| SrtpError::BadCrypto)?;
        Ok(Self {
            tag,
            suite,
            key: MasterKey::from_bytes(&bytes),
        })
    }

    /// The answer to this offered attribute (RFC 4568 §7.1.2): the same tag and suite, with
    /// the answerer's own `key` (each side sends under its own key).
    pub fn answer(&self, key: MasterKey) -> Self {
        Self {
            tag: self.tag,
            suite: self.suite,
            key,
        }
    }

    /// The attribute's value, e.g. `1 AES_CM_128_HMAC_SHA1_80 inline:…`. It holds the
    /// master key: it belongs in an SDP body sent over protected signalling, never in a log.
    pub fn to_value(&self) -> String {
        use base64::Engine as _;
        format!(
            "{} {} inline:{}",
            self.tag,
            self.suite.name(),
            base64::engine::general_purpose::STANDARD.encode(self.key.concat())
        )
    }
}

/// AES-CM keystream of `out.len()` bytes for `key` and 16-byte `iv` (RFC 3711 §4.1.1).
fn keystream_xor(key: &[u8; 16], iv: &[u8; 16], data: &mut [u8]) {
    let mut c = Aes128Ctr::new(key.into(), iv.into());
    c.apply_keystream(data);
}

/// The session key of `label` (RFC 3711 §4.3.1, key derivation rate 0).
fn derive(master: &MasterKey, label: u8, out: &mut [u8]) {
    let mut iv = [0u8; 16];
    iv[..MASTER_SALT_LEN].copy_from_slice(&master.salt);
    // key_id = label || r (r = 0): the label sits 7 bytes from the salt's end.
    iv[MASTER_SALT_LEN - 7] ^= label;
    out.fill(0);
    keystream_xor(&master.key, &iv, out);
}

/// Receive state of one SSRC.
#[derive(Debug, Clone, Copy)]
struct Stream {
    roc: u32,
    highest_seq: u16,
    /// Highest index accepted and a bitmap of the 64 before it (bit 0 = highest).
    highest: u64,
    window: u64,
}

/// One direction of SRTP: protects what we send, or checks and opens what we receive.
pub struct SrtpContext {
    enc_key: [u8; 16],
    salt: [u8; MASTER_SALT_LEN],
    auth: Hmac<Sha1>,
    tag_len: usize,
    streams: HashMap<u32, Stream>,
}

impl std::fmt::Debug for SrtpContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrtpContext")
            .field("tag_len", &self.tag_len)
            .field("streams", &self.streams.len())
            .finish_non_exhaustive()
    }
}

/// Most SSRCs remembered per context (a peer cannot grow it without bound).
const MAX_STREAMS: usize = 16;

impl SrtpContext {
    /// A context for `suite` keyed with `master`.
    pub fn new(suite: Suite, master: &MasterKey) -> Self {
        let mut enc_key = [0u8; 16];
        derive(master, 0x00, &mut enc_key);
        let mut auth_key = [0u8; AUTH_KEY_LEN];
        derive(master, 0x01, &mut auth_key);
        let mut salt = [0u8; MASTER_SALT_LEN];
        derive(master, 0x02, &mut salt);
        // HMAC accepts any key length; 20 bytes never fails.
        let auth = <Hmac<Sha1> as KeyInit>::new_from_slice(&auth_key)
            .unwrap_or_else(|_| <Hmac<Sha1> as KeyInit>::new(&Default::default()));
        Self {
            enc_key,
            salt,
            auth,
            tag_len: suite.tag_len(),
            streams: HashMap::new(),
        }
    }

    /// A context for the sender of `crypto`.
    pub fn from_crypto(crypto: &Crypto) -> Self {
        Self::new(crypto.suite, &crypto.key)
    }

    fn iv(&self, ssrc: u32, index: u64) -> [u8; 16] {
        let mut iv = [0u8; 16];
        iv[..MASTER_SALT_LEN].copy_from_slice(&self.salt);
        for (i, b) in ssrc.to_be_bytes().iter().enumerate() {
            iv[4 + i] ^= b;
        }
        for (i, b) in index.to_be_bytes()[2..].iter().enumerate() {
            iv[8 + i] ^= b;
        }
        iv
    }

    fn tag(&self, authenticated: &[u8], roc: u32) -> [u8; 20] {
        let mut mac = self.auth.clone();
        mac.update(authenticated);
        mac.update(&roc.to_be_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Encrypts and tags an RTP packet (as [`crate::rtp::write`] makes it).
    pub fn protect(&mut self, rtp: &[u8]) -> Result<Vec<u8>, SrtpError> {
        let mut out = Vec::with_capacity(rtp.len() + self.tag_len);
        out.extend_from_slice(rtp);
        self.protect_in_place(&mut out)?;
        Ok(out)
    }

    /// As [`Self::protect`], in place: `packet` holds an RTP packet and becomes the SRTP
    /// packet (payload encrypted, tag appended). No allocation once `packet` has room for
    /// the tag. On error `packet` is unchanged.
    pub fn protect_in_place(&mut self, packet: &mut Vec<u8>) -> Result<(), SrtpError> {
        let header = header_len(packet).ok_or(SrtpError::Malformed)?;
        let (ssrc, seq) = ids(packet);
        let stream = self.streams.get(&ssrc).copied();
        let roc = match stream {
            Some(s) => {
                // A sequence number that wrapped around starts a new rollover.
                if seq < s.highest_seq && s.highest_seq - seq > 0x8000 {
                    s.roc.wrapping_add(1)
                } else {
                    s.roc
                }
            }
            None => 0,
        };
        if stream.is_none() && self.streams.len() >= MAX_STREAMS {
            self.streams.clear();
        }
        let index = (u64::from(roc) << 16) | u64::from(seq);
        let iv = self.iv(ssrc, index);
        keystream_xor(&self.enc_key, &iv, &mut packet[header..]);
        let tag = self.tag(packet, roc);
        packet.extend_from_slice(&tag[..self.tag_len]);
        let s = self.streams.entry(ssrc).or_insert(Stream {
            roc,
            highest_seq: seq,
            highest: index,
            window: 1,
        });
        if index >= s.highest {
            s.roc = roc;
            s.highest_seq = seq;
            s.highest = index;
        }
        Ok(())
    }

    /// Checks and decrypts an SRTP packet; the RTP packet it carried.
    pub fn unprotect(&mut self, srtp: &[u8]) -> Result<Vec<u8>, SrtpError> {
        let mut out = srtp.to_vec();
        self.unprotect_in_place(&mut out)?;
        Ok(out)
    }

    /// As [`Self::unprotect`], in place: `packet` holds an SRTP packet and becomes the RTP
    /// packet it carried (tag removed, payload decrypted). On error `packet` is unchanged
    /// and nothing about the stream is learnt from it (the tag is checked, in constant
    /// time, before anything is decrypted or remembered).
    pub fn unprotect_in_place(&mut self, packet: &mut Vec<u8>) -> Result<(), SrtpError> {
        if packet.len() < crate::rtp::HEADER_LEN + self.tag_len {
            return Err(SrtpError::Malformed);
        }
        let body_len = packet.len() - self.tag_len;
        let (body, tag) = packet.split_at(body_len);
        let header = header_len(body).ok_or(SrtpError::Malformed)?;
        let (ssrc, seq) = ids(body);
        let stream = self.streams.get(&ssrc).copied();
        // RFC 3711 §3.3.1: the most likely rollover counter for this sequence number.
        let roc = match stream {
            None => 0,
            Some(s) if s.highest_seq < 0x8000 => {
                if seq > s.highest_seq && seq - s.highest_seq > 0x8000 {
                    s.roc.wrapping_sub(1)
                } else {
                    s.roc
                }
            }
            Some(s) => {
                if s.highest_seq - 0x8000 > seq {
                    s.roc.wrapping_add(1)
                } else {
                    s.roc
                }
            }
        };
        let index = (u64::from(roc) << 16) | u64::from(seq);
        if let Some(s) = stream
            && index <= s.highest
        {
            let age = s.highest - index;
            if age >= REPLAY_WINDOW || s.window & (1 << age) != 0 {
                return Err(SrtpError::Replay);
            }
        }
        let expected = self.tag(body, roc);
        if !bool::from(expected[..self.tag_len].ct_eq(tag)) {
            return Err(SrtpError::Auth);
        }
        packet.truncate(body_len);
        let iv = self.iv(ssrc, index);
        keystream_xor(&self.enc_key, &iv, &mut packet[header..]);
        if stream.is_none() && self.streams.len() >= MAX_STREAMS {
            self.streams.clear();
        }
        let s = self.streams.entry(ssrc).or_insert(Stream {
            roc,
            highest_seq: seq,
            highest: index,
            window: 0,
        });
        if index > s.highest {
            let shift = index - s.highest;
            s.window = if shift >= REPLAY_WINDOW {
                0
            } else {
                s.window << shift
            };
            s.highest = index;
            s.highest_seq = seq;
            s.roc = roc;
        }
        let age = s.highest - index;
        if age < REPLAY_WINDOW {
            s.window |= 1 << age;
        }
        Ok(())
    }
}

/// The SSRC and sequence number of an RTP packet (at least 12 bytes long).
fn ids(rtp: &[u8]) -> (u32, u16) {
    (
        u32::from_be_bytes([rtp[8], rtp[9], rtp[10], rtp[11]]),
        u16::from_be_bytes([rtp[2], rtp[3]]),
    )
}

/// The length of an RTP header with its CSRCs and extension, if the packet holds it.
fn header_len(rtp: &[u8]) -> Option<usize> {
    if rtp.len() < crate::rtp::HEADER_LEN || rtp[0] >> 6 != crate::rtp::VERSION {
        return None;
    }
    let mut len = crate::rtp::HEADER_LEN + 4 * usize::from(rtp[0] & 0x0F);
    if rtp[0] & 0x10 != 0 {
        let ext = rtp.get(len..len + 4)?;
        len += 4 + 4 * usize::from(u16::from_be_bytes([ext[2], ext[3]]));
    }
    (len <= rtp.len()).then_some(len)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 3711 Appendix B.2: the AES-CM keystream.
    #[test]
    fn rfc3711_b2_keystream() {
        let key: [u8; 16] = hex("2B7E151628AED2A6ABF7158809CF4F3C").try_into().unwrap();
        let iv: [u8; 16] = hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD0000").try_into().unwrap();
        let mut ks = [0u8; 48];
        keystream_xor(&key, &iv, &mut ks);
        assert_eq!(
            ks.to_vec(),
            hex(concat!(
                "E03EAD0935C95E80E166B16DD92B4EB4",
                "D23513162B02D0F72A43A2FE4A5F97AB",
                "41E95B3BB0A2E8DD477901E4FCA894C0"
            ))
        );
    }

    /// RFC 3711 Appendix B.3: key derivation.
    #[test]
    fn rfc3711_b3_key_derivation() {
        let master = MasterKey {
            key: hex("E1F97A0D3E018BE0D64FA32C06DE4139").try_into().unwrap(),
            salt: hex("0EC675AD498AFEEBB6960B3AABE6").try_into().unwrap(),
        };
        let mut k = [0u8; 16];
        derive(&master, 0, &mut k);
        assert_eq!(k.to_vec(), hex("C61E7A93744F39EE10734AFE3FF7A087"));
        let mut s = [0u8; 14];
        derive(&master, 2, &mut s);
        assert_eq!(s.to_vec(), hex("30CBBC08863D8C85D49DB34A9AE1"));
        let mut a = [0u8; 20];
        derive(&master, 1, &mut a);
        assert_eq!(a.to_vec(), hex("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4"));
    }

    fn packet(seq: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        crate::rtp::write(
            0,
            false,
            seq,
            u32::from(seq) * 160,
            0x1234_5678,
            payload,
            &mut out,
        );
        out
    }

    #[test]
    fn round_trip_replay_tamper_and_rollover() {
        let master = MasterKey::from_bytes(&[7; 30]);
        for suite in [Suite::AesCm128HmacSha1_80, Suite::AesCm128HmacSha1_32] {
            let mut tx = SrtpContext::new(suite, &master);
            let mut rx = SrtpContext::new(suite, &master);
            let voice = [0x55u8; 160];
            // Across a sequence number wrap: the rollover counter follows.
            for seq in (65_530u16..=65_535).chain(0..5) {
                let clear = packet(seq, &voice);
                let sealed = tx.protect(&clear).unwrap();
                assert_eq!(sealed.len(), clear.len() + suite.tag_len());
                assert_eq!(&sealed[..12], &clear[..12], "the header stays clear");
                assert!(
                    !sealed[12..].windows(16).any(|w| w == &voice[..16]),
                    "no clear voice"
                );
                assert_eq!(rx.unprotect(&sealed).unwrap(), clear, "seq {seq}");
                assert_eq!(rx.unprotect(&sealed), Err(SrtpError::Replay));
            }
            let mut forged = tx.protect(&packet(9, &voice)).unwrap();
            forged[20] ^= 1;
            assert_eq!(rx.unprotect(&forged), Err(SrtpError::Auth));
            let other = SrtpContext::new(suite, &MasterKey::from_bytes(&[8; 30]))
                .protect(&packet(10, &voice))
                .unwrap();
            assert_eq!(rx.unprotect(&other), Err(SrtpError::Auth));
            // Out of order within the window is fine, once.
            let a = tx.protect(&packet(11, &voice)).unwrap();
            let b = tx.protect(&packet(12, &voice)).unwrap();
            assert!(rx.unprotect(&b).is_ok());
            assert!(rx.unprotect(&a).is_ok());
            assert_eq!(rx.unprotect(&a), Err(SrtpError::Replay));
            assert_eq!(rx.unprotect(&[0x80; 5]), Err(SrtpError::Malformed));
        }
    }

    #[test]
    fn crypto_attributes() {
        let c = Crypto::parse(
            "1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20|1:32",
        );
        assert_eq!(c, Err(SrtpError::BadCrypto), "MKI refused");
        let c = Crypto::parse(
            "1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20",
        )
        .unwrap();
        assert_eq!(c.tag, 1);
        assert_eq!(c.suite, Suite::AesCm128HmacSha1_80);
        let again = Crypto::parse(&c.to_value()).unwrap();
        assert_eq!(again, c);
        for bad in [
            "",
            "x AES_CM_128_HMAC_SHA1_80 inline:AAAA",
            "1 F8_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz",
            "1 AES_CM_128_HMAC_SHA1_32 inline:AAAA",
            "1 AES_CM_128_HMAC_SHA1_32 key:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz",
            // Session parameters that change the protection, or that we do not know.
            "1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz KDR=1",
            "1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz UNENCRYPTED_SRTP",
            "1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz UNAUTHENTICATED_SRTP",
            "1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz FOO=1",
            // Two keys in one line (they need MKIs).
            "1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz;inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz",
            "-1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz",
            "1234567890 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz",
        ] {
            assert_eq!(Crypto::parse(bad), Err(SrtpError::BadCrypto), "{bad}");
        }
        // The window size hint is only a hint.
        let hinted = Crypto::parse(
            "7 AES_CM_128_HMAC_SHA1_32 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz WSH=128",
        )
        .unwrap();
        assert_eq!((hinted.tag, hinted.suite), (7, Suite::AesCm128HmacSha1_32));
        // The answer keeps the tag and suite, with the answerer's key.
        let ours = MasterKey::from_bytes(&[9; 30]);
        let answer = hinted.answer(ours.clone());
        assert_eq!((answer.tag, answer.suite), (7, Suite::AesCm128HmacSha1_32));
        assert_eq!(answer.key, ours);
        assert!(
            answer
                .to_value()
                .starts_with("7 AES_CM_128_HMAC_SHA1_32 inline:")
        );
        // Neither Debug form shows the key.
        let shown = format!("{answer:?} {:?}", SrtpContext::from_crypto(&answer));
        assert!(
            !shown.contains("CQkJ") && !shown.contains("[9, 9"),
            "{shown}"
        );
    }

    /// Interoperability with libsrtp 2.5.0 (Debian's `libsrtp2-1`, what baresip, Asterisk and
    /// most SIP stacks use): the same master key and packets, across a sequence number wrap
    /// (the rollover counter becomes 1), give the same ciphertext and tag. Made with
    /// `srtp_create` (`srtp_crypto_policy_set_rtp_default` / `…_aes_cm_128_hmac_sha1_32`, key
    /// 01 02 … 1e) and `srtp_protect` through ctypes; payload byte i of packet seq is
    /// `(seq * 7 + i) mod 256`, SSRC deadbeef, timestamp seq * 160. Each row: seq, the first
    /// 16 bytes of the encrypted payload, the tag (which covers the whole packet).
    #[test]
    fn libsrtp_interop_vectors() {
        let rows: [(u16, &str, &str, &str); 4] = [
            (
                65534,
                "991f180fb65c305f19bef37b15e2295f",
                "f54131827e391d4a0b14",
                "f5413182",
            ),
            (
                65535,
                "1b89954c919d0779895a464065a05aa9",
                "bda4eb4d4c716c40ff52",
                "bda4eb4d",
            ),
            (
                0,
                "0057e35fbe0de031e0855ac32abe2116",
                "d40b04b3852de08690ab",
                "d40b04b3",
            ),
            (
                1,
                "b05e1fdd8708ba87ce2b5e9bad5be928",
                "f48eb83c9cc3e888ad31",
                "f48eb83c",
            ),
        ];
        let key: Vec<u8> = (1..=30).collect();
        let master = MasterKey::from_bytes(&key.try_into().unwrap());
        for suite in [Suite::AesCm128HmacSha1_80, Suite::AesCm128HmacSha1_32] {
            let mut tx = SrtpContext::new(suite, &master);
            let mut rx = SrtpContext::new(suite, &master);
            for (seq, cipher, tag80, tag32) in rows {
                let payload: Vec<u8> = (0..160u32)
                    .map(|i| ((u32::from(seq) * 7 + i) & 0xff) as u8)
                    .collect();
                let mut clear = Vec::new();
                crate::rtp::write(
                    0,
                    false,
                    seq,
                    u32::from(seq).wrapping_mul(160),
                    0xdead_beef,
                    &payload,
                    &mut clear,
                );
                let sealed = tx.protect(&clear).unwrap();
                assert_eq!(sealed[12..28].to_vec(), hex(cipher), "seq {seq}");
                let tag = if suite == Suite::AesCm128HmacSha1_80 {
                    tag80
                } else {
                    tag32
                };
                assert_eq!(
                    sealed[sealed.len() - suite.tag_len()..].to_vec(),
                    hex(tag),
                    "{suite:?} seq {seq}"
                );
                assert_eq!(rx.unprotect(&sealed).unwrap(), clear);
            }
        }
    }

    #[test]
    fn in_place_matches_the_copying_forms_and_leaves_a_refused_packet_alone() {
        let master = MasterKey::from_bytes(&[3; 30]);
        let mut a = SrtpContext::new(Suite::AesCm128HmacSha1_80, &master);
        let mut b = SrtpContext::new(Suite::AesCm128HmacSha1_80, &master);
        let clear = packet(100, &[0xd5; 160]);
        let copied = a.protect(&clear).unwrap();
        let mut in_place = clear.clone();
        b.protect_in_place(&mut in_place).unwrap();
        assert_eq!(in_place, copied);
        let mut rx = SrtpContext::new(Suite::AesCm128HmacSha1_80, &master);
        let mut tampered = in_place.clone();
        tampered[15] ^= 0x80;
        let before = tampered.clone();
        assert_eq!(rx.unprotect_in_place(&mut tampered), Err(SrtpError::Auth));
        assert_eq!(tampered, before, "a refused packet is not touched");
        rx.unprotect_in_place(&mut in_place).unwrap();
        assert_eq!(in_place, clear);
        let mut short = vec![0x80; 8];
        assert_eq!(a.protect_in_place(&mut short), Err(SrtpError::Malformed));
    }
}
