//! Q.850 cause values and their mapping to and from SIP, after RFC 3398.
//!
//! RFC 3398 names the direction by where the call comes from:
//! - §7.2.4.1 (SIP to ISUP: a SIP-originated call, the PSTN side rejects it) maps a REL's
//!   cause to the SIP final response: [`sip_status_for`];
//! - §8.2.6.1 (ISUP to SIP: a PSTN-originated call, the SIP side rejects it) maps a SIP
//!   final response to the REL's cause: [`cause_for_sip_status`];
//! - §5.8 and RFC 3326 cover a CANCEL: [`cause_for_cancel`].
//!
//! Where the RFC leaves a row open, the choice made here is documented on the function and in
//! `docs/isup.md`.

use std::fmt;

use serde::{Serialize, Serializer};

/// A Q.850 cause value (1..=127), as carried by REL and ATR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cause(u8);

/// Why a value is not a [`Cause`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cause value {0} is outside 1..=127")]
pub struct InvalidCause(pub u8);

impl Cause {
    /// 1: unallocated (unassigned) number.
    pub const UNALLOCATED_NUMBER: Self = Self(1);
    /// 2: no route to specified transit network.
    pub const NO_ROUTE_TO_NETWORK: Self = Self(2);
    /// 3: no route to destination.
    pub const NO_ROUTE_TO_DESTINATION: Self = Self(3);
    /// 16: normal call clearing.
    pub const NORMAL_CLEARING: Self = Self(16);
    /// 17: user busy.
    pub const USER_BUSY: Self = Self(17);
    /// 18: no user responding.
    pub const NO_USER_RESPONSE: Self = Self(18);
    /// 19: no answer from user (user alerted).
    pub const NO_ANSWER: Self = Self(19);
    /// 20: subscriber absent.
    pub const SUBSCRIBER_ABSENT: Self = Self(20);
    /// 21: call rejected.
    pub const CALL_REJECTED: Self = Self(21);
    /// 22: number changed.
    pub const NUMBER_CHANGED: Self = Self(22);
    /// 23: redirection to new destination.
    pub const REDIRECTION: Self = Self(23);
    /// 25: exchange routing error.
    pub const EXCHANGE_ROUTING_ERROR: Self = Self(25);
    /// 26: non-selected user clearing (another branch answered).
    pub const NON_SELECTED_USER_CLEARING: Self = Self(26);
    /// 27: destination out of order.
    pub const DESTINATION_OUT_OF_ORDER: Self = Self(27);
    /// 28: invalid number format (address incomplete).
    pub const INVALID_NUMBER_FORMAT: Self = Self(28);
    /// 29: facility rejected.
    pub const FACILITY_REJECTED: Self = Self(29);
    /// 31: normal, unspecified.
    pub const NORMAL_UNSPECIFIED: Self = Self(31);
    /// 34: no circuit/channel available.
    pub const NO_CIRCUIT_AVAILABLE: Self = Self(34);
    /// 38: network out of order.
    pub const NETWORK_OUT_OF_ORDER: Self = Self(38);
    /// 41: temporary failure.
    pub const TEMPORARY_FAILURE: Self = Self(41);
    /// 42: switching equipment congestion.
    pub const SWITCHING_EQUIPMENT_CONGESTION: Self = Self(42);
    /// 47: resource unavailable, unspecified.
    pub const RESOURCE_UNAVAILABLE: Self = Self(47);
    /// 55: incoming calls barred within CUG.
    pub const INCOMING_CALLS_BARRED_WITHIN_CUG: Self = Self(55);
    /// 57: bearer capability not authorized.
    pub const BEARER_NOT_AUTHORIZED: Self = Self(57);
    /// 58: bearer capability not presently available.
    pub const BEARER_NOT_AVAILABLE: Self = Self(58);
    /// 63: service or option not available, unspecified.
    pub const SERVICE_NOT_AVAILABLE: Self = Self(63);
    /// 65: bearer capability not implemented.
    pub const BEARER_NOT_IMPLEMENTED: Self = Self(65);
    /// 70: only restricted digital information bearer capability is available.
    pub const ONLY_RESTRICTED_DIGITAL: Self = Self(70);
    /// 79: service or option not implemented, unspecified.
    pub const SERVICE_NOT_IMPLEMENTED: Self = Self(79);
    /// 87: user not member of CUG.
    pub const USER_NOT_MEMBER_OF_CUG: Self = Self(87);
    /// 88: incompatible destination.
    pub const INCOMPATIBLE_DESTINATION: Self = Self(88);
    /// 95: invalid message, unspecified.
    pub const INVALID_MESSAGE: Self = Self(95);
    /// 102: recovery on timer expiry.
    pub const RECOVERY_ON_TIMER_EXPIRY: Self = Self(102);
    /// 111: protocol error, unspecified.
    pub const PROTOCOL_ERROR: Self = Self(111);
    /// 127: interworking, unspecified.
    pub const INTERWORKING: Self = Self(127);

    /// Checks and wraps a cause value.
    pub const fn new(value: u8) -> Result<Self, InvalidCause> {
        if value >= 1 && value <= 127 {
            Ok(Self(value))
        } else {
            Err(InvalidCause(value))
        }
    }

    /// The cause value.
    pub const fn value(self) -> u8 {
        self.0
    }

    /// The "unspecified" cause of this cause's Q.850 class (31, 47, 63, 79, 95, 111 or 127):
    /// what a receiver should treat an unknown value as.
    pub const fn class_default(self) -> Self {
        // Q.850 §2.2.7: the class is the top three bits; classes 000 and 001 are both
        // "normal event".
        if self.0 < 32 {
            Self(31)
        } else {
            Self(self.0 | 0x0F)
        }
    }

    /// The Q.850 name of the cause (`"unknown cause"` for a value Q.850 does not define).
    pub const fn text(self) -> &'static str {
        match self.0 {
            1 => "unallocated (unassigned) number",
            2 => "no route to specified transit network",
            3 => "no route to destination",
            4 => "send special information tone",
            5 => "misdialled trunk prefix",
            6 => "channel unacceptable",
            7 => "call awarded and being delivered in an established channel",
            8 => "preemption",
            9 => "preemption, circuit reserved for reuse",
            14 => "query on release above the porting",
            16 => "normal call clearing",
            17 => "user busy",
            18 => "no user responding",
            19 => "no answer from user (user alerted)",
            20 => "subscriber absent",
            21 => "call rejected",
            22 => "number changed",
            23 => "redirection to new destination",
            25 => "exchange routing error",
            26 => "non-selected user clearing",
            27 => "destination out of order",
            28 => "invalid number format (address incomplete)",
            29 => "facility rejected",
            30 => "response to STATUS ENQUIRY",
            31 => "normal, unspecified",
            34 => "no circuit/channel available",
            38 => "network out of order",
            39 => "permanent frame mode connection out of service",
            40 => "permanent frame mode connection operational",
            41 => "temporary failure",
            42 => "switching equipment congestion",
            43 => "access information discarded",
            44 => "requested circuit/channel not available",
            46 => "precedence call blocked",
            47 => "resource unavailable, unspecified",
            49 => "quality of service not available",
            50 => "requested facility not subscribed",
            53 => "outgoing calls barred within CUG",
            55 => "incoming calls barred within CUG",
            57 => "bearer capability not authorized",
            58 => "bearer capability not presently available",
            62 => "inconsistency in designated outgoing access information and subscriber class",
            63 => "service or option not available, unspecified",
            65 => "bearer capability not implemented",
            66 => "channel type not implemented",
            69 => "requested facility not implemented",
            70 => "only restricted digital information bearer capability is available",
            79 => "service or option not implemented, unspecified",
            81 => "invalid call reference value",
            82 => "identified channel does not exist",
            83 => "a suspended call exists, but this call identity does not",
            84 => "call identity in use",
            85 => "no call suspended",
            86 => "call having the requested call identity has been cleared",
            87 => "user not member of CUG",
            88 => "incompatible destination",
            90 => "non-existent CUG",
            91 => "invalid transit network selection",
            95 => "invalid message, unspecified",
            96 => "mandatory information element is missing",
            97 => "message type non-existent or not implemented",
            98 => {
                "message not compatible with call state or message type non-existent or not implemented"
            }
            99 => "information element / parameter non-existent or not implemented",
            100 => "invalid information element contents",
            101 => "message not compatible with call state",
            102 => "recovery on timer expiry",
            103 => "parameter non-existent or not implemented, passed on",
            110 => "message with unrecognized parameter, discarded",
            111 => "protocol error, unspecified",
            127 => "interworking, unspecified",
            _ => "unknown cause",
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.0, self.text())
    }
}

impl Serialize for Cause {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(self.0)
    }
}

/// The SIP final response for a call the PSTN side released before answer
/// (RFC 3398 §7.2.4.1, "ISDN Cause Code to SIP Status Code Mapping").
///
/// Rows the RFC leaves open, decided here:
/// - 16 normal call clearing: the RFC maps it to BYE or CANCEL, not to a response. A REL 16
///   before answer means the called side hung up while ringing, so it answers **480**
///   (temporarily unavailable), the same as 31 "normal, unspecified".
/// - 29 facility rejected: the RFC prints "510 Not implemented"; 510 is "Not Extended"
///   (RFC 2774), the intended status is **501** Not Implemented.
/// - 21 call rejected: 403; the RFC allows 603 when the cause location is "user", which this
///   protocol does not carry.
/// - 22 number changed: 410 (the "without diagnostic" row; no diagnostic is carried).
/// - any other value: the row of its class's unspecified cause (31, 47, 79, 111, 127), and
///   500 Server Internal Error where the class has no row (63, 95), which is also the RFC's
///   answer for 127.
pub const fn sip_status_for(cause: Cause) -> u16 {
    match cause.value() {
        1..=3 => 404,
        16 => 480,
        17 => 486,
        18 => 408,
        19 | 20 => 480,
        21 => 403,
        22 | 23 => 410,
        26 => 404,
        27 => 502,
        28 => 484,
        29 => 501,
        31 => 480,
        34 | 38 | 41 | 42 | 47 => 503,
        55 | 57 => 403,
        58 => 503,
        65 | 70 => 488,
        79 => 501,
        87 => 403,
        88 => 503,
        102 => 504,
        111 | 127 => 500,
        v => {
            let class = cause.class_default();
            if class.value() == v {
                500
            } else {
                sip_status_for(class)
            }
        }
    }
}

/// The REL cause for a SIP final response that rejected a PSTN-originated call
/// (RFC 3398 §8.2.6.1, "SIP Status Code to ISDN Cause Code Mapping").
///
/// Rows the RFC leaves open, decided here:
/// - 487 Request Terminated: "no mapping" (the gateway itself cancelled the INVITE, so its
///   REL already went out); **16** normal clearing, as for the CANCEL itself (§8.2.6.1).
/// - 488 and 606 Not Acceptable: "by Warning header"; no Warning code reaches this layer, so
///   **65** bearer capability not implemented, the inverse of the §7.2.4.1 row 65 → 488.
/// - the RFC prints "504 Version Not Supported"; that status is 505, mapped to 127.
/// - any status the table does not list (2xx and 3xx included): **31** normal, unspecified,
///   as §8.2.6.1 says.
pub const fn cause_for_sip_status(status: u16) -> Cause {
    match status {
        400 => Cause::TEMPORARY_FAILURE,
        401..=403 | 407 => Cause::CALL_REJECTED,
        404 | 485 | 604 => Cause::UNALLOCATED_NUMBER,
        405 => Cause::SERVICE_NOT_AVAILABLE,
        406 | 415 | 501 => Cause::SERVICE_NOT_IMPLEMENTED,
        408 | 504 => Cause::RECOVERY_ON_TIMER_EXPIRY,
        410 => Cause::NUMBER_CHANGED,
        413 | 414 | 416 | 420 | 421 | 423 | 505 | 513 => Cause::INTERWORKING,
        480 => Cause::NO_USER_RESPONSE,
        481 | 500 | 503 => Cause::TEMPORARY_FAILURE,
        482 | 483 => Cause::EXCHANGE_ROUTING_ERROR,
        484 => Cause::INVALID_NUMBER_FORMAT,
        486 | 600 => Cause::USER_BUSY,
        487 => Cause::NORMAL_CLEARING,
        488 | 606 => Cause::BEARER_NOT_IMPLEMENTED,
        502 => Cause::NETWORK_OUT_OF_ORDER,
        603 => Cause::CALL_REJECTED,
        _ => Cause::NORMAL_UNSPECIFIED,
    }
}

/// The REL cause for a CANCEL, given its `Reason` header value if any.
///
/// `SIP;cause=200;text="Call completed elsewhere"` (RFC 3326 §2; RFC 3261 §9.1 forking)
/// means another fork branch answered: Q.850 **26** non-selected user clearing, so the line
/// stops ringing without logging a missed call. Any other CANCEL is the caller giving up:
/// **16** normal clearing (RFC 3398 §8.2.6.1: BYE and CANCEL map to 16). A `Q.850;cause=N`
/// reason (RFC 3326) is passed through when N is a valid cause.
pub fn cause_for_cancel(reason: Option<&str>) -> Cause {
    let Some(reason) = reason else {
        return Cause::NORMAL_CLEARING;
    };
    let mut q850 = None;
    for value in split_unquoted(reason, ',') {
        let mut parts = split_unquoted(value, ';').into_iter().map(str::trim);
        let protocol = parts.next().unwrap_or_default();
        let cause = parts.find_map(|p| {
            let (name, val) = p.split_once('=')?;
            if name.trim().eq_ignore_ascii_case("cause") {
                val.trim().parse::<u16>().ok()
            } else {
                None
            }
        });
        match cause {
            Some(200) if protocol.eq_ignore_ascii_case("SIP") => {
                return Cause::NON_SELECTED_USER_CLEARING;
            }
            Some(c) if protocol.eq_ignore_ascii_case("Q.850") && q850.is_none() => {
                q850 = u8::try_from(c).ok().and_then(|c| Cause::new(c).ok());
            }
            _ => {}
        }
    }
    q850.unwrap_or(Cause::NORMAL_CLEARING)
}

/// Splits at `sep` outside double quotes (a Reason `text` may contain `,` or `;`).
fn split_unquoted(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let mut quoted = false;
    let mut escaped = false;
    let mut start = 0;
    for (i, ch) in s.char_indices() {
        match ch {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                out.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(v: u8) -> Cause {
        Cause::new(v).expect("valid cause")
    }

    #[test]
    fn cause_range() {
        assert!(Cause::new(0).is_err());
        assert!(Cause::new(128).is_err());
        assert_eq!(c(127).value(), 127);
        assert_eq!(c(17).text(), "user busy");
        assert_eq!(c(26).text(), "non-selected user clearing");
        assert_eq!(c(17).to_string(), "17 (user busy)");
        assert_eq!(c(12).text(), "unknown cause");
    }

    /// Every row of RFC 3398 §7.2.4.1, plus the rows decided here.
    #[test]
    fn isup_to_sip_rows() {
        let rows: &[(u8, u16)] = &[
            (1, 404),
            (2, 404),
            (3, 404),
            (16, 480),
            (17, 486),
            (18, 408),
            (19, 480),
            (20, 480),
            (21, 403),
            (22, 410),
            (23, 410),
            (26, 404),
            (27, 502),
            (28, 484),
            (29, 501),
            (31, 480),
            (34, 503),
            (38, 503),
            (41, 503),
            (42, 503),
            (47, 503),
            (55, 403),
            (57, 403),
            (58, 503),
            (65, 488),
            (70, 488),
            (79, 501),
            (87, 403),
            (88, 503),
            (102, 504),
            (111, 500),
            (127, 500),
            // Not in the table: the class's unspecified cause decides.
            (4, 480),
            (44, 503),
            (63, 500),
            (66, 501),
            (95, 500),
            (99, 500),
            (120, 500),
        ];
        for &(cause, status) in rows {
            assert_eq!(sip_status_for(c(cause)), status, "cause {cause}");
        }
    }

    /// Every row of RFC 3398 §8.2.6.1, plus the rows decided here.
    #[test]
    fn sip_to_isup_rows() {
        let rows: &[(u16, u8)] = &[
            (400, 41),
            (401, 21),
            (402, 21),
            (403, 21),
            (404, 1),
            (405, 63),
            (406, 79),
            (407, 21),
            (408, 102),
            (410, 22),
            (413, 127),
            (414, 127),
            (415, 79),
            (416, 127),
            (420, 127),
            (421, 127),
            (423, 127),
            (480, 18),
            (481, 41),
            (482, 25),
            (483, 25),
            (484, 28),
            (485, 1),
            (486, 17),
            (487, 16),
            (488, 65),
            (500, 41),
            (501, 79),
            (502, 38),
            (503, 41),
            (504, 102),
            (505, 127),
            (513, 127),
            (600, 17),
            (603, 21),
            (604, 1),
            (606, 65),
            // Not in the table: 31.
            (409, 31),
            (422, 31),
            (491, 31),
            (580, 31),
            (302, 31),
        ];
        for &(status, cause) in rows {
            assert_eq!(cause_for_sip_status(status), c(cause), "status {status}");
        }
    }

    #[test]
    fn busy_round_trip() {
        assert_eq!(sip_status_for(cause_for_sip_status(486)), 486);
        assert_eq!(
            cause_for_sip_status(sip_status_for(Cause::USER_BUSY)),
            Cause::USER_BUSY
        );
    }

    #[test]
    fn cancel_reasons() {
        let elsewhere = r#"SIP;cause=200;text="Call completed elsewhere""#;
        assert_eq!(
            cause_for_cancel(Some(elsewhere)),
            Cause::NON_SELECTED_USER_CLEARING
        );
        assert_eq!(
            cause_for_cancel(Some("sip ; cause = 200")),
            Cause::NON_SELECTED_USER_CLEARING
        );
        assert_eq!(cause_for_cancel(None), Cause::NORMAL_CLEARING);
        assert_eq!(
            cause_for_cancel(Some("SIP;cause=487")),
            Cause::NORMAL_CLEARING
        );
        assert_eq!(cause_for_cancel(Some("Q.850;cause=17")), Cause::USER_BUSY);
        assert_eq!(
            cause_for_cancel(Some("Q.850;cause=300")),
            Cause::NORMAL_CLEARING
        );
        assert_eq!(cause_for_cancel(Some("garbage")), Cause::NORMAL_CLEARING);
        // RFC 3326 allows one value per protocol; the SIP one decides.
        assert_eq!(
            cause_for_cancel(Some(r#"Q.850;cause=16, SIP;cause=200;text="a, b; c""#)),
            Cause::NON_SELECTED_USER_CLEARING
        );
        assert_eq!(
            cause_for_cancel(Some(r#"SIP;text="x;cause=200";cause=487"#)),
            Cause::NORMAL_CLEARING
        );
    }
}
