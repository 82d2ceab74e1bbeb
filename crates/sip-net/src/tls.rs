//! SIP over TLS (RFC 3261 §26, RFC 5630): the listener. Each accepted TCP connection is
//! admitted against the connection caps, then its handshake runs in a task of its own
//! (bounded by the first-message timeout, so a client that never finishes it costs one
//! slot for 10 s), and the TLS stream is served by the same code as a TCP stream (the
//! `tcp` module): framing, keep-alive pongs, the answer before a close, the queues and
//! timeouts.
//!
//! TLS 1.2 and 1.3 only: the rustls configuration the server gives (`trustring-tls`'s
//! `server_config`) offers nothing older, so a client that speaks only TLS 1.0 or 1.1 fails
//! the handshake. No client certificates are asked for: clients prove who they are with
//! SIP digest, inside the TLS session.
//!
//! # Outbound: the trunk to the gateway
//! Requests for a client's TLS contact go over the connection it registered on (see
//! `sip_core::proxy`, "SIP over TLS"): the proxy never dials a client. It dials only the
//! peers it was given a pinned key for ([`crate::NetOptions::tls_peers`], the IP->PSTN
//! gateway): the first send to such a peer with no live connection opens one ([`connect`]),
//! TLS 1.2/1.3 with the peer's key pinned by its SHA-256 fingerprint (`trustring-tls`'s
//! `pinned_client_config`; names, issuer and dates are not checked, the pin is the anchor).
//! Why the proxy dials and not the gateway: the proxy is the one with something to send
//! first (the branch INVITE), and a dialled connection needs no client-certificate scheme on
//! the gateway, which authenticates each INVITE by its `Trunk-Auth` MAC instead.
//!
//! While it connects, the messages for it wait in its writer queue (the same bounded queue as
//! any connection's: full, the connection is dropped with them). A connect or handshake that
//! fails (refused, timed out, another key) is logged as a warning, the connection is
//! forgotten with what it queued, and the proxy fails the branches sent there at once, as
//! if they had received 503 (`Proxy::transport_failed`, RFC 3261 §16.9): the rest of each
//! fork goes on. The next send dials again. Once up, it is served like an accepted
//! connection (framing, keep-alive pongs, idle timeout), and what the gateway sends over it
//! (responses, and requests such as its BYE) reaches the proxy with its `ConnId`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use std::net::SocketAddr;

use bytes::Bytes;
use sip_core::proxy::{ConnId, Transport};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::NetInput;
use crate::tcp::{self, Admission, ConnShared, Ctx};

pub(crate) async fn accept_loop(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    ctx: Ctx,
    admission: Arc<Admission>,
    next: Arc<AtomicU64>,
) {
    let acceptor = TlsAcceptor::from(config);
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let Some(slot) = admission.admit(peer.ip()) else {
                    tcp::refused(&ctx, peer, Transport::Tls);
                    continue;
                };
                let opened = Instant::now();
                let id = ConnId(next.fetch_add(1, Ordering::Relaxed));
                let (acceptor, ctx) = (acceptor.clone(), ctx.clone());
                tokio::spawn(async move {
                    tcp::tune(&stream);
                    let deadline = opened + ctx.limits.first_message;
                    let tls = match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await
                    {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            ctx.metrics.count_connection_dropped();
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    tcp::serve_accepted(id, peer, Transport::Tls, opened, tls, ctx).await;
                    drop(slot);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "TLS listener: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Dials `peer` over TLS with `config` (its key pinned) for the messages the proxy sends
/// there; the driver registered `id` with the writer queue `out` already. See the module
/// docs for what a failure does.
pub(crate) async fn connect(
    id: ConnId,
    peer: SocketAddr,
    config: Arc<ClientConfig>,
    out: mpsc::Receiver<Bytes>,
    shared: Arc<ConnShared>,
    ctx: Ctx,
) {
    let connector = TlsConnector::from(config);
    // The pinned verifier ignores names; rustls still wants one.
    let name = ServerName::from(peer.ip());
    let dial = async {
        let stream = TcpStream::connect(peer).await?;
        tcp::tune(&stream);
        connector.connect(name, stream).await
    };
    match tokio::time::timeout(tcp::CONNECT, dial).await {
        Ok(Ok(stream)) => {
            tracing::info!(%peer, conn = id.0, "TLS connection to the gateway open (its key is the pinned one)");
            tcp::serve_connected(id, peer, Transport::Tls, stream, out, shared, ctx).await;
        }
        Ok(Err(e)) => {
            tracing::warn!(
                %peer,
                error = %e,
                "TLS connect to the gateway failed: what was sent to it is dropped and its \
                 branches fail (is the gateway up, and is its key the pinned one?)"
            );
            let _ = ctx.net.send(NetInput::ConnectFailed(id)).await;
        }
        Err(_) => {
            tracing::warn!(
                %peer,
                timeout_s = tcp::CONNECT.as_secs(),
                "TLS connect to the gateway timed out: what was sent to it is dropped and its \
                 branches fail"
            );
            let _ = ctx.net.send(NetInput::ConnectFailed(id)).await;
        }
    }
}
