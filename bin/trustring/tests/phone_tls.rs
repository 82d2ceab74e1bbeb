//! The phone crate's SIP over TLS against the real server (issue #11 item 7): the phone
//! connects to `serve --sip-tls` with the server's key pinned, registers over that
//! connection (Via `SIP/2.0/TLS`, Contact `;transport=tls`), and takes a call from a SIPp
//! caller over the same connection (the server reaches a TLS contact only over the
//! connection it registered on); a phone pinned to another key is refused before any SIP.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Server, caller};
use phone::{Phone, PhoneConfig, PhoneError, PhoneEvent, SipTransport, TlsClient};
use tls::pki_types::CertificateDer;
use tls::pki_types::pem::PemObject;

const PASSWORD: &str = "s3cret-passw0rd";

struct NoProver;

impl phone::Prover for NoProver {
    fn prove(&mut self, _: &str, _: &str, _: &str) -> Result<String, String> {
        Err("no zone".into())
    }
}

/// The server's key fingerprint, from the certificate it made under its data directory.
fn server_fingerprint(s: &Server) -> tls::Fingerprint {
    let cert = CertificateDer::from_pem_file(s.data.join("tls").join(tls::CERT_FILE)).unwrap();
    tls::spki_fingerprint(&cert).unwrap()
}

fn tls_config(s: &Server, pin: tls::Fingerprint) -> PhoneConfig {
    let mut c = PhoneConfig::new(
        s.sip_tls,
        "localhost",
        "alice",
        "alice",
        PASSWORD,
        "desk-tls",
    );
    c.local = "127.0.0.1:0".parse().unwrap();
    c.transport = SipTransport::Tls(TlsClient::pinned(pin).unwrap());
    c.answer_after = Some(Duration::from_millis(200));
    c
}

/// The next event matching `pred` within 10 s (others are skipped).
async fn event(
    rx: &mut tokio::sync::mpsc::Receiver<PhoneEvent>,
    pred: impl Fn(&PhoneEvent) -> bool,
) -> PhoneEvent {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(e)) if pred(&e) => return e,
            Ok(Some(_)) => {}
            Ok(None) => panic!("the phone's events ended"),
            Err(_) => panic!("no matching phone event in 10 s"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phone_registers_and_takes_a_call_over_one_tls_connection() {
    let s = Server::start();
    s.add_subscriber("alice", PASSWORD);
    let (phone, mut events) =
        Phone::start(tls_config(&s, server_fingerprint(&s)), Box::new(NoProver))
            .await
            .unwrap();
    event(&mut events, |e| matches!(e, PhoneEvent::Registered { .. })).await;
    let ours = format!("alice@{};transport=tls", phone.local_addr());
    let bindings = s.registrations_when("alice", |b| b.contains(&ours));
    assert!(bindings.contains(&ours), "{ours} in {bindings}");

    // A caller over UDP: the server forks to the TLS binding over its connection.
    let call = caller(&s, "uac-call.xml").arg("-d").arg("500");
    let sipp = tokio::task::spawn_blocking(move || call.run_ok());
    let call_id = match event(&mut events, |e| matches!(e, PhoneEvent::Ringing { .. })).await {
        PhoneEvent::Ringing { call_id, .. } => call_id,
        e => panic!("{e}"),
    };
    event(&mut events, |e| matches!(e, PhoneEvent::Answered { .. })).await;
    event(&mut events, |e| {
        matches!(
            e,
            PhoneEvent::Ended {
                by_remote: true,
                ..
            }
        )
    })
    .await;
    sipp.await.unwrap();

    // The server's trace: everything to and from the phone went over its TLS connection.
    let (code, body) = s.api("GET", &format!("/api/v1/calls/{call_id}/trace"), None);
    assert_eq!(code, 200, "{body}");
    let trace: serde_json::Value = serde_json::from_str(&body).unwrap();
    let ours: Vec<&serde_json::Value> = trace["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["peer"] == phone.local_addr().to_string())
        .collect();
    let labels: Vec<&str> = ours.iter().filter_map(|m| m["label"].as_str()).collect();
    for want in ["INVITE", "ACK", "BYE"] {
        assert!(labels.contains(&want), "{want} to the phone: {body}");
    }
    assert!(labels.iter().any(|l| l.starts_with("200")), "{body}");
    assert!(ours.iter().all(|m| m["transport"] == "TLS"), "{body}");

    // After a shutdown the binding is gone (unregistered, its connection closed).
    phone.shutdown().await.unwrap();
    let bindings = s.registrations_when("alice", |b| !b.contains("transport=tls"));
    assert!(!bindings.contains("transport=tls"), "{bindings}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phone_refuses_a_server_with_another_key() {
    let s = Server::start();
    s.add_subscriber("alice", PASSWORD);
    let wrong = tls::Fingerprint([7; 32]);
    match Phone::start(tls_config(&s, wrong), Box::new(NoProver)).await {
        Err(PhoneError::Tls(reason)) => assert!(reason.contains("handshake"), "{reason}"),
        Err(e) => panic!("expected a TLS error, got {e}"),
        Ok(_) => panic!("a phone pinned to another key connected"),
    }
    let bindings = s.registrations("alice");
    assert!(!bindings.contains("alice@"), "{bindings}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phone_says_when_its_connection_is_gone() {
    let mut s = Server::start();
    s.add_subscriber("alice", PASSWORD);
    let (phone, mut events) =
        Phone::start(tls_config(&s, server_fingerprint(&s)), Box::new(NoProver))
            .await
            .unwrap();
    event(&mut events, |e| matches!(e, PhoneEvent::Registered { .. })).await;
    // The server stops: its end of the connection closes, and the binding with it.
    tokio::task::spawn_blocking(move || s.stop()).await.unwrap();
    event(&mut events, |e| {
        matches!(e, PhoneEvent::Disconnected { .. })
    })
    .await;
    // The agent has stopped by itself.
    tokio::time::timeout(Duration::from_secs(5), phone.shutdown())
        .await
        .unwrap()
        .unwrap();
}
