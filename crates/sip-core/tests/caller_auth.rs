//! Caller authentication and asserted identity in simulated time (RFC 3261 §22.3,
//! RFC 3325; SPEC R25, R26; SECURITY §4 threats 1 and 4). The test plays the caller and the
//! callee's device by feeding the proxy bytes and reading what it sends where.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use common::digest::{creds, nonce_of};
use common::msg::register;
use common::setup::{binding, config, device, subscriber};
use common::sim::{Sent, Sim, all_requests_to as requests_to, final_to, responses_to};
use common::{CALLER, PROXY};
use sip_core::auth::{Algorithm, DigestPolicy};
use sip_core::message::{HeaderName, Response};
use sip_core::proxy::{ProxyConfig, Transport};

const DESK: &str = "127.0.0.1:7001";

impl Sim {
    /// alice (desk at DESK) and bob are subscribers; bob has the phone `d-9`.
    fn new() -> Self {
        // Both challenges every time: these tests are about who is challenged, not with
        // what (the default `auto` policy is tested in `digest_policy.rs`).
        let mut sim = Self::with_config(ProxyConfig {
            digest: DigestPolicy::Both,
            ..config()
        });
        let now = sim.now;
        sim.proxy
            .upsert_subscriber(subscriber("alice", Some("alicepw")));
        sim.proxy
            .upsert_subscriber(subscriber("bob", Some("bobpw")));
        sim.proxy.upsert_device(device("d-9", "bob", Some("devpw")));
        let desk = binding("alice", DESK, None, now + Duration::from_secs(3600));
        sim.proxy.restore_binding("alice", desk, now);
        sim
    }

    /// Sends an out-of-dialog `method` for `to_user@localhost` from `from` (`user@host`) in a
    /// new transaction from `src`, with `extra` header lines; returns everything sent.
    fn send(
        &mut self,
        src: &str,
        method: &str,
        from: &str,
        to_user: &str,
        extra: &str,
    ) -> Vec<Sent> {
        let b = self.next_n();
        let msg = format!(
            "{method} sip:{to_user}@localhost SIP/2.0
Via: SIP/2.0/UDP {src};branch=z9hG4bKc{b};rport
Max-Forwards: 70
From: <sip:{from}>;tag=ft{b}
To: <sip:{to_user}@localhost>
Call-ID: call-{b}
CSeq: {b} {method}
Contact: <sip:caller@{src}>
{extra}Content-Length: 0

"
        );
        self.recv(src, &msg);
        self.take()
    }

    /// An INVITE for alice from `from` sent from CALLER.
    fn invite(&mut self, from: &str, extra: &str) -> Vec<Sent> {
        self.send(CALLER, "INVITE", from, "alice", extra)
    }

    /// A fresh nonce from a 407 to an INVITE of `from` without credentials.
    fn nonce(&mut self, from: &str) -> String {
        let sent = self.invite(from, "");
        nonce_of(&final_to(&sent, CALLER))
    }
}

fn proxy_auth(user: &str, pw: &str, nonce: &str, uri: &str) -> String {
    format!(
        "Proxy-Authorization: {}\n",
        creds(user, pw, nonce, "INVITE", uri, Algorithm::Md5)
    )
}

const ALICE_URI: &str = "sip:alice@localhost";

#[test]
fn local_caller_without_credentials_gets_407_with_both_challenges() {
    let mut sim = Sim::new();
    let sent = sim.invite("bob@localhost", "");
    let resps = responses_to(&sent, CALLER);
    assert_eq!(
        resps.iter().map(|r| r.status).collect::<Vec<_>>(),
        [407],
        "one answer: no 100 Trying for an INVITE that goes nowhere"
    );
    let r = &resps[0];
    assert_eq!(r.reason, "Proxy Authentication Required");
    let chal: Vec<&str> = r.headers.get_all(&HeaderName::ProxyAuthenticate).collect();
    assert_eq!(chal.len(), 2, "{chal:?}");
    assert!(chal[0].starts_with("Digest ") && chal[0].contains("SHA-256"));
    assert!(chal[1].contains("algorithm=MD5"));
    for c in &chal {
        assert!(c.contains("realm=\"localhost\"") && c.contains("qop=\"auth\""));
        assert!(!c.contains("stale"));
    }
    assert!(!r.headers.contains(&HeaderName::WwwAuthenticate));
    assert!(r.to().unwrap().tag().is_some());
    assert!(requests_to(&sent, DESK).is_empty(), "nothing forwarded");
}

#[test]
fn other_methods_from_local_users_are_challenged_too_but_not_an_options_ping() {
    let mut sim = Sim::new();
    for method in ["MESSAGE", "SUBSCRIBE", "OPTIONS", "INFO"] {
        let sent = sim.send(CALLER, method, "bob@localhost", "alice", "");
        assert_eq!(final_to(&sent, CALLER).status, 407, "{method}");
        assert!(requests_to(&sent, DESK).is_empty(), "{method}");
    }
    // OPTIONS for the server itself is answered, whoever asks.
    sim.n += 1;
    sim.recv(
        CALLER,
        "OPTIONS sip:localhost SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:6000;branch=z9hG4bKping
Max-Forwards: 70
From: <sip:bob@localhost>;tag=p
To: <sip:localhost>
Call-ID: ping
CSeq: 1 OPTIONS
Content-Length: 0

",
    );
    assert_eq!(final_to(&sim.take(), CALLER).status, 200);
}

#[test]
fn authenticated_caller_is_forked_with_asserted_identity_and_without_our_credentials() {
    for alg in [Algorithm::Md5, Algorithm::Sha256] {
        let mut sim = Sim::new();
        let nonce = sim.nonce("bob@localhost");
        let mine = creds("bob", "bobpw", &nonce, "INVITE", ALICE_URI, alg);
        let theirs = "Digest username=\"bob\", realm=\"other.example\", nonce=\"n\", uri=\"sip:alice@localhost\", response=\"00\"";
        let sent = sim.invite(
            "bob@localhost",
            &format!(
                "Proxy-Authorization: {theirs}\nProxy-Authorization: {mine}\n\
P-Asserted-Identity: <sip:ceo@localhost>\nP-Preferred-Identity: <sip:ceo@localhost>\n"
            ),
        );
        let fwd = requests_to(&sent, DESK);
        assert_eq!(fwd.len(), 1, "{alg:?}: forked to the desk");
        let inv = &fwd[0];
        let pai: Vec<&str> = inv
            .headers
            .get_all(&HeaderName::PAssertedIdentity)
            .collect();
        assert_eq!(pai, ["<sip:bob@localhost>"], "{alg:?}");
        assert!(!inv.headers.contains(&HeaderName::PPreferredIdentity));
        let pa: Vec<&str> = inv
            .headers
            .get_all(&HeaderName::ProxyAuthorization)
            .collect();
        assert_eq!(pa, [theirs], "only other realms' credentials go on");
        assert_eq!(
            responses_to(&sent, CALLER)
                .iter()
                .map(|r| r.status)
                .collect::<Vec<_>>(),
            [100]
        );
    }
}

#[test]
fn wrong_password_gets_a_fresh_407_and_is_counted_by_the_limiter() {
    let mut sim = Sim::new();
    // bob has called from `home` before: that address stays open to him.
    let home = "127.0.0.2:6001";
    let call_from_home = |sim: &mut Sim| {
        let n = nonce_of(&final_to(
            &sim.send(home, "INVITE", "bob@localhost", "alice", ""),
            home,
        ));
        let sent = sim.send(
            home,
            "INVITE",
            "bob@localhost",
            "alice",
            &proxy_auth("bob", "bobpw", &n, ALICE_URI),
        );
        requests_to(&sent, DESK).len()
    };
    assert_eq!(call_from_home(&mut sim), 1);
    let nonce = sim.nonce("bob@localhost");
    let mut nonces = vec![nonce.clone()];
    // The default limiter blocks an address after 10 failures within 60 s.
    for i in 0..10 {
        let sent = sim.invite(
            "bob@localhost",
            &proxy_auth("bob", "guess", &nonce, ALICE_URI),
        );
        let r = final_to(&sent, CALLER);
        assert_eq!(r.status, 407, "attempt {i}");
        assert!(
            !r.headers
                .get(&HeaderName::ProxyAuthenticate)
                .unwrap()
                .contains("stale")
        );
        nonces.push(nonce_of(&r));
        assert!(requests_to(&sent, DESK).is_empty());
    }
    nonces.sort();
    nonces.dedup();
    assert_eq!(nonces.len(), 11, "every 407 has a fresh nonce");
    // Blocked now: even the right password from this address is refused without a check.
    let fresh = nonces[0].clone();
    let sent = sim.invite(
        "bob@localhost",
        &proxy_auth("bob", "bobpw", &fresh, ALICE_URI),
    );
    let r = final_to(&sent, CALLER);
    assert_eq!(
        (r.status, r.reason.as_str()),
        (403, "Too Many Failed Attempts")
    );
    assert!(requests_to(&sent, DESK).is_empty());
    // bob is backing off (distributed guessing): an address he never used is refused …
    let new_place = "127.0.0.3:6001";
    let sent = sim.send(new_place, "INVITE", "bob@localhost", "alice", "");
    assert_eq!(final_to(&sent, new_place).status, 403);
    // … but where he logged in before, he is not locked out.
    assert_eq!(call_from_home(&mut sim), 1);
}

/// A nonce is bound to the address its challenge went to: used from elsewhere it is
/// unknown, and junk nonces are not counted as failed logins at all (SECURITY threat 17).
#[test]
fn spoofed_and_junk_failures_lock_nobody_out() {
    let mut sim = Sim::new();
    let nonce = sim.nonce("bob@localhost");
    let elsewhere = "127.0.0.4:6001";
    let sent = sim.send(
        elsewhere,
        "INVITE",
        "bob@localhost",
        "alice",
        &proxy_auth("bob", "bobpw", &nonce, ALICE_URI),
    );
    assert_eq!(
        final_to(&sent, elsewhere).status,
        407,
        "right password, but another address's nonce"
    );
    assert!(requests_to(&sent, DESK).is_empty());
    for i in 0..30 {
        let junk = format!("{:064x}", i);
        sim.invite(
            "bob@localhost",
            &proxy_auth("bob", "guess", &junk, ALICE_URI),
        );
    }
    let n = sim.nonce("bob@localhost");
    let sent = sim.invite("bob@localhost", &proxy_auth("bob", "bobpw", &n, ALICE_URI));
    assert_eq!(
        requests_to(&sent, DESK).len(),
        1,
        "30 junk nonces count for nothing"
    );
}

#[test]
fn bobs_credentials_on_a_from_of_alice_get_403() {
    let mut sim = Sim::new();
    let nonce = sim.nonce("alice@localhost");
    let sent = sim.invite(
        "alice@localhost",
        &proxy_auth("bob", "bobpw", &nonce, ALICE_URI),
    );
    assert_eq!(final_to(&sent, CALLER).status, 403);
    assert!(requests_to(&sent, DESK).is_empty());
}

#[test]
fn a_phone_calls_as_its_subscriber_only() {
    let mut sim = Sim::new();
    let nonce = sim.nonce("bob@localhost");
    let sent = sim.invite(
        "bob@localhost",
        &proxy_auth("~d-9", "devpw", &nonce, ALICE_URI),
    );
    let fwd = requests_to(&sent, DESK);
    assert_eq!(fwd.len(), 1);
    assert_eq!(
        fwd[0].headers.get(&HeaderName::PAssertedIdentity),
        Some("<sip:bob@localhost>"),
        "the subscriber is asserted, not the device"
    );
    // bob's phone cannot call as alice, nor as the device name itself.
    for from in ["alice@localhost", "~d-9@localhost"] {
        let nonce = sim.nonce(from);
        let sent = sim.invite(from, &proxy_auth("~d-9", "devpw", &nonce, ALICE_URI));
        assert_eq!(final_to(&sent, CALLER).status, 403, "{from}");
        assert!(requests_to(&sent, DESK).is_empty());
    }
}

#[test]
fn foreign_caller_is_not_challenged_and_loses_forged_identity() {
    let mut sim = Sim::new();
    let sent = sim.invite(
        "mallory@example.net",
        "P-Asserted-Identity: <sip:alice@localhost>\nP-Asserted-Identity: <tel:+15551234567>\n\
P-Preferred-Identity: <sip:bob@localhost>\n",
    );
    assert_eq!(
        responses_to(&sent, CALLER)
            .iter()
            .map(|r| r.status)
            .collect::<Vec<_>>(),
        [100],
        "not challenged"
    );
    let fwd = requests_to(&sent, DESK);
    assert_eq!(fwd.len(), 1);
    assert!(!fwd[0].headers.contains(&HeaderName::PAssertedIdentity));
    assert!(!fwd[0].headers.contains(&HeaderName::PPreferredIdentity));
}

/// The response as text with what legitimately differs masked: the nonce, the To tag and
/// the From user (echoed from the request).
fn masked(r: &Response, user: &str) -> String {
    let mut text = String::from_utf8(r.to_bytes()).unwrap();
    let nonce = nonce_of(r);
    let tag = r.to().unwrap().tag().unwrap().to_owned();
    text = text.replace(&nonce, "NONCE").replace(&tag, "TAG");
    text.replace(&format!("sip:{user}@"), "sip:USER@")
}

#[test]
fn known_and_unknown_local_users_get_identical_407s() {
    for with_creds in [false, true] {
        let mut sim = Sim::new();
        let mut replies = Vec::new();
        for user in ["bob", "nobody"] {
            let from = format!("{user}@localhost");
            let extra = if with_creds {
                let nonce = sim.nonce(&from);
                proxy_auth(user, "wrong", &nonce, ALICE_URI)
            } else {
                String::new()
            };
            // Same branch, Call-ID and CSeq for both, so only the user differs.
            sim.n = 100;
            let sent = sim.invite(&from, &extra);
            assert!(requests_to(&sent, DESK).is_empty());
            replies.push(masked(&final_to(&sent, CALLER), user));
            // Let the first transaction end so the second is not a retransmission.
            sim.now += Duration::from_secs(40);
            sim.proxy.handle_timeout(sim.now);
            sim.take();
        }
        assert_eq!(replies[0], replies[1], "with credentials: {with_creds}");
        assert!(replies[0].starts_with("SIP/2.0 407 "));
        assert_eq!(replies[0].matches("Proxy-Authenticate: Digest ").count(), 2);
        assert!(replies[0].contains("nonce=\"NONCE\"") && replies[0].contains("tag=TAG"));
    }
    // Nor does the callee's existence show before the caller is authenticated.
    let mut sim = Sim::new();
    let sent = sim.send(CALLER, "INVITE", "bob@localhost", "nosuchuser", "");
    assert_eq!(final_to(&sent, CALLER).status, 407);
}

#[test]
fn stale_nonce_gets_407_stale_and_is_not_counted() {
    let mut sim = Sim::new();
    let nonce = sim.nonce("bob@localhost");
    sim.now += Duration::from_secs(301);
    for _ in 0..12 {
        let sent = sim.invite(
            "bob@localhost",
            &proxy_auth("bob", "bobpw", &nonce, ALICE_URI),
        );
        let r = final_to(&sent, CALLER);
        assert_eq!(r.status, 407);
        let chal: Vec<&str> = r.headers.get_all(&HeaderName::ProxyAuthenticate).collect();
        assert_eq!(chal.len(), 2);
        assert!(chal.iter().all(|c| c.contains("stale=true")), "{chal:?}");
    }
    // Twelve stale answers did not block the address: a fresh nonce works.
    let nonce = sim.nonce("bob@localhost");
    let sent = sim.invite(
        "bob@localhost",
        &proxy_auth("bob", "bobpw", &nonce, ALICE_URI),
    );
    assert_eq!(requests_to(&sent, DESK).len(), 1);
}

#[test]
fn digest_uri_must_name_the_request_uri() {
    let mut sim = Sim::new();
    // Another user, or another host: 400, even with a correct digest over that uri.
    for uri in [
        "sip:carol@localhost",
        "sip:alice@evil.example",
        "sip:localhost",
        "sip:127.0.0.1:5060",
        "sip:alice@127.0.0.1:5999",
        "not a uri",
    ] {
        let nonce = sim.nonce("bob@localhost");
        let sent = sim.invite("bob@localhost", &proxy_auth("bob", "bobpw", &nonce, uri));
        let r = final_to(&sent, CALLER);
        assert_eq!(r.status, 400, "{uri}");
        assert!(requests_to(&sent, DESK).is_empty(), "{uri}");
    }
    // The same resource written differently: another name of this server, %-escapes, sips,
    // parameters.
    for uri in [
        "sip:alice@127.0.0.1:5060",
        "sip:alice@127.0.0.1",
        "sip:%61lice@LOCALHOST",
        "sips:alice@localhost",
        "sip:alice@localhost;transport=udp",
    ] {
        let nonce = sim.nonce("bob@localhost");
        let sent = sim.invite("bob@localhost", &proxy_auth("bob", "bobpw", &nonce, uri));
        assert_eq!(requests_to(&sent, DESK).len(), 1, "{uri}");
    }
}

#[test]
fn register_digest_uri_is_checked_too() {
    let mut sim = Sim::new();
    const BOB: &str = "127.0.0.1:6100";
    let register = |sim: &mut Sim, auth: &str| {
        let n = sim.next_n();
        let contact = format!("<sip:bob@{BOB}>");
        sim.recv(
            BOB,
            &register(Transport::Udp, BOB, n, "bob", "reg-bob", &contact, auth),
        );
        responses_to(&sim.take(), BOB).pop().unwrap()
    };
    // SIPp 3.6's default digest uri (the proxy's address) and the Request-URI itself pass;
    // another host or the AOR do not.
    for (uri, status) in [
        ("sip:127.0.0.1:5060", 200),
        ("sip:localhost", 200),
        ("sip:evil.example", 400),
        ("sip:bob@localhost", 400),
    ] {
        let r = register(&mut sim, "");
        assert_eq!(r.status, 401);
        let digest = creds(
            "bob",
            "bobpw",
            &nonce_of(&r),
            "REGISTER",
            uri,
            Algorithm::Md5,
        );
        let auth = format!("Authorization: {digest}\n");
        assert_eq!(register(&mut sim, &auth).status, status, "{uri}");
    }
}

#[test]
fn in_dialog_requests_lose_our_credentials_and_identity_claims() {
    let mut sim = Sim::new();
    let mine = creds(
        "bob",
        "bobpw",
        "n",
        "BYE",
        "sip:alice@127.0.0.1:7001",
        Algorithm::Md5,
    );
    let theirs = "Digest username=\"bob\", realm=\"other.example\", nonce=\"n\", uri=\"sip:x\", response=\"00\"";
    let tag = sim.proxy.route_tag("dialog-1");
    sim.recv(
        CALLER,
        &format!(
            "BYE sip:alice@{DESK} SIP/2.0
Via: SIP/2.0/UDP {CALLER};branch=z9hG4bKbye1
Max-Forwards: 70
Route: <sip:{PROXY};lr;rr={tag}>
From: <sip:bob@localhost>;tag=ft
To: <sip:alice@localhost>;tag=tt
Call-ID: dialog-1
CSeq: 2 BYE
Proxy-Authorization: {mine}
Proxy-Authorization: {theirs}
P-Asserted-Identity: <sip:ceo@localhost>
Content-Length: 0

"
        ),
    );
    let fwd = requests_to(&sim.take(), DESK);
    assert_eq!(fwd.len(), 1);
    let pa: Vec<&str> = fwd[0]
        .headers
        .get_all(&HeaderName::ProxyAuthorization)
        .collect();
    assert_eq!(pa, [theirs]);
    assert!(!fwd[0].headers.contains(&HeaderName::PAssertedIdentity));
}

#[test]
fn unauthenticated_local_caller_to_a_foreign_domain_is_challenged_first() {
    let mut sim = Sim::new();
    sim.n += 1;
    sim.recv(
        CALLER,
        "INVITE sip:someone@other.example SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:6000;branch=z9hG4bKrelay
Max-Forwards: 70
From: <sip:bob@localhost>;tag=r
To: <sip:someone@other.example>
Call-ID: relay
CSeq: 1 INVITE
Content-Length: 0

",
    );
    assert_eq!(final_to(&sim.take(), CALLER).status, 407);
}
