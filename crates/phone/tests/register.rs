//! Registration against an in-test registrar built from sip-core's authenticator.

#![allow(missing_docs)]

mod common;

use std::time::Duration;

use common::*;
use sip_core::auth::{Algorithm, Credentials};
use sip_core::message::{HeaderName, NameAddr};
use trustring_phone::{Phone, PhoneEvent};

#[tokio::test]
async fn registers_with_sha256_digest_and_unregisters_on_shutdown() {
    let mut reg = Registrar::start(RegistrarOpts::default()).await;
    let (phone, mut events) = Phone::start(config(reg.addr), Box::new(EchoProver))
        .await
        .expect("start");

    let first = reg.next(WAIT).await.expect("first REGISTER");
    assert_eq!(
        first.verdict,
        Verdict::Challenged {
            stale: false,
            had_credentials: false
        }
    );
    let r = &first.request;
    assert_eq!(r.uri.to_string(), format!("sip:{DOMAIN}"));
    assert_eq!(r.to().expect("To").uri.to_string(), "sip:alice@example.com");
    assert_eq!(
        r.from().expect("From").uri.to_string(),
        "sip:alice@example.com"
    );
    assert_eq!(r.headers.get(&HeaderName::Expires), Some("300"));
    let contact =
        NameAddr::parse(r.headers.get(&HeaderName::Contact).expect("Contact")).expect("contact");
    assert_eq!(contact.uri.param("trustring-device"), Some(Some(DEVICE)));
    assert_eq!(contact.uri.port, Some(phone.local_addr().port()));

    let second = reg.next(WAIT).await.expect("authenticated REGISTER");
    assert_eq!(
        second.verdict,
        Verdict::Accepted {
            algorithm: Algorithm::Sha256,
            expires: 60
        }
    );
    let creds = Credentials::parse(
        second
            .request
            .headers
            .get(&HeaderName::Authorization)
            .expect("Authorization"),
    )
    .expect("credentials");
    assert_eq!(creds.username, AUTH_USER);
    assert_eq!(creds.qop.as_deref(), Some("auth"));
    assert_eq!(creds.nc.as_deref(), Some("00000001"));
    assert!(creds.cnonce.is_some_and(|c| c.len() >= 16));
    assert_eq!(second.request.call_id(), first.request.call_id());
    assert_eq!(second.request.cseq().seq, first.request.cseq().seq + 1);
    // Our own binding's expiry is used, not the other contact's.
    assert_eq!(
        event(&mut events, |e| matches!(e, PhoneEvent::Registered { .. })).await,
        PhoneEvent::Registered { expires: 60 }
    );

    tokio::time::timeout(WAIT, phone.shutdown())
        .await
        .expect("shutdown within bounds")
        .expect("shutdown");
    let bye = reg.next(WAIT).await.expect("unregister");
    assert_eq!(bye.request.headers.get(&HeaderName::Expires), Some("0"));
    assert!(
        matches!(bye.verdict, Verdict::Accepted { expires: 0, .. }),
        "unregister authenticated with the cached challenge: {:?}",
        bye.verdict
    );
    assert_eq!(bye.request.call_id(), first.request.call_id());
}

#[tokio::test]
async fn refreshes_at_half_expiry_and_answers_stale_challenges() {
    let mut reg = Registrar::start(RegistrarOpts {
        grant: 2,
        nonce_ttl: Duration::from_millis(600),
        ..RegistrarOpts::default()
    })
    .await;
    let (phone, mut events) = Phone::start(config(reg.addr), Box::new(EchoProver))
        .await
        .expect("start");
    event(&mut events, |e| matches!(e, PhoneEvent::Registered { .. })).await;
    let mut verdicts = Vec::new();
    for _ in 0..2 {
        verdicts.push(reg.next(WAIT).await.expect("initial").verdict);
    }
    // About a second later: a refresh with the cached nonce (now stale), the stale
    // challenge answered, and a second registration.
    let t0 = std::time::Instant::now();
    assert_eq!(
        event(&mut events, |e| matches!(e, PhoneEvent::Registered { .. })).await,
        PhoneEvent::Registered { expires: 2 }
    );
    let waited = t0.elapsed();
    assert!(
        waited > Duration::from_millis(700) && waited < Duration::from_millis(1600),
        "refresh at half of 2 s, took {waited:?}"
    );
    while let Some(s) = reg.next(Duration::from_millis(100)).await {
        verdicts.push(s.verdict);
    }
    assert!(
        verdicts.contains(&Verdict::Challenged {
            stale: true,
            had_credentials: true
        }),
        "{verdicts:?}"
    );
    assert!(
        matches!(verdicts.last(), Some(Verdict::Accepted { .. })),
        "{verdicts:?}"
    );
    phone.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn wrong_password_is_reported_without_looping() {
    let mut reg = Registrar::start(RegistrarOpts {
        password: "something else".to_owned(),
        ..RegistrarOpts::default()
    })
    .await;
    let (phone, mut events) = Phone::start(config(reg.addr), Box::new(EchoProver))
        .await
        .expect("start");
    assert_eq!(
        event(&mut events, |e| matches!(
            e,
            PhoneEvent::RegistrationFailed { .. }
        ))
        .await,
        PhoneEvent::RegistrationFailed { status: 401 }
    );
    let mut seen = Vec::new();
    while let Some(s) = reg.next(Duration::from_millis(300)).await {
        seen.push(s.verdict);
    }
    assert_eq!(
        seen,
        [
            Verdict::Challenged {
                stale: false,
                had_credentials: false
            },
            Verdict::Challenged {
                stale: false,
                had_credentials: true
            }
        ]
    );
    // Nothing bound: shutdown sends no unregister and returns at once.
    tokio::time::timeout(Duration::from_secs(1), phone.shutdown())
        .await
        .expect("prompt shutdown")
        .expect("shutdown");
    assert!(reg.next(Duration::from_millis(200)).await.is_none());
}

#[tokio::test]
async fn retransmits_an_unanswered_register() {
    let mut reg = Registrar::start(RegistrarOpts {
        drop_first: 1,
        ..RegistrarOpts::default()
    })
    .await;
    let (phone, mut events) = Phone::start(config(reg.addr), Box::new(EchoProver))
        .await
        .expect("start");
    let dropped = reg.next(WAIT).await.expect("first");
    assert_eq!(dropped.verdict, Verdict::Dropped);
    let t0 = std::time::Instant::now();
    let again = reg.next(WAIT).await.expect("retransmission");
    let gap = t0.elapsed();
    assert!(
        gap > Duration::from_millis(350) && gap < Duration::from_millis(900),
        "timer E starts at T1 (500 ms), took {gap:?}"
    );
    assert_eq!(
        again.raw, dropped.raw,
        "a retransmission is the same request"
    );
    event(&mut events, |e| matches!(e, PhoneEvent::Registered { .. })).await;
    phone.shutdown().await.expect("shutdown");
}
