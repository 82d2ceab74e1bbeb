//! Stream transports, TCP and TLS: accept and connect, then one reader task (framing by
//! Content-Length, RFC 3261 §18.3) and one writer task per connection, the same code for
//! both: [`serve`] takes any [`Stream`] (`AsyncRead + AsyncWrite`, split into a reader's and
//! a writer's half): a `TcpStream`, or a `TlsStream` once its handshake is done (see the
//! `tls` module).
//!
//! A framing error closes the connection: on a stream there is no way to find the next
//! message after a bad one. When the bad message was a request that can be answered, the
//! answer goes out first (513 Message Too Large for a message over the size limit, 400 for a
//! missing or conflicting Content-Length): the writer writes it after what it was given
//! before, shuts its side, and the reader drains what the peer still sends for a moment (a
//! lingering close), so that closing with unread bytes does not reset the connection and
//! destroy the answer in flight.
//!
//! A double-CRLF keep-alive ping between messages is answered with a single CRLF pong
//! (RFC 5626 §3.5.1); a lone CRLF is skipped.
//!
//! Framing is incremental ([`Framer`]): work is linear in the bytes received, however the
//! peer splits them.
//!
//! # Bounds (R30): every queue has a size and an overflow policy
//! - **Writer queue** ([`StreamLimits::writer_queue`] messages): the proxy's messages for
//!   one connection. The driver never waits on it: when it is full the peer is not reading
//!   what we send, and the connection is closed (the message is dropped; bindings reached
//!   only over it go with it). Pongs have a small queue of their own with the same policy.
//!   The kernel's send buffer below it is fixed at [`SEND_BUFFER`] (256 KiB), so a
//!   non-reading peer also holds little kernel memory and fills the queue soon.
//! - **Network input** ([`crate::NET_QUEUE`] messages): framed messages from every
//!   connection to the proxy task. A reader waits when it is full and reads nothing more
//!   from its socket meanwhile: back-pressure reaches the peer through TCP flow control.
//! - **Connections**: at most [`StreamLimits::max_connections`] accepted at once (TCP and
//!   TLS together) and [`StreamLimits::max_connections_per_ip`] from one address; one over
//!   either cap is closed at once, before any byte (or handshake) is read.
//! - **Time**: an accepted connection must complete its TLS handshake and deliver a whole
//!   SIP message within [`StreamLimits::first_message`] (default 10 s), or it is closed.
//!   After that, a connection is closed after [`StreamLimits::idle_unbound`] without a
//!   byte from the peer (default 5 minutes), or [`StreamLimits::idle_bound`] once a
//!   registration was made over it (default 65 minutes, longer than the longest
//!   registration: a registered client's refreshes and keep-alives keep it open). Kamailio's
//!   default lifetime for any TCP connection is 2 minutes; 5 leave room for a call set up
//!   by an unregistered client over TCP, whose in-dialog requests may be minutes apart.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use sip_core::message::{Frame, MAX_MESSAGE_SIZE, ParseError, frame_stream};
use sip_core::proxy::{ConnId, Transport};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use crate::{Metrics, NetInput};

/// How long a connection closed on a framing error waits for its answer to be written.
const FLUSH: Duration = Duration::from_secs(2);
/// How long it then reads and drops what the peer still sends (the lingering close) …
const LINGER: Duration = Duration::from_secs(2);
/// … and at most how many bytes.
const LINGER_BYTES: usize = 4 * MAX_MESSAGE_SIZE;
/// The keep-alive ping (RFC 5626 §3.5.1); the pong is its second half.
const PING: &[u8; 4] = b"\r\n\r\n";
/// Pongs owed to a peer and not yet written: more, and the peer is not reading.
const PONG_QUEUE: usize = 16;
/// How long an outgoing TCP connection may take to connect (and, for TLS, to finish its
/// handshake).
pub(crate) const CONNECT: Duration = Duration::from_secs(5);
/// The kernel send buffer of every SIP connection (SO_SNDBUF, which also stops Linux from
/// growing it to `net.ipv4.tcp_wmem`'s maximum, 4 MiB by default): hundreds of SIP
/// messages, and a bound on the kernel memory a peer that does not read can hold.
pub(crate) const SEND_BUFFER: usize = 256 * 1024;

/// Sets up a new connection's socket: no Nagle delay, a [`SEND_BUFFER`] send buffer.
pub(crate) fn tune(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    if let Err(e) = socket2::SockRef::from(stream).set_send_buffer_size(SEND_BUFFER) {
        tracing::debug!(error = %e, "setting a connection's send buffer size failed");
    }
}

/// Limits of the stream transports (see the module docs for the policies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Accepted connections open at once, TCP and TLS together (default 4096).
    pub max_connections: usize,
    /// Accepted connections open at once from one IP address (default 64).
    pub max_connections_per_ip: usize,
    /// Time an accepted connection has to finish its TLS handshake and send a whole SIP
    /// message (default 10 s).
    pub first_message: Duration,
    /// Time without a byte from the peer after which a connection that carries no
    /// registration is closed (default 300 s).
    pub idle_unbound: Duration,
    /// The same for a connection a registration was made over (default 3900 s).
    pub idle_bound: Duration,
    /// Messages queued for one connection's writer; one more closes the connection
    /// (default 64).
    pub writer_queue: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_connections_per_ip: 64,
            first_message: Duration::from_secs(10),
            idle_unbound: Duration::from_secs(300),
            idle_bound: Duration::from_secs(3900),
            writer_queue: 64,
        }
    }
}

/// What the driver and a connection's tasks share.
#[derive(Debug, Default)]
pub(crate) struct ConnShared {
    /// Told by the driver to close (its writer queue overflowed).
    pub(crate) kill: Notify,
    /// A registration was made over this connection: the long idle timeout applies.
    pub(crate) bound: AtomicBool,
}

/// The driver's end of a connection.
#[derive(Debug)]
pub(crate) struct ConnHandle {
    /// The writer queue.
    pub(crate) writer: mpsc::Sender<Bytes>,
    /// TCP or TLS.
    pub(crate) transport: Transport,
    /// The peer's address.
    pub(crate) peer: SocketAddr,
    pub(crate) shared: Arc<ConnShared>,
}

/// A new connection's driver handle and the receiving ends its tasks need.
pub(crate) fn handle(
    transport: Transport,
    peer: SocketAddr,
    limits: &StreamLimits,
) -> (ConnHandle, mpsc::Receiver<Bytes>) {
    let (writer, out) = mpsc::channel(limits.writer_queue.max(1));
    let handle = ConnHandle {
        writer,
        transport,
        peer,
        shared: Arc::new(ConnShared::default()),
    };
    (handle, out)
}

/// Counts accepted connections against the caps.
#[derive(Debug)]
pub(crate) struct Admission {
    limits: StreamLimits,
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// An admitted connection's place under the caps, given back when it is dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Admission {
    pub(crate) fn new(limits: StreamLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            total: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for a connection from `ip`, or `None` when a cap is reached.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let mut per_ip = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
        let n = per_ip.get(&ip).copied().unwrap_or(0);
        if n >= self.limits.max_connections_per_ip
            || self.total.load(Ordering::Relaxed) >= self.limits.max_connections
        {
            return None;
        }
        per_ip.insert(ip, n + 1);
        self.total.fetch_add(1, Ordering::Relaxed);
        Some(Slot {
            admission: self.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut per_ip = self
            .admission
            .per_ip
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
        self.admission.total.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection's byte stream, split for its reader and writer tasks: any `AsyncRead +
/// AsyncWrite` stream can be served; a `TcpStream` splits without a lock.
pub(crate) trait Stream: Send + 'static {
    /// The reader task's half.
    type Reader: AsyncRead + Send + Unpin + 'static;
    /// The writer task's half.
    type Writer: AsyncWrite + Send + Unpin + 'static;
    /// The two halves.
    fn halves(self) -> (Self::Reader, Self::Writer);
}

impl Stream for TcpStream {
    type Reader = OwnedReadHalf;
    type Writer = OwnedWriteHalf;

    fn halves(self) -> (OwnedReadHalf, OwnedWriteHalf) {
        self.into_split()
    }
}

impl<S> Stream for tokio_rustls::server::TlsStream<S>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Reader = ReadHalf<Self>;
    type Writer = WriteHalf<Self>;

    fn halves(self) -> (ReadHalf<Self>, WriteHalf<Self>) {
        tokio::io::split(self)
    }
}

impl<S> Stream for tokio_rustls::client::TlsStream<S>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Reader = ReadHalf<Self>;
    type Writer = WriteHalf<Self>;

    fn halves(self) -> (ReadHalf<Self>, WriteHalf<Self>) {
        tokio::io::split(self)
    }
}

/// What every connection task needs besides its stream.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    pub(crate) net: mpsc::Sender<NetInput>,
    pub(crate) limits: StreamLimits,
    pub(crate) metrics: Arc<Metrics>,
}

/// One connection as its reader sees it.
struct Conn {
    id: ConnId,
    peer: SocketAddr,
    transport: Transport,
    /// Accepted by us (the first-message timeout applies), not opened by us.
    inbound: bool,
    /// When it was accepted or connected.
    opened: Instant,
}

/// What the reader has the writer write, besides the proxy's messages.
#[derive(Debug)]
enum Local {
    /// A keep-alive pong: one CRLF.
    Pong,
    /// The last bytes on this connection (the answer to a request that could not be framed):
    /// write them, then shut the writing side.
    Last(Bytes),
}

/// Why a connection ended (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The peer closed it, or reading failed.
    Eof,
    /// No whole message within the first-message timeout.
    FirstMessage,
    /// No byte within the idle timeout.
    Idle,
    /// The peer does not read: its pong queue overflowed.
    SlowReader,
    /// Closed by the driver: the peer does not read, its writer queue overflowed (the
    /// driver counts it).
    Killed,
    /// A framing error (answered, if it could be).
    Framing,
    /// The writer stopped (a write failed), or the proxy task is gone.
    Gone,
}

pub(crate) async fn accept_loop(
    listener: TcpListener,
    ctx: Ctx,
    admission: Arc<Admission>,
    next: Arc<AtomicU64>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let Some(slot) = admission.admit(peer.ip()) else {
                    refused(&ctx, peer, Transport::Tcp);
                    continue;
                };
                let id = ConnId(next.fetch_add(1, Ordering::Relaxed));
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    tune(&stream);
                    let (handle, out) = handle(Transport::Tcp, peer, &ctx.limits);
                    let shared = handle.shared.clone();
                    if ctx
                        .net
                        .send(NetInput::Connected { conn: id, handle })
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let conn = Conn {
                        id,
                        peer,
                        transport: Transport::Tcp,
                        inbound: true,
                        opened: Instant::now(),
                    };
                    serve(conn, stream, out, shared, ctx).await;
                    drop(slot);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "TCP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A connection over a cap: closed at once (dropping the stream), counted and logged.
pub(crate) fn refused(ctx: &Ctx, peer: SocketAddr, transport: Transport) {
    ctx.metrics.count_connection_refused();
    tracing::debug!(%peer, transport = transport.as_str(), "connection refused: connection cap reached");
}

/// Serves an accepted TLS connection whose handshake is done (see the `tls` module).
pub(crate) async fn serve_accepted<S>(
    id: ConnId,
    peer: SocketAddr,
    transport: Transport,
    opened: Instant,
    stream: S,
    ctx: Ctx,
) where
    S: Stream,
{
    let (handle, out) = handle(transport, peer, &ctx.limits);
    let shared = handle.shared.clone();
    if ctx
        .net
        .send(NetInput::Connected { conn: id, handle })
        .await
        .is_err()
    {
        return;
    }
    let conn = Conn {
        id,
        peer,
        transport,
        inbound: true,
        opened,
    };
    serve(conn, stream, out, shared, ctx).await;
}

/// Serves a connection we opened (a TLS one once its handshake is done, see the `tls`
/// module): the driver registered `id` with the writer queue `out` before dialling.
pub(crate) async fn serve_connected<S>(
    id: ConnId,
    peer: SocketAddr,
    transport: Transport,
    stream: S,
    out: mpsc::Receiver<Bytes>,
    shared: Arc<ConnShared>,
    ctx: Ctx,
) where
    S: Stream,
{
    let conn = Conn {
        id,
        peer,
        transport,
        inbound: false,
        opened: Instant::now(),
    };
    serve(conn, stream, out, shared, ctx).await;
}

/// Opens a TCP connection to `peer` for messages the proxy sends there (the driver has
/// registered `id` already).
pub(crate) async fn connect(
    id: ConnId,
    peer: SocketAddr,
    out: mpsc::Receiver<Bytes>,
    shared: Arc<ConnShared>,
    ctx: Ctx,
) {
    match tokio::time::timeout(CONNECT, TcpStream::connect(peer)).await {
        Ok(Ok(stream)) => {
            tune(&stream);
            let conn = Conn {
                id,
                peer,
                transport: Transport::Tcp,
                inbound: false,
                opened: Instant::now(),
            };
            serve(conn, stream, out, shared, ctx).await;
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TCP connect failed");
            let _ = ctx.net.send(NetInput::ConnectFailed(id)).await;
        }
        Err(_) => {
            tracing::debug!(%peer, "TCP connect timed out");
            let _ = ctx.net.send(NetInput::ConnectFailed(id)).await;
        }
    }
}

/// Reads, frames and hands over the messages of one connection until it ends, with a
/// writer task for what goes out; then tells the driver it is closed.
async fn serve<S>(
    conn: Conn,
    stream: S,
    out: mpsc::Receiver<Bytes>,
    shared: Arc<ConnShared>,
    ctx: Ctx,
) where
    S: Stream,
{
    let (mut rd, wr) = stream.halves();
    let (local, local_rx) = mpsc::channel(PONG_QUEUE);
    let mut writer = tokio::spawn(write_loop(wr, out, local_rx));
    let mut writer_done = false;
    let mut framer = Framer::new();
    let mut last = None;
    let mut framed_one = false;
    let mut heard = Instant::now();
    let limits = ctx.limits;
    let idle = |shared: &ConnShared| {
        if shared.bound.load(Ordering::Relaxed) {
            limits.idle_bound
        } else {
            limits.idle_unbound
        }
    };
    let end = 'read: loop {
        let first = conn.inbound && !framed_one;
        let deadline = if first {
            conn.opened + limits.first_message
        } else {
            heard + idle(&shared)
        };
        tokio::select! {
            r = rd.read_buf(&mut framer.buf) => match r {
                Ok(0) | Err(_) => break End::Eof,
                Ok(_) => heard = Instant::now(),
            },
            () = tokio::time::sleep_until(deadline) => {
                if first {
                    break End::FirstMessage;
                }
                // The connection may have become bound meanwhile: its deadline moved.
                if Instant::now() >= heard + idle(&shared) {
                    break End::Idle;
                }
                continue;
            }
            () = shared.kill.notified() => break End::Killed,
            _ = &mut writer => {
                writer_done = true;
                break End::Gone;
            }
        }
        loop {
            match framer.next_message() {
                Ok(None) => break,
                Ok(Some(data)) => {
                    framed_one = true;
                    // Waits while the proxy task is behind (back-pressure).
                    let sent = ctx
                        .net
                        .send(NetInput::Message {
                            conn: conn.id,
                            peer: conn.peer,
                            transport: conn.transport,
                            data,
                        })
                        .await;
                    if sent.is_err() {
                        break 'read End::Gone;
                    }
                }
                Err(e) => {
                    let answer = e.response();
                    tracing::debug!(
                        peer = %conn.peer,
                        transport = conn.transport.as_str(),
                        reason = e.reason,
                        answered = answer.as_ref().map(|r| r.status),
                        "framing error; closing"
                    );
                    last = answer.map(|r| Bytes::from(r.to_bytes()));
                    break 'read End::Framing;
                }
            }
        }
        for _ in 0..framer.take_pings() {
            if local.try_send(Local::Pong).is_err() {
                break 'read End::SlowReader;
            }
        }
    };
    match end {
        End::Eof | End::Framing | End::Gone | End::Killed => {}
        End::FirstMessage | End::Idle | End::SlowReader => {
            ctx.metrics.count_connection_dropped();
            tracing::debug!(
                peer = %conn.peer,
                transport = conn.transport.as_str(),
                why = ?end,
                "closing connection"
            );
        }
    }
    if let Some(answer) = last
        && !writer_done
        && local.send(Local::Last(answer)).await.is_ok()
        && tokio::time::timeout(FLUSH, &mut writer).await.is_ok()
    {
        linger(&mut rd).await;
    }
    writer.abort();
    let _ = ctx.net.send(NetInput::Closed(conn.id)).await;
}

/// The writer task: the proxy's messages from `out` in order, the reader's pongs between
/// them (never inside one), and the reader's last answer, after which it shuts the writing
/// side and ends.
async fn write_loop<W>(mut wr: W, mut out: mpsc::Receiver<Bytes>, mut local: mpsc::Receiver<Local>)
where
    W: AsyncWrite + Unpin,
{
    loop {
        let bytes = tokio::select! {
            biased;
            b = out.recv() => match b {
                Some(b) => b,
                None => return,
            },
            l = local.recv() => match l {
                Some(Local::Pong) => Bytes::from_static(&PING[2..]),
                Some(Local::Last(b)) => {
                    if wr.write_all(&b).await.is_ok() && wr.flush().await.is_ok() {
                        let _ = wr.shutdown().await;
                    }
                    return;
                }
                None => return,
            },
        };
        if wr.write_all(&bytes).await.is_err() {
            return;
        }
        // TLS keeps records in its buffer until flushed (a no-op on TCP); flush when
        // nothing else is waiting, so back-to-back messages share records and segments.
        if out.is_empty() && local.is_empty() && wr.flush().await.is_err() {
            return;
        }
    }
}

/// Reads and drops what the peer still sends, until it closes, for at most [`LINGER`] and
/// [`LINGER_BYTES`]: closing a socket with unread bytes resets the connection, and a reset
/// can destroy the answer just written before the peer reads it.
async fn linger<R: AsyncRead + Unpin>(rd: &mut R) {
    let mut scratch = vec![0u8; 16 * 1024];
    let mut left = LINGER_BYTES;
    let _ = tokio::time::timeout(LINGER, async {
        while left > 0 {
            match rd.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

/// Incremental framing of one connection's byte stream, with [`frame_stream`]'s decisions.
///
/// [`frame_stream`] reads the header section from the start of the buffer on every call, so
/// calling it after every read is quadratic when a peer trickles its bytes. The framer
/// searches each byte once for a possible end of the header section, calls [`frame_stream`]
/// only when one turns up (or when the size limit is passed), and once the header section
/// is complete it knows the message's length and waits for that many bytes without
/// framing again. The messages, keep-alives and errors it yields, and the reads after which
/// it yields them, are those of calling [`frame_stream`] after every read.
#[derive(Debug)]
pub(crate) struct Framer {
    /// Bytes read and not yet framed; a message or keep-alive starts at the front.
    pub(crate) buf: BytesMut,
    /// Bytes at the front of `buf` searched without finding the end of a header section.
    searched: usize,
    /// The length of the message at the front of `buf`, once its header section is framed.
    total: Option<usize>,
    /// How many bytes of a [`PING`] the keep-alive bytes skipped since the last message end
    /// with.
    ping: usize,
    /// Pings completed and not yet taken by [`Self::take_pings`].
    pings: usize,
    /// Bytes examined (searched, framed or copied), for the test that work is linear.
    #[cfg(test)]
    work: usize,
}

impl Framer {
    /// A framer with room for a typical message, so reads need not grow the buffer.
    pub(crate) fn new() -> Self {
        Self {
            buf: BytesMut::with_capacity(8192),
            searched: 0,
            total: None,
            ping: 0,
            pings: 0,
            #[cfg(test)]
            work: 0,
        }
    }

    /// The next whole message at the front of the buffer (keep-alives are skipped, and the
    /// pings among them counted for [`Self::take_pings`]), `None` when more bytes are
    /// needed, or the framing error that must close the connection.
    pub(crate) fn next_message(&mut self) -> Result<Option<Bytes>, ParseError> {
        loop {
            if let Some(total) = self.total {
                if self.buf.len() < total {
                    return Ok(None);
                }
                return Ok(Some(self.take(total)));
            }
            let Some(&first) = self.buf.first() else {
                return Ok(None);
            };
            if first == b'\r' || first == b'\n' {
                // Keep-alive CRLFs (RFC 5626 §3.5.1): frame_stream reads only those.
                match frame_stream(&self.buf)? {
                    Frame::KeepAlive(n) => {
                        self.tally(n);
                        self.skip(n);
                        continue;
                    }
                    Frame::Message(n) => return Ok(Some(self.take(n))),
                    Frame::Incomplete => return Ok(None),
                }
            }
            let end = self.search();
            if end.is_none() && self.buf.len() <= MAX_MESSAGE_SIZE {
                // The header section goes on and is within the size limit.
                return Ok(None);
            }
            // The header section may end at `end`, or it passed the size limit (which
            // frame_stream refuses): frame what is here. frame_stream reads no further than
            // the end of the header section.
            self.tally(end.unwrap_or(self.buf.len()));
            match frame_stream(&self.buf)? {
                Frame::Message(n) => return Ok(Some(self.take(n))),
                Frame::KeepAlive(n) => {
                    self.skip(n);
                    continue;
                }
                Frame::Incomplete => {}
            }
            let Some(end) = end else {
                return Ok(None);
            };
            // Incomplete: either the body is still coming, or `end` was no end after all.
            // Learn the message's length, so the body's bytes are not framed again.
            if self.buf.len() < MAX_MESSAGE_SIZE {
                self.tally(3 * end);
                self.total = probe(&self.buf[..end])?;
            }
            // With the length still unknown, the search goes on after `end`.
        }
    }

    /// Searches the bytes not searched yet for the end of an empty line that can end a
    /// header section; returns the index just after it. Such a line (`LF`, or `CR LF`)
    /// starts where a line ended: after an LF, or after a bare CR (one not followed by LF),
    /// so it ends one of `LF LF`, `LF CR LF`, `CR CR LF`. Only the two bytes before an LF
    /// are looked back at, so each byte is read a bounded number of times.
    fn search(&mut self) -> Option<usize> {
        let buf = &self.buf[..];
        let mut from = self.searched;
        let mut work = 0;
        let mut found = None;
        while let Some(i) = buf
            .get(from..)
            .and_then(|b| b.iter().position(|&c| c == b'\n'))
        {
            let lf = from + i;
            work += i + 3;
            from = lf + 1;
            let before = |k: usize| lf.checked_sub(k).and_then(|j| buf.get(j)).copied();
            let ends = match before(1) {
                Some(b'\n') => true,
                Some(b'\r') => matches!(before(2), Some(b'\n' | b'\r')),
                _ => false,
            };
            if ends {
                found = Some(from);
                break;
            }
        }
        if found.is_none() {
            work += buf.len().saturating_sub(from);
            from = buf.len();
        }
        self.searched = from;
        self.tally(work);
        found
    }

    /// Takes the message of `n` bytes at the front of the buffer.
    fn take(&mut self, n: usize) -> Bytes {
        self.total = None;
        self.searched = 0;
        self.ping = 0;
        self.buf.split_to(n).freeze()
    }

    /// Drops `n` keep-alive bytes from the front of the buffer, counting the pings among
    /// them: each `CR LF CR LF`, however the reads split it (and not overlapping).
    fn skip(&mut self, n: usize) {
        self.searched = 0;
        for &c in self.buf.iter().take(n) {
            self.ping = if PING.get(self.ping) == Some(&c) {
                self.ping + 1
            } else {
                usize::from(c == b'\r')
            };
            if self.ping == PING.len() {
                self.pings += 1;
                self.ping = 0;
            }
        }
        self.buf.advance(n);
    }

    /// The pings completed since the last call: each is owed a pong.
    pub(crate) fn take_pings(&mut self) -> usize {
        std::mem::take(&mut self.pings)
    }

    /// Counts work for the tests.
    #[cfg(test)]
    fn tally(&mut self, bytes: usize) {
        self.work += bytes;
    }

    /// Counts work for the tests (nothing to count outside them).
    #[cfg(not(test))]
    fn tally(&mut self, _: usize) {}
}

thread_local! {
    /// A buffer of the largest message size for [`probe`]. Outside a probe it holds only a
    /// byte that ends no line, so only the header section copied in can be framed.
    static PROBE: RefCell<Vec<u8>> = RefCell::new(vec![b'x'; MAX_MESSAGE_SIZE]);
}

/// The whole length of the message whose header section is `head` plus its first bytes,
/// when that section is complete: [`frame_stream`] on a buffer that starts with `head` and
/// is as long as a message may be, so the body counts as arrived. `None` when the header
/// section does not end within `head`. (A `frame_stream` that reported the length with
/// `Incomplete` would make this copy unnecessary.)
fn probe(head: &[u8]) -> Result<Option<usize>, ParseError> {
    PROBE.with(|p| {
        let mut p = p.borrow_mut();
        let Some(front) = p.get_mut(..head.len()) else {
            return Ok(None);
        };
        front.copy_from_slice(head);
        let framed = frame_stream(&p);
        if let Some(front) = p.get_mut(..head.len()) {
            front.fill(b'x');
        }
        Ok(match framed? {
            Frame::Message(total) => Some(total),
            Frame::Incomplete | Frame::KeepAlive(_) => None,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a connection yields for one read: messages, then maybe the closing error.
    type Yield = Vec<Result<Bytes, &'static str>>;

    /// The framing this module replaced: [`frame_stream`] on the whole buffer after each read.
    fn naive(buf: &mut BytesMut) -> Yield {
        let mut out = Vec::new();
        loop {
            match frame_stream(buf) {
                Ok(Frame::Incomplete) => return out,
                Ok(Frame::KeepAlive(n)) => buf.advance(n),
                Ok(Frame::Message(n)) => out.push(Ok(buf.split_to(n).freeze())),
                Err(e) => {
                    out.push(Err(e.reason));
                    return out;
                }
            }
        }
    }

    fn incremental(f: &mut Framer) -> Yield {
        let mut out = Vec::new();
        loop {
            match f.next_message() {
                Ok(None) => return out,
                Ok(Some(m)) => out.push(Ok(m)),
                Err(e) => {
                    out.push(Err(e.reason));
                    return out;
                }
            }
        }
    }

    /// Feeds `stream` in `chunks` to both framers and checks they yield the same after
    /// every read; returns all that was yielded.
    fn same_as_naive(stream: &[u8], chunks: impl IntoIterator<Item = usize>) -> Yield {
        let (mut old, mut new) = (BytesMut::new(), Framer::new());
        let mut all = Vec::new();
        let mut rest = stream;
        let mut chunks = chunks.into_iter();
        while !rest.is_empty() {
            let k = chunks.next().unwrap_or(rest.len()).clamp(1, rest.len());
            let (chunk, tail) = rest.split_at(k);
            rest = tail;
            old.extend_from_slice(chunk);
            new.buf.extend_from_slice(chunk);
            let (a, b) = (naive(&mut old), incremental(&mut new));
            assert_eq!(a, b, "stream {:?}", String::from_utf8_lossy(stream));
            let closed = a.last().is_some_and(Result::is_err);
            all.extend(a);
            if closed {
                break;
            }
        }
        all
    }

    /// A tiny deterministic generator (xorshift), so failures replay.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            usize::try_from(self.0 % n as u64).expect("small")
        }
    }

    fn options(cseq: u32, body: &[u8]) -> Vec<u8> {
        let mut m = format!(
            "OPTIONS sip:localhost SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bK{cseq}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:a@localhost>;tag=1\r\nTo: <sip:localhost>\r\n\
             Call-ID: {cseq}@test\r\nCSeq: {cseq} OPTIONS\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn agrees_with_framing_every_read() {
        // Pieces of header sections, odd line endings included (bare CR, bare LF, folding).
        const PIECES: &[&[u8]] = &[
            b"\r\n",
            b"\n",
            b"\r",
            b" ",
            b"\t",
            b"l: 2",
            b"l: 0",
            b"L:1",
            b"Content-Length:",
            b" 3",
            b"content-length: 0",
            b"X: y",
            b"ab",
            b"\r\n\r\n",
            b"\n\n",
            b"\r\r\n",
            b"\n\r\n",
            b":",
            b"l: 99999",
            b"l: x",
        ];
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        let mut messages = 0;
        for case in 0..20_000 {
            let mut stream = Vec::new();
            for _ in 0..1 + rng.below(4) {
                match rng.below(6) {
                    0 => stream
                        .extend_from_slice(&PIECES[..2][rng.below(2)].repeat(1 + rng.below(3))),
                    1 | 2 => {
                        stream.extend_from_slice(b"OPTIONS sip:a SIP/2.0");
                        for _ in 0..rng.below(12) {
                            stream.extend_from_slice(PIECES[rng.below(PIECES.len())]);
                        }
                        // Often, a proper end.
                        if rng.below(2) == 0 {
                            stream.extend_from_slice(b"\r\nl: 3\r\n\r\nabc");
                        }
                    }
                    _ => {
                        let body = b"v=0\r\n\r\n".repeat(rng.below(3));
                        stream.extend_from_slice(&options(case, &body));
                    }
                }
            }
            let whole = rng.below(4) == 0;
            let chunks: Vec<usize> = (0..stream.len())
                .map(|_| {
                    if whole {
                        stream.len()
                    } else {
                        1 + rng.below(7)
                    }
                })
                .collect();
            messages += same_as_naive(&stream, chunks)
                .iter()
                .filter(|m| m.is_ok())
                .count();
        }
        assert!(messages > 10_000, "the cases framed messages ({messages})");
    }

    #[test]
    fn pipelined_and_keepalives() {
        let (a, b) = (options(1, b""), options(2, b"v=0\r\n"));
        let stream = [&b"\r\n\r\n"[..], &a, b"\r\n", &b, b"\r\n\r\n"].concat();
        for chunk in [1, 2, 3, 5, 64, stream.len()] {
            let got = same_as_naive(&stream, std::iter::repeat(chunk));
            assert_eq!(
                got,
                vec![Ok(Bytes::from(a.clone())), Ok(Bytes::from(b.clone()))]
            );
        }
    }

    #[test]
    fn pipelined_work_is_linear() {
        let msgs: Vec<Vec<u8>> = (0..500).map(|i| options(i, b"v=0\r\n")).collect();
        let all = msgs.concat();
        let mut f = Framer::new();
        f.buf.extend_from_slice(&all);
        for m in &msgs {
            assert_eq!(f.next_message().expect("frames").as_deref(), Some(&m[..]));
        }
        assert_eq!(f.next_message().expect("frames"), None);
        assert!(
            f.work < 3 * all.len(),
            "{} bytes of work for {}",
            f.work,
            all.len()
        );
    }

    #[test]
    fn size_limits_as_before() {
        // A header section that never ends: refused once past the limit, at the same read.
        let mut endless = b"OPTIONS sip:a SIP/2.0\r\n".to_vec();
        while endless.len() <= MAX_MESSAGE_SIZE + 100 {
            endless.extend_from_slice(b"X-Filler: 0123456789\r\n");
        }
        for chunk in [97, 1000, 4096, endless.len()] {
            let got = same_as_naive(&endless, std::iter::repeat(chunk));
            assert_eq!(got, vec![Err("header section too large")], "chunk {chunk}");
        }
        // Byte by byte (too slow for the old way): refused at the first byte past the limit.
        let mut f = Framer::new();
        for (i, &b) in endless.iter().enumerate() {
            f.buf.extend_from_slice(&[b]);
            match f.next_message() {
                Ok(None) if i < MAX_MESSAGE_SIZE => {}
                Err(e) if i == MAX_MESSAGE_SIZE => {
                    assert_eq!((e.reason, e.status), ("header section too large", 513));
                    break;
                }
                other => panic!("byte {i}: {other:?}"),
            }
        }
        assert!(f.work < 3 * MAX_MESSAGE_SIZE, "{} bytes of work", f.work);
        // A header section that ends past the limit, or announces a body past it.
        let mut late = endless.clone();
        late.extend_from_slice(b"l: 0\r\n\r\n");
        assert_eq!(
            same_as_naive(&late, [late.len()]),
            vec![Err("message too large")]
        );
        let big = String::from_utf8(options(1, b""))
            .expect("ascii")
            .replace("Content-Length: 0", "Content-Length: 65535")
            .into_bytes();
        for chunk in [1, 3, big.len()] {
            assert_eq!(
                same_as_naive(&big, std::iter::repeat(chunk)),
                vec![Err("message too large")]
            );
        }
        // The largest message passes whole.
        let head = options(1, b"").len() + 4; // "0" becomes "NNNNN"
        let max = options(1, &b"a".repeat(MAX_MESSAGE_SIZE - head));
        assert_eq!(max.len(), MAX_MESSAGE_SIZE);
        assert_eq!(same_as_naive(&max, [4096; 16]), vec![Ok(Bytes::from(max))]);
    }

    /// Feeds `msg` one byte at a time and returns the framer's work.
    fn trickle(msg: &[u8]) -> usize {
        let mut f = Framer::new();
        for (i, &b) in msg.iter().enumerate() {
            f.buf.extend_from_slice(&[b]);
            let got = f.next_message().expect("frames");
            if i + 1 < msg.len() {
                assert_eq!(got, None, "early at byte {i}");
            } else {
                assert_eq!(got.as_deref(), Some(msg));
            }
        }
        f.work
    }

    #[test]
    fn trickled_bytes_are_framed_in_linear_work() {
        // The largest body (64 KiB less the header section), full of empty lines that must
        // not be searched; the old way framed the growing buffer after each byte, ~n²/2
        // (about 2·10⁹) bytes here.
        let head = options(1, b"").len() + 4;
        let body: Vec<u8> = b"v=0\r\n\r\n"
            .iter()
            .copied()
            .cycle()
            .take(MAX_MESSAGE_SIZE - head)
            .collect();
        let msg = options(1, &body);
        assert_eq!(msg.len(), MAX_MESSAGE_SIZE);
        let work = trickle(&msg);
        eprintln!(
            "{work} bytes of work for a trickled message of {}",
            msg.len()
        );
        assert!(
            work < 4 * msg.len(),
            "{work} bytes of work for {}",
            msg.len()
        );

        // A header section near the limit, trickled: searched once, framed once, and framed
        // once more in the probe that learns the length (copy, frame, wipe): five passes.
        let mut big_head = b"OPTIONS sip:localhost SIP/2.0\r\n".to_vec();
        while big_head.len() < MAX_MESSAGE_SIZE - 200 {
            big_head.extend_from_slice(b"X-Filler: 0123456789abcdef0123456789abcdef\r\n");
        }
        big_head.extend_from_slice(b"l: 5\r\n\r\nhello");
        let work = trickle(&big_head);
        assert!(
            work < 6 * big_head.len(),
            "{work} bytes of work for {}",
            big_head.len()
        );
    }

    /// Feeds `reads` one after the other; returns the messages framed and the pings owed.
    fn pings(reads: &[&[u8]]) -> (usize, usize) {
        let mut f = Framer::new();
        let (mut messages, mut pings) = (0, 0);
        for r in reads {
            f.buf.extend_from_slice(r);
            while let Some(_m) = f.next_message().expect("frames") {
                messages += 1;
            }
            pings += f.take_pings();
        }
        (messages, pings)
    }

    #[test]
    fn double_crlf_pings_are_counted_lone_crlfs_are_not() {
        let msg = options(1, b"");
        assert_eq!(pings(&[b"\r\n\r\n"]), (0, 1));
        assert_eq!(pings(&[b"\r", b"\n", b"\r", b"\n"]), (0, 1));
        assert_eq!(pings(&[b"\r\n", b"\r\n"]), (0, 1));
        assert_eq!(pings(&[b"\r\n"]), (0, 0));
        assert_eq!(pings(&[b"\n\n", b"\n\r\n"]), (0, 0));
        assert_eq!(pings(&[b"\r\n\r\n\r\n\r\n"]), (0, 2));
        assert_eq!(pings(&[b"\r\n\r\n\r\n"]), (0, 1));
        assert_eq!(pings(&[b"\r\r\n\r\n"]), (0, 1));
        // A message in between breaks a ping; one after it or before the next one counts.
        assert_eq!(pings(&[b"\r\n", &msg, b"\r\n"]), (1, 0));
        assert_eq!(
            pings(&[&[&b"\r\n"[..], &msg, b"\r\n\r\n"].concat()]),
            (1, 1)
        );
        assert_eq!(pings(&[b"\r\n\r\n", &msg, b"\r\n\r", b"\n", &msg]), (2, 2));
    }

    #[test]
    fn framing_errors_carry_their_answer() {
        let big = String::from_utf8(options(7, b""))
            .expect("ascii")
            .replace("Content-Length: 0", "Content-Length: 70000");
        let mut f = Framer::new();
        f.buf.extend_from_slice(big.as_bytes());
        let e = f.next_message().expect_err("too large");
        let resp = e.response().expect("an answer");
        assert_eq!(
            (resp.status, resp.reason.as_str()),
            (513, "Message Too Large")
        );
        assert_eq!(
            resp.headers.get(&sip_core::message::HeaderName::CSeq),
            Some("7 OPTIONS")
        );
        // Byte by byte, the answer is the same.
        let mut f = Framer::new();
        let mut got = None;
        for &b in big.as_bytes() {
            f.buf.extend_from_slice(&[b]);
            if let Err(e) = f.next_message() {
                got = e.response().map(|r| r.status);
                break;
            }
        }
        assert_eq!(got, Some(513));
    }
}
