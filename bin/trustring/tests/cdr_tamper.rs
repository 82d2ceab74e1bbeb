//! CDR tamper evidence against the real server's database (issue 12 item 9, SECURITY.md
//! threats 9 and 18): six busy calls leave six signed records; then, on copies of the data
//! directory, someone with the database file (but not the signing key) deletes a billing
//! entity's rows, edits record 1 and re-chains, or drops the newest records. `trustring cdr
//! verify --public-key` names each, and the server refuses to start (and so to bury the
//! evidence under new records) on the truncated database.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, TOKEN, caller, free_port, register, serial, sipp, wait_timeout};
use rusqlite::Connection;

const PASSWORD: &str = "correct horse battery staple";
const CALLS: usize = 6;

fn trustring() -> Command {
    Command::new(env!("CARGO_BIN_EXE_trustring"))
}

/// `trustring cdr ARGS --data DATA`: (success, stdout + stderr).
fn cdr(data: &Path, args: &[&str]) -> (bool, String) {
    let out = trustring()
        .arg("cdr")
        .args(args)
        .arg("--data")
        .arg(data)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn records(data: &Path) -> usize {
    let (ok, out) = cdr(data, &["export", "--format", "json"]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["records"].as_array().unwrap().len()
}

/// A copy of the (stopped) server's data directory.
fn copy(data: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(data).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
        }
    }
    dir
}

fn db(data: &Path) -> Connection {
    let c = Connection::open(data.join("trustring.db")).unwrap();
    // What someone with the file does first: no foreign keys, no append-only triggers.
    c.execute_batch(
        "PRAGMA foreign_keys = OFF;
         DROP TRIGGER IF EXISTS cdrs_no_update; DROP TRIGGER IF EXISTS cdrs_no_delete;
         DROP TRIGGER IF EXISTS cdr_entities_no_update;
         DROP TRIGGER IF EXISTS cdr_entities_no_delete;",
    )
    .unwrap();
    c
}

/// Re-computes every record's hash in the documented format (`store::cdr_hash`), as someone
/// who read docs/cdr.md would after an edit; the signatures cannot be redone without the key,
/// so they are removed (the chain then looks like records from before signing began).
fn rechain(c: &Connection) {
    let rows: Vec<(i64, String, i64, i64, String)> = c
        .prepare("SELECT id, call_id, setup_ms, end_ms, body FROM cdrs ORDER BY id")
        .unwrap()
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut prev = "0".repeat(64);
    for (id, call_id, setup_ms, end_ms, body) in rows {
        let entities: Vec<String> = c
            .prepare("SELECT entity FROM cdr_entities WHERE cdr_id = ?1 ORDER BY entity")
            .unwrap()
            .query_map([id], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let refs: Vec<&str> = entities.iter().map(String::as_str).collect();
        let hash = store::cdr_hash(&prev, id, &call_id, setup_ms, end_ms, &refs, &body);
        c.execute(
            "UPDATE cdrs SET prev_hash = ?1, hash = ?2, sig = NULL WHERE id = ?3",
            rusqlite::params![prev, hash, id],
        )
        .unwrap();
        prev = hash;
    }
}

/// `trustring serve` on `data` must refuse to start, saying why.
fn serve_refuses(data: &Path, why: &str) {
    let log = data.join("refused.log");
    let mut child = trustring()
        .args(["serve", "--domain", "localhost"])
        .args(["--sip", &format!("127.0.0.1:{}", free_port())])
        .args(["--http", &format!("127.0.0.1:{}", free_port())])
        .args(["--enrol", "127.0.0.1:0"])
        .args(["--sip-tls", &format!("127.0.0.1:{}", free_port())])
        .arg("--data")
        .arg(data)
        .env("TRUSTRING_ADMIN_TOKEN", TOKEN)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let status = wait_timeout(&mut child, Duration::from_secs(20));
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        status.is_some_and(|s| !s.success()),
        "the server started on tampered records: {text}"
    );
    assert!(text.contains(why), "{text}");
}

#[test]
fn cdr_tampering_on_the_real_database_is_named_by_verify_with_the_public_key() {
    let _g = serial();
    let mut s = Server::start();
    let (c, b) = s.api(
        "POST",
        "/api/v1/subscribers",
        Some(&format!(
            r#"{{"user":"alice","password":"{PASSWORD}","enterprise":"acme"}}"#
        )),
    );
    assert_eq!(c, 201, "{b}");
    // One busy device for alice, six refused calls: six records, each with an acme leg.
    let mut busy = sipp("uas-busy.xml")
        .arg("-m")
        .arg(&CALLS.to_string())
        .spawn();
    std::thread::sleep(Duration::from_millis(150));
    register(&s, "alice", PASSWORD, busy.port, false);
    caller(&s, "uac-busy.xml")
        .arg("-m")
        .arg(&CALLS.to_string())
        .run_ok();
    busy.expect_ok(Duration::from_secs(45));
    let t0 = Instant::now();
    while records(&s.data) < CALLS && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(records(&s.data), CALLS);
    let (c, b) = s.api("GET", "/api/v1/cdrs?entity=acme", None);
    assert_eq!(c, 200, "{b}");
    let listed: serde_json::Value = serde_json::from_str(&b).unwrap();
    assert_eq!(listed["records"].as_array().unwrap().len(), CALLS, "{b}");
    assert!(
        listed["records"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["sig"].as_str().is_some_and(|x| x.len() == 128)),
        "every record is signed: {b}"
    );
    s.stop();

    // The key outside the database: 0600, its public half exported, kept elsewhere.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(s.data.join("cdr-signing-key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let kept = tempfile::tempdir().unwrap();
    let (ok, public) = cdr(&s.data, &["public-key"]);
    assert!(ok, "{public}");
    let public = public.trim().to_owned();
    assert_eq!(public.len(), 64, "{public}");
    let key_file = kept.path().join("cdr-public-key");
    std::fs::write(&key_file, format!("{public}\n")).unwrap();
    let (ok, head) = cdr(&s.data, &["head"]);
    assert!(ok, "{head}");
    let head_file = kept.path().join("cdr-head");
    std::fs::write(&head_file, &head).unwrap();
    let key_arg = key_file.to_str().unwrap().to_owned();
    let verify = |data: &Path, extra: &[&str]| -> (bool, String) {
        let mut args = vec!["verify", "--public-key", &key_arg];
        args.extend_from_slice(extra);
        cdr(data, &args)
    };
    let (ok, out) = verify(&s.data, &[]);
    assert!(ok, "{out}");
    assert!(
        out.contains("6 CDR(s): hash chain intact") && out.contains("6 record(s) signed"),
        "{out}"
    );
    assert!(out.contains("record 6, matches"), "{out}");
    let (ok, out) = cdr(&s.data, &["verify", "--public-key", &public]);
    assert!(ok, "the key as hex too: {out}");

    // 1. acme's entity rows deleted: `?entity=acme` would list none of the six.
    let a = copy(&s.data);
    db(a.path())
        .execute("DELETE FROM cdr_entities WHERE entity = 'acme'", [])
        .unwrap();
    let (ok, out) = verify(a.path(), &[]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("CDR 1:")
            && out.contains("billing-entity rows")
            && out.contains("missing acme"),
        "{out}"
    );
    // Even without the key: the rows are checked against the hashed record.
    let (ok, out) = cdr(a.path(), &["verify"]);
    assert!(!ok && out.contains("missing acme"), "{out}");

    // 1b. The setup time or Call-ID column moved (the record leaves its billing period).
    let a = copy(&s.data);
    db(a.path())
        .execute(
            "UPDATE cdrs SET setup_ms = setup_ms - 86400000 WHERE id = 2",
            [],
        )
        .unwrap();
    let (ok, out) = verify(a.path(), &[]);
    assert!(
        !ok && out.contains("CDR 2:") && out.contains("setup_ms column"),
        "{out}"
    );
    let a = copy(&s.data);
    db(a.path())
        .execute("UPDATE cdrs SET call_id = 'someone-else' WHERE id = 3", [])
        .unwrap();
    let (ok, out) = verify(a.path(), &[]);
    assert!(
        !ok && out.contains("CDR 3:") && out.contains("call_id column"),
        "{out}"
    );

    // 2. Record 1 edited, the newest deleted, every hash recomputed, signatures removed.
    let b = copy(&s.data);
    {
        let c = db(b.path());
        let n = c
            .execute(
                "UPDATE cdrs SET body = replace(body, '\"final_status\":486', '\"final_status\":200') \
                 WHERE id = 1",
                [],
            )
            .unwrap();
        assert_eq!(n, 1);
        c.execute_batch(
            "DELETE FROM cdr_entities WHERE cdr_id = 6; DELETE FROM cdrs WHERE id = 6;",
        )
        .unwrap();
        rechain(&c);
    }
    // The chain alone is consistent again (what the attack relied on)...
    let unkeyed = copy(b.path());
    std::fs::remove_file(unkeyed.path().join("cdr-signing-key")).unwrap();
    std::fs::remove_file(unkeyed.path().join("cdr-head")).unwrap();
    let (ok, out) = cdr(unkeyed.path(), &["verify"]);
    assert!(ok, "without key or head the rewrite is invisible: {out}");
    // ...but not to the public key and the signed head, which names record 6.
    let (ok, out) = verify(b.path(), &[]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("CDR 6:") && out.contains("records 6..6 were removed"),
        "{out}"
    );
    // Record 6 restored as it was (rows copied back): the head's hash at 6 no longer matches.
    {
        let c = db(b.path());
        c.execute(
            "ATTACH DATABASE ?1 AS orig",
            [s.data.join("trustring.db").to_str().unwrap()],
        )
        .unwrap();
        c.execute_batch(
            "INSERT INTO cdrs SELECT * FROM orig.cdrs WHERE id = 6;
             INSERT INTO cdr_entities SELECT * FROM orig.cdr_entities WHERE cdr_id = 6;
             DETACH DATABASE orig;",
        )
        .unwrap();
        rechain(&c);
    }
    let (ok, out) = verify(b.path(), &[]);
    assert!(
        !ok && out.contains("CDR 6:") && out.contains("rewritten"),
        "{out}"
    );
    // The head removed too: its absence is named, and a head kept elsewhere still catches
    // the rewrite.
    std::fs::remove_file(b.path().join("cdr-head")).unwrap();
    let (ok, out) = verify(b.path(), &[]);
    assert!(!ok && out.contains("cdr-head: missing"), "{out}");
    let (ok, out) = verify(b.path(), &["--head", head_file.to_str().unwrap()]);
    assert!(
        !ok && out.contains("cdr-head: missing") && out.contains("rewritten"),
        "{out}"
    );
    // And the same edit with the old signatures left in place fails on record 1.
    let b2 = copy(&s.data);
    {
        let c = db(b2.path());
        c.execute(
            "UPDATE cdrs SET body = replace(body, '\"final_status\":486', '\"final_status\":200') \
             WHERE id = 1",
            [],
        )
        .unwrap();
        let sigs: Vec<(i64, String)> = c
            .prepare("SELECT id, sig FROM cdrs")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        rechain(&c);
        for (id, sig) in sigs {
            c.execute(
                "UPDATE cdrs SET sig = ?1 WHERE id = ?2",
                rusqlite::params![sig, id],
            )
            .unwrap();
        }
    }
    let (ok, out) = verify(b2.path(), &[]);
    assert!(
        !ok && out.contains("CDR 1:") && out.contains("signature"),
        "{out}"
    );

    // 3. The two newest records dropped (rows and entity rows): the chain is intact, the
    // signed head says it went further.
    let t = copy(&s.data);
    db(t.path())
        .execute_batch(
            "DELETE FROM cdr_entities WHERE cdr_id >= 5; DELETE FROM cdrs WHERE id >= 5;",
        )
        .unwrap();
    let (ok, out) = verify(t.path(), &[]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("CDR 5:") && out.contains("records 5..6 were removed"),
        "{out}"
    );
    // The data directory's head removed as well: named, and a head kept elsewhere names the
    // same truncation.
    std::fs::remove_file(t.path().join("cdr-head")).unwrap();
    let (ok, out) = verify(t.path(), &["--head", head_file.to_str().unwrap()]);
    assert!(
        !ok && out.contains("cdr-head: missing") && out.contains("records 5..6 were removed"),
        "{out}"
    );
    std::fs::copy(&head_file, t.path().join("cdr-head")).unwrap();
    // The server does not sign on over the gap.
    serve_refuses(t.path(), "records were removed");

    // The untouched original still verifies and serves.
    let (ok, out) = verify(&s.data, &["--head", head_file.to_str().unwrap()]);
    assert!(ok, "{out}");
    drop(busy);
}
