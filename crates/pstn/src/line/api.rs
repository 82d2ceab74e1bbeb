//! What a line's user sees: its configuration, events and errors.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::cause::Cause;
use crate::codec::{EncodeError, ProtocolError};
use crate::msg::{Cic, Law, Number};

/// How the link to the exchange is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LineTransport {
    /// TLS (1.2/1.3), accepting only the exchange key with this fingerprint (the gateway
    /// prints it; an attach URI carries it). The default of every program.
    Tls(tls::Fingerprint),
    /// Plain TCP: signalling, the zone's attach proof and the voice in clear, and nothing
    /// proves the exchange is the gateway. Only behind an explicit `--danger-plain-lines`.
    Plain,
}

impl fmt::Display for LineTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tls(pin) => write!(f, "TLS, exchange key {pin}"),
            Self::Plain => f.write_str("plain TCP (no TLS)"),
        }
    }
}

/// How to attach and how the line behaves.
#[derive(Debug, Clone)]
pub struct LineConfig {
    /// The exchange's TCP address (`host:port`).
    pub exchange: String,
    /// TLS with the exchange's key pinned, or (explicitly) plain TCP.
    pub transport: LineTransport,
    /// The line's own number, announced in ATT.
    pub number: Number,
    /// The device id announced in ATT (informational).
    pub device_id: Option<String>,
    /// Answer a ringing call by itself after this long.
    pub answer_after: Option<Duration>,
    /// Answer every IAM with REL 17 (user busy).
    pub busy: bool,
    /// Append the voice received on answered calls, as 16-bit PCM, to this WAV file.
    pub record: Option<PathBuf>,
    /// Send a sine at this frequency on answered calls (silence otherwise).
    pub play_tone_hz: Option<f64>,
}

impl LineConfig {
    /// A line that rings until told to answer, sends silence and records nothing.
    pub fn new(exchange: impl Into<String>, transport: LineTransport, number: Number) -> Self {
        Self {
            exchange: exchange.into(),
            transport,
            number,
            device_id: None,
            answer_after: None,
            busy: false,
            record: None,
            play_tone_hz: None,
        }
    }
}

/// Why the line could not attach, or the link failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LineError {
    /// The TCP connection to the exchange failed.
    #[error("cannot connect to the exchange at {addr}: {error}")]
    Connect {
        /// The address tried.
        addr: String,
        /// The connect error.
        error: std::io::Error,
    },
    /// The TLS handshake with the exchange failed: most often a key other than the pinned
    /// one (a man in the middle, or the wrong gateway), or an exchange without TLS.
    #[error("TLS with the exchange at {addr} failed: {reason}")]
    Tls {
        /// The address tried.
        addr: String,
        /// What failed (no key material).
        reason: String,
    },
    /// The exchange refused the attach (ATR).
    #[error("the exchange refused the attach: cause {0}")]
    Refused(Cause),
    /// The number belongs to an enrolled phone and the exchange asked for its zone's proof
    /// (ATC), but this line has no trusted zone.
    #[error(
        "the exchange asks for the proof of the phone's zone key for this number, and this \
         line has no trusted zone (use `trustring device run --attach`)"
    )]
    ProofRequired,
    /// The zone did not prove the attach challenge (the text is the zone's, free of secrets).
    #[error("the zone did not prove the attach challenge: {0}")]
    Prove(String),
    /// The ATC was not an attach challenge (its branch is not the attach branch): the line
    /// does not prove it.
    #[error("the exchange sent an attach challenge not bound to an attach; not proved")]
    BadAttachChallenge,
    /// The exchange did not answer ATT in time.
    #[error("the exchange did not answer the attach within {0:?}")]
    Timeout(Duration),
    /// The exchange closed the link.
    #[error("the exchange closed the link")]
    Closed,
    /// Reading or writing the link failed.
    #[error("link I/O failed: {0}")]
    Io(std::io::Error),
    /// The exchange sent something undecodable.
    #[error("protocol error from the exchange: {0}")]
    Protocol(ProtocolError),
    /// The exchange sent a message that does not belong in the attach.
    #[error("unexpected {0} during the attach")]
    Unexpected(&'static str),
    /// A message could not be encoded (a text over 255 bytes).
    #[error("cannot encode a message: {0}")]
    Encode(EncodeError),
    /// The recording file could not be created.
    #[error("cannot create the recording {}: {error}", path.display())]
    Record {
        /// The file.
        path: PathBuf,
        /// The error.
        error: std::io::Error,
    },
}

// Hand-written rather than `#[from]`, which would also make the inner error the `source`
// and print its text twice in an error chain.
impl From<std::io::Error> for LineError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<ProtocolError> for LineError {
    fn from(e: ProtocolError) -> Self {
        Self::Protocol(e)
    }
}

impl From<EncodeError> for LineError {
    fn from(e: EncodeError) -> Self {
        Self::Encode(e)
    }
}

/// Why a command was not carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// `answer` with no call ringing.
    #[error("no call is ringing")]
    NoRingingCall,
    /// `hangup`/`hold` with no call to act on.
    #[error("no active call")]
    NoActiveCall,
    /// `resume`/`swap` with no held call.
    #[error("no call is on hold")]
    NoHeldCall,
    /// `dial`/`resume` while another call is active: hold it first.
    #[error("another call is active on cic {0}: hold it first")]
    OtherCallActive(Cic),
    /// `dial` with no odd circuit free.
    #[error("no free circuit")]
    NoFreeCircuit,
    /// The line's task has ended (link closed or shut down).
    #[error("the line is detached")]
    Detached,
}

/// What happened on the line, for the program and its user.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum LineEvent {
    /// The exchange accepted the attach.
    Attached {
        /// The line's number.
        number: Number,
        /// The law of the link's frames.
        #[serde(serialize_with = "law_name")]
        law: Law,
        /// The link runs over TLS with the exchange's key pinned.
        tls: bool,
        /// The line's zone proved the phone's key (an ATC was answered); false for a plain
        /// PSTN line.
        proved: bool,
    },
    /// The exchange offers a call (the line is ringing, unless busy).
    Incoming {
        /// Its circuit.
        cic: Cic,
        /// The caller, when known.
        calling: Option<Number>,
        /// Whether the IAM carried a trust challenge.
        challenged: bool,
    },
    /// A challenged call goes on without a proof (no prover, or the prover failed).
    ProofFailed {
        /// The call.
        cic: Cic,
        /// Why (the prover's text, free of secrets).
        reason: String,
    },
    /// The line sent an IAM.
    Dialing {
        /// The new call's circuit.
        cic: Cic,
        /// Who is called.
        called: Number,
    },
    /// The far end is ringing (ACM, or CPG alerting).
    Alerting {
        /// The call.
        cic: Cic,
    },
    /// The call is answered (ANM sent or received).
    Answered {
        /// The call.
        cic: Cic,
    },
    /// The call is on hold.
    Held {
        /// The call.
        cic: Cic,
        /// True when the exchange's side held it.
        by_remote: bool,
    },
    /// The call is off hold.
    Resumed {
        /// The call.
        cic: Cic,
        /// True when the exchange's side resumed it.
        by_remote: bool,
    },
    /// The call is over and its circuit free.
    Released {
        /// The call.
        cic: Cic,
        /// The REL's cause.
        cause: Cause,
        /// True when the exchange sent the REL.
        by_remote: bool,
    },
    /// Voice is arriving (every 250 frames, and at release).
    Media {
        /// The call.
        cic: Cic,
        /// Frames received on it so far.
        frames_received: u64,
    },
    /// Something went wrong but the line goes on.
    Error {
        /// What.
        message: String,
    },
    /// The link is gone; no more events follow.
    Detached {
        /// Why.
        reason: String,
    },
}

fn law_name<S: Serializer>(law: &Law, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(law.encoding_name())
}

fn by(remote: bool) -> &'static str {
    if remote {
        "by the exchange"
    } else {
        "by this line"
    }
}

impl fmt::Display for LineEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Attached {
                number,
                law,
                tls,
                proved,
            } => {
                write!(f, "attached as {number} ({law})")?;
                f.write_str(if *tls {
                    " over TLS (exchange key pinned)"
                } else {
                    " over plain TCP (no TLS)"
                })?;
                if *proved {
                    f.write_str("; zone key proved")?;
                }
                Ok(())
            }
            Self::Incoming {
                cic,
                calling,
                challenged,
            } => {
                let from = calling
                    .as_ref()
                    .map_or("unknown caller".to_owned(), |n| n.to_string());
                let trust = if *challenged { ", trust challenge" } else { "" };
                write!(f, "incoming call on cic {cic} from {from}{trust}")
            }
            Self::ProofFailed { cic, reason } => {
                write!(f, "cic {cic}: no trust proof ({reason})")
            }
            Self::Dialing { cic, called } => write!(f, "calling {called} on cic {cic}"),
            Self::Alerting { cic } => write!(f, "cic {cic}: ringing at the far end"),
            Self::Answered { cic } => write!(f, "cic {cic}: answered"),
            Self::Held { cic, by_remote } => write!(f, "cic {cic}: on hold {}", by(*by_remote)),
            Self::Resumed { cic, by_remote } => {
                write!(f, "cic {cic}: resumed {}", by(*by_remote))
            }
            Self::Released {
                cic,
                cause,
                by_remote,
            } => {
                write!(f, "cic {cic}: released {}, cause {cause}", by(*by_remote))
            }
            Self::Media {
                cic,
                frames_received,
            } => {
                write!(f, "cic {cic}: {frames_received} voice frames received")
            }
            Self::Error { message } => write!(f, "error: {message}"),
            Self::Detached { reason } => write!(f, "detached: {reason}"),
        }
    }
}
