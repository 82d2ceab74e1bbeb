//! Text forms of the trust exchange as carried in SIP headers (documented in
//! `docs/trust.md`):
//!
//! ```text
//! Trust-Challenge: v=1;dev=d-7k3q;ctr=1764567890123;nonce=BASE64URL;mac=BASE64URL
//! Trust-Proof: v=1;ctr=1764567890123;proof=BASE64URL
//! ```
//!
//! The proxy adds `Trust-Challenge` to the mobile branch's INVITE only; the phone answers with
//! `Trust-Proof` on its 18x and/or 2xx; the proxy strips `Trust-Proof` before relaying.
