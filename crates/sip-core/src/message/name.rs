//! Header names, with compact forms (RFC 3261 §7.3.3) and case-insensitive comparison.

use std::hash::{Hash, Hasher};

/// A header name. Known names are an enum (cheap to compare); others keep their spelling.
///
/// Names compare case-insensitively by their canonical spelling (RFC 3261 §7.3.1):
/// `Other("session-expires") == Other("Session-Expires")`, and `Other("via") == Via`.
/// [`HeaderName::from_wire`] maps every spelling of a known name, long or compact, to its
/// variant.
#[derive(Debug, Clone)]
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
    /// Maps a received name (any case, compact or long) to a header name. Known names do not
    /// allocate.
    pub fn from_wire(name: &str) -> Self {
        // Only CR, NUL and SP could make a key collide (`\r | 0x20 == b'-'`); no token has them.
        if name.bytes().any(|c| c <= b' ') {
            return Self::Other(name.to_owned());
        }
        Self::from_token(name)
    }

    /// [`Self::from_wire`] for a name known to be a token (the parser checked it).
    pub(crate) fn from_token(name: &str) -> Self {
        if let Some(known) = Self::known(name) {
            return known;
        }
        // Compact forms of headers we keep as `Other`, stored under their long name so that
        // lookups by long name find them (RFC 3841, 4412, 4488, 4028, 3892, 6665).
        if let &[c] = name.as_bytes() {
            let long = match c.to_ascii_lowercase() {
                b'a' => "Accept-Contact",
                b'b' => "Referred-By",
                b'd' => "Request-Disposition",
                b'j' => "Reject-Contact",
                b'n' => "Identity-Info",
                b'u' => "Allow-Events",
                b'x' => "Session-Expires",
                _ => name,
            };
            return Self::Other(long.to_owned());
        }
        Self::Other(name.to_owned())
    }

    fn known(name: &str) -> Option<Self> {
        let b = name.as_bytes();
        if b.len() > 16 {
            return [
                ("proxy-authorization", Self::ProxyAuthorization),
                ("proxy-authenticate", Self::ProxyAuthenticate),
                ("authentication-info", Self::AuthenticationInfo),
                ("p-asserted-identity", Self::PAssertedIdentity),
                ("p-preferred-identity", Self::PPreferredIdentity),
            ]
            .into_iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v);
        }
        Some(match wire_key(b) {
            V | VIA => Self::Via,
            F | FROM => Self::From,
            T | TO => Self::To,
            I | CALL_ID => Self::CallId,
            CSEQ => Self::CSeq,
            MAX_FORWARDS => Self::MaxForwards,
            M | CONTACT => Self::Contact,
            L | CONTENT_LENGTH => Self::ContentLength,
            C | CONTENT_TYPE => Self::ContentType,
            E | CONTENT_ENCODING => Self::ContentEncoding,
            ROUTE => Self::Route,
            RECORD_ROUTE => Self::RecordRoute,
            EXPIRES => Self::Expires,
            MIN_EXPIRES => Self::MinExpires,
            AUTHORIZATION => Self::Authorization,
            WWW_AUTHENTICATE => Self::WwwAuthenticate,
            K | SUPPORTED => Self::Supported,
            REQUIRE => Self::Require,
            PROXY_REQUIRE => Self::ProxyRequire,
            UNSUPPORTED => Self::Unsupported,
            ALLOW => Self::Allow,
            REASON => Self::Reason,
            Y | IDENTITY => Self::Identity,
            USER_AGENT => Self::UserAgent,
            SERVER => Self::Server,
            TIMESTAMP => Self::Timestamp,
            DATE => Self::Date,
            S | SUBJECT => Self::Subject,
            O | EVENT => Self::Event,
            R | REFER_TO => Self::ReferTo,
            _ => return None,
        })
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

/// A name of at most 16 bytes packed into an integer, every byte ORed with 0x20 and the
/// rest filled with 0x20: one integer compare per candidate instead of a string compare.
///
/// On token characters `| 0x20` only lower-cases letters, except that `_` becomes DEL, which
/// no known name holds; and SP never occurs in a token. So distinct names (ignoring case)
/// get distinct keys.
const fn key(name: &[u8]) -> u128 {
    let mut buf = [0x20u8; 16];
    let mut i = 0;
    while i < name.len() && i < 16 {
        buf[i] = name[i] | 0x20;
        i += 1;
    }
    u128::from_be_bytes(buf)
}

/// [`key`] for a name of at most 16 bytes, at run time.
fn wire_key(name: &[u8]) -> u128 {
    let mut buf = [0u8; 16];
    if let Some(dst) = buf.get_mut(..name.len()) {
        dst.copy_from_slice(name);
    }
    u128::from_be_bytes(buf) | 0x2020_2020_2020_2020_2020_2020_2020_2020
}

macro_rules! keys {
    ($($id:ident = $s:literal),* $(,)?) => {
        $(const $id: u128 = {
            assert!($s.len() <= 16);
            key($s)
        };)*
    };
}
keys!(
    V = b"v",
    VIA = b"via",
    F = b"f",
    FROM = b"from",
    T = b"t",
    TO = b"to",
    I = b"i",
    CALL_ID = b"call-id",
    CSEQ = b"cseq",
    MAX_FORWARDS = b"max-forwards",
    M = b"m",
    CONTACT = b"contact",
    L = b"l",
    CONTENT_LENGTH = b"content-length",
    C = b"c",
    CONTENT_TYPE = b"content-type",
    E = b"e",
    CONTENT_ENCODING = b"content-encoding",
    ROUTE = b"route",
    RECORD_ROUTE = b"record-route",
    EXPIRES = b"expires",
    MIN_EXPIRES = b"min-expires",
    AUTHORIZATION = b"authorization",
    WWW_AUTHENTICATE = b"www-authenticate",
    K = b"k",
    SUPPORTED = b"supported",
    REQUIRE = b"require",
    PROXY_REQUIRE = b"proxy-require",
    UNSUPPORTED = b"unsupported",
    ALLOW = b"allow",
    REASON = b"reason",
    Y = b"y",
    IDENTITY = b"identity",
    USER_AGENT = b"user-agent",
    SERVER = b"server",
    TIMESTAMP = b"timestamp",
    DATE = b"date",
    S = b"s",
    SUBJECT = b"subject",
    O = b"o",
    EVENT = b"event",
    R = b"r",
    REFER_TO = b"refer-to",
);

impl PartialEq for HeaderName {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Other(a), b) | (b, Self::Other(a)) => a.eq_ignore_ascii_case(b.as_str()),
            _ => std::mem::discriminant(self) == std::mem::discriminant(other),
        }
    }
}

impl Eq for HeaderName {}

impl Hash for HeaderName {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Consistent with `eq`: equal names have equal lower-case canonical spellings.
        for b in self.as_str().bytes() {
            state.write_u8(b.to_ascii_lowercase());
        }
        state.write_u8(0xff);
    }
}

impl std::fmt::Display for HeaderName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_names_any_case_and_compact() {
        for (wire, name) in [
            ("v", HeaderName::Via),
            ("V", HeaderName::Via),
            ("vIa", HeaderName::Via),
            ("I", HeaderName::CallId),
            ("call-id", HeaderName::CallId),
            ("L", HeaderName::ContentLength),
            ("m", HeaderName::Contact),
            ("P-Preferred-Identity", HeaderName::PPreferredIdentity),
        ] {
            assert_eq!(HeaderName::from_wire(wire), name, "{wire}");
            assert!(!matches!(HeaderName::from_wire(wire), HeaderName::Other(_)));
        }
        assert_eq!(
            HeaderName::from_wire("x"),
            HeaderName::Other("session-expires".into())
        );
        assert_eq!(
            HeaderName::from_wire("C%6Fntact"),
            HeaderName::Other("c%6fntact".into())
        );
        assert_ne!(HeaderName::from_wire("C%6Fntact"), HeaderName::Contact);
        assert_ne!(HeaderName::from_wire("v\0"), HeaderName::Via);
        assert_ne!(HeaderName::from_wire("to\r"), HeaderName::To);
        assert_ne!(HeaderName::from_wire("Call_ID"), HeaderName::CallId);
    }

    #[test]
    fn eq_and_hash_agree() {
        use std::collections::hash_map::DefaultHasher;
        let h = |n: &HeaderName| {
            let mut s = DefaultHasher::new();
            n.hash(&mut s);
            s.finish()
        };
        let a = HeaderName::Other("VIA".into());
        assert_eq!(a, HeaderName::Via);
        assert_eq!(h(&a), h(&HeaderName::Via));
        assert_ne!(HeaderName::To, HeaderName::From);
        assert_eq!(
            h(&HeaderName::Other("X-Foo".into())),
            h(&HeaderName::Other("x-foo".into()))
        );
    }
}
