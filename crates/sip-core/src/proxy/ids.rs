//! Branch ids and tags: unique per process (counter) and across restarts (a prefix drawn
//! from the secret the driver got from the OS), so the core needs no RNG of its own.

use sha2::{Digest, Sha256};

/// The RFC 3261 magic cookie that starts every branch we make.
pub(crate) const MAGIC: &str = "z9hG4bK";

#[derive(Debug)]
pub(crate) struct IdGen {
    prefix: String,
    counter: u64,
}

impl IdGen {
    pub(crate) fn new(secret: &[u8; 32]) -> Self {
        let h = Sha256::digest(secret);
        Self {
            prefix: hex::encode(&h[..5]),
            counter: 0,
        }
    }

    /// A fresh Via branch.
    pub(crate) fn branch(&mut self) -> String {
        self.counter += 1;
        format!("{MAGIC}{}{:x}", self.prefix, self.counter)
    }

    /// A fresh To/From tag.
    pub(crate) fn tag(&mut self) -> String {
        self.counter += 1;
        format!("{}{:x}", self.prefix, self.counter)
    }

    /// A branch for a statelessly forwarded request (ACK for 2xx), derived from the incoming
    /// branch so that the same input always gets the same output (RFC 3261 §16.11).
    pub(crate) fn stateless_branch(&self, incoming: &str) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in incoming.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{MAGIC}{}s{h:x}", self.prefix)
    }
}
