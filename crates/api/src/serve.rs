//! Serving a router on a listener, with the limits a public server needs against slow and
//! greedy clients (R30, issue "slow clients"): `trustring serve` runs both of its HTTP
//! listeners (the admin API and the public enrolment endpoint) through [`serve`].
//!
//! - **Read timeout** ([`HttpLimits::read_timeout`], default 10 s): a connection must deliver
//!   a complete request head within that time of opening (or of its previous response, on a
//!   kept-alive connection), else it is closed (hyper's HTTP/1 header-read timeout); a request
//!   body must be complete within that time of its head, else the request fails (400
//!   `invalid_body`) and the connection is closed. A client that sends half a request line and
//!   waits holds its connection 10 s, not forever.
//! - **Connection caps** ([`HttpLimits::max_connections`], default 1024, and
//!   [`HttpLimits::max_connections_per_ip`], default 64; an IPv6 source counts by its /64): a
//!   connection beyond either is closed as soon as it is accepted, and counted in
//!   `trustring_http_connections_refused_total{listener}`. Connections closed by the read
//!   timeout are counted in `trustring_http_connections_dropped_total{listener}`.
//! - **Bounded requests**: the request head is read into a buffer of at most
//!   [`MAX_HEAD_BYTES`] (a larger head is refused, 431), with at most [`MAX_HEADERS`] fields;
//!   bodies are at most [`crate::BODY_LIMIT`] bytes (413), checked by every extractor.
//! - HTTP/1.1 only (what the clients speak; the TLS listeners offer no ALPN), so there is no
//!   HTTP/2 stream multiplexing to bound on top.
//!
//! Each request carries its peer's address as axum's `ConnectInfo<SocketAddr>` extension
//! (the security events' per-source limit reads it). On shutdown the listener stops
//! accepting and every connection finishes its request in progress, then closes.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::serve::Listener;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::watch;
use tower::ServiceExt;

use crate::metrics::{Counters, ListenerKind};

/// Default of [`HttpLimits::read_timeout`].
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of [`HttpLimits::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default of [`HttpLimits::max_connections_per_ip`].
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 64;
/// Largest request head (request line and header fields) read, in bytes.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most header fields in one request.
pub const MAX_HEADERS: usize = 64;

/// The limits of one HTTP listener (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Time a connection has to send a complete request head, and a request to send its
    /// complete body after its head.
    pub read_timeout: Duration,
    /// Connections open at once, at most; one more is closed at accept.
    pub max_connections: usize,
    /// Connections open at once from one source address (an IPv6 /64), at most.
    pub max_connections_per_ip: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            read_timeout: DEFAULT_READ_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
        }
    }
}

/// Serves `router` on `listener` with `limits` until `shutdown` completes, then lets every
/// open connection finish its request in progress and returns once all are closed (bound the
/// wait with a timeout). `counters` (shared with the router's [`crate::ApiOptions::counters`],
/// so `GET /metrics` shows them) count refused and dropped connections as `kind`'s.
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    limits: HttpLimits,
    counters: Arc<Counters>,
    kind: ListenerKind,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()>
where
    L: Listener<Addr = SocketAddr>,
{
    let gate = ConnGate::new(limits.max_connections, limits.max_connections_per_ip);
    // Each connection task holds a receiver: `closing` tells them to finish, and
    // `closed()` on the sender waits until the last one is gone.
    let (closing, watcher) = watch::channel(false);
    let mut shutdown = pin!(shutdown);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.read_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS);
    loop {
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let Some(slot) = gate.try_enter(peer.ip()) else {
            counters.connection_refused(kind);
            tracing::debug!(%peer, listener = kind.label(), "HTTP connection cap reached: closed");
            continue;
        };
        counters.connection_open(kind, true);
        let router = router.clone();
        let counters = Arc::clone(&counters);
        let mut watcher = watcher.clone();
        let read_timeout = limits.read_timeout;
        let conn_counters = Arc::clone(&counters);
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let mut req = req.map(|body| {
                Body::new(Deadline::new(
                    body,
                    read_timeout,
                    Arc::clone(&conn_counters),
                    kind,
                ))
            });
            req.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(req)
        });
        let conn = http.serve_connection(TokioIo::new(io), service);
        tokio::spawn(async move {
            let _slot = slot;
            let mut conn = pin!(conn);
            let mut closing = false;
            loop {
                tokio::select! {
                    result = conn.as_mut() => {
                        if let Err(e) = result {
                            if e.is_timeout() {
                                counters.connection_dropped(kind);
                                tracing::debug!(%peer, listener = kind.label(),
                                    "no complete request head in time: closed");
                            } else {
                                tracing::debug!(%peer, error = %e, "HTTP connection failed");
                            }
                        }
                        break;
                    }
                    changed = watcher.changed(), if !closing => {
                        closing = true;
                        if changed.is_ok() {
                            conn.as_mut().graceful_shutdown();
                        }
                    }
                }
            }
            counters.connection_open(kind, false);
            drop(watcher);
        });
    }
    drop(listener);
    let _ = closing.send(true);
    drop(watcher);
    closing.closed().await;
    Ok(())
}

/// The peer's address of a request served by [`serve`] (`None` for a router driven
/// otherwise, e.g. in-process in tests): an extractor that never fails.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerAddr(pub(crate) Option<SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for PeerAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0),
        ))
    }
}

/// The key a source address is counted under: an IPv4 address (IPv4-mapped IPv6 ones
/// included) as is, an IPv6 address by its /64 (one subscriber's usual allocation, so a
/// client cannot escape its limit by hopping addresses inside it).
pub(crate) fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
    }
}

/// Counts open connections, in all and per source ([`source_key`]); a [`Slot`] is one
/// open connection, given back when dropped.
#[derive(Debug, Clone)]
pub(crate) struct ConnGate {
    inner: Arc<Mutex<GateState>>,
    max: usize,
    max_per_source: usize,
}

#[derive(Debug, Default)]
struct GateState {
    total: usize,
    per_source: HashMap<IpAddr, usize>,
}

impl ConnGate {
    pub(crate) fn new(max: usize, max_per_source: usize) -> Self {
        Self {
            inner: Arc::default(),
            max,
            max_per_source,
        }
    }

    /// A slot for a connection from `ip`, or `None` when the total or its source's cap is
    /// reached.
    pub(crate) fn try_enter(&self, ip: IpAddr) -> Option<Slot> {
        let key = source_key(ip);
        let mut state = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if state.total >= self.max {
            return None;
        }
        let n = state.per_source.entry(key).or_insert(0);
        if *n >= self.max_per_source {
            return None;
        }
        *n += 1;
        state.total += 1;
        Some(Slot {
            gate: Arc::clone(&self.inner),
            key,
        })
    }
}

/// One open connection of a [`ConnGate`].
#[derive(Debug)]
pub(crate) struct Slot {
    gate: Arc<Mutex<GateState>>,
    key: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.gate.lock().unwrap_or_else(PoisonError::into_inner);
        state.total = state.total.saturating_sub(1);
        if let Some(n) = state.per_source.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                state.per_source.remove(&self.key);
            }
        }
    }
}

/// A request body that must be complete by a deadline: past it, reading fails (the
/// extractor answers 400 `invalid_body`, and hyper closes the connection, whose request was
/// not read to its end).
struct Deadline {
    inner: Incoming,
    sleep: Pin<Box<tokio::time::Sleep>>,
    counters: Arc<Counters>,
    kind: ListenerKind,
    expired: bool,
}

impl Deadline {
    fn new(inner: Incoming, after: Duration, counters: Arc<Counters>, kind: ListenerKind) -> Self {
        Self {
            inner,
            sleep: Box::pin(tokio::time::sleep(after)),
            counters,
            kind,
            expired: false,
        }
    }
}

/// The request body did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("request body not received in time")]
struct BodyTimeout;

impl HttpBody for Deadline {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if self.expired {
            return Poll::Ready(Some(Err(BodyTimeout.into())));
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            Poll::Pending => {
                if self.sleep.as_mut().poll(cx).is_ready() {
                    self.expired = true;
                    self.counters.connection_dropped(self.kind);
                    Poll::Ready(Some(Err(BodyTimeout.into())))
                } else {
                    Poll::Pending
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::V4([0, 0, 0, 0].into()))
    }

    #[test]
    fn sources_are_keyed_by_v4_address_or_v6_64() {
        assert_eq!(source_key(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(source_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(source_key(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
        assert_eq!(
            source_key(ip("2001:db8:1:2:ffff::1")),
            source_key(ip("2001:db8:1:2::9"))
        );
        assert_ne!(
            source_key(ip("2001:db8:1:3::1")),
            source_key(ip("2001:db8:1:2::1"))
        );
    }

    #[test]
    fn the_gate_caps_in_all_and_per_source_and_frees_on_drop() {
        let gate = ConnGate::new(3, 2);
        let a1 = gate.try_enter(ip("192.0.2.1"));
        let a2 = gate.try_enter(ip("192.0.2.1"));
        assert!(a1.is_some() && a2.is_some());
        assert!(gate.try_enter(ip("192.0.2.1")).is_none(), "per source");
        let b1 = gate.try_enter(ip("192.0.2.2"));
        assert!(b1.is_some());
        assert!(gate.try_enter(ip("192.0.2.3")).is_none(), "in all");
        drop(a1);
        assert!(gate.try_enter(ip("192.0.2.3")).is_some(), "freed");
        drop((a2, b1));
        let state = gate.inner.lock().unwrap_or_else(PoisonError::into_inner);
        assert_eq!(state.total, 0);
        assert!(
            state.per_source.is_empty(),
            "no entry kept for a gone source"
        );
    }
}
