//! Which digest algorithms to offer a client (R2, RFC 8760), and what the server learned
//! about each client's support.
//!
//! # Why not always offer both
//! RFC 8760 §2.4 lets a server send one challenge per algorithm, SHA-256 first, and asks a
//! client to answer the first it supports and skip the rest. Many deployed clients do not
//! skip: libre, the SIP stack of baresip (Debian's baresip 1.0 with libre 1.1, and every
//! libre before SHA-256 support), gives up on the whole response when any challenge names
//! an algorithm other than MD5, so a server that always offers both cannot register them at
//! all. Kamailio and Asterisk avoid this by offering one configured algorithm.
//!
//! # `auto` (the default): learn per client, never break one
//! A client is the pair (subscriber, `User-Agent`): one software release on one account.
//! - A client whose `User-Agent` names a product known to handle RFC 8760 challenge lists
//!   ([`DEFAULT_SHA256_AGENTS`], `serve --digest-sha256-agents`) is offered SHA-256 and MD5
//!   from its first challenge. This matters: linphone (belle-sip) keeps the algorithm of its
//!   first successful answer for good, so only a first challenge that offers SHA-256 gets it
//!   to use SHA-256.
//! - Any other client we know nothing about gets MD5 alone: every client handles that.
//! - Once such a client has a live registration, its next challenged refresh (same
//!   REGISTER Call-ID as a live binding, so its binding still holds while we ask) is a
//!   **probe**: SHA-256 and MD5, SHA-256 first. (Clients that reuse their nonce on refresh
//!   are challenged only when it expires, after at most `nonce_ttl`.)
//! - A client that answers SHA-256 (to a probe or a first challenge) is remembered as
//!   SHA-256-capable and from then on gets SHA-256 **alone** (a man in the middle cannot strip
//!   it back to MD5; the nonce is bound to the set offered, see
//!   [`super::Authenticator::challenges_offering`]).
//! - A client that answers the probe with MD5, or comes back without answering it (libre
//!   gives up and retries after its back-off, 15–60 s, while its binding is still valid),
//!   is remembered as MD5-only and is not probed again.
//!
//! Trade-off, stated: a client that is neither listed nor probed yet uses MD5; a libre-style
//! client loses one refresh attempt (not its binding) to the probe. The memory is in-process
//! and bounded ([`MAX_LEARNED_CLIENTS`]); after a restart every client starts over, which is
//! always safe. MD5 digest's practical weakness is offline guessing of weak passwords from a
//! captured exchange, which SHA-256 digest shares: strong passwords and TLS matter more than
//! the digest algorithm.
//!
//! The operator can instead fix the offer: `both` (RFC 8760 as written), `sha256` (SHA-256
//! only: the strongest, for fleets of RFC 8760 clients), `md5` (MD5 only).

use std::collections::{HashMap, VecDeque};

use super::Algorithm;

/// Products (case-insensitive substrings of `User-Agent`) offered SHA-256 + MD5 from their
/// first challenge under `auto`: checked here with Debian's linphone 5.1 (belle-sip), which
/// answers the first algorithm it supports.
pub const DEFAULT_SHA256_AGENTS: &str = "linphone,belle-sip";

/// Most clients whose digest support is remembered; past that the oldest are forgotten (and
/// get MD5 again until their next refresh probes them).
pub const MAX_LEARNED_CLIENTS: usize = 16_384;

const BOTH: &[Algorithm] = &[Algorithm::Sha256, Algorithm::Md5];
const SHA256: &[Algorithm] = &[Algorithm::Sha256];
const MD5: &[Algorithm] = &[Algorithm::Md5];

/// The operator's digest setting (`serve --digest`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum DigestPolicy {
    /// Learn per client (see the module notes). The default.
    #[default]
    Auto,
    /// Always SHA-256 and MD5, SHA-256 first (RFC 8760 §2.4).
    Both,
    /// SHA-256 only.
    Sha256,
    /// MD5 only.
    Md5,
}

impl DigestPolicy {
    /// The setting's name: `auto`, `both`, `sha256`, `md5`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Both => "both",
            Self::Sha256 => "sha256",
            Self::Md5 => "md5",
        }
    }
}

impl std::str::FromStr for DigestPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "both" => Ok(Self::Both),
            "sha256" | "sha-256" => Ok(Self::Sha256),
            "md5" => Ok(Self::Md5),
            _ => Err(format!(
                "unknown digest setting {s:?} (expected auto, both, sha256 or md5)"
            )),
        }
    }
}

impl std::fmt::Display for DigestPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What is known about one client's digest support.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// Offered SHA-256 and MD5; no answer yet.
    Probing,
    /// Answered SHA-256.
    Sha256,
    /// Answered MD5 to a probe, or did not answer it.
    Md5Only,
}

/// The algorithms to offer each client under a [`DigestPolicy`], and what `auto` learned.
#[derive(Debug, Default)]
pub struct AlgorithmChoice {
    policy: DigestPolicy,
    /// Lower-case `User-Agent` substrings offered both algorithms at once.
    capable: Vec<String>,
    known: HashMap<(String, String), Support>,
    order: VecDeque<(String, String)>,
}

impl AlgorithmChoice {
    /// A choice under `policy`, knowing nothing yet, with the [`DEFAULT_SHA256_AGENTS`].
    pub fn new(policy: DigestPolicy) -> Self {
        Self::with_agents(policy, DEFAULT_SHA256_AGENTS)
    }

    /// A choice under `policy` that offers SHA-256 at once to the products of `agents`
    /// (comma-separated, case-insensitive substrings of `User-Agent`; empty: none).
    pub fn with_agents(policy: DigestPolicy, agents: &str) -> Self {
        Self {
            policy,
            capable: agents
                .split(',')
                .map(|a| a.trim().to_ascii_lowercase())
                .filter(|a| !a.is_empty())
                .collect(),
            ..Self::default()
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> DigestPolicy {
        self.policy
    }

    /// What is known about `user` with this `user_agent` (for tests and diagnostics).
    pub fn support(&self, user: &str, user_agent: &str) -> Option<Support> {
        self.known
            .get(&(user.to_owned(), user_agent.to_owned()))
            .copied()
    }

    /// The algorithms to challenge `user`'s client `user_agent` with, most preferred first.
    /// `refresh`: the request is a REGISTER refreshing a live binding (only those are
    /// probed, see the module notes).
    pub fn offer(&mut self, user: &str, user_agent: &str, refresh: bool) -> &'static [Algorithm] {
        match self.policy {
            DigestPolicy::Both => return BOTH,
            DigestPolicy::Sha256 => return SHA256,
            DigestPolicy::Md5 => return MD5,
            DigestPolicy::Auto => {}
        }
        let key = (user.to_owned(), user_agent.to_owned());
        let capable = self.is_capable(user_agent);
        match self.known.get_mut(&key) {
            Some(Support::Sha256) => SHA256,
            Some(Support::Md5Only) => MD5,
            Some(s @ Support::Probing) => {
                // Back without answering the probe: it could not.
                *s = Support::Md5Only;
                MD5
            }
            None if refresh || capable => {
                self.remember(key, Support::Probing);
                BOTH
            }
            None => MD5,
        }
    }

    /// `user`'s client `user_agent` authenticated with `algorithm`.
    pub fn verified(&mut self, user: &str, user_agent: &str, algorithm: Algorithm) {
        if self.policy != DigestPolicy::Auto {
            return;
        }
        let key = (user.to_owned(), user_agent.to_owned());
        match (algorithm, self.known.get_mut(&key)) {
            (Algorithm::Sha256, Some(s)) => *s = Support::Sha256,
            (Algorithm::Sha256, None) => self.remember(key, Support::Sha256),
            (Algorithm::Md5, Some(s @ Support::Probing)) => *s = Support::Md5Only,
            (Algorithm::Md5, _) => {}
        }
    }

    fn is_capable(&self, user_agent: &str) -> bool {
        let ua = user_agent.to_ascii_lowercase();
        self.capable.iter().any(|a| ua.contains(a.as_str()))
    }

    fn remember(&mut self, key: (String, String), support: Support) {
        if self.known.len() >= MAX_LEARNED_CLIENTS
            && let Some(old) = self.order.pop_front()
        {
            self.known.remove(&old);
        }
        self.order.push_back(key.clone());
        self.known.insert(key, support);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_policies() {
        for (p, want) in [
            (DigestPolicy::Both, BOTH),
            (DigestPolicy::Sha256, SHA256),
            (DigestPolicy::Md5, MD5),
        ] {
            let mut c = AlgorithmChoice::new(p);
            assert_eq!(c.offer("a", "ua", false), want);
            assert_eq!(c.offer("a", "ua", true), want);
            c.verified("a", "ua", Algorithm::Sha256);
            assert_eq!(c.support("a", "ua"), None);
        }
        assert_eq!("SHA-256".parse(), Ok(DigestPolicy::Sha256));
        assert!("sha1".parse::<DigestPolicy>().is_err());
    }

    #[test]
    fn auto_probes_on_refresh_and_learns_sha256() {
        let mut c = AlgorithmChoice::new(DigestPolicy::Auto);
        assert_eq!(c.offer("alice", "SomePhone/5", false), MD5);
        c.verified("alice", "SomePhone/5", Algorithm::Md5);
        assert_eq!(
            c.support("alice", "SomePhone/5"),
            None,
            "MD5 unasked is no news"
        );
        assert_eq!(c.offer("alice", "SomePhone/5", true), BOTH);
        c.verified("alice", "SomePhone/5", Algorithm::Sha256);
        assert_eq!(c.offer("alice", "SomePhone/5", true), SHA256);
        assert_eq!(c.offer("alice", "SomePhone/5", false), SHA256);
        // Another client of the same user is its own.
        assert_eq!(c.offer("alice", "baresip 1.0.0", false), MD5);
    }

    #[test]
    fn auto_stops_probing_a_client_that_could_not_answer() {
        let mut c = AlgorithmChoice::new(DigestPolicy::Auto);
        assert_eq!(c.offer("alice", "baresip", true), BOTH);
        // It gave up and came back later without credentials.
        assert_eq!(c.offer("alice", "baresip", true), MD5);
        assert_eq!(c.support("alice", "baresip"), Some(Support::Md5Only));
        assert_eq!(c.offer("alice", "baresip", true), MD5);
        // One that answers a probe with MD5 is not probed again either.
        assert_eq!(c.offer("bob", "old", true), BOTH);
        c.verified("bob", "old", Algorithm::Md5);
        assert_eq!(c.offer("bob", "old", true), MD5);
    }

    #[test]
    fn listed_products_get_sha256_from_the_first_challenge() {
        let mut c = AlgorithmChoice::new(DigestPolicy::Auto);
        assert_eq!(
            c.offer("alice", "Linphonec/5.1.65 (belle-sip/5.1.64)", false),
            BOTH
        );
        c.verified(
            "alice",
            "Linphonec/5.1.65 (belle-sip/5.1.64)",
            Algorithm::Sha256,
        );
        assert_eq!(
            c.offer("alice", "Linphonec/5.1.65 (belle-sip/5.1.64)", false),
            SHA256
        );
        assert_eq!(c.offer("alice", "baresip v1.0.0", false), MD5);
        let mut none = AlgorithmChoice::with_agents(DigestPolicy::Auto, "");
        assert_eq!(none.offer("alice", "Linphonec/5.1.65", false), MD5);
        let mut mine = AlgorithmChoice::with_agents(DigestPolicy::Auto, " Zoiper , x");
        assert_eq!(mine.offer("bob", "zoiper 5", false), BOTH);
    }

    #[test]
    fn memory_is_bounded() {
        let mut c = AlgorithmChoice::new(DigestPolicy::Auto);
        for i in 0..MAX_LEARNED_CLIENTS + 10 {
            c.verified(&format!("u{i}"), "ua", Algorithm::Sha256);
        }
        assert_eq!(c.known.len(), MAX_LEARNED_CLIENTS);
        assert_eq!(c.support("u0", "ua"), None);
        assert_eq!(
            c.support(&format!("u{}", MAX_LEARNED_CLIENTS + 9), "ua"),
            Some(Support::Sha256)
        );
    }
}
