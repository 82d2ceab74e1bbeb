//! The proxy dialling a pinned peer over TLS (the trunk to the gateway, `NetOptions::
//! tls_peers`): a real proxy driven by `sip_net::spawn_with`, and a TLS listener in the test
//! playing the gateway, with the key the proxy pins or another. alice registers over UDP
//! with a `transport=tls` Contact at the peer's address, so a UDP caller's INVITE for her is
//! sent over TLS to that address: what the trunk does with the phone's branch.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use sip_core::message::{HeaderName, Message, parse};
use sip_net::NetOptions;
use support::{Client, Server, WAIT};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// A TLS listener on 127.0.0.1 with an identity of its own (the gateway, or an impostor).
struct Peer {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    fingerprint: tls::Fingerprint,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Peer {
    async fn bind(addr: SocketAddr) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["127.0.0.1".to_owned()];
        let id = tls::ServerIdentity::load_or_create(dir.path(), None, None, &names).unwrap();
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        Self {
            listener,
            acceptor: TlsAcceptor::from(tls::server_config(&id).unwrap()),
            fingerprint: id.fingerprint,
            addr,
            _dir: dir,
        }
    }

    /// The next TCP connection, within `limit` (`None`: nobody connected).
    async fn tcp(&self, limit: Duration) -> Option<TcpStream> {
        tokio::time::timeout(limit, self.listener.accept())
            .await
            .ok()
            .map(|r| r.unwrap().0)
    }

    /// The next connection and its handshake's outcome.
    async fn accept(&self) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = self.tcp(WAIT).await.expect("the proxy dials");
        tokio::time::timeout(WAIT, self.acceptor.accept(tcp))
            .await
            .expect("handshake in time")
    }
}

/// A proxy that dials `pinned` at `peer` over TLS.
async fn proxy(peer: SocketAddr, pinned: tls::Fingerprint) -> Server {
    let config = tls::pinned_client_config(pinned).unwrap();
    let options = NetOptions {
        tls_peers: HashMap::from([(peer, config)]),
        ..NetOptions::default()
    };
    Server::start_with(false, options).await
}

/// alice registered over UDP, reached at `contact` (a TLS one, at the peer).
async fn register_alice(server: &Server, contact: &str) -> UdpSocket {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = sock.local_addr().unwrap().to_string();
    let mut n = 1;
    let mut auth = None;
    loop {
        let msg = support::register("UDP", &local, contact, n, auth.as_deref());
        sock.send_to(&msg, server.addr).await.unwrap();
        let resp = udp_response(&sock).await;
        match resp.status {
            401 if auth.is_none() => auth = Some(support::credentials(&resp)),
            200 => return sock,
            s => panic!("REGISTER got {s}"),
        }
        n += 1;
    }
}

async fn udp_message(sock: &UdpSocket) -> Message {
    let mut buf = vec![0u8; 65_536];
    let (n, _) = tokio::time::timeout(WAIT, sock.recv_from(&mut buf))
        .await
        .expect("a datagram in time")
        .unwrap();
    parse(&buf[..n]).unwrap()
}

/// The next final response on `sock` (provisional ones skipped).
async fn udp_response(sock: &UdpSocket) -> sip_core::message::Response {
    loop {
        match udp_message(sock).await {
            Message::Response(r) if r.status >= 200 => return r,
            Message::Response(_) => {}
            Message::Request(r) => panic!("a request: {}", r.method),
        }
    }
}

fn invite(from: SocketAddr, call: u32) -> Vec<u8> {
    format!(
        "INVITE sip:alice@localhost SIP/2.0\r\n\
         Via: SIP/2.0/UDP {from};branch=z9hG4bK-dial-{call};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:bob@example.net>;tag=b{call}\r\n\
         To: <sip:alice@localhost>\r\n\
         Call-ID: dial-{call}@test\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:bob@{from}>\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// Answers `req` with `status` over the peer's connection.
async fn answer(
    c: &mut Client<TlsStream<TcpStream>>,
    req: &sip_core::message::Request,
    status: u16,
) {
    let mut resp = format!("SIP/2.0 {status} Busy Here\r\n");
    for name in [
        HeaderName::Via,
        HeaderName::From,
        HeaderName::CallId,
        HeaderName::CSeq,
    ] {
        for v in req.headers.get_all(&name) {
            resp.push_str(&format!("{}: {v}\r\n", name.as_str()));
        }
    }
    let to = req.headers.get(&HeaderName::To).unwrap();
    resp.push_str(&format!("To: {to};tag=gw\r\nContent-Length: 0\r\n\r\n"));
    c.send(resp.as_bytes()).await;
}

/// The first send dials the pinned peer; its answer comes back over the dialled connection
/// to the caller; the next call reuses the connection (no second connect).
#[tokio::test]
async fn dials_the_pinned_peer_once_and_its_answers_come_back() {
    let peer = Peer::bind("127.0.0.1:0".parse().unwrap()).await;
    let server = proxy(peer.addr, peer.fingerprint).await;
    let contact = format!("sip:alice@{};transport=tls", peer.addr);
    let _alice = register_alice(&server, &contact).await;
    let caller = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let from = caller.local_addr().unwrap();

    caller.send_to(&invite(from, 1), server.addr).await.unwrap();
    let stream = peer
        .accept()
        .await
        .expect("the pinned key completes the handshake");
    let mut gw = Client::new(stream, "TLS");
    let Message::Request(inv) = gw.message().await else {
        panic!("not a request");
    };
    assert_eq!(inv.method.as_str(), "INVITE");
    assert_eq!(inv.uri.to_string(), contact);
    let via = inv.headers.get(&HeaderName::Via).unwrap();
    assert!(via.starts_with("SIP/2.0/TLS "), "{via}");
    let rr: Vec<&str> = inv.headers.get_all(&HeaderName::RecordRoute).collect();
    assert!(
        rr.iter().any(|r| r.contains(";transport=tls;")),
        "the trunk side of the route says TLS: {rr:?}"
    );
    answer(&mut gw, &inv, 486).await;
    assert_eq!(udp_response(&caller).await.status, 486);

    // The proxy's ACK for the 486 (hop by hop) comes over the connection too.
    let Message::Request(ack) = gw.message().await else {
        panic!("not a request");
    };
    assert_eq!(ack.method.as_str(), "ACK");

    // A second call: the same connection, no new dial.
    caller.send_to(&invite(from, 2), server.addr).await.unwrap();
    let Message::Request(inv2) = gw.message().await else {
        panic!("not a request");
    };
    assert_eq!(inv2.headers.get(&HeaderName::CallId), Some("dial-2@test"));
    assert!(
        peer.tcp(Duration::from_millis(300)).await.is_none(),
        "the live connection is reused"
    );
    answer(&mut gw, &inv2, 486).await;
    assert_eq!(udp_response(&caller).await.status, 486);
    server.stop().await;
}

/// A peer with another key than the pinned one gets no byte of the INVITE (the handshake
/// fails on the proxy's side); the branch fails at once with 503 (RFC 3261 §16.9, not after
/// Timer B's 32 s); the server keeps serving, and the next send dials again.
#[tokio::test]
async fn a_peer_with_another_key_gets_nothing_and_the_server_keeps_running() {
    let impostor = Peer::bind("127.0.0.1:0".parse().unwrap()).await;
    let other = Peer::bind("127.0.0.1:0".parse().unwrap()).await;
    // Pinned: `other`'s key; dialled: the impostor's address.
    let server = proxy(impostor.addr, other.fingerprint).await;
    let contact = format!("sip:alice@{};transport=tls", impostor.addr);
    let _alice = register_alice(&server, &contact).await;
    let caller = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let from = caller.local_addr().unwrap();
    for call in 1..=2 {
        caller
            .send_to(&invite(from, call), server.addr)
            .await
            .unwrap();
        // The proxy dials (a new connection each time) and aborts the handshake: the
        // impostor's side fails too, and reads nothing but the handshake.
        match impostor.accept().await {
            Ok(mut s) => {
                let mut buf = [0u8; 1];
                let r = tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read(&mut s, &mut buf))
                    .await
                    .expect("closed in time");
                assert!(
                    matches!(r, Ok(0) | Err(_)),
                    "the impostor read application data"
                );
            }
            Err(e) => eprintln!("handshake failed as expected: {e}"),
        }
        let t0 = std::time::Instant::now();
        assert_eq!(udp_response(&caller).await.status, 503);
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    }
    // Still serving.
    let probe = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    probe
        .send_to(&support::options("UDP", 1), server.addr)
        .await
        .unwrap();
    assert_eq!(udp_response(&probe).await.status, 200);
    server.stop().await;
}

/// Nobody listens at the pinned address: the connect fails, the server keeps running, and
/// once the peer is up the next send connects.
#[tokio::test]
async fn a_failed_connect_is_retried_by_the_next_send() {
    // Reserve an address, then free it: nothing listens there.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let names = vec!["127.0.0.1".to_owned()];
    let id = tls::ServerIdentity::load_or_create(dir.path(), None, None, &names).unwrap();
    let server = proxy(addr, id.fingerprint).await;
    let contact = format!("sip:alice@{addr};transport=tls");
    let _alice = register_alice(&server, &contact).await;
    let caller = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let from = caller.local_addr().unwrap();
    caller.send_to(&invite(from, 1), server.addr).await.unwrap();
    // The 100 Trying, then 503 as soon as the connect fails.
    match udp_message(&caller).await {
        Message::Response(r) => assert_eq!(r.status, 100),
        Message::Request(r) => panic!("a request: {}", r.method),
    }
    assert_eq!(udp_response(&caller).await.status, 503);

    // The peer comes up with the pinned key, at that address.
    let listener = TcpListener::bind(addr).await.unwrap();
    let acceptor = TlsAcceptor::from(tls::server_config(&id).unwrap());
    caller.send_to(&invite(from, 2), server.addr).await.unwrap();
    let (tcp, _) = tokio::time::timeout(WAIT, listener.accept())
        .await
        .expect("the next send dials")
        .unwrap();
    let stream = tokio::time::timeout(WAIT, acceptor.accept(tcp))
        .await
        .unwrap()
        .unwrap();
    let mut gw = Client::new(stream, "TLS");
    let Message::Request(inv) = gw.message().await else {
        panic!("not a request");
    };
    assert_eq!(inv.headers.get(&HeaderName::CallId), Some("dial-2@test"));
    server.stop().await;
}

/// A TLS target the proxy holds no pin for is never dialled.
#[tokio::test]
async fn an_unpinned_tls_target_is_not_dialled() {
    let pinned = Peer::bind("127.0.0.1:0".parse().unwrap()).await;
    let stranger = Peer::bind("127.0.0.1:0".parse().unwrap()).await;
    let server = proxy(pinned.addr, pinned.fingerprint).await;
    let contact = format!("sip:alice@{};transport=tls", stranger.addr);
    let _alice = register_alice(&server, &contact).await;
    let caller = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let from = caller.local_addr().unwrap();
    caller.send_to(&invite(from, 1), server.addr).await.unwrap();
    assert!(
        stranger.tcp(Duration::from_millis(500)).await.is_none(),
        "dialled a peer it holds no pin for"
    );
    assert!(pinned.tcp(Duration::from_millis(10)).await.is_none());
    server.stop().await;
}
