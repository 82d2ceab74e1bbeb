//! The messages of TR-ISUP and their typed parameters (`docs/isup.md`).
//!
//! Values that have rules (numbers, causes, circuit codes) are newtypes checked when built, so
//! a [`Message`] that exists is one the codec can put on the wire, apart from text lengths,
//! which [`crate::codec::encode`] checks.

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};

use crate::cause::Cause;

/// The G.711 law of every bearer frame on a link, chosen by the exchange in ATA; on the wire
/// [`Law::to_u8`] (0 = PCMU, 1 = PCMA).
pub use media::g711::Law;

/// Bytes of G.711 in one bearer frame: 20 ms at 8 kHz, one byte per sample.
pub const FRAME_LEN: usize = 160;

/// The branch of every attach challenge's binding (ATC): the server's trust authority binds
/// attach proofs to it, and no call's binding can have it (a proxy's branch starts with
/// `z9hG4bK`), so an attach proof never passes for a call proof nor the reverse. A line
/// proves an ATC only with this branch.
pub const ATTACH_BRANCH: &str = "trustring-attach";

/// Message type codes (Q.763 codes where ISUP has the message).
pub mod code {
    /// Initial Address Message.
    pub const IAM: u8 = 0x01;
    /// Address Complete Message.
    pub const ACM: u8 = 0x06;
    /// Answer Message.
    pub const ANM: u8 = 0x09;
    /// Release.
    pub const REL: u8 = 0x0C;
    /// Release Complete.
    pub const RLC: u8 = 0x10;
    /// Call Progress.
    pub const CPG: u8 = 0x2C;
    /// Attach (line to exchange).
    pub const ATT: u8 = 0xA0;
    /// Attach accepted.
    pub const ATA: u8 = 0xA1;
    /// Attach refused.
    pub const ATR: u8 = 0xA2;
    /// Attach challenge (exchange to line): prove the zone key for the number.
    pub const ATC: u8 = 0xA3;
    /// Attach proof (line to exchange).
    pub const ATP: u8 = 0xA4;
    /// Bearer frame.
    pub const FRM: u8 = 0xF0;
}

/// Parameter tags (Q.763 parameter codes where ISUP has the parameter).
pub mod tag {
    /// Called party number.
    pub const CALLED: u8 = 0x04;
    /// Calling party number.
    pub const CALLING: u8 = 0x0A;
    /// Cause indicators (the Q.850 value only).
    pub const CAUSE: u8 = 0x12;
    /// Event information.
    pub const EVENT: u8 = 0x24;
    /// Trust challenge (SIP `Trust-Challenge` value).
    pub const CHALLENGE: u8 = 0xE0;
    /// Trust proof (SIP `Trust-Proof` value).
    pub const PROOF: u8 = 0xE1;
    /// Call reference (SIP Call-ID of the gateway's INVITE).
    pub const CALL_REF: u8 = 0xE2;
    /// Law of the link's bearer frames.
    pub const LAW: u8 = 0xE3;
    /// Device id of an attaching line.
    pub const DEVICE: u8 = 0xE4;
    /// Branch (top Via branch of the gateway's INVITE).
    pub const BRANCH: u8 = 0xE5;
}

/// Circuit identification code: names one call on the link.
///
/// The exchange seizes even codes and the line odd ones, so both may seize at once without
/// colliding (dual seizure avoidance); 0 is the link itself (ATT/ATA/ATR).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Cic(pub u16);

impl Cic {
    /// The link itself, used by the attach messages.
    pub const LINK: Self = Self(0);

    /// True for the codes a line seizes (odd), false for the exchange's (even).
    pub const fn is_line_side(self) -> bool {
        self.0 % 2 == 1
    }
}

impl fmt::Display for Cic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A telephone number: optional `+` then digits, 2..=16 characters in all
/// (`+` and up to 15 digits is E.164's longest).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Number(String);

/// Why a text is not a [`Number`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid number {0:?}: expected an optional '+' then digits, 2..=16 characters")]
pub struct InvalidNumber(pub String);

impl Number {
    /// Checks and wraps `text`.
    pub fn new(text: &str) -> Result<Self, InvalidNumber> {
        let digits = text.strip_prefix('+').unwrap_or(text);
        let ok = (2..=16).contains(&text.len())
            && !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit());
        if ok {
            Ok(Self(text.to_owned()))
        } else {
            Err(InvalidNumber(text.to_owned()))
        }
    }

    /// The number as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Number {
    type Err = InvalidNumber;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Number {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Call progress event information (Q.763 §3.21, the values this protocol uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// The called party is being alerted.
    Alerting = 1,
    /// In-band progress.
    Progress = 2,
    /// The sender put the call on hold.
    RemoteHold = 3,
    /// The sender took the call off hold.
    RemoteRetrieval = 4,
}

impl Event {
    /// The wire value.
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The event for a wire value, `None` for a value this protocol does not define.
    pub const fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Alerting),
            2 => Some(Self::Progress),
            3 => Some(Self::RemoteHold),
            4 => Some(Self::RemoteRetrieval),
            _ => None,
        }
    }
}

/// Initial Address Message: seizes `cic` for a call to `called`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iam {
    /// The circuit the sender seizes.
    pub cic: Cic,
    /// Who is called.
    pub called: Number,
    /// Who calls, when known.
    pub calling: Option<Number>,
    /// The SIP `Trust-Challenge` value, verbatim: the called line must prove with it.
    pub challenge: Option<String>,
    /// The SIP Call-ID of the gateway's INVITE: the proof is bound to it.
    pub call_ref: Option<String>,
    /// The top Via branch of the gateway's INVITE: the proof is bound to it.
    pub branch: Option<String>,
}

/// One TR-ISUP message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Message {
    /// Initial Address Message (either direction).
    Iam(Iam),
    /// Address Complete: the called line is alerting.
    Acm {
        /// The circuit.
        cic: Cic,
        /// The SIP `Trust-Proof` value answering the IAM's challenge.
        proof: Option<String>,
    },
    /// Answer.
    Anm {
        /// The circuit.
        cic: Cic,
        /// The SIP `Trust-Proof` value answering the IAM's challenge.
        proof: Option<String>,
    },
    /// Call Progress (alerting, hold, retrieval).
    Cpg {
        /// The circuit.
        cic: Cic,
        /// What happened.
        event: Event,
    },
    /// Release: the sender ends the call.
    Rel {
        /// The circuit.
        cic: Cic,
        /// Why.
        cause: Cause,
    },
    /// Release Complete: the circuit is free again.
    Rlc {
        /// The circuit.
        cic: Cic,
    },
    /// Bearer frame: 20 ms of voice in the link's law.
    Frm {
        /// The circuit.
        cic: Cic,
        /// Sequence number, wrapping, one per frame.
        seq: u16,
        /// G.711 samples.
        payload: [u8; FRAME_LEN],
    },
    /// Attach: a line announces its number (line to exchange). A phone's number is attached
    /// only after its zone answered the exchange's [`Message::Atc`].
    Att {
        /// The line's own number.
        number: Number,
        /// The device id, informational.
        device: Option<String>,
    },
    /// Attach accepted (exchange to line).
    Ata {
        /// The law of every FRM on this link.
        law: Law,
    },
    /// Attach refused (exchange to line); the exchange then closes.
    Atr {
        /// Why.
        cause: Cause,
    },
    /// Attach challenge (exchange to line): the number belongs to an enrolled phone, whose
    /// trusted zone must prove its key with this challenge before the line is attached.
    Atc {
        /// The trust challenge (a `Trust-Challenge` value made by the server).
        challenge: String,
        /// The binding's call reference (made by the server, `attach-…`).
        call_ref: String,
        /// The binding's branch: always [`ATTACH_BRANCH`].
        branch: String,
    },
    /// Attach proof (line to exchange): the zone's answer to the ATC.
    Atp {
        /// The `Trust-Proof` value.
        proof: String,
    },
}

impl Message {
    /// The type code on the wire.
    pub const fn code(&self) -> u8 {
        match self {
            Self::Iam(_) => code::IAM,
            Self::Acm { .. } => code::ACM,
            Self::Anm { .. } => code::ANM,
            Self::Cpg { .. } => code::CPG,
            Self::Rel { .. } => code::REL,
            Self::Rlc { .. } => code::RLC,
            Self::Frm { .. } => code::FRM,
            Self::Att { .. } => code::ATT,
            Self::Ata { .. } => code::ATA,
            Self::Atr { .. } => code::ATR,
            Self::Atc { .. } => code::ATC,
            Self::Atp { .. } => code::ATP,
        }
    }

    /// The circuit the message is about ([`Cic::LINK`] for the attach messages).
    pub const fn cic(&self) -> Cic {
        match self {
            Self::Iam(iam) => iam.cic,
            Self::Acm { cic, .. }
            | Self::Anm { cic, .. }
            | Self::Cpg { cic, .. }
            | Self::Rel { cic, .. }
            | Self::Rlc { cic }
            | Self::Frm { cic, .. } => *cic,
            Self::Att { .. }
            | Self::Ata { .. }
            | Self::Atr { .. }
            | Self::Atc { .. }
            | Self::Atp { .. } => Cic::LINK,
        }
    }

    /// The ISUP abbreviation, for logs.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::Iam(_) => "IAM",
            Self::Acm { .. } => "ACM",
            Self::Anm { .. } => "ANM",
            Self::Cpg { .. } => "CPG",
            Self::Rel { .. } => "REL",
            Self::Rlc { .. } => "RLC",
            Self::Frm { .. } => "FRM",
            Self::Att { .. } => "ATT",
            Self::Ata { .. } => "ATA",
            Self::Atr { .. } => "ATR",
            Self::Atc { .. } => "ATC",
            Self::Atp { .. } => "ATP",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        for ok in [
            "+4930123456",
            "12",
            "+1",
            "1234567890123456",
            "+123456789012345",
        ] {
            assert!(Number::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1",
            "+",
            "++1",
            "12a",
            "+1234567890123456",
            "12345678901234567",
            " 12",
        ] {
            assert!(Number::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cic_parity() {
        assert!(Cic(1).is_line_side());
        assert!(!Cic(2).is_line_side());
    }

    #[test]
    fn codes_round_trip() {
        for e in [
            Event::Alerting,
            Event::Progress,
            Event::RemoteHold,
            Event::RemoteRetrieval,
        ] {
            assert_eq!(Event::from_code(e.code()), Some(e));
        }
        assert_eq!(Event::from_code(0), None);
    }
}
