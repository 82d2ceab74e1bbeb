//! The enrolment URI the operator hands the user (R28, SECURITY.md threat 12): where the
//! public enrolment endpoint is, the one-time code, and the SHA-256 fingerprint of the
//! server's TLS public key, as an eSIM activation code carries its SM-DP+ address.
//!
//! ```text
//! trustring-enrol://HOST:PORT?code=CODE&fp=sha256:HEX
//! ```
//!
//! - `HOST` is a DNS name, an IPv4 address or a bracketed IPv6 address; `PORT` is required.
//! - `code` is the enrolment code (Crockford base32 in groups of five; any other character is
//!   percent-encoded).
//! - `fp` is `sha256:` and 64 lowercase hex digits: SHA-256 of the DER SubjectPublicKeyInfo of
//!   the server's certificate ([`tls::Fingerprint`]). The device pins it: it talks HTTPS to
//!   `https://HOST:PORT` and accepts that key and no other, whatever the certificate says.
//! - Unknown parameters are ignored (room for later versions); `code` and `fp` must appear
//!   exactly once.
//!
//! The same text is what the QR code of `trustring admin enrol` and the console encodes.

use std::fmt;
use std::str::FromStr;

use tls::Fingerprint;

/// The URI scheme.
pub const SCHEME: &str = "trustring-enrol";

/// A parsed enrolment URI.
#[derive(Clone, PartialEq, Eq)]
pub struct EnrolUri {
    /// `HOST:PORT` of the public enrolment endpoint (IPv6 hosts in brackets).
    pub authority: String,
    /// The one-time enrolment code.
    pub code: String,
    /// The server's TLS key fingerprint the device pins.
    pub fingerprint: Fingerprint,
}

/// Redacts the code: it is a one-time secret.
impl fmt::Debug for EnrolUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrolUri")
            .field("authority", &self.authority)
            .field("code", &"<redacted>")
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

/// Why a text is not an enrolment URI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an enrolment URI (trustring-enrol://HOST:PORT?code=CODE&fp=sha256:HEX): {0}")]
pub struct EnrolUriError(String);

impl EnrolUri {
    /// `https://HOST:PORT`: the base URL of the enrolment endpoint.
    pub fn base_url(&self) -> String {
        format!("https://{}", self.authority)
    }

    /// The URI as a QR code: one string per row of modules, `1` dark and `0` light, without
    /// the quiet zone (error correction level M). `None` if the URI is too long for a QR code.
    pub fn qr_rows(&self) -> Option<Vec<String>> {
        let code = self.qr()?;
        let width = code.width();
        let colors = code.to_colors();
        Some(
            colors
                .chunks(width)
                .map(|row| {
                    row.iter()
                        .map(|c| match c {
                            qrcode::Color::Dark => '1',
                            qrcode::Color::Light => '0',
                        })
                        .collect()
                })
                .collect(),
        )
    }

    /// The URI as a QR code drawn with Unicode half blocks for a terminal (two rows of
    /// modules per line, quiet zone included; light modules drawn, for dark backgrounds).
    pub fn qr_terminal(&self) -> Option<String> {
        use qrcode::render::unicode::Dense1x2;
        Some(
            self.qr()?
                .render::<Dense1x2>()
                .dark_color(Dense1x2::Light)
                .light_color(Dense1x2::Dark)
                .build(),
        )
    }

    fn qr(&self) -> Option<qrcode::QrCode> {
        qrcode::QrCode::with_error_correction_level(self.to_string(), qrcode::EcLevel::M).ok()
    }
}

impl fmt::Display for EnrolUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}://{}?code={}&fp={}",
            self.authority,
            percent_encode(&self.code),
            self.fingerprint
        )
    }
}

impl FromStr for EnrolUri {
    type Err = EnrolUriError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| EnrolUriError(why.to_owned());
        let text = text.trim();
        let (scheme, rest) = text.split_once("://").ok_or_else(|| bad("no scheme"))?;
        if !scheme.eq_ignore_ascii_case(SCHEME) {
            return Err(bad(&format!("the scheme is {scheme:?}, not {SCHEME:?}")));
        }
        let (authority, query) = rest
            .split_once('?')
            .ok_or_else(|| bad("no ?code=…&fp=… part"))?;
        let authority = authority.strip_suffix('/').unwrap_or(authority);
        check_authority(authority).map_err(|why| bad(&why))?;
        let query = query.split_once('#').map_or(query, |(q, _)| q);
        let (mut code, mut fp) = (None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value).ok_or_else(|| bad("bad percent-encoding"))?;
            let slot = match name {
                "code" => &mut code,
                "fp" => &mut fp,
                _ => continue,
            };
            if slot.replace(value).is_some() {
                return Err(bad(&format!("{name} appears twice")));
            }
        }
        let code = code
            .filter(|c| !c.trim().is_empty())
            .ok_or_else(|| bad("no code"))?;
        let fingerprint = fp
            .ok_or_else(|| bad("no fp (the server's key fingerprint)"))?
            .parse::<Fingerprint>()
            .map_err(|e| bad(&e.to_string()))?;
        Ok(Self {
            authority: authority.to_owned(),
            code,
            fingerprint,
        })
    }
}

/// `HOST:PORT` with a non-empty host (a name, IPv4 or `[IPv6]`) and a port 1–65535.
fn check_authority(authority: &str) -> Result<(), String> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (v6, port) = rest
            .split_once("]:")
            .ok_or("an IPv6 host needs [ADDR]:PORT")?;
        v6.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("{v6:?} is not an IPv6 address"))?;
        (v6, port)
    } else {
        authority
            .rsplit_once(':')
            .ok_or("the port is missing (HOST:PORT)")?
    };
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'));
    if !host_ok || host.contains("..") {
        return Err(format!("bad host {host:?}"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("bad port {port:?}")),
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Decodes `%XX` (and `+` as a space, as form encoders write it); `None` on a bad escape or
/// if the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp() -> Fingerprint {
        Fingerprint([0xab; 32])
    }

    #[test]
    fn round_trip() {
        let uri = EnrolUri {
            authority: "enrol.example.com:8443".into(),
            code: "ABCDE-FGHJK-MNPQR-STVWX".into(),
            fingerprint: fp(),
        };
        let text = uri.to_string();
        assert_eq!(
            text,
            format!(
                "trustring-enrol://enrol.example.com:8443?code=ABCDE-FGHJK-MNPQR-STVWX&fp=sha256:{}",
                "ab".repeat(32)
            )
        );
        assert_eq!(text.parse::<EnrolUri>(), Ok(uri.clone()));
        assert_eq!(uri.base_url(), "https://enrol.example.com:8443");
        assert!(
            !format!("{uri:?}").contains("ABCDE"),
            "the code is redacted"
        );
        // Odd characters in the code are percent-encoded and come back.
        let odd = EnrolUri {
            code: "a b&c=d".into(),
            ..uri
        };
        assert!(odd.to_string().contains("code=a%20b%26c%3Dd&"));
        assert_eq!(odd.to_string().parse::<EnrolUri>(), Ok(odd));
    }

    #[test]
    fn accepts_ipv4_ipv6_extra_parameters_and_case() {
        let f = fp().to_string();
        for (text, authority) in [
            (
                format!("trustring-enrol://127.0.0.1:8443?fp={f}&code=X"),
                "127.0.0.1:8443",
            ),
            (
                format!("TRUSTRING-ENROL://[::1]:8443/?code=X&fp={f}&v=1"),
                "[::1]:8443",
            ),
            (
                format!(
                    "  trustring-enrol://h:1?code=X&fp={}  ",
                    f.to_uppercase().replace("SHA256", "sha256")
                ),
                "h:1",
            ),
        ] {
            let uri: EnrolUri = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(uri.authority, authority);
            assert_eq!(uri.code, "X");
            assert_eq!(uri.fingerprint, fp());
        }
    }

    #[test]
    fn refuses_what_is_not_one() {
        let f = fp().to_string();
        for text in [
            format!("https://h:1?code=X&fp={f}"),
            format!("http://127.0.0.1:8080?code=X&fp={f}"),
            format!("trustring-enrol://h?code=X&fp={f}"),
            format!("trustring-enrol://h:0?code=X&fp={f}"),
            format!("trustring-enrol://:1?code=X&fp={f}"),
            format!("trustring-enrol://[zz]:1?code=X&fp={f}"),
            format!("trustring-enrol://h:1?fp={f}"),
            format!("trustring-enrol://h:1?code=&fp={f}"),
            "trustring-enrol://h:1?code=X".to_owned(),
            "trustring-enrol://h:1?code=X&fp=sha256:abcd".to_owned(),
            format!("trustring-enrol://h:1?code=X&code=Y&fp={f}"),
            format!("trustring-enrol://h:1?code=%zz&fp={f}"),
            "trustring-enrol://h:1".to_owned(),
            "".to_owned(),
        ] {
            assert!(text.parse::<EnrolUri>().is_err(), "{text}");
        }
    }

    #[test]
    fn qr_codes() {
        let uri = EnrolUri {
            authority: "127.0.0.1:8443".into(),
            code: "ABCDE-FGHJK-MNPQR-STVWX".into(),
            fingerprint: fp(),
        };
        let rows = uri.qr_rows().unwrap_or_default();
        assert!(rows.len() >= 21 && rows.len() % 4 == 1, "{}", rows.len());
        assert!(rows.iter().all(|r| r.len() == rows.len()));
        assert!(rows[0].starts_with("1111111"), "finder pattern");
        let text = uri.qr_terminal().unwrap_or_default();
        assert!(text.lines().count() > rows.len() / 2);
    }
}
