//! Per-call message traces for ladder diagrams (the patent's message-sequence figure, Homer /
//! sngrep style): every message the server received or sent, with its time, direction and
//! peer, grouped by Call-ID.
//!
//! Recorded by the driver, where packets really arrive and leave, from the raw bytes: a
//! cheap scan of the start line and a few headers, no full parse.
//!
//! Bounded in bytes, not only in count (R30): whatever a peer sends, the store holds at most
//! its byte budget ([`DEFAULT_BUDGET`], `serve --trace-budget-mib`), the newest [`MAX_CALLS`]
//! calls and [`MAX_PER_CALL`] messages each; the oldest call is forgotten first. A datagram
//! whose start line is not a SIP request or status line is not recorded at all, and every
//! kept field is cut to a few hundred bytes ([`MAX_FIELD`]), so junk with a shared Call-ID
//! costs nothing and a 60 KB header costs at most one short entry.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

/// Calls kept.
pub const MAX_CALLS: usize = 1000;
/// Messages kept per call.
pub const MAX_PER_CALL: usize = 200;
/// Default byte budget of the whole store (64 MiB).
pub const DEFAULT_BUDGET: usize = 64 << 20;
/// Longest label, CSeq, note or Call-ID kept (bytes; longer ones are cut at a character
/// boundary).
pub const MAX_FIELD: usize = 160;

/// Which way a message went, seen from the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Received by the server.
    In,
    /// Sent by the server.
    Out,
}

/// One message of a call.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TraceEntry {
    /// Unix time, microseconds.
    pub at_us: i64,
    /// Received or sent.
    pub dir: Direction,
    /// `UDP` or `TCP`.
    pub transport: &'static str,
    /// The other side's address.
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

    /// Records a message and announces it on the feed.
    pub fn record(&self, dir: Direction, transport: &'static str, peer: SocketAddr, data: &[u8]) {
        let rec = self
            .traces
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .record_with(dir, transport, peer, data, self.feed.receiver_count() > 0);
        if let Some(r) = rec {
            let _ = self.feed.send(r);
        }
    }
}

/// The traces of recent calls.
#[derive(Debug)]
pub struct Traces {
    by_call: HashMap<String, (Vec<TraceEntry>, usize)>,
    order: VecDeque<String>,
    budget: usize,
    used: usize,
}

impl Default for Traces {
    fn default() -> Self {
        Self::with_budget(DEFAULT_BUDGET)
    }
}

/// What one entry costs, roughly: the struct, its strings, and a share of the maps.
fn cost(e: &TraceEntry) -> usize {
    size_of::<TraceEntry>()
        + e.label.len()
        + e.cseq.len()
        + e.notes
            .iter()
            .map(|n| n.len() + size_of::<String>())
            .sum::<usize>()
}

/// Whether `start` is a SIP request line (`METHOD SP URI SP SIP/2.0`) or status line.
fn is_start_line(start: &str) -> bool {
    if let Some(rest) = start.strip_prefix("SIP/2.0 ") {
        return rest.len() >= 3 && rest.as_bytes()[..3].iter().all(u8::is_ascii_digit);
    }
    let mut parts = start.split(' ');
    let (Some(method), Some(uri), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    !method.is_empty()
        && method
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b))
        && uri.contains(':')
        && version.eq_ignore_ascii_case("SIP/2.0")
}

/// `s` cut to at most [`MAX_FIELD`] bytes at a character boundary.
fn cap(s: &str) -> &str {
    if s.len() <= MAX_FIELD {
        return s;
    }
    let mut end = MAX_FIELD;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Traces {
    /// An empty store that keeps at most `budget` bytes (at least one call's worth).
    pub fn with_budget(budget: usize) -> Self {
        Self {
            by_call: HashMap::new(),
            order: VecDeque::new(),
            budget,
            used: 0,
        }
    }

    /// Bytes held now (an estimate of the heap the entries use).
    pub fn used_bytes(&self) -> usize {
        self.used
    }

    /// Records one message (`data` as on the wire). Messages without a Call-ID (keep-alives,
    /// garbage) are not recorded.
    pub fn record(
        &mut self,
        dir: Direction,
        transport: &'static str,
        peer: SocketAddr,
        data: &[u8],
    ) {
        self.record_with(dir, transport, peer, data, false);
    }

    /// [`Traces::record`], returning a copy with its Call-ID when `want_copy` (someone
    /// follows the live feed).
    pub fn record_with(
        &mut self,
        dir: Direction,
        transport: &'static str,
        peer: SocketAddr,
        data: &[u8],
        want_copy: bool,
    ) -> Option<(String, TraceEntry)> {
        let head_end = data
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or(data.len().min(8192));
        let head = std::str::from_utf8(&data[..head_end]).ok()?;
        let mut lines = head.split("\r\n");
        let start = lines.next()?;
        if !is_start_line(start) {
            return None;
        }
        // One pass over the header lines (this runs for every message on the hot path).
        let (mut call_id, mut cseq) = (None, "");
        let (mut reason, mut pai, mut challenge, mut proof) = (None, None, false, false);
        for l in lines {
            let Some((n, v)) = l.split_once(':') else {
                continue;
            };
            let n = n.trim_end();
            let v = v.trim();
            if n.eq_ignore_ascii_case("call-id") || n.eq_ignore_ascii_case("i") {
                call_id.get_or_insert(v);
            } else if n.eq_ignore_ascii_case("cseq") {
                cseq = v;
            } else if n.eq_ignore_ascii_case("reason") {
                reason.get_or_insert(v);
            } else if n.eq_ignore_ascii_case("trust-challenge") {
                challenge = true;
            } else if n.eq_ignore_ascii_case("trust-proof") {
                proof = true;
            } else if n.eq_ignore_ascii_case("p-asserted-identity") {
                pai.get_or_insert(v);
            }
        }
        let call_id = cap(call_id?);
        let label = cap(match start.strip_prefix("SIP/2.0 ") {
            Some(status) => status,
            None => start.split(' ').next().unwrap_or_default(),
        })
        .to_owned();
        let mut notes = Vec::new();
        if let Some(r) = reason {
            notes.push(format!("Reason: {}", cap(r)));
        }
        if challenge {
            notes.push("trust challenge".into());
        }
        if proof {
            notes.push("trust proof".into());
        }
        if let Some(p) = pai {
            notes.push(format!("P-Asserted-Identity: {}", cap(p)));
        }
        let entry = TraceEntry {
            at_us: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
            dir,
            transport,
            peer,
            label,
            cseq: cap(cseq).to_owned(),
            notes,
        };
        let size = cost(&entry);
        let out = want_copy.then(|| (call_id.to_owned(), entry.clone()));
        if let Some((list, bytes)) = self.by_call.get_mut(call_id) {
            if list.len() >= MAX_PER_CALL {
                return None;
            }
            list.push(entry);
            *bytes += size;
            self.used += size;
        } else {
            if self.order.len() >= MAX_CALLS {
                self.evict_oldest();
            }
            let key_cost = 2 * call_id.len() + size_of::<(String, Vec<TraceEntry>)>();
            self.order.push_back(call_id.to_owned());
            self.by_call
                .insert(call_id.to_owned(), (vec![entry], size + key_cost));
            self.used += size + key_cost;
        }
        // Over budget: forget the oldest calls, never the one just written to.
        while self.used > self.budget && self.order.len() > 1 {
            self.evict_oldest();
        }
        out
    }

    fn evict_oldest(&mut self) {
        if let Some(old) = self.order.pop_front()
            && let Some((_, bytes)) = self.by_call.remove(&old)
        {
            self.used = self.used.saturating_sub(bytes);
        }
    }

    /// The messages of one call, in the order they passed.
    pub fn call(&self, call_id: &str) -> Option<&[TraceEntry]> {
        self.by_call.get(call_id).map(|(l, _)| l.as_slice())
    }

    /// Call-IDs kept, oldest first.
    pub fn calls(&self) -> impl Iterator<Item = &str> {
        self.order.iter().map(String::as_str)
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

    #[test]
    fn groups_by_call_and_notes_what_matters() {
        let mut t = Traces::default();
        let caller: SocketAddr = "127.0.0.1:6000".parse().unwrap_or_else(|_| unreachable!());
        let desk: SocketAddr = "127.0.0.1:6001".parse().unwrap_or_else(|_| unreachable!());
        t.record(
            Direction::In,
            "UDP",
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
            "UDP",
            desk,
            &msg("SIP/2.0 180 Ringing", "c2", ""),
        );
        t.record(Direction::In, "UDP", desk, b"\r\n\r\n");
        let c1 = t.call("c1").unwrap_or_default();
        assert_eq!(c1.len(), 2);
        assert_eq!(c1[0].label, "INVITE");
        assert_eq!(
            c1[1].notes[0],
            "Reason: SIP;cause=200;text=\"Call completed elsewhere\""
        );
        assert_eq!(
            t.call("c2").map(|c| c[0].label.as_str()),
            Some("180 Ringing")
        );
        assert_eq!(t.calls().count(), 2);
        let text = ladder_text(c1, &HashMap::new());
        assert!(text.contains("INVITE") && text.contains("CANCEL"), "{text}");
        assert!(
            text.lines().nth(1).is_some_and(|l| l.contains('>')),
            "{text}"
        );
    }

    #[test]
    fn bounded() {
        let mut t = Traces::default();
        let p: SocketAddr = "127.0.0.1:1".parse().unwrap_or_else(|_| unreachable!());
        for i in 0..MAX_CALLS + 5 {
            t.record(
                Direction::In,
                "UDP",
                p,
                &msg("OPTIONS sip:x SIP/2.0", &format!("c{i}"), ""),
            );
        }
        assert_eq!(t.calls().count(), MAX_CALLS);
        assert!(t.call("c0").is_none());
        for _ in 0..MAX_PER_CALL + 5 {
            t.record(
                Direction::In,
                "UDP",
                p,
                &msg("OPTIONS sip:x SIP/2.0", "last", ""),
            );
        }
        assert_eq!(t.call("last").map(<[_]>::len), Some(MAX_PER_CALL));
    }

    /// SECURITY threat 15: junk datagrams sharing a Call-ID, and huge header values, cost
    /// (almost) nothing; the byte budget holds whatever arrives.
    #[test]
    fn junk_and_huge_fields_are_not_kept() {
        let mut t = Traces::with_budget(1 << 20);
        let p: SocketAddr = "127.0.0.1:1".parse().unwrap_or_else(|_| unreachable!());
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
        let key = t.calls().next().unwrap_or_default().to_owned();
        assert_eq!(key.len(), MAX_FIELD);
        let e = &t.call(&key).unwrap_or_default()[0];
        assert!(e.label.len() <= MAX_FIELD && e.notes.iter().all(|n| n.len() < MAX_FIELD + 32));
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
        assert!(t.call(&format!("call-{}", MAX_CALLS - 1)).is_some());
        assert!(t.call("call-0").is_none(), "the oldest went first");
    }
}
