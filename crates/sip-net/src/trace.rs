//! Per-call message traces for ladder diagrams (the patent's message-sequence figure, Homer /
//! sngrep style): every message the server received or sent, with its time, direction,
//! transport and peer, grouped by Call-ID.
//!
//! Recorded by the driver, where packets really arrive and leave, for every message on the
//! SIP loop, so recording is made cheap and reading pays instead (issue #14 item 3): a
//! scan of the start line and a few headers (no parse, no UTF-8 check of the whole head),
//! then, under the lock, a hash of the Call-ID, one fixed-size record appended to the call
//! and the few kept bytes (label, CSeq, Reason, P-Asserted-Identity) appended to the call's
//! one text buffer. No allocation per message and none per call once [`MAX_CALLS`] are kept
//! (the evicted call's buffers are reused). [`TraceEntry`], the one type the API serves, the
//! console draws and `trustring demo` reads back, is built only when someone reads a call
//! ([`CallTrace::entries`]) or follows the live feed.
//!
//! Bounded in bytes, not only in count (R30): whatever a peer sends, the store holds at most
//! its byte budget ([`DEFAULT_BUDGET`], `serve --trace-budget-mib`), the newest [`MAX_CALLS`]
//! calls and [`MAX_PER_CALL`] messages each; the oldest call is forgotten first. A datagram
//! whose start line is not a SIP request or status line is not recorded at all, and every
//! kept field is cut to a few hundred bytes ([`MAX_FIELD`]), so junk with a shared Call-ID
//! costs nothing and a 60 KB header costs at most one short entry.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use hashbrown::{DefaultHashBuilder, HashTable};
use serde::{Deserialize, Serialize};
use sip_core::proxy::Transport;

/// Calls kept.
pub const MAX_CALLS: usize = 1000;
/// Messages kept per call.
pub const MAX_PER_CALL: usize = 200;
/// Default byte budget of the whole store (64 MiB).
pub const DEFAULT_BUDGET: usize = 64 << 20;
/// Longest label, CSeq, note or Call-ID kept (bytes; longer ones are cut at a character
/// boundary).
pub const MAX_FIELD: usize = 160;

// A stored field's length fits a byte, and a call's text (four fields a message) a u32.
const _: () = assert!(MAX_FIELD <= u8::MAX as usize);
const _: () = assert!(MAX_PER_CALL * 4 * MAX_FIELD <= u32::MAX as usize);

/// Which way a message went, seen from the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Received by the server.
    In,
    /// Sent by the server.
    Out,
}

/// `sip_core`'s [`Transport`] on the wire (`UDP`, `TCP`, `TLS`): a serde "remote" shim, since
/// sip-core (Sans-IO) does not depend on serde; never built, only its derives are used.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
#[serde(remote = "Transport", rename_all = "UPPERCASE")]
#[schema(as = Transport)]
enum TransportDef {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
    /// TLS over TCP.
    Tls,
}

/// One message of a call, as the admin API serves it (`GET /api/v1/calls/{id}/trace`, the
/// live feed), the console draws it and `trustring demo` reads it back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TraceEntry {
    /// Unix time, microseconds.
    pub at_us: i64,
    /// `in` (received by the server) or `out` (sent).
    pub dir: Direction,
    /// `UDP`, `TCP` or `TLS`.
    #[serde(with = "TransportDef")]
    #[schema(value_type = TransportDef)]
    pub transport: Transport,
    /// The other side, `ip:port`.
    #[schema(value_type = String)]
    pub peer: SocketAddr,
    /// `INVITE`, `180 Ringing`, ... (the request method, or status and reason).
    pub label: String,
    /// CSeq, e.g. `1 INVITE`.
    pub cseq: String,
    /// What a reader of the ladder wants to know: `Reason: …`, `trust challenge`,
    /// `trust proof`, `P-Asserted-Identity: …`.
    pub notes: Vec<String>,
}

/// Where the driver records messages: the traces, and a feed of each new message (for live
/// views; nobody listening costs nothing).
#[derive(Clone)]
pub struct TraceSink {
    /// Traces of recent calls.
    pub traces: std::sync::Arc<std::sync::Mutex<Traces>>,
    /// Every recorded message as `(call_id, entry)`.
    pub feed: tokio::sync::broadcast::Sender<(String, TraceEntry)>,
}

impl std::fmt::Debug for TraceSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TraceSink")
    }
}

impl Default for TraceSink {
    fn default() -> Self {
        Self::new()
    }
}

impl TraceSink {
    /// An empty sink with a feed of 1024 messages and the [`DEFAULT_BUDGET`].
    pub fn new() -> Self {
        Self::with_budget(DEFAULT_BUDGET)
    }

    /// An empty sink that keeps at most `budget` bytes of traces.
    pub fn with_budget(budget: usize) -> Self {
        Self {
            traces: std::sync::Arc::new(std::sync::Mutex::new(Traces::with_budget(budget))),
            feed: tokio::sync::broadcast::channel(1024).0,
        }
    }

    /// Records a message (`transport` as [`Transport::as_str`] spells it) and announces it on
    /// the feed. The scan and the clock run before the lock, so the SIP loop holds it only
    /// for the append.
    pub fn record(&self, dir: Direction, transport: &'static str, peer: SocketAddr, data: &[u8]) {
        let Some(m) = scan(data) else {
            return;
        };
        let (at_us, transport) = (now_us(), transport_of(transport));
        let kept = self
            .traces
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(&m, at_us, dir, transport, peer);
        if kept && self.feed.receiver_count() > 0 {
            let entry = m.entry(at_us, dir, transport, peer);
            // Kept, so its Call-ID is UTF-8.
            let call_id = String::from_utf8_lossy(m.call_id).into_owned();
            let _ = self.feed.send((call_id, entry));
        }
    }
}

/// Unix time now, microseconds.
fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// The transport named by `t` (the driver passes [`Transport::as_str`]; anything else is
/// taken for UDP, the default transport of SIP).
fn transport_of(t: &str) -> Transport {
    match t {
        "UDP" => Transport::Udp,
        "TCP" => Transport::Tcp,
        "TLS" => Transport::Tls,
        other => Transport::from_token(other).unwrap_or(Transport::Udp),
    }
}

/// What [`scan`] found in a message: slices of it, each already cut to [`MAX_FIELD`].
struct Scanned<'a> {
    /// Checked to be UTF-8 only when it starts a new call (an existing call's is).
    call_id: &'a [u8],
    label: &'a [u8],
    cseq: &'a [u8],
    reason: Option<&'a [u8]>,
    pai: Option<&'a [u8]>,
    challenge: bool,
    proof: bool,
}

impl Scanned<'_> {
    /// The message as the API serves it (for the live feed).
    fn entry(
        &self,
        at_us: i64,
        dir: Direction,
        transport: Transport,
        peer: SocketAddr,
    ) -> TraceEntry {
        TraceEntry {
            at_us,
            dir,
            transport,
            peer,
            label: text(self.label),
            cseq: text(self.cseq),
            notes: notes(self.reason, self.challenge, self.proof, self.pai),
        }
    }
}

/// Stored bytes as text (they were cut at character boundaries; anything not UTF-8 shows as
/// U+FFFD).
fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The notes of a message, in the order the ladder shows them.
fn notes(reason: Option<&[u8]>, challenge: bool, proof: bool, pai: Option<&[u8]>) -> Vec<String> {
    let mut notes = Vec::new();
    if let Some(r) = reason {
        notes.push(format!("Reason: {}", String::from_utf8_lossy(r)));
    }
    if challenge {
        notes.push("trust challenge".into());
    }
    if proof {
        notes.push("trust proof".into());
    }
    if let Some(p) = pai {
        notes.push(format!(
            "P-Asserted-Identity: {}",
            String::from_utf8_lossy(p)
        ));
    }
    notes
}

/// The next line of `rest` (without its CR LF), advancing `rest` past it.
fn next_line<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    if rest.is_empty() {
        return None;
    }
    let (line, after) = match memchr::memchr(b'\n', rest) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (*rest, &[][..]),
    };
    *rest = after;
    Some(line.strip_suffix(b"\r").unwrap_or(line))
}

/// The value of header line `line` if its name is `name` (any case), trimmed.
fn value<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let (n, rest) = line.split_at_checked(name.len())?;
    if !n.eq_ignore_ascii_case(name) {
        return None;
    }
    Some(rest.trim_ascii_start().strip_prefix(b":")?.trim_ascii())
}

/// The start line, Call-ID and noted headers of `data`, or `None` for what is not recorded:
/// no SIP start line or no Call-ID (one that is not UTF-8 is refused when it would start a
/// call). One pass over the header
/// lines; each line's first byte decides which names to compare.
fn scan(data: &[u8]) -> Option<Scanned<'_>> {
    let mut rest = data;
    let start = next_line(&mut rest)?;
    if !is_start_line(start) {
        return None;
    }
    let label = match start.strip_prefix(b"SIP/2.0 ") {
        Some(status) => status,
        None => start.split(|&b| b == b' ').next().unwrap_or_default(),
    };
    let (mut call_id, mut cseq) = (None, &[][..]);
    let (mut reason, mut pai, mut challenge, mut proof) = (None, None, false, false);
    while let Some(line) = next_line(&mut rest) {
        let Some(&first) = line.first() else {
            break; // The blank line: the body follows.
        };
        match first | 0x20 {
            b'c' => {
                if let Some(v) = value(line, b"call-id") {
                    call_id.get_or_insert(v);
                } else if let Some(v) = value(line, b"cseq") {
                    cseq = v;
                }
            }
            b'i' => {
                if let Some(v) = value(line, b"i") {
                    call_id.get_or_insert(v);
                }
            }
            b'r' => {
                if let Some(v) = value(line, b"reason") {
                    reason.get_or_insert(v);
                }
            }
            b't' => {
                challenge |= value(line, b"trust-challenge").is_some();
                proof |= value(line, b"trust-proof").is_some();
            }
            b'p' => {
                if let Some(v) = value(line, b"p-asserted-identity") {
                    pai.get_or_insert(v);
                }
            }
            _ => {}
        }
    }
    Some(Scanned {
        call_id: cap(call_id?),
        label: cap(label),
        cseq: cap(cseq),
        reason: reason.map(cap),
        pai: pai.map(cap),
        challenge,
        proof,
    })
}

/// Whether `start` is a SIP request line (`METHOD SP URI SP SIP/2.0`) or status line.
fn is_start_line(start: &[u8]) -> bool {
    if let Some(rest) = start.strip_prefix(b"SIP/2.0 ") {
        return rest
            .get(..3)
            .is_some_and(|c| c.iter().all(u8::is_ascii_digit));
    }
    let mut parts = start.split(|&b| b == b' ');
    let (Some(method), Some(uri), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    !method.is_empty()
        && method
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(b))
        && uri.contains(&b':')
        && version.eq_ignore_ascii_case(b"SIP/2.0")
}

/// `s` cut to at most [`MAX_FIELD`] bytes, not inside a UTF-8 character.
fn cap(s: &[u8]) -> &[u8] {
    if s.len() <= MAX_FIELD {
        return s;
    }
    let mut end = MAX_FIELD;
    // A continuation byte (10xxxxxx) at `end` means a character straddles the cut.
    while end > 0 && s.get(end).is_some_and(|b| b & 0xC0 == 0x80) {
        end -= 1;
    }
    &s[..end]
}

/// Flag bits of a [`Rec`].
const HAS_REASON: u8 = 1;
const HAS_PAI: u8 = 2;
const CHALLENGE: u8 = 4;
const PROOF: u8 = 8;

/// One stored message: fixed size, no heap of its own; its fields' bytes (label, CSeq,
/// Reason, P-Asserted-Identity, in that order) are in the call's text buffer at `text_at`.
#[derive(Debug, Clone, Copy)]
struct Rec {
    at_us: i64,
    peer: SocketAddr,
    text_at: u32,
    /// Lengths of the label, CSeq, Reason and P-Asserted-Identity.
    lens: [u8; 4],
    dir: Direction,
    transport: Transport,
    flags: u8,
}

/// Initial capacities of a new call's records and text: a forked call's 20 messages take two
/// doublings, a one-message call (an OPTIONS ping) little.
const FIRST_RECS: usize = 8;
const FIRST_TEXT: usize = 256;
/// An evicted call's buffers are reused for the next new call unless bigger than this (a
/// long call's would keep holding its memory).
const REUSE_RECS: usize = 64;
const REUSE_TEXT: usize = 4096;
/// What a call costs beyond its buffers: its slot in the ring and in the index.
const CALL_OVERHEAD: usize = size_of::<CallTrace>() + size_of::<(u64, u64)>() + 1;

/// The messages of one call, in the order they passed, as stored.
#[derive(Debug, Clone)]
pub struct CallTrace {
    call_id: String,
    /// Of `call_id`, with the store's hasher (to find it in the index when evicting).
    hash: u64,
    recs: Vec<Rec>,
    text: Vec<u8>,
}

impl CallTrace {
    fn new() -> Self {
        Self {
            call_id: String::new(),
            hash: 0,
            recs: Vec::with_capacity(FIRST_RECS),
            text: Vec::with_capacity(FIRST_TEXT),
        }
    }

    /// An evicted call made ready for reuse: emptied, and small again if it grew big.
    fn recycle(mut self) -> Self {
        self.call_id.clear();
        self.recs.clear();
        self.text.clear();
        if self.recs.capacity() > REUSE_RECS {
            self.recs = Vec::with_capacity(FIRST_RECS);
        }
        if self.text.capacity() > REUSE_TEXT {
            self.text = Vec::with_capacity(FIRST_TEXT);
        }
        self
    }

    /// The Call-ID.
    pub fn call_id(&self) -> &str {
        &self.call_id
    }

    /// Messages kept.
    pub fn len(&self) -> usize {
        self.recs.len()
    }

    /// Whether no message is kept (never, for a call in the store).
    pub fn is_empty(&self) -> bool {
        self.recs.is_empty()
    }

    /// Unix time of the first and the last message, microseconds.
    pub fn span_us(&self) -> Option<(i64, i64)> {
        Some((self.recs.first()?.at_us, self.recs.last()?.at_us))
    }

    /// The messages, in the order they passed, as the API serves them (built now: the
    /// store keeps only their raw pieces).
    pub fn entries(&self) -> Vec<TraceEntry> {
        self.recs.iter().map(|r| self.entry(r)).collect()
    }

    fn entry(&self, r: &Rec) -> TraceEntry {
        let mut at = r.text_at as usize;
        let mut field = |len: u8| {
            let end = at + usize::from(len);
            let b = self.text.get(at..end).unwrap_or_default();
            at = end;
            b
        };
        let [label, cseq, reason, pai] = r.lens.map(&mut field);
        TraceEntry {
            at_us: r.at_us,
            dir: r.dir,
            transport: r.transport,
            peer: r.peer,
            label: text(label),
            cseq: text(cseq),
            notes: notes(
                (r.flags & HAS_REASON != 0).then_some(reason),
                r.flags & CHALLENGE != 0,
                r.flags & PROOF != 0,
                (r.flags & HAS_PAI != 0).then_some(pai),
            ),
        }
    }

    fn push(
        &mut self,
        m: &Scanned<'_>,
        at_us: i64,
        dir: Direction,
        transport: Transport,
        peer: SocketAddr,
    ) {
        let text_at = u32::try_from(self.text.len()).unwrap_or(u32::MAX);
        let (reason, pai) = (m.reason.unwrap_or_default(), m.pai.unwrap_or_default());
        let mut lens = [0u8; 4];
        for (len, f) in lens.iter_mut().zip([m.label, m.cseq, reason, pai]) {
            // Every field was cut to MAX_FIELD, which fits a byte.
            *len = u8::try_from(f.len()).unwrap_or(u8::MAX);
            self.text.extend_from_slice(&f[..usize::from(*len)]);
        }
        let flags = [
            (m.reason.is_some(), HAS_REASON),
            (m.pai.is_some(), HAS_PAI),
            (m.challenge, CHALLENGE),
            (m.proof, PROOF),
        ]
        .into_iter()
        .fold(0, |flags, (on, bit)| if on { flags | bit } else { flags });
        self.recs.push(Rec {
            at_us,
            peer,
            text_at,
            lens,
            dir,
            transport,
            flags,
        });
    }

    /// What the call holds: its buffers by capacity, its Call-ID, its slots.
    fn cost(&self) -> usize {
        CALL_OVERHEAD
            + self.call_id.capacity()
            + self.recs.capacity() * size_of::<Rec>()
            + self.text.capacity()
    }
}

/// The traces of recent calls: a ring of calls, oldest first, and an index of their
/// Call-IDs (each Call-ID is stored once, in its call).
pub struct Traces {
    calls: VecDeque<CallTrace>,
    /// Sequence number of `calls[0]`; a call's number never changes, so the index holds it.
    first: u64,
    /// `(hash of the Call-ID, sequence number)` of every call.
    index: HashTable<(u64, u64)>,
    hasher: DefaultHashBuilder,
    budget: usize,
    used: usize,
}

impl std::fmt::Debug for Traces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traces")
            .field("calls", &self.calls.len())
            .field("used", &self.used)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

impl Default for Traces {
    fn default() -> Self {
        Self::with_budget(DEFAULT_BUDGET)
    }
}

impl Traces {
    /// An empty store that keeps at most `budget` bytes (at least one call's worth).
    pub fn with_budget(budget: usize) -> Self {
        Self {
            calls: VecDeque::new(),
            first: 0,
            index: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
            budget,
            used: 0,
        }
    }

    /// Bytes held now (the heap the calls' buffers use, by capacity, and their slots).
    pub fn used_bytes(&self) -> usize {
        self.used
    }

    /// Records one message (`data` as on the wire, `transport` as [`Transport::as_str`]
    /// spells it). Messages without a SIP start line or a Call-ID (keep-alives, garbage)
    /// are not recorded.
    pub fn record(
        &mut self,
        dir: Direction,
        transport: &'static str,
        peer: SocketAddr,
        data: &[u8],
    ) {
        if let Some(m) = scan(data) {
            self.insert(&m, now_us(), dir, transport_of(transport), peer);
        }
    }

    /// Appends a scanned message to its call (a new call when its Call-ID is not kept);
    /// `false` when its call already holds [`MAX_PER_CALL`] messages, or when it would start
    /// a call with a Call-ID that is not UTF-8.
    fn insert(
        &mut self,
        m: &Scanned<'_>,
        at_us: i64,
        dir: Direction,
        transport: Transport,
        peer: SocketAddr,
    ) -> bool {
        let hash = self.hasher.hash_one(m.call_id);
        let (calls, first) = (&self.calls, self.first);
        let found = self.index.find(hash, |&(h, seq)| {
            h == hash
                && usize::try_from(seq - first)
                    .ok()
                    .and_then(|i| calls.get(i))
                    .is_some_and(|c| c.call_id.as_bytes() == m.call_id)
        });
        let found = found.and_then(|&(_, seq)| usize::try_from(seq - first).ok());
        if let Some(call) = found.and_then(|i| self.calls.get_mut(i)) {
            if call.recs.len() >= MAX_PER_CALL {
                return false;
            }
            let before = call.cost();
            call.push(m, at_us, dir, transport, peer);
            self.used += call.cost() - before;
        } else {
            let Ok(call_id) = std::str::from_utf8(m.call_id) else {
                return false;
            };
            let mut call = if self.calls.len() >= MAX_CALLS {
                self.evict_oldest()
                    .map_or_else(CallTrace::new, CallTrace::recycle)
            } else {
                CallTrace::new()
            };
            call.call_id.push_str(call_id);
            call.hash = hash;
            call.push(m, at_us, dir, transport, peer);
            self.used += call.cost();
            let seq = self.first + self.calls.len() as u64;
            self.calls.push_back(call);
            self.index.insert_unique(hash, (hash, seq), |&(h, _)| h);
        }
        // Over budget: forget the oldest calls, never the last one left.
        while self.used > self.budget && self.calls.len() > 1 {
            self.evict_oldest();
        }
        true
    }

    /// Forgets the oldest call, returning it.
    fn evict_oldest(&mut self) -> Option<CallTrace> {
        let old = self.calls.pop_front()?;
        let seq = self.first;
        self.first += 1;
        if let Ok(slot) = self.index.find_entry(old.hash, |&(_, s)| s == seq) {
            slot.remove();
        }
        self.used = self.used.saturating_sub(old.cost());
        Some(old)
    }

    /// The call with this Call-ID.
    pub fn call(&self, call_id: &str) -> Option<&CallTrace> {
        let hash = self.hasher.hash_one(call_id.as_bytes());
        let &(_, seq) = self.index.find(hash, |&(h, seq)| {
            h == hash
                && usize::try_from(seq - self.first)
                    .ok()
                    .and_then(|i| self.calls.get(i))
                    .is_some_and(|c| c.call_id == call_id)
        })?;
        self.calls.get(usize::try_from(seq - self.first).ok()?)
    }

    /// The calls kept, oldest first.
    pub fn calls(&self) -> impl DoubleEndedIterator<Item = &CallTrace> + ExactSizeIterator {
        self.calls.iter()
    }
}

/// A text ladder diagram of `entries`: one column per peer with the server in the middle,
/// one row per message with its time in milliseconds since the first.
pub fn ladder_text(entries: &[TraceEntry], names: &HashMap<SocketAddr, String>) -> String {
    let Some(t0) = entries.first().map(|e| e.at_us) else {
        return String::new();
    };
    let mut peers: Vec<SocketAddr> = Vec::new();
    for e in entries {
        if !peers.contains(&e.peer) {
            peers.push(e.peer);
        }
    }
    let name = |a: &SocketAddr| names.get(a).cloned().unwrap_or_else(|| a.to_string());
    // The first peer (the caller) on the left of the server, the rest to the right.
    let (left, right) = peers.split_at(peers.len().min(1));
    const W: usize = 26;
    let mut cols: Vec<String> = left.iter().map(&name).collect();
    cols.push("trustring".into());
    cols.extend(right.iter().map(&name));
    let mut out = String::new();
    out.push_str("    ms  ");
    for c in &cols {
        out.push_str(&format!("{:^W$}", truncate(c, W - 2)));
    }
    out.push('\n');
    let server_col = left.len();
    for e in entries {
        let Some(p) = peers.iter().position(|x| *x == e.peer) else {
            continue;
        };
        let peer_col = if p < left.len() { p } else { p + 1 };
        let (a, b) = (peer_col.min(server_col), peer_col.max(server_col));
        let rightward = match e.dir {
            Direction::In => peer_col < server_col,
            Direction::Out => peer_col > server_col,
        };
        let label = e.label.clone();
        let span = (b - a) * W;
        let mut arrow: Vec<char> = std::iter::repeat_n('-', span.saturating_sub(1)).collect();
        if rightward {
            arrow.push('>');
        } else {
            arrow.insert(0, '<');
        }
        let text: Vec<char> = truncate(&label, span.saturating_sub(4)).chars().collect();
        let start = (span.saturating_sub(text.len())) / 2;
        for (i, c) in text.iter().enumerate() {
            if let Some(slot) = arrow.get_mut(start + i) {
                *slot = *c;
            }
        }
        let ms = (e.at_us - t0) as f64 / 1000.0;
        out.push_str(&format!("{ms:>7.1} "));
        out.push_str(&" ".repeat(a * W + W / 2));
        out.extend(arrow);
        // Notes after the row, beyond the last lane, so they are never cut.
        if !e.notes.is_empty() {
            let row_end = 8 + a * W + W / 2 + span;
            let lanes_end = 8 + cols.len() * W;
            out.push_str(&" ".repeat(lanes_end.saturating_sub(row_end)));
            out.push_str(&format!("[{}]", e.notes.join("; ")));
        }
        out.push('\n');
    }
    out
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        s.chars().take(n.saturating_sub(1)).chain(['…']).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(start: &str, call: &str, extra: &str) -> Vec<u8> {
        format!("{start}\r\nVia: x\r\nCall-ID: {call}\r\nCSeq: 1 INVITE\r\n{extra}Content-Length: 0\r\n\r\n")
            .into_bytes()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|_| unreachable!())
    }

    fn entries(t: &Traces, call_id: &str) -> Vec<TraceEntry> {
        t.call(call_id).map(CallTrace::entries).unwrap_or_default()
    }

    /// What the store accounts equals what its calls hold (so eviction gives back exactly
    /// what recording took).
    fn accounted(t: &Traces) -> usize {
        t.calls().map(CallTrace::cost).sum()
    }

    #[test]
    fn groups_by_call_and_notes_what_matters() {
        let mut t = Traces::default();
        let caller = addr("127.0.0.1:6000");
        let desk = addr("127.0.0.1:6001");
        t.record(
            Direction::In,
            "TLS",
            caller,
            &msg("INVITE sip:alice@x SIP/2.0", "c1", ""),
        );
        t.record(
            Direction::Out,
            "UDP",
            desk,
            &msg(
                "CANCEL sip:alice@y SIP/2.0",
                "c1",
                "Reason: SIP;cause=200;text=\"Call completed elsewhere\"\r\n",
            ),
        );
        t.record(
            Direction::In,
            "TCP",
            desk,
            &msg("SIP/2.0 180 Ringing", "c2", ""),
        );
        t.record(Direction::In, "UDP", desk, b"\r\n\r\n");
        let c1 = entries(&t, "c1");
        assert_eq!(c1.len(), 2);
        assert_eq!(
            (c1[0].dir, c1[0].transport, c1[0].peer),
            (Direction::In, Transport::Tls, caller)
        );
        assert_eq!(
            (c1[0].label.as_str(), c1[0].cseq.as_str()),
            ("INVITE", "1 INVITE")
        );
        assert!(c1[0].notes.is_empty());
        assert_eq!(
            (c1[1].dir, c1[1].transport, c1[1].label.as_str()),
            (Direction::Out, Transport::Udp, "CANCEL")
        );
        assert_eq!(
            c1[1].notes,
            ["Reason: SIP;cause=200;text=\"Call completed elsewhere\""]
        );
        assert!(c1[0].at_us <= c1[1].at_us && c1[0].at_us > 1_700_000_000_000_000);
        let c2 = entries(&t, "c2");
        assert_eq!(
            (c2[0].label.as_str(), c2[0].transport),
            ("180 Ringing", Transport::Tcp)
        );
        let ids: Vec<&str> = t.calls().map(CallTrace::call_id).collect();
        assert_eq!(ids, ["c1", "c2"], "oldest first");
        assert_eq!(t.call("c1").map(CallTrace::len), Some(2));
        assert!(t.call("c3").is_none());
        let text = ladder_text(&c1, &HashMap::new());
        assert!(text.contains("INVITE") && text.contains("CANCEL"), "{text}");
        assert!(
            text.lines().nth(1).is_some_and(|l| l.contains('>')),
            "{text}"
        );
    }

    /// Every note in the ladder's order, header names in any case, the compact Call-ID, the
    /// first Call-ID/Reason/P-Asserted-Identity and the last CSeq (as before the change).
    #[test]
    fn notes_names_and_compact_forms() {
        let mut t = Traces::default();
        let gw = addr("[2001:db8::1]:5070");
        let m = "SIP/2.0 200 OK\r\nVIA: x\r\ni : c9\r\ncall-id: other\r\ncseq: 1 CANCEL\r\nCSeq:  7 INVITE \r\n\
                 p-asserted-identity: <sip:+15551230001@x>\r\nTRUST-PROOF: sig=1\r\nReason: Q.850;cause=16\r\n\
                 Reason: second\r\nTrust-Challenge: n=2\r\nP-Asserted-Identity: <tel:+1>\r\n\
                 Content-Length: 20\r\n\r\nCall-ID: in-the-body\r\n";
        t.record(Direction::In, "TLS", gw, m.as_bytes());
        assert!(t.call("other").is_none() && t.call("in-the-body").is_none());
        let e = &entries(&t, "c9")[0];
        assert_eq!(
            (e.label.as_str(), e.cseq.as_str(), e.peer),
            ("200 OK", "7 INVITE", gw)
        );
        assert_eq!(
            e.notes,
            [
                "Reason: Q.850;cause=16",
                "trust challenge",
                "trust proof",
                "P-Asserted-Identity: <sip:+15551230001@x>"
            ]
        );
        // Bare LF line ends, and an empty Reason still noted.
        t.record(
            Direction::Out,
            "UDP",
            gw,
            b"BYE sip:a@b SIP/2.0\nCall-ID: c9\nCSeq: 2 BYE\nReason:\n\n",
        );
        let e = &entries(&t, "c9")[1];
        assert_eq!((e.label.as_str(), e.cseq.as_str()), ("BYE", "2 BYE"));
        assert_eq!(e.notes, ["Reason: "]);
    }

    /// What is not a SIP message with a Call-ID is not recorded.
    #[test]
    fn only_sip_messages_with_a_call_id() {
        let mut t = Traces::default();
        let p = addr("127.0.0.1:1");
        for junk in [
            &b""[..],
            b"\r\n\r\n",
            b"INVITE sip:a@b SIP/2.0\r\nCSeq: 1 INVITE\r\n\r\n",
            b"INVITE sip:a@b SIP/2.0 extra\r\nCall-ID: j\r\n\r\n",
            b"INVITE nocolon SIP/2.0\r\nCall-ID: j\r\n\r\n",
            b"INV(TE sip:a@b SIP/2.0\r\nCall-ID: j\r\n\r\n",
            b"SIP/2.0 OK\r\nCall-ID: j\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nCall-ID: j\r\n\r\n",
            b"INVITE sip:a@b SIP/2.0\r\nCall-ID: \xff\xfe\r\n\r\n",
            b"INVITE sip:a@b SIP/2.0\r\n\r\nCall-ID: j\r\n",
        ] {
            t.record(Direction::In, "UDP", p, junk);
        }
        assert_eq!(t.calls().len(), 0);
        assert_eq!(t.used_bytes(), 0);
        t.record(
            Direction::In,
            "UDP",
            p,
            b"options sip:a@b sip/2.0\r\nCall-ID: j\r\n\r\n",
        );
        assert_eq!(entries(&t, "j")[0].label, "options");
    }

    #[test]
    fn bounded() {
        let mut t = Traces::default();
        let p = addr("127.0.0.1:1");
        for i in 0..MAX_CALLS + 5 {
            t.record(
                Direction::In,
                "UDP",
                p,
                &msg("OPTIONS sip:x SIP/2.0", &format!("c{i}"), ""),
            );
        }
        assert_eq!(t.calls().count(), MAX_CALLS);
        assert!(t.call("c0").is_none() && t.call("c4").is_none());
        assert!(t.call("c5").is_some());
        assert_eq!(t.calls().next().map(CallTrace::call_id), Some("c5"));
        for _ in 0..MAX_PER_CALL + 5 {
            t.record(
                Direction::In,
                "UDP",
                p,
                &msg("OPTIONS sip:x SIP/2.0", "last", ""),
            );
        }
        assert_eq!(t.call("last").map(CallTrace::len), Some(MAX_PER_CALL));
        assert_eq!(t.used_bytes(), accounted(&t));
    }

    /// Past MAX_CALLS every new call reuses the evicted one's buffers: the index still finds
    /// every kept call (and no evicted one), their messages are their own, and the bytes
    /// accounted are what the calls hold.
    #[test]
    fn eviction_keeps_the_index_and_the_accounts_right() {
        let mut t = Traces::default();
        let p = addr("127.0.0.1:1");
        let calls = 3 * MAX_CALLS + 7;
        for i in 0..calls {
            // Calls of different lengths, so reused buffers hold other calls' leftovers.
            for n in 0..1 + i % 5 {
                t.record(
                    Direction::In,
                    "UDP",
                    p,
                    &msg(
                        "INFO sip:x SIP/2.0",
                        &format!("c{i}"),
                        &format!("Reason: r{i}-{n}\r\n"),
                    ),
                );
            }
        }
        assert_eq!(t.calls().len(), MAX_CALLS);
        assert_eq!(t.used_bytes(), accounted(&t));
        for i in [0, calls - MAX_CALLS - 1] {
            assert!(t.call(&format!("c{i}")).is_none(), "c{i} was evicted");
        }
        for i in [calls - MAX_CALLS, calls - 2, calls - 1] {
            let e = entries(&t, &format!("c{i}"));
            assert_eq!(e.len(), 1 + i % 5);
            let notes: Vec<&str> = e.iter().map(|e| e.notes[0].as_str()).collect();
            let want: Vec<String> = (0..1 + i % 5)
                .map(|n| format!("Reason: r{i}-{n}"))
                .collect();
            assert_eq!(notes, want);
        }
    }

    /// SECURITY threat 15: junk datagrams sharing a Call-ID, and huge header values, cost
    /// (almost) nothing; the byte budget holds whatever arrives.
    #[test]
    fn junk_and_huge_fields_are_not_kept() {
        let mut t = Traces::with_budget(1 << 20);
        let p = addr("127.0.0.1:1");
        let big = "x".repeat(60_000);
        for _ in 0..150 {
            // Not a SIP start line: not recorded at all.
            let junk = format!("{big} junk\r\nCall-ID: shared\r\nCSeq: {big}\r\n\r\n");
            t.record(Direction::In, "UDP", p, junk.as_bytes());
        }
        assert!(t.call("shared").is_none());
        assert_eq!(t.used_bytes(), 0);
        // A real request with 60 KB fields: kept, cut short.
        let m = msg(
            &format!("{big} sip:a@b SIP/2.0"),
            &format!("c-{big}"),
            &format!("Reason: {big}\r\nP-Asserted-Identity: {big}\r\n"),
        );
        t.record(Direction::In, "UDP", p, &m);
        assert!(t.used_bytes() < 2_000, "{}", t.used_bytes());
        let key = t
            .calls()
            .next()
            .map(|c| c.call_id().to_owned())
            .unwrap_or_default();
        assert_eq!(key.len(), MAX_FIELD);
        let e = &entries(&t, &key)[0];
        assert_eq!(e.label.len(), MAX_FIELD);
        assert!(e.notes.iter().all(|n| n.len() < MAX_FIELD + 32));
        // Many calls: the budget holds, the newest calls stay.
        for i in 0..MAX_CALLS {
            for _ in 0..20 {
                t.record(
                    Direction::In,
                    "UDP",
                    p,
                    &msg("INVITE sip:a@b SIP/2.0", &format!("call-{i}"), ""),
                );
            }
        }
        assert!(t.used_bytes() <= 1 << 20, "{}", t.used_bytes());
        assert_eq!(t.used_bytes(), accounted(&t));
        assert!(t.call(&format!("call-{}", MAX_CALLS - 1)).is_some());
        assert!(t.call("call-0").is_none(), "the oldest went first");
    }

    /// Fields are cut at a character boundary, never inside one.
    #[test]
    fn cut_at_character_boundaries() {
        let mut t = Traces::default();
        let p = addr("127.0.0.1:1");
        // 159 ASCII bytes then a 3-byte character straddling MAX_FIELD.
        let long = format!("{}€€", "a".repeat(MAX_FIELD - 1));
        let m = msg(
            &format!("SIP/2.0 486 {}€€", "a".repeat(MAX_FIELD - 5)),
            &long,
            &format!("Reason: {long}\r\n"),
        );
        t.record(Direction::In, "UDP", p, &m);
        let id = "a".repeat(MAX_FIELD - 1);
        let e = &entries(&t, &id)[0];
        assert_eq!(e.label, format!("486 {}", "a".repeat(MAX_FIELD - 5)));
        assert_eq!(e.notes, [format!("Reason: {id}")]);
    }

    /// The live feed carries what the store then serves; nobody listening, nothing is sent.
    #[test]
    fn the_feed_carries_what_the_store_serves() {
        let sink = TraceSink::new();
        let p = addr("127.0.0.1:7");
        sink.record(
            Direction::In,
            "UDP",
            p,
            &msg("INVITE sip:a@b SIP/2.0", "f", ""),
        );
        let mut rx = sink.feed.subscribe();
        sink.record(
            Direction::Out,
            "TLS",
            p,
            &msg("SIP/2.0 100 Trying", "f", "Trust-Challenge: n\r\n"),
        );
        sink.record(Direction::Out, "TLS", p, b"not sip\r\nCall-ID: f\r\n\r\n");
        let stored = sink
            .traces
            .lock()
            .map(|t| entries(&t, "f"))
            .unwrap_or_default();
        assert_eq!(stored.len(), 2);
        let Ok((call_id, fed)) = rx.try_recv() else {
            panic!("one message on the feed");
        };
        assert_eq!((call_id.as_str(), &fed), ("f", &stored[1]));
        assert_eq!(fed.notes, ["trust challenge"]);
        assert!(rx.try_recv().is_err(), "junk is not fed");
    }

    /// The JSON the API serves and `trustring demo` reads back: the console's field names
    /// and values, and the same entry back.
    #[test]
    fn json_is_what_the_console_reads() {
        let e = TraceEntry {
            at_us: 1_765_000_000_000_001,
            dir: Direction::Out,
            transport: Transport::Tls,
            peer: addr("[::1]:5061"),
            label: "INVITE".into(),
            cseq: "1 INVITE".into(),
            notes: vec!["trust challenge".into()],
        };
        let json = serde_json::to_value(&e).unwrap_or_default();
        assert_eq!(
            json,
            serde_json::json!({
                "at_us": 1_765_000_000_000_001_i64, "dir": "out", "transport": "TLS",
                "peer": "[::1]:5061", "label": "INVITE", "cseq": "1 INVITE",
                "notes": ["trust challenge"]
            })
        );
        let back: Result<TraceEntry, _> = serde_json::from_value(json);
        assert_eq!(back.ok(), Some(e));
        let udp = serde_json::json!({"at_us": 0, "dir": "in", "transport": "UDP",
            "peer": "127.0.0.1:1", "label": "BYE", "cseq": "2 BYE", "notes": []});
        let udp: Result<TraceEntry, _> = serde_json::from_value(udp);
        assert_eq!(
            udp.map(|e| (e.dir, e.transport)).ok(),
            Some((Direction::In, Transport::Udp))
        );
    }

    /// The OpenAPI schema names the transport and direction values.
    #[test]
    fn schema_lists_the_values() {
        use utoipa::{PartialSchema, ToSchema};
        let mut nested = Vec::new();
        TraceEntry::schemas(&mut nested);
        let schema = |name: &str| {
            nested
                .iter()
                .find(|(n, _)| n == name)
                .and_then(|(_, s)| serde_json::to_value(s).ok())
                .unwrap_or_default()
        };
        assert_eq!(
            schema("Transport")["enum"],
            serde_json::json!(["UDP", "TCP", "TLS"])
        );
        assert_eq!(
            schema("Direction")["enum"],
            serde_json::json!(["in", "out"])
        );
        let entry = serde_json::to_value(TraceEntry::schema()).unwrap_or_default();
        assert_eq!(entry["properties"]["peer"]["type"], "string");
        assert_eq!(
            entry["properties"]["transport"]["$ref"],
            "#/components/schemas/Transport"
        );
        assert_eq!(entry["required"].as_array().map(Vec::len), Some(7));
    }
}
