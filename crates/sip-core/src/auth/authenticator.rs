//! The digest authenticator: stateless nonces, the verification of credentials, and the
//! bounded per-nonce replay table.
//!
//! # Nonces
//! A nonce is 64 lowercase hex digits: the issue time (milliseconds since the epoch given to
//! [`Authenticator::new`], u64), the set of algorithms its challenge offered (one byte) with a
//! counter (56 bits, so two nonces issued in the same millisecond differ) and the first 16
//! bytes of `HMAC-SHA-256(secret, label ‖ realm ‖ time ‖ offered ‖ counter ‖ client)`, where
//! `client` is the address the challenge was sent to (or nothing, for unbound nonces).
//! Issuing one stores nothing, so unauthenticated floods cannot grow memory.
//!
//! # Replay
//! Only a successful verification stores anything: for that nonce, the highest `nc` accepted
//! and how many times it was used. Entries leave when their nonce expires, and the table
//! holds at most [`MAX_TRACKED_NONCES`]; past that the oldest nonce is forgotten *and
//! refused as stale* from then on (never accepted again), so a full table costs clients one
//! extra challenge, not replay protection.
//!
//! The replay table lives in memory: give each process start a fresh random secret (then
//! nonces from before a restart are [`AuthError::UnknownNonce`]). With a persisted secret,
//! or several nodes sharing one, a request captured before a restart or sent to another node
//! could be replayed once within the nonce lifetime.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::{Choice, ConstantTimeEq};

use super::{Algorithm, AuthError, Credentials, ResponseInput, response};

/// Most nonces whose `nc` is remembered at once (about 3 MB). Reached only by successful
/// authentications within one nonce lifetime (at the 300 s default, over 200 new
/// authenticated clients a second); past it the oldest nonces are refused as stale.
pub const MAX_TRACKED_NONCES: usize = 65_536;

const NONCE_LABEL: &[u8] = b"trustring digest nonce v1\0";
const OPAQUE_LABEL: &[u8] = b"trustring digest opaque v1\0";
const DUMMY_HA1_LABEL: &[u8] = b"trustring digest dummy ha1 v1\0";
const TAG_LEN: usize = 16;
const NONCE_LEN: usize = 8 + 8 + TAG_LEN;
/// The nonce's second word: the algorithms offered (top byte, [`Algorithm::offer_bit`]) and
/// a counter (the low 56 bits).
const COUNTER_BITS: u32 = 56;
const COUNTER_MASK: u64 = (1 << COUNTER_BITS) - 1;

/// Settings of an [`Authenticator`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestConfig {
    /// The realm put in challenges and required in credentials.
    pub realm: String,
    /// How long a nonce is good for; after that it is [`AuthError::Stale`]. Default 300 s.
    pub nonce_ttl: Duration,
    /// How many successful requests one nonce may authenticate (0 counts as 1); after that
    /// it is [`AuthError::Stale`]. Default 1000.
    pub max_nonce_uses: u32,
}

impl Default for DigestConfig {
    /// [`DigestConfig::new`] with an empty realm: set `realm` before use.
    fn default() -> Self {
        Self::new(String::new())
    }
}

impl DigestConfig {
    /// The defaults for `realm`: nonces live 300 s and serve at most 1000 requests.
    pub fn new(realm: impl Into<String>) -> Self {
        Self {
            realm: realm.into(),
            nonce_ttl: Duration::from_secs(300),
            max_nonce_uses: 1000,
        }
    }
}

/// Credentials that passed [`Authenticator::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The authenticated user. The registrar must check it against the To user (SECURITY
    /// threat 2).
    pub username: String,
    /// The algorithm the client answered with.
    pub algorithm: Algorithm,
    /// The `uri` the digest covers: the caller must check it against the Request-URI
    /// (RFC 3261 §22.4).
    pub uri: String,
}

/// What is remembered about a nonce that authenticated at least one request.
#[derive(Debug, Clone, Copy)]
struct NonceUse {
    issued_ms: u64,
    highest_nc: u32,
    uses: u32,
}

/// A Sans-IO digest authenticator (RFC 7616 with RFC 8760's SHA-256), one per server.
///
/// It holds the secret that authenticates its nonces and the replay table; it never reads
/// a clock or a random source.
pub struct Authenticator {
    config: DigestConfig,
    /// HMAC-SHA-256 keyed with the secret, cloned for every tag.
    mac: Hmac<Sha256>,
    epoch: Instant,
    counter: u64,
    opaque: String,
    dummy_sha256: String,
    dummy_md5: String,
    seen: BTreeMap<u64, NonceUse>,
    /// Every counter at or below this was evicted for room: refused as stale if not in `seen`.
    evicted_through: Option<u64>,
    capacity: usize,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("config", &self.config)
            .field("counter", &self.counter)
            .field("tracked_nonces", &self.seen.len())
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// An authenticator for `config.realm`. `secret` must be 32 random bytes (a fresh one per
    /// process start is best, see the module notes); `epoch` is any `Instant` at or before
    /// the first `now` this will be given.
    pub fn new(config: DigestConfig, secret: [u8; 32], epoch: Instant) -> Self {
        // HMAC pads keys shorter than the block with zeros (RFC 2104 §2), so this is HMAC
        // keyed with the 32-byte secret, built without a fallible constructor.
        let mut key = [0u8; 64];
        key[..32].copy_from_slice(&secret);
        let mac = <Hmac<Sha256> as KeyInit>::new(&key.into());
        let mut this = Self {
            config,
            mac,
            epoch,
            counter: 0,
            opaque: String::new(),
            dummy_sha256: String::new(),
            dummy_md5: String::new(),
            seen: BTreeMap::new(),
            evicted_through: None,
            capacity: MAX_TRACKED_NONCES,
        };
        let realm = this.config.realm.clone();
        this.opaque = hex::encode(&this.tag(OPAQUE_LABEL, &[realm.as_bytes()])[..TAG_LEN]);
        let dummy = this.tag(DUMMY_HA1_LABEL, &[realm.as_bytes()]);
        this.dummy_sha256 = hex::encode(dummy);
        this.dummy_md5 = hex::encode(&dummy[..16]);
        this
    }

    /// The settings this authenticator was made with.
    pub fn config(&self) -> &DigestConfig {
        &self.config
    }

    /// How many nonces the replay table remembers now (at most [`MAX_TRACKED_NONCES`]).
    pub fn tracked_nonces(&self) -> usize {
        self.seen.len()
    }

    /// The `WWW-Authenticate` (401) or `Proxy-Authenticate` (407) values offering both
    /// algorithms, SHA-256 first (RFC 8760): [`challenges_offering`](Self::challenges_offering)
    /// with `[Sha256, Md5]`.
    pub fn challenges(&mut self, now: Instant, stale: bool) -> Vec<String> {
        self.challenges_offering(now, stale, &[Algorithm::Sha256, Algorithm::Md5])
    }

    /// The `WWW-Authenticate` (401) or `Proxy-Authenticate` (407) values, one header per
    /// algorithm of `offer`, in that order (RFC 7616 §3.7: most preferred first). All carry
    /// the same fresh nonce and opaque, `qop="auth"`, and `stale=true` when `stale` is set
    /// (answer to [`AuthError::Stale`]).
    ///
    /// The nonce is bound to the set offered: credentials computed with an algorithm that
    /// was not offered are refused ([`AuthError::AlgorithmNotOffered`]), so a client cannot
    /// downgrade a SHA-256-only challenge to MD5. Which set to offer is the caller's choice
    /// (see [`super::DigestPolicy`]).
    pub fn challenges_offering(
        &mut self,
        now: Instant,
        stale: bool,
        offer: &[Algorithm],
    ) -> Vec<String> {
        self.challenges_for(now, stale, offer, None)
    }

    /// [`challenges_offering`](Self::challenges_offering) with the nonce bound to the
    /// client's address: credentials using it verify only from that address
    /// ([`verify_credentials_from`](Self::verify_credentials_from)), so a spoofed-source
    /// request never gets a usable nonce and can never count as a failed login of someone
    /// else (R26, SECURITY threat 17).
    pub fn challenges_for(
        &mut self,
        now: Instant,
        stale: bool,
        offer: &[Algorithm],
        client: Option<IpAddr>,
    ) -> Vec<String> {
        self.counter = self.counter.wrapping_add(1) & COUNTER_MASK;
        let mask = offer.iter().fold(0u64, |m, a| m | a.offer_bit());
        let issued = self.now_ms(now).to_be_bytes();
        let counter = (self.counter | (mask << COUNTER_BITS)).to_be_bytes();
        let tag = self.nonce_tag(&issued, &counter, client);
        let mut raw = [0u8; NONCE_LEN];
        raw[..8].copy_from_slice(&issued);
        raw[8..16].copy_from_slice(&counter);
        raw[16..].copy_from_slice(&tag);
        let nonce = hex::encode(raw);

        let realm = quote(&self.config.realm);
        let stale = if stale { ", stale=true" } else { "" };
        offer
            .iter()
            .map(|a| {
                format!(
                    "Digest realm={realm}, qop=\"auth\", nonce=\"{nonce}\", opaque=\"{}\"{stale}, algorithm={}",
                    self.opaque,
                    a.as_str()
                )
            })
            .collect()
    }

    /// Verifies an `Authorization` / `Proxy-Authorization` value for a request with this
    /// `method`: [`Credentials::parse`] then [`verify_credentials`](Self::verify_credentials).
    pub fn verify(
        &mut self,
        now: Instant,
        method: &str,
        header_value: &str,
        ha1: impl FnOnce(&str, Algorithm) -> Option<String>,
    ) -> Result<Verified, AuthError> {
        let creds = Credentials::parse(header_value)?;
        self.verify_credentials(now, method, &creds, ha1)
    }

    /// Verifies parsed credentials for a request with this `method`.
    ///
    /// `ha1` looks up the stored HA1 (hex, see [`super::ha1`]) of `(username, algorithm)`;
    /// `None` means unknown user. It is called once, after the realm and nonce checks, and an
    /// unknown user (or a stored value of the wrong length) is checked against a dummy HA1
    /// with the same hashing and constant-time comparison, so it ends in the same
    /// [`AuthError::BadResponse`] as a wrong password (SECURITY threat 4).
    ///
    /// Order: algorithm and qop, `cnonce` and `nc` present, realm, opaque and nonce
    /// authenticity, digest, nonce age and use count, then `nc` replay. The replay table is
    /// only written after a correct digest, so forged requests cannot burn a client's `nc`.
    pub fn verify_credentials(
        &mut self,
        now: Instant,
        method: &str,
        creds: &Credentials,
        ha1: impl FnOnce(&str, Algorithm) -> Option<String>,
    ) -> Result<Verified, AuthError> {
        self.verify_credentials_from(now, method, creds, None, ha1)
    }

    /// [`verify_credentials`](Self::verify_credentials) for a request from `client`: a nonce
    /// made by [`challenges_for`](Self::challenges_for) for another address (or for none) is
    /// [`AuthError::UnknownNonce`].
    pub fn verify_credentials_from(
        &mut self,
        now: Instant,
        method: &str,
        creds: &Credentials,
        client: Option<IpAddr>,
        ha1: impl FnOnce(&str, Algorithm) -> Option<String>,
    ) -> Result<Verified, AuthError> {
        let algorithm = Algorithm::from_token(creds.algorithm.as_deref())
            .ok_or(AuthError::UnsupportedAlgorithm)?;
        let qop = creds
            .qop
            .as_deref()
            .filter(|q| q.eq_ignore_ascii_case("auth"))
            .ok_or(AuthError::UnsupportedQop)?;
        let cnonce = creds
            .cnonce
            .as_deref()
            .filter(|c| !c.is_empty())
            .ok_or(AuthError::Malformed("missing cnonce"))?;
        let nc_text = creds
            .nc
            .as_deref()
            .ok_or(AuthError::Malformed("missing nc"))?;
        let nc = parse_nc(nc_text)?;
        if creds.realm != self.config.realm {
            return Err(AuthError::WrongRealm);
        }
        if creds.opaque.as_ref().is_some_and(|o| *o != self.opaque) {
            return Err(AuthError::UnknownNonce);
        }
        let (issued_ms, word) = self
            .open_nonce(&creds.nonce, client)
            .ok_or(AuthError::UnknownNonce)?;
        if (word >> COUNTER_BITS) & algorithm.offer_bit() == 0 {
            return Err(AuthError::AlgorithmNotOffered);
        }
        let counter = word & COUNTER_MASK;

        let well_formed =
            |h: &String| h.len() == algorithm.hex_len() && h.bytes().all(|b| b.is_ascii_hexdigit());
        let stored = ha1(&creds.username, algorithm).filter(well_formed);
        let known = Choice::from(u8::from(stored.is_some()));
        let dummy = match algorithm {
            Algorithm::Sha256 => &self.dummy_sha256,
            Algorithm::Md5 => &self.dummy_md5,
        };
        let ha1_hex = stored.as_deref().unwrap_or(dummy);
        let expected = response(
            algorithm,
            ha1_hex,
            &ResponseInput {
                nonce: &creds.nonce,
                nc: nc_text,
                cnonce,
                qop,
                method,
                uri: &creds.uri,
            },
        );
        let given = creds.response.to_ascii_lowercase();
        if !bool::from(expected.as_bytes().ct_eq(given.as_bytes()) & known) {
            return Err(AuthError::BadResponse);
        }

        let now_ms = self.now_ms(now);
        if now_ms.saturating_sub(issued_ms) > self.ttl_ms() {
            return Err(AuthError::Stale);
        }
        self.record_use(now_ms, issued_ms, counter, nc)?;
        Ok(Verified {
            username: creds.username.clone(),
            algorithm,
            uri: creds.uri.clone(),
        })
    }

    /// Checks and records one use of nonce `counter` with `nc`.
    fn record_use(
        &mut self,
        now_ms: u64,
        issued_ms: u64,
        counter: u64,
        nc: u32,
    ) -> Result<(), AuthError> {
        self.purge(now_ms);
        let max_uses = self.config.max_nonce_uses.max(1);
        if let Some(entry) = self.seen.get_mut(&counter) {
            if nc <= entry.highest_nc {
                return Err(AuthError::Replay);
            }
            if entry.uses >= max_uses {
                return Err(AuthError::Stale);
            }
            entry.highest_nc = nc;
            entry.uses += 1;
            return Ok(());
        }
        if self.evicted_through.is_some_and(|floor| counter <= floor) {
            return Err(AuthError::Stale);
        }
        self.seen.insert(
            counter,
            NonceUse {
                issued_ms,
                highest_nc: nc,
                uses: 1,
            },
        );
        while self.seen.len() > self.capacity {
            if let Some((evicted, _)) = self.seen.pop_first() {
                self.evicted_through =
                    Some(self.evicted_through.map_or(evicted, |f| f.max(evicted)));
            }
        }
        Ok(())
    }

    /// Drops remembered nonces that have expired (they are refused by age anyway).
    fn purge(&mut self, now_ms: u64) {
        let ttl = self.ttl_ms();
        while let Some(entry) = self.seen.first_entry() {
            if now_ms.saturating_sub(entry.get().issued_ms) > ttl {
                entry.remove();
            } else {
                break;
            }
        }
    }

    /// `(issued_ms, counter)` of a nonce this authenticator made, or `None`.
    fn open_nonce(&self, nonce: &str, client: Option<IpAddr>) -> Option<(u64, u64)> {
        if nonce.len() != 2 * NONCE_LEN {
            return None;
        }
        let mut raw = [0u8; NONCE_LEN];
        hex::decode_to_slice(nonce, &mut raw).ok()?;
        let mut issued = [0u8; 8];
        issued.copy_from_slice(&raw[..8]);
        let mut counter = [0u8; 8];
        counter.copy_from_slice(&raw[8..16]);
        let expected = self.nonce_tag(&issued, &counter, client);
        if bool::from(expected.ct_eq(&raw[16..])) {
            Some((u64::from_be_bytes(issued), u64::from_be_bytes(counter)))
        } else {
            None
        }
    }

    fn nonce_tag(
        &self,
        issued: &[u8; 8],
        counter: &[u8; 8],
        client: Option<IpAddr>,
    ) -> [u8; TAG_LEN] {
        let realm = self.config.realm.as_bytes();
        let realm_len = (realm.len() as u64).to_be_bytes();
        // 17 bytes: a kind byte and the address as IPv6 (IPv4 mapped), zeros when unbound.
        let mut bound = [0u8; 17];
        if let Some(ip) = client {
            bound[0] = 1;
            let v6 = match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            bound[1..].copy_from_slice(&v6.octets());
        }
        let full = self.tag(NONCE_LABEL, &[&realm_len, realm, issued, counter, &bound]);
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full[..TAG_LEN]);
        tag
    }

    fn tag(&self, label: &[u8], parts: &[&[u8]]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(label);
        for part in parts {
            mac.update(part);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(&mac.finalize().into_bytes());
        out
    }

    fn now_ms(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.config.nonce_ttl.as_millis()).unwrap_or(u64::MAX)
    }
}

/// `nc`: exactly 8 hex digits (RFC 7616 §3.4), not zero.
fn parse_nc(text: &str) -> Result<u32, AuthError> {
    if text.len() != 8 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(AuthError::Malformed("bad nc"));
    }
    match u32::from_str_radix(text, 16) {
        Ok(0) | Err(_) => Err(AuthError::Malformed("bad nc")),
        Ok(n) => Ok(n),
    }
}

/// `s` as a quoted string: `"` and `\` escaped, control characters dropped.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::ha1;

    const REALM: &str = "trustring.test";

    fn auth(t0: Instant) -> Authenticator {
        Authenticator::new(DigestConfig::new(REALM), [7; 32], t0)
    }

    fn nonce_of(challenge: &str) -> String {
        let start = challenge.find("nonce=\"").expect("nonce") + 7;
        let end = challenge[start..].find('"').expect("quote") + start;
        challenge[start..end].to_owned()
    }

    fn answer(nonce: &str, nc: u32) -> String {
        let h = ha1(Algorithm::Md5, "alice", REALM, "pw");
        let nc = format!("{nc:08x}");
        let r = response(
            Algorithm::Md5,
            &h,
            &ResponseInput {
                nonce,
                nc: &nc,
                cnonce: "c",
                qop: "auth",
                method: "REGISTER",
                uri: "sip:x",
            },
        );
        format!(
            r#"Digest username="alice", realm="{REALM}", nonce="{nonce}", uri="sip:x", response="{r}", qop=auth, nc={nc}, cnonce="c""#
        )
    }

    fn lookup(user: &str, alg: Algorithm) -> Option<String> {
        (user == "alice").then(|| ha1(alg, "alice", REALM, "pw"))
    }

    #[test]
    fn eviction_refuses_forgotten_nonces_as_stale() {
        let t0 = Instant::now();
        let mut a = auth(t0);
        a.capacity = 2;
        let nonces: Vec<String> = (0..3)
            .map(|_| nonce_of(&a.challenges(t0, false)[0]))
            .collect();
        for n in &nonces {
            assert!(a.verify(t0, "REGISTER", &answer(n, 1), lookup).is_ok());
        }
        assert_eq!(a.tracked_nonces(), 2);
        // The oldest was forgotten: a replay of it must not pass, nor a next nc.
        assert_eq!(
            a.verify(t0, "REGISTER", &answer(&nonces[0], 1), lookup),
            Err(AuthError::Stale)
        );
        assert_eq!(
            a.verify(t0, "REGISTER", &answer(&nonces[0], 2), lookup),
            Err(AuthError::Stale)
        );
        // The others are still tracked.
        assert_eq!(
            a.verify(t0, "REGISTER", &answer(&nonces[2], 1), lookup),
            Err(AuthError::Replay)
        );
        assert!(
            a.verify(t0, "REGISTER", &answer(&nonces[2], 2), lookup)
                .is_ok()
        );
    }

    #[test]
    fn expired_entries_are_purged() {
        let t0 = Instant::now();
        let mut a = auth(t0);
        let n = nonce_of(&a.challenges(t0, false)[1]);
        assert!(a.verify(t0, "REGISTER", &answer(&n, 1), lookup).is_ok());
        assert_eq!(a.tracked_nonces(), 1);
        let later = t0 + Duration::from_secs(301);
        let n2 = nonce_of(&a.challenges(later, false)[1]);
        assert!(a.verify(later, "REGISTER", &answer(&n2, 1), lookup).is_ok());
        assert_eq!(a.tracked_nonces(), 1);
    }

    #[test]
    fn nc_format() {
        assert_eq!(parse_nc("00000001"), Ok(1));
        assert_eq!(parse_nc("FFFFFFFF"), Ok(u32::MAX));
        for bad in [
            "",
            "1",
            "00000000",
            "0000000g",
            "000000001",
            "+0000001",
            "0000 001",
        ] {
            assert!(parse_nc(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(quote("a\r\nb"), "\"ab\"");
    }
}
