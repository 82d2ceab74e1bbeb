//! Test peers on 127.0.0.1: a registrar built from sip-core's authenticator, a raw UDP SIP
//! peer (UAC / proxy), provers, and bounded waits.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sip_core::auth::{Algorithm, AuthError, Authenticator, DigestConfig, ha1};
use sip_core::message::{HeaderName, Message, Method, NameAddr, Request, Response, parse};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use trustring_phone::{PhoneConfig, PhoneEvent, Prover, Timers};

pub const DOMAIN: &str = "example.com";
pub const AOR_USER: &str = "alice";
pub const AUTH_USER: &str = "~d-7k3q";
pub const PASSWORD: &str = "correct horse";
pub const DEVICE: &str = "dev-1";
/// Upper bound of every wait.
pub const WAIT: Duration = Duration::from_secs(5);

/// A phone configuration against `server`, bound to 127.0.0.1 on a free port.
pub fn config(server: SocketAddr) -> PhoneConfig {
    let mut c = PhoneConfig::new(server, DOMAIN, AOR_USER, AUTH_USER, PASSWORD, DEVICE);
    c.local = "127.0.0.1:0".parse().expect("literal");
    c
}

/// Faster RFC 3261 timers for tests that wait for 64*T1.
pub fn fast_timers() -> Timers {
    Timers {
        t1: Duration::from_millis(50),
        t2: Duration::from_millis(200),
        t4: Duration::from_millis(250),
    }
}

/// The proof [`EchoProver`] returns.
pub fn expected_proof(challenge: &str, call_id: &str, branch: &str) -> String {
    format!("v1.{challenge}.{call_id}.{branch}")
}

/// Answers every challenge with [`expected_proof`].
pub struct EchoProver;

impl Prover for EchoProver {
    fn prove(&mut self, challenge: &str, call_id: &str, branch: &str) -> Result<String, String> {
        Ok(expected_proof(challenge, call_id, branch))
    }
}

/// Fails every challenge.
pub struct FailingProver(pub &'static str);

impl Prover for FailingProver {
    fn prove(&mut self, _: &str, _: &str, _: &str) -> Result<String, String> {
        Err(self.0.to_owned())
    }
}

/// The next event matching `pred` (others are skipped), within [`WAIT`].
pub async fn event(
    rx: &mut mpsc::Receiver<PhoneEvent>,
    pred: impl Fn(&PhoneEvent) -> bool,
) -> PhoneEvent {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(e)) if pred(&e) => return e,
            Ok(Some(_)) => {}
            Ok(None) => panic!("event channel closed"),
            Err(_) => panic!("no matching event within {WAIT:?}"),
        }
    }
}

/// A raw SIP peer on its own UDP socket.
pub struct Peer {
    pub socket: UdpSocket,
    pub addr: SocketAddr,
}

impl Peer {
    pub async fn new() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = socket.local_addr().expect("addr");
        Self { socket, addr }
    }

    pub async fn send(&self, to: SocketAddr, bytes: impl AsRef<[u8]>) {
        self.socket.send_to(bytes.as_ref(), to).await.expect("send");
    }

    /// The next datagram (raw) within `wait`.
    pub async fn recv_raw(&self, wait: Duration) -> Option<(Vec<u8>, SocketAddr)> {
        let mut buf = vec![0u8; 65_535];
        match tokio::time::timeout(wait, self.socket.recv_from(&mut buf)).await {
            Ok(Ok((n, from))) => {
                buf.truncate(n);
                Some((buf, from))
            }
            _ => None,
        }
    }

    /// The next message within `wait`.
    pub async fn recv(&self, wait: Duration) -> Option<(Message, Vec<u8>, SocketAddr)> {
        let (raw, from) = self.recv_raw(wait).await?;
        let msg = parse(&raw).expect("the phone sends well-formed SIP");
        Some((msg, raw, from))
    }

    /// The next response whose CSeq method is `method` and status `status` (others are
    /// skipped), within [`WAIT`]; with its wire bytes.
    pub async fn response(&self, method: Method, status: u16) -> (Response, Vec<u8>) {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left).await {
                Some((Message::Response(r), raw, _))
                    if r.status == status && r.cseq().method == method =>
                {
                    return (r, raw);
                }
                Some(_) => {}
                None => panic!("no {status} to {method} within {WAIT:?}"),
            }
        }
    }

    /// The next request with `method` (others are skipped), within [`WAIT`].
    pub async fn request(&self, method: Method) -> (Request, SocketAddr) {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left).await {
                Some((Message::Request(r), _, from)) if r.method == method => return (r, from),
                Some(_) => {}
                None => panic!("no {method} within {WAIT:?}"),
            }
        }
    }

    /// Every message received within `wait`.
    pub async fn drain(&self, wait: Duration) -> Vec<Message> {
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return out;
            }
            match self.recv(left).await {
                Some((m, _, _)) => out.push(m),
                None => return out,
            }
        }
    }
}

/// The caller's side of one call, as raw text.
pub struct Uac {
    pub peer: Peer,
    pub call_id: String,
    pub branch: String,
    pub from_tag: String,
}

/// SDP offer with PCMU.
pub const OFFER: &str = "v=0\r\no=bob 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n\
t=0 0\r\nm=audio 40000 RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\n";

impl Uac {
    pub async fn new(call_id: &str) -> Self {
        Self {
            peer: Peer::new().await,
            call_id: call_id.to_owned(),
            branch: format!("z9hG4bK-{call_id}-1"),
            from_tag: "uac-tag-1".to_owned(),
        }
    }

    /// The INVITE, with `extra` header lines (each ending in CRLF).
    pub fn invite(&self, phone: SocketAddr, extra: &str) -> String {
        format!(
            "INVITE sip:{AOR_USER}@{phone};trustring-device={DEVICE} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {};branch={}\r\n\
             Max-Forwards: 70\r\n\
             From: \"Bob\" <sip:bob@{DOMAIN}>;tag={}\r\n\
             To: <sip:{AOR_USER}@{DOMAIN}>\r\n\
             Call-ID: {}\r\n\
             CSeq: 1 INVITE\r\n\
             Contact: <sip:bob@{}>\r\n\
             {extra}\
             Content-Type: application/sdp\r\n\
             Content-Length: {}\r\n\r\n{OFFER}",
            self.peer.addr,
            self.branch,
            self.from_tag,
            self.call_id,
            self.peer.addr,
            OFFER.len()
        )
    }

    /// A CANCEL for the INVITE.
    pub fn cancel(&self, phone: SocketAddr, extra: &str) -> String {
        format!(
            "CANCEL sip:{AOR_USER}@{phone};trustring-device={DEVICE} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {};branch={}\r\n\
             Max-Forwards: 70\r\n\
             From: \"Bob\" <sip:bob@{DOMAIN}>;tag={}\r\n\
             To: <sip:{AOR_USER}@{DOMAIN}>\r\n\
             Call-ID: {}\r\n\
             CSeq: 1 CANCEL\r\n\
             {extra}\
             Content-Length: 0\r\n\r\n",
            self.peer.addr, self.branch, self.from_tag, self.call_id
        )
    }

    /// An in-dialog request (ACK, BYE, INVITE, OPTIONS) with the phone's To tag; `branch`
    /// `None` for a new one.
    pub fn in_dialog(
        &self,
        method: &str,
        cseq: u32,
        phone: SocketAddr,
        to_tag: &str,
        branch: Option<&str>,
        body: &str,
    ) -> String {
        let branch = branch.map_or_else(|| format!("z9hG4bK-{method}-{cseq}"), str::to_owned);
        let ctype = if body.is_empty() {
            String::new()
        } else {
            "Content-Type: application/sdp\r\n".to_owned()
        };
        format!(
            "{method} sip:{AOR_USER}@{phone};trustring-device={DEVICE} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {};branch={branch}\r\n\
             Max-Forwards: 70\r\n\
             From: \"Bob\" <sip:bob@{DOMAIN}>;tag={}\r\n\
             To: <sip:{AOR_USER}@{DOMAIN}>;tag={to_tag}\r\n\
             Call-ID: {}\r\n\
             CSeq: {cseq} {method}\r\n\
             Contact: <sip:bob@{}>\r\n\
             {ctype}\
             Content-Length: {}\r\n\r\n{body}",
            self.peer.addr,
            self.from_tag,
            self.call_id,
            self.peer.addr,
            body.len()
        )
    }
}

/// The To tag of a response.
pub fn to_tag(r: &Response) -> String {
    r.to()
        .and_then(|t| t.tag().map(str::to_owned))
        .expect("To tag")
}

/// A header's value.
pub fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.headers.get(&HeaderName::from_wire(name))
}

/// What the registrar did with one REGISTER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Ignored (to test retransmission).
    Dropped,
    /// 401 with fresh challenges.
    Challenged { stale: bool, had_credentials: bool },
    /// 200.
    Accepted { algorithm: Algorithm, expires: u32 },
}

/// One REGISTER the registrar saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub request: Request,
    pub raw: Vec<u8>,
    pub verdict: Verdict,
}

/// How the test registrar behaves.
#[derive(Debug, Clone)]
pub struct RegistrarOpts {
    /// The password it expects for [`AUTH_USER`].
    pub password: String,
    /// Expiry granted (capped by the request's).
    pub grant: u32,
    /// Nonce lifetime.
    pub nonce_ttl: Duration,
    /// REGISTERs ignored before answering.
    pub drop_first: usize,
}

impl Default for RegistrarOpts {
    fn default() -> Self {
        Self {
            password: PASSWORD.to_owned(),
            grant: 60,
            nonce_ttl: Duration::from_secs(300),
            drop_first: 0,
        }
    }
}

/// A registrar on 127.0.0.1 that challenges with sip-core's [`Authenticator`] (SHA-256 then
/// MD5) and accepts what it verifies.
pub struct Registrar {
    pub addr: SocketAddr,
    pub seen: mpsc::UnboundedReceiver<Seen>,
    task: JoinHandle<()>,
}

impl Drop for Registrar {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Registrar {
    pub async fn start(opts: RegistrarOpts) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = socket.local_addr().expect("addr");
        let (tx, seen) = mpsc::unbounded_channel();
        let task = tokio::spawn(registrar(socket, opts, tx));
        Self { addr, seen, task }
    }

    /// The next REGISTER seen, within `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<Seen> {
        tokio::time::timeout(wait, self.seen.recv())
            .await
            .ok()
            .flatten()
    }
}

async fn registrar(socket: UdpSocket, mut opts: RegistrarOpts, seen: mpsc::UnboundedSender<Seen>) {
    let epoch = Instant::now();
    let mut cfg = DigestConfig::new(DOMAIN);
    cfg.nonce_ttl = opts.nonce_ttl;
    let mut auth = Authenticator::new(cfg, [42; 32], epoch);
    let mut buf = vec![0u8; 65_535];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            return;
        };
        let raw = buf[..n].to_vec();
        let Ok(Message::Request(req)) = parse(&raw) else {
            continue;
        };
        if req.method != Method::Register {
            continue;
        }
        let now = Instant::now();
        let (resp, verdict) = if opts.drop_first > 0 {
            opts.drop_first -= 1;
            (None, Verdict::Dropped)
        } else {
            let creds = req.headers.get(&HeaderName::Authorization);
            let result = creds.map(|c| {
                auth.verify(now, "REGISTER", c, |u, alg| {
                    (u == AUTH_USER).then(|| ha1(alg, u, DOMAIN, &opts.password))
                })
            });
            match result {
                Some(Ok(v)) => {
                    assert_eq!(v.uri, req.uri.to_string(), "digest uri is the Request-URI");
                    let asked: u32 = req
                        .headers
                        .get(&HeaderName::Expires)
                        .and_then(|e| e.parse().ok())
                        .expect("Expires header");
                    let expires = asked.min(opts.grant);
                    let mut r = Response::to_request(&req, 200, "OK", Some("reg"));
                    let contact = req.headers.get(&HeaderName::Contact).expect("Contact");
                    let uri = NameAddr::parse(contact).expect("contact").uri;
                    r.headers.push(
                        HeaderName::Contact,
                        "<sip:someone-else@192.0.2.9:5060>;expires=3333",
                    );
                    if expires > 0 {
                        r.headers
                            .push(HeaderName::Contact, format!("<{uri}>;expires={expires}"));
                    }
                    (
                        Some(r),
                        Verdict::Accepted {
                            algorithm: v.algorithm,
                            expires,
                        },
                    )
                }
                other => {
                    let stale = matches!(other, Some(Err(AuthError::Stale)));
                    let mut r = Response::to_request(&req, 401, "Unauthorized", Some("reg"));
                    for c in auth.challenges(now, stale) {
                        r.headers.push(HeaderName::WwwAuthenticate, c);
                    }
                    (
                        Some(r),
                        Verdict::Challenged {
                            stale,
                            had_credentials: other.is_some(),
                        },
                    )
                }
            }
        };
        if let Some(r) = resp {
            let _ = socket.send_to(&r.to_bytes(), from).await;
        }
        let _ = seen.send(Seen {
            request: req,
            raw,
            verdict,
        });
    }
}
