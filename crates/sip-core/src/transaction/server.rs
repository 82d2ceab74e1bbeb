//! Server transactions (RFC 3261 §17.2): INVITE (timers G, H, I; RFC 6026 timer L) and
//! non-INVITE (timer J).

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{Timers, TxAction, due, min_deadline};

/// Server transaction states (§17.2.1, §17.2.2, RFC 6026 §8.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// Non-INVITE received, no response yet.
    Trying,
    /// A provisional response was sent (INVITE starts here).
    Proceeding,
    /// A final response (non-2xx for INVITE) was sent.
    Completed,
    /// INVITE: the ACK for the non-2xx arrived.
    Confirmed,
    /// INVITE: a 2xx was sent (RFC 6026); later 2xx are forwarded, the transaction absorbs
    /// retransmitted INVITEs until timer L.
    Accepted,
    /// Over.
    Terminated,
}

/// One server transaction. It keeps the last response for retransmission.
#[derive(Debug)]
pub struct ServerTx {
    invite: bool,
    reliable: bool,
    timers: Timers,
    state: ServerState,
    last_response: Option<Bytes>,
    retransmit_at: Option<Instant>,
    interval: Duration,
    timeout_at: Option<Instant>,
    linger_at: Option<Instant>,
}

impl ServerTx {
    /// A new transaction for a request received at `now`.
    pub fn new(invite: bool, reliable: bool, timers: Timers) -> Self {
        Self {
            invite,
            reliable,
            timers,
            state: if invite {
                ServerState::Proceeding
            } else {
                ServerState::Trying
            },
            last_response: None,
            retransmit_at: None,
            interval: timers.t1,
            timeout_at: None,
            linger_at: None,
        }
    }

    /// The current state.
    pub fn state(&self) -> ServerState {
        self.state
    }

    /// Whether a final response has been sent.
    pub fn is_final(&self) -> bool {
        !matches!(self.state, ServerState::Trying | ServerState::Proceeding)
    }

    /// When [`Self::handle_timeout`] must next be called.
    pub fn next_deadline(&self) -> Option<Instant> {
        min_deadline(
            min_deadline(self.retransmit_at, self.timeout_at),
            self.linger_at,
        )
    }

    /// The TU sends a response with `status`; returns whether it may go out (a response after
    /// a final one is refused, except further 2xx in Accepted per RFC 6026).
    pub fn send_response(&mut self, status: u16, bytes: Bytes, now: Instant) -> bool {
        use ServerState::*;
        match (self.state, status) {
            (Trying | Proceeding, 100..=199) => {
                self.state = Proceeding;
                self.last_response = Some(bytes);
                true
            }
            (Proceeding, 200..=299) if self.invite => {
                self.state = Accepted;
                self.last_response = None;
                self.linger_at = Some(now + self.timers.timeout());
                true
            }
            (Accepted, 200..=299) => true,
            (Trying | Proceeding, 200..=699) => {
                self.state = Completed;
                self.last_response = Some(bytes);
                if self.invite {
                    if !self.reliable {
                        self.retransmit_at = Some(now + self.timers.t1);
                    }
                    self.timeout_at = Some(now + self.timers.timeout());
                } else {
                    let wait = if self.reliable {
                        Duration::ZERO
                    } else {
                        self.timers.timeout()
                    };
                    self.linger_at = Some(now + wait);
                }
                true
            }
            _ => false,
        }
    }

    /// The request was received again; returns the response to resend, if any.
    pub fn handle_retransmission(&self) -> Option<Bytes> {
        match self.state {
            ServerState::Proceeding | ServerState::Completed => self.last_response.clone(),
            _ => None,
        }
    }

    /// The ACK for a non-2xx final response arrived (INVITE only).
    pub fn handle_ack(&mut self, now: Instant) {
        if self.invite && self.state == ServerState::Completed {
            self.state = ServerState::Confirmed;
            self.retransmit_at = None;
            self.timeout_at = None;
            let wait = if self.reliable {
                Duration::ZERO
            } else {
                self.timers.t4
            };
            self.linger_at = Some(now + wait);
        }
    }

    /// Runs due timers.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<TxAction> {
        let mut out = Vec::new();
        if due(self.linger_at, now) {
            self.state = ServerState::Terminated;
            self.linger_at = None;
            out.push(TxAction::Terminated);
            return out;
        }
        if due(self.timeout_at, now) {
            // Timer H: the ACK never came.
            self.state = ServerState::Terminated;
            self.timeout_at = None;
            self.retransmit_at = None;
            out.push(TxAction::Timeout);
            out.push(TxAction::Terminated);
            return out;
        }
        if due(self.retransmit_at, now) {
            if let Some(r) = &self.last_response {
                out.push(TxAction::Retransmit(r.clone()));
            }
            self.interval = (self.interval * 2).min(self.timers.t2);
            self.retransmit_at = Some(now + self.interval);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn invite_non2xx_retransmits_until_ack() {
        let t0 = Instant::now();
        let mut tx = ServerTx::new(true, false, Timers::default());
        assert!(tx.send_response(100, Bytes::from_static(b"100"), t0));
        assert_eq!(tx.handle_retransmission().as_deref(), Some(&b"100"[..]));
        assert!(tx.send_response(486, Bytes::from_static(b"486"), t0));
        assert!(
            !tx.send_response(200, Bytes::new(), t0),
            "no 2xx after a final"
        );
        let mut now = t0;
        let mut gaps = Vec::new();
        for _ in 0..5 {
            let d = tx.next_deadline().expect("G armed");
            gaps.push(d - now);
            now = d;
            assert_eq!(
                tx.handle_timeout(now),
                vec![TxAction::Retransmit(Bytes::from_static(b"486"))]
            );
        }
        assert_eq!(
            gaps,
            [500, 1000, 2000, 4000, 4000].map(ms),
            "G doubles up to T2"
        );
        tx.handle_ack(now);
        assert_eq!(tx.state(), ServerState::Confirmed);
        assert_eq!(tx.next_deadline(), Some(now + ms(5000)), "timer I = T4");
    }

    #[test]
    fn invite_timer_h_fires_without_ack() {
        let t0 = Instant::now();
        let mut tx = ServerTx::new(true, true, Timers::default());
        tx.send_response(480, Bytes::new(), t0);
        assert_eq!(tx.next_deadline(), Some(t0 + ms(32_000)), "TCP: only H");
        assert_eq!(
            tx.handle_timeout(t0 + ms(32_000)),
            vec![TxAction::Timeout, TxAction::Terminated]
        );
    }

    #[test]
    fn invite_2xx_accepted_for_timer_l() {
        let t0 = Instant::now();
        let mut tx = ServerTx::new(true, false, Timers::default());
        assert!(tx.send_response(200, Bytes::new(), t0));
        assert!(
            tx.send_response(200, Bytes::new(), t0 + ms(1)),
            "RFC 6026: later 2xx pass"
        );
        assert_eq!(
            tx.handle_retransmission(),
            None,
            "INVITE retransmission absorbed"
        );
        assert_eq!(
            tx.handle_timeout(t0 + ms(32_000)),
            vec![TxAction::Terminated]
        );
    }

    #[test]
    fn non_invite_timer_j() {
        let t0 = Instant::now();
        let mut udp = ServerTx::new(false, false, Timers::default());
        udp.send_response(200, Bytes::from_static(b"ok"), t0);
        assert_eq!(udp.handle_retransmission().as_deref(), Some(&b"ok"[..]));
        assert_eq!(udp.next_deadline(), Some(t0 + ms(32_000)));
        let mut tcp = ServerTx::new(false, true, Timers::default());
        tcp.send_response(200, Bytes::new(), t0);
        assert_eq!(tcp.next_deadline(), Some(t0), "J = 0 on TCP");
    }
}
