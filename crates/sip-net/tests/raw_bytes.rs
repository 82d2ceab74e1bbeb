//! Real clients over real UDP (issue #10): a header section that is not UTF-8 (ISO-8859-1
//! display names, Subjects, reason phrases) is answered and relayed byte for byte, and a
//! request with a CSeq that cannot be read gets a 400 that says so, not silence. A proxy
//! driven by `sip_net::spawn` on 127.0.0.1, a caller socket and a registered device socket.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sip_core::message::{Message, Uri, parse};
use sip_core::proxy::{Binding, Proxy, ProxyConfig, Reach, SubscriberEntry, Target, Transport};
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
        reach: Reach::Direct,
    }
}

/// The next datagram's bytes.
async fn recv(sock: &UdpSocket) -> Vec<u8> {
    let mut buf = vec![0u8; 65_536];
    let (n, _) = tokio::time::timeout(WAIT, sock.recv_from(&mut buf))
        .await
        .expect("a datagram in time (not silence)")
        .expect("receives");
    buf.truncate(n);
    buf
}

/// The next response that is not a 100 Trying: (status, reason, the wire bytes).
async fn final_or_ringing(sock: &UdpSocket) -> (u16, String, Vec<u8>) {
    loop {
        let wire = recv(sock).await;
        match parse(&wire) {
            Ok(Message::Response(r)) if r.status == 100 => continue,
            Ok(Message::Response(r)) => return (r.status, r.reason, wire),
            other => panic!(
                "not a response: {other:?}\n{}",
                String::from_utf8_lossy(&wire)
            ),
        }
    }
}

/// The header line starting with `name: ` in `wire`, CRLF excluded.
fn line<'a>(wire: &'a [u8], name: &str) -> &'a [u8] {
    wire.split(|&c| c == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .find(|l| l.starts_with(format!("{name}: ").as_bytes()))
        .unwrap_or_else(|| panic!("no {name} in {}", String::from_utf8_lossy(wire)))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn latin1_headers_are_answered_and_relayed_byte_for_byte() {
    let sockets = SipSockets::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("binds");
    let server = sockets.local_addr().expect("local address");
    let device = UdpSocket::bind("127.0.0.1:0").await.expect("device");
    let now = Instant::now();
    let mut proxy = Proxy::new(ProxyConfig::new("localhost", server, [7; 32]), now);
    proxy.upsert_subscriber(SubscriberEntry {
        user: "alice".into(),
        ha1_md5: "0".repeat(32),
        ha1_sha256: "0".repeat(64),
        ring_timeout: Duration::from_secs(30),
        ring_delays: Vec::new(),
    });
    proxy.restore_binding(
        "alice",
        binding(device.local_addr().expect("addr"), now),
        now,
    );
    let (events, _keep) = mpsc::channel(sip_net::EVENT_QUEUE);
    let (handle, task) = sip_net::spawn(proxy, sockets, events);

    let caller = UdpSocket::bind("127.0.0.1:0").await.expect("caller");
    let me = caller.local_addr().expect("addr");
    let from: &[u8] = b"From: \"J\xf6rg M\xfcller\" <sip:joerg@example.net>;tag=j1";
    let request = |start: &str, cseq: &str, extra: &[u8]| {
        let mut m = format!(
            "{start} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-raw-{}\r\n\
             Max-Forwards: 70\r\n",
            cseq.replace([' ', '-'], "")
        )
        .into_bytes();
        m.extend_from_slice(from);
        m.extend_from_slice(
            format!(
                "\r\nTo: <sip:alice@localhost>\r\nCall-ID: raw-{}@test\r\nCSeq: {cseq}\r\n\
                 Contact: <sip:joerg@{me}>\r\n",
                cseq.replace([' ', '-'], "")
            )
            .as_bytes(),
        );
        m.extend_from_slice(extra);
        m.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        m
    };

    // OPTIONS to the server itself: 200, echoing the From bytes as received.
    let options = request("OPTIONS sip:localhost", "1 OPTIONS", b"");
    caller.send_to(&options, server).await.expect("sends");
    let (status, _, wire) = final_or_ringing(&caller).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&wire));
    assert_eq!(line(&wire, "From"), from);

    // REGISTER: challenged like any other.
    let register = request(
        "REGISTER sip:localhost",
        "2 REGISTER",
        b"User-Agent: T\xe9l\xe9phone 1.0\r\n",
    );
    caller.send_to(&register, server).await.expect("sends");
    let (status, _, wire) = final_or_ringing(&caller).await;
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&wire));
    assert_eq!(line(&wire, "From"), from);

    // INVITE to alice: the device gets the From, Subject and User-Agent bytes unchanged.
    let invite = request(
        "INVITE sip:alice@localhost",
        "3 INVITE",
        b"Subject: R\xe9union \xe0 midi\r\nUser-Agent: T\xe9l\xe9phone 1.0\r\n",
    );
    caller.send_to(&invite, server).await.expect("sends");
    let branch = recv(&device).await;
    let Ok(Message::Request(fwd)) = parse(&branch) else {
        panic!("not a request: {}", String::from_utf8_lossy(&branch))
    };
    assert!(branch.starts_with(b"INVITE sip:alice@"));
    assert_eq!(line(&branch, "From"), from);
    assert_eq!(line(&branch, "Subject"), b"Subject: R\xe9union \xe0 midi");
    assert_eq!(
        line(&branch, "User-Agent"),
        b"User-Agent: T\xe9l\xe9phone 1.0"
    );

    // The device rings with a Latin-1 reason phrase: the caller gets those bytes.
    let ringing =
        sip_core::message::Response::to_request(&fwd, 180, "\u{10ffc7}a sonne", Some("d1"));
    assert_eq!(ringing.reason, "\u{10ffc7}a sonne");
    let ringing = ringing.to_bytes();
    assert!(ringing.starts_with(b"SIP/2.0 180 \xc7a sonne\r\n"));
    device.send_to(&ringing, server).await.expect("sends");
    let (status, reason, wire) = final_or_ringing(&caller).await;
    assert_eq!((status, reason.as_str()), (180, "\u{10ffc7}a sonne"));
    assert!(contains(&wire, b"SIP/2.0 180 \xc7a sonne\r\n"));
    assert_eq!(line(&wire, "From"), from);

    assert!(handle.send(Control::Shutdown));
    tokio::time::timeout(WAIT, task)
        .await
        .expect("stops in time")
        .expect("the loop did not panic");
}

#[tokio::test]
async fn unreadable_cseq_gets_a_400_naming_it() {
    let sockets = SipSockets::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("binds");
    let server = sockets.local_addr().expect("local address");
    let proxy = Proxy::new(
        ProxyConfig::new("localhost", server, [7; 32]),
        Instant::now(),
    );
    let (events, _keep) = mpsc::channel(sip_net::EVENT_QUEUE);
    let (handle, task) = sip_net::spawn(proxy, sockets, events);
    let caller = UdpSocket::bind("127.0.0.1:0").await.expect("caller");
    let me = caller.local_addr().expect("addr");
    for (i, cseq) in ["-1 OPTIONS", "abc OPTIONS"].into_iter().enumerate() {
        let m = format!(
            "OPTIONS sip:localhost SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-cseq-{i}\r\n\
             Max-Forwards: 70\r\nFrom: \"J\u{f6}rg\" <sip:joerg@example.net>;tag=c{i}\r\n\
             To: <sip:localhost>\r\nCall-ID: cseq-{i}@test\r\nCSeq: {cseq}\r\n\
             Content-Length: 0\r\n\r\n"
        );
        caller.send_to(m.as_bytes(), server).await.expect("sends");
        let wire = recv(&caller).await;
        assert!(
            wire.starts_with(b"SIP/2.0 400 Bad CSeq number\r\n"),
            "{}",
            String::from_utf8_lossy(&wire)
        );
        // Echoed as received (the client's transaction matching is its business).
        assert_eq!(line(&wire, "CSeq"), format!("CSeq: {cseq}").as_bytes());
        assert!(contains(&wire, b";branch=z9hG4bK-cseq-"));
    }
    assert!(handle.send(Control::Shutdown));
    tokio::time::timeout(WAIT, task)
        .await
        .expect("stops in time")
        .expect("the loop did not panic");
}
