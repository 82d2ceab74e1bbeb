//! Enrolment codes and the atomic enrolment: success, every refusal, exactly-once identifier
//! assignment under concurrency (R3).

use std::collections::BTreeSet;
use std::sync::{Arc, Barrier};

use super::{LATER, NOW, code, eula, identifiers, new_device, provision, sub};
use trustring_store::{EnrolError, Enrolment, PoolCounts, Store, StoreError};

pub(crate) fn battery_enrolment_codes(store: &dyn Store) {
    assert_eq!(store.enrolments("alice").unwrap(), vec![]);
    let err = store.create_enrolment(&code("h1", "alice")).unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");

    store.create_subscriber(&sub("alice")).unwrap();
    store.create_subscriber(&sub("bob")).unwrap();
    let late = Enrolment {
        created_at_ms: NOW + 1,
        ..code("a-late", "alice")
    };
    let z = code("z", "alice");
    let a = code("a", "alice");
    for e in [&late, &z, &a] {
        store.create_enrolment(e).unwrap();
    }
    store.create_enrolment(&code("b", "bob")).unwrap();

    // The hash is unique across users; the first one stays.
    let err = store.create_enrolment(&code("z", "bob")).unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    // A code can only name an existing device.
    let ghost = Enrolment {
        used_at_ms: Some(NOW),
        device_id: Some("ghost".to_owned()),
        ..code("g", "alice")
    };
    let err = store.create_enrolment(&ghost).unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");

    // Ordered by creation time, then hash.
    assert_eq!(store.enrolments("alice").unwrap(), vec![a, z, late]);
    assert_eq!(store.enrolments("bob").unwrap(), vec![code("b", "bob")]);
    assert_eq!(store.enrolments("nobody").unwrap(), vec![]);
}

pub(crate) fn battery_enrol_success(store: &dyn Store) {
    provision(store, &["alice", "bob"], 3);
    store.create_enrolment(&code("c1", "alice")).unwrap();
    store.create_enrolment(&code("c2", "bob")).unwrap();
    let mut nd = new_device("phone-1", "v1");
    nd.security_level = "pkcs11".to_owned();

    let got = store.enrol("c1", NOW, &nd).unwrap();
    let ids = identifiers(100, 3);
    assert_eq!(got.identifier, ids[0], "lowest free identifier first");
    let d = &got.device;
    assert_eq!(d.id, "phone-1");
    assert_eq!(d.user, "alice", "the user comes from the code");
    assert_eq!(d.identifier, ids[0]);
    assert_eq!(d.security_level, "pkcs11");
    assert_eq!(d.zone_public_key, nd.zone_public_key);
    assert_eq!(d.eula_version, "v1");
    assert_eq!(d.eula_accepted_at_ms, nd.eula_accepted_at_ms);
    assert_eq!(d.license_key_enc, nd.license_key_enc);
    assert_eq!(d.sip_ha1_md5, nd.sip_ha1_md5);
    assert_eq!(d.sip_ha1_sha256, nd.sip_ha1_sha256);
    assert_eq!(d.token_hash, nd.token_hash);
    assert!(d.service_on);
    assert_eq!(d.revoked, None);
    assert_eq!(d.created_at_ms, NOW);

    // Stored as returned, found by id, user and token hash.
    assert_eq!(store.device("phone-1").unwrap().as_ref(), Some(d));
    assert_eq!(store.device("nope").unwrap(), None);
    assert_eq!(
        store.device_by_token_hash(&nd.token_hash).unwrap().as_ref(),
        Some(d)
    );
    assert_eq!(store.device_by_token_hash("nope").unwrap(), None);
    assert_eq!(store.devices(Some("alice")).unwrap(), vec![d.clone()]);
    assert_eq!(store.devices(Some("bob")).unwrap(), vec![]);

    // The code is used by the device.
    let used = store.enrolments("alice").unwrap();
    assert_eq!(
        used,
        vec![Enrolment {
            used_at_ms: Some(NOW),
            device_id: Some("phone-1".to_owned()),
            zone_public_key: Some(nd.zone_public_key.clone()),
            presented_at_ms: Some(NOW),
            ..code("c1", "alice")
        }]
    );
    assert_eq!(
        store.pool_counts().unwrap(),
        PoolCounts {
            free: 2,
            assigned: 1,
            quarantined: 0
        }
    );

    // Bob's phone, enrolled earlier in time: the next identifier; `devices(None)` is ordered
    // by creation time, then id.
    let bobs = store
        .enrol("c2", NOW - 5, &new_device("phone-0", "v1"))
        .unwrap();
    assert_eq!(bobs.identifier, ids[1]);
    assert_eq!(bobs.device.user, "bob");
    let all: Vec<String> = store
        .devices(None)
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(all, ["phone-0", "phone-1"]);
    store.create_enrolment(&code("c3", "alice")).unwrap();
    store
        .enrol("c3", NOW, &new_device("phone-00", "v1"))
        .unwrap();
    let alices: Vec<String> = store
        .devices(Some("alice"))
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(alices, ["phone-00", "phone-1"], "same time: by id");
}

/// Asserts `result` is the error `want` (compared by variant) and nothing changed.
fn refused(
    store: &dyn Store,
    result: Result<trustring_store::Enrolled, EnrolError>,
    want: &str,
    pool: PoolCounts,
) {
    let err = result.unwrap_err();
    let got = match &err {
        EnrolError::CodeUnknown => "CodeUnknown",
        EnrolError::CodeUsed => "CodeUsed",
        EnrolError::CodeExpired => "CodeExpired",
        EnrolError::CodeBound => "CodeBound",
        EnrolError::EulaNotCurrent { .. } => "EulaNotCurrent",
        EnrolError::PoolExhausted => "PoolExhausted",
        EnrolError::Store(StoreError::Conflict(_)) => "Conflict",
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(got, want, "{err:?}");
    assert!(!err.to_string().is_empty());
    assert_eq!(store.pool_counts().unwrap(), pool, "{want}: pool untouched");
}

pub(crate) fn battery_enrol_refusals(store: &dyn Store) {
    provision(store, &["alice"], 1);
    let pool = store.pool_counts().unwrap();
    let nd = |id: &str| new_device(id, "v1");

    // Unknown code.
    refused(
        store,
        store.enrol("nope", NOW, &nd("d")),
        "CodeUnknown",
        pool,
    );

    // Expired: valid while now < expires_at_ms.
    let short = Enrolment {
        expires_at_ms: NOW,
        ..code("short", "alice")
    };
    store.create_enrolment(&short).unwrap();
    refused(
        store,
        store.enrol("short", NOW, &nd("d")),
        "CodeExpired",
        pool,
    );
    refused(
        store,
        store.enrol("short", LATER, &nd("d")),
        "CodeExpired",
        pool,
    );
    assert_eq!(
        store.enrolments("alice").unwrap(),
        vec![short.clone()],
        "still unused"
    );

    // EULA: an old version, an unknown one; with none published at all, any.
    store.create_enrolment(&code("c", "alice")).unwrap();
    store.publish_eula(&eula("v2", NOW)).unwrap();
    let err = store.enrol("c", NOW, &nd("d")).unwrap_err();
    match &err {
        EnrolError::EulaNotCurrent { accepted, current } => {
            assert_eq!(accepted, "v1");
            assert_eq!(current.as_deref(), Some("v2"));
        }
        other => panic!("unexpected {other:?}"),
    }
    refused(
        store,
        store.enrol("c", NOW, &new_device("d", "v3")),
        "EulaNotCurrent",
        pool,
    );
    assert!(store.device("d").unwrap().is_none());

    // The code works once, with the current EULA; then it is used (also when expired).
    store.enrol("c", NOW - 1, &new_device("d", "v2")).unwrap();
    refused(
        store,
        store.enrol("c", NOW, &new_device("d2", "v2")),
        "CodeUsed",
        {
            PoolCounts {
                free: 0,
                assigned: 1,
                quarantined: 0,
            }
        },
    );
    refused(
        store,
        store.enrol("c", LATER + 1, &new_device("d2", "v2")),
        "CodeUsed",
        store.pool_counts().unwrap(),
    );
    let pool = store.pool_counts().unwrap();

    // Pool exhausted; the code stays usable once the pool is refilled.
    store.create_enrolment(&code("c2", "alice")).unwrap();
    refused(
        store,
        store.enrol("c2", NOW, &new_device("d2", "v2")),
        "PoolExhausted",
        pool,
    );
    let c2 = store.enrolments("alice").unwrap();
    let c2 = c2.iter().find(|e| e.code_hash == "c2").unwrap();
    assert_eq!((c2.used_at_ms, &c2.device_id), (None, &None));

    // Clashing device id or token hash: a store conflict, nothing taken.
    store.add_identifiers(&identifiers(500, 1)).unwrap();
    let pool = store.pool_counts().unwrap();
    refused(
        store,
        store.enrol("c2", NOW, &new_device("d", "v2")),
        "Conflict",
        pool,
    );
    let mut same_token = new_device("d2", "v2");
    same_token.token_hash = "token-d".to_owned();
    refused(store, store.enrol("c2", NOW, &same_token), "Conflict", pool);
    let ok = store.enrol("c2", NOW, &new_device("d2", "v2")).unwrap();
    assert_eq!(ok.identifier, identifiers(500, 1)[0]);
}

/// R28: a code is bound to the first zone key that presents it, durably, even when that
/// enrolment never finishes; another key is refused, the first key can still finish.
pub(crate) fn battery_code_bound_to_first_key(store: &dyn Store) {
    provision(store, &["alice"], 0);
    store.create_enrolment(&code("c", "alice")).unwrap();
    let mine = new_device("mine", "v1");
    let theirs = new_device("theirs", "v1");
    let empty = PoolCounts::default();

    // Unknown, expired and used codes bind nothing.
    let err = store
        .present_code("nope", &mine.zone_public_key, NOW)
        .unwrap_err();
    assert!(matches!(err, EnrolError::CodeUnknown), "{err:?}");
    let err = store
        .present_code("c", &mine.zone_public_key, LATER)
        .unwrap_err();
    assert!(matches!(err, EnrolError::CodeExpired), "{err:?}");
    assert_eq!(store.enrolments("alice").unwrap(), vec![code("c", "alice")]);

    // The first presentation binds, although the enrolment then fails (empty pool).
    store.present_code("c", &mine.zone_public_key, NOW).unwrap();
    refused(store, store.enrol("c", NOW, &mine), "PoolExhausted", empty);
    let bound = Enrolment {
        zone_public_key: Some(mine.zone_public_key.clone()),
        presented_at_ms: Some(NOW),
        ..code("c", "alice")
    };
    assert_eq!(store.enrolments("alice").unwrap(), vec![bound.clone()]);

    // Another key: refused, by presentation and by enrolment; the binding is unchanged.
    let err = store
        .present_code("c", &theirs.zone_public_key, NOW + 1)
        .unwrap_err();
    assert!(matches!(err, EnrolError::CodeBound), "{err:?}");
    store.add_identifiers(&identifiers(100, 1)).unwrap();
    let pool = store.pool_counts().unwrap();
    refused(store, store.enrol("c", NOW + 1, &theirs), "CodeBound", pool);
    assert_eq!(store.enrolments("alice").unwrap(), vec![bound]);

    // The same key again is fine, and finishes.
    store
        .present_code("c", &mine.zone_public_key, NOW + 2)
        .unwrap();
    let got = store.enrol("c", NOW + 2, &mine).unwrap();
    assert_eq!(got.device.id, "mine");
    let err = store
        .present_code("c", &mine.zone_public_key, NOW + 3)
        .unwrap_err();
    assert!(matches!(err, EnrolError::CodeUsed), "{err:?}");

    // `enrol` alone binds too, atomically with the device.
    store.add_identifiers(&identifiers(200, 1)).unwrap();
    store.create_enrolment(&code("c2", "alice")).unwrap();
    store.enrol("c2", NOW, &theirs).unwrap();
    let c2 = store.enrolments("alice").unwrap();
    let c2 = c2.iter().find(|e| e.code_hash == "c2").unwrap();
    assert_eq!(
        c2.zone_public_key.as_deref(),
        Some(theirs.zone_public_key.as_str())
    );
}

/// Two threads present one fresh code with different keys at once: exactly one binds.
pub(crate) fn battery_concurrent_first_presentation(nodes: &[Arc<dyn Store>]) {
    let first = &*nodes[0];
    provision(first, &["alice"], 0);
    for round in 0..20 {
        let hash = format!("race-{round}");
        first.create_enrolment(&code(&hash, "alice")).unwrap();
        let barrier = Arc::new(Barrier::new(2));
        let handles: Vec<_> = (0..2)
            .map(|t| {
                let store = Arc::clone(&nodes[t % nodes.len()]);
                let barrier = Arc::clone(&barrier);
                let hash = hash.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    store.present_code(&hash, &format!("key-{t}"), NOW)
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let won = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(won, 1, "{results:?}");
        assert!(
            results
                .iter()
                .any(|r| matches!(r, Err(EnrolError::CodeBound))),
            "{results:?}"
        );
    }
}

/// No EULA published: every enrolment is refused as not current.
pub(crate) fn battery_enrol_without_eula(store: &dyn Store) {
    store.create_subscriber(&sub("alice")).unwrap();
    store.add_identifiers(&identifiers(100, 1)).unwrap();
    store.create_enrolment(&code("c", "alice")).unwrap();
    let err = store.enrol("c", NOW, &new_device("d", "v1")).unwrap_err();
    assert!(
        matches!(&err, EnrolError::EulaNotCurrent { current: None, .. }),
        "{err:?}"
    );
    assert_eq!(store.devices(None).unwrap(), vec![]);
}

/// R3 under load: a pool of 150 identifiers, 200 codes, 200 threads enrolling at once through
/// `nodes` (thread `i` uses `nodes[i % len]`; several nodes may share one database). Exactly
/// 150 succeed, with 150 distinct identifiers; the other 50 get `PoolExhausted`.
pub(crate) fn battery_concurrent_enrol(nodes: &[Arc<dyn Store>]) {
    const POOL: u32 = 150;
    const THREADS: usize = 200;
    let first = &*nodes[0];
    provision(first, &["alice", "bob"], POOL);
    for t in 0..THREADS {
        let user = if t % 2 == 0 { "alice" } else { "bob" };
        first
            .create_enrolment(&code(&format!("code-{t}"), user))
            .unwrap();
    }
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let store = Arc::clone(&nodes[t % nodes.len()]);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let nd = new_device(&format!("dev-{t:03}"), "v1");
                barrier.wait();
                store.enrol(&format!("code-{t}"), NOW, &nd)
            })
        })
        .collect();
    let mut won = BTreeSet::new();
    let mut exhausted = 0;
    for h in handles {
        match h.join().unwrap() {
            Ok(e) => {
                assert_eq!(e.device.identifier, e.identifier);
                assert!(won.insert(e.identifier), "identifier assigned twice");
            }
            Err(EnrolError::PoolExhausted) => exhausted += 1,
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }
    assert_eq!(won.len(), POOL as usize);
    assert_eq!(exhausted, THREADS - POOL as usize);
    let pool: BTreeSet<String> = identifiers(100, POOL).into_iter().collect();
    assert_eq!(won, pool, "exactly the pool, each once");

    // Every node sees the same final state.
    for node in nodes {
        assert_eq!(
            node.pool_counts().unwrap(),
            PoolCounts {
                free: 0,
                assigned: u64::from(POOL),
                quarantined: 0
            }
        );
        let devices = node.devices(None).unwrap();
        assert_eq!(devices.len(), POOL as usize);
        let held: BTreeSet<String> = devices.iter().map(|d| d.identifier.clone()).collect();
        assert_eq!(held, pool);
        let mut enrolments = node.enrolments("alice").unwrap();
        enrolments.extend(node.enrolments("bob").unwrap());
        let used = enrolments.iter().filter(|e| e.used_at_ms.is_some()).count();
        assert_eq!(used, POOL as usize);
        for e in &enrolments {
            assert_eq!(e.used_at_ms.is_some(), e.device_id.is_some());
        }
    }
}
