//! The PSTN side of the demo's ladder: the TR-ISUP messages between the gateway and the
//! phone's line (`docs/isup.md`), rebuilt from what the line reported and when, and spliced
//! into the server's SIP ladder on the same clock (all processes run on this machine, and the
//! server's trace is stamped in Unix microseconds too).
//!
//! The line reports events, not messages, so each message's time is the event that goes with
//! it: IAM at `Incoming`, ACM when the zone's proof was ready (the line sends the ACM right
//! after), ANM at `Answered`, REL and RLC at `Released`.
//!
//! Every SIP lane is headed with the transport the server's trace recorded for that peer
//! ([`lane_names`]), and [`hops`] lists them hop by hop: what was really used, not what
//! was configured.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use pstn::line::LineEvent;
use sip_net::trace::TraceEntry;

/// Width of the time column of `sip_net::trace::ladder_text` (`"{ms:>7.1} "`).
const TIME_COL: usize = 8;

/// Unix microseconds now: the clock of the server's trace.
pub(crate) fn unix_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// The transports the trace recorded for each peer, in the order the peers first appear
/// (`UDP`, `TLS`, or several joined with `+` should a peer have used more than one).
pub(crate) fn peer_transports(entries: &[TraceEntry]) -> Vec<(SocketAddr, String)> {
    let mut seen: Vec<(SocketAddr, Vec<&'static str>)> = Vec::new();
    for e in entries {
        let t = e.transport.as_str();
        match seen.iter_mut().find(|(p, _)| *p == e.peer) {
            Some((_, ts)) if !ts.contains(&t) => ts.push(t),
            Some(_) => {}
            None => seen.push((e.peer, vec![t])),
        }
    }
    seen.into_iter().map(|(p, ts)| (p, ts.join("+"))).collect()
}

/// Lane names for `sip_net::trace::ladder_text`: each peer's name (its address when
/// `names` has none) and the transport the trace recorded for it, e.g. `caller (TLS)`.
pub(crate) fn lane_names(
    entries: &[TraceEntry],
    names: &HashMap<SocketAddr, String>,
) -> HashMap<SocketAddr, String> {
    peer_transports(entries)
        .into_iter()
        .map(|(peer, t)| {
            let name = names
                .get(&peer)
                .cloned()
                .unwrap_or_else(|| peer.to_string());
            (peer, format!("{name} ({t})"))
        })
        .collect()
}

/// One line per SIP hop, `FROM -> TO: TRANSPORT`: the first peer (the caller) sends to the
/// server, the server to every other peer.
pub(crate) fn hops(entries: &[TraceEntry], names: &HashMap<SocketAddr, String>) -> Vec<String> {
    peer_transports(entries)
        .into_iter()
        .enumerate()
        .map(|(i, (peer, t))| {
            let name = names
                .get(&peer)
                .cloned()
                .unwrap_or_else(|| peer.to_string());
            if i == 0 {
                format!("{name} -> trustring: {t}")
            } else {
                format!("trustring -> {name}: {t}")
            }
        })
        .collect()
}

/// One TR-ISUP message on the phone's line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IsupRow {
    /// Unix µs.
    pub(crate) at_us: i64,
    /// `IAM`, `ACM`, `ANM`, `REL`, `RLC`.
    pub(crate) msg: &'static str,
    /// True from the gateway to the line.
    pub(crate) to_line: bool,
    /// What it carried worth showing (trust challenge, proof, cause).
    pub(crate) note: Option<String>,
}

impl IsupRow {
    fn new(at_us: i64, msg: &'static str, to_line: bool, note: Option<String>) -> Self {
        Self {
            at_us,
            msg,
            to_line,
            note,
        }
    }
}

/// The messages behind the line's `events` (each stamped in Unix µs when it arrived);
/// `proofs` are the moments the zone answered a challenge (Unix µs, and whether it gave a
/// proof), in order.
pub(crate) fn isup_rows(events: &[(i64, LineEvent)], proofs: &[(i64, bool)]) -> Vec<IsupRow> {
    let mut rows = Vec::new();
    let mut proofs = proofs.iter().peekable();
    let mut proved = false;
    for (at, e) in events {
        match e {
            LineEvent::Incoming { challenged, .. } => {
                rows.push(IsupRow::new(
                    *at,
                    "IAM",
                    true,
                    challenged.then(|| "trust challenge".to_owned()),
                ));
                // Unchallenged, the ACM leaves at once; challenged, once the zone has proved.
                let (acm_at, ok) = match proofs.peek() {
                    Some((p, ok)) if *challenged && *p >= *at => {
                        proofs.next();
                        (*p, *ok)
                    }
                    _ => (*at, false),
                };
                proved = ok;
                rows.push(IsupRow::new(
                    acm_at,
                    "ACM",
                    false,
                    ok.then(|| "trust proof".to_owned()),
                ));
            }
            LineEvent::Answered { .. } => rows.push(IsupRow::new(
                *at,
                "ANM",
                false,
                proved.then(|| "trust proof".to_owned()),
            )),
            LineEvent::Released {
                cause, by_remote, ..
            } => {
                rows.push(IsupRow::new(
                    *at,
                    "REL",
                    *by_remote,
                    Some(format!("cause {cause}")),
                ));
                rows.push(IsupRow::new(*at, "RLC", !*by_remote, None));
            }
            _ => {}
        }
    }
    rows.sort_by_key(|r| r.at_us);
    rows
}

/// `ladder` (the text `sip_net::trace::ladder_text` made of `entries`: a header, then one
/// row per entry, lanes of equal width after the time column, notes after the last lane)
/// with a lane for the line right of every other, and `rows` drawn between the column
/// named `gateway` and it, in time order among the SIP rows.
///
/// If the ladder is not laid out that way the rows are listed after it instead.
pub(crate) fn splice(
    ladder: &str,
    entries: &[TraceEntry],
    gateway: &str,
    line: &str,
    rows: &[IsupRow],
) -> String {
    let t0 = entries.first().map_or(0, |e| e.at_us);
    let mut lines = ladder.lines();
    let header = lines.next().unwrap_or_default();
    let sip_rows: Vec<&str> = lines.collect();
    let lanes = entries.iter().map(|e| e.peer).collect::<HashSet<_>>().len() + 1;
    let header_len = header.chars().count();
    let width = header_len.saturating_sub(TIME_COL) / lanes;
    let gateway_lane = header
        .find(gateway)
        .map(|i| header[..i].chars().count().saturating_sub(TIME_COL) / width.max(1));
    let (Some(gw), true) = (
        gateway_lane,
        width > 4 && header_len == TIME_COL + lanes * width && sip_rows.len() == entries.len(),
    ) else {
        let mut out = ladder.to_owned();
        for r in rows {
            out.push_str(&plain_row(r, t0, gateway, line));
        }
        return out;
    };
    let notes_at = TIME_COL + lanes * width;
    let mut out = format!("{header}{:^width$}\n", truncate(line, width - 2));
    let mut pending = rows.iter().peekable();
    for (row, e) in sip_rows.iter().zip(entries) {
        while let Some(r) = pending.next_if(|r| r.at_us < e.at_us) {
            out.push_str(&isup_row(r, t0, gw, lanes, width));
        }
        // The SIP row's notes move right, past the new lane.
        let chars: Vec<char> = row.chars().collect();
        if chars.get(notes_at) == Some(&'[') {
            out.extend(&chars[..notes_at]);
            out.push_str(&" ".repeat(width));
            out.extend(&chars[notes_at..]);
        } else {
            out.push_str(row);
        }
        out.push('\n');
    }
    for r in pending {
        out.push_str(&isup_row(r, t0, gw, lanes, width));
    }
    out
}

/// A row in the ladder's style: an arrow from lane `gw` to the new last lane `lanes`.
fn isup_row(r: &IsupRow, t0: i64, gw: usize, lanes: usize, width: usize) -> String {
    let span = (lanes - gw.min(lanes - 1)) * width;
    let mut arrow: Vec<char> = std::iter::repeat_n('-', span.saturating_sub(1)).collect();
    if r.to_line {
        arrow.push('>');
    } else {
        arrow.insert(0, '<');
    }
    let label: Vec<char> = truncate(&format!("ISUP {}", r.msg), span.saturating_sub(4))
        .chars()
        .collect();
    let start = span.saturating_sub(label.len()) / 2;
    for (i, c) in label.into_iter().enumerate() {
        if let Some(slot) = arrow.get_mut(start + i) {
            *slot = c;
        }
    }
    let ms = (r.at_us - t0) as f64 / 1000.0;
    let mut out = format!("{ms:>7.1} ");
    out.push_str(&" ".repeat(gw * width + width / 2));
    out.extend(arrow);
    if let Some(note) = &r.note {
        let row_end = TIME_COL + gw * width + width / 2 + span;
        let lanes_end = TIME_COL + (lanes + 1) * width;
        out.push_str(&" ".repeat(lanes_end.saturating_sub(row_end)));
        out.push_str(&format!("[{note}]"));
    }
    out.push('\n');
    out
}

/// The fallback: one line per message.
fn plain_row(r: &IsupRow, t0: i64, gateway: &str, line: &str) -> String {
    let ms = (r.at_us - t0) as f64 / 1000.0;
    let (from, to) = if r.to_line {
        (gateway, line)
    } else {
        (line, gateway)
    };
    let note = r.note.as_ref().map_or(String::new(), |n| format!(" [{n}]"));
    format!("{ms:>7.1}  ISUP {} {from} -> {to}{note}\n", r.msg)
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
    use pstn::cause::Cause;
    use pstn::msg::Cic;
    use sip_core::proxy::Transport;
    use sip_net::trace::{Direction, TraceEntry, ladder_text};
    use std::collections::HashMap;
    use std::net::SocketAddr;

    fn entry(at_us: i64, dir: Direction, peer: SocketAddr, label: &str, note: &str) -> TraceEntry {
        TraceEntry {
            at_us,
            dir,
            transport: Transport::Tls,
            peer,
            label: label.to_owned(),
            cseq: "1 INVITE".to_owned(),
            notes: if note.is_empty() {
                Vec::new()
            } else {
                vec![note.to_owned()]
            },
        }
    }

    #[test]
    fn the_line_events_become_isup_messages() {
        let cic = Cic(2);
        let events = [
            (
                100,
                LineEvent::Incoming {
                    cic,
                    calling: None,
                    challenged: true,
                },
            ),
            (900, LineEvent::Answered { cic }),
            (
                2000,
                LineEvent::Released {
                    cic,
                    cause: Cause::NORMAL_CLEARING,
                    by_remote: true,
                },
            ),
        ];
        let rows = isup_rows(&events, &[(150, true)]);
        let names: Vec<(&str, bool, i64)> =
            rows.iter().map(|r| (r.msg, r.to_line, r.at_us)).collect();
        assert_eq!(
            names,
            [
                ("IAM", true, 100),
                ("ACM", false, 150),
                ("ANM", false, 900),
                ("REL", true, 2000),
                ("RLC", false, 2000)
            ]
        );
        assert_eq!(rows[0].note.as_deref(), Some("trust challenge"));
        assert_eq!(rows[1].note.as_deref(), Some("trust proof"));
        assert!(rows[3].note.as_deref().is_some_and(|n| n.contains("16")));
    }

    #[test]
    fn isup_rows_land_in_time_order_in_their_own_lane() {
        let caller: SocketAddr = "127.0.0.1:5000".parse().expect("address");
        let gw: SocketAddr = "127.0.0.1:5070".parse().expect("address");
        let entries = [
            entry(1_000, Direction::In, caller, "INVITE", ""),
            entry(1_200, Direction::Out, gw, "INVITE", "trust challenge"),
            entry(3_000, Direction::In, gw, "200 OK", "trust proof"),
        ];
        let names = HashMap::from([(caller, "caller".to_owned()), (gw, "gateway".to_owned())]);
        let ladder = ladder_text(&entries, &names);
        let rows = [
            IsupRow::new(1_500, "IAM", true, Some("trust challenge".into())),
            IsupRow::new(2_900, "ANM", false, None),
        ];
        let out = splice(&ladder, &entries, "gateway", "phone line", &rows);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 6, "{out}");
        assert!(lines[0].contains("phone line"), "{out}");
        assert!(
            lines[3].contains("ISUP IAM") && lines[3].contains('>'),
            "{out}"
        );
        assert!(
            lines[4].contains("<") && lines[4].contains("ISUP ANM"),
            "{out}"
        );
        // The ISUP arrows start at the gateway's lane, where the SIP arrows end.
        let gw_end = lines[2].find('>').expect("the gateway INVITE's arrow");
        let iam_start = lines[3].find('-').expect("the IAM's arrow");
        assert_eq!(iam_start, gw_end + 1, "{out}");
        // SIP notes moved past the new lane, after the ISUP notes' column.
        let note_col = lines[2].find('[').expect("the INVITE's note");
        assert_eq!(
            note_col,
            lines[3].find('[').expect("the IAM's note"),
            "{out}"
        );
        assert!(
            note_col > lines[3].find('>').expect("the IAM's arrow head"),
            "{out}"
        );
    }

    #[test]
    fn lanes_and_hops_carry_the_recorded_transport() {
        let caller: SocketAddr = "127.0.0.1:40000".parse().expect("address");
        let desk: SocketAddr = "127.0.0.1:40002".parse().expect("address");
        let gw: SocketAddr = "127.0.0.1:5070".parse().expect("address");
        let mut udp = entry(1_200, Direction::Out, gw, "INVITE", "");
        udp.transport = Transport::Udp;
        let entries = [
            entry(1_000, Direction::In, caller, "INVITE", ""),
            entry(1_100, Direction::Out, desk, "INVITE", ""),
            udp,
            entry(1_300, Direction::In, desk, "180 Ringing", ""),
            entry(1_400, Direction::In, gw, "180 Ringing", ""),
        ];
        let names = HashMap::from([
            (caller, "caller".to_owned()),
            (desk, "desktop".to_owned()),
            (gw, "gateway".to_owned()),
        ]);
        assert_eq!(
            hops(&entries, &names),
            [
                "caller -> trustring: TLS",
                "trustring -> desktop: TLS",
                "trustring -> gateway: UDP+TLS"
            ]
        );
        let lanes = lane_names(&entries, &names);
        assert_eq!(lanes[&caller], "caller (TLS)");
        let header = ladder_text(&entries, &lanes);
        assert!(
            header.contains("desktop (TLS)") && header.contains("gateway (UDP+TLS)"),
            "{header}"
        );
        // The ISUP lane still finds the gateway's.
        let rows = [IsupRow::new(1_250, "IAM", true, None)];
        let out = splice(&header, &entries, "gateway", "phone line", &rows);
        assert!(
            out.lines()
                .any(|l| l.contains("ISUP IAM") && l.contains('>')),
            "{out}"
        );
    }

    #[test]
    fn an_unexpected_layout_lists_the_rows_after_the_ladder() {
        let rows = [IsupRow::new(0, "IAM", true, None)];
        let out = splice("odd\n", &[], "gateway", "line", &rows);
        assert!(out.starts_with("odd\n") && out.contains("ISUP IAM gateway -> line"));
    }
}
