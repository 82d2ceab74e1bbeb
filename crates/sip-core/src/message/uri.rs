//! SIP and SIPS URIs (RFC 3261 §19.1); other schemes (tel:, urn:, …) are kept opaque.

use std::fmt;

use super::header::{Param, find_param};
use super::scan::{byte_class, find, split_host_port, split1};

/// Why a URI did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UriError {
    /// No `scheme:` prefix.
    #[error("URI has no scheme")]
    NoScheme,
    /// Bad characters or structure.
    #[error("malformed URI: {0}")]
    Malformed(&'static str),
}

/// A URI. For `sip`/`sips` the parts are parsed; for other schemes only `scheme` and `opaque`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uri {
    /// Scheme, lower-case.
    pub scheme: String,
    /// userinfo's user part, escaped as received.
    pub user: Option<String>,
    /// userinfo's password part.
    pub password: Option<String>,
    /// Host (lower-case; IPv6 in brackets).
    pub host: String,
    /// Port.
    pub port: Option<u16>,
    /// URI parameters (transport, lr, maddr, user, …).
    pub params: Vec<Param>,
    /// `?headers` part, raw.
    pub headers: Option<String>,
    /// For non-SIP schemes: everything after `scheme:`.
    pub opaque: Option<String>,
}

impl Uri {
    /// Parses a URI (surrounding white space is ignored).
    ///
    /// For `sip`/`sips` the RFC 3261 §25.1 structure is checked: %-escapes, host (name,
    /// IPv4 or bracketed IPv6), port, `;params` and `?headers` characters. The user part may
    /// hold `;` and `?` (RFC 4475 semiuri, intmeth). Other schemes need only be printable
    /// ASCII without spaces, quotes or angle brackets.
    pub fn parse(s: &str) -> Result<Self, UriError> {
        Ok(UriRef::scan(s.trim())?.to_uri())
    }

    /// Whether this is a sip: or sips: URI.
    pub fn is_sip(&self) -> bool {
        self.opaque.is_none()
    }

    /// A URI parameter.
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        find_param(&self.params, name)
    }

    /// Whether the `lr` parameter is present (loose router, RFC 3261 §19.1.1).
    pub fn is_loose_router(&self) -> bool {
        self.param("lr").is_some()
    }

    /// The user part with %-escapes decoded (lossy for invalid UTF-8).
    pub fn user_unescaped(&self) -> Option<String> {
        self.user.as_deref().map(unescape)
    }
}

/// A URI, borrowed and checked (see [`Uri::parse`]); the parser validates with it without
/// allocating.
pub(crate) struct UriRef<'a> {
    pub(crate) scheme: &'a str,
    pub(crate) user: Option<&'a str>,
    pub(crate) password: Option<&'a str>,
    pub(crate) host: &'a str,
    pub(crate) port: Option<u16>,
    /// Empty, or `;`-prefixed parameters (checked).
    pub(crate) params: &'a str,
    pub(crate) headers: Option<&'a str>,
    pub(crate) opaque: Option<&'a str>,
}

impl<'a> UriRef<'a> {
    /// Scans a URI; `s` must not have surrounding white space.
    pub(crate) fn scan(s: &'a str) -> Result<Self, UriError> {
        let colon = find(s, b':').ok_or(UriError::NoScheme)?;
        let (scheme, rest) = (&s[..colon], &s[colon + 1..]);
        if !scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            || !scheme.bytes().all(|c| SCHEME_CHAR[usize::from(c)])
        {
            return Err(UriError::NoScheme);
        }
        if rest.is_empty() {
            return Err(UriError::Malformed("empty after scheme"));
        }
        // One pass: printable ASCII without delimiters, %-escapes well formed, the last '@'.
        let b = rest.as_bytes();
        let mut at = None;
        let mut i = 0;
        while i < b.len() {
            match URI_CHAR[usize::from(b[i])] {
                OK => {}
                ESCAPE => {
                    if !(b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                        && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
                    {
                        return Err(UriError::Malformed("bad %-escape"));
                    }
                    i += 2;
                }
                AT => at = Some(i),
                _ => return Err(UriError::Malformed("space, delimiter or non-ASCII in URI")),
            }
            i += 1;
        }
        let mut uri = Self {
            scheme,
            user: None,
            password: None,
            host: "",
            port: None,
            params: "",
            headers: None,
            opaque: None,
        };
        if !scheme.eq_ignore_ascii_case("sip") && !scheme.eq_ignore_ascii_case("sips") {
            uri.opaque = Some(rest);
            return Ok(uri);
        }
        // userinfo ends at the '@': no other part of a SIP URI may hold one, while the user
        // part may hold ';' and '?' unescaped (RFC 4475 semiuri, intmeth).
        let hostpart = match at {
            Some(at) => {
                let ui = &rest[..at];
                let (user, password) = match split1(ui, b':') {
                    Some((u, p)) => (u, Some(p)),
                    None => (ui, None),
                };
                if user.is_empty() {
                    return Err(UriError::Malformed("empty user"));
                }
                uri.user = Some(user);
                uri.password = password;
                &rest[at + 1..]
            }
            None => rest,
        };
        let hostport_params = match split1(hostpart, b'?') {
            Some((a, h)) => {
                if h.is_empty() || !h.bytes().all(|c| HEADERS_CHAR[usize::from(c)]) {
                    return Err(UriError::Malformed("bad URI headers"));
                }
                uri.headers = Some(h);
                a
            }
            None => hostpart,
        };
        let (hostport, params) = match find(hostport_params, b';') {
            Some(i) => hostport_params.split_at(i),
            None => (hostport_params, ""),
        };
        let (host, port) = split_host_port(hostport).map_err(UriError::Malformed)?;
        // `;name[=value]` parameters of paramchars: '=' is not one, so a second '=' fails.
        let mut expect_name = true;
        let mut last = b';';
        for &c in &params.as_bytes()[params.len().min(1)..] {
            match c {
                b';' | b'=' if last == b';' || last == b'=' => {
                    return Err(UriError::Malformed("empty URI parameter name or value"));
                }
                b';' => expect_name = true,
                b'=' if expect_name => expect_name = false,
                c if c != b'=' && PARAM_CHAR[usize::from(c)] => {}
                _ => return Err(UriError::Malformed("bad URI parameter")),
            }
            last = c;
        }
        if !params.is_empty() && (last == b';' || last == b'=') {
            return Err(UriError::Malformed("empty URI parameter name or value"));
        }
        uri.host = host;
        uri.port = port;
        uri.params = params;
        Ok(uri)
    }

    /// The owned form.
    pub(crate) fn to_uri(&self) -> Uri {
        Uri {
            scheme: self.scheme.to_ascii_lowercase(),
            user: self.user.map(str::to_owned),
            password: self.password.map(str::to_owned),
            host: self.host.to_ascii_lowercase(),
            port: self.port,
            params: self
                .params()
                .map(|(name, value)| Param {
                    name: name.to_owned(),
                    value: value.map(str::to_owned),
                })
                .collect(),
            headers: self.headers.map(str::to_owned),
            opaque: self.opaque.map(str::to_owned),
        }
    }

    /// The parameters (already checked by [`Self::scan`]).
    pub(crate) fn params(&self) -> impl Iterator<Item = (&'a str, Option<&'a str>)> + 'a {
        self.params
            .split(';')
            .skip(1)
            .map(|p| match split1(p, b'=') {
                Some((n, v)) => (n, Some(v)),
                None => (p, None),
            })
    }
}

const OK: u8 = 0;
const ESCAPE: u8 = 1;
const AT: u8 = 2;
const BAD: u8 = 3;

/// Byte classes of a URI: printable ASCII but SP, `<`, `>` and `"`; `%` and `@` marked.
static URI_CHAR: [u8; 256] = {
    let mut t = [BAD; 256];
    let mut c = b'!';
    while c < 0x7f {
        t[c as usize] = match c {
            b'<' | b'>' | b'"' => BAD,
            b'%' => ESCAPE,
            b'@' => AT,
            _ => OK,
        };
        c += 1;
    }
    t
};

/// `paramchar` of RFC 3261 (with `%` for escapes, checked separately).
static PARAM_CHAR: [bool; 256] = byte_class(b"-_.!~*'()[]/:&+$%");
/// `hnv-unreserved / unreserved / escaped` and the `=` and `&` between them: URI headers.
static HEADERS_CHAR: [bool; 256] = byte_class(b"-_.!~*'()[]/?:+$%=&");
/// Scheme characters after the first letter.
static SCHEME_CHAR: [bool; 256] = byte_class(b"+-.");

fn hex_value(c: Option<&u8>) -> Option<u8> {
    let c = *c?;
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decodes %-escapes.
pub(crate) fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let (Some(hi), Some(lo)) = (hex_value(b.get(i + 1)), hex_value(b.get(i + 2)))
        {
            out.push(hi << 4 | lo);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl fmt::Display for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.scheme)?;
        f.write_str(":")?;
        if let Some(o) = &self.opaque {
            return f.write_str(o);
        }
        if let Some(u) = &self.user {
            f.write_str(u)?;
            if let Some(p) = &self.password {
                write!(f, ":{p}")?;
            }
            f.write_str("@")?;
        }
        f.write_str(&self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        for p in &self.params {
            match &p.value {
                Some(v) => write!(f, ";{}={}", p.name, v)?,
                None => write!(f, ";{}", p.name)?,
            }
        }
        if let Some(h) = &self.headers {
            write!(f, "?{h}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sip_uris() {
        let u = Uri::parse("SIP:Alice:pw@EXAMPLE.com:5061;transport=tcp;lr?subject=x%20y")
            .expect("full URI");
        assert_eq!(u.scheme, "sip");
        assert_eq!(u.user.as_deref(), Some("Alice"));
        assert_eq!(u.password.as_deref(), Some("pw"));
        assert_eq!(u.host, "example.com");
        assert_eq!(u.port, Some(5061));
        assert_eq!(u.param("transport"), Some(Some("tcp")));
        assert!(u.is_loose_router());
        assert_eq!(u.headers.as_deref(), Some("subject=x%20y"));
        assert_eq!(
            u.to_string(),
            "sip:Alice:pw@example.com:5061;transport=tcp;lr?subject=x%20y"
        );
        let v6 = Uri::parse("sips:[2001:db8::1]:5061").expect("IPv6 host");
        assert_eq!((v6.host.as_str(), v6.port), ("[2001:db8::1]", Some(5061)));
        let semi = Uri::parse("sip:user;par=u%40example.net@example.com").expect("semiuri");
        assert_eq!(semi.user.as_deref(), Some("user;par=u%40example.net"));
        assert_eq!(
            Uri::parse("sip:%E2%82%AC@h").map(|u| u.user_unescaped()),
            Ok(Some("€".into()))
        );
    }

    #[test]
    fn bad_uris() {
        for bad in [
            "sip:",
            "sip:@h",
            "sip:u@",
            "sip:h;;lr",
            "sip:h;a=",
            "sip:h;a=b=c",
            "sip:h?",
            "sip:h:port",
            "sip:h:70000",
            "sip:2001:db8::1",
            "sip:u@h%4",
            "sip:u@h%zz",
            "sip:u@h x",
            "sip:é@h",
            "<sip:u@h>",
            "1sip:h",
            "nocolon",
        ] {
            assert!(Uri::parse(bad).is_err(), "{bad}");
        }
        let other = Uri::parse("urn:service:sos").expect("opaque");
        assert!(!other.is_sip());
        assert_eq!(other.opaque.as_deref(), Some("service:sos"));
    }
}
