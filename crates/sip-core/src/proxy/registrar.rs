//! The registrar (RFC 3261 §10.3) with digest authentication (R2).
//!
//! The authenticated user must be the To user (as Kamailio's `auth_check(.., "1")`): bob's
//! credentials cannot bind contacts for alice (SECURITY threat 2). Unknown users and wrong
//! passwords get the same fresh challenge, so REGISTER cannot enumerate users (threat 4).

use std::time::{Duration, Instant};

use super::{Binding, Event, Output, Proxy, Reach, Target, Transport};
use crate::auth::{AuthError, Credentials};
use crate::message::{HeaderName, NameAddr, Request};

/// The RFC 5626 flow a Contact asks for: its `+sip.instance` and `reg-id`, both present.
fn outbound_flow(contact: &NameAddr) -> Option<(String, u32)> {
    let instance = contact.param("+sip.instance").flatten()?;
    let reg_id = contact.param("reg-id").flatten()?.parse().ok()?;
    Some((instance.trim_matches('"').to_owned(), reg_id))
}

/// The client's `User-Agent` (empty when it sends none): with the user, what digest support
/// is learned for.
pub(in crate::proxy) fn user_agent(req: &Request) -> &str {
    req.headers.get(&HeaderName::UserAgent).unwrap_or("")
}

impl Proxy {
    pub(super) fn handle_register(&mut self, id: u64, peer: Target, req: &Request, now: Instant) {
        let Some(to) = req.to() else {
            self.reply(id, req, 400, now);
            return;
        };
        if !to.uri.is_sip() || !self.is_ours(&to.uri.host, None) {
            self.reply(id, req, 403, now);
            return;
        }
        let user = to.uri.user_unescaped().unwrap_or_default();
        if self.limiter.is_blocked(now, peer.addr.ip(), &user) {
            let resp = self.make_reply(req, 403, "Too Many Failed Attempts");
            self.respond(id, &resp, now);
            return;
        }
        let Some(credentials) = req
            .headers
            .get(&HeaderName::Authorization)
            .map(str::to_owned)
        else {
            self.challenge(id, req, false, now);
            return;
        };
        let directory = &self.directory;
        let verified = Credentials::parse(&credentials).and_then(|creds| {
            self.auth.verify_credentials_from(
                now,
                "REGISTER",
                &creds,
                Some(peer.addr.ip()),
                |name, alg| directory.ha1(name, alg),
            )
        });
        let verified = match verified {
            Ok(v) => {
                self.algorithms
                    .verified(&user, user_agent(req), v.algorithm);
                self.limiter.record_success(now, peer.addr.ip(), &user);
                v
            }
            // A nonce we cannot open (issued before a restart, or for another address)
            // gets a fresh one with stale=true: the client retries without asking its user
            // (RFC 7616 §3.3), and it is not counted as a failure.
            Err(AuthError::Stale | AuthError::UnknownNonce) => {
                self.challenge(id, req, true, now);
                return;
            }
            Err(e) => {
                tracing::debug!(source = %peer.addr, error = %e, "REGISTER authentication failed");
                self.stats.auth_failures += 1;
                if e.is_guess() {
                    self.limiter.record_failure(now, peer.addr.ip(), &user);
                }
                self.challenge(id, req, false, now);
                return;
            }
        };
        // A phone authenticates as its device and may bind contacts only for its own
        // subscriber; everyone else only for themselves.
        let owner = match self.directory.device_for_username(&verified.username) {
            Some(d) => (d.user == user).then(|| Some(d.id.clone())),
            None => (verified.username == user).then_some(None),
        };
        let Some(device) = owner.filter(|_| self.directory.subscriber(&user).is_some()) else {
            self.stats.auth_failures += 1;
            let resp = self.make_reply(req, 403, "Forbidden");
            self.respond(id, &resp, now);
            return;
        };
        self.save_contacts(id, peer, req, &user, device.as_deref(), now);
    }

    /// 401 with the challenges this client gets (see [`crate::auth::DigestPolicy`]): a
    /// REGISTER in the Call-ID of one of the user's live bindings is a refresh, the moment
    /// `auto` may probe for SHA-256.
    fn challenge(&mut self, id: u64, req: &Request, stale: bool, now: Instant) {
        let mut resp = self.make_reply(req, 401, "Unauthorized");
        let user = req
            .to()
            .and_then(|t| t.uri.user_unescaped())
            .unwrap_or_default();
        let refresh = self
            .directory
            .live_bindings(&user, now)
            .iter()
            .any(|b| b.call_id == req.call_id());
        let offer = self.algorithms.offer(&user, user_agent(req), refresh);
        // The nonce is bound to the address the challenge goes to.
        let client = self.servers.get(&id).map(|e| e.peer.addr.ip());
        for c in self.auth.challenges_for(now, stale, offer, client) {
            resp.headers.push(HeaderName::WwwAuthenticate, c);
        }
        self.respond(id, &resp, now);
    }

    /// §10.3 steps 6–8: validate every contact first, then apply them all.
    fn save_contacts(
        &mut self,
        id: u64,
        peer: Target,
        req: &Request,
        user: &str,
        device: Option<&str>,
        now: Instant,
    ) {
        let header_expires = req
            .headers
            .get(&HeaderName::Expires)
            .and_then(|v| v.trim().parse::<u64>().ok());
        let contacts: Vec<&str> = req.headers.get_all(&HeaderName::Contact).collect();
        // RFC 5626 §6: only the first hop can hold the client's flow.
        let first_hop = req.headers.get_all(&HeaderName::Via).count() == 1;
        if contacts.iter().any(|c| c.trim() == "*") {
            if contacts.len() != 1 || header_expires != Some(0) {
                self.reply(id, req, 400, now);
                return;
            }
            // `*` removes the caller's own kind of bindings: a phone its own, a desktop
            // client the desktop ones, so neither can silently unhook the other.
            for contact in self.directory.remove_bindings_of(user, device) {
                self.out
                    .push_back(Output::Event(Box::new(Event::BindingRemoved {
                        user: user.to_owned(),
                        contact,
                    })));
            }
            self.registered_ok(id, req, user, false, now);
            return;
        }
        let mut updates = Vec::with_capacity(contacts.len());
        for c in &contacts {
            let Ok(na) = NameAddr::parse(c) else {
                self.reply(id, req, 400, now);
                return;
            };
            let expires = na
                .param("expires")
                .flatten()
                .and_then(|v| v.parse::<u64>().ok())
                .or(header_expires)
                .unwrap_or(u64::from(self.cfg.default_expires))
                .min(u64::from(self.cfg.max_expires));
            if expires > 0 && expires < u64::from(self.cfg.min_expires) {
                let mut resp = self.make_reply(req, 423, "Interval Too Brief");
                resp.headers
                    .push(HeaderName::MinExpires, self.cfg.min_expires.to_string());
                self.respond(id, &resp, now);
                return;
            }
            let q = na
                .param("q")
                .flatten()
                .and_then(|v| v.parse::<f32>().ok())
                .map_or(1000, |q| (q.clamp(0.0, 1.0) * 1000.0) as u16);
            let flow = if first_hop { outbound_flow(&na) } else { None };
            updates.push((na.uri, expires, q, flow));
        }
        let call_id = req.call_id().to_owned();
        let cseq = req.cseq().seq;
        let mut outbound = false;
        for (uri, expires, q, flow) in updates {
            let contact = uri.to_string();
            if let Some(old) = self.directory.existing(user, &contact)
                && old.device.as_deref() != device
            {
                // A phone's contact cannot be taken over by the desktop's credentials (it
                // would then ring without a trust proof), nor the reverse.
                let resp = self.make_reply(req, 403, "Contact Registered By Another Device");
                self.respond(id, &resp, now);
                return;
            }
            if let Some(old) = self.directory.existing(user, &contact)
                && old.call_id == call_id
                && old.cseq >= cseq
            {
                // §10.3 step 7: an out-of-order REGISTER of the same client.
                self.reply(id, req, 500, now);
                return;
            }
            if expires == 0 {
                if self.directory.remove_binding(user, &contact) {
                    self.out
                        .push_back(Output::Event(Box::new(Event::BindingRemoved {
                            user: user.to_owned(),
                            contact,
                        })));
                }
                continue;
            }
            let expires_in = Duration::from_secs(expires);
            let (target, reach) = Binding::locate(&uri, flow, peer, &self.cfg.nat);
            if let Reach::Outbound { instance, reg_id } = &reach {
                // RFC 5626 §6: a new registration of the same flow replaces the old one.
                outbound = true;
                for old in self.directory.same_flow(user, instance, *reg_id, &contact) {
                    self.directory.remove_binding(user, &old);
                    self.out
                        .push_back(Output::Event(Box::new(Event::BindingRemoved {
                            user: user.to_owned(),
                            contact: old,
                        })));
                }
            }
            if reach != Reach::Direct && target.transport == Transport::Udp {
                self.arm_keepalive(now);
            }
            self.pings.alive(user, &contact);
            let binding = Binding {
                contact,
                uri,
                target,
                source: peer,
                call_id: call_id.clone(),
                cseq,
                expires_at: now + expires_in,
                q,
                device: device.map(str::to_owned),
                reach,
            };
            if !self.directory.put_binding(user, binding.clone(), now) {
                let resp = self.make_reply(req, 403, "Too Many Contacts");
                self.respond(id, &resp, now);
                return;
            }
            self.out
                .push_back(Output::Event(Box::new(Event::BindingSaved {
                    user: user.to_owned(),
                    binding: Box::new(binding),
                    expires_in,
                })));
        }
        self.registered_ok(id, req, user, outbound, now);
    }

    /// 200 OK listing every current binding with its remaining time (§10.3 step 8), the
    /// ones this request touched first. For an RFC 5626 flow of a client that supports
    /// outbound: `Require: outbound` and the keep-alive interval it should use
    /// (`Flow-Timer`, §5.4).
    fn registered_ok(&mut self, id: u64, req: &Request, user: &str, outbound: bool, now: Instant) {
        let mut resp = self.make_reply(req, 200, "OK");
        if outbound && req.headers.has_token(&HeaderName::Supported, "outbound") {
            resp.headers.push(HeaderName::Require, "outbound");
            if let Some(every) = self.cfg.nat.keepalive {
                resp.headers.push(
                    HeaderName::from_token("Flow-Timer"),
                    every.as_secs().max(1).to_string(),
                );
            }
        }
        let mut bindings = self.directory.live_bindings(user, now);
        bindings.sort_by_key(|b| b.call_id != req.call_id() || b.cseq != req.cseq().seq);
        for b in bindings {
            let left = b.expires_at.saturating_duration_since(now).as_secs();
            resp.headers.push(
                HeaderName::Contact,
                format!("<{}>;expires={left}", b.contact),
            );
        }
        self.respond(id, &resp, now);
    }
}
