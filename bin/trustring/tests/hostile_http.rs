//! Hostile HTTP clients against the real server on 127.0.0.1 (issue 12, R30), on both of its
//! HTTP listeners (the admin API, plain on loopback, and the public enrolment endpoint,
//! HTTPS):
//! - slow clients: half a request line, nothing at all, or a body that never comes are
//!   closed within the read timeout (10 s by default; they were held 45 s and more);
//! - greedy clients: connections beyond the total or the per-source cap are closed at
//!   accept, and the server answers normally once they are gone;
//! - enumeration: the enrolment endpoint answers unknown, used and expired codes alike
//!   (status and body byte for byte), while the admin API's security events tell them apart;
//! - a flood of refused enrolments writes at most a burst of security events per source,
//!   the rest counted in `/metrics`.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{Server, TOKEN, phone};

type Tls = tls::rustls::StreamOwned<tls::rustls::ClientConnection, TcpStream>;

/// A TCP connection to `to` from the address `from` (any address of 127.0.0.0/8 is ours).
fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::new(from, 0).into()).unwrap();
    sock.connect_timeout(&to.into(), Duration::from_secs(2))
        .unwrap();
    let tcp: TcpStream = sock.into();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    tcp
}

fn local(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// A TLS connection to the enrolment endpoint from `from`, its handshake done, the server's
/// key pinned.
fn tls_from(s: &Server, from: IpAddr) -> Tls {
    let mut tcp = connect_from(from, s.enrol);
    let name = tls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = tls::rustls::ClientConnection::new(
        tls::pinned_client_config(phone::fingerprint(s)).unwrap(),
        name,
    )
    .unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).unwrap();
    }
    tls::rustls::StreamOwned::new(conn, tcp)
}

/// Reads until the server closes; what it sent. A reset or a TLS connection closed without
/// `close_notify` counts as closed too; a read timeout does not (panics).
fn read_until_closed(stream: &mut impl Read) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!(
                    "still open: {e}; read so far: {}",
                    String::from_utf8_lossy(&out)
                )
            }
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One request over `stream` (`Connection: close`); (status, body).
fn exchange(
    stream: &mut (impl Read + Write),
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    stream.flush().unwrap();
    let out = read_until_closed(stream);
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Whether the server closed `stream` without answering a request sent on it.
fn refused(stream: &mut (impl Read + Write)) -> bool {
    let _ = write!(
        stream,
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    );
    let _ = stream.flush();
    !read_until_closed(stream).contains(" 200 ")
}

/// The value of the sample `series` in `GET /metrics` (0 if absent).
fn metric(s: &Server, series: &str) -> f64 {
    let (c, text) = s.api("GET", "/metrics", None);
    assert_eq!(c, 200, "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Waits (bounded) until `GET /healthz` on the admin API answers 200.
fn answers_again(s: &Server) {
    let t0 = Instant::now();
    loop {
        let mut c = connect_from(local(1), s.http);
        if exchange(&mut c, "GET", "/healthz", "").0 == 200 {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the server does not answer again"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Half a request line, nothing at all, and a request whose body never comes: each is closed
/// within the default read timeout (10 s), on both listeners; the server answers others
/// meanwhile and after.
#[test]
fn slow_clients_are_closed_within_the_read_timeout() {
    let s = Server::start();
    let (http, t0) = (s.http, Instant::now());
    let half_line = std::thread::spawn(move || {
        let mut c = connect_from(local(1), http);
        c.write_all(b"GET /heal").unwrap();
        let out = read_until_closed(&mut c);
        (t0.elapsed(), out)
    });
    let silent = std::thread::spawn(move || {
        let mut c = connect_from(local(1), http);
        let out = read_until_closed(&mut c);
        (t0.elapsed(), out)
    });
    let slow_body = std::thread::spawn(move || {
        let mut c = connect_from(local(1), http);
        write!(
            c,
            "POST /api/v1/subscribers HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer \
             {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"user\":"
        )
        .unwrap();
        let out = read_until_closed(&mut c);
        (t0.elapsed(), out)
    });
    let mut enrol = tls_from(&s, local(1));
    enrol.write_all(b"POST /api/v1/en").unwrap();
    enrol.flush().unwrap();
    // Meanwhile the server serves others.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(s.api("GET", "/healthz", None).0, 200);
    let enrol_out = read_until_closed(&mut enrol);
    let enrol_after = t0.elapsed();

    for (what, (after, out)) in [
        ("half a request line", half_line.join().unwrap()),
        ("nothing", silent.join().unwrap()),
        ("half a body", slow_body.join().unwrap()),
        ("half a request line over TLS", (enrol_after, enrol_out)),
    ] {
        assert!(
            after >= Duration::from_secs(8) && after <= Duration::from_secs(13),
            "{what}: closed after {after:?}"
        );
        if what == "half a body" {
            assert!(
                out.starts_with("HTTP/1.1 400") && out.contains("invalid_body"),
                "{what}: {out}"
            );
        } else {
            assert!(out.is_empty(), "{what}: answered {out}");
        }
    }
    answers_again(&s);
    assert!(
        metric(
            &s,
            "trustring_http_connections_dropped_total{listener=\"admin\"}"
        ) >= 3.0
    );
    assert!(
        metric(
            &s,
            "trustring_http_connections_dropped_total{listener=\"enrol\"}"
        ) >= 1.0
    );
}

/// `--http-max-connections 6 --http-max-connections-per-ip 4`: a fifth connection from one
/// address and a seventh in all are closed at accept (counted), on the admin listener and on
/// the enrolment one (after its TLS handshake); connections from another address still get
/// in up to the total; once the hogs are gone the server answers as before.
#[test]
fn connections_beyond_the_caps_are_refused_and_the_server_recovers() {
    let s = Server::start_args(&[
        "--http-max-connections",
        "6",
        "--http-max-connections-per-ip",
        "4",
        "--http-read-timeout-secs",
        "60",
    ]);
    let hogs: Vec<TcpStream> = (0..4).map(|_| connect_from(local(1), s.http)).collect();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        refused(&mut connect_from(local(1), s.http)),
        "fifth from 127.0.0.1"
    );
    // Another source gets in (and is served) up to the total of six.
    let mut others: Vec<TcpStream> = (0..2).map(|_| connect_from(local(2), s.http)).collect();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        refused(&mut connect_from(local(2), s.http)),
        "seventh in all"
    );
    let (c, b) = exchange(&mut others[0], "GET", "/healthz", "");
    assert_eq!((c, b.as_str()), (200, r#"{"status":"ok"}"#));
    drop((hogs, others));
    // The server notices the closes (a retry refused meanwhile would count: at least 2).
    std::thread::sleep(Duration::from_millis(300));
    answers_again(&s);
    assert!(
        metric(
            &s,
            "trustring_http_connections_refused_total{listener=\"admin\"}"
        ) >= 2.0
    );
    let t0 = Instant::now();
    while metric(&s, "trustring_http_connections{listener=\"admin\"}") != 1.0 {
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "open connections: only the scrape's"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The enrolment listener: the same caps, after the TLS handshake.
    let hogs: Vec<Tls> = (0..4).map(|_| tls_from(&s, local(1))).collect();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        refused(&mut tls_from(&s, local(1))),
        "fifth TLS connection from 127.0.0.1"
    );
    drop(hogs);
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    loop {
        let (c, _) = exchange(&mut tls_from(&s, local(1)), "GET", "/api/v1/enrol/eula", "");
        if c == 404 {
            break; // no EULA published: the endpoint's own answer
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "enrolment endpoint: {c}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        metric(
            &s,
            "trustring_http_connections_refused_total{listener=\"enrol\"}"
        ) >= 1.0
    );
}

/// A zone public key as the enrolment body carries it (any 32 bytes make an X25519 key).
fn zone_key(seed: u8) -> String {
    let b = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([seed; 32]);
    format!("x25519:{b}")
}

fn new_code(s: &Server, ttl_secs: u64) -> String {
    let (c, b) = s.api(
        "POST",
        "/api/v1/subscribers/alice/enrolments",
        Some(&format!(r#"{{"ttl_secs":{ttl_secs}}}"#)),
    );
    assert_eq!(c, 201, "{b}");
    let v: serde_json::Value = serde_json::from_str(&b).unwrap();
    v["code"].as_str().unwrap().to_owned()
}

/// `POST /api/v1/enrol` over HTTPS from `from`; (status, body).
fn enrol(s: &Server, from: IpAddr, code: &str, key: &str) -> (u16, String) {
    let body = serde_json::json!({
        "code": code, "zone_public_key": key, "eula_version": "2026-1", "accept_eula": true,
    })
    .to_string();
    exchange(&mut tls_from(s, from), "POST", "/api/v1/enrol", &body)
}

fn refusal_details(s: &Server) -> Vec<String> {
    let (c, b) = s.api("GET", "/api/v1/security-events?limit=1000", None);
    assert_eq!(c, 200, "{b}");
    let page: serde_json::Value = serde_json::from_str(&b).unwrap();
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "enrolment-refused")
        .map(|e| e["detail"].as_str().unwrap().to_owned())
        .collect()
}

/// Unknown, used and expired codes get one answer, byte for byte, from the public endpoint;
/// the admin API's security events say which it was. Then a flood of refused enrolments from
/// one address writes 20 events (the per-source burst), the rest are counted as shed, and
/// another address still gets its events written.
#[test]
fn refused_enrolments_answer_alike_and_their_events_are_rate_limited() {
    let s = Server::start();
    s.add_subscriber("alice", "alice-passphrase");
    for (path, body) in [
        ("/api/v1/eulas", r#"{"version":"2026-1","text":"Be nice."}"#),
        (
            "/api/v1/pools/numbers",
            r#"{"range":"+15550100000..+15550100009"}"#,
        ),
    ] {
        let (c, b) = s.api("POST", path, Some(body));
        assert!(c == 200 || c == 201, "{path}: {b}");
    }
    let used = new_code(&s, 3600);
    let (c, b) = enrol(&s, local(1), &used, &zone_key(1));
    assert_eq!(c, 201, "{b}");
    let expired = new_code(&s, 1);
    std::thread::sleep(Duration::from_millis(1100));

    let answers = [
        enrol(&s, local(1), "ZZZZZ-ZZZZZ-ZZZZZ-ZZZZZ", &zone_key(2)),
        enrol(&s, local(1), &used, &zone_key(3)),
        enrol(&s, local(1), &expired, &zone_key(4)),
    ];
    assert_eq!(answers[0].0, 403, "{}", answers[0].1);
    assert!(
        answers[0].1.contains("\"code_invalid\""),
        "{}",
        answers[0].1
    );
    assert_eq!(answers[1], answers[0], "used vs unknown");
    assert_eq!(answers[2], answers[0], "expired vs unknown");
    assert_eq!(
        refusal_details(&s),
        [
            "unknown enrolment code",
            "enrolment code already used",
            "enrolment code expired"
        ],
        "the admin API tells them apart"
    );

    // A flood from 127.0.0.1: 20 events in all (3 above), the other 27 shed.
    for i in 0..30u8 {
        let (c, _) = enrol(&s, local(1), &format!("BAD{i:02}"), &zone_key(5));
        assert_eq!(c, 403);
    }
    let recorded = refusal_details(&s).len();
    let shed = metric(&s, "trustring_security_events_shed_total");
    // One more may have been earned by now (one per 30 s).
    assert!((20..=21).contains(&recorded), "{recorded} recorded");
    assert_eq!(
        recorded as f64 + shed,
        33.0,
        "{recorded} recorded, {shed} shed"
    );
    // Another source has a bucket of its own.
    let (c, _) = enrol(&s, local(2), "ANOTHER", &zone_key(6));
    assert_eq!(c, 403);
    assert_eq!(refusal_details(&s).len(), recorded + 1);
}
