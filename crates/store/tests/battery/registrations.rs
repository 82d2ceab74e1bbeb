//! Registrations: replace, order, expiry, cascades, concurrency.

use std::collections::BTreeMap;

use super::{LATER, NOW, reg, sub};
use trustring_store::{Registration, RegistrationChange, Store, StoreError};

pub(crate) fn battery_registration_put_replace(store: &dyn Store) {
    store.create_subscriber(&sub("alice")).unwrap();
    let first = reg("alice", "sip:alice@192.0.2.1", 1000, LATER);
    store.put_registration(&first).unwrap();
    assert_eq!(
        store.registrations(Some("alice"), NOW).unwrap(),
        vec![first.clone()]
    );

    let replaced = Registration {
        transport: "TCP".to_owned(),
        source: "192.0.2.9:40000".to_owned(),
        local: "198.51.100.1:5061".to_owned(),
        call_id: "another-call".to_owned(),
        cseq: u32::MAX,
        expires_at_ms: LATER + 1,
        q: 500,
        ..first
    };
    store.put_registration(&replaced).unwrap();
    assert_eq!(
        store.registrations(Some("alice"), NOW).unwrap(),
        vec![replaced]
    );

    let err = store
        .put_registration(&reg("nobody", "sip:x@192.0.2.2", 1000, LATER))
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");

    assert!(
        store
            .delete_registration("alice", "sip:alice@192.0.2.1")
            .unwrap()
    );
    assert!(
        !store
            .delete_registration("alice", "sip:alice@192.0.2.1")
            .unwrap()
    );
    assert!(
        !store
            .delete_registration("nobody", "sip:alice@192.0.2.1")
            .unwrap()
    );
    assert_eq!(store.registrations(None, NOW).unwrap(), vec![]);
}

pub(crate) fn battery_registration_order(store: &dyn Store) {
    for user in ["bob", "alice", "Zed"] {
        store.create_subscriber(&sub(user)).unwrap();
    }
    let regs = [
        reg("bob", "sip:b1", 1000, LATER),
        reg("alice", "sip:a-low", 100, LATER),
        reg("alice", "sip:a-z", 1000, LATER),
        reg("alice", "sip:a-a", 1000, LATER),
        reg("alice", "sip:a-mid", 500, LATER),
        reg("Zed", "sip:z", 0, LATER),
    ];
    for r in &regs {
        store.put_registration(r).unwrap();
    }
    let list = |user| -> Vec<(String, String)> {
        let regs = store.registrations(user, NOW).unwrap();
        regs.into_iter().map(|r| (r.user, r.contact)).collect()
    };
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(u, c)| ((*u).to_owned(), (*c).to_owned()))
            .collect()
    };
    let alice = [
        ("alice", "sip:a-a"),
        ("alice", "sip:a-z"),
        ("alice", "sip:a-mid"),
        ("alice", "sip:a-low"),
    ];
    assert_eq!(list(Some("alice")), pairs(&alice));
    let mut all = vec![("Zed", "sip:z")];
    all.extend(alice);
    all.push(("bob", "sip:b1"));
    assert_eq!(list(None), pairs(&all));
    assert_eq!(list(Some("nobody")), vec![]);
}

pub(crate) fn battery_expiry_and_purge(store: &dyn Store) {
    store.create_subscriber(&sub("alice")).unwrap();
    store.create_subscriber(&sub("bob")).unwrap();
    store
        .put_registration(&reg("alice", "sip:past", 1000, NOW - 1))
        .unwrap();
    store
        .put_registration(&reg("alice", "sip:edge", 1000, NOW))
        .unwrap();
    store
        .put_registration(&reg("alice", "sip:live", 1000, NOW + 1))
        .unwrap();
    store
        .put_registration(&reg("bob", "sip:past", 1000, NOW - 5_000))
        .unwrap();
    let contacts = |user, now| -> Vec<String> {
        store
            .registrations(user, now)
            .unwrap()
            .into_iter()
            .map(|r| r.contact)
            .collect()
    };
    // Live means expires_at_ms > now.
    assert_eq!(contacts(Some("alice"), NOW), ["sip:live"]);
    assert_eq!(contacts(Some("alice"), NOW - 1), ["sip:edge", "sip:live"]);
    assert_eq!(contacts(None, NOW - 10_000).len(), 4);
    // Purge removes exactly what is no longer listed.
    assert_eq!(store.purge_expired(NOW).unwrap(), 3);
    assert_eq!(store.purge_expired(NOW).unwrap(), 0);
    assert_eq!(contacts(None, i64::MIN), ["sip:live"]);
}

pub(crate) fn battery_delete_registrations(store: &dyn Store) {
    store.create_subscriber(&sub("alice")).unwrap();
    store.create_subscriber(&sub("bob")).unwrap();
    for c in ["sip:1", "sip:2", "sip:3"] {
        store
            .put_registration(&reg("alice", c, 1000, LATER))
            .unwrap();
    }
    store
        .put_registration(&reg("bob", "sip:1", 1000, LATER))
        .unwrap();
    assert_eq!(store.delete_registrations("alice").unwrap(), 3);
    assert_eq!(store.delete_registrations("alice").unwrap(), 0);
    assert_eq!(store.delete_registrations("nobody").unwrap(), 0);
    assert_eq!(store.registrations(None, NOW).unwrap().len(), 1);
}

pub(crate) fn battery_delete_subscriber_cascades(store: &dyn Store) {
    store.create_subscriber(&sub("alice")).unwrap();
    store.create_subscriber(&sub("bob")).unwrap();
    store
        .put_registration(&reg("alice", "sip:a1", 1000, LATER))
        .unwrap();
    store
        .put_registration(&reg("alice", "sip:a2", 1000, NOW - 1))
        .unwrap();
    store
        .put_registration(&reg("bob", "sip:b1", 1000, LATER))
        .unwrap();
    assert!(store.delete_subscriber("alice").unwrap());
    let left = store.registrations(None, i64::MIN).unwrap();
    assert_eq!(left, vec![reg("bob", "sip:b1", 1000, LATER)]);
    // Re-creating the user does not resurrect old bindings.
    store.create_subscriber(&sub("alice")).unwrap();
    assert_eq!(
        store.registrations(Some("alice"), i64::MIN).unwrap(),
        vec![]
    );
}

/// 8 threads hammer 4 shared users with puts, replacements, deletes and reads; the final
/// state must be exactly what the per-thread sequences imply.
pub(crate) fn battery_concurrent(store: &dyn Store) {
    const THREADS: usize = 8;
    const OPS: usize = 60;
    let users = ["u0", "u1", "u2", "u3"];
    for u in users {
        store.create_subscriber(&sub(u)).unwrap();
    }
    let plan = |t: usize, i: usize| {
        let mut r = reg(
            users[i % users.len()],
            &format!("sip:t{t}-c{i}"),
            1000,
            LATER,
        );
        r.q = u16::try_from((t * OPS + i) % 1001).unwrap();
        r
    };
    std::thread::scope(|s| {
        for t in 0..THREADS {
            s.spawn(move || {
                for i in 0..OPS {
                    let mut r = plan(t, i);
                    store.put_registration(&r).unwrap();
                    if i % 3 == 0 {
                        assert!(store.delete_registration(&r.user, &r.contact).unwrap());
                    } else if i % 3 == 1 {
                        r.cseq = 2;
                        store.put_registration(&r).unwrap();
                    }
                    let mine = store.registrations(Some(&r.user), NOW).unwrap();
                    assert_eq!(mine.iter().any(|m| m.contact == r.contact), i % 3 != 0);
                }
            });
        }
    });
    let mut expected = BTreeMap::new();
    for t in 0..THREADS {
        for i in (0..OPS).filter(|i| i % 3 != 0) {
            let mut r = plan(t, i);
            r.cseq = if i % 3 == 1 { 2 } else { 1 };
            expected.insert((r.user.clone(), r.contact.clone()), r);
        }
    }
    let got = store.registrations(None, NOW).unwrap();
    assert_eq!(got.len(), expected.len());
    let got_map: BTreeMap<_, _> = got
        .iter()
        .map(|r| ((r.user.clone(), r.contact.clone()), r.clone()))
        .collect();
    assert_eq!(got_map, expected);
    let order: Vec<_> = got
        .iter()
        .map(|r| (r.user.clone(), u16::MAX - r.q, r.contact.clone()))
        .collect();
    assert!(order.is_sorted(), "ordered by user, q desc, contact");
}

/// A batch of changes (the store writer's group commit) applies in order, each with its own
/// result: a refused put does not stop the others.
pub(crate) fn battery_registration_changes_batch(store: &dyn Store) {
    store.create_subscriber(&sub("alice")).unwrap();
    assert!(store.apply_registrations(&[]).unwrap().is_empty());
    let a = reg("alice", "sip:alice@192.0.2.1", 1000, LATER);
    let b = reg("alice", "sip:alice@192.0.2.2", 500, LATER);
    let a2 = Registration {
        cseq: 2,
        ..a.clone()
    };
    let results = store
        .apply_registrations(&[
            RegistrationChange::Put(a.clone()),
            RegistrationChange::Put(b.clone()),
            RegistrationChange::Put(reg("nobody", "sip:x@192.0.2.3", 1000, LATER)),
            RegistrationChange::Delete {
                user: "alice".into(),
                contact: a.contact.clone(),
            },
            RegistrationChange::Put(a2.clone()),
        ])
        .unwrap();
    assert_eq!(results.len(), 5);
    assert!(results[0].is_ok() && results[1].is_ok(), "{results:?}");
    assert!(
        matches!(results[2], Err(StoreError::NotFound(_))),
        "{results:?}"
    );
    assert!(results[3].is_ok() && results[4].is_ok(), "{results:?}");
    // Deleted, then put again with a newer CSeq: the order was kept.
    assert_eq!(
        store.registrations(Some("alice"), NOW).unwrap(),
        vec![a2, b]
    );
}
