//! RFC 3261 §17 transaction state machines, with RFC 6026's Accepted states.
//!
//! Each transaction is a plain state machine: it is told about messages and the time, and
//! answers with [`TxAction`]s (send these bytes again, tell the TU about a timeout, this
//! transaction is over). It keeps its own deadlines; the owner asks for
//! [`ClientTx::next_deadline`] / [`ServerTx::next_deadline`] and calls `handle_timeout` when
//! that instant has come. On reliable transports the retransmission timers (A, E, G) never
//! run and the wait timers (D, I, J, K) are zero, as §17 prescribes.

mod client;
mod server;

use std::time::{Duration, Instant};

pub use client::{ClientState, ClientTx};
pub use server::{ServerState, ServerTx};

/// The base timer values (RFC 3261 §17.1.1.1, Table 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// RTT estimate, 500 ms by default.
    pub t1: Duration,
    /// Maximum retransmit interval for non-INVITE requests and INVITE responses, 4 s.
    pub t2: Duration,
    /// Maximum time a message stays in the network, 5 s.
    pub t4: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Self {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

impl Timers {
    /// 64*T1: the transaction timeout (timers B, F, H, J, L, M).
    pub fn timeout(&self) -> Duration {
        self.t1 * 64
    }
}

/// What a transaction asks its owner to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxAction {
    /// Send these bytes again (a retransmission) to the transaction's peer.
    Retransmit(bytes::Bytes),
    /// The transaction timed out without a final response (client: deliver 408 to the TU;
    /// server: the ACK never came).
    Timeout,
    /// The transaction is over and may be forgotten.
    Terminated,
}

/// Earliest of two optional instants.
pub(crate) fn min_deadline(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// Whether `deadline` is set and has passed at `now`.
pub(crate) fn due(deadline: Option<Instant>, now: Instant) -> bool {
    deadline.is_some_and(|d| d <= now)
}
