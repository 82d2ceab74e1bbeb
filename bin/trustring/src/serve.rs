//! `trustring serve`: opens the store, loads subscribers and live registrations into the
//! proxy, and runs the SIP transports, the store writer and the admin API until SIGINT or
//! SIGTERM.
//!
//! Registration changes are persisted by a dedicated writer thread, in the order the proxy
//! made them, so the SIP loop never waits on a disk sync. On shutdown the writer drains its
//! queue before the process exits. The writer times every store call into the store latency
//! histogram of the metrics served at `GET /metrics` (with the SIP loop's counters).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use sip_core::message::Uri;
use sip_core::proxy::{
    Binding, Event, Proxy, ProxyConfig, Reach, SubscriberEntry, Target, Transport,
};
use sip_net::{Control, Metrics, SipSockets, StoreOp};
use store::{Device, Registration, SecurityEvent, SqliteStore, Store, Subscriber};
use tokio::sync::mpsc;

use crate::ServeArgs;
use crate::token::{self, Origin};
use crate::trust;

pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<()> {
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
    let db = args.data.join("trustring.db");
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(&db).with_context(|| format!("opening store {}", db.display()))?,
    );
    let (token, origin) = token::admin_token(&args.data)?;
    match origin {
        Origin::Generated => tracing::info!(
            token = %token,
            file = %args.data.join("admin-token").display(),
            "generated the admin API token (shown once; it is kept in the file)"
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
    let now = Instant::now();
    let mut cfg = ProxyConfig::new(args.domain.clone(), advertised, token::random_bytes());
    cfg.digest = args.digest;
    cfg.nat = sip_core::proxy::NatConfig {
        private: args.private_ranges.0.clone(),
        keepalive: (args.nat_keepalive_secs > 0)
            .then(|| Duration::from_secs(args.nat_keepalive_secs)),
        ..sip_core::proxy::NatConfig::default()
    };
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
        tracing::info!(%addr, "phones with a number ring through the gateway");
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
            proxy.restore_binding(&r.user, b, now);
            restored += 1;
        }
    }

    let (events_tx, events_rx) = mpsc::unbounded_channel();
    // Every message in and out, per call, for the console's ladders and `trustring demo`.
    let traces = (!args.no_call_trace).then(sip_net::trace::TraceSink::new);
    let (sip, sip_task) = sip_net::spawn_traced(proxy, sockets, events_tx, traces.clone());
    // Events wait in the channel until the writer runs.
    let writer = spawn_writer(
        store.clone(),
        events_rx,
        args.domain.clone(),
        sip.metrics().clone(),
    );

    let control = sip.clone();
    let (change_store, change_keys) = (store.clone(), keys.clone());
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
    let scraped = sip.clone();
    let options = api::ApiOptions::default()
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
    let app = api::router_with_options(
        store.clone(),
        api::ApiConfig {
            domain: args.domain.clone(),
            token,
        },
        options,
        on_change,
    );
    let listener = tokio::net::TcpListener::bind(args.http)
        .await
        .with_context(|| format!("binding admin API on {}", args.http))?;
    tracing::info!(
        sip = %local, advertised = %advertised, http = %listener.local_addr()?, domain = %args.domain,
        data = %args.data.display(), subscribers = subs.len(), registrations = restored,
        "trustring serving"
    );
    let http = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await
    });
    shutdown_signal().await;
    tracing::info!("shutting down");
    sip.send(Control::Shutdown);
    let _ = tokio::time::timeout(Duration::from_secs(5), sip_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), http).await;
    // The SIP task has dropped its event sender: the writer drains and exits.
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    Ok(())
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
    let transport = if r.transport.eq_ignore_ascii_case("TCP") {
        Transport::Tcp
    } else {
        Transport::Udp
    };
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

/// Persists binding events in order on a thread of its own, timing each store call into
/// `metrics`.
fn spawn_writer(
    store: Arc<dyn Store>,
    mut events: mpsc::UnboundedReceiver<Event>,
    domain: String,
    metrics: Arc<Metrics>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while let Some(e) = events.blocking_recv() {
            let op = match &e {
                Event::BindingSaved { .. } | Event::BindingRemoved { .. } => {
                    Some(StoreOp::Registration)
                }
                Event::CallEnded(_) => Some(StoreOp::Cdr),
                Event::Security { .. } => Some(StoreOp::SecurityEvent),
                _ => None,
            };
            let started = Instant::now();
            let res = match &e {
                Event::BindingSaved {
                    user,
                    binding,
                    expires_in,
                } => {
                    let reg = Registration {
                        user: user.clone(),
                        contact: binding.contact.clone(),
                        transport: binding.source.transport.as_str().to_owned(),
                        source: binding.source.addr.to_string(),
                        local: String::new(),
                        call_id: binding.call_id.clone(),
                        cseq: binding.cseq,
                        expires_at_ms: unix_ms() + expires_in.as_millis() as i64,
                        q: binding.q,
                        device_id: binding.device.clone(),
                    };
                    store.put_registration(&reg).map(|_| ())
                }
                Event::BindingRemoved { user, contact } => {
                    store.delete_registration(user, contact).map(|_| ())
                }
                Event::CallEnded(call) => {
                    // R18: the CDR is committed (synchronous=FULL) before anything reports it.
                    let enterprise = store
                        .subscriber(&call.called)
                        .ok()
                        .flatten()
                        .map_or_else(|| call.called.clone(), |s| s.enterprise);
                    let cdr = crate::cdr::from_call(
                        call,
                        &domain,
                        &enterprise,
                        crate::cdr::instant_to_unix_ms(),
                    );
                    store.append_cdr(&cdr).map(|c| {
                        tracing::info!(cdr = c.id, call_id = %c.call_id, status = c.final_status,
                            duration_ms = c.duration_ms, released_by = %c.released_by, "call ended");
                    })
                }
                Event::Security {
                    kind,
                    user,
                    device,
                    call_id,
                    detail,
                } => store
                    .add_security_event(&SecurityEvent {
                        id: 0,
                        at_ms: unix_ms(),
                        kind: kind.clone(),
                        user: Some(user.clone()),
                        device_id: Some(device.clone()),
                        call_id: Some(call_id.clone()),
                        detail: detail.clone(),
                    })
                    .map(|_| ()),
                _ => Ok(()),
            };
            if let Some(op) = op {
                metrics.observe_store(op, started.elapsed());
            }
            if let Err(err) = res {
                tracing::error!(error = %err, "persisting a registration change failed");
            }
        }
    })
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
