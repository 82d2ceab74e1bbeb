//! Subscribers and routing profiles; durability across reopening.

use super::{LATER, NOW, reg, sub};
use trustring_store::{RingDelay, RoutingProfile, Store, StoreError};

pub(crate) fn battery_subscribers_crud(store: &dyn Store) {
    assert_eq!(store.subscribers().unwrap(), vec![]);
    assert_eq!(store.subscriber("alice").unwrap(), None);
    // Bytewise order: uppercase sorts before lowercase.
    for user in ["carol", "alice", "Bob", "bob"] {
        store.create_subscriber(&sub(user)).unwrap();
    }
    assert_eq!(store.subscriber("alice").unwrap(), Some(sub("alice")));
    assert_eq!(
        store.subscriber("ALICE").unwrap(),
        None,
        "user names are case-sensitive"
    );
    let users: Vec<String> = store
        .subscribers()
        .unwrap()
        .into_iter()
        .map(|s| s.user)
        .collect();
    assert_eq!(users, ["Bob", "alice", "bob", "carol"]);
    assert!(store.delete_subscriber("alice").unwrap());
    assert!(!store.delete_subscriber("alice").unwrap());
    assert_eq!(store.subscriber("alice").unwrap(), None);
    assert_eq!(store.subscribers().unwrap().len(), 3);
}

pub(crate) fn battery_subscriber_conflict(store: &dyn Store) {
    store.create_subscriber(&sub("alice")).unwrap();
    let mut other = sub("alice");
    other.enterprise = "globex".to_owned();
    let err = store.create_subscriber(&other).unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    // The first one is untouched.
    assert_eq!(store.subscriber("alice").unwrap(), Some(sub("alice")));
}

pub(crate) fn battery_profile_round_trip(store: &dyn Store) {
    let err = store
        .set_profile("nobody", &RoutingProfile::default())
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    assert_eq!(store.subscriber("nobody").unwrap(), None);

    let profile = RoutingProfile {
        ring_timeout_secs: u32::MAX,
        ring_delays: vec![
            RingDelay {
                contact_contains: "mobile".to_owned(),
                delay_ms: 2_500,
            },
            RingDelay {
                contact_contains: "\"quoted\" ünïcode;x=1".to_owned(),
                delay_ms: 0,
            },
        ],
    };
    let mut alice = sub("alice");
    alice.profile = profile.clone();
    store.create_subscriber(&alice).unwrap();
    assert_eq!(store.subscriber("alice").unwrap(), Some(alice.clone()));

    store.create_subscriber(&sub("bob")).unwrap();
    store.set_profile("bob", &profile).unwrap();
    assert_eq!(store.subscriber("bob").unwrap().unwrap().profile, profile);
    store
        .set_profile("alice", &RoutingProfile::default())
        .unwrap();
    assert_eq!(
        store.subscriber("alice").unwrap().unwrap().profile,
        RoutingProfile::default()
    );
}

/// Everything written before the store is dropped is there after reopening; reopening
/// (migrations included) is idempotent.
pub(crate) fn battery_durable_across_reopen(open: &dyn Fn() -> Box<dyn Store>) {
    let mut alice = sub("alice");
    alice.profile.ring_delays = vec![RingDelay {
        contact_contains: "m".to_owned(),
        delay_ms: 7,
    }];
    let r = reg("alice", "sip:a1", 700, LATER);
    {
        let store = open();
        store.create_subscriber(&alice).unwrap();
        store.create_subscriber(&sub("bob")).unwrap();
        store.put_registration(&r).unwrap();
        assert!(store.delete_subscriber("bob").unwrap());
    }
    for _ in 0..3 {
        let store = open();
        assert_eq!(store.subscribers().unwrap(), vec![alice.clone()]);
        assert_eq!(store.registrations(None, NOW).unwrap(), vec![r.clone()]);
        let err = store.create_subscriber(&alice).unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    }
}
