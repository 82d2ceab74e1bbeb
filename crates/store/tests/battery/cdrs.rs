//! Call detail records (R18, R19): append, query by period and billing entity, chain.

use std::collections::BTreeSet;
use std::sync::Arc;

use trustring_store::{Cdr, CdrLeg, Store};

pub(crate) fn cdr(call_id: &str, setup_ms: i64, entities: &[&str]) -> Cdr {
    Cdr {
        id: 0,
        call_id: call_id.to_owned(),
        caller: "sip:bob@example.net".to_owned(),
        called: "sip:alice@localhost".to_owned(),
        setup_ms,
        answer_ms: Some(setup_ms + 2_000),
        end_ms: setup_ms + 62_000,
        duration_ms: 60_000,
        final_status: 200,
        released_by: "caller".to_owned(),
        release_cause: "BYE".to_owned(),
        answered_by: Some(0),
        legs: entities
            .iter()
            .enumerate()
            .map(|(i, e)| CdrLeg {
                contact: format!("sip:alice@192.0.2.{i}"),
                device: None,
                leg_type: "voip".to_owned(),
                rang_at_ms: Some(setup_ms + 1),
                outcome: if i == 0 {
                    "answered"
                } else {
                    "cancelled-elsewhere"
                }
                .to_owned(),
                status: Some(if i == 0 { 200 } else { 487 }),
                billing_entity: (*e).to_owned(),
                billable_ms: if i == 0 { 60_000 } else { 0 },
            })
            .collect(),
        prev_hash: "ignored".to_owned(),
        hash: "ignored".to_owned(),
        sig: Some("ignored".to_owned()),
    }
}

pub(crate) fn battery_cdrs_append_query_verify(store: &dyn Store) {
    assert_eq!(store.verify_cdrs().unwrap().records, 0);
    let a = store.append_cdr(&cdr("c1", 1_000, &["acme"])).unwrap();
    let b = store
        .append_cdr(&cdr("c2", 2_000, &["acme", "alice"]))
        .unwrap();
    let c = store.append_cdr(&cdr("c3", 3_000, &["globex"])).unwrap();
    assert!(a.id < b.id && b.id < c.id);
    assert_eq!(a.prev_hash, "0".repeat(64));
    assert_eq!(b.prev_hash, a.hash);
    assert_eq!(c.prev_hash, b.hash);
    assert_eq!(a.hash.len(), 64);
    assert_ne!(a.hash, b.hash);
    assert_eq!(
        a.sig, None,
        "no signing key: whatever the caller put there is ignored"
    );

    let all = store.cdrs(0, i64::MAX, None).unwrap();
    assert_eq!(
        all,
        vec![a.clone(), b.clone(), c.clone()],
        "stored exactly as returned"
    );
    let ids = |v: Vec<Cdr>| v.into_iter().map(|c| c.call_id).collect::<Vec<_>>();
    assert_eq!(ids(store.cdrs(1_500, 3_000, None).unwrap()), ["c2"]);
    assert_eq!(
        ids(store.cdrs(0, i64::MAX, Some("acme")).unwrap()),
        ["c1", "c2"]
    );
    assert_eq!(ids(store.cdrs(0, i64::MAX, Some("alice")).unwrap()), ["c2"]);
    assert!(store.cdrs(0, i64::MAX, Some("nobody")).unwrap().is_empty());

    // Pages: after a cursor (the last id seen), at most `limit`, same filters; oldest or
    // newest first.
    let page = |after: Option<i64>, limit: u32, entity: Option<&str>, newest: bool| {
        ids(store
            .cdrs_page(0, i64::MAX, entity, after, limit, newest)
            .unwrap())
    };
    assert_eq!(page(None, 2, None, false), ["c1", "c2"]);
    assert_eq!(page(Some(b.id), 2, None, false), ["c3"]);
    assert!(page(Some(c.id), 2, None, false).is_empty());
    assert_eq!(page(Some(a.id), 1, Some("acme"), false), ["c2"]);
    assert_eq!(page(None, 0, None, false), Vec::<String>::new());
    assert_eq!(page(None, 2, None, true), ["c3", "c2"]);
    assert_eq!(page(Some(b.id), 2, None, true), ["c1"]);
    assert!(page(Some(a.id), 2, None, true).is_empty());
    assert_eq!(page(None, 5, Some("acme"), true), ["c2", "c1"]);
    assert_eq!(
        ids(store
            .cdrs_page(1_500, 3_001, None, None, 10, false)
            .unwrap()),
        ["c2", "c3"]
    );

    let report = store.verify_cdrs().unwrap();
    assert_eq!(report.records, 3);
    assert_eq!(report.first_bad, None);
}

/// A group of records appended at once (the store writer's group commit) chains exactly as
/// one-by-one appends do, after and before them, and verifies.
pub(crate) fn battery_cdrs_append_batch(store: &dyn Store) {
    assert_eq!(store.append_cdrs(&[]).unwrap(), Vec::<Cdr>::new());
    let a = store.append_cdr(&cdr("c1", 1_000, &["acme"])).unwrap();
    let batch = store
        .append_cdrs(&[
            cdr("c2", 2_000, &["acme"]),
            cdr("c3", 3_000, &["acme", "alice"]),
            cdr("c4", 4_000, &["globex"]),
        ])
        .unwrap();
    let d = store.append_cdr(&cdr("c5", 5_000, &["acme"])).unwrap();
    assert_eq!(batch.len(), 3);
    let ids: Vec<i64> = batch.iter().map(|c| c.id).collect();
    assert_eq!(ids, [a.id + 1, a.id + 2, a.id + 3]);
    assert_eq!(batch[0].prev_hash, a.hash);
    assert_eq!(batch[1].prev_hash, batch[0].hash);
    assert_eq!(batch[2].prev_hash, batch[1].hash);
    assert_eq!(d.prev_hash, batch[2].hash);
    let mut all = vec![a];
    all.extend(batch);
    all.push(d);
    assert_eq!(
        store.cdrs(0, i64::MAX, None).unwrap(),
        all,
        "stored as returned"
    );
    let r = store.verify_cdrs().unwrap();
    assert_eq!((r.records, r.first_bad), (5, None));
}

/// Appenders on every node at once (8 threads, 25 records each): ids 1..=200 each once, every
/// record chained to the one before, and the chain verifies on every node.
pub(crate) fn battery_concurrent_cdr_appends(nodes: &[Arc<dyn Store>]) {
    const THREADS: usize = 8;
    const EACH: usize = 25;
    let barrier = Arc::new(std::sync::Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let store = Arc::clone(&nodes[t % nodes.len()]);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                (0..EACH)
                    .map(|i| {
                        let setup = i64::try_from(t * 1_000 + i).unwrap();
                        store
                            .append_cdr(&cdr(&format!("c-{t}-{i}"), setup, &["acme"]))
                            .unwrap()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all: Vec<Cdr> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    all.sort_by_key(|c| c.id);
    let ids: BTreeSet<i64> = all.iter().map(|c| c.id).collect();
    let total = i64::try_from(THREADS * EACH).unwrap();
    assert_eq!(ids, (1..=total).collect::<BTreeSet<_>>());
    for pair in all.windows(2) {
        assert_eq!(pair[1].prev_hash, pair[0].hash, "record {}", pair[1].id);
    }
    for node in nodes {
        let r = node.verify_cdrs().unwrap();
        assert_eq!(r.first_bad, None, "{r:?}");
        assert_eq!(r.records, u64::try_from(total).unwrap());
        assert_eq!(node.cdrs(0, i64::MAX, Some("acme")).unwrap(), all);
    }
}
