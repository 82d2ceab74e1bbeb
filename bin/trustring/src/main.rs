//! `trustring`: one identity, every device rings.
//!
//! Subcommands: `serve` (SIP registrar + forking proxy + admin API), `gateway` (the IP->PSTN
//! gateway), `device` (the phone: trusted zone, enrolment, calls over SIP or attached to the
//! gateway), `line` (a plain PSTN line on the gateway), `admin` (the operator's CLI over the
//! API), `cdr` (verify, export), `demo` and `master-key`.

mod admin;
mod cdr;
mod demo;
mod device;
mod gateway;
mod line;
mod pinned;
mod serve;
mod token;
mod trust;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// trustring: a single-number voice service.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: SIP registrar and forking proxy (UDP and TCP) plus the admin API.
    Serve(ServeArgs),
    /// The IP->PSTN gateway: SIP trunk from the server, TR-ISUP phone lines, G.711 media.
    Gateway(gateway::GatewayArgs),
    /// A plain PSTN phone line attached to the gateway (TR-ISUP), steered from stdin.
    Line(line::LineArgs),
    /// The phone: create its trusted zone, enrol, take calls, switch the service on/off.
    #[command(subcommand)]
    Device(device::DeviceCommand),
    /// Operate a running server through its admin API (subscribers, pool, phones, CDRs).
    Admin(admin::AdminArgs),
    /// Run the whole product once on loopback: server, gateway, desktop, enrolled phone on a
    /// PSTN line, a call with audio; print the ladder (SIP + ISUP), fork skews, trust proof,
    /// audio check, CDR and the gateway's leg record.
    Demo(demo::DemoArgs),
    /// Call detail records: verify the hash chain, export a period with billing totals.
    #[command(subcommand)]
    Cdr(cdr::CdrCommand),
    /// The master key that keeps license keys encrypted at rest (docs/trust.md).
    #[command(subcommand)]
    MasterKey(MasterKeyCommand),
}

#[derive(Debug, Subcommand)]
enum MasterKeyCommand {
    /// Add a new current key to DATA/master.key and re-encrypt every license key under it
    /// (stop the server first).
    Rotate(DataArg),
    /// Re-encrypt every license key under the current key of the ring in use (after putting
    /// a new key first in TRUSTRING_MASTER_KEY).
    Reencrypt(DataArg),
}

#[derive(Debug, clap::Args)]
struct DataArg {
    /// Data directory (the master key file, and the SQLite database unless --db).
    #[arg(long, default_value = "./trustring-data", env = "TRUSTRING_DATA")]
    data: PathBuf,
    /// The store the server was given (`serve --db`): a `postgres://` URL or a SQLite path.
    /// Default: DATA/trustring.db.
    #[arg(long, env = "TRUSTRING_DB")]
    db: Option<String>,
}

/// `trustring serve` options; every one has a default, so no config file is needed.
#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// SIP listen address (UDP and TCP on the same port).
    #[arg(long, default_value = "0.0.0.0:5060", env = "TRUSTRING_SIP")]
    sip: SocketAddr,
    /// Address written into Via and Record-Route (default: the SIP address, or 127.0.0.1
    /// with its port when listening on all interfaces).
    #[arg(long, env = "TRUSTRING_ADVERTISE")]
    advertise: Option<SocketAddr>,
    /// SIP over TLS listen address (RFC 3261 §26, RFC 5630: TLS 1.2/1.3 with the server's
    /// certificate, see --tls-cert), or `off`. Contacts registered over TLS are reached over
    /// their connection; the server opens no TLS connections itself.
    #[arg(long, default_value = "0.0.0.0:5061", env = "TRUSTRING_SIP_TLS")]
    sip_tls: serve::SipTlsListen,
    /// Most SIP TCP and TLS connections accepted and open at once (one more is closed at
    /// once).
    #[arg(long, default_value_t = 4096, env = "TRUSTRING_SIP_MAX_CONNECTIONS")]
    sip_max_connections: usize,
    /// Most SIP TCP and TLS connections open at once from one IP address.
    #[arg(
        long,
        default_value_t = 64,
        env = "TRUSTRING_SIP_MAX_CONNECTIONS_PER_IP"
    )]
    sip_max_connections_per_ip: usize,
    /// Seconds an accepted SIP TCP/TLS connection has to finish its TLS handshake and send a
    /// whole SIP message before it is closed.
    #[arg(long, default_value_t = 10, env = "TRUSTRING_SIP_FIRST_MESSAGE_SECS")]
    sip_first_message_secs: u64,
    /// Seconds without a byte after which a SIP TCP/TLS connection that carries no
    /// registration is closed (one a client registered over stays 65 minutes).
    #[arg(long, default_value_t = 300, env = "TRUSTRING_SIP_IDLE_SECS")]
    sip_idle_secs: u64,
    /// Admin HTTP API listen address: `ADDR` (plain HTTP on a loopback address, HTTPS with
    /// the server's TLS identity on any other), `https://ADDR` (HTTPS anywhere) or
    /// `http://ADDR` (plain HTTP: refused unless the address is loopback).
    #[arg(long, default_value = "127.0.0.1:8080", env = "TRUSTRING_HTTP")]
    http: serve::HttpListen,
    /// Public enrolment endpoint (HTTPS only): the phones' enrolment and own routes, nothing
    /// else. Its address goes into the enrolment URIs the operator hands out.
    #[arg(long, default_value = "0.0.0.0:8443", env = "TRUSTRING_ENROL")]
    enrol: SocketAddr,
    /// The host phones reach the enrolment endpoint at, written into enrolment URIs and the
    /// self-signed certificate (default: the `--enrol` address, or the advertised SIP address
    /// when listening on all interfaces).
    #[arg(long, env = "TRUSTRING_ENROL_HOST")]
    enrol_host: Option<String>,
    /// Seconds an HTTP connection (admin API and enrolment endpoint) has to send a whole
    /// request head, from its opening or its previous response, and a request its whole body
    /// after its head; then it is closed.
    #[arg(long, default_value_t = 10, env = "TRUSTRING_HTTP_READ_TIMEOUT_SECS")]
    http_read_timeout_secs: u64,
    /// Most HTTP connections open at once on each of the admin and enrolment listeners (one
    /// more is closed at once).
    #[arg(long, default_value_t = 1024, env = "TRUSTRING_HTTP_MAX_CONNECTIONS")]
    http_max_connections: usize,
    /// Most HTTP connections open at once from one IP address (an IPv6 /64) on each of the
    /// admin and enrolment listeners.
    #[arg(
        long,
        default_value_t = 64,
        env = "TRUSTRING_HTTP_MAX_CONNECTIONS_PER_IP"
    )]
    http_max_connections_per_ip: usize,
    /// TLS certificate chain (PEM) for every TLS listener; with `--tls-key`. Without both, a
    /// self-signed certificate is made on first start under `DATA/tls/` and kept.
    #[arg(long, env = "TRUSTRING_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `--tls-cert`.
    #[arg(long, env = "TRUSTRING_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Data directory (SQLite database, admin token).
    #[arg(long, default_value = "./trustring-data", env = "TRUSTRING_DATA")]
    data: PathBuf,
    /// The store: `postgres://USER[:PASSWORD]@HOST:PORT/DB` for PostgreSQL (several nodes on
    /// one database), or the path of a SQLite file. Default: SQLite at DATA/trustring.db.
    /// The password is never logged.
    #[arg(long, env = "TRUSTRING_DB")]
    db: Option<String>,
    /// The SIP domain: addresses of record are sip:user@DOMAIN; also the digest realm.
    #[arg(long, default_value = "localhost", env = "TRUSTRING_DOMAIN")]
    domain: String,
    /// How long a phone enrolment code stays valid, in seconds (default one day).
    #[arg(long, default_value_t = 86_400, env = "TRUSTRING_ENROL_CODE_TTL_SECS")]
    enrol_code_ttl_secs: u64,
    /// Enrol only phones whose trusted zone is a PKCS#11 token (refuse software zones).
    #[arg(long, env = "TRUSTRING_REQUIRE_PKCS11")]
    require_pkcs11: bool,
    /// Per-minute rate of VoIP legs in the billing totals of `GET /api/v1/cdrs`.
    #[arg(long, default_value_t = 0.0, env = "TRUSTRING_RATE_VOIP")]
    rate_voip: f64,
    /// Per-minute rate of PSTN legs in the billing totals of `GET /api/v1/cdrs`.
    #[arg(long, default_value_t = 0.0, env = "TRUSTRING_RATE_PSTN")]
    rate_pstn: f64,
    /// Do not record per-call message traces (the console's live calls and ladders, and
    /// `trustring demo`, need them); saves about a tenth of the SIP loop's CPU under load.
    #[arg(long, env = "TRUSTRING_NO_CALL_TRACE")]
    no_call_trace: bool,
    /// Most memory the per-call message traces may hold, in MiB (oldest calls are forgotten
    /// first; whatever peers send, the traces stay within this).
    #[arg(long, default_value_t = 64, env = "TRUSTRING_TRACE_BUDGET_MIB")]
    trace_budget_mib: usize,
    /// The IP->PSTN gateway's SIP address (`trustring gateway --sip`): phones with a number
    /// and no SIP registration of their own ring through it (R15). The server dials it over
    /// SIP over TLS with its key pinned (--gateway-fp), so the branch's SRTP keys never cross
    /// in clear. Its INVITEs carry a `Trunk-Auth` MAC keyed with `DATA/trunk-secret` (or
    /// `TRUSTRING_TRUNK_SECRET`); give the gateway the same secret.
    #[arg(long, env = "TRUSTRING_GATEWAY")]
    gateway: Option<SocketAddr>,
    /// With --gateway: the gateway's TLS key fingerprint (sha256:HEX, as `trustring gateway`
    /// prints it at start, "gateway SIP trunk TLS fingerprint"); the server accepts that key
    /// and no other.
    #[arg(
        long,
        value_name = "sha256:HEX",
        requires = "gateway",
        env = "TRUSTRING_GATEWAY_FP"
    )]
    gateway_fp: Option<String>,
    /// DANGER: send the gateway's branches over plain UDP (to a gateway run with
    /// --danger-plain-trunk): the SDP's SRTP keys (`a=crypto`), the trust challenge and the
    /// Trunk-Auth cross in clear. For tests and old gateways on one machine only.
    #[arg(long, requires = "gateway", conflicts_with = "gateway_fp")]
    danger_plain_trunk: bool,
    /// Digest algorithms offered in 401/407 challenges: `auto` (MD5 to a client until a
    /// registration refresh shows it answers SHA-256, then SHA-256 only; works with every
    /// client), `both` (SHA-256 and MD5 every time, RFC 8760; breaks clients such as
    /// baresip 1.x that refuse any non-MD5 challenge), `sha256` (SHA-256 only), `md5`.
    #[arg(long, default_value = "auto", env = "TRUSTRING_DIGEST")]
    digest: sip_core::auth::DigestPolicy,
    /// With `--digest auto`: products (comma-separated, case-insensitive substrings of
    /// User-Agent) known to answer RFC 8760 challenge lists, offered SHA-256 and MD5 from
    /// their first challenge (linphone keeps the algorithm of its first answer for good).
    #[arg(
        long,
        default_value = sip_core::auth::DEFAULT_SHA256_AGENTS,
        env = "TRUSTRING_DIGEST_SHA256_AGENTS"
    )]
    digest_sha256_agents: String,
    /// Address ranges (comma-separated CIDR) a Contact cannot be reached at when its
    /// REGISTER came from another address: such a device is behind NAT and is reached at the
    /// REGISTER's source instead (R31). Default RFC 1918, RFC 6598, IPv6 ULA and link-local.
    #[arg(
        long,
        default_value = sip_core::proxy::DEFAULT_PRIVATE_RANGES,
        env = "TRUSTRING_PRIVATE_RANGES"
    )]
    private_ranges: sip_core::proxy::IpRanges,
    /// Seconds between keep-alive OPTIONS to each NATed UDP binding (also the Flow-Timer
    /// given to RFC 5626 clients); a binding that misses 3 in a row is dropped. 0: no pings.
    #[arg(long, default_value_t = 25, env = "TRUSTRING_NAT_KEEPALIVE_SECS")]
    nat_keepalive_secs: u64,
}

impl ServeArgs {
    /// The SIP stream transports' limits from the flags (queues: the defaults).
    fn sip_limits(&self) -> sip_net::StreamLimits {
        sip_net::StreamLimits {
            max_connections: self.sip_max_connections.max(1),
            max_connections_per_ip: self.sip_max_connections_per_ip.max(1),
            first_message: std::time::Duration::from_secs(self.sip_first_message_secs.max(1)),
            idle_unbound: std::time::Duration::from_secs(self.sip_idle_secs.max(1)),
            ..sip_net::StreamLimits::default()
        }
    }

    /// The HTTP listeners' limits from the flags.
    fn http_limits(&self) -> api::serve::HttpLimits {
        api::serve::HttpLimits {
            read_timeout: std::time::Duration::from_secs(self.http_read_timeout_secs.max(1)),
            max_connections: self.http_max_connections.max(1),
            max_connections_per_ip: self.http_max_connections_per_ip.max(1),
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The demo's own output is the point: only warnings from the library code.
    let default_filter = if matches!(cli.command, Command::Demo(_)) {
        "warn"
    } else {
        "info"
    };
    init_tracing(cli.log_format, default_filter);
    match cli.command {
        Command::Serve(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(serve::run(args))
        }
        Command::Gateway(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(gateway::run(args))
        }
        Command::Line(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(line::run(args, None, None))
        }
        Command::Device(cmd) => device::run(cmd),
        Command::Cdr(cmd) => cdr::run(cmd),
        Command::Admin(a) => admin::run(a),
        Command::Demo(a) => demo::run(a),
        Command::MasterKey(MasterKeyCommand::Rotate(a)) => {
            trust::rotate(&a.data, a.db.as_deref(), true)
        }
        Command::MasterKey(MasterKeyCommand::Reencrypt(a)) => {
            trust::rotate(&a.data, a.db.as_deref(), false)
        }
    }
}

fn init_tracing(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TRUSTRING_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
