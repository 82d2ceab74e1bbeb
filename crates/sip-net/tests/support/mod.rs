//! What the stream transport tests share: a proxy driven by `sip_net::spawn_with` on
//! 127.0.0.1 (UDP, TCP and optionally TLS), a SIP client over any byte stream, and a digest
//! REGISTER.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use sip_core::auth::{Algorithm, DigestPolicy, ResponseInput, ha1, response};
use sip_core::message::{Frame, HeaderName, Message, Response, frame_stream, parse};
use sip_core::proxy::{Event, Proxy, ProxyConfig, SubscriberEntry};
use sip_net::{Control, NetOptions, SipHandle, SipSockets, StreamLimits};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Every wait in these tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(10);
pub const REALM: &str = "localhost";
pub const PASSWORD: &str = "alice-password";

pub struct Server {
    pub addr: SocketAddr,
    pub tls: Option<SocketAddr>,
    pub fingerprint: Option<tls::Fingerprint>,
    pub handle: SipHandle,
    pub events: mpsc::Receiver<Event>,
    task: JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Server {
    /// A proxy for `localhost` with subscriber alice (MD5 digest), TLS when `tls`.
    pub async fn start(tls: bool, limits: StreamLimits) -> Self {
        Self::start_with(
            tls,
            NetOptions {
                limits,
                ..NetOptions::default()
            },
        )
        .await
    }

    /// [`Server::start`] with the transports' `options` (limits, TLS peers to dial).
    pub async fn start_with(tls: bool, options: NetOptions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // UDP takes a free port and TCP the same one, which another test may hold: retry.
        let mut tries = 0;
        let mut sockets = loop {
            match SipSockets::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await {
                Ok(s) => break s,
                Err(e) if tries < 20 => {
                    tries += 1;
                    eprintln!("bind: {e}; again");
                }
                Err(e) => panic!("binds: {e}"),
            }
        };
        let addr = sockets.local_addr().expect("local address");
        let mut fingerprint = None;
        if tls {
            let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
            let id = tls::ServerIdentity::load_or_create(dir.path(), None, None, &names)
                .expect("a certificate");
            fingerprint = Some(id.fingerprint);
            let cfg = tls::server_config(&id).expect("TLS config");
            sockets = sockets
                .with_tls(SocketAddr::from(([127, 0, 0, 1], 0)), cfg)
                .expect("binds TLS");
        }
        let tls = sockets.tls_local_addr();
        let mut cfg = ProxyConfig {
            digest: DigestPolicy::Md5,
            ..ProxyConfig::new(REALM, addr, [7; 32])
        };
        cfg.advertised_tls = tls;
        let mut proxy = Proxy::new(cfg, Instant::now());
        proxy.upsert_subscriber(SubscriberEntry {
            user: "alice".into(),
            ha1_md5: ha1(Algorithm::Md5, "alice", REALM, PASSWORD),
            ha1_sha256: ha1(Algorithm::Sha256, "alice", REALM, PASSWORD),
            ring_timeout: Duration::from_secs(30),
            ring_delays: Vec::new(),
        });
        let (events_tx, events) = mpsc::channel(sip_net::EVENT_QUEUE);
        let (handle, task) = sip_net::spawn_with(proxy, sockets, events_tx, options);
        Self {
            addr,
            tls,
            fingerprint,
            handle,
            events,
            task,
            _dir: dir,
        }
    }

    pub async fn tcp(&self) -> Client<TcpStream> {
        let stream = TcpStream::connect(self.addr).await.expect("connects");
        stream.set_nodelay(true).expect("nodelay");
        Client::new(stream, "TCP")
    }

    /// A TLS client that pins the server's key, offering `versions` (default: 1.3 and 1.2).
    pub async fn tls_client(
        &self,
        versions: Option<&[&'static tls::rustls::SupportedProtocolVersion]>,
    ) -> Client<tokio_rustls::client::TlsStream<TcpStream>> {
        let (stream, _) = self.tls_handshake(versions).await;
        Client::new(stream, "TLS")
    }

    /// Connects and completes a TLS handshake; returns the stream and how long it took.
    pub async fn tls_handshake(
        &self,
        versions: Option<&[&'static tls::rustls::SupportedProtocolVersion]>,
    ) -> (tokio_rustls::client::TlsStream<TcpStream>, Duration) {
        let pin = self.fingerprint.expect("a TLS server");
        let cfg = match versions {
            None => tls::pinned_client_config(pin).expect("client config"),
            Some(v) => Arc::new(
                tls::rustls::ClientConfig::builder_with_provider(tls::provider())
                    .with_protocol_versions(v)
                    .expect("versions")
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(tls::PinnedVerifier::new(pin)))
                    .with_no_client_auth(),
            ),
        };
        let t0 = Instant::now();
        let tcp = TcpStream::connect(self.tls.expect("TLS listener"))
            .await
            .expect("connects");
        tcp.set_nodelay(true).expect("nodelay");
        let name = tls::pki_types::ServerName::try_from("localhost").unwrap();
        let stream = tokio::time::timeout(
            WAIT,
            tokio_rustls::TlsConnector::from(cfg).connect(name, tcp),
        )
        .await
        .expect("handshake in time")
        .expect("handshake");
        (stream, t0.elapsed())
    }

    pub async fn stop(self) {
        assert!(self.handle.send(Control::Shutdown));
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("stops in time")
            .expect("the loop did not panic");
    }
}

pub struct Client<S> {
    pub stream: S,
    pub buf: BytesMut,
    /// The Via transport token this client writes.
    pub proto: &'static str,
    pub local: String,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    pub fn new(stream: S, proto: &'static str) -> Self {
        Self {
            stream,
            buf: BytesMut::new(),
            proto,
            local: "127.0.0.1:5099".into(),
        }
    }

    pub async fn send(&mut self, msg: &[u8]) {
        self.stream.write_all(msg).await.expect("writes");
        self.stream.flush().await.expect("flushes");
    }

    /// The next message the proxy sends on this connection (keep-alives skipped).
    pub async fn message(&mut self) -> Message {
        tokio::time::timeout(WAIT, async {
            loop {
                match frame_stream(&self.buf).expect("the proxy frames its messages") {
                    Frame::Message(n) => {
                        let data = self.buf.split_to(n);
                        return parse(&data).expect("parses");
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
        .expect("a message in time")
    }

    /// The next response.
    pub async fn response(&mut self) -> Response {
        match self.message().await {
            Message::Response(r) => r,
            Message::Request(r) => panic!("a request, not a response: {} {}", r.method, r.uri),
        }
    }

    /// Whether the proxy closes the connection within `limit` (EOF or reset), reading and
    /// dropping whatever comes before.
    pub async fn closed_within(&mut self, limit: Duration) -> bool {
        closed_within(&mut self.stream, limit).await
    }

    /// Registers alice with `contact` over this connection (401, then credentials);
    /// returns the final status.
    pub async fn register(&mut self, contact: &str, n: u32) -> u16 {
        self.send(&register(self.proto, &self.local, contact, n, None))
            .await;
        let challenge = self.response().await;
        assert_eq!(challenge.status, 401);
        let auth = credentials(&challenge);
        self.send(&register(
            self.proto,
            &self.local,
            contact,
            n + 1,
            Some(&auth),
        ))
        .await;
        self.response().await.status
    }
}

/// A REGISTER for alice (`proto`: the Via transport).
pub fn register(proto: &str, local: &str, contact: &str, n: u32, auth: Option<&str>) -> Vec<u8> {
    let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    format!(
        "REGISTER sip:localhost SIP/2.0\r\n\
         Via: SIP/2.0/{proto} {local};branch=z9hG4bK-reg-{n};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice@localhost>;tag=r{n}\r\n\
         To: <sip:alice@localhost>\r\n\
         Call-ID: reg-{proto}-{local}\r\n\
         CSeq: {n} REGISTER\r\n\
         Contact: <{contact}>\r\n\
         {auth}Expires: 600\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// An OPTIONS to the proxy itself (answered 200 with the same CSeq).
pub fn options(proto: &str, cseq: u32) -> Vec<u8> {
    format!(
        "OPTIONS sip:localhost SIP/2.0\r\n\
         Via: SIP/2.0/{proto} 127.0.0.1:5099;branch=z9hG4bK-opt-{cseq}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:probe@localhost>;tag=p{cseq}\r\n\
         To: <sip:localhost>\r\n\
         Call-ID: opt-{cseq}@test\r\n\
         CSeq: {cseq} OPTIONS\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// The MD5 digest answer to `challenge` for alice.
pub fn credentials(challenge: &Response) -> String {
    let c = challenge
        .headers
        .get(&HeaderName::WwwAuthenticate)
        .expect("a challenge");
    let nonce = c
        .split("nonce=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let h = ha1(Algorithm::Md5, "alice", REALM, PASSWORD);
    let r = response(
        Algorithm::Md5,
        &h,
        &ResponseInput {
            nonce,
            nc: "00000001",
            cnonce: "c",
            qop: "auth",
            method: "REGISTER",
            uri: "sip:localhost",
        },
    );
    format!(
        "Digest username=\"alice\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"sip:localhost\", response=\"{r}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"c\""
    )
}

/// The next event, within [`WAIT`].
pub async fn next_event(events: &mut mpsc::Receiver<Event>) -> Event {
    tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("an event in time")
        .expect("the server is running")
}

/// Whether `r` ends within `limit` (EOF or an error such as a reset), reading and dropping
/// whatever comes before.
pub async fn closed_within<R: AsyncRead + Unpin>(r: &mut R, limit: Duration) -> bool {
    let mut scratch = vec![0u8; 64 * 1024];
    tokio::time::timeout(limit, async {
        loop {
            match r.read(&mut scratch).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}
