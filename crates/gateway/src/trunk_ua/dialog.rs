//! The requests the gateway sends in a dialog it accepted (BYE, re-INVITE, the ACK for the
//! 2xx to a re-INVITE): `sip_core::dialog` builds them (route set, loose or strict routing,
//! next hop: RFC 3261 §12.2.1.1); the gateway adds its Via and User-Agent. A route or target
//! that names a host goes back to where the INVITE came from, since the gateway has no DNS
//! and no outbound proxy of its own.

use std::net::SocketAddr;

use sip_core::dialog::Dialog;
use sip_core::message::{HeaderName, Method, Request};

use super::wire::Ctx;

/// An in-dialog request ready to send.
#[derive(Debug)]
pub(super) struct Outgoing {
    pub(super) request: Request,
    pub(super) branch: String,
    pub(super) hop: SocketAddr,
}

impl Outgoing {
    /// A new request (BYE, re-INVITE) with the next local CSeq; `peer` is where the INVITE
    /// came from.
    pub(super) fn request(
        dialog: &mut Dialog,
        method: Method,
        peer: SocketAddr,
        ctx: &Ctx,
    ) -> Self {
        let (via, branch) = ctx.via();
        let request = dialog.request(method, via);
        Self::finish(request, branch, dialog.next_hop(peer), ctx)
    }

    /// The ACK for a 2xx to our INVITE with CSeq `seq`: end to end, new branch, via the
    /// route set (§13.2.2.4).
    pub(super) fn ack(dialog: &Dialog, seq: u32, peer: SocketAddr, ctx: &Ctx) -> Self {
        let (via, branch) = ctx.via();
        let request = dialog.ack(seq, via);
        Self::finish(request, branch, dialog.next_hop(peer), ctx)
    }

    /// Adds our User-Agent (when configured).
    fn finish(mut request: Request, branch: String, hop: SocketAddr, ctx: &Ctx) -> Self {
        if !ctx.cfg.user_agent.is_empty() {
            request
                .headers
                .push(HeaderName::UserAgent, ctx.cfg.user_agent.clone());
        }
        Self {
            request,
            branch,
            hop,
        }
    }
}
