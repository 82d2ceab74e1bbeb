//! `trustring admin …` against a running server: the operator's round trip (issue #5 point 5).
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{Server, TOKEN};

/// Runs `trustring admin --server URL ARGS…`; returns (success, stdout + stderr).
fn admin(s: &Server, token: Option<&str>, args: &[&str]) -> (bool, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_trustring"));
    c.arg("admin")
        .args(["--server", &format!("http://{}", s.http)])
        .arg("--data")
        .arg(&s.data)
        .args(args)
        .env_remove("TRUSTRING_ADMIN_TOKEN");
    if let Some(t) = token {
        c.env("TRUSTRING_ADMIN_TOKEN", t);
    }
    let out = c.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn ok(s: &Server, args: &[&str]) -> String {
    let (success, out) = admin(s, Some(TOKEN), args);
    assert!(success, "admin {args:?}: {out}");
    out
}

#[test]
fn operator_round_trip() {
    let s = Server::start();
    let out = ok(
        &s,
        &[
            "subscribers",
            "add",
            "alice",
            "--password",
            "s3cret",
            "--enterprise",
            "acme",
        ],
    );
    assert!(out.contains("created sip:alice@localhost"), "{out}");
    let out = ok(&s, &["subscribers", "list"]);
    assert!(out.starts_with("USER"), "a table with a header: {out}");
    assert!(out.contains("alice") && out.contains("acme"), "{out}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&s, &["--json", "subscribers", "list"])).unwrap();
    assert_eq!(json[0]["aor"], "sip:alice@localhost");
    let out = ok(&s, &["subscribers", "show", "alice"]);
    assert!(
        out.contains("registrations:") && out.contains("(none)"),
        "{out}"
    );

    let out = ok(&s, &["pool", "load", "+15550100000..+15550100009"]);
    assert!(
        out.contains("added: 10") && out.contains("free: 10"),
        "{out}"
    );
    let out = ok(&s, &["pool", "show"]);
    assert!(
        out.contains("free: 10") && out.contains("quarantined: 0"),
        "{out}"
    );

    let eula = s.data.join("eula.txt");
    std::fs::write(&eula, "Be nice.").unwrap();
    let out = ok(
        &s,
        &[
            "eulas",
            "publish",
            "2026-1",
            "--file",
            eula.to_str().unwrap(),
        ],
    );
    assert!(out.contains("published EULA 2026-1"), "{out}");
    assert!(ok(&s, &["eulas", "list"]).contains("2026-1"));

    let out = ok(&s, &["enrol", "alice"]);
    assert!(out.contains("enrolment code for alice: "), "{out}");
    let out = ok(&s, &["devices", "list"]);
    assert!(out.contains("(none)"), "{out}");
    let (success, out) = admin(
        &s,
        Some(TOKEN),
        &["devices", "number", "d-none", "+15551230001"],
    );
    assert!(!success);
    assert!(out.contains("404") && out.contains("d-none"), "{out}");
    let out = ok(&s, &["events"]);
    assert!(out.starts_with("ID"), "{out}");

    // Errors are the API's, readable, with a non-zero exit.
    let (success, out) = admin(&s, Some(TOKEN), &["subscribers", "show", "nobody"]);
    assert!(!success);
    assert!(out.contains("404") && out.contains("not_found"), "{out}");
    let (success, out) = admin(&s, Some("wrong"), &["subscribers", "list"]);
    assert!(!success);
    assert!(out.contains("401"), "{out}");
    // Without the env variable the token is read from the data directory, where `serve`
    // keeps it only when it generated it; here it came from the env, so there is none.
    let (success, out) = admin(&s, None, &["subscribers", "list"]);
    assert!(!success);
    assert!(out.contains("admin-token"), "{out}");
    std::fs::write(s.data.join("admin-token"), format!("{TOKEN}\n")).unwrap();
    let (success, out) = admin(&s, None, &["subscribers", "list"]);
    assert!(
        success && out.contains("alice"),
        "token read from the data dir: {out}"
    );

    let out = ok(&s, &["subscribers", "delete", "alice"]);
    assert!(out.contains("deleted alice"), "{out}");
    assert!(ok(&s, &["subscribers", "list"]).contains("(none)"));
}
