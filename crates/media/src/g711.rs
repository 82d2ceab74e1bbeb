//! ITU-T G.711 companding: μ-law (PCMU) and A-law (PCMA), 8 kHz, 8 bits a sample.
//!
//! The gateway's PSTN side speaks one law and the IP side may offer the other, so this module
//! codes single samples and whole frames and transcodes law to law through 256-entry tables.
//!
//! The arithmetic follows the ITU-T G.191 reference implementation of G.711 (`g711.c`):
//! linear samples are 16-bit, left-justified; μ-law uses the 14 most significant bits and
//! A-law the 13 most significant bits, and negative samples are taken in one's complement,
//! so that a small negative input codes as "negative zero" (0x7F for μ-law, 0x55 for A-law)
//! instead of leaking into the first quantisation step. Decoding returns the mid-point of the
//! quantisation interval (G.711 Tables 1 and 2), scaled to 16 bits.

/// The sampling rate of G.711 (RFC 3551 §4.5.14: PCMU and PCMA are 8000 Hz).
pub const SAMPLE_RATE: u32 = 8000;

/// Samples in one 20 ms frame, the packetisation RFC 3551 recommends (`a=ptime:20`).
pub const FRAME_SAMPLES: usize = 160;

/// A G.711 companding law.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Law {
    /// μ-law (North America, Japan); RTP static payload type 0, encoding name `PCMU`.
    Pcmu,
    /// A-law (Europe and most of the rest of the world); payload type 8, encoding name `PCMA`.
    Pcma,
}

impl Law {
    /// The static RTP payload type RFC 3551 Table 4 assigns: 0 for PCMU, 8 for PCMA.
    pub fn payload_type(self) -> u8 {
        match self {
            Self::Pcmu => 0,
            Self::Pcma => 8,
        }
    }

    /// The encoding name used in `a=rtpmap` (RFC 3551 §4.5.14).
    pub fn encoding_name(self) -> &'static str {
        match self {
            Self::Pcmu => "PCMU",
            Self::Pcma => "PCMA",
        }
    }

    /// The law of a static payload type (0 or 8); `None` for anything else.
    pub fn from_payload_type(pt: u8) -> Option<Self> {
        match pt {
            0 => Some(Self::Pcmu),
            8 => Some(Self::Pcma),
            _ => None,
        }
    }

    /// The law of an `a=rtpmap` encoding name, case-insensitively (RFC 4566 §6: encoding
    /// names are case-insensitive).
    pub fn from_encoding_name(name: &str) -> Option<Self> {
        if name.eq_ignore_ascii_case("PCMU") {
            Some(Self::Pcmu)
        } else if name.eq_ignore_ascii_case("PCMA") {
            Some(Self::Pcma)
        } else {
            None
        }
    }

    /// The other G.711 law: the one to transcode to when a peer lacks this one.
    pub fn other(self) -> Self {
        match self {
            Self::Pcmu => Self::Pcma,
            Self::Pcma => Self::Pcmu,
        }
    }

    /// A compact code for storage and configuration: 0 = PCMU, 1 = PCMA.
    pub fn to_u8(self) -> u8 {
        match self {
            Self::Pcmu => 0,
            Self::Pcma => 1,
        }
    }

    /// The inverse of [`Law::to_u8`]; `None` for any other value.
    pub fn from_u8(code: u8) -> Option<Self> {
        match code {
            0 => Some(Self::Pcmu),
            1 => Some(Self::Pcma),
            _ => None,
        }
    }

    /// The code of digital silence in this law (the encoding of linear 0): 0xFF or 0xD5.
    pub fn silence(self) -> u8 {
        match self {
            Self::Pcmu => 0xFF,
            Self::Pcma => 0xD5,
        }
    }
}

impl std::fmt::Display for Law {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.encoding_name())
    }
}

/// Codes one linear sample.
#[inline]
pub fn encode(law: Law, sample: i16) -> u8 {
    match law {
        Law::Pcmu => ULAW_ENCODE[ulaw_index(sample)],
        Law::Pcma => ALAW_ENCODE[alaw_index(sample)],
    }
}

/// Decodes one code to a linear sample (the mid-point of its quantisation interval).
#[inline]
pub fn decode(law: Law, code: u8) -> i16 {
    match law {
        Law::Pcmu => ULAW_DECODE[usize::from(code)],
        Law::Pcma => ALAW_DECODE[usize::from(code)],
    }
}

/// Codes a frame of linear samples, appending one byte per sample to `out`.
pub fn encode_frame(law: Law, samples: &[i16], out: &mut Vec<u8>) {
    out.reserve(samples.len());
    match law {
        Law::Pcmu => out.extend(samples.iter().map(|&s| ULAW_ENCODE[ulaw_index(s)])),
        Law::Pcma => out.extend(samples.iter().map(|&s| ALAW_ENCODE[alaw_index(s)])),
    }
}

/// Decodes a frame of codes, appending one linear sample per byte to `out`.
pub fn decode_frame(law: Law, codes: &[u8], out: &mut Vec<i16>) {
    let table = match law {
        Law::Pcmu => &ULAW_DECODE,
        Law::Pcma => &ALAW_DECODE,
    };
    out.reserve(codes.len());
    out.extend(codes.iter().map(|&c| table[usize::from(c)]));
}

/// Transcodes `input` from one law to the other, appending to `out`.
///
/// Each code goes through a 256-entry table built as "decode with `from`, encode with `to`":
/// the code whose interval holds the other law's reconstruction value. G.711 Tables 3 and 4
/// print the normative conversion; the rendition of them widely copied from Sun's `g711.c`
/// differs from this table by one quantisation step in 46 μ→A and 34 A→μ entries, where a
/// reconstruction value sits next to a decision value. Both make 240 of the 256 round trips
/// (A→μ→A, μ→A→μ) transparent, and this table has the smaller total error against the
/// linear values. When `from == to` the bytes are copied unchanged.
pub fn transcode(from: Law, to: Law, input: &[u8], out: &mut Vec<u8>) {
    match transcode_table(from, to) {
        None => out.extend_from_slice(input),
        Some(table) => {
            out.reserve(input.len());
            out.extend(input.iter().map(|&c| table[usize::from(c)]));
        }
    }
}

/// Transcodes a buffer in place (the same table as [`transcode`]), for a relay that rewrites
/// an RTP payload without another allocation.
pub fn transcode_in_place(from: Law, to: Law, codes: &mut [u8]) {
    if let Some(table) = transcode_table(from, to) {
        for c in codes {
            *c = table[usize::from(*c)];
        }
    }
}

/// The 256-entry table mapping `from` codes to `to` codes; `None` when the laws are equal.
pub fn transcode_table(from: Law, to: Law) -> Option<&'static [u8; 256]> {
    match (from, to) {
        (Law::Pcmu, Law::Pcma) => Some(&ULAW_TO_ALAW),
        (Law::Pcma, Law::Pcmu) => Some(&ALAW_TO_ULAW),
        _ => None,
    }
}

/// μ-law coding only looks at the 14 most significant bits (one's complement of a negative
/// sample commutes with the arithmetic shift), so a 16 KiB table indexed by them replaces the
/// segment search on the hot path; A-law looks at 12 bits, a 4 KiB table.
#[inline]
fn ulaw_index(sample: i16) -> usize {
    usize::from((sample >> 2) as u16 & 0x3FFF)
}

#[inline]
fn alaw_index(sample: i16) -> usize {
    usize::from((sample >> 4) as u16 & 0x0FFF)
}

/// The coding tables behind [`ulaw_index`] and [`alaw_index`]: entry `i` codes the sample
/// whose top bits are `i`.
const fn encode_table<const N: usize>(law: Law) -> [u8; N] {
    let mut table = [0u8; N];
    let mut i = 0;
    while i < N {
        table[i] = match law {
            // The sample whose top bits are the index (the low bits do not matter).
            Law::Pcmu => ulaw_encode(((i as u16) << 2) as i16),
            Law::Pcma => alaw_encode(((i as u16) << 4) as i16),
        };
        i += 1;
    }
    table
}

/// μ-law bias (G.191: 33 in 14-bit units, 0x84 in 16-bit units).
const ULAW_BIAS: i32 = 33;

/// μ-law coding (G.191 `ulaw_compress`).
#[inline]
const fn ulaw_encode(sample: i16) -> u8 {
    let s = sample as i32;
    // One's complement magnitude in 14 bits, plus the bias; clip to 13 bits of magnitude.
    let mut absno = (if s < 0 { !s } else { s } >> 2) + ULAW_BIAS;
    if absno > 0x1FFF {
        absno = 0x1FFF;
    }
    // Segment 1..=8: one more than the bit length of absno >> 6 (absno >= 33, so >= 1 bit).
    let segno = 33 - ((absno >> 6) as u32).leading_zeros() as i32;
    let high = 8 - segno;
    let low = 0x0F - ((absno >> segno) & 0x0F);
    let code = (high << 4) | low;
    (if s >= 0 { code | 0x80 } else { code }) as u8
}

/// μ-law decoding (G.191 `ulaw_expand`).
const fn ulaw_decode(code: u8) -> i16 {
    let inverted = !code;
    let exponent = ((inverted >> 4) & 0x07) as i32;
    let mantissa = (inverted & 0x0F) as i32;
    let step = 4 << (exponent + 1);
    let magnitude = (0x80 << exponent) + step * mantissa + step / 2 - 4 * ULAW_BIAS;
    (if code < 0x80 { -magnitude } else { magnitude }) as i16
}

/// A-law coding (G.191 `alaw_compress`).
#[inline]
const fn alaw_encode(sample: i16) -> u8 {
    let s = sample as i32;
    // One's complement magnitude in 12 bits (the 13-bit value without its sign).
    let mut ix = if s < 0 { !s } else { s } >> 4;
    if ix > 15 {
        // Segment 1..=7: ix >= 16 has bit length 5..=11.
        let exponent = 32 - (ix as u32).leading_zeros() as i32 - 4;
        ix = ((ix >> (exponent - 1)) - 16) + (exponent << 4);
    }
    if s >= 0 {
        ix |= 0x80;
    }
    (ix ^ 0x55) as u8
}

/// A-law decoding (G.191 `alaw_expand`).
const fn alaw_decode(code: u8) -> i16 {
    let ix = ((code ^ 0x55) & 0x7F) as i32;
    let exponent = ix >> 4;
    let mut mantissa = ix & 0x0F;
    if exponent > 0 {
        mantissa += 16;
    }
    mantissa = (mantissa << 4) + 0x08;
    if exponent > 1 {
        mantissa <<= exponent - 1;
    }
    (if code > 0x7F { mantissa } else { -mantissa }) as i16
}

const fn decode_table(law: Law) -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = match law {
            Law::Pcmu => ulaw_decode(i as u8),
            Law::Pcma => alaw_decode(i as u8),
        };
        i += 1;
    }
    table
}

const fn transcoding_table(from: Law) -> [u8; 256] {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = match from {
            Law::Pcmu => alaw_encode(ulaw_decode(i as u8)),
            Law::Pcma => ulaw_encode(alaw_decode(i as u8)),
        };
        i += 1;
    }
    table
}

static ULAW_ENCODE: [u8; 1 << 14] = encode_table(Law::Pcmu);
static ALAW_ENCODE: [u8; 1 << 12] = encode_table(Law::Pcma);
static ULAW_DECODE: [i16; 256] = decode_table(Law::Pcmu);
static ALAW_DECODE: [i16; 256] = decode_table(Law::Pcma);
static ULAW_TO_ALAW: [u8; 256] = transcoding_table(Law::Pcmu);
static ALAW_TO_ULAW: [u8; 256] = transcoding_table(Law::Pcma);

#[cfg(test)]
mod tests {
    use super::*;

    const LAWS: [Law; 2] = [Law::Pcmu, Law::Pcma];

    #[test]
    fn law_metadata() {
        for law in LAWS {
            assert_eq!(Law::from_payload_type(law.payload_type()), Some(law));
            assert_eq!(Law::from_u8(law.to_u8()), Some(law));
            assert_eq!(Law::from_encoding_name(law.encoding_name()), Some(law));
            assert_eq!(law.other().other(), law);
            assert_ne!(law.other(), law);
            assert_eq!(encode(law, 0), law.silence());
        }
        assert_eq!(Law::Pcmu.payload_type(), 0);
        assert_eq!(Law::Pcma.payload_type(), 8);
        assert_eq!(Law::Pcmu.to_string(), "PCMU");
        assert_eq!(Law::from_encoding_name("pcma"), Some(Law::Pcma));
        assert_eq!(Law::from_payload_type(18), None);
        assert_eq!(Law::from_u8(2), None);
    }

    #[test]
    fn encode_tables_match_the_reference_arithmetic() {
        for x in i16::MIN..=i16::MAX {
            assert_eq!(encode(Law::Pcmu, x), ulaw_encode(x), "μ-law {x}");
            assert_eq!(encode(Law::Pcma, x), alaw_encode(x), "A-law {x}");
        }
    }

    #[test]
    fn ulaw_known_vectors() {
        assert_eq!(encode(Law::Pcmu, 0), 0xFF);
        assert_eq!(encode(Law::Pcmu, -1), 0x7F, "negative zero");
        assert_eq!(encode(Law::Pcmu, i16::MAX), 0x80);
        assert_eq!(encode(Law::Pcmu, i16::MIN), 0x00);
        assert_eq!(encode(Law::Pcmu, 32124), 0x80);
        // The top of segment 0 (Table 2a: 14-bit decision value 31 → code 0xF0 region).
        assert_eq!(encode(Law::Pcmu, 1000), 0xCE);
        assert_eq!(encode(Law::Pcmu, -1000), 0x4E);
        assert_eq!(decode(Law::Pcmu, 0xFF), 0);
        assert_eq!(decode(Law::Pcmu, 0x7F), 0);
        assert_eq!(decode(Law::Pcmu, 0x80), 32124);
        assert_eq!(decode(Law::Pcmu, 0x00), -32124);
        assert_eq!(decode(Law::Pcmu, 0xFE), 8);
        assert_eq!(decode(Law::Pcmu, 0xCE), 988);
    }

    #[test]
    fn alaw_known_vectors() {
        assert_eq!(encode(Law::Pcma, 0), 0xD5);
        assert_eq!(encode(Law::Pcma, -1), 0x55, "negative zero");
        assert_eq!(encode(Law::Pcma, i16::MAX), 0xAA);
        assert_eq!(encode(Law::Pcma, i16::MIN), 0x2A);
        assert_eq!(encode(Law::Pcma, 1000), 0xFA);
        assert_eq!(encode(Law::Pcma, -1000), 0x7A);
        assert_eq!(decode(Law::Pcma, 0xD5), 8);
        assert_eq!(decode(Law::Pcma, 0x55), -8);
        assert_eq!(decode(Law::Pcma, 0xAA), 32256);
        assert_eq!(decode(Law::Pcma, 0x2A), -32256);
        assert_eq!(decode(Law::Pcma, 0xFA), 1008);
    }

    /// The quantisation step of the segment a linear value falls in (16-bit units).
    fn step(law: Law, x: i32) -> i32 {
        let m = x.unsigned_abs() as i32;
        match law {
            // Segment n (0..=7) of μ-law has step 8 << n, boundaries at (256 << n) - 132.
            Law::Pcmu => (0..8)
                .map(|n| 8 << n)
                .find(|s| m + 132 < s * 32)
                .unwrap_or(1024),
            // A-law: step 16 in segments 0 and 1 (below 512), then doubling.
            Law::Pcma => {
                if m < 512 {
                    16
                } else {
                    (2..8)
                        .map(|n| 16 << (n - 1))
                        .find(|s| m < s * 32)
                        .unwrap_or(1024)
                }
            }
        }
    }

    #[test]
    fn round_trip_error_is_within_half_a_step() {
        for law in LAWS {
            for x in i16::MIN..=i16::MAX {
                let y = decode(law, encode(law, x));
                let err = (i32::from(x) - i32::from(y)).abs();
                let s = step(law, i32::from(x));
                // Half a step for the mid-point, plus the one's-complement offset (1 LSB of
                // the 13/14-bit value); clipping above the top decision value.
                let limit = s / 2 + 16;
                let top = match law {
                    Law::Pcmu => 32124 + 512,
                    Law::Pcma => 32256 + 512,
                };
                if i32::from(x).abs() < top {
                    assert!(err <= limit, "{law}: {x} -> {y} (err {err}, step {s})");
                }
                assert!(y.signum() * x.signum() >= 0, "{law}: sign of {x} -> {y}");
            }
        }
    }

    #[test]
    fn codes_are_fixed_points_of_decode_then_encode() {
        for law in LAWS {
            for code in 0..=255u8 {
                let again = encode(law, decode(law, code));
                // Both zeros decode to 0 (μ-law) which re-encodes as positive zero.
                if law == Law::Pcmu && code == 0x7F {
                    assert_eq!(again, 0xFF);
                } else {
                    assert_eq!(again, code, "{law}: code {code:#04x}");
                }
            }
        }
    }

    #[test]
    fn encode_is_monotonic() {
        for law in LAWS {
            let mut last = decode(law, encode(law, i16::MIN));
            for x in i16::MIN..=i16::MAX {
                let y = decode(law, encode(law, x));
                assert!(y >= last, "{law}: not monotonic at {x}");
                last = y;
            }
        }
    }

    #[test]
    fn transcode_table_equals_decode_then_encode() {
        for (from, to) in [(Law::Pcmu, Law::Pcma), (Law::Pcma, Law::Pcmu)] {
            let all: Vec<u8> = (0..=255).collect();
            let mut out = Vec::new();
            transcode(from, to, &all, &mut out);
            let mut in_place = all.clone();
            transcode_in_place(from, to, &mut in_place);
            for code in 0..=255u8 {
                let expected = encode(to, decode(from, code));
                assert_eq!(out[usize::from(code)], expected, "{from}->{to} {code:#04x}");
                assert_eq!(in_place[usize::from(code)], expected);
            }
        }
        let mut out = Vec::new();
        transcode(Law::Pcma, Law::Pcma, &[1, 2, 3], &mut out);
        assert_eq!(out, [1, 2, 3]);
        assert!(transcode_table(Law::Pcmu, Law::Pcmu).is_none());
    }

    #[test]
    fn transcode_silence_and_extremes() {
        let mut out = Vec::new();
        transcode(Law::Pcmu, Law::Pcma, &[0xFF, 0x7F, 0x80, 0x00], &mut out);
        assert_eq!(out, [0xD5, 0xD5, 0xAA, 0x2A]);
        out.clear();
        transcode(Law::Pcma, Law::Pcmu, &[0xD5, 0x55, 0xAA, 0x2A], &mut out);
        // A-law ±8 re-encodes as μ-law's first positive/negative step.
        assert_eq!(out, [0xFE, 0x7E, 0x80, 0x00]);
    }

    #[test]
    fn frame_helpers_match_samplewise() {
        let samples: Vec<i16> = (0..FRAME_SAMPLES as i32)
            .map(|i| (i * 409 - 32768) as i16)
            .collect();
        for law in LAWS {
            let mut codes = Vec::new();
            encode_frame(law, &samples, &mut codes);
            assert_eq!(codes.len(), FRAME_SAMPLES);
            let mut decoded = Vec::new();
            decode_frame(law, &codes, &mut decoded);
            for ((&s, &c), &d) in samples.iter().zip(&codes).zip(&decoded) {
                assert_eq!(c, encode(law, s));
                assert_eq!(d, decode(law, c));
            }
        }
    }
}
