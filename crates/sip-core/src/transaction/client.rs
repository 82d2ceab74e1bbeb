//! Client transactions (RFC 3261 §17.1): INVITE (timers A, B, D; RFC 6026 timer M) and
//! non-INVITE (timers E, F, K).

use std::time::Instant;

use bytes::Bytes;

use super::{Timers, TxAction, due, min_deadline};

/// Client transaction states (§17.1.1.2, §17.1.2.2, RFC 6026 §8.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// INVITE sent, nothing heard yet.
    Calling,
    /// Non-INVITE sent, nothing heard yet.
    Trying,
    /// A provisional response arrived.
    Proceeding,
    /// A final (non-2xx for INVITE) response arrived; absorbing retransmissions.
    Completed,
    /// INVITE got a 2xx (RFC 6026): further 2xx go to the TU, the transaction stays for timer M.
    Accepted,
    /// Over.
    Terminated,
}

/// One client transaction. It owns the request bytes for retransmission.
#[derive(Debug)]
pub struct ClientTx {
    invite: bool,
    reliable: bool,
    timers: Timers,
    state: ClientState,
    request: Bytes,
    /// Next retransmission (A or E) and its current interval.
    retransmit_at: Option<Instant>,
    interval: std::time::Duration,
    /// Timer B/F: give up waiting for a final response.
    timeout_at: Option<Instant>,
    /// Timer D/K/M: leave Completed/Accepted.
    linger_at: Option<Instant>,
}

impl ClientTx {
    /// Starts a transaction whose request (`request`, already sent once by the owner) went
    /// out at `now`.
    pub fn new(invite: bool, reliable: bool, request: Bytes, timers: Timers, now: Instant) -> Self {
        Self {
            invite,
            reliable,
            timers,
            state: if invite {
                ClientState::Calling
            } else {
                ClientState::Trying
            },
            request,
            retransmit_at: (!reliable).then(|| now + timers.t1),
            interval: timers.t1,
            timeout_at: Some(now + timers.timeout()),
            linger_at: None,
        }
    }

    /// The current state.
    pub fn state(&self) -> ClientState {
        self.state
    }

    /// When [`Self::handle_timeout`] must next be called.
    pub fn next_deadline(&self) -> Option<Instant> {
        min_deadline(
            min_deadline(self.retransmit_at, self.timeout_at),
            self.linger_at,
        )
    }

    /// A response with `status` arrived. Returns whether the TU should see it (retransmitted
    /// final responses are absorbed, except 2xx in Accepted which RFC 6026 passes up).
    pub fn handle_response(&mut self, status: u16, now: Instant) -> bool {
        use ClientState::*;
        match (self.state, status) {
            (Calling | Trying | Proceeding, 100..=199) => {
                self.state = Proceeding;
                if self.invite {
                    // §17.1.1.2: Timer A stops; B keeps running only in Calling.
                    self.retransmit_at = None;
                    self.timeout_at = None;
                } else if !self.reliable {
                    // §17.1.2.2: in Proceeding retransmit every T2.
                    self.interval = self.timers.t2;
                    self.retransmit_at = Some(now + self.timers.t2);
                }
                true
            }
            (Calling | Proceeding, 200..=299) if self.invite => {
                self.state = Accepted;
                self.retransmit_at = None;
                self.timeout_at = None;
                self.linger_at = Some(now + self.timers.timeout());
                true
            }
            (Accepted, 200..=299) => true,
            (Calling | Trying | Proceeding, 200..=699) => {
                self.state = Completed;
                self.retransmit_at = None;
                self.timeout_at = None;
                let wait = match (self.invite, self.reliable) {
                    (_, true) => std::time::Duration::ZERO,
                    (true, false) => std::time::Duration::from_secs(32),
                    (false, false) => self.timers.t4,
                };
                self.linger_at = Some(now + wait);
                true
            }
            _ => false,
        }
    }

    /// Runs due timers.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<TxAction> {
        let mut out = Vec::new();
        if due(self.linger_at, now) {
            self.state = ClientState::Terminated;
            self.linger_at = None;
            out.push(TxAction::Terminated);
            return out;
        }
        if due(self.timeout_at, now) {
            self.state = ClientState::Terminated;
            self.timeout_at = None;
            self.retransmit_at = None;
            out.push(TxAction::Timeout);
            out.push(TxAction::Terminated);
            return out;
        }
        if due(self.retransmit_at, now) {
            out.push(TxAction::Retransmit(self.request.clone()));
            self.interval = if self.invite {
                self.interval * 2
            } else {
                (self.interval * 2).min(self.timers.t2)
            };
            self.retransmit_at = Some(now + self.interval);
        }
        out
    }

    /// Ends the transaction at once (e.g. the branch was abandoned after CANCEL timed out).
    pub fn terminate(&mut self) {
        self.state = ClientState::Terminated;
        self.retransmit_at = None;
        self.timeout_at = None;
        self.linger_at = None;
    }

    /// Arms a timeout at `at` if none is armed (RFC 3261 §9.1: after a CANCEL, a branch
    /// that never answers is abandoned after 64*T1).
    pub fn expire_at(&mut self, at: Instant) {
        if matches!(self.state, ClientState::Calling | ClientState::Proceeding)
            && self.timeout_at.is_none_or(|t| t > at)
        {
            self.timeout_at = Some(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn invite_retransmits_with_doubling_then_times_out() {
        let t0 = Instant::now();
        let mut tx = ClientTx::new(
            true,
            false,
            Bytes::from_static(b"INV"),
            Timers::default(),
            t0,
        );
        let mut sends = Vec::new();
        let mut now = t0;
        while let Some(d) = tx.next_deadline() {
            now = d;
            let acts = tx.handle_timeout(now);
            if acts.iter().any(|a| matches!(a, TxAction::Retransmit(_))) {
                sends.push(now - t0);
            }
            if acts.contains(&TxAction::Timeout) {
                break;
            }
        }
        // A fires at 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s; B at 32 s.
        assert_eq!(sends, [500, 1500, 3500, 7500, 15500, 31500].map(ms));
        assert_eq!(now - t0, ms(32_000));
        assert_eq!(tx.state(), ClientState::Terminated);
    }

    #[test]
    fn invite_provisional_stops_timers_and_2xx_accepts() {
        let t0 = Instant::now();
        let mut tx = ClientTx::new(true, false, Bytes::new(), Timers::default(), t0);
        assert!(tx.handle_response(180, t0 + ms(10)));
        assert_eq!(tx.next_deadline(), None, "no timer in Proceeding");
        assert!(tx.handle_response(200, t0 + ms(20)));
        assert_eq!(tx.state(), ClientState::Accepted);
        assert!(
            tx.handle_response(200, t0 + ms(30)),
            "RFC 6026: 2xx retransmissions go to the TU"
        );
        assert_eq!(tx.next_deadline(), Some(t0 + ms(20) + ms(32_000)));
    }

    #[test]
    fn invite_non2xx_completes_and_absorbs_retransmissions() {
        let t0 = Instant::now();
        let mut tx = ClientTx::new(true, false, Bytes::new(), Timers::default(), t0);
        assert!(tx.handle_response(486, t0));
        assert!(!tx.handle_response(486, t0 + ms(1)));
        assert_eq!(tx.next_deadline(), Some(t0 + ms(32_000)), "timer D");
    }

    #[test]
    fn non_invite_caps_at_t2_and_reliable_has_no_retransmit() {
        let t0 = Instant::now();
        let mut tx = ClientTx::new(false, false, Bytes::new(), Timers::default(), t0);
        let mut now = t0;
        let mut gaps = Vec::new();
        for _ in 0..6 {
            let d = tx.next_deadline().expect("armed");
            gaps.push(d - now);
            now = d;
            tx.handle_timeout(now);
        }
        assert_eq!(gaps, [500, 1000, 2000, 4000, 4000, 4000].map(ms));
        let tcp = ClientTx::new(false, true, Bytes::new(), Timers::default(), t0);
        assert_eq!(
            tcp.next_deadline(),
            Some(t0 + ms(32_000)),
            "only timer F on TCP"
        );
    }

    #[test]
    fn reliable_completed_terminates_at_once() {
        let t0 = Instant::now();
        let mut tx = ClientTx::new(true, true, Bytes::new(), Timers::default(), t0);
        tx.handle_response(487, t0);
        assert_eq!(tx.handle_timeout(t0), vec![TxAction::Terminated]);
    }
}
