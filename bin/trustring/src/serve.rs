//! `trustring serve`: opens the store, loads subscribers and live registrations into the
//! proxy, and runs the SIP transports, the store writer, the admin API and the public
//! enrolment endpoint until SIGINT or SIGTERM.
//!
//! TLS (R27): one server identity ([`tls_identity`]: the operator's `--tls-cert/--tls-key`,
//! else a self-signed pair kept under `DATA/tls/`) serves every TLS listener: the enrolment
//! endpoint (`--enrol`, HTTPS only), and the admin API (`--http`) when it is not on loopback.
//! Its key fingerprint is logged at start, shown at `GET /api/v1/server` and carried by every
//! enrolment URI.
//!
//! Registration changes are persisted by a dedicated writer thread, in the order the proxy
//! made them, so the SIP loop never waits on a disk sync. On shutdown the writer drains its
//! queue before the process exits. The writer times every store call into the store latency
//! histogram of the metrics served at `GET /metrics` (with the SIP loop's counters).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use sip_core::message::Uri;
use sip_core::proxy::{
    Binding, Event, Proxy, ProxyConfig, Reach, SubscriberEntry, Target, Transport,
};
use sip_net::{Control, Metrics, SipSockets, StoreOp};
use store::{Device, Registration, RegistrationChange, SecurityEvent, Store, Subscriber};
use tokio::sync::mpsc;

use crate::ServeArgs;
use crate::token::{self, Origin};
use crate::trust;

pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<()> {
    // Before anything is opened: plain HTTP only on loopback.
    let admin_https = args.http.https()?;
    for (flag, rate) in [
        ("--rate-voip", args.rate_voip),
        ("--rate-pstn", args.rate_pstn),
    ] {
        anyhow::ensure!(
            rate.is_finite() && rate >= 0.0,
            "{flag} {rate}: a rate per minute must be a finite number, 0 or more"
        );
    }
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("creating data directory {}", args.data.display()))?;
    // `--db`: a PostgreSQL URL or a SQLite path; SQLite under DATA by default. Only the
    // redacted form (no password) is ever logged or put in an error.
    let db = args.db.clone().unwrap_or_else(|| {
        args.data
            .join("trustring.db")
            .to_string_lossy()
            .into_owned()
    });
    let db_shown = store::redact_url(&db);
    // CDRs are signed with DATA/cdr-signing-key and the signed head kept in DATA/cdr-head
    // (docs/cdr.md); a head that no longer matches the database stops the start.
    let opened = store::Backend::open(&db)
        .with_context(|| format!("opening store {db_shown}"))?
        .with_cdr_signing(&args.data)
        .context("CDR signing")?;
    tracing::info!(db = %db_shown, "store opened");
    if let Some(key) = opened.cdr_public_key() {
        tracing::info!(public_key = %key, file = %args.data.join(store::signing::KEY_FILE).display(),
            "CDRs are signed (`trustring cdr public-key` prints the key to keep elsewhere)");
    }
    let store: Arc<dyn Store> = opened.into_store();
    let (token, origin) = token::admin_token(&args.data)?;
    match origin {
        // The token itself is never logged (logs are read and shipped by more people than
        // should hold it): the operator reads the file, mode 0600.
        Origin::Generated => tracing::info!(
            file = %args.data.join("admin-token").display(),
            "generated the admin API token (read it from the file)"
        ),
        Origin::File => {
            tracing::info!(file = %args.data.join("admin-token").display(), "admin token loaded")
        }
        Origin::Env => tracing::info!("admin token taken from TRUSTRING_ADMIN_TOKEN"),
    }

    let sockets = SipSockets::bind(args.sip)
        .await
        .with_context(|| format!("binding SIP UDP+TCP on {}", args.sip))?;
    let local = sockets.local_addr()?;
    let advertised = args.advertise.unwrap_or_else(|| {
        if local.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], local.port()))
        } else {
            local
        }
    });
    let identity = tls_identity(
        &args.data,
        args.tls_cert.as_deref(),
        args.tls_key.as_deref(),
        &tls_names(&args, advertised),
    )?;
    let (sockets, advertised_tls) = sip_tls(sockets, &args, &identity, advertised)?;
    let now = Instant::now();
    let mut cfg = ProxyConfig::new(args.domain.clone(), advertised, token::random_bytes());
    cfg.advertised_tls = advertised_tls;
    cfg.digest = args.digest;
    cfg.digest_sha256_agents = args.digest_sha256_agents.clone();
    // The key of our Record-Route tags (no in-dialog relay, R30), kept so that dialogs
    // outlive a restart.
    let (route_key, _) = token::secret(&args.data.join("route-key"), "TRUSTRING_ROUTE_KEY")?;
    cfg.route_key = sip_core::proxy::route_key_from(route_key.as_bytes());
    cfg.nat = sip_core::proxy::NatConfig {
        private: args.private_ranges.0.clone(),
        keepalive: (args.nat_keepalive_secs > 0)
            .then(|| Duration::from_secs(args.nat_keepalive_secs)),
        ..sip_core::proxy::NatConfig::default()
    };
    // Also the key of the gateway's line-authentication channel (`api::gateway_lines`).
    let mut trunk_secret = None;
    // The peers the SIP loop dials over TLS: the gateway, its key pinned.
    let mut gateway_tls = std::collections::HashMap::new();
    if let Some(addr) = args.gateway {
        let (secret, origin) = token::trunk_secret(&args.data)?;
        anyhow::ensure!(
            secret.len() >= 16,
            "the trunk secret must be at least 16 characters"
        );
        if matches!(origin, Origin::Generated) {
            tracing::info!(
                file = %args.data.join("trunk-secret").display(),
                "generated the gateway trunk secret (give the gateway this file)"
            );
        }
        if args.danger_plain_trunk {
            tracing::warn!(
                %addr,
                "--danger-plain-trunk: the gateway's branches (SRTP keys, trust challenges) go over plain UDP"
            );
        } else {
            let fp: tls::Fingerprint = args
                .gateway_fp
                .as_deref()
                .context(
                    "--gateway needs --gateway-fp sha256:HEX (the key `trustring gateway` prints \
                     at start), or --danger-plain-trunk for a plain UDP trunk",
                )?
                .parse()
                .context("--gateway-fp")?;
            cfg.trunk_transport = Transport::Tls;
            gateway_tls.insert(addr, tls::pinned_client_config(fp).context("--gateway-fp")?);
            tracing::info!(%addr, gateway_fp = %fp, "the gateway trunk is SIP over TLS, its key pinned");
        }
        tracing::info!(%addr, "phones with a number ring through the gateway");
        trunk_secret = Some(secret.clone().into_bytes());
        cfg.trunk = Some(sip_core::proxy::Trunk {
            addr,
            secret: secret.into_bytes(),
        });
    }
    let mut proxy = Proxy::new(cfg, now);
    let (subs, regs, devices) = load(store.clone()).await?;
    for s in &subs {
        proxy.upsert_subscriber(entry(s));
    }
    // Trust before connect (R14): the authority holds the phones' license keys, decrypted
    // from the store with the master key, and answers the proxy through the gate.
    let keys = Arc::new(trust::master_keys(&args.data)?);
    let signer = trust::signing_key(&args.data)?;
    let authority = trust::new_authority();
    for d in &devices {
        trust::load_device(&authority, &keys, d);
        if let Some(e) = trust::device_entry(d) {
            proxy.upsert_device(e);
        }
    }
    proxy.set_trust_gate(Box::new(trust::Gate(authority.clone())));
    let now_ms = unix_ms();
    let mut restored = 0;
    for r in &regs {
        if let Some(b) = binding(r, now, now_ms) {
            // A registration over TLS is not restored: its connection is gone.
            if proxy.restore_binding(&r.user, b, now) {
                restored += 1;
            }
        }
    }

    // Bounded: a store that falls behind slows the SIP loop down (counted in metrics)
    // rather than growing memory (R30).
    let (events_tx, events_rx) = mpsc::channel(sip_net::EVENT_QUEUE);
    // Every message in and out, per call, for the console's ladders and `trustring demo`.
    let budget = args.trace_budget_mib.saturating_mul(1 << 20);
    let traces = (!args.no_call_trace).then(|| sip_net::trace::TraceSink::with_budget(budget));
    let net = sip_net::NetOptions {
        trace: traces.clone(),
        limits: args.sip_limits(),
        tls_peers: gateway_tls,
    };
    let (sip, sip_task) = sip_net::spawn_with(proxy, sockets, events_tx, net);
    // Events wait in the channel until the writer runs.
    let writer = spawn_writer(
        store.clone(),
        events_rx,
        args.domain.clone(),
        sip.metrics().clone(),
    );

    let control = sip.clone();
    let (change_store, change_keys) = (store.clone(), keys.clone());
    let line_authority = authority.clone();
    let on_change = Arc::new(move |c: api::Change| {
        let cmd = match c {
            api::Change::SubscriberUpserted(s) => Control::Upsert(entry(&s)),
            api::Change::SubscriberDeleted(u) => {
                // Their phones were revoked with them (same transaction).
                if let Ok(devices) = change_store.devices(Some(&u)) {
                    for d in &devices {
                        trust::load_device(&authority, &change_keys, d);
                    }
                }
                Control::Remove(u)
            }
            api::Change::DeviceChanged(id) => match change_store.device(&id) {
                Ok(Some(d)) => {
                    trust::load_device(&authority, &change_keys, &d);
                    match trust::device_entry(&d) {
                        Some(e) => Control::UpsertDevice(e),
                        None => Control::RemoveDevice(id),
                    }
                }
                Ok(None) => Control::RemoveDevice(id),
                Err(e) => {
                    tracing::error!(device = %id, error = %e, "reloading a changed device failed");
                    return;
                }
            },
            _ => return,
        };
        control.send(cmd);
    });
    let provisioning = api::Provisioning {
        master: keys,
        signer,
        code_ttl: Duration::from_secs(args.enrol_code_ttl_secs),
        require_pkcs11: args.require_pkcs11,
    };
    let enrol_listener = tokio::net::TcpListener::bind(args.enrol)
        .await
        .with_context(|| format!("binding the enrolment endpoint on {}", args.enrol))?;
    let enrol_addr = enrol_listener.local_addr()?;
    let enrol_authority = uri_authority(args.enrol_host.as_deref(), enrol_addr, advertised.ip());
    if args.enrol_host.is_none()
        && enrol_addr.ip().is_unspecified()
        && advertised.ip().is_loopback()
    {
        tracing::warn!(
            "enrolment URIs name {enrol_authority}, which only this machine reaches: give \
             --enrol-host (the name or address phones reach the enrolment endpoint at)"
        );
    }
    let scraped = sip.clone();
    let options = api::ApiOptions::default()
        .tls(api::TlsInfo {
            fingerprint: Some(identity.fingerprint),
            enrol_authority: Some(enrol_authority.clone()),
            admin_https,
        })
        .call_traces_opt(traces)
        .provisioning(Arc::new(provisioning))
        .rates(api::Rates {
            voip_per_min: args.rate_voip,
            pstn_per_min: args.rate_pstn,
        })
        .metrics(move || {
            let sip = scraped.clone();
            async move { sip.render_metrics().await }
        });
    let counters = options.counters();
    let (app, enrol_app) = api::admin_and_enrol_routers(
        store.clone(),
        api::ApiConfig {
            domain: args.domain.clone(),
            token,
        },
        options,
        on_change,
    );
    // The gateway asks here whether a line holds a phone's zone (R29). Its credential is
    // the trunk secret (each request MACed), not the admin token: outside the admin layer.
    let app = match trunk_secret {
        Some(secret) => app.merge(api::gateway_lines::router(
            api::gateway_lines::GatewayLines::new(store.clone(), line_authority, secret),
        )),
        None => app,
    };
    let listener = tokio::net::TcpListener::bind(args.http.addr)
        .await
        .with_context(|| format!("binding admin API on {}", args.http.addr))?;
    let http_addr = listener.local_addr()?;
    let server_tls = tls::server_config(&identity).context("TLS configuration")?;
    tracing::info!(
        sip = %local, advertised = %advertised,
        http = %format_args!("{}://{http_addr}", if admin_https { "https" } else { "http" }),
        enrol = %format_args!("https://{enrol_addr}"), enrol_uri_host = %enrol_authority,
        domain = %args.domain, data = %args.data.display(), subscribers = subs.len(),
        registrations = restored, "trustring serving"
    );
    // Both HTTP listeners with the read timeout and the connection caps (R30).
    let limits = args.http_limits();
    let (admin_counters, admin) = (counters.clone(), api::ListenerKind::Admin);
    let http = if admin_https {
        let listener = api::https::TlsListener::new(listener, server_tls.clone())?;
        tokio::spawn(async move {
            api::serve::serve(
                listener,
                app,
                limits,
                admin_counters,
                admin,
                shutdown_signal(),
            )
            .await
        })
    } else {
        tokio::spawn(async move {
            api::serve::serve(
                listener,
                app,
                limits,
                admin_counters,
                admin,
                shutdown_signal(),
            )
            .await
        })
    };
    let enrol_listener = api::https::TlsListener::new(enrol_listener, server_tls)?;
    let enrol = tokio::spawn(async move {
        api::serve::serve(
            enrol_listener,
            enrol_app,
            limits,
            counters,
            api::ListenerKind::Enrol,
            shutdown_signal(),
        )
        .await
    });
    shutdown_signal().await;
    tracing::info!("shutting down");
    sip.send(Control::Shutdown);
    let _ = tokio::time::timeout(Duration::from_secs(5), sip_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), http).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), enrol).await;
    // The SIP task has dropped its event sender: the writer drains and exits.
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    Ok(())
}

/// The server's TLS identity, for every TLS listener (HTTPS now, SIP over TLS next): the
/// operator's `cert` and `key` (PEM) when both are given, else the self-signed pair under
/// `DATA/tls/`, made on first start for `names`. Its fingerprint is logged once.
pub(crate) fn tls_identity(
    data: &Path,
    cert: Option<&Path>,
    key: Option<&Path>,
    names: &[String],
) -> anyhow::Result<Arc<tls::ServerIdentity>> {
    let identity = tls::ServerIdentity::load_or_create(&data.join("tls"), cert, key, names)
        .context("the server's TLS certificate and key")?;
    tracing::info!(
        cert = %identity.cert_path.display(),
        created = identity.created,
        "tls fingerprint {} (enrolment URIs carry it; phones pin it)",
        identity.fingerprint
    );
    Ok(Arc::new(identity))
}

/// SIP over TLS (RFC 3261 §26): binds `--sip-tls` (unless `off`) with the server's TLS
/// identity (TLS 1.2 and 1.3 only) and returns the sockets and our TLS address as written
/// into Via and Record-Route: the advertised IP (or the TLS listener's own, when it is bound
/// to one and nothing is advertised) with the TLS port.
fn sip_tls(
    sockets: SipSockets,
    args: &ServeArgs,
    identity: &tls::ServerIdentity,
    advertised: SocketAddr,
) -> anyhow::Result<(SipSockets, Option<SocketAddr>)> {
    let Some(addr) = args.sip_tls.0 else {
        tracing::info!("SIP over TLS is off (--sip-tls off)");
        return Ok((sockets, None));
    };
    let config = tls::server_config(identity).context("SIP TLS configuration")?;
    let sockets = sockets.with_tls(addr, config).with_context(|| {
        format!(
            "binding SIP over TLS on {addr} (another address: --sip-tls ADDR; none: --sip-tls off)"
        )
    })?;
    let bound = sockets.tls_local_addr().unwrap_or(addr);
    let ip = if args.advertise.is_none() && !bound.ip().is_unspecified() {
        bound.ip()
    } else {
        advertised.ip()
    };
    let at = SocketAddr::new(ip, bound.port());
    tracing::info!(
        sip_tls = %bound, advertised = %at, fingerprint = %identity.fingerprint,
        "SIP over TLS (TLS 1.2/1.3, the server's certificate)"
    );
    Ok((sockets, Some(at)))
}

/// `serve --sip-tls`: `ADDR:PORT`, or `off` (also `none`, `no`, `false`, `0`) for no TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SipTlsListen(pub(crate) Option<SocketAddr>);

impl FromStr for SipTlsListen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if ["off", "none", "no", "false", "0", ""]
            .iter()
            .any(|o| s.eq_ignore_ascii_case(o))
        {
            return Ok(Self(None));
        }
        s.parse()
            .map(|a| Self(Some(a)))
            .map_err(|_| format!("{s:?}: expected ADDR:PORT or off"))
    }
}

/// Names of a self-signed certificate: the domain, localhost, 127.0.0.1, the advertised
/// address, and the enrolment host and address.
fn tls_names(args: &ServeArgs, advertised: SocketAddr) -> Vec<String> {
    let mut names = vec![
        args.domain.clone(),
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        advertised.ip().to_string(),
    ];
    names.extend(args.enrol_host.clone());
    if !args.enrol.ip().is_unspecified() {
        names.push(args.enrol.ip().to_string());
    }
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| !n.is_empty() && seen.insert(n.clone()));
    names
}

/// `HOST:PORT` of the enrolment endpoint as written in enrolment URIs.
fn uri_authority(host: Option<&str>, bound: SocketAddr, advertised: IpAddr) -> String {
    let host = match host {
        Some(h) => h.to_owned(),
        None if bound.ip().is_unspecified() => advertised.to_string(),
        None => bound.ip().to_string(),
    };
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{}", bound.port())
    } else {
        format!("{host}:{}", bound.port())
    }
}

/// `serve --http`: the admin API's address, and whether it speaks HTTPS (`None`: decided by
/// the address, plain HTTP on loopback only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HttpListen {
    pub(crate) addr: SocketAddr,
    tls: Option<bool>,
}

impl HttpListen {
    /// Whether the admin API speaks HTTPS; an error for plain HTTP off loopback.
    pub(crate) fn https(&self) -> anyhow::Result<bool> {
        let loopback = self.addr.ip().is_loopback();
        match self.tls {
            Some(true) => Ok(true),
            None => Ok(!loopback),
            Some(false) if loopback => Ok(false),
            Some(false) => anyhow::bail!(
                "--http http://{}: plain HTTP for the admin API is allowed on a loopback address \
                 only (the admin token would cross the network in clear); use https://{} (the \
                 server's TLS certificate) or a 127.0.0.1 address",
                self.addr,
                self.addr
            ),
        }
    }
}

impl FromStr for HttpListen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let lower = s.to_ascii_lowercase();
        let (tls, rest) = if lower.starts_with("https://") {
            (Some(true), &s[8..])
        } else if lower.starts_with("http://") {
            (Some(false), &s[7..])
        } else {
            (None, s)
        };
        let addr = rest.trim_end_matches('/').parse().map_err(|_| {
            format!("{s:?}: expected ADDR:PORT, http://ADDR:PORT or https://ADDR:PORT")
        })?;
        Ok(Self { addr, tls })
    }
}

type Loaded = (Vec<Subscriber>, Vec<Registration>, Vec<Device>);

async fn load(store: Arc<dyn Store>) -> anyhow::Result<Loaded> {
    tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let subs = store.subscribers().context("loading subscribers")?;
        let now_ms = unix_ms();
        let purged = store
            .purge_expired(now_ms)
            .context("purging expired registrations")?;
        if purged > 0 {
            tracing::info!(purged, "dropped registrations that expired while stopped");
        }
        let regs = store
            .registrations(None, now_ms)
            .context("loading registrations")?;
        let devices = store.devices(None).context("loading devices")?;
        Ok((subs, regs, devices))
    })
    .await
    .context("store loader panicked")?
}

fn entry(s: &Subscriber) -> SubscriberEntry {
    SubscriberEntry {
        user: s.user.clone(),
        ha1_md5: s.ha1_md5.clone(),
        ha1_sha256: s.ha1_sha256.clone(),
        ring_timeout: Duration::from_secs(u64::from(s.profile.ring_timeout_secs)),
        ring_delays: s
            .profile
            .ring_delays
            .iter()
            .map(|d| {
                (
                    d.contact_contains.clone(),
                    Duration::from_millis(u64::from(d.delay_ms)),
                )
            })
            .collect(),
    }
}

/// A stored registration as a live binding (`None` if it is unusable or expired).
fn binding(r: &Registration, now: Instant, now_ms: i64) -> Option<Binding> {
    let left = u64::try_from(r.expires_at_ms - now_ms)
        .ok()
        .filter(|&l| l > 0)?;
    let transport = Transport::from_token(&r.transport).unwrap_or(Transport::Udp);
    let uri = Uri::parse(&r.contact).ok()?;
    let source = Target {
        transport,
        addr: r.source.parse().ok()?,
        conn: None,
    };
    Some(Binding {
        contact: r.contact.clone(),
        // Where it is reached is decided again by `Proxy::restore_binding`.
        target: source,
        uri,
        source,
        call_id: r.call_id.clone(),
        cseq: r.cseq,
        expires_at: now + Duration::from_millis(left),
        device: r.device_id.clone(),
        q: r.q,
        reach: Reach::Direct,
    })
}

/// Wall-clock Unix milliseconds (the one clock read the binary's records use).
pub(crate) fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Persists the proxy's events on a thread of its own, timing each store call into
/// `metrics`. Each chunk (what queued up while the last write ran) is written as: its
/// security events one by one, then its registration changes in order in one commit, then
/// its CDRs in order in one commit (the three tables are independent; order within each
/// is kept).
fn spawn_writer(
    store: Arc<dyn Store>,
    mut events: mpsc::Receiver<Event>,
    domain: String,
    metrics: Arc<Metrics>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut chunk = Vec::with_capacity(WRITE_BATCH);
        while let Some(first) = events.blocking_recv() {
            // Group commit: what queued up while the last write ran goes in one go, so under
            // load CDRs share a commit (and its fsync and signed head) instead of one each.
            chunk.push(first);
            while chunk.len() < WRITE_BATCH
                && let Ok(e) = events.try_recv()
            {
                chunk.push(e);
            }
            let mut cdrs = Vec::new();
            let mut registrations = Vec::new();
            for e in chunk.drain(..) {
                match e {
                    Event::BindingSaved {
                        user,
                        binding,
                        expires_in,
                    } => registrations.push(RegistrationChange::Put(Registration {
                        user,
                        contact: binding.contact,
                        transport: binding.source.transport.as_str().to_owned(),
                        source: binding.source.addr.to_string(),
                        local: String::new(),
                        call_id: binding.call_id,
                        cseq: binding.cseq,
                        expires_at_ms: unix_ms() + expires_in.as_millis() as i64,
                        q: binding.q,
                        device_id: binding.device,
                    })),
                    Event::BindingRemoved { user, contact } => {
                        registrations.push(RegistrationChange::Delete { user, contact });
                    }
                    Event::CallEnded(call) => {
                        let enterprise = store
                            .subscriber(&call.called)
                            .ok()
                            .flatten()
                            .map_or_else(|| call.called.clone(), |s| s.enterprise);
                        cdrs.push(crate::cdr::from_call(
                            &call,
                            &domain,
                            &enterprise,
                            crate::cdr::instant_to_unix_ms(),
                        ));
                    }
                    other => persist(&*store, &other, &metrics),
                }
            }
            if !registrations.is_empty() {
                // In the order the proxy made them, one commit for all.
                let started = Instant::now();
                let res = store.apply_registrations(&registrations);
                metrics.observe_store(StoreOp::Registration, started.elapsed());
                let failed = match res {
                    Ok(results) => results.into_iter().filter_map(Result::err).collect(),
                    Err(err) => vec![err],
                };
                for err in failed {
                    tracing::error!(error = %err, "persisting a registration change failed");
                }
            }
            if cdrs.is_empty() {
                continue;
            }
            // R18: the CDRs are committed (synchronous=FULL) before anything reports them.
            let started = Instant::now();
            let res = store.append_cdrs(&cdrs);
            metrics.observe_store(StoreOp::Cdr, started.elapsed());
            match res {
                Ok(stored) => {
                    for c in stored {
                        tracing::info!(cdr = c.id, call_id = %c.call_id, status = c.final_status,
                            duration_ms = c.duration_ms, released_by = %c.released_by, "call ended");
                    }
                }
                Err(err) => {
                    tracing::error!(error = %err, records = cdrs.len(), "writing CDRs failed");
                }
            }
        }
    })
}

/// Most events the store writer takes at once (one CDR commit for all of its calls).
const WRITE_BATCH: usize = 256;

/// Writes one security event, timed into the store metrics.
fn persist(store: &dyn Store, e: &Event, metrics: &Metrics) {
    let Event::Security {
        kind,
        user,
        device,
        call_id,
        detail,
    } = e
    else {
        return;
    };
    let started = Instant::now();
    let res = store.add_security_event(&SecurityEvent {
        id: 0,
        at_ms: unix_ms(),
        kind: kind.clone(),
        user: Some(user.clone()),
        device_id: Some(device.clone()),
        call_id: Some(call_id.clone()),
        detail: detail.clone(),
    });
    metrics.observe_store(StoreOp::SecurityEvent, started.elapsed());
    if let Err(err) = res {
        tracing::error!(error = %err, "recording a security event failed");
    }
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_http_is_plain_on_loopback_only() {
        let parse = |s: &str| s.parse::<HttpListen>().map_err(anyhow::Error::msg);
        let https = |s: &str| parse(s).and_then(|h| h.https());
        assert!(!https("127.0.0.1:8080").unwrap_or(true));
        assert!(!https("http://[::1]:8080").unwrap_or(true));
        assert!(https("0.0.0.0:8080").unwrap_or(false));
        assert!(https("https://127.0.0.1:8080").unwrap_or(false));
        let err = https("http://0.0.0.0:8080").err().map(|e| e.to_string());
        assert!(
            err.as_deref().is_some_and(|e| e.contains("loopback")),
            "{err:?}"
        );
        assert!(parse("nonsense").is_err());
        assert_eq!(
            parse("https://10.0.0.1:443/").ok().map(|h| h.addr),
            "10.0.0.1:443".parse().ok()
        );
    }

    #[test]
    fn sip_tls_flag() {
        let parse = |s: &str| s.parse::<SipTlsListen>().map(|l| l.0);
        assert_eq!(parse("off"), Ok(None));
        assert_eq!(parse("OFF"), Ok(None));
        assert_eq!(parse("none"), Ok(None));
        assert_eq!(
            parse("0.0.0.0:5061"),
            Ok(Some(SocketAddr::from(([0, 0, 0, 0], 5061))))
        );
        assert!(parse("5061").is_err());
    }

    #[test]
    fn enrolment_authority() {
        let v4: IpAddr = [192, 0, 2, 7].into();
        let any: SocketAddr = "0.0.0.0:8443"
            .parse()
            .unwrap_or(SocketAddr::from(([0; 4], 0)));
        assert_eq!(uri_authority(None, any, v4), "192.0.2.7:8443");
        assert_eq!(
            uri_authority(Some("enrol.example.com"), any, v4),
            "enrol.example.com:8443"
        );
        let bound: SocketAddr = "[::1]:9443".parse().unwrap_or(any);
        assert_eq!(uri_authority(None, bound, v4), "[::1]:9443");
    }
}
