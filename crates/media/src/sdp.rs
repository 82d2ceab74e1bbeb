//! The audio part of SDP (RFC 4566) and the G.711 offer/answer choice (RFC 3264), with
//! SRTP keys exchanged as SDES `a=crypto` attributes (RFC 4568).
//!
//! The gateway reads an offer's usable audio stream (address, port, G.711 laws, DTMF
//! events, direction, packetisation, and for `RTP/SAVP` the usable `a=crypto` lines), picks
//! the law to answer with, and writes a one-stream session description, or an answer that
//! mirrors every `m=` line of the offer as RFC 3264 §6 requires. An `RTP/SAVP` stream is
//! answered `RTP/SAVP` with one `a=crypto` line: the offer's tag and suite with the
//! answerer's own key ([`crate::srtp::Crypto::answer`]); an `RTP/AVP` stream is answered
//! `RTP/AVP`, its `a=crypto` lines (meaningless there) ignored. Everything except audio over
//! `RTP/AVP`, `RTP/AVPF`, `RTP/SAVP` and `RTP/SAVPF` is ignored or rejected; there is no
//! DTLS-SRTP, ICE or bundling here.
//!
//! SDES puts the keys in the SDP: a body with `a=crypto` must only travel over signalling
//! protected by TLS, and never be logged (nothing here logs).

use std::fmt::Write as _;
use std::net::IpAddr;

use bytes::Bytes;

use crate::g711::Law;
use crate::srtp::Crypto;

/// Most `a=crypto` lines read per stream (offers carry one to four).
const MAX_CRYPTO_LINES: usize = 16;

/// Why an SDP body cannot be used (or answered) for G.711 audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SdpError {
    /// The body does not start with `v=0` (RFC 4566 §5: the version line comes first).
    #[error("not an SDP body (no v=0 line first)")]
    NotSdp,
    /// No `m=audio` line.
    #[error("no audio stream in the SDP")]
    NoAudio,
    /// The audio stream has port 0: the offerer rejects or disables it (RFC 3264 §5.1).
    #[error("the audio stream is rejected (port 0)")]
    Rejected,
    /// The audio streams use a transport other than `RTP/AVP`, `RTP/AVPF`, `RTP/SAVP` or
    /// `RTP/SAVPF` (e.g. DTLS-SRTP's `UDP/TLS/RTP/SAVP`).
    #[error("the audio stream's transport is not RTP/AVP or RTP/SAVP")]
    UnsupportedTransport,
    /// The audio stream is SRTP (`RTP/SAVP`) but none of its `a=crypto` lines is usable (a
    /// suite other than AES_CM_128_HMAC_SHA1_80/32, an MKI, a session parameter, a bad key,
    /// or no line at all): the gateway answers 488 rather than fall back to clear RTP.
    #[error("SRTP offered without a usable a=crypto line")]
    NoUsableCrypto,
    /// An `m=` line lacks its port or transport, or the port is not a number.
    #[error("malformed m= line")]
    BadMediaLine,
    /// Neither the audio stream nor the session has a `c=` line.
    #[error("no connection address (c=) for the audio stream")]
    NoConnection,
    /// The `c=` line is malformed, or names a host rather than an address (this crate does
    /// no name resolution).
    #[error("malformed or unresolved connection address (c=)")]
    BadConnection,
    /// The offer has neither PCMU nor PCMA: the gateway answers 488 Not Acceptable Here.
    #[error("no G.711 law in common")]
    NoCommonCodec,
}

/// The direction attribute of a stream (RFC 4566 §6, RFC 3264 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `a=sendrecv`, the default.
    SendRecv,
    /// `a=sendonly`: the writer of the SDP only sends (a "hold" when the offerer writes it).
    SendOnly,
    /// `a=recvonly`: the writer only receives.
    RecvOnly,
    /// `a=inactive`: no media either way.
    Inactive,
}

impl Direction {
    /// The answer's direction for an offer's (RFC 3264 §6.1): send-only is answered with
    /// receive-only and vice versa; the others are kept.
    pub fn reversed(self) -> Self {
        match self {
            Self::SendOnly => Self::RecvOnly,
            Self::RecvOnly => Self::SendOnly,
            other => other,
        }
    }

    /// The attribute name without `a=`, e.g. `"sendrecv"`.
    pub fn as_attr(self) -> &'static str {
        match self {
            Self::SendRecv => "sendrecv",
            Self::SendOnly => "sendonly",
            Self::RecvOnly => "recvonly",
            Self::Inactive => "inactive",
        }
    }

    /// Whether the writer of the SDP sends media.
    pub fn sends(self) -> bool {
        matches!(self, Self::SendRecv | Self::SendOnly)
    }

    /// Whether the writer of the SDP receives media.
    pub fn receives(self) -> bool {
        matches!(self, Self::SendRecv | Self::RecvOnly)
    }

    fn from_attr(attr: &str) -> Option<Self> {
        match attr {
            "sendrecv" => Some(Self::SendRecv),
            "sendonly" => Some(Self::SendOnly),
            "recvonly" => Some(Self::RecvOnly),
            "inactive" => Some(Self::Inactive),
            _ => None,
        }
    }
}

/// The RTP profile of an audio stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Clear RTP: `RTP/AVP` (RFC 3551) or `RTP/AVPF`.
    Rtp,
    /// SRTP: `RTP/SAVP` (RFC 3711) or `RTP/SAVPF`, keyed by `a=crypto` (RFC 4568).
    Srtp,
}

impl Transport {
    /// The `m=` line's transport field this crate writes: `RTP/AVP` or `RTP/SAVP`.
    pub fn proto(self) -> &'static str {
        match self {
            Self::Rtp => "RTP/AVP",
            Self::Srtp => "RTP/SAVP",
        }
    }
}

/// The usable audio stream of an SDP body, as far as G.711 cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioOffer {
    /// Where to send RTP: the stream's `c=` address, else the session's. `0.0.0.0` is the
    /// RFC 2543 hold form, kept as written.
    pub addr: IpAddr,
    /// The RTP port (non-zero).
    pub port: u16,
    /// The G.711 laws offered, in the offer's order, each once: static payload types 0/8 or
    /// dynamic ones mapped by `a=rtpmap` to `PCMU/8000` / `PCMA/8000`.
    pub laws: Vec<Law>,
    /// The payload type the offer uses for each entry of `laws` (same length and order).
    pub payload_types: Vec<u8>,
    /// The payload type of `telephone-event/8000` (RFC 4733 DTMF), if offered.
    pub telephone_event: Option<u8>,
    /// The stream's direction: its own attribute, else the session's, else send/receive.
    pub direction: Direction,
    /// `a=ptime` in milliseconds, if given.
    pub ptime: Option<u32>,
    /// Clear RTP or SRTP.
    pub transport: Transport,
    /// For SRTP, the usable `a=crypto` lines in the offer's order (never empty: a stream
    /// without one is not usable); for RTP, empty. Each holds the key its writer *sends*
    /// with (its `Debug` form does not show the key).
    pub crypto: Vec<Crypto>,
}

impl AudioOffer {
    /// Whether the offerer puts the call on hold: a send-only or inactive stream, or the old
    /// `c=IN IP4 0.0.0.0` form.
    pub fn is_hold(&self) -> bool {
        self.addr.is_unspecified() || !self.direction.receives()
    }
}

/// Parses the usable audio stream of an SDP body: the first `m=audio` line with a non-zero
/// port over `RTP/SAVP` or `RTP/SAVPF` with at least one usable `a=crypto` line, else the
/// first over `RTP/AVP` or `RTP/AVPF` (SRTP is preferred when an offer has both).
///
/// Accepts CRLF or LF line ends and non-UTF-8 bytes in free-text fields. When no stream is
/// usable the error says why: [`SdpError::NoAudio`], [`SdpError::NoUsableCrypto`] (SRTP
/// whose keys we cannot use), [`SdpError::Rejected`] (an audio stream with port 0) or
/// [`SdpError::UnsupportedTransport`].
pub fn parse_audio(body: &[u8]) -> Result<AudioOffer, SdpError> {
    let text = String::from_utf8_lossy(body);
    let desc = Description::parse(&text)?;
    let index = desc.audio_index()?;
    desc.audio_offer(index)
}

/// Chooses the law to answer with (RFC 3264 §6): `pstn` if offered, so no transcoding is
/// needed; else the other G.711 law, which the gateway transcodes; else
/// [`SdpError::NoCommonCodec`], which the gateway answers with 488.
pub fn negotiate(offer: &AudioOffer, pstn: Law) -> Result<Law, SdpError> {
    [pstn, pstn.other()]
        .into_iter()
        .find(|law| offer.laws.contains(law))
        .ok_or(SdpError::NoCommonCodec)
}

/// The payload type number the offer uses for `law` (the answer must use the same one,
/// RFC 3264 §6.1); `None` if the law is not offered.
pub fn payload_type_for(offer: &AudioOffer, law: Law) -> Option<u8> {
    offer
        .laws
        .iter()
        .zip(&offer.payload_types)
        .find(|(l, _)| **l == law)
        .map(|(_, pt)| *pt)
}

/// What the gateway (or phone agent) puts in its own session description.
///
/// Its `Debug` form does not show the SRTP key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionParams {
    /// The address RTP should be sent to (`o=` and `c=`).
    pub ip: IpAddr,
    /// The local RTP port.
    pub port: u16,
    /// The `o=` session id: fixed for the dialog.
    pub session_id: u64,
    /// The `o=` version: incremented for each new offer or answer in the dialog.
    pub version: u64,
    /// The G.711 law of the stream.
    pub law: Law,
    /// The direction, from this side's point of view.
    pub direction: Direction,
    /// SRTP: the `a=crypto` line with the key this side sends with (the stream is then
    /// `RTP/SAVP`); `None` for clear `RTP/AVP`.
    pub crypto: Option<Crypto>,
}

/// A complete SDP (offer or answer) with one audio stream of `p.law` under `payload_type`
/// (the offer's number for the law when answering: see [`payload_type_for`]), with
/// `a=rtpmap`, `a=ptime:20`, the direction attribute and, for SRTP, `a=crypto`. CRLF line
/// ends.
pub fn session(p: &SessionParams, payload_type: u8) -> Bytes {
    session_with_events(p, payload_type, None)
}

/// As [`session`], also offering or accepting RFC 4733 DTMF events under `telephone_event`
/// (events 0-15, the DTMF digits).
pub fn session_with_events(
    p: &SessionParams,
    payload_type: u8,
    telephone_event: Option<u8>,
) -> Bytes {
    let mut out = session_header(p);
    audio_section(&mut out, p, payload_type, telephone_event);
    Bytes::from(out)
}

/// An answer to `offer_body` that mirrors each of its `m=` lines in order (RFC 3264 §6):
/// the usable audio stream ([`parse_audio`]'s) is accepted with `p` (law, port, direction,
/// crypto) and `payload_type`, every other stream is rejected with port 0.
///
/// `telephone_event` should be the offer's event payload type when the answerer accepts
/// DTMF events. The answer keeps the stream's profile: an SRTP stream needs `p.crypto`
/// (else [`SdpError::NoUsableCrypto`]: never answer SRTP with clear RTP) and a clear one
/// must have none ([`SdpError::UnsupportedTransport`]).
pub fn answer(
    offer_body: &[u8],
    p: &SessionParams,
    payload_type: u8,
    telephone_event: Option<u8>,
) -> Result<Bytes, SdpError> {
    let text = String::from_utf8_lossy(offer_body);
    let desc = Description::parse(&text)?;
    let accepted = desc.audio_index()?;
    match (desc.media[accepted].transport(), &p.crypto) {
        (Some(Transport::Srtp), None) => return Err(SdpError::NoUsableCrypto),
        (Some(Transport::Rtp), Some(_)) => return Err(SdpError::UnsupportedTransport),
        _ => {}
    }
    let mut out = session_header(p);
    for (i, m) in desc.media.iter().enumerate() {
        if i == accepted {
            audio_section(&mut out, p, payload_type, telephone_event);
        } else {
            // A rejected stream keeps its media, transport and at least one format.
            let fmt = m.formats.first().copied().unwrap_or("0");
            let _ = write!(out, "m={} 0 {} {fmt}\r\n", m.media, m.proto);
        }
    }
    Ok(Bytes::from(out))
}

fn session_header(p: &SessionParams) -> String {
    let family = if p.ip.is_ipv6() { "IP6" } else { "IP4" };
    format!(
        "v=0\r\no=trustring {} {} IN {family} {}\r\ns=-\r\nc=IN {family} {}\r\nt=0 0\r\n",
        p.session_id, p.version, p.ip, p.ip
    )
}

fn audio_section(out: &mut String, p: &SessionParams, pt: u8, telephone_event: Option<u8>) {
    let proto = if p.crypto.is_some() {
        Transport::Srtp
    } else {
        Transport::Rtp
    }
    .proto();
    let _ = write!(out, "m=audio {} {proto} {pt}", p.port);
    if let Some(te) = telephone_event {
        let _ = write!(out, " {te}");
    }
    let _ = write!(out, "\r\na=rtpmap:{pt} {}/8000\r\n", p.law.encoding_name());
    if let Some(te) = telephone_event {
        let _ = write!(
            out,
            "a=rtpmap:{te} telephone-event/8000\r\na=fmtp:{te} 0-15\r\n"
        );
    }
    let _ = write!(out, "a=ptime:20\r\na={}\r\n", p.direction.as_attr());
    if let Some(c) = &p.crypto {
        let _ = write!(out, "a=crypto:{}\r\n", c.to_value());
    }
}

/// The lines of an SDP body this module cares about, borrowed from the text.
struct Description<'a> {
    connection: Option<&'a str>,
    direction: Option<Direction>,
    ptime: Option<u32>,
    media: Vec<Media<'a>>,
}

/// One `m=` section.
struct Media<'a> {
    media: &'a str,
    port: &'a str,
    proto: &'a str,
    formats: Vec<&'a str>,
    connection: Option<&'a str>,
    direction: Option<Direction>,
    ptime: Option<u32>,
    /// `a=rtpmap` lines: payload type and `encoding/clock[/channels]`.
    rtpmaps: Vec<(u8, &'a str)>,
    /// `a=crypto` values (after the colon), as written.
    cryptos: Vec<&'a str>,
}

impl Media<'_> {
    /// The stream's profile, if it is one we speak.
    fn transport(&self) -> Option<Transport> {
        let p = self.proto;
        if p.eq_ignore_ascii_case("RTP/AVP") || p.eq_ignore_ascii_case("RTP/AVPF") {
            Some(Transport::Rtp)
        } else if p.eq_ignore_ascii_case("RTP/SAVP") || p.eq_ignore_ascii_case("RTP/SAVPF") {
            Some(Transport::Srtp)
        } else {
            None
        }
    }

    /// Its usable `a=crypto` lines, in order.
    fn usable_crypto(&self) -> Vec<Crypto> {
        self.cryptos
            .iter()
            .filter_map(|c| Crypto::parse(c).ok())
            .collect()
    }
}

impl<'a> Description<'a> {
    fn parse(text: &'a str) -> Result<Self, SdpError> {
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        if lines.next() != Some("v=0") {
            return Err(SdpError::NotSdp);
        }
        let mut desc = Self {
            connection: None,
            direction: None,
            ptime: None,
            media: Vec::new(),
        };
        for line in lines {
            let Some((kind, value)) = line.split_once('=') else {
                continue;
            };
            if kind == "m" {
                let mut fields = value.split_ascii_whitespace();
                let (Some(media), Some(port), Some(proto)) =
                    (fields.next(), fields.next(), fields.next())
                else {
                    return Err(SdpError::BadMediaLine);
                };
                desc.media.push(Media {
                    media,
                    port,
                    proto,
                    formats: fields.collect(),
                    connection: None,
                    direction: None,
                    ptime: None,
                    rtpmaps: Vec::new(),
                    cryptos: Vec::new(),
                });
                continue;
            }
            let current = desc.media.last_mut();
            match (kind, current) {
                ("c", Some(m)) => m.connection = Some(value),
                ("c", None) => desc.connection = Some(value),
                ("a", Some(m)) => {
                    let (name, arg) = value.split_once(':').unwrap_or((value, ""));
                    if common_attribute(&mut m.direction, &mut m.ptime, name, arg) {
                        continue;
                    }
                    if name == "crypto" {
                        // Bounded: a peer cannot make us parse thousands of keys.
                        if m.cryptos.len() < MAX_CRYPTO_LINES {
                            m.cryptos.push(arg.trim());
                        }
                    } else if name == "rtpmap"
                        && let Some((pt, encoding)) = arg.trim().split_once(char::is_whitespace)
                        && let Ok(pt) = pt.parse::<u8>()
                    {
                        m.rtpmaps.push((pt, encoding.trim()));
                    }
                }
                ("a", None) => {
                    let (name, arg) = value.split_once(':').unwrap_or((value, ""));
                    common_attribute(&mut desc.direction, &mut desc.ptime, name, arg);
                }
                _ => {}
            }
        }
        Ok(desc)
    }

    /// The index of the usable audio stream (the first SRTP one with a usable key, else the
    /// first clear RTP one), or why there is none.
    fn audio_index(&self) -> Result<usize, SdpError> {
        let audio = || {
            self.media
                .iter()
                .enumerate()
                .filter(|(_, m)| m.media == "audio")
        };
        let mut clear = None;
        let mut srtp_without_keys = false;
        for (i, m) in audio() {
            if parse_port(m.port)? == 0 {
                continue;
            }
            match m.transport() {
                Some(Transport::Srtp) if !m.usable_crypto().is_empty() => return Ok(i),
                Some(Transport::Srtp) => srtp_without_keys = true,
                Some(Transport::Rtp) => clear = clear.or(Some(i)),
                None => {}
            }
        }
        if let Some(i) = clear {
            Ok(i)
        } else if audio().next().is_none() {
            Err(SdpError::NoAudio)
        } else if srtp_without_keys {
            Err(SdpError::NoUsableCrypto)
        } else if audio().any(|(_, m)| parse_port(m.port) == Ok(0)) {
            Err(SdpError::Rejected)
        } else {
            Err(SdpError::UnsupportedTransport)
        }
    }

    fn audio_offer(&self, index: usize) -> Result<AudioOffer, SdpError> {
        let m = self.media.get(index).ok_or(SdpError::NoAudio)?;
        let connection = m
            .connection
            .or(self.connection)
            .ok_or(SdpError::NoConnection)?;
        let addr = parse_connection(connection)?;
        let port = parse_port(m.port)?;
        let transport = m.transport().ok_or(SdpError::UnsupportedTransport)?;
        let crypto = match transport {
            Transport::Srtp => m.usable_crypto(),
            Transport::Rtp => Vec::new(),
        };
        let mut laws = Vec::with_capacity(2);
        let mut payload_types = Vec::with_capacity(2);
        let mut telephone_event = None;
        for pt in m
            .formats
            .iter()
            .filter_map(|f| f.parse::<u8>().ok())
            .filter(|pt| *pt < 128)
        {
            let rtpmap = m.rtpmaps.iter().find(|(n, _)| *n == pt).map(|(_, e)| *e);
            let law = match rtpmap {
                Some(encoding) => {
                    let (name, clock, channels) = split_encoding(encoding);
                    if name.eq_ignore_ascii_case("telephone-event") && clock == "8000" {
                        telephone_event = telephone_event.or(Some(pt));
                    }
                    Law::from_encoding_name(name)
                        .filter(|_| clock == "8000" && matches!(channels, None | Some("1")))
                }
                None => Law::from_payload_type(pt),
            };
            if let Some(law) = law
                && !laws.contains(&law)
            {
                laws.push(law);
                payload_types.push(pt);
            }
        }
        Ok(AudioOffer {
            addr,
            port,
            laws,
            payload_types,
            telephone_event,
            direction: m
                .direction
                .or(self.direction)
                .unwrap_or(Direction::SendRecv),
            ptime: m.ptime.or(self.ptime),
            transport,
            crypto,
        })
    }
}

/// Applies a direction or `ptime` attribute, allowed at session and media level; false for
/// any other attribute.
fn common_attribute(
    direction: &mut Option<Direction>,
    ptime: &mut Option<u32>,
    name: &str,
    arg: &str,
) -> bool {
    if let Some(d) = Direction::from_attr(name) {
        *direction = Some(d);
        true
    } else if name == "ptime" {
        *ptime = parse_ptime(arg).or(*ptime);
        true
    } else {
        false
    }
}

/// The port of `<port>[/<number of ports>]`.
fn parse_port(field: &str) -> Result<u16, SdpError> {
    let port = field.split('/').next().unwrap_or(field);
    port.parse().map_err(|_| SdpError::BadMediaLine)
}

/// `IN IP4 <addr>[/<ttl>[/<n>]]` or `IN IP6 <addr>[/<n>]`.
fn parse_connection(value: &str) -> Result<IpAddr, SdpError> {
    let mut fields = value.split_ascii_whitespace();
    let (Some("IN"), Some(family), Some(addr)) = (fields.next(), fields.next(), fields.next())
    else {
        return Err(SdpError::BadConnection);
    };
    let addr = addr.split('/').next().unwrap_or(addr);
    let ip: IpAddr = addr.parse().map_err(|_| SdpError::BadConnection)?;
    match (family, ip) {
        ("IP4", IpAddr::V4(_)) | ("IP6", IpAddr::V6(_)) => Ok(ip),
        _ => Err(SdpError::BadConnection),
    }
}

/// `a=ptime` is whole milliseconds (RFC 4566 §6); some agents write a fraction.
fn parse_ptime(arg: &str) -> Option<u32> {
    let arg = arg.trim();
    arg.split('.')
        .next()
        .unwrap_or(arg)
        .parse()
        .ok()
        .filter(|ms| *ms > 0)
}

/// `PCMU/8000[/1]` → (name, clock, channels).
fn split_encoding(encoding: &str) -> (&str, &str, Option<&str>) {
    let mut parts = encoding.split('/');
    let name = parts.next().unwrap_or_default();
    let clock = parts.next().unwrap_or_default();
    (name, clock, parts.next())
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::srtp::{MasterKey, Suite};

    /// SIPp's built-in `uac` scenario offer.
    const SIPP: &[u8] = b"v=0\r\n\
        o=user1 53655765 2353687637 IN IP4 127.0.0.1\r\n\
        s=-\r\n\
        c=IN IP4 127.0.0.1\r\n\
        t=0 0\r\n\
        m=audio 6000 RTP/AVP 0\r\n\
        a=rtpmap:0 PCMU/8000\r\n";

    /// A linphone/baresip-like offer: several codecs, dynamic PCMA, DTMF events, held.
    const SOFTPHONE: &[u8] = b"v=0\r\n\
        o=alice 1234 5678 IN IP4 192.0.2.10\r\n\
        s=Talk\r\n\
        c=IN IP4 192.0.2.10\r\n\
        t=0 0\r\n\
        a=rtcp-xr:rcvr-rtt=all:10000 stat-summary=loss,dup,jitt,TTL voip-metrics\r\n\
        m=audio 7078 RTP/AVP 96 97 98 101 0\r\n\
        c=IN IP4 192.0.2.20\r\n\
        a=rtpmap:96 opus/48000/2\r\n\
        a=fmtp:96 useinbandfec=1\r\n\
        a=rtpmap:97 speex/16000\r\n\
        a=rtpmap:98 pcma/8000\r\n\
        a=rtpmap:101 telephone-event/8000\r\n\
        a=fmtp:101 0-16\r\n\
        a=ptime:20\r\n\
        a=sendonly\r\n\
        m=video 9078 RTP/AVP 99\r\n\
        a=rtpmap:99 VP8/90000\r\n";

    #[test]
    fn sipp_default_offer() {
        let offer = parse_audio(SIPP).expect("valid offer");
        assert_eq!(offer.addr, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(offer.port, 6000);
        assert_eq!(offer.laws, [Law::Pcmu]);
        assert_eq!(offer.payload_types, [0]);
        assert_eq!(offer.telephone_event, None);
        assert_eq!(offer.direction, Direction::SendRecv);
        assert_eq!(offer.ptime, None);
        assert!(!offer.is_hold());
        assert_eq!(negotiate(&offer, Law::Pcmu), Ok(Law::Pcmu));
        assert_eq!(negotiate(&offer, Law::Pcma), Ok(Law::Pcmu));
        assert_eq!(payload_type_for(&offer, Law::Pcmu), Some(0));
        assert_eq!(payload_type_for(&offer, Law::Pcma), None);
    }

    #[test]
    fn softphone_offer_with_dynamic_types() {
        let offer = parse_audio(SOFTPHONE).expect("valid offer");
        assert_eq!(
            offer.addr,
            "192.0.2.20".parse::<IpAddr>().expect("ip"),
            "media-level c="
        );
        assert_eq!(offer.port, 7078);
        assert_eq!(offer.laws, [Law::Pcma, Law::Pcmu]);
        assert_eq!(offer.payload_types, [98, 0]);
        assert_eq!(offer.telephone_event, Some(101));
        assert_eq!(offer.direction, Direction::SendOnly);
        assert_eq!(offer.ptime, Some(20));
        assert!(offer.is_hold());
        assert_eq!(negotiate(&offer, Law::Pcmu), Ok(Law::Pcmu));
        assert_eq!(negotiate(&offer, Law::Pcma), Ok(Law::Pcma));
        assert_eq!(payload_type_for(&offer, Law::Pcma), Some(98));
    }

    #[test]
    fn pcma_only_offer_is_transcoded() {
        let body = b"v=0\nc=IN IP4 10.0.0.1\nm=audio 4000 RTP/AVP 8 101\na=rtpmap:101 telephone-event/8000\n";
        let offer = parse_audio(body).expect("valid offer");
        assert_eq!(offer.laws, [Law::Pcma]);
        assert_eq!(offer.telephone_event, Some(101));
        assert_eq!(negotiate(&offer, Law::Pcmu), Ok(Law::Pcma));
    }

    #[test]
    fn no_g711_means_no_common_codec() {
        let body = b"v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 4000 RTP/AVP 18 96\r\na=rtpmap:96 opus/48000/2\r\n";
        let offer = parse_audio(body).expect("valid offer");
        assert!(offer.laws.is_empty());
        assert_eq!(negotiate(&offer, Law::Pcmu), Err(SdpError::NoCommonCodec));
    }

    #[test]
    fn wrong_clock_or_channels_are_not_g711() {
        let body = b"v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 4000 RTP/AVP 96 97 0\r\n\
            a=rtpmap:96 PCMU/16000\r\na=rtpmap:97 PCMA/8000/2\r\na=rtpmap:0 PCMU/8000/1\r\n";
        let offer = parse_audio(body).expect("valid offer");
        assert_eq!(offer.laws, [Law::Pcmu]);
        assert_eq!(offer.payload_types, [0]);
    }

    #[test]
    fn port_zero_is_rejected() {
        let body = b"v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 0 RTP/AVP 0\r\n";
        assert_eq!(parse_audio(body), Err(SdpError::Rejected));
    }

    #[test]
    fn structural_errors() {
        assert_eq!(parse_audio(b""), Err(SdpError::NotSdp));
        assert_eq!(parse_audio(b"hello"), Err(SdpError::NotSdp));
        assert_eq!(
            parse_audio(b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=video 5000 RTP/AVP 96\r\n"),
            Err(SdpError::NoAudio)
        );
        assert_eq!(
            parse_audio(b"v=0\r\nm=audio 5000 RTP/AVP 0\r\n"),
            Err(SdpError::NoConnection)
        );
        assert_eq!(
            parse_audio(b"v=0\r\nc=IN IP4 pbx.example.com\r\nm=audio 5000 RTP/AVP 0\r\n"),
            Err(SdpError::BadConnection)
        );
        assert_eq!(
            parse_audio(b"v=0\r\nc=IN IP6 1.2.3.4\r\nm=audio 5000 RTP/AVP 0\r\n"),
            Err(SdpError::BadConnection)
        );
        assert_eq!(
            parse_audio(b"v=0\r\nm=audio\r\n"),
            Err(SdpError::BadMediaLine)
        );
        assert_eq!(
            parse_audio(b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio x RTP/AVP 0\r\n"),
            Err(SdpError::BadMediaLine)
        );
        assert_eq!(
            parse_audio(b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 5000 RTP/SAVP 0\r\n"),
            Err(SdpError::NoUsableCrypto)
        );
        assert_eq!(
            parse_audio(b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 5000 UDP/TLS/RTP/SAVP 0\r\n"),
            Err(SdpError::UnsupportedTransport)
        );
    }

    #[test]
    fn skips_srtp_and_rejected_streams_for_a_usable_one() {
        let body = b"v=0\r\nc=IN IP4 1.2.3.4\r\n\
            m=audio 5000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:x\r\n\
            m=audio 0 RTP/AVP 0\r\n\
            m=audio 5004/2 RTP/AVP 8\r\n";
        let offer = parse_audio(body).expect("usable third stream");
        assert_eq!(
            (offer.port, offer.laws.as_slice()),
            (5004, &[Law::Pcma][..])
        );
    }

    #[test]
    fn hold_forms() {
        let body = b"v=0\r\nc=IN IP4 0.0.0.0\r\na=inactive\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n";
        let offer = parse_audio(body).expect("hold offer");
        assert!(offer.addr.is_unspecified());
        assert_eq!(
            offer.direction,
            Direction::Inactive,
            "session-level direction"
        );
        assert!(offer.is_hold());
        let body =
            b"v=0\r\nc=IN IP4 0.0.0.0\r\na=inactive\r\nm=audio 6000 RTP/AVP 0\r\na=sendonly\r\n";
        assert_eq!(
            parse_audio(body).expect("hold").direction,
            Direction::SendOnly
        );
    }

    #[test]
    fn ipv6_and_multicast_connection_forms() {
        let body = b"v=0\r\nc=IN IP6 2001:db8::1\r\nm=audio 6000 RTP/AVPF 0\r\n";
        assert_eq!(
            parse_audio(body).expect("v6").addr,
            "2001:db8::1".parse::<IpAddr>().expect("ip")
        );
        let body = b"v=0\r\nc=IN IP4 224.2.36.42/127\r\nm=audio 6000 RTP/AVP 0\r\n";
        assert_eq!(
            parse_audio(body).expect("mc").addr,
            "224.2.36.42".parse::<IpAddr>().expect("ip")
        );
    }

    #[test]
    fn directions_reverse() {
        assert_eq!(Direction::SendOnly.reversed(), Direction::RecvOnly);
        assert_eq!(Direction::RecvOnly.reversed(), Direction::SendOnly);
        assert_eq!(Direction::SendRecv.reversed(), Direction::SendRecv);
        assert_eq!(Direction::Inactive.reversed(), Direction::Inactive);
        for d in [
            Direction::SendRecv,
            Direction::SendOnly,
            Direction::RecvOnly,
            Direction::Inactive,
        ] {
            assert_eq!(Direction::from_attr(d.as_attr()), Some(d));
        }
    }

    fn params(law: Law, direction: Direction) -> SessionParams {
        SessionParams {
            ip: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
            port: 30000,
            session_id: 42,
            version: 1,
            law,
            direction,
            crypto: None,
        }
    }

    #[test]
    fn session_is_well_formed_and_parses_back() {
        let offer = parse_audio(SOFTPHONE).expect("valid offer");
        let law = negotiate(&offer, Law::Pcma).expect("common law");
        let pt = payload_type_for(&offer, law).expect("offered");
        let p = params(law, offer.direction.reversed());
        let body = session(&p, pt);
        let text = std::str::from_utf8(&body).expect("ascii");
        assert_eq!(
            text,
            "v=0\r\no=trustring 42 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=audio 30000 RTP/AVP 98\r\na=rtpmap:98 PCMA/8000\r\na=ptime:20\r\na=recvonly\r\n"
        );
        let back = parse_audio(&body).expect("own SDP parses");
        assert_eq!(back.laws, [Law::Pcma]);
        assert_eq!(back.payload_types, [98]);
        assert_eq!(back.direction, Direction::RecvOnly);
        assert_eq!(back.port, 30000);

        let with_events =
            session_with_events(&params(Law::Pcmu, Direction::SendRecv), 0, Some(101));
        let back = parse_audio(&with_events).expect("parses");
        assert_eq!(
            (back.laws.as_slice(), back.telephone_event),
            (&[Law::Pcmu][..], Some(101))
        );
    }

    #[test]
    fn answer_mirrors_every_media_line() {
        let p = params(Law::Pcmu, Direction::RecvOnly);
        let body = answer(SOFTPHONE, &p, 0, Some(101)).expect("answerable");
        let text = std::str::from_utf8(&body).expect("ascii");
        let m_lines: Vec<&str> = text.lines().filter(|l| l.starts_with("m=")).collect();
        assert_eq!(
            m_lines,
            ["m=audio 30000 RTP/AVP 0 101", "m=video 0 RTP/AVP 99"]
        );
        assert!(text.ends_with("m=video 0 RTP/AVP 99\r\n"));
        let back = parse_audio(&body).expect("parses");
        assert_eq!(back.telephone_event, Some(101));
        assert_eq!(
            answer(b"v=0\r\nm=video 1 RTP/AVP 0\r\n", &p, 0, None),
            Err(SdpError::NoAudio)
        );
    }

    /// A caller's SRTP key (RFC 4568's example key) and the gateway's.
    const CALLER_KEY: &str = "WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz";

    /// A baresip-like SRTP offer: an AEAD suite we do not speak first, then the two AES-CM
    /// ones, an unusable line (MKI) between them.
    fn srtp_offer() -> String {
        format!(
            "v=0\r\no=bob 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=audio 7000 RTP/SAVP 8 0 101\r\n\
             a=rtpmap:101 telephone-event/8000\r\n\
             a=crypto:1 AEAD_AES_256_GCM inline:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\r\n\
             a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:{CALLER_KEY}|2^20|1:4\r\n\
             a=crypto:3 AES_CM_128_HMAC_SHA1_32 inline:{CALLER_KEY}|2^31\r\n\
             a=crypto:4 AES_CM_128_HMAC_SHA1_80 inline:{CALLER_KEY}\r\n\
             a=sendrecv\r\n\
             m=video 9000 RTP/SAVP 99\r\n"
        )
    }

    #[test]
    fn srtp_offer_is_answered_savp_with_our_key_and_the_offers_tag() {
        let body = srtp_offer();
        let offer = parse_audio(body.as_bytes()).expect("usable SRTP offer");
        assert_eq!(offer.transport, Transport::Srtp);
        let usable: Vec<(u32, Suite)> = offer.crypto.iter().map(|c| (c.tag, c.suite)).collect();
        assert_eq!(
            usable,
            [
                (3, Suite::AesCm128HmacSha1_32),
                (4, Suite::AesCm128HmacSha1_80)
            ],
            "unknown suites and MKIs skipped, order kept"
        );
        assert_eq!(offer.laws, [Law::Pcma, Law::Pcmu]);
        assert_eq!((offer.port, offer.telephone_event), (7000, Some(101)));
        let theirs = offer.crypto[0].clone();
        let ours = MasterKey::from_bytes(&[0x42; 30]);
        let mut p = params(Law::Pcmu, Direction::SendRecv);
        p.crypto = Some(theirs.answer(ours.clone()));
        let answer = answer(body.as_bytes(), &p, 0, None).expect("answerable");
        let text = std::str::from_utf8(&answer).expect("ascii");
        let m_lines: Vec<&str> = text.lines().filter(|l| l.starts_with("m=")).collect();
        assert_eq!(
            m_lines,
            ["m=audio 30000 RTP/SAVP 0", "m=video 0 RTP/SAVP 99"]
        );
        let crypto: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("a=crypto:"))
            .collect();
        assert_eq!(
            crypto,
            ["a=crypto:3 AES_CM_128_HMAC_SHA1_32 inline:QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJC"],
            "one line: the offer's tag and suite, our key"
        );
        assert!(
            !text.contains(CALLER_KEY),
            "the caller's key is never echoed"
        );
        let back = parse_audio(&answer).expect("our answer parses");
        assert_eq!(back.transport, Transport::Srtp);
        assert_eq!(back.crypto, [theirs.answer(ours)]);
        // Our own offer (a hold re-INVITE) carries the same line.
        let again = parse_audio(&session(&p, 0)).expect("parses");
        assert_eq!((again.transport, again.crypto.len()), (Transport::Srtp, 1));
    }

    #[test]
    fn clear_rtp_offer_is_answered_clear() {
        // a=crypto means nothing on RTP/AVP: ignored, and the answer stays clear.
        let body = format!(
            "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 7000 RTP/AVP 0\r\n\
             a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{CALLER_KEY}\r\n"
        );
        let offer = parse_audio(body.as_bytes()).expect("usable");
        assert_eq!((offer.transport, offer.crypto.len()), (Transport::Rtp, 0));
        let p = params(Law::Pcmu, Direction::SendRecv);
        let answer = answer(body.as_bytes(), &p, 0, None).expect("answerable");
        let text = std::str::from_utf8(&answer).expect("ascii");
        assert!(text.contains("m=audio 30000 RTP/AVP 0\r\n"), "{text}");
        assert!(!text.contains("crypto"), "{text}");
        assert_eq!(
            session(&p, 0),
            answer,
            "one stream: the answer is our session"
        );
        // Never answer clear RTP with keys, nor SRTP without.
        let mut keyed = p.clone();
        keyed.crypto = Some(
            Crypto::parse(&format!("1 AES_CM_128_HMAC_SHA1_80 inline:{CALLER_KEY}")).expect("ok"),
        );
        assert_eq!(
            super::answer(body.as_bytes(), &keyed, 0, None),
            Err(SdpError::UnsupportedTransport)
        );
        assert_eq!(
            super::answer(srtp_offer().as_bytes(), &p, 0, None),
            Err(SdpError::NoUsableCrypto)
        );
    }

    #[test]
    fn srtp_without_a_usable_suite_is_refused() {
        for cryptos in [
            "",
            "a=crypto:1 AEAD_AES_128_GCM inline:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\r\n",
            "a=crypto:1 F8_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n",
            "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz UNENCRYPTED_SRTP\r\n",
            "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:c2hvcnQ=\r\n",
        ] {
            let body = format!("v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 7000 RTP/SAVP 0\r\n{cryptos}");
            assert_eq!(
                parse_audio(body.as_bytes()),
                Err(SdpError::NoUsableCrypto),
                "{cryptos}"
            );
            let p = params(Law::Pcmu, Direction::SendRecv);
            assert_eq!(
                answer(body.as_bytes(), &p, 0, None),
                Err(SdpError::NoUsableCrypto)
            );
        }
    }

    #[test]
    fn srtp_is_preferred_over_a_clear_stream_of_the_same_offer() {
        let body = format!(
            "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 6000 RTP/AVP 0\r\n\
             m=audio 6002 RTP/SAVPF 0\r\na=crypto:9 AES_CM_128_HMAC_SHA1_80 inline:{CALLER_KEY}\r\n"
        );
        let offer = parse_audio(body.as_bytes()).expect("usable");
        assert_eq!((offer.port, offer.transport), (6002, Transport::Srtp));
        let mut p = params(Law::Pcmu, Direction::SendRecv);
        p.crypto = Some(offer.crypto[0].answer(MasterKey::from_bytes(&[1; 30])));
        let text = String::from_utf8(answer(body.as_bytes(), &p, 0, None).expect("ok").to_vec())
            .expect("ascii");
        let m_lines: Vec<&str> = text.lines().filter(|l| l.starts_with("m=")).collect();
        assert_eq!(m_lines, ["m=audio 0 RTP/AVP 0", "m=audio 30000 RTP/SAVP 0"]);
    }
}
