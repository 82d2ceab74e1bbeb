//! `trustring gateway`: the IP->PSTN gateway (crate `gateway`) as a process.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

/// The PSTN side's G.711 law.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LawArg {
    /// µ-law (North America, Japan).
    Pcmu,
    /// A-law (Europe, most of the world).
    Pcma,
}

/// `trustring gateway` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct GatewayArgs {
    /// SIP trunk listen address (UDP): the server's `--gateway`.
    #[arg(long, default_value = "127.0.0.1:5070", env = "TRUSTRING_GW_SIP")]
    sip: SocketAddr,
    /// Where phone lines attach (TCP, TR-ISUP: `trustring device run --attach`,
    /// `trustring line --attach`).
    #[arg(long, default_value = "127.0.0.1:5071", env = "TRUSTRING_GW_LINES")]
    lines: SocketAddr,
    /// HTTP address of `GET /metrics` (Prometheus text; lines, calls by outcome, refused
    /// INVITEs, TR-ISUP messages, RTP packets). Public like any scrape target: bind it to a
    /// management address.
    #[arg(long, default_value = "127.0.0.1:5072", env = "TRUSTRING_GW_HTTP")]
    http: SocketAddr,
    /// IP address for RTP (bound and written into SDP).
    #[arg(long, default_value = "127.0.0.1", env = "TRUSTRING_GW_MEDIA_IP")]
    media_ip: IpAddr,
    /// Addresses allowed to send INVITEs (the server's); repeat the flag for more.
    #[arg(
        long = "allow",
        default_value = "127.0.0.1",
        env = "TRUSTRING_GW_ALLOW",
        value_delimiter = ','
    )]
    allow: Vec<IpAddr>,
    /// File holding the secret shared with the server (the server's `DATA/trunk-secret`);
    /// `TRUSTRING_TRUNK_SECRET` overrides it.
    #[arg(long, default_value = "./trustring-data/trunk-secret")]
    trunk_secret_file: PathBuf,
    /// G.711 law of the PSTN side; an IP caller offering only the other law is transcoded.
    #[arg(long, value_enum, default_value_t = LawArg::Pcmu)]
    law: LawArg,
    /// Simulate the carrier's voicemail: when the phone is busy, not attached or does not
    /// answer, the network answers after this many ms, without a trust proof.
    #[arg(long)]
    voicemail_after_ms: Option<u64>,
    /// Most PSTN legs one number may take in any minute (toll-fraud cap); more get 403.
    #[arg(long, default_value_t = 20)]
    max_calls_per_minute: u32,
    /// Most answered PSTN minutes one number may use per UTC day (spend cap; default none).
    #[arg(long)]
    max_minutes_per_day: Option<u64>,
    /// How long a line may ring, seconds.
    #[arg(long, default_value_t = 60)]
    ring_timeout_secs: u64,
    /// Data directory for the gateway's own leg records (`trustring cdr verify --data`).
    #[arg(
        long,
        default_value = "./trustring-gateway-data",
        env = "TRUSTRING_GW_DATA"
    )]
    data: PathBuf,
}

fn trunk_secret(file: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    if let Ok(s) = std::env::var("TRUSTRING_TRUNK_SECRET")
        && !s.is_empty()
    {
        return Ok(s.into_bytes());
    }
    let s = std::fs::read_to_string(file).with_context(|| {
        format!(
            "reading the trunk secret {} (start the server with --gateway first, or set TRUSTRING_TRUNK_SECRET)",
            file.display()
        )
    })?;
    let s = s.trim();
    anyhow::ensure!(
        s.len() >= 16,
        "the trunk secret in {} is too short",
        file.display()
    );
    Ok(s.as_bytes().to_vec())
}

pub(crate) async fn run(a: GatewayArgs) -> anyhow::Result<()> {
    let cfg = gateway::GatewayConfig {
        sip: a.sip,
        lines: a.lines,
        media_ip: a.media_ip,
        allow: a.allow,
        trunk_secret: trunk_secret(&a.trunk_secret_file)?,
        law: match a.law {
            LawArg::Pcmu => media::g711::Law::Pcmu,
            LawArg::Pcma => media::g711::Law::Pcma,
        },
        voicemail_after: a.voicemail_after_ms.map(Duration::from_millis),
        ring_timeout: Duration::from_secs(a.ring_timeout_secs.max(1)),
        data: a.data,
        caps: gateway::admission::Caps {
            calls_per_minute: a.max_calls_per_minute.max(1),
            minutes_per_day: a.max_minutes_per_day,
        },
    };
    tracing::info!(?cfg, "starting the gateway");
    let metrics = Arc::new(gateway::GatewayMetrics::new());
    let http = tokio::net::TcpListener::bind(a.http)
        .await
        .with_context(|| format!("binding the metrics address {}", a.http))?;
    let scrape = metrics.clone();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let m = scrape.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    m.render(),
                )
            }
        }),
    );
    let http_addr = http.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(http, app).await });
    let r = gateway::run(cfg, metrics, crate::serve::shutdown_signal(), |b| {
        tracing::info!(sip = %b.sip, lines = %b.lines, metrics = %http_addr, "gateway ready");
    })
    .await
    .context("running the gateway");
    server.abort();
    r
}
