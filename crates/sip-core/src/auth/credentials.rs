//! The parser of `Authorization` / `Proxy-Authorization` values (RFC 3261 §25.1
//! `credentials`, RFC 7616 §3.4): `Digest` then a comma-separated list of `name=value`, each
//! value a token or a quoted string with `\` escapes, in any order, with linear white space
//! and header folding anywhere between elements.

use super::AuthError;

/// Longest credentials value parsed, in bytes; longer ones are [`AuthError::Malformed`]
/// before any other work (SECURITY threat 11).
pub const MAX_CREDENTIALS_LEN: usize = 4096;

/// Most parameters in one credentials value.
pub const MAX_PARAMS: usize = 32;

/// The parameters of a `Digest` credentials value, unquoted and unescaped.
///
/// Parameter names are case-insensitive; values are kept exactly as sent. Parameters this
/// server does not know are skipped (RFC 7616 §3.4), but still count towards
/// [`MAX_PARAMS`] and may not be repeated either.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// `username`: the authentication user (compare it with the To user, SECURITY threat 2).
    pub username: String,
    /// `realm`, which must be the server's.
    pub realm: String,
    /// `nonce`, as received in the challenge.
    pub nonce: String,
    /// `uri` (digest-uri): the caller must check it against the Request-URI.
    pub uri: String,
    /// `response`: the request-digest in hex.
    pub response: String,
    /// `algorithm`; absent means MD5.
    pub algorithm: Option<String>,
    /// `cnonce`, required with a qop.
    pub cnonce: Option<String>,
    /// `qop`; only `auth` is accepted by the authenticator.
    pub qop: Option<String>,
    /// `nc`, the nonce count (8 hex digits), required with a qop.
    pub nc: Option<String>,
    /// `opaque`, echoed from the challenge.
    pub opaque: Option<String>,
}

impl Credentials {
    /// Parses a credentials header value. Never panics; every refusal is
    /// [`AuthError::Malformed`] with a fixed reason that does not quote the input.
    ///
    /// Refused: values over [`MAX_CREDENTIALS_LEN`] bytes or [`MAX_PARAMS`] parameters, a
    /// scheme other than `Digest`, duplicate parameters, bare CR or LF (only folding,
    /// CRLF followed by a space or tab, is allowed), unterminated quoted strings, control
    /// characters, missing `username`/`realm`/`nonce`/`uri`/`response`, and the RFC 7616
    /// `username*` and `userhash=true` forms, which this server does not support.
    pub fn parse(value: &str) -> Result<Self, AuthError> {
        if value.len() > MAX_CREDENTIALS_LEN {
            return Err(AuthError::Malformed("credentials too long"));
        }
        let unfolded = unfold(value)?;
        let mut cur = Cursor {
            s: &unfolded,
            pos: 0,
        };

        cur.skip_ws();
        let scheme = cur.token().ok_or(AuthError::Malformed("no scheme"))?;
        if !scheme.eq_ignore_ascii_case("Digest") {
            return Err(AuthError::Malformed("not a Digest scheme"));
        }
        if cur.skip_ws() == 0 {
            return Err(AuthError::Malformed("no parameters"));
        }

        let mut seen: Vec<String> = Vec::new();
        let mut creds = Partial::default();
        loop {
            cur.skip_ws();
            match cur.peek() {
                None => break,
                // Empty list elements are allowed (RFC 7230 §7 #rule).
                Some(',') => {
                    cur.bump();
                    continue;
                }
                Some(_) => {}
            }
            let name = cur
                .token()
                .ok_or(AuthError::Malformed("bad parameter name"))?
                .to_ascii_lowercase();
            cur.skip_ws();
            if cur.peek() != Some('=') {
                return Err(AuthError::Malformed("parameter without value"));
            }
            cur.bump();
            cur.skip_ws();
            let value = if cur.peek() == Some('"') {
                cur.bump();
                cur.quoted()?
            } else {
                cur.token()
                    .ok_or(AuthError::Malformed("bad parameter value"))?
                    .to_owned()
            };
            cur.skip_ws();
            match cur.peek() {
                None | Some(',') => {}
                Some(_) => return Err(AuthError::Malformed("junk after parameter")),
            }

            if seen.contains(&name) {
                return Err(AuthError::Malformed("duplicate parameter"));
            }
            if seen.len() >= MAX_PARAMS {
                return Err(AuthError::Malformed("too many parameters"));
            }
            creds.set(&name, value)?;
            seen.push(name);
        }
        creds.finish()
    }
}

/// Removes header folding (CRLF, or a bare LF, followed by a space or tab); any other CR or
/// LF is refused.
fn unfold(value: &str) -> Result<String, AuthError> {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' | '\n' => {
                if c == '\r' && chars.next_if_eq(&'\n').is_none() {
                    return Err(AuthError::Malformed("bare CR"));
                }
                if !matches!(chars.peek(), Some(' ' | '\t')) {
                    return Err(AuthError::Malformed("line break without folding"));
                }
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// RFC 3261 §25.1 `token` characters.
fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-.!%*_+`'~".contains(c)
}

struct Cursor<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<char> {
        self.s.get(self.pos..).and_then(|r| r.chars().next())
    }

    fn bump(&mut self) {
        if let Some(c) = self.peek() {
            self.pos += c.len_utf8();
        }
    }

    /// Skips spaces and tabs; returns how many.
    fn skip_ws(&mut self) -> usize {
        let mut n = 0;
        while matches!(self.peek(), Some(' ' | '\t')) {
            self.bump();
            n += 1;
        }
        n
    }

    /// A non-empty token, or `None` (nothing consumed).
    fn token(&mut self) -> Option<&'a str> {
        let start = self.pos;
        while self.peek().is_some_and(is_token_char) {
            self.bump();
        }
        if self.pos == start {
            None
        } else {
            self.s.get(start..self.pos)
        }
    }

    /// The rest of a quoted string whose opening quote was consumed, unescaped.
    fn quoted(&mut self) -> Result<String, AuthError> {
        let mut out = String::new();
        loop {
            let c = self
                .peek()
                .ok_or(AuthError::Malformed("unterminated quoted string"))?;
            self.bump();
            match c {
                '"' => return Ok(out),
                '\\' => {
                    let e = self
                        .peek()
                        .ok_or(AuthError::Malformed("unterminated quoted string"))?;
                    if e.is_ascii_control() && e != '\t' {
                        return Err(AuthError::Malformed("control character"));
                    }
                    self.bump();
                    out.push(e);
                }
                c if c.is_control() && c != '\t' => {
                    return Err(AuthError::Malformed("control character"));
                }
                c => out.push(c),
            }
        }
    }
}

#[derive(Default)]
struct Partial {
    username: Option<String>,
    realm: Option<String>,
    nonce: Option<String>,
    uri: Option<String>,
    response: Option<String>,
    algorithm: Option<String>,
    cnonce: Option<String>,
    qop: Option<String>,
    nc: Option<String>,
    opaque: Option<String>,
}

impl Partial {
    fn set(&mut self, name: &str, value: String) -> Result<(), AuthError> {
        let slot = match name {
            "username" => &mut self.username,
            "realm" => &mut self.realm,
            "nonce" => &mut self.nonce,
            "uri" => &mut self.uri,
            "response" => &mut self.response,
            "algorithm" => &mut self.algorithm,
            "cnonce" => &mut self.cnonce,
            "qop" => &mut self.qop,
            "nc" => &mut self.nc,
            "opaque" => &mut self.opaque,
            "username*" => return Err(AuthError::Malformed("username* is not supported")),
            "userhash" if value.eq_ignore_ascii_case("true") => {
                return Err(AuthError::Malformed("userhash is not supported"));
            }
            _ => return Ok(()),
        };
        *slot = Some(value);
        Ok(())
    }

    fn finish(self) -> Result<Credentials, AuthError> {
        Ok(Credentials {
            username: self
                .username
                .ok_or(AuthError::Malformed("missing username"))?,
            realm: self.realm.ok_or(AuthError::Malformed("missing realm"))?,
            nonce: self.nonce.ok_or(AuthError::Malformed("missing nonce"))?,
            uri: self.uri.ok_or(AuthError::Malformed("missing uri"))?,
            response: self
                .response
                .ok_or(AuthError::Malformed("missing response"))?,
            algorithm: self.algorithm,
            cnonce: self.cnonce,
            qop: self.qop,
            nc: self.nc,
            opaque: self.opaque,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"Digest username="alice", realm="example.org", nonce="abc", uri="sip:example.org", response="0123", algorithm=SHA-256, cnonce="xyz", qop=auth, nc=00000001, opaque="op""#;

    #[test]
    fn parses_all_fields() {
        let c = Credentials::parse(FULL).expect("valid");
        assert_eq!(c.username, "alice");
        assert_eq!(c.realm, "example.org");
        assert_eq!(c.nonce, "abc");
        assert_eq!(c.uri, "sip:example.org");
        assert_eq!(c.response, "0123");
        assert_eq!(c.algorithm.as_deref(), Some("SHA-256"));
        assert_eq!(c.cnonce.as_deref(), Some("xyz"));
        assert_eq!(c.qop.as_deref(), Some("auth"));
        assert_eq!(c.nc.as_deref(), Some("00000001"));
        assert_eq!(c.opaque.as_deref(), Some("op"));
    }

    #[test]
    fn any_order_case_folding_and_escapes() {
        let v = "dIGEST  NC=00000002 ,\r\n\tQop=\"auth\",RESPONSE=\"ff\",uri=\"sip:a@b\",\r\n nonce=\"n\\\"1\",\tREALM = \"r\\\\m\" , username=\"al\\ice\",,";
        let c = Credentials::parse(v).expect("valid");
        assert_eq!(c.username, "alice");
        assert_eq!(c.realm, r"r\m");
        assert_eq!(c.nonce, "n\"1");
        assert_eq!(c.qop.as_deref(), Some("auth"));
        assert_eq!(c.nc.as_deref(), Some("00000002"));
        assert_eq!(c.algorithm, None);
    }

    #[test]
    fn utf8_in_quoted_strings() {
        let v = r#"Digest username="jörg", realm="r", nonce="n", uri="u", response="r""#;
        assert_eq!(Credentials::parse(v).expect("valid").username, "jörg");
    }

    #[test]
    fn unknown_parameters_are_skipped() {
        let v =
            r#"Digest username="a", realm="r", nonce="n", uri="u", response="r", foo="bar", x=y"#;
        assert!(Credentials::parse(v).is_ok());
    }

    #[test]
    fn refusals() {
        let bad = [
            "",
            "Digest",
            "Digest ",
            "Basic dXNlcjpwYXNz",
            r#"Digestusername="a""#,
            r#"Digest username="a", username="b", realm="r", nonce="n", uri="u", response="r""#,
            r#"Digest USERNAME="a", username="a", realm="r", nonce="n", uri="u", response="r""#,
            r#"Digest username="a, realm="r", nonce="n", uri="u", response="r""#,
            r#"Digest username="a" realm="r", nonce="n", uri="u", response="r""#,
            r#"Digest username=, realm="r", nonce="n", uri="u", response="r""#,
            r#"Digest username, realm="r", nonce="n", uri="u", response="r""#,
            r#"Digest realm="r", nonce="n", uri="u", response="r""#,
            r#"Digest username="a", realm="r", nonce="n", uri="u""#,
            r#"Digest username="a", realm="r", nonce="n", uri=sip:u, response="r""#,
            "Digest username=\"a\",\r\nrealm=\"r\", nonce=\"n\", uri=\"u\", response=\"r\"",
            "Digest username=\"a\",\rrealm=\"r\", nonce=\"n\", uri=\"u\", response=\"r\"",
            "Digest username=\"a\u{0}\", realm=\"r\", nonce=\"n\", uri=\"u\", response=\"r\"",
            r#"Digest username*=UTF-8''a, realm="r", nonce="n", uri="u", response="r""#,
            r#"Digest username="a", userhash=true, realm="r", nonce="n", uri="u", response="r""#,
            r#"Digest username="a\"#,
        ];
        for v in bad {
            assert!(
                matches!(Credentials::parse(v), Err(AuthError::Malformed(_))),
                "accepted {v:?}"
            );
        }
    }

    #[test]
    fn limits() {
        let long = format!(
            r#"Digest username="{}", realm="r", nonce="n", uri="u", response="r""#,
            "a".repeat(MAX_CREDENTIALS_LEN)
        );
        assert_eq!(
            Credentials::parse(&long),
            Err(AuthError::Malformed("credentials too long"))
        );
        let mut many =
            String::from(r#"Digest username="a", realm="r", nonce="n", uri="u", response="r""#);
        for i in 0..MAX_PARAMS {
            many.push_str(&format!(", x{i}=1"));
        }
        assert_eq!(
            Credentials::parse(&many),
            Err(AuthError::Malformed("too many parameters"))
        );
    }
}
