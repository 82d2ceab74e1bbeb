//! Security events (R14): ids are assigned and increase; reading pages by id.

use super::NOW;
use trustring_store::{SecurityEvent, Store};

fn event(kind: &str, user: Option<&str>) -> SecurityEvent {
    SecurityEvent {
        id: -7,
        at_ms: NOW,
        kind: kind.to_owned(),
        user: user.map(str::to_owned),
        device_id: user.map(|u| format!("dev-{u}")),
        call_id: user.map(|u| format!("call-{u}@192.0.2.1")),
        detail: format!("{kind} detail"),
    }
}

pub(crate) fn battery_security_events(store: &dyn Store) {
    assert_eq!(store.security_events(0, 100).unwrap(), vec![]);
    assert_eq!(store.security_events(i64::MIN, u32::MAX).unwrap(), vec![]);
    let kinds = [
        ("missing-proof", Some("alice")),
        ("wrong-proof", Some("bob")),
        ("replayed-proof", Some("alice")),
        ("enrolment-refused", None),
    ];
    let mut stored = Vec::new();
    for (kind, user) in kinds {
        let e = event(kind, user);
        let id = store.add_security_event(&e).unwrap();
        assert!(id > 0, "{id}");
        stored.push(SecurityEvent { id, ..e });
    }
    let ids: Vec<i64> = stored.iter().map(|e| e.id).collect();
    assert!(
        ids.is_sorted() && ids.windows(2).all(|w| w[0] < w[1]),
        "{ids:?}"
    );

    assert_eq!(store.security_events(0, 100).unwrap(), stored);
    assert_eq!(store.security_events(i64::MIN, u32::MAX).unwrap(), stored);
    assert_eq!(store.security_events(ids[0], 100).unwrap(), stored[1..]);
    assert_eq!(store.security_events(ids[0], 2).unwrap(), stored[1..3]);
    assert_eq!(store.security_events(0, 1).unwrap(), stored[..1]);
    assert_eq!(store.security_events(0, 0).unwrap(), vec![]);
    assert_eq!(store.security_events(ids[3], 100).unwrap(), vec![]);

    // Paging with the last id seen reads every event exactly once.
    let mut seen = Vec::new();
    let mut since = 0;
    loop {
        let page = store.security_events(since, 3).unwrap();
        let Some(last) = page.last() else { break };
        since = last.id;
        seen.extend(page);
    }
    assert_eq!(seen, stored);

    // Newest first, paging back with the last id seen.
    let newest: Vec<SecurityEvent> = stored.iter().rev().cloned().collect();
    assert_eq!(store.security_events_newest(i64::MAX, 100).unwrap(), newest);
    assert_eq!(
        store.security_events_newest(i64::MAX, 2).unwrap(),
        newest[..2]
    );
    assert_eq!(
        store.security_events_newest(ids[3], 100).unwrap(),
        newest[1..]
    );
    assert_eq!(store.security_events_newest(ids[0], 100).unwrap(), vec![]);
    assert_eq!(store.security_events_newest(i64::MAX, 0).unwrap(), vec![]);
    let mut seen = Vec::new();
    let mut before = i64::MAX;
    loop {
        let page = store.security_events_newest(before, 3).unwrap();
        let Some(last) = page.last() else { break };
        before = last.id;
        seen.extend(page);
    }
    assert_eq!(seen, newest);
}
