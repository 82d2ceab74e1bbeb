//! Digest authentication through the public API: challenges, verification, replay, stale
//! nonces, user enumeration, the SIPp 3.6.1 compatibility of the challenge format, the
//! failure limiter, and a no-panic property test of the credentials parser.

mod common;

use std::cell::Cell;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use common::digest::param;
use proptest::prelude::*;
use sip_core::auth::{
    Algorithm, AuthError, AuthFailureLimiter, Authenticator, Credentials, DigestConfig,
    LimiterConfig, ResponseInput, ha1, response,
};

const REALM: &str = "trustring.test";
const SECRET: [u8; 32] = [42; 32];

fn authenticator(t0: Instant) -> Authenticator {
    Authenticator::new(DigestConfig::new(REALM), SECRET, t0)
}

/// The store: alice/wonderland, in both algorithms.
fn store(user: &str, alg: Algorithm) -> Option<String> {
    (user == "alice").then(|| ha1(alg, "alice", REALM, "wonderland"))
}

struct Answer<'a> {
    user: &'a str,
    password: &'a str,
    alg: Option<&'a str>,
    nonce: &'a str,
    nc: u32,
    method: &'a str,
    uri: &'a str,
}

impl Answer<'_> {
    fn new(nonce: &str) -> Answer<'_> {
        Answer {
            user: "alice",
            password: "wonderland",
            alg: Some("SHA-256"),
            nonce,
            nc: 1,
            method: "REGISTER",
            uri: "sip:trustring.test",
        }
    }

    fn header(&self) -> String {
        let alg = Algorithm::from_token(self.alg).unwrap_or(Algorithm::Md5);
        let h = ha1(alg, self.user, REALM, self.password);
        let nc = format!("{:08x}", self.nc);
        let r = response(
            alg,
            &h,
            &ResponseInput {
                nonce: self.nonce,
                nc: &nc,
                cnonce: "0a4f113b",
                qop: "auth",
                method: self.method,
                uri: self.uri,
            },
        );
        let alg = self
            .alg
            .map(|a| format!(", algorithm={a}"))
            .unwrap_or_default();
        format!(
            r#"Digest username="{}", realm="{REALM}", nonce="{}", uri="{}", response="{r}"{alg}, cnonce="0a4f113b", qop=auth, nc={nc}"#,
            self.user, self.nonce, self.uri
        )
    }
}

fn fresh_nonce(a: &mut Authenticator, now: Instant) -> String {
    param(&a.challenges(now, false)[0], "nonce").expect("nonce")
}

#[test]
fn challenges_offer_sha256_then_md5_with_one_nonce() {
    let t0 = Instant::now();
    let mut a = authenticator(t0);
    let ch = a.challenges(t0, false);
    assert_eq!(ch.len(), 2);
    assert!(ch[0].starts_with("Digest realm=\"trustring.test\", qop=\"auth\", nonce=\""));
    assert!(ch[0].ends_with(", algorithm=SHA-256"), "{}", ch[0]);
    assert!(ch[1].ends_with(", algorithm=MD5"), "{}", ch[1]);
    assert_eq!(param(&ch[0], "nonce"), param(&ch[1], "nonce"));
    assert_eq!(param(&ch[0], "opaque"), param(&ch[1], "opaque"));
    assert_eq!(param(&ch[0], "algorithm").as_deref(), Some("SHA-256"));
    assert!(!ch[0].contains("stale"));
    // SIPp 3.6.1 keeps at most 63 characters of opaque.
    assert!(param(&ch[0], "opaque").expect("opaque").len() < 64);

    let stale = a.challenges(t0, true);
    assert!(stale.iter().all(|c| c.contains(", stale=true")));
    // Two challenges in the same instant still differ.
    assert_ne!(param(&ch[0], "nonce"), param(&stale[0], "nonce"));
}

#[test]
fn sha256_md5_and_absent_algorithm_verify() {
    let t0 = Instant::now();
    let mut a = authenticator(t0);
    for alg in [
        Some("SHA-256"),
        Some("sha-256"),
        Some("MD5"),
        Some("md5"),
        None,
    ] {
        let nonce = fresh_nonce(&mut a, t0);
        let header = Answer {
            alg,
            ..Answer::new(&nonce)
        }
        .header();
        let v = a.verify(t0, "REGISTER", &header, store).expect("verifies");
        assert_eq!(v.username, "alice");
        assert_eq!(v.uri, "sip:trustring.test");
        let expected = if alg.is_some_and(|a| a.eq_ignore_ascii_case("sha-256")) {
            Algorithm::Sha256
        } else {
            Algorithm::Md5
        };
        assert_eq!(v.algorithm, expected);
    }
}

#[test]
fn uppercase_response_and_proxy_methods_verify() {
    let t0 = Instant::now();
    let mut a = authenticator(t0);
    let nonce = fresh_nonce(&mut a, t0);
    let header = Answer {
        method: "INVITE",
        uri: "sip:bob@trustring.test",
        ..Answer::new(&nonce)
    }
    .header();
    let resp = param(&header, "response").expect("response");
    let upper = header.replace(&resp, &resp.to_ascii_uppercase());
    let v = a.verify(t0, "INVITE", &upper, store).expect("verifies");
    assert_eq!(v.uri, "sip:bob@trustring.test");
    // The method is covered by the digest.
    let nonce = fresh_nonce(&mut a, t0);
    let header = Answer::new(&nonce).header();
    assert_eq!(
        a.verify(t0, "INVITE", &header, store),
        Err(AuthError::BadResponse)
    );
}

/// What SIPp 3.6.1 (`src/auth.cpp`, `createAuthHeaderMD5`) builds from our 401: it joins all
/// WWW-Authenticate values with ", ", takes the first `algorithm=`, `realm`, `nonce`,
/// `opaque` substrings it finds, and answers in its own format.
fn sipp_361_answer(challenges: &[String], user: &str, password: &str, uri: &str) -> String {
    let joined = challenges.join(", ");
    let first = |name: &str| -> Option<String> {
        let lower = joined.to_ascii_lowercase();
        let mut from = 0;
        loop {
            let at = from + lower[from..].find(name)?;
            let rest = &joined[at + name.len()..];
            if let Some(v) = rest.strip_prefix('=') {
                let v = v.strip_prefix('"').unwrap_or(v);
                let end = v.find([' ', ',', '"', '\r', '\n']).unwrap_or(v.len());
                return Some(v[..end].to_owned());
            }
            from = at + name.len();
        }
    };
    let algo = first("algorithm").unwrap_or_else(|| "MD5".to_owned());
    assert_eq!(algo, "MD5", "SIPp 3.6.1 would exit: {algo}");
    let realm = first("realm").expect("realm");
    let nonce = first("nonce").expect("nonce");
    let opaque = first("opaque").expect("opaque");
    let h = ha1(Algorithm::Md5, user, &realm, password);
    let r = response(
        Algorithm::Md5,
        &h,
        &ResponseInput {
            nonce: &nonce,
            nc: "00000001",
            cnonce: "6b8b4567",
            qop: "auth",
            method: "REGISTER",
            uri,
        },
    );
    format!(
        r#"Digest username="{user}",realm="{realm}",cnonce="6b8b4567",nc=00000001,qop=auth,uri="{uri}",nonce="{nonce}",response="{r}",algorithm=MD5,opaque="{opaque}""#
    )
}

/// SIPp 3.6.1 gets what `auto` offers a client it knows nothing about: MD5 alone.
#[test]
fn sipp_361_first_occurrence_parsing_answers_md5_and_verifies() {
    let t0 = Instant::now();
    let mut a = authenticator(t0);
    let ch = a.challenges_offering(t0, false, &[Algorithm::Md5]);
    assert_eq!(ch.len(), 1);
    let header = sipp_361_answer(&ch, "alice", "wonderland", "sip:127.0.0.1:5060");
    let v = a.verify(t0, "REGISTER", &header, store).expect("verifies");
    assert_eq!(v.algorithm, Algorithm::Md5);
    assert_eq!(v.uri, "sip:127.0.0.1:5060");
}

/// The nonce carries the set offered: an MD5 answer to a SHA-256-only challenge (a
/// downgrade) and a SHA-256 answer to an MD5-only one are refused, however right the digest.
#[test]
fn answers_must_use_an_offered_algorithm() {
    let t0 = Instant::now();
    let mut a = authenticator(t0);
    for (offer, answer, ok) in [
        (Algorithm::Sha256, Some("MD5"), false),
        (Algorithm::Sha256, None, false),
        (Algorithm::Sha256, Some("SHA-256"), true),
        (Algorithm::Md5, Some("SHA-256"), false),
        (Algorithm::Md5, Some("MD5"), true),
    ] {
        let ch = a.challenges_offering(t0, false, &[offer]);
        assert_eq!(ch.len(), 1);
        assert!(ch[0].ends_with(&format!("algorithm={}", offer.as_str())));
        let nonce = param(&ch[0], "nonce").expect("nonce");
        let header = Answer {
            alg: answer,
            ..Answer::new(&nonce)
        }
        .header();
        let got = a.verify(t0, "REGISTER", &header, store);
        if ok {
            assert!(got.is_ok(), "{offer:?} answered {answer:?}: {got:?}");
        } else {
            assert_eq!(
                got,
                Err(AuthError::AlgorithmNotOffered),
                "{offer:?} answered {answer:?}"
            );
        }
    }
}

#[test]
fn unsupported_algorithms_and_qops() {
    let t0 = Instant::now();
    let mut a = authenticator(t0);
    let nonce = fresh_nonce(&mut a, t0);
    for alg in ["MD5-sess", "SHA-256-sess", "SHA-512-256", "AKAv1-MD5"] {
        let header = Answer::new(&nonce)
            .header()
            .replace("algorithm=SHA-256", &format!("algorithm={alg}"));
        assert_eq!(
            a.verify(t0, "REGISTER", &header, store),
            Err(AuthError::UnsupportedAlgorithm),
            "{alg}"
        );
    }
    let header = Answer::new(&nonce).header();
    assert_eq!(
        a.verify(
            t0,
            "REGISTER",
            &header.replace("qop=auth", "qop=auth-int"),
            store
        ),
        Err(AuthError::UnsupportedQop)
    );
    assert_eq!(
        a.verify(t0, "REGISTER", &header.replace(", qop=auth", ""), store),
        Err(AuthError::UnsupportedQop)
    );
    assert!(matches!(
        a.verify(
            t0,
            "REGISTER",
            &header.replace(r#", cnonce="0a4f113b""#, ""),
            store
        ),
        Err(AuthError::Malformed(_))
    ));
    assert!(matches!(
        a.verify(t0, "REGISTER", &header.replace(", nc=00000001", ""), store),
        Err(AuthError::Malformed(_))
    ));
    assert!(matches!(
        a.verify(
            t0,
            "REGISTER",
            &header.replace("nc=00000001", "nc=1"),
            store
        ),
        Err(AuthError::Malformed(_))
    ));
}

#[test]
fn wrong_realm_forged_and_foreign_nonces() {
    let t0 = Instant::now();
    let mut a = authenticator(t0);
    let nonce = fresh_nonce(&mut a, t0);
    let header = Answer::new(&nonce).header();
    assert_eq!(
        a.verify(t0, "REGISTER", &header.replace(REALM, "evil.test"), store),
        Err(AuthError::WrongRealm)
    );

    // One hex digit changed in the time, the counter and the tag.
    for i in [3, 20, 50] {
        let mut forged = nonce.clone().into_bytes();
        forged[i] = if forged[i] == b'0' { b'1' } else { b'0' };
        let forged = String::from_utf8(forged).expect("ascii");
        let header = Answer::new(&forged).header();
        assert_eq!(
            a.verify(t0, "REGISTER", &header, store),
            Err(AuthError::UnknownNonce)
        );
    }
    for junk in ["", "abc", "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"] {
        let header = Answer::new(junk).header();
        assert_eq!(
            a.verify(t0, "REGISTER", &header, store),
            Err(AuthError::UnknownNonce)
        );
    }

    // Another server's (another secret's) nonce.
    let mut other = Authenticator::new(DigestConfig::new(REALM), [1; 32], t0);
    let foreign = fresh_nonce(&mut other, t0);
    let header = Answer::new(&foreign).header();
    assert_eq!(
        a.verify(t0, "REGISTER", &header, store),
        Err(AuthError::UnknownNonce)
    );

    // A wrong opaque, while ours is accepted and an absent one too.
    let ch = a.challenges(t0, false);
    let nonce = param(&ch[0], "nonce").expect("nonce");
    let opaque = param(&ch[0], "opaque").expect("opaque");
    let header = Answer::new(&nonce).header();
    assert_eq!(
        a.verify(
            t0,
            "REGISTER",
            &format!(r#"{header}, opaque="nope""#),
            store
        ),
        Err(AuthError::UnknownNonce)
    );
    assert!(
        a.verify(
            t0,
            "REGISTER",
            &format!(r#"{header}, opaque="{opaque}""#),
            store
        )
        .is_ok()
    );
}

#[test]
fn nonces_expire_as_stale_only_with_a_right_digest() {
    let t0 = Instant::now();
    let mut a = authenticator(t0);
    let nonce = fresh_nonce(&mut a, t0);
    let ttl = a.config().nonce_ttl;
    assert_eq!(ttl, Duration::from_secs(300));
    let header = Answer::new(&nonce).header();
    let late = t0 + ttl + Duration::from_millis(1);
    assert_eq!(
        a.verify(late, "REGISTER", &header, store),
        Err(AuthError::Stale)
    );
    let wrong = Answer {
        password: "guess",
        ..Answer::new(&nonce)
    }
    .header();
    assert_eq!(
        a.verify(late, "REGISTER", &wrong, store),
        Err(AuthError::BadResponse)
    );
    // Just within the lifetime it still works.
    assert!(
        a.verify(t0 + ttl, "REGISTER", &header, store).is_ok(),
        "at exactly the ttl"
    );
}

#[test]
fn nc_must_strictly_increase() {
    let t0 = Instant::now();
    let mut a = authenticator(t0);
    let nonce = fresh_nonce(&mut a, t0);
    let with_nc = |nc| {
        Answer {
            nc,
            ..Answer::new(&nonce)
        }
        .header()
    };
    assert!(a.verify(t0, "REGISTER", &with_nc(1), store).is_ok());
    assert_eq!(
        a.verify(t0, "REGISTER", &with_nc(1), store),
        Err(AuthError::Replay)
    );
    assert!(a.verify(t0, "REGISTER", &with_nc(5), store).is_ok());
    assert_eq!(
        a.verify(t0, "REGISTER", &with_nc(3), store),
        Err(AuthError::Replay)
    );
    assert_eq!(
        a.verify(t0, "REGISTER", &with_nc(5), store),
        Err(AuthError::Replay)
    );
    assert!(a.verify(t0, "REGISTER", &with_nc(6), store).is_ok());
    assert_eq!(a.tracked_nonces(), 1);
}

#[test]
fn failed_digests_do_not_burn_the_nonce_count() {
    let t0 = Instant::now();
    let mut a = authenticator(t0);
    let nonce = fresh_nonce(&mut a, t0);
    let attacker = Answer {
        password: "guess",
        nc: u32::MAX,
        ..Answer::new(&nonce)
    }
    .header();
    assert_eq!(
        a.verify(t0, "REGISTER", &attacker, store),
        Err(AuthError::BadResponse)
    );
    assert_eq!(a.tracked_nonces(), 0);
    assert!(
        a.verify(t0, "REGISTER", &Answer::new(&nonce).header(), store)
            .is_ok()
    );
}

#[test]
fn a_nonce_serves_at_most_max_nonce_uses() {
    let t0 = Instant::now();
    let config = DigestConfig {
        max_nonce_uses: 3,
        ..DigestConfig::new(REALM)
    };
    let mut a = Authenticator::new(config, SECRET, t0);
    let nonce = fresh_nonce(&mut a, t0);
    for nc in 1..=3 {
        let h = Answer {
            nc,
            ..Answer::new(&nonce)
        }
        .header();
        assert!(a.verify(t0, "REGISTER", &h, store).is_ok());
    }
    let h = Answer {
        nc: 4,
        ..Answer::new(&nonce)
    }
    .header();
    assert_eq!(a.verify(t0, "REGISTER", &h, store), Err(AuthError::Stale));
}

#[test]
fn unknown_user_and_wrong_password_look_the_same() {
    let t0 = Instant::now();
    let mut a = authenticator(t0);
    for alg in ["SHA-256", "MD5"] {
        let nonce = fresh_nonce(&mut a, t0);
        let wrong_password = Answer {
            password: "guess",
            alg: Some(alg),
            ..Answer::new(&nonce)
        }
        .header();
        let unknown_user = Answer {
            user: "mallory",
            alg: Some(alg),
            ..Answer::new(&nonce)
        }
        .header();
        for header in [wrong_password, unknown_user] {
            let calls = Cell::new(0);
            let result = a.verify(t0, "REGISTER", &header, |u, alg| {
                calls.set(calls.get() + 1);
                store(u, alg)
            });
            assert_eq!(result, Err(AuthError::BadResponse));
            assert_eq!(calls.get(), 1, "the store is asked once either way");
        }
    }
    // A store value of the wrong length or not hex is treated like an unknown user.
    let nonce = fresh_nonce(&mut a, t0);
    let header = Answer::new(&nonce).header();
    assert_eq!(
        a.verify(t0, "REGISTER", &header, |_, _| Some("zz".repeat(32))),
        Err(AuthError::BadResponse)
    );
}

#[test]
fn escaped_usernames_are_unescaped_before_hashing() {
    let t0 = Instant::now();
    let mut a = authenticator(t0);
    let nonce = fresh_nonce(&mut a, t0);
    let user = r#"al"ice"#;
    let h = ha1(Algorithm::Sha256, user, REALM, "pw");
    let r = response(
        Algorithm::Sha256,
        &h,
        &ResponseInput {
            nonce: &nonce,
            nc: "00000001",
            cnonce: "c",
            qop: "auth",
            method: "REGISTER",
            uri: "sip:x",
        },
    );
    let header = format!(
        "Digest username=\"al\\\"ice\",\r\n realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"sip:x\", response=\"{r}\", algorithm=SHA-256, cnonce=\"c\", qop=\"auth\", nc=00000001"
    );
    let v = a
        .verify(t0, "REGISTER", &header, |u, alg| {
            (u == user).then(|| ha1(alg, user, REALM, "pw"))
        })
        .expect("verifies");
    assert_eq!(v.username, user);
}

#[test]
fn limiter_blocks_after_max_failures_within_the_window() {
    let t0 = Instant::now();
    let mut l = AuthFailureLimiter::default();
    let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
    for i in 0..9 {
        l.record_failure(t0 + Duration::from_secs(i), ip, "alice");
    }
    let t9 = t0 + Duration::from_secs(9);
    assert!(!l.is_blocked(t9, ip, ""));
    assert!(!l.is_user_blocked(t9, "alice"));
    l.record_failure(t9, ip, "alice");
    assert!(l.is_blocked(t9, ip, ""));
    assert!(l.is_ip_blocked(t9, ip));
    assert!(l.is_user_blocked(t9, "alice"));
    // The username is blocked from other addresses too; other users and addresses are not.
    let other = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1));
    assert!(l.is_blocked(t9, other, "alice"));
    assert!(!l.is_blocked(t9, other, "bob"));
    // Until the window has passed.
    assert!(l.is_blocked(t9 + Duration::from_secs(59), ip, ""));
    assert!(!l.is_blocked(t9 + Duration::from_secs(60), ip, "alice"));
}

#[test]
fn limiter_forgets_failures_spread_over_windows() {
    let t0 = Instant::now();
    let mut l = AuthFailureLimiter::new(LimiterConfig {
        max_failures: 3,
        window: Duration::from_secs(10),
        ..LimiterConfig::default()
    });
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    for i in 0..20 {
        let now = t0 + Duration::from_secs(6 * i);
        l.record_failure(now, ip, "");
        assert!(!l.is_blocked(now, ip, ""), "failure {i}");
    }
}

#[test]
fn limiter_memory_is_bounded_and_blocked_keys_survive_a_flood() {
    let t0 = Instant::now();
    let mut l = AuthFailureLimiter::new(LimiterConfig {
        max_entries: 100,
        ..LimiterConfig::default()
    });
    let attacker = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9));
    for _ in 0..10 {
        l.record_failure(t0, attacker, "alice");
    }
    assert!(l.is_blocked(t0, attacker, ""));
    for i in 0..20_000u32 {
        let now = t0 + Duration::from_millis(u64::from(i));
        l.record_failure(now, IpAddr::V4(Ipv4Addr::from(i)), &format!("user{i}"));
        assert!(l.tracked() <= 200);
    }
    let now = t0 + Duration::from_secs(20);
    assert!(l.is_blocked(now, attacker, ""));
    assert!(l.is_user_blocked(now, "alice"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Any string: the parser and the authenticator never panic.
    #[test]
    fn random_strings_never_panic(s in ".{0,300}") {
        let t0 = Instant::now();
        let mut a = authenticator(t0);
        let _ = Credentials::parse(&s);
        let _ = a.verify(t0, "REGISTER", &s, store);
        let prefixed = format!("Digest {s}");
        let _ = Credentials::parse(&prefixed);
        let _ = a.verify(t0, "REGISTER", &prefixed, store);
    }

    /// Parameter-shaped input with hostile values, in any order, with our real nonce.
    #[test]
    fn random_parameter_lists_never_panic(
        params in proptest::collection::vec(
            (
                prop::sample::select(vec![
                    "username", "realm", "nonce", "uri", "response", "algorithm", "cnonce",
                    "qop", "nc", "opaque", "userhash", "username*", "x",
                ]),
                "[ -~\t\r\n\u{80}-\u{10ffff}]{0,20}",
                any::<bool>(),
            ),
            0..14,
        ),
        sep in prop::sample::select(vec![",", ", ", " ,\r\n ", ",,", " "]),
    ) {
        let t0 = Instant::now();
        let mut a = authenticator(t0);
        let nonce = fresh_nonce(&mut a, t0);
        let body: Vec<String> = params
            .iter()
            .map(|(n, v, quoted)| {
                let v = if *n == "nonce" && v.is_empty() { nonce.clone() } else { v.clone() };
                if *quoted { format!("{n}=\"{v}\"") } else { format!("{n}={v}") }
            })
            .collect();
        let header = format!("Digest {}", body.join(sep));
        let _ = Credentials::parse(&header);
        let _ = a.verify(t0 + Duration::from_secs(1), "REGISTER", &header, store);
    }

    /// One byte of a valid answer changed to anything: never a panic.
    #[test]
    fn mutated_answers_never_panic(pos in 0usize..400, byte in any::<u8>()) {
        let t0 = Instant::now();
        let mut a = authenticator(t0);
        let nonce = fresh_nonce(&mut a, t0);
        let mut raw = Answer::new(&nonce).header().into_bytes();
        if !raw.is_empty() {
            let i = pos % raw.len();
            raw[i] = byte;
        }
        let header = String::from_utf8_lossy(&raw).into_owned();
        let _ = a.verify(t0, "REGISTER", &header, store);
    }
}
