//! The gateway's own leg records (SPEC R18): as a telephone exchange does, it writes one
//! record per call it carried, in its own hash-chained store, each record signed with the
//! gateway's own key and the signed head kept beside it (`GATEWAY_DATA/cdr-signing-key` and
//! `cdr-head`, see `docs/cdr.md`; `trustring cdr verify|export|public-key --data GATEWAY_DATA`
//! read them). A record of a leg the server forked carries the server's
//! SIP Call-ID, which links it to the server's CDR of the whole call; its `contact` is the
//! number, as in the server's PSTN leg (`sip:+NUMBER@GATEWAY;user=phone`).

use std::sync::mpsc;
use std::time::{SystemTime, UNIX_EPOCH};

use store::{Cdr, CdrLeg, Store};

/// Unix milliseconds now.
pub(crate) fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// What the exchange knows of a leg while it runs.
#[derive(Debug, Clone)]
pub(crate) struct LegRecord {
    /// SIP Call-ID (links to the server's CDR), or a local reference for line-to-line calls.
    pub(crate) call_id: String,
    /// Calling party (SIP From URI, or `tel:` number).
    pub(crate) caller: String,
    /// The called number.
    pub(crate) called: String,
    /// The enrolled phone on the line, if it said.
    pub(crate) device: Option<String>,
    /// Who pays (R19): the called line's user for server legs, the caller's number for
    /// direct PSTN calls.
    pub(crate) billing_entity: String,
    pub(crate) setup_ms: i64,
    pub(crate) rang_ms: Option<i64>,
    pub(crate) answer_ms: Option<i64>,
    /// `answered`, `busy`, `no-answer`, `cancelled`, `cancelled-elsewhere`, `voicemail`,
    /// `refused`, `failed`.
    pub(crate) outcome: Option<&'static str>,
    /// SIP status given to the trunk (or the ISUP cause mapped to one).
    pub(crate) status: Option<u16>,
    /// `Q.850 cause N (text)`.
    pub(crate) cause: String,
    /// `caller`, `callee` or `gateway`.
    pub(crate) released_by: &'static str,
    /// When the call ended (set when the record is handed to the writer).
    pub(crate) end_ms: Option<i64>,
}

impl LegRecord {
    pub(crate) fn new(call_id: String, caller: String, called: String, billing: String) -> Self {
        Self {
            call_id,
            caller,
            called,
            device: None,
            billing_entity: billing,
            setup_ms: unix_ms(),
            rang_ms: None,
            answer_ms: None,
            outcome: None,
            status: None,
            cause: String::new(),
            released_by: "gateway",
            end_ms: None,
        }
    }

    fn into_cdr(self) -> Cdr {
        let end_ms = self.end_ms.unwrap_or_else(unix_ms);
        let duration_ms = self.answer_ms.map_or(0, |a| (end_ms - a).max(0));
        let answered = self.outcome == Some("answered");
        Cdr {
            id: 0,
            call_id: self.call_id,
            caller: self.caller,
            called: format!("tel:{}", self.called),
            setup_ms: self.setup_ms,
            answer_ms: self.answer_ms,
            end_ms,
            duration_ms,
            final_status: self.status.unwrap_or(if answered { 200 } else { 500 }),
            released_by: self.released_by.into(),
            release_cause: self.cause,
            answered_by: answered.then_some(0),
            legs: vec![CdrLeg {
                contact: format!("tel:{}", self.called),
                device: self.device,
                leg_type: "pstn".into(),
                rang_at_ms: self.rang_ms,
                outcome: self.outcome.unwrap_or("failed").into(),
                status: self.status,
                billing_entity: self.billing_entity,
                billable_ms: if answered { duration_ms } else { 0 },
            }],
            prev_hash: String::new(),
            hash: String::new(),
            sig: None,
        }
    }
}

/// Appends records on their own thread (a fsync per record must not stall the media).
pub(crate) struct Recorder {
    tx: mpsc::Sender<LegRecord>,
    metrics: std::sync::Arc<crate::GatewayMetrics>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Recorder {
    pub(crate) fn start(
        store: Box<dyn Store>,
        metrics: std::sync::Arc<crate::GatewayMetrics>,
    ) -> Self {
        let (tx, rx) = mpsc::channel::<LegRecord>();
        let thread = std::thread::Builder::new()
            .name("gateway-records".into())
            .spawn(move || {
                for r in rx {
                    let call_id = r.call_id.clone();
                    match store.append_cdr(&r.into_cdr()) {
                        Ok(c) => tracing::info!(id = c.id, call_id, "leg record written"),
                        Err(e) => tracing::error!(call_id, error = %e, "leg record NOT written"),
                    }
                }
            })
            .inspect_err(|e| tracing::error!(error = %e, "no leg record writer"))
            .ok();
        Self {
            tx,
            metrics,
            thread,
        }
    }

    /// Writes what is queued, then stops.
    pub(crate) fn close(self) {
        let Self { tx, thread, .. } = self;
        drop(tx);
        if let Some(t) = thread {
            let _ = t.join();
        }
    }

    pub(crate) fn write(&self, r: LegRecord) {
        self.metrics.ended(r.outcome.unwrap_or("failed"));
        if self.tx.send(r).is_err() {
            tracing::error!("leg record writer gone");
        }
    }
}
