//! The stateful forking proxy and registrar (RFC 3261 §16, §10), Sans-IO.
//!
//! Contract (after `quinn-proto` / `str0m`):
//! - feed every datagram or framed stream message with [`Proxy::handle_receive`], and call
//!   [`Proxy::handle_timeout`] when the instant from [`Proxy::poll_timeout`] has come;
//! - after each call, drain [`Proxy::poll_output`] until it returns `None`: transmissions to
//!   make and events (registrations to persist) to act on, in order.
//!
//! All branches of a fork are produced by one call, back to back, so they leave within
//! microseconds of each other (R11); their [`Transmit::fork`] lets the driver measure it.
//! [`Proxy::stats`] gives the counters and gauges metrics are made of (`stats` module).
//!
//! # SIP over TLS (RFC 3261 §26, RFC 5630)
//! [`Transport::Tls`] is a reliable stream transport like TCP, at its own address
//! ([`ProxyConfig::advertised_tls`], port 5061 by default): Via `SIP/2.0/TLS` with that
//! address, Record-Route `<sip:ADDR;transport=tls;lr>` (a `sips:` URI when the Request-URI
//! is one), and double record-routing when one side of a call is TLS and the other UDP or
//! TCP, as between UDP and TCP. `sips:` URIs mean TLS on port 5061 unless they say
//! otherwise; a `sips:` request must arrive over TLS (416 otherwise) and rings only the
//! contacts registered over TLS (never the gateway).
//!
//! The proxy never opens a TLS connection to a client (only to the gateway, whose key the
//! driver pins, see [`ProxyConfig::trunk_transport`]): doing so safely means verifying the
//! client's certificate against a name, and phones have neither a name nor a certificate
//! we could check. Instead a contact registered over TLS is reached over the connection its
//! REGISTER came over, whatever its Contact says ([`Reach::Connection`], like an RFC 5626
//! flow): the binding is dropped when that connection closes and is not restored after a
//! restart (the client registers again). Requests for a TLS target with no live connection
//! are dropped by the driver. Callers over TLS get their responses over their connection;
//! in-dialog requests reach them over it when they are registered (their Contact is a
//! binding's), not otherwise.

mod caller;
mod calls;
mod directory;
mod fork;
mod ids;
mod keepalive;
mod nat;
mod registrar;
mod relay;
mod request;
mod route;
mod stats;
mod trunk;
mod trust;

use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::auth::{AlgorithmChoice, AuthFailureLimiter, Authenticator, DigestConfig, DigestPolicy};
use crate::message::{HeaderName, Message, Request, Response, parse, reason_phrase};
use crate::transaction::{ClientTx, ServerTx, Timers, TxAction};
pub use calls::{
    BranchOutcome, BranchRecord, CallRecord, LegType, MAX_RECORD_FIELD, MAX_TRACKED_CALLS,
    Released, UNVERIFIED_RECORDS_BURST, UNVERIFIED_RECORDS_PER_MINUTE,
};
use directory::Directory;
pub use directory::{
    Binding, DEVICE_USER_PREFIX, DeviceEntry, MAX_BINDINGS_PER_USER, Reach, SubscriberEntry, Target,
};
use fork::Fork;
use ids::IdGen;
pub use nat::{
    DEFAULT_PRIVATE_RANGES, IpRange, IpRanges, NatConfig, is_stun, parse_ranges,
    stun_mapped_address, stun_response,
};
pub use stats::{CallOutcome, MAX_TRUST_KINDS, ProxyStats};
pub use trunk::{TRUNK_AUTH, Trunk, trunk_auth, verify_trunk_auth};
pub use trust::{TRUST_CHALLENGE, TRUST_PROOF, TrustGate, TrustRefusal};

/// A transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// UDP (unreliable: the transaction layer retransmits).
    Udp,
    /// TCP (reliable).
    Tcp,
    /// TLS over TCP (reliable; RFC 3261 §26, RFC 5630). Toward clients the driver opens no
    /// TLS connection: it answers and forwards over connections they opened (see "SIP over
    /// TLS" in the module docs). It dials only the gateway, whose key it pins
    /// ([`ProxyConfig::trunk_transport`]).
    Tls,
}

impl Transport {
    /// The Via transport token.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Udp => "UDP",
            Self::Tcp => "TCP",
            Self::Tls => "TLS",
        }
    }

    /// The transport from a Via token or a stored name (`UDP`, `tcp`, `TLS`, …; any case).
    pub fn from_token(s: &str) -> Option<Self> {
        [Self::Udp, Self::Tcp, Self::Tls]
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(s.trim()))
    }

    /// Whether the transport is reliable (RFC 3261 §17: no retransmissions).
    pub fn is_reliable(self) -> bool {
        matches!(self, Self::Tcp | Self::Tls)
    }

    /// The port a URI without one means over this transport (RFC 3261 §19.1.2: 5061 for
    /// TLS, 5060 otherwise).
    pub fn default_port(self) -> u16 {
        match self {
            Self::Tls => 5061,
            Self::Udp | Self::Tcp => 5060,
        }
    }
}

/// An opaque id the driver gives each stream connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// Bytes to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where.
    pub target: Target,
    /// What.
    pub payload: Bytes,
    /// The fork this is a branch INVITE of, set on the INVITEs a fork sends; `None` for
    /// everything else. The driver measures how far apart the branches of one fork really
    /// leave (R11, the fork skew metric).
    pub fork: Option<u64>,
}

/// Something the driver must act on besides sending.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A binding was created or refreshed: persist it.
    BindingSaved {
        /// The subscriber.
        user: String,
        /// The binding.
        binding: Box<Binding>,
        /// Time left until it expires (for the store's wall-clock expiry).
        expires_in: Duration,
    },
    /// A binding was removed: delete it from the store.
    BindingRemoved {
        /// The subscriber.
        user: String,
        /// The contact URI.
        contact: String,
    },
    /// A call ended (unanswered, or answered and then hung up): write its CDR (R18).
    CallEnded(Box<CallRecord>),
    /// A trust check failed on a phone's branch (R14): record it for the operator.
    Security {
        /// Stable kind, e.g. `missing-proof`, `wrong-proof`, `locked-out`.
        kind: String,
        /// The called subscriber.
        user: String,
        /// The device.
        device: String,
        /// Call-ID of the call.
        call_id: String,
        /// Human detail (never key material).
        detail: String,
    },
}

/// What [`Proxy::poll_output`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send bytes.
    Transmit(Transmit),
    /// Act on an event.
    Event(Box<Event>),
}

/// Proxy configuration.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The SIP domain we serve (`sip:user@DOMAIN`), also the digest realm.
    pub domain: String,
    /// Other host names that mean "us" (e.g. `localhost`); our own addresses always do.
    pub aliases: Vec<String>,
    /// Our address as written into Via and Record-Route.
    pub advertised: SocketAddr,
    /// Our SIP over TLS address as written into Via and Record-Route (`transport=tls`), when
    /// the driver listens for TLS; `None`: no TLS.
    pub advertised_tls: Option<SocketAddr>,
    /// Transaction timers.
    pub timers: Timers,
    /// Registration expiry bounds and default (seconds).
    pub min_expires: u32,
    /// Longest registration granted.
    pub max_expires: u32,
    /// Expiry when the client names none.
    pub default_expires: u32,
    /// How long a digest nonce is valid.
    pub nonce_ttl: Duration,
    /// 32 random bytes: nonce MAC key and id prefix. The driver draws them from the OS.
    pub secret: [u8; 32],
    /// The IP->PSTN gateway phones with a number are rung through (R15), if any.
    pub trunk: Option<Trunk>,
    /// The transport of the branches to the gateway: TLS in production (`trustring serve`
    /// sets it, and the driver dials the gateway with its key pinned), so the SRTP keys in
    /// the SDP never cross in clear; UDP by default here, for drivers without a TLS client.
    pub trunk_transport: Transport,
    /// Which digest algorithms are offered to whom (R2; default learned per client).
    pub digest: DigestPolicy,
    /// Under `auto`, the products (comma-separated `User-Agent` substrings) offered SHA-256
    /// from their first challenge ([`crate::auth::DEFAULT_SHA256_AGENTS`]).
    pub digest_sha256_agents: String,
    /// NAT handling: private ranges, keep-alive pings (R31).
    pub nat: NatConfig,
    /// Key of the tags in our Record-Route entries (the `relay` module): in-dialog requests
    /// are forwarded only along routes we made. Keep it across restarts so dialogs survive
    /// them; [`ProxyConfig::new`] derives one from `secret`.
    pub route_key: [u8; 32],
}

impl ProxyConfig {
    /// A configuration with defaults for `domain` at `advertised`.
    pub fn new(domain: impl Into<String>, advertised: SocketAddr, secret: [u8; 32]) -> Self {
        Self {
            domain: domain.into(),
            aliases: vec!["localhost".into()],
            advertised,
            advertised_tls: None,
            timers: Timers::default(),
            min_expires: 60,
            max_expires: 3600,
            default_expires: 3600,
            nonce_ttl: Duration::from_secs(300),
            secret,
            trunk: None,
            trunk_transport: Transport::Udp,
            digest: DigestPolicy::Auto,
            digest_sha256_agents: crate::auth::DEFAULT_SHA256_AGENTS.to_owned(),
            nat: NatConfig::default(),
            route_key: route_key_from(&secret),
        }
    }
}

/// A [`ProxyConfig::route_key`] derived from a secret of any length (e.g. a persisted file).
pub fn route_key_from(secret: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"trustring route key\0");
    h.update(secret);
    h.finalize().into()
}

/// Transaction key: branch, sent-by and method (ACK maps to INVITE), RFC 3261 §17.2.3.
/// For RFC 2543 peers (no magic cookie) the branch part is built from the dialog fields.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct TxKey {
    branch: String,
    sent_by: String,
    method: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TimerRef {
    Server(u64),
    Client(u64),
    Fork(u64),
    Keepalive,
}

struct ServerEntry {
    key: TxKey,
    tx: ServerTx,
    peer: Target,
    fork: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientKind {
    /// A branch of fork `fork`, index `branch`.
    Branch { fork: u64, branch: usize },
    /// A request the proxy itself originated (CANCEL, BYE of a late 2xx): responses absorbed.
    Own,
}

struct ClientEntry {
    tx: ClientTx,
    target: Target,
    kind: ClientKind,
    key: (String, String),
}

/// The proxy + registrar state machine.
pub struct Proxy {
    cfg: ProxyConfig,
    directory: Directory,
    auth: Authenticator,
    algorithms: AlgorithmChoice,
    limiter: AuthFailureLimiter,
    pings: keepalive::Pings,
    route_tags: relay::RouteTags,
    ids: IdGen,
    server_keys: HashMap<TxKey, u64>,
    servers: HashMap<u64, ServerEntry>,
    client_keys: HashMap<(String, String), u64>,
    clients: HashMap<u64, ClientEntry>,
    forks: HashMap<u64, Fork>,
    trust: Option<Box<dyn TrustGate>>,
    calls: calls::Calls,
    timers: BinaryHeap<std::cmp::Reverse<(Instant, TimerRef)>>,
    out: VecDeque<Output>,
    next_id: u64,
    stats: stats::Counters,
}

impl Proxy {
    /// A proxy started at `now`.
    pub fn new(cfg: ProxyConfig, now: Instant) -> Self {
        let auth = Authenticator::new(
            DigestConfig {
                nonce_ttl: cfg.nonce_ttl,
                ..DigestConfig::new(cfg.domain.clone())
            },
            cfg.secret,
            now,
        );
        Self {
            pings: keepalive::Pings::default(),
            route_tags: relay::RouteTags::new(&cfg.route_key),
            ids: IdGen::new(&cfg.secret),
            auth,
            algorithms: AlgorithmChoice::with_agents(cfg.digest, &cfg.digest_sha256_agents),
            limiter: AuthFailureLimiter::new(crate::auth::LimiterConfig::default()),
            cfg,
            directory: Directory::default(),
            server_keys: HashMap::new(),
            servers: HashMap::new(),
            client_keys: HashMap::new(),
            clients: HashMap::new(),
            forks: HashMap::new(),
            trust: None,
            calls: calls::Calls::default(),
            timers: BinaryHeap::new(),
            out: VecDeque::new(),
            next_id: 1,
            stats: stats::Counters::default(),
        }
    }

    /// The tag our Record-Route entries carry for the dialogs of `call_id` (the `rr`
    /// parameter; see the `relay` module). For tests and tools that build in-dialog requests.
    pub fn route_tag(&self, call_id: &str) -> String {
        self.route_tags.tag(call_id)
    }

    /// The configuration.
    pub fn config(&self) -> &ProxyConfig {
        &self.cfg
    }

    /// Adds or replaces a subscriber (from the store at start, or the admin API).
    pub fn upsert_subscriber(&mut self, entry: SubscriberEntry) {
        self.directory.upsert(entry);
    }

    /// Removes a subscriber and their bindings (no events: the store has done it).
    pub fn remove_subscriber(&mut self, user: &str) {
        self.directory.remove(user);
    }

    /// Installs the trust gate that challenges phones' branches and checks their proofs.
    /// Without one, phones' bindings never ring (no proof could be checked).
    pub fn set_trust_gate(&mut self, gate: Box<dyn TrustGate>) {
        self.trust = Some(gate);
    }

    /// Adds or replaces an enrolled phone (at start, on enrolment, on/off).
    pub fn upsert_device(&mut self, entry: DeviceEntry) {
        self.directory.upsert_device(entry);
    }

    /// Removes a phone (revoked, R9): its bindings go at once (reported as
    /// [`Event::BindingRemoved`]) and it is never forked to again.
    pub fn remove_device(&mut self, id: &str) {
        for (user, contact) in self.directory.remove_device(id) {
            self.out
                .push_back(Output::Event(Box::new(Event::BindingRemoved {
                    user,
                    contact,
                })));
        }
    }

    /// Restores a binding loaded from the store at start. Where it is reached is decided
    /// again here from its contact and source (its `target` and `reach` are replaced; an
    /// RFC 5626 flow does not survive a restart, the client registers a new one).
    ///
    /// A registration made over TLS is not restored: it was reachable only over its
    /// connection ([`Reach::Connection`]), which died with the old process. It is reported
    /// as [`Event::BindingRemoved`] (the store forgets it) and `false` is returned.
    pub fn restore_binding(&mut self, user: &str, mut binding: Binding, now: Instant) -> bool {
        binding.source.conn = None;
        (binding.target, binding.reach) =
            Binding::locate(&binding.uri, None, binding.source, &self.cfg.nat);
        if binding.reach == Reach::Connection {
            self.out
                .push_back(Output::Event(Box::new(Event::BindingRemoved {
                    user: user.to_owned(),
                    contact: binding.contact,
                })));
            return false;
        }
        if binding.reach != Reach::Direct && binding.target.transport == Transport::Udp {
            self.arm_keepalive(now);
        }
        self.directory.put_binding(user, binding, now)
    }

    /// Live bindings of `user` (for tests and the console).
    pub fn bindings(&self, user: &str, now: Instant) -> Vec<Binding> {
        self.directory.live_bindings(user, now)
    }

    /// Number of live server transactions, client transactions and forks (for metrics and
    /// leak tests).
    pub fn load(&self) -> (usize, usize, usize) {
        (self.servers.len(), self.clients.len(), self.forks.len())
    }

    /// A snapshot of the counters and gauges for metrics; `now` decides which registrations
    /// are live. Costs a walk over the bindings: call it when metrics are asked for, not per
    /// message.
    pub fn stats(&self, now: Instant) -> ProxyStats {
        let (server_transactions, client_transactions, forks) = self.load();
        ProxyStats {
            parse_errors: self.stats.parse_errors,
            auth_failures: self.stats.auth_failures,
            trust_failures: self.stats.trust_failures.clone(),
            calls: self.stats.calls,
            cdrs_shed: self.stats.cdrs_shed,
            registrations: self.directory.live_count(now),
            active_calls: self.active_calls(),
            server_transactions,
            client_transactions,
            forks,
        }
    }

    /// A stream connection closed: stop using it.
    pub fn connection_closed(&mut self, conn: ConnId) {
        for (user, contact) in self.directory.connection_closed(conn) {
            self.out
                .push_back(Output::Event(Box::new(Event::BindingRemoved {
                    user,
                    contact,
                })));
        }
        for s in self.servers.values_mut() {
            if s.peer.conn == Some(conn) {
                s.peer.conn = None;
            }
        }
        for c in self.clients.values_mut() {
            if c.target.conn == Some(conn) {
                c.target.conn = None;
            }
        }
    }

    /// The driver could not open a connection to `addr` over `transport` (refused, timed
    /// out, or a TLS peer with another key than the pinned one): every client transaction
    /// toward it ends now, and the branches among them fail as if they had received 503
    /// (RFC 3261 §16.9) instead of waiting 64*T1 for Timer B; the other branches of their
    /// forks go on.
    pub fn transport_failed(&mut self, transport: Transport, addr: SocketAddr, now: Instant) {
        let dead: Vec<u64> = self
            .clients
            .iter()
            .filter(|(_, c)| c.target.transport == transport && c.target.addr == addr)
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            let Some(e) = self.clients.remove(&id) else {
                continue;
            };
            self.client_keys.remove(&e.key);
            if let ClientKind::Branch { fork, branch } = e.kind {
                self.branch_unreachable(fork, branch, now);
            }
        }
    }

    /// The next output, if any. Call until `None` after every `handle_*`.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`Self::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|r| r.0.0)
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(std::cmp::Reverse((at, r))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            match r {
                TimerRef::Server(id) => self.server_timeout(id, now),
                TimerRef::Client(id) => self.client_timeout(id, now),
                TimerRef::Fork(id) => self.fork_timeout(id, now),
                TimerRef::Keepalive => self.keepalive_round(now),
            }
        }
    }

    /// Handles one received message: a UDP datagram or one framed stream message.
    pub fn handle_receive(
        &mut self,
        now: Instant,
        transport: Transport,
        source: SocketAddr,
        conn: Option<ConnId>,
        data: &[u8],
    ) {
        let peer = Target {
            transport,
            addr: source,
            conn,
        };
        if data.iter().all(|b| matches!(b, b'\r' | b'\n')) {
            // A CRLF keep-alive some clients send over UDP too (RFC 5626 §3.5.1 is for
            // streams; over UDP it is harmless noise): not a message, not an error.
            return;
        }
        if transport == Transport::Udp && is_stun(data) {
            // RFC 5626 §4.4.2: an outbound client's keep-alive on the SIP port.
            if let Some(resp) = stun_response(data, source) {
                self.transmit(peer, Bytes::from(resp));
            }
            return;
        }
        match parse(data) {
            Ok(Message::Request(req)) => self.handle_request(now, peer, req),
            Ok(Message::Response(resp)) => self.handle_response(now, resp),
            Err(e) => {
                self.stats.parse_errors += 1;
                tracing::debug!(%source, reason = e.reason, "unparsable message");
                if let Some(resp) = e.response() {
                    let dest = route::response_target(&resp, peer);
                    self.transmit(dest, Bytes::from(resp.to_bytes()));
                }
            }
        }
    }

    fn alloc_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn transmit(&mut self, target: Target, payload: Bytes) {
        self.out.push_back(Output::Transmit(Transmit {
            target,
            payload,
            fork: None,
        }));
    }

    fn arm(&mut self, at: Option<Instant>, r: TimerRef) {
        if let Some(at) = at {
            self.timers.push(std::cmp::Reverse((at, r)));
        }
    }

    // ---- server transactions ----

    fn server_timeout(&mut self, id: u64, now: Instant) {
        let Some(entry) = self.servers.get_mut(&id) else {
            return;
        };
        let acts = entry.tx.handle_timeout(now);
        let peer = entry.peer;
        let next = entry.tx.next_deadline();
        for a in acts {
            match a {
                TxAction::Retransmit(b) => self.transmit(peer, b),
                TxAction::Timeout => {}
                TxAction::Terminated => {
                    self.remove_server(id, now);
                    return;
                }
            }
        }
        self.arm(next, TimerRef::Server(id));
    }

    fn remove_server(&mut self, id: u64, now: Instant) {
        if let Some(e) = self.servers.remove(&id) {
            self.server_keys.remove(&e.key);
            if let Some(f) = e.fork {
                self.fork_server_gone(f, now);
            }
        }
    }

    /// Sends a response through server transaction `id` (or statelessly if it is gone).
    fn respond(&mut self, id: u64, resp: &Response, now: Instant) {
        let bytes = Bytes::from(resp.to_bytes());
        let Some(entry) = self.servers.get_mut(&id) else {
            return;
        };
        if entry.tx.send_response(resp.status, bytes.clone(), now) {
            let peer = entry.peer;
            let next = entry.tx.next_deadline();
            self.transmit(peer, bytes);
            self.arm(next, TimerRef::Server(id));
        }
    }

    /// Answers request `req` (received in server transaction `id`) with `status`.
    fn reply(&mut self, id: u64, req: &Request, status: u16, now: Instant) {
        let resp = self.make_reply(req, status, reason_phrase(status));
        self.respond(id, &resp, now);
    }

    fn make_reply(&mut self, req: &Request, status: u16, reason: &str) -> Response {
        let tag = self.ids.tag();
        let mut resp = Response::to_request(req, status, reason, Some(&tag));
        resp.headers.push(HeaderName::Server, "trustring");
        resp
    }

    // ---- client transactions ----

    /// Sends `req` to `target` in a new client transaction.
    fn send_request(
        &mut self,
        req: &Request,
        target: Target,
        kind: ClientKind,
        now: Instant,
    ) -> u64 {
        let branch = req
            .top_via()
            .and_then(|v| v.branch().map(str::to_owned))
            .unwrap_or_default();
        let bytes = Bytes::from(req.to_bytes());
        let id = self.alloc_id();
        let invite = req.method == crate::message::Method::Invite;
        let tx = ClientTx::new(
            invite,
            target.transport.is_reliable(),
            bytes.clone(),
            self.cfg.timers,
            now,
        );
        let next = tx.next_deadline();
        let key = (branch, req.method.as_str().to_owned());
        self.client_keys.insert(key.clone(), id);
        self.clients.insert(
            id,
            ClientEntry {
                tx,
                target,
                kind,
                key,
            },
        );
        self.transmit(target, bytes);
        self.arm(next, TimerRef::Client(id));
        id
    }

    fn client_timeout(&mut self, id: u64, now: Instant) {
        let Some(entry) = self.clients.get_mut(&id) else {
            return;
        };
        let acts = entry.tx.handle_timeout(now);
        let (target, kind) = (entry.target, entry.kind);
        let next = entry.tx.next_deadline();
        for a in acts {
            match a {
                TxAction::Retransmit(b) => self.transmit(target, b),
                TxAction::Timeout => {
                    if let ClientKind::Branch { fork, branch } = kind {
                        self.branch_timed_out(fork, branch, now);
                    }
                }
                TxAction::Terminated => {
                    if let Some(e) = self.clients.remove(&id) {
                        self.client_keys.remove(&e.key);
                    }
                    return;
                }
            }
        }
        self.arm(next, TimerRef::Client(id));
    }

    fn handle_response(&mut self, now: Instant, mut resp: Response) {
        if self.keepalive_answered(&resp) {
            return;
        }
        let Some(via) = resp.top_via() else { return };
        let branch = via.branch().unwrap_or_default().to_owned();
        let key = (branch, resp.cseq().method.as_str().to_owned());
        let Some(&id) = self.client_keys.get(&key) else {
            tracing::debug!(
                status = resp.status,
                "response matches no transaction; dropped"
            );
            return;
        };
        let Some(entry) = self.clients.get_mut(&id) else {
            return;
        };
        let pass = entry.tx.handle_response(resp.status, now);
        let next = entry.tx.next_deadline();
        let (kind, target) = (entry.kind, entry.target);
        self.arm(next, TimerRef::Client(id));
        // ACK for a non-2xx final response is part of the INVITE client transaction
        // (§17.1.1.3), sent for every copy of that response.
        if resp.status >= 300
            && resp.cseq().method == crate::message::Method::Invite
            && let ClientKind::Branch { fork, branch } = kind
            && let Some(ack) = self
                .forks
                .get(&fork)
                .and_then(|f| f.non2xx_ack(branch, &resp))
        {
            self.transmit(target, Bytes::from(ack.to_bytes()));
        }
        if !pass {
            return;
        }
        resp.headers.remove_first(&HeaderName::Via);
        if let ClientKind::Branch { fork, branch } = kind {
            self.branch_response(fork, branch, resp, now);
        }
    }
}
