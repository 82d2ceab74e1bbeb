//! What the phone reports to its owner.

use std::fmt;

use sip_core::message::reason_phrase;

/// Something that happened, for the device agent and the CLI.
///
/// `Display` gives one line for a human. It never shows a `Trust-Challenge` or `Trust-Proof`
/// value, and it replaces control characters in peer-supplied text (Call-ID, From, Reason)
/// so a caller cannot write escape sequences to the terminal.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PhoneEvent {
    /// A REGISTER (first or refresh) succeeded.
    Registered {
        /// Seconds the registrar granted.
        expires: u32,
    },
    /// A REGISTER (or the unregister) failed; the phone retries later with a backoff.
    RegistrationFailed {
        /// The final status, or 408 when no response came (timer F).
        status: u16,
    },
    /// An incoming call is ringing.
    Ringing {
        /// The INVITE's Call-ID: pass it to `answer` / `hangup`.
        call_id: String,
        /// The caller (From display name and URI).
        from: String,
        /// Whether the INVITE carried a `Trust-Challenge`.
        challenged: bool,
    },
    /// The INVITE's challenge could not be answered; the call goes on without a proof.
    ProofFailed {
        /// The call.
        call_id: String,
        /// The prover's error.
        reason: String,
    },
    /// The phone answered (200 OK sent).
    Answered {
        /// The call.
        call_id: String,
    },
    /// The caller (or the proxy) cancelled the ringing call.
    Cancelled {
        /// The call.
        call_id: String,
        /// The CANCEL's `Reason` header (RFC 3326), e.g.
        /// `SIP;cause=200;text="Call completed elsewhere"`.
        reason: Option<String>,
    },
    /// The call is over.
    Ended {
        /// The call.
        call_id: String,
        /// Whether the other side ended it (BYE received); `false` when this phone hung up,
        /// declined, or gave up (no ACK for its 200).
        by_remote: bool,
    },
    /// The TLS connection to the server closed: the registration went with it and the
    /// phone has stopped (start a new one to connect again).
    Disconnected {
        /// Why, for a human.
        reason: String,
    },
}

/// Writes `s` with control characters replaced by `?`.
struct Clean<'a>(&'a str);

impl fmt::Display for Clean<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if c.is_control() {
                f.write_str("?")?;
            } else {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for PhoneEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Registered { expires } => write!(f, "registered (expires in {expires} s)"),
            Self::RegistrationFailed { status } => write!(
                f,
                "registration failed: {status} {}",
                if *status == 408 {
                    "no response from the server"
                } else {
                    reason_phrase(*status)
                }
            ),
            Self::Ringing {
                call_id,
                from,
                challenged,
            } => write!(
                f,
                "incoming call {} from {}{}",
                Clean(call_id),
                Clean(from),
                if *challenged {
                    " (with trust challenge)"
                } else {
                    " (no trust challenge)"
                }
            ),
            Self::ProofFailed { call_id, reason } => write!(
                f,
                "call {}: could not prove trust: {}",
                Clean(call_id),
                Clean(reason)
            ),
            Self::Answered { call_id } => write!(f, "call {} answered", Clean(call_id)),
            Self::Cancelled { call_id, reason } => {
                write!(f, "call {} cancelled", Clean(call_id))?;
                match reason {
                    Some(r) => write!(f, " ({})", Clean(r)),
                    None => Ok(()),
                }
            }
            Self::Ended { call_id, by_remote } => write!(
                f,
                "call {} ended by {}",
                Clean(call_id),
                if *by_remote { "the other side" } else { "us" }
            ),
            Self::Disconnected { reason } => {
                write!(f, "disconnected from the server: {}", Clean(reason))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_clean_line() {
        let e = PhoneEvent::Ringing {
            call_id: "abc\x1b[2J".into(),
            from: "Bob\n <sip:bob@example.com>".into(),
            challenged: true,
        };
        let s = e.to_string();
        assert!(!s.contains('\n') && !s.contains('\x1b'), "{s}");
        assert!(s.contains("sip:bob@example.com"));
        let c = PhoneEvent::Cancelled {
            call_id: "c".into(),
            reason: Some("SIP;cause=200;text=\"Call completed elsewhere\"".into()),
        };
        assert!(c.to_string().contains("Call completed elsewhere"));
        assert_eq!(
            PhoneEvent::RegistrationFailed { status: 403 }.to_string(),
            "registration failed: 403 Forbidden"
        );
    }
}
