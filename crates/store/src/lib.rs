//! trustring's trusted data store (the patent's "trusted data store"): subscribers, their
//! routing profiles and their registrations.
//!
//! One trait, [`Store`], with an embedded SQLite implementation ([`SqliteStore`], the default,
//! under `./trustring-data`). A PostgreSQL implementation for several server nodes comes later
//! and must pass the same battery of tests (`tests/battery.rs`).
//!
//! The trait is synchronous on purpose: SQLite calls are short and local, and the async
//! callers run them on tokio's blocking pool. Every method is one transaction, so nothing is
//! half-written if the process dies.

mod sqlite;

pub use sqlite::SqliteStore;

/// Store errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The record exists already (e.g. a subscriber with that user name).
    #[error("{0} already exists")]
    Conflict(String),
    /// The record does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The database failed.
    #[error("database error: {0}")]
    Database(String),
}

/// A subscriber: an address of record `sip:user@DOMAIN` that belongs to an enterprise (R1).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Subscriber {
    /// The user part of the address of record.
    pub user: String,
    /// The enterprise the subscriber belongs to (billing entity for VoIP legs).
    pub enterprise: String,
    /// Digest HA1 = MD5(user:realm:password), hex. The password itself is never stored.
    pub ha1_md5: String,
    /// Digest HA1 = SHA-256(user:realm:password), hex (RFC 8760).
    pub ha1_sha256: String,
    /// The routing profile.
    pub profile: RoutingProfile,
    /// Creation time, Unix seconds.
    pub created_at: i64,
}

/// Per-identity routing profile (the patent's routing table entry).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RoutingProfile {
    /// How long a forked call rings before the caller gets 480, in seconds.
    pub ring_timeout_secs: u32,
    /// Delayed branches: a contact whose URI contains `contact_contains` is rung `delay_ms`
    /// after the others.
    pub ring_delays: Vec<RingDelay>,
}

impl Default for RoutingProfile {
    fn default() -> Self {
        Self {
            ring_timeout_secs: 30,
            ring_delays: Vec::new(),
        }
    }
}

/// One delayed-branch rule of a [`RoutingProfile`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RingDelay {
    /// Substring of the contact URI that selects the device.
    pub contact_contains: String,
    /// Delay before that device's branch is sent, in milliseconds.
    pub delay_ms: u32,
}

/// One registered contact of a subscriber (RFC 3261 §10).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Registration {
    /// The subscriber's user name.
    pub user: String,
    /// The contact URI as registered (without the angle brackets and header params).
    pub contact: String,
    /// Transport the REGISTER came over: `UDP` or `TCP`.
    pub transport: String,
    /// Source address of the REGISTER, `ip:port` (where requests are sent, RFC 3581 style).
    pub source: String,
    /// Local address the REGISTER arrived on, `ip:port`.
    pub local: String,
    /// Call-ID of the REGISTER (RFC 3261 §10.3 step 7).
    pub call_id: String,
    /// CSeq of the REGISTER.
    pub cseq: u32,
    /// Absolute expiry, Unix milliseconds.
    pub expires_at_ms: i64,
    /// Contact q-value times 1000 (RFC 3261 §20.10), 1000 when absent.
    pub q: u16,
}

/// The store: every method is atomic.
pub trait Store: Send + Sync + 'static {
    /// Creates a subscriber; [`StoreError::Conflict`] if the user exists.
    fn create_subscriber(&self, sub: &Subscriber) -> Result<(), StoreError>;
    /// One subscriber.
    fn subscriber(&self, user: &str) -> Result<Option<Subscriber>, StoreError>;
    /// All subscribers, ordered by user.
    fn subscribers(&self) -> Result<Vec<Subscriber>, StoreError>;
    /// Replaces a subscriber's routing profile; [`StoreError::NotFound`] if absent.
    fn set_profile(&self, user: &str, profile: &RoutingProfile) -> Result<(), StoreError>;
    /// Deletes a subscriber and their registrations; `false` if there was none.
    fn delete_subscriber(&self, user: &str) -> Result<bool, StoreError>;

    /// Inserts or replaces the registration of (`user`, `contact`).
    fn put_registration(&self, reg: &Registration) -> Result<(), StoreError>;
    /// Deletes one registration; `false` if there was none.
    fn delete_registration(&self, user: &str, contact: &str) -> Result<bool, StoreError>;
    /// Deletes every registration of `user`; returns how many.
    fn delete_registrations(&self, user: &str) -> Result<usize, StoreError>;
    /// Registrations of `user` (all users if `None`) that have not expired at `now_ms`,
    /// ordered by user, then q descending, then contact.
    fn registrations(
        &self,
        user: Option<&str>,
        now_ms: i64,
    ) -> Result<Vec<Registration>, StoreError>;
    /// Deletes registrations that expired before `now_ms`; returns how many.
    fn purge_expired(&self, now_ms: i64) -> Result<usize, StoreError>;
}
