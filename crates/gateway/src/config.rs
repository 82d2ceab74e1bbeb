//! What a gateway is told at start.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use media::g711::Law;

use crate::line_auth::LineAuthority;

/// How lines reach the exchange (R27).
#[derive(Clone)]
pub enum LineSecurity {
    /// TLS 1.2/1.3 with this identity; lines pin its key's fingerprint. The default.
    Tls(Arc<tls::ServerIdentity>),
    /// Plain TCP: signalling, attach proofs and voice in clear, and a line cannot tell the
    /// gateway from a man in the middle (`--danger-plain-lines`).
    Plain,
}

impl std::fmt::Debug for LineSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tls(id) => write!(f, "Tls({})", id.fingerprint),
            Self::Plain => f.write_str("Plain"),
        }
    }
}

/// How the server's SIP trunk reaches the gateway (the `sip_tls` module).
#[derive(Clone)]
pub enum SipSecurity {
    /// SIP over TLS 1.2/1.3 with this identity (the line port's); the server pins its key
    /// and dials. The default.
    Tls(Arc<tls::ServerIdentity>),
    /// Plain UDP: SRTP keys, trust challenges and Trunk-Auth in clear
    /// (`--danger-plain-trunk`).
    Plain,
}

impl std::fmt::Debug for SipSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tls(id) => write!(f, "Tls({})", id.fingerprint),
            Self::Plain => f.write_str("Plain"),
        }
    }
}

/// The gateway's settings (`trustring gateway` flags).
#[derive(Clone)]
pub struct GatewayConfig {
    /// SIP trunk address the server sends phone legs to (TLS over TCP, or UDP).
    pub sip: SocketAddr,
    /// TLS on the SIP trunk (or, explicitly, plain UDP).
    pub sip_security: SipSecurity,
    /// TCP address phone lines attach to (the PSTN side).
    pub lines: SocketAddr,
    /// TLS on the line port (or, explicitly, plain TCP).
    pub line_security: LineSecurity,
    /// Who may attach with which number: the server's trust authority (R29).
    pub authority: Arc<dyn LineAuthority>,
    /// Numbers that may attach as plain PSTN lines (no trusted zone), as long as no enrolled
    /// phone holds them. Any other number must be a phone's, proved by its zone.
    pub plain_lines: Vec<String>,
    /// Address advertised in SDP for RTP, and bound for it.
    pub media_ip: IpAddr,
    /// Sources allowed to send INVITEs (the server's addresses).
    pub allow: Vec<IpAddr>,
    /// The secret shared with the server (`Trunk-Auth`).
    pub trunk_secret: Vec<u8>,
    /// The G.711 law of the PSTN side (every bearer frame to the lines).
    pub law: Law,
    /// The carrier voicemail simulation: when the phone is busy, absent or does not answer,
    /// the network answers the call itself after this delay, without a trust proof, as a
    /// real carrier's voicemail would (the server must treat that as no answer).
    pub voicemail_after: Option<Duration>,
    /// How long a line may ring before the gateway gives up (cause 19, no answer).
    pub ring_timeout: Duration,
    /// Data directory (the leg records' database).
    pub data: PathBuf,
    /// Per-number limits on PSTN legs (toll fraud, spend).
    pub caps: crate::admission::Caps,
}

impl std::fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("sip", &self.sip)
            .field("sip_security", &self.sip_security)
            .field("lines", &self.lines)
            .field("line_security", &self.line_security)
            .field("plain_lines", &self.plain_lines)
            .field("media_ip", &self.media_ip)
            .field("allow", &self.allow)
            .field("law", &self.law)
            .field("voicemail_after", &self.voicemail_after)
            .field("ring_timeout", &self.ring_timeout)
            .field("data", &self.data)
            .field("caps", &self.caps)
            .finish_non_exhaustive()
    }
}
