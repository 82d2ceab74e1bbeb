//! Addressing helpers: is a URI ours, where does a URI or a response go, and the Via and
//! Record-Route values we add (RFC 3261 §16.6, §18.2.2, RFC 3581).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::{Proxy, Target, Transport};
use crate::message::{HeaderName, Request, Response, Uri, Via};

/// Where a response goes (§18.2.2 with RFC 3581): over the same connection for streams;
/// for UDP to the source address when `rport` was asked for, else the source IP and the
/// Via's sent-by port.
pub(crate) fn response_target(resp: &Response, peer: Target) -> Target {
    if peer.transport.is_reliable() {
        return peer;
    }
    match resp.top_via() {
        Some(v) if v.param("rport").is_none() => Target {
            addr: SocketAddr::new(peer.addr.ip(), v.port.unwrap_or(5060)),
            ..peer
        },
        _ => peer,
    }
}

/// Adds `received` and `rport` to the top Via of a request from `source` (§18.2.1, RFC 3581).
pub(crate) fn stamp_via(req: &mut Request, source: SocketAddr) {
    let Some(top) = req.headers.0.iter_mut().find(|h| h.name == HeaderName::Via) else {
        return;
    };
    let Ok(via) = Via::parse(&top.value) else {
        return;
    };
    let ip = source.ip().to_string();
    let mut value = top.value.clone();
    let wants_rport = matches!(via.param("rport"), Some(None));
    if wants_rport {
        value = replace_flag(&value, "rport", &format!("rport={}", source.port()));
    }
    if (via.host.trim_matches(['[', ']']) != ip || wants_rport) && via.param("received").is_none() {
        value.push_str(";received=");
        value.push_str(&ip);
    }
    top.value = value;
}

/// Replaces the bare flag parameter `;name` with `;replacement` in a header value.
fn replace_flag(value: &str, name: &str, replacement: &str) -> String {
    let mut out = String::with_capacity(value.len() + 8);
    for (i, part) in value.split(';').enumerate() {
        if i > 0 {
            out.push(';');
        }
        if i > 0 && part.trim().eq_ignore_ascii_case(name) {
            out.push_str(replacement);
        } else {
            out.push_str(part);
        }
    }
    out
}

/// The address a SIP URI names literally: an IP (or `localhost`), port 5060 by default,
/// transport from its `transport` parameter.
pub(crate) fn literal_target(uri: &Uri) -> Option<Target> {
    if !uri.is_sip() {
        return None;
    }
    let ip = parse_ip(&uri.host)?;
    let transport = match uri.param("transport").flatten() {
        Some(t) if t.eq_ignore_ascii_case("tcp") => Transport::Tcp,
        Some(t) if !t.eq_ignore_ascii_case("udp") => return None,
        _ => Transport::Udp,
    };
    Some(Target {
        transport,
        addr: SocketAddr::new(ip, uri.port.unwrap_or(5060)),
        conn: None,
    })
}

fn parse_ip(host: &str) -> Option<IpAddr> {
    if host.eq_ignore_ascii_case("localhost") {
        return Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    host.trim_matches(['[', ']']).parse().ok()
}

impl Proxy {
    /// Whether `host[:port]` names this server.
    pub(crate) fn is_ours(&self, host: &str, port: Option<u16>) -> bool {
        if host.eq_ignore_ascii_case(&self.cfg.domain)
            || self
                .cfg
                .aliases
                .iter()
                .any(|a| a.eq_ignore_ascii_case(host))
        {
            return true;
        }
        let adv = self.cfg.advertised;
        parse_ip(host).is_some_and(|ip| ip == adv.ip() && port.unwrap_or(5060) == adv.port())
    }

    /// Whether `uri` names this server (a Route or Record-Route entry of ours).
    pub(crate) fn is_our_uri(&self, uri: &Uri) -> bool {
        uri.is_sip() && uri.user.is_none() && self.is_ours(&uri.host, uri.port)
    }

    /// Where to send a request for `uri`: a registered device's flow if the URI is one of
    /// our contacts, else the literal address. Host names other than `localhost` are not
    /// resolved (no DNS in the core yet).
    /// Never this server itself, nor an unspecified address (no loops, see `relay`).
    pub(crate) fn resolve(&self, uri: &Uri) -> Option<Target> {
        if !uri.is_sip() {
            return None;
        }
        let target = self
            .directory
            .target_for_contact(uri)
            .or_else(|| literal_target(uri))?;
        (!self.is_self_or_unspecified(target.addr)).then_some(target)
    }

    /// A Via value for a request we send over `transport`.
    pub(crate) fn via(&self, transport: Transport, branch: &str) -> String {
        format!(
            "SIP/2.0/{} {};branch={branch}",
            transport.as_str(),
            self.cfg.advertised
        )
    }

    /// Our Record-Route URI for requests that reach us over `transport`, tagged for the
    /// dialogs of Call-ID `tag`'s call (see the `relay` module).
    fn rr_uri(&self, transport: Transport, tag: &str) -> String {
        let rr = super::relay::RR_PARAM;
        match transport {
            Transport::Udp => format!("<sip:{};lr;{rr}={tag}>", self.cfg.advertised),
            Transport::Tcp => {
                format!("<sip:{};transport=tcp;lr;{rr}={tag}>", self.cfg.advertised)
            }
        }
    }

    /// Record-Route values to push for a request of `call_id`, bottom first: one entry, or
    /// two when the transports differ (double record-routing, so each side reaches us over
    /// its own transport).
    pub(crate) fn record_route(
        &self,
        inbound: Transport,
        outbound: Transport,
        call_id: &str,
    ) -> Vec<String> {
        let tag = self.route_tags.tag(call_id);
        if inbound == outbound {
            vec![self.rr_uri(inbound, &tag)]
        } else {
            vec![self.rr_uri(inbound, &tag), self.rr_uri(outbound, &tag)]
        }
    }

    /// Removes the Route entries at the top that name us (loose routing, §16.4); returns
    /// how many were removed.
    pub(crate) fn pop_own_routes(&self, req: &mut Request) -> usize {
        let mut n = 0;
        while let Some(first) = req.headers.get(&HeaderName::Route) {
            let ours =
                crate::message::NameAddr::parse(first).is_ok_and(|r| self.is_our_uri(&r.uri));
            if !ours {
                break;
            }
            req.headers.remove_first(&HeaderName::Route);
            n += 1;
        }
        n
    }
}
