//! Registration (RFC 3261 §10.2) with digest authentication (§22.2, RFC 7616).
//!
//! One Call-ID and From tag for the phone's life, CSeq increasing by one per REGISTER
//! (§10.2.4). Each REGISTER is a non-INVITE client transaction (`sip_core::transaction`,
//! timers E and F). After a 2xx the next REGISTER goes out at half the granted expiry; after
//! a failure with a backoff of 5 s doubling to 5 min.
//!
//! Credentials: the first 401/407 of an attempt is always answered (with the strongest
//! usable challenge); another one only when it says `stale=true`, at most
//! [`MAX_AUTH_ROUNDS`] in all — anything else means the password is wrong. The last
//! challenge is kept and refresh REGISTERs carry credentials for it with the next nonce
//! count, so a refresh usually takes one round trip.

use std::time::{Duration, Instant};

use bytes::Bytes;
use sip_core::message::{HeaderName, Headers, Method, NameAddr, Request, Response, Uri};
use sip_core::transaction::{ClientTx, TxAction};

use crate::agent::{ALLOW, Ctx, Outbox, USER_AGENT};
use crate::digest::Challenge;
use crate::{PhoneError, PhoneEvent, ids};

/// Most challenges answered for one REGISTER attempt.
const MAX_AUTH_ROUNDS: u8 = 3;
/// First retry delay after a failed REGISTER.
const RETRY_BASE: Duration = Duration::from_secs(5);
/// Longest retry delay.
const RETRY_MAX: Duration = Duration::from_secs(300);

/// The challenge answered last, reused for refreshes.
#[derive(Debug)]
struct AuthCache {
    challenge: Challenge,
    /// Whether it came in a 407 (answer with Proxy-Authorization).
    proxy: bool,
    /// The last nonce count used with it.
    nc: u32,
}

/// The REGISTER in flight.
#[derive(Debug)]
struct RegTx {
    client: ClientTx,
    branch: String,
    /// The expiry asked for (0 for the unregister).
    expires: u32,
    /// Challenges answered so far in this attempt.
    answered: u8,
}

/// The registration state machine.
#[derive(Debug)]
pub(crate) struct Registration {
    call_id: String,
    from_tag: String,
    cseq: u32,
    request_uri: Uri,
    /// `<sip:user@domain>`, the To and From.
    aor: String,
    /// Expiry to ask for (raised by a 423's Min-Expires).
    expires: u32,
    tx: Option<RegTx>,
    /// When to send the next REGISTER (when none is in flight).
    next_at: Option<Instant>,
    /// Whether the registrar may hold our binding (a 2xx came).
    bound: bool,
    auth: Option<AuthCache>,
    failures: u32,
    unregistering: bool,
    done: bool,
}

impl Registration {
    /// A registration whose first REGISTER goes out at `now`.
    pub(crate) fn new(ctx: &Ctx, now: Instant) -> Result<Self, PhoneError> {
        let cfg = &ctx.cfg;
        let request_uri = Uri::parse(&format!("sip:{}", cfg.domain))
            .map_err(|e| PhoneError::Config(format!("domain: {e}")))?;
        Ok(Self {
            call_id: ids::call_id(),
            from_tag: ids::tag(),
            cseq: 0,
            request_uri,
            aor: format!("<sip:{}@{}>", cfg.aor_user, cfg.domain),
            expires: cfg.expires,
            tx: None,
            next_at: Some(now),
            bound: false,
            auth: None,
            failures: 0,
            unregistering: false,
            done: false,
        })
    }

    /// When [`Self::handle_timeout`] must next be called.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        match &self.tx {
            Some(tx) => tx.client.next_deadline(),
            None if self.done => None,
            None => self.next_at,
        }
    }

    /// Whether the unregister after [`Self::shutdown`] is over.
    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    /// Runs due timers: retransmissions, timer F, the next REGISTER.
    pub(crate) fn handle_timeout(&mut self, now: Instant, ctx: &Ctx, out: &mut Outbox) {
        let mut timed_out = false;
        if let Some(tx) = &mut self.tx
            && tx.client.next_deadline().is_some_and(|d| d <= now)
        {
            for action in tx.client.handle_timeout(now) {
                match action {
                    TxAction::Retransmit(b) => out.send(ctx.cfg.server, b),
                    TxAction::Timeout => timed_out = true,
                    TxAction::Terminated => {}
                }
            }
        }
        if timed_out {
            self.tx = None;
            self.failed(now, 408, out);
        }
        if self.tx.is_none() && !self.done && self.next_at.is_some_and(|t| t <= now) {
            self.send(now, ctx, out, 0);
        }
    }

    /// A response arrived; returns whether it was for the REGISTER in flight.
    pub(crate) fn handle_response(
        &mut self,
        now: Instant,
        branch: &str,
        resp: &Response,
        ctx: &Ctx,
        out: &mut Outbox,
    ) -> bool {
        let Some(tx) = self.tx.as_mut().filter(|t| t.branch == branch) else {
            return false;
        };
        if !tx.client.handle_response(resp.status, now) || resp.status < 200 {
            return true;
        }
        let Some(tx) = self.tx.take() else {
            return true;
        };
        match resp.status {
            200..=299 => self.succeeded(now, resp, tx.expires, ctx, out),
            401 | 407 => {
                let name = if resp.status == 401 {
                    HeaderName::WwwAuthenticate
                } else {
                    HeaderName::ProxyAuthenticate
                };
                match Challenge::best(resp.headers.get_all(&name)) {
                    Some(c) if tx.answered == 0 || (c.stale && tx.answered < MAX_AUTH_ROUNDS) => {
                        tracing::debug!(
                            stale = c.stale,
                            algorithm = c.algorithm.as_str(),
                            "REGISTER challenged"
                        );
                        self.auth = Some(AuthCache {
                            challenge: c,
                            proxy: resp.status == 407,
                            nc: 0,
                        });
                        self.send(now, ctx, out, tx.answered + 1);
                    }
                    _ => {
                        self.auth = None;
                        self.failed(now, resp.status, out);
                    }
                }
            }
            423 => {
                let min = resp
                    .headers
                    .get(&HeaderName::MinExpires)
                    .and_then(|v| v.trim().parse::<u32>().ok());
                match min {
                    Some(m) if m > self.expires && !self.unregistering => {
                        self.expires = m;
                        self.send(now, ctx, out, tx.answered);
                    }
                    _ => self.failed(now, 423, out),
                }
            }
            status => self.failed(now, status, out),
        }
        true
    }

    /// Starts the unregister (or finishes at once when nothing is bound).
    pub(crate) fn shutdown(&mut self, now: Instant, ctx: &Ctx, out: &mut Outbox) {
        self.next_at = None;
        if self.bound || self.tx.is_some() {
            self.unregistering = true;
            self.send(now, ctx, out, 0);
        } else {
            self.done = true;
        }
    }

    fn succeeded(
        &mut self,
        now: Instant,
        resp: &Response,
        asked: u32,
        ctx: &Ctx,
        out: &mut Outbox,
    ) {
        self.failures = 0;
        if self.unregistering {
            self.bound = false;
            self.done = true;
            return;
        }
        // Our own binding's expiry among the listed ones, else Expires, else what we asked.
        let granted = resp
            .headers
            .get_all(&HeaderName::Contact)
            .filter_map(|v| NameAddr::parse(v).ok())
            .find(|na| na.uri == ctx.contact_uri)
            .and_then(|na| na.param("expires").flatten()?.trim().parse::<u32>().ok())
            .or_else(|| resp.headers.get(&HeaderName::Expires)?.trim().parse().ok())
            .filter(|&g| g > 0)
            .unwrap_or(asked);
        self.bound = true;
        self.next_at = Some(now + Duration::from_millis(u64::from(granted) * 500));
        out.event(PhoneEvent::Registered { expires: granted });
    }

    fn failed(&mut self, now: Instant, status: u16, out: &mut Outbox) {
        out.event(PhoneEvent::RegistrationFailed { status });
        if self.unregistering {
            self.done = true;
            return;
        }
        self.failures = self.failures.saturating_add(1);
        let backoff = RETRY_BASE.saturating_mul(1 << (self.failures - 1).min(6));
        self.next_at = Some(now + backoff.min(RETRY_MAX));
    }

    /// Sends a REGISTER (the unregister when unregistering); `answered` challenges were
    /// answered in this attempt before it.
    fn send(&mut self, now: Instant, ctx: &Ctx, out: &mut Outbox, answered: u8) {
        let cfg = &ctx.cfg;
        self.cseq = self.cseq.wrapping_add(1) % (1 << 31);
        let expires = if self.unregistering { 0 } else { self.expires };
        let (via, branch) = ctx.via();
        let mut h = Headers(Vec::with_capacity(12));
        h.push(HeaderName::Via, via);
        h.push(HeaderName::MaxForwards, "70");
        h.push(
            HeaderName::From,
            format!("{};tag={}", self.aor, self.from_tag),
        );
        h.push(HeaderName::To, self.aor.clone());
        h.push(HeaderName::CallId, self.call_id.clone());
        h.push(HeaderName::CSeq, format!("{} REGISTER", self.cseq));
        h.push(HeaderName::Contact, ctx.contact.clone());
        h.push(HeaderName::Expires, expires.to_string());
        h.push(HeaderName::Allow, ALLOW);
        h.push(HeaderName::UserAgent, USER_AGENT);
        if let Some(auth) = &mut self.auth {
            auth.nc = auth.nc.wrapping_add(1);
            let value = auth.challenge.authorization(
                &cfg.auth_user,
                &cfg.password,
                "REGISTER",
                &self.request_uri.to_string(),
                auth.nc,
                &ids::random_hex(12),
            );
            let name = if auth.proxy {
                HeaderName::ProxyAuthorization
            } else {
                HeaderName::Authorization
            };
            h.push(name, value);
        }
        let req = Request {
            method: Method::Register,
            uri: self.request_uri.clone(),
            headers: h,
            body: Bytes::new(),
        };
        let bytes = Bytes::from(req.to_bytes());
        out.send(cfg.server, bytes.clone());
        self.tx = Some(RegTx {
            client: ClientTx::new(false, ctx.reliable(), bytes, cfg.timers, now),
            branch,
            expires,
            answered,
        });
        self.next_at = None;
    }
}
