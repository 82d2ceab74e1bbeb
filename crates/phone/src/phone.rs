//! The tokio driver: one task, one link (a UDP socket or a TLS connection), the agent in
//! between.

use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdpSocket};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::agent::Agent;
use crate::link::{Link, MAX_READ, TlsLink};
use crate::{PhoneConfig, PhoneError, PhoneEvent, Prover, SipTransport};

/// Events buffered for the owner before new ones are dropped (with a warning).
const EVENT_BUFFER: usize = 256;
/// How often an idle TLS connection is pinged: well inside the server's idle timeouts, and
/// often enough that a NAT on the way keeps the connection's mapping.
const KEEPALIVE: Duration = Duration::from_secs(120);

/// The phone's user agent; [`Phone::start`] runs one.
#[derive(Debug)]
pub enum Phone {}

/// What the owner sends the agent task.
enum Command {
    Answer(String, oneshot::Sender<Result<(), PhoneError>>),
    Hangup(String, oneshot::Sender<Result<(), PhoneError>>),
    Shutdown,
}

/// Controls a running phone. Dropping it without [`Self::shutdown`] also makes the agent
/// unregister and stop, in the background.
#[derive(Debug)]
pub struct PhoneHandle {
    commands: mpsc::UnboundedSender<Command>,
    task: JoinHandle<()>,
    local_addr: SocketAddr,
}

impl Phone {
    /// Binds the UDP socket, or connects to the server over TLS (verifying it as
    /// [`crate::TlsClient`] says), and a socket for media (named in SDP), then spawns the
    /// agent task, which registers at once. Events come on the returned receiver; reading it
    /// is up to the caller (at most 256 are buffered, later ones are dropped with a warning).
    ///
    /// Must be called within a tokio runtime.
    pub async fn start(
        config: PhoneConfig,
        prover: Box<dyn Prover>,
    ) -> Result<(PhoneHandle, mpsc::Receiver<PhoneEvent>), PhoneError> {
        config.validate()?;
        // The link, the IP the media socket binds, and the address Via and Contact name.
        let (link, media_ip, advertised) = match &config.transport {
            SipTransport::Udp => {
                let socket = UdpSocket::bind(config.local)
                    .await
                    .map_err(PhoneError::Socket)?;
                let bound = socket.local_addr().map_err(PhoneError::Socket)?;
                let advertised =
                    advertised_addr(bound, config.server).map_err(PhoneError::Socket)?;
                (Link::Udp(socket), bound.ip(), advertised)
            }
            SipTransport::Tls(client) => {
                let tls = TlsLink::connect(config.local, config.server, client).await?;
                // The connection's own address: concrete, and what the server sees.
                let local = tls.local_addr();
                (Link::Tls(Box::new(tls)), local.ip(), local)
            }
        };
        // Media is not carried; the port is held so the SDP names a real, unused one.
        let media = StdUdpSocket::bind(SocketAddr::new(media_ip, 0)).map_err(PhoneError::Socket)?;
        let media_port = media.local_addr().map_err(PhoneError::Socket)?.port();
        let agent = Agent::new(config, advertised, media_port, prover, Instant::now())?;
        // Unbounded on purpose: commands come only from the phone's owner through
        // `PhoneHandle` (answer, hang up, shut down: a user's actions, never the network),
        // and the agent task takes each at once; a bound would make those calls async.
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (event_tx, events) = mpsc::channel(EVENT_BUFFER);
        tracing::info!(local = %advertised, transport = link_name(&link), "phone agent started");
        let task = tokio::spawn(run(agent, link, media, command_rx, event_tx));
        Ok((
            PhoneHandle {
                commands,
                task,
                local_addr: advertised,
            },
            events,
        ))
    }
}

impl PhoneHandle {
    /// The address the phone advertises in Via and Contact (its UDP socket's, or its TLS
    /// connection's local address).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Answers the ringing call `call_id` (200 OK with SDP and the trust proof).
    pub async fn answer(&self, call_id: &str) -> Result<(), PhoneError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Answer(call_id.to_owned(), tx))
            .map_err(|_| PhoneError::Stopped)?;
        rx.await.map_err(|_| PhoneError::Stopped)?
    }

    /// Ends the call `call_id`: declines it (603) while ringing, sends BYE (along the route
    /// set) once connected.
    pub async fn hangup(&self, call_id: &str) -> Result<(), PhoneError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Hangup(call_id.to_owned(), tx))
            .map_err(|_| PhoneError::Stopped)?;
        rx.await.map_err(|_| PhoneError::Stopped)?
    }

    /// Ends every call, unregisters (`Expires: 0`) and waits for the agent to stop: until
    /// the unregister is answered or times out (timer F, 64*T1), and the calls' BYEs are
    /// answered or had 8*T1 (4 s).
    pub async fn shutdown(self) -> Result<(), PhoneError> {
        // The task may already have stopped; joining tells.
        let _ = self.commands.send(Command::Shutdown);
        self.task.await.map_err(|_| PhoneError::Stopped)
    }
}

/// The address to advertise: the bound one, or for an unspecified bind address the local
/// address the host routes to `server` from.
fn advertised_addr(bound: SocketAddr, server: SocketAddr) -> std::io::Result<SocketAddr> {
    if !bound.ip().is_unspecified() {
        return Ok(bound);
    }
    let any: IpAddr = if server.is_ipv4() {
        IpAddr::from([0u8; 4])
    } else {
        IpAddr::from([0u16; 8])
    };
    let probe = StdUdpSocket::bind(SocketAddr::new(any, 0))?;
    probe.connect(server)?;
    Ok(SocketAddr::new(probe.local_addr()?.ip(), bound.port()))
}

fn link_name(link: &Link) -> &'static str {
    if link.is_stream() { "TLS" } else { "UDP" }
}

/// The agent task.
async fn run(
    mut agent: Agent,
    mut link: Link,
    media: StdUdpSocket,
    mut commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::Sender<PhoneEvent>,
) {
    let _media = media;
    let mut buf = vec![0u8; MAX_READ];
    let mut commands_open = true;
    let mut ping_at = tokio::time::Instant::now() + KEEPALIVE;
    loop {
        if let Err(reason) = flush(&mut agent, &mut link, &events).await {
            disconnected(&mut agent, &events, reason);
            break;
        }
        if agent.is_finished(Instant::now()) {
            link.close().await;
            break;
        }
        let now = Instant::now();
        let wake = agent
            .poll_timeout()
            .unwrap_or(now + Duration::from_secs(3600));
        tokio::select! {
            got = link.recv(&mut buf) => {
                for (from, msg) in &got.messages {
                    agent.handle_datagram(Instant::now(), *from, msg);
                }
                if let Some(reason) = got.closed {
                    // Nothing can answer what came before the close: the binding went with it.
                    disconnected(&mut agent, &events, reason);
                    break;
                }
            }
            cmd = commands.recv(), if commands_open => match cmd {
                Some(Command::Answer(id, reply)) => {
                    let _ = reply.send(agent.answer(Instant::now(), &id));
                }
                Some(Command::Hangup(id, reply)) => {
                    let _ = reply.send(agent.hangup(Instant::now(), &id));
                }
                Some(Command::Shutdown) | None => {
                    commands_open = false;
                    agent.shutdown(Instant::now());
                }
            },
            () = tokio::time::sleep_until(wake.into()) => agent.handle_timeout(Instant::now()),
            () = tokio::time::sleep_until(ping_at), if link.is_stream() => {
                ping_at = tokio::time::Instant::now() + KEEPALIVE;
                if let Err(e) = link.ping().await {
                    disconnected(&mut agent, &events, format!("keep-alive: {e}"));
                    break;
                }
            }
        }
    }
    tracing::info!("phone agent stopped");
}

/// The connection is gone: says so (with any events still queued first) and stops.
fn disconnected(agent: &mut Agent, events: &mpsc::Sender<PhoneEvent>, reason: String) {
    tracing::warn!(%reason, "the phone lost its connection to the server");
    while agent.poll_transmit().is_some() {}
    let mut queued: Vec<PhoneEvent> = std::iter::from_fn(|| agent.poll_event()).collect();
    queued.push(PhoneEvent::Disconnected { reason });
    for e in queued {
        let _ = events.try_send(e);
    }
}

/// Sends every queued message and event; `Err` when the connection broke.
async fn flush(
    agent: &mut Agent,
    link: &mut Link,
    events: &mpsc::Sender<PhoneEvent>,
) -> Result<(), String> {
    while let Some(t) = agent.poll_transmit() {
        if let Err(e) = link.send(t.to, &t.bytes).await {
            if link.is_stream() {
                return Err(format!("writing to the server: {e}"));
            }
            tracing::debug!(to = %t.to, error = %e, "UDP send failed");
        }
    }
    while let Some(e) = agent.poll_event() {
        match events.try_send(e) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(e)) => {
                tracing::warn!(event = %e, "event buffer full, event dropped");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
    Ok(())
}
