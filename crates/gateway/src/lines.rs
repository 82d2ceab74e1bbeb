//! The PSTN side's attachment point: phone lines connect over TCP and speak TR-ISUP
//! (`docs/isup.md`, crate `pstn`). Each connection gets a reader task that decodes messages
//! for the exchange and a writer task that encodes the exchange's messages; the exchange
//! decides everything (attach accepted or refused, calls, bearer).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pstn::codec::{Decoder, encode};
use pstn::msg::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::metrics::{Dir, GatewayMetrics};

/// A line must say who it is this soon after connecting.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);

/// What the line tasks tell the exchange.
#[derive(Debug)]
pub(crate) enum LineInput {
    /// A connection sent its first message (it should be ATT); `tx` reaches it.
    Opened {
        conn: u64,
        peer: SocketAddr,
        first: Message,
        tx: mpsc::UnboundedSender<Message>,
    },
    /// A later message.
    Msg { conn: u64, msg: Message },
    /// The connection is gone.
    Closed { conn: u64 },
}

/// Accepts lines until the listener fails.
pub(crate) async fn accept(
    listener: TcpListener,
    to_exchange: mpsc::UnboundedSender<LineInput>,
    metrics: Arc<GatewayMetrics>,
) {
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
        next += 1;
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(
            next,
            peer,
            stream,
            to_exchange.clone(),
            metrics.clone(),
        ));
    }
}

async fn connection(
    conn: u64,
    peer: SocketAddr,
    stream: TcpStream,
    to_exchange: mpsc::UnboundedSender<LineInput>,
    metrics: Arc<GatewayMetrics>,
) {
    let (mut rd, mut wr) = stream.into_split();
    let out_metrics = metrics.clone();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    let writer = tokio::spawn(async move {
        let mut buf = Vec::with_capacity(256);
        while let Some(m) = rx.recv().await {
            buf.clear();
            if let Err(e) = encode(&m, &mut buf) {
                tracing::warn!(conn, error = %e, "line message not encodable");
                continue;
            }
            out_metrics.isup(m.name(), Dir::Out);
            let close = matches!(m, Message::Atr { .. });
            if wr.write_all(&buf).await.is_err() || close {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let mut dec = Decoder::new();
    let mut buf = vec![0u8; 4096];
    let mut opened = false;
    let mut tx = Some(tx);
    'read: loop {
        let n = if opened {
            rd.read(&mut buf).await
        } else {
            match tokio::time::timeout(ATTACH_TIMEOUT, rd.read(&mut buf)).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::info!(%peer, "line did not attach in time");
                    break;
                }
            }
        };
        let n = match n {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Err(e) = dec.push(&buf[..n]) {
            tracing::info!(%peer, error = %e, "line protocol error; closing");
            break;
        }
        while let Some(item) = dec.pop() {
            match item {
                Ok(msg) => {
                    metrics.isup(msg.name(), Dir::In);
                    let input = match tx.take() {
                        Some(tx) => {
                            opened = true;
                            LineInput::Opened {
                                conn,
                                peer,
                                first: msg,
                                tx,
                            }
                        }
                        None => LineInput::Msg { conn, msg },
                    };
                    if to_exchange.send(input).is_err() {
                        break 'read;
                    }
                }
                Err(e) if e.is_fatal() => {
                    tracing::info!(%peer, error = %e, "line protocol error; closing");
                    break 'read;
                }
                Err(e) => tracing::info!(%peer, error = %e, "bad line message skipped"),
            }
        }
    }
    drop(tx);
    if opened {
        let _ = to_exchange.send(LineInput::Closed { conn });
    }
    writer.abort();
}
