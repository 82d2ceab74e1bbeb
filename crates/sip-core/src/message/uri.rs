//! SIP and SIPS URIs (RFC 3261 §19.1); other schemes (tel:, urn:, …) are kept opaque.

use std::fmt;

use super::header::{Param, find_param, parse_params, split_host_port};

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
    /// Parses a URI.
    pub fn parse(s: &str) -> Result<Self, UriError> {
        let s = s.trim();
        let colon = s.find(':').ok_or(UriError::NoScheme)?;
        let scheme = &s[..colon];
        if scheme.is_empty()
            || !scheme.as_bytes()[0].is_ascii_alphabetic()
            || !scheme
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"+-.".contains(&c))
        {
            return Err(UriError::NoScheme);
        }
        let scheme = scheme.to_ascii_lowercase();
        let rest = &s[colon + 1..];
        if rest.is_empty() {
            return Err(UriError::Malformed("empty after scheme"));
        }
        if rest
            .bytes()
            .any(|c| c <= b' ' || c == 0x7f || c == b'<' || c == b'>' || c == b'"')
        {
            return Err(UriError::Malformed("space or delimiter in URI"));
        }
        if scheme != "sip" && scheme != "sips" {
            return Ok(Self {
                scheme,
                user: None,
                password: None,
                host: String::new(),
                port: None,
                params: Vec::new(),
                headers: None,
                opaque: Some(rest.to_owned()),
            });
        }
        // userinfo ends at the last '@' before any ';' or '?' of the host part; users may
        // contain ';' and '?' unescaped in practice (RFC 4475 semiuri), so look for '@' first.
        let (userinfo, hostpart) = match rest.rfind('@') {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
            None => (None, rest),
        };
        let (user, password) = match userinfo {
            Some(ui) => {
                if ui.is_empty() {
                    return Err(UriError::Malformed("empty user"));
                }
                check_escapes(ui)?;
                match ui.split_once(':') {
                    Some((u, p)) => (Some(u.to_owned()), Some(p.to_owned())),
                    None => (Some(ui.to_owned()), None),
                }
            }
            None => (None, None),
        };
        let (hostport_params, headers) = match hostpart.split_once('?') {
            Some((a, h)) => (a, Some(h.to_owned())),
            None => (hostpart, None),
        };
        let (hostport, params) = match hostport_params.find(';') {
            Some(i) => (&hostport_params[..i], &hostport_params[i..]),
            None => (hostport_params, ""),
        };
        let (host, port) = split_host_port(hostport).map_err(UriError::Malformed)?;
        check_escapes(params)?;
        let params = parse_params(params).map_err(UriError::Malformed)?;
        Ok(Self {
            scheme,
            user,
            password,
            host: host.to_ascii_lowercase(),
            port,
            params,
            headers,
            opaque: None,
        })
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

fn check_escapes(s: &str) -> Result<(), UriError> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if i + 2 >= b.len() {
                return Err(UriError::Malformed("truncated %-escape"));
            }
            if !(b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit()) {
                return Err(UriError::Malformed("bad %-escape"));
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    Ok(())
}

/// Decodes %-escapes.
pub(crate) fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
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
