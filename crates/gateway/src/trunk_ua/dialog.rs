//! The UAS side of a dialog (RFC 3261 §12.1.1) and the requests the gateway sends in it
//! (§12.2.1.1): route set from the INVITE's Record-Route, loose or strict routing, next hop.
//!
//! Adapted from `trustring-phone`'s `dialog.rs` (same rules; the next hop for a host name
//! is the address the INVITE came from, since the gateway has no DNS and no outbound proxy
//! of its own).

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use sip_core::message::{HeaderName, Headers, Method, NameAddr, Request, Uri};

use super::wire::Ctx;

/// Dialog state, as the UAS that accepted an INVITE keeps it.
#[derive(Debug, Clone)]
pub(super) struct Dialog {
    pub(super) call_id: String,
    /// Our side (the INVITE's To with our tag): From of our requests.
    pub(super) local: String,
    pub(super) local_tag: String,
    /// The caller (the INVITE's From): To of our requests.
    pub(super) remote: String,
    pub(super) remote_tag: Option<String>,
    /// The caller's Contact, updated by target refreshes (re-INVITE, its 2xx).
    pub(super) remote_target: Uri,
    /// The INVITE's Record-Route values, in order (§12.1.1).
    pub(super) route_set: Vec<String>,
    /// CSeq of our last request; starts random.
    pub(super) local_cseq: u32,
    /// Highest CSeq seen from the far end.
    pub(super) remote_cseq: u32,
    /// Where the INVITE came from: the next hop when no route or target names an address.
    pub(super) fallback: SocketAddr,
}

/// An in-dialog request ready to send.
#[derive(Debug)]
pub(super) struct Outgoing {
    pub(super) request: Request,
    pub(super) branch: String,
    pub(super) hop: SocketAddr,
}

impl Dialog {
    /// A new request (BYE, re-INVITE) with the next local CSeq.
    pub(super) fn request(&mut self, method: Method, ctx: &Ctx) -> Outgoing {
        self.local_cseq = (self.local_cseq % ((1 << 31) - 1)) + 1;
        self.build(method, self.local_cseq, ctx)
    }

    /// The ACK for a 2xx to our INVITE with CSeq `seq`: end to end, new branch, via the
    /// route set (§13.2.2.4).
    pub(super) fn ack(&self, seq: u32, ctx: &Ctx) -> Outgoing {
        self.build(Method::Ack, seq, ctx)
    }

    /// Builds a request: the Request-URI and Route headers per §12.2.1.1 and the next hop:
    /// the first Route's address, or the remote target's when the route set is empty.
    fn build(&self, method: Method, seq: u32, ctx: &Ctx) -> Outgoing {
        let first = self
            .route_set
            .first()
            .and_then(|r| NameAddr::parse(r).ok())
            .map(|na| na.uri);
        let hop = self.next_hop(first.as_ref().unwrap_or(&self.remote_target));
        let (uri, routes) = match first {
            None => (self.remote_target.clone(), Vec::new()),
            Some(f) if f.is_loose_router() => (self.remote_target.clone(), self.route_set.clone()),
            Some(mut f) => {
                // Strict router: its URI becomes the Request-URI, the remote target the last
                // Route (§12.2.1.1).
                f.headers = None;
                let mut rest = self.route_set.get(1..).unwrap_or_default().to_vec();
                rest.push(format!("<{}>", self.remote_target));
                (f, rest)
            }
        };
        let (via, branch) = ctx.via();
        let mut h = Headers(Vec::with_capacity(10));
        h.push(HeaderName::Via, via);
        h.push(HeaderName::MaxForwards, "70");
        h.push(HeaderName::From, self.local.clone());
        h.push(HeaderName::To, self.remote.clone());
        h.push(HeaderName::CallId, self.call_id.clone());
        h.push(HeaderName::CSeq, format!("{seq} {method}"));
        for r in routes {
            h.push(HeaderName::Route, r);
        }
        if !ctx.cfg.user_agent.is_empty() {
            h.push(HeaderName::UserAgent, ctx.cfg.user_agent.clone());
        }
        let request = Request {
            method,
            uri,
            headers: h,
            body: Bytes::new(),
        };
        Outgoing {
            request,
            branch,
            hop,
        }
    }

    /// The address for `uri`: its `maddr` or host when an IP literal (port default 5060);
    /// otherwise where the INVITE came from (the proxy).
    fn next_hop(&self, uri: &Uri) -> SocketAddr {
        let literal = |h: &str| {
            h.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .ok()
        };
        let ip = uri
            .param("maddr")
            .flatten()
            .and_then(literal)
            .or_else(|| literal(&uri.host));
        match ip {
            Some(ip) => SocketAddr::new(ip, uri.port.unwrap_or(5060)),
            None => self.fallback,
        }
    }

    /// Whether a request's tags are this dialog's (To: ours; From: the caller's).
    pub(super) fn is_ours(&self, req: &Request) -> bool {
        let to = req.to();
        let from = req.from();
        to.as_ref().and_then(|t| t.tag()) == Some(self.local_tag.as_str())
            && from.as_ref().and_then(|f| f.tag()) == self.remote_tag.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use sip_core::message::{Message, parse};
    use sip_core::transaction::Timers;

    use super::*;
    use crate::trunk_ua::UaConfig;

    fn ctx() -> Ctx {
        Ctx {
            cfg: UaConfig {
                local: "127.0.0.1:5070".parse().expect("addr"),
                timers: Timers::default(),
                user_agent: "gw".into(),
            },
            contact: "<sip:127.0.0.1:5070>".into(),
        }
    }

    fn dialog(routes: &[&str]) -> Dialog {
        Dialog {
            call_id: "c".into(),
            local: "<sip:+15551234567@gw>;tag=l".into(),
            local_tag: "l".into(),
            remote: "<sip:bob@example.com>;tag=r".into(),
            remote_tag: Some("r".into()),
            remote_target: Uri::parse("sip:bob@198.51.100.7:5062").expect("uri"),
            route_set: routes.iter().map(|s| (*s).to_owned()).collect(),
            local_cseq: 41,
            remote_cseq: 1,
            fallback: "192.0.2.9:5060".parse().expect("addr"),
        }
    }

    #[test]
    fn loose_route_set() {
        let ctx = ctx();
        let mut d = dialog(&["<sip:203.0.113.5:5080;lr>", "<sip:p2.example.com;lr>"]);
        let out = d.request(Method::Bye, &ctx);
        assert_eq!(out.hop, "203.0.113.5:5080".parse().expect("addr"));
        assert_eq!(out.request.uri.to_string(), "sip:bob@198.51.100.7:5062");
        let routes: Vec<&str> = out.request.headers.get_all(&HeaderName::Route).collect();
        assert_eq!(
            routes,
            ["<sip:203.0.113.5:5080;lr>", "<sip:p2.example.com;lr>"]
        );
        assert_eq!(out.request.cseq().seq, 42);
        assert_eq!(
            out.request
                .top_via()
                .and_then(|v| v.branch().map(str::to_owned)),
            Some(out.branch)
        );
        let ack = d.ack(42, &ctx);
        assert_eq!(ack.request.cseq().seq, 42, "ACK reuses the INVITE's CSeq");
        assert!(matches!(
            parse(&out.request.to_bytes()),
            Ok(Message::Request(_))
        ));
    }

    #[test]
    fn strict_empty_and_named_route_sets() {
        let ctx = ctx();
        let mut d = dialog(&["<sip:203.0.113.5>", "<sip:p2.example.com;lr>"]);
        let out = d.request(Method::Bye, &ctx);
        assert_eq!(out.request.uri.to_string(), "sip:203.0.113.5");
        assert_eq!(out.hop, "203.0.113.5:5060".parse().expect("addr"));
        let routes: Vec<&str> = out.request.headers.get_all(&HeaderName::Route).collect();
        assert_eq!(
            routes,
            ["<sip:p2.example.com;lr>", "<sip:bob@198.51.100.7:5062>"]
        );
        let mut d = dialog(&[]);
        let out = d.request(Method::Bye, &ctx);
        assert!(!out.request.headers.contains(&HeaderName::Route));
        assert_eq!(out.hop, "198.51.100.7:5062".parse().expect("addr"));
        let mut d = dialog(&["<sip:proxy.example.com;lr>"]);
        assert_eq!(d.request(Method::Bye, &ctx).hop, d.fallback);
    }

    #[test]
    fn cseq_wraps_below_2_31() {
        let ctx = ctx();
        let mut d = dialog(&[]);
        d.local_cseq = (1 << 31) - 1;
        assert_eq!(d.request(Method::Bye, &ctx).request.cseq().seq, 1);
    }
}
