//! The parser: bytes to [`Message`], with the checks RFC 3261 §7 / §8.2 / §18.3 and
//! RFC 4475 ask for, and stream framing for TCP.
//!
//! Limits are fixed and small on purpose (RFC 4475 §3.1.2, threat 11 of SECURITY.md): a
//! message over [`MAX_MESSAGE_SIZE`] or with more than [`MAX_HEADERS`] headers is refused
//! before any work is done on it.
//!
//! Content-Length is framing, not content: the parser checks it, cuts the body with it and
//! does not keep it in [`Headers`]; the serializer always writes it from the body. So
//! `parse(&m.to_bytes()) == Ok(m)` for every parsed message `m`.

use bytes::Bytes;

use super::check::{check_headers, reply_headers};
use super::lines::{Fields, HeadEnd, next_line};
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
    /// What was wrong, for logs and the 400's reason phrase.
    pub reason: &'static str,
    /// The status to answer with (400, 413, 416, 505, …).
    pub status: u16,
    /// Headers needed to build a response (Via, From, To, Call-ID, CSeq), when the message
    /// was a request (not an ACK) whose headers got that far. `None`: drop silently
    /// (RFC 3261 §18.3).
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
    /// Keep-alive CRLFs (RFC 5626 §3.5.1): skip this many bytes.
    KeepAlive(usize),
    /// A whole message of this many bytes is at the start of the buffer.
    Message(usize),
}

/// Frames one message on a stream transport (RFC 3261 §18.3: Content-Length is mandatory).
///
/// An `Err` is a framing error the stream cannot recover from: close the connection
/// (RFC 4475 mcl01).
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
            return Err(ParseError::status("header section too large", 413));
        }
        return Ok(Frame::Incomplete);
    };
    let length = length.map_err(ParseError::new)?.ok_or(ParseError::new(
        "Content-Length required on stream transports",
    ))?;
    let total = body_start.saturating_add(length);
    if total > MAX_MESSAGE_SIZE {
        return Err(ParseError::status("message too large", 413));
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
/// header line, without the empty line, is taken as headers only. Only the header section
/// must be UTF-8; the body is bytes.
pub fn parse(buf: &[u8]) -> Result<Message, ParseError> {
    if buf.len() > MAX_MESSAGE_SIZE {
        return Err(ParseError::status("message too large", 413));
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
    let first = std::str::from_utf8(first).unwrap_or("");
    let start_line = StartLine::parse(first);
    // No response to a request that is not one (§18.3), nor to an ACK (§17.1.1.1).
    let answerable = matches!(start_line, Ok(StartLine::Request(..)) | Err(Some(_)))
        && !first.starts_with("ACK ");

    // Find the fields first, then check UTF-8 once for the whole header section.
    let mut fields = Fields::new(buf, fields_start);
    let mut found = Vec::with_capacity(24);
    for field in fields.by_ref() {
        if found.len() >= MAX_HEADERS {
            return Err(ParseError::new("too many headers"));
        }
        found.push(field);
    }
    let body_start = match fields.end {
        HeadEnd::Body(at) => at,
        // A datagram that ends right after a header line: headers only.
        HeadEnd::Eof => buf.len(),
        HeadEnd::Open | HeadEnd::Truncated => return Err(ParseError::new("no end of headers")),
    };
    let head = std::str::from_utf8(&buf[..body_start]).ok();

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
        let text = match head {
            Some(head) => head.get(field.span()),
            None => std::str::from_utf8(&buf[field.span()]).ok(),
        };
        let Some(text) = text else {
            err.get_or_insert(ParseError::new("header is not UTF-8"));
            continue;
        };
        let at = field.name.start;
        let (Some(name), Some(raw)) = (
            text.get(..field.name.end - at),
            text.get(field.value.start - at..),
        ) else {
            err.get_or_insert(ParseError::new("bad header line"));
            continue;
        };
        if !is_token(name) {
            err.get_or_insert(ParseError::new("bad header name"));
            continue;
        }
        let name = HeaderName::from_token(name);
        if name == HeaderName::ContentLength {
            match content_length(raw) {
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
        let value = if field.folded {
            unfold(raw)
        } else {
            trim_lws(raw).to_owned()
        };
        if let Err(e) = push_header(&mut headers, name, value) {
            err.get_or_insert(e);
        }
        if headers.0.len() > MAX_HEADERS {
            return Err(ParseError::new("too many headers"));
        }
    }
    let fail = |mut e: ParseError, headers: &Headers| {
        if answerable {
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
    let method = match &start_line {
        StartLine::Request(m, _) => Some(m),
        StartLine::Response(..) => None,
    };
    if let Err(e) = check_headers(&headers, method) {
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

enum StartLine {
    Request(Method, Uri),
    Response(u16, String),
}

impl StartLine {
    /// `Err(Some(e))`: a request line we could not accept (answerable);
    /// `Err(None)`: not recognisable at all, or a bad status line (drop).
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
fn push_header(headers: &mut Headers, name: HeaderName, value: String) -> Result<(), ParseError> {
    if !name.is_split_list() || find_byte(value.as_bytes(), b',').is_none() {
        headers.0.push(Header { name, value });
        return Ok(());
    }
    if split_unquoted(&value, b',').any(|p| trim_lws(p).is_empty()) {
        headers.0.push(Header { name, value });
        return Err(ParseError::new("empty list element"));
    }
    for part in split_unquoted(&value, b',') {
        if headers.0.len() > MAX_HEADERS {
            return Err(ParseError::new("too many headers"));
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
        assert_eq!(frame_stream(huge).map_err(|e| e.status), Err(413));
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
        assert_eq!(parse(&big).map_err(|e| e.status), Err(413));
        let mut no_end = b"OPTIONS sip:a@b SIP/2.0\r\n".to_vec();
        no_end.resize(MAX_MESSAGE_SIZE + 1, b'a');
        assert_eq!(frame_stream(&no_end).map_err(|e| e.status), Err(413));
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
}
