//! The number identity pool (R3): loading, counting, quarantine and release.

use super::{NOW, enrol, identifiers, provision};
use trustring_store::{PoolCounts, Store};

fn counts(free: u64, assigned: u64, quarantined: u64) -> PoolCounts {
    PoolCounts {
        free,
        assigned,
        quarantined,
    }
}

pub(crate) fn battery_pool_add_and_count(store: &dyn Store) {
    assert_eq!(store.pool_counts().unwrap(), PoolCounts::default());
    assert_eq!(store.add_identifiers(&[]).unwrap(), 0);
    let ids = ["+15550000003", "+15550000001", "+15550000002"].map(String::from);
    assert_eq!(store.add_identifiers(&ids).unwrap(), 3);
    assert_eq!(store.pool_counts().unwrap(), counts(3, 0, 0));
    // Known ones and repeats within the batch are skipped; only the new one counts.
    let more = [
        "+15550000002",
        "+15550000009",
        "+15550000009",
        "+15550000001",
    ]
    .map(String::from);
    assert_eq!(store.add_identifiers(&more).unwrap(), 1);
    assert_eq!(store.add_identifiers(&more).unwrap(), 0);
    assert_eq!(store.pool_counts().unwrap(), counts(4, 0, 0));
    // A large batch is one call.
    assert_eq!(store.add_identifiers(&identifiers(1000, 500)).unwrap(), 500);
    assert_eq!(store.pool_counts().unwrap(), counts(504, 0, 0));
}

/// Assigned and quarantined identifiers are never re-added as free; quarantine is released by
/// age only (strictly older), and a released identifier is assignable again.
pub(crate) fn battery_pool_quarantine_release(store: &dyn Store) {
    provision(store, &["alice"], 2);
    let first = enrol(store, "alice", "d1");
    assert_eq!(
        first.identifier,
        identifiers(100, 1)[0],
        "lowest free first"
    );
    assert_eq!(store.pool_counts().unwrap(), counts(1, 1, 0));
    assert_eq!(store.add_identifiers(&identifiers(100, 2)).unwrap(), 0);

    let revoked_at = NOW + 5_000;
    store.revoke_device("d1", "left", revoked_at).unwrap();
    assert_eq!(store.pool_counts().unwrap(), counts(1, 0, 1));
    assert_eq!(store.add_identifiers(&identifiers(100, 1)).unwrap(), 0);
    assert_eq!(store.release_quarantined(revoked_at - 1).unwrap(), 0);
    assert_eq!(
        store.release_quarantined(revoked_at).unwrap(),
        0,
        "strictly older"
    );
    assert_eq!(store.pool_counts().unwrap(), counts(1, 0, 1));

    // While quarantined, the next enrolment takes the other identifier.
    let second = enrol(store, "alice", "d2");
    assert_eq!(second.identifier, identifiers(101, 1)[0]);
    assert_eq!(store.pool_counts().unwrap(), counts(0, 1, 1));

    assert_eq!(store.release_quarantined(revoked_at + 1).unwrap(), 1);
    assert_eq!(store.release_quarantined(i64::MAX).unwrap(), 0);
    assert_eq!(store.pool_counts().unwrap(), counts(1, 1, 0));

    // Released: assignable again, to a new device; the revoked device keeps its record.
    let third = enrol(store, "alice", "d3");
    assert_eq!(third.identifier, first.identifier);
    assert_eq!(store.pool_counts().unwrap(), counts(0, 2, 0));
    let old = store.device("d1").unwrap().unwrap();
    assert!(old.revoked.is_some());
    assert_eq!(old.identifier, first.identifier);
}
