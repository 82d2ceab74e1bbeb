//! Header names (with compact forms) and the typed headers a proxy needs: Via, CSeq and
//! name-addr (From, To, Contact, Route, Record-Route).

use super::{Method, Uri};

/// A header name. Known names are an enum (cheap to compare); others keep their spelling.
/// Names compare case-insensitively (RFC 3261 §7.3.1), which the parser guarantees by mapping
/// every spelling of a known name to its variant.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[allow(missing_docs)]
pub enum HeaderName {
    Via,
    From,
    To,
    CallId,
    CSeq,
    MaxForwards,
    Contact,
    ContentLength,
    ContentType,
    ContentEncoding,
    Route,
    RecordRoute,
    Expires,
    MinExpires,
    Authorization,
    ProxyAuthorization,
    WwwAuthenticate,
    ProxyAuthenticate,
    AuthenticationInfo,
    Supported,
    Require,
    ProxyRequire,
    Unsupported,
    Allow,
    Reason,
    PAssertedIdentity,
    PPreferredIdentity,
    Identity,
    UserAgent,
    Server,
    Timestamp,
    Date,
    Subject,
    Event,
    ReferTo,
    /// Any other header, with its name as received.
    Other(String),
}

impl HeaderName {
    /// Maps a received name (any case, compact or long) to a header name.
    pub fn from_wire(name: &str) -> Self {
        if name.len() == 1 {
            return match name.as_bytes()[0].to_ascii_lowercase() {
                b'v' => Self::Via,
                b'f' => Self::From,
                b't' => Self::To,
                b'i' => Self::CallId,
                b'm' => Self::Contact,
                b'l' => Self::ContentLength,
                b'c' => Self::ContentType,
                b'e' => Self::ContentEncoding,
                b'k' => Self::Supported,
                b's' => Self::Subject,
                b'o' => Self::Event,
                b'r' => Self::ReferTo,
                b'y' => Self::Identity,
                _ => Self::Other(name.to_owned()),
            };
        }
        const KNOWN: &[(&str, HeaderName)] = &[
            ("via", HeaderName::Via),
            ("from", HeaderName::From),
            ("to", HeaderName::To),
            ("call-id", HeaderName::CallId),
            ("cseq", HeaderName::CSeq),
            ("max-forwards", HeaderName::MaxForwards),
            ("contact", HeaderName::Contact),
            ("content-length", HeaderName::ContentLength),
            ("content-type", HeaderName::ContentType),
            ("content-encoding", HeaderName::ContentEncoding),
            ("route", HeaderName::Route),
            ("record-route", HeaderName::RecordRoute),
            ("expires", HeaderName::Expires),
            ("min-expires", HeaderName::MinExpires),
            ("authorization", HeaderName::Authorization),
            ("proxy-authorization", HeaderName::ProxyAuthorization),
            ("www-authenticate", HeaderName::WwwAuthenticate),
            ("proxy-authenticate", HeaderName::ProxyAuthenticate),
            ("authentication-info", HeaderName::AuthenticationInfo),
            ("supported", HeaderName::Supported),
            ("require", HeaderName::Require),
            ("proxy-require", HeaderName::ProxyRequire),
            ("unsupported", HeaderName::Unsupported),
            ("allow", HeaderName::Allow),
            ("reason", HeaderName::Reason),
            ("p-asserted-identity", HeaderName::PAssertedIdentity),
            ("p-preferred-identity", HeaderName::PPreferredIdentity),
            ("identity", HeaderName::Identity),
            ("user-agent", HeaderName::UserAgent),
            ("server", HeaderName::Server),
            ("timestamp", HeaderName::Timestamp),
            ("date", HeaderName::Date),
            ("subject", HeaderName::Subject),
            ("event", HeaderName::Event),
            ("refer-to", HeaderName::ReferTo),
        ];
        KNOWN
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map_or_else(|| Self::Other(name.to_owned()), |(_, v)| v.clone())
    }

    /// The canonical long spelling.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Via => "Via",
            Self::From => "From",
            Self::To => "To",
            Self::CallId => "Call-ID",
            Self::CSeq => "CSeq",
            Self::MaxForwards => "Max-Forwards",
            Self::Contact => "Contact",
            Self::ContentLength => "Content-Length",
            Self::ContentType => "Content-Type",
            Self::ContentEncoding => "Content-Encoding",
            Self::Route => "Route",
            Self::RecordRoute => "Record-Route",
            Self::Expires => "Expires",
            Self::MinExpires => "Min-Expires",
            Self::Authorization => "Authorization",
            Self::ProxyAuthorization => "Proxy-Authorization",
            Self::WwwAuthenticate => "WWW-Authenticate",
            Self::ProxyAuthenticate => "Proxy-Authenticate",
            Self::AuthenticationInfo => "Authentication-Info",
            Self::Supported => "Supported",
            Self::Require => "Require",
            Self::ProxyRequire => "Proxy-Require",
            Self::Unsupported => "Unsupported",
            Self::Allow => "Allow",
            Self::Reason => "Reason",
            Self::PAssertedIdentity => "P-Asserted-Identity",
            Self::PPreferredIdentity => "P-Preferred-Identity",
            Self::Identity => "Identity",
            Self::UserAgent => "User-Agent",
            Self::Server => "Server",
            Self::Timestamp => "Timestamp",
            Self::Date => "Date",
            Self::Subject => "Subject",
            Self::Event => "Event",
            Self::ReferTo => "Refer-To",
            Self::Other(s) => s,
        }
    }

    /// Headers whose comma-separated values the parser splits into one entry each
    /// (RFC 3261 §7.3.1 allows either form; the proxy edits these lists).
    pub(crate) fn is_split_list(&self) -> bool {
        matches!(
            self,
            Self::Via | Self::Route | Self::RecordRoute | Self::Contact
        )
    }
}

/// A `;name[=value]` parameter. Names are kept as received; compare with `eq_ignore_ascii_case`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// Parameter name.
    pub name: String,
    /// Value, if any (quotes kept).
    pub value: Option<String>,
}

/// Parses `;a=b;c` (the leading `;` optional) into parameters. Quoted values may hold `;`.
pub(crate) fn parse_params(s: &str) -> Result<Vec<Param>, &'static str> {
    let mut out = Vec::new();
    for part in split_unquoted(s, b';') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let (name, value) = match part.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().to_owned())),
            None => (part, None),
        };
        if name.is_empty() || !name.bytes().all(is_token_char) {
            return Err("bad parameter name");
        }
        if let Some(v) = &value {
            if v.is_empty() {
                return Err("empty parameter value");
            }
            if v.starts_with('"') && (v.len() < 2 || !v.ends_with('"')) {
                return Err("unterminated quoted parameter");
            }
        }
        out.push(Param {
            name: name.to_owned(),
            value,
        });
    }
    Ok(out)
}

/// Finds parameter `name` (case-insensitive); `Some(None)` for a flag without value.
pub(crate) fn find_param<'a>(params: &'a [Param], name: &str) -> Option<Option<&'a str>> {
    params
        .iter()
        .find(|p| p.name.eq_ignore_ascii_case(name))
        .map(|p| p.value.as_deref())
}

/// Splits `s` on `sep` outside double quotes and angle brackets.
pub(crate) fn split_unquoted(s: &str, sep: u8) -> impl Iterator<Item = &str> {
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    let mut quoted = false;
    let mut angle = false;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        while i < bytes.len() {
            let c = bytes[i];
            if quoted {
                if c == b'\\' {
                    i += 1;
                } else if c == b'"' {
                    quoted = false;
                }
            } else if c == b'"' {
                quoted = true;
            } else if c == b'<' {
                angle = true;
            } else if c == b'>' {
                angle = false;
            } else if c == sep && !angle {
                let part = &s[start..i];
                i += 1;
                start = i;
                return Some(part);
            }
            i += 1;
        }
        done = true;
        Some(&s[start.min(s.len())..])
    })
}

/// RFC 3261 `token` characters.
pub(crate) fn is_token_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&c)
}

/// A parsed Via header value (RFC 3261 §20.42).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// Transport token, upper-case (`UDP`, `TCP`, `TLS`, …).
    pub transport: String,
    /// sent-by host (IPv6 in brackets as received).
    pub host: String,
    /// sent-by port, if given.
    pub port: Option<u16>,
    /// Parameters (branch, received, rport, …).
    pub params: Vec<Param>,
}

impl Via {
    /// Parses one Via value.
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        let s = s.trim();
        let (proto, rest) = s.split_once('/').ok_or("Via without protocol")?;
        if !proto.trim().eq_ignore_ascii_case("SIP") {
            return Err("Via protocol is not SIP");
        }
        let (version, rest) = rest.split_once('/').ok_or("Via without version")?;
        if version.trim() != "2.0" {
            return Err("Via version is not 2.0");
        }
        let rest = rest.trim_start();
        let t_end = rest
            .find(|c: char| c.is_ascii_whitespace())
            .ok_or("Via without sent-by")?;
        let transport = rest[..t_end].to_ascii_uppercase();
        if transport.is_empty() || !transport.bytes().all(is_token_char) {
            return Err("bad Via transport");
        }
        let rest = rest[t_end..].trim_start();
        let (sent_by, params) = match rest.find(';') {
            Some(i) => (rest[..i].trim(), &rest[i..]),
            None => (rest.trim(), ""),
        };
        let (host, port) = split_host_port(sent_by)?;
        let params = parse_params(params)?;
        Ok(Self {
            transport,
            host: host.to_owned(),
            port,
            params,
        })
    }

    /// The branch parameter.
    pub fn branch(&self) -> Option<&str> {
        find_param(&self.params, "branch").flatten()
    }

    /// A parameter's value (`Some(None)` if present without value).
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        find_param(&self.params, name)
    }
}

/// Splits `host[:port]`, IPv6 references in brackets.
pub(crate) fn split_host_port(s: &str) -> Result<(&str, Option<u16>), &'static str> {
    let (host, port) = if s.starts_with('[') {
        let end = s.find(']').ok_or("unterminated IPv6 reference")?;
        let host = &s[..=end];
        match s[end + 1..].strip_prefix(':') {
            Some(p) => (host, Some(p)),
            None if s.len() == end + 1 => (host, None),
            None => return Err("junk after IPv6 reference"),
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if host.is_empty()
        || !host
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-.[]:_".contains(&c))
    {
        return Err("bad host");
    }
    let port = match port {
        Some(p) => Some(p.trim().parse::<u16>().map_err(|_| "bad port")?),
        None => None,
    };
    Ok((host, port))
}

/// A parsed CSeq (RFC 3261 §20.16).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CSeq {
    /// Sequence number, below 2**31.
    pub seq: u32,
    /// Method.
    pub method: Method,
}

impl CSeq {
    /// Parses `NUMBER METHOD`.
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        let mut it = s.split_ascii_whitespace();
        let num = it.next().ok_or("empty CSeq")?;
        let method = it.next().ok_or("CSeq without method")?;
        if it.next().is_some() {
            return Err("junk after CSeq method");
        }
        if num.len() > 10 || !num.bytes().all(|c| c.is_ascii_digit()) {
            return Err("bad CSeq number");
        }
        let seq: u64 = num.parse().map_err(|_| "bad CSeq number")?;
        if seq >= 1 << 31 {
            return Err("CSeq number too large");
        }
        if !method.bytes().all(is_token_char) {
            return Err("bad CSeq method");
        }
        Ok(Self {
            seq: seq as u32,
            method: Method::from_token(method),
        })
    }
}

/// A name-addr or addr-spec with header parameters: From, To, Contact, Route, Record-Route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    /// Display name, unquoted.
    pub display: Option<String>,
    /// The URI.
    pub uri: Uri,
    /// Header parameters after the URI (tag, expires, q, …).
    pub params: Vec<Param>,
}

impl NameAddr {
    /// Parses `"Name" <uri>;params`, `Name <uri>;params` or `uri;params` (addr-spec, where
    /// parameters belong to the header, RFC 3261 §20.10).
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        let s = s.trim();
        if let Some(lt) = find_unquoted(s, b'<') {
            let display = s[..lt].trim();
            let display = if display.is_empty() {
                None
            } else if let Some(q) = display.strip_prefix('"') {
                let inner = q
                    .strip_suffix('"')
                    .ok_or("unbalanced quotes in display name")?;
                Some(unescape_quoted(inner))
            } else {
                if display.contains('"') {
                    return Err("stray quote in display name");
                }
                Some(display.to_owned())
            };
            let gt = s[lt..].find('>').ok_or("missing '>'")? + lt;
            let uri = Uri::parse(&s[lt + 1..gt]).map_err(|_| "bad URI in name-addr")?;
            let rest = s[gt + 1..].trim();
            if !rest.is_empty() && !rest.starts_with(';') {
                return Err("junk after '>'");
            }
            Ok(Self {
                display,
                uri,
                params: parse_params(rest)?,
            })
        } else {
            if s.contains('"') || s.contains(char::is_whitespace) && !s.contains(';') {
                return Err("addr-spec with spaces or quotes needs <>");
            }
            let (uri, params) = match s.find(';') {
                Some(i) => (&s[..i], &s[i..]),
                None => (s, ""),
            };
            let uri = Uri::parse(uri.trim()).map_err(|_| "bad URI")?;
            Ok(Self {
                display: None,
                uri,
                params: parse_params(params)?,
            })
        }
    }

    /// The tag parameter.
    pub fn tag(&self) -> Option<&str> {
        find_param(&self.params, "tag").flatten()
    }

    /// A header parameter's value.
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        find_param(&self.params, name)
    }
}

fn find_unquoted(s: &str, c: u8) -> Option<usize> {
    let mut quoted = false;
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            x if x == c && !quoted => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

fn unescape_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\\' {
            if let Some(n) = it.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}
