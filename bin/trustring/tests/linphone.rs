//! Interop with a second real SIP client (issue #10, "real clients"): Debian's linphone
//! console client (`linphonec` 5.1.65, package `linphone-cli`; SIP stack belle-sip 5.1.64,
//! which does SHA-256 digest, RFC 8760) against the real `trustring serve` on 127.0.0.1.
//!
//! What is shown, from the wire between linphone and the server (a recording UDP relay,
//! `common/linphone.rs`), linphone's own log and config, and the admin API:
//! 1. With the server's defaults (`--digest auto`, `--digest-sha256-agents linphone,belle-sip`):
//!    linphone (`User-Agent: Linphonec/5.1.65`) is offered SHA-256 and MD5, SHA-256 first, in
//!    its first challenge, answers SHA-256 and pins it; its second client of the same kind
//!    (over TCP) is then challenged with SHA-256 alone. Both bindings are listed by
//!    `GET /api/v1/subscribers/alice/registrations`. A SIPp call forks to both: the UDP one
//!    answers, the TCP one gets CANCEL with the RFC 3326 Reason. linphone's CRLF keep-alives
//!    over UDP are not parse errors (`trustring_sip_parse_errors_total` stays 0).
//! 2. A server restart: linphone's next refresh carries its pre-restart nonce, gets a `401`
//!    with `stale=true` (not counted in `trustring_auth_failures_total`), and linphone
//!    re-registers with SHA-256 by itself.
//! 3. A product not listed (`--digest-sha256-agents ""`) gets MD5 alone, the safe default for
//!    an unknown client, and registers.
//!
//! The three tests run in parallel, in about 15 s together. How linphone is driven and what
//! it does: `tests/linphone/README.md`. The tests fail (never skip) without linphonec.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;
#[path = "common/linphone.rs"]
mod linphone_client;

use std::time::{Duration, Instant};

use common::Server;
use linphone_client::{
    Account, Exchange, Linphone, ServerLogOnPanic, Transport, UdpRelay, digest_param, show,
};
use serde_json::Value;

/// alice's password (12 characters at least: the API refuses shorter ones).
const PASSWORD: &str = "alice-passphrase";
/// Bound of every wait for one SIP step (registration, ringing, answer, hang-up).
const STEP: Duration = Duration::from_secs(10);
/// The registration the relay of the restart test tells linphone it got (the server grants
/// 60 s, its minimum): linphone refreshes after 90 % of it, 7.2 s instead of 54 s.
const GRANT: u32 = 8;

fn regs(s: &Server) -> Vec<Value> {
    let body = s.registrations("alice");
    serde_json::from_str::<Value>(&body)
        .unwrap_or_else(|e| panic!("registrations not JSON ({e}): {body}"))
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Waits (bounded) until one of alice's registrations satisfies `pred`; returns all.
fn wait_registered(s: &Server, what: &str, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    let t0 = Instant::now();
    loop {
        let r = regs(s);
        if r.iter().any(&pred) {
            return r;
        }
        assert!(
            t0.elapsed() < STEP,
            "{what}: not registered within {STEP:?}; alice's registrations: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn source_is(r: &Value, addr: std::net::SocketAddr) -> bool {
    r["source"].as_str() == Some(addr.to_string().as_str())
}

/// The first registration through a relay: challenged, answered, accepted.
fn first_registration(relay: &UdpRelay) -> Vec<Exchange> {
    relay.wait_registers("challenge and 200", STEP, |ex| {
        ex.len() >= 2 && ex[0].status() == Some(401) && ex[1].status() == Some(200)
    })
}

fn algorithms(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// One counter of `GET /metrics`.
fn metric(s: &Server, name: &str) -> f64 {
    let (code, body) = s.api("GET", "/metrics", None);
    assert_eq!(code, 200, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// The `algorithm` of every line of a linphone log starting with `header` (its log holds
/// every SIP message it sent and received, once).
fn logged_algorithms(log: &str, header: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| l.strip_prefix(header))
        .map(|v| digest_param(v, "algorithm").unwrap_or("MD5").to_owned())
        .collect()
}

#[test]
fn linphone_registers_with_sha256_over_udp_and_tcp_and_takes_a_forked_call() {
    let version = linphone_client::require();
    eprintln!("linphonec: {version}");
    let s = Server::start();
    let _log = ServerLogOnPanic(s.data.clone());
    s.add_subscriber("alice", PASSWORD);

    // 1a. alice over UDP, through a recording relay; answers calls at once; a CRLF keep-alive
    //     every second (linphone's default is 30 s) so that some cross the server here.
    let relay_a = UdpRelay::start("alice-udp", s.sip);
    let a = Linphone::start(
        &Account::new("alice-udp", "alice", PASSWORD, relay_a.addr, Transport::Udp)
            .auto_answer()
            .keepalive(Duration::from_secs(1)),
    );
    let ex = first_registration(&relay_a);
    eprintln!("alice-udp:\n{}", show(&ex));
    let ua = ex[0].request.header("User-Agent").unwrap_or("");
    assert!(
        ua.to_ascii_lowercase().contains("linphone"),
        "User-Agent {ua:?} does not name a product of the default --digest-sha256-agents"
    );
    assert!(ex[0].request.header("Authorization").is_none());
    assert_eq!(
        ex[0].offered(),
        algorithms(&["SHA-256", "MD5"]),
        "linphone is offered SHA-256 first from its first challenge"
    );
    assert_eq!(
        ex[1].answered_with(),
        algorithms(&["SHA-256"]),
        "linphone answers the first algorithm it supports"
    );
    assert_eq!(ex[1].request.call_id(), ex[0].request.call_id());
    assert_eq!(ex[1].answered("nc"), Some("00000001"));
    assert_eq!(ex[1].answered("nonce"), ex[0].challenged("nonce"));
    // linphone writes the relay's address (the rport of the 401) into its Contact.
    wait_registered(&s, "alice over UDP", |r| {
        r["transport"] == "UDP" && source_is(r, relay_a.upstream)
    });
    // It pinned its credentials to SHA-256: the password is gone, the SHA-256 HA1 stays.
    let rc = a.wait_config("algorithm=SHA-256", STEP);
    assert!(
        rc.contains("ha1=") && !rc.contains("passwd="),
        "linphone's config after its SHA-256 registration:\n{rc}"
    );

    // 1b. alice over TCP (straight to the server), the same product: the server learned that
    //     it answers SHA-256, so its challenge offers SHA-256 alone. Does not answer calls.
    let mut t = Linphone::start(&Account::new(
        "alice-tcp",
        "alice",
        PASSWORD,
        s.sip,
        Transport::Tcp,
    ));
    let r = wait_registered(&s, "alice over TCP", |r| {
        r["transport"] == "TCP"
            && r["contact"]
                .as_str()
                .is_some_and(|c| c.contains("transport=tcp"))
    });
    assert_eq!(r.len(), 2, "alice's registrations: {r:?}");
    eprintln!("alice's registrations: {r:?}");
    let tcp_log = t.log();
    let offered = logged_algorithms(&tcp_log, "WWW-Authenticate:");
    let answered = logged_algorithms(&tcp_log, "Authorization:");
    eprintln!("alice-tcp: offered {offered:?}, answered {answered:?}");
    assert_eq!(
        offered,
        algorithms(&["SHA-256"]),
        "the second challenge of a client that answered SHA-256 offers SHA-256 alone"
    );
    assert_eq!(answered, algorithms(&["SHA-256"]));

    // 2. A call to alice: both ring, the UDP one answers, the TCP one is cancelled.
    common::caller(&s, "uac-call.xml").run_ok();
    a.wait_output("connected", 1, STEP);
    a.wait_output("ended", 1, STEP);
    t.wait_output("Receiving new incoming call", 1, STEP);
    let out = t.wait_output("ended", 1, STEP);
    eprintln!(
        "alice-udp console:\n{}\nalice-tcp console:\n{out}",
        a.output()
    );
    let tcp_log = t.log();
    assert!(
        tcp_log.contains("CANCEL sip:")
            && tcp_log.contains(r#"Reason: SIP;cause=200;text="Call completed elsewhere""#),
        "alice-tcp got no CANCEL with the Reason\n{}",
        t.diagnostics()
    );
    // The INVITE reached alice-udp at her registered Contact (the relay); the ACK and the BYE
    // go to the Contact of her 200 (her own port), through the proxy (Record-Route).
    assert!(
        relay_a
            .datagrams()
            .iter()
            .any(|d| !d.to_server && d.is_request("INVITE")),
        "no INVITE reached alice-udp at her registered Contact"
    );
    let udp_log = a.log();
    for method in ["ACK", "BYE"] {
        assert!(
            udp_log.contains(&format!("\n{method} sip:")),
            "alice-udp received no {method}\n{}",
            a.diagnostics()
        );
    }

    // 3. linphone's CRLF keep-alives over UDP reach the server and are not parse errors.
    let t0 = Instant::now();
    let keepalives = loop {
        let n = relay_a
            .datagrams()
            .iter()
            .filter(|d| d.to_server && d.is_keepalive())
            .count();
        if n >= 2 {
            break n;
        }
        assert!(t0.elapsed() < STEP, "{n} keep-alives from alice-udp");
        std::thread::sleep(Duration::from_millis(100));
    };
    let answers = relay_a
        .datagrams()
        .iter()
        .filter(|d| !d.to_server && !d.is_sip())
        .count();
    eprintln!(
        "alice-udp sent {keepalives} CRLF keep-alives through its relay; the server sent {answers} \
         non-SIP datagrams back"
    );
    assert_eq!(metric(&s, "trustring_sip_parse_errors_total"), 0.0);
    assert_eq!(metric(&s, "trustring_auth_failures_total"), 0.0);

    // alice over TCP leaves: linphone unregisters on quit.
    t.quit(STEP);
    let t0 = Instant::now();
    while regs(&s).iter().any(|r| r["transport"] == "TCP") {
        assert!(t0.elapsed() < STEP, "alice-tcp still registered after quit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn after_a_restart_linphone_gets_stale_true_and_re_registers_with_sha256_by_itself() {
    linphone_client::require();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let sip_port = common::free_port();
    let _log = ServerLogOnPanic(data.clone());
    let mut s = Server::start_in(&data, sip_port);
    s.add_subscriber("alice", PASSWORD);
    // The relay tells linphone its registration lasts GRANT s (the server keeps 60 s), so
    // that its own refreshes come every 7.2 s; nothing else is changed.
    let relay = UdpRelay::start_granting("alice-restart", s.sip, GRANT);
    let l = Linphone::start(&Account::new(
        "alice-restart",
        "alice",
        PASSWORD,
        relay.addr,
        Transport::Udp,
    ));
    let ex = first_registration(&relay);
    assert_eq!(ex[0].offered(), algorithms(&["SHA-256", "MD5"]));
    assert_eq!(ex[1].answered_with(), algorithms(&["SHA-256"]));
    let call_id = ex[1].request.call_id().to_owned();
    let nonce = ex[1].answered("nonce").unwrap().to_owned();

    // A refresh: same Call-ID, the cached nonce with nc=2, accepted without a challenge.
    let ex = relay.wait_registers("refresh", STEP + Duration::from_secs(GRANT.into()), |ex| {
        ex.len() >= 3 && ex[2].status().is_some()
    });
    eprintln!("alice-restart before the restart:\n{}", show(&ex));
    let refresh = &ex[2];
    assert_eq!(refresh.request.call_id(), call_id, "a refresh");
    assert_eq!(refresh.answered("nonce"), Some(nonce.as_str()));
    assert_eq!(refresh.answered("nc"), Some("00000002"));
    assert_eq!(refresh.status(), Some(200));

    // Restart right after it (the next refresh is 7.2 s away): bindings survive, nonces do
    // not.
    let stopped = Instant::now();
    s.stop();
    s = Server::start_in(&data, sip_port);
    eprintln!(
        "server restarted in {:.1} s",
        stopped.elapsed().as_secs_f64()
    );
    let r = regs(&s);
    assert!(
        r.iter().any(|r| source_is(r, relay.upstream)),
        "binding lost in the restart: {r:?}"
    );

    // linphone's next refresh carries the pre-restart nonce: 401 with stale=true and a fresh
    // nonce, SHA-256 first (a refresh of a live binding, a listed product); linphone answers
    // it with SHA-256 at once, as it does any stale challenge: no user involved.
    let ex = relay.wait_registers(
        "refresh after the restart, challenged and answered",
        STEP + Duration::from_secs(GRANT.into()),
        |ex| {
            let after: Vec<_> = ex.iter().filter(|e| e.request.at > stopped).collect();
            after.len() >= 2 && after[1].status().is_some()
        },
    );
    eprintln!("alice-restart:\n{}", show(&ex));
    let after: Vec<&Exchange> = ex.iter().filter(|e| e.request.at > stopped).collect();
    let (old, again) = (after[0], after[1]);
    assert_eq!(old.request.call_id(), call_id, "a refresh");
    assert_eq!(
        old.answered("nonce"),
        Some(nonce.as_str()),
        "the refresh carries the nonce of the server before the restart"
    );
    assert_eq!(old.status(), Some(401));
    assert!(old.stale(), "stale=true on every challenge: {}", old.show());
    assert_eq!(old.offered(), algorithms(&["SHA-256", "MD5"]));
    assert_eq!(again.request.call_id(), call_id);
    assert_eq!(again.answered_with(), algorithms(&["SHA-256"]));
    assert_eq!(again.answered("nonce"), old.challenged("nonce"));
    assert_eq!(again.answered("nc"), Some("00000001"));
    assert_eq!(again.status(), Some(200));
    assert_eq!(
        metric(&s, "trustring_auth_failures_total"),
        0.0,
        "a nonce from before the restart is not an authentication failure"
    );
    assert!(
        !l.output().contains("assword"),
        "linphone asked for a password:\n{}",
        l.output()
    );
}

#[test]
fn an_unlisted_product_gets_md5_alone_and_registers() {
    linphone_client::require();
    let s = Server::start_args(&["--digest-sha256-agents", ""]);
    let _log = ServerLogOnPanic(s.data.clone());
    s.add_subscriber("alice", PASSWORD);
    let relay = UdpRelay::start("alice-unlisted", s.sip);
    let l = Linphone::start(&Account::new(
        "alice-unlisted",
        "alice",
        PASSWORD,
        relay.addr,
        Transport::Udp,
    ));
    let ex = first_registration(&relay);
    eprintln!("--digest-sha256-agents \"\":\n{}", show(&ex));
    assert_eq!(
        ex[0].offered(),
        algorithms(&["MD5"]),
        "a client of no listed product is challenged with MD5 alone"
    );
    assert_eq!(ex[1].answered_with(), algorithms(&["MD5"]));
    wait_registered(&s, "alice (MD5)", |r| source_is(r, relay.upstream));
    // linphone pins what it answered first: this one stays with MD5.
    l.wait_config("algorithm=MD5", STEP);
}
