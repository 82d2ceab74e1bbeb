//! Interop with a third-party caller: SIPp 3.6.1 (`sip-tester`) sends a challenged INVITE
//! straight to the phone (`tests/sipp/uac-challenge.xml`). Skipped when `sipp` is not
//! installed. Judged by SIPp's exit code only (0: the call went as the scenario demands).

#![allow(missing_docs)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use trustring_phone::{Phone, PhoneEvent};

/// A UDP port that was free a moment ago.
fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[tokio::test]
async fn sipp_caller_gets_proofs_and_completes_the_call() {
    // SIPp (Debian sip-tester) is installed by .ci/run and needed by the end-to-end tests.
    assert!(
        Command::new("sipp").arg("-v").output().is_ok(),
        "sipp is not installed: apt-get install -y sip-tester"
    );
    let reg = Registrar::start(RegistrarOpts::default()).await;
    let mut cfg = config(reg.addr);
    cfg.answer_after = Some(Duration::from_millis(200));
    let (phone, mut events) = Phone::start(cfg, Box::new(EchoProver))
        .await
        .expect("start");
    event(&mut events, |e| matches!(e, PhoneEvent::Registered { .. })).await;

    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sipp/uac-challenge.xml");
    let errors = std::env::temp_dir().join(format!("phone-sipp-{}.err", std::process::id()));
    let mut sipp = Command::new("sipp");
    sipp.arg("-sf")
        .arg(&scenario)
        .args(["-s", AOR_USER, "-i", "127.0.0.1", "-p"])
        .arg(free_port().to_string())
        .args(["-m", "1", "-nostdin", "-timeout", "20s", "-timeout_error"])
        .args(["-recv_timeout", "8000", "-trace_err", "-error_file"])
        .arg(&errors)
        .arg(phone.local_addr().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = sipp.spawn().expect("sipp starts");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("sipp status") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sipp did not finish within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let log = std::fs::read_to_string(&errors).unwrap_or_default();
    let _ = std::fs::remove_file(&errors);
    assert!(status.success(), "sipp failed ({status}):\n{log}");

    assert!(matches!(
        event(&mut events, |e| matches!(e, PhoneEvent::Ringing { .. })).await,
        PhoneEvent::Ringing {
            challenged: true,
            ..
        }
    ));
    event(&mut events, |e| matches!(e, PhoneEvent::Answered { .. })).await;
    assert!(matches!(
        event(&mut events, |e| matches!(e, PhoneEvent::Ended { .. })).await,
        PhoneEvent::Ended {
            by_remote: true,
            ..
        }
    ));
    phone.shutdown().await.expect("shutdown");
}
