//! `trustring serve --db postgres://…` end to end (issue #15 item 1, SPEC R24): a real
//! PostgreSQL (the store tests' throwaway cluster), the real server, SIPp devices and caller.
//! A forked call leaves its CDR in PostgreSQL (and no SQLite file appears); after a restart on
//! the same database the subscriber and the CDR are still there, and `trustring cdr
//! verify|export --db` read and check them from PostgreSQL.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;
#[path = "../../../crates/store/tests/pg/mod.rs"]
mod pg;

use std::process::Command;
use std::time::Duration;

use common::{Server, caller, device, free_port, serial};

/// Runs `trustring ARGS`: success, standard output, standard error.
fn trustring(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_trustring"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_call_on_postgresql_is_durable_across_a_restart() {
    let _g = serial();
    let Some((_, url)) = pg::database() else {
        return; // no PostgreSQL here and not CI: `pg` said so loudly
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let mut s = Server::start_with(&data, port, &["--db", &url]);
    assert!(
        !data.join("trustring.db").exists(),
        "no SQLite file beside PostgreSQL"
    );
    s.add_subscriber("alice", "s3cret-passw0rd");
    let mut desk = device(&s, "uas-answer.xml", 300, false);
    let mut mobile = device(&s, "uas-ring-cancel.xml", 0, false);
    caller(&s, "uac-call.xml").arg("-d").arg("500").run_ok();
    desk.expect_ok(Duration::from_secs(45));
    mobile.expect_ok(Duration::from_secs(45));
    let data_arg = data.to_str().unwrap();
    let (ok, out, err) = trustring(&["cdr", "verify", "--data", data_arg, "--db", &url]);
    assert!(
        ok && out.contains("1 CDR(s): hash chain intact"),
        "{out}{err}"
    );
    assert!(!out.contains("NOT checked"), "signed records: {out}");

    // The same node again, on the same database: nothing was lost.
    s.stop();
    let s = Server::start_with(&data, port, &["--db", &url]);
    let (c, b) = s.api("GET", "/api/v1/subscribers/alice", None);
    assert_eq!(c, 200, "{b}");
    let (c, b) = s.api("GET", "/api/v1/cdrs", None);
    assert_eq!(c, 200, "{b}");
    let cdrs: serde_json::Value = serde_json::from_str(&b).unwrap();
    let records = cdrs["records"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{b}");
    assert_eq!(records[0]["final_status"], 200, "{b}");
    let (ok, out, err) = trustring(&[
        "cdr", "export", "--data", data_arg, "--db", &url, "--format", "json",
    ]);
    assert!(ok, "{out}{err}");
    let export: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(export["records"].as_array().unwrap().len(), 1, "{out}");
    // The password-free URL is what the log shows; a wrong database is a clear error.
    let (ok, out, err) = trustring(&[
        "cdr",
        "verify",
        "--data",
        data_arg,
        "--db",
        "postgres://nobody:hunter2@127.0.0.1:1/none",
    ]);
    assert!(!ok, "{out}");
    assert!(err.contains("nobody:***@"), "{err}");
    assert!(!err.contains("hunter2"), "password leaked: {err}");
}
