//! The tokio IO layer: UDP, TCP and TLS transports that drive the Sans-IO
//! [`sip_core::proxy::Proxy`].
//!
//! One task owns the proxy. It reads the UDP socket itself (no channel hop on the hot path),
//! takes framed TCP and TLS messages and control commands from channels, sleeps until the
//! proxy's next timer, and after every input drains the proxy's outputs: datagrams are sent
//! at once, stream bytes go to the connection's writer task, and events go to the caller's
//! event sink (the store writer). No SIP logic lives here.
//!
//! TLS: the listener serves clients; the driver dials over TLS only the peers it was given a
//! pinned key for ([`NetOptions::tls_peers`]: the gateway's SIP trunk), see the `tls` module.
//!
//! Bounded memory under hostile peers (R30): the UDP socket is read inline (the kernel's
//! buffer is the only queue), the stream transports' queues, connection caps and timeouts
//! are in the `tcp` module's docs ([`StreamLimits`]).
//!
//! Metrics ([`Metrics`]): the driver times the branch INVITEs of each fork as they leave
//! (fork skew, R11) and hands out the proxy's counters when a scrape asks
//! ([`SipHandle::render_metrics`]).

mod metrics;
mod tcp;
mod tls;
pub mod trace;

pub use metrics::{
    FORK_SKEW_BUCKETS_US, Histogram, HistogramSnapshot, KNOWN_TRUST_KINDS, Metrics,
    STORE_LATENCY_BUCKETS_MS, StoreOp, render,
};
pub use tcp::StreamLimits;
/// The rustls this crate's TLS listener and client are built with (for their
/// configurations).
pub use tokio_rustls::rustls;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sip_core::proxy::{
    ConnId, DeviceEntry, Event, Output, Proxy, ProxyStats, SubscriberEntry, Target, Transport,
};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, UdpSocket};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};

use crate::tcp::ConnHandle;

/// Commands from the rest of the server (admin API) to the proxy.
#[derive(Debug)]
#[non_exhaustive]
pub enum Control {
    /// A subscriber was created or changed.
    Upsert(SubscriberEntry),
    /// A subscriber was deleted.
    Remove(String),
    /// An enrolled phone was added or changed (on/off).
    UpsertDevice(DeviceEntry),
    /// A phone was revoked: drop its bindings and never fork to it again.
    RemoveDevice(String),
    /// Answer with a snapshot of the proxy's counters and gauges (for metrics).
    Stats(oneshot::Sender<ProxyStats>),
    /// Stop the loop (after draining what is queued).
    Shutdown,
}

/// What the connection tasks tell the proxy task.
#[derive(Debug)]
pub(crate) enum NetInput {
    Connected {
        conn: ConnId,
        handle: ConnHandle,
    },
    Message {
        conn: ConnId,
        peer: SocketAddr,
        transport: Transport,
        data: Bytes,
    },
    Closed(ConnId),
    /// A connection we dialled never opened: the proxy fails what it sent there.
    ConnectFailed(ConnId),
}

/// Messages from the stream connections waiting for the proxy task; a reader waits when
/// they are this many (back-pressure, see the `tcp` module).
pub const NET_QUEUE: usize = 256;

/// Capacity of the queue of proxy events for the store writer (`spawn*`'s `events`): a
/// caller should make its channel this size. Full, the SIP loop waits (back-pressure).
pub const EVENT_QUEUE: usize = 8192;

/// How long a scrape waits for the SIP loop's counters before it serves the last ones.
pub const STATS_TIMEOUT: Duration = Duration::from_secs(2);

/// Handles to a running SIP server.
#[derive(Debug, Clone)]
pub struct SipHandle {
    control: mpsc::UnboundedSender<Control>,
    metrics: Arc<Metrics>,
}

impl SipHandle {
    /// Sends a control command; returns `false` if the server has stopped.
    pub fn send(&self, c: Control) -> bool {
        self.control.send(c).is_ok()
    }

    /// The server's metrics (shared: the store writer observes its latency into them).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// A fresh snapshot of the proxy's counters, taken by the SIP loop between two inputs;
    /// `None` if the server has stopped or did not answer within [`STATS_TIMEOUT`].
    pub async fn stats(&self) -> Option<ProxyStats> {
        let (tx, rx) = oneshot::channel();
        if !self.send(Control::Stats(tx)) {
            return None;
        }
        tokio::time::timeout(STATS_TIMEOUT, rx).await.ok()?.ok()
    }

    /// Every metric in the Prometheus text format, with the proxy's counters fresh from the
    /// SIP loop (or the last ones taken, if it does not answer in time).
    pub async fn render_metrics(&self) -> String {
        let stats = match self.stats().await {
            Some(s) => {
                self.metrics.set_proxy_stats(s.clone());
                s
            }
            None => self.metrics.proxy_stats(),
        };
        self.metrics.render_with(&stats)
    }
}

/// The bound sockets of a SIP server.
#[derive(Debug)]
pub struct SipSockets {
    udp: UdpSocket,
    tcp: TcpListener,
    tls: Option<TlsListener>,
}

/// The SIP over TLS listener and its configuration.
struct TlsListener {
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener")
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

/// The kernel buffer size asked for the UDP socket, each way (SO_RCVBUF and SO_SNDBUF), as
/// Kamailio's kit does: with the Linux default (212 992 bytes) the socket drops datagrams
/// in the bursts of a few thousand calls per second.
pub const UDP_BUFFER_SIZE: usize = 4 * 1024 * 1024;

/// Backlog of the TCP listener (what `tokio::net::TcpListener::bind` uses).
const TCP_BACKLOG: u32 = 1024;

/// Set once the "buffers capped" notice was logged, so a process logs it at most once.
static CAP_LOGGED: AtomicBool = AtomicBool::new(false);

impl SipSockets {
    /// Binds UDP and TCP on `addr` (same port for both).
    ///
    /// The UDP socket's receive and send buffers are raised to [`UDP_BUFFER_SIZE`]. The
    /// kernel may grant less (Linux caps at `net.core.rmem_max` / `net.core.wmem_max`):
    /// that is logged, never an error. The TCP listener sets SO_REUSEADDR, so a restarted
    /// server rebinds its port while old connections linger in TIME_WAIT.
    pub async fn bind(addr: SocketAddr) -> io::Result<Self> {
        let udp = bind_udp(addr)?;
        let tcp = bind_tcp(udp.local_addr()?)?;
        Ok(Self {
            udp,
            tcp,
            tls: None,
        })
    }

    /// Adds a SIP over TLS listener on `addr` (TCP, SO_REUSEADDR) serving with `config`
    /// (which decides the protocol versions: give it TLS 1.2 and 1.3 only). Call it inside a
    /// tokio runtime.
    pub fn with_tls(
        mut self,
        addr: SocketAddr,
        config: Arc<rustls::ServerConfig>,
    ) -> io::Result<Self> {
        let listener = bind_tcp(addr)?;
        self.tls = Some(TlsListener { listener, config });
        Ok(self)
    }

    /// The bound address (UDP and TCP).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.udp.local_addr()
    }

    /// The TLS listener's bound address, if there is one.
    pub fn tls_local_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().and_then(|t| t.listener.local_addr().ok())
    }
}

/// Creates the UDP socket, sizes its buffers, binds it and hands it to tokio.
fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    size_udp_buffers(&socket);
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket.into())
}

/// Asks for [`UDP_BUFFER_SIZE`] each way and logs what the kernel granted. Nothing here
/// fails the bind: a smaller buffer only means drops under bursts.
fn size_udp_buffers(socket: &Socket) {
    if let Err(e) = socket.set_recv_buffer_size(UDP_BUFFER_SIZE) {
        tracing::warn!(error = %e, "setting the UDP receive buffer size (SO_RCVBUF) failed");
    }
    if let Err(e) = socket.set_send_buffer_size(UDP_BUFFER_SIZE) {
        tracing::warn!(error = %e, "setting the UDP send buffer size (SO_SNDBUF) failed");
    }
    let (rcv, snd) = match (socket.recv_buffer_size(), socket.send_buffer_size()) {
        (Ok(rcv), Ok(snd)) => (rcv, snd),
        (Err(e), _) | (_, Err(e)) => {
            tracing::debug!(error = %e, "reading the UDP socket buffer sizes failed");
            return;
        }
    };
    tracing::debug!(
        rcvbuf = rcv,
        sndbuf = snd,
        asked = UDP_BUFFER_SIZE,
        "UDP socket buffer sizes granted by the kernel"
    );
    // Linux doubles the size asked (room for its bookkeeping) and reports the doubled value.
    let usable = |reported: usize| {
        if cfg!(target_os = "linux") {
            reported / 2
        } else {
            reported
        }
    };
    if (usable(rcv) < UDP_BUFFER_SIZE || usable(snd) < UDP_BUFFER_SIZE)
        && !CAP_LOGGED.swap(true, Ordering::Relaxed)
    {
        tracing::info!(
            rcvbuf = rcv,
            sndbuf = snd,
            asked = UDP_BUFFER_SIZE,
            "the kernel capped the UDP socket buffers, so bursts of traffic may be dropped; \
             raise the caps with `sysctl -w net.core.rmem_max={UDP_BUFFER_SIZE} \
             net.core.wmem_max={UDP_BUFFER_SIZE}`"
        );
    }
}

/// Binds the TCP listener with SO_REUSEADDR.
fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(TCP_BACKLOG)
}

/// Runs the SIP server until [`Control::Shutdown`]. `events` receives every proxy event
/// (binding changes to persist) in order.
pub fn spawn(
    proxy: Proxy,
    sockets: SipSockets,
    events: mpsc::Sender<Event>,
) -> (SipHandle, tokio::task::JoinHandle<()>) {
    spawn_with(proxy, sockets, events, NetOptions::default())
}

/// [`spawn`], recording every message received and sent into `trace` (ladder diagrams).
pub fn spawn_traced(
    proxy: Proxy,
    sockets: SipSockets,
    events: mpsc::Sender<Event>,
    trace: Option<trace::TraceSink>,
) -> (SipHandle, tokio::task::JoinHandle<()>) {
    spawn_with(
        proxy,
        sockets,
        events,
        NetOptions {
            trace,
            ..NetOptions::default()
        },
    )
}

/// How [`spawn_with`] runs the transports.
#[derive(Debug, Clone, Default)]
pub struct NetOptions {
    /// Where every message received and sent is recorded (ladder diagrams), if anywhere.
    pub trace: Option<trace::TraceSink>,
    /// Caps, queues and timeouts of the TCP and TLS connections.
    pub limits: StreamLimits,
    /// The peers the proxy dials over TLS itself (the gateway), each with the client
    /// configuration that pins its key (`trustring-tls`'s `pinned_client_config`). A TLS
    /// send to any other address without a live connection is dropped (see the `tls`
    /// module).
    pub tls_peers: HashMap<SocketAddr, Arc<rustls::ClientConfig>>,
}

/// [`spawn`] with `options`.
pub fn spawn_with(
    proxy: Proxy,
    sockets: SipSockets,
    events: mpsc::Sender<Event>,
    options: NetOptions,
) -> (SipHandle, tokio::task::JoinHandle<()>) {
    // Unbounded on purpose, and still small: every command comes from an admin API request
    // (or a metrics scrape) that is itself capped by the HTTP connection limits, and the loop
    // takes control commands first (`biased` select), so the queue holds at most what those
    // requests sent while one store write blocked the loop.
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let metrics = Arc::new(Metrics::new());
    let task = tokio::spawn(run(
        proxy,
        sockets,
        control_rx,
        events,
        metrics.clone(),
        options,
    ));
    (
        SipHandle {
            control: control_tx,
            metrics,
        },
        task,
    )
}

struct Driver {
    proxy: Proxy,
    udp: Arc<UdpSocket>,
    conns: HashMap<ConnId, ConnHandle>,
    /// The connection to reuse for a (transport, peer address).
    by_addr: HashMap<(Transport, SocketAddr), ConnId>,
    ctx: tcp::Ctx,
    next_conn: Arc<AtomicU64>,
    events: mpsc::Sender<Event>,
    trace: Option<trace::TraceSink>,
    tls_peers: HashMap<SocketAddr, Arc<rustls::ClientConfig>>,
}

async fn run(
    proxy: Proxy,
    sockets: SipSockets,
    mut control: mpsc::UnboundedReceiver<Control>,
    events: mpsc::Sender<Event>,
    metrics: Arc<Metrics>,
    options: NetOptions,
) {
    let (net_tx, mut net_rx) = mpsc::channel(NET_QUEUE);
    let next_conn = Arc::new(AtomicU64::new(1));
    let ctx = tcp::Ctx {
        net: net_tx,
        limits: options.limits,
        metrics,
    };
    let admission = tcp::Admission::new(options.limits);
    let mut listeners = vec![tokio::spawn(tcp::accept_loop(
        sockets.tcp,
        ctx.clone(),
        admission.clone(),
        next_conn.clone(),
    ))];
    if let Some(t) = sockets.tls {
        listeners.push(tokio::spawn(tls::accept_loop(
            t.listener,
            t.config,
            ctx.clone(),
            admission,
            next_conn.clone(),
        )));
    }
    let udp = Arc::new(sockets.udp);
    let mut d = Driver {
        proxy,
        udp: udp.clone(),
        conns: HashMap::new(),
        by_addr: HashMap::new(),
        ctx,
        next_conn,
        events,
        trace: options.trace,
        tls_peers: options.tls_peers,
    };
    // What the proxy queued before the loop (e.g. registrations not restored).
    d.drain().await;
    let mut buf = vec![0u8; 65_536];
    loop {
        let deadline = d.proxy.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            biased;
            c = control.recv() => match c {
                Some(Control::Upsert(e)) => d.proxy.upsert_subscriber(e),
                Some(Control::Remove(u)) => d.proxy.remove_subscriber(&u),
                Some(Control::UpsertDevice(e)) => d.proxy.upsert_device(e),
                Some(Control::RemoveDevice(id)) => d.proxy.remove_device(&id),
                Some(Control::Stats(reply)) => {
                    let _ = reply.send(d.proxy.stats(Instant::now()));
                }
                Some(Control::Shutdown) | None => break,
            },
            r = udp.recv_from(&mut buf) => {
                match r {
                    Ok((n, src)) => {
                        let now = Instant::now();
                        d.traced_in("UDP", src, &buf[..n]);
                        d.proxy.handle_receive(now, Transport::Udp, src, None, &buf[..n]);
                        // Take what else is queued before draining outputs (bounded).
                        for _ in 0..63 {
                            match udp.try_recv_from(&mut buf) {
                                Ok((n, src)) => {
                                    d.traced_in("UDP", src, &buf[..n]);
                                    d.proxy.handle_receive(now, Transport::Udp, src, None, &buf[..n]);
                                }
                                Err(_) => break,
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "UDP receive error"),
                }
            }
            n = net_rx.recv() => match n {
                Some(n) => d.net_input(n),
                None => break,
            },
            _ = sleep_until(deadline) => d.proxy.handle_timeout(Instant::now()),
        }
        d.drain().await;
    }
    for l in listeners {
        l.abort();
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

impl Driver {
    fn traced_in(&self, transport: &'static str, peer: SocketAddr, data: &[u8]) {
        if let Some(t) = &self.trace {
            t.record(trace::Direction::In, transport, peer, data);
        }
    }

    fn net_input(&mut self, n: NetInput) {
        match n {
            NetInput::Connected { conn, handle } => {
                self.by_addr.insert((handle.transport, handle.peer), conn);
                self.conns.insert(conn, handle);
            }
            NetInput::Message {
                conn,
                peer,
                transport,
                data,
            } => {
                if !self.conns.contains_key(&conn) {
                    // Closed by us (its writer overflowed) while its last messages queued.
                    return;
                }
                self.traced_in(transport.as_str(), peer, &data);
                self.proxy
                    .handle_receive(Instant::now(), transport, peer, Some(conn), &data);
            }
            NetInput::Closed(conn) => self.forget(conn),
            NetInput::ConnectFailed(conn) => {
                let peer = self.conns.get(&conn).map(|h| (h.transport, h.peer));
                self.forget(conn);
                if let Some((transport, addr)) = peer {
                    self.proxy.transport_failed(transport, addr, Instant::now());
                }
            }
        }
    }

    /// Drops a connection from the maps and tells the proxy (which drops the bindings
    /// reached only over it). Harmless for a connection already forgotten.
    fn forget(&mut self, conn: ConnId) {
        if let Some(h) = self.conns.remove(&conn)
            && self.by_addr.get(&(h.transport, h.peer)) == Some(&conn)
        {
            self.by_addr.remove(&(h.transport, h.peer));
        }
        self.proxy.connection_closed(conn);
    }

    /// Closes a connection whose peer does not read (its writer queue is full).
    fn close_slow_reader(&mut self, conn: ConnId) {
        if let Some(h) = self.conns.get(&conn) {
            self.ctx.metrics.count_connection_dropped();
            tracing::info!(
                peer = %h.peer,
                transport = h.transport.as_str(),
                "closing a connection whose peer does not read (writer queue full)"
            );
            h.shared.kill.notify_one();
        }
        self.forget(conn);
    }

    /// Sends and hands out everything the proxy queued. The branch INVITEs of a fork come
    /// out back to back; the time from the first one's send completing to the last one's is
    /// the fork's skew (R11), observed when a fork of two or more branches is done. For TCP
    /// branches "sent" means queued to the connection's writer.
    async fn drain(&mut self) {
        // (fork, first send done, last send done, branches sent): no allocation per packet.
        let mut burst: Option<(u64, Instant, Instant, u32)> = None;
        while let Some(o) = self.proxy.poll_output() {
            match o {
                Output::Transmit(t) => {
                    if burst.is_some_and(|b| Some(b.0) != t.fork) {
                        self.observe_skew(burst.take());
                    }
                    let fork = t.fork;
                    self.send(t.target, t.payload).await;
                    if let Some(f) = fork {
                        let done = Instant::now();
                        match burst.as_mut() {
                            Some(b) => {
                                b.2 = done;
                                b.3 += 1;
                            }
                            None => burst = Some((f, done, done, 1)),
                        }
                    }
                }
                Output::Event(e) => {
                    let e = *e;
                    if let Event::BindingSaved { binding, .. } = &e
                        && let Some(h) = binding.source.conn.and_then(|c| self.conns.get(&c))
                    {
                        // A registration lives on this connection: the long idle timeout.
                        h.shared.bound.store(true, Ordering::Relaxed);
                    }
                    // Bounded (EVENT_QUEUE): when the store falls behind, the SIP loop waits
                    // for it instead of queueing without limit; nothing is dropped, and new
                    // datagrams wait in the kernel (and are retransmitted by their senders).
                    match self.events.try_send(e) {
                        Ok(()) | Err(TrySendError::Closed(_)) => {}
                        Err(TrySendError::Full(e)) => {
                            self.ctx.metrics.count_store_wait();
                            let _ = self.events.send(e).await;
                        }
                    }
                }
            }
        }
        self.observe_skew(burst);
    }

    fn observe_skew(&self, burst: Option<(u64, Instant, Instant, u32)>) {
        if let Some((_, first, last, n)) = burst
            && n >= 2
        {
            self.ctx
                .metrics
                .observe_fork_skew(last.saturating_duration_since(first));
        }
    }

    async fn send(&mut self, target: Target, payload: Bytes) {
        if let Some(t) = &self.trace {
            t.record(
                trace::Direction::Out,
                target.transport.as_str(),
                target.addr,
                &payload,
            );
        }
        match target.transport {
            Transport::Udp => {
                if let Err(e) = self.udp.send_to(&payload, target.addr).await {
                    tracing::debug!(dest = %target.addr, error = %e, "UDP send failed");
                }
            }
            Transport::Tcp | Transport::Tls => {
                let conn = target
                    .conn
                    .filter(|c| {
                        self.conns
                            .get(c)
                            .is_some_and(|h| h.transport == target.transport)
                    })
                    .or_else(|| self.by_addr.get(&(target.transport, target.addr)).copied());
                let mut payload = payload;
                if let Some(c) = conn
                    && let Some(h) = self.conns.get(&c)
                {
                    match h.writer.try_send(payload) {
                        Ok(()) => return,
                        Err(TrySendError::Full(_)) => {
                            // Dropped, and the connection with it (see the `tcp` module).
                            self.close_slow_reader(c);
                            return;
                        }
                        Err(TrySendError::Closed(p)) => {
                            // Its tasks ended; their Closed is on the way.
                            self.forget(c);
                            payload = p;
                        }
                    }
                }
                let pinned = match target.transport {
                    Transport::Tls => match self.tls_peers.get(&target.addr) {
                        Some(config) => Some(config.clone()),
                        None => {
                            tracing::debug!(
                                dest = %target.addr,
                                "no TLS connection to this peer: not sent (the proxy dials \
                                 only the pinned gateway over TLS)"
                            );
                            return;
                        }
                    },
                    _ => None,
                };
                // No live connection: open one; the bytes wait in its queue.
                let id = ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed));
                let (h, out) = tcp::handle(target.transport, target.addr, &self.ctx.limits);
                let shared = h.shared.clone();
                let _ = h.writer.try_send(payload);
                self.conns.insert(id, h);
                self.by_addr.insert((target.transport, target.addr), id);
                let ctx = self.ctx.clone();
                match pinned {
                    Some(config) => {
                        tokio::spawn(tls::connect(id, target.addr, config, out, shared, ctx))
                    }
                    None => tokio::spawn(tcp::connect(id, target.addr, out, shared, ctx)),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use socket2::SockRef;

    /// A `net.core` sysctl, when this is Linux and it can be read.
    fn sysctl(name: &str) -> Option<usize> {
        std::fs::read_to_string(format!("/proc/sys/net/core/{name}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    #[tokio::test]
    async fn udp_buffers_are_raised() {
        let s = SipSockets::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("binds although the kernel may cap the buffers");
        let udp = SockRef::from(&s.udp);
        let (rcv, snd) = (
            udp.recv_buffer_size().expect("SO_RCVBUF"),
            udp.send_buffer_size().expect("SO_SNDBUF"),
        );
        // What a socket gets when nobody asks (212 992 on a stock Linux).
        let plain = Socket::new(Domain::IPV4, Type::DGRAM, None).expect("plain socket");
        let (default_rcv, default_snd) = (
            plain.recv_buffer_size().expect("default SO_RCVBUF"),
            plain.send_buffer_size().expect("default SO_SNDBUF"),
        );
        assert!(
            rcv >= default_rcv,
            "SO_RCVBUF {rcv} < default {default_rcv}"
        );
        assert!(
            snd >= default_snd,
            "SO_SNDBUF {snd} < default {default_snd}"
        );
        // Where the caps allow more than the default, more was granted; where they allow
        // the whole size asked, all of it was.
        for (granted, default, cap) in [
            (rcv, default_rcv, sysctl("rmem_max")),
            (snd, default_snd, sysctl("wmem_max")),
        ] {
            let Some(cap) = cap else { continue };
            if cap > default {
                assert!(
                    granted > default,
                    "granted {granted}, default {default}, cap {cap}"
                );
            }
            if cap >= UDP_BUFFER_SIZE {
                assert!(granted >= UDP_BUFFER_SIZE, "granted {granted}, cap {cap}");
            }
        }
    }

    #[tokio::test]
    async fn tcp_listener_reuses_addresses() {
        let s = SipSockets::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("binds");
        assert!(SockRef::from(&s.tcp).reuse_address().expect("SO_REUSEADDR"));
        let (udp, tcp) = (
            s.udp.local_addr().expect("udp"),
            s.tcp.local_addr().expect("tcp"),
        );
        assert_eq!(udp, tcp, "one port for both transports");
    }

    #[tokio::test]
    async fn binds_ipv6_when_available() {
        // Hosts without IPv6 loopback cannot run this; the bind error is then the OS's.
        let Ok(s) = SipSockets::bind(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0))).await
        else {
            return;
        };
        assert!(s.local_addr().expect("addr").is_ipv6());
        assert!(SockRef::from(&s.udp).recv_buffer_size().expect("SO_RCVBUF") > 0);
    }
}
