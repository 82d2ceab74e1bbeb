//! The wire format: length-prefixed frames, then type, CIC and TLV parameters.
//!
//! ```text
//! frame  = length:u16be (1..=1024) body
//! body   = type:u8 cic:u16be params         ; every message but FRM
//!        | 0xF0 cic:u16be seq:u16be g711[160] ; FRM
//! params = *(tag:u8 len:u8 value[len])
//! ```
//!
//! [`Decoder`] is Sans-IO: the caller pushes whatever bytes the stream gave and pops messages.
//! A bad length prefix leaves the stream without frame boundaries, so it is fatal
//! ([`ProtocolError::is_fatal`]); a well-framed message with a bad body is reported and
//! skipped, and decoding continues with the next frame.

use bytes::{Buf, BytesMut};

use crate::cause::Cause;
use crate::msg::{Cic, Event, FRAME_LEN, Iam, Law, Message, Number, code, tag};

/// Largest body a frame may carry.
pub const MAX_FRAME: usize = 1024;
/// Most bytes a [`Decoder`] holds before refusing more: a few frames' worth, so a peer that
/// sends faster than the line reads cannot grow it without bound.
pub const MAX_BUFFER: usize = 16 * 1024;
/// Longest value of one parameter (its length is one byte).
pub const MAX_PARAM: usize = 255;

/// Why a message could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A text parameter is longer than [`MAX_PARAM`] bytes.
    #[error("parameter {tag:#04x} is {len} bytes, more than 255")]
    ParamTooLong {
        /// The parameter's tag.
        tag: u8,
        /// Its length in bytes.
        len: usize,
    },
    /// The whole body is longer than [`MAX_FRAME`].
    #[error("message body is {0} bytes, more than 1024")]
    TooLong(usize),
}

/// What is wrong with a well-framed message's body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// The type code is not one this protocol defines.
    #[error("unknown message type")]
    UnknownType,
    /// The body ends before the type and CIC.
    #[error("shorter than a message header")]
    TooShort,
    /// A parameter's length runs past the end of the body.
    #[error("truncated parameter")]
    Truncated,
    /// A parameter appears twice.
    #[error("duplicate parameter {0:#04x}")]
    Duplicate(u8),
    /// A required parameter is absent.
    #[error("missing parameter {0:#04x}")]
    Missing(u8),
    /// A parameter's value has the wrong length.
    #[error("parameter {0:#04x} has a bad length")]
    Length(u8),
    /// A text parameter is not UTF-8.
    #[error("parameter {0:#04x} is not UTF-8")]
    Utf8(u8),
    /// A number parameter is not a valid number.
    #[error("parameter {0:#04x} is not a valid number")]
    Number(u8),
    /// The cause is outside 1..=127.
    #[error("cause value {0} is outside 1..=127")]
    Cause(u8),
    /// The event information value is not defined.
    #[error("unknown event {0}")]
    Event(u8),
    /// The law value is not defined.
    #[error("unknown law {0}")]
    Law(u8),
    /// An FRM does not carry exactly 160 bytes after its sequence number.
    #[error("frame payload is {0} bytes, not 160")]
    FrameLength(usize),
    /// A link message (ATT/ATA/ATR/ATC/ATP) names a circuit other than 0.
    #[error("link message on a circuit")]
    NonZeroCic,
}

/// Why the decoder produced no message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A length prefix outside 1..=1024: the stream has lost its framing. Fatal.
    #[error("bad frame length {0}")]
    FrameLength(u16),
    /// The peer sent more than [`MAX_BUFFER`] bytes that were not popped. Fatal.
    #[error("receive buffer full")]
    BufferFull,
    /// A frame whose body is wrong; it was skipped and decoding goes on.
    #[error("bad message (type {code:#04x}, cic {cic:?}): {reason}")]
    BadMessage {
        /// Its type code.
        code: u8,
        /// Its circuit, if the body was long enough to name one (the receiver may REL it).
        cic: Option<Cic>,
        /// What is wrong.
        reason: BodyError,
    },
}

impl ProtocolError {
    /// True when the link must be closed: nothing more can be decoded from this stream.
    pub const fn is_fatal(&self) -> bool {
        matches!(self, Self::FrameLength(_) | Self::BufferFull)
    }
}

/// Appends `msg`, framed, to `out`. On error `out` is left as it was.
pub fn encode(msg: &Message, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let start = out.len();
    let result = encode_body(msg, out, start);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

/// [`encode`] into a new buffer.
pub fn encode_to_vec(msg: &Message) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(64);
    encode(msg, &mut out)?;
    Ok(out)
}

fn encode_body(msg: &Message, out: &mut Vec<u8>, start: usize) -> Result<(), EncodeError> {
    out.extend_from_slice(&[0, 0, msg.code()]);
    out.extend_from_slice(&msg.cic().0.to_be_bytes());
    match msg {
        Message::Iam(iam) => {
            param(out, tag::CALLED, iam.called.as_str().as_bytes())?;
            opt_param(out, tag::CALLING, iam.calling.as_ref().map(Number::as_str))?;
            opt_param(out, tag::CHALLENGE, iam.challenge.as_deref())?;
            opt_param(out, tag::CALL_REF, iam.call_ref.as_deref())?;
            opt_param(out, tag::BRANCH, iam.branch.as_deref())?;
        }
        Message::Acm { proof, .. } | Message::Anm { proof, .. } => {
            opt_param(out, tag::PROOF, proof.as_deref())?;
        }
        Message::Cpg { event, .. } => param(out, tag::EVENT, &[event.code()])?,
        Message::Rel { cause, .. } | Message::Atr { cause } => {
            param(out, tag::CAUSE, &[cause.value()])?;
        }
        Message::Rlc { .. } => {}
        Message::Frm { seq, payload, .. } => {
            out.extend_from_slice(&seq.to_be_bytes());
            out.extend_from_slice(payload);
        }
        Message::Att { number, device } => {
            param(out, tag::CALLED, number.as_str().as_bytes())?;
            opt_param(out, tag::DEVICE, device.as_deref())?;
        }
        Message::Ata { law } => param(out, tag::LAW, &[law.to_u8()])?,
        Message::Atc {
            challenge,
            call_ref,
            branch,
        } => {
            param(out, tag::CHALLENGE, challenge.as_bytes())?;
            param(out, tag::CALL_REF, call_ref.as_bytes())?;
            param(out, tag::BRANCH, branch.as_bytes())?;
        }
        Message::Atp { proof } => param(out, tag::PROOF, proof.as_bytes())?,
    }
    let len = out.len() - start - 2;
    let Ok(len16) = u16::try_from(len) else {
        return Err(EncodeError::TooLong(len));
    };
    if len > MAX_FRAME {
        return Err(EncodeError::TooLong(len));
    }
    out[start..start + 2].copy_from_slice(&len16.to_be_bytes());
    Ok(())
}

fn param(out: &mut Vec<u8>, tag: u8, value: &[u8]) -> Result<(), EncodeError> {
    let Ok(len) = u8::try_from(value.len()) else {
        return Err(EncodeError::ParamTooLong {
            tag,
            len: value.len(),
        });
    };
    out.extend_from_slice(&[tag, len]);
    out.extend_from_slice(value);
    Ok(())
}

fn opt_param(out: &mut Vec<u8>, tag: u8, value: Option<&str>) -> Result<(), EncodeError> {
    match value {
        Some(v) => param(out, tag, v.as_bytes()),
        None => Ok(()),
    }
}

/// Incremental decoder for one direction of a link.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: BytesMut,
    failed: Option<ProtocolError>,
}

impl Decoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes read from the stream. Fails (fatally) when more than [`MAX_BUFFER`] bytes
    /// would be waiting: call [`Decoder::pop`] until `None` after every push.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), ProtocolError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.buf.len() + bytes.len() > MAX_BUFFER {
            self.failed = Some(ProtocolError::BufferFull);
            return Err(ProtocolError::BufferFull);
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// The next complete message, a report about a bad one, or `None` until more bytes
    /// arrive. After a fatal error every call returns that error again.
    pub fn pop(&mut self) -> Option<Result<Message, ProtocolError>> {
        if let Some(e) = &self.failed {
            return Some(Err(e.clone()));
        }
        if self.buf.len() < 2 {
            return None;
        }
        let len = u16::from_be_bytes([self.buf[0], self.buf[1]]);
        if len == 0 || usize::from(len) > MAX_FRAME {
            let e = ProtocolError::FrameLength(len);
            self.failed = Some(e.clone());
            return Some(Err(e));
        }
        let len = usize::from(len);
        if self.buf.len() < 2 + len {
            return None;
        }
        self.buf.advance(2);
        let body = self.buf.split_to(len);
        Some(decode_body(&body))
    }

    /// Bytes pushed but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

/// Decodes one frame body (without its length prefix).
pub fn decode_body(body: &[u8]) -> Result<Message, ProtocolError> {
    let Some(&code) = body.first() else {
        return Err(bad(0, None, BodyError::TooShort));
    };
    let [_, hi, lo, rest @ ..] = body else {
        return Err(bad(code, None, BodyError::TooShort));
    };
    let cic = Cic(u16::from_be_bytes([*hi, *lo]));
    decode_typed(code, cic, rest).map_err(|reason| bad(code, Some(cic), reason))
}

fn bad(code: u8, cic: Option<Cic>, reason: BodyError) -> ProtocolError {
    ProtocolError::BadMessage { code, cic, reason }
}

fn decode_typed(code: u8, cic: Cic, rest: &[u8]) -> Result<Message, BodyError> {
    if code == code::FRM {
        let [s0, s1, payload @ ..] = rest else {
            return Err(BodyError::FrameLength(0));
        };
        let payload: [u8; FRAME_LEN] = payload
            .try_into()
            .map_err(|_| BodyError::FrameLength(payload.len()))?;
        return Ok(Message::Frm {
            cic,
            seq: u16::from_be_bytes([*s0, *s1]),
            payload,
        });
    }
    let link = matches!(
        code,
        code::ATT | code::ATA | code::ATR | code::ATC | code::ATP
    );
    let call = matches!(
        code,
        code::IAM | code::ACM | code::ANM | code::CPG | code::REL | code::RLC
    );
    if !link && !call {
        return Err(BodyError::UnknownType);
    }
    if link && cic != Cic::LINK {
        return Err(BodyError::NonZeroCic);
    }
    let p = Params::parse(rest)?;
    Ok(match code {
        code::IAM => Message::Iam(Iam {
            cic,
            called: p.number(tag::CALLED)?,
            calling: p.opt_number(tag::CALLING)?,
            challenge: p.text(tag::CHALLENGE)?,
            call_ref: p.text(tag::CALL_REF)?,
            branch: p.text(tag::BRANCH)?,
        }),
        code::ACM => Message::Acm {
            cic,
            proof: p.text(tag::PROOF)?,
        },
        code::ANM => Message::Anm {
            cic,
            proof: p.text(tag::PROOF)?,
        },
        code::CPG => {
            let v = p.byte(tag::EVENT)?;
            Message::Cpg {
                cic,
                event: Event::from_code(v).ok_or(BodyError::Event(v))?,
            }
        }
        code::REL => Message::Rel {
            cic,
            cause: p.cause()?,
        },
        code::RLC => Message::Rlc { cic },
        code::ATT => Message::Att {
            number: p.number(tag::CALLED)?,
            device: p.text(tag::DEVICE)?,
        },
        code::ATA => {
            let v = p.byte(tag::LAW)?;
            Message::Ata {
                law: Law::from_u8(v).ok_or(BodyError::Law(v))?,
            }
        }
        code::ATC => Message::Atc {
            challenge: p.required_text(tag::CHALLENGE)?,
            call_ref: p.required_text(tag::CALL_REF)?,
            branch: p.required_text(tag::BRANCH)?,
        },
        code::ATP => Message::Atp {
            proof: p.required_text(tag::PROOF)?,
        },
        _ => Message::Atr { cause: p.cause()? },
    })
}

/// The parameters of one message, checked for truncation and duplicates.
struct Params<'a> {
    list: Vec<(u8, &'a [u8])>,
}

impl<'a> Params<'a> {
    fn parse(mut rest: &'a [u8]) -> Result<Self, BodyError> {
        let mut list: Vec<(u8, &[u8])> = Vec::new();
        while let [t, len, tail @ ..] = rest {
            let len = usize::from(*len);
            if tail.len() < len {
                return Err(BodyError::Truncated);
            }
            if list.iter().any(|(seen, _)| seen == t) {
                return Err(BodyError::Duplicate(*t));
            }
            list.push((*t, &tail[..len]));
            rest = &tail[len..];
        }
        if !rest.is_empty() {
            return Err(BodyError::Truncated);
        }
        Ok(Self { list })
    }

    fn get(&self, t: u8) -> Option<&'a [u8]> {
        self.list
            .iter()
            .find(|(seen, _)| *seen == t)
            .map(|(_, v)| *v)
    }

    fn text(&self, t: u8) -> Result<Option<String>, BodyError> {
        self.get(t)
            .map(|v| {
                std::str::from_utf8(v)
                    .map(str::to_owned)
                    .map_err(|_| BodyError::Utf8(t))
            })
            .transpose()
    }

    fn required_text(&self, t: u8) -> Result<String, BodyError> {
        self.text(t)?.ok_or(BodyError::Missing(t))
    }

    fn opt_number(&self, t: u8) -> Result<Option<Number>, BodyError> {
        self.text(t)?
            .map(|s| Number::new(&s).map_err(|_| BodyError::Number(t)))
            .transpose()
    }

    fn number(&self, t: u8) -> Result<Number, BodyError> {
        self.opt_number(t)?.ok_or(BodyError::Missing(t))
    }

    fn byte(&self, t: u8) -> Result<u8, BodyError> {
        match self.get(t) {
            Some([b]) => Ok(*b),
            Some(_) => Err(BodyError::Length(t)),
            None => Err(BodyError::Missing(t)),
        }
    }

    fn cause(&self) -> Result<Cause, BodyError> {
        let v = self.byte(tag::CAUSE)?;
        Cause::new(v).map_err(|_| BodyError::Cause(v))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn num(s: &str) -> Number {
        Number::new(s).expect("valid number")
    }

    fn decode_all(bytes: &[u8]) -> Vec<Result<Message, ProtocolError>> {
        let mut d = Decoder::new();
        d.push(bytes).expect("fits");
        std::iter::from_fn(|| d.pop()).take(100).collect()
    }

    #[test]
    fn rel_wire_bytes() {
        let msg = Message::Rel {
            cic: Cic(2),
            cause: Cause::USER_BUSY,
        };
        assert_eq!(
            encode_to_vec(&msg).expect("encodes"),
            [0, 6, 0x0C, 0, 2, 0x12, 1, 17]
        );
    }

    #[test]
    fn iam_wire_bytes() {
        let msg = Message::Iam(Iam {
            cic: Cic(4),
            called: num("+15"),
            calling: None,
            challenge: Some("c".into()),
            call_ref: None,
            branch: None,
        });
        let bytes = encode_to_vec(&msg).expect("encodes");
        assert_eq!(
            bytes,
            [0, 11, 0x01, 0, 4, 0x04, 3, b'+', b'1', b'5', 0xE0, 1, b'c']
        );
        assert_eq!(decode_all(&bytes), [Ok(msg)]);
    }

    #[test]
    fn byte_at_a_time() {
        let msgs = [
            Message::Att {
                number: num("+4930"),
                device: Some("d-1".into()),
            },
            Message::Frm {
                cic: Cic(1),
                seq: 7,
                payload: [0xD5; FRAME_LEN],
            },
            Message::Rlc { cic: Cic(3) },
        ];
        let mut wire = Vec::new();
        for m in &msgs {
            encode(m, &mut wire).expect("encodes");
        }
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for b in wire {
            d.push(&[b]).expect("fits");
            while let Some(m) = d.pop() {
                got.push(m.expect("valid"));
            }
        }
        assert_eq!(got, msgs);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn unknown_params_skipped_duplicates_refused() {
        // REL with an unknown tag 0x77 before the cause.
        let ok = [0, 9, 0x0C, 0, 2, 0x77, 1, 9, 0x12, 1, 16];
        assert_eq!(
            decode_all(&ok),
            [Ok(Message::Rel {
                cic: Cic(2),
                cause: Cause::NORMAL_CLEARING
            })]
        );
        let dup = [0, 9, 0x0C, 0, 2, 0x12, 1, 16, 0x12, 1, 16];
        assert!(matches!(
            &decode_all(&dup)[..],
            [Err(ProtocolError::BadMessage {
                reason: BodyError::Duplicate(0x12),
                ..
            })]
        ));
    }

    #[test]
    fn bad_body_is_skipped() {
        let mut wire = vec![0, 5, 0x0C, 0, 2, 0x12, 3]; // truncated TLV
        wire.extend_from_slice(&[0, 3, 0x10, 0, 2]); // RLC
        wire.extend_from_slice(&[0, 6, 0x0C, 0, 2, 0x12, 1, 0]); // cause 0
        wire.extend_from_slice(&[0, 3, 0x55, 0, 2]); // unknown type
        wire.extend_from_slice(&[0, 6, 0xA1, 0, 1, 0xE3, 1, 0]); // ATA on a cic
        let got = decode_all(&wire);
        assert_eq!(got.len(), 5);
        assert!(matches!(
            got[0],
            Err(ProtocolError::BadMessage {
                cic: Some(Cic(2)),
                reason: BodyError::Truncated,
                ..
            })
        ));
        assert_eq!(got[1], Ok(Message::Rlc { cic: Cic(2) }));
        assert!(matches!(
            got[2],
            Err(ProtocolError::BadMessage {
                reason: BodyError::Cause(0),
                ..
            })
        ));
        assert!(matches!(
            got[3],
            Err(ProtocolError::BadMessage {
                reason: BodyError::UnknownType,
                ..
            })
        ));
        assert!(matches!(
            got[4],
            Err(ProtocolError::BadMessage {
                reason: BodyError::NonZeroCic,
                ..
            })
        ));
        assert!(
            got.iter()
                .all(|r| r.as_ref().map_err(ProtocolError::is_fatal) != Err(true))
        );
    }

    #[test]
    fn missing_and_bad_params() {
        let cases: &[(&[u8], BodyError)] = &[
            (&[0, 3, 0x01, 0, 2], BodyError::Missing(tag::CALLED)),
            (
                &[0, 7, 0x01, 0, 2, 0x04, 2, b'1', b'x'],
                BodyError::Number(tag::CALLED),
            ),
            (&[0, 6, 0x2C, 0, 2, 0x24, 1, 9], BodyError::Event(9)),
            (
                &[0, 7, 0x2C, 0, 2, 0x24, 2, 3, 3],
                BodyError::Length(tag::EVENT),
            ),
            (&[0, 6, 0xA1, 0, 0, 0xE3, 1, 2], BodyError::Law(2)),
            (
                &[0, 6, 0x06, 0, 2, 0xE1, 1, 0xFF],
                BodyError::Utf8(tag::PROOF),
            ),
            (&[0, 5, 0xF0, 0, 1, 0, 0], BodyError::FrameLength(0)),
            (&[0, 2, 0x10, 0], BodyError::TooShort),
        ];
        for (wire, want) in cases {
            match &decode_all(wire)[..] {
                [Err(ProtocolError::BadMessage { reason, .. })] => assert_eq!(reason, want),
                other => panic!("{wire:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn attach_challenge_and_proof() {
        let atc = Message::Atc {
            challenge: "v=1".into(),
            call_ref: "attach-1".into(),
            branch: crate::msg::ATTACH_BRANCH.into(),
        };
        let bytes = encode_to_vec(&atc).expect("encodes");
        assert_eq!(&bytes[..5], [0, 36, 0xA3, 0, 0]);
        assert_eq!(decode_all(&bytes), [Ok(atc)]);
        let atp = Message::Atp {
            proof: "v=1;p".into(),
        };
        let bytes = encode_to_vec(&atp).expect("encodes");
        assert_eq!(
            bytes,
            [0, 10, 0xA4, 0, 0, 0xE1, 5, b'v', b'=', b'1', b';', b'p']
        );
        assert_eq!(decode_all(&bytes), [Ok(atp)]);
        // Every parameter is required; and a link message lives on circuit 0.
        let cases: &[(&[u8], BodyError)] = &[
            (&[0, 3, 0xA4, 0, 0], BodyError::Missing(tag::PROOF)),
            (
                &[0, 6, 0xA3, 0, 0, 0xE0, 1, b'c'],
                BodyError::Missing(tag::CALL_REF),
            ),
            (&[0, 6, 0xA4, 0, 1, 0xE1, 1, b'p'], BodyError::NonZeroCic),
        ];
        for (wire, want) in cases {
            match &decode_all(wire)[..] {
                [Err(ProtocolError::BadMessage { reason, .. })] => assert_eq!(reason, want),
                other => panic!("{wire:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn bad_length_is_fatal_and_sticky() {
        let mut d = Decoder::new();
        d.push(&[0x04, 0x01, 1, 2, 3]).expect("fits");
        let e = d.pop().expect("an error").expect_err("fatal");
        assert_eq!(e, ProtocolError::FrameLength(1025));
        assert!(e.is_fatal());
        assert_eq!(d.pop(), Some(Err(e.clone())));
        assert_eq!(d.push(&[0]), Err(e));
        let mut d = Decoder::new();
        d.push(&[0, 0]).expect("fits");
        assert_eq!(d.pop(), Some(Err(ProtocolError::FrameLength(0))));
    }

    #[test]
    fn buffer_is_bounded() {
        let mut d = Decoder::new();
        d.push(&[0, 10]).expect("fits");
        let e = d.push(&vec![0; MAX_BUFFER]).expect_err("too much");
        assert!(e.is_fatal());
    }

    #[test]
    fn encode_refuses_long_values() {
        let msg = Message::Acm {
            cic: Cic(2),
            proof: Some("x".repeat(256)),
        };
        let mut out = vec![9];
        assert_eq!(
            encode(&msg, &mut out),
            Err(EncodeError::ParamTooLong {
                tag: tag::PROOF,
                len: 256
            })
        );
        assert_eq!(out, [9]);
        let msg = Message::Iam(Iam {
            cic: Cic(2),
            called: num("12"),
            calling: None,
            challenge: Some("c".repeat(255)),
            call_ref: Some("r".repeat(255)),
            branch: Some("b".repeat(255)),
        });
        assert!(encode_to_vec(&msg).is_ok());
        let msg = Message::Att {
            number: num("12"),
            device: Some("d".repeat(255)),
        };
        assert!(encode_to_vec(&msg).is_ok());
    }

    fn arb_number() -> impl Strategy<Value = Number> {
        "\\+?[0-9]{2,15}".prop_map(|s| Number::new(&s).expect("strategy yields valid numbers"))
    }

    fn arb_text() -> impl Strategy<Value = Option<String>> {
        proptest::option::of("\\PC{0,40}")
    }

    fn arb_cause() -> impl Strategy<Value = Cause> {
        (1u8..=127).prop_map(|v| Cause::new(v).expect("in range"))
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        let cic = any::<u16>().prop_map(Cic);
        prop_oneof![
            (
                cic.clone(),
                arb_number(),
                proptest::option::of(arb_number()),
                arb_text(),
                arb_text(),
                arb_text()
            )
                .prop_map(|(cic, called, calling, challenge, call_ref, branch)| {
                    Message::Iam(Iam {
                        cic,
                        called,
                        calling,
                        challenge,
                        call_ref,
                        branch,
                    })
                }),
            (cic.clone(), arb_text()).prop_map(|(cic, proof)| Message::Acm { cic, proof }),
            (cic.clone(), arb_text()).prop_map(|(cic, proof)| Message::Anm { cic, proof }),
            (cic.clone(), 1u8..=4).prop_map(|(cic, e)| Message::Cpg {
                cic,
                event: Event::from_code(e).expect("in range")
            }),
            (cic.clone(), arb_cause()).prop_map(|(cic, cause)| Message::Rel { cic, cause }),
            cic.clone().prop_map(|cic| Message::Rlc { cic }),
            (
                cic,
                any::<u16>(),
                proptest::collection::vec(any::<u8>(), FRAME_LEN)
            )
                .prop_map(|(cic, seq, p)| Message::Frm {
                    cic,
                    seq,
                    payload: p.try_into().expect("strategy yields 160 bytes")
                }),
            (arb_number(), arb_text()).prop_map(|(number, device)| Message::Att { number, device }),
            (0u8..=1).prop_map(|l| Message::Ata {
                law: Law::from_u8(l).expect("in range")
            }),
            arb_cause().prop_map(|cause| Message::Atr { cause }),
            ("\\PC{0,40}", "\\PC{0,40}", "\\PC{0,40}").prop_map(|(challenge, call_ref, branch)| {
                Message::Atc {
                    challenge,
                    call_ref,
                    branch,
                }
            }),
            "\\PC{0,40}".prop_map(|proof| Message::Atp { proof }),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..3000),
                                       split in 0usize..3000) {
            let mut d = Decoder::new();
            let split = split.min(bytes.len());
            for chunk in [&bytes[..split], &bytes[split..]] {
                if d.push(chunk).is_err() {
                    break;
                }
                let mut n = 0;
                while let Some(r) = d.pop() {
                    n += 1;
                    if matches!(&r, Err(e) if e.is_fatal()) || n > 2000 {
                        break;
                    }
                }
            }
        }

        #[test]
        fn arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_body(&body);
        }

        #[test]
        fn round_trip(msgs in proptest::collection::vec(arb_message(), 1..8)) {
            let mut wire = Vec::new();
            for m in &msgs {
                encode(m, &mut wire).expect("encodes");
            }
            let got: Vec<Message> = decode_all(&wire)
                .into_iter()
                .map(|r| r.expect("decodes"))
                .collect();
            prop_assert_eq!(got, msgs);
        }
    }
}
