//! `trustring demo` as a test (issue #5 point 1, issue #11 item 7): exit 0, a ladder with the
//! INVITE to both branches (the desktop and the gateway), the CANCEL with its Reason and the
//! phone line's ISUP messages, both fork skews, the trust proof result, the audio check, the
//! CDR and the gateway's leg record with the same Call-ID; every hop over TLS (the caller's
//! and the desktop's SIP, the gateway trunk, the phone's line), as the server's trace
//! recorded it, and plain UDP for the demo's own clients with `--plain-sip`; nothing left
//! running.
#![allow(missing_docs, clippy::unwrap_used)]

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The address after `label` in `text` (e.g. `SIP 127.0.0.1:5060`).
fn addr_after(text: &str, label: &str) -> SocketAddr {
    let at = text
        .find(label)
        .unwrap_or_else(|| panic!("no {label:?}:\n{text}"))
        + label.len();
    text[at..]
        .split([',', ')', ' '])
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address after {label:?}:\n{text}"))
}

/// Runs `trustring demo` with `extra` flags; its output, once it exited 0 within 30 s. One
/// demo at a time: each runs a server, a gateway and a call on a 2-core machine, and takes
/// its free ports by probing.
fn run_demo(extra: &[&str]) -> String {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let t0 = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_trustring"))
        .args(["demo", "--answer-after-ms", "600", "--hold-ms", "1000"])
        .args(extra)
        .env_remove("TRUSTRING_ADMIN_TOKEN")
        .env_remove("TRUSTRING_TRUNK_SECRET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "demo failed:\n{text}");
    assert!(t0.elapsed() < Duration::from_secs(30), "{text}");
    text
}

/// The ladder's lines (from its title to the fork skew).
fn ladder(text: &str) -> Vec<&str> {
    text.lines()
        .skip_while(|l| !l.contains("ladder diagram"))
        .take_while(|l| !l.contains("fork skew"))
        .collect()
}

/// Nothing left running: the server's and the gateway's ports are free again.
fn all_ports_free(text: &str) {
    for label in ["(SIP ", "SIP trunk "] {
        let a = addr_after(text, label);
        UdpSocket::bind(a).unwrap_or_else(|e| panic!("{a} still bound ({e}):\n{text}"));
    }
    for label in ["SIP over TLS ", "SIP trunk ", "phone lines "] {
        let a = addr_after(text, label);
        TcpListener::bind(a).unwrap_or_else(|e| panic!("{a} still bound ({e}):\n{text}"));
    }
}

#[test]
fn demo_runs_a_forked_call_through_the_gateway_end_to_end() {
    let text = run_demo(&[]);
    let ladder = ladder(&text);
    assert!(
        ladder
            .iter()
            .filter(|l| l.contains("INVITE") && l.contains('>'))
            .count()
            >= 3,
        "the caller's INVITE and one to each branch:\n{text}"
    );
    assert!(
        ladder
            .iter()
            .any(|l| l.contains("CANCEL") && l.contains("Reason: SIP;cause=200")),
        "CANCEL with Reason in the ladder:\n{text}"
    );
    assert!(
        ladder.iter().any(|l| l.contains("[trust challenge]")),
        "{text}"
    );
    assert!(
        ladder
            .iter()
            .any(|l| l.contains("ISUP IAM") && l.contains("[trust challenge]")),
        "the phone line's IAM with the challenge:\n{text}"
    );
    assert!(
        ladder.iter().any(|l| l.contains("ISUP ANM")),
        "the phone line's ANM:\n{text}"
    );
    assert!(text.contains("fork skew: "), "{text}");
    assert!(text.contains("fork skew through the gateway: "), "{text}");
    assert!(text.contains("-> VERIFIED"), "{text}");
    assert!(
        text.contains("audio: 1000 Hz tone received by the phone, purity"),
        "{text}"
    );
    assert!(
        text.contains("CDR 1: ") && text.contains("status 200"),
        "{text}"
    );
    assert!(
        text.contains("pstn answered billed to alice"),
        "the PSTN leg is billed to the user:\n{text}"
    );
    assert!(
        text.contains("gateway leg record 1: ") && text.contains("    same Call-ID: "),
        "{text}"
    );
    // The line attached over TLS, its zone having proved the phone's key (R27, R29).
    assert!(
        text.contains("over TLS (exchange key pinned); zone key proved"),
        "{text}"
    );
    // Every hop's transport as recorded: the lanes of the ladder, then hop by hop.
    let header = ladder.get(1).copied().unwrap_or_default();
    for lane in ["caller (TLS)", "desktop (TLS)", "gateway ("] {
        assert!(
            header.contains(lane),
            "lane {lane:?} in the ladder:\n{text}"
        );
    }
    for hop in [
        "      caller -> trustring: TLS\n",
        "      trustring -> desktop: TLS\n",
        "      trustring -> gateway: ",
        "      gateway -> phone line +15551230001: TR-ISUP over TLS (gateway key pinned)\n",
    ] {
        assert!(text.contains(hop), "hop {hop:?}:\n{text}");
    }
    // The desktop's binding is its TLS connection's.
    assert!(
        text.contains(";transport=tls;trustring-device=desktop voip cancelled-elsewhere"),
        "{text}"
    );
    assert!(
        text.contains("the caller's and the desktop's SIP went over TLS"),
        "{text}"
    );
    assert!(text.contains("demo OK"), "{text}");
    all_ports_free(&text);
}

#[test]
fn demo_plain_sip_keeps_udp_for_its_own_clients() {
    let text = run_demo(&["--plain-sip", "--plain-rtp"]);
    for hop in [
        "      caller -> trustring: UDP\n",
        "      trustring -> desktop: UDP\n",
    ] {
        assert!(text.contains(hop), "hop {hop:?}:\n{text}");
    }
    assert!(
        text.contains("the caller's and the desktop's SIP went over UDP, as asked (--plain-sip)"),
        "{text}"
    );
    assert!(
        text.contains("the caller's media was plain RTP, as asked (--plain-rtp)"),
        "{text}"
    );
    assert!(text.contains("demo OK"), "{text}");
    all_ports_free(&text);
}
