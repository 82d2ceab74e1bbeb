//! The PSTN side's attachment point: phone lines connect over TLS (plain TCP only behind
//! `--danger-plain-lines`) and speak TR-ISUP (`docs/isup.md`, crate `pstn`). Each connection
//! is one task: a reader that decodes messages for the exchange and a writer that encodes the
//! exchange's; the exchange decides everything (attach challenged, accepted or refused,
//! calls, bearer). When either half ends, the connection is closed.
//!
//! Every queue here is bounded (SECURITY threat 15):
//! - **to the exchange**: one channel of [`EXCHANGE_QUEUE`] inputs shared by all lines; a
//!   reader waits for room (back-pressure: it stops reading its socket, and TCP slows the
//!   line down);
//! - **to each line** ([`LineTx`]): [`LINE_QUEUE`] messages. A bearer frame that finds the
//!   queue full is dropped and counted (`dropped_frames_total{queue="line"}`); any other
//!   message that finds it full closes the line, as does a write that makes no progress for
//!   [`WRITE_STALL`]: a signalling peer that does not read is cut off
//!   (`slow_lines_closed_total`), never buffered without bound;
//! - connections: at most [`MAX_CONNECTIONS`] at once (more are closed at accept), and a TLS
//!   handshake must finish within [`HANDSHAKE_TIMEOUT`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pstn::codec::{Decoder, encode};
use pstn::msg::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;

use crate::metrics::{Dir, GatewayMetrics, Queue};

/// Messages waiting for one line's socket.
pub(crate) const LINE_QUEUE: usize = 128;
/// Inputs waiting for the exchange, from all lines.
pub(crate) const EXCHANGE_QUEUE: usize = 1024;
/// A write to a line that makes no progress for this long closes it.
pub(crate) const WRITE_STALL: Duration = Duration::from_secs(5);
/// The TLS handshake of a new line must finish within this.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most line connections at once (attached or not).
pub(crate) const MAX_CONNECTIONS: usize = 1024;

/// What the line tasks tell the exchange.
#[derive(Debug)]
pub(crate) enum LineInput {
    /// A connection is up (after its TLS handshake); `tx` reaches it. It must attach next.
    Opened {
        conn: u64,
        peer: SocketAddr,
        tx: LineTx,
    },
    /// A message from the line.
    Msg { conn: u64, msg: Message },
    /// The connection is gone.
    Closed { conn: u64 },
}

/// Set once to close a connection; its writer wakes and ends it.
#[derive(Debug, Default)]
struct CloseFlag {
    closed: AtomicBool,
    notify: Notify,
}

/// The exchange's handle on one line's bounded write queue (see the module docs for the
/// overflow policy). Cheap to clone (the media bridge of a call holds one).
#[derive(Debug, Clone)]
pub(crate) struct LineTx {
    conn: u64,
    tx: mpsc::Sender<Message>,
    close: Arc<CloseFlag>,
    metrics: Arc<GatewayMetrics>,
}

impl LineTx {
    /// Queues `m` for the line, without waiting: a bearer frame that finds the queue full is
    /// dropped (and counted); any other message closes the line instead.
    pub(crate) fn send(&self, m: Message) {
        if self.close.closed.load(Ordering::Relaxed) {
            return;
        }
        match self.tx.try_send(m) {
            Ok(()) | Err(TrySendError::Closed(_)) => {}
            Err(TrySendError::Full(Message::Frm { .. })) => {
                self.metrics.dropped_frame(Queue::Line);
            }
            Err(TrySendError::Full(m)) => {
                tracing::warn!(
                    conn = self.conn,
                    msg = m.name(),
                    "line does not read its messages (queue full): closing it"
                );
                self.metrics.slow_line_closed();
                self.close();
            }
        }
    }

    /// Closes the connection (what is queued is not sent).
    pub(crate) fn close(&self) {
        if !self.close.closed.swap(true, Ordering::Relaxed) {
            self.close.notify.notify_one();
        }
    }

    /// A handle with a queue of `capacity` and no connection behind it, and its receiving
    /// end (for tests).
    #[cfg(test)]
    pub(crate) fn detached(
        capacity: usize,
        metrics: Arc<GatewayMetrics>,
    ) -> (Self, mpsc::Receiver<Message>) {
        let (tx, rx) = mpsc::channel(capacity);
        (
            Self {
                conn: 0,
                tx,
                close: Arc::default(),
                metrics,
            },
            rx,
        )
    }

    #[cfg(test)]
    pub(crate) fn is_closed(&self) -> bool {
        self.close.closed.load(Ordering::Relaxed)
    }
}

trait LinkStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> LinkStream for T {}
type Link = Box<dyn LinkStream>;

/// Accepts lines until the listener fails; `tls` is `None` only with plain lines allowed.
pub(crate) async fn accept(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    to_exchange: mpsc::Sender<LineInput>,
    metrics: Arc<GatewayMetrics>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut next = 0u64;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "line accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many line connections: closed at once");
            continue;
        };
        next += 1;
        let _ = stream.set_nodelay(true);
        let (tls, to_exchange, metrics) = (tls.clone(), to_exchange.clone(), metrics.clone());
        tokio::spawn(async move {
            connection(next, peer, stream, tls, to_exchange, metrics).await;
            drop(slot);
        });
    }
}

async fn connection(
    conn: u64,
    peer: SocketAddr,
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    to_exchange: mpsc::Sender<LineInput>,
    metrics: Arc<GatewayMetrics>,
) {
    let link: Link = match tls {
        Some(acceptor) => {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(s)) => Box::new(s),
                Ok(Err(e)) => {
                    tracing::info!(%peer, error = %e, "line TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::info!(%peer, "line TLS handshake timed out");
                    return;
                }
            }
        }
        None => Box::new(stream),
    };
    let (rd, wr) = tokio::io::split(link);
    let (tx, rx) = mpsc::channel(LINE_QUEUE);
    let close = Arc::new(CloseFlag::default());
    let line_tx = LineTx {
        conn,
        tx,
        close: close.clone(),
        metrics: metrics.clone(),
    };
    if to_exchange
        .send(LineInput::Opened {
            conn,
            peer,
            tx: line_tx,
        })
        .await
        .is_err()
    {
        return;
    }
    tokio::select! {
        () = read_loop(conn, peer, rd, &to_exchange, &metrics) => {}
        () = write_loop(conn, wr, rx, &close, &metrics) => {}
    }
    // Both halves are dropped here: the socket is closed whichever side ended first.
    let _ = to_exchange.send(LineInput::Closed { conn }).await;
}

async fn read_loop(
    conn: u64,
    peer: SocketAddr,
    mut rd: ReadHalf<Link>,
    to_exchange: &mpsc::Sender<LineInput>,
    metrics: &GatewayMetrics,
) {
    let mut dec = Decoder::new();
    let mut buf = vec![0u8; 4096];
    loop {
        let n = match rd.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if let Err(e) = dec.push(&buf[..n]) {
            tracing::info!(%peer, error = %e, "line protocol error; closing");
            return;
        }
        while let Some(item) = dec.pop() {
            match item {
                Ok(msg) => {
                    metrics.isup(msg.name(), Dir::In);
                    // Waits for room: back-pressure onto this line's socket.
                    if to_exchange
                        .send(LineInput::Msg { conn, msg })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) if e.is_fatal() => {
                    tracing::info!(%peer, error = %e, "line protocol error; closing");
                    return;
                }
                Err(e) => tracing::info!(%peer, error = %e, "bad line message skipped"),
            }
        }
    }
}

async fn write_loop(
    conn: u64,
    mut wr: WriteHalf<Link>,
    mut rx: mpsc::Receiver<Message>,
    close: &CloseFlag,
    metrics: &GatewayMetrics,
) {
    let mut buf = Vec::with_capacity(256);
    loop {
        let m = tokio::select! {
            biased;
            () = close.notify.notified() => None,
            m = rx.recv() => m,
        };
        let Some(m) = m else { break };
        buf.clear();
        if let Err(e) = encode(&m, &mut buf) {
            tracing::warn!(conn, error = %e, "line message not encodable");
            continue;
        }
        metrics.isup(m.name(), Dir::Out);
        let last = matches!(m, Message::Atr { .. });
        let write = async {
            wr.write_all(&buf).await?;
            if last || rx.is_empty() {
                wr.flush().await?;
            }
            Ok::<(), std::io::Error>(())
        };
        match tokio::time::timeout(WRITE_STALL, write).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => break,
            Err(_) => {
                tracing::warn!(
                    conn,
                    "line does not read (a write made no progress in {WRITE_STALL:?}): closing it"
                );
                metrics.slow_line_closed();
                break;
            }
        }
        if last {
            // ATR: the attach is refused (or the line detached); the exchange closes.
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use pstn::msg::{Cic, FRAME_LEN};

    fn frm() -> Message {
        Message::Frm {
            cic: Cic(2),
            seq: 0,
            payload: [0; FRAME_LEN],
        }
    }

    #[test]
    fn full_queue_drops_frames_and_closes_on_signalling() {
        let metrics = Arc::new(GatewayMetrics::new());
        let (tx, mut rx) = LineTx::detached(4, metrics.clone());
        for _ in 0..10 {
            tx.send(frm());
        }
        // Four queued, six dropped and counted; the line is still open.
        assert!(!tx.is_closed());
        assert!(
            metrics
                .render()
                .contains("trustring_gateway_dropped_frames_total{queue=\"line\"} 6\n")
        );
        // Signalling that finds no room closes the line (it does not read).
        tx.send(Message::Rlc { cic: Cic(2) });
        assert!(tx.is_closed());
        assert!(
            metrics
                .render()
                .contains("trustring_gateway_slow_lines_closed_total 1\n")
        );
        let mut n = 0;
        while rx.try_recv().is_ok() {
            n += 1;
        }
        assert_eq!(n, 4);
        // Closed: nothing more is queued.
        tx.send(Message::Rlc { cic: Cic(2) });
        assert!(rx.try_recv().is_err());
    }
}
