//! TCP: accept and connect, then one reader task (framing by Content-Length, RFC 3261
//! §18.3) and one writer task per connection. A framing error closes the connection: on a
//! stream there is no way to find the next message after a bad one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sip_core::message::{Frame, frame_stream};
use sip_core::proxy::ConnId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::NetInput;

/// A connection with no traffic for this long is closed (bounds idle resources).
const IDLE: Duration = Duration::from_secs(3600);

pub(crate) async fn accept_loop(
    listener: TcpListener,
    net: mpsc::UnboundedSender<NetInput>,
    next: Arc<AtomicU64>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let id = ConnId(next.fetch_add(1, Ordering::Relaxed));
                let (w, r) = mpsc::unbounded_channel();
                if net
                    .send(NetInput::Connected {
                        conn: id,
                        peer,
                        writer: w,
                    })
                    .is_err()
                {
                    return;
                }
                tokio::spawn(serve(id, peer, stream, r, net.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "TCP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

pub(crate) async fn connect(
    id: ConnId,
    peer: SocketAddr,
    out: mpsc::UnboundedReceiver<Bytes>,
    net: mpsc::UnboundedSender<NetInput>,
) {
    match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(peer)).await {
        Ok(Ok(stream)) => serve(id, peer, stream, out, net).await,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TCP connect failed");
            let _ = net.send(NetInput::Closed(id));
        }
        Err(_) => {
            tracing::debug!(%peer, "TCP connect timed out");
            let _ = net.send(NetInput::Closed(id));
        }
    }
}

async fn serve(
    id: ConnId,
    peer: SocketAddr,
    stream: TcpStream,
    mut out: mpsc::UnboundedReceiver<Bytes>,
    net: mpsc::UnboundedSender<NetInput>,
) {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        while let Some(b) = out.recv().await {
            if wr.write_all(&b).await.is_err() {
                break;
            }
        }
    });
    let mut buf = BytesMut::with_capacity(8192);
    'read: loop {
        match tokio::time::timeout(IDLE, rd.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(_)) => {}
        }
        loop {
            match frame_stream(&buf) {
                Ok(Frame::Incomplete) => break,
                Ok(Frame::KeepAlive(n)) => {
                    let _ = buf.split_to(n);
                }
                Ok(Frame::Message(n)) => {
                    let data = buf.split_to(n).freeze();
                    if net
                        .send(NetInput::Message {
                            conn: id,
                            peer,
                            data,
                        })
                        .is_err()
                    {
                        break 'read;
                    }
                }
                Err(e) => {
                    tracing::debug!(%peer, reason = e.reason, "TCP framing error; closing");
                    break 'read;
                }
            }
        }
    }
    writer.abort();
    let _ = net.send(NetInput::Closed(id));
}
