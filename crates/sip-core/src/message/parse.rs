//! The parser: bytes to [`Message`], with the checks RFC 3261 §7 / §8.2 / §18.3 and
//! RFC 4475 ask for, and stream framing for TCP.
//!
//! Limits are fixed and small on purpose (RFC 4475 §3.1.2, threat 11 of SECURITY.md): a
//! message over [`MAX_MESSAGE_SIZE`] (513 Message Too Large, RFC 3261 §21.5.4) or with more
//! than [`MAX_HEADERS`] headers is refused before any work is done on the rest of it.
//!
//! A refused request gets an answer whenever one can be addressed (a usable top Via, a
//! From, a To and a Call-ID): the error carries the headers to copy, even from a message
//! the stream could not frame (the header lines complete within the first
//! [`MAX_MESSAGE_SIZE`] bytes), so TCP can answer before it closes. Only a request that
//! cannot be addressed, an ACK, a response or something that is no SIP start line at all is
//! dropped without an answer (RFC 3261 §18.3, §17.1.1.1).
//!
//! Content-Length is framing, not content: the parser checks it, cuts the body with it and
//! does not keep it in [`Headers`]; the serializer always writes it from the body. So
//! `parse(&m.to_bytes()) == Ok(m)` for every parsed message `m`.

use std::borrow::Cow;

use bytes::Bytes;

use super::check::{check_headers, reply_headers};
use super::lines::{Field, Fields, HeadEnd, next_line};
use super::raw::header_text;
use super::scan::{find_byte, is_token, parse_decimal, split_unquoted, trim_lws};
use super::{Header, HeaderName, Headers, Message, Method, Request, Response, Uri, reason_phrase};

/// Largest message accepted on any transport (UDP datagrams cannot be larger anyway).
pub const MAX_MESSAGE_SIZE: usize = 65_535;
/// Most header lines (after list splitting) in one message.
pub const MAX_HEADERS: usize = 256;

/// Why a message was refused, and what to answer if it was a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct ParseError {
    /// What was wrong, for logs and (capitalized) the 400's reason phrase, which names the
    /// problem (RFC 3261 §21.4.1): `Bad CSeq number`, `Missing Call-ID`, …
    pub reason: &'static str,
    /// The status to answer with (400, 505, 513).
    pub status: u16,
    /// Headers needed to build a response (Via, From, To, Call-ID, CSeq), when the message
    /// was a request (not an ACK) that names a place to send one: a usable top Via, a From,
    /// a To and a Call-ID. `None`: drop silently (RFC 3261 §18.3).
    pub reply_headers: Option<Headers>,
}

impl ParseError {
    pub(crate) fn new(reason: &'static str) -> Self {
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

    /// With the reply headers of `buf` (a request's first bytes), salvaged as far as its
    /// complete header lines go (see [`salvage_reply`]).
    fn salvaged(mut self, buf: &[u8]) -> Self {
        self.reply_headers = salvage_reply(buf);
        self
    }

    /// The error response for a request that could not be accepted, if one can be formed:
    /// a 400's reason phrase is [`Self::reason`] with a capital letter.
    pub fn response(&self) -> Option<Response> {
        let headers = self.reply_headers.clone()?;
        let reason = if self.status == 400 {
            let mut r = self.reason.to_owned();
            if let Some(first) = r.get_mut(..1) {
                first.make_ascii_uppercase();
            }
            r
        } else {
            reason_phrase(self.status).to_owned()
        };
        let resp = Response {
            status: self.status,
            reason,
            headers,
            body: Bytes::new(),
        };
        Some(resp)
    }

    /// [`Self::response`] with `;tag=to_tag` added to the To header when it has none, as a
    /// UAS must (RFC 3261 §8.2.6.2).
    pub fn response_with_to_tag(&self, to_tag: &str) -> Option<Response> {
        let mut resp = self.response()?;
        if let Some(to) = resp.headers.0.iter_mut().find(|h| h.name == HeaderName::To)
            && super::NameAddr::parse(&to.value).is_ok_and(|t| t.tag().is_none())
        {
            to.value.push_str(";tag=");
            to.value.push_str(to_tag);
        }
        Some(resp)
    }
}

/// What [`frame_stream`] found at the start of a TCP byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// Not enough bytes yet.
    Incomplete,
    /// Keep-alive CRLFs (RFC 5626 §3.5.1): skip this many bytes (the transport answers each
    /// complete CRLF CRLF ping among them with a CRLF pong; a lone CRLF is just skipped).
    KeepAlive(usize),
    /// A whole message of this many bytes is at the start of the buffer.
    Message(usize),
}

/// Frames one message on a stream transport (RFC 3261 §18.3: Content-Length is mandatory).
///
/// An `Err` is a framing error the stream cannot recover from: send its
/// [`ParseError::response`] if it has one (a 400, or 513 for a message over
/// [`MAX_MESSAGE_SIZE`]), then close the connection (RFC 4475 mcl01). Its reply headers
/// come from the header lines complete in the buffer.
pub fn frame_stream(buf: &[u8]) -> Result<Frame, ParseError> {
    let ws = leading_newlines(buf);
    if ws > 0 {
        return Ok(Frame::KeepAlive(ws));
    }
    let fields_start = next_line(buf, 0).map_or_else(|resume| resume, |(_, next)| next);
    let mut fields = Fields::new(buf, fields_start);
    // Only a complete header section is judged: a partial one may end inside a
    // Content-Length line, or before a second Content-Length that agrees with the first.
    let mut length: Result<Option<usize>, &'static str> = Ok(None);
    for field in fields.by_ref().flatten() {
        let name = &buf[field.name.clone()];
        if name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l") {
            let v = std::str::from_utf8(&buf[field.value.clone()])
                .ok()
                .and_then(content_length);
            length = match (length, v) {
                (Err(e), _) => Err(e),
                (_, None) => Err("bad Content-Length"),
                (Ok(Some(l)), Some(v)) if l != v => Err("conflicting Content-Length"),
                (Ok(_), v) => Ok(v),
            };
        }
    }
    let HeadEnd::Body(body_start) = fields.end else {
        if buf.len() > MAX_MESSAGE_SIZE {
            return Err(ParseError::status("header section too large", 513).salvaged(buf));
        }
        return Ok(Frame::Incomplete);
    };
    let length = match length {
        Ok(Some(length)) => length,
        Ok(None) => {
            return Err(ParseError::new("missing Content-Length (required on TCP)").salvaged(buf));
        }
        Err(e) => return Err(ParseError::new(e).salvaged(buf)),
    };
    let total = body_start.saturating_add(length);
    if total > MAX_MESSAGE_SIZE {
        return Err(ParseError::status("message too large", 513).salvaged(buf));
    }
    Ok(if buf.len() >= total {
        Frame::Message(total)
    } else {
        Frame::Incomplete
    })
}

/// Parses one whole message (a datagram, or a frame from [`frame_stream`]).
///
/// Bytes after the Content-Length body are ignored, as RFC 3261 §18.3 says for datagrams
/// (RFC 4475 dblreq); a body shorter than Content-Length is an error (clerr). Without
/// Content-Length the body is the rest of the datagram. A datagram that ends right after a
/// header line, without the empty line, is taken as headers only. The header section need
/// not be UTF-8: bytes that are not are kept as raw-byte chars (see the module docs of
/// [`super`]); the body is bytes.
pub fn parse(buf: &[u8]) -> Result<Message, ParseError> {
    if buf.len() > MAX_MESSAGE_SIZE {
        return Err(ParseError::status("message too large", 513).salvaged(buf));
    }
    // RFC 3261 §7.5: ignore CRLFs before the start line.
    let buf = &buf[leading_newlines(buf)..];
    let mut err: Option<ParseError> = None;
    let (first, fields_start) = match next_line(buf, 0) {
        Ok((end, next)) if next == end => {
            return Err(ParseError::new("no end of headers"));
        }
        Ok((end, next)) => (&buf[..end], next),
        Err(resume) => {
            err = Some(ParseError::new("bare CR in start line"));
            (&buf[..resume - 1], resume)
        }
    };
    let first = header_text(first);
    let start_line = StartLine::parse(&first);
    let answerable = answerable(&start_line, &first);

    // Find the fields first, then check UTF-8 once for the whole header section.
    let mut fields = Fields::new(buf, fields_start);
    let mut found = Vec::with_capacity(24);
    for field in fields.by_ref() {
        if found.len() >= MAX_HEADERS {
            // Answered from the headers found so far.
            err = Some(ParseError::new(TOO_MANY_HEADERS));
            break;
        }
        found.push(field);
    }
    let body_start = match fields.end {
        HeadEnd::Body(at) => Some(at),
        // A datagram that ends right after a header line: headers only.
        HeadEnd::Eof => Some(buf.len()),
        HeadEnd::Open => None, // too many headers
        HeadEnd::Truncated => {
            // Cut inside a line: the lines before it still address an answer.
            found.pop();
            err.get_or_insert(ParseError::new("no end of headers"));
            None
        }
    };
    // The fast path: a UTF-8 header section without plane-16 chars is sliced, not decoded.
    let head = body_start
        .and_then(|end| std::str::from_utf8(&buf[..end]).ok())
        .filter(|head| head.is_ascii() || find_byte(head.as_bytes(), 0xF4).is_none());

    let mut headers = Headers(Vec::with_capacity(found.len() + 4));
    let mut length: Option<usize> = None;
    for field in found {
        let field = match field {
            Ok(f) => f,
            Err(e) => {
                err.get_or_insert(ParseError::new(e));
                continue;
            }
        };
        let (name, raw) = field_text(buf, head, &field);
        if !is_token(name) {
            err.get_or_insert(ParseError::new("bad header name"));
            continue;
        }
        let name = HeaderName::from_token(name);
        if name == HeaderName::ContentLength {
            match content_length(&raw) {
                Some(v) if length.is_none_or(|l| l == v) => length = Some(v),
                Some(_) => {
                    err.get_or_insert(ParseError::new("conflicting Content-Length"));
                }
                None => {
                    err.get_or_insert(ParseError::new("bad Content-Length"));
                }
            }
            continue;
        }
        let value = field_value(&raw, field.folded);
        if let Err(e) = push_header(&mut headers, name, value) {
            let full = e.reason == TOO_MANY_HEADERS;
            err.get_or_insert(e);
            if full {
                break;
            }
        }
        if headers.0.len() > MAX_HEADERS {
            err.get_or_insert(ParseError::new(TOO_MANY_HEADERS));
            break;
        }
    }
    let fail = |mut e: ParseError, headers: &Headers| {
        if answerable {
            e.reply_headers = reply_headers(headers, first_word(&first));
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
    let Some(body_start) = body_start else {
        return Err(fail(ParseError::new("no end of headers"), &headers));
    };
    let request_method = match &start_line {
        StartLine::Request(m, _) => Some(m),
        StartLine::Response(..) => None,
    };
    if let Err(e) = check_headers(&headers, request_method) {
        return Err(fail(e, &headers));
    }

    let rest = &buf[body_start..];
    let body = match length {
        Some(len) => match rest.get(..len) {
            Some(body) => Bytes::copy_from_slice(body),
            None => {
                return Err(fail(
                    ParseError::new("body shorter than Content-Length"),
                    &headers,
                ));
            }
        },
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

/// The reason of the error for a message with over [`MAX_HEADERS`] headers.
const TOO_MANY_HEADERS: &str = "too many headers";

/// A field's name and raw value: sliced from `head`, the header section when it is UTF-8
/// without plane-16 chars, else decoded from `buf` (a name that is not UTF-8 is empty, so no
/// token).
#[inline(always)]
fn field_text<'a>(buf: &'a [u8], head: Option<&'a str>, f: &Field) -> (&'a str, Cow<'a, str>) {
    if let Some(head) = head
        && let (Some(name), Some(value)) = (head.get(f.name.clone()), head.get(f.value.clone()))
    {
        return (name, Cow::Borrowed(value));
    }
    let name = buf
        .get(f.name.clone())
        .and_then(|n| std::str::from_utf8(n).ok())
        .unwrap_or("");
    (
        name,
        header_text(buf.get(f.value.clone()).unwrap_or_default()),
    )
}

/// A header value as kept: folding (RFC 3261 §7.3.1) replaced by single spaces, trimmed.
#[inline(always)]
fn field_value(raw: &str, folded: bool) -> String {
    if folded {
        unfold(raw)
    } else {
        trim_lws(raw).to_owned()
    }
}

/// The reply headers of a request from its first bytes, best effort: the Via, From, To,
/// Call-ID and CSeq lines complete within the first [`MAX_MESSAGE_SIZE`] bytes (they usually
/// come first). For a message too large or not framed, whose header section was not parsed.
#[cold]
#[inline(never)]
fn salvage_reply(buf: &[u8]) -> Option<Headers> {
    let buf = buf.get(..MAX_MESSAGE_SIZE).unwrap_or(buf);
    let buf = &buf[leading_newlines(buf)..];
    let (end, fields_start) = next_line(buf, 0).ok()?;
    if fields_start == end {
        return None;
    }
    let first = header_text(&buf[..end]);
    if !answerable(&StartLine::parse(&first), &first) {
        return None;
    }
    let mut fields = Fields::new(buf, fields_start);
    let mut found: Vec<_> = fields.by_ref().take(MAX_HEADERS).collect();
    if matches!(fields.end, HeadEnd::Eof | HeadEnd::Truncated) {
        // The last line may be cut, or continued by folding past the end of the buffer.
        found.pop();
    }
    let mut headers = Headers(Vec::with_capacity(8));
    for field in found.into_iter().flatten() {
        let (name, raw) = field_text(buf, None, &field);
        if !is_token(name) {
            continue;
        }
        let name = HeaderName::from_token(name);
        if matches!(
            name,
            HeaderName::Via
                | HeaderName::From
                | HeaderName::To
                | HeaderName::CallId
                | HeaderName::CSeq
        ) {
            let _ = push_header(&mut headers, name, field_value(&raw, field.folded));
        }
    }
    reply_headers(&headers, first_word(&first))
}

/// The start line's first word: a request's method.
fn first_word(line: &str) -> &str {
    line.split(' ').next().unwrap_or("")
}

/// Whether a message with this start line gets an error response: a request (its method a
/// token), not an ACK (RFC 3261 §17.1.1.1); never a response (§18.3).
fn answerable(start: &Result<StartLine, Option<ParseError>>, first: &str) -> bool {
    matches!(start, Ok(StartLine::Request(..)) | Err(Some(_))) && !first.starts_with("ACK ")
}

enum StartLine {
    Request(Method, Uri),
    Response(u16, String),
}

impl StartLine {
    /// `Err(Some(e))`: a request line we could not accept (answerable);
    /// `Err(None)`: not recognisable at all, or a bad status line (drop).
    #[inline(always)]
    fn parse(line: &str) -> Result<Self, Option<ParseError>> {
        if line
            .get(..4)
            .is_some_and(|p| p.eq_ignore_ascii_case("SIP/"))
        {
            // Status-Line = SIP-Version SP Status-Code SP Reason-Phrase
            let (version, rest) = line[4..].split_once(' ').ok_or(None)?;
            if version != "2.0" {
                return Err(None);
            }
            let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
            if code.len() != 3 {
                return Err(None); // RFC 4475 bigcode
            }
            let status = parse_decimal(code, 699).ok_or(None)?;
            let status = u16::try_from(status).map_err(|_| None)?;
            if status < 100 {
                return Err(None);
            }
            return Ok(Self::Response(status, reason.to_owned()));
        }
        // Request-Line = Method SP Request-URI SP SIP-Version: exactly single spaces
        // (RFC 4475 lwsruri, lwsstart, trws).
        let mut parts = line.split(' ');
        let method = parts.next().unwrap_or("");
        if !is_token(method) {
            return Err(None);
        }
        let (Some(uri), Some(version), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(Some(ParseError::new("malformed Request-Line")));
        };
        let Some(number) = version
            .get(..4)
            .filter(|p| p.eq_ignore_ascii_case("SIP/"))
            .and_then(|_| version.get(4..))
        else {
            return Err(Some(ParseError::new("malformed SIP version")));
        };
        if number != "2.0" {
            let well_formed = number
                .split_once('.')
                .is_some_and(|(a, b)| a.parse::<u8>().is_ok() && b.parse::<u8>().is_ok());
            return Err(Some(if well_formed {
                ParseError::status("SIP version not supported", 505)
            } else {
                ParseError::new("malformed SIP version")
            }));
        }
        let uri = Uri::parse(uri).map_err(|_| Some(ParseError::new("malformed Request-URI")))?;
        if uri.headers.is_some() {
            // RFC 3261 §19.1.1 (headers are not allowed in a Request-URI); RFC 4475 escruri.
            return Err(Some(ParseError::new("headers in Request-URI")));
        }
        Ok(Self::Request(Method::from_token(method), uri))
    }
}

/// Stores a header; splits list headers into one entry per value. A list with an empty
/// element is stored unsplit, so an error response copies it as received.
#[inline(always)]
fn push_header(headers: &mut Headers, name: HeaderName, value: String) -> Result<(), ParseError> {
    if !name.is_split_list() || find_byte(value.as_bytes(), b',').is_none() {
        headers.0.push(Header { name, value });
        return Ok(());
    }
    if split_unquoted(&value, b',').any(|p| trim_lws(p).is_empty()) {
        let reason = match name {
            HeaderName::Via => "empty element in Via list",
            HeaderName::Route => "empty element in Route list",
            HeaderName::RecordRoute => "empty element in Record-Route list",
            _ => "empty element in Contact list",
        };
        headers.0.push(Header { name, value });
        return Err(ParseError::new(reason));
    }
    for part in split_unquoted(&value, b',') {
        if headers.0.len() >= MAX_HEADERS {
            return Err(ParseError::new(TOO_MANY_HEADERS));
        }
        headers.0.push(Header {
            name: name.clone(),
            value: trim_lws(part).to_owned(),
        });
    }
    Ok(())
}

/// A header value with folding (RFC 3261 §7.3.1) replaced by single spaces, trimmed.
fn unfold(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for piece in raw.split('\n') {
        let piece = trim_lws(piece.strip_suffix('\r').unwrap_or(piece));
        if piece.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(piece);
    }
    out
}

/// A Content-Length value: 1*DIGIT (leading zeros allowed), folding allowed around it.
fn content_length(raw: &str) -> Option<usize> {
    let v = parse_decimal(
        raw.trim_matches([' ', '\t', '\r', '\n']),
        u64::from(u32::MAX),
    )?;
    usize::try_from(v).ok()
}

fn leading_newlines(buf: &[u8]) -> usize {
    buf.iter()
        .take_while(|&&c| c == b'\r' || c == b'\n')
        .count()
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
        assert!(!r.headers.contains(&HeaderName::ContentLength));
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
        let folded = b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length:\r\n 2\r\n\r\nabc";
        assert_eq!(frame_stream(folded), Ok(Frame::Message(folded.len() - 1)));
        let two = b"OPTIONS sip:a@b SIP/2.0\r\nl: 1\r\nContent-Length: 2\r\n\r\nab";
        assert!(frame_stream(two).is_err());
        let none = b"OPTIONS sip:a@b SIP/2.0\r\nX: l: 5\r\n\r\n";
        assert!(frame_stream(none).is_err());
        // Every prefix of a good frame is incomplete, never an error.
        let twice = b"OPTIONS sip:a@b SIP/2.0\r\nl: 12\r\nContent-Length: 12\r\n\r\n0123456789ab";
        assert_eq!(frame_stream(twice), Ok(Frame::Message(twice.len())));
        for k in 1..twice.len() {
            assert_eq!(
                frame_stream(&twice[..k]),
                Ok(Frame::Incomplete),
                "prefix {k}"
            );
        }
        let huge = b"OPTIONS sip:a@b SIP/2.0\r\nl: 99999999\r\n\r\n";
        assert_eq!(frame_stream(huge).map_err(|e| e.status), Err(513));
    }

    #[test]
    fn bad_request_carries_reply_headers() {
        let bad = b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n";
        let e = parse(bad).expect_err("mismatched CSeq");
        assert_eq!(e.status, 400);
        assert_eq!(e.response().map(|r| r.status), Some(400));
        let tagged = e.response_with_to_tag("t1").expect("response");
        assert_eq!(
            tagged.headers.get(&HeaderName::To),
            Some("<sip:a@b>;tag=t1")
        );
    }

    #[test]
    fn no_response_to_ack() {
        let bad = b"ACK sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 BYE\r\n\r\n";
        assert_eq!(parse(bad).map_err(|e| e.response()), Err(None));
    }

    #[test]
    fn header_lines() {
        let msg = b"OPTIONS sip:a@b SIP/2.0\nVia\t:\tSIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bKx\nFrom: <sip:x@y>;tag=1\nTo: <sip:a@b>\nCall-ID: c\nCSeq: 1 OPTIONS\nX-Time: 12:00:01\n\n";
        let Ok(Message::Request(r)) = parse(msg) else {
            panic!("LF-only message with IPv6 Via did not parse")
        };
        assert_eq!(r.top_via().map(|v| v.host), Some("[2001:db8::1]".into()));
        assert_eq!(
            r.headers.get(&HeaderName::Other("x-time".into())),
            Some("12:00:01")
        );
        let cr = b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\rX: y\r\nCSeq: 1 OPTIONS\r\n\r\n";
        assert!(parse(cr).is_err());
    }

    #[test]
    fn limits() {
        let mut many = b"OPTIONS sip:a@b SIP/2.0\r\nContact: ".to_vec();
        many.extend(std::iter::repeat_n(b"<sip:x@y>,".as_slice(), 5000).flatten());
        many.extend_from_slice(b"<sip:x@y>\r\n\r\n");
        assert_eq!(parse(&many).map_err(|e| e.reason), Err("too many headers"));
        let big = vec![b'a'; MAX_MESSAGE_SIZE + 1];
        assert_eq!(parse(&big).map_err(|e| e.status), Err(513));
        let mut no_end = b"OPTIONS sip:a@b SIP/2.0\r\n".to_vec();
        no_end.resize(MAX_MESSAGE_SIZE + 1, b'a');
        assert_eq!(frame_stream(&no_end).map_err(|e| e.status), Err(513));
    }

    #[test]
    fn versions_and_status_lines() {
        let req = |line: &str| {
            let m = format!(
                "{line}\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n"
            );
            parse(m.as_bytes())
                .map(|_| ())
                .map_err(|e| (e.status, e.response().is_some()))
        };
        assert_eq!(req("OPTIONS sip:a@b sip/2.0"), Ok(()));
        assert_eq!(req("OPTIONS sip:a@b SIP/3.0"), Err((505, true)));
        assert_eq!(req("OPTIONS sip:a@b SIP/2"), Err((400, true)));
        assert_eq!(req("OPTIONS sip:a@b HTTP/1.1"), Err((400, true)));
        assert_eq!(req("OPTIONS <sip:a@b> SIP/2.0"), Err((400, true)));
        assert_eq!(req("OPT\x01IONS sip:a@b SIP/2.0"), Err((400, false)));
        let resp = |line: &str| {
            let m = format!(
                "{line}\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n"
            );
            match parse(m.as_bytes()) {
                Ok(Message::Response(r)) => Ok((r.status, r.reason)),
                other => Err(other.map(|_| ()).map_err(|e| e.response().is_some())),
            }
        };
        assert_eq!(resp("SIP/2.0 180 Ringing"), Ok((180, "Ringing".into())));
        assert_eq!(resp("SIP/2.0 200"), Ok((200, String::new())));
        assert_eq!(resp("SIP/2.0 099 Low"), Err(Err(false)));
        assert_eq!(resp("SIP/2.0 700 High"), Err(Err(false)));
        assert_eq!(resp("SIP/2.0 4294967301 Big"), Err(Err(false)));
    }

    /// An OPTIONS with the Request-Line, then `lines` (CRLF-terminated), then the end.
    fn options_with(lines: &[&[u8]]) -> Vec<u8> {
        let mut m = b"OPTIONS sip:a@b SIP/2.0\r\n".to_vec();
        for l in lines {
            m.extend_from_slice(l);
            m.extend_from_slice(b"\r\n");
        }
        m.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        m
    }

    const VIA: &[u8] = b"Via: SIP/2.0/UDP h;branch=z9hG4bKx";
    const FROM: &[u8] = b"From: <sip:x@y>;tag=1";
    const TO: &[u8] = b"To: <sip:a@b>";
    const CALL_ID: &[u8] = b"Call-ID: c";
    const CSEQ: &[u8] = b"CSeq: 1 OPTIONS";

    /// Parses a request that must be accepted, checks that it serializes to exactly the
    /// bytes received and reparses equal.
    fn accepted_verbatim(raw: &[u8]) -> Request {
        let m = parse(raw).unwrap_or_else(|e| panic!("{e:?}: {}", String::from_utf8_lossy(raw)));
        let Message::Request(r) = m else {
            panic!("a request")
        };
        let wire = r.to_bytes();
        assert_eq!(
            String::from_utf8_lossy(&wire),
            String::from_utf8_lossy(raw),
            "same text"
        );
        assert_eq!(wire, raw, "the bytes received go out");
        assert_eq!(parse(&wire), Ok(Message::Request(r.clone())), "round trip");
        r
    }

    #[test]
    fn latin1_display_name_parses_and_goes_out_verbatim() {
        let from: &[u8] = b"From: \"J\xf6rg M\xfcller\" <sip:joerg@example.net>;tag=1";
        let raw = options_with(&[VIA, from, TO, CALL_ID, CSEQ]);
        let r = accepted_verbatim(&raw);
        let value = r.headers.get(&HeaderName::From).expect("From");
        assert_eq!(
            value,
            "\"J\u{10fff6}rg M\u{10fffc}ller\" <sip:joerg@example.net>;tag=1"
        );
        let from = r.from().expect("From parses");
        assert_eq!(from.tag(), Some("1"));
        assert_eq!(from.uri.user.as_deref(), Some("joerg"));
        let display = from.display.expect("display name");
        assert_eq!(
            super::super::display_lossy(&display),
            "J\u{f6}rg M\u{fc}ller"
        );
        assert_eq!(&*super::super::wire_bytes(&display), b"J\xf6rg M\xfcller");
        // Unquoted too (not RFC 3261's token, but what clients send).
        let raw = options_with(&[
            VIA,
            b"From: J\xf6rg <sip:j@example.net>;tag=1",
            TO,
            CALL_ID,
            CSEQ,
        ]);
        let r = accepted_verbatim(&raw);
        assert_eq!(
            r.from().and_then(|f| f.display),
            Some("J\u{10fff6}rg".into())
        );
    }

    #[test]
    fn latin1_subject_user_agent_and_unknown_header_go_out_verbatim() {
        let raw = options_with(&[
            VIA,
            FROM,
            TO,
            CALL_ID,
            CSEQ,
            b"Subject: R\xe9union \xe0 midi",
            b"User-Agent: T\xe9l\xe9phone/1.0",
            b"X-Note: \xff\xfe folded\r\n  \xe9 on",
        ]);
        let Ok(Message::Request(r)) = parse(&raw) else {
            panic!("parses")
        };
        assert_eq!(
            r.headers.get(&HeaderName::Subject),
            Some("R\u{10ffe9}union \u{10ffe0} midi")
        );
        let wire = r.to_bytes();
        let find = |needle: &[u8]| wire.windows(needle.len()).any(|w| w == needle);
        assert!(find(b"\r\nSubject: R\xe9union \xe0 midi\r\n"));
        assert!(find(b"\r\nUser-Agent: T\xe9l\xe9phone/1.0\r\n"));
        // Folding is replaced by one space, the bytes around it are kept.
        assert!(find(b"\r\nX-Note: \xff\xfe folded \xe9 on\r\n"));
        assert_eq!(parse(&wire), Ok(Message::Request(r)));
    }

    #[test]
    fn plane_16_chars_in_valid_utf8_stay_distinct_from_raw_bytes() {
        // U+10FF90 is valid UTF-8 (F4 8F BE 90); the raw byte 0x90 would be the same char.
        let subject = "Subject: odd \u{10ff90} and raw ".as_bytes();
        let subject = [subject, b"\x90"].concat();
        let raw = options_with(&[VIA, FROM, TO, CALL_ID, CSEQ, &subject]);
        let r = accepted_verbatim(&raw);
        assert_eq!(
            r.headers.get(&HeaderName::Subject),
            Some("odd \u{10fff4}\u{10ff8f}\u{10ffbe}\u{10ff90} and raw \u{10ff90}")
        );
        // Valid UTF-8 without plane-16 chars is kept as it is.
        let raw = options_with(&[
            VIA,
            FROM,
            TO,
            CALL_ID,
            CSEQ,
            "Subject: J\u{f6}rg \u{1f600}".as_bytes(),
        ]);
        let r = accepted_verbatim(&raw);
        assert_eq!(
            r.headers.get(&HeaderName::Subject),
            Some("J\u{f6}rg \u{1f600}")
        );
    }

    #[test]
    fn latin1_reason_phrase_is_kept() {
        let raw = b"SIP/2.0 480 Temporairement indisponible \xe0 cette heure\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>;tag=2\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        let Ok(Message::Response(r)) = parse(raw) else {
            panic!("a Latin-1 reason phrase does not make a response unparsable")
        };
        assert_eq!(r.status, 480);
        assert_eq!(
            r.reason,
            "Temporairement indisponible \u{10ffe0} cette heure"
        );
        assert_eq!(r.to_bytes(), raw);
    }

    #[test]
    fn raw_bytes_in_structural_parts_get_a_400_naming_them() {
        let reason = |lines: &[&[u8]]| {
            let e = parse(&options_with(lines)).expect_err("refused");
            let resp = e.response().expect("answered");
            (resp.status, resp.reason)
        };
        let bad = |what: &str| (400, what.to_owned());
        assert_eq!(
            reason(&[VIA, FROM, TO, b"Call-ID: c\xe9", CSEQ]),
            bad("Bad Call-ID")
        );
        assert_eq!(
            reason(&[VIA, b"From: <sip:j\xf6rg@y>;tag=1", TO, CALL_ID, CSEQ]),
            bad("Bad From")
        );
        assert_eq!(
            reason(&[VIA, b"From: <sip:x@y>;tag=\xe9", TO, CALL_ID, CSEQ]),
            bad("Bad From")
        );
        assert_eq!(
            reason(&[VIA, FROM, TO, CALL_ID, b"CSeq: 1 OPTI\xd6NS"]),
            bad("Bad CSeq method")
        );
        assert_eq!(
            reason(&[
                b"Via: SIP/2.0/UDP h;branch=z9hG4bKx\xe9",
                FROM,
                TO,
                CALL_ID,
                CSEQ
            ]),
            bad("Bad Via")
        );
        // A raw byte in the Request-URI: 400, not silence.
        let raw = [
            b"OPTIONS sip:j\xf6rg@b SIP/2.0\r\n".as_slice(),
            &options_with(&[VIA, FROM, TO, CALL_ID, CSEQ])[25..],
        ]
        .concat();
        let e = parse(&raw).expect_err("refused");
        assert_eq!(
            e.response().map(|r| r.reason),
            Some("Malformed Request-URI".into())
        );
        // The 400 echoes the raw bytes as received.
        let e =
            parse(&options_with(&[VIA, FROM, TO, b"Call-ID: c\xe9", CSEQ])).expect_err("refused");
        let wire = e.response().expect("answered").to_bytes();
        let echoed = b"\r\nCall-ID: c\xe9\r\n";
        assert!(wire.windows(echoed.len()).any(|w| w == echoed));
    }

    #[test]
    fn bad_cseq_gets_a_400_echoing_it() {
        for (cseq, reason) in [
            (&b"CSeq: -1 OPTIONS"[..], "Bad CSeq number"),
            (b"CSeq: abc OPTIONS", "Bad CSeq number"),
            (b"CSeq: 1", "CSeq without method"),
            (b"CSeq: 2147483648 OPTIONS", "CSeq number too large"),
            (b"CSeq: 1 INVITE", "CSeq method does not match Request-Line"),
        ] {
            let e = parse(&options_with(&[VIA, FROM, TO, CALL_ID, cseq])).expect_err("refused");
            let resp = e
                .response()
                .unwrap_or_else(|| panic!("{:?} answered", e.reason));
            assert_eq!((resp.status, resp.reason.as_str()), (400, reason));
            let echoed = std::str::from_utf8(&cseq[6..]).expect("ascii");
            assert_eq!(resp.headers.get(&HeaderName::CSeq), Some(echoed));
            let wire = resp.to_bytes();
            assert!(wire.starts_with(format!("SIP/2.0 400 {reason}\r\n").as_bytes()));
        }
        // Without a CSeq: the Request-Line's method, so the client can match the answer.
        let e = parse(&options_with(&[VIA, FROM, TO, CALL_ID])).expect_err("refused");
        let resp = e.response().expect("answered");
        assert_eq!(resp.reason, "Missing CSeq");
        assert_eq!(resp.headers.get(&HeaderName::CSeq), Some("0 OPTIONS"));
        // Two of a kind name the header.
        let e = parse(&options_with(&[VIA, FROM, TO, TO, CALL_ID, CSEQ])).expect_err("refused");
        assert_eq!(e.response().map(|r| r.reason), Some("Duplicate To".into()));
        // No answer when none can be addressed.
        for lines in [
            &[FROM, TO, CALL_ID, b"CSeq: -1 OPTIONS"][..],
            &[VIA, TO, CALL_ID, CSEQ],
            &[VIA, FROM, CALL_ID, CSEQ],
            &[VIA, FROM, TO, CSEQ],
        ] {
            let e = parse(&options_with(lines)).expect_err("refused");
            assert_eq!(e.response(), None, "{}", e.reason);
        }
    }

    #[test]
    fn truncated_or_crowded_requests_are_answered() {
        // A datagram cut inside a header line: the complete lines address the 400.
        let whole = options_with(&[VIA, FROM, TO, CALL_ID, CSEQ, b"Subject: cut here"]);
        let cut = &whole[..whole.len() - 30];
        let e = parse(cut).expect_err("refused");
        assert_eq!(
            e.response().map(|r| r.reason),
            Some("No end of headers".into())
        );
        // Too many headers: answered from the first ones.
        let filler: Vec<&[u8]> = std::iter::repeat_n(&b"X: y"[..], MAX_HEADERS).collect();
        let many = options_with(&[&[VIA, FROM, TO, CALL_ID, CSEQ][..], &filler].concat());
        let e = parse(&many).expect_err("refused");
        assert_eq!(e.reason, "too many headers");
        assert_eq!(e.response().map(|r| r.status), Some(400));
    }

    #[test]
    fn framing_errors_carry_an_answer() {
        let head = options_with(&[VIA, FROM, TO, CALL_ID, CSEQ]);
        let text = String::from_utf8(head).expect("ascii");
        // Too large by Content-Length: 513 with the request's headers.
        let big = text.replace("Content-Length: 0", "Content-Length: 70000");
        let e = frame_stream(big.as_bytes()).expect_err("too large");
        let resp = e.response().expect("answered");
        assert_eq!(
            (resp.status, resp.reason.as_str()),
            (513, "Message Too Large")
        );
        assert_eq!(resp.headers.get(&HeaderName::CSeq), Some("1 OPTIONS"));
        assert_eq!(
            resp.headers.get(&HeaderName::Via),
            Some("SIP/2.0/UDP h;branch=z9hG4bKx")
        );
        // A header section that never ends: from the lines within the size limit.
        let mut endless = text.replace("Content-Length: 0\r\n\r\n", "").into_bytes();
        while endless.len() <= MAX_MESSAGE_SIZE + 10 {
            endless.extend_from_slice(b"X-Filler: 0123456789\r\n");
        }
        let e = frame_stream(&endless).expect_err("too large");
        assert_eq!(e.response().map(|r| r.status), Some(513));
        // Unframeable: 400 then close.
        let none = text.replace("Content-Length: 0\r\n", "");
        let e = frame_stream(none.as_bytes()).expect_err("no Content-Length");
        assert_eq!(e.response().map(|r| r.status), Some(400));
        let two = text.replace("Content-Length: 0", "l: 1\r\nContent-Length: 2");
        let e = frame_stream(two.as_bytes()).expect_err("conflicting");
        assert_eq!(
            e.response().map(|r| r.reason),
            Some("Conflicting Content-Length".into())
        );
        // Not for an ACK, nor a response, nor without a Call-ID.
        for (from, to) in [
            ("OPTIONS sip:a@b", "ACK sip:a@b"),
            ("OPTIONS sip:a@b SIP/2.0", "SIP/2.0 200 OK"),
            ("Call-ID: c\r\n", ""),
        ] {
            let other = big.replace(from, to);
            assert_eq!(
                frame_stream(other.as_bytes()).map_err(|e| e.response()),
                Err(None),
                "{other}"
            );
        }
        // A parse of more than the limit: 513 too (not on UDP, whose datagrams are smaller).
        let mut huge = big
            .replace("Content-Length: 70000", "Content-Length: 65600")
            .into_bytes();
        huge.resize(huge.len() + 65_600, b'a');
        assert_eq!(
            parse(&huge).map_err(|e| e.response().map(|r| r.status)),
            Err(Some(513))
        );
    }
}
