//! The UAS side of a dialog (RFC 3261 §12.1.1) and the requests the phone sends in it
//! (§12.2.1.1): the route set from the INVITE's Record-Route, loose or strict routing, and the
//! next hop.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use sip_core::message::{HeaderName, Headers, Method, NameAddr, Request, Uri};
use sip_core::transaction::ClientTx;

use crate::agent::{Ctx, USER_AGENT};

/// A BYE in flight (non-INVITE client transaction).
#[derive(Debug)]
pub(crate) struct ByeTx {
    pub(crate) tx: ClientTx,
    /// Where it (and its retransmissions) go.
    pub(crate) to: SocketAddr,
    /// For logs.
    pub(crate) call_id: String,
}

/// Dialog state, as the UAS that accepted an INVITE keeps it.
#[derive(Debug, Clone)]
pub(crate) struct Dialog {
    pub(crate) call_id: String,
    /// Our side (the INVITE's To with our tag): From of our requests.
    pub(crate) local: String,
    pub(crate) local_tag: String,
    /// The caller (the INVITE's From): To of our requests.
    pub(crate) remote: String,
    pub(crate) remote_tag: Option<String>,
    /// The caller's Contact, updated by re-INVITEs.
    pub(crate) remote_target: Uri,
    /// The INVITE's Record-Route values, in order (§12.1.1).
    pub(crate) route_set: Vec<String>,
    pub(crate) local_cseq: u32,
    pub(crate) remote_cseq: u32,
}

impl Dialog {
    /// Builds an in-dialog request; returns it, its branch, and where to send it: the first
    /// Route's address, or the remote target's when the route set is empty.
    pub(crate) fn request(&mut self, method: Method, ctx: &Ctx) -> (Request, String, SocketAddr) {
        self.local_cseq = self.local_cseq.wrapping_add(1) % (1 << 31);
        let first = self
            .route_set
            .first()
            .and_then(|r| NameAddr::parse(r).ok())
            .map(|na| na.uri);
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
        let hop = match self.route_set.first().and_then(|r| NameAddr::parse(r).ok()) {
            Some(na) => next_hop(&na.uri, ctx),
            None => next_hop(&uri, ctx),
        };
        let (via, branch) = ctx.via();
        let mut h = Headers(Vec::with_capacity(10));
        h.push(HeaderName::Via, via);
        h.push(HeaderName::MaxForwards, "70");
        h.push(HeaderName::From, self.local.clone());
        h.push(HeaderName::To, self.remote.clone());
        h.push(HeaderName::CallId, self.call_id.clone());
        h.push(HeaderName::CSeq, format!("{} {method}", self.local_cseq));
        for r in routes {
            h.push(HeaderName::Route, r);
        }
        h.push(HeaderName::UserAgent, USER_AGENT);
        let req = Request {
            method,
            uri,
            headers: h,
            body: Bytes::new(),
        };
        (req, branch, hop)
    }
}

/// The address for `uri`: its `maddr` or host when an IP literal (port default 5060);
/// otherwise the configured server, as an outbound proxy (the phone does no DNS).
pub(crate) fn next_hop(uri: &Uri, ctx: &Ctx) -> SocketAddr {
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
        None => ctx.cfg.server,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PhoneConfig;

    fn ctx() -> Ctx {
        let cfg = PhoneConfig::new(
            "192.0.2.1:5060".parse().expect("addr"),
            "example.com",
            "alice",
            "d",
            "p",
            "dev",
        );
        let addr = "127.0.0.1:5070".parse().expect("addr");
        let contact_uri = Uri::parse("sip:alice@127.0.0.1:5070").expect("uri");
        Ctx {
            cfg,
            addr,
            contact: format!("<{contact_uri}>"),
            contact_uri,
            media_port: 4000,
            sdp_session: 1,
        }
    }

    fn dialog(routes: &[&str]) -> Dialog {
        Dialog {
            call_id: "c".into(),
            local: "<sip:alice@example.com>;tag=l".into(),
            local_tag: "l".into(),
            remote: "<sip:bob@example.com>;tag=r".into(),
            remote_tag: Some("r".into()),
            remote_target: Uri::parse("sip:bob@198.51.100.7:5062").expect("uri"),
            route_set: routes.iter().map(|s| (*s).to_owned()).collect(),
            local_cseq: 0,
            remote_cseq: 1,
        }
    }

    #[test]
    fn loose_route_set() {
        let ctx = ctx();
        let mut d = dialog(&["<sip:203.0.113.5:5080;lr>", "<sip:p2.example.com;lr>"]);
        let (req, branch, hop) = d.request(Method::Bye, &ctx);
        assert_eq!(hop, "203.0.113.5:5080".parse().expect("addr"));
        assert_eq!(req.uri.to_string(), "sip:bob@198.51.100.7:5062");
        let routes: Vec<&str> = req.headers.get_all(&HeaderName::Route).collect();
        assert_eq!(
            routes,
            ["<sip:203.0.113.5:5080;lr>", "<sip:p2.example.com;lr>"]
        );
        assert_eq!(req.cseq().seq, 1);
        assert!(req.top_via().and_then(|v| v.branch().map(str::to_owned)) == Some(branch));
        let again = sip_core::message::parse(&req.to_bytes()).expect("reparses");
        assert!(matches!(again, sip_core::message::Message::Request(_)));
    }

    #[test]
    fn strict_and_empty_route_sets() {
        let ctx = ctx();
        let mut d = dialog(&["<sip:203.0.113.5>", "<sip:p2.example.com;lr>"]);
        let (req, _, hop) = d.request(Method::Bye, &ctx);
        assert_eq!(req.uri.to_string(), "sip:203.0.113.5");
        assert_eq!(hop, "203.0.113.5:5060".parse().expect("addr"));
        let routes: Vec<&str> = req.headers.get_all(&HeaderName::Route).collect();
        assert_eq!(
            routes,
            ["<sip:p2.example.com;lr>", "<sip:bob@198.51.100.7:5062>"]
        );
        let mut d = dialog(&[]);
        let (req, _, hop) = d.request(Method::Bye, &ctx);
        assert!(!req.headers.contains(&HeaderName::Route));
        assert_eq!(hop, "198.51.100.7:5062".parse().expect("addr"));
        // A host name goes to the configured server.
        let mut d = dialog(&["<sip:proxy.example.com;lr>"]);
        assert_eq!(d.request(Method::Bye, &ctx).2, ctx.cfg.server);
    }
}
