//! Issue #12 item 3 reproduced against the real server: junk datagrams sharing one Call-ID,
//! and parsable requests with 60 KB headers sharing it, must not grow the call-trace store
//! (or anything else) by more than a few MB (before the fix: +8.7 MB for 150 junk datagrams).
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use common::Server;
use common::mem::rss_kib;

#[test]
fn junk_and_huge_messages_with_one_call_id_keep_memory_bounded() {
    let s = Server::start();
    let pid = s.pid().unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let me = sock.local_addr().unwrap();
    // Warm up: one ordinary exchange, so lazily made state exists before the baseline.
    let ping = format!(
        "OPTIONS sip:localhost SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKwarm\r\n\
         From: <sip:m@example.net>;tag=w\r\nTo: <sip:localhost>\r\nCall-ID: warm\r\n\
         CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    sock.send_to(ping.as_bytes(), s.sip).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let before = rss_kib(pid);
    let big = "x".repeat(60_000);
    // 400 junk datagrams over two Call-IDs and 250 parsable ones: before the fix the trace
    // store kept 200 junk entries of 60 KB per Call-ID (about 24 MB), so the bound catches it.
    for i in 0..400 {
        let junk = format!(
            "{big} junk\r\nCall-ID: shared-{}\r\nCSeq: {i} INVITE\r\n\r\n",
            i % 2
        );
        sock.send_to(junk.as_bytes(), s.sip).unwrap();
        if i >= 250 {
            continue;
        }
        let req = format!(
            "OPTIONS sip:nobody@localhost SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKf{i}\r\n\
             From: <sip:m@example.net>;tag=f\r\nTo: <sip:nobody@localhost>\r\nCall-ID: shared2\r\n\
             CSeq: {i} OPTIONS\r\nSubject: {big}\r\nContent-Length: 0\r\n\r\n"
        );
        sock.send_to(req.as_bytes(), s.sip).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(Duration::from_secs(1));
    let after = rss_kib(pid);
    eprintln!("server VmRSS {before} KiB -> {after} KiB");
    assert!(
        after.saturating_sub(before) < 10 * 1024,
        "RSS grew {} KiB",
        after - before
    );
    // The server is still answering (past the answers to the flood). Its answers to the
    // flood may have filled this socket's receive buffer, where the kernel would drop the
    // answer to the ping: empty it first.
    let mut buf = [0u8; 70_000];
    sock.set_nonblocking(true).unwrap();
    while sock.recv(&mut buf).is_ok() {}
    sock.set_nonblocking(false).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    sock.send_to(ping.replace("warm", "after").as_bytes(), s.sip)
        .unwrap();
    let mut answered = false;
    while let Ok(n) = sock.recv(&mut buf) {
        if String::from_utf8_lossy(&buf[..n]).contains("Call-ID: after") {
            answered = true;
            break;
        }
    }
    assert!(answered, "an OPTIONS after the flood is answered");
}
