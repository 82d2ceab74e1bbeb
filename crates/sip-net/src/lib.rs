//! The tokio IO layer: UDP and TCP transports that drive the Sans-IO [`sip_core::proxy::Proxy`].
//!
//! One task owns the proxy. It reads the UDP socket itself (no channel hop on the hot path),
//! takes framed TCP messages and control commands from a channel, sleeps until the proxy's
//! next timer, and after every input drains the proxy's outputs: datagrams are sent at once,
//! stream bytes go to the connection's writer task, and events go to the caller's event sink
//! (the store writer). No SIP logic lives here.

mod tcp;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use sip_core::proxy::{
    ConnId, DeviceEntry, Event, Output, Proxy, SubscriberEntry, Target, Transport,
};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;

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
    /// Stop the loop (after draining what is queued).
    Shutdown,
}

/// What the connection tasks tell the proxy task.
#[derive(Debug)]
pub(crate) enum NetInput {
    Connected {
        conn: ConnId,
        peer: SocketAddr,
        writer: mpsc::UnboundedSender<Bytes>,
    },
    Message {
        conn: ConnId,
        peer: SocketAddr,
        data: Bytes,
    },
    Closed(ConnId),
}

/// Handles to a running SIP server.
#[derive(Debug, Clone)]
pub struct SipHandle {
    control: mpsc::UnboundedSender<Control>,
}

impl SipHandle {
    /// Sends a control command; returns `false` if the server has stopped.
    pub fn send(&self, c: Control) -> bool {
        self.control.send(c).is_ok()
    }
}

/// The bound sockets of a SIP server.
#[derive(Debug)]
pub struct SipSockets {
    udp: UdpSocket,
    tcp: TcpListener,
}

impl SipSockets {
    /// Binds UDP and TCP on `addr` (same port for both).
    pub async fn bind(addr: SocketAddr) -> io::Result<Self> {
        let udp = UdpSocket::bind(addr).await?;
        let tcp = TcpListener::bind(udp.local_addr()?).await?;
        Ok(Self { udp, tcp })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.udp.local_addr()
    }
}

/// Runs the SIP server until [`Control::Shutdown`]. `events` receives every proxy event
/// (binding changes to persist) in order.
pub fn spawn(
    proxy: Proxy,
    sockets: SipSockets,
    events: mpsc::UnboundedSender<Event>,
) -> (SipHandle, tokio::task::JoinHandle<()>) {
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(run(proxy, sockets, control_rx, events));
    (
        SipHandle {
            control: control_tx,
        },
        task,
    )
}

struct Driver {
    proxy: Proxy,
    udp: Arc<UdpSocket>,
    conns: HashMap<ConnId, mpsc::UnboundedSender<Bytes>>,
    by_addr: HashMap<SocketAddr, ConnId>,
    net_tx: mpsc::UnboundedSender<NetInput>,
    next_conn: Arc<AtomicU64>,
    events: mpsc::UnboundedSender<Event>,
}

async fn run(
    proxy: Proxy,
    sockets: SipSockets,
    mut control: mpsc::UnboundedReceiver<Control>,
    events: mpsc::UnboundedSender<Event>,
) {
    let (net_tx, mut net_rx) = mpsc::unbounded_channel();
    let next_conn = Arc::new(AtomicU64::new(1));
    tokio::spawn(tcp::accept_loop(
        sockets.tcp,
        net_tx.clone(),
        next_conn.clone(),
    ));
    let udp = Arc::new(sockets.udp);
    let mut d = Driver {
        proxy,
        udp: udp.clone(),
        conns: HashMap::new(),
        by_addr: HashMap::new(),
        net_tx,
        next_conn,
        events,
    };
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
                Some(Control::Shutdown) | None => break,
            },
            r = udp.recv_from(&mut buf) => {
                match r {
                    Ok((n, src)) => {
                        let now = Instant::now();
                        d.proxy.handle_receive(now, Transport::Udp, src, None, &buf[..n]);
                        // Take what else is queued before draining outputs (bounded).
                        for _ in 0..63 {
                            match udp.try_recv_from(&mut buf) {
                                Ok((n, src)) => d.proxy.handle_receive(now, Transport::Udp, src, None, &buf[..n]),
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
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

impl Driver {
    fn net_input(&mut self, n: NetInput) {
        match n {
            NetInput::Connected { conn, peer, writer } => {
                self.conns.insert(conn, writer);
                self.by_addr.insert(peer, conn);
            }
            NetInput::Message { conn, peer, data } => {
                self.proxy
                    .handle_receive(Instant::now(), Transport::Tcp, peer, Some(conn), &data);
            }
            NetInput::Closed(conn) => {
                self.conns.remove(&conn);
                self.by_addr.retain(|_, c| *c != conn);
                self.proxy.connection_closed(conn);
            }
        }
    }

    async fn drain(&mut self) {
        while let Some(o) = self.proxy.poll_output() {
            match o {
                Output::Transmit(t) => self.send(t.target, t.payload).await,
                Output::Event(e) => {
                    let e = *e;
                    let _ = self.events.send(e);
                }
            }
        }
    }

    async fn send(&mut self, target: Target, payload: Bytes) {
        match target.transport {
            Transport::Udp => {
                if let Err(e) = self.udp.send_to(&payload, target.addr).await {
                    tracing::debug!(dest = %target.addr, error = %e, "UDP send failed");
                }
            }
            Transport::Tcp => {
                let conn = target
                    .conn
                    .filter(|c| self.conns.contains_key(c))
                    .or_else(|| self.by_addr.get(&target.addr).copied());
                if let Some(w) = conn.and_then(|c| self.conns.get(&c))
                    && w.send(payload.clone()).is_ok()
                {
                    return;
                }
                // No live connection: open one; the bytes wait in its queue.
                let id = ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed));
                let (w, r) = mpsc::unbounded_channel();
                let _ = w.send(payload);
                self.conns.insert(id, w);
                self.by_addr.insert(target.addr, id);
                tokio::spawn(tcp::connect(id, target.addr, r, self.net_tx.clone()));
            }
        }
    }
}
