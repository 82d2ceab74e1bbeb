//! HTTPS for the API's listeners (R27): a TCP listener whose connections are accepted only
//! after a TLS handshake (rustls through tokio-rustls), usable with [`axum::serve`].
//!
//! Handshakes run concurrently, each in a task of its own with a deadline, so a client that
//! connects and says nothing (or speaks plain HTTP) holds up no one else; at most
//! [`MAX_HANDSHAKES`] are in progress at once, and [`MAX_HANDSHAKES_PER_IP`] from one source
//! address (an IPv6 /64), connections beyond that are closed at once. After the handshake,
//! [`crate::serve::serve`] applies the HTTP limits (read timeout, connection caps).
//! A failed handshake (wrong protocol, TLS 1.0/1.1, a client that refuses our key) closes the
//! connection and is logged at debug level only: scanners must not flood the log.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::serve::ConnGate;

/// How long a client has to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once, at most.
pub const MAX_HANDSHAKES: usize = 256;
/// Handshakes in progress at once from one source address, at most.
pub const MAX_HANDSHAKES_PER_IP: usize = 16;

/// A TLS listener for [`axum::serve`]: TCP accept, then the TLS handshake, then the stream.
#[derive(Debug)]
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    acceptor: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Serves TLS with `config` on `tcp`. Must be called inside a tokio runtime.
    pub fn new(tcp: TcpListener, config: Arc<tls::rustls::ServerConfig>) -> io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let tls = TlsAcceptor::from(config);
        let slots = ConnGate::new(MAX_HANDSHAKES, MAX_HANDSHAKES_PER_IP);
        let acceptor = tokio::spawn(async move {
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, as axum does.
                        tracing::warn!(error = %e, %local, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    return;
                }
                let Some(slot) = slots.try_enter(peer.ip()) else {
                    tracing::debug!(%peer, "too many TLS handshakes in progress: closed");
                    continue;
                };
                let (tls, tx) = (tls.clone(), tx.clone());
                tokio::spawn(async move {
                    let _slot = slot;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self {
            local,
            ready,
            acceptor,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The acceptor task ended (it never does on its own): no more connections.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}
