//! trustring's trusted data store (the patent's "trusted data store"): subscribers, their
//! routing profiles and their registrations; the number identity pool, EULA versions,
//! enrolment codes and enrolled devices; security events.
//!
//! One trait, [`Store`], with an embedded SQLite implementation ([`SqliteStore`], the default,
//! under `./trustring-data`) and a PostgreSQL one for several server nodes
//! (`PostgresStore`); both pass the same battery of tests (`tests/battery/`). [`Backend`]
//! opens either from one `--db` value.
//!
//! The trait is synchronous on purpose: SQLite calls are short and local, and the async
//! callers run them on tokio's blocking pool (the PostgreSQL store drives its async driver on
//! a runtime of its own, see `PostgresStore`). Every method is one transaction, so nothing
//! is half-written if the process dies.

pub mod billing;
mod chain;
#[cfg(feature = "postgres")]
mod postgres;
pub mod signing;
mod sqlite;

use std::path::Path;
use std::sync::Arc;

pub use chain::cdr_hash;
#[cfg(feature = "postgres")]
pub use postgres::{POOL_SIZE, PostgresStore};
pub use signing::{CdrPublicKey, CdrSigner, SignedHead};
pub use sqlite::SqliteStore;

/// A store opened from a `--db` value: a `postgres://` (or `postgresql://`) URL, or the path
/// of a SQLite file. Keeps the backend-specific calls (CDR signing, verification with a key)
/// until [`Backend::into_store`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Backend {
    /// The embedded SQLite file.
    Sqlite(SqliteStore),
    /// A PostgreSQL database.
    #[cfg(feature = "postgres")]
    Postgres(PostgresStore),
}

impl Backend {
    /// Opens `db`: `PostgresStore::open` for a PostgreSQL URL, else [`SqliteStore::open`] of
    /// that path. Errors never contain the URL's password.
    pub fn open(db: &str) -> Result<Self, StoreError> {
        if is_postgres_url(db) {
            #[cfg(feature = "postgres")]
            return PostgresStore::open(db).map(Self::Postgres);
            #[cfg(not(feature = "postgres"))]
            return Err(StoreError::Database(format!(
                "{}: this build has no PostgreSQL support (feature `postgres`)",
                redact_url(db)
            )));
        } else {
            SqliteStore::open(Path::new(db)).map(Self::Sqlite)
        }
    }

    /// [`SqliteStore::with_cdr_signing`] or `PostgresStore::with_cdr_signing`.
    pub fn with_cdr_signing(self, dir: &Path) -> Result<Self, StoreError> {
        match self {
            Self::Sqlite(s) => s.with_cdr_signing(dir).map(Self::Sqlite),
            #[cfg(feature = "postgres")]
            Self::Postgres(p) => p.with_cdr_signing(dir).map(Self::Postgres),
        }
    }

    /// The public half of the CDR signing key, if records are signed.
    pub fn cdr_public_key(&self) -> Option<CdrPublicKey> {
        match self {
            Self::Sqlite(s) => s.cdr_public_key(),
            #[cfg(feature = "postgres")]
            Self::Postgres(p) => p.cdr_public_key(),
        }
    }

    /// [`SqliteStore::verify_cdrs_with`] on either backend.
    pub fn verify_cdrs_with(
        &self,
        key: Option<&CdrPublicKey>,
        heads: &[(String, SignedHead)],
    ) -> Result<ChainReport, StoreError> {
        match self {
            Self::Sqlite(s) => s.verify_cdrs_with(key, heads),
            #[cfg(feature = "postgres")]
            Self::Postgres(p) => p.verify_cdrs_with(key, heads),
        }
    }

    /// The store behind the trait, for the callers that need no more.
    pub fn into_store(self) -> Arc<dyn Store> {
        match self {
            Self::Sqlite(s) => Arc::new(s),
            #[cfg(feature = "postgres")]
            Self::Postgres(p) => Arc::new(p),
        }
    }
}

/// Opens `db` ([`Backend::open`]) as a plain [`Store`].
pub fn open(db: &str) -> Result<Arc<dyn Store>, StoreError> {
    Backend::open(db).map(Backend::into_store)
}

/// Whether `db` names a PostgreSQL database (`postgres://` or `postgresql://`).
pub fn is_postgres_url(db: &str) -> bool {
    db.starts_with("postgres://") || db.starts_with("postgresql://")
}

/// `url` without its password (`postgres://user:***@host/db`, `password=***`), for logs and
/// errors; anything else (a file path) unchanged.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_owned();
    // The userinfo of a URL: between `://` and the last `@` before the path.
    if let Some(scheme_end) = out.find("://") {
        let rest = scheme_end + 3;
        let authority_end = out[rest..].find(['/', '?']).map_or(out.len(), |i| rest + i);
        if let Some(at) = out[rest..authority_end].rfind('@') {
            let at = rest + at;
            if let Some(colon) = out[rest..at].find(':') {
                out.replace_range(rest + colon + 1..at, "***");
            }
        }
    }
    // A `password=` query parameter.
    if let Some(q) = out.find('?') {
        let (head, query) = out.split_at(q + 1);
        let query: Vec<String> = query
            .split('&')
            .map(|kv| {
                if kv.starts_with("password=") {
                    "password=***".to_owned()
                } else {
                    kv.to_owned()
                }
            })
            .collect();
        out = format!("{head}{}", query.join("&"));
    }
    out
}

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

/// A change to the registrations ([`Store::apply_registrations`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrationChange {
    /// Insert or replace this binding ([`Store::put_registration`]).
    Put(Registration),
    /// Remove `user`'s binding of `contact` ([`Store::delete_registration`]).
    Delete {
        /// The subscriber.
        user: String,
        /// The contact URI as registered.
        contact: String,
    },
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
    /// The enrolled device ([`Device::id`]) this binding belongs to, `None` for an ordinary
    /// (desktop) contact. Persisted, so a phone's binding restored after a restart is still
    /// known to be the phone's.
    pub device_id: Option<String>,
}

/// How many identifiers of the number identity pool are in each state (R3).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct PoolCounts {
    /// Free: ready to be assigned.
    pub free: u64,
    /// Assigned to an enrolled device.
    pub assigned: u64,
    /// Taken back from a revoked device; not assignable until released
    /// ([`Store::release_quarantined`]).
    pub quarantined: u64,
}

/// One published EULA version (R4).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Eula {
    /// The version label, unique.
    pub version: String,
    /// The full text of the agreement.
    pub text: String,
    /// Publication time, Unix milliseconds.
    pub published_at_ms: i64,
}

/// A one-time enrolment code issued for a subscriber. Only a hash of the code is stored;
/// the caller hashes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Enrolment {
    /// Hash of the code, as computed by the caller; unique.
    pub code_hash: String,
    /// The subscriber the code enrols a device for.
    pub user: String,
    /// Issue time, Unix milliseconds.
    pub created_at_ms: i64,
    /// The code is valid while `now_ms < expires_at_ms`.
    pub expires_at_ms: i64,
    /// When the code was used, Unix milliseconds; `None` while unused.
    pub used_at_ms: Option<i64>,
    /// The device enrolled with the code; `None` while unused.
    pub device_id: Option<String>,
    /// The trusted-zone public key the code is bound to (its text form), set by the code's
    /// first presentation ([`Store::present_code`] or [`Store::enrol`]); `None` until then.
    /// Another key presenting the code is refused ([`EnrolError::CodeBound`]).
    pub zone_public_key: Option<String>,
    /// When the code was first presented, Unix milliseconds; `None` until then.
    pub presented_at_ms: Option<i64>,
}

/// Why and when a device was revoked (R9).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Revocation {
    /// The reason given (e.g. `non-payment`, `left`, `eula-breach`, `subscriber-deleted`).
    pub reason: String,
    /// Revocation time, Unix milliseconds.
    pub at_ms: i64,
}

/// An enrolled phone (the patent's mobile device with a trusted zone).
///
/// Deliberately not `Serialize`: `identifier` is hidden (R5) and `license_key_enc` is key
/// material (R4); the API layer must build its own view. `Debug` redacts them and the SIP
/// digest HA1s (password equivalents).
#[derive(Clone, PartialEq, Eq)]
pub struct Device {
    /// Device id, unique, chosen by the caller at enrolment.
    pub id: String,
    /// The subscriber the device belongs to.
    pub user: String,
    /// The identifier from the number identity pool, cross-listed with the subscriber's
    /// identity (R5). HIDDEN: never serialise, log or return it after provisioning.
    pub identifier: String,
    /// How the trusted zone keeps its keys: `software` or `pkcs11`.
    pub security_level: String,
    /// The trusted zone's public key the delivery was sealed to (R6, R7).
    pub zone_public_key: String,
    /// The EULA version accepted for this device (R4).
    pub eula_version: String,
    /// When that EULA was accepted, Unix milliseconds.
    pub eula_accepted_at_ms: i64,
    /// The license key, encrypted at rest by the caller (R4). Never log or return it.
    pub license_key_enc: String,
    /// Digest HA1 (MD5) of the device's own SIP credentials, hex.
    pub sip_ha1_md5: String,
    /// Digest HA1 (SHA-256, RFC 8760) of the device's own SIP credentials, hex.
    pub sip_ha1_sha256: String,
    /// Hash of the device's API bearer token; unique.
    pub token_hash: String,
    /// Whether the single-number service is on for this device (R10).
    pub service_on: bool,
    /// Set once the device is revoked (R9); a revoked device never rings again.
    pub revoked: Option<Revocation>,
    /// Enrolment time, Unix milliseconds.
    pub created_at_ms: i64,
    /// The phone's own number (E.164), for its leg through the gateway (R15); `None` until
    /// set. Unique among active phones.
    pub number: Option<String>,
}

/// Placeholder printed instead of secret or hidden fields.
const REDACTED: &str = "<redacted>";

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("id", &self.id)
            .field("user", &self.user)
            .field("identifier", &REDACTED)
            .field("security_level", &self.security_level)
            .field("zone_public_key", &self.zone_public_key)
            .field("eula_version", &self.eula_version)
            .field("eula_accepted_at_ms", &self.eula_accepted_at_ms)
            .field("license_key_enc", &REDACTED)
            .field("sip_ha1_md5", &REDACTED)
            .field("sip_ha1_sha256", &REDACTED)
            .field("token_hash", &self.token_hash)
            .field("service_on", &self.service_on)
            .field("revoked", &self.revoked)
            .field("created_at_ms", &self.created_at_ms)
            .field("number", &self.number)
            .finish()
    }
}

/// The [`Device`] fields the caller chooses at enrolment ([`Store::enrol`]); the store adds
/// the user (from the code), the identifier (from the pool), `service_on = true`, no
/// revocation and `created_at_ms = now_ms`. `Debug` redacts the secrets like [`Device`]'s.
#[derive(Clone, PartialEq, Eq)]
pub struct NewDevice {
    /// See [`Device::id`].
    pub id: String,
    /// See [`Device::security_level`].
    pub security_level: String,
    /// See [`Device::zone_public_key`].
    pub zone_public_key: String,
    /// See [`Device::eula_version`]; must be the current EULA.
    pub eula_version: String,
    /// See [`Device::eula_accepted_at_ms`].
    pub eula_accepted_at_ms: i64,
    /// See [`Device::license_key_enc`].
    pub license_key_enc: String,
    /// See [`Device::sip_ha1_md5`].
    pub sip_ha1_md5: String,
    /// See [`Device::sip_ha1_sha256`].
    pub sip_ha1_sha256: String,
    /// See [`Device::token_hash`].
    pub token_hash: String,
}

impl std::fmt::Debug for NewDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewDevice")
            .field("id", &self.id)
            .field("security_level", &self.security_level)
            .field("zone_public_key", &self.zone_public_key)
            .field("eula_version", &self.eula_version)
            .field("eula_accepted_at_ms", &self.eula_accepted_at_ms)
            .field("license_key_enc", &REDACTED)
            .field("sip_ha1_md5", &REDACTED)
            .field("sip_ha1_sha256", &REDACTED)
            .field("token_hash", &self.token_hash)
            .finish()
    }
}

/// The result of a successful [`Store::enrol`]: the new device and the identifier assigned
/// to it (to be sealed to the trusted zone, R7). `Debug` redacts the identifier.
#[derive(Clone, PartialEq, Eq)]
pub struct Enrolled {
    /// The device as stored.
    pub device: Device,
    /// The identifier taken from the pool (equal to `device.identifier`). HIDDEN (R5).
    pub identifier: String,
}

impl std::fmt::Debug for Enrolled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrolled")
            .field("device", &self.device)
            .field("identifier", &REDACTED)
            .finish()
    }
}

/// Why [`Store::enrol`] refused; nothing was changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnrolError {
    /// No enrolment code has that hash.
    #[error("unknown enrolment code")]
    CodeUnknown,
    /// The code was used already.
    #[error("enrolment code already used")]
    CodeUsed,
    /// The code has expired.
    #[error("enrolment code expired")]
    CodeExpired,
    /// The code was first presented with another trusted-zone key: it is bound to that key
    /// (R28), even if that enrolment never finished.
    #[error("enrolment code already presented by another zone key")]
    CodeBound,
    /// The accepted EULA version is not the current one (`current` is `None` when no EULA
    /// has been published).
    #[error("EULA version {accepted} is not the current one")]
    EulaNotCurrent {
        /// The version the caller accepted.
        accepted: String,
        /// The current version, if any.
        current: Option<String>,
    },
    /// The number identity pool has no free identifier.
    #[error("number identity pool exhausted")]
    PoolExhausted,
    /// The store failed, or the device clashes with an existing one
    /// ([`StoreError::Conflict`]: same id or token hash).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A security event (R14): a refused proof, lock-out, revoked device, refused enrolment...
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SecurityEvent {
    /// Assigned by the store, increasing; ignored by [`Store::add_security_event`].
    pub id: i64,
    /// When it happened, Unix milliseconds.
    pub at_ms: i64,
    /// What happened, e.g. `missing-proof`, `wrong-proof`, `replayed-proof`, `locked-out`,
    /// `revoked-device`, `enrolment-refused`.
    pub kind: String,
    /// The subscriber concerned, if known.
    pub user: Option<String>,
    /// The device concerned, if known.
    pub device_id: Option<String>,
    /// The SIP Call-ID concerned, if any.
    pub call_id: Option<String>,
    /// Human-readable detail (never a secret or an identifier).
    pub detail: String,
}

/// One leg (branch) of a call in its CDR.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CdrLeg {
    /// The contact rung.
    pub contact: String,
    /// The enrolled phone behind it, if any.
    pub device: Option<String>,
    /// `voip` (SIP to a device) or `pstn` (through the gateway to the phone's number).
    pub leg_type: String,
    /// When the leg was rung, Unix ms (`None`: never sent).
    pub rang_at_ms: Option<i64>,
    /// `answered`, `cancelled-elsewhere`, `cancelled`, `busy`, `no-answer`, `declined`,
    /// `failed-trust`, `revoked`, `not-rung`, `failed`.
    pub outcome: String,
    /// Its final SIP status, if any.
    pub status: Option<u16>,
    /// Who pays for this leg (R19): the enterprise for VoIP legs, the user for PSTN legs.
    pub billing_entity: String,
    /// Billable time of this leg, ms (the answered leg's talk time; 0 otherwise).
    pub billable_ms: i64,
}

/// A call detail record (R18). Append-only; `hash` chains it to the record before.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cdr {
    /// Assigned by the store, increasing.
    pub id: i64,
    /// SIP Call-ID.
    pub call_id: String,
    /// The caller (From URI).
    pub caller: String,
    /// The called identity (address of record).
    pub called: String,
    /// Setup (INVITE received), Unix ms.
    pub setup_ms: i64,
    /// Answer, Unix ms.
    pub answer_ms: Option<i64>,
    /// End, Unix ms.
    pub end_ms: i64,
    /// Talk time (end - answer), ms; 0 if unanswered.
    pub duration_ms: i64,
    /// The final status the caller got.
    pub final_status: u16,
    /// `caller`, `callee` or `proxy`.
    pub released_by: String,
    /// Why it ended (`BYE`, `486 Busy Here`, `ring timeout`, ...).
    pub release_cause: String,
    /// Index into `legs` of the answering leg.
    pub answered_by: Option<usize>,
    /// Every leg, in fork order.
    pub legs: Vec<CdrLeg>,
    /// Hash of the previous record (64 zeros for the first).
    pub prev_hash: String,
    /// The record's hash, hex: `SHA-256` over the previous hash and every stored column of the
    /// record, its billing-entity rows included ([`cdr_hash`], `docs/cdr.md`; records written
    /// before version 2 hash `"trustring/v1/cdr" ‖ prev_hash ‖ body`).
    pub hash: String,
    /// Ed25519 signature of (id, hash) by the store's CDR signing key, hex ([`signing`]);
    /// `None` for records written without a key (before signing began).
    #[serde(default)]
    pub sig: Option<String>,
}

/// Result of walking the CDR hash chain ([`Store::verify_cdrs`],
/// [`SqliteStore::verify_cdrs_with`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ChainReport {
    /// Records checked.
    pub records: u64,
    /// The first problem, with the id of the record concerned (for a truncation, the first
    /// missing record), and why; `None` if nothing is wrong.
    pub first_bad: Option<(i64, String)>,
    /// The newest record: id and hash.
    pub last: Option<(i64, String)>,
    /// Whether signatures were checked (a public key was given).
    pub signatures_checked: bool,
    /// Records whose signature was checked and is valid.
    pub signed: u64,
    /// Unsigned records (ids, first and last) at the start of the chain, written before
    /// signing began and covered only through a signed head.
    pub unsigned: Option<(i64, i64)>,
    /// Every signed head that was checked and matches the chain: (where it came from, id).
    pub heads: Vec<(String, i64)>,
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
    /// Deletes a subscriber, their registrations and enrolment codes; `false` if there was
    /// none. In the same transaction their devices are revoked (reason
    /// `subscriber-deleted`, at the current time) and their identifiers quarantined; the
    /// device records remain.
    fn delete_subscriber(&self, user: &str) -> Result<bool, StoreError>;

    /// Inserts or replaces the registration of (`user`, `contact`).
    /// [`StoreError::NotFound`] if the subscriber does not exist, or `device_id` names no
    /// device of that subscriber; [`StoreError::Conflict`] if that device is revoked.
    fn put_registration(&self, reg: &Registration) -> Result<(), StoreError>;
    /// Deletes one registration; `false` if there was none.
    fn delete_registration(&self, user: &str, contact: &str) -> Result<bool, StoreError>;
    /// Applies `changes` in order and returns each one's result (a refused `Put` does not
    /// stop the others). A backend may commit them together (one sync for all: the server's
    /// store writer hands over what queued up while it was busy); the outer error means none
    /// was applied.
    fn apply_registrations(
        &self,
        changes: &[RegistrationChange],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        Ok(changes
            .iter()
            .map(|c| match c {
                RegistrationChange::Put(reg) => self.put_registration(reg),
                RegistrationChange::Delete { user, contact } => {
                    self.delete_registration(user, contact).map(|_| ())
                }
            })
            .collect())
    }
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

    /// Adds identifiers to the number identity pool as free (R3); returns how many were new.
    /// Identifiers already known (in any state, or repeated in `ids`) are skipped.
    fn add_identifiers(&self, ids: &[String]) -> Result<usize, StoreError>;
    /// How many identifiers are free, assigned and quarantined.
    fn pool_counts(&self) -> Result<PoolCounts, StoreError>;
    /// Returns to the free pool every identifier quarantined before `older_than_ms`
    /// (strictly); returns how many.
    fn release_quarantined(&self, older_than_ms: i64) -> Result<usize, StoreError>;

    /// Publishes a EULA version (R4), which becomes the current one unless a version with a
    /// later `published_at_ms` exists; [`StoreError::Conflict`] if the version exists.
    fn publish_eula(&self, eula: &Eula) -> Result<(), StoreError>;
    /// The current EULA: the latest `published_at_ms`, ties going to the last published.
    fn current_eula(&self) -> Result<Option<Eula>, StoreError>;
    /// Every EULA version, in the same order as [`Store::current_eula`] uses, oldest first
    /// (the last is current).
    fn eulas(&self) -> Result<Vec<Eula>, StoreError>;

    /// Stores an enrolment code; [`StoreError::Conflict`] if the hash exists,
    /// [`StoreError::NotFound`] if the subscriber (or a given `device_id`) does not.
    fn create_enrolment(&self, enrolment: &Enrolment) -> Result<(), StoreError>;
    /// The enrolment codes of `user`, ordered by creation time, then hash.
    fn enrolments(&self, user: &str) -> Result<Vec<Enrolment>, StoreError>;

    /// Presents the code `code_hash` with the trusted-zone key `zone_public_key` (its text
    /// form) at `now_ms`, in a transaction of its own (R28): checks that the code exists, is
    /// unused and has not expired; on its first presentation binds it to that key (durable
    /// when this returns, whatever happens to the enrolment after); on later ones requires
    /// the same key. Errors: [`EnrolError::CodeUnknown`], [`EnrolError::CodeUsed`],
    /// [`EnrolError::CodeExpired`], [`EnrolError::CodeBound`] (another key came first).
    /// Two concurrent first presentations with different keys: exactly one binds.
    fn present_code(
        &self,
        code_hash: &str,
        zone_public_key: &str,
        now_ms: i64,
    ) -> Result<(), EnrolError>;
    /// Enrols a device, atomically: checks that the code `code_hash` exists, is unused and
    /// has not expired at `now_ms`, that it is not bound to a zone key other than
    /// `new.zone_public_key` (it is bound to that key if it was not yet), and that
    /// `new.eula_version` is the current EULA; takes the lowest free identifier from the pool
    /// and assigns it to the device; stores the device for the code's subscriber; marks the
    /// code used by it. Each identifier is assigned exactly once, even under concurrent calls
    /// (from several nodes too). Nothing is changed when it fails (a binding made by
    /// [`Store::present_code`] before stays).
    fn enrol(&self, code_hash: &str, now_ms: i64, new: &NewDevice) -> Result<Enrolled, EnrolError>;
    /// One device (revoked ones included).
    fn device(&self, id: &str) -> Result<Option<Device>, StoreError>;
    /// The devices of `user` (all if `None`), revoked ones included, ordered by creation
    /// time, then id.
    fn devices(&self, user: Option<&str>) -> Result<Vec<Device>, StoreError>;
    /// Switches the single-number service of a device on or off (R10);
    /// [`StoreError::NotFound`] if there is no such device.
    fn set_service(&self, id: &str, on: bool) -> Result<(), StoreError>;
    /// Replaces a device's encrypted license key (master key rotation re-encrypts every
    /// record); [`StoreError::NotFound`] if there is no such device.
    fn set_license_key_enc(&self, id: &str, license_key_enc: &str) -> Result<(), StoreError>;
    /// Sets (or clears) a device's number; [`StoreError::Conflict`] if another active
    /// phone has it, [`StoreError::NotFound`] if there is no such device.
    fn set_number(&self, id: &str, number: Option<&str>) -> Result<(), StoreError>;
    /// Revokes a device (R9): records the reason and time, moves its identifier to
    /// quarantine (at `now_ms`) and deletes its registrations; returns the revoked device.
    /// [`StoreError::NotFound`] if there is no such device, [`StoreError::Conflict`] if it
    /// is revoked already.
    fn revoke_device(&self, id: &str, reason: &str, now_ms: i64) -> Result<Device, StoreError>;
    /// The device whose token hash is `hash` (revoked ones included: check
    /// [`Device::revoked`]).
    fn device_by_token_hash(&self, hash: &str) -> Result<Option<Device>, StoreError>;

    /// Records a security event (R14); returns its id (`event.id` is ignored). Ids increase.
    fn add_security_event(&self, event: &SecurityEvent) -> Result<i64, StoreError>;
    /// Up to `limit` security events with an id greater than `since_id`, ascending.
    fn security_events(&self, since_id: i64, limit: u32) -> Result<Vec<SecurityEvent>, StoreError>;
    /// Up to `limit` security events with an id smaller than `before_id`, newest first
    /// (`i64::MAX`: the newest ones); the page of the next older ones starts before the last
    /// id returned.
    fn security_events_newest(
        &self,
        before_id: i64,
        limit: u32,
    ) -> Result<Vec<SecurityEvent>, StoreError>;

    /// Appends a CDR (R18): the store assigns `id`, `prev_hash` and `hash` (whatever the
    /// caller put there is ignored) in the same transaction as the insert, and returns the
    /// record as stored. Durable when this returns.
    fn append_cdr(&self, cdr: &Cdr) -> Result<Cdr, StoreError>;
    /// Appends `cdrs` in order, as [`Store::append_cdr`] would one by one, and returns them
    /// as stored. A backend may commit them together (one sync for all: the server's store
    /// writer hands over what queued up while it was busy); all are durable when this
    /// returns. On error, none or a prefix of them was stored.
    fn append_cdrs(&self, cdrs: &[Cdr]) -> Result<Vec<Cdr>, StoreError> {
        cdrs.iter().map(|c| self.append_cdr(c)).collect()
    }
    /// CDRs whose setup time is in `[from_ms, to_ms)`, naming `entity` as a billing entity
    /// if given, in id order.
    fn cdrs(&self, from_ms: i64, to_ms: i64, entity: Option<&str>) -> Result<Vec<Cdr>, StoreError>;
    /// One page of [`Store::cdrs`]: at most `limit` of those records, oldest first after the
    /// cursor `after` (ids above it), or with `newest_first` newest first (ids below it). The
    /// last record's id is the cursor of the next page; `None` starts at the oldest (newest).
    fn cdrs_page(
        &self,
        from_ms: i64,
        to_ms: i64,
        entity: Option<&str>,
        after: Option<i64>,
        limit: u32,
        newest_first: bool,
    ) -> Result<Vec<Cdr>, StoreError> {
        let mut all = self.cdrs(from_ms, to_ms, entity)?;
        if newest_first {
            all.reverse();
            all.retain(|c| after.is_none_or(|a| c.id < a));
        } else {
            all.retain(|c| after.is_none_or(|a| c.id > a));
        }
        all.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        Ok(all)
    }
    /// Walks the whole chain and names the first record that was changed, removed or
    /// inserted out of band: its hash, its link to the record before, its stored columns and
    /// its billing-entity rows (signatures are checked by
    /// [`SqliteStore::verify_cdrs_with`], which needs the public key).
    fn verify_cdrs(&self) -> Result<ChainReport, StoreError>;
}
