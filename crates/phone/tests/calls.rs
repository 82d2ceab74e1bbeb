//! Incoming calls from a raw UDP caller built with sip-core: ringing with the trust proof,
//! answer, ACK, BYE both ways along the route set, CANCEL, retransmissions, bad input.

#![allow(missing_docs)]

mod common;

use std::time::Duration;

use common::*;
use sip_core::message::{HeaderName, Message, Method, NameAddr};
use tokio::sync::mpsc;
use trustring_phone::{Phone, PhoneConfig, PhoneError, PhoneEvent, PhoneHandle, Prover};

/// A registered phone (so REGISTERs do not go unanswered), with its events.
async fn phone(
    edit: impl FnOnce(&mut PhoneConfig),
    prover: Box<dyn Prover>,
) -> (Registrar, PhoneHandle, mpsc::Receiver<PhoneEvent>) {
    let reg = Registrar::start(RegistrarOpts::default()).await;
    let mut cfg = config(reg.addr);
    edit(&mut cfg);
    let (handle, mut events) = Phone::start(cfg, prover).await.expect("start");
    event(&mut events, |e| matches!(e, PhoneEvent::Registered { .. })).await;
    (reg, handle, events)
}

#[tokio::test]
async fn challenged_call_carries_the_proof_then_ack_and_remote_bye() {
    let (_reg, phone, mut events) = phone(
        |c| c.answer_after = Some(Duration::from_millis(300)),
        Box::new(EchoProver),
    )
    .await;
    let uac = Uac::new("call-proof").await;
    let proxy_rr = "<sip:127.0.0.1:5999;lr>";
    uac.peer
        .send(
            phone.local_addr(),
            uac.invite(
                phone.local_addr(),
                &format!("Trust-Challenge: ch-42\r\nRecord-Route: {proxy_rr}\r\n"),
            ),
        )
        .await;
    let proof = expected_proof("ch-42", &uac.call_id, &uac.branch);

    let (ringing, _) = uac.peer.response(Method::Invite, 180).await;
    let tag = to_tag(&ringing);
    assert_eq!(header(&ringing, "Trust-Proof"), Some(proof.as_str()));
    assert_eq!(
        ringing.headers.get(&HeaderName::RecordRoute),
        Some(proxy_rr)
    );
    let contact =
        NameAddr::parse(ringing.headers.get(&HeaderName::Contact).expect("Contact")).expect("uri");
    assert_eq!(contact.uri.param("trustring-device"), Some(Some(DEVICE)));
    assert_eq!(
        event(&mut events, |e| matches!(e, PhoneEvent::Ringing { .. })).await,
        PhoneEvent::Ringing {
            call_id: uac.call_id.clone(),
            from: "Bob <sip:bob@example.com>".to_owned(),
            challenged: true
        }
    );

    let (ok, _) = uac.peer.response(Method::Invite, 200).await;
    assert_eq!(to_tag(&ok), tag, "same To tag on 180 and 200");
    assert_eq!(header(&ok, "Trust-Proof"), Some(proof.as_str()));
    assert_eq!(ok.headers.get(&HeaderName::RecordRoute), Some(proxy_rr));
    assert_eq!(
        ok.headers.get(&HeaderName::ContentType),
        Some("application/sdp")
    );
    let sdp = std::str::from_utf8(&ok.body).expect("utf8 sdp");
    assert!(
        sdp.contains("m=audio ") && sdp.contains(" RTP/AVP 0\r\n"),
        "{sdp}"
    );
    assert!(sdp.contains("a=rtpmap:0 PCMU/8000"), "{sdp}");
    assert_eq!(
        event(&mut events, |e| matches!(e, PhoneEvent::Answered { .. })).await,
        PhoneEvent::Answered {
            call_id: uac.call_id.clone()
        }
    );

    uac.peer
        .send(
            phone.local_addr(),
            uac.in_dialog("ACK", 1, phone.local_addr(), &tag, None, ""),
        )
        .await;
    // After the ACK the 200 is no longer retransmitted (the first one was due at T1).
    let late = uac.peer.drain(Duration::from_millis(1200)).await;
    assert!(late.is_empty(), "nothing after the ACK: {late:?}");

    uac.peer
        .send(
            phone.local_addr(),
            uac.in_dialog("BYE", 2, phone.local_addr(), &tag, None, ""),
        )
        .await;
    let (bye_ok, _) = uac.peer.response(Method::Bye, 200).await;
    assert_eq!(to_tag(&bye_ok), tag);
    assert_eq!(
        event(&mut events, |e| matches!(e, PhoneEvent::Ended { .. })).await,
        PhoneEvent::Ended {
            call_id: uac.call_id.clone(),
            by_remote: true
        }
    );
    assert!(matches!(
        phone.hangup(&uac.call_id).await,
        Err(PhoneError::UnknownCall(_))
    ));
    phone.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn hangup_sends_bye_along_the_route_set() {
    let (_reg, phone, mut events) = phone(|_| {}, Box::new(EchoProver)).await;
    let uac = Uac::new("call-hangup").await;
    let proxy = Peer::new().await;
    let rr = format!("<sip:{};lr>", proxy.addr);
    uac.peer
        .send(
            phone.local_addr(),
            uac.invite(phone.local_addr(), &format!("Record-Route: {rr}\r\n")),
        )
        .await;
    let (ringing, _) = uac.peer.response(Method::Invite, 180).await;
    assert_eq!(
        header(&ringing, "Trust-Proof"),
        None,
        "no challenge, no proof"
    );
    let tag = to_tag(&ringing);
    assert!(matches!(
        event(&mut events, |e| matches!(e, PhoneEvent::Ringing { .. })).await,
        PhoneEvent::Ringing {
            challenged: false,
            ..
        }
    ));
    assert!(matches!(
        phone.answer("no-such-call").await,
        Err(PhoneError::UnknownCall(_))
    ));
    phone.answer(&uac.call_id).await.expect("answer");
    uac.peer.response(Method::Invite, 200).await;
    uac.peer
        .send(
            phone.local_addr(),
            uac.in_dialog("ACK", 1, phone.local_addr(), &tag, None, ""),
        )
        .await;
    // Let the ACK arrive before hanging up (a BYE before the ACK waits for it).
    tokio::time::sleep(Duration::from_millis(100)).await;
    phone.hangup(&uac.call_id).await.expect("hangup");

    // The BYE goes to the first Route (the proxy), not to the caller's Contact.
    let (bye, from) = proxy.request(Method::Bye).await;
    assert_eq!(from, phone.local_addr());
    assert_eq!(bye.uri.to_string(), format!("sip:bob@{}", uac.peer.addr));
    assert_eq!(bye.headers.get(&HeaderName::Route), Some(rr.as_str()));
    assert_eq!(bye.call_id(), uac.call_id);
    assert_eq!(
        bye.from().and_then(|f| f.tag().map(str::to_owned)),
        Some(tag)
    );
    assert_eq!(
        bye.to().and_then(|t| t.tag().map(str::to_owned)),
        Some(uac.from_tag.clone())
    );
    assert_eq!(
        event(&mut events, |e| matches!(e, PhoneEvent::Ended { .. })).await,
        PhoneEvent::Ended {
            call_id: uac.call_id.clone(),
            by_remote: false
        }
    );
    proxy
        .send(
            from,
            sip_core::message::Response::to_request(&bye, 200, "OK", None).to_bytes(),
        )
        .await;
    // Answered: the BYE is not retransmitted.
    assert!(proxy.drain(Duration::from_millis(800)).await.is_empty());
    assert!(uac.peer.drain(Duration::from_millis(100)).await.is_empty());
    phone.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn cancel_while_ringing_gets_200_and_487() {
    let (_reg, phone, mut events) = phone(|_| {}, Box::new(EchoProver)).await;
    let uac = Uac::new("call-cancel").await;
    uac.peer
        .send(
            phone.local_addr(),
            uac.invite(phone.local_addr(), "Trust-Challenge: c\r\n"),
        )
        .await;
    let (ringing, _) = uac.peer.response(Method::Invite, 180).await;
    let tag = to_tag(&ringing);
    let reason = "SIP;cause=200;text=\"Call completed elsewhere\"";
    uac.peer
        .send(
            phone.local_addr(),
            uac.cancel(phone.local_addr(), &format!("Reason: {reason}\r\n")),
        )
        .await;
    let mut got = Vec::new();
    while got.len() < 2 {
        match uac.peer.recv(WAIT).await {
            Some((Message::Response(r), _, _)) if r.status != 180 => got.push(r),
            Some(_) => {}
            None => panic!("no 200/487, got {got:?}"),
        }
    }
    let cancel_ok = got
        .iter()
        .find(|r| r.cseq().method == Method::Cancel)
        .expect("response to CANCEL");
    assert_eq!(cancel_ok.status, 200);
    let terminated = got
        .iter()
        .find(|r| r.cseq().method == Method::Invite)
        .expect("response to INVITE");
    assert_eq!(terminated.status, 487);
    assert_eq!(to_tag(terminated), tag);
    let cancelled = event(&mut events, |e| matches!(e, PhoneEvent::Cancelled { .. })).await;
    assert_eq!(
        cancelled,
        PhoneEvent::Cancelled {
            call_id: uac.call_id.clone(),
            reason: Some(reason.to_owned())
        }
    );
    assert!(cancelled.to_string().contains("Call completed elsewhere"));

    // The ACK for the 487 (same branch as the INVITE) stops its retransmission.
    uac.peer
        .send(
            phone.local_addr(),
            uac.in_dialog("ACK", 1, phone.local_addr(), &tag, Some(&uac.branch), ""),
        )
        .await;
    let after = uac.peer.drain(Duration::from_millis(1200)).await;
    assert!(
        after.is_empty(),
        "487 not retransmitted after the ACK: {after:?}"
    );
    assert!(matches!(
        phone.answer(&uac.call_id).await,
        Err(PhoneError::UnknownCall(_))
    ));
    phone.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn invite_retransmissions_get_the_same_response() {
    let (_reg, phone, mut events) = phone(|_| {}, Box::new(EchoProver)).await;
    let uac = Uac::new("call-retrans").await;
    let invite = uac.invite(phone.local_addr(), "Trust-Challenge: r\r\n");
    uac.peer.send(phone.local_addr(), &invite).await;
    let (_, first) = uac.peer.response(Method::Invite, 180).await;
    uac.peer.send(phone.local_addr(), &invite).await;
    let (_, again) = uac.peer.response(Method::Invite, 180).await;
    assert_eq!(first, again, "the retransmitted INVITE gets the same 180");
    // One call, one Ringing event.
    event(&mut events, |e| matches!(e, PhoneEvent::Ringing { .. })).await;

    phone.answer(&uac.call_id).await.expect("answer");
    let (ok, ok_raw) = uac.peer.response(Method::Invite, 200).await;
    uac.peer.send(phone.local_addr(), &invite).await;
    let (_, ok_again) = uac.peer.response(Method::Invite, 200).await;
    assert_eq!(
        ok_raw, ok_again,
        "the 200 is resent for a retransmitted INVITE"
    );

    // A second INVITE for the same call through another branch is a merged request.
    let other = invite.replace(&uac.branch, "z9hG4bK-other-path");
    uac.peer.send(phone.local_addr(), other).await;
    uac.peer.response(Method::Invite, 482).await;

    let tag = to_tag(&ok);
    uac.peer
        .send(
            phone.local_addr(),
            uac.in_dialog("ACK", 1, phone.local_addr(), &tag, None, ""),
        )
        .await;
    uac.peer
        .send(
            phone.local_addr(),
            uac.in_dialog("BYE", 2, phone.local_addr(), &tag, None, ""),
        )
        .await;
    uac.peer.response(Method::Bye, 200).await;
    let ringing_events: Vec<PhoneEvent> = std::iter::from_fn(|| events.try_recv().ok())
        .filter(|e| matches!(e, PhoneEvent::Ringing { .. }))
        .collect();
    assert!(ringing_events.is_empty(), "{ringing_events:?}");
    phone.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn prover_failure_rings_without_a_proof() {
    let (_reg, phone, mut events) = phone(
        |c| c.answer_after = Some(Duration::ZERO),
        Box::new(FailingProver("license revoked")),
    )
    .await;
    let uac = Uac::new("call-noproof").await;
    uac.peer
        .send(
            phone.local_addr(),
            uac.invite(phone.local_addr(), "Trust-Challenge: x\r\n"),
        )
        .await;
    let (ringing, _) = uac.peer.response(Method::Invite, 180).await;
    assert_eq!(header(&ringing, "Trust-Proof"), None);
    let (ok, _) = uac.peer.response(Method::Invite, 200).await;
    assert_eq!(header(&ok, "Trust-Proof"), None);
    assert!(matches!(
        event(&mut events, |e| matches!(e, PhoneEvent::Ringing { .. })).await,
        PhoneEvent::Ringing {
            challenged: true,
            ..
        }
    ));
    let failed = event(&mut events, |e| matches!(e, PhoneEvent::ProofFailed { .. })).await;
    assert_eq!(
        failed,
        PhoneEvent::ProofFailed {
            call_id: uac.call_id.clone(),
            reason: "license revoked".to_owned()
        }
    );
    phone.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn unacknowledged_200_is_retransmitted_then_ended_with_bye() {
    let (_reg, phone, mut events) = phone(
        |c| {
            c.answer_after = Some(Duration::ZERO);
            c.timers = fast_timers();
        },
        Box::new(EchoProver),
    )
    .await;
    let uac = Uac::new("call-noack").await;
    uac.peer
        .send(phone.local_addr(), uac.invite(phone.local_addr(), ""))
        .await;
    // 64*T1 = 3.2 s of 200s, T1 doubling to T2, then a BYE to the caller's Contact.
    let mut oks = Vec::new();
    let bye = loop {
        match uac.peer.recv(WAIT).await {
            Some((Message::Response(r), _, _)) if r.status == 200 => {
                oks.push(std::time::Instant::now());
            }
            Some((Message::Request(r), _, _)) if r.method == Method::Bye => break r,
            Some(_) => {}
            None => panic!("no BYE after {} 200s", oks.len()),
        }
    };
    assert!(oks.len() >= 10, "200 retransmitted: {}", oks.len());
    let first_gap = oks[1] - oks[0];
    let last_gap = oks[oks.len() - 1] - oks[oks.len() - 2];
    assert!(first_gap < Duration::from_millis(120), "{first_gap:?}");
    assert!(
        last_gap > Duration::from_millis(150),
        "capped at T2: {last_gap:?}"
    );
    assert_eq!(bye.call_id(), uac.call_id);
    assert_eq!(
        event(&mut events, |e| matches!(e, PhoneEvent::Ended { .. })).await,
        PhoneEvent::Ended {
            call_id: uac.call_id.clone(),
            by_remote: false
        }
    );
    phone.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn reinvite_options_and_decline() {
    let (_reg, phone, mut events) = phone(|_| {}, Box::new(EchoProver)).await;
    let uac = Uac::new("call-reinvite").await;
    let here = phone.local_addr();
    uac.peer.send(here, uac.invite(here, "")).await;
    event(&mut events, |e| matches!(e, PhoneEvent::Ringing { .. })).await;
    phone.answer(&uac.call_id).await.expect("answer");
    let (ok, _) = uac.peer.response(Method::Invite, 200).await;
    let tag = to_tag(&ok);
    uac.peer
        .send(here, uac.in_dialog("ACK", 1, here, &tag, None, ""))
        .await;
    uac.peer
        .send(here, uac.in_dialog("INVITE", 2, here, &tag, None, OFFER))
        .await;
    let (re_ok, _) = uac.peer.response(Method::Invite, 200).await;
    assert_eq!(re_ok.cseq().seq, 2);
    assert_eq!(re_ok.body, ok.body, "the same SDP");
    uac.peer
        .send(here, uac.in_dialog("ACK", 2, here, &tag, None, ""))
        .await;
    uac.peer
        .send(here, uac.in_dialog("OPTIONS", 3, here, &tag, None, ""))
        .await;
    let (opt, _) = uac.peer.response(Method::Options, 200).await;
    assert!(header(&opt, "Allow").is_some_and(|a| a.contains("INVITE")));
    // A BYE for an unknown dialog gets 481.
    uac.peer
        .send(here, uac.in_dialog("BYE", 4, here, "not-our-tag", None, ""))
        .await;
    uac.peer.response(Method::Bye, 481).await;
    // No 200 retransmissions after the ACKs.
    assert!(uac.peer.drain(Duration::from_millis(700)).await.is_empty());

    // A second call is declined while ringing: 603 (retransmitted until the ACK).
    let second = Uac::new("call-decline").await;
    second.peer.send(here, second.invite(here, "")).await;
    let (ringing, _) = second.peer.response(Method::Invite, 180).await;
    phone.hangup(&second.call_id).await.expect("decline");
    let (declined, _) = second.peer.response(Method::Invite, 603).await;
    assert_eq!(to_tag(&declined), to_tag(&ringing));
    assert_eq!(
        event(&mut events, |e| matches!(e, PhoneEvent::Ended { .. })).await,
        PhoneEvent::Ended {
            call_id: second.call_id.clone(),
            by_remote: false
        }
    );
    let (again, _) = second.peer.response(Method::Invite, 603).await;
    assert_eq!(again.status, 603, "retransmitted (timer G) without an ACK");
    second
        .peer
        .send(
            here,
            second.in_dialog("ACK", 1, here, &to_tag(&declined), Some(&second.branch), ""),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _ = second.peer.drain(Duration::from_millis(100)).await;
    assert!(
        second
            .peer
            .drain(Duration::from_millis(1200))
            .await
            .is_empty()
    );

    // Shutdown ends the connected first call with a BYE, then unregisters.
    let shutdown = tokio::spawn(phone.shutdown());
    let (bye, from) = uac.peer.request(Method::Bye).await;
    uac.peer
        .send(
            from,
            sip_core::message::Response::to_request(&bye, 200, "OK", None).to_bytes(),
        )
        .await;
    tokio::time::timeout(Duration::from_secs(2), shutdown)
        .await
        .expect("prompt shutdown once the BYE is answered")
        .expect("join")
        .expect("shutdown");
}

#[tokio::test]
async fn garbage_is_ignored() {
    let (_reg, phone, mut events) = phone(|_| {}, Box::new(EchoProver)).await;
    let peer = Peer::new().await;
    let here = phone.local_addr();
    let junk: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"\r\n\r\n".to_vec(),
        b"hello".to_vec(),
        (0..=255u8).cycle().take(4000).collect(),
        b"INVITE sip:alice@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9".to_vec(),
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKnobody\r\n\
From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: x\r\nCSeq: 1 BYE\r\n\r\n"
            .to_vec(),
        b"ACK sip:alice@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKa\r\n\
From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: nope\r\nCSeq: 1 ACK\r\n\r\n"
            .to_vec(),
        vec![b'A'; 60_000],
    ];
    for j in &junk {
        peer.send(here, j).await;
    }
    assert!(
        peer.drain(Duration::from_millis(300)).await.is_empty(),
        "no answer to garbage"
    );
    // A request without a branch gets 400; a Require the phone lacks gets 420.
    let no_branch = "OPTIONS sip:alice@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9\r\n\
From: <sip:a@b>;tag=1\r\nTo: <sip:alice@example.com>\r\nCall-ID: nb\r\nCSeq: 1 OPTIONS\r\n\r\n";
    peer.send(here, no_branch).await;
    peer.response(Method::Options, 400).await;
    let uac = Uac::new("call-require").await;
    uac.peer
        .send(here, uac.invite(here, "Require: 100rel, timer\r\n"))
        .await;
    let (bad, _) = uac.peer.response(Method::Invite, 420).await;
    assert_eq!(header(&bad, "Unsupported"), Some("100rel, timer"));
    // Still alive and well.
    let options = format!(
        "OPTIONS sip:alice@{here} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKopt1\r\n\
From: <sip:a@b>;tag=1\r\nTo: <sip:alice@example.com>\r\nCall-ID: opt\r\nCSeq: 1 OPTIONS\r\n\r\n",
        peer.addr
    );
    peer.send(here, &options).await;
    let (ok, first) = peer.response(Method::Options, 200).await;
    assert!(to_tag(&ok).len() >= 8);
    // A retransmitted OPTIONS gets the same response (non-INVITE server transaction).
    peer.send(here, &options).await;
    let (_, again) = peer.response(Method::Options, 200).await;
    assert_eq!(first, again);
    let unexpected: Vec<PhoneEvent> = std::iter::from_fn(|| events.try_recv().ok())
        .filter(|e| !matches!(e, PhoneEvent::Registered { .. }))
        .collect();
    assert!(unexpected.is_empty(), "{unexpected:?}");
    // An unknown method.
    let msg = options
        .replace("OPTIONS", "MESSAGE")
        .replace("z9hG4bKopt1", "z9hG4bKmsg1");
    peer.send(here, msg).await;
    peer.response(Method::Message, 405).await;
    phone.shutdown().await.expect("shutdown");
}
