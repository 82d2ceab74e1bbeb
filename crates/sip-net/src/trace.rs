//! Per-call message traces for ladder diagrams (the patent's message-sequence figure, Homer /
//! sngrep style): every message the server received or sent, with its time, direction and
//! peer, grouped by Call-ID.
//!
//! Recorded by the driver, where packets really arrive and leave, from the raw bytes: a
//! cheap scan of the start line and a few headers, no full parse. Bounded: the newest
//! [`MAX_CALLS`] calls, [`MAX_PER_CALL`] messages each; the oldest call is forgotten first.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

/// Calls kept.
pub const MAX_CALLS: usize = 1000;
/// Messages kept per call.
pub const MAX_PER_CALL: usize = 200;

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
    /// An empty sink with a feed of 1024 messages.
    pub fn new() -> Self {
        Self {
            traces: std::sync::Arc::default(),
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
#[derive(Debug, Default)]
pub struct Traces {
    by_call: HashMap<String, Vec<TraceEntry>>,
    order: VecDeque<String>,
}

impl Traces {
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
        let call_id = call_id?;
        let label = match start.strip_prefix("SIP/2.0 ") {
            Some(status) => status.to_owned(),
            None => start.split(' ').next().unwrap_or_default().to_owned(),
        };
        let mut notes = Vec::new();
        if let Some(r) = reason {
            notes.push(format!("Reason: {r}"));
        }
        if challenge {
            notes.push("trust challenge".into());
        }
        if proof {
            notes.push("trust proof".into());
        }
        if let Some(p) = pai {
            notes.push(format!("P-Asserted-Identity: {p}"));
        }
        let entry = TraceEntry {
            at_us: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
            dir,
            transport,
            peer,
            label,
            cseq: cseq.to_owned(),
            notes,
        };
        let out = want_copy.then(|| (call_id.to_owned(), entry.clone()));
        if let Some(list) = self.by_call.get_mut(call_id) {
            if list.len() < MAX_PER_CALL {
                list.push(entry);
                return out;
            }
            return None;
        }
        if self.order.len() >= MAX_CALLS
            && let Some(old) = self.order.pop_front()
        {
            self.by_call.remove(&old);
        }
        self.order.push_back(call_id.to_owned());
        self.by_call.insert(call_id.to_owned(), vec![entry]);
        out
    }

    /// The messages of one call, in the order they passed.
    pub fn call(&self, call_id: &str) -> Option<&[TraceEntry]> {
        self.by_call.get(call_id).map(Vec::as_slice)
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
                &msg("OPTIONS x SIP/2.0", &format!("c{i}"), ""),
            );
        }
        assert_eq!(t.calls().count(), MAX_CALLS);
        assert!(t.call("c0").is_none());
        for _ in 0..MAX_PER_CALL + 5 {
            t.record(
                Direction::In,
                "UDP",
                p,
                &msg("OPTIONS x SIP/2.0", "last", ""),
            );
        }
        assert_eq!(t.call("last").map(<[_]>::len), Some(MAX_PER_CALL));
    }
}
