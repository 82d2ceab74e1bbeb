//! Dialogs as the UAS of an INVITE keeps them (RFC 3261 §12.1.1) and the requests a user
//! agent sends in them (§12.2.1.1): the route set from the INVITE's Record-Route, loose or
//! strict routing, the next hop, target refreshes and matching requests to the dialog.
//!
//! Shared by the phone's user agent and the gateway's trunk side. Sans-IO like the rest of
//! the crate: the caller brings the top Via (with a fresh branch from its own random source)
//! and the address to use when a URI names a host rather than an IP address, since neither
//! user agent does DNS (RFC 3263): the phone sends those to its outbound proxy, the gateway
//! back to where the INVITE came from.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;

use crate::message::{HeaderName, Headers, Method, NameAddr, Request, Uri};

/// Max-Forwards of the requests a user agent originates (RFC 3261 §8.1.1.6).
const MAX_FORWARDS: &str = "70";

/// Dialog state, as the UAS that accepted an INVITE keeps it (RFC 3261 §12.1.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dialog {
    /// The INVITE's Call-ID.
    pub call_id: String,
    /// Our side (the INVITE's To with our tag): the From of our requests.
    pub local: String,
    /// Our tag, also in `local`.
    pub local_tag: String,
    /// The caller (the INVITE's From, as received): the To of our requests.
    pub remote: String,
    /// The caller's tag; `None` for an RFC 2543 caller that sent none.
    pub remote_tag: Option<String>,
    /// The caller's Contact, updated by target refreshes (§12.2.1.2, §12.2.2).
    pub remote_target: Uri,
    /// The INVITE's Record-Route values, in order (§12.1.1).
    pub route_set: Vec<String>,
    /// CSeq of our last request (§12.1.1 lets a UAS start anywhere below 2**31).
    pub local_cseq: u32,
    /// Highest CSeq seen from the far end (§12.2.2 refuses lower ones).
    pub remote_cseq: u32,
}

impl Dialog {
    /// The dialog an INVITE creates at its UAS (§12.1.1), with our `local_tag` and first
    /// `local_cseq`. `None` when the INVITE lacks a From, a To or a SIP Contact (§8.1.1.8):
    /// the caller answers 400.
    pub fn uas(invite: &Request, local_tag: String, local_cseq: u32) -> Option<Self> {
        let target = contact_target(&invite.headers)?;
        let from = invite.from()?;
        let to = invite.headers.get(&HeaderName::To)?;
        Some(Self {
            call_id: invite.call_id().to_owned(),
            local: format!("{to};tag={local_tag}"),
            local_tag,
            remote: invite
                .headers
                .get(&HeaderName::From)
                .unwrap_or_default()
                .to_owned(),
            remote_tag: from.tag().map(str::to_owned),
            remote_target: target,
            route_set: invite
                .headers
                .get_all(&HeaderName::RecordRoute)
                .map(str::to_owned)
                .collect(),
            local_cseq,
            remote_cseq: invite.cseq().seq,
        })
    }

    /// Whether a request's tags are this dialog's (§12.2.2): the To tag ours, the From tag
    /// the caller's (both absent for a caller without tags).
    pub fn matches(&self, req: &Request) -> bool {
        let to = req.to();
        let from = req.from();
        to.as_ref().and_then(|t| t.tag()) == Some(self.local_tag.as_str())
            && from.as_ref().and_then(|f| f.tag()) == self.remote_tag.as_deref()
    }

    /// A target refresh (§12.2.1.2 for the 2xx to our re-INVITE, §12.2.2 for the far end's
    /// re-INVITE): a SIP Contact in `headers` becomes the remote target; anything else
    /// leaves it.
    pub fn refresh_target(&mut self, headers: &Headers) {
        if let Some(target) = contact_target(headers) {
            self.remote_target = target;
        }
    }

    /// A new request (BYE, re-INVITE) with the next local CSeq, one more than the last and
    /// kept within 1..2**31 (§8.1.1.5); `via` is its top Via.
    pub fn request(&mut self, method: Method, via: String) -> Request {
        self.local_cseq = (self.local_cseq % ((1 << 31) - 1)) + 1;
        self.build(method, self.local_cseq, via)
    }

    /// The ACK for a 2xx to our INVITE with CSeq `invite_seq`: end to end, a new branch in
    /// `via`, routed like any other request of the dialog (§13.2.2.4).
    pub fn ack(&self, invite_seq: u32, via: String) -> Request {
        self.build(Method::Ack, invite_seq, via)
    }

    /// Where the dialog's requests go (§12.2.1.1, then §8.1.2): the first Route's address,
    /// or the remote target's when the route set is empty; see [`next_hop`] for `fallback`.
    pub fn next_hop(&self, fallback: SocketAddr) -> SocketAddr {
        match self.first_route() {
            Some(route) => next_hop(&route, fallback),
            None => next_hop(&self.remote_target, fallback),
        }
    }

    /// The first Route's URI, if the route set has one that parses.
    fn first_route(&self) -> Option<Uri> {
        self.route_set
            .first()
            .and_then(|r| NameAddr::parse(r).ok())
            .map(|na| na.uri)
    }

    /// Builds a request without body: the Request-URI and Route headers per §12.2.1.1,
    /// then Via, Max-Forwards, From, To, Call-ID and CSeq. The caller may add headers
    /// (User-Agent, Contact, Reason, …) and a body.
    fn build(&self, method: Method, seq: u32, via: String) -> Request {
        let (uri, routes) = match self.first_route() {
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
        let mut h = Headers(Vec::with_capacity(10));
        h.push(HeaderName::Via, via);
        h.push(HeaderName::MaxForwards, MAX_FORWARDS);
        h.push(HeaderName::From, self.local.clone());
        h.push(HeaderName::To, self.remote.clone());
        h.push(HeaderName::CallId, self.call_id.clone());
        h.push(HeaderName::CSeq, format!("{seq} {method}"));
        for r in routes {
            h.push(HeaderName::Route, r);
        }
        Request {
            method,
            uri,
            headers: h,
            body: Bytes::new(),
        }
    }
}

/// The SIP URI of the first Contact in `headers`, the remote target it names.
fn contact_target(headers: &Headers) -> Option<Uri> {
    headers
        .get(&HeaderName::Contact)
        .and_then(|c| NameAddr::parse(c).ok())
        .filter(|c| c.uri.is_sip())
        .map(|c| c.uri)
}

/// The address a request for `uri` goes to: its `maddr` or host when an IP literal (port
/// default 5060, RFC 3263 §4.2 for UDP); otherwise `fallback`, since resolving a host name
/// is left out (the phone passes its outbound proxy, the gateway where the INVITE came from).
pub fn next_hop(uri: &Uri, fallback: SocketAddr) -> SocketAddr {
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
        None => fallback,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Message, parse};

    const VIA: &str = "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1;rport";

    fn fallback() -> SocketAddr {
        "192.0.2.9:5060".parse().expect("addr")
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
            local_cseq: 41,
            remote_cseq: 1,
        }
    }

    fn request(text: &str) -> Request {
        match parse(text.as_bytes()) {
            Ok(Message::Request(r)) => r,
            other => panic!("not a request: {other:?}"),
        }
    }

    fn routes(req: &Request) -> Vec<&str> {
        req.headers.get_all(&HeaderName::Route).collect()
    }

    #[test]
    fn loose_route_set() {
        let mut d = dialog(&["<sip:203.0.113.5:5080;lr>", "<sip:p2.example.com;lr>"]);
        let req = d.request(Method::Bye, VIA.into());
        assert_eq!(
            d.next_hop(fallback()),
            "203.0.113.5:5080".parse().expect("addr")
        );
        assert_eq!(req.uri.to_string(), "sip:bob@198.51.100.7:5062");
        assert_eq!(
            routes(&req),
            ["<sip:203.0.113.5:5080;lr>", "<sip:p2.example.com;lr>"]
        );
        assert_eq!(req.cseq().seq, 42);
        assert_eq!(req.cseq().method, Method::Bye);
        assert_eq!(
            req.top_via().and_then(|v| v.branch().map(str::to_owned)),
            Some("z9hG4bK1".into())
        );
        assert_eq!(req.headers.get(&HeaderName::From), Some(d.local.as_str()));
        assert_eq!(req.headers.get(&HeaderName::To), Some(d.remote.as_str()));
        assert_eq!(req.headers.get(&HeaderName::MaxForwards), Some("70"));
        assert!(matches!(parse(&req.to_bytes()), Ok(Message::Request(_))));
        let ack = d.ack(42, VIA.into());
        assert_eq!(ack.cseq().seq, 42, "ACK reuses the INVITE's CSeq");
        assert_eq!(ack.cseq().method, Method::Ack);
        assert_eq!(d.local_cseq, 42, "an ACK takes no new CSeq");
        assert_eq!(routes(&ack), routes(&req));
    }

    #[test]
    fn strict_empty_and_named_route_sets() {
        let mut d = dialog(&["<sip:203.0.113.5>", "<sip:p2.example.com;lr>"]);
        let req = d.request(Method::Bye, VIA.into());
        assert_eq!(req.uri.to_string(), "sip:203.0.113.5");
        assert_eq!(
            d.next_hop(fallback()),
            "203.0.113.5:5060".parse().expect("addr")
        );
        assert_eq!(
            routes(&req),
            ["<sip:p2.example.com;lr>", "<sip:bob@198.51.100.7:5062>"]
        );
        let mut d = dialog(&[]);
        let req = d.request(Method::Bye, VIA.into());
        assert!(!req.headers.contains(&HeaderName::Route));
        assert_eq!(
            d.next_hop(fallback()),
            "198.51.100.7:5062".parse().expect("addr")
        );
        // A host name goes to the fallback: neither user agent does DNS.
        let d = dialog(&["<sip:proxy.example.com;lr>"]);
        assert_eq!(d.next_hop(fallback()), fallback());
    }

    #[test]
    fn next_hop_prefers_maddr_and_reads_ipv6() {
        let uri = Uri::parse("sip:proxy.example.com:5070;maddr=203.0.113.9;lr").expect("uri");
        assert_eq!(
            next_hop(&uri, fallback()),
            "203.0.113.9:5070".parse().expect("addr")
        );
        let uri = Uri::parse("sip:[2001:db8::1];lr").expect("uri");
        assert_eq!(
            next_hop(&uri, fallback()),
            "[2001:db8::1]:5060".parse().expect("addr")
        );
    }

    #[test]
    fn cseq_wraps_below_2_31() {
        let mut d = dialog(&[]);
        d.local_cseq = 0;
        assert_eq!(d.request(Method::Bye, VIA.into()).cseq().seq, 1);
        d.local_cseq = (1 << 31) - 1;
        assert_eq!(d.request(Method::Bye, VIA.into()).cseq().seq, 1);
    }

    #[test]
    fn uas_dialog_from_invite() {
        let invite = request(
            "INVITE sip:alice@127.0.0.1:5070 SIP/2.0\r\n\
             Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKa\r\n\
             Record-Route: <sip:192.0.2.1;lr>\r\n\
             Record-Route: <sip:192.0.2.2;lr>\r\n\
             From: \"Bob\" <sip:bob@example.com>;tag=r\r\n\
             To: <sip:alice@example.com>\r\n\
             Call-ID: c1\r\n\
             CSeq: 7 INVITE\r\n\
             Contact: <sip:bob@198.51.100.7:5062>\r\n\
             Content-Length: 0\r\n\r\n",
        );
        let d = Dialog::uas(&invite, "l".into(), 100).expect("dialog");
        assert_eq!(d.call_id, "c1");
        assert_eq!(d.local, "<sip:alice@example.com>;tag=l");
        assert_eq!(d.remote, "\"Bob\" <sip:bob@example.com>;tag=r");
        assert_eq!(d.remote_tag.as_deref(), Some("r"));
        assert_eq!(d.remote_target.to_string(), "sip:bob@198.51.100.7:5062");
        assert_eq!(d.route_set, ["<sip:192.0.2.1;lr>", "<sip:192.0.2.2;lr>"]);
        assert_eq!((d.local_cseq, d.remote_cseq), (100, 7));

        let mut no_contact = invite.clone();
        no_contact.headers.remove_all(&HeaderName::Contact);
        assert!(Dialog::uas(&no_contact, "l".into(), 1).is_none());
        let mut tel_contact = invite;
        tel_contact
            .headers
            .set(HeaderName::Contact, "<tel:+15551234567>");
        assert!(Dialog::uas(&tel_contact, "l".into(), 1).is_none());
    }

    #[test]
    fn matching_and_target_refresh() {
        let mut d = dialog(&[]);
        let bye = |from_tag: &str, to_tag: &str| {
            request(&format!(
                "BYE sip:alice@127.0.0.1 SIP/2.0\r\n\
                 Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKb\r\n\
                 From: <sip:bob@example.com>{from_tag}\r\n\
                 To: <sip:alice@example.com>{to_tag}\r\n\
                 Call-ID: c\r\n\
                 CSeq: 2 BYE\r\n\
                 Contact: <sip:bob@198.51.100.8>\r\n\
                 Content-Length: 0\r\n\r\n"
            ))
        };
        assert!(d.matches(&bye(";tag=r", ";tag=l")));
        assert!(!d.matches(&bye(";tag=x", ";tag=l")));
        assert!(!d.matches(&bye(";tag=r", "")));
        d.remote_tag = None;
        assert!(d.matches(&bye("", ";tag=l")), "a caller without tags");

        let req = bye(";tag=r", ";tag=l");
        d.refresh_target(&req.headers);
        assert_eq!(d.remote_target.to_string(), "sip:bob@198.51.100.8");
        let mut headers = req.headers.clone();
        headers.set(HeaderName::Contact, "<tel:+15551234567>");
        d.refresh_target(&headers);
        assert_eq!(d.remote_target.to_string(), "sip:bob@198.51.100.8", "kept");
    }
}
