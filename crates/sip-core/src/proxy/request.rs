//! Request dispatch: transaction matching (§17.2.3), request validation (§16.3), loose
//! routing (§16.4), and the choice between registrar, fork, in-dialog forwarding and refusal.

use std::time::Instant;

use bytes::Bytes;

use super::caller::Caller;
use super::{Proxy, ServerEntry, Target, TimerRef, Transport, TxKey, route};
use crate::message::{HeaderName, Method, Request};
use crate::transaction::ServerTx;

/// Extensions we support (answered in 420's Unsupported otherwise).
const SUPPORTED: &[&str] = &["199"];

impl Proxy {
    pub(super) fn handle_request(&mut self, now: Instant, peer: Target, mut req: Request) {
        let Some(key) = tx_key(&req) else { return };
        route::stamp_via(&mut req, peer.addr);
        self.fix_nated_contact(&mut req, peer);

        if req.method == Method::Ack {
            if let Some(&id) = self.server_keys.get(&key) {
                // ACK for a non-2xx final response we sent: absorbed by the transaction.
                if let Some(e) = self.servers.get_mut(&id) {
                    e.tx.handle_ack(now);
                    let next = e.tx.next_deadline();
                    self.arm(next, TimerRef::Server(id));
                }
                return;
            }
            self.forward_ack(req);
            return;
        }

        if let Some(&id) = self.server_keys.get(&key) {
            // A retransmission: resend the last response, if any.
            if let Some(e) = self.servers.get(&id)
                && let Some(b) = e.tx.handle_retransmission()
            {
                let p = e.peer;
                self.transmit(p, b);
            }
            return;
        }

        if req.method == Method::Cancel {
            self.handle_cancel(now, peer, req, key);
            return;
        }

        // R30: one stateless answer, no transaction, for what we will not carry.
        if self.is_looping(&req) {
            self.reply_stateless(peer, &req, 482, "Loop Detected");
            return;
        }
        let in_dialog = req.to().is_some_and(|t| t.tag().is_some());
        if in_dialog && !self.follows_our_route(&req) {
            tracing::debug!(source = %peer.addr, method = %req.method, "in-dialog request not on our route; refused");
            self.reply_stateless(peer, &req, 403, "Not On Our Route");
            return;
        }

        let invite = req.method == Method::Invite;
        let id = self.new_server_tx(key, &req, peer);
        if let Some(status) = self.check_request(&req, peer) {
            self.reply_unsupported(id, &req, status, now);
            self.forget_unforked_invite(invite, id, now);
            return;
        }
        self.pop_own_routes(&mut req);

        if in_dialog {
            self.forward_in_dialog(id, peer, req, now);
            self.forget_unforked_invite(invite, id, now);
            return;
        }
        if req.headers.contains(&HeaderName::Route) {
            // Out of dialog with a foreign route set: we are nobody's outbound proxy.
            self.reply(id, &req, 403, now);
            self.forget_unforked_invite(invite, id, now);
            return;
        }
        // §22.3 / R25: our own users must prove who they are before anything else is said
        // about the request (no relay answer, no 404/480 for the callee to enumerate).
        let caller = if self.caller_auth_exempt(&req) {
            Caller::Unverified
        } else {
            match self.authenticate_caller(id, peer, &mut req, now) {
                Some(c) => c,
                None => {
                    self.forget_unforked_invite(invite, id, now);
                    return;
                }
            }
        };
        if !self.is_ours(&req.uri.host, req.uri.port) {
            // No open relay (R26 / issue point 5).
            let resp = self.make_reply(&req, 403, "Relaying Forbidden");
            self.respond(id, &resp, now);
            self.forget_unforked_invite(invite, id, now);
            return;
        }
        match req.method {
            Method::Register => {
                if self.check_register_digest_uri(id, &req, now) {
                    self.handle_register(id, peer, &req, now);
                }
            }
            Method::Options if req.uri.user.is_none() => {
                let mut resp = self.make_reply(&req, 200, "OK");
                resp.headers.push(
                    HeaderName::Allow,
                    "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER",
                );
                resp.headers
                    .push(HeaderName::Supported, SUPPORTED.join(", "));
                self.respond(id, &resp, now);
            }
            _ => {
                self.route_to_aor(id, peer, req, &caller, now);
                self.forget_unforked_invite(invite, id, now);
            }
        }
    }

    /// §16.2: a stateful proxy answers INVITE with 100 before it forwards, stopping the
    /// caller's retransmissions while the branches ring. Sent only once the INVITE is going
    /// somewhere: a refused INVITE gets its one final answer and nothing else (R30).
    fn trying(&mut self, id: u64, req: &Request, now: Instant) {
        if req.method == Method::Invite {
            let resp = crate::message::Response::to_request(req, 100, "Trying", None);
            self.respond(id, &resp, now);
        }
    }

    /// An INVITE answered with a final response without being forwarded (407, 403, 404,
    /// 480, …) is forgotten at once: its answer is sent once, statelessly, never
    /// retransmitted (Timer G would multiply a spoofed source's traffic, R30); a retransmitted
    /// INVITE just gets the same kind of answer again, and the ACK for it is dropped.
    fn forget_unforked_invite(&mut self, invite: bool, id: u64, now: Instant) {
        if invite
            && self
                .servers
                .get(&id)
                .is_some_and(|e| e.fork.is_none() && e.tx.is_final())
        {
            self.remove_server(id, now);
        }
    }

    /// Answers `req` from `peer` without a transaction (see the `relay` module).
    fn reply_stateless(&mut self, peer: Target, req: &Request, status: u16, reason: &str) {
        if req.method == Method::Ack {
            return;
        }
        let resp = self.make_reply(req, status, reason);
        let dest = route::response_target(&resp, peer);
        self.transmit(dest, Bytes::from(resp.to_bytes()));
    }

    fn new_server_tx(&mut self, key: TxKey, req: &Request, peer: Target) -> u64 {
        let id = self.alloc_id();
        let tx = ServerTx::new(
            req.method == Method::Invite,
            peer.transport.is_reliable(),
            self.cfg.timers,
        );
        self.server_keys.insert(key.clone(), id);
        self.servers.insert(
            id,
            ServerEntry {
                key,
                tx,
                peer,
                fork: None,
            },
        );
        id
    }

    /// §16.3 checks and RFC 4475 §3.3 application-layer answers. `Some(status)` refuses.
    /// A `sips:` Request-URI that did not come over TLS is refused with 416 (RFC 5630 §3.1.3:
    /// the first hop of a SIPS request is TLS too; we do not carry on what it already lost).
    fn check_request(&self, req: &Request, peer: Target) -> Option<u16> {
        if req.uri.scheme.eq_ignore_ascii_case("sips") && peer.transport != Transport::Tls {
            return Some(416);
        }
        if let Some(mf) = req.headers.get(&HeaderName::MaxForwards)
            && mf.trim() == "0"
            && req.method != Method::Register
        {
            return Some(483);
        }
        if !req.uri.is_sip() {
            return Some(416);
        }
        if req
            .headers
            .get_all(&HeaderName::ProxyRequire)
            .flat_map(|v| v.split(','))
            .any(|t| {
                let t = t.trim();
                !t.is_empty() && !SUPPORTED.iter().any(|s| s.eq_ignore_ascii_case(t))
            })
        {
            return Some(420);
        }
        None
    }

    fn reply_unsupported(&mut self, id: u64, req: &Request, status: u16, now: Instant) {
        let mut resp = self.make_reply(req, status, crate::message::reason_phrase(status));
        if status == 420 {
            let unsupported: Vec<String> = req
                .headers
                .get_all(&HeaderName::ProxyRequire)
                .flat_map(|v| v.split(','))
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty() && !SUPPORTED.iter().any(|s| s.eq_ignore_ascii_case(t)))
                .collect();
            resp.headers
                .push(HeaderName::Unsupported, unsupported.join(", "));
        }
        self.respond(id, &resp, now);
    }

    /// CANCEL (§16.10): answer it, and cancel every pending branch of the matching INVITE.
    fn handle_cancel(&mut self, now: Instant, peer: Target, req: Request, key: TxKey) {
        let invite_key = TxKey {
            method: "INVITE".into(),
            ..key.clone()
        };
        let id = self.new_server_tx(key, &req, peer);
        let Some(&invite_id) = self.server_keys.get(&invite_key) else {
            self.reply(id, &req, 481, now);
            return;
        };
        self.reply(id, &req, 200, now);
        let fork = self.servers.get(&invite_id).and_then(|e| e.fork);
        if let Some(f) = fork {
            let reason = req.headers.get(&HeaderName::Reason).map(str::to_owned);
            self.cancel_fork(f, reason.as_deref(), now);
        }
    }

    /// Forwards an ACK for a 2xx statelessly (it is its own transaction, §17.1.1.3), only
    /// along a route we record-routed (R30).
    fn forward_ack(&mut self, mut req: Request) {
        if !self.follows_our_route(&req) {
            return;
        }
        self.pop_own_routes(&mut req);
        let next = match req.headers.get(&HeaderName::Route) {
            Some(r) => crate::message::NameAddr::parse(r).ok().map(|n| n.uri),
            None => Some(req.uri.clone()),
        };
        let Some(target) = next.and_then(|u| self.resolve(&u)) else {
            return;
        };
        if self.is_ours(&req.uri.host, req.uri.port) && !req.headers.contains(&HeaderName::Route) {
            return; // an ACK for us (e.g. for a 2xx we never sent): absorb
        }
        let incoming = req
            .top_via()
            .and_then(|v| v.branch().map(str::to_owned))
            .unwrap_or_default();
        let branch = self.ids.stateless_branch(&incoming);
        let via = self.via(target.transport, &branch);
        req.headers.push_front(HeaderName::Via, via);
        decrement_max_forwards(&mut req);
        self.transmit(target, Bytes::from(req.to_bytes()));
    }
}

/// Decrements Max-Forwards, adding it (70) when absent (§16.6 step 3).
pub(crate) fn decrement_max_forwards(req: &mut Request) {
    let mf = req
        .headers
        .get(&HeaderName::MaxForwards)
        .and_then(|v| v.trim().parse::<u32>().ok());
    let v = mf.map_or(70, |m| m.saturating_sub(1));
    req.headers.set(HeaderName::MaxForwards, v.to_string());
}

/// The server transaction key of a request (§17.2.3), or the RFC 2543 fallback.
fn tx_key(req: &Request) -> Option<TxKey> {
    let via = req.top_via()?;
    let method = match req.method {
        Method::Ack => "INVITE".to_owned(),
        ref m => m.as_str().to_owned(),
    };
    let sent_by = format!("{}:{}", via.host, via.port.unwrap_or(5060));
    let branch = match via.branch() {
        Some(b) if b.starts_with(super::ids::MAGIC) => b.to_owned(),
        // RFC 2543 (§17.2.3 last paragraph): match on Request-URI, tags, Call-ID, CSeq
        // number and the top Via.
        other => {
            let from_tag = req
                .from()
                .and_then(|f| f.tag().map(str::to_owned))
                .unwrap_or_default();
            format!(
                "2543|{}|{}|{}|{}|{}",
                other.unwrap_or_default(),
                req.uri,
                from_tag,
                req.call_id(),
                req.cseq().seq
            )
        }
    };
    Some(TxKey {
        branch,
        sent_by,
        method,
    })
}

impl Proxy {
    /// An out-of-dialog request for one of our addresses of record: fork it to every live
    /// binding (R11), or answer 404 / 480. Every branch carries the identity the proxy
    /// asserts for `caller` (R25) and none of our realm's credentials.
    fn route_to_aor(
        &mut self,
        id: u64,
        peer: Target,
        mut req: Request,
        caller: &Caller,
        now: Instant,
    ) {
        let user = req.uri.user_unescaped().unwrap_or_default();
        let Some(sub) = self.directory.subscriber(&user).cloned() else {
            // The same answer as a subscriber with nothing registered: nobody learns which
            // users exist (R26, SECURITY threat 4).
            self.reply(id, &req, 480, now);
            return;
        };
        // A `sips:` request travels over TLS on every hop (RFC 5630 §3.1.3): it rings only
        // the contacts registered over TLS, never the gateway (UDP).
        let sips = req.uri.scheme.eq_ignore_ascii_case("sips");
        let mut bindings = self.directory.live_bindings(&user, now);
        if sips {
            bindings.retain(|b| b.target.transport == Transport::Tls);
        }
        let invite = req.method == Method::Invite;
        let pstn_legs = if invite && !sips {
            self.pstn_targets(&user, &bindings)
        } else {
            Vec::new()
        };
        if bindings.is_empty() && pstn_legs.is_empty() {
            self.reply(id, &req, 480, now);
            self.call_unreachable(&req, now);
            return;
        }
        // R25: identity claims from untrusted sources are stripped, ours asserted.
        self.assert_identity(&mut req, caller);
        self.consume_own_credentials(&mut req);
        // A phone rings only while enrolled (not revoked) and switched on (R9, R10).
        let targets: Vec<super::fork::BranchTarget> = bindings
            .into_iter()
            .filter(|b| {
                b.device
                    .as_deref()
                    .is_none_or(|d| self.directory.device(d).is_some_and(|d| d.service_on))
            })
            .map(|b| super::fork::BranchTarget {
                delay: sub
                    .ring_delays
                    .iter()
                    .find(|(s, _)| b.contact.contains(s.as_str()))
                    .map_or(std::time::Duration::ZERO, |d| d.1),
                uri: Some(b.uri),
                target: b.target,
                device: b.device,
                pstn: false,
            })
            .chain(pstn_legs)
            .collect();
        if targets.is_empty() {
            self.reply(id, &req, 480, now);
            self.call_unreachable(&req, now);
            return;
        }
        let plan = super::fork::ForkPlan {
            targets,
            ring_timeout: invite.then_some(sub.ring_timeout),
            record_route: invite,
        };
        self.trying(id, &req, now);
        self.start_fork(id, peer, req, plan, now);
    }

    /// The PSTN legs of a call to `user` (R15): through the gateway to the number of each of
    /// the user's phones that is switched on and has no live SIP binding of its own (a phone
    /// reachable over IP is rung there, not twice).
    fn pstn_targets(
        &self,
        user: &str,
        bindings: &[super::Binding],
    ) -> Vec<super::fork::BranchTarget> {
        let Some(trunk) = &self.cfg.trunk else {
            return Vec::new();
        };
        let mut legs: Vec<super::fork::BranchTarget> = self
            .directory
            .devices_of(user)
            .filter(|d| {
                d.service_on
                    && !bindings
                        .iter()
                        .any(|b| b.device.as_deref() == Some(d.id.as_str()))
            })
            .filter_map(|d| {
                let number = d.number.as_deref()?;
                let transport = self.cfg.trunk_transport;
                let param = match transport {
                    Transport::Udp => "",
                    Transport::Tcp => ";transport=tcp",
                    Transport::Tls => ";transport=tls",
                };
                let uri = crate::message::Uri::parse(&format!(
                    "sip:{number}@{};user=phone{param}",
                    trunk.addr
                ))
                .ok()?;
                Some(super::fork::BranchTarget {
                    uri: Some(uri),
                    target: Target {
                        transport,
                        addr: trunk.addr,
                        conn: None,
                    },
                    delay: std::time::Duration::ZERO,
                    device: Some(d.id.clone()),
                    pstn: true,
                })
            })
            .collect();
        legs.sort_by(|a, b| a.device.cmp(&b.device));
        legs
    }

    /// An in-dialog request (To tag): forward it along its route set, or to its
    /// Request-URI (the remote target), statefully.
    fn forward_in_dialog(&mut self, id: u64, peer: Target, mut req: Request, now: Instant) {
        // UAs often resend their cached credentials in the dialog: ours stop here (§22.3).
        // Nobody is authenticated in a dialog, so identity claims go too (R25).
        self.consume_own_credentials(&mut req);
        self.assert_identity(&mut req, &Caller::Unverified);
        let next = match req.headers.get(&HeaderName::Route) {
            Some(r) => crate::message::NameAddr::parse(r).ok().map(|n| n.uri),
            None if self.is_ours(&req.uri.host, req.uri.port) => None,
            None => Some(req.uri.clone()),
        };
        let Some(target) = next.and_then(|u| self.resolve(&u)) else {
            self.reply(id, &req, 404, now);
            return;
        };
        let t = super::fork::BranchTarget {
            uri: None,
            target,
            delay: std::time::Duration::ZERO,
            device: None,
            pstn: false,
        };
        let plan = super::fork::ForkPlan {
            targets: vec![t],
            ring_timeout: None,
            record_route: false,
        };
        self.trying(id, &req, now);
        self.start_fork(id, peer, req, plan, now);
    }
}
