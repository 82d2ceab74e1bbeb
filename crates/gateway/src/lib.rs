//! trustring's IP->PSTN gateway (SPEC R15–R17): where the phone's leg leaves the IP world.
//!
//! In the patent the mobile leg goes through a media gateway to the PSTN and the phone's
//! switch. `trustring gateway` is that bridge on one machine:
//! - **trunk side** (`trunk_ua`): a SIP back-to-back user agent that takes the server's
//!   phone legs (`INVITE sip:+NUMBER@gateway;user=phone`) after the toll-fraud checks
//!   (`admission`: allow-listed source, `Trunk-Auth` MAC, fresh unused trust challenge),
//!   over SIP over TLS connections the server dials with the gateway's key pinned
//!   (`sip_tls`; plain UDP only behind `--danger-plain-trunk`);
//! - **PSTN side** (`lines`): phone lines attach over TLS (the gateway's key pinned by the
//!   line) and speak TR-ISUP, a small ISUP-like protocol (IAM/ACM/ANM/CPG/REL/RLC,
//!   `docs/isup.md`, crate `pstn`); the trust challenge rides in the IAM and the proof comes
//!   back in ACM/ANM;
//! - **line authentication** ([`line_auth`], R29): a line gets a phone's number only after
//!   that phone's zone proved its key to the server's trust authority (ATC/ATP); a refused
//!   line gets ATR and is closed;
//! - **switching** (`exchange`): SIP <-> ISUP after RFC 3398, hold/retrieve as re-INVITEs,
//!   direct line-to-line PSTN calls, the carrier-voicemail simulation;
//! - **media** (`bridge`): RTP (RFC 3550/3551) <-> 20 ms G.711 frames, with µ-law/A-law
//!   transcoding, 488 when the caller offers no G.711;
//! - **records** (`records`): one hash-chained leg record per call, linked to the server's CDR
//!   by the SIP Call-ID.

pub mod admission;
mod bridge;
mod config;
mod exchange;
pub mod line_auth;
mod lines;
pub mod metrics;
mod records;
mod sip_tls;
pub mod trunk_ua;

use std::sync::Arc;

pub use config::{GatewayConfig, LineSecurity, SipSecurity};
pub use metrics::GatewayMetrics;
use sip_core::transaction::Timers;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A socket could not be bound.
    #[error("binding {what} on {addr}: {source}")]
    Bind {
        /// Which socket.
        what: &'static str,
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The leg record store could not be opened.
    #[error("opening the leg record store: {0}")]
    Store(#[from] store::StoreError),
    /// The line port's TLS configuration was refused.
    #[error("TLS on the line port: {0}")]
    Tls(#[from] tls::TlsError),
    /// The data directory could not be created.
    #[error("creating {path}: {source}")]
    Data {
        /// The directory.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The bound addresses of a running gateway.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// SIP trunk (TLS over TCP, or UDP with a plain trunk).
    pub sip: std::net::SocketAddr,
    /// The fingerprint the server pins for the SIP trunk (`None`: plain UDP trunk).
    pub sip_fingerprint: Option<tls::Fingerprint>,
    /// Line attachment (TCP, TLS unless plain lines were asked for).
    pub lines: std::net::SocketAddr,
    /// The fingerprint lines pin (`None`: plain lines).
    pub lines_fingerprint: Option<tls::Fingerprint>,
}

/// Binds the trunk and line sockets, then runs the gateway until `stop` completes (queued
/// leg records are written before it returns). `on_bound` learns the addresses (for port 0);
/// `metrics` is kept up to date (serve it with [`GatewayMetrics::render`]).
pub async fn run(
    cfg: GatewayConfig,
    metrics: Arc<GatewayMetrics>,
    stop: impl Future<Output = ()>,
    on_bound: impl FnOnce(Bound),
) -> Result<(), GatewayError> {
    std::fs::create_dir_all(&cfg.data).map_err(|source| GatewayError::Data {
        path: cfg.data.clone(),
        source,
    })?;
    // Leg records are signed with the gateway's own key (`DATA/cdr-signing-key`, docs/cdr.md).
    let store =
        store::SqliteStore::open(&cfg.data.join("trustring.db"))?.with_cdr_signing(&cfg.data)?;
    let day_start = records::unix_ms().div_euclid(86_400_000) * 86_400_000;
    let today = store::Store::cdrs(&store, day_start, i64::MAX, None)?;
    let bind_err = |what| {
        let addr = cfg.sip;
        move |source| GatewayError::Bind { what, addr, source }
    };
    let (sip, sip_listener, sip_addr, sip_fingerprint) = match &cfg.sip_security {
        SipSecurity::Plain => {
            let what = "SIP trunk (UDP)";
            let s = tokio::net::UdpSocket::bind(cfg.sip)
                .await
                .map_err(bind_err(what))?;
            let addr = s.local_addr().map_err(bind_err(what))?;
            (exchange::SipSocket::Udp(Arc::new(s)), None, addr, None)
        }
        SipSecurity::Tls(identity) => {
            let what = "SIP trunk (TLS)";
            let l = tokio::net::TcpListener::bind(cfg.sip)
                .await
                .map_err(bind_err(what))?;
            let addr = l.local_addr().map_err(bind_err(what))?;
            let acceptor = tokio_rustls::TlsAcceptor::from(tls::server_config(identity)?);
            (
                exchange::SipSocket::Tls,
                Some((l, acceptor)),
                addr,
                Some(identity.fingerprint),
            )
        }
    };
    let lines = tokio::net::TcpListener::bind(cfg.lines)
        .await
        .map_err(|source| GatewayError::Bind {
            what: "lines (TCP)",
            addr: cfg.lines,
            source,
        })?;
    let lines_addr = lines.local_addr().map_err(|source| GatewayError::Bind {
        what: "lines (TCP)",
        addr: cfg.lines,
        source,
    })?;
    let (acceptor, lines_fingerprint) = match &cfg.line_security {
        LineSecurity::Tls(identity) => (
            Some(tokio_rustls::TlsAcceptor::from(tls::server_config(
                identity,
            )?)),
            Some(identity.fingerprint),
        ),
        LineSecurity::Plain => (None, None),
    };
    on_bound(Bound {
        sip: sip_addr,
        sip_fingerprint,
        lines: lines_addr,
        lines_fingerprint,
    });
    let advertised = if sip_addr.ip().is_unspecified() {
        std::net::SocketAddr::new(cfg.media_ip, sip_addr.port())
    } else {
        sip_addr
    };
    let ua = trunk_ua::TrunkUa::new(
        trunk_ua::UaConfig {
            local: advertised,
            tls: sip_fingerprint.is_some(),
            timers: Timers::default(),
            user_agent: concat!("trustring-gateway/", env!("CARGO_PKG_VERSION")).into(),
        },
        std::time::Instant::now(),
    );
    let recorder = records::Recorder::start(Box::new(store), metrics.clone());
    // Bounded: line readers wait for room (back-pressure onto their sockets).
    let (line_tx, line_rx) = tokio::sync::mpsc::channel(lines::EXCHANGE_QUEUE);
    let (auth_tx, auth_rx) = tokio::sync::mpsc::channel(256);
    let accepting = tokio::spawn(lines::accept(lines, acceptor, line_tx, metrics.clone()));
    let (sip_accepting, sip_rx) = match sip_listener {
        Some((listener, acceptor)) => {
            // Bounded: connection readers wait for room (back-pressure onto their sockets).
            let (tx, rx) = tokio::sync::mpsc::channel(sip_tls::EXCHANGE_QUEUE);
            let allow: Arc<[std::net::IpAddr]> = cfg.allow.clone().into();
            let task = tokio::spawn(sip_tls::accept(listener, acceptor, allow, tx));
            (Some(task), Some(rx))
        }
        None => (None, None),
    };
    let mut exchange = exchange::Exchange::new(cfg, ua, sip, recorder, metrics, auth_tx);
    exchange.preload_spend(&today);
    exchange.run(line_rx, auth_rx, sip_rx, stop).await;
    accepting.abort();
    if let Some(t) = sip_accepting {
        t.abort();
    }
    Ok(())
}
