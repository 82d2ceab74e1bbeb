//! SIP messages (RFC 3261 §7): owned, validated requests and responses.
//!
//! Why our own parser: no Rust SIP crate passes RFC 4475 and keeps the §16 proxy's needs (exact
//! Via/Route handling, compact forms, strict Content-Length framing) at the speed we want
//! (see `shared/CRATES.md`). The parser validates the headers a proxy depends on at parse time
//! ("parse, don't validate"), keeps every other header as text, and splits comma-separated lists
//! of Via / Route / Record-Route / Contact into one entry per value so the proxy can push and pop
//! them as plain vector operations.
//!
//! What [`parse`] guarantees for a message it returns:
//! - header names are mapped to [`HeaderName`] (compact forms and any case); values are
//!   text (see "Header values are bytes" below) with folding replaced by single spaces and
//!   surrounding LWS trimmed;
//! - exactly one From, To, Call-ID and CSeq, at most one Max-Forwards, at least one Via;
//!   a request's CSeq method equals its method; so [`Request::from`], [`Request::to`],
//!   [`Request::top_via`] and [`Request::cseq`] never fail, and [`Via::parse`] /
//!   [`NameAddr::parse`] / [`CSeq::parse`] succeed on every Via, From, To, Contact (but `*`),
//!   Route and Record-Route value;
//! - Content-Length is consumed: it frames the body and is not kept in [`Headers`]; the
//!   serializer always writes it from the body, so `parse(&m.to_bytes()) == Ok(m)`;
//! - the RFC 4475 torture messages get the answers their README asks for (see
//!   `tests/rfc4475.rs`).
//!
//! The parser allocates only the owned result (one `String` per header value, the
//! Request-URI, the body): validation runs on borrowed scanners (`scan.rs`).
//!
//! # Header values are bytes
//!
//! RFC 3261 makes the header section UTF-8, but real clients send ISO-8859-1 display names,
//! Subjects and User-Agents (`From: "J\xf6rg" <sip:joerg@example.net>`). A proxy must
//! still answer such a request, and relay it byte for byte: the bytes are the client's, and
//! a proxy that "repairs" them breaks what the far end shows or verifies. Yet header values
//! are `String`s for the whole core ([`Header::value`], [`Headers::get`]). So values (and a
//! response's reason phrase) are kept losslessly as "UTF-8b" text: each byte that is not
//! part of valid UTF-8 is stored as the char U+10FF00 + byte (0x80..=0xFF become
//! U+10FF80..=U+10FFFF, plane-16 private use), and a valid char of that range received has
//! each of its bytes stored the same way. The serializer writes every char of that range as
//! the byte it stands for, so `parse(&m.to_bytes()) == Ok(m)` still holds and the bytes on
//! the wire are the bytes received. [`header_text`] and [`wire_bytes`] are the two
//! directions, [`display_lossy`] shows such text to people (raw bytes as ISO-8859-1).
//!
//! Tolerance stops at structure: the Request-URI, Via sent-by and parameters, tags, CSeq and
//! Call-ID are checked as before, with grammars that hold no raw byte, so a raw byte there is
//! a 400 naming the header. Raw bytes are fine in a display name (quoted or not), a quoted
//! string, and any header the core does not check. A UTF-8 header section without a 0xF4
//! byte (the lead byte of every char from U+100000) costs one byte search and nothing else.

mod check;
mod header;
mod lines;
mod name;
mod parse;
mod raw;
mod scan;
mod serialize;
mod uri;

pub use header::{CSeq, NameAddr, Param, Via};
pub use name::HeaderName;
pub use parse::{Frame, MAX_HEADERS, MAX_MESSAGE_SIZE, ParseError, frame_stream, parse};
pub use raw::{display_lossy, header_text, wire_bytes};
pub use uri::{Uri, UriError};

use bytes::Bytes;

/// A SIP request method. Unknown extension methods are kept by name (RFC 3261 §7.1).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Method {
    /// INVITE
    Invite,
    /// ACK
    Ack,
    /// BYE
    Bye,
    /// CANCEL
    Cancel,
    /// REGISTER
    Register,
    /// OPTIONS
    Options,
    /// PRACK (RFC 3262)
    Prack,
    /// UPDATE (RFC 3311)
    Update,
    /// INFO (RFC 6086)
    Info,
    /// SUBSCRIBE (RFC 6665)
    Subscribe,
    /// NOTIFY (RFC 6665)
    Notify,
    /// REFER (RFC 3515)
    Refer,
    /// MESSAGE (RFC 3428)
    Message,
    /// PUBLISH (RFC 3903)
    Publish,
    /// Any other token.
    Extension(String),
}

impl Method {
    /// Parses a method token (case-sensitive, RFC 3261 §7.1).
    pub fn from_token(s: &str) -> Self {
        match s {
            "INVITE" => Self::Invite,
            "ACK" => Self::Ack,
            "BYE" => Self::Bye,
            "CANCEL" => Self::Cancel,
            "REGISTER" => Self::Register,
            "OPTIONS" => Self::Options,
            "PRACK" => Self::Prack,
            "UPDATE" => Self::Update,
            "INFO" => Self::Info,
            "SUBSCRIBE" => Self::Subscribe,
            "NOTIFY" => Self::Notify,
            "REFER" => Self::Refer,
            "MESSAGE" => Self::Message,
            "PUBLISH" => Self::Publish,
            other => Self::Extension(other.to_owned()),
        }
    }

    /// The method's token.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Invite => "INVITE",
            Self::Ack => "ACK",
            Self::Bye => "BYE",
            Self::Cancel => "CANCEL",
            Self::Register => "REGISTER",
            Self::Options => "OPTIONS",
            Self::Prack => "PRACK",
            Self::Update => "UPDATE",
            Self::Info => "INFO",
            Self::Subscribe => "SUBSCRIBE",
            Self::Notify => "NOTIFY",
            Self::Refer => "REFER",
            Self::Message => "MESSAGE",
            Self::Publish => "PUBLISH",
            Self::Extension(s) => s,
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One header line: a name and its raw value (LWS folded to single spaces, trimmed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The header's name (compact forms are expanded).
    pub name: HeaderName,
    /// The value as text: UTF-8, with bytes received that were not as chars
    /// U+10FF80..=U+10FFFF (see the module docs; [`display_lossy`] for logs).
    pub value: String,
}

/// An ordered header list. Order matters for Via, Route and Record-Route.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<Header>);

impl Headers {
    /// The first value of `name`.
    pub fn get(&self, name: &HeaderName) -> Option<&str> {
        self.0
            .iter()
            .find(|h| &h.name == name)
            .map(|h| h.value.as_str())
    }

    /// Every value of `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |h| &h.name == name)
            .map(|h| h.value.as_str())
    }

    /// Whether `name` appears at all.
    pub fn contains(&self, name: &HeaderName) -> bool {
        self.0.iter().any(|h| &h.name == name)
    }

    /// Appends a header at the end.
    pub fn push(&mut self, name: HeaderName, value: impl Into<String>) {
        self.0.push(Header {
            name,
            value: value.into(),
        });
    }

    /// Inserts `name: value` before the first header of the same name (or at the end), which
    /// is where a proxy puts its Via and Record-Route (RFC 3261 §16.6).
    pub fn push_front(&mut self, name: HeaderName, value: impl Into<String>) {
        let at = self
            .0
            .iter()
            .position(|h| h.name == name)
            .unwrap_or(self.0.len());
        self.0.insert(
            at,
            Header {
                name,
                value: value.into(),
            },
        );
    }

    /// Removes and returns the first value of `name`.
    pub fn remove_first(&mut self, name: &HeaderName) -> Option<String> {
        let at = self.0.iter().position(|h| &h.name == name)?;
        Some(self.0.remove(at).value)
    }

    /// Removes every value of `name`.
    pub fn remove_all(&mut self, name: &HeaderName) {
        self.0.retain(|h| &h.name != name);
    }

    /// Replaces every value of `name` with one value.
    pub fn set(&mut self, name: HeaderName, value: impl Into<String>) {
        let value = value.into();
        match self.0.iter().position(|h| h.name == name) {
            Some(at) => {
                self.0[at].value = value;
                let mut i = 0;
                self.0.retain(|h| {
                    i += 1;
                    i - 1 <= at || h.name != name
                });
            }
            None => self.push(name, value),
        }
    }

    /// Whether a comma-separated token list header (Supported, Require, …) holds `token`,
    /// compared case-insensitively.
    pub fn has_token(&self, name: &HeaderName, token: &str) -> bool {
        self.get_all(name)
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

/// A SIP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// The Request-URI.
    pub uri: Uri,
    /// The headers, in order.
    pub headers: Headers,
    /// The body (Content-Length bytes).
    pub body: Bytes,
}

/// A SIP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code, 100..=699.
    pub status: u16,
    /// Reason phrase (raw bytes kept as [`Header::value`] keeps them).
    pub reason: String,
    /// The headers, in order.
    pub headers: Headers,
    /// The body.
    pub body: Bytes,
}

/// A request or a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A request.
    Request(Request),
    /// A response.
    Response(Response),
}

impl Message {
    /// The headers of either kind.
    pub fn headers(&self) -> &Headers {
        match self {
            Self::Request(r) => &r.headers,
            Self::Response(r) => &r.headers,
        }
    }
}

/// Accessors for the headers every valid message has (checked by [`parse`]).
macro_rules! common_accessors {
    ($t:ty) => {
        impl $t {
            /// The Call-ID.
            pub fn call_id(&self) -> &str {
                self.headers.get(&HeaderName::CallId).unwrap_or("")
            }

            /// The parsed CSeq (`0` and the request method when absent, which `parse` rejects).
            pub fn cseq(&self) -> CSeq {
                self.headers
                    .get(&HeaderName::CSeq)
                    .and_then(|v| CSeq::parse(v).ok())
                    .unwrap_or(CSeq {
                        seq: 0,
                        method: Method::Extension(String::new()),
                    })
            }

            /// The topmost Via, parsed.
            pub fn top_via(&self) -> Option<Via> {
                self.headers
                    .get(&HeaderName::Via)
                    .and_then(|v| Via::parse(v).ok())
            }

            /// The From header, parsed.
            pub fn from(&self) -> Option<NameAddr> {
                self.headers
                    .get(&HeaderName::From)
                    .and_then(|v| NameAddr::parse(v).ok())
            }

            /// The To header, parsed.
            pub fn to(&self) -> Option<NameAddr> {
                self.headers
                    .get(&HeaderName::To)
                    .and_then(|v| NameAddr::parse(v).ok())
            }

            /// Serializes the message with a correct Content-Length.
            pub fn to_bytes(&self) -> Vec<u8> {
                let mut out = Vec::with_capacity(512 + self.body.len());
                self.write_to(&mut out);
                out
            }
        }
    };
}
common_accessors!(Request);
common_accessors!(Response);

impl Response {
    /// Builds a response to `req` per RFC 3261 §8.2.6: copies Via, From, To, Call-ID and CSeq
    /// (and Record-Route for dialog-creating 1xx/2xx, §12.1.1); adds a To tag when `to_tag`
    /// is given and the To has none.
    pub fn to_request(req: &Request, status: u16, reason: &str, to_tag: Option<&str>) -> Self {
        let mut headers = Headers(Vec::with_capacity(8));
        for h in &req.headers.0 {
            match h.name {
                HeaderName::Via | HeaderName::From | HeaderName::CallId | HeaderName::CSeq => {
                    headers.0.push(h.clone())
                }
                HeaderName::To => {
                    let mut value = h.value.clone();
                    if let Some(tag) = to_tag
                        && status > 100
                        && NameAddr::parse(&h.value).is_ok_and(|t| t.tag().is_none())
                    {
                        value.push_str(";tag=");
                        value.push_str(tag);
                    }
                    headers.0.push(Header {
                        name: HeaderName::To,
                        value,
                    });
                }
                HeaderName::Timestamp if status == 100 => headers.0.push(h.clone()),
                _ => {}
            }
        }
        Self {
            status,
            reason: reason.to_owned(),
            headers,
            body: Bytes::new(),
        }
    }

    /// The response's class: 1 for provisional, 2 for success, … 6 for global failure.
    pub fn class(&self) -> u16 {
        self.status / 100
    }
}

/// The default reason phrase for a status code (RFC 3261 §21 and later RFCs).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        199 => "Early Dialog Terminated",
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Request Entity Too Large",
        414 => "Request-URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        421 => "Extension Required",
        423 => "Interval Too Brief",
        429 => "Too Many Requests",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        484 => "Address Incomplete",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        600 => "Busy Everywhere",
        603 => "Decline",
        604 => "Does Not Exist Anywhere",
        606 => "Not Acceptable",
        _ => "Unknown",
    }
}
