//! The stream transports under hostile peers (R30): connection caps per source address and
//! in total, the first-message timeout (TCP, TLS before and after its handshake), the idle
//! timeouts with and without a registration, and a peer that does not read what it is sent.
//! Small limits keep the tests fast; the defaults are exercised against the real binary in
//! `bin/trustring/tests/sip_limits.rs`.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sip_net::StreamLimits;
use support::{Server, WAIT, options, register};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

/// A TCP connection to `to` from the loopback address `from` (127.0.0.0/8 is all ours).
async fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::from((from, 0))).unwrap();
    s.connect(to).await.expect("connects")
}

#[tokio::test]
async fn one_connection_over_the_per_address_cap_is_refused() {
    let limits = StreamLimits {
        max_connections_per_ip: 4,
        ..StreamLimits::default()
    };
    let server = Server::start(true, limits).await;
    let mut held = Vec::new();
    for i in 0..4 {
        let mut c = server.tcp().await;
        c.send(&options("TCP", i)).await;
        assert_eq!(c.response().await.status, 200);
        held.push(c);
    }
    // The fifth from the same address: closed before a byte is read, TCP or TLS.
    let mut fifth = server.tcp().await;
    assert!(fifth.closed_within(Duration::from_secs(2)).await);
    let tls = TcpStream::connect(server.tls.unwrap()).await.unwrap();
    let name = tls::pki_types::ServerName::try_from("localhost").unwrap();
    let cfg = tls::pinned_client_config(server.fingerprint.unwrap()).unwrap();
    let handshake = tokio::time::timeout(
        WAIT,
        tokio_rustls::TlsConnector::from(cfg).connect(name, tls),
    )
    .await
    .expect("refused in time");
    assert!(handshake.is_err(), "a TLS handshake over the cap");
    // Another address is not affected.
    let mut other = support::Client::new(connect_from([127, 0, 0, 2], server.addr).await, "TCP");
    other.send(&options("TCP", 9)).await;
    assert_eq!(other.response().await.status, 200);
    // One goes, one more may come.
    drop(held.pop());
    let t0 = Instant::now();
    loop {
        let mut c = server.tcp().await;
        c.send(&options("TCP", 10)).await;
        if !c.closed_within(Duration::from_millis(200)).await {
            break;
        }
        assert!(t0.elapsed() < WAIT, "the slot was never given back");
    }
    let (refused, _) = server.handle.metrics().connections();
    assert!(refused >= 2, "refused {refused}");
    server.stop().await;
}

#[tokio::test]
async fn one_connection_over_the_total_cap_is_refused() {
    let limits = StreamLimits {
        max_connections: 3,
        ..StreamLimits::default()
    };
    let server = Server::start(false, limits).await;
    let mut held = Vec::new();
    for ip in 1..=3u8 {
        let mut c = support::Client::new(connect_from([127, 0, 0, ip], server.addr).await, "TCP");
        c.send(&options("TCP", u32::from(ip))).await;
        assert_eq!(c.response().await.status, 200);
        held.push(c);
    }
    let mut fourth = support::Client::new(connect_from([127, 0, 0, 4], server.addr).await, "TCP");
    assert!(fourth.closed_within(Duration::from_secs(2)).await);
    server.stop().await;
}

/// Silent connections (TCP; TLS without a handshake; TLS after it) are closed once the
/// first-message timeout has passed, not before; one that spoke in time stays.
#[tokio::test]
async fn silent_connections_are_closed_after_the_first_message_timeout() {
    let limits = StreamLimits {
        first_message: Duration::from_secs(1),
        ..StreamLimits::default()
    };
    let server = Server::start(true, limits).await;
    let t0 = Instant::now();
    let mut silent_tcp = Vec::new();
    for _ in 0..20 {
        silent_tcp.push(server.tcp().await);
    }
    let mut no_handshake = Vec::new();
    for _ in 0..5 {
        no_handshake.push(support::Client::new(
            TcpStream::connect(server.tls.unwrap()).await.unwrap(),
            "TLS",
        ));
    }
    let mut silent_tls = Vec::new();
    for _ in 0..5 {
        silent_tls.push(server.tls_client(None).await);
    }
    let mut talker = server.tcp().await;
    talker.send(&options("TCP", 1)).await;
    assert_eq!(talker.response().await.status, 200);

    for c in &mut silent_tcp {
        assert!(c.closed_within(Duration::from_secs(3)).await, "TCP held");
    }
    for c in &mut no_handshake {
        assert!(
            c.closed_within(Duration::from_secs(3)).await,
            "no handshake held"
        );
    }
    for c in &mut silent_tls {
        assert!(c.closed_within(Duration::from_secs(3)).await, "TLS held");
    }
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "closed too early: {took:?}"
    );
    // The one that spoke is served on.
    tokio::time::sleep(Duration::from_millis(500)).await;
    talker.send(&options("TCP", 2)).await;
    assert_eq!(talker.response().await.status, 200);
    let (_, dropped) = server.handle.metrics().connections();
    assert!(dropped >= 30, "dropped {dropped}");
    server.stop().await;
}

/// After its first message, a connection without a registration is closed after the short
/// idle timeout; one a registration was made over is kept.
#[tokio::test]
async fn idle_connections_without_a_registration_are_closed() {
    let limits = StreamLimits {
        idle_unbound: Duration::from_secs(1),
        idle_bound: Duration::from_secs(60),
        ..StreamLimits::default()
    };
    let server = Server::start(true, limits).await;
    let mut idle = server.tcp().await;
    idle.send(&options("TCP", 1)).await;
    assert_eq!(idle.response().await.status, 200);
    let mut registered = server.tls_client(None).await;
    registered.local = "127.0.0.1:5071".into();
    assert_eq!(
        registered
            .register("sip:alice@127.0.0.1:5071;transport=tls", 1)
            .await,
        200
    );
    let t0 = Instant::now();
    assert!(idle.closed_within(Duration::from_secs(3)).await);
    assert!(
        t0.elapsed() >= Duration::from_millis(700),
        "{:?}",
        t0.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    registered.send(&options("TLS", 5)).await;
    assert_eq!(
        registered.response().await.status,
        200,
        "the registered connection stays"
    );
    server.stop().await;
}

/// A peer that pipelines requests and never reads the answers fills its writer queue: the
/// connection is closed, and the server serves others on.
#[tokio::test]
async fn a_peer_that_does_not_read_is_closed() {
    let server = Server::start(false, StreamLimits::default()).await;
    // A small receive buffer, as a peer that means to stall us would have (on loopback the
    // kernel would otherwise grow it to tens of megabytes and take every answer).
    let s = TcpSocket::new_v4().unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    let flood = s.connect(server.addr).await.expect("connects");
    let (rd, mut wr) = flood.into_split();
    let mut bytes = Vec::new();
    for n in 0..15_000 {
        bytes.extend_from_slice(&register(
            "TCP",
            "127.0.0.1:5099",
            "sip:alice@127.0.0.1:5099;transport=tcp",
            n,
            None,
        ));
    }
    eprintln!("{} bytes of REGISTERs", bytes.len());
    let writer = tokio::spawn(async move {
        // Fails once the server closes (reset): that is the point.
        let _ = wr.write_all(&bytes).await;
        wr
    });
    let t0 = Instant::now();
    loop {
        let (_, dropped) = server.handle.metrics().connections();
        if dropped >= 1 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the non-reading peer was kept"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("closed after {:?}", t0.elapsed());
    let _ = tokio::time::timeout(WAIT, writer).await;
    // The peer sees the end: what was buffered, then EOF or a reset.
    let mut rd = rd;
    assert!(
        support::closed_within(&mut rd, WAIT).await,
        "the connection is closed"
    );
    let mut other = server.tcp().await;
    other.send(&options("TCP", 1)).await;
    assert_eq!(other.response().await.status, 200);
    server.stop().await;
}
