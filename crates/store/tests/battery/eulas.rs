//! EULA versions (R4): publishing, the current version, the list.

use super::{NOW, eula};
use trustring_store::{Store, StoreError};

pub(crate) fn battery_eula_publish_and_current(store: &dyn Store) {
    assert_eq!(store.current_eula().unwrap(), None);
    assert_eq!(store.eulas().unwrap(), vec![]);

    let v1 = eula("v1", NOW);
    store.publish_eula(&v1).unwrap();
    assert_eq!(store.current_eula().unwrap(), Some(v1.clone()));

    let v2 = eula("v2", NOW + 10);
    store.publish_eula(&v2).unwrap();
    assert_eq!(store.current_eula().unwrap(), Some(v2.clone()));

    // The version is unique; the original is untouched.
    let mut again = eula("v1", NOW + 100);
    again.text = "rewritten".to_owned();
    let err = store.publish_eula(&again).unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");

    // Published later but dated earlier: not current.
    let backdated = eula("v0.9", NOW - 10);
    store.publish_eula(&backdated).unwrap();
    assert_eq!(store.current_eula().unwrap(), Some(v2.clone()));

    // Same time as the current one: the last published wins ("10" after "9", not bytewise).
    let v9 = eula("9", NOW + 20);
    let v10 = eula("10", NOW + 20);
    store.publish_eula(&v9).unwrap();
    store.publish_eula(&v10).unwrap();
    assert_eq!(store.current_eula().unwrap(), Some(v10.clone()));

    // Oldest first; the last is current.
    assert_eq!(store.eulas().unwrap(), vec![backdated, v1, v2, v9, v10]);
}

/// Text survives byte for byte (long, multi-line, non-ASCII).
pub(crate) fn battery_eula_text_round_trip(store: &dyn Store) {
    let mut e = eula("2025-01 \"ü\"", NOW);
    e.text = "§1 Ünïcode ✓\r\n\ttabs, 'quotes', \"double\"; -- not SQL\n".repeat(2_000);
    store.publish_eula(&e).unwrap();
    assert_eq!(store.current_eula().unwrap(), Some(e.clone()));
    assert_eq!(store.eulas().unwrap(), vec![e]);
}
