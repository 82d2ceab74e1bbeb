//! `trustring demo` as a test (issue #5 point 1): exit 0, a ladder with the INVITE to both
//! branches and the CANCEL with its Reason, the trust proof result and the CDR line; nothing
//! left running.
#![allow(missing_docs, clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn demo_runs_a_forked_call_end_to_end() {
    let t0 = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_trustring"))
        .args(["demo", "--answer-after-ms", "600", "--hold-ms", "500"])
        .env_remove("TRUSTRING_ADMIN_TOKEN")
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
    assert!(t0.elapsed() < Duration::from_secs(60), "{text}");
    let ladder: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.contains("ladder diagram"))
        .take_while(|l| !l.contains("fork skew"))
        .collect();
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
    assert!(text.contains("fork skew: "), "{text}");
    assert!(text.contains("-> VERIFIED"), "{text}");
    assert!(
        text.contains("CDR 1: ") && text.contains("status 200"),
        "{text}"
    );
    assert!(text.contains("demo OK"), "{text}");
}
