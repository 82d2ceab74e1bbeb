//! The serializer: long header names, one value per line, and a Content-Length always
//! computed from the body (never trusted from the parsed message).
//!
//! CR and LF inside a method, URI, reason phrase, header name or value (which the parser
//! never produces, but code building messages might) are written as spaces: a value cannot
//! smuggle a header line or end the header section.

use super::{HeaderName, Headers, Request, Response, Uri};

/// Appends `s`; with `clean`, CR and LF replaced by SP.
fn put(out: &mut Vec<u8>, s: &str, clean: bool) {
    if clean {
        out.extend(
            s.bytes()
                .map(|c| if c == b'\r' || c == b'\n' { b' ' } else { c }),
        );
    } else {
        out.extend_from_slice(s.as_bytes());
    }
}

/// How many bytes of `b` are CR or LF, eight bytes at a time.
fn count_eol(b: &[u8]) -> usize {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = LO << 7;
    let (cr, lf) = (LO * u64::from(b'\r'), LO * u64::from(b'\n'));
    // High bit of each byte set exactly when that byte of `x` is not zero (no carries
    // cross bytes, unlike the shorter has-zero trick).
    let nonzero = |x: u64| ((x & !HI).wrapping_add(!HI) | x) & HI;
    let mut chunks = b.chunks_exact(8);
    let mut n = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_le_bytes(word);
        let hits = (!nonzero(w ^ cr) | !nonzero(w ^ lf)) & HI;
        n += hits.count_ones() as usize;
    }
    n + chunks
        .remainder()
        .iter()
        .filter(|&&c| c == b'\r' || c == b'\n')
        .count()
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

fn put_uri(out: &mut Vec<u8>, uri: &Uri, clean: bool) {
    put(out, &uri.scheme, clean);
    out.push(b':');
    if let Some(o) = &uri.opaque {
        put(out, o, clean);
        return;
    }
    if let Some(u) = &uri.user {
        put(out, u, clean);
        if let Some(p) = &uri.password {
            out.push(b':');
            put(out, p, clean);
        }
        out.push(b'@');
    }
    put(out, &uri.host, clean);
    if let Some(p) = uri.port {
        out.push(b':');
        put_decimal(out, usize::from(p));
    }
    for p in &uri.params {
        out.push(b';');
        put(out, &p.name, clean);
        if let Some(v) = &p.value {
            out.push(b'=');
            put(out, v, clean);
        }
    }
    if let Some(h) = &uri.headers {
        out.push(b'?');
        put(out, h, clean);
    }
}

/// The start line of a message.
enum Start<'m> {
    Request(&'m Request),
    Response(&'m Response),
}

/// Writes the start line and headers; `clean` replaces CR and LF inside their parts.
fn write(out: &mut Vec<u8>, start: &Start<'_>, headers: &Headers, body: &[u8], clean: bool) {
    match start {
        Start::Request(r) => {
            put(out, r.method.as_str(), clean);
            out.push(b' ');
            put_uri(out, &r.uri, clean);
            out.extend_from_slice(b" SIP/2.0\r\n");
        }
        Start::Response(r) => {
            out.extend_from_slice(b"SIP/2.0 ");
            put_decimal(out, usize::from(r.status));
            out.push(b' ');
            put(out, &r.reason, clean);
            out.extend_from_slice(b"\r\n");
        }
    }
    for h in &headers.0 {
        if h.name == HeaderName::ContentLength {
            continue;
        }
        put(out, h.name.as_str(), clean);
        out.extend_from_slice(b": ");
        put(out, &h.value, clean);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Content-Length: ");
    put_decimal(out, body.len());
    out.extend_from_slice(b"\r\n\r\n");
}

/// Writes the message, then checks that its header section holds only the line endings
/// written here; if a part held CR or LF, writes it again with those replaced by SP.
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
    write(out, start, headers, body, false);
    if count_eol(&out[mark..]) != 2 * lines {
        out.truncate(mark);
        write(out, start, headers, body, true);
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
        assert_eq!(count_eol(b""), 0);
        assert_eq!(count_eol(b"\r\n\r\n\x0d\x8d\x0a\x8a\xff\x00\r"), 7);
        let long: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
        let slow = long.iter().filter(|&&c| c == b'\r' || c == b'\n').count();
        assert_eq!(count_eol(&long), slow);
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
}
