//! The driver's metrics end to end on 127.0.0.1: a forked INVITE over real UDP sockets is
//! observed once in the fork skew histogram (the branches' sends are timed where they leave),
//! and a scrape carries the proxy's fresh counters.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sip_core::message::Uri;
use sip_core::proxy::{
    Binding, CallOutcome, Event, Proxy, ProxyConfig, SubscriberEntry, Target, Transport,
};
use sip_net::{Control, SipSockets};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// Every wait in these tests is bounded by this.
const WAIT: Duration = Duration::from_secs(10);

fn binding(addr: SocketAddr, now: Instant) -> Binding {
    let uri = format!("sip:alice@{addr}");
    let target = Target {
        transport: Transport::Udp,
        addr,
        conn: None,
    };
    Binding {
        contact: uri.clone(),
        uri: Uri::parse(&uri).expect("contact"),
        target,
        source: target,
        call_id: format!("reg-{addr}"),
        cseq: 1,
        expires_at: now + Duration::from_secs(600),
        q: 1000,
        device: None,
        reach: sip_core::proxy::Reach::Direct,
    }
}

async fn recv_text(sock: &UdpSocket) -> String {
    let mut buf = vec![0u8; 65_536];
    let (n, _) = tokio::time::timeout(WAIT, sock.recv_from(&mut buf))
        .await
        .expect("a datagram in time")
        .expect("receives");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn a_forked_invite_is_one_fork_skew_observation_and_scrapes_are_fresh() {
    let sockets = SipSockets::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("binds");
    let server = sockets.local_addr().expect("local address");
    let devices = [
        UdpSocket::bind("127.0.0.1:0").await.expect("device 1"),
        UdpSocket::bind("127.0.0.1:0").await.expect("device 2"),
    ];
    let now = Instant::now();
    let mut proxy = Proxy::new(ProxyConfig::new("localhost", server, [7; 32]), now);
    proxy.upsert_subscriber(SubscriberEntry {
        user: "alice".into(),
        ha1_md5: String::new(),
        ha1_sha256: String::new(),
        ring_timeout: Duration::from_secs(30),
        ring_delays: Vec::new(),
    });
    for d in &devices {
        proxy.restore_binding("alice", binding(d.local_addr().expect("addr"), now), now);
    }
    let (events, _keep) = mpsc::channel(sip_net::EVENT_QUEUE);
    let (handle, task) = sip_net::spawn(proxy, sockets, events);

    let before = handle.stats().await.expect("the loop answers");
    assert_eq!(before.registrations, 2);
    assert_eq!(handle.metrics().fork_skew().count(), 0);

    let caller = UdpSocket::bind("127.0.0.1:0").await.expect("caller");
    let me = caller.local_addr().expect("addr");
    let invite = format!(
        "INVITE sip:alice@localhost SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKm1;rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:bob@example.net>;tag=b1\r\nTo: <sip:alice@localhost>\r\n\
         Call-ID: metrics-1\r\nCSeq: 1 INVITE\r\nContact: <sip:bob@{me}>\r\nContent-Length: 0\r\n\r\n"
    );
    caller
        .send_to(invite.as_bytes(), server)
        .await
        .expect("sends");
    for d in &devices {
        let text = recv_text(d).await;
        assert!(text.starts_with("INVITE sip:alice@"), "{text}");
    }
    // Garbage is a parse error.
    caller
        .send_to(b"\x00\x01 not sip at all", server)
        .await
        .expect("sends");

    let deadline = Instant::now() + WAIT;
    let stats = loop {
        let s = handle.stats().await.expect("the loop answers");
        if s.parse_errors == 1 || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(stats.parse_errors, 1);
    assert_eq!((stats.active_calls, stats.forks), (1, 1));
    assert_eq!(stats.calls_ended(CallOutcome::Answered), 0);

    let skew = handle.metrics().fork_skew();
    assert_eq!(skew.count(), 1, "one fork of two branches: {skew:?}");
    assert!(skew.sum < 100_000.0, "skew {} µs", skew.sum);

    let text = handle.render_metrics().await;
    assert!(text.contains("\ntrustring_registrations 2\n"), "{text}");
    assert!(
        text.contains("\ntrustring_sip_parse_errors_total 1\n"),
        "{text}"
    );
    assert!(
        text.contains("\ntrustring_fork_skew_microseconds_count 1\n"),
        "{text}"
    );
    assert!(text.contains("\ntrustring_active_calls 1\n"), "{text}");

    assert!(handle.send(Control::Shutdown));
    tokio::time::timeout(WAIT, task)
        .await
        .expect("stops in time")
        .expect("the loop did not panic");
    // Stopped: no fresh counters, the last ones are served.
    assert_eq!(handle.stats().await, None);
    let text = handle.render_metrics().await;
    assert!(text.contains("\ntrustring_registrations 2\n"), "{text}");
}

/// R30: the queue of store writes is bounded. A store that does not keep up makes the SIP
/// loop wait (counted), and nothing is lost: every event arrives once the store reads.
#[tokio::test]
async fn a_slow_store_slows_the_loop_and_loses_nothing() {
    let sockets = SipSockets::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let server = sockets.local_addr().expect("addr");
    let now = Instant::now();
    let mut proxy = Proxy::new(ProxyConfig::new("localhost", server, [7; 32]), now);
    proxy.upsert_subscriber(SubscriberEntry {
        user: "bob".into(),
        ha1_md5: String::new(),
        ha1_sha256: String::new(),
        ring_timeout: Duration::from_secs(30),
        ring_delays: Vec::new(),
    });
    // A store that holds two events and does not read yet.
    let (events, mut store) = mpsc::channel(2);
    let (handle, task) = sip_net::spawn(proxy, sockets, events);
    let caller = UdpSocket::bind("127.0.0.1:0").await.expect("caller");
    let me = caller.local_addr().expect("addr");
    // Each call to bob (nothing registered) is answered 480 and ends in a record.
    for i in 0..5 {
        let invite = format!(
            "INVITE sip:bob@localhost SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKs{i};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:m@example.net>;tag=s{i}\r\nTo: <sip:bob@localhost>\r\n\
             Call-ID: slow-{i}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        );
        caller
            .send_to(invite.as_bytes(), server)
            .await
            .expect("sends");
    }
    let mut answered = 0;
    while tokio::time::timeout(Duration::from_millis(500), recv_text(&caller))
        .await
        .is_ok()
    {
        answered += 1;
    }
    assert_eq!(
        answered, 3,
        "two records queued, the third waits for the store"
    );
    assert!(handle.metrics().store_waits() >= 1);
    // The store catches up: every record arrives, and the rest are answered.
    let mut records = 0;
    while records < 5 {
        let e = tokio::time::timeout(WAIT, store.recv())
            .await
            .expect("an event in time")
            .expect("the loop runs");
        if matches!(e, Event::CallEnded(_)) {
            records += 1;
        }
    }
    for _ in 0..2 {
        assert!(recv_text(&caller).await.starts_with("SIP/2.0 480"));
    }
    assert!(handle.send(Control::Shutdown));
    tokio::time::timeout(WAIT, task)
        .await
        .expect("stops in time")
        .expect("no panic");
}
