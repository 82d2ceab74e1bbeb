//! The typed headers a proxy needs: Via, CSeq and name-addr (From, To, Contact, Route,
//! Record-Route). Each is built from the allocation-free scanner the parser validates with
//! (`scan.rs`), so any header value [`super::parse`] accepted parses here too.

use super::scan::{HeaderParams, NameAddrRef, ViaRef, parse_decimal, scan_cseq};
use super::{Method, Uri};

/// A `;name[=value]` parameter. Names are kept as received; compare with `eq_ignore_ascii_case`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// Parameter name.
    pub name: String,
    /// Value, if any (quotes kept).
    pub value: Option<String>,
}

/// Parses `;a=b;c` header parameters (see [`HeaderParams`]).
fn parse_params(s: &str) -> Result<Vec<Param>, &'static str> {
    HeaderParams::new(s)
        .map(|p| {
            p.map(|(name, value)| Param {
                name: name.to_owned(),
                value: value.map(str::to_owned),
            })
        })
        .collect()
}

/// Finds parameter `name` (case-insensitive); `Some(None)` for a flag without value.
pub(crate) fn find_param<'a>(params: &'a [Param], name: &str) -> Option<Option<&'a str>> {
    params
        .iter()
        .find(|p| p.name.eq_ignore_ascii_case(name))
        .map(|p| p.value.as_deref())
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
    /// Parses one Via value: `SIP/2.0/transport host[:port] *(;param)`, with LWS allowed
    /// around `/`, `:`, `;` and `=` (RFC 4475 wsinv). IPv6 sent-by hosts are in brackets.
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        let v = ViaRef::scan(s, true)?;
        Ok(Self {
            transport: v.transport.to_ascii_uppercase(),
            host: v.host.to_owned(),
            port: v.port,
            params: parse_params(v.params)?,
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

/// A parsed CSeq (RFC 3261 §20.16).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CSeq {
    /// Sequence number, below 2**31.
    pub seq: u32,
    /// Method.
    pub method: Method,
}

impl CSeq {
    /// Parses `NUMBER LWS METHOD` (leading zeros allowed).
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        let (num, method) = scan_cseq(s)?;
        let seq = parse_decimal(num, (1 << 31) - 1).ok_or("CSeq number too large")?;
        let seq = u32::try_from(seq).map_err(|_| "CSeq number too large")?;
        Ok(Self {
            seq,
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
    /// parameters belong to the header, RFC 3261 §20.10). Rejects what RFC 4475 calls
    /// invalid: unbalanced quotes, non-token display names, spaces inside `<>`, and an
    /// addr-spec holding `,` or `?`.
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        let r = NameAddrRef::scan(s)?;
        let display = r.display.map(|d| match d.strip_prefix('"') {
            Some(q) => unescape_quoted(q.strip_suffix('"').unwrap_or(q)),
            None => d.to_owned(),
        });
        Ok(Self {
            display,
            uri: r.uri.to_uri(),
            params: parse_params(r.params)?,
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn via_forms() {
        let v = Via::parse("SIP / 2.0 / udp [2001:db8::1]:5060 ; branch = z9hG4bK1;rport")
            .expect("IPv6 Via");
        assert_eq!(v.transport, "UDP");
        assert_eq!(v.host, "[2001:db8::1]");
        assert_eq!(v.port, Some(5060));
        assert_eq!(v.branch(), Some("z9hG4bK1"));
        assert_eq!(v.param("rport"), Some(None));
        let v = Via::parse("SIP/2.0/TCP h;received=2001:db8::9").expect("IPv6 received");
        assert_eq!(v.param("received"), Some(Some("2001:db8::9")));
        assert!(Via::parse("SIP/2.0/UDP 2001:db8::1;branch=x").is_err());
        assert!(Via::parse("SIP/2.0/UDP h;;").is_err());
        assert!(Via::parse("SIP/3.0/UDP h").is_err());
        assert!(Via::parse("SIP/2.0/UDP").is_err());
    }

    #[test]
    fn name_addr_forms() {
        let n = NameAddr::parse("\"J Rosenberg \\\\\\\"\"  <sip:j@example.com> ; tag = 9")
            .expect("escaped display");
        assert_eq!(n.display.as_deref(), Some("J Rosenberg \\\""));
        assert_eq!(n.tag(), Some("9"));
        let n = NameAddr::parse("caller<sip:c@example.com>;tag=1").expect("token display");
        assert_eq!(n.display.as_deref(), Some("caller"));
        let n = NameAddr::parse("sip:u@example.com ; tag=3").expect("addr-spec");
        assert_eq!(n.uri.host, "example.com");
        assert_eq!(n.tag(), Some("3"));
        assert!(NameAddr::parse("Bell, Alexander <sip:a@b>").is_err());
        assert!(NameAddr::parse("\"Mr. J <sip:a@b>").is_err());
        assert!(NameAddr::parse("< sip:a@b >").is_err());
        assert!(NameAddr::parse("sip:a@b?Route=x").is_err());
        assert!(NameAddr::parse("<sip:a@b>;;").is_err());
        assert!(NameAddr::parse("<sip:a@b> junk").is_err());
    }

    #[test]
    fn cseq_forms() {
        assert_eq!(
            CSeq::parse("0009 INVITE"),
            Ok(CSeq {
                seq: 9,
                method: Method::Invite
            })
        );
        assert!(CSeq::parse("2147483648 INVITE").is_err());
        assert!(CSeq::parse("36893488147419103232 REGISTER").is_err());
        assert!(CSeq::parse("1 INVITE x").is_err());
        assert!(CSeq::parse("INVITE").is_err());
    }
}
