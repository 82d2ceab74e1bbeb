//! Runs the store battery (`tests/battery/`) against PostgreSQL: a throwaway cluster
//! (`tests/pg/`), a fresh database per test. Then what is PostgreSQL's own: several stores
//! ("nodes") on one database, restart durability, migrations, append-only CDRs, signing, and
//! calls from inside an async task.

#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

#[path = "battery/mod.rs"]
mod battery;
mod pg;

use std::sync::Arc;

use trustring_store::signing::HEAD_FILE;
use trustring_store::{Backend, CdrSigner, PostgresStore, SignedHead, Store};

fn open(url: &str) -> PostgresStore {
    PostgresStore::open(url).unwrap()
}

/// Runs each battery function against a fresh database (skipped, loudly, without
/// PostgreSQL outside CI).
macro_rules! backends {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(#[test]
            fn $name() {
                let Some((_, url)) = super::pg::database() else { return };
                super::battery::$name(&super::open(&url));
            })*
        }
    };
}

battery::with_battery_tests!(backends);

/// Write, drop the store (its pool and runtime), reopen, read.
#[test]
fn postgres_durable_across_reopen() {
    let Some((_, url)) = pg::database() else {
        return;
    };
    battery::battery_durable_across_reopen(&|| Box::new(open(&url)));
}

#[test]
fn postgres_provisioning_durable_across_reopen() {
    let Some((_, url)) = pg::database() else {
        return;
    };
    battery::battery_provisioning_durable_across_reopen(&|| Box::new(open(&url)));
}

/// 200 concurrent enrolments against 150 identifiers from one store (its pool of
/// connections): exactly 150 succeed, 50 find the pool exhausted, each identifier once.
#[test]
fn postgres_concurrent_enrol() {
    let Some((_, url)) = pg::database() else {
        return;
    };
    let store: Arc<dyn Store> = Arc::new(open(&url));
    battery::battery_concurrent_enrol(&[store]);
}

/// The same from three stores ("nodes") on one database.
#[test]
fn postgres_concurrent_enrol_three_nodes() {
    let Some((_, url)) = pg::database() else {
        return;
    };
    let nodes: Vec<Arc<dyn Store>> = (0..3)
        .map(|_| Arc::new(open(&url)) as Arc<dyn Store>)
        .collect();
    battery::battery_concurrent_enrol(&nodes);
}

#[test]
fn postgres_concurrent_first_presentation_two_nodes() {
    let Some((_, url)) = pg::database() else {
        return;
    };
    let a: Arc<dyn Store> = Arc::new(open(&url));
    let b: Arc<dyn Store> = Arc::new(open(&url));
    battery::battery_concurrent_first_presentation(&[a, b]);
}

/// Concurrent appenders on three nodes: one unbroken chain.
#[test]
fn postgres_concurrent_cdr_appends_three_nodes() {
    let Some((_, url)) = pg::database() else {
        return;
    };
    let nodes: Vec<Arc<dyn Store>> = (0..3)
        .map(|_| Arc::new(open(&url)) as Arc<dyn Store>)
        .collect();
    battery::battery_concurrent_cdr_appends(&nodes);
}

/// Writers on three nodes while a reader pages by id: nothing is missed.
#[test]
fn postgres_concurrent_security_events_three_nodes() {
    let Some((_, url)) = pg::database() else {
        return;
    };
    let nodes: Vec<Arc<dyn Store>> = (0..3)
        .map(|_| Arc::new(open(&url)) as Arc<dyn Store>)
        .collect();
    battery::battery_concurrent_security_events(&nodes);
}

/// Several nodes starting at once migrate once; a reopened database keeps its version; a
/// database newer than this build is refused.
#[test]
fn postgres_migrations_once_and_refuse_newer() {
    let Some((name, url)) = pg::database() else {
        return;
    };
    let opened: Vec<PostgresStore> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4).map(|_| s.spawn(|| open(&url))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for s in &opened {
        assert_eq!(s.schema_version().unwrap(), 6);
    }
    drop(opened);
    let cluster = pg::cluster().unwrap();
    assert_eq!(
        cluster
            .psql(&name, "SELECT count(*) FROM trustring_schema")
            .unwrap(),
        "6"
    );
    assert_eq!(open(&url).schema_version().unwrap(), 6);
    cluster
        .psql(
            &name,
            "INSERT INTO trustring_schema (version, name) VALUES (7, 'future')",
        )
        .unwrap();
    let e = PostgresStore::open(&url).unwrap_err().to_string();
    assert!(e.contains("newer"), "{e}");
}

/// Changing, deleting or truncating records is refused by the schema.
#[test]
fn postgres_cdrs_are_append_only() {
    let Some((name, url)) = pg::database() else {
        return;
    };
    let store = open(&url);
    store
        .append_cdr(&battery::cdr("c1", 1_000, &["acme", "alice"]))
        .unwrap();
    let cluster = pg::cluster().unwrap();
    for sql in [
        "UPDATE cdrs SET body = '{}'",
        "DELETE FROM cdrs",
        "TRUNCATE cdrs CASCADE",
        "DELETE FROM cdr_entities",
        "TRUNCATE cdr_entities",
    ] {
        let e = cluster.psql(&name, sql).unwrap_err();
        assert!(e.contains("append-only"), "{sql}: {e}");
    }
    assert_eq!(store.verify_cdrs().unwrap().first_bad, None);
}

/// Signed records and heads verify; an edited record, re-hashed without the key, is named.
#[test]
fn postgres_signed_cdrs_detect_rewriting() {
    let Some((name, url)) = pg::database() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let signer = CdrSigner::from_seed([7; 32], dir.path().join(HEAD_FILE));
    let key = signer.public_key();
    let store = open(&url).with_cdr_signer(signer).unwrap();
    for i in 1..=3 {
        let c = store
            .append_cdr(&battery::cdr(&format!("c{i}"), i * 1_000, &["acme"]))
            .unwrap();
        assert!(c.sig.is_some());
    }
    let head = SignedHead::read(&dir.path().join(HEAD_FILE))
        .unwrap()
        .unwrap();
    assert_eq!(head.id, 3);
    let heads = [("head".to_owned(), head)];
    let r = store.verify_cdrs_with(Some(&key), &heads).unwrap();
    assert_eq!(r.first_bad, None, "{r:?}");
    assert_eq!((r.records, r.signed), (3, 3));

    // Someone with the database drops the trigger and edits record 2.
    let cluster = pg::cluster().unwrap();
    cluster
        .psql(
            &name,
            "DROP TRIGGER cdrs_no_update ON cdrs; \
             UPDATE cdrs SET body = replace(body, '\"final_status\":200', \
             '\"final_status\":486') WHERE id = 2",
        )
        .unwrap();
    let r = store.verify_cdrs_with(Some(&key), &heads).unwrap();
    let (id, why) = r.first_bad.unwrap();
    assert_eq!(id, 2, "{why}");

    // A new store refuses to sign on over a head that no longer matches... (the head still
    // matches record 3 here, so it adopts it) and the chain stays reported as broken.
    drop(store);
    let again = CdrSigner::from_seed([7; 32], dir.path().join(HEAD_FILE));
    let store = open(&url).with_cdr_signer(again).unwrap();
    assert_eq!(store.verify_cdrs().unwrap().first_bad.map(|b| b.0), Some(2));
}

/// The synchronous trait called straight from an async task (not through
/// `spawn_blocking`) works: the store runs its driver on its own runtime.
#[test]
fn postgres_calls_from_inside_an_async_task() {
    let Some((_, url)) = pg::database() else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = open(&url);
        store.create_subscriber(&battery::sub("alice")).unwrap();
        let got = tokio::spawn(async move {
            let subs = store.subscribers().unwrap();
            // Dropped inside the task too.
            drop(store);
            subs
        })
        .await
        .unwrap();
        assert_eq!(got, vec![battery::sub("alice")]);
    });
}

/// `Backend::open` picks PostgreSQL by URL, SQLite by path; a bad PostgreSQL URL's password
/// is not in the error.
#[test]
fn backend_open_picks_by_url() {
    let Some((_, url)) = pg::database() else {
        return;
    };
    assert!(matches!(Backend::open(&url).unwrap(), Backend::Postgres(_)));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trustring.db");
    assert!(matches!(
        Backend::open(path.to_str().unwrap()).unwrap(),
        Backend::Sqlite(_)
    ));
    let port = url
        .rsplit(':')
        .next()
        .and_then(|p| p.split('/').next())
        .unwrap();
    let e = Backend::open(&format!(
        "postgres://nobody_here:s3cret@127.0.0.1:{port}/nope"
    ))
    .unwrap_err()
    .to_string();
    assert!(!e.contains("s3cret"), "{e}");
    assert!(e.contains("***"), "{e}");
}
