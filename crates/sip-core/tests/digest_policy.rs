//! The digest policy at the registrar and for callers, in simulated time (R2, RFC 8760):
//! `auto` challenges a client it does not know with MD5 alone, probes it with SHA-256 + MD5
//! on a registration refresh, and remembers the answer; `both`, `sha256` and `md5` are fixed.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use common::digest::{answer_challenge, challenge_header, param};
use common::msg::register;
use common::setup::{config, subscriber};
use common::sim::{Sim, final_to};
use sip_core::auth::{Algorithm, DigestPolicy};
use sip_core::message::{HeaderName, Response};
use sip_core::proxy::{ProxyConfig, Transport};

const CLIENT: &str = "127.0.0.1:6000";
const PW: &str = "pw-0123456789";

impl Sim {
    fn new(policy: DigestPolicy) -> Self {
        let mut sim = Self::with_config(ProxyConfig {
            digest: policy,
            ..config()
        });
        for user in ["alice", "bob"] {
            sim.proxy.upsert_subscriber(subscriber(user, Some(PW)));
        }
        sim
    }

    /// Sends `msg` from CLIENT; returns the final response sent back.
    fn exchange(&mut self, msg: &str) -> Response {
        self.recv(CLIENT, msg);
        final_to(&self.take(), CLIENT)
    }

    /// A REGISTER for alice in Call-ID `call_id` from user agent `ua`, with `auth`.
    fn register(&mut self, call_id: &str, ua: &str, auth: Option<String>) -> Response {
        let c = self.next_n();
        let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\n"));
        let contact = format!("<sip:alice@{CLIENT}>;expires=600");
        let headers = format!("User-Agent: {ua}\n{auth}");
        self.exchange(&register(
            Transport::Udp,
            CLIENT,
            c,
            "alice",
            call_id,
            &contact,
            &headers,
        ))
    }

    /// An INVITE from alice to bob from user agent `ua`, with `auth`.
    fn invite(&mut self, ua: &str, auth: Option<String>) -> Response {
        let c = self.next_n();
        let auth = auth.map_or(String::new(), |a| format!("Proxy-Authorization: {a}\n"));
        self.exchange(&format!(
            "INVITE sip:bob@localhost SIP/2.0
Via: SIP/2.0/UDP {CLIENT};branch=z9hG4bKi{c};rport
Max-Forwards: 70
From: <sip:alice@localhost>;tag=i{c}
To: <sip:bob@localhost>
Call-ID: inv-{c}
CSeq: 1 INVITE
User-Agent: {ua}
Contact: <sip:alice@{CLIENT}>
{auth}Content-Length: 0

"
        ))
    }
}

/// The `algorithm` of every challenge of a 401/407, in order.
fn offered(resp: &Response) -> Vec<String> {
    resp.headers
        .get_all(&challenge_header(resp))
        .map(|c| param(c, "algorithm").unwrap_or_default())
        .collect()
}

/// Credentials for alice answering `resp`'s challenge with `alg`.
fn answer(resp: &Response, alg: Algorithm, method: &str, uri: &str) -> String {
    answer_challenge(resp, "alice", PW, alg, method, uri)
}

#[test]
fn auto_learns_a_sha256_client_at_its_first_refresh() {
    let mut sim = Sim::new(DigestPolicy::Auto);
    let ua = "SomePhone/5.2";
    let ch = sim.register("reg-1", ua, None);
    assert_eq!(ch.status, 401);
    assert_eq!(offered(&ch), ["MD5"], "an unknown client gets MD5 alone");
    let creds = answer(&ch, Algorithm::Md5, "REGISTER", "sip:localhost");
    assert_eq!(sim.register("reg-1", ua, Some(creds)).status, 200);
    // Its calls still get MD5 until it has shown more.
    assert_eq!(offered(&sim.invite(ua, None)), ["MD5"]);

    // The refresh (same Call-ID as the live binding) is the probe.
    let probe = sim.register("reg-1", ua, None);
    assert_eq!(offered(&probe), ["SHA-256", "MD5"]);
    let creds = answer(&probe, Algorithm::Sha256, "REGISTER", "sip:localhost");
    assert_eq!(sim.register("reg-1", ua, Some(creds)).status, 200);

    // From now on SHA-256 alone, for registrations and calls; MD5 is a refused downgrade.
    let ch = sim.register("reg-1", ua, None);
    assert_eq!(offered(&ch), ["SHA-256"]);
    let md5 = answer(&ch, Algorithm::Md5, "REGISTER", "sip:localhost");
    assert_eq!(sim.register("reg-1", ua, Some(md5)).status, 401);
    let ch = sim.invite(ua, None);
    assert_eq!((ch.status, offered(&ch)), (407, vec!["SHA-256".into()]));
    let creds = answer(&ch, Algorithm::Sha256, "INVITE", "sip:bob@localhost");
    // bob has no contact: the call itself gets 480, which means it passed authentication.
    assert_eq!(sim.invite(ua, Some(creds)).status, 480);
    // Another program on the same account is a client of its own.
    assert_eq!(
        offered(&sim.register("reg-2", "baresip v1.0.0", None)),
        ["MD5"]
    );
}

#[test]
fn auto_stops_probing_a_client_that_gives_up_on_sha256() {
    let mut sim = Sim::new(DigestPolicy::Auto);
    let ua = "baresip v1.0.0 (x86_64/linux)";
    let ch = sim.register("reg-b", ua, None);
    let creds = answer(&ch, Algorithm::Md5, "REGISTER", "sip:localhost");
    assert_eq!(sim.register("reg-b", ua, Some(creds)).status, 200);
    // libre refuses the probe's SHA-256 challenge and sends nothing; after its back-off
    // it tries again without credentials: MD5 alone, for good.
    assert_eq!(
        offered(&sim.register("reg-b", ua, None)),
        ["SHA-256", "MD5"]
    );
    sim.now += Duration::from_secs(30);
    let ch = sim.register("reg-b", ua, None);
    assert_eq!(offered(&ch), ["MD5"]);
    let creds = answer(&ch, Algorithm::Md5, "REGISTER", "sip:localhost");
    assert_eq!(sim.register("reg-b", ua, Some(creds)).status, 200);
    assert_eq!(offered(&sim.register("reg-b", ua, None)), ["MD5"]);
    assert_eq!(offered(&sim.invite(ua, None)), ["MD5"]);
}

#[test]
fn fixed_policies_offer_the_same_to_everyone() {
    for (policy, want) in [
        (DigestPolicy::Both, vec!["SHA-256", "MD5"]),
        (DigestPolicy::Sha256, vec!["SHA-256"]),
        (DigestPolicy::Md5, vec!["MD5"]),
    ] {
        let mut sim = Sim::new(policy);
        assert_eq!(offered(&sim.register("r", "ua", None)), want, "{policy}");
        assert_eq!(offered(&sim.invite("ua", None)), want, "{policy}");
    }
    // sha256 refuses an MD5 answer.
    let mut sim = Sim::new(DigestPolicy::Sha256);
    let ch = sim.register("r", "ua", None);
    let md5 = answer(&ch, Algorithm::Md5, "REGISTER", "sip:localhost");
    assert_eq!(sim.register("r", "ua", Some(md5)).status, 401);
    let ch = sim.register("r", "ua", None);
    let sha = answer(&ch, Algorithm::Sha256, "REGISTER", "sip:localhost");
    assert_eq!(sim.register("r", "ua", Some(sha)).status, 200);
}

/// A nonce from before a restart (or never ours) gets a fresh challenge with stale=true, so
/// clients retry without asking their user; a CRLF keep-alive over UDP is no error.
#[test]
fn unknown_nonces_are_stale_and_keepalives_are_not_errors() {
    let mut sim = Sim::new(DigestPolicy::Auto);
    let old = "Digest username=\"alice\", realm=\"localhost\", nonce=\"0000000000000000000000000000000000000000000000000000000000000000\", uri=\"sip:localhost\", response=\"00000000000000000000000000000000\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"c\"";
    let ch = sim.register("reg-s", "ua", Some(old.to_owned()));
    assert_eq!(ch.status, 401);
    let www = ch.headers.get(&HeaderName::WwwAuthenticate).unwrap();
    assert!(www.contains("stale=true"), "{www}");
    assert_eq!(sim.proxy.stats(sim.now).auth_failures, 0);
    sim.proxy.handle_receive(
        sim.now,
        Transport::Udp,
        CLIENT.parse().unwrap(),
        None,
        b"\r\n\r\n",
    );
    assert!(sim.proxy.poll_output().is_none());
    assert_eq!(sim.proxy.stats(sim.now).parse_errors, 0);
}

/// Products known to answer RFC 8760 challenge lists get SHA-256 from the first challenge.
#[test]
fn listed_products_are_offered_sha256_at_once() {
    let mut sim = Sim::new(DigestPolicy::Auto);
    let ua = "Linphonec/5.1.65 (belle-sip/5.1.64)";
    let ch = sim.register("reg-l", ua, None);
    assert_eq!(offered(&ch), ["SHA-256", "MD5"]);
    let creds = answer(&ch, Algorithm::Sha256, "REGISTER", "sip:localhost");
    assert_eq!(sim.register("reg-l", ua, Some(creds)).status, 200);
    assert_eq!(offered(&sim.register("reg-l", ua, None)), ["SHA-256"]);
}
