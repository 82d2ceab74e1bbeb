//! Live calls and their ladders (R22): the messages the SIP driver recorded per call
//! (`sip_net::trace`), summarised, one call's full trace, and a live stream of new messages
//! for the console (server-sent events; the token goes in the `Authorization` header, so
//! clients read it with `fetch`, not `EventSource`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::PoisonError;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use serde::{Deserialize, Serialize};
use sip_net::trace::{CallTrace, Direction, TraceEntry, TraceSink};
use tokio::sync::broadcast;

use crate::AppState;
use crate::error::ApiError;

/// `GET /api/v1/calls/{call_id}/trace`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct TraceView {
    call_id: String,
    messages: Vec<TraceEntry>,
}

/// A branch of a call as the trace shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct BranchView {
    peer: String,
    /// `trying`, `ringing`, `answered`, `cancelled`, `failed`.
    state: &'static str,
}

/// One recent call.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct CallView {
    call_id: String,
    first_us: i64,
    last_us: i64,
    messages: usize,
    /// `ringing`, `answered` or `ended`.
    state: &'static str,
    /// Who sent the first INVITE (`ip:port`).
    caller: String,
    branches: Vec<BranchView>,
}

/// A call's state, from its messages: the first INVITE in is the caller; INVITEs out are
/// branches, whose responses (in) and CANCELs (out) move them on.
fn summarise(call_id: &str, entries: &[TraceEntry]) -> CallView {
    let caller: Option<SocketAddr> = entries
        .iter()
        .find(|e| e.dir == Direction::In && e.label == "INVITE")
        .map(|e| e.peer);
    let mut branches: Vec<(SocketAddr, &'static str)> = Vec::new();
    let mut answered = false;
    let mut ended = false;
    for e in entries {
        let is_invite_cseq = e.cseq.ends_with("INVITE");
        match (e.dir, e.label.as_str()) {
            // A retried INVITE (after a 407 challenge) reopens the call.
            (Direction::In, "INVITE") if Some(e.peer) == caller => ended = false,
            (Direction::Out, "INVITE")
                if Some(e.peer) != caller && !branches.iter().any(|b| b.0 == e.peer) =>
            {
                branches.push((e.peer, "trying"));
            }
            (Direction::Out, "CANCEL") => {
                if let Some(b) = branches.iter_mut().find(|b| b.0 == e.peer)
                    && b.1 != "answered"
                {
                    b.1 = "cancelled";
                }
            }
            (_, "BYE") => ended = true,
            (Direction::In, label) if is_invite_cseq => {
                let code: u16 = label
                    .split(' ')
                    .next()
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                if let Some(b) = branches.iter_mut().find(|b| b.0 == e.peer) {
                    b.1 = match code {
                        101..=199 if b.1 == "trying" => "ringing",
                        200..=299 => {
                            answered = true;
                            "answered"
                        }
                        300..=699 if b.1 != "cancelled" => "failed",
                        _ => b.1,
                    };
                }
            }
            (Direction::Out, label)
                if is_invite_cseq
                    && Some(e.peer) == caller
                    && label.starts_with(['3', '4', '5', '6']) =>
            {
                ended = true;
            }
            _ => {}
        }
    }
    CallView {
        call_id: call_id.to_owned(),
        first_us: entries.first().map_or(0, |e| e.at_us),
        last_us: entries.last().map_or(0, |e| e.at_us),
        messages: entries.len(),
        state: if ended {
            "ended"
        } else if answered {
            "answered"
        } else {
            "ringing"
        },
        caller: caller.map(|c| c.to_string()).unwrap_or_default(),
        branches: branches
            .into_iter()
            .map(|(peer, state)| BranchView {
                peer: peer.to_string(),
                state,
            })
            .collect(),
    }
}

fn traces(state: &AppState) -> Result<TraceSink, ApiError> {
    state
        .calls
        .clone()
        .ok_or_else(|| ApiError::not_found("call traces are not recorded by this server"))
}

/// Query of `GET /api/v1/calls`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct CallsQuery {
    /// How many calls, newest first (default 50, at most 1000).
    limit: Option<usize>,
}

/// `GET /api/v1/calls` -> recent calls (newest first) with their branches' states.
#[utoipa::path(get, path = "/api/v1/calls", tag = "calls", params(CallsQuery),
    security(("bearer" = [])),
    responses((status = 200, description = "Recent calls, newest first.", body = Vec<CallView>),
        (status = 400, description = "Bad query string.", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or wrong admin token.", body = crate::error::ErrorBody),
        (status = 404, description = "This server records no call traces.", body = crate::error::ErrorBody),
        (status = 500, description = "Internal error.", body = crate::error::ErrorBody)))]
pub(crate) async fn list(
    State(state): State<AppState>,
    query: Result<Query<CallsQuery>, QueryRejection>,
) -> Result<Json<Vec<CallView>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    // Copy the stored calls under the lock (the SIP loop waits on it), format after.
    let calls: Vec<CallTrace> = {
        let t = traces(&state)?;
        let t = t.traces.lock().unwrap_or_else(PoisonError::into_inner);
        t.calls().rev().take(limit).cloned().collect()
    };
    Ok(Json(
        calls
            .iter()
            .map(|c| summarise(c.call_id(), &c.entries()))
            .collect(),
    ))
}

/// `GET /api/v1/calls/{call_id}/trace` -> every message of the call, in order.
#[utoipa::path(get, path = "/api/v1/calls/{call_id}/trace", tag = "calls",
    params(("call_id" = String, Path, description = "SIP Call-ID")),
    security(("bearer" = [])),
    responses((status = 200, description = "Every message of the call, in order.", body = TraceView),
        (status = 400, description = "Bad Call-ID in the path.", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or wrong admin token.", body = crate::error::ErrorBody),
        (status = 404, description = "No trace of that call (or none recorded).", body = crate::error::ErrorBody),
        (status = 500, description = "Internal error.", body = crate::error::ErrorBody)))]
pub(crate) async fn trace(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<TraceView>, ApiError> {
    let Path(call_id) = path?;
    let call = {
        let t = traces(&state)?;
        let t = t.traces.lock().unwrap_or_else(PoisonError::into_inner);
        t.call(&call_id).cloned()
    };
    let call = call.ok_or_else(|| ApiError::not_found(format!("no trace of call {call_id}")))?;
    Ok(Json(TraceView {
        messages: call.entries(),
        call_id,
    }))
}

/// `GET /api/v1/calls/stream` -> server-sent events, one per recorded message:
/// `data: {"call_id": …, …message…}`.
#[utoipa::path(get, path = "/api/v1/calls/stream", tag = "calls",
    security(("bearer" = [])),
    responses((status = 200, description = "text/event-stream of messages", content_type = "text/event-stream"),
        (status = 401, description = "Missing or wrong admin token.", body = crate::error::ErrorBody),
        (status = 404, description = "This server records no call traces.", body = crate::error::ErrorBody),
        (status = 500, description = "Internal error.", body = crate::error::ErrorBody)))]
pub(crate) async fn stream(
    State(state): State<AppState>,
) -> Result<Sse<impl futures_core::Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let t = traces(&state)?;
    let rx = t.feed.subscribe();
    let s = futures_util::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok((call_id, e)) => {
                    let mut v = serde_json::to_value(&e).unwrap_or_default();
                    v["call_id"] = serde_json::Value::String(call_id);
                    let ev = Event::default().event("message").data(v.to_string());
                    return Some((Ok(ev), rx));
                }
                // A slow reader missed some: carry on with the newest.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Ok(Sse::new(s).keep_alive(
        KeepAlive::new()
            .interval(Duration::from_secs(15))
            .text("keepalive"),
    ))
}

#[cfg(test)]
mod tests {
    use sip_core::proxy::Transport;

    use super::*;

    fn e(dir: Direction, peer: &str, label: &str, cseq: &str) -> TraceEntry {
        TraceEntry {
            at_us: 0,
            dir,
            transport: Transport::Udp,
            peer: peer.parse().unwrap_or_else(|_| unreachable!()),
            label: label.into(),
            cseq: cseq.into(),
            notes: Vec::new(),
        }
    }

    #[test]
    fn states_follow_the_messages() {
        let c = "127.0.0.1:6000";
        let d1 = "127.0.0.1:6001";
        let d2 = "127.0.0.1:6002";
        let mut m = vec![
            e(Direction::In, c, "INVITE", "1 INVITE"),
            e(Direction::Out, d1, "INVITE", "1 INVITE"),
            e(Direction::Out, d2, "INVITE", "1 INVITE"),
            e(Direction::In, d1, "180 Ringing", "1 INVITE"),
        ];
        let v = summarise("x", &m);
        assert_eq!(v.state, "ringing");
        assert_eq!(v.caller, c);
        let states: Vec<_> = v.branches.iter().map(|b| b.state).collect();
        assert_eq!(states, ["ringing", "trying"]);
        m.push(e(Direction::In, d2, "200 OK", "1 INVITE"));
        m.push(e(Direction::Out, d1, "CANCEL", "1 CANCEL"));
        m.push(e(Direction::In, d1, "487 Request Terminated", "1 INVITE"));
        let v = summarise("x", &m);
        assert_eq!(v.state, "answered");
        let states: Vec<_> = v.branches.iter().map(|b| b.state).collect();
        assert_eq!(states, ["cancelled", "answered"]);
        m.push(e(Direction::In, c, "BYE", "2 BYE"));
        assert_eq!(summarise("x", &m).state, "ended");
        // 407 then the authenticated retry: ringing again, not ended.
        let retry = vec![
            e(Direction::In, c, "INVITE", "1 INVITE"),
            e(
                Direction::Out,
                c,
                "407 Proxy Authentication Required",
                "1 INVITE",
            ),
            e(Direction::In, c, "INVITE", "2 INVITE"),
            e(Direction::Out, d1, "INVITE", "2 INVITE"),
        ];
        let v = summarise("y", &retry);
        assert_eq!(v.state, "ringing");
        assert_eq!(v.branches.len(), 1);
    }
}
