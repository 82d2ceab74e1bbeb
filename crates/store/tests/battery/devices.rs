//! Enrolled devices: the service switch (R10), revocation (R9), device registrations,
//! deleting a subscriber, redaction, durability across reopening.

use std::time::{SystemTime, UNIX_EPOCH};

use super::{LATER, NOW, code, enrol, eula, identifiers, new_device, provision, reg, sub};
use trustring_store::{PoolCounts, Registration, Revocation, SecurityEvent, Store, StoreError};

fn counts(free: u64, assigned: u64, quarantined: u64) -> PoolCounts {
    PoolCounts {
        free,
        assigned,
        quarantined,
    }
}

fn device_reg(user: &str, contact: &str, device: &str) -> Registration {
    Registration {
        device_id: Some(device.to_owned()),
        ..reg(user, contact, 1000, LATER)
    }
}

fn contacts(store: &dyn Store, user: &str) -> Vec<String> {
    let regs = store.registrations(Some(user), NOW).unwrap();
    regs.into_iter().map(|r| r.contact).collect()
}

fn unix_ms() -> i64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    i64::try_from(since.as_millis()).unwrap()
}

pub(crate) fn battery_device_service(store: &dyn Store) {
    provision(store, &["alice"], 2);
    enrol(store, "alice", "d1");
    enrol(store, "alice", "d2");
    store.set_service("d1", false).unwrap();
    assert!(!store.device("d1").unwrap().unwrap().service_on);
    assert!(
        store.device("d2").unwrap().unwrap().service_on,
        "per device"
    );
    store.set_service("d1", false).unwrap();
    assert!(
        !store.device("d1").unwrap().unwrap().service_on,
        "idempotent"
    );
    store.set_service("d1", true).unwrap();
    assert!(store.device("d1").unwrap().unwrap().service_on);
    let err = store.set_service("nope", true).unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
}

/// A phone's number (for its PSTN leg) is set, cleared, and unique among active phones; a
/// revoked phone's number is free again.
pub(crate) fn battery_device_number(store: &dyn Store) {
    provision(store, &["alice"], 3);
    enrol(store, "alice", "d1");
    enrol(store, "alice", "d2");
    assert_eq!(store.device("d1").unwrap().unwrap().number, None);
    store.set_number("d1", Some("+15550001")).unwrap();
    assert_eq!(
        store.device("d1").unwrap().unwrap().number.as_deref(),
        Some("+15550001")
    );
    let err = store.set_number("d2", Some("+15550001")).unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(store.device("d2").unwrap().unwrap().number, None);
    store.revoke_device("d1", "lost", unix_ms()).unwrap();
    store.set_number("d2", Some("+15550001")).unwrap();
    store.set_number("d2", None).unwrap();
    assert_eq!(store.device("d2").unwrap().unwrap().number, None);
    let err = store.set_number("nope", None).unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
}

/// A phone's binding carries its device id, and only a live device of that subscriber may
/// register.
pub(crate) fn battery_device_registrations(store: &dyn Store) {
    provision(store, &["alice", "bob"], 2);
    enrol(store, "alice", "d1");
    enrol(store, "bob", "b1");
    let phone = device_reg("alice", "sip:phone@192.0.2.7", "d1");
    store.put_registration(&phone).unwrap();
    assert_eq!(
        store.registrations(Some("alice"), NOW).unwrap(),
        vec![phone.clone()]
    );

    // Replacing the binding may drop the device (and set it again).
    let plain = Registration {
        device_id: None,
        ..phone.clone()
    };
    store.put_registration(&plain).unwrap();
    assert_eq!(
        store.registrations(Some("alice"), NOW).unwrap(),
        vec![plain]
    );
    store.put_registration(&phone).unwrap();
    assert_eq!(
        store.registrations(Some("alice"), NOW).unwrap(),
        vec![phone]
    );

    // Unknown device, or another subscriber's device: not found, nothing stored.
    for (user, device) in [("alice", "ghost"), ("alice", "b1"), ("nobody", "d1")] {
        let err = store
            .put_registration(&device_reg(user, "sip:other@192.0.2.8", device))
            .unwrap_err();
        assert!(
            matches!(err, StoreError::NotFound(_)),
            "{user} {device}: {err:?}"
        );
    }
    assert_eq!(contacts(store, "alice"), ["sip:phone@192.0.2.7"]);
    assert_eq!(contacts(store, "bob"), Vec::<String>::new());
}

pub(crate) fn battery_revoke_device(store: &dyn Store) {
    provision(store, &["alice"], 3);
    let d1 = enrol(store, "alice", "d1");
    enrol(store, "alice", "d2");
    store
        .put_registration(&device_reg("alice", "sip:phone1@192.0.2.7", "d1"))
        .unwrap();
    store
        .put_registration(&device_reg("alice", "sip:phone2@192.0.2.8", "d2"))
        .unwrap();
    store
        .put_registration(&reg("alice", "sip:desk@192.0.2.9", 1000, LATER))
        .unwrap();
    assert_eq!(store.pool_counts().unwrap(), counts(1, 2, 0));

    let at = NOW + 42;
    let revoked = store.revoke_device("d1", "non-payment", at).unwrap();
    let want = Revocation {
        reason: "non-payment".to_owned(),
        at_ms: at,
    };
    assert_eq!(revoked.revoked.as_ref(), Some(&want));
    assert_eq!(
        revoked,
        trustring_store::Device {
            revoked: Some(want.clone()),
            ..d1.device.clone()
        },
        "only the revocation changed"
    );
    assert_eq!(store.device("d1").unwrap(), Some(revoked.clone()));
    assert_eq!(
        store.device_by_token_hash("token-d1").unwrap(),
        Some(revoked.clone()),
        "still found, to be refused clearly"
    );
    // Its identifier is quarantined, its bindings gone; the others stay.
    assert_eq!(store.pool_counts().unwrap(), counts(1, 1, 1));
    assert_eq!(
        contacts(store, "alice"),
        ["sip:desk@192.0.2.9", "sip:phone2@192.0.2.8"]
    );

    // Twice: a conflict, and the first revocation stands.
    let err = store.revoke_device("d1", "left", at + 1).unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(store.device("d1").unwrap().unwrap().revoked, Some(want));
    let err = store.revoke_device("nope", "left", at).unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");

    // A revoked device cannot register again.
    let err = store
        .put_registration(&device_reg("alice", "sip:phone1@192.0.2.7", "d1"))
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(contacts(store, "alice").len(), 2);
    assert_eq!(store.pool_counts().unwrap(), counts(1, 1, 1));
}

/// Deleting a subscriber revokes their live devices (reason `subscriber-deleted`, now) and
/// quarantines their identifiers in the same step; earlier revocations and other
/// subscribers' devices are untouched; the device records remain.
pub(crate) fn battery_delete_subscriber_revokes_devices(store: &dyn Store) {
    provision(store, &["alice", "bob"], 4);
    enrol(store, "alice", "a1");
    enrol(store, "alice", "a2");
    enrol(store, "bob", "b1");
    store.revoke_device("a1", "left", NOW + 1).unwrap();
    store
        .put_registration(&device_reg("alice", "sip:a2@192.0.2.7", "a2"))
        .unwrap();
    store
        .put_registration(&device_reg("bob", "sip:b1@192.0.2.8", "b1"))
        .unwrap();
    store.create_enrolment(&code("pending", "alice")).unwrap();
    assert_eq!(store.pool_counts().unwrap(), counts(1, 2, 1));

    let before = unix_ms();
    assert!(store.delete_subscriber("alice").unwrap());
    let after = unix_ms();

    let a1 = store.device("a1").unwrap().unwrap();
    assert_eq!(
        a1.revoked.unwrap().reason,
        "left",
        "earlier revocation stands"
    );
    let a2 = store.device("a2").unwrap().unwrap();
    let rev = a2.revoked.unwrap();
    assert_eq!(rev.reason, "subscriber-deleted");
    assert!(
        (before..=after).contains(&rev.at_ms),
        "{before} <= {} <= {after}",
        rev.at_ms
    );
    assert_eq!(store.pool_counts().unwrap(), counts(1, 1, 2));
    // Quarantined at that time: not released by an older cut-off.
    assert_eq!(
        store.release_quarantined(before).unwrap(),
        1,
        "only a1's (NOW + 1)"
    );
    assert_eq!(store.pool_counts().unwrap(), counts(2, 1, 1));

    assert_eq!(store.registrations(Some("alice"), NOW).unwrap(), vec![]);
    assert_eq!(contacts(store, "bob"), ["sip:b1@192.0.2.8"]);
    assert!(store.device("b1").unwrap().unwrap().revoked.is_none());
    assert_eq!(store.enrolments("alice").unwrap(), vec![], "codes go too");
    let err = store
        .enrol("pending", NOW, &new_device("a3", "v1"))
        .unwrap_err();
    assert!(
        matches!(err, trustring_store::EnrolError::CodeUnknown),
        "{err:?}"
    );

    // The records remain (history); a re-created alice starts without codes or live devices.
    let ids: Vec<String> = store
        .devices(Some("alice"))
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(ids, ["a1", "a2"]);
    store.create_subscriber(&sub("alice")).unwrap();
    assert_eq!(store.enrolments("alice").unwrap(), vec![]);
    assert!(
        store
            .devices(Some("alice"))
            .unwrap()
            .iter()
            .all(|d| d.revoked.is_some())
    );
    assert!(!store.delete_subscriber("nobody").unwrap());
}

/// `Debug` never shows the hidden identifier, the license key or the SIP HA1s.
pub(crate) fn battery_device_debug_redacts(store: &dyn Store) {
    provision(store, &["alice"], 1);
    let enrolled = enrol(store, "alice", "d1");
    let nd = new_device("d1", "v1");
    let texts = [
        format!("{enrolled:?}"),
        format!("{:?}", enrolled.device),
        format!("{:#?}", store.device("d1").unwrap()),
        format!("{:?}", store.devices(None).unwrap()),
        format!("{nd:?}"),
    ];
    for text in texts {
        assert!(!text.contains(&enrolled.identifier), "{text}");
        assert!(!text.contains(&identifiers(100, 1)[0][1..]), "{text}");
        assert!(!text.contains("SECRET"), "{text}");
        assert!(text.contains("d1"), "{text}");
    }
}

/// Everything provisioning wrote is there after reopening.
pub(crate) fn battery_provisioning_durable_across_reopen(open: &dyn Fn() -> Box<dyn Store>) {
    let (d1, d2, event_id);
    {
        let store = open();
        provision(&*store, &["alice"], 3);
        store.publish_eula(&eula("v2", NOW)).unwrap();
        store.create_enrolment(&code("c1", "alice")).unwrap();
        store.create_enrolment(&code("c2", "alice")).unwrap();
        store.create_enrolment(&code("c3", "alice")).unwrap();
        d1 = store.enrol("c1", NOW, &new_device("d1", "v2")).unwrap();
        d2 = store.enrol("c2", NOW + 1, &new_device("d2", "v2")).unwrap();
        store.set_service("d1", false).unwrap();
        store.revoke_device("d2", "eula-breach", NOW + 2).unwrap();
        store
            .put_registration(&device_reg("alice", "sip:d1@192.0.2.7", "d1"))
            .unwrap();
        event_id = store
            .add_security_event(&SecurityEvent {
                id: 0,
                at_ms: NOW,
                kind: "wrong-proof".to_owned(),
                user: Some("alice".to_owned()),
                device_id: Some("d1".to_owned()),
                call_id: Some("call-1".to_owned()),
                detail: "HMAC mismatch".to_owned(),
            })
            .unwrap();
    }
    for events_seen in 1..=3 {
        let store = open();
        assert_eq!(store.pool_counts().unwrap(), counts(1, 1, 1));
        assert_eq!(store.current_eula().unwrap().unwrap().version, "v2");
        assert_eq!(store.eulas().unwrap().len(), 2);
        let mut d1_now = d1.device.clone();
        d1_now.service_on = false;
        assert_eq!(store.device("d1").unwrap(), Some(d1_now));
        let d2_now = store.device("d2").unwrap().unwrap();
        assert_eq!(d2_now.identifier, d2.identifier);
        assert_eq!(
            d2_now.revoked,
            Some(Revocation {
                reason: "eula-breach".to_owned(),
                at_ms: NOW + 2
            })
        );
        assert_eq!(
            store.device_by_token_hash("token-d1").unwrap().unwrap().id,
            "d1"
        );
        let regs = store.registrations(Some("alice"), NOW).unwrap();
        assert_eq!(regs, vec![device_reg("alice", "sip:d1@192.0.2.7", "d1")]);
        let codes = store.enrolments("alice").unwrap();
        assert_eq!(codes.len(), 3);
        assert_eq!(codes[0].device_id.as_deref(), Some("d1"));
        assert_eq!(codes[2], code("c3", "alice"));
        let events = store.security_events(0, 10).unwrap();
        assert_eq!(events.len(), events_seen);
        assert_eq!(events[0].id, event_id);
        // Ids keep increasing after a restart; duplicates are still refused.
        let next = store
            .add_security_event(&SecurityEvent {
                id: 0,
                ..events[0].clone()
            })
            .unwrap();
        assert!(events.iter().all(|e| next > e.id));
        let err = store.publish_eula(&eula("v2", NOW)).unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
        assert_eq!(store.add_identifiers(&identifiers(100, 3)).unwrap(), 0);
    }
}
