//! The requests the phone sends in a dialog it accepted: `sip_core::dialog` builds them
//! (route set, loose or strict routing, next hop: RFC 3261 §12.2.1.1); the phone adds its
//! Via and User-Agent, and sends to its configured server whatever names a host (the phone
//! does no DNS: the server is its outbound proxy).

use std::net::SocketAddr;

use sip_core::dialog::Dialog;
use sip_core::message::{HeaderName, Method, Request};
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

/// Builds an in-dialog request with the next local CSeq; returns it, its branch, and where
/// to send it: the first Route's address, or the remote target's when the route set is
/// empty.
pub(crate) fn request(
    dialog: &mut Dialog,
    method: Method,
    ctx: &Ctx,
) -> (Request, String, SocketAddr) {
    let (via, branch) = ctx.via();
    let mut req = dialog.request(method, via);
    req.headers.push(HeaderName::UserAgent, USER_AGENT);
    (req, branch, dialog.next_hop(ctx.cfg.server))
}

#[cfg(test)]
mod tests {
    use sip_core::message::Uri;

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

    /// The dialog an INVITE from `contact` through `record_route` creates.
    fn dialog(record_route: &str, contact: &str) -> Dialog {
        let invite = format!(
            "INVITE sip:alice@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKa\r\n\
             Record-Route: {record_route}\r\nFrom: <sip:bob@example.com>;tag=r\r\n\
             To: <sip:alice@example.com>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\
             Contact: <{contact}>\r\nContent-Length: 0\r\n\r\n"
        );
        match sip_core::message::parse(invite.as_bytes()) {
            Ok(sip_core::message::Message::Request(r)) => Dialog::uas(&r, "l".into(), 0),
            _ => None,
        }
        .expect("a dialog")
    }

    #[test]
    fn via_user_agent_and_hop() {
        let ctx = ctx();
        let mut d = dialog("<sip:203.0.113.5:5080;lr>", "sip:bob@198.51.100.7:5062");
        let (req, branch, hop) = request(&mut d, Method::Bye, &ctx);
        assert_eq!(hop, "203.0.113.5:5080".parse().expect("addr"));
        assert_eq!(req.cseq().seq, 1);
        assert!(req.top_via().and_then(|v| v.branch().map(str::to_owned)) == Some(branch));
        assert_eq!(req.headers.get(&HeaderName::UserAgent), Some(USER_AGENT));
        let again = sip_core::message::parse(&req.to_bytes()).expect("reparses");
        assert!(matches!(again, sip_core::message::Message::Request(_)));
    }

    #[test]
    fn host_name_goes_to_the_server() {
        let ctx = ctx();
        let mut d = dialog("<sip:proxy.example.com;lr>", "sip:bob@198.51.100.7:5062");
        assert_eq!(request(&mut d, Method::Bye, &ctx).2, ctx.cfg.server);
        d.route_set.clear();
        d.remote_target = Uri::parse("sip:bob@pc.example.com").expect("uri");
        assert_eq!(request(&mut d, Method::Bye, &ctx).2, ctx.cfg.server);
    }
}
