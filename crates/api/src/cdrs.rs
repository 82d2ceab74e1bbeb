//! Call detail records and billing totals (SPEC R18, R19): `GET /api/v1/cdrs`, the API twin
//! of `trustring cdr export --format json`.
//!
//! The period filters on setup time, `from` inclusive and `to` exclusive, each Unix
//! milliseconds or a date `YYYY-MM-DD` (its midnight UTC); [`parse_time`] is the one parser
//! of both the API and the command line. Totals are computed by `store::billing::totals` at
//! the per-minute rates the server was started with (`serve --rate-voip/--rate-pstn`).
//!
//! The records come in pages: at most `limit` (default [`PAGE_DEFAULT`], at most
//! [`PAGE_MAX`]), oldest first with ids above the cursor `after` (`order=desc`: newest first,
//! ids below it); `next` is the cursor of the following page (`null` on the last), as for
//! `GET /api/v1/security-events`. The totals cover the whole period and come with the first
//! page only (no `after`): they are computed by reading the period [`TOTALS_CHUNK`] records at
//! a time, so memory stays bounded however long the period.
//!
//! [`CdrView`] and friends are the store's types field for field (the store's types carry no
//! schema), so the JSON is exactly what `cdr export --format json` prints.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};
use store::billing::{EntityTotal, Rates, Totals};
use store::{Cdr, CdrLeg};
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::subscribers::read;

/// Longest accepted `entity` filter (an enterprise or user name).
const ENTITY_MAX: usize = 64;
/// Records per page when `limit` is not given.
pub(crate) const PAGE_DEFAULT: u32 = 100;
/// Most records per page (a larger `limit` is lowered to it).
pub(crate) const PAGE_MAX: u32 = 1000;
/// Records read at a time to compute the totals of a period.
const TOTALS_CHUNK: u32 = 1000;

/// A time that is neither Unix milliseconds nor a valid `YYYY-MM-DD` date.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}`: expected YYYY-MM-DD (UTC) or Unix milliseconds")]
pub struct TimeError(String);

/// A point in time of a CDR period: Unix milliseconds (`1796083200000`), or a date
/// `YYYY-MM-DD`, meaning its midnight UTC (`2026-12-01` is `1796083200000`). The date must
/// exist (no `2026-02-30`).
pub fn parse_time(s: &str) -> Result<i64, TimeError> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    let date = time::Date::parse(s, DATE).map_err(|_| TimeError(s.chars().take(40).collect()))?;
    Ok(date.midnight().assume_utc().unix_timestamp() * 1000)
}

/// `YYYY-MM-DD`, zero-padded, nothing else.
const DATE: &[time::format_description::BorrowedFormatItem<'_>] =
    time::macros::format_description!("[year repr:full]-[month]-[day]");

/// Query of `GET /api/v1/cdrs`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct CdrQuery {
    /// Start of the period (setup time), inclusive: `YYYY-MM-DD` (UTC) or Unix
    /// milliseconds. Default: the beginning of time.
    #[param(example = "2026-12-01")]
    from: Option<String>,
    /// End of the period, exclusive: `YYYY-MM-DD` (UTC) or Unix milliseconds. Default: no
    /// end.
    #[param(example = "2027-01-01")]
    to: Option<String>,
    /// Only records with a leg billed to this entity (an enterprise or a user); the totals
    /// then cover those records.
    #[param(example = "acme")]
    entity: Option<String>,
    /// Records per page: 1 to 1000 (a larger value is lowered to 1000, 0 raised to 1).
    /// Default 100.
    #[param(example = 100)]
    limit: Option<u32>,
    /// Cursor: the `next` of the previous page; this page has the records after it in the
    /// page order (`asc`: larger ids, `desc`: smaller ones). Without it the first page, with
    /// the period's totals.
    #[param(example = 0, minimum = 0)]
    after: Option<i64>,
    /// `asc` (default: oldest first) or `desc` (newest first).
    #[param(inline)]
    order: Option<CdrOrder>,
}

/// Order of a page of CDRs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum CdrOrder {
    /// Oldest first (increasing ids).
    #[default]
    Asc,
    /// Newest first (decreasing ids).
    Desc,
}

/// One leg (branch) of a call.
// The store's `CdrLeg`, field for field.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = CdrLeg)]
pub(crate) struct CdrLegView {
    /// The contact rung.
    contact: String,
    /// The enrolled phone behind it, if any.
    #[schema(required = true)]
    device: Option<String>,
    /// `voip` (SIP to a device) or `pstn` (through the gateway to the phone's number).
    leg_type: String,
    /// When the leg was rung, Unix milliseconds (`null`: never sent).
    #[schema(required = true)]
    rang_at_ms: Option<i64>,
    /// `answered`, `cancelled-elsewhere`, `cancelled`, `busy`, `no-answer`, `declined`,
    /// `failed-trust`, `revoked`, `not-rung`, `failed`.
    outcome: String,
    /// Its final SIP status, if any.
    #[schema(required = true)]
    status: Option<u16>,
    /// Who pays for this leg (R19): the enterprise for VoIP legs, the user for PSTN legs.
    billing_entity: String,
    /// Billable time of this leg, milliseconds (the answered leg's talk time; 0 otherwise).
    billable_ms: i64,
}

impl From<CdrLeg> for CdrLegView {
    fn from(l: CdrLeg) -> Self {
        Self {
            contact: l.contact,
            device: l.device,
            leg_type: l.leg_type,
            rang_at_ms: l.rang_at_ms,
            outcome: l.outcome,
            status: l.status,
            billing_entity: l.billing_entity,
            billable_ms: l.billable_ms,
        }
    }
}

/// A call detail record (R18): append-only, hash-chained to the record before it.
// The store's `Cdr`, field for field.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Cdr)]
pub(crate) struct CdrView {
    /// Assigned by the store, increasing.
    id: i64,
    /// SIP Call-ID.
    call_id: String,
    /// The caller (From URI).
    caller: String,
    /// The called identity (address of record).
    #[schema(example = "sip:alice@example.com")]
    called: String,
    /// Setup (INVITE received), Unix milliseconds.
    setup_ms: i64,
    /// Answer, Unix milliseconds (`null`: not answered).
    #[schema(required = true)]
    answer_ms: Option<i64>,
    /// End, Unix milliseconds.
    end_ms: i64,
    /// Talk time (end - answer), milliseconds; 0 if unanswered.
    duration_ms: i64,
    /// The final status the caller got.
    final_status: u16,
    /// `caller`, `callee` or `proxy`.
    released_by: String,
    /// Why it ended (`BYE`, `486 Busy Here`, `ring timeout`, ...).
    release_cause: String,
    /// Index into `legs` of the answering leg (`null`: not answered).
    #[schema(required = true)]
    answered_by: Option<usize>,
    /// Every leg, in fork order.
    legs: Vec<CdrLegView>,
    /// Hash of the previous record (64 zeros for the first).
    prev_hash: String,
    /// SHA-256 over the previous hash and every stored column of the record, its billing
    /// entities included, hex (`docs/cdr.md`).
    hash: String,
    /// Ed25519 signature of (id, hash) by the server's CDR signing key, hex (`null`: written
    /// before signing began). `trustring cdr public-key` prints the key.
    #[schema(required = true)]
    sig: Option<String>,
}

impl From<Cdr> for CdrView {
    fn from(c: Cdr) -> Self {
        Self {
            id: c.id,
            call_id: c.call_id,
            caller: c.caller,
            called: c.called,
            setup_ms: c.setup_ms,
            answer_ms: c.answer_ms,
            end_ms: c.end_ms,
            duration_ms: c.duration_ms,
            final_status: c.final_status,
            released_by: c.released_by,
            release_cause: c.release_cause,
            answered_by: c.answered_by,
            legs: c.legs.into_iter().map(CdrLegView::from).collect(),
            prev_hash: c.prev_hash,
            hash: c.hash,
            sig: c.sig,
        }
    }
}

/// What one billing entity owes for the period (R19).
// The store's `billing::EntityTotal`, field for field.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = EntityTotal)]
pub(crate) struct EntityTotalView {
    /// The billing entity (enterprise or user).
    entity: String,
    /// Calls with a billable (answered) leg billed to it.
    calls: u64,
    /// Billable seconds, rounded up per leg.
    billable_secs: u64,
    /// Amount at the per-minute rates, rounded to 4 decimals.
    amount: f64,
}

impl From<EntityTotal> for EntityTotalView {
    fn from(t: EntityTotal) -> Self {
        Self {
            entity: t.entity,
            calls: t.calls,
            billable_secs: t.billable_secs,
            amount: t.amount,
        }
    }
}

/// Per-minute rates by leg type the totals were computed at.
// The store's `billing::Rates`, field for field.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Rates)]
pub(crate) struct RatesView {
    /// Rate of VoIP legs, per minute (`serve --rate-voip`).
    voip_per_min: f64,
    /// Rate of PSTN legs, per minute (`serve --rate-pstn`).
    pstn_per_min: f64,
}

impl From<Rates> for RatesView {
    fn from(r: Rates) -> Self {
        Self {
            voip_per_min: r.voip_per_min,
            pstn_per_min: r.pstn_per_min,
        }
    }
}

/// Body of `GET /api/v1/cdrs`: one page of the records of the period and, with the first
/// page, the totals per billing entity.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CdrReport {
    /// Up to `limit` records whose setup time is in the period, after the cursor, in the page
    /// order.
    records: Vec<CdrView>,
    /// The cursor of the next page (pass it as `after`, with the same `order`); `null` on the
    /// last page.
    #[schema(required = true)]
    next: Option<i64>,
    /// Over the whole period, per billing entity, sorted by entity; only with the first page
    /// (no `after`), `null` on the others.
    #[schema(required = true)]
    totals: Option<Vec<EntityTotalView>>,
    /// The rates the totals were computed at.
    rates: RatesView,
}

/// Checks `from`/`to`/`entity`; returns `[from, to)` in Unix ms and the entity.
fn period(q: &CdrQuery) -> Result<(i64, i64, Option<String>), ApiError> {
    let from = q
        .from
        .as_deref()
        .map(parse_time)
        .transpose()
        .map_err(|e| ApiError::invalid(format!("from: {e}")))?
        .unwrap_or(0);
    let to =
        q.to.as_deref()
            .map(parse_time)
            .transpose()
            .map_err(|e| ApiError::invalid(format!("to: {e}")))?
            .unwrap_or(i64::MAX);
    if from > to {
        return Err(ApiError::invalid("from: must not be after to"));
    }
    if let Some(e) = &q.entity {
        let len = e.chars().count();
        if !(1..=ENTITY_MAX).contains(&len) || e.chars().any(char::is_control) {
            return Err(ApiError::invalid(format!(
                "entity: must be 1 to {ENTITY_MAX} printable characters"
            )));
        }
    }
    Ok((from, to, q.entity.clone()))
}

/// `GET /api/v1/cdrs[?from=&to=&entity=&limit=&after=&order=]`: one page of the CDRs of a
/// period, with the totals per billing entity on the first page.
#[utoipa::path(
    get,
    path = "/api/v1/cdrs",
    tag = "cdrs",
    operation_id = "list_cdrs",
    security(("bearer" = [])),
    params(CdrQuery),
    responses(
        (status = 200, description = "Up to `limit` records of the period (setup time in \
            [from, to)) after the cursor `after`, oldest first (`order=desc`: newest first), \
            `next`, the cursor of the following page (`null` on the last), and with the first \
            page the totals per billing entity at the server's rates.", body = CdrReport),
        (status = 400, description = "Bad query string: unknown parameter, a time that is \
            neither YYYY-MM-DD nor Unix milliseconds, from after to, a bad entity, a bad \
            number, a negative cursor or an order other than `asc`/`desc`.", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token.", body = ErrorBody),
        (status = 500, description = "Internal error (detail logged only).", body = ErrorBody),
    )
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    query: Result<Query<CdrQuery>, QueryRejection>,
) -> Result<Json<CdrReport>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let (from, to, entity) = period(&q)?;
    let limit = q.limit.unwrap_or(PAGE_DEFAULT).clamp(1, PAGE_MAX);
    if q.after.is_some_and(|a| a < 0) {
        return Err(ApiError::invalid("after: must be a record id, 0 or more"));
    }
    let after = q.after;
    let newest_first = q.order.unwrap_or_default() == CdrOrder::Desc;
    let rates = state.rates;
    let (mut records, totals) = read(&state, move |store| {
        let entity = entity.as_deref();
        // One more than asked tells whether there is a next page.
        let page = store.cdrs_page(from, to, entity, after, limit + 1, newest_first)?;
        let totals = if after.is_none() {
            let mut t = Totals::new(rates);
            let mut cursor = None;
            loop {
                let chunk = store.cdrs_page(from, to, entity, cursor, TOTALS_CHUNK, false)?;
                chunk.iter().for_each(|c| t.add(c));
                match chunk.last() {
                    Some(c) if chunk.len() == TOTALS_CHUNK as usize => cursor = Some(c.id),
                    _ => break,
                }
            }
            Some(t.finish())
        } else {
            None
        };
        Ok((page, totals))
    })
    .await?;
    let more = records.len() > limit as usize;
    records.truncate(limit as usize);
    let next = if more {
        records.last().map(|c| c.id)
    } else {
        None
    };
    Ok(Json(CdrReport {
        records: records.into_iter().map(CdrView::from).collect(),
        next,
        totals: totals.map(|t| t.into_iter().map(EntityTotalView::from).collect()),
        rates: rates.into(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_millis() {
        assert_eq!(parse_time("1970-01-01"), Ok(0));
        assert_eq!(parse_time("2026-12-01"), Ok(1_796_083_200_000));
        assert_eq!(parse_time("2027-01-01"), Ok(1_798_761_600_000));
        assert_eq!(parse_time("2024-02-29"), Ok(1_709_164_800_000));
        assert_eq!(parse_time("2000-03-01"), Ok(951_868_800_000));
        assert_eq!(parse_time("1969-12-31"), Ok(-86_400_000));
        assert_eq!(parse_time("1234"), Ok(1234));
        assert_eq!(parse_time("-5"), Ok(-5));
        for bad in [
            "",
            "yesterday",
            "2026-13-01",
            "2026-00-10",
            "2026-12-00",
            "2026-12-32",
            "2026-02-29",
            "1900-02-29",
            "2026-4-01",
            "2026/12/01",
            "2026-12-01T00:00",
            "+026-12-01",
            "12.5",
        ] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
        let long = "x".repeat(100);
        let message = parse_time(&long)
            .map(|_| ())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            message.contains("expected") && message.len() < 100,
            "{message}"
        );
    }

    fn query(from: Option<&str>, to: Option<&str>, entity: Option<&str>) -> CdrQuery {
        CdrQuery {
            from: from.map(str::to_owned),
            to: to.map(str::to_owned),
            entity: entity.map(str::to_owned),
            limit: None,
            after: None,
            order: None,
        }
    }

    #[test]
    fn periods() {
        assert_eq!(
            period(&query(None, None, None)).ok(),
            Some((0, i64::MAX, None))
        );
        assert_eq!(
            period(&query(
                Some("2026-12-01"),
                Some("1796083200001"),
                Some("acme")
            ))
            .ok(),
            Some((1_796_083_200_000, 1_796_083_200_001, Some("acme".into())))
        );
        assert!(period(&query(Some("5"), Some("5"), None)).is_ok());
        assert!(period(&query(Some("6"), Some("5"), None)).is_err());
        assert!(period(&query(Some("soon"), None, None)).is_err());
        assert!(period(&query(None, None, Some(""))).is_err());
        assert!(period(&query(None, None, Some("a\u{7}"))).is_err());
        assert!(period(&query(None, None, Some(&"e".repeat(65)))).is_err());
    }
}
