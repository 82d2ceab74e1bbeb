//! Trust before connect (R14) in simulated time: the phone's branch carries a challenge,
//! its answer counts only with a good proof, and a bad or missing proof drops that branch
//! alone while the desktop keeps ringing.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::msg::{answer_with, cancel, in_call, invite};
use common::setup::{binding, config, device, subscriber};
use common::sim::{Sim, requests_to, responses_to, statuses};
use common::{CALLER, addr};
use sip_core::message::{HeaderName, Request, Response};
use sip_core::proxy::{DeviceEntry, Event, ProxyConfig, TrustGate, TrustRefusal};

const DESK: &str = "127.0.0.1:6001";
const PHONE: &str = "127.0.0.1:6002";

/// A gate with an obvious rule: the proof for a challenge `c:CALL:BRANCH` is `ok:CALL:BRANCH`,
/// good once. It records what it was asked.
#[derive(Default)]
struct FakeGate {
    issued: Vec<(String, String)>,
    locked: bool,
    forgotten: usize,
}

struct Shared(Arc<Mutex<FakeGate>>);

impl TrustGate for Shared {
    fn challenge(
        &mut self,
        _now: Instant,
        device: &str,
        call_id: &str,
        branch: &str,
    ) -> Result<String, TrustRefusal> {
        let mut g = self.0.lock().unwrap();
        assert_eq!(device, "d-1");
        if g.locked {
            return Err(TrustRefusal {
                kind: "locked-out".into(),
                detail: "too many bad proofs".into(),
            });
        }
        g.issued.push((call_id.into(), branch.into()));
        Ok(format!("c:{call_id}:{branch}"))
    }

    fn verify(
        &mut self,
        _now: Instant,
        _device: &str,
        call_id: &str,
        branch: &str,
        proof: Option<&str>,
    ) -> Result<(), TrustRefusal> {
        let mut g = self.0.lock().unwrap();
        let refuse = |kind: &str| {
            Err(TrustRefusal {
                kind: kind.into(),
                detail: String::new(),
            })
        };
        let Some(proof) = proof else {
            return refuse("missing-proof");
        };
        let pos = g
            .issued
            .iter()
            .position(|(c, b)| c == call_id && b == branch);
        match pos {
            Some(p) if proof == format!("ok:{call_id}:{branch}") => {
                g.issued.remove(p);
                Ok(())
            }
            Some(_) => refuse("wrong-proof"),
            None => refuse("replayed-proof"),
        }
    }

    fn forget(&mut self, _device: &str, call_id: &str, branch: &str) {
        let mut g = self.0.lock().unwrap();
        g.issued.retain(|(c, b)| !(c == call_id && b == branch));
        g.forgotten += 1;
    }
}

/// The simulated proxy with alice's desktop and phone `d-1`, and the fake gate.
struct Gated {
    sim: Sim,
    gate: Arc<Mutex<FakeGate>>,
}

impl Deref for Gated {
    type Target = Sim;
    fn deref(&self) -> &Sim {
        &self.sim
    }
}

impl DerefMut for Gated {
    fn deref_mut(&mut self) -> &mut Sim {
        &mut self.sim
    }
}

/// A proxy made with `cfg` where alice has her desktop at DESK (when `desk`) and phone
/// `phone` (bound at PHONE when `phone_sip`), behind the fake gate when `with_gate`.
fn gated(
    cfg: ProxyConfig,
    phone: DeviceEntry,
    desk: bool,
    phone_sip: bool,
    with_gate: bool,
) -> Gated {
    let mut sim = Sim::with_config(cfg);
    let now = sim.now;
    let until = now + Duration::from_secs(3600);
    sim.proxy.upsert_subscriber(subscriber("alice", None));
    sim.proxy.upsert_device(phone);
    if desk {
        sim.proxy
            .restore_binding("alice", binding("alice", DESK, None, until), now);
    }
    if phone_sip {
        sim.proxy
            .restore_binding("alice", binding("alice", PHONE, Some("d-1"), until), now);
    }
    let gate = Arc::new(Mutex::new(FakeGate::default()));
    if with_gate {
        sim.proxy.set_trust_gate(Box::new(Shared(gate.clone())));
    }
    Gated { sim, gate }
}

impl Gated {
    fn new(service_on: bool, with_gate: bool) -> Self {
        let phone = DeviceEntry {
            service_on,
            ..device("d-1", "alice", None)
        };
        gated(config(), phone, true, true, with_gate)
    }

    fn security_kinds(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Security {
                    kind,
                    device,
                    call_id,
                    user,
                    ..
                } => {
                    assert_eq!((device.as_str(), user.as_str()), ("d-1", "alice"));
                    assert_eq!(call_id, "call-1");
                    Some(kind.clone())
                }
                _ => None,
            })
            .collect()
    }
}

fn challenge_of(r: &Request) -> Option<String> {
    r.headers
        .get(&HeaderName::Other("trust-challenge".into()))
        .map(str::to_owned)
}

/// The phone's (or desktop's) response to its branch INVITE, with an optional proof.
fn answer(req: &Request, status: u16, tag: &str, dev: &str, proof: Option<&str>) -> String {
    let proof: Vec<_> = proof.map(|p| ("Trust-Proof", p)).into_iter().collect();
    answer_with(
        req,
        status,
        tag,
        dev,
        &proof,
        status == 183 || status == 200,
    )
}

fn good_proof(req: &Request) -> String {
    format!(
        "ok:{}:{}",
        req.call_id(),
        req.top_via().unwrap().branch().unwrap()
    )
}

fn fork() -> (Gated, Request, Request) {
    let mut sim = Gated::new(true, true);
    sim.recv(CALLER, &invite(""));
    let sent = sim.take();
    let desk = requests_to(&sent, DESK, "INVITE")
        .pop()
        .expect("desktop rung");
    let phone = requests_to(&sent, PHONE, "INVITE")
        .pop()
        .expect("phone rung");
    (sim, desk, phone)
}

#[test]
fn only_the_phone_branch_carries_a_challenge_bound_to_its_branch() {
    let (sim, desk, phone) = fork();
    assert_eq!(challenge_of(&desk), None);
    let c = challenge_of(&phone).expect("challenge on the phone's INVITE");
    assert_eq!(
        c,
        format!("c:call-1:{}", phone.top_via().unwrap().branch().unwrap())
    );
    assert_eq!(sim.gate.lock().unwrap().issued.len(), 1);
}

#[test]
fn phone_answer_with_good_proof_wins_and_desktop_is_cancelled() {
    let (mut sim, desk, phone) = fork();
    sim.recv(DESK, &answer(&desk, 180, "td", DESK, None));
    sim.recv(
        PHONE,
        &answer(&phone, 180, "tp", PHONE, Some(&good_proof(&phone))),
    );
    sim.recv(PHONE, &answer(&phone, 200, "tp", PHONE, None));
    let sent = sim.take();
    let up = responses_to(&sent, CALLER);
    assert_eq!(statuses(&up), [180, 180, 200]);
    for r in &up {
        assert!(
            r.headers
                .get(&HeaderName::Other("Trust-Proof".into()))
                .is_none(),
            "proofs never go upstream"
        );
    }
    let cancel = requests_to(&sent, DESK, "CANCEL")
        .pop()
        .expect("desktop CANCEL");
    assert_eq!(
        cancel.headers.get(&HeaderName::Reason),
        Some("SIP;cause=200;text=\"Call completed elsewhere\"")
    );
    assert!(sim.security_kinds().is_empty());
}

#[test]
fn proof_on_the_200_alone_is_enough() {
    let (mut sim, desk, phone) = fork();
    sim.recv(DESK, &answer(&desk, 180, "td", DESK, None));
    sim.take();
    sim.recv(
        PHONE,
        &answer(&phone, 200, "tp", PHONE, Some(&good_proof(&phone))),
    );
    let sent = sim.take();
    assert_eq!(statuses(&responses_to(&sent, CALLER)), [200]);
    assert_eq!(requests_to(&sent, DESK, "CANCEL").len(), 1);
}

#[test]
fn phone_200_without_proof_is_hung_up_and_desktop_keeps_ringing() {
    let (mut sim, desk, phone) = fork();
    sim.recv(PHONE, &answer(&phone, 200, "tp", PHONE, None));
    let sent = sim.take();
    assert!(
        responses_to(&sent, CALLER).is_empty(),
        "caller never sees it"
    );
    assert!(
        requests_to(&sent, DESK, "CANCEL").is_empty(),
        "desktop keeps ringing"
    );
    assert_eq!(requests_to(&sent, PHONE, "ACK").len(), 1);
    let bye = requests_to(&sent, PHONE, "BYE")
        .pop()
        .expect("BYE to the phone");
    assert_eq!(
        bye.headers.get(&HeaderName::Reason),
        Some("SIP;cause=403;text=\"Trust proof failed\"")
    );
    assert_eq!(sim.security_kinds(), ["missing-proof"]);
    // The desktop answers: the caller gets exactly that 200.
    sim.recv(DESK, &answer(&desk, 200, "td", DESK, None));
    let up = responses_to(&sim.take(), CALLER);
    assert_eq!(statuses(&up), [200]);
    assert_eq!(up[0].to().unwrap().tag(), Some("td"));
}

#[test]
fn wrong_proof_on_183_cancels_the_phone_and_hides_its_early_media() {
    let (mut sim, desk, phone) = fork();
    sim.recv(PHONE, &answer(&phone, 183, "tp", PHONE, Some("ok:forged")));
    let sent = sim.take();
    assert!(responses_to(&sent, CALLER).is_empty());
    let cancel = requests_to(&sent, PHONE, "CANCEL")
        .pop()
        .expect("phone CANCEL");
    assert_eq!(
        cancel.headers.get(&HeaderName::Reason),
        Some("SIP;cause=403;text=\"Trust proof failed\"")
    );
    assert_eq!(sim.security_kinds(), ["wrong-proof"]);
    // A later 200 from the phone (crossing the CANCEL) is not connected either.
    sim.recv(
        PHONE,
        &answer(&phone, 200, "tp", PHONE, Some(&good_proof(&phone))),
    );
    let sent = sim.take();
    assert!(responses_to(&sent, CALLER).is_empty());
    assert_eq!(requests_to(&sent, PHONE, "BYE").len(), 1);
    // Its 487 does not become the caller's answer; the desktop's busy does.
    sim.recv(PHONE, &answer(&phone, 487, "tp", PHONE, None));
    sim.recv(DESK, &answer(&desk, 486, "td", DESK, None));
    assert_eq!(statuses(&responses_to(&sim.take(), CALLER)), [486]);
}

#[test]
fn unproven_180_is_relayed_without_body_and_replayed_proof_fails() {
    let (mut sim, _desk, phone) = fork();
    sim.recv(PHONE, &answer(&phone, 183, "tp", PHONE, None));
    let up = responses_to(&sim.take(), CALLER);
    assert_eq!(statuses(&up), [183]);
    assert!(up[0].body.is_empty(), "no early media before the proof");
    assert!(up[0].headers.get(&HeaderName::ContentType).is_none());
    // Consume the challenge out of band, then the phone's proof is a replay.
    sim.gate.lock().unwrap().issued.clear();
    sim.recv(
        PHONE,
        &answer(&phone, 200, "tp", PHONE, Some(&good_proof(&phone))),
    );
    assert!(responses_to(&sim.take(), CALLER).is_empty());
    assert_eq!(sim.security_kinds(), ["replayed-proof"]);
}

#[test]
fn service_off_rings_only_the_desktop() {
    let mut sim = Gated::new(false, true);
    sim.recv(CALLER, &invite(""));
    let sent = sim.take();
    assert_eq!(requests_to(&sent, DESK, "INVITE").len(), 1);
    assert!(requests_to(&sent, PHONE, "INVITE").is_empty());
    assert!(sim.gate.lock().unwrap().issued.is_empty());
}

#[test]
fn locked_out_or_ungated_phone_is_not_rung() {
    let mut sim = Gated::new(true, true);
    sim.gate.lock().unwrap().locked = true;
    sim.recv(CALLER, &invite(""));
    let sent = sim.take();
    assert_eq!(requests_to(&sent, DESK, "INVITE").len(), 1);
    assert!(requests_to(&sent, PHONE, "INVITE").is_empty());
    assert_eq!(sim.security_kinds(), ["locked-out"]);

    let mut sim = Gated::new(true, false);
    sim.recv(CALLER, &invite(""));
    let sent = sim.take();
    assert_eq!(requests_to(&sent, DESK, "INVITE").len(), 1);
    assert!(requests_to(&sent, PHONE, "INVITE").is_empty());
}

#[test]
fn revoked_device_loses_its_bindings_at_once() {
    let mut sim = Gated::new(true, true);
    sim.proxy.remove_device("d-1");
    sim.drain();
    assert!(sim.events.iter().any(|e| matches!(
        e,
        Event::BindingRemoved { user, contact } if user == "alice" && contact.contains("6002")
    )));
    sim.recv(CALLER, &invite(""));
    let sent = sim.take();
    assert_eq!(requests_to(&sent, DESK, "INVITE").len(), 1);
    assert!(requests_to(&sent, PHONE, "INVITE").is_empty());
}

#[test]
fn phone_busy_forgets_the_challenge() {
    let (mut sim, _desk, phone) = fork();
    sim.recv(PHONE, &answer(&phone, 486, "tp", PHONE, None));
    let g = sim.gate.lock().unwrap();
    assert!(g.issued.is_empty());
    assert_eq!(g.forgotten, 1);
}

mod device_registration {
    use super::*;
    use common::digest::answer_challenge;
    use sip_core::auth::Algorithm;

    fn sim_with_devices() -> Gated {
        let mut sim = Gated::new(true, true);
        sim.proxy
            .upsert_subscriber(subscriber("bob", Some("bobpw")));
        sim.proxy
            .upsert_device(device("d-9", "alice", Some("devpw")));
        sim
    }

    /// Sends a REGISTER for `to_user` from `src` authenticated as `auth_user`; returns the
    /// final status.
    fn register(
        sim: &mut Gated,
        src: &str,
        to_user: &str,
        auth_user: &str,
        pw: &str,
        contact: &str,
        cseq: u32,
    ) -> u16 {
        let base = |auth: &str, cseq: u32| {
            format!(
                "REGISTER sip:localhost SIP/2.0
Via: SIP/2.0/UDP {src};branch=z9hG4bKr{cseq}{auth_user}
Max-Forwards: 70
From: <sip:{to_user}@localhost>;tag=r1
To: <sip:{to_user}@localhost>
Call-ID: reg-{src}-{auth_user}
CSeq: {cseq} REGISTER
Contact: {contact}
{auth}Content-Length: 0

"
            )
        };
        sim.recv(src, &base("", cseq));
        let resp = responses_to(&sim.take(), src).pop().unwrap();
        assert_eq!(resp.status, 401);
        let digest = answer_challenge(
            &resp,
            auth_user,
            pw,
            Algorithm::Md5,
            "REGISTER",
            "sip:localhost",
        );
        let auth = format!("Authorization: {digest}\n");
        sim.recv(src, &base(&auth, cseq + 1));
        responses_to(&sim.take(), src).pop().unwrap().status
    }

    #[test]
    fn phone_registers_with_device_credentials_for_its_subscriber_only() {
        let mut sim = sim_with_devices();
        let src = "127.0.0.1:6009";
        let contact = "<sip:alice@127.0.0.1:6009>";
        assert_eq!(
            register(&mut sim, src, "alice", "~d-9", "devpw", contact, 1),
            200
        );
        let b = sim
            .proxy
            .bindings("alice", sim.now)
            .into_iter()
            .find(|b| b.contact.contains("6009"))
            .unwrap();
        assert_eq!(b.device.as_deref(), Some("d-9"));
        // Alice's phone credentials cannot bind contacts for bob.
        assert_eq!(
            register(
                &mut sim,
                "127.0.0.1:6010",
                "bob",
                "~d-9",
                "devpw",
                "<sip:bob@127.0.0.1:6010>",
                1
            ),
            403
        );
        // Nor can the desktop credentials take over the phone's contact.
        sim.proxy
            .upsert_subscriber(subscriber("alice", Some("alicepw")));
        assert_eq!(
            register(&mut sim, src, "alice", "alice", "alicepw", contact, 10),
            403
        );
        // A device that is gone cannot register.
        sim.proxy.remove_device("d-9");
        assert_eq!(
            register(
                &mut sim,
                "127.0.0.1:6011",
                "alice",
                "~d-9",
                "devpw",
                "<sip:alice@127.0.0.1:6011>",
                1
            ),
            401
        );
    }

    #[test]
    fn star_unregister_by_the_phone_leaves_the_desktop() {
        let mut sim = sim_with_devices();
        let src = "127.0.0.1:6009";
        assert_eq!(
            register(
                &mut sim,
                src,
                "alice",
                "~d-9",
                "devpw",
                "<sip:alice@127.0.0.1:6009>",
                1
            ),
            200
        );
        let before = sim.proxy.bindings("alice", sim.now).len();
        // Expires: 0 with `*` is sent as the header Expires below.
        let status = register(&mut sim, src, "alice", "~d-9", "devpw", "*\nExpires: 0", 5);
        assert_eq!(status, 200);
        let after = sim.proxy.bindings("alice", sim.now);
        assert_eq!(after.len(), before - 1);
        assert!(after.iter().all(|b| b.device.as_deref() != Some("d-9")));
        assert!(
            after.iter().any(|b| b.contact.contains("6001")),
            "desktop kept"
        );
    }
}

mod call_records {
    use super::*;
    use sip_core::proxy::{BranchOutcome, CallRecord, Released};

    fn outcomes(r: &CallRecord) -> Vec<(bool, Option<BranchOutcome>)> {
        r.branches
            .iter()
            .map(|b| (b.device.is_some(), b.outcome))
            .collect()
    }

    fn bye_from_caller(answer: &Response) -> String {
        let to = answer.headers.get(&HeaderName::To).unwrap();
        // The route set is the answer's Record-Route (RFC 3261 §12.1.2).
        let route = answer.headers.get(&HeaderName::RecordRoute).unwrap();
        let route = format!("Route: {route}\n");
        in_call("BYE", "sip:alice@127.0.0.1:6002", "bye1", 2, to, &route)
    }

    #[test]
    fn answered_call_ends_with_the_callers_bye() {
        let (mut sim, desk, phone) = fork();
        sim.recv(DESK, &answer(&desk, 180, "td", DESK, None));
        sim.recv(
            PHONE,
            &answer(&phone, 200, "tp", PHONE, Some(&good_proof(&phone))),
        );
        let ok = responses_to(&sim.take(), CALLER).pop().unwrap();
        assert!(
            sim.call_records().is_empty(),
            "no record while the call is up"
        );
        assert_eq!(sim.proxy.active_calls(), 1);
        sim.recv(CALLER, &bye_from_caller(&ok));
        let r = sim.call_records();
        assert_eq!(r.len(), 1);
        let r = &r[0];
        assert_eq!((r.call_id.as_str(), r.called.as_str()), ("call-1", "alice"));
        assert_eq!(r.caller, "sip:bob@example.net");
        assert_eq!(r.final_status, 200);
        assert_eq!(r.released_by, Released::Caller);
        assert_eq!(r.release_cause, "BYE");
        assert!(r.answer_at.is_some());
        let i = r.answered_by.unwrap();
        assert_eq!(r.branches[i].device.as_deref(), Some("d-1"));
        let mut o = outcomes(r);
        o.sort_by_key(|x| x.0);
        assert_eq!(
            o,
            [
                (false, Some(BranchOutcome::CancelledElsewhere)),
                (true, Some(BranchOutcome::Answered))
            ]
        );
        assert!(r.branches.iter().all(|b| b.rang_at == Some(r.setup_at)));
        assert_eq!(sim.proxy.active_calls(), 0);
    }

    #[test]
    fn failed_trust_and_busy_give_one_record_with_both_outcomes() {
        let (mut sim, desk, phone) = fork();
        sim.recv(PHONE, &answer(&phone, 200, "tp", PHONE, None));
        sim.recv(DESK, &answer(&desk, 486, "td", DESK, None));
        let r = sim.call_records();
        assert_eq!(r.len(), 1, "{r:?}");
        let r = &r[0];
        assert_eq!(r.final_status, 486);
        assert_eq!(r.released_by, Released::Callee);
        assert_eq!(r.answered_by, None);
        let mut o = outcomes(r);
        o.sort_by_key(|x| x.0);
        assert_eq!(
            o,
            [
                (false, Some(BranchOutcome::Busy)),
                (true, Some(BranchOutcome::FailedTrust))
            ]
        );
    }

    #[test]
    fn a_call_nobody_can_take_still_gets_a_record() {
        // Only the phone is registered, and it is locked out: nothing rings.
        let mut sim = gated(config(), device("d-1", "alice", None), false, true, true);
        sim.gate.lock().unwrap().locked = true;
        sim.recv(CALLER, &invite(""));
        assert_eq!(statuses(&responses_to(&sim.take(), CALLER)), [100, 480]);
        let r = sim.call_records();
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(r[0].branches.is_empty());
        assert_eq!(r[0].final_status, 480);
        assert_eq!(r[0].released_by, Released::Proxy);
    }

    #[test]
    fn caller_cancel_is_released_by_the_caller() {
        let (mut sim, desk, phone) = fork();
        sim.recv(DESK, &answer(&desk, 180, "td", DESK, None));
        sim.recv(CALLER, &cancel(1));
        sim.recv(DESK, &answer(&desk, 487, "td", DESK, None));
        sim.recv(PHONE, &answer(&phone, 487, "tp", PHONE, None));
        let r = sim.call_records();
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].released_by, Released::Caller);
        assert_eq!(r[0].release_cause, "CANCEL");
        assert_eq!(r[0].final_status, 487);
        assert!(
            r[0].branches
                .iter()
                .all(|b| b.outcome == Some(BranchOutcome::Cancelled))
        );
    }
}

/// The phone's leg through the IP->PSTN gateway (R15, R16): to its number, with the
/// challenge and a trunk MAC; a voicemail answer (no proof) counts as no answer.
mod pstn_legs {
    use super::*;
    use sip_core::proxy::{BranchOutcome, LegType, Trunk, verify_trunk_auth};

    const GATEWAY: &str = "127.0.0.1:5070";
    const SECRET: &[u8] = b"trunk secret, 16+ bytes";

    /// Alice's desktop is registered; her phone has a number and (unless `phone_sip`) no
    /// SIP binding of its own.
    fn sim(phone_sip: bool) -> Gated {
        let mut cfg = config();
        cfg.trunk = Some(Trunk {
            addr: addr(GATEWAY),
            secret: SECRET.to_vec(),
        });
        let phone = DeviceEntry {
            number: Some("+15550001".into()),
            ..device("d-1", "alice", None)
        };
        gated(cfg, phone, true, phone_sip, true)
    }

    #[test]
    fn phone_without_sip_binding_rings_through_the_gateway_with_a_trunk_mac() {
        let mut sim = sim(false);
        sim.recv(CALLER, &invite(""));
        let sent = sim.take();
        assert_eq!(requests_to(&sent, DESK, "INVITE").len(), 1);
        let gw = requests_to(&sent, GATEWAY, "INVITE")
            .pop()
            .expect("gateway rung");
        assert_eq!(
            gw.uri.to_string(),
            "sip:+15550001@127.0.0.1:5070;user=phone"
        );
        let challenge = challenge_of(&gw).expect("challenge carried to the gateway");
        let branch = gw.top_via().unwrap().branch().unwrap().to_owned();
        let mac = gw
            .headers
            .get(&HeaderName::Other("trunk-auth".into()))
            .expect("Trunk-Auth");
        assert!(verify_trunk_auth(
            SECRET,
            mac,
            "call-1",
            &branch,
            "+15550001",
            &challenge
        ));
        assert!(!verify_trunk_auth(
            b"other secret......",
            mac,
            "call-1",
            &branch,
            "+15550001",
            &challenge
        ));
    }

    #[test]
    fn phone_with_its_own_sip_binding_is_not_rung_twice() {
        let mut sim = sim(true);
        sim.recv(CALLER, &invite(""));
        let sent = sim.take();
        assert_eq!(requests_to(&sent, PHONE, "INVITE").len(), 1);
        assert!(requests_to(&sent, GATEWAY, "INVITE").is_empty());
        assert!(
            requests_to(&sent, DESK, "INVITE")[0]
                .headers
                .get(&HeaderName::Other("trunk-auth".into()))
                .is_none()
        );
    }

    #[test]
    fn voicemail_answer_without_proof_does_not_take_the_call() {
        let mut sim = sim(false);
        sim.recv(CALLER, &invite(""));
        let sent = sim.take();
        let desk = requests_to(&sent, DESK, "INVITE").pop().unwrap();
        let gw = requests_to(&sent, GATEWAY, "INVITE").pop().unwrap();
        sim.recv(DESK, &answer(&desk, 180, "td", DESK, None));
        sim.recv(GATEWAY, &answer(&gw, 200, "vm", GATEWAY, None));
        let sent = sim.take();
        assert_eq!(requests_to(&sent, GATEWAY, "ACK").len(), 1);
        let bye = requests_to(&sent, GATEWAY, "BYE")
            .pop()
            .expect("voicemail hung up");
        assert!(
            bye.headers
                .get(&HeaderName::Reason)
                .unwrap()
                .contains("voicemail")
        );
        assert!(
            requests_to(&sent, DESK, "CANCEL").is_empty(),
            "desktop keeps ringing"
        );
        assert!(
            responses_to(&sent, CALLER).iter().all(|r| r.status < 200),
            "the caller is not connected to voicemail"
        );
        assert!(
            sim.security_kinds().is_empty(),
            "voicemail is not an attack"
        );
        sim.recv(DESK, &answer(&desk, 200, "td", DESK, None));
        let ok = responses_to(&sim.take(), CALLER);
        assert_eq!(ok.last().map(|r| r.status), Some(200));
        assert_eq!(
            ok.last().unwrap().to().unwrap().tag(),
            Some("td"),
            "the desktop's answer"
        );
        let tag = sim.proxy.route_tag("call-1");
        sim.recv(
            CALLER,
            &in_call(
                "BYE",
                &format!("sip:alice@{DESK}"),
                "bye1",
                2,
                "<sip:alice@localhost>;tag=td",
                &format!("Route: <sip:127.0.0.1:5060;lr;rr={tag}>\n"),
            ),
        );
        let r = sim.call_records();
        assert_eq!(r.len(), 1, "{r:?}");
        let legs: Vec<_> = r[0].branches.iter().map(|b| (b.leg, b.outcome)).collect();
        assert!(
            legs.contains(&(LegType::Voip, Some(BranchOutcome::Answered))),
            "{legs:?}"
        );
        assert!(
            legs.contains(&(LegType::Pstn, Some(BranchOutcome::NoAnswer))),
            "{legs:?}"
        );
    }

    #[test]
    fn wrong_proof_through_the_gateway_is_still_a_trust_failure() {
        let mut sim = sim(false);
        sim.recv(CALLER, &invite(""));
        let gw = requests_to(&sim.take(), GATEWAY, "INVITE").pop().unwrap();
        sim.recv(GATEWAY, &answer(&gw, 200, "x", GATEWAY, Some("ok:forged")));
        assert_eq!(sim.security_kinds(), ["wrong-proof"]);
    }

    #[test]
    fn desktop_answer_cancels_the_gateway_leg_with_the_reason() {
        let mut sim = sim(false);
        sim.recv(CALLER, &invite(""));
        let sent = sim.take();
        let desk = requests_to(&sent, DESK, "INVITE").pop().unwrap();
        let gw = requests_to(&sent, GATEWAY, "INVITE").pop().unwrap();
        sim.recv(
            GATEWAY,
            &answer(&gw, 180, "g", GATEWAY, Some(&good_proof(&gw))),
        );
        sim.recv(DESK, &answer(&desk, 200, "td", DESK, None));
        let cancel = requests_to(&sim.take(), GATEWAY, "CANCEL")
            .pop()
            .expect("CANCEL");
        assert_eq!(
            cancel.headers.get(&HeaderName::Reason),
            Some("SIP;cause=200;text=\"Call completed elsewhere\"")
        );
    }
}
