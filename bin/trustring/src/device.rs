//! `trustring device …`: the phone's side (SPEC R6–R10, R14).
//!
//! - `init` creates the trusted zone (software file or PKCS#11 token) and its key pair;
//! - `enroll` takes the enrolment URI the operator handed out
//!   (`trustring-enrol://HOST:PORT?code=…&fp=sha256:…`), talks HTTPS to that endpoint with the
//!   server's key pinned to the fingerprint (any other key, or plain HTTP, is refused before
//!   anything is sent or written), sends the zone's public key and the EULA acceptance with
//!   the one-time code and installs the sealed package the server returns: the identifier and
//!   the license key go straight into the zone, and so do the SIP password and the device
//!   token (sealed like the license key, never in a plaintext file);
//! - `status`, `service on|off`, `number` talk to the server (same pinned HTTPS) with the
//!   device token read from the zone;
//! - `run` keeps the phone reachable (a SIP UA registered with the device's credentials) and
//!   answers each call's trust challenge through the zone.
//!
//! The zone directory holds `zone.json` (which backend), the zone's own files, and
//! `device.json` (normal-world settings, none of them secret: the enrolment endpoint and its
//! pinned key fingerprint, device id, SIP user name and domain). Nothing here ever prints the
//! identifier, the license key, the SIP password or the device token.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use tls::Fingerprint;
use zone::pkcs11::Pkcs11Zone;
use zone::software::SoftwareZone;
use zone::{CallBinding, Challenge, DeviceSecrets, SealedPackage, ServerPublicKey, TrustedZone};

use crate::pinned;

/// `trustring device` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum DeviceCommand {
    /// Create the phone's trusted zone and its key pair.
    Init(InitArgs),
    /// Enrol with the enrolment URI the operator gave (trustring-enrol://HOST:PORT?code=…&fp=…):
    /// accept the EULA, receive the sealed identifier and key.
    Enroll(EnrollArgs),
    /// Show the zone's and the server's view of this phone.
    Status(ZoneArgs),
    /// Switch the single-number service on or off.
    Service(ServiceArgs),
    /// Tell the server this phone's own number (E.164): with a gateway, the phone then
    /// rings through the PSTN (R15).
    Number(NumberArgs),
    /// Keep the phone reachable for calls and answer their trust challenges.
    Run(RunArgs),
}

/// Where the zone lives and how to unlock it.
#[derive(Debug, clap::Args)]
pub(crate) struct ZoneArgs {
    /// The zone directory.
    #[arg(long, env = "TRUSTRING_ZONE")]
    zone: PathBuf,
    /// Passphrase of a software zone, or user PIN of a PKCS#11 token.
    #[arg(long, env = "TRUSTRING_ZONE_PIN", hide_env_values = true)]
    pin: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Backend {
    /// Keys sealed in a file (AEAD under an Argon2-derived key): not hardware.
    Software,
    /// Keys inside a PKCS#11 token (HSM, secure element, TPM, SoftHSM2).
    Pkcs11,
}

/// `trustring device init`.
#[derive(Debug, clap::Args)]
pub(crate) struct InitArgs {
    #[command(flatten)]
    zone: ZoneArgs,
    /// Zone backend.
    #[arg(long, value_enum, default_value_t = Backend::Software)]
    backend: Backend,
    /// PKCS#11 module (pkcs11 backend).
    #[arg(long, default_value = zone::pkcs11::SOFTHSM2_MODULE)]
    pkcs11_module: PathBuf,
    /// Label of the PKCS#11 token (pkcs11 backend).
    #[arg(long, default_value = "trustring-zone")]
    token_label: String,
}

/// `trustring device enroll`.
#[derive(Debug, clap::Args)]
pub(crate) struct EnrollArgs {
    #[command(flatten)]
    zone: ZoneArgs,
    /// The enrolment URI the operator issued (`trustring admin enrol`, the console):
    /// trustring-enrol://HOST:PORT?code=CODE&fp=sha256:HEX. The server must present the key
    /// with that fingerprint.
    #[arg(
        value_name = "URI",
        env = "TRUSTRING_ENROL_URI",
        hide_env_values = true,
        required_unless_present = "server"
    )]
    uri: Option<String>,
    /// Instead of the URI: the enrolment endpoint, https://HOST:PORT (plain http:// is
    /// refused), with --fingerprint and --code.
    #[arg(long, conflicts_with = "uri", requires_all = ["fingerprint", "code"])]
    server: Option<String>,
    /// With --server: the server's TLS key fingerprint to pin, sha256:HEX.
    #[arg(long, requires = "server")]
    fingerprint: Option<String>,
    /// With --server: the one-time enrolment code the operator issued.
    #[arg(long, env = "TRUSTRING_ENROL_CODE", hide_env_values = true)]
    code: Option<String>,
    /// Accept the server's current EULA (its text is printed first).
    #[arg(long)]
    accept_eula: bool,
    /// The phone's own number (E.164, e.g. +15551230001), for its leg through the gateway.
    #[arg(long)]
    number: Option<String>,
}

/// `trustring device number`.
#[derive(Debug, clap::Args)]
pub(crate) struct NumberArgs {
    #[command(flatten)]
    zone: ZoneArgs,
    /// E.164 number, e.g. +15551230001; `none` clears it.
    number: String,
}

/// `trustring device service on|off`.
#[derive(Debug, clap::Args)]
pub(crate) struct ServiceArgs {
    #[command(flatten)]
    zone: ZoneArgs,
    /// `on` or `off`.
    #[arg(value_parser = ["on", "off"])]
    state: String,
}

/// `trustring device run`.
#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    zone: ZoneArgs,
    /// The SIP server (registrar/proxy) address: the phone registers over SIP.
    #[arg(long, required_unless_present = "attach", conflicts_with = "attach")]
    sip_server: Option<SocketAddr>,
    /// Attach to the IP->PSTN gateway's line port instead (TR-ISUP over TLS): the phone is
    /// reached through the PSTN at its number; its zone proves its key to get the number,
    /// and trust in each IAM's challenge. The attach URI the gateway prints
    /// (trustring-line://HOST:PORT?fp=sha256:HEX), or HOST:PORT with --gateway-fp.
    #[arg(long, value_name = "URI|ADDR")]
    attach: Option<String>,
    /// With `--attach HOST:PORT`: the gateway's line TLS key fingerprint to pin.
    #[arg(
        long,
        requires = "attach",
        value_name = "sha256:HEX",
        env = "TRUSTRING_GATEWAY_FP"
    )]
    gateway_fp: Option<String>,
    /// With `--attach`: DANGER, plain TCP without TLS (only to a gateway run with
    /// --danger-plain-lines).
    #[arg(long, requires = "attach", conflicts_with = "gateway_fp")]
    danger_plain_lines: bool,
    /// With `--attach`: the phone's number (default: the one the server has for it).
    #[arg(long, requires = "attach")]
    number: Option<pstn::msg::Number>,
    /// With `--attach`: refuse every call as busy (cause 17).
    #[arg(long, requires = "attach")]
    busy: bool,
    /// With `--attach`: append the received voice to this WAV file (16-bit PCM, 8 kHz).
    #[arg(long, requires = "attach", value_name = "FILE")]
    record: Option<PathBuf>,
    /// With `--attach`: send a sine of this frequency while answered (silence otherwise).
    #[arg(long, requires = "attach", value_name = "HZ")]
    play_tone: Option<f64>,
    /// With `--attach`: print events as JSON lines.
    #[arg(long, requires = "attach")]
    json: bool,
    /// Register and take calls over SIP over TLS: --sip-server is then the server's TLS
    /// address (`serve --sip-tls`, port 5061 by default), and the server must present the
    /// key pinned at enrolment. One connection stays open; calls arrive on it.
    #[arg(long, conflicts_with = "attach")]
    sip_tls: bool,
    /// Local SIP address (default: an ephemeral port on the server's loopback/any).
    #[arg(long)]
    local: Option<SocketAddr>,
    /// Answer every call automatically after this many milliseconds (default: on keypress:
    /// type `a` + Enter to answer, `h` + Enter to hang up).
    #[arg(long)]
    answer_after_ms: Option<u64>,
    /// Registration lifetime to ask for, seconds.
    #[arg(long, default_value_t = 300)]
    expires: u32,
}

/// `DIR/zone.json`: which backend the zone is.
#[derive(Debug, Serialize, Deserialize)]
struct ZoneInfo {
    backend: Backend,
    #[serde(skip_serializing_if = "Option::is_none")]
    pkcs11_module: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_label: Option<String>,
}

/// `DIR/device.json`: what enrolment gave the normal world that is not secret (no
/// identifier, no key, no password, no token: those are in the zone).
#[derive(Serialize, Deserialize)]
struct DeviceConfig {
    /// The enrolment endpoint, `https://HOST:PORT` (the phone's own routes live there too).
    server: String,
    /// The server's TLS key fingerprint, pinned at enrolment (`None`: enrolled before it
    /// existed, over plain HTTP; re-enrol).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fingerprint: Option<String>,
    device_id: String,
    user: String,
    aor: String,
    domain: String,
    sip_username: String,
    server_key: String,
    /// Only in files written before the secrets moved into the zone: moved there (and
    /// removed from here) the next time the zone is opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sip_password: Option<String>,
    /// As `sip_password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token: Option<String>,
}

impl DeviceConfig {
    /// A pinned HTTPS agent for the server, and its base URL.
    fn agent(&self) -> anyhow::Result<(ureq::Agent, String)> {
        let base = pinned::https_base(&self.server).context(
            "this phone was enrolled over plain HTTP, before the server's key was pinned: \
             enrol it again with an enrolment URI",
        )?;
        Ok((pinned::agent(self.pin()?)?, base))
    }

    /// The server's key, pinned at enrolment: HTTPS and SIP over TLS accept only it.
    fn pin(&self) -> anyhow::Result<Fingerprint> {
        self.fingerprint
            .as_deref()
            .context("device.json has no pinned server key: enrol again with an enrolment URI")?
            .parse()
            .context("the pinned server key in device.json")
    }
}

pub(crate) fn run(cmd: DeviceCommand) -> anyhow::Result<()> {
    match cmd {
        DeviceCommand::Init(a) => init(a),
        DeviceCommand::Enroll(a) => enroll(a),
        DeviceCommand::Status(a) => status(a),
        DeviceCommand::Service(a) => service(a),
        DeviceCommand::Number(a) => {
            let (_, cfg, secrets) = enrolled(&a.zone)?;
            let number = (a.number != "none").then_some(a.number);
            set_number(&cfg, &secrets, number.as_deref())
        }
        DeviceCommand::Run(a) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(run_phone(a))
        }
    }
}

/// Normal-world settings beside the zone: private, written atomically (the zone's own way).
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    zone::write_private_atomic(path, bytes).with_context(|| format!("writing {}", path.display()))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading {} ({what})", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid", path.display()))
}

fn open_zone(args: &ZoneArgs) -> anyhow::Result<Box<dyn TrustedZone + Send>> {
    let info: ZoneInfo = read_json(
        &args.zone.join("zone.json"),
        "no zone here: run `trustring device init` first",
    )?;
    Ok(match info.backend {
        Backend::Software => Box::new(
            SoftwareZone::open(&args.zone, &args.pin).context("opening the software zone")?,
        ),
        Backend::Pkcs11 => {
            let module = info
                .pkcs11_module
                .unwrap_or_else(|| PathBuf::from(zone::pkcs11::SOFTHSM2_MODULE));
            let label = info.token_label.unwrap_or_else(|| "trustring-zone".into());
            Box::new(
                Pkcs11Zone::open(&module, &label, &args.pin, &args.zone)
                    .context("opening the PKCS#11 zone")?,
            )
        }
    })
}

fn device_config(zone: &Path) -> anyhow::Result<DeviceConfig> {
    read_json(
        &zone.join("device.json"),
        "not enrolled: run `trustring device enroll` first",
    )
}

/// The zone, the normal-world settings and the credentials sealed in the zone, of an
/// enrolled phone. Credentials still in a `device.json` written before they moved into the
/// zone are moved now.
fn enrolled(
    args: &ZoneArgs,
) -> anyhow::Result<(Box<dyn TrustedZone + Send>, DeviceConfig, DeviceSecrets)> {
    let mut zone = open_zone(args)?;
    let mut cfg = device_config(&args.zone)?;
    if let (Some(password), Some(token)) = (cfg.sip_password.take(), cfg.token.take()) {
        zone.store_secrets(Some(&DeviceSecrets::new(&password, &token)))
            .context("moving the SIP password and device token into the zone")?;
        write_private(
            &args.zone.join("device.json"),
            &serde_json::to_vec_pretty(&cfg)?,
        )?;
    }
    let secrets = zone
        .secrets()?
        .context("the zone holds no SIP password or device token: enrol this phone again")?;
    Ok((zone, cfg, secrets))
}

fn init(a: InitArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&a.zone.zone)
        .with_context(|| format!("creating {}", a.zone.zone.display()))?;
    let info_path = a.zone.zone.join("zone.json");
    if info_path.exists() {
        bail!("{} already holds a zone", a.zone.zone.display());
    }
    let (zone, info): (Box<dyn TrustedZone>, ZoneInfo) = match a.backend {
        Backend::Software => (
            Box::new(
                SoftwareZone::init(&a.zone.zone, &a.zone.pin)
                    .context("creating the software zone")?,
            ),
            ZoneInfo {
                backend: Backend::Software,
                pkcs11_module: None,
                token_label: None,
            },
        ),
        Backend::Pkcs11 => (
            Box::new(
                Pkcs11Zone::init(&a.pkcs11_module, &a.token_label, &a.zone.pin, &a.zone.zone)
                    .context("creating the PKCS#11 zone")?,
            ),
            ZoneInfo {
                backend: Backend::Pkcs11,
                pkcs11_module: Some(a.pkcs11_module.clone()),
                token_label: Some(a.token_label.clone()),
            },
        ),
    };
    write_private(&info_path, &serde_json::to_vec_pretty(&info)?)?;
    let st = zone.status()?;
    println!("zone created in {}", a.zone.zone.display());
    println!("security level: {}", level_text(st.security_level));
    println!("public key: {}", zone.public_key()?);
    Ok(())
}

fn level_text(l: zone::SecurityLevel) -> &'static str {
    match l {
        zone::SecurityLevel::Software => "software (keys in a sealed file; not a hardware zone)",
        zone::SecurityLevel::Pkcs11 => "pkcs11 (keys inside the token, non-extractable)",
    }
}

/// A failed request to `base`: the TLS refusal in plain words when it was one.
fn unreachable(err: ureq::Error, base: &str) -> anyhow::Error {
    match pinned::refusal(&err) {
        Some(refusal) => anyhow::anyhow!("{base}: {refusal}"),
        None => anyhow::Error::new(err).context(format!("reaching {base}")),
    }
}

/// The API's error message from a failed response.
fn api_error(status: u16, body: &str) -> anyhow::Error {
    let msg = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            let e = v.get("error")?;
            Some(format!(
                "{} ({})",
                e.get("message")?.as_str()?,
                e.get("code")?.as_str()?
            ))
        })
        .unwrap_or_else(|| body.chars().take(200).collect());
    anyhow::anyhow!("server answered {status}: {msg}")
}

#[derive(Deserialize)]
struct EulaView {
    version: String,
    text: String,
}

#[derive(Deserialize)]
struct EnrolResponse {
    device_id: String,
    user: String,
    aor: String,
    security_level: zone::SecurityLevel,
    sip: Sip,
    token: String,
    server_key: String,
    package: SealedPackage,
}

#[derive(Deserialize)]
struct Sip {
    username: String,
    password: String,
    domain: String,
}

/// Where to enrol: the endpoint (`https://HOST:PORT`), the key to pin and the code.
fn enrol_target(a: &EnrollArgs) -> anyhow::Result<(String, Fingerprint, String)> {
    match (&a.uri, &a.server) {
        (Some(uri), None) => {
            let lower = uri.trim().to_ascii_lowercase();
            if lower.starts_with("http://") || lower.starts_with("https://") {
                pinned::https_base(uri)?;
                bail!(
                    "{uri}: give the enrolment URI (trustring-enrol://HOST:PORT?code=…&fp=…), or \
                     --server https://HOST:PORT with --fingerprint and --code"
                );
            }
            let uri: api::EnrolUri = uri.parse()?;
            Ok((uri.base_url(), uri.fingerprint, uri.code))
        }
        (None, Some(server)) => {
            let base = pinned::https_base(server)?;
            let pin = a
                .fingerprint
                .as_deref()
                .context("--server needs --fingerprint sha256:HEX (the server's key)")?
                .parse()?;
            let code = a.code.clone().context("--server needs --code")?;
            Ok((base, pin, code))
        }
        _ => bail!(
            "give the enrolment URI, or --server https://HOST:PORT with --fingerprint and --code"
        ),
    }
}

fn enroll(a: EnrollArgs) -> anyhow::Result<()> {
    let (server, pin, code) = enrol_target(&a)?;
    let mut zone = open_zone(&a.zone)?;
    if zone.status()?.enrolled {
        bail!("this zone is already enrolled");
    }
    // Nothing is written to the zone before the server proved it holds the pinned key and
    // delivered a package.
    let untouched = "enrolment stopped; nothing was written to the zone";
    let agent = pinned::agent(pin)?;
    let mut r = agent
        .get(format!("{server}/api/v1/enrol/eula"))
        .call()
        .map_err(|e| unreachable(e, &server))
        .context(untouched)?;
    let body = r.body_mut().read_to_string()?;
    if r.status().as_u16() != 200 {
        return Err(api_error(r.status().as_u16(), &body));
    }
    let eula: EulaView = serde_json::from_str(&body).context("EULA response")?;
    println!(
        "End-user licence agreement, version {}:\n{}\n",
        eula.version, eula.text
    );
    if !a.accept_eula {
        bail!("the EULA must be accepted: run again with --accept-eula");
    }
    let request = serde_json::json!({
        "code": code,
        "zone_public_key": zone.public_key()?.to_string(),
        "eula_version": eula.version,
        "accept_eula": true,
    });
    let mut r = agent
        .post(format!("{server}/api/v1/enrol"))
        .header("content-type", "application/json")
        .send(serde_json::to_vec(&request)?.as_slice())
        .map_err(|e| unreachable(e, &server))
        .context(untouched)?;
    let body = r.body_mut().read_to_string()?;
    if r.status().as_u16() != 201 {
        return Err(api_error(r.status().as_u16(), &body).context(untouched));
    }
    let e: EnrolResponse = serde_json::from_str(&body).context("enrolment response")?;
    let server_key: ServerPublicKey = e.server_key.parse().context("server key")?;
    // The credentials first, then the package: a failed install takes them out again, so
    // the zone is either enrolled with its credentials or as it was.
    let secrets = DeviceSecrets::new(&e.sip.password, &e.token);
    zone.store_secrets(Some(&secrets))
        .context("sealing the SIP password and device token into the zone")?;
    if let Err(err) = zone.install(&e.package, &server_key) {
        let _ = zone.store_secrets(None);
        return Err(err).context("installing the sealed package into the zone");
    }
    let cfg = DeviceConfig {
        server,
        fingerprint: Some(pin.to_string()),
        device_id: e.device_id.clone(),
        user: e.user,
        aor: e.aor.clone(),
        domain: e.sip.domain,
        sip_username: e.sip.username,
        server_key: e.server_key,
        sip_password: None,
        token: None,
    };
    write_private(
        &a.zone.zone.join("device.json"),
        &serde_json::to_vec_pretty(&cfg)?,
    )?;
    println!(
        "enrolled: device {} for {} (security level {})",
        e.device_id,
        e.aor,
        level_text(e.security_level)
    );
    if let Some(n) = a.number.as_deref() {
        set_number(&cfg, &secrets, Some(n))?;
    }
    Ok(())
}

/// `PUT {server}/api/v1/device/{what}` with the device token; the error body on failure.
fn put_own(
    cfg: &DeviceConfig,
    secrets: &DeviceSecrets,
    what: &str,
    body: &serde_json::Value,
) -> anyhow::Result<()> {
    let (agent, base) = cfg.agent()?;
    let mut r = agent
        .put(format!("{base}/api/v1/device/{what}"))
        .header(
            "authorization",
            &format!("Bearer {}", secrets.token.as_str()),
        )
        .header("content-type", "application/json")
        .send(serde_json::to_vec(body)?.as_slice())
        .map_err(|e| unreachable(e, &base))?;
    let text = r.body_mut().read_to_string()?;
    if r.status().as_u16() != 200 {
        return Err(api_error(r.status().as_u16(), &text));
    }
    Ok(())
}

fn set_number(
    cfg: &DeviceConfig,
    secrets: &DeviceSecrets,
    number: Option<&str>,
) -> anyhow::Result<()> {
    put_own(
        cfg,
        secrets,
        "number",
        &serde_json::json!({ "number": number }),
    )?;
    match number {
        Some(n) => println!("number {n} set for {}", cfg.aor),
        None => println!("number cleared for {}", cfg.aor),
    }
    Ok(())
}

#[derive(Deserialize)]
struct ServerView {
    status: String,
    service_on: bool,
    revoked_reason: Option<String>,
    #[serde(default)]
    number: Option<String>,
}

fn server_view(cfg: &DeviceConfig, secrets: &DeviceSecrets) -> anyhow::Result<ServerView> {
    let (agent, base) = cfg.agent()?;
    let mut r = agent
        .get(format!("{base}/api/v1/device"))
        .header(
            "authorization",
            &format!("Bearer {}", secrets.token.as_str()),
        )
        .call()
        .map_err(|e| unreachable(e, &base))?;
    let body = r.body_mut().read_to_string()?;
    if r.status().as_u16() != 200 {
        return Err(api_error(r.status().as_u16(), &body));
    }
    Ok(serde_json::from_str(&body)?)
}

fn status(a: ZoneArgs) -> anyhow::Result<()> {
    let (mut zone, cfg) = match enrolled(&a) {
        Ok((zone, cfg, secrets)) => (zone, Some((cfg, secrets))),
        Err(_) => (open_zone(&a)?, None),
    };
    // Learn a revocation from the server and record it in the zone (R9).
    let server = cfg.as_ref().map(|(cfg, secrets)| server_view(cfg, secrets));
    let cfg = cfg.map(|(cfg, _)| cfg);
    if let Some(Ok(v)) = &server
        && v.status == "revoked"
    {
        let reason = v.revoked_reason.clone().unwrap_or_else(|| "revoked".into());
        if zone.status()?.revoked.is_none() {
            zone.mark_revoked(&reason)?;
        }
    }
    let st = zone.status()?;
    println!(
        "device: {}",
        st.device_id.as_deref().unwrap_or("(not enrolled)")
    );
    if let Some(cfg) = &cfg {
        println!("identity: {}", cfg.aor);
    }
    println!("security level: {}", level_text(st.security_level));
    let state = match (&st.revoked, st.enrolled) {
        (Some(reason), _) => format!("revoked ({reason})"),
        (None, true) => "enrolled".into(),
        (None, false) => "not enrolled".into(),
    };
    println!("status: {state}");
    match server {
        Some(Ok(v)) => {
            println!(
                "service: {} (server: {})",
                if v.service_on { "on" } else { "off" },
                v.status
            );
            println!("number: {}", v.number.as_deref().unwrap_or("none"));
        }
        Some(Err(e)) => println!(
            "service: {} (server unreachable: {e:#})",
            on_off(st.service_on)
        ),
        None => println!("service: {}", on_off(st.service_on)),
    }
    Ok(())
}

fn on_off(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

fn service(a: ServiceArgs) -> anyhow::Result<()> {
    let on = a.state == "on";
    let (mut zone, cfg, secrets) = enrolled(&a.zone)?;
    put_own(&cfg, &secrets, "service", &serde_json::json!({ "on": on }))?;
    zone.set_service(on)?;
    println!("single-number service {} for {}", on_off(on), cfg.aor);
    Ok(())
}

/// Answers each INVITE's `Trust-Challenge` with the zone's proof.
pub(crate) struct ZoneProver(Box<dyn TrustedZone + Send>);

impl ZoneProver {
    fn prove_header(
        &mut self,
        challenge: &str,
        call_id: &str,
        branch: &str,
    ) -> Result<String, String> {
        let c = Challenge::from_header(challenge).map_err(|e| e.to_string())?;
        let binding = CallBinding { call_id, branch };
        self.0
            .prove(&c, &binding)
            .map(|p| p.to_header())
            .map_err(|e| e.to_string())
    }
}

impl phone::Prover for ZoneProver {
    fn prove(&mut self, challenge: &str, call_id: &str, branch: &str) -> Result<String, String> {
        self.prove_header(challenge, call_id, branch)
    }
}

/// Through the gateway the challenge comes in the IAM, bound to the gateway's INVITE.
impl pstn::line::LineProver for ZoneProver {
    fn prove(&mut self, challenge: &str, call_ref: &str, branch: &str) -> Result<String, String> {
        self.prove_header(challenge, call_ref, branch)
    }
}

/// The phone's SIP settings and its zone's prover, from an enrolled zone directory.
pub(crate) fn load_phone(
    zone_dir: &Path,
    pin: &str,
    sip_server: SocketAddr,
) -> anyhow::Result<(phone::PhoneConfig, ZoneProver, String)> {
    let (zone, cfg, secrets) = loaded_phone(zone_dir, pin)?;
    let mut pc = phone::PhoneConfig::new(
        sip_server,
        cfg.domain.clone(),
        cfg.user.clone(),
        cfg.sip_username.clone(),
        secrets.sip_password.to_string(),
        cfg.device_id.clone(),
    );
    if sip_server.ip().is_loopback() {
        pc.local = SocketAddr::new(sip_server.ip(), 0);
    }
    Ok((
        pc,
        ZoneProver(zone),
        format!("{} ({})", cfg.device_id, cfg.aor),
    ))
}

/// An enrolled zone that may take calls (not revoked), its settings and credentials.
fn loaded_phone(
    zone_dir: &Path,
    pin: &str,
) -> anyhow::Result<(Box<dyn TrustedZone + Send>, DeviceConfig, DeviceSecrets)> {
    let args = ZoneArgs {
        zone: zone_dir.to_owned(),
        pin: pin.to_owned(),
    };
    let loaded = enrolled(&args)?;
    let st = loaded.0.status()?;
    if let Some(reason) = st.revoked {
        bail!("this phone is revoked ({reason}): it cannot take calls");
    }
    if !st.enrolled {
        bail!("this zone is not enrolled: run `trustring device enroll` first");
    }
    Ok(loaded)
}

/// `device run --attach`: the phone as a line of the gateway.
async fn run_attached(a: RunArgs, attach: String) -> anyhow::Result<()> {
    let (zone, cfg, secrets) = loaded_phone(&a.zone.zone, &a.zone.pin)?;
    let prover = ZoneProver(zone);
    let who = format!("{} ({})", cfg.device_id, cfg.aor);
    let number = match a.number {
        Some(n) => n,
        None => {
            let view = server_view(&cfg, &secrets)?;
            let n = view.number.with_context(|| {
                format!("the server has no number for {who}: pass --number or run `trustring device number`")
            })?;
            n.parse()
                .map_err(|e| anyhow::anyhow!("the server's number {n}: {e}"))?
        }
    };
    println!("phone {who} attaching to {attach} as {number}");
    let args = crate::line::LineArgs {
        attach,
        gateway_fp: a.gateway_fp,
        danger_plain_lines: a.danger_plain_lines,
        number,
        answer_after_ms: a.answer_after_ms,
        busy: a.busy,
        record: a.record,
        play_tone: a.play_tone,
        json: a.json,
    };
    crate::line::run(args, Some(cfg.device_id.clone()), Some(Box::new(prover))).await
}

async fn run_phone(a: RunArgs) -> anyhow::Result<()> {
    if let Some(attach) = a.attach.clone() {
        return run_attached(a, attach).await;
    }
    let sip_server = a.sip_server.context("--sip-server or --attach is needed")?;
    let (mut pc, prover, who) = load_phone(&a.zone.zone, &a.zone.pin, sip_server)?;
    if let Some(local) = a.local {
        pc.local = local;
    }
    pc.expires = a.expires;
    pc.answer_after = a.answer_after_ms.map(Duration::from_millis);
    if a.sip_tls {
        let pin = device_config(&a.zone.zone)?.pin()?;
        pc.transport = phone::SipTransport::Tls(
            phone::TlsClient::pinned(pin).context("the TLS client for the pinned server key")?,
        );
    }
    let zone = prover;
    let (handle, mut events) = phone::Phone::start(pc, Box::new(zone))
        .await
        .context("starting the phone")?;
    println!(
        "phone {who} on {} (server {sip_server}{})",
        handle.local_addr(),
        if a.sip_tls { ", TLS" } else { "" },
    );
    // Keypress control: `a` answers the newest ringing call, `h` hangs it up. At the end of
    // stdin the phone goes on (unattended) until a signal.
    let mut keys = a.answer_after_ms.is_none().then(crate::line::stdin_lines);
    let mut current: Option<String> = None;
    loop {
        tokio::select! {
            e = events.recv() => {
                let Some(e) = e else { break };
                if let phone::PhoneEvent::Ringing { call_id, .. } = &e {
                    current = Some(call_id.clone());
                }
                println!("{e}");
            }
            k = async { keys.as_mut()?.recv().await }, if keys.is_some() => {
                let Some(k) = k else {
                    keys = None;
                    continue;
                };
                let Some(call) = current.clone() else { continue };
                let r = match k.trim() {
                    "a" | "answer" => handle.answer(&call).await,
                    "h" | "hangup" => handle.hangup(&call).await,
                    _ => continue,
                };
                if let Err(e) = r {
                    println!("{e}");
                }
            }
            _ = crate::serve::shutdown_signal() => break,
        }
    }
    handle.shutdown().await.context("unregistering")?;
    println!("phone stopped");
    Ok(())
}
