//! The client side of digest authentication (RFC 3261 §22.2, RFC 7616 §3.4, RFC 8760):
//! read `WWW-Authenticate` / `Proxy-Authenticate` challenges, pick the strongest one, and
//! write the `Authorization` value with `sip_core::auth`'s hash functions.
//!
//! sip-core parses the server side (`Credentials`); challenges are the other half of the same
//! `auth-param` grammar, so this module holds only a small reader for that list.

use sip_core::auth::{Algorithm, ResponseInput, ha1, response};

/// Longest challenge value read; longer ones are ignored.
const MAX_CHALLENGE_LEN: usize = 4096;
/// Most parameters in one challenge.
const MAX_PARAMS: usize = 32;

/// A usable digest challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Challenge {
    pub(crate) realm: String,
    pub(crate) nonce: String,
    pub(crate) opaque: Option<String>,
    pub(crate) algorithm: Algorithm,
    /// Whether `qop=auth` was offered; without any `qop` the RFC 2069 form is used.
    pub(crate) qop_auth: bool,
    pub(crate) stale: bool,
}

impl Challenge {
    /// Reads one challenge value. `None` when it is not a digest challenge this phone can
    /// answer: another scheme, malformed, an unknown or `-sess` algorithm, a `qop` list
    /// without `auth`, or `userhash=true`.
    pub(crate) fn parse(value: &str) -> Option<Self> {
        if value.len() > MAX_CHALLENGE_LEN {
            return None;
        }
        let rest = value.trim_start();
        let scheme_end = rest.find(|c: char| c.is_ascii_whitespace())?;
        if !rest[..scheme_end].eq_ignore_ascii_case("Digest") {
            return None;
        }
        let params = params(&rest[scheme_end..])?;
        let get = |name: &str| {
            params
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        let algorithm = Algorithm::from_token(get("algorithm"))?;
        let qop_auth = match get("qop") {
            None => false,
            Some(list) => {
                if !list
                    .split(',')
                    .any(|q| q.trim().eq_ignore_ascii_case("auth"))
                {
                    return None;
                }
                true
            }
        };
        if get("userhash").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return None;
        }
        Some(Self {
            realm: get("realm")?.to_owned(),
            nonce: get("nonce")?.to_owned(),
            opaque: get("opaque").map(str::to_owned),
            algorithm,
            qop_auth,
            stale: get("stale").is_some_and(|v| v.eq_ignore_ascii_case("true")),
        })
    }

    /// The strongest usable challenge among header values (SHA-256 over MD5; the first of
    /// equals, as RFC 7616 §3.7 lists the preferred first).
    pub(crate) fn best<'a>(values: impl Iterator<Item = &'a str>) -> Option<Self> {
        let rank = |a: Algorithm| u8::from(a == Algorithm::Sha256);
        let mut best: Option<Self> = None;
        for c in values.filter_map(Self::parse) {
            if best
                .as_ref()
                .is_none_or(|b| rank(c.algorithm) > rank(b.algorithm))
            {
                best = Some(c);
            }
        }
        best
    }

    /// The `Authorization` value for `method uri`, with nonce count `nc` and client nonce
    /// `cnonce` (both unused without qop).
    pub(crate) fn authorization(
        &self,
        user: &str,
        password: &str,
        method: &str,
        uri: &str,
        nc: u32,
        cnonce: &str,
    ) -> String {
        let h1 = ha1(self.algorithm, user, &self.realm, password);
        let nc_text = format!("{nc:08x}");
        let digest = if self.qop_auth {
            response(
                self.algorithm,
                &h1,
                &ResponseInput {
                    nonce: &self.nonce,
                    nc: &nc_text,
                    cnonce,
                    qop: "auth",
                    method,
                    uri,
                },
            )
        } else {
            // RFC 2069 / RFC 7616 §3.4.1 without qop: H(HA1:nonce:HA2).
            let h2 = self.algorithm.hex(format!("{method}:{uri}").as_bytes());
            self.algorithm
                .hex(format!("{h1}:{}:{h2}", self.nonce).as_bytes())
        };
        let mut v = format!(
            "Digest username={}, realm={}, nonce={}, uri={}, response=\"{digest}\", \
             algorithm={}",
            quote(user),
            quote(&self.realm),
            quote(&self.nonce),
            quote(uri),
            self.algorithm.as_str()
        );
        if self.qop_auth {
            v.push_str(&format!(
                ", cnonce={}, qop=auth, nc={nc_text}",
                quote(cnonce)
            ));
        }
        if let Some(o) = &self.opaque {
            v.push_str(&format!(", opaque={}", quote(o)));
        }
        v
    }
}

/// A quoted-string with `"` and `\` escaped.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// RFC 3261 `token` characters.
fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-.!%*_+`'~".contains(c)
}

/// Reads `name = value` pairs separated by commas, values tokens or quoted strings, white
/// space allowed around `=` and `,`. `None` on any syntax error or a repeated name.
fn params(s: &str) -> Option<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut it = s.chars().peekable();
    let skip_ws = |it: &mut std::iter::Peekable<std::str::Chars<'_>>| {
        while it.next_if(|c| c.is_ascii_whitespace()).is_some() {}
    };
    loop {
        skip_ws(&mut it);
        match it.peek() {
            None => break,
            Some(',') => {
                it.next();
                continue;
            }
            Some(_) => {}
        }
        let mut name = String::new();
        while let Some(c) = it.next_if(|c| is_token_char(*c)) {
            name.push(c);
        }
        skip_ws(&mut it);
        if name.is_empty() || it.next() != Some('=') {
            return None;
        }
        skip_ws(&mut it);
        let mut value = String::new();
        if it.next_if_eq(&'"').is_some() {
            loop {
                match it.next()? {
                    '"' => break,
                    '\\' => value.push(it.next()?),
                    c if c.is_control() => return None,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = it.next_if(|c| is_token_char(*c)) {
                value.push(c);
            }
            if value.is_empty() {
                return None;
            }
        }
        skip_ws(&mut it);
        if !matches!(it.peek(), None | Some(',')) {
            return None;
        }
        if out.len() >= MAX_PARAMS || out.iter().any(|(n, _)| n.eq_ignore_ascii_case(&name)) {
            return None;
        }
        out.push((name, value));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use sip_core::auth::{Authenticator, DigestConfig};

    use super::*;

    #[test]
    fn reads_sip_core_challenges_and_prefers_sha256() {
        let t0 = Instant::now();
        let mut auth = Authenticator::new(DigestConfig::new("example.com"), [7; 32], t0);
        let values = auth.challenges(t0, false);
        let best = Challenge::best(values.iter().map(String::as_str)).expect("usable");
        assert_eq!(best.algorithm, Algorithm::Sha256);
        assert!(best.qop_auth && !best.stale);
        assert_eq!(best.realm, "example.com");
        // The answer verifies with sip-core's authenticator.
        let v = best.authorization("~d-7k3q", "pw", "REGISTER", "sip:example.com", 1, "abc");
        let ok = auth.verify(t0 + Duration::from_millis(5), "REGISTER", &v, |u, alg| {
            (u == "~d-7k3q").then(|| ha1(alg, u, "example.com", "pw"))
        });
        let ok = ok.expect("verified");
        assert_eq!(ok.algorithm, Algorithm::Sha256);
        let stale = auth.challenges(t0, true);
        assert!(Challenge::parse(&stale[1]).expect("md5").stale);
    }

    #[test]
    fn md5_only_and_legacy() {
        let c = Challenge::parse("Digest realm=\"r\", nonce=\"n\"").expect("rfc 2069");
        assert_eq!(c.algorithm, Algorithm::Md5);
        assert!(!c.qop_auth);
        let v = c.authorization("u", "p", "REGISTER", "sip:r", 1, "c");
        assert!(!v.contains("qop") && v.contains("algorithm=MD5"));
        let c = Challenge::parse("digest  realm = r ,nonce=\"a\\\"b\", qop=\"auth-int,auth\"")
            .expect("token realm, escaped nonce");
        assert_eq!(c.nonce, "a\"b");
        assert!(c.qop_auth);
        assert!(
            c.authorization("u", "p", "M", "sip:r", 1, "c")
                .contains(r#"nonce="a\"b""#)
        );
    }

    #[test]
    fn refuses_what_it_cannot_answer() {
        for bad in [
            "Basic realm=\"r\"",
            "Digest realm=\"r\", nonce=\"n\", algorithm=SHA-256-sess",
            "Digest realm=\"r\", nonce=\"n\", qop=\"auth-int\"",
            "Digest realm=\"r\"",
            "Digest realm=\"r\", nonce=\"n\", realm=\"x\"",
            "Digest realm=\"r, nonce=\"n\"",
            "Digest realm=\"r\" nonce=\"n\"",
            "Digest realm=, nonce=\"n\"",
            "Digest",
            "",
        ] {
            assert_eq!(Challenge::parse(bad), None, "{bad}");
        }
        assert_eq!(
            Challenge::best(
                ["Basic x=y", "Digest realm=r, algorithm=AKAv1-MD5, nonce=n"].into_iter()
            ),
            None
        );
    }
}
