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

/// The transport a SIP URI asks for (RFC 3261 §19.1.2, §26.2.2, RFC 5630): TLS for a
/// `sips:` URI (where `transport=tcp` means TLS over TCP and anything else is no transport
/// at all) and for `transport=tls`; else the `transport` parameter, UDP without one.
/// `None` for a transport we do not speak (SCTP, WebSocket).
pub(crate) fn uri_transport(uri: &Uri) -> Option<Transport> {
    let param = uri.param("transport").flatten();
    if uri.scheme.eq_ignore_ascii_case("sips") {
        return match param {
            None => Some(Transport::Tls),
            Some(t) if t.eq_ignore_ascii_case("tcp") || t.eq_ignore_ascii_case("tls") => {
                Some(Transport::Tls)
            }
            Some(_) => None,
        };
    }
    param.map_or(Some(Transport::Udp), Transport::from_token)
}

/// The port a SIP URI names: its own, else the default of its transport (5061 for `sips:`
/// and `transport=tls`, 5060 otherwise).
pub(crate) fn uri_port(uri: &Uri) -> u16 {
    uri.port
        .unwrap_or_else(|| uri_transport(uri).unwrap_or(Transport::Udp).default_port())
}

/// The address a SIP URI names literally: an IP (or `localhost`), the port of [`uri_port`],
/// the transport of [`uri_transport`].
pub(crate) fn literal_target(uri: &Uri) -> Option<Target> {
    if !uri.is_sip() {
        return None;
    }
    let ip = parse_ip(&uri.host)?;
    let transport = uri_transport(uri)?;
    Some(Target {
        transport,
        addr: SocketAddr::new(ip, uri_port(uri)),
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
        parse_ip(host).is_some_and(|ip| self.is_our_address(ip, port))
    }

    /// Whether `ip[:port]` is one of our SIP addresses: the UDP/TCP one, or the TLS one. A
    /// missing port is the default of either (5060, 5061).
    pub(crate) fn is_our_address(&self, ip: IpAddr, port: Option<u16>) -> bool {
        let adv = self.cfg.advertised;
        let plain = ip == adv.ip() && port.unwrap_or(5060) == adv.port();
        let tls = self
            .cfg
            .advertised_tls
            .is_some_and(|t| ip == t.ip() && port.unwrap_or(5061) == t.port());
        plain || tls
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

    /// Our address for `transport`: the TLS one for TLS (the plain one if there is none,
    /// which only a misconfigured driver would use), else the UDP/TCP one.
    pub(crate) fn local_address(&self, transport: Transport) -> SocketAddr {
        match transport {
            Transport::Tls => self.cfg.advertised_tls.unwrap_or(self.cfg.advertised),
            Transport::Udp | Transport::Tcp => self.cfg.advertised,
        }
    }

    /// A Via value for a request we send over `transport` (sent-by: our address for it).
    pub(crate) fn via(&self, transport: Transport, branch: &str) -> String {
        format!(
            "SIP/2.0/{} {};branch={branch}",
            transport.as_str(),
            self.local_address(transport)
        )
    }

    /// Our Record-Route URI for requests that reach us over `transport`, tagged for the
    /// dialogs of Call-ID `tag`'s call (see the `relay` module). The TLS one names our TLS
    /// address with `transport=tls` (a `sip:` URI, as RFC 5630 §4.4 allows when the
    /// Request-URI is not `sips:`; clients such as baresip 1.0 follow it over TLS).
    /// For a `sips:` request the entry is a `sips:` URI (§16.6 step 4; such a request only
    /// travels over TLS, see `route_to_aor`).
    fn rr_uri(&self, transport: Transport, tag: &str, sips: bool) -> String {
        let rr = super::relay::RR_PARAM;
        let at = self.local_address(transport);
        match transport {
            Transport::Tls if sips => format!("<sips:{at};lr;{rr}={tag}>"),
            Transport::Udp => format!("<sip:{at};lr;{rr}={tag}>"),
            Transport::Tcp => format!("<sip:{at};transport=tcp;lr;{rr}={tag}>"),
            Transport::Tls => format!("<sip:{at};transport=tls;lr;{rr}={tag}>"),
        }
    }

    /// Record-Route values to push for a request of `call_id`, bottom first: one entry, or
    /// two when the transports differ (double record-routing, so each side reaches us over
    /// its own transport and, for TLS, at our TLS address); `sips`: the request's URI is a
    /// `sips:` one.
    pub(crate) fn record_route(
        &self,
        inbound: Transport,
        outbound: Transport,
        call_id: &str,
        sips: bool,
    ) -> Vec<String> {
        let tag = self.route_tags.tag(call_id);
        if inbound == outbound {
            vec![self.rr_uri(inbound, &tag, sips)]
        } else {
            vec![
                self.rr_uri(inbound, &tag, sips),
                self.rr_uri(outbound, &tag, sips),
            ]
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

#[cfg(test)]
mod tests {
    use super::*;

    fn target(uri: &str) -> Option<(Transport, u16)> {
        let uri = Uri::parse(uri).ok()?;
        literal_target(&uri).map(|t| (t.transport, t.addr.port()))
    }

    #[test]
    fn uri_transports_and_default_ports() {
        assert_eq!(target("sip:a@10.0.0.1"), Some((Transport::Udp, 5060)));
        assert_eq!(
            target("sip:a@10.0.0.1;transport=TCP"),
            Some((Transport::Tcp, 5060))
        );
        assert_eq!(
            target("sip:a@10.0.0.1;transport=tls"),
            Some((Transport::Tls, 5061))
        );
        assert_eq!(target("sips:a@10.0.0.1"), Some((Transport::Tls, 5061)));
        assert_eq!(
            target("sips:a@10.0.0.1:6000;transport=tcp"),
            Some((Transport::Tls, 6000))
        );
        assert_eq!(target("sips:a@10.0.0.1;transport=udp"), None);
        assert_eq!(target("sip:a@10.0.0.1;transport=sctp"), None);
        assert_eq!(target("sip:a@example.com"), None, "no DNS");
    }
}
