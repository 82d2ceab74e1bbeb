//! TR-ISUP: trustring's ISUP-like call control between the gateway ("exchange") and attached
//! phone lines, one TLS connection per line (the exchange's key pinned) carrying both
//! signalling and G.711 bearer frames. A line gets a phone's number only after the phone's
//! trusted zone answered the exchange's attach challenge (ATC/ATP). The protocol is described
//! in `docs/isup.md`.
//!
//! - [`msg`]: the messages and their typed parameters;
//! - [`codec`]: the wire format, a Sans-IO [`codec::Decoder`] and [`codec::encode`];
//! - [`cause`]: Q.850 causes and the SIP mapping after RFC 3398;
//! - [`line`](mod@line): a tokio agent for one attached line (TLS, the attach proof, answering,
//!   proving, hold, dial, media).

pub mod cause;
pub mod codec;
pub mod line;
pub mod msg;

pub use cause::{Cause, cause_for_cancel, cause_for_sip_status, sip_status_for};
pub use codec::{Decoder, EncodeError, ProtocolError, encode};
pub use msg::{Cic, Event, Iam, Law, Message, Number};
