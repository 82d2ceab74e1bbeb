//! The forking proxy in simulated time: no sockets, no clock. A caller and N devices are
//! addresses; the test plays their part by feeding the proxy bytes and reading what it
//! sends where (STYLE habit 3).
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use common::msg::{answer, cancel, in_call, invite};
use common::setup::{binding, config, subscriber};
use common::sim::{Sim, requests_to, responses_to, statuses};
use common::{CALLER, PROXY};
use sip_core::message::{HeaderName, Request};
use sip_core::proxy::SubscriberEntry;

/// alice (ringing `ring_timeout` seconds, a contact at port 6099 two seconds late) with a
/// binding at each of `devices`.
fn forking(devices: &[&str], ring_timeout: u64) -> Sim {
    let mut sim = Sim::with_config(config());
    let now = sim.now;
    sim.proxy.upsert_subscriber(SubscriberEntry {
        ring_timeout: Duration::from_secs(ring_timeout),
        ring_delays: vec![("6099".into(), Duration::from_secs(2))],
        ..subscriber("alice", None)
    });
    for d in devices {
        let b = binding("alice", d, None, now + Duration::from_secs(3600));
        sim.proxy.restore_binding("alice", b, now);
    }
    sim
}

const D1: &str = "127.0.0.1:6001";
const D2: &str = "127.0.0.1:6002";

fn fork_two() -> (Sim, Request, Request) {
    let mut sim = forking(&[D1, D2], 30);
    sim.recv(CALLER, &invite(""));
    let sent = sim.take();
    assert_eq!(statuses(&responses_to(&sent, CALLER)), [100]);
    let b1 = requests_to(&sent, D1, "INVITE").pop().expect("branch 1");
    let b2 = requests_to(&sent, D2, "INVITE").pop().expect("branch 2");
    (sim, b1, b2)
}

#[test]
fn forks_to_every_contact_at_once_with_via_rr_and_max_forwards() {
    let (sim, b1, b2) = fork_two();
    let rr = format!(
        "<sip:127.0.0.1:5060;lr;rr={}>",
        sim.proxy.route_tag(b1.call_id())
    );
    for (b, d) in [(&b1, D1), (&b2, D2)] {
        assert_eq!(b.uri.to_string(), format!("sip:alice@{d}"));
        assert_eq!(b.headers.get_all(&HeaderName::Via).count(), 2);
        assert!(b.headers.get(&HeaderName::Via).unwrap().contains(PROXY));
        assert_eq!(b.headers.get(&HeaderName::RecordRoute), Some(rr.as_str()));
        assert_eq!(b.headers.get(&HeaderName::MaxForwards), Some("69"));
        assert_eq!(&b.body[..], b"v=0\r");
    }
    assert_ne!(
        b1.top_via().unwrap().branch(),
        b2.top_via().unwrap().branch()
    );
}

#[test]
fn first_200_wins_and_other_branch_is_cancelled_with_reason() {
    let (mut sim, b1, b2) = fork_two();
    sim.recv(D1, &answer(&b1, 180, "t1", D1));
    sim.recv(D2, &answer(&b2, 180, "t2", D2));
    assert_eq!(statuses(&responses_to(&sim.take(), CALLER)), [180, 180]);
    sim.recv(D1, &answer(&b1, 200, "t1", D1));
    let sent = sim.take();
    let to_caller = responses_to(&sent, CALLER);
    assert_eq!(statuses(&to_caller), [200]);
    assert_eq!(
        to_caller[0].headers.get_all(&HeaderName::Via).count(),
        1,
        "our Via removed"
    );
    let cancel = requests_to(&sent, D2, "CANCEL")
        .pop()
        .expect("CANCEL to the loser");
    assert_eq!(
        cancel.headers.get(&HeaderName::Reason),
        Some("SIP;cause=200;text=\"Call completed elsewhere\"")
    );
    assert_eq!(
        cancel.top_via().unwrap().branch(),
        b2.top_via().unwrap().branch(),
        "§9.1 same branch"
    );
    assert!(requests_to(&sent, D1, "CANCEL").is_empty());
    // The loser answers the CANCEL and the INVITE: 487 is ACKed, never forwarded.
    sim.recv(D2, &answer(&b2, 487, "t2", D2));
    let sent = sim.take();
    assert_eq!(requests_to(&sent, D2, "ACK").len(), 1);
    assert!(responses_to(&sent, CALLER).is_empty());
}

#[test]
fn late_200_is_acked_and_byed_and_caller_sees_one_200() {
    let (mut sim, b1, b2) = fork_two();
    sim.recv(D1, &answer(&b1, 200, "t1", D1));
    sim.recv(D2, &answer(&b2, 200, "t2", D2));
    let sent = sim.take();
    assert_eq!(
        statuses(&responses_to(&sent, CALLER)),
        [100, 200].map(|_| 200)[..1].to_vec()
    );
    assert_eq!(requests_to(&sent, D2, "ACK").len(), 1);
    let bye = requests_to(&sent, D2, "BYE")
        .pop()
        .expect("BYE to the late answerer");
    assert_eq!(bye.to().unwrap().tag(), Some("t2"));
    assert_eq!(bye.cseq().seq, 2);
    // A retransmitted late 200 is ACKed again but not BYEd twice.
    sim.recv(D2, &answer(&b2, 200, "t2", D2));
    let sent = sim.take();
    assert_eq!(requests_to(&sent, D2, "ACK").len(), 1);
    assert!(requests_to(&sent, D2, "BYE").is_empty());
    assert!(responses_to(&sent, CALLER).is_empty());
}

#[test]
fn busy_plus_200_gives_200_and_all_busy_gives_486() {
    let (mut sim, b1, b2) = fork_two();
    sim.recv(D1, &answer(&b1, 486, "t1", D1));
    assert!(
        responses_to(&sim.take(), CALLER).is_empty(),
        "486 waits for the other branch"
    );
    sim.recv(D2, &answer(&b2, 200, "t2", D2));
    assert_eq!(statuses(&responses_to(&sim.take(), CALLER)), [200]);

    let (mut sim, b1, b2) = fork_two();
    sim.recv(D1, &answer(&b1, 486, "t1", D1));
    sim.recv(D2, &answer(&b2, 486, "t2", D2));
    let sent = sim.take();
    assert_eq!(statuses(&responses_to(&sent, CALLER)), [486]);
    assert_eq!(requests_to(&sent, D2, "ACK").len(), 1);
    // The caller ACKs the 486: the server transaction absorbs it (no forwarding).
    sim.recv(
        CALLER,
        &in_call(
            "ACK",
            "sip:alice@localhost",
            "caller1",
            1,
            "<sip:alice@localhost>;tag=t2",
            "",
        ),
    );
    assert!(sim.take().is_empty());
}

#[test]
fn six_xx_cancels_the_rest_and_wins() {
    let (mut sim, b1, b2) = fork_two();
    sim.recv(D2, &answer(&b2, 180, "t2", D2));
    sim.take();
    sim.recv(D1, &answer(&b1, 603, "t1", D1));
    let sent = sim.take();
    assert_eq!(requests_to(&sent, D2, "CANCEL").len(), 1);
    sim.recv(D2, &answer(&b2, 487, "t2", D2));
    assert_eq!(statuses(&responses_to(&sim.take(), CALLER)), [603]);
}

#[test]
fn ring_timeout_gives_480_and_cancels() {
    let mut sim = forking(&[D1, D2], 5);
    sim.recv(CALLER, &invite(""));
    let sent = sim.take();
    let b1 = requests_to(&sent, D1, "INVITE").pop().unwrap();
    sim.recv(D1, &answer(&b1, 180, "t1", D1));
    sim.take();
    sim.advance(Duration::from_millis(4_999));
    assert!(
        responses_to(&sim.take(), CALLER)
            .iter()
            .all(|r| r.status < 200)
    );
    sim.advance(Duration::from_millis(2));
    let sent = sim.take();
    assert_eq!(statuses(&responses_to(&sent, CALLER)), [480]);
    assert_eq!(
        requests_to(&sent, D1, "CANCEL").len(),
        1,
        "ringing branch cancelled"
    );
    // D2 never answered: §9.1 says no CANCEL until it does.
    assert!(requests_to(&sent, D2, "CANCEL").is_empty());
}

#[test]
fn caller_cancel_reaches_every_branch() {
    let (mut sim, b1, b2) = fork_two();
    sim.recv(D1, &answer(&b1, 180, "t1", D1));
    sim.recv(D2, &answer(&b2, 183, "t2", D2));
    sim.take();
    sim.recv(CALLER, &cancel(1));
    let sent = sim.take();
    assert_eq!(
        statuses(&responses_to(&sent, CALLER)),
        [200],
        "200 for the CANCEL"
    );
    assert_eq!(requests_to(&sent, D1, "CANCEL").len(), 1);
    assert_eq!(requests_to(&sent, D2, "CANCEL").len(), 1);
    sim.recv(D1, &answer(&b1, 487, "t1", D1));
    sim.recv(D2, &answer(&b2, 487, "t2", D2));
    assert_eq!(statuses(&responses_to(&sim.take(), CALLER)), [487]);
}

#[test]
fn early_dialog_terminated_199_for_a_caller_that_supports_it() {
    let mut sim = forking(&[D1, D2], 30);
    sim.recv(CALLER, &invite("Supported: 199\n"));
    let sent = sim.take();
    let b1 = requests_to(&sent, D1, "INVITE").pop().unwrap();
    let b2 = requests_to(&sent, D2, "INVITE").pop().unwrap();
    sim.recv(D1, &answer(&b1, 180, "early1", D1));
    sim.recv(D1, &answer(&b1, 486, "early1", D1));
    let to_caller = responses_to(&sim.take(), CALLER);
    assert_eq!(statuses(&to_caller), [180, 199]);
    assert_eq!(to_caller[1].to().unwrap().tag(), Some("early1"));
    sim.recv(D2, &answer(&b2, 200, "t2", D2));
    assert_eq!(statuses(&responses_to(&sim.take(), CALLER)), [200]);
}

#[test]
fn winner_2xx_is_preceded_by_199_for_the_losers_early_dialogs() {
    let mut sim = forking(&[D1, D2], 30);
    sim.recv(CALLER, &invite("Supported: 199\n"));
    let sent = sim.take();
    let b1 = requests_to(&sent, D1, "INVITE").pop().unwrap();
    let b2 = requests_to(&sent, D2, "INVITE").pop().unwrap();
    sim.recv(D1, &answer(&b1, 180, "win", D1));
    sim.recv(D2, &answer(&b2, 180, "lose", D2));
    sim.take();
    sim.recv(D1, &answer(&b1, 200, "win", D1));
    let to_caller = responses_to(&sim.take(), CALLER);
    assert_eq!(statuses(&to_caller), [199, 200]);
    assert_eq!(to_caller[0].to().unwrap().tag(), Some("lose"));
    // The loser's 487 after the 200 brings no further 199.
    sim.recv(D2, &answer(&b2, 487, "lose", D2));
    assert!(responses_to(&sim.take(), CALLER).is_empty());
}

#[test]
fn no_199_without_supported() {
    let (mut sim, b1, _b2) = fork_two();
    sim.recv(D1, &answer(&b1, 180, "early1", D1));
    sim.recv(D1, &answer(&b1, 486, "early1", D1));
    assert_eq!(statuses(&responses_to(&sim.take(), CALLER)), [180]);
}

#[test]
fn delayed_branch_leaves_later_and_never_if_answered_first() {
    const LATE: &str = "127.0.0.1:6099";
    let mut sim = forking(&[D1, LATE], 30);
    sim.recv(CALLER, &invite(""));
    let sent = sim.take();
    assert!(requests_to(&sent, LATE, "INVITE").is_empty());
    sim.advance(Duration::from_millis(2_000));
    assert_eq!(requests_to(&sim.take(), LATE, "INVITE").len(), 1);

    let mut sim = forking(&[D1, LATE], 30);
    sim.recv(CALLER, &invite(""));
    let b1 = requests_to(&sim.take(), D1, "INVITE").pop().unwrap();
    sim.recv(D1, &answer(&b1, 200, "t1", D1));
    sim.advance(Duration::from_secs(3));
    assert!(requests_to(&sim.take(), LATE, "INVITE").is_empty());
}

#[test]
fn udp_retransmissions_and_state_is_freed() {
    let (mut sim, b1, b2) = fork_two();
    // Caller retransmits the INVITE: it gets the 100 again, branches are not re-sent.
    sim.recv(CALLER, &invite(""));
    let sent = sim.take();
    assert_eq!(statuses(&responses_to(&sent, CALLER)), [100]);
    assert!(requests_to(&sent, D1, "INVITE").is_empty());
    // No provisional from the devices: timer A retransmits each branch at T1.
    sim.advance(Duration::from_millis(500));
    let sent = sim.take();
    assert_eq!(requests_to(&sent, D1, "INVITE").len(), 1);
    assert_eq!(requests_to(&sent, D2, "INVITE").len(), 1);
    sim.recv(D1, &answer(&b1, 200, "t1", D1));
    sim.recv(D2, &answer(&b2, 180, "t2", D2));
    sim.recv(D2, &answer(&b2, 487, "t2", D2));
    sim.advance(Duration::from_secs(70));
    assert_eq!(
        sim.proxy.load(),
        (0, 0, 0),
        "every transaction and fork is freed"
    );
}

#[test]
fn foreign_domain_is_refused_and_unknown_user_is_480() {
    let mut sim = forking(&[D1], 30);
    sim.recv(
        CALLER,
        &invite("").replace(
            "INVITE sip:alice@localhost",
            "INVITE sip:carol@other.example",
        ),
    );
    assert_eq!(statuses(&responses_to(&sim.take(), CALLER)), [403]);
    let mut sim = forking(&[D1], 30);
    sim.recv(
        CALLER,
        &invite("").replace("INVITE sip:alice@localhost", "INVITE sip:nobody@localhost"),
    );
    // The same answer as a user with nothing registered (no enumeration).
    assert_eq!(statuses(&responses_to(&sim.take(), CALLER)), [480]);
}

#[test]
fn bad_requests_get_400_or_are_dropped() {
    let mut sim = forking(&[D1], 30);
    sim.recv(CALLER, &invite("").replace("CSeq: 1 INVITE", "CSeq: 1 BYE"));
    assert_eq!(statuses(&responses_to(&sim.take(), CALLER)), [400]);
    sim.recv(CALLER, "garbage\n\n");
    assert!(sim.take().is_empty());
    sim.recv(
        CALLER,
        &invite("").replace("Max-Forwards: 70", "Max-Forwards: 0"),
    );
    assert_eq!(statuses(&responses_to(&sim.take(), CALLER)), [483]);
}
