//! The serializer: long header names, one value per line, and a Content-Length always
//! computed from the body (never trusted from the parsed message).

use super::{HeaderName, Headers, Request, Response};

fn write_headers(out: &mut Vec<u8>, headers: &Headers, body_len: usize) {
    for h in &headers.0 {
        if h.name == HeaderName::ContentLength {
            continue;
        }
        out.extend_from_slice(h.name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Content-Length: ");
    out.extend_from_slice(itoa(body_len).as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
}

fn itoa(n: usize) -> String {
    n.to_string()
}

impl Request {
    /// Appends the wire form to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.uri.to_string().as_bytes());
        out.extend_from_slice(b" SIP/2.0\r\n");
        write_headers(out, &self.headers, self.body.len());
        out.extend_from_slice(&self.body);
    }
}

impl Response {
    /// Appends the wire form to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"SIP/2.0 ");
        out.extend_from_slice(itoa(usize::from(self.status)).as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.reason.as_bytes());
        out.extend_from_slice(b"\r\n");
        write_headers(out, &self.headers, self.body.len());
        out.extend_from_slice(&self.body);
    }
}
