//! `GET /metrics` end to end: the real `trustring` binary, two SIPp devices registered for
//! alice and a SIPp caller. After one forked, answered call the scrape shows it: one answered
//! call, one fork skew observation (well under 100 ms), two registrations, the store writes
//! timed; a garbage datagram is a parse error; no token, no metrics.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::{Server, TOKEN, caller, device, serial};

const WAIT: Duration = Duration::from_secs(45);

/// `GET /metrics` with `Authorization: Bearer TOKEN` when `token` is given: (status,
/// content type, body).
fn scrape(s: &Server, token: Option<&str>) -> (u16, String, String) {
    let mut conn = TcpStream::connect_timeout(&s.http, Duration::from_secs(2)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!(
        "GET /metrics HTTP/1.1\r\nHost: {}\r\n{auth}Connection: close\r\n\r\n",
        s.http
    );
    conn.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    conn.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    (status, content_type, body.to_owned())
}

/// The samples of a text exposition: `name{labels}` -> value. Checks that every family is
/// declared once (the SIP side's text and the API's are joined: no family in both), with
/// `# HELP` then `# TYPE`, before its samples.
fn samples(text: &str) -> BTreeMap<String, f64> {
    let mut declared: Vec<(String, String)> = Vec::new();
    let mut helped = None;
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            helped = Some(rest.split(' ').next().unwrap().to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert_eq!(
                helped.take().as_deref(),
                Some(name),
                "TYPE without HELP: {line}"
            );
            assert!(
                declared.iter().all(|(family, _)| family != name),
                "declared twice: {line}"
            );
            declared.push((name.to_owned(), kind.to_owned()));
        } else if !line.is_empty() {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let name = series.split('{').next().unwrap();
            assert!(
                declared.iter().any(|(family, kind)| name == family
                    || (kind == "histogram"
                        && ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|s| name.strip_suffix(s) == Some(family)))),
                "undeclared sample: {line}"
            );
            out.insert(series.to_owned(), value.parse().unwrap());
        }
    }
    out
}

/// Scrapes until `done` holds (bounded), returning the last samples.
fn scrape_until(
    s: &Server,
    what: &str,
    done: impl Fn(&BTreeMap<String, f64>) -> bool,
) -> BTreeMap<String, f64> {
    let t0 = Instant::now();
    loop {
        let (status, _, body) = scrape(s, Some(TOKEN));
        assert_eq!(status, 200, "{body}");
        let m = samples(&body);
        if done(&m) {
            return m;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{what} never held:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_forked_answered_call_shows_in_the_metrics() {
    let _g = serial();
    let s = Server::start();
    s.add_subscriber("alice", "s3cret-passw0rd");

    // The admin token is required.
    for token in [None, Some("wrong")] {
        let (status, _, body) = scrape(&s, token);
        assert_eq!(status, 401, "{body}");
    }
    let (status, content_type, body) = scrape(&s, Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let before = samples(&body);
    for family in [
        "trustring_registrations",
        "trustring_active_calls",
        "trustring_calls_total",
        "trustring_fork_skew_microseconds",
        "trustring_transactions",
        "trustring_forks",
        "trustring_sip_parse_errors_total",
        "trustring_auth_failures_total",
        "trustring_trust_failures_total",
        "trustring_store_latency_milliseconds",
        "trustring_cdrs_shed_total",
        "trustring_sip_connections_refused_total",
        "trustring_sip_connections_dropped_total",
        "trustring_store_queue_waits_total",
        "trustring_http_connections",
        "trustring_http_connections_refused_total",
        "trustring_http_connections_dropped_total",
        "trustring_security_events_shed_total",
    ] {
        assert!(
            body.contains(&format!("# TYPE {family} ")),
            "{family}:\n{body}"
        );
    }
    assert_eq!(before["trustring_registrations"], 0.0);
    assert_eq!(before["trustring_calls_total{outcome=\"answered\"}"], 0.0);
    assert_eq!(before["trustring_fork_skew_microseconds_count"], 0.0);

    let mut desk = device(&s, "uas-answer.xml", 300, false);
    let mut mobile = device(&s, "uas-ring-cancel.xml", 0, false);
    caller(&s, "uac-call.xml").arg("-d").arg("1000").run_ok();
    desk.expect_ok(WAIT);
    mobile.expect_ok(WAIT);

    // The CDR write is asynchronous (the store writer): wait for its latency sample.
    let m = scrape_until(&s, "the CDR write", |m| {
        m["trustring_store_latency_milliseconds_count{op=\"cdr\"}"] >= 1.0
    });
    assert_eq!(m["trustring_calls_total{outcome=\"answered\"}"], 1.0);
    for outcome in [
        "busy",
        "no-answer",
        "declined",
        "cancelled",
        "unreachable",
        "failed",
    ] {
        assert_eq!(
            m[&format!("trustring_calls_total{{outcome=\"{outcome}\"}}")],
            0.0,
            "{outcome}"
        );
    }
    assert_eq!(m["trustring_registrations"], 2.0);
    assert_eq!(m["trustring_active_calls"], 0.0);
    assert_eq!(m["trustring_auth_failures_total"], 0.0);
    assert_eq!(m["trustring_sip_parse_errors_total"], 0.0);
    assert_eq!(
        m["trustring_trust_failures_total{kind=\"wrong-proof\"}"],
        0.0
    );
    assert_eq!(
        m["trustring_store_latency_milliseconds_count{op=\"cdr\"}"],
        1.0
    );
    assert!(m["trustring_store_latency_milliseconds_count{op=\"registration\"}"] >= 2.0);

    // One fork of two branches: one skew observation, far below 100 ms.
    assert_eq!(m["trustring_fork_skew_microseconds_count"], 1.0);
    let skew_us = m["trustring_fork_skew_microseconds_sum"];
    eprintln!("measured fork skew: {skew_us} µs");
    assert!(skew_us < 100_000.0, "fork skew {skew_us} µs");
    assert_eq!(
        m["trustring_fork_skew_microseconds_bucket{le=\"100000\"}"],
        1.0
    );
    assert_eq!(
        m["trustring_fork_skew_microseconds_bucket{le=\"+Inf\"}"],
        1.0
    );
    // Cumulative buckets never decrease.
    let buckets: Vec<f64> = [
        "10", "50", "100", "250", "500", "1000", "5000", "10000", "100000", "+Inf",
    ]
    .iter()
    .map(|le| m[&format!("trustring_fork_skew_microseconds_bucket{{le=\"{le}\"}}")])
    .collect();
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");

    // A garbage datagram is a parse error.
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.send_to(b"\x00\x01\x02 this is not SIP\r\n\r\n", s.sip)
        .unwrap();
    let after = scrape_until(&s, "the parse error", |m| {
        m["trustring_sip_parse_errors_total"] >= 1.0
    });
    assert_eq!(after["trustring_sip_parse_errors_total"], 1.0);
    // Counters never go back.
    for (series, v) in &m {
        if series.contains("_total") || series.ends_with("_count") {
            assert!(after[series] >= *v, "{series}: {v} -> {}", after[series]);
        }
    }
}
