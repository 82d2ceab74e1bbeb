//! The SIP trunk over TLS (the default; plain UDP only behind `--danger-plain-trunk`): the
//! server's phone legs carry SRTP keys (`a=crypto`), the trust challenge and `Trunk-Auth`,
//! none of which may cross in clear.
//!
//! Who dials: the server. It opens the connection with the gateway's key pinned (the same
//! identity as the line port, kept under `DATA/tls/`), so the server knows it talks to this
//! gateway; the gateway knows each INVITE comes from the server by its `Trunk-Auth` MAC (the
//! `admission` module), checked inside the session, and accepts connections only from the
//! allowed addresses (`--allow`). The gateway never dials: it answers over the connection a
//! request came on (the UA sends responses to the request's source, which is that
//! connection's peer), and its own requests (BYE, re-INVITE) go over the newest live
//! connection from the server, the only SIP peer it has.
//!
//! Each connection is one reader (frames SIP messages with sip-core's stream framer) and
//! one writer task; bounds (SECURITY threat 15):
//! - at most [`MAX_CONNECTIONS`] at once (more are closed at accept); the handshake must
//!   finish within [`HANDSHAKE_TIMEOUT`];
//! - **to the exchange**: one channel of [`EXCHANGE_QUEUE`] inputs; a reader waits for room
//!   (back-pressure onto its socket);
//! - **to each connection**: [`WRITE_QUEUE`] messages; a message that finds it full closes
//!   the connection (the server does not read), as does a write that makes no progress for
//!   [`WRITE_STALL`];
//! - a framing error (a message over the size limit, a bad Content-Length) closes it.
//!
//! The writer sends a double-CRLF keep-alive every [`PING_EVERY`] (RFC 5626 §3.5.1): the
//! server closes a connection it hears nothing on for 5 minutes, and an answered call may
//! be quiet far longer; its BYE must still find the connection.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use sip_core::message::{Frame, frame_stream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;

/// Messages waiting for one connection's socket.
pub(crate) const WRITE_QUEUE: usize = 256;
/// Inputs waiting for the exchange, from all SIP connections.
pub(crate) const EXCHANGE_QUEUE: usize = 256;
/// A write that makes no progress for this long closes the connection.
pub(crate) const WRITE_STALL: Duration = Duration::from_secs(5);
/// The TLS handshake of a new connection must finish within this.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most SIP connections at once (the server needs one).
pub(crate) const MAX_CONNECTIONS: usize = 32;
/// How often the writer sends a keep-alive ping.
pub(crate) const PING_EVERY: Duration = Duration::from_secs(30);

/// What the connection tasks tell the exchange.
#[derive(Debug)]
pub(crate) enum SipInput {
    /// A connection is up (after its handshake); `tx` is its write queue.
    Opened {
        conn: u64,
        peer: SocketAddr,
        tx: mpsc::Sender<Bytes>,
    },
    /// A whole SIP message from `peer`.
    Message {
        conn: u64,
        peer: SocketAddr,
        data: Bytes,
    },
    /// The connection is gone.
    Closed { conn: u64 },
}

/// Accepts the server's connections until the listener fails; only from `allow`.
pub(crate) async fn accept(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    allow: Arc<[IpAddr]>,
    to_exchange: mpsc::Sender<SipInput>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut next = 0u64;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "SIP trunk accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if !allow.contains(&peer.ip()) {
            tracing::warn!(%peer, "SIP trunk connection from an address not in --allow: closed");
            continue;
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many SIP trunk connections: closed at once");
            continue;
        };
        next += 1;
        let conn = next;
        let _ = stream.set_nodelay(true);
        let (acceptor, to_exchange) = (acceptor.clone(), to_exchange.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::info!(%peer, error = %e, "SIP trunk TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::info!(%peer, "SIP trunk TLS handshake timed out");
                    return;
                }
            };
            tracing::info!(%peer, conn, "SIP trunk TLS connection from the server");
            let (rd, wr) = tokio::io::split(tls);
            let (tx, rx) = mpsc::channel(WRITE_QUEUE);
            if to_exchange
                .send(SipInput::Opened { conn, peer, tx })
                .await
                .is_err()
            {
                return;
            }
            tokio::select! {
                () = read_loop(conn, peer, rd, &to_exchange) => {}
                () = write_loop(conn, wr, rx) => {}
            }
            let _ = to_exchange.send(SipInput::Closed { conn }).await;
            tracing::info!(%peer, conn, "SIP trunk connection closed");
            drop(slot);
        });
    }
}

async fn read_loop<R>(conn: u64, peer: SocketAddr, mut rd: R, to_exchange: &mpsc::Sender<SipInput>)
where
    R: tokio::io::AsyncRead + Unpin,
{
    let mut buf = BytesMut::with_capacity(8192);
    loop {
        match rd.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        loop {
            match frame_stream(&buf) {
                Ok(Frame::Incomplete) => break,
                Ok(Frame::KeepAlive(n)) => buf.advance(n),
                Ok(Frame::Message(n)) => {
                    let data = buf.split_to(n).freeze();
                    // Waits for room: back-pressure onto this connection's socket.
                    if to_exchange
                        .send(SipInput::Message { conn, peer, data })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) => {
                    tracing::info!(%peer, conn, reason = e.reason, "SIP trunk framing error; closing");
                    return;
                }
            }
        }
    }
}

async fn write_loop<W>(conn: u64, mut wr: W, mut rx: mpsc::Receiver<Bytes>)
where
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    loop {
        let bytes = tokio::select! {
            m = rx.recv() => match m {
                Some(b) => b,
                // The exchange dropped the connection (it does not read, or the gateway stops).
                None => break,
            },
            _ = ping.tick() => Bytes::from_static(b"\r\n\r\n"),
        };
        let write = async {
            wr.write_all(&bytes).await?;
            if rx.is_empty() {
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
                    "the server does not read the SIP trunk (a write made no progress in \
                     {WRITE_STALL:?}): closing it"
                );
                break;
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpSocket, TcpStream};
    use tokio_rustls::TlsConnector;
    use tokio_rustls::client::TlsStream;

    const WAIT: Duration = Duration::from_secs(10);

    struct Listening {
        addr: SocketAddr,
        fingerprint: tls::Fingerprint,
        rx: mpsc::Receiver<SipInput>,
        task: tokio::task::JoinHandle<()>,
        _dir: tempfile::TempDir,
    }

    async fn listen() -> Listening {
        let dir = tempfile::tempdir().expect("temp dir");
        let names = vec!["127.0.0.1".to_owned()];
        let id = tls::ServerIdentity::load_or_create(dir.path(), None, None, &names)
            .expect("an identity");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let addr = listener.local_addr().expect("addr");
        let acceptor = TlsAcceptor::from(tls::server_config(&id).expect("config"));
        let (tx, rx) = mpsc::channel(EXCHANGE_QUEUE);
        let allow: Arc<[IpAddr]> = vec![IpAddr::from([127, 0, 0, 1])].into();
        let task = tokio::spawn(accept(listener, acceptor, allow, tx));
        Listening {
            addr,
            fingerprint: id.fingerprint,
            rx,
            task,
            _dir: dir,
        }
    }

    /// A TLS client from `from` (a loopback address) pinning the gateway's key.
    async fn client(l: &Listening, from: [u8; 4]) -> std::io::Result<TlsStream<TcpStream>> {
        let sock = TcpSocket::new_v4().expect("a socket");
        // Binding must work (loopback is all of 127/8): only the connection may fail.
        sock.bind(SocketAddr::from((from, 0))).expect("binds");
        let tcp = sock
            .connect(l.addr)
            .await
            .expect("the listener accepts TCP");
        let config = tls::pinned_client_config(l.fingerprint).expect("client config");
        let name = tokio_rustls::rustls::pki_types::ServerName::from(l.addr.ip());
        tokio::time::timeout(WAIT, TlsConnector::from(config).connect(name, tcp))
            .await
            .expect("handshake in time")
    }

    async fn next(rx: &mut mpsc::Receiver<SipInput>) -> SipInput {
        tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("an input in time")
            .expect("the listener runs")
    }

    fn options(n: u32) -> String {
        format!(
            "OPTIONS sip:gw SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5060;branch=z9hG4bK{n}\r\n\
             From: <sip:p@x>;tag=1\r\nTo: <sip:gw>\r\nCall-ID: {n}@t\r\nCSeq: {n} OPTIONS\r\n\
             Content-Length: 5\r\n\r\nhello"
        )
    }

    #[tokio::test]
    async fn frames_messages_and_writes_back_over_the_connection() {
        let mut l = listen().await;
        let mut c = client(&l, [127, 0, 0, 1]).await.expect("handshake");
        let SipInput::Opened { conn, peer, tx } = next(&mut l.rx).await else {
            panic!("not Opened");
        };
        assert_eq!(peer, c.get_ref().0.local_addr().expect("addr"));
        // Two messages, split anywhere, a keep-alive between them.
        let (a, b) = (options(1), options(2));
        let wire = format!("{a}\r\n\r\n{b}");
        let (x, y) = wire.as_bytes().split_at(a.len() - 3);
        c.write_all(x).await.expect("writes");
        c.flush().await.expect("flushes");
        tokio::time::sleep(Duration::from_millis(50)).await;
        c.write_all(y).await.expect("writes");
        c.flush().await.expect("flushes");
        for want in [&a, &b] {
            match next(&mut l.rx).await {
                SipInput::Message { conn: c2, data, .. } => {
                    assert_eq!(c2, conn);
                    assert_eq!(&data[..], want.as_bytes());
                }
                other => panic!("{other:?}"),
            }
        }
        // What the exchange queues reaches the peer.
        const OK: &[u8] = b"SIP/2.0 200 OK\r\n\r\n";
        tx.try_send(Bytes::from_static(OK)).expect("room");
        let mut got = vec![0u8; OK.len()];
        tokio::time::timeout(WAIT, c.read_exact(&mut got))
            .await
            .expect("in time")
            .expect("reads");
        assert_eq!(got, OK);
        // Dropping the queue closes the connection.
        drop(tx);
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(WAIT, c.read_to_end(&mut rest)).await;
        assert!(matches!(next(&mut l.rx).await, SipInput::Closed { conn: c2 } if c2 == conn));
        l.task.abort();
    }

    #[tokio::test]
    async fn a_framing_error_closes_the_connection() {
        let mut l = listen().await;
        let mut c = client(&l, [127, 0, 0, 1]).await.expect("handshake");
        let SipInput::Opened { conn, .. } = next(&mut l.rx).await else {
            panic!("not Opened");
        };
        let bad = options(1).replace("Content-Length: 5", "Content-Length: 99999999");
        c.write_all(bad.as_bytes()).await.expect("writes");
        c.flush().await.expect("flushes");
        assert!(matches!(next(&mut l.rx).await, SipInput::Closed { conn: c2 } if c2 == conn));
        l.task.abort();
    }

    #[tokio::test]
    async fn only_allowed_addresses_get_a_session() {
        let mut l = listen().await;
        // 127.0.0.2 is loopback too, but not in the allow list: closed before the handshake.
        assert!(client(&l, [127, 0, 0, 2]).await.is_err());
        assert!(
            tokio::time::timeout(Duration::from_millis(200), l.rx.recv())
                .await
                .is_err(),
            "nothing reached the exchange"
        );
        l.task.abort();
    }
}
