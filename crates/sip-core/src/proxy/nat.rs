//! Reaching devices behind NAT (R31): where a registered contact is really reached, keeping
//! NATed UDP bindings alive, RFC 5626 outbound flows and STUN keep-alives.
//!
//! # Where a contact is reached
//! A device behind NAT puts its private address in Contact (`sip:alice@192.168.1.20:5060`)
//! and its REGISTER arrives from the NAT's public address. Dialling the Contact never
//! reaches it. Like Kamailio's `nat_uac_test` + `fix_nated_register`, a contact is reached
//! at the REGISTER's source (over its TCP connection for streams) when
//! - it names an address in the configured private ranges ([`NatConfig::private`], default
//!   RFC 1918, RFC 6598 shared space, IPv6 ULA and link-local), or an unspecified address,
//!   and that is not where the REGISTER came from; or
//! - it names a host we do not resolve; or
//! - it asked for an RFC 5626 flow: a Contact with `reg-id` and `+sip.instance`, or `;ob`
//!   in its URI.
//!
//! The private ranges are a setting so that tests can declare part of 127/8 private and
//! simulate NAT without a packet leaving the machine.
//!
//! # Keeping NATed UDP bindings alive
//! A NAT forgets an idle UDP mapping within tens of seconds. Every
//! [`NatConfig::keepalive`] the registrar sends each NATed UDP binding a stateless OPTIONS
//! (as Kamailio's nathelper `natping`); any response counts as alive. A binding whose
//! [`NatConfig::max_missed`] pings in a row went unanswered is dropped (reported as
//! [`super::Event::BindingRemoved`]), so calls stop forking to a device that is gone.
//!
//! # RFC 5626 outbound
//! The registrar honours `reg-id` + `+sip.instance`: the binding is the flow the REGISTER
//! came over, a new REGISTER with the same instance and reg-id replaces it, the 200 carries
//! `Require: outbound` and `Flow-Timer` (the client's keep-alive interval) when the client
//! said `Supported: outbound`. Clients keep flows alive themselves: a double-CRLF ping on
//! TCP (answered by the transport), a STUN Binding request on UDP (answered here,
//! [`stun_response`]). A flow whose connection closes is dropped: the client registers a
//! new one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// An IP network: an address and a prefix length (`10.0.0.0/8`, `fc00::/7`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    net: IpAddr,
    prefix: u8,
}

impl IpRange {
    /// Whether `ip` is inside this range (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for IpRange {
    type Err = String;

    /// `ADDR/PREFIX`, or a bare address (a range of one).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = s.trim().split_once('/').unwrap_or((s.trim(), ""));
        let net: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP range (ADDR/PREFIX)"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = if prefix.is_empty() {
            max
        } else {
            prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0..={max}"))?
        };
        Ok(Self { net, prefix })
    }
}

impl std::fmt::Display for IpRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// The default private ranges: RFC 1918, RFC 6598 (carrier-grade NAT), IPv6 unique local
/// (RFC 4193) and link-local.
pub const DEFAULT_PRIVATE_RANGES: &str =
    "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,100.64.0.0/10,fc00::/7,fe80::/10";

/// Parses a comma-separated list of ranges (an empty string is no range).
pub fn parse_ranges(s: &str) -> Result<Vec<IpRange>, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(str::parse)
        .collect()
}

/// A list of ranges, written comma-separated (the `--private-ranges` setting).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IpRanges(pub Vec<IpRange>);

impl std::str::FromStr for IpRanges {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_ranges(s).map(Self)
    }
}

/// NAT handling settings.
#[derive(Debug, Clone)]
pub struct NatConfig {
    /// Addresses that are never reachable from here when a REGISTER came from elsewhere.
    pub private: Vec<IpRange>,
    /// How often NATed UDP bindings are pinged (also the `Flow-Timer` given to RFC 5626
    /// clients); `None`: never.
    pub keepalive: Option<Duration>,
    /// Pings in a row without an answer after which a binding is dropped.
    pub max_missed: u8,
}

impl Default for NatConfig {
    /// [`DEFAULT_PRIVATE_RANGES`], a ping every 25 s (under the 30 s many NATs keep an idle
    /// UDP mapping), dropped after 3 unanswered.
    fn default() -> Self {
        Self {
            private: parse_ranges(DEFAULT_PRIVATE_RANGES).unwrap_or_default(),
            keepalive: Some(Duration::from_secs(25)),
            max_missed: 3,
        }
    }
}

impl NatConfig {
    /// Whether `ip` is in a private range, or unspecified (`0.0.0.0`, `::`).
    pub fn is_private(&self, ip: IpAddr) -> bool {
        ip.is_unspecified() || self.private.iter().any(|r| r.contains(ip))
    }
}

const STUN_MAGIC: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
const STUN_BINDING_REQUEST: [u8; 2] = [0x00, 0x01];
const STUN_BINDING_SUCCESS: [u8; 2] = [0x01, 0x01];
const XOR_MAPPED_ADDRESS: [u8; 2] = [0x00, 0x20];

/// Whether a datagram is STUN (RFC 5389 §6: top two bits zero and the magic cookie), which a
/// SIP message never is (it starts with a letter).
pub fn is_stun(data: &[u8]) -> bool {
    data.len() >= 20 && data[0] & 0xc0 == 0 && data[4..8] == STUN_MAGIC
}

/// The Binding success response to a STUN Binding request from `source` (RFC 5389 §7.3,
/// RFC 5626 §4.4.2: the client learns its public address and keeps its NAT mapping), with
/// XOR-MAPPED-ADDRESS. `None` for anything else (other STUN messages are ignored).
pub fn stun_response(data: &[u8], source: SocketAddr) -> Option<Vec<u8>> {
    if !is_stun(data) || data[0..2] != STUN_BINDING_REQUEST {
        return None;
    }
    let declared = usize::from(u16::from_be_bytes([data[2], data[3]]));
    if declared % 4 != 0 || declared + 20 != data.len() {
        return None;
    }
    let txn = &data[8..20];
    let port = source.port() ^ 0x2112;
    let mut attr = Vec::with_capacity(20);
    attr.extend_from_slice(&XOR_MAPPED_ADDRESS);
    match source.ip() {
        IpAddr::V4(ip) => {
            attr.extend_from_slice(&8u16.to_be_bytes());
            attr.extend_from_slice(&[0, 0x01]);
            attr.extend_from_slice(&port.to_be_bytes());
            let x = u32::from(ip) ^ u32::from_be_bytes(STUN_MAGIC);
            attr.extend_from_slice(&x.to_be_bytes());
        }
        IpAddr::V6(ip) => {
            attr.extend_from_slice(&20u16.to_be_bytes());
            attr.extend_from_slice(&[0, 0x02]);
            attr.extend_from_slice(&port.to_be_bytes());
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&STUN_MAGIC);
            key[4..].copy_from_slice(txn);
            let x = u128::from(ip) ^ u128::from_be_bytes(key);
            attr.extend_from_slice(&x.to_be_bytes());
        }
    }
    let mut out = Vec::with_capacity(20 + attr.len());
    out.extend_from_slice(&STUN_BINDING_SUCCESS);
    out.extend_from_slice(&u16::try_from(attr.len()).unwrap_or(0).to_be_bytes());
    out.extend_from_slice(&STUN_MAGIC);
    out.extend_from_slice(txn);
    out.extend_from_slice(&attr);
    Some(out)
}

/// The address in a STUN Binding success response (for tests of [`stun_response`]).
pub fn stun_mapped_address(resp: &[u8]) -> Option<SocketAddr> {
    if !is_stun(resp) || resp[0..2] != STUN_BINDING_SUCCESS || resp.len() < 32 {
        return None;
    }
    let attr = &resp[20..];
    if attr[0..2] != XOR_MAPPED_ADDRESS {
        return None;
    }
    let port = u16::from_be_bytes([attr[6], attr[7]]) ^ 0x2112;
    match attr[5] {
        0x01 => {
            let x = u32::from_be_bytes([attr[8], attr[9], attr[10], attr[11]]);
            let ip = Ipv4Addr::from(x ^ u32::from_be_bytes(STUN_MAGIC));
            Some(SocketAddr::new(IpAddr::V4(ip), port))
        }
        0x02 if attr.len() >= 24 => {
            let mut b = [0u8; 16];
            b.copy_from_slice(&attr[8..24]);
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&STUN_MAGIC);
            key[4..].copy_from_slice(&resp[8..20]);
            let ip = Ipv6Addr::from(u128::from_be_bytes(b) ^ u128::from_be_bytes(key));
            Some(SocketAddr::new(IpAddr::V6(ip), port))
        }
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let cfg = NatConfig::default();
        for ip in [
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.20",
            "100.64.0.1",
        ] {
            assert!(cfg.is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "172.32.0.1",
            "8.8.8.8",
            "127.0.0.1",
            "100.128.0.1",
            "2001:db8::1",
        ] {
            assert!(!cfg.is_private(ip.parse().unwrap()), "{ip}");
        }
        assert!(cfg.is_private("0.0.0.0".parse().unwrap()));
        assert!(cfg.is_private("fd00::1".parse().unwrap()));
        assert!(cfg.is_private("::ffff:192.168.0.1".parse().unwrap()));
        let test = parse_ranges("127.0.0.64/26").unwrap();
        assert!(test[0].contains("127.0.0.70".parse().unwrap()));
        assert!(!test[0].contains("127.0.0.1".parse().unwrap()));
        assert!(!test[0].contains("127.0.0.128".parse().unwrap()));
        assert_eq!(test[0].to_string(), "127.0.0.64/26");
        assert!(parse_ranges("10.0.0.0/33").is_err());
        assert!(parse_ranges("nonsense").is_err());
        assert_eq!(parse_ranges("").unwrap(), []);
        assert!(parse_ranges("0.0.0.0/0").unwrap()[0].contains("1.2.3.4".parse().unwrap()));
        assert_eq!("10.0.0.1".parse::<IpRange>().unwrap().prefix, 32);
    }

    #[test]
    fn stun_binding() {
        let mut req = vec![0x00, 0x01, 0x00, 0x00];
        req.extend_from_slice(&STUN_MAGIC);
        req.extend_from_slice(&[7; 12]);
        assert!(is_stun(&req));
        for src in ["192.0.2.7:40123", "[2001:db8::9]:5060"] {
            let src: SocketAddr = src.parse().unwrap();
            let resp = stun_response(&req, src).expect("a response");
            assert_eq!(&resp[8..20], &[7; 12], "same transaction id");
            assert_eq!(stun_mapped_address(&resp), Some(src));
        }
        assert!(!is_stun(b"OPTIONS sip:a@b SIP/2.0\r\n\r\n"));
        let mut bad = req.clone();
        bad[3] = 4; // declares an attribute that is not there
        assert_eq!(stun_response(&bad, "1.2.3.4:5".parse().unwrap()), None);
        assert_eq!(
            stun_response(&req[..19], "1.2.3.4:5".parse().unwrap()),
            None
        );
    }
}
