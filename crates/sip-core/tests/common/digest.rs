//! Digest answers (RFC 3261 §22, RFC 8760) as a well-behaved client makes them.

use sip_core::auth::{Algorithm, ResponseInput, ha1, response};
use sip_core::message::{HeaderName, Response};

use super::REALM;

/// The first value of parameter `name` in a challenge or credentials (quoted or not).
pub fn param(challenge: &str, name: &str) -> Option<String> {
    for part in challenge.trim_start_matches("Digest ").split(", ") {
        let (n, v) = part.split_once('=')?;
        if n.trim() == name {
            return Some(v.trim().trim_matches('"').to_owned());
        }
    }
    None
}

/// The challenge header of a 401 (`WWW-Authenticate`) or 407 (`Proxy-Authenticate`).
pub fn challenge_header(resp: &Response) -> HeaderName {
    if resp.status == 401 {
        HeaderName::WwwAuthenticate
    } else {
        HeaderName::ProxyAuthenticate
    }
}

/// The nonce of `resp`'s first challenge.
pub fn nonce_of(resp: &Response) -> String {
    let c = resp
        .headers
        .get(&challenge_header(resp))
        .expect("a challenge");
    param(c, "nonce").expect("a nonce")
}

/// Digest credentials (`qop=auth`, nc 1) of `user`/`pw` with `alg` for `method` and
/// digest-uri `uri`.
pub fn creds(user: &str, pw: &str, nonce: &str, method: &str, uri: &str, alg: Algorithm) -> String {
    let h = ha1(alg, user, REALM, pw);
    let r = response(
        alg,
        &h,
        &ResponseInput {
            nonce,
            nc: "00000001",
            cnonce: "c0ffee",
            qop: "auth",
            method,
            uri,
        },
    );
    format!(
        "Digest username=\"{user}\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{r}\", algorithm={}, qop=auth, nc=00000001, cnonce=\"c0ffee\"",
        alg.as_str()
    )
}

/// Credentials of `user`/`pw` with `alg` answering the challenge of `resp` (a 401 or 407)
/// for `method` on `uri`.
pub fn answer_challenge(
    resp: &Response,
    user: &str,
    pw: &str,
    alg: Algorithm,
    method: &str,
    uri: &str,
) -> String {
    creds(user, pw, &nonce_of(resp), method, uri, alg)
}
