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
//! The proxy never opens TLS connections: requests for a TLS contact go over the connection
//! it registered on (see `sip_core::proxy`, "SIP over TLS").

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sip_core::proxy::{ConnId, Transport};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;

use crate::tcp::{self, Admission, Ctx};

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
