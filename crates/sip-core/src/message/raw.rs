//! Header text that keeps raw bytes ("UTF-8b"): how a header section that is not UTF-8 is
//! held in `String`s without losing a byte (see the module docs of [`super`] for why).
//!
//! A byte that is not part of valid UTF-8 (always 0x80..=0xFF) is stored as the char
//! U+10FF00 + byte, that is U+10FF80..=U+10FFFF (plane 16, private use). So that the mapping
//! stays lossless, a valid char of that range in the input has each of its four bytes stored
//! the same way. The serializer writes every char of that range as the one byte it stands
//! for, so the bytes on the wire are the bytes received.
//!
//! Every char of that range is `F4 8F BE xx` or `F4 8F BF xx` in UTF-8, so text without a
//! 0xF4 byte holds none: that is the fast path, taken by every UTF-8 message without
//! plane-16 chars, at the cost of one byte search.

use std::borrow::Cow;

use super::scan::find_byte;

/// The char for raw byte 0 would be this one; raw bytes are 0x80..=0xFF.
const BASE: u32 = 0x10_FF00;
/// The first byte of every char that stands for a raw byte (and of every char from U+100000).
const LEAD: u8 = 0xF4;

/// The char that stands for the raw byte `b` (0x80..=0xFF).
fn escape(b: u8) -> char {
    char::from_u32(BASE + u32::from(b)).unwrap_or(char::REPLACEMENT_CHARACTER)
}

/// The raw byte that `c` stands for, when `c` is in U+10FF80..=U+10FFFF.
fn raw_byte(c: char) -> Option<u8> {
    let v = u32::from(c).checked_sub(BASE)?;
    u8::try_from(v).ok().filter(|&b| b >= 0x80)
}

/// Whether `s` may hold a char that stands for a raw byte (a cheap byte search).
fn may_hold_raw(s: &str) -> bool {
    !s.is_ascii() && find_byte(s.as_bytes(), LEAD).is_some()
}

/// Header text from wire bytes: borrowed when `b` is UTF-8 without a 0xF4 byte, else with
/// each byte that is not valid UTF-8 (and each byte of a valid U+10FF80..=U+10FFFF char)
/// stored as U+10FF00 + byte. [`wire_bytes`] gives `b` back.
pub fn header_text(b: &[u8]) -> Cow<'_, str> {
    if (b.is_ascii() || find_byte(b, LEAD).is_none())
        && let Ok(s) = std::str::from_utf8(b)
    {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(b.len() + 16);
    for chunk in b.utf8_chunks() {
        let valid = chunk.valid();
        if may_hold_raw(valid) {
            for c in valid.chars() {
                if raw_byte(c).is_some() {
                    let mut utf8 = [0u8; 4];
                    out.extend(c.encode_utf8(&mut utf8).bytes().map(escape));
                } else {
                    out.push(c);
                }
            }
        } else {
            out.push_str(valid);
        }
        out.extend(chunk.invalid().iter().map(|&c| escape(c)));
    }
    Cow::Owned(out)
}

/// The wire bytes of header text: each char of U+10FF80..=U+10FFFF as the one byte it stands
/// for, everything else as UTF-8. Borrowed when there is no such char.
pub fn wire_bytes(s: &str) -> Cow<'_, [u8]> {
    if !may_hold_raw(s) {
        return Cow::Borrowed(s.as_bytes());
    }
    let mut out = Vec::with_capacity(s.len());
    put_wire(&mut out, s, false);
    Cow::Owned(out)
}

/// Appends the wire bytes of `s` (see [`wire_bytes`]); with `clean`, CR and LF as SP.
pub(crate) fn put_wire(out: &mut Vec<u8>, s: &str, clean: bool) {
    let mut utf8 = [0u8; 4];
    for c in s.chars() {
        match raw_byte(c) {
            Some(b) => out.push(b),
            None if clean && (c == '\r' || c == '\n') => out.push(b' '),
            None => out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes()),
        }
    }
}

/// Whether `s` holds a char that stands for a raw byte (a byte that was not UTF-8, or a
/// plane-16 char received).
pub(crate) fn has_raw_bytes(s: &str) -> bool {
    may_hold_raw(s) && s.chars().any(|c| raw_byte(c).is_some())
}

/// Header text for people (logs, the console, records): each raw byte read as ISO-8859-1
/// (the charset of most SIP clients that do not send UTF-8), so `"J\xf6rg"` received shows
/// as `"Jörg"`. Borrowed when there is no raw byte. Not for the wire: the bytes differ.
pub fn display_lossy(s: &str) -> Cow<'_, str> {
    if !has_raw_bytes(s) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.chars()
            .map(|c| raw_byte(c).map_or(c, char::from))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_without_plane_16_is_borrowed() {
        for s in ["", "plain", "J\u{f6}rg \u{1f600}"] {
            assert!(matches!(header_text(s.as_bytes()), Cow::Borrowed(t) if t == s));
            assert!(matches!(wire_bytes(s), Cow::Borrowed(b) if b == s.as_bytes()));
            assert!(matches!(display_lossy(s), Cow::Borrowed(_)));
        }
        // Other chars from U+100000 (also led by 0xF4) take the slow path, unchanged.
        let near = "\u{10ff7f}\u{100000}";
        assert_eq!(header_text(near.as_bytes()), near);
        assert_eq!(&*wire_bytes(near), near.as_bytes());
    }

    #[test]
    fn raw_bytes_round_trip() {
        let cases: [&[u8]; 7] = [
            b"J\xf6rg",
            b"\xff\xfe\x80",
            b"truncated \xe2\x82",
            "valid \u{10ff90} in UTF-8".as_bytes(),
            "edge \u{10ff80}\u{10ffff}\u{10ff7f}".as_bytes(),
            b"lead alone \xf4 and \xf4\x8f\xbe",
            b"mixed \xc3\xa9 \xe9 \xf4\x8f\xbf\xbf",
        ];
        for b in cases {
            let text = header_text(b);
            assert_eq!(&*wire_bytes(&text), b, "{text:?}");
            // Text made of raw-byte chars is stable: its wire bytes read back to itself.
            assert_eq!(header_text(&wire_bytes(&text)), text);
        }
        assert_eq!(header_text(b"J\xf6rg"), "J\u{10fff6}rg");
        assert_eq!(
            header_text("a\u{10ff90}".as_bytes()),
            "a\u{10fff4}\u{10ff8f}\u{10ffbe}\u{10ff90}"
        );
        assert!(has_raw_bytes(&header_text(b"\xe9")));
        assert!(!has_raw_bytes("\u{10ff7f} \u{1f600}"));
    }

    #[test]
    fn lossy_display_reads_latin_1() {
        assert_eq!(display_lossy(&header_text(b"J\xf6rg")), "J\u{f6}rg");
        assert_eq!(display_lossy(&header_text("\u{e9}".as_bytes())), "\u{e9}");
        let mut cleaned = Vec::new();
        put_wire(&mut cleaned, "a\r\n\u{10ffe9}", true);
        assert_eq!(cleaned, b"a  \xe9");
    }
}
