//! Small pieces every part of the trunk UA shares: transaction keys, random identifiers,
//! response building, and the checks on headers the exchange hands us.

use std::collections::VecDeque;
use std::net::SocketAddr;

use bytes::Bytes;
use sip_core::message::{HeaderName, Request, Response, Uri, Via, reason_phrase};

use super::{CallId, UaConfig, UaError, UaEvent};

/// Methods the gateway accepts (RFC 3261 §20.5).
pub(super) const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS";

/// Headers the UA writes itself: the exchange may not add them through `extra`.
const MANAGED: [HeaderName; 11] = [
    HeaderName::Via,
    HeaderName::From,
    HeaderName::To,
    HeaderName::CallId,
    HeaderName::CSeq,
    HeaderName::MaxForwards,
    HeaderName::Contact,
    HeaderName::ContentLength,
    HeaderName::ContentType,
    HeaderName::Route,
    HeaderName::RecordRoute,
];

/// Longest header value the exchange may hand us (a `Trust-Proof` is far shorter).
const MAX_EXTRA_VALUE: usize = 4096;

/// Key of a server transaction (RFC 3261 §17.2.3): the top Via's branch and sent-by. The
/// method is left out on purpose: a CANCEL and the ACK of a non-2xx response carry the
/// branch of the INVITE they belong to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct TxKey {
    pub(super) branch: String,
    pub(super) sent_by: String,
}

impl TxKey {
    /// The key of a request whose top Via is `via` and whose branch is `branch`.
    pub(super) fn new(branch: &str, via: &Via) -> Self {
        Self {
            branch: branch.to_owned(),
            sent_by: format!(
                "{}:{}",
                via.host.to_ascii_lowercase(),
                via.port.unwrap_or(5060)
            ),
        }
    }
}

/// Key of a dialog as the gateway (always the UAS of the initial INVITE) sees it: Call-ID and
/// our tag. Our tags are random, so the remote tag is checked by the call, not hashed here.
pub(super) type DialogKey = (String, String);

/// Index changes a call asks its owner to make (the owner maps branches and keys to calls).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum IndexOp {
    /// A client transaction of ours (BYE, re-INVITE) with this branch started.
    AddBranch(String),
    /// That client transaction is over.
    DropBranch(String),
    /// A server INVITE transaction (a re-INVITE) with this key started.
    AddKey(TxKey),
    /// That server transaction is over.
    DropKey(TxKey),
}

/// What the UA queued for its owner, plus index changes for itself.
#[derive(Debug, Default)]
pub(super) struct Outbox {
    pub(super) transmits: VecDeque<(SocketAddr, Bytes)>,
    pub(super) events: VecDeque<UaEvent>,
    pub(super) index: Vec<IndexOp>,
}

impl Outbox {
    /// Queues `bytes` for `to`.
    pub(super) fn send(&mut self, to: SocketAddr, bytes: Bytes) {
        self.transmits.push_back((to, bytes));
    }

    /// Queues a response for `to`.
    pub(super) fn send_response(&mut self, to: SocketAddr, resp: &Response) {
        self.send(to, Bytes::from(resp.to_bytes()));
    }

    /// Queues an event.
    pub(super) fn event(&mut self, e: UaEvent) {
        self.events.push_back(e);
    }

    /// Queues the end of a call (always its last event).
    pub(super) fn ended(&mut self, call: CallId, reason: super::EndReason) {
        tracing::info!(%call, ?reason, "call ended");
        self.event(UaEvent::Ended { call, reason });
    }
}

/// What every call needs to build messages.
#[derive(Debug)]
pub(super) struct Ctx {
    pub(super) cfg: UaConfig,
    /// Our Contact header value.
    pub(super) contact: String,
}

impl Ctx {
    /// A Via value with a fresh branch, and that branch.
    pub(super) fn via(&self) -> (String, String) {
        let branch = branch();
        (
            format!(
                "SIP/2.0/{} {};branch={branch};rport",
                if self.cfg.tls { "TLS" } else { "UDP" },
                self.cfg.local
            ),
            branch,
        )
    }
}

/// `n` random bytes in lowercase hex.
fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    rand::fill(&mut b[..]);
    hex::encode(b)
}

/// A fresh RFC 3261 branch (magic cookie and 80 random bits).
pub(super) fn branch() -> String {
    format!("z9hG4bK{}", random_hex(10))
}

/// A fresh From/To tag: 64 random bits (RFC 3261 §19.3 asks for at least 32).
pub(super) fn tag() -> String {
    random_hex(8)
}

/// A random number below `bound` (small modulo bias is irrelevant here).
pub(super) fn random_below(bound: u32) -> u32 {
    let mut b = [0u8; 4];
    rand::fill(&mut b[..]);
    u32::from_le_bytes(b) % bound.max(1)
}

/// A random first local CSeq, leaving room below 2**31 for the requests of a long call
/// (RFC 3261 §8.1.1.5, §12.1.1).
pub(super) fn cseq_start() -> u32 {
    1 + random_below(1 << 30)
}

/// A response to `req` (RFC 3261 §8.2.6) with the default reason phrase and our Server
/// header; `to_tag` is added when the To has none.
pub(super) fn reply(req: &Request, status: u16, to_tag: Option<&str>, cfg: &UaConfig) -> Response {
    let mut r = Response::to_request(req, status, reason_phrase(status), to_tag);
    if !cfg.user_agent.is_empty() {
        r.headers.push(HeaderName::Server, cfg.user_agent.clone());
    }
    r
}

/// `Retry-After` (RFC 3261 §20.33), which `HeaderName` has no variant for.
pub(super) fn retry_after() -> HeaderName {
    HeaderName::Other("Retry-After".to_owned())
}

/// Whether a request's body is SDP (by Content-Type, parameters ignored).
pub(super) fn is_sdp(req: &Request) -> bool {
    req.headers
        .get(&HeaderName::ContentType)
        .and_then(|t| t.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/sdp"))
}

/// The SDP body of a request, if it has one.
pub(super) fn sdp_body(req: &Request) -> Option<Bytes> {
    (!req.body.is_empty() && is_sdp(req)).then(|| req.body.clone())
}

/// Whether the gateway can serve a Request-URI: SIP, SIPS or tel (RFC 3966).
pub(super) fn uri_supported(uri: &Uri) -> bool {
    uri.is_sip() || uri.scheme == "tel"
}

/// The user part of a URI (the dialled number of a Request-URI): the SIP user (unescaped), or a tel: number
/// without its parameters.
pub(super) fn user_part(uri: &Uri) -> String {
    match &uri.opaque {
        Some(tel) => tel.split(';').next().unwrap_or_default().to_owned(),
        None => uri.user_unescaped().unwrap_or_default(),
    }
}

/// The option tags of the request's `Require` (RFC 3261 §8.2.2.3); the gateway supports none.
pub(super) fn required_options(req: &Request) -> Vec<String> {
    req.headers
        .get_all(&HeaderName::Require)
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Whether `v` can go on the wire as a header value unchanged: no control characters but
/// tab (the serializer would blank CR and LF, but we would rather refuse than alter).
pub(super) fn is_header_value(v: &str) -> bool {
    v.len() <= MAX_EXTRA_VALUE && !v.chars().any(|c| c.is_control() && c != '\t')
}

/// Checks the extra headers the exchange wants on a response; refuses non-token names,
/// unsafe values, and headers the UA itself manages.
pub(super) fn check_extra(extra: &[(&str, &str)]) -> Result<Vec<(HeaderName, String)>, UaError> {
    extra
        .iter()
        .map(|&(name, value)| {
            let is_token = !name.is_empty()
                && name
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&c));
            let header = HeaderName::from_wire(name);
            if !is_token || !is_header_value(value) || MANAGED.contains(&header) {
                return Err(UaError::InvalidHeader {
                    name: name.to_owned(),
                });
            }
            Ok((header, value.to_owned()))
        })
        .collect()
}

/// Checks a `Reason` value (RFC 3326) the exchange hands us.
pub(super) fn check_reason(reason: Option<&str>) -> Result<Option<String>, UaError> {
    match reason {
        Some(r) if r.is_empty() || !is_header_value(r) => Err(UaError::InvalidHeader {
            name: "Reason".to_owned(),
        }),
        r => Ok(r.map(str::to_owned)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_fresh_and_well_formed() {
        assert_ne!(tag(), tag());
        assert_eq!(tag().len(), 16);
        let b = branch();
        assert!(b.starts_with("z9hG4bK") && b.len() == 27);
        for _ in 0..100 {
            let c = cseq_start();
            assert!((1..=1 << 30).contains(&c));
        }
    }

    #[test]
    fn extra_headers_are_checked() {
        let ok = check_extra(&[("Trust-Proof", "abc"), ("X-A", "")]).expect("fine");
        assert_eq!(ok.len(), 2);
        assert!(check_extra(&[("Via", "x")]).is_err());
        assert!(
            check_extra(&[("v", "x")]).is_err(),
            "compact form of a managed header"
        );
        assert!(check_extra(&[("Bad Name", "x")]).is_err());
        assert!(check_extra(&[("X-A", "a\r\nVia: evil")]).is_err());
        assert!(check_reason(Some("")).is_err());
        assert_eq!(
            check_reason(Some("Q.850;cause=16")).expect("ok").as_deref(),
            Some("Q.850;cause=16")
        );
    }

    #[test]
    fn called_user_of_sip_and_tel() {
        let sip = Uri::parse("sip:%2B15551234567@gw;user=phone").expect("uri");
        assert_eq!(user_part(&sip), "+15551234567");
        let tel = Uri::parse("tel:+15551234567;phone-context=x").expect("uri");
        assert!(uri_supported(&tel));
        assert_eq!(user_part(&tel), "+15551234567");
        let urn = Uri::parse("urn:service:sos").expect("uri");
        assert!(!uri_supported(&urn));
    }
}
