//! Security events (R14): ids are assigned and increase; reading pages by id.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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

/// Writers on every node while a reader pages by `since_id` (as the console's live feed
/// does): the reader sees every event exactly once, in id order; none committed late behind
/// the cursor.
pub(crate) fn battery_concurrent_security_events(nodes: &[Arc<dyn Store>]) {
    const WRITERS: usize = 4;
    const EACH: usize = 50;
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let store = Arc::clone(&nodes[0]);
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut seen: Vec<i64> = Vec::new();
            loop {
                let finished = done.load(Ordering::SeqCst);
                let since = seen.last().copied().unwrap_or(0);
                let page = store.security_events(since, 1_000).unwrap();
                seen.extend(page.iter().map(|e| e.id));
                if finished && page.is_empty() {
                    return seen;
                }
            }
        })
    };
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = Arc::clone(&nodes[w % nodes.len()]);
            std::thread::spawn(move || {
                (0..EACH)
                    .map(|_| {
                        store
                            .add_security_event(&event("wrong-proof", None))
                            .unwrap()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut written: Vec<i64> = writers
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    done.store(true, Ordering::SeqCst);
    let seen = reader.join().unwrap();
    written.sort_unstable();
    assert_eq!(written.len(), WRITERS * EACH);
    assert_eq!(seen, written, "the reader missed or repeated events");
}
