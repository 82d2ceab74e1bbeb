//! A fork on its own: responses and timeouts in, actions out, no proxy.
use super::*;
use crate::message::{Message, parse};
use crate::proxy::Transport;

fn invite() -> Request {
    let text = "INVITE sip:alice@example.com SIP/2.0\r\n\
        Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKcaller\r\n\
        Max-Forwards: 70\r\n\
        From: <sip:bob@example.com>;tag=b1\r\n\
        To: <sip:alice@example.com>\r\n\
        Call-ID: call-1\r\n\
        CSeq: 1 INVITE\r\n\
        Content-Length: 0\r\n\r\n";
    match parse(text.as_bytes()) {
        Ok(Message::Request(r)) => r,
        other => panic!("test INVITE does not parse: {other:?}"),
    }
}

fn branch(n: u16, device: Option<&str>, pstn: bool, delay: Option<Instant>) -> Branch {
    let mut r = invite();
    r.headers.push_front(
        HeaderName::Via,
        format!("SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bKb{n}"),
    );
    let target = Target {
        transport: Transport::Udp,
        addr: std::net::SocketAddr::from(([192, 0, 2, 10], 5000 + n)),
        conn: None,
    };
    Branch::new(r, target, delay, device.map(str::to_owned), pstn)
}

/// A fork of three sent desktop branches (clients 10, 11, 12), ringing for 30 s.
fn fork(now: Instant, branches: Vec<Branch>) -> Fork {
    let mut f = Fork::new(1, invite(), branches, Some(now + Duration::from_secs(30)));
    let mut out = Vec::new();
    f.start(&mut out);
    for a in out {
        if let ForkAction::SendBranch(i) = a {
            f.branch_sent(i, 10 + i as u64);
        }
    }
    f
}

fn response(status: u16, tag: &str) -> Response {
    let mut r = Response::to_request(&invite(), status, "X", Some(tag));
    r.headers
        .push(HeaderName::Contact, format!("<sip:{tag}@192.0.2.20>"));
    r
}

fn statuses(out: &[ForkAction]) -> Vec<u16> {
    out.iter()
        .filter_map(|a| match a {
            ForkAction::Respond(r) => Some(r.status),
            ForkAction::Reply(s) => Some(*s),
            _ => None,
        })
        .collect()
}

fn cancels(out: &[ForkAction]) -> Vec<(usize, Option<&str>)> {
    out.iter()
        .filter_map(|a| match a {
            ForkAction::SendCancel { branch, reason } => Some((*branch, reason.as_deref())),
            _ => None,
        })
        .collect()
}

/// Accepts one proof string, refuses anything else.
struct Gate;
impl TrustGate for Gate {
    fn challenge(&mut self, _: Instant, _: &str, _: &str, _: &str) -> Result<String, TrustRefusal> {
        Ok("challenge".into())
    }
    fn verify(
        &mut self,
        _: Instant,
        _: &str,
        _: &str,
        _: &str,
        proof: Option<&str>,
    ) -> Result<(), TrustRefusal> {
        match proof {
            Some("good") => Ok(()),
            _ => Err(TrustRefusal {
                kind: "wrong-proof".into(),
                detail: String::new(),
            }),
        }
    }
    fn forget(&mut self, _: &str, _: &str, _: &str) {}
}

#[test]
fn first_answer_wins_and_the_rest_are_cancelled_elsewhere() {
    let now = Instant::now();
    let mut f = fork(now, (0..3).map(|n| branch(n, None, false, None)).collect());
    let mut out = Vec::new();
    f.on_response(0, response(180, "d0"), now, None, &mut out);
    assert_eq!(statuses(&out), [180]);
    out.clear();
    f.on_response(1, response(200, "d1"), now, None, &mut out);
    assert_eq!(statuses(&out), [200]);
    assert!(matches!(
        out[1],
        ForkAction::Answered {
            branch: 1,
            status: 200
        }
    ));
    // Branch 0 rang: CANCEL now; branch 2 did not: its CANCEL waits (§9.1).
    assert_eq!(cancels(&out), [(0, Some(COMPLETED_ELSEWHERE))]);
    assert!(
        out.iter()
            .any(|a| matches!(a, ForkAction::Abandon { client: 12 }))
    );
    out.clear();
    f.on_response(2, response(180, "d2"), now, None, &mut out);
    assert_eq!(cancels(&out), [(2, Some(COMPLETED_ELSEWHERE))]);
    assert!(
        statuses(&out).is_empty(),
        "nothing after the answer goes upstream"
    );
    out.clear();
    // A late 2xx from branch 0 is ACKed and BYEd once, never passed on.
    f.on_response(0, response(200, "d0"), now, None, &mut out);
    f.on_response(0, response(200, "d0"), now, None, &mut out);
    let byes: Vec<bool> = out
        .iter()
        .filter_map(|a| match a {
            ForkAction::EndLateAnswer { branch: 0, bye, .. } => Some(*bye),
            _ => None,
        })
        .collect();
    assert_eq!(byes, [true, false]);
    assert!(statuses(&out).is_empty());
}

#[test]
fn a_6xx_ends_the_search_and_is_the_best_response() {
    let now = Instant::now();
    let mut f = fork(now, (0..2).map(|n| branch(n, None, false, None)).collect());
    let mut out = Vec::new();
    f.on_response(0, response(486, "d0"), now, None, &mut out);
    f.on_response(1, response(180, "d1"), now, None, &mut out);
    f.on_response(1, response(603, "d1"), now, None, &mut out);
    assert_eq!(statuses(&out), [180, 603], "busy loses to decline");
    assert!(matches!(
        out.last(),
        Some(ForkAction::Failed { status: 603, .. })
    ));
}

#[test]
fn ring_timeout_answers_480_and_cancels_every_branch() {
    let now = Instant::now();
    let later = now + Duration::from_secs(5);
    let mut f = fork(
        now,
        vec![
            branch(0, None, false, None),
            branch(1, None, false, Some(later)),
        ],
    );
    let mut out = Vec::new();
    f.on_response(0, response(180, "d0"), now, None, &mut out);
    out.clear();
    f.on_timeout(later, &mut out);
    assert!(
        matches!(out[..], [ForkAction::SendBranch(1)]),
        "delayed branch leaves"
    );
    out.clear();
    let deadline = f.next_deadline().expect("the ring deadline");
    assert_eq!(deadline, now + Duration::from_secs(30));
    f.on_timeout(deadline, &mut out);
    assert_eq!(statuses(&out), [480]);
    assert_eq!(cancels(&out), [(0, None)]);
    assert_eq!(f.next_deadline(), None, "a finished fork waits for nothing");
}

#[test]
fn a_phone_answering_with_a_wrong_proof_is_dropped_and_the_desktop_still_wins() {
    let now = Instant::now();
    let mut f = fork(
        now,
        vec![
            branch(0, Some("phone-1"), false, None),
            branch(1, None, false, None),
        ],
    );
    let mut out = Vec::new();
    let mut bad = response(200, "p0");
    bad.headers.push(trust_header(TRUST_PROOF), "forged");
    f.on_response(0, bad, now, Some(&mut Gate), &mut out);
    assert!(
        statuses(&out).is_empty(),
        "the phone's 200 never reaches the caller"
    );
    assert!(out.iter().any(|a| matches!(
        a,
        ForkAction::Security { refusal, device, .. }
            if refusal.kind == "wrong-proof" && device == "phone-1"
    )));
    assert!(out.iter().any(|a| matches!(
        a,
        ForkAction::EndLateAnswer {
            branch: 0,
            reason: TRUST_FAILED,
            bye: true,
            ..
        }
    )));
    out.clear();
    f.on_response(1, response(200, "d1"), now, Some(&mut Gate), &mut out);
    assert_eq!(statuses(&out), [200]);
}

#[test]
fn a_phone_with_a_good_proof_wins_and_its_proof_is_not_passed_on() {
    let now = Instant::now();
    let mut f = fork(now, vec![branch(0, Some("phone-1"), true, None)]);
    let mut out = Vec::new();
    let mut ok = response(200, "p0");
    ok.headers.push(trust_header(TRUST_PROOF), "good");
    f.on_response(0, ok, now, Some(&mut Gate), &mut out);
    match &out[..] {
        [
            ForkAction::Respond(r),
            ForkAction::Answered { branch: 0, .. },
        ] => {
            assert!(r.headers.get(&trust_header(TRUST_PROOF)).is_none());
        }
        other => panic!("unexpected actions: {other:?}"),
    }
}

#[test]
fn voicemail_on_the_pstn_leg_is_no_answer_not_an_attack() {
    let now = Instant::now();
    let mut f = fork(now, vec![branch(0, Some("phone-1"), true, None)]);
    let mut out = Vec::new();
    f.on_response(0, response(200, "vm"), now, Some(&mut Gate), &mut out);
    assert!(!out.iter().any(|a| matches!(a, ForkAction::Security { .. })));
    assert!(out.iter().any(|a| matches!(
        a,
        ForkAction::BranchFinal {
            outcome: Some(BranchOutcome::NoAnswer),
            ..
        }
    )));
    assert!(out.iter().any(|a| matches!(
        a,
        ForkAction::EndLateAnswer {
            reason: VOICEMAIL,
            ..
        }
    )));
    // Every branch ended without an answer: 480 to the caller.
    assert_eq!(statuses(&out), [480]);
}

#[test]
fn an_unreachable_branch_counts_as_503_and_the_others_go_on() {
    let now = Instant::now();
    let mut f = fork(
        now,
        vec![
            branch(0, None, false, None),
            branch(1, Some("p1"), true, None),
        ],
    );
    let mut out = Vec::new();
    // The gateway cannot be reached: the phone's branch ends, nothing goes upstream yet.
    f.on_branch_failed(1, 503, "Service Unavailable", &mut out);
    assert!(out.iter().any(|a| matches!(
        a,
        ForkAction::BranchFinal {
            branch: 1,
            status: 503,
            ..
        }
    )));
    assert!(statuses(&out).is_empty(), "the desktop still rings");
    out.clear();
    f.on_response(0, response(200, "d0"), now, None, &mut out);
    assert_eq!(statuses(&out), [200], "the desktop answers the call");
    assert!(
        cancels(&out).is_empty(),
        "nothing to cancel on the failed branch"
    );

    // Alone, the failed branch is the call's answer.
    let mut f = fork(now, vec![branch(0, Some("p1"), true, None)]);
    let mut out = Vec::new();
    f.on_branch_failed(0, 503, "Service Unavailable", &mut out);
    assert!(
        out.iter()
            .any(|a| matches!(a, ForkAction::Failed { status: 503, .. })),
        "{out:?}"
    );
}
