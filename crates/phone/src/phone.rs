//! The tokio driver: one task, one UDP socket, the agent in between.

use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdpSocket};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::agent::Agent;
use crate::{PhoneConfig, PhoneError, PhoneEvent, Prover};

/// Events buffered for the owner before new ones are dropped (with a warning).
const EVENT_BUFFER: usize = 256;
/// Largest datagram read.
const MAX_DATAGRAM: usize = 65_535;

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
    /// Binds the UDP socket (and one for media, named in SDP), then spawns the agent task,
    /// which registers at once. Events come on the returned receiver; reading it is up to
    /// the caller (at most 256 are buffered, later ones are dropped with a warning).
    ///
    /// Must be called within a tokio runtime.
    pub async fn start(
        config: PhoneConfig,
        prover: Box<dyn Prover>,
    ) -> Result<(PhoneHandle, mpsc::Receiver<PhoneEvent>), PhoneError> {
        config.validate()?;
        let socket = UdpSocket::bind(config.local)
            .await
            .map_err(PhoneError::Socket)?;
        let bound = socket.local_addr().map_err(PhoneError::Socket)?;
        let advertised = advertised_addr(bound, config.server).map_err(PhoneError::Socket)?;
        // Media is not carried; the port is held so the SDP names a real, unused one.
        let media =
            StdUdpSocket::bind(SocketAddr::new(bound.ip(), 0)).map_err(PhoneError::Socket)?;
        let media_port = media.local_addr().map_err(PhoneError::Socket)?.port();
        let agent = Agent::new(config, advertised, media_port, prover, Instant::now())?;
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (event_tx, events) = mpsc::channel(EVENT_BUFFER);
        tracing::info!(local = %advertised, "phone agent started");
        let task = tokio::spawn(run(agent, socket, media, command_rx, event_tx));
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
    /// The address the phone advertises in Via and Contact (its socket's port).
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

/// The agent task.
async fn run(
    mut agent: Agent,
    socket: UdpSocket,
    media: StdUdpSocket,
    mut commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::Sender<PhoneEvent>,
) {
    let _media = media;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut commands_open = true;
    loop {
        flush(&mut agent, &socket, &events).await;
        if agent.is_finished(Instant::now()) {
            break;
        }
        let now = Instant::now();
        let wake = agent
            .poll_timeout()
            .unwrap_or(now + Duration::from_secs(3600));
        tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, from)) => agent.handle_datagram(Instant::now(), from, &buf[..n]),
                Err(e) => tracing::debug!(error = %e, "UDP receive failed"),
            },
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
        }
    }
    tracing::info!("phone agent stopped");
}

/// Sends every queued datagram and event.
async fn flush(agent: &mut Agent, socket: &UdpSocket, events: &mpsc::Sender<PhoneEvent>) {
    while let Some(t) = agent.poll_transmit() {
        if let Err(e) = socket.send_to(&t.bytes, t.to).await {
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
}
