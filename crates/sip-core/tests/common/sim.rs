//! The simulated-time driver: the test feeds the proxy bytes from addresses, moves the
//! clock, and reads what the proxy sent where.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sip_core::auth::Algorithm;
use sip_core::message::{Message, Request, Response, parse};
use sip_core::proxy::{CallRecord, ConnId, Event, Output, Proxy, ProxyConfig, Transport};

use super::addr;
use super::digest::answer_challenge;
use super::msg::register;

/// One datagram or stream write of the proxy.
#[derive(Clone)]
pub struct Sent {
    /// Destination.
    pub to: SocketAddr,
    /// Over what.
    pub transport: Transport,
    /// On which connection, for a stream.
    pub conn: Option<ConnId>,
    /// The fork this is a branch INVITE of.
    pub fork: Option<u64>,
    /// What.
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for Sent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {:?} fork {:?}: {:?}",
            self.transport.as_str(),
            self.to,
            self.conn,
            self.fork,
            String::from_utf8_lossy(&self.bytes)
        )
    }
}

impl Sent {
    /// The SIP message sent (`None` for anything else, e.g. a STUN answer).
    pub fn message(&self) -> Option<Message> {
        parse(&self.bytes).ok()
    }

    /// The request sent, if it is one.
    pub fn request(&self) -> Option<Request> {
        match self.message()? {
            Message::Request(r) => Some(r),
            Message::Response(_) => None,
        }
    }

    /// The response sent, if it is one.
    pub fn response(&self) -> Option<Response> {
        match self.message()? {
            Message::Response(r) => Some(r),
            Message::Request(_) => None,
        }
    }
}

/// A proxy on a simulated clock, with everything it sent and every event it raised.
pub struct Sim {
    /// The proxy under test.
    pub proxy: Proxy,
    /// The simulated clock.
    pub now: Instant,
    /// What the proxy sent since the last [`Sim::take`].
    pub sent: Vec<Sent>,
    /// Every event the proxy raised (never cleared by the harness).
    pub events: Vec<Event>,
    /// Bytes fed to the proxy so far.
    pub received_bytes: usize,
    /// A counter for the tests' message numbers ([`Sim::next_n`]).
    pub n: u32,
}

impl Sim {
    /// A proxy made with `cfg`, its clock at now.
    pub fn with_config(cfg: ProxyConfig) -> Self {
        let now = Instant::now();
        Self {
            proxy: Proxy::new(cfg, now),
            now,
            sent: Vec::new(),
            events: Vec::new(),
            received_bytes: 0,
            n: 0,
        }
    }

    /// The next message number (1, 2, …).
    pub fn next_n(&mut self) -> u32 {
        self.n += 1;
        self.n
    }

    /// Feeds `msg` (lines ending in `\n`, sent as CRLF) over UDP from `from`.
    pub fn recv(&mut self, from: &str, msg: &str) {
        self.recv_over(Transport::Udp, from, None, msg);
    }

    /// Feeds `msg` (lines ending in `\n`, sent as CRLF) over `transport` from `from` on
    /// connection `conn`.
    pub fn recv_over(&mut self, transport: Transport, from: &str, conn: Option<ConnId>, msg: &str) {
        let bytes = msg.replace('\n', "\r\n");
        self.recv_raw_over(transport, from, conn, bytes.as_bytes());
    }

    /// Feeds `bytes` as they are over UDP from `from`.
    pub fn recv_raw(&mut self, from: &str, bytes: &[u8]) {
        self.recv_raw_over(Transport::Udp, from, None, bytes);
    }

    /// Feeds `bytes` as they are over `transport` from `from` on connection `conn`.
    pub fn recv_raw_over(
        &mut self,
        transport: Transport,
        from: &str,
        conn: Option<ConnId>,
        bytes: &[u8],
    ) {
        self.received_bytes += bytes.len();
        self.proxy
            .handle_receive(self.now, transport, addr(from), conn, bytes);
        self.drain();
    }

    /// Collects what the proxy has to send and its events.
    pub fn drain(&mut self) {
        while let Some(o) = self.proxy.poll_output() {
            match o {
                Output::Transmit(t) => self.sent.push(Sent {
                    to: t.target.addr,
                    transport: t.target.transport,
                    conn: t.target.conn,
                    fork: t.fork,
                    bytes: t.payload.to_vec(),
                }),
                Output::Event(e) => self.events.push(*e),
            }
        }
    }

    /// Moves the clock by `d`, firing every timer due on the way.
    pub fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        while let Some(t) = self.proxy.poll_timeout().filter(|t| *t <= end) {
            self.now = self.now.max(t);
            self.proxy.handle_timeout(self.now);
            self.drain();
        }
        self.now = end;
    }

    /// Takes what was sent so far.
    pub fn take(&mut self) -> Vec<Sent> {
        std::mem::take(&mut self.sent)
    }

    /// Sends the REGISTER `request(n, auth)` (`n` from [`Sim::next_n`], `auth` an
    /// `Authorization` line or nothing) over `transport` from `from` on `conn`; answers a 401
    /// once as `user`/`pw` (MD5). Returns the last final response.
    pub fn register_answering(
        &mut self,
        (transport, from, conn): (Transport, &str, Option<ConnId>),
        (user, pw): (&str, &str),
        mut request: impl FnMut(u32, &str) -> String,
    ) -> Response {
        let mut auth = String::new();
        loop {
            let n = self.next_n();
            self.recv_over(transport, from, conn, &request(n, &auth));
            let resp = responses(&self.take())
                .into_iter()
                .map(|(.., r)| r)
                .rfind(|r| r.status >= 200)
                .expect("a final response");
            if resp.status != 401 || !auth.is_empty() {
                return resp;
            }
            let digest =
                answer_challenge(&resp, user, pw, Algorithm::Md5, "REGISTER", "sip:localhost");
            auth = format!("Authorization: {digest}\n");
        }
    }

    /// Registers `user`/`pw` ([`Sim::register_answering`]) over `transport` from `from` on
    /// `conn` in Call-ID `reg-{from}`: Via `via`, Contact `contact` (a header value), with
    /// `headers` (lines ending in `\n`).
    pub fn register_as(
        &mut self,
        (transport, from, conn): (Transport, &str, Option<ConnId>),
        (user, pw): (&str, &str),
        via: &str,
        contact: &str,
        headers: &str,
    ) -> Response {
        let call_id = format!("reg-{from}");
        self.register_answering((transport, from, conn), (user, pw), |n, auth| {
            let headers = format!("{headers}{auth}");
            register(transport, via, n, user, &call_id, contact, &headers)
        })
    }

    /// The call records of the calls ended so far.
    pub fn call_records(&self) -> Vec<CallRecord> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::CallEnded(r) => Some((**r).clone()),
                _ => None,
            })
            .collect()
    }
}

/// Every `method` request in `sent`, with where and how it went.
pub fn requests(
    sent: &[Sent],
    method: &str,
) -> Vec<(SocketAddr, Transport, Option<ConnId>, Request)> {
    sent.iter()
        .filter_map(|s| {
            let r = s.request().filter(|r| r.method.as_str() == method)?;
            Some((s.to, s.transport, s.conn, r))
        })
        .collect()
}

/// Every response in `sent`, with where and how it went.
pub fn responses(sent: &[Sent]) -> Vec<(SocketAddr, Transport, Option<ConnId>, Response)> {
    sent.iter()
        .filter_map(|s| Some((s.to, s.transport, s.conn, s.response()?)))
        .collect()
}

/// The requests in `sent` to `to`, whatever their method.
pub fn all_requests_to(sent: &[Sent], to: &str) -> Vec<Request> {
    sent.iter()
        .filter(|s| s.to == addr(to))
        .filter_map(Sent::request)
        .collect()
}

/// The `method` requests in `sent` to `to`.
pub fn requests_to(sent: &[Sent], to: &str, method: &str) -> Vec<Request> {
    all_requests_to(sent, to)
        .into_iter()
        .filter(|r| r.method.as_str() == method)
        .collect()
}

/// The responses in `sent` to `to`.
pub fn responses_to(sent: &[Sent], to: &str) -> Vec<Response> {
    responses(sent)
        .into_iter()
        .filter(|(a, ..)| *a == addr(to))
        .map(|(.., r)| r)
        .collect()
}

/// The last final response in `sent` to `to`.
pub fn final_to(sent: &[Sent], to: &str) -> Response {
    responses_to(sent, to)
        .into_iter()
        .rfind(|r| r.status >= 200)
        .expect("a final response")
}

/// The status codes of `r`.
pub fn statuses(r: &[Response]) -> Vec<u16> {
    r.iter().map(|r| r.status).collect()
}
