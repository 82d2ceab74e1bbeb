//! The real `trustring serve` under hostile stream peers (issue 12, items 2 and 8) and the
//! TLS versions its SIP over TLS listener speaks (issue 11, item 1), with the defaults:
//!
//! - 15,000 REGISTERs (about 4.2 MB) pipelined over TCP by a peer that never reads the
//!   answers: the server's resident memory grows by less than 10 MB and it closes that
//!   connection (its writer queue is full), then serves others on;
//! - 100 silent TCP connections are closed once the first-message timeout (10 s) passes;
//! - the 65th connection from one address is refused (64 per address), others are not;
//! - `openssl s_client` offering only TLS 1.0 or 1.1 gets a handshake failure; 1.2 and 1.3
//!   are accepted.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Server;
use common::mem::rss_kib;

fn register(n: u32) -> String {
    format!(
        "REGISTER sip:localhost SIP/2.0\r\n\
         Via: SIP/2.0/TCP 127.0.0.1:5099;branch=z9hG4bK-flood-{n}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice@localhost>;tag=f{n}\r\n\
         To: <sip:alice@localhost>\r\n\
         Call-ID: flood-{n}@127.0.0.1\r\n\
         CSeq: 1 REGISTER\r\n\
         Contact: <sip:alice@127.0.0.1:5099;transport=tcp>\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

fn options(n: u32) -> String {
    format!(
        "OPTIONS sip:localhost SIP/2.0\r\n\
         Via: SIP/2.0/TCP 127.0.0.1:5099;branch=z9hG4bK-opt-{n}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:probe@example.net>;tag=o{n}\r\n\
         To: <sip:localhost>\r\n\
         Call-ID: opt-{n}@127.0.0.1\r\n\
         CSeq: {n} OPTIONS\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// A TCP connection to `to` from the loopback address `from`.
fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from((from, 0)).into()).unwrap();
    s.connect(&to.into()).unwrap();
    s.into()
}

/// Sends an OPTIONS and reads up to its answer's status line; panics unless it is 200.
fn options_ok(c: &mut TcpStream, n: u32) {
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(options(n).as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let k = c.read(&mut buf).expect("an answer");
        assert!(k > 0, "closed instead of answered");
        got.extend_from_slice(&buf[..k]);
    }
    assert!(
        got.starts_with(b"SIP/2.0 200 "),
        "{}",
        String::from_utf8_lossy(&got)
    );
}

/// Whether the server closes `c` (EOF or reset) within `limit`, reading what comes first.
fn closed_within(c: &mut TcpStream, limit: Duration) -> bool {
    let t0 = Instant::now();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = limit.saturating_sub(t0.elapsed());
        if left.is_zero() {
            return false;
        }
        c.set_read_timeout(Some(left)).unwrap();
        match c.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn pipelined_registers_from_a_peer_that_does_not_read_keep_memory_bounded() {
    let s = Server::start();
    // Warm up the paths the flood takes (a reading peer), then measure.
    let mut warm = TcpStream::connect(s.sip).unwrap();
    for n in 0..200 {
        options_ok(&mut warm, n);
    }
    drop(warm);
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib(s.pid().expect("running"));

    let flood: String = (0..15_000).map(register).collect();
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    // A small receive buffer, as a peer that means to stall us would have (on loopback the
    // kernel would otherwise grow it to tens of megabytes and take every answer).
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&s.sip.into()).unwrap();
    let mut c: TcpStream = sock.into();
    let mut w = c.try_clone().unwrap();
    let bytes = flood.len();
    let t0 = Instant::now();
    let writer = std::thread::spawn(move || {
        // Fails once the server closes the connection: that is the point.
        let _ = w.write_all(flood.as_bytes());
    });
    std::thread::sleep(Duration::from_secs(1));
    let during = rss_kib(s.pid().expect("running"));
    assert!(
        closed_within(&mut c, Duration::from_secs(30)),
        "the connection of the peer that does not read was kept"
    );
    let closed = t0.elapsed();
    writer.join().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let after = rss_kib(s.pid().expect("running"));
    eprintln!(
        "{bytes} bytes of 15000 REGISTERs pipelined without reading: RSS {before} KiB before, \
         {during} KiB during, {after} KiB after; the connection was closed after {closed:?}"
    );
    assert!(bytes > 4_000_000, "{bytes}");
    for (when, rss) in [("during", during), ("after", after)] {
        assert!(
            rss.saturating_sub(before) < 10 * 1024,
            "RSS grew by {} KiB ({when})",
            rss - before
        );
    }
    assert!(
        s.log_text()
            .contains("closing a connection whose peer does not read"),
        "{}",
        s.log_text()
    );
    // Others are served on.
    let mut other = TcpStream::connect(s.sip).unwrap();
    options_ok(&mut other, 1);
}

#[test]
fn a_hundred_silent_connections_are_closed_after_the_first_message_timeout() {
    let s = Server::start();
    let t0 = Instant::now();
    // From four addresses, 25 each: under the per-address cap.
    let mut conns: Vec<TcpStream> = (0..100u8)
        .map(|i| connect_from([127, 0, 0, 2 + i % 4], s.sip))
        .collect();
    let mut first = None;
    for c in &mut conns {
        assert!(
            closed_within(c, Duration::from_secs(20)),
            "a silent connection was held"
        );
        first.get_or_insert(t0.elapsed());
    }
    let (first, all) = (first.unwrap(), t0.elapsed());
    eprintln!("100 silent connections: the first closed after {first:?}, all after {all:?}");
    assert!(
        first >= Duration::from_secs(9),
        "closed before the timeout: {first:?}"
    );
    assert!(all <= Duration::from_secs(15), "closed late: {all:?}");
}

#[test]
fn the_65th_connection_from_one_address_is_refused() {
    let s = Server::start();
    let mut held: Vec<TcpStream> = (0..64)
        .map(|n| {
            let mut c = TcpStream::connect(s.sip).unwrap();
            options_ok(&mut c, n);
            c
        })
        .collect();
    let mut over = TcpStream::connect(s.sip).unwrap();
    let _ = over.write_all(options(100).as_bytes());
    assert!(
        closed_within(&mut over, Duration::from_secs(3)),
        "connection 65 was accepted"
    );
    // Another address is not affected; the first 64 are still served.
    let mut other = connect_from([127, 0, 0, 9], s.sip);
    options_ok(&mut other, 101);
    options_ok(&mut held[10], 102);
    // One goes, one may come.
    drop(held.pop());
    let t0 = Instant::now();
    loop {
        let mut c = TcpStream::connect(s.sip).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let _ = c.write_all(options(103).as_bytes());
        let mut buf = [0u8; 12];
        if c.read_exact(&mut buf).is_ok() && buf.starts_with(b"SIP/2.0 200") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the slot never came back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `openssl s_client` against the SIP over TLS port, offering `version` (`-tls1`, ...);
/// (success, output).
fn s_client(at: SocketAddr, version: &str) -> (bool, String) {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &at.to_string(), version])
        // Let the client offer the old versions at all (OpenSSL 3 refuses them below
        // security level 0), so that the refusal is the server's.
        .args(["-cipher", "DEFAULT@SECLEVEL=0", "-servername", "localhost"])
        .stdin(Stdio::null())
        .output()
        .expect("openssl must be installed (Debian package openssl; .ci/run installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn sip_over_tls_refuses_tls_1_0_and_1_1_and_speaks_1_2_and_1_3() {
    let s = Server::start();
    for old in ["-tls1", "-tls1_1"] {
        let (ok, text) = s_client(s.sip_tls, old);
        assert!(!ok, "{old} was accepted:\n{text}");
        assert!(
            text.contains("alert handshake failure") || text.contains("alert protocol version"),
            "{old}: not refused by the server:\n{text}"
        );
    }
    for (new, name) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let (ok, text) = s_client(s.sip_tls, new);
        assert!(ok, "{new} was refused:\n{text}");
        assert!(
            text.contains(&format!("Protocol  : {name}")) || text.contains(&format!("New, {name}")),
            "{new}:\n{text}"
        );
    }
}

/// One REGISTER round trip on a TLS stream: sends `msg`, returns the response.
fn tls_exchange<S: Read + Write>(stream: &mut S, msg: &str) -> sip_core::message::Response {
    use sip_core::message::{Frame, Message, frame_stream, parse};
    stream.write_all(msg.as_bytes()).unwrap();
    stream.flush().unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Ok(Frame::Message(n)) = frame_stream(&buf) {
            match parse(&buf[..n]).unwrap() {
                Message::Response(r) => return r,
                Message::Request(r) => panic!("a request: {}", r.method),
            }
        }
        let k = stream.read(&mut chunk).unwrap();
        assert!(k > 0, "closed");
        buf.extend_from_slice(&chunk[..k]);
    }
}

/// A registration over TLS is listed with transport TLS while its connection lives; after
/// a restart it is gone (its connection died with the old process, and the proxy opens no
/// TLS connections), while a UDP registration is restored.
#[test]
fn a_tls_registration_does_not_outlive_a_restart() {
    use sip_core::auth::{Algorithm, ResponseInput, ha1, response};
    use sip_core::message::HeaderName;

    let _g = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = common::free_port();
    let mut s = Server::start_in(&data, port);
    s.add_subscriber("alice", "s3cret-passw0rd");
    common::register(&s, "alice", "s3cret-passw0rd", 5981, false);

    let pin = tls::ServerIdentity::load_or_create(&data.join("tls"), None, None, &[])
        .unwrap()
        .fingerprint;
    let tcp = TcpStream::connect(s.sip_tls).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let name = tls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn =
        tls::rustls::ClientConnection::new(tls::pinned_client_config(pin).unwrap(), name).unwrap();
    let mut stream = tls::rustls::StreamOwned::new(conn, tcp);
    let request = |cseq: u32, auth: &str| {
        format!(
            "REGISTER sip:localhost SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5982;branch=z9hG4bKtls{cseq};rport\r\n\
Max-Forwards: 70\r\nFrom: <sip:alice@localhost>;tag=tls\r\nTo: <sip:alice@localhost>\r\n\
Call-ID: tls-reg\r\nCSeq: {cseq} REGISTER\r\n\
Contact: <sip:alice@127.0.0.1:5982;transport=tls>\r\n{auth}Expires: 600\r\nContent-Length: 0\r\n\r\n"
        )
    };
    let challenge = tls_exchange(&mut stream, &request(1, ""));
    assert_eq!(challenge.status, 401);
    let c = challenge
        .headers
        .get(&HeaderName::WwwAuthenticate)
        .unwrap()
        .to_owned();
    let param = |name: &str| {
        let i = c.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
        c[i..].split('"').next().unwrap().to_owned()
    };
    let (nonce, opaque) = (param("nonce"), param("opaque"));
    let ha1 = ha1(Algorithm::Md5, "alice", "localhost", "s3cret-passw0rd");
    let digest = response(
        Algorithm::Md5,
        &ha1,
        &ResponseInput {
            nonce: &nonce,
            nc: "00000001",
            cnonce: "c0ffee",
            qop: "auth",
            method: "REGISTER",
            uri: "sip:localhost",
        },
    );
    let auth = format!(
        "Authorization: Digest username=\"alice\", realm=\"localhost\", nonce=\"{nonce}\", \
uri=\"sip:localhost\", response=\"{digest}\", algorithm=MD5, cnonce=\"c0ffee\", qop=auth, \
nc=00000001, opaque=\"{opaque}\"\r\n"
    );
    let ok = tls_exchange(&mut stream, &request(2, &auth));
    assert_eq!(ok.status, 200, "{ok:?}");
    // Written by the store writer a moment after the 200.
    let t0 = Instant::now();
    let regs = loop {
        let regs = s.registrations("alice");
        if regs.contains("\"TLS\"") || t0.elapsed() > Duration::from_secs(5) {
            break regs;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        regs.contains("\"TLS\"") && regs.contains("127.0.0.1:5982;transport=tls"),
        "{regs}"
    );
    assert!(regs.contains("127.0.0.1:5981"), "{regs}");

    s.stop();
    drop(stream);
    // The row may or may not have been deleted as the old process went; put it back as
    // stored by a process killed hard, so the restart has it to drop.
    let db = rusqlite::Connection::open(data.join("trustring.db")).unwrap();
    let tls_rows = |db: &rusqlite::Connection| -> i64 {
        db.query_row(
            "SELECT COUNT(*) FROM registrations WHERE transport = 'TLS'",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    if tls_rows(&db) == 0 {
        db.execute(
            "INSERT INTO registrations (username, contact, transport, source, local, call_id, \
             cseq, expires_at_ms, q) SELECT username, 'sip:alice@127.0.0.1:5982;transport=tls', \
             'TLS', '127.0.0.1:40999', local, 'tls-reg', 2, expires_at_ms, q \
             FROM registrations WHERE contact LIKE '%5981%'",
            [],
        )
        .unwrap();
    }
    assert_eq!(tls_rows(&db), 1);
    drop(db);
    let s = Server::start_in(&data, port);
    let regs = s.registrations("alice");
    assert!(
        regs.contains("127.0.0.1:5981"),
        "the UDP one is restored: {regs}"
    );
    assert!(
        !regs.contains("transport=tls") && !regs.contains("\"TLS\""),
        "the TLS one is not: {regs}"
    );
    // And the store forgot it.
    let db = rusqlite::Connection::open(data.join("trustring.db")).unwrap();
    let t0 = Instant::now();
    while tls_rows(&db) != 0 {
        assert!(t0.elapsed() < Duration::from_secs(5), "the TLS row stayed");
        std::thread::sleep(Duration::from_millis(50));
    }
}
