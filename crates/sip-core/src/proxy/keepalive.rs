//! NAT keep-alive pings of NATed UDP bindings (see the `nat` module): one stateless OPTIONS
//! per binding every interval, any answer counts, too many misses in a row drop the binding;
//! and the Contact fix-up for callers behind NAT.
//!
//! Stateless on purpose: a ping is one datagram (no retransmissions, no transaction), so a
//! device that is gone costs one datagram per interval until it is dropped. The state is a
//! branch -> binding map of the pings in flight (forgotten every round) and a miss count per
//! binding, both bounded by the number of bindings.

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;

use std::net::IpAddr;

use super::{Event, Output, Proxy, Target, TimerRef, Transport};
use crate::message::{HeaderName, Method, NameAddr, Request, Response};

/// Branch prefix of keep-alive pings: responses carrying it are ours, not a transaction's.
const BRANCH_PREFIX: &str = "z9hG4bK-ka-";

/// Pings in flight and missed counts.
#[derive(Debug, Default)]
pub(crate) struct Pings {
    in_flight: HashMap<String, (String, String)>,
    missed: HashMap<(String, String), u8>,
    seq: u64,
    /// A round is due (armed only while there are NATed UDP bindings, so an idle proxy has
    /// no timer).
    armed: bool,
}

impl Pings {
    /// `user`'s `contact` just proved it is reachable (it registered, or answered a ping).
    pub(crate) fn alive(&mut self, user: &str, contact: &str) {
        self.missed.remove(&(user.to_owned(), contact.to_owned()));
    }
}

impl Proxy {
    /// Arms the next keep-alive round unless one is due: call when a NATed UDP binding is
    /// made.
    pub(super) fn arm_keepalive(&mut self, now: Instant) {
        if let Some(every) = self.cfg.nat.keepalive
            && !self.pings.armed
        {
            self.pings.armed = true;
            self.arm(Some(now + every), TimerRef::Keepalive);
        }
    }

    /// One round: drop bindings that missed too many pings, ping the others, arm the next.
    pub(super) fn keepalive_round(&mut self, now: Instant) {
        self.pings.armed = false;
        self.pings.in_flight.clear();
        let nated = self.directory.nated_udp(now);
        let live: std::collections::HashSet<(String, String)> = nated
            .iter()
            .map(|(u, c, _, _)| (u.clone(), c.clone()))
            .collect();
        self.pings.missed.retain(|k, _| live.contains(k));
        for (user, contact, target, uri) in nated {
            let key = (user, contact);
            let missed = self.pings.missed.get(&key).copied().unwrap_or(0);
            if missed >= self.cfg.nat.max_missed {
                self.pings.missed.remove(&key);
                let (user, contact) = key;
                tracing::info!(%user, %contact, "NATed binding stopped answering keep-alives; dropped");
                if self.directory.remove_binding(&user, &contact) {
                    self.out
                        .push_back(Output::Event(Box::new(Event::BindingRemoved {
                            user,
                            contact,
                        })));
                }
                continue;
            }
            self.pings.missed.insert(key.clone(), missed + 1);
            self.pings.seq += 1;
            let branch = format!("{BRANCH_PREFIX}{:x}-{}", self.pings.seq, self.ids.tag());
            let me = self.cfg.advertised;
            let domain = &self.cfg.domain;
            let ping = format!(
                "OPTIONS {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch={branch};rport\r\n\
Max-Forwards: 70\r\nFrom: <sip:keepalive@{domain}>;tag={tag}\r\nTo: <{uri}>\r\n\
Call-ID: {branch}@{me}\r\nCSeq: 1 OPTIONS\r\nUser-Agent: trustring\r\nContent-Length: 0\r\n\r\n",
                tag = self.pings.seq,
            );
            self.pings.in_flight.insert(branch, key);
            self.transmit(target, Bytes::from(ping));
            self.arm_keepalive(now);
        }
    }

    /// Kamailio's `fix_nated_contact` for a caller behind NAT: a dialog-creating or
    /// target-refreshing request straight from a UA over UDP (one Via) whose Contact names a
    /// private address that is not its source gets the source as Contact host and port, so
    /// the callee's in-dialog requests (routed back through us) reach the caller's NAT
    /// mapping. REGISTER keeps its Contact (the registrar remembers the source instead).
    pub(super) fn fix_nated_contact(&self, req: &mut Request, peer: Target) {
        if peer.transport != Transport::Udp
            || !matches!(
                req.method,
                Method::Invite | Method::Subscribe | Method::Refer | Method::Update
            )
            || req.headers.get_all(&HeaderName::Via).count() != 1
        {
            return;
        }
        let Some(h) = req
            .headers
            .0
            .iter_mut()
            .find(|h| h.name == HeaderName::Contact)
        else {
            return;
        };
        let Ok(mut contact) = NameAddr::parse(&h.value) else {
            return;
        };
        let Ok(ip) = contact.uri.host.trim_matches(['[', ']']).parse::<IpAddr>() else {
            return;
        };
        if ip == peer.addr.ip() || !self.cfg.nat.is_private(ip) {
            return;
        }
        contact.uri.host = match peer.addr.ip() {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        };
        contact.uri.port = Some(peer.addr.port());
        let params: String = contact
            .params
            .iter()
            .map(|p| match &p.value {
                Some(v) => format!(";{}={v}", p.name),
                None => format!(";{}", p.name),
            })
            .collect();
        let display = contact.display.as_deref().map_or(String::new(), |d| {
            format!("\"{}\" ", d.replace('\\', "\\\\").replace('"', "\\\""))
        });
        h.value = format!("{display}<{}>{params}", contact.uri);
    }

    /// Takes `resp` if it answers a keep-alive ping (any status: the device is there).
    pub(super) fn keepalive_answered(&mut self, resp: &Response) -> bool {
        let Some(via) = resp.top_via() else {
            return false;
        };
        let Some(branch) = via.branch().filter(|b| b.starts_with(BRANCH_PREFIX)) else {
            return false;
        };
        if let Some((user, contact)) = self.pings.in_flight.remove(branch) {
            self.pings.alive(&user, &contact);
        }
        true
    }
}
