//! Allocation-free scanners for the header grammar of RFC 3261 §25.1.
//!
//! The parser validates every header the proxy depends on, but keeps values as text; these
//! scanners check a value and return borrowed pieces of it, so validation costs no
//! allocation. The owned types ([`super::Via`], [`super::NameAddr`], [`super::Uri`]) are built
//! from the same scanners, so what the parser accepts is exactly what they can represent.

use super::uri::UriRef;

/// A set of bytes: alphanumerics plus `extra`, as a lookup table.
pub(crate) const fn byte_class(extra: &[u8]) -> [bool; 256] {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        t[c] = (c as u8).is_ascii_alphanumeric();
        c += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        t[extra[i] as usize] = true;
        i += 1;
    }
    t
}

static TOKEN: [bool; 256] = byte_class(b"-.!%*_+`'~");
/// Header parameter values: token, host (with IPv6 `:` and brackets).
static PARAM_VALUE: [bool; 256] = byte_class(b"-.!%*_+`'~:[]");
/// Host names and IPv4 addresses (`_` tolerated).
static HOST: [bool; 256] = byte_class(b"-._");

/// RFC 3261 `token` characters.
pub(crate) fn is_token_char(c: u8) -> bool {
    TOKEN[usize::from(c)]
}

/// A non-empty `token`.
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token_char)
}

/// Strips linear white space (SP and HTAB) from both ends.
pub(crate) fn trim_lws(s: &str) -> &str {
    let b = s.as_bytes();
    let lws = |c: &u8| *c == b' ' || *c == b'\t';
    let start = b.iter().position(|c| !lws(c)).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !lws(c)).map_or(start, |e| e + 1);
    // Both ends are next to ASCII bytes (or the string's ends): char boundaries.
    s.get(start..end).unwrap_or("")
}

/// Strips SP and HTAB from the start.
pub(crate) fn trim_lws_start(s: &str) -> &str {
    let n = s.bytes().take_while(|&c| c == b' ' || c == b'\t').count();
    s.get(n..).unwrap_or("")
}

/// The index of the first `c` (ASCII) in `s`. A plain loop: on the short strings of header
/// values it beats `str::find`, whose memchr has a costly prologue.
pub(crate) fn find(s: &str, c: u8) -> Option<usize> {
    s.bytes().position(|b| b == c)
}

/// Splits `s` around its first `c` (ASCII).
pub(crate) fn split1(s: &str, c: u8) -> Option<(&str, &str)> {
    let i = find(s, c)?;
    Some((s.get(..i)?, s.get(i + 1..)?))
}

/// The index of the first SP or HTAB.
fn find_lws(s: &str) -> Option<usize> {
    s.bytes().position(|b| b == b' ' || b == b'\t')
}

/// The index of the first `needle` in `hay`, eight bytes at a time.
pub(crate) fn find_byte(hay: &[u8], needle: u8) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let pattern = LO * u64::from(needle);
    let mut chunks = hay.chunks_exact(8);
    let mut offset = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word) ^ pattern;
        if x.wrapping_sub(LO) & !x & HI != 0 {
            break;
        }
        offset += 8;
    }
    hay.get(offset..)?
        .iter()
        .position(|&c| c == needle)
        .map(|i| offset + i)
}

/// Whether `s` is 1*DIGIT.
pub(crate) fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit())
}

/// Parses 1*DIGIT (leading zeros allowed) into a number no larger than `max`.
pub(crate) fn parse_decimal(s: &str, max: u64) -> Option<u64> {
    if !is_digits(s) {
        return None;
    }
    let significant = s.trim_start_matches('0');
    if significant.len() > 19 {
        return None;
    }
    let mut v: u64 = 0;
    for c in significant.bytes() {
        v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    (v <= max).then_some(v)
}

/// For `s` starting with `"`, the index just past the closing quote of the quoted-string
/// (backslash escapes honoured); `None` when unterminated.
pub(crate) fn quoted_end(s: &[u8]) -> Option<usize> {
    let mut i = 1;
    while i < s.len() {
        match s[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
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
        Some(s.get(start..).unwrap_or(""))
    })
}

/// Iterates over header parameters `*( SEMI generic-param )` (RFC 3261 §25.1), LWS allowed
/// around `;` and `=`. Values are a token, a host (IPv6 allowed) or a quoted-string (quotes
/// kept). Empty parameters (`;;`) are errors (RFC 4475 badinv01).
pub(crate) struct HeaderParams<'a> {
    rest: &'a str,
}

impl<'a> HeaderParams<'a> {
    /// `s` is empty or starts (after LWS) with `;`.
    pub(crate) fn new(s: &'a str) -> Self {
        Self { rest: s }
    }

    /// Checks every parameter.
    pub(crate) fn validate(s: &'a str) -> Result<(), &'static str> {
        if s.is_empty() || Self::plain(s.as_bytes()) {
            return Ok(());
        }
        Self::new(s).try_for_each(|p| p.map(drop))
    }

    /// The common form `;name[=value]...` without LWS or quotes, which [`Self::next`]
    /// accepts too. `false` means "not that form", not "invalid".
    fn plain(b: &[u8]) -> bool {
        let mut i = 0;
        while b.get(i) == Some(&b';') {
            let name = i + 1;
            i = name;
            while b.get(i).is_some_and(|&c| TOKEN[usize::from(c)]) {
                i += 1;
            }
            if i == name {
                return false;
            }
            if b.get(i) == Some(&b'=') {
                let value = i + 1;
                i = value;
                while b.get(i).is_some_and(|&c| PARAM_VALUE[usize::from(c)]) {
                    i += 1;
                }
                if i == value {
                    return false;
                }
            }
        }
        i == b.len()
    }
}

impl<'a> Iterator for HeaderParams<'a> {
    type Item = Result<(&'a str, Option<&'a str>), &'static str>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = trim_lws(self.rest);
        if rest.is_empty() {
            return None;
        }
        let Some(after) = rest.strip_prefix(';') else {
            self.rest = "";
            return Some(Err("junk where a parameter was expected"));
        };
        let b = after.as_bytes();
        let mut i = 0;
        while i < b.len() && b[i] != b';' {
            if b[i] == b'"' {
                match quoted_end(&b[i..]) {
                    Some(n) => i += n,
                    None => {
                        self.rest = "";
                        return Some(Err("unterminated quoted parameter"));
                    }
                }
            } else {
                i += 1;
            }
        }
        let (part, next) = after.split_at(i);
        self.rest = next;
        Some(scan_param(part).inspect_err(|_| self.rest = ""))
    }
}

fn scan_param(part: &str) -> Result<(&str, Option<&str>), &'static str> {
    let (name, value) = match split1(part, b'=') {
        Some((n, v)) => (trim_lws(n), Some(trim_lws(v))),
        None => (trim_lws(part), None),
    };
    if name.is_empty() {
        return Err("empty parameter");
    }
    if !is_token(name) {
        return Err("bad parameter name");
    }
    if let Some(v) = value {
        let ok = if v.starts_with('"') {
            quoted_end(v.as_bytes()) == Some(v.len())
        } else {
            !v.is_empty() && v.bytes().all(|c| PARAM_VALUE[usize::from(c)])
        };
        if !ok {
            return Err("bad parameter value");
        }
    }
    Ok((name, value))
}

/// Splits `host[:port]` (LWS allowed around the colon, as in Via sent-by). Hosts are a
/// hostname or IPv4 address (alphanumerics, `-`, `.`, `_`) or an IPv6 reference in brackets.
pub(crate) fn split_host_port(s: &str) -> Result<(&str, Option<u16>), &'static str> {
    let s = trim_lws(s);
    let (host, port) = if s.starts_with('[') {
        let end = find(s, b']').ok_or("unterminated IPv6 reference")?;
        let inner = &s[1..end];
        if find(inner, b':').is_none()
            || !inner
                .bytes()
                .all(|c| c.is_ascii_hexdigit() || c == b':' || c == b'.')
        {
            return Err("bad IPv6 reference");
        }
        let after = trim_lws(&s[end + 1..]);
        match after.strip_prefix(':') {
            Some(p) => (&s[..=end], Some(p)),
            None if after.is_empty() => (&s[..=end], None),
            None => return Err("junk after IPv6 reference"),
        }
    } else {
        match split1(s, b':') {
            Some((h, p)) => (trim_lws(h), Some(p)),
            None => (s, None),
        }
    };
    if !host.starts_with('[') && (host.is_empty() || !host.bytes().all(|c| HOST[usize::from(c)])) {
        return Err("bad host");
    }
    let port = match port {
        Some(p) => {
            let v = parse_decimal(trim_lws(p), u64::from(u16::MAX)).ok_or("bad port")?;
            Some(u16::try_from(v).map_err(|_| "bad port")?)
        }
        None => None,
    };
    Ok((host, port))
}

/// A Via value, borrowed (RFC 3261 §20.42).
pub(crate) struct ViaRef<'a> {
    pub(crate) transport: &'a str,
    pub(crate) host: &'a str,
    pub(crate) port: Option<u16>,
    pub(crate) params: &'a str,
}

impl<'a> ViaRef<'a> {
    /// Scans `SIP / 2.0 / transport LWS sent-by *(; via-params)`. Without `strict` neither
    /// the protocol version nor the parameters are checked: enough to send an error response
    /// back (a 505 to a SIP/7.0 request, a 400 to RFC 4475 badinv01).
    pub(crate) fn scan(s: &'a str, strict: bool) -> Result<Self, &'static str> {
        let rest = match s.get(..8) {
            Some(p) if p.eq_ignore_ascii_case("SIP/2.0/") => &s[8..],
            _ => Self::protocol(s, strict)?,
        };
        let rest = trim_lws_start(rest);
        let t_end = find_lws(rest).ok_or("Via without sent-by")?;
        let transport = &rest[..t_end];
        if !is_token(transport) {
            return Err("bad Via transport");
        }
        let rest = &rest[t_end..];
        let (sent_by, params) = match find(rest, b';') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let (host, port) = split_host_port(sent_by)?;
        if strict {
            HeaderParams::validate(params)?;
        }
        Ok(Self {
            transport,
            host,
            port,
            params,
        })
    }
}

impl ViaRef<'_> {
    /// Skips `SIP / 2.0 /` written with LWS (RFC 4475 wsinv).
    fn protocol(s: &str, strict: bool) -> Result<&str, &'static str> {
        let (proto, rest) = split1(s, b'/').ok_or("Via without protocol")?;
        if !trim_lws(proto).eq_ignore_ascii_case("SIP") {
            return Err("Via protocol is not SIP");
        }
        let (version, rest) = split1(rest, b'/').ok_or("Via without version")?;
        if strict && trim_lws(version) != "2.0" {
            return Err("Via version is not 2.0");
        }
        Ok(rest)
    }
}

/// A name-addr or addr-spec with header parameters, borrowed (RFC 3261 §20.10).
pub(crate) struct NameAddrRef<'a> {
    /// The display name as written: a quoted-string with its quotes, or tokens.
    pub(crate) display: Option<&'a str>,
    /// Whether the URI was in angle brackets.
    pub(crate) angle: bool,
    pub(crate) uri: UriRef<'a>,
    pub(crate) params: &'a str,
}

impl<'a> NameAddrRef<'a> {
    /// Scans `["Name"|Name] <uri> *(; params)` or `uri *(; params)`.
    pub(crate) fn scan(s: &'a str) -> Result<Self, &'static str> {
        let s = trim_lws(s);
        let (display, lt) = if s.starts_with('"') {
            let end = quoted_end(s.as_bytes()).ok_or("unbalanced quotes in display name")?;
            let after = &s[end..];
            let lt = after.len() - trim_lws_start(after).len();
            if !after[lt..].starts_with('<') {
                return Err("quoted display name without <URI>");
            }
            (Some(&s[..end]), Some(end + lt))
        } else {
            match find(s, b'<') {
                Some(lt) => {
                    // Tokens, tolerating non-ASCII (UTF-8 or raw bytes, `raw.rs`): clients
                    // send `Jörg <sip:…>` unquoted, and `<` still ends the name.
                    let d = trim_lws(&s[..lt]);
                    if !d
                        .bytes()
                        .all(|c| is_token_char(c) || c == b' ' || c == b'\t' || c >= 0x80)
                    {
                        return Err("display name is neither token nor quoted-string");
                    }
                    ((!d.is_empty()).then_some(d), Some(lt))
                }
                None => (None, None),
            }
        };
        match lt {
            Some(lt) => {
                let gt = find(&s[lt..], b'>').ok_or("missing '>'")? + lt;
                let inner = &s[lt + 1..gt];
                if inner.starts_with([' ', '\t']) || inner.ends_with([' ', '\t']) {
                    return Err("spaces inside <URI>");
                }
                let uri = UriRef::scan(inner).map_err(|_| "bad URI in name-addr")?;
                let params = &s[gt + 1..];
                HeaderParams::validate(params)?;
                Ok(Self {
                    display,
                    angle: true,
                    uri,
                    params,
                })
            }
            None => {
                if find(s, b'"').is_some() {
                    return Err("stray quote in address");
                }
                let (uri, params) = match find(s, b';') {
                    Some(i) => s.split_at(i),
                    None => (s, ""),
                };
                let uri = trim_lws(uri);
                if uri.bytes().any(|c| c == b',' || c == b'?') {
                    return Err("URI with ',' or '?' must be in <>");
                }
                let uri = UriRef::scan(uri).map_err(|_| "bad URI")?;
                HeaderParams::validate(params)?;
                Ok(Self {
                    display: None,
                    angle: false,
                    uri,
                    params,
                })
            }
        }
    }
}

/// Scans a CSeq value `1*DIGIT LWS Method` into its number (any size) and method.
pub(crate) fn scan_cseq(s: &str) -> Result<(&str, &str), &'static str> {
    let s = trim_lws(s);
    let split = find_lws(s).ok_or("CSeq without method")?;
    let (num, method) = (&s[..split], trim_lws(&s[split..]));
    if !is_digits(num) {
        return Err("bad CSeq number");
    }
    if !is_token(method) {
        return Err("bad CSeq method");
    }
    Ok((num, method))
}

/// Whether `s` is an RFC 1123 date in GMT as SIP's Date header requires
/// (`Sat, 13 Nov 2010 23:29:00 GMT`, RFC 3261 §20.17; RFC 4475 baddate).
pub(crate) fn is_sip_date(s: &str) -> bool {
    const WKDAYS: [&[u8]; 7] = [b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun"];
    const MONTHS: [&[u8]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    b.len() == 29
        && WKDAYS.contains(&&b[0..3])
        && &b[3..5] == b", "
        && digits(5..7)
        && b[7] == b' '
        && MONTHS.contains(&&b[8..11])
        && b[11] == b' '
        && digits(12..16)
        && b[16] == b' '
        && digits(17..19)
        && b[19] == b':'
        && digits(20..22)
        && b[22] == b':'
        && digits(23..25)
        && &b[25..] == b" GMT"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params() {
        let all: Result<Vec<_>, _> = HeaderParams::new(" ; a = 1 ;b; c=\"x;y\"").collect();
        assert_eq!(
            all,
            Ok(vec![("a", Some("1")), ("b", None), ("c", Some("\"x;y\""))])
        );
        assert!(HeaderParams::validate(";;").is_err());
        assert!(HeaderParams::validate(";a=").is_err());
        assert!(HeaderParams::validate(";a=\"x").is_err());
        assert!(HeaderParams::validate("x").is_err());
        assert!(HeaderParams::validate(";received=2001:db8::1").is_ok());
    }

    #[test]
    fn host_port() {
        assert_eq!(split_host_port("h.example"), Ok(("h.example", None)));
        assert_eq!(split_host_port("h : 5060"), Ok(("h", Some(5060))));
        assert_eq!(
            split_host_port("[2001:db8::1]:5061"),
            Ok(("[2001:db8::1]", Some(5061)))
        );
        assert!(split_host_port("2001:db8::1").is_err());
        assert!(split_host_port("h:+5").is_err());
        assert!(split_host_port("h:70000").is_err());
        assert!(split_host_port("[zz::1]").is_err());
        assert!(split_host_port("").is_err());
    }

    #[test]
    fn dates() {
        assert!(is_sip_date("Sat, 15 Oct 2005 04:44:56 GMT"));
        assert!(!is_sip_date("Fri, 01 Jan 2010 16:00:00 EST"));
        assert!(!is_sip_date("Fri, 01 Jan 2010 16:00:00 GMTX"));
    }

    #[test]
    fn decimals() {
        assert_eq!(parse_decimal("0068", 255), Some(68));
        assert_eq!(parse_decimal("300", 255), None);
        assert_eq!(parse_decimal("-1", 255), None);
        assert_eq!(parse_decimal("99999999999999999999999", u64::MAX), None);
    }
}
