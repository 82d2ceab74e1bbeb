//! The serializer: long header names, one value per line, and a Content-Length always
//! computed from the body (never trusted from the parsed message).
//!
//! CR and LF inside a method, URI, reason phrase, header name or value (which the parser
//! never produces, but code building messages might) are written as spaces: a value cannot
//! smuggle a header line or end the header section.
//!
//! Chars U+10FF80..=U+10FFFF are written as the one raw byte each stands for (`raw.rs`): a
//! header value or reason phrase received with bytes that are not UTF-8 goes out with the
//! bytes received. Both rewrites are rare, so the message is written plainly first and
//! written again only when a check of the written bytes finds a CR or LF too many or a 0xF4
//! byte (which every such char starts with).

use super::raw::put_wire;
use super::scan::find_byte;
use super::{HeaderName, Headers, Request, Response, Uri};

/// How parts are written: as they are (the fast path), or with CR and LF replaced by SP
/// (`clean`) and/or raw-byte chars written as their bytes (`raw`).
#[derive(Clone, Copy)]
struct Mode {
    clean: bool,
    raw: bool,
}

/// Appends `s` as `mode` says.
fn put(out: &mut Vec<u8>, s: &str, mode: Mode) {
    if mode.raw {
        put_wire(out, s, mode.clean);
    } else if mode.clean {
        out.extend(
            s.bytes()
                .map(|c| if c == b'\r' || c == b'\n' { b' ' } else { c }),
        );
    } else {
        out.extend_from_slice(s.as_bytes());
    }
}

/// How many bytes of `b` are CR or LF, and whether any byte is not ASCII, eight bytes at a
/// time: one pass for both checks of [`write_checked`].
fn count_eol(b: &[u8]) -> (usize, bool) {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = LO << 7;
    let (cr, lf) = (LO * u64::from(b'\r'), LO * u64::from(b'\n'));
    // High bit of each byte set exactly when that byte of `x` is not zero (no carries
    // cross bytes, unlike the shorter has-zero trick).
    let nonzero = |x: u64| ((x & !HI).wrapping_add(!HI) | x) & HI;
    let mut chunks = b.chunks_exact(8);
    let mut n = 0;
    let mut any = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_le_bytes(word);
        let hits = (!nonzero(w ^ cr) | !nonzero(w ^ lf)) & HI;
        n += hits.count_ones() as usize;
        any |= w;
    }
    let rest = chunks.remainder();
    let n = n + rest.iter().filter(|&&c| c == b'\r' || c == b'\n').count();
    (n, any & HI != 0 || !rest.is_ascii())
}

fn put_decimal(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn put_uri(out: &mut Vec<u8>, uri: &Uri, mode: Mode) {
    put(out, &uri.scheme, mode);
    out.push(b':');
    if let Some(o) = &uri.opaque {
        put(out, o, mode);
        return;
    }
    if let Some(u) = &uri.user {
        put(out, u, mode);
        if let Some(p) = &uri.password {
            out.push(b':');
            put(out, p, mode);
        }
        out.push(b'@');
    }
    put(out, &uri.host, mode);
    if let Some(p) = uri.port {
        out.push(b':');
        put_decimal(out, usize::from(p));
    }
    for p in &uri.params {
        out.push(b';');
        put(out, &p.name, mode);
        if let Some(v) = &p.value {
            out.push(b'=');
            put(out, v, mode);
        }
    }
    if let Some(h) = &uri.headers {
        out.push(b'?');
        put(out, h, mode);
    }
}

/// The start line of a message.
enum Start<'m> {
    Request(&'m Request),
    Response(&'m Response),
}

/// Writes the start line and headers, their parts as `mode` says.
fn write(out: &mut Vec<u8>, start: &Start<'_>, headers: &Headers, body: &[u8], mode: Mode) {
    match start {
        Start::Request(r) => {
            put(out, r.method.as_str(), mode);
            out.push(b' ');
            put_uri(out, &r.uri, mode);
            out.extend_from_slice(b" SIP/2.0\r\n");
        }
        Start::Response(r) => {
            out.extend_from_slice(b"SIP/2.0 ");
            put_decimal(out, usize::from(r.status));
            out.push(b' ');
            put(out, &r.reason, mode);
            out.extend_from_slice(b"\r\n");
        }
    }
    for h in &headers.0 {
        if h.name == HeaderName::ContentLength {
            continue;
        }
        put(out, h.name.as_str(), mode);
        out.extend_from_slice(b": ");
        put(out, &h.value, mode);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Content-Length: ");
    put_decimal(out, body.len());
    out.extend_from_slice(b"\r\n\r\n");
}

/// Writes the message, then checks that its header section holds only the line endings
/// written here and no 0xF4 byte; if a part held CR or LF, or a char that may stand for a
/// raw byte, writes it again with those replaced by SP and the raw bytes.
fn write_checked(out: &mut Vec<u8>, start: &Start<'_>, headers: &Headers, body: &[u8]) {
    let mark = out.len();
    let lines = headers
        .0
        .iter()
        .filter(|h| h.name != HeaderName::ContentLength)
        .count()
        + 3;
    let size: usize = headers
        .0
        .iter()
        .map(|h| h.name.as_str().len() + h.value.len() + 4)
        .sum();
    out.reserve(size + 128 + body.len());
    let plain = Mode {
        clean: false,
        raw: false,
    };
    write(out, start, headers, body, plain);
    let head = &out[mark..];
    let (eols, non_ascii) = count_eol(head);
    let mode = Mode {
        clean: eols != 2 * lines,
        raw: non_ascii && find_byte(head, 0xF4).is_some(),
    };
    if mode.clean || mode.raw {
        out.truncate(mark);
        write(out, start, headers, body, mode);
    }
    out.extend_from_slice(body);
}

impl Request {
    /// Appends the wire form to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        write_checked(out, &Start::Request(self), &self.headers, &self.body);
    }
}

impl Response {
    /// Appends the wire form to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        write_checked(out, &Start::Response(self), &self.headers, &self.body);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Message, parse};
    use super::*;

    #[test]
    fn counts_line_endings() {
        assert_eq!(count_eol(b""), (0, false));
        assert_eq!(count_eol(b"\r\n\r\n\x0d\x8d\x0a\x8a\xff\x00\r"), (7, true));
        let long: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
        let slow = long.iter().filter(|&&c| c == b'\r' || c == b'\n').count();
        assert_eq!(count_eol(&long), (slow, true));
        // Non-ASCII anywhere, in a word or in the remainder.
        let ascii: Vec<u8> = (0..0x80u8).cycle().take(203).collect();
        assert!(!count_eol(&ascii).1);
        for at in 0..ascii.len() {
            let mut one = ascii.clone();
            one[at] = 0xf4;
            assert!(count_eol(&one).1, "byte {at}");
        }
    }

    #[test]
    fn values_cannot_inject_lines() {
        let mut r = Response {
            status: 200,
            reason: "OK\r\nX-Evil: 1".into(),
            headers: Headers::default(),
            body: bytes::Bytes::new(),
        };
        r.headers
            .push(HeaderName::Via, "SIP/2.0/UDP h;branch=z9hG4bK1");
        r.headers.push(HeaderName::From, "<sip:a@b>;tag=1");
        r.headers.push(HeaderName::To, "<sip:c@d>");
        r.headers.push(HeaderName::CallId, "x");
        r.headers.push(HeaderName::CSeq, "1 INVITE");
        r.headers
            .push(HeaderName::Subject, "a\r\n\r\nINVITE sip:x SIP/2.0");
        let wire = r.to_bytes();
        assert_eq!(wire.iter().filter(|&&c| c == b'\n').count(), 9);
        let Ok(Message::Response(back)) = parse(&wire) else {
            panic!("sanitized response parses")
        };
        assert_eq!(back.reason, "OK  X-Evil: 1");
        assert_eq!(
            back.headers.get(&HeaderName::Subject),
            Some("a    INVITE sip:x SIP/2.0")
        );
    }

    #[test]
    fn raw_byte_chars_are_written_as_the_bytes() {
        let mut r = Response {
            status: 180,
            reason: "\u{10ffc7}a sonne".into(),
            headers: Headers::default(),
            body: bytes::Bytes::new(),
        };
        r.headers
            .push(HeaderName::Via, "SIP/2.0/UDP h;branch=z9hG4bK1");
        r.headers
            .push(HeaderName::From, "\"J\u{10fff6}rg\" <sip:a@b>;tag=1");
        r.headers.push(HeaderName::To, "<sip:c@d>;tag=2");
        r.headers.push(HeaderName::CallId, "x");
        r.headers.push(HeaderName::CSeq, "1 INVITE");
        // U+10FF7F is no raw byte: written as UTF-8.
        r.headers.push(HeaderName::Subject, "\u{10ff7f}\u{e9}");
        let wire = r.to_bytes();
        let expect = |needle: &[u8]| {
            assert!(
                wire.windows(needle.len()).any(|w| w == needle),
                "{:?} in {wire:?}",
                String::from_utf8_lossy(needle)
            );
        };
        expect(b"SIP/2.0 180 \xc7a sonne\r\n");
        expect(b"\r\nFrom: \"J\xf6rg\" <sip:a@b>;tag=1\r\n");
        expect("\r\nSubject: \u{10ff7f}\u{e9}\r\n".as_bytes());
        assert_eq!(parse(&wire), Ok(Message::Response(r.clone())));
        // With a CR or LF to clean as well.
        r.headers.push(HeaderName::Subject, "a\r\n\u{10ffe9}");
        let wire = r.to_bytes();
        let cleaned = b"\r\nSubject: a  \xe9\r\n";
        assert!(wire.windows(cleaned.len()).any(|w| w == cleaned));
    }
}
