//! The parser: bytes to [`Message`], with the checks RFC 3261 §7 / §8.2 / §18.3 and
//! RFC 4475 ask for, and stream framing for TCP.
//!
//! Limits are fixed and small on purpose (RFC 4475 §3.1.2, threat 11 of SECURITY.md): a
//! message over [`MAX_MESSAGE_SIZE`] or with more than [`MAX_HEADERS`] headers is refused
//! before any work is done on it.

use bytes::Bytes;

use super::{
    CSeq, Header, HeaderName, Headers, Message, Method, NameAddr, Request, Response, Uri, Via,
    reason_phrase,
};

/// Largest message accepted on any transport (UDP datagrams cannot be larger anyway).
pub const MAX_MESSAGE_SIZE: usize = 65_535;
/// Most header lines (after list splitting) in one message.
pub const MAX_HEADERS: usize = 256;

/// Why a message was refused, and what to answer if it was a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct ParseError {
    /// What was wrong, for logs and the 400's reason phrase.
    pub reason: &'static str,
    /// The status to answer with (400, 413, 416, 505, …).
    pub status: u16,
    /// Headers needed to build a response (Via, From, To, Call-ID, CSeq), when the message
    /// was a request whose headers got that far. `None`: drop silently (RFC 3261 §18.3).
    pub reply_headers: Option<Headers>,
}

impl ParseError {
    fn new(reason: &'static str) -> Self {
        Self {
            reason,
            status: 400,
            reply_headers: None,
        }
    }

    fn status(reason: &'static str, status: u16) -> Self {
        Self {
            reason,
            status,
            reply_headers: None,
        }
    }

    /// The error response for a request that could not be accepted, if one can be formed.
    pub fn response(&self) -> Option<Response> {
        let headers = self.reply_headers.clone()?;
        let reason = if self.status == 400 {
            self.reason
        } else {
            reason_phrase(self.status)
        };
        let resp = Response {
            status: self.status,
            reason: reason.to_owned(),
            headers,
            body: Bytes::new(),
        };
        Some(resp)
    }
}

/// What [`frame_stream`] found at the start of a TCP byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// Not enough bytes yet.
    Incomplete,
    /// Keep-alive CRLFs (RFC 5626 §3.5.1): skip this many bytes.
    KeepAlive(usize),
    /// A whole message of this many bytes is at the start of the buffer.
    Message(usize),
}

/// Frames one message on a stream transport (RFC 3261 §18.3: Content-Length is mandatory).
pub fn frame_stream(buf: &[u8]) -> Result<Frame, ParseError> {
    let ws = buf
        .iter()
        .take_while(|&&c| c == b'\r' || c == b'\n')
        .count();
    if ws > 0 {
        return Ok(Frame::KeepAlive(ws));
    }
    let Some(end) = find_subslice(buf, b"\r\n\r\n") else {
        if buf.len() > MAX_MESSAGE_SIZE {
            return Err(ParseError::status("header section too large", 413));
        }
        return Ok(Frame::Incomplete);
    };
    let head = &buf[..end + 2];
    let mut length: Option<usize> = None;
    for line in head.split(|&c| c == b'\n') {
        let line = trim_ascii(line);
        let Some(colon) = line.iter().position(|&c| c == b':') else {
            continue;
        };
        let name = trim_ascii(&line[..colon]);
        if name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l") {
            let v = parse_content_length(trim_ascii(&line[colon + 1..]))?;
            if length.is_some_and(|l| l != v) {
                return Err(ParseError::new("conflicting Content-Length"));
            }
            length = Some(v);
        }
    }
    let length = length.ok_or(ParseError::new(
        "Content-Length required on stream transports",
    ))?;
    let total = end + 4 + length;
    if total > MAX_MESSAGE_SIZE {
        return Err(ParseError::status("message too large", 413));
    }
    Ok(if buf.len() >= total {
        Frame::Message(total)
    } else {
        Frame::Incomplete
    })
}

fn parse_content_length(v: &[u8]) -> Result<usize, ParseError> {
    if v.is_empty() || v.len() > 10 || !v.iter().all(u8::is_ascii_digit) {
        return Err(ParseError::new("bad Content-Length"));
    }
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(ParseError::new("bad Content-Length"))
}

/// Parses one whole message (a datagram, or a frame from [`frame_stream`]).
///
/// Bytes after the Content-Length body are ignored, as RFC 3261 §18.3 says for datagrams;
/// a body shorter than Content-Length is an error. Without Content-Length the body is the
/// rest of the datagram.
pub fn parse(buf: &[u8]) -> Result<Message, ParseError> {
    if buf.len() > MAX_MESSAGE_SIZE {
        return Err(ParseError::status("message too large", 413));
    }
    // RFC 3261 §7.5: ignore CRLFs before the start line.
    let start = buf
        .iter()
        .take_while(|&&c| c == b'\r' || c == b'\n')
        .count();
    let buf = &buf[start..];
    let head_end = find_subslice(buf, b"\r\n\r\n")
        .map(|i| (i, i + 4))
        .or_else(|| find_subslice(buf, b"\n\n").map(|i| (i, i + 2)))
        .ok_or(ParseError::new("no end of headers"))?;
    let (head, body_start) = (&buf[..head_end.0], head_end.1);
    let head = std::str::from_utf8(head).map_err(|_| ParseError::new("header is not UTF-8"))?;

    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let start_line = lines.next().ok_or(ParseError::new("empty message"))?;
    let start_line = StartLine::parse(start_line);

    let mut headers = Headers(Vec::with_capacity(16));
    let mut pending: Option<(String, String)> = None;
    let mut err: Option<ParseError> = None;
    for line in lines {
        if line.starts_with([' ', '\t']) {
            // folded continuation (RFC 3261 §7.3.1): joins the previous value with one SP
            match &mut pending {
                Some((_, v)) => {
                    v.push(' ');
                    v.push_str(line.trim());
                }
                None => {
                    err.get_or_insert(ParseError::new("continuation before first header"));
                }
            }
            continue;
        }
        if let Some((n, v)) = pending.take() {
            if let Err(e) = push_header(&mut headers, &n, v) {
                err.get_or_insert(e);
            }
        }
        match line.split_once(':') {
            Some((name, value)) => {
                let name = name.trim_end_matches([' ', '\t']);
                if name.is_empty() || !name.bytes().all(super::header::is_token_char) {
                    err.get_or_insert(ParseError::new("bad header name"));
                    continue;
                }
                pending = Some((name.to_owned(), value.trim().to_owned()));
            }
            None => {
                err.get_or_insert(ParseError::new("header line without colon"));
            }
        }
    }
    if let Some((n, v)) = pending.take() {
        if let Err(e) = push_header(&mut headers, &n, v) {
            err.get_or_insert(e);
        }
    }
    if headers.0.len() > MAX_HEADERS {
        return Err(ParseError::new("too many headers"));
    }

    let is_request = matches!(start_line, Ok(StartLine::Request(..)) | Err(Some(_)));
    let fail = |mut e: ParseError, headers: &Headers| {
        if is_request {
            e.reply_headers = reply_headers(headers);
        }
        e
    };
    let start_line = match start_line {
        Ok(s) => s,
        Err(Some(e)) => return Err(fail(e, &headers)),
        Err(None) => return Err(ParseError::new("unrecognisable start line")),
    };
    if let Some(e) = err {
        return Err(fail(e, &headers));
    }
    if let Err(e) = check_headers(&headers, &start_line) {
        return Err(fail(e, &headers));
    }

    let rest = &buf[body_start..];
    let body = match headers.get(&HeaderName::ContentLength) {
        Some(v) => {
            let len = parse_content_length(v.as_bytes()).map_err(|e| fail(e, &headers))?;
            if len > rest.len() {
                return Err(fail(
                    ParseError::new("body shorter than Content-Length"),
                    &headers,
                ));
            }
            Bytes::copy_from_slice(&rest[..len])
        }
        None => Bytes::copy_from_slice(rest),
    };
    Ok(match start_line {
        StartLine::Request(method, uri) => Message::Request(Request {
            method,
            uri,
            headers,
            body,
        }),
        StartLine::Response(status, reason) => Message::Response(Response {
            status,
            reason,
            headers,
            body,
        }),
    })
}

enum StartLine {
    Request(Method, Uri),
    Response(u16, String),
}

impl StartLine {
    /// `Err(Some(e))`: a request line we could not accept (answerable);
    /// `Err(None)`: not recognisable at all.
    fn parse(line: &str) -> Result<Self, Option<ParseError>> {
        if let Some(rest) = line.strip_prefix("SIP/") {
            let (version, rest) = rest.split_once(' ').ok_or(None)?;
            if version != "2.0" {
                return Err(None);
            }
            let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
            if code.len() != 3 || !code.bytes().all(|c| c.is_ascii_digit()) {
                return Err(None);
            }
            let status: u16 = code.parse().map_err(|_| None)?;
            if !(100..=699).contains(&status) {
                return Err(None);
            }
            return Ok(Self::Response(status, reason.to_owned()));
        }
        // Request-Line = Method SP Request-URI SP SIP-Version: exactly single spaces.
        let mut parts = line.split(' ');
        let (Some(method), Some(uri), Some(version), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Some(ParseError::new("malformed Request-Line")));
        };
        if method.is_empty() || !method.bytes().all(super::header::is_token_char) {
            return Err(None);
        }
        if !version.starts_with("SIP/") {
            return Err(Some(ParseError::new("malformed SIP version")));
        }
        if version != "SIP/2.0" {
            return Err(Some(ParseError::status("SIP version not supported", 505)));
        }
        let uri = Uri::parse(uri).map_err(|_| Some(ParseError::new("malformed Request-URI")))?;
        Ok(Self::Request(Method::from_token(method), uri))
    }
}

/// Stores a header; splits list headers into one entry per value.
fn push_header(headers: &mut Headers, name: &str, value: String) -> Result<(), ParseError> {
    let name = HeaderName::from_wire(name);
    if name.is_split_list() && value.contains(',') && value != "*" {
        for part in super::header::split_unquoted(&value, b',') {
            let part = part.trim();
            if part.is_empty() {
                return Err(ParseError::new("empty list element"));
            }
            headers.0.push(Header {
                name: name.clone(),
                value: part.to_owned(),
            });
        }
    } else {
        headers.0.push(Header { name, value });
    }
    if headers.0.len() > MAX_HEADERS {
        return Err(ParseError::new("too many headers"));
    }
    Ok(())
}

/// Checks the headers the transaction layer and proxy rely on, so that the rest of the core
/// can read them without further error handling.
fn check_headers(h: &Headers, start: &StartLine) -> Result<(), ParseError> {
    fn one<'h>(
        h: &'h Headers,
        name: HeaderName,
        what: &'static str,
    ) -> Result<&'h str, ParseError> {
        let mut it =
            h.0.iter()
                .filter(|x| x.name == name)
                .map(|x| x.value.as_str());
        let v = it.next().ok_or(ParseError::new(what))?;
        if it.next().is_some() {
            return Err(ParseError::new("duplicate single-value header"));
        }
        Ok(v)
    }
    let call_id = one(h, HeaderName::CallId, "missing Call-ID")?;
    if call_id.is_empty() || call_id.contains(char::is_whitespace) {
        return Err(ParseError::new("bad Call-ID"));
    }
    let cseq = CSeq::parse(one(h, HeaderName::CSeq, "missing CSeq")?).map_err(ParseError::new)?;
    let from =
        NameAddr::parse(one(h, HeaderName::From, "missing From")?).map_err(ParseError::new)?;
    let to = NameAddr::parse(one(h, HeaderName::To, "missing To")?).map_err(ParseError::new)?;
    let _ = (from, to);
    let mut vias = h.get_all(&HeaderName::Via).peekable();
    if vias.peek().is_none() {
        return Err(ParseError::new("missing Via"));
    }
    for v in vias {
        Via::parse(v).map_err(ParseError::new)?;
    }
    let mut lens = h.get_all(&HeaderName::ContentLength);
    if let Some(first) = lens.next() {
        parse_content_length(first.as_bytes())?;
        if lens.any(|l| l != first) {
            return Err(ParseError::new("conflicting Content-Length"));
        }
    }
    if let Some(mf) = h.get(&HeaderName::MaxForwards) {
        if mf.is_empty() || mf.len() > 3 || !mf.bytes().all(|c| c.is_ascii_digit()) {
            return Err(ParseError::new("bad Max-Forwards"));
        }
        if mf.parse::<u16>().map_or(true, |v| v > 255) {
            return Err(ParseError::new("bad Max-Forwards"));
        }
    }
    if let Some(exp) = h.get(&HeaderName::Expires) {
        if exp.is_empty() || !exp.bytes().all(|c| c.is_ascii_digit()) {
            return Err(ParseError::new("bad Expires"));
        }
    }
    for name in [&HeaderName::Route, &HeaderName::RecordRoute] {
        for v in h.get_all(name) {
            NameAddr::parse(v).map_err(|_| ParseError::new("bad Route/Record-Route"))?;
        }
    }
    for v in h.get_all(&HeaderName::Contact) {
        if v != "*" {
            NameAddr::parse(v).map_err(|_| ParseError::new("bad Contact"))?;
        }
    }
    if let StartLine::Request(method, _) = start {
        if cseq.method != *method {
            return Err(ParseError::new("CSeq method does not match Request-Line"));
        }
    }
    Ok(())
}

/// The headers a response needs, if they are all present and usable.
fn reply_headers(h: &Headers) -> Option<Headers> {
    let mut out = Headers(Vec::with_capacity(6));
    for name in [
        HeaderName::Via,
        HeaderName::From,
        HeaderName::To,
        HeaderName::CallId,
    ] {
        let mut found = false;
        for v in h.get_all(&name) {
            if name == HeaderName::Via && Via::parse(v).is_err() {
                return None;
            }
            out.push(name.clone(), v);
            found = true;
            if name != HeaderName::Via {
                break;
            }
        }
        if !found {
            return None;
        }
    }
    let cseq = h.get(&HeaderName::CSeq)?;
    let seq = cseq.split_ascii_whitespace().next()?;
    if seq.is_empty() || !seq.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    out.push(HeaderName::CSeq, cseq);
    Some(out)
}

fn find_subslice(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn trim_ascii(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &s[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &[u8] = b"INVITE sip:alice@localhost SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1;rport, SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK0\r\n\
Max-Forwards: 70\r\n\
f: <sip:bob@example.net>;tag=1\r\n\
t: <sip:alice@localhost>\r\n\
i: abc@host\r\n\
CSeq: 1 INVITE\r\n\
Subject: a\r\n folded\r\n\
l: 4\r\n\
\r\n\
v=0\r\n";

    #[test]
    fn parses_compact_lists_and_folding() {
        let Ok(Message::Request(r)) = parse(INVITE) else {
            panic!("INVITE did not parse")
        };
        assert_eq!(r.method, Method::Invite);
        assert_eq!(r.headers.get_all(&HeaderName::Via).count(), 2);
        assert_eq!(
            r.top_via().and_then(|v| v.branch().map(str::to_owned)),
            Some("z9hG4bK1".into())
        );
        assert_eq!(r.headers.get(&HeaderName::Subject), Some("a folded"));
        assert_eq!(&r.body[..], b"v=0\r");
        assert_eq!(r.call_id(), "abc@host");
    }

    #[test]
    fn roundtrips() {
        let m = parse(INVITE).expect("parses");
        let again = parse(&match &m {
            Message::Request(r) => r.to_bytes(),
            Message::Response(r) => r.to_bytes(),
        })
        .expect("reparses");
        assert_eq!(m, again);
    }

    #[test]
    fn frames_tcp_stream() {
        let mut buf = b"\r\n\r\n".to_vec();
        assert_eq!(frame_stream(&buf), Ok(Frame::KeepAlive(4)));
        buf = INVITE.to_vec();
        assert_eq!(frame_stream(&buf[..20]), Ok(Frame::Incomplete));
        assert_eq!(frame_stream(&buf), Ok(Frame::Message(INVITE.len() - 1)));
    }

    #[test]
    fn bad_request_carries_reply_headers() {
        let bad = b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n";
        let e = parse(bad).expect_err("mismatched CSeq");
        assert_eq!(e.status, 400);
        assert_eq!(e.response().map(|r| r.status), Some(400));
    }
}
