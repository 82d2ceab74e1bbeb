//! The TCP transport end to end: a real proxy driven by `sip_net::spawn` on 127.0.0.1, and a
//! raw TCP client that trickles, pipelines, keeps alive and oversizes its messages.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use sip_core::message::{Frame, HeaderName, MAX_MESSAGE_SIZE, Message, frame_stream, parse};
use sip_core::proxy::{Proxy, ProxyConfig};
use sip_net::{Control, SipHandle, SipSockets};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Every wait in these tests is bounded by this.
const WAIT: Duration = Duration::from_secs(10);

struct Server {
    addr: SocketAddr,
    handle: SipHandle,
    task: JoinHandle<()>,
}

impl Server {
    async fn start() -> Self {
        let sockets = SipSockets::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("binds");
        let addr = sockets.local_addr().expect("local address");
        let proxy = Proxy::new(ProxyConfig::new("localhost", addr, [7; 32]), Instant::now());
        let (events, _) = mpsc::channel(sip_net::EVENT_QUEUE);
        let (handle, task) = sip_net::spawn(proxy, sockets, events);
        Self { addr, handle, task }
    }

    async fn connect(&self) -> Client {
        let stream = TcpStream::connect(self.addr).await.expect("connects");
        stream.set_nodelay(true).expect("nodelay");
        Client {
            stream,
            buf: BytesMut::new(),
        }
    }

    async fn stop(self) {
        assert!(self.handle.send(Control::Shutdown));
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("stops in time")
            .expect("the loop did not panic");
    }
}

struct Client {
    stream: TcpStream,
    buf: BytesMut,
}

impl Client {
    /// The next response: (status, CSeq number).
    async fn response(&mut self) -> (u16, u32) {
        tokio::time::timeout(WAIT, async {
            loop {
                match frame_stream(&self.buf).expect("the proxy frames its responses") {
                    Frame::Message(n) => {
                        let data = self.buf.split_to(n);
                        let Ok(Message::Response(r)) = parse(&data) else {
                            panic!("not a response: {:?}", String::from_utf8_lossy(&data));
                        };
                        let cseq = r.headers.get(&HeaderName::CSeq).expect("CSeq");
                        let n = cseq.split(' ').next().and_then(|n| n.parse().ok());
                        return (r.status, n.expect("CSeq number"));
                    }
                    Frame::KeepAlive(n) => {
                        let _ = self.buf.split_to(n);
                    }
                    Frame::Incomplete => {
                        let n = self.stream.read_buf(&mut self.buf).await.expect("reads");
                        assert!(n > 0, "the proxy closed the connection");
                    }
                }
            }
        })
        .await
        .expect("a response in time")
    }

    /// Everything the proxy writes until it closes the connection.
    async fn until_eof(&mut self) -> Vec<u8> {
        tokio::time::timeout(WAIT, async {
            loop {
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) => return self.buf.split().to_vec(),
                    Ok(_) => {}
                    Err(e) => panic!("reset instead of closed: {e} after {:?}", self.buf),
                }
            }
        })
        .await
        .expect("closed in time")
    }

    /// Waits until the proxy closes the connection, without a response before.
    async fn closed(&mut self) {
        let r = tokio::time::timeout(WAIT, self.stream.read_buf(&mut self.buf)).await;
        match r.expect("closed in time") {
            Ok(0) | Err(_) => {}
            Ok(_) => panic!("got {:?}", String::from_utf8_lossy(&self.buf)),
        }
    }
}

/// An OPTIONS to the proxy itself, which answers 200 with the same CSeq.
fn options(cseq: u32, body: &[u8]) -> Vec<u8> {
    let mut m = format!(
        "OPTIONS sip:localhost SIP/2.0\r\n\
         Via: SIP/2.0/TCP 127.0.0.1:5099;branch=z9hG4bK-tcp-{cseq}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:probe@localhost>;tag=p{cseq}\r\n\
         To: <sip:localhost>\r\n\
         Call-ID: tcp-{cseq}@test\r\n\
         CSeq: {cseq} OPTIONS\r\n\
         Content-Type: text/plain\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    m.extend_from_slice(body);
    m
}

#[tokio::test]
async fn trickled_message_arrives_intact() {
    let server = Server::start().await;
    let mut c = server.connect().await;
    // The body is full of empty lines: only Content-Length may end the message.
    let body = b"line\r\n\r\n".repeat(200);
    let msg = options(1, &body);
    for (i, b) in msg.iter().enumerate() {
        c.stream.write_all(&[*b]).await.expect("writes");
        if i % 64 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        } else {
            tokio::task::yield_now().await;
        }
    }
    assert_eq!(c.response().await, (200, 1));
    // The connection is still good for the next one, sent whole.
    c.stream.write_all(&options(2, b"")).await.expect("writes");
    assert_eq!(c.response().await, (200, 2));
    server.stop().await;
}

#[tokio::test]
async fn pipelined_messages_are_both_handled() {
    let server = Server::start().await;
    let mut c = server.connect().await;
    let two = [options(1, b"first"), options(2, b"second\r\n\r\n")].concat();
    c.stream.write_all(&two).await.expect("writes");
    assert_eq!(c.response().await, (200, 1));
    assert_eq!(c.response().await, (200, 2));
    server.stop().await;
}

#[tokio::test]
async fn keepalives_between_messages() {
    let server = Server::start().await;
    let mut c = server.connect().await;
    c.stream.write_all(b"\r\n\r\n").await.expect("writes");
    c.stream.write_all(&options(1, b"")).await.expect("writes");
    assert_eq!(c.response().await, (200, 1));
    // Keep-alives trickled, then glued to both ends of the next message.
    for b in b"\r\n\r\n" {
        c.stream.write_all(&[*b]).await.expect("writes");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let glued = [&b"\r\n"[..], &options(2, b"x"), b"\r\n\r\n"].concat();
    c.stream.write_all(&glued).await.expect("writes");
    assert_eq!(c.response().await, (200, 2));
    c.stream.write_all(&options(3, b"")).await.expect("writes");
    assert_eq!(c.response().await, (200, 3));
    server.stop().await;
}

/// The one response in `wire`, which must be all of it: (status, reason, CSeq).
fn only_response(wire: &[u8]) -> (u16, String, String) {
    let Ok(Frame::Message(n)) = frame_stream(wire) else {
        panic!("not a response: {:?}", String::from_utf8_lossy(wire));
    };
    assert_eq!(n, wire.len(), "{:?}", String::from_utf8_lossy(wire));
    let Ok(Message::Response(r)) = parse(wire) else {
        panic!("not a response: {:?}", String::from_utf8_lossy(wire));
    };
    let cseq = r.headers.get(&HeaderName::CSeq).unwrap_or("").to_owned();
    (r.status, r.reason, cseq)
}

#[tokio::test]
async fn oversized_header_block_is_answered_513_then_closed() {
    let server = Server::start().await;
    let mut c = server.connect().await;
    let mut head = String::from_utf8(options(9, b""))
        .expect("ascii")
        .replace("Content-Length: 0\r\n\r\n", "")
        .into_bytes();
    while head.len() <= 3 * MAX_MESSAGE_SIZE {
        head.extend_from_slice(b"X-Filler: 0123456789abcdef\r\n");
    }
    // The proxy may answer and close while this is still being written.
    let _ = c.stream.write_all(&head).await;
    let wire = c.until_eof().await;
    assert_eq!(
        only_response(&wire),
        (513, "Message Too Large".into(), "9 OPTIONS".into())
    );
    // The server goes on serving others.
    let mut other = server.connect().await;
    other
        .stream
        .write_all(&options(1, b""))
        .await
        .expect("writes");
    assert_eq!(other.response().await, (200, 1));
    server.stop().await;
}

#[tokio::test]
async fn too_large_or_unframed_message_is_answered_then_closed() {
    let server = Server::start().await;
    let ok = String::from_utf8(options(3, b"")).expect("ascii");
    for ((bad, status, reason), k) in [
        (
            ok.replace("Content-Length: 0", "Content-Length: 70000"),
            513,
            "Message Too Large",
        ),
        (
            ok.replace("Content-Length: 0\r\n", ""),
            400,
            "Missing Content-Length (required on TCP)",
        ),
        (
            ok.replace("Content-Length: 0", "Content-Length: 1\r\nl: 2"),
            400,
            "Conflicting Content-Length",
        ),
    ]
    .into_iter()
    .zip(10..)
    {
        let mut c = server.connect().await;
        // A message before the bad one is answered first.
        c.stream.write_all(&options(k, b"")).await.expect("writes");
        assert_eq!(c.response().await, (200, k));
        c.stream.write_all(bad.as_bytes()).await.expect("writes");
        let wire = c.until_eof().await;
        assert_eq!(
            only_response(&wire),
            (status, reason.into(), "3 OPTIONS".into())
        );
    }
    // No answer to what cannot be addressed: closed without a word.
    let mut c = server.connect().await;
    let no_call_id = ok
        .replace("Call-ID: tcp-3@test\r\n", "")
        .replace("Content-Length: 0", "Content-Length: 70000");
    c.stream
        .write_all(no_call_id.as_bytes())
        .await
        .expect("writes");
    c.closed().await;
    server.stop().await;
}

#[tokio::test]
async fn double_crlf_ping_gets_a_crlf_pong() {
    let server = Server::start().await;
    let mut c = server.connect().await;
    c.stream.write_all(b"\r\n\r\n").await.expect("writes");
    let mut pong = [0u8; 2];
    tokio::time::timeout(WAIT, c.stream.read_exact(&mut pong))
        .await
        .expect("a pong in time")
        .expect("reads");
    assert_eq!(&pong, b"\r\n");
    // Trickled, it is still one ping.
    for b in b"\r\n\r\n" {
        c.stream.write_all(&[*b]).await.expect("writes");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::timeout(WAIT, c.stream.read_exact(&mut pong))
        .await
        .expect("a pong in time")
        .expect("reads");
    assert_eq!(&pong, b"\r\n");
    // A lone CRLF is skipped without a pong: the next bytes are the next answer.
    c.stream.write_all(b"\r\n").await.expect("writes");
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.stream.write_all(&options(1, b"")).await.expect("writes");
    let mut first = [0u8; 8];
    tokio::time::timeout(WAIT, c.stream.read_exact(&mut first))
        .await
        .expect("an answer in time")
        .expect("reads");
    assert_eq!(&first, b"SIP/2.0 ");
    server.stop().await;
}
