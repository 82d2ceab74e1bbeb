//! The phone's SIP user agent, driven by `trustring device run`.
//!
//! One tokio task owns one UDP socket, or with [`SipTransport::Tls`] one TLS connection to the
//! server (Via `SIP/2.0/TLS`, Contact `;transport=tls`, kept open for the registration's
//! life and used for the calls the server sends back over it), and does three things:
//! - **Registration** (RFC 3261 §10.2): REGISTER the subscriber's address of record with digest
//!   authentication (RFC 7616 / RFC 8760, SHA-256 preferred over MD5, `qop=auth`), refresh at
//!   half the granted expiry, answer `stale=true` re-challenges, and unregister
//!   (`Expires: 0`) on [`PhoneHandle::shutdown`].
//! - **Incoming calls** (UAS, RFC 3261 §13.3 and §17.2): 180 Ringing at once, 200 OK with a
//!   PCMU SDP answer on [`PhoneHandle::answer`] or after [`PhoneConfig::answer_after`]; CANCEL,
//!   BYE, re-INVITE and OPTIONS; 2xx retransmitted until the ACK comes.
//! - **Trust before connect** (SPEC R14): when the INVITE carries a `Trust-Challenge` header,
//!   the [`Prover`] (the trusted zone, R8) is asked for a proof bound to the INVITE's Call-ID
//!   and top Via branch, and the answer goes back as `Trust-Proof` on the 180 and the 200.
//!
//! The SIP logic is a Sans-IO agent (`agent`, `register`, `uas`, `dialog`): it is given the
//! time, messages and commands, and queues messages and [`PhoneEvent`]s; `phone` is the
//! tokio driver and `link` its UDP socket or TLS connection (stream framing by
//! `sip_core::message::frame_stream`). Messages are parsed and built with `sip_core::message`, client and server
//! transactions are `sip_core::transaction`'s.
//!
//! # The device id in the Contact
//! The Contact bound by the REGISTER (and sent in 180/200) is
//! `<sip:AOR_USER@IP:PORT;trustring-device=DEVICE_ID>`: the device id
//! ([`PhoneConfig::contact_instance`]) is a **URI parameter** of the Contact URI, not a
//! header parameter such as `+sip.instance`. The registrar keeps only the Contact URI of a
//! binding, so a URI parameter is what survives into the binding, into the 200's Contact list
//! and into the Request-URI of the INVITEs the proxy forks to the phone.
//!
//! # Never panics on input
//! Datagrams that do not parse are dropped with a debug log; requests without a Via branch,
//! with unsupported `Require` options or unacceptable SDP get an error response; responses
//! that match no transaction are dropped.

mod agent;
mod config;
mod dialog;
mod digest;
mod error;
mod event;
mod ids;
mod link;
mod phone;
mod register;
mod sdp;
mod uas;

pub use config::{PhoneConfig, SipTransport, TlsClient};
pub use error::PhoneError;
pub use event::PhoneEvent;
pub use phone::{Phone, PhoneHandle};
pub use sip_core::transaction::Timers;

/// The trusted zone's proof function, as the phone's agent sees it (SPEC R8, R14).
///
/// Called once per incoming INVITE that carries a `Trust-Challenge` header (not for its
/// retransmissions), on the agent's task: keep it quick, or hand the work to a thread and
/// block on the answer.
pub trait Prover: Send {
    /// Given the value of the INVITE's `Trust-Challenge` header, its Call-ID and the branch
    /// parameter of its top Via, returns the value for the `Trust-Proof` header.
    ///
    /// An `Err` (say: revoked, wrong device, replayed counter) is reported as
    /// [`PhoneEvent::ProofFailed`] and the call rings and answers without a proof, so the
    /// server drops the branch (R14). The text must not contain secrets: it is shown to the
    /// user.
    fn prove(
        &mut self,
        challenge_header: &str,
        call_id: &str,
        branch: &str,
    ) -> Result<String, String>;
}
