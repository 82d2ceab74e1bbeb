//! SIP over TLS end to end: a real proxy driven by `sip_net::spawn_with` with a TLS listener
//! (the server identity and TLS 1.2/1.3 configuration of `trustring-tls`), and rustls
//! clients that pin its key. The stream code is TCP's: framing, pongs, the 513 before a
//! close. A registration over TLS is rung over its connection and dies with it.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sip_core::message::{HeaderName, MAX_MESSAGE_SIZE, Message};
use sip_core::proxy::{Event, Transport};
use sip_net::StreamLimits;
use support::{Server, WAIT, next_event, options};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpStream, UdpSocket};

const CONTACT: &str = "sip:alice@127.0.0.1:5071;transport=tls";

#[tokio::test]
async fn options_are_answered_and_pings_ponged_over_tls() {
    let server = Server::start(true, StreamLimits::default()).await;
    let mut c = server.tls_client(None).await;
    let (_, conn) = c.stream.get_ref();
    assert_eq!(
        conn.protocol_version(),
        Some(tls::rustls::ProtocolVersion::TLSv1_3)
    );
    c.send(&options("TLS", 1)).await;
    let ok = c.response().await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.headers.get(&HeaderName::CSeq), Some("1 OPTIONS"));
    // RFC 5626 keep-alive: a double CRLF gets one CRLF back, through TLS.
    c.send(b"\r\n\r\n").await;
    let mut pong = [0u8; 2];
    tokio::time::timeout(WAIT, c.stream.read_exact(&mut pong))
        .await
        .expect("a pong in time")
        .expect("reads");
    assert_eq!(&pong, b"\r\n");
    c.send(&options("TLS", 2)).await;
    assert_eq!(c.response().await.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn a_tls_1_2_client_is_served_too() {
    let server = Server::start(true, StreamLimits::default()).await;
    let mut c = server
        .tls_client(Some(&[&tls::rustls::version::TLS12]))
        .await;
    assert_eq!(
        c.stream.get_ref().1.protocol_version(),
        Some(tls::rustls::ProtocolVersion::TLSv1_2)
    );
    c.send(&options("TLS", 1)).await;
    assert_eq!(c.response().await.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn oversize_over_tls_is_answered_513_then_closed() {
    let server = Server::start(true, StreamLimits::default()).await;
    let mut c = server.tls_client(None).await;
    let big = String::from_utf8(options("TLS", 9)).unwrap().replace(
        "Content-Length: 0",
        &format!("Content-Length: {}", MAX_MESSAGE_SIZE + 1),
    );
    c.send(big.as_bytes()).await;
    let resp = c.response().await;
    assert_eq!(
        (resp.status, resp.reason.as_str()),
        (513, "Message Too Large")
    );
    assert!(c.closed_within(WAIT).await, "closed after the answer");
    // Others are still served.
    let mut other = server.tls_client(None).await;
    other.send(&options("TLS", 1)).await;
    assert_eq!(other.response().await.status, 200);
    server.stop().await;
}

/// alice registers over TLS; a UDP caller's INVITE reaches her over that connection, with
/// our TLS address in Via and double record-routing; when she hangs up the connection, her
/// binding goes.
#[tokio::test]
async fn a_tls_registration_is_rung_over_its_connection_and_dropped_with_it() {
    let mut server = Server::start(true, StreamLimits::default()).await;
    let tls_at = server.tls.unwrap();
    let mut alice = server.tls_client(None).await;
    alice.local = "127.0.0.1:5071".into();
    assert_eq!(alice.register(CONTACT, 1).await, 200);
    match next_event(&mut server.events).await {
        Event::BindingSaved { user, binding, .. } => {
            assert_eq!(user, "alice");
            assert_eq!(binding.contact, CONTACT);
            assert_eq!(binding.source.transport, Transport::Tls);
            assert_eq!(binding.source.transport.as_str(), "TLS");
        }
        other => panic!("{other:?}"),
    }

    let caller = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let from = caller.local_addr().unwrap();
    let invite = format!(
        "INVITE sip:alice@localhost SIP/2.0\r\n\
         Via: SIP/2.0/UDP {from};branch=z9hG4bK-call-1;rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:bob@example.net>;tag=b1\r\n\
         To: <sip:alice@localhost>\r\n\
         Call-ID: call-1@test\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:bob@{from}>\r\n\
         Content-Length: 0\r\n\r\n"
    );
    caller
        .send_to(invite.as_bytes(), server.addr)
        .await
        .unwrap();
    let Message::Request(inv) = alice.message().await else {
        panic!("not the INVITE");
    };
    assert_eq!(inv.method.as_str(), "INVITE");
    assert_eq!(inv.uri.to_string(), CONTACT);
    let via: Vec<&str> = inv.headers.get_all(&HeaderName::Via).collect();
    assert!(
        via[0].starts_with(&format!("SIP/2.0/TLS {tls_at};branch=")),
        "{via:?}"
    );
    let rr: Vec<&str> = inv.headers.get_all(&HeaderName::RecordRoute).collect();
    assert_eq!(rr.len(), 2, "{rr:?}");
    assert!(
        rr[0].starts_with(&format!("<sip:{tls_at};transport=tls;lr;")),
        "{rr:?}"
    );
    assert!(
        rr[1].starts_with(&format!("<sip:{};lr;", server.addr)),
        "{rr:?}"
    );

    drop(alice);
    match next_event(&mut server.events).await {
        Event::BindingRemoved { user, contact } => {
            assert_eq!((user.as_str(), contact.as_str()), ("alice", CONTACT));
        }
        other => panic!("{other:?}"),
    }
    server.stop().await;
}

/// What a TLS handshake adds to a REGISTER on a fresh connection, against TCP (printed; the
/// numbers in the notes come from `cargo test --release`).
#[tokio::test]
async fn tls_handshake_cost_per_register() {
    const N: u32 = 50;
    let server = Server::start(true, StreamLimits::default()).await;
    let mut handshakes = Duration::ZERO;
    let t0 = Instant::now();
    for i in 0..N {
        let (stream, hs) = server.tls_handshake(None).await;
        handshakes += hs;
        let mut c = support::Client::new(stream, "TLS");
        c.local = format!("127.0.0.1:{}", 20_000 + i);
        assert_eq!(c.register(CONTACT, 1).await, 200);
    }
    let tls_total = t0.elapsed();
    let t0 = Instant::now();
    for i in 0..N {
        let mut c = server.tcp().await;
        c.local = format!("127.0.0.1:{}", 30_000 + i);
        let contact = "sip:alice@127.0.0.1:5072;transport=tcp";
        assert_eq!(c.register(contact, 1).await, 200);
    }
    let tcp_total = t0.elapsed();
    eprintln!(
        "per REGISTER on a fresh connection ({N} each): TLS {:?} (handshake {:?}), TCP {:?}; \
         the handshake adds {:?}",
        tls_total / N,
        handshakes / N,
        tcp_total / N,
        (tls_total.saturating_sub(tcp_total)) / N,
    );
    server.stop().await;
}

/// Without TLS configured there is no TLS listener, and nothing but TCP and UDP.
#[tokio::test]
async fn no_tls_listener_unless_asked() {
    let server = Server::start(false, StreamLimits::default()).await;
    assert_eq!(server.tls, None);
    let _: SocketAddr = server.addr;
    let _ = TcpStream::connect(server.addr).await.expect("TCP is there");
    server.stop().await;
}
