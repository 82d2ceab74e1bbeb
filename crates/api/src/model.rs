//! Request and response bodies, and the validation rules (SPEC R1, R21, R26).
//!
//! Requests are deserialized with `deny_unknown_fields`, so a typo (`"ring_timeout"`) is a 400
//! naming the field instead of being silently ignored. Each request type has a `validate`
//! that returns either the values the store takes or a 400 naming the offending field.
//!
//! Rules (lengths count characters, not bytes):
//!
//! | field | rule |
//! |---|---|
//! | `user` | 1..=64 of `A-Z a-z 0-9 . _ ~ + -`, first one a letter or digit |
//! | `password` | 12..=128 characters, anything (shorter: 400 `weak_password`) |
//! | `enterprise` | 1..=64 characters, no control characters, not only spaces |
//! | `ring_timeout_secs` | 1..=600 |
//! | `ring_delays` | at most 16 rules |
//! | `contact_contains` | 1..=128 characters, no control characters |
//! | `delay_ms` | 0..=60000 |
//!
//! The `user` set is the unreserved subset of RFC 3261's `user` token: it never needs escaping
//! in a SIP URI or in a URL path, so `sip:USER@DOMAIN` and `/api/v1/subscribers/USER` are both
//! valid as written. Starting with a letter or digit rules out `.` and `..` as path segments.
//! Response types never contain the password or the HA1s.

use serde::{Deserialize, Serialize};
use store::{Registration, RingDelay, RoutingProfile, Subscriber};
use utoipa::ToSchema;

use crate::error::ApiError;

const USER_MAX: usize = 64;
/// Shortest subscriber password (R30): a digest password is guessable offline from one
/// captured exchange, and online against the registrar.
pub(crate) const PASSWORD_MIN: usize = 12;
const PASSWORD_MAX: usize = 128;
const ENTERPRISE_MAX: usize = 64;
const RING_TIMEOUT_MAX: u32 = 600;
const RING_DELAYS_MAX: usize = 16;
const CONTACT_CONTAINS_MAX: usize = 128;
const DELAY_MS_MAX: u32 = 60_000;

/// Body of `POST /api/v1/subscribers`.
// No `Debug`: it holds the password. Doc comments here become the OpenAPI descriptions; the
// schema's bounds repeat the constants above, and a test checks they agree.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateSubscriber {
    /// The SIP user name; the address of record is `sip:USER@DOMAIN`.
    #[schema(
        pattern = r"^[A-Za-z0-9][A-Za-z0-9._~+-]*$",
        min_length = 1,
        max_length = 64,
        example = "alice"
    )]
    pub(crate) user: String,
    /// The SIP digest password, 12 to 128 characters (a shorter one is refused with 400
    /// `weak_password`; a passphrase of a few words is fine). Stored only as the two digest
    /// HA1s, never returned.
    #[schema(format = Password, min_length = 12, max_length = 128)]
    pub(crate) password: String,
    /// The enterprise the subscriber belongs to (printable, not only spaces).
    #[schema(min_length = 1, max_length = 64, example = "acme")]
    pub(crate) enterprise: String,
    /// How long a forked call rings, in seconds (default 30).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 600)]
    pub(crate) ring_timeout_secs: Option<u32>,
}

impl CreateSubscriber {
    /// Checks every field; returns the routing profile the subscriber starts with.
    pub(crate) fn validate(&self) -> Result<RoutingProfile, ApiError> {
        validate_user(&self.user)?;
        let password_len = self.password.chars().count();
        if password_len < PASSWORD_MIN {
            return Err(ApiError::with_code(
                axum::http::StatusCode::BAD_REQUEST,
                "weak_password",
                format!(
                    "password: too short ({password_len} characters); it must be at least \
                     {PASSWORD_MIN} characters (a passphrase of a few words is fine)"
                ),
            ));
        }
        if password_len > PASSWORD_MAX {
            return Err(ApiError::invalid(format!(
                "password: must be {PASSWORD_MIN} to {PASSWORD_MAX} characters"
            )));
        }
        let enterprise_len = self.enterprise.chars().count();
        if !(1..=ENTERPRISE_MAX).contains(&enterprise_len)
            || self.enterprise.chars().any(char::is_control)
            || self.enterprise.trim().is_empty()
        {
            return Err(ApiError::invalid(format!(
                "enterprise: must be 1 to {ENTERPRISE_MAX} printable characters"
            )));
        }
        let mut profile = RoutingProfile::default();
        if let Some(secs) = self.ring_timeout_secs {
            profile.ring_timeout_secs = validate_ring_timeout(secs)?;
        }
        Ok(profile)
    }
}

/// Body of `PUT /api/v1/subscribers/{user}/profile`: replaces the whole profile, so an omitted
/// `ring_delays` means "no delayed branches".
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProfileUpdate {
    /// How long a forked call rings before the caller gets 480, in seconds.
    #[schema(minimum = 1, maximum = 600)]
    ring_timeout_secs: u32,
    /// Delayed branches (omitted: none).
    #[serde(default)]
    #[schema(max_items = 16)]
    ring_delays: Vec<RingDelayUpdate>,
}

/// One delayed-branch rule: contacts whose URI contains `contact_contains` ring `delay_ms`
/// after the others.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RingDelayUpdate {
    /// Substring of the contact URI that selects the device.
    #[schema(min_length = 1, max_length = 128, example = "5082")]
    contact_contains: String,
    /// Delay before that device's branch is sent, in milliseconds.
    #[schema(maximum = 60000)]
    delay_ms: u32,
}

impl ProfileUpdate {
    /// Checks every field; returns the profile to store.
    pub(crate) fn validate(self) -> Result<RoutingProfile, ApiError> {
        let ring_timeout_secs = validate_ring_timeout(self.ring_timeout_secs)?;
        if self.ring_delays.len() > RING_DELAYS_MAX {
            return Err(ApiError::invalid(format!(
                "ring_delays: at most {RING_DELAYS_MAX} rules"
            )));
        }
        let mut ring_delays = Vec::with_capacity(self.ring_delays.len());
        for (i, rule) in self.ring_delays.into_iter().enumerate() {
            let len = rule.contact_contains.chars().count();
            if !(1..=CONTACT_CONTAINS_MAX).contains(&len)
                || rule.contact_contains.chars().any(char::is_control)
            {
                return Err(ApiError::invalid(format!(
                    "ring_delays[{i}].contact_contains: must be 1 to {CONTACT_CONTAINS_MAX} \
                     printable characters"
                )));
            }
            if rule.delay_ms > DELAY_MS_MAX {
                return Err(ApiError::invalid(format!(
                    "ring_delays[{i}].delay_ms: must be at most {DELAY_MS_MAX}"
                )));
            }
            ring_delays.push(RingDelay {
                contact_contains: rule.contact_contains,
                delay_ms: rule.delay_ms,
            });
        }
        Ok(RoutingProfile {
            ring_timeout_secs,
            ring_delays,
        })
    }
}

/// Checks a user name (creation body or path segment).
pub(crate) fn validate_user(user: &str) -> Result<(), ApiError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '~' | '+' | '-');
    let first_ok = user
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    if first_ok && user.len() <= USER_MAX && user.chars().all(allowed) {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "user: must be 1 to {USER_MAX} characters of A-Z a-z 0-9 . _ ~ + -, \
             starting with a letter or digit"
        )))
    }
}

fn validate_ring_timeout(secs: u32) -> Result<u32, ApiError> {
    if (1..=RING_TIMEOUT_MAX).contains(&secs) {
        Ok(secs)
    } else {
        Err(ApiError::invalid(format!(
            "ring_timeout_secs: must be 1 to {RING_TIMEOUT_MAX}"
        )))
    }
}

/// A subscriber as the API shows it: no password, no HA1s.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SubscriberView {
    /// The SIP user name.
    user: String,
    /// The address of record, `sip:USER@DOMAIN`.
    aor: String,
    /// The enterprise.
    enterprise: String,
    /// The routing profile.
    profile: RoutingProfileView,
    /// Creation time, Unix seconds.
    created_at: i64,
}

impl SubscriberView {
    /// The view of `sub`, whose address of record is `sip:USER@DOMAIN` (R1).
    pub(crate) fn new(sub: Subscriber, domain: &str) -> Self {
        Self {
            aor: format!("sip:{}@{domain}", sub.user),
            user: sub.user,
            enterprise: sub.enterprise,
            profile: sub.profile.into(),
            created_at: sub.created_at,
        }
    }
}

/// A subscriber's routing profile.
// The store's `RoutingProfile`, field for field: the store's types carry no schema.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RoutingProfileView {
    /// How long a forked call rings before the caller gets 480, in seconds.
    ring_timeout_secs: u32,
    /// Delayed branches.
    ring_delays: Vec<RingDelayView>,
}

/// One delayed-branch rule.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RingDelayView {
    /// Substring of the contact URI that selects the device.
    contact_contains: String,
    /// Delay before that device's branch is sent, in milliseconds.
    delay_ms: u32,
}

impl From<RoutingProfile> for RoutingProfileView {
    fn from(p: RoutingProfile) -> Self {
        Self {
            ring_timeout_secs: p.ring_timeout_secs,
            ring_delays: p
                .ring_delays
                .into_iter()
                .map(
                    |RingDelay {
                         contact_contains,
                         delay_ms,
                     }| RingDelayView {
                        contact_contains,
                        delay_ms,
                    },
                )
                .collect(),
        }
    }
}

/// A live registration as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RegistrationView {
    /// The contact URI as registered.
    contact: String,
    /// `UDP` or `TCP`.
    transport: String,
    /// Source address of the REGISTER, `ip:port`.
    source: String,
    /// Seconds until expiry, rounded up so a live registration never shows 0.
    expires_in_secs: i64,
    /// The Contact q-value, 0.0 to 1.0.
    q: f64,
}

impl RegistrationView {
    /// The view of `reg` at `now_ms` (Unix milliseconds).
    pub(crate) fn new(reg: Registration, now_ms: i64) -> Self {
        let remaining_ms = reg.expires_at_ms.saturating_sub(now_ms).max(0);
        Self {
            contact: reg.contact,
            transport: reg.transport,
            source: reg.source,
            expires_in_secs: remaining_ms.saturating_add(999) / 1000,
            q: f64::from(reg.q) / 1000.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names() {
        for ok in [
            "alice",
            "a",
            "bob.smith",
            "x_y~z+1-2",
            "5082",
            &"a".repeat(64),
        ] {
            assert!(validate_user(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(65);
        for bad in [
            "", ".", "..", "-a", "al ice", "al@ice", "al/ice", "é", &long,
        ] {
            assert!(validate_user(bad).is_err(), "{bad}");
        }
    }

    fn create(user: &str, password: &str, enterprise: &str, secs: Option<u32>) -> CreateSubscriber {
        CreateSubscriber {
            user: user.into(),
            password: password.into(),
            enterprise: enterprise.into(),
            ring_timeout_secs: secs,
        }
    }

    #[test]
    fn create_rules() {
        const PW: &str = "correct horse";
        let profile = create("alice", PW, "acme", Some(45)).validate();
        assert_eq!(profile.map(|p| p.ring_timeout_secs).ok(), Some(45));
        assert!(create("alice", PW, "acme", None).validate().is_ok());
        assert!(
            create("alice", &"p".repeat(12), "acme", None)
                .validate()
                .is_ok()
        );
        for short in ["", "pw", "s3cret", &"p".repeat(11), "ééééééééééé"] {
            let err = create("alice", short, "acme", None).validate().err();
            assert_eq!(
                err.as_ref().map(ApiError::code),
                Some("weak_password"),
                "{short}"
            );
            assert!(
                err.as_ref()
                    .is_some_and(|e| e.detail().contains("at least 12 characters")),
                "{err:?}"
            );
        }
        // Characters, not bytes: 12 two-byte characters are enough.
        assert!(
            create("alice", &"é".repeat(12), "acme", None)
                .validate()
                .is_ok()
        );
        assert!(
            create("alice", &"p".repeat(129), "acme", None)
                .validate()
                .is_err()
        );
        assert!(
            create("alice", &"p".repeat(128), "acme", None)
                .validate()
                .is_ok()
        );
        assert!(create("alice", PW, "", None).validate().is_err());
        assert!(create("alice", PW, "   ", None).validate().is_err());
        assert!(create("alice", PW, "ac\nme", None).validate().is_err());
        assert!(
            create("alice", PW, &"e".repeat(65), None)
                .validate()
                .is_err()
        );
        assert!(create("alice", PW, "Acme Corp.", None).validate().is_ok());
        assert!(create("alice", PW, "acme", Some(0)).validate().is_err());
        assert!(create("alice", PW, "acme", Some(601)).validate().is_err());
        assert!(create("alice", PW, "acme", Some(600)).validate().is_ok());
    }

    fn rule(contains: &str, delay_ms: u32) -> RingDelayUpdate {
        RingDelayUpdate {
            contact_contains: contains.into(),
            delay_ms,
        }
    }

    #[test]
    fn profile_rules() {
        let update = |delays: Vec<RingDelayUpdate>| ProfileUpdate {
            ring_timeout_secs: 30,
            ring_delays: delays,
        };
        assert!(update(vec![rule("5082", 2000)]).validate().is_ok());
        assert!(update(vec![rule("5082", 60_000)]).validate().is_ok());
        assert!(update(vec![rule("5082", 60_001)]).validate().is_err());
        assert!(update(vec![rule("", 0)]).validate().is_err());
        assert!(update(vec![rule(&"c".repeat(129), 0)]).validate().is_err());
        assert!(
            update((0..16).map(|_| rule("x", 1)).collect())
                .validate()
                .is_ok()
        );
        assert!(
            update((0..17).map(|_| rule("x", 1)).collect())
                .validate()
                .is_err()
        );
        let zero = ProfileUpdate {
            ring_timeout_secs: 0,
            ring_delays: Vec::new(),
        };
        assert!(zero.validate().is_err());
    }

    /// The OpenAPI schema's bounds are literals (utoipa takes no constants): they must be
    /// the rules enforced above.
    #[test]
    fn schema_bounds_match_the_rules() {
        let doc = serde_json::to_value(&*crate::openapi::DOC).unwrap_or_default();
        let bound = |schema: &str, field: &str, key: &str| {
            doc["components"]["schemas"][schema]["properties"][field][key].as_u64()
        };
        let n = |v: usize| u64::try_from(v).ok();
        assert_eq!(bound("CreateSubscriber", "user", "maxLength"), n(USER_MAX));
        assert_eq!(bound("CreateSubscriber", "user", "minLength"), Some(1));
        assert_eq!(
            bound("CreateSubscriber", "password", "maxLength"),
            n(PASSWORD_MAX)
        );
        assert_eq!(
            bound("CreateSubscriber", "password", "minLength"),
            n(PASSWORD_MIN)
        );
        assert_eq!(
            bound("CreateSubscriber", "enterprise", "maxLength"),
            n(ENTERPRISE_MAX)
        );
        for schema in ["CreateSubscriber", "ProfileUpdate"] {
            assert_eq!(bound(schema, "ring_timeout_secs", "minimum"), Some(1));
            assert_eq!(
                bound(schema, "ring_timeout_secs", "maximum"),
                Some(u64::from(RING_TIMEOUT_MAX))
            );
        }
        assert_eq!(
            bound("ProfileUpdate", "ring_delays", "maxItems"),
            n(RING_DELAYS_MAX)
        );
        assert_eq!(
            bound("RingDelayUpdate", "contact_contains", "maxLength"),
            n(CONTACT_CONTAINS_MAX)
        );
        assert_eq!(
            bound("RingDelayUpdate", "delay_ms", "maximum"),
            Some(u64::from(DELAY_MS_MAX))
        );
    }

    #[test]
    fn registration_view_rounds_up_and_scales_q() {
        let reg = Registration {
            user: "alice".into(),
            contact: "sip:alice@192.0.2.1:5060".into(),
            transport: "UDP".into(),
            source: "192.0.2.1:5060".into(),
            local: "192.0.2.9:5060".into(),
            call_id: "c1".into(),
            cseq: 1,
            expires_at_ms: 10_500,
            q: 500,
            device_id: None,
        };
        let view = RegistrationView::new(reg, 1_000);
        assert_eq!(view.expires_in_secs, 10);
        assert!((view.q - 0.5).abs() < f64::EPSILON);
    }
}
