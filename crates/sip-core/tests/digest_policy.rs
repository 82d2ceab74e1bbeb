//! The digest policy at the registrar and for callers, in simulated time (R2, RFC 8760):
//! `auto` challenges a client it does not know with MD5 alone, probes it with SHA-256 + MD5
//! on a registration refresh, and remembers the answer; `both`, `sha256` and `md5` are fixed.
#![allow(clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sip_core::auth::{Algorithm, DigestPolicy, ResponseInput, ha1, response};
use sip_core::message::{HeaderName, Message, Response, parse};
use sip_core::proxy::{Output, Proxy, ProxyConfig, SubscriberEntry, Transport};

const PROXY: &str = "127.0.0.1:5060";
const CLIENT: &str = "127.0.0.1:6000";
const REALM: &str = "localhost";

struct Sim {
    proxy: Proxy,
    now: Instant,
    cseq: u32,
}

impl Sim {
    fn new(policy: DigestPolicy) -> Self {
        let now = Instant::now();
        let cfg = ProxyConfig {
            digest: policy,
            ..ProxyConfig::new(REALM, PROXY.parse().unwrap(), [3; 32])
        };
        let mut proxy = Proxy::new(cfg, now);
        for user in ["alice", "bob"] {
            proxy.upsert_subscriber(SubscriberEntry {
                user: user.into(),
                ha1_md5: ha1(Algorithm::Md5, user, REALM, "pw-0123456789"),
                ha1_sha256: ha1(Algorithm::Sha256, user, REALM, "pw-0123456789"),
                ring_timeout: Duration::from_secs(30),
                ring_delays: Vec::new(),
            });
        }
        Self {
            proxy,
            now,
            cseq: 0,
        }
    }

    /// Sends `msg` from CLIENT; returns the final response sent back.
    fn exchange(&mut self, msg: &str) -> Response {
        let bytes = msg.replace('\n', "\r\n");
        let from: SocketAddr = CLIENT.parse().unwrap();
        self.proxy
            .handle_receive(self.now, Transport::Udp, from, None, bytes.as_bytes());
        let mut last = None;
        while let Some(o) = self.proxy.poll_output() {
            if let Output::Transmit(t) = o
                && t.target.addr == from
                && let Ok(Message::Response(r)) = parse(&t.payload)
                && r.status >= 200
            {
                last = Some(r);
            }
        }
        last.expect("a final response")
    }

    /// A REGISTER for alice in Call-ID `call_id` from user agent `ua`, with `auth`.
    fn register(&mut self, call_id: &str, ua: &str, auth: Option<String>) -> Response {
        self.cseq += 1;
        let c = self.cseq;
        let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\n"));
        self.exchange(&format!(
            "REGISTER sip:localhost SIP/2.0
Via: SIP/2.0/UDP {CLIENT};branch=z9hG4bKr{c};rport
Max-Forwards: 70
From: <sip:alice@localhost>;tag=r{c}
To: <sip:alice@localhost>
Call-ID: {call_id}
CSeq: {c} REGISTER
User-Agent: {ua}
Contact: <sip:alice@{CLIENT}>;expires=600
{auth}Content-Length: 0

"
        ))
    }

    /// An INVITE from alice to bob from user agent `ua`, with `auth`.
    fn invite(&mut self, ua: &str, auth: Option<String>) -> Response {
        self.cseq += 1;
        let c = self.cseq;
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
    let name = if resp.status == 401 {
        HeaderName::WwwAuthenticate
    } else {
        HeaderName::ProxyAuthenticate
    };
    resp.headers
        .get_all(&name)
        .map(|c| param(c, "algorithm").unwrap_or_default())
        .collect()
}

fn param(challenge: &str, name: &str) -> Option<String> {
    challenge.split(", ").find_map(|p| {
        let v = p.trim_start_matches("Digest ").strip_prefix(name)?;
        Some(v.strip_prefix('=')?.trim_matches('"').to_owned())
    })
}

/// Credentials for alice answering `resp`'s challenge with `alg`.
fn answer(resp: &Response, alg: Algorithm, method: &str, uri: &str) -> String {
    let name = if resp.status == 401 {
        HeaderName::WwwAuthenticate
    } else {
        HeaderName::ProxyAuthenticate
    };
    let nonce = param(resp.headers.get(&name).unwrap(), "nonce").unwrap();
    let h = ha1(alg, "alice", REALM, "pw-0123456789");
    let r = response(
        alg,
        &h,
        &ResponseInput {
            nonce: &nonce,
            nc: "00000001",
            cnonce: "c1",
            qop: "auth",
            method,
            uri,
        },
    );
    format!(
        "Digest username=\"alice\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{r}\", algorithm={}, qop=auth, nc=00000001, cnonce=\"c1\"",
        alg.as_str()
    )
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
