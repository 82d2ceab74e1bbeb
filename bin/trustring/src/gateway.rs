//! `trustring gateway`: the IP->PSTN gateway (crate `gateway`) as a process.
//!
//! The line port and the SIP trunk speak TLS with one identity kept under `DATA/tls/` (made
//! on first start; `--tls-cert/--tls-key` for the operator's own); its fingerprint is printed
//! at start with the attach URI phones use (`trustring-line://HOST:PORT?fp=sha256:…`) and the
//! `serve --gateway ADDR --gateway-fp sha256:…` the server needs to dial the trunk. Plain
//! TCP lines only with `--danger-plain-lines`, a plain UDP trunk only with
//! `--danger-plain-trunk`.
//!
//! Line authentication (R29) asks the server's trust authority over its admin listener
//! (`--server-api`), each request MACed under the trunk secret ([`HttpAuthority`], the
//! server's side is `api::gateway_lines`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use api::gateway_lines::{
    self as channel, ChallengeRequest, ChallengeResponse, HolderRequest, HolderResponse,
    VerifyRequest,
};
use gateway::line_auth::{AttachLookup, AuthorityError, LineAuthority};

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
    /// SIP trunk listen address (SIP over TLS, the server dials it with the gateway's key
    /// pinned): the server's `--gateway`, with `--gateway-fp` the fingerprint printed at
    /// start.
    #[arg(long, default_value = "127.0.0.1:5070", env = "TRUSTRING_GW_SIP")]
    sip: SocketAddr,
    /// Where phone lines attach (TR-ISUP over TLS: `trustring device run --attach`,
    /// `trustring line --attach`).
    #[arg(long, default_value = "127.0.0.1:5071", env = "TRUSTRING_GW_LINES")]
    lines: SocketAddr,
    /// The server's admin listener (`trustring serve --http`), where the gateway asks the
    /// server's trust authority whether a line holds a phone's zone (requests MACed under
    /// the trunk secret). `http://` only on loopback; otherwise `https://` with
    /// --server-api-fp.
    #[arg(
        long,
        default_value = "http://127.0.0.1:8080",
        env = "TRUSTRING_GW_SERVER_API"
    )]
    server_api: String,
    /// With an `https://` --server-api: the server's TLS key fingerprint to pin
    /// (sha256:HEX, as `trustring serve` logs it).
    #[arg(long, value_name = "sha256:HEX", env = "TRUSTRING_GW_SERVER_API_FP")]
    server_api_fp: Option<String>,
    /// A number that may attach as a plain PSTN line (no trusted zone), as long as no
    /// enrolled phone holds it; repeat the flag, or separate with commas. Any other number
    /// attaches only with the proof of its phone's zone key.
    #[arg(long = "plain-line", value_name = "NUMBER", value_delimiter = ',')]
    plain_lines: Vec<pstn::msg::Number>,
    /// Certificate (PEM) of the line port and the SIP trunk; with --tls-key. Default: a
    /// self-signed pair made on first start under DATA/tls/.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of the line port and the SIP trunk; with --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// DANGER: lines attach over plain TCP, without TLS: anyone on the path reads the
    /// calls and the attach proofs, and lines cannot tell the gateway from an impostor.
    /// For tests and old lines on one machine only.
    #[arg(long)]
    danger_plain_lines: bool,
    /// DANGER: the SIP trunk is plain UDP, without TLS (the server run with
    /// --danger-plain-trunk): the SRTP keys in the SDP (`a=crypto`), the trust challenges
    /// and the Trunk-Auth MACs cross in clear. For tests and old servers on one machine only.
    #[arg(long)]
    danger_plain_trunk: bool,
    /// HTTP address of `GET /metrics` (Prometheus text; lines, calls by outcome, refused
    /// INVITEs, TR-ISUP messages, RTP packets). Public like any scrape target: bind it to a
    /// management address.
    #[arg(long, default_value = "127.0.0.1:5072", env = "TRUSTRING_GW_HTTP")]
    http: SocketAddr,
    /// IP address for RTP (bound and written into SDP).
    #[arg(long, default_value = "127.0.0.1", env = "TRUSTRING_GW_MEDIA_IP")]
    media_ip: IpAddr,
    /// Addresses allowed to open SIP trunk connections and send INVITEs (the server's);
    /// repeat the flag for more.
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

/// The server's trust authority over HTTP(S), each request MACed under the trunk secret.
struct HttpAuthority {
    agent: ureq::Agent,
    base: String,
    secret: Vec<u8>,
}

impl HttpAuthority {
    fn new(base: &str, fp: Option<&str>, secret: Vec<u8>) -> anyhow::Result<Self> {
        let base = base.trim().trim_end_matches('/').to_owned();
        let lower = base.to_ascii_lowercase();
        let agent = if let Some(rest) = lower.strip_prefix("http://") {
            let host = rest.split('/').next().unwrap_or_default();
            let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
            let loopback = host == "localhost"
                || host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if !loopback {
                bail!(
                    "--server-api {base}: plain http:// only to a loopback server; give https:// \
                     and --server-api-fp"
                );
            }
            if fp.is_some() {
                bail!("--server-api-fp is for an https:// --server-api");
            }
            let config = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(5)))
                .http_status_as_error(false)
                .build();
            ureq::Agent::new_with_config(config)
        } else {
            crate::pinned::https_base(&base)?;
            let pin = fp
                .context("an https:// --server-api needs --server-api-fp sha256:HEX")?
                .parse()
                .context("--server-api-fp")?;
            crate::pinned::agent(pin)?
        };
        Ok(Self {
            agent,
            base,
            secret,
        })
    }

    /// POSTs `body` to `path`; (status, error code or body text).
    fn post<T: serde::Serialize>(
        &self,
        path: &str,
        body: &T,
    ) -> Result<(u16, String), AuthorityError> {
        let bytes =
            serde_json::to_vec(body).map_err(|e| AuthorityError::Unavailable(e.to_string()))?;
        let auth =
            channel::request_auth(&self.secret, crate::serve::unix_ms(), "POST", path, &bytes);
        let mut r = self
            .agent
            .post(format!("{}{path}", self.base))
            .header(channel::AUTH_HEADER, &auth)
            .header("content-type", "application/json")
            .send(bytes.as_slice())
            .map_err(|e| AuthorityError::Unavailable(format!("{}: {e}", self.base)))?;
        let status = r.status().as_u16();
        let text = r
            .body_mut()
            .read_to_string()
            .map_err(|e| AuthorityError::Unavailable(e.to_string()))?;
        if status == 401 {
            return Err(AuthorityError::Unavailable(
                "the server refused the gateway's credentials (is the trunk secret the server's, \
                 and the clocks within a minute?)"
                    .into(),
            ));
        }
        if status >= 500 {
            return Err(AuthorityError::Unavailable(format!(
                "the server answered {status}"
            )));
        }
        if status == 200 {
            return Ok((status, text));
        }
        let code = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("http-{status}"));
        Ok((status, code))
    }

    fn parse<R: serde::de::DeserializeOwned>(text: &str) -> Result<R, AuthorityError> {
        serde_json::from_str(text)
            .map_err(|e| AuthorityError::Unavailable(format!("bad answer: {e}")))
    }
}

impl LineAuthority for HttpAuthority {
    fn challenge(&self, number: &str) -> Result<AttachLookup, AuthorityError> {
        let req = ChallengeRequest {
            number: number.to_owned(),
        };
        match self.post(channel::PATH_CHALLENGE, &req)? {
            (200, text) => {
                let c: ChallengeResponse = Self::parse(&text)?;
                Ok(AttachLookup::Phone {
                    device_id: c.device_id,
                    challenge: c.challenge,
                    call_ref: c.call_ref,
                    branch: c.branch,
                })
            }
            (404, code) if code == "unassigned" => Ok(AttachLookup::Unassigned),
            (_, code) => Err(AuthorityError::Refused { code }),
        }
    }

    fn verify(
        &self,
        number: &str,
        device_id: &str,
        call_ref: &str,
        proof: &str,
    ) -> Result<(), AuthorityError> {
        let req = VerifyRequest {
            number: number.to_owned(),
            device_id: device_id.to_owned(),
            call_ref: call_ref.to_owned(),
            proof: proof.to_owned(),
        };
        match self.post(channel::PATH_VERIFY, &req)? {
            (200, _) => Ok(()),
            (_, code) => Err(AuthorityError::Refused { code }),
        }
    }

    fn holder(&self, number: &str) -> Result<Option<String>, AuthorityError> {
        let req = HolderRequest {
            number: number.to_owned(),
        };
        match self.post(channel::PATH_HOLDER, &req)? {
            (200, text) => Ok(Self::parse::<HolderResponse>(&text)?.device_id),
            (_, code) => Err(AuthorityError::Unavailable(code)),
        }
    }
}

/// The gateway's identity (line port and SIP trunk): the operator's files, or the pair kept
/// under `DATA/tls/`.
fn gateway_identity(a: &GatewayArgs) -> anyhow::Result<Arc<tls::ServerIdentity>> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    for ip in [a.lines.ip(), a.sip.ip()] {
        if !ip.is_unspecified() && !names.contains(&ip.to_string()) {
            names.push(ip.to_string());
        }
    }
    let identity = tls::ServerIdentity::load_or_create(
        &a.data.join("tls"),
        a.tls_cert.as_deref(),
        a.tls_key.as_deref(),
        &names,
    )
    .context("the gateway's TLS certificate and key")?;
    Ok(Arc::new(identity))
}

pub(crate) async fn run(a: GatewayArgs) -> anyhow::Result<()> {
    // The key first: on a first start without the trunk secret the operator still learns
    // the fingerprint the server's --gateway-fp needs (and the server makes the secret).
    let identity = if a.danger_plain_lines && a.danger_plain_trunk {
        None
    } else {
        Some(gateway_identity(&a)?)
    };
    if let Some(id) = identity.as_ref().filter(|_| !a.danger_plain_trunk) {
        println!("gateway SIP trunk TLS fingerprint: {}", id.fingerprint);
    }
    let secret = trunk_secret(&a.trunk_secret_file)?;
    let authority = Arc::new(
        HttpAuthority::new(&a.server_api, a.server_api_fp.as_deref(), secret.clone())
            .context("--server-api")?,
    );
    // Say now, not at the first attach, when the server cannot be asked.
    let probe = authority.clone();
    let server_api = a.server_api.clone();
    tokio::task::spawn_blocking(move || match probe.holder("+00") {
        Ok(_) => {
            tracing::info!(server = %server_api, "the server's trust authority answers: lines can attach")
        }
        Err(e) => {
            tracing::warn!(server = %server_api, error = %e, "the server's trust authority does not answer yet: phones cannot attach until it does")
        }
    });
    let line_security = match &identity {
        Some(id) if !a.danger_plain_lines => gateway::LineSecurity::Tls(id.clone()),
        _ => {
            tracing::warn!("--danger-plain-lines: phone lines attach over plain TCP, without TLS");
            gateway::LineSecurity::Plain
        }
    };
    let sip_security = match &identity {
        Some(id) if !a.danger_plain_trunk => gateway::SipSecurity::Tls(id.clone()),
        _ => {
            tracing::warn!(
                "--danger-plain-trunk: the SIP trunk is plain UDP (SRTP keys and trust challenges in clear)"
            );
            gateway::SipSecurity::Plain
        }
    };
    let cfg = gateway::GatewayConfig {
        sip: a.sip,
        sip_security,
        lines: a.lines,
        line_security,
        authority,
        plain_lines: a.plain_lines.iter().map(ToString::to_string).collect(),
        media_ip: a.media_ip,
        allow: a.allow,
        trunk_secret: secret,
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
                        gateway::GatewayMetrics::CONTENT_TYPE,
                    )],
                    m.render(),
                )
            }
        }),
    );
    let http_addr = http.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(http, app).await });
    let r = gateway::run(cfg, metrics, crate::serve::shutdown_signal(), |b| {
        match b.sip_fingerprint {
            Some(fp) => {
                println!(
                    "the server dials it with: trustring serve --gateway {} --gateway-fp {fp}",
                    b.sip
                );
            }
            None => println!(
                "gateway SIP trunk: plain UDP on {} (--danger-plain-trunk)",
                b.sip
            ),
        }
        match b.lines_fingerprint {
            Some(fp) => {
                // On stdout, whatever the log level: the operator hands it to the phones.
                println!("gateway line TLS fingerprint: {fp}");
                println!("phones attach with: trustring-line://{}?fp={fp}", b.lines);
                tracing::info!(sip = %b.sip, lines = %b.lines, lines_fp = %fp, metrics = %http_addr, "gateway ready");
            }
            None => {
                println!("gateway lines: plain TCP on {} (--danger-plain-lines)", b.lines);
                tracing::info!(sip = %b.sip, lines = %b.lines, metrics = %http_addr, "gateway ready (plain TCP lines)");
            }
        }
    })
    .await
    .context("running the gateway");
    server.abort();
    r
}
