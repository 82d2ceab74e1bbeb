//! `GET /api/v1/cdrs` (SPEC R18, R19) over a real [`SqliteStore`]: records appended through
//! the store come back by period (setup time, `to` exclusive, dates or Unix ms) and billing
//! entity, as the store serializes them, with totals at the server's rates; bad queries are
//! 400 in the one error shape.

use std::sync::Arc;

use axum::http::StatusCode;
use serde_json::{Value, json};
use store::{Cdr, CdrLeg, SqliteStore, Store};
use tempfile::TempDir;
use trustring_api::{ApiOptions, Rates};

use crate::{App, TOKEN};

/// 2026-12-01T00:00:00Z and 2027-01-01T00:00:00Z, Unix ms.
const DEC_1: i64 = 1_796_083_200_000;
const JAN_1: i64 = 1_798_761_600_000;

fn leg(contact: &str, kind: &str, outcome: &str, entity: &str, billable_ms: i64) -> CdrLeg {
    CdrLeg {
        contact: contact.into(),
        device: None,
        leg_type: kind.into(),
        rang_at_ms: Some(1),
        outcome: outcome.into(),
        status: Some(if outcome == "answered" { 200 } else { 487 }),
        billing_entity: entity.into(),
        billable_ms,
    }
}

fn cdr(call_id: &str, setup_ms: i64, legs: Vec<CdrLeg>) -> Cdr {
    let answered_by = legs.iter().position(|l| l.outcome == "answered");
    let duration_ms = answered_by.map_or(0, |i| legs[i].billable_ms);
    Cdr {
        id: 0,
        call_id: call_id.into(),
        caller: "sip:bob@example.net".into(),
        called: "sip:alice@example.com".into(),
        setup_ms,
        answer_ms: answered_by.map(|_| setup_ms + 1_000),
        end_ms: setup_ms + 1_000 + duration_ms,
        duration_ms,
        final_status: if answered_by.is_some() { 200 } else { 486 },
        released_by: "caller".into(),
        release_cause: "BYE".into(),
        answered_by,
        legs,
        prev_hash: String::new(),
        hash: String::new(),
        sig: None,
    }
}

/// Four calls: just before December (acme, 60 s), at December's first millisecond (acme,
/// 30.001 s, with a leg cancelled elsewhere), mid-December (a globex VoIP leg cancelled, a
/// PSTN leg to the user bob answered for 90 s), and at January's first millisecond (acme,
/// busy, nothing billable).
pub(crate) fn append_sample(store: &dyn Store) {
    let calls = [
        cdr(
            "nov-30",
            DEC_1 - 1,
            vec![leg("sip:a@192.0.2.1", "voip", "answered", "acme", 60_000)],
        ),
        cdr(
            "dec-1",
            DEC_1,
            vec![
                leg("sip:a@192.0.2.1", "voip", "answered", "acme", 30_001),
                leg("sip:a@192.0.2.2", "voip", "cancelled-elsewhere", "acme", 0),
            ],
        ),
        cdr(
            "dec-15",
            DEC_1 + 14 * 86_400_000,
            vec![
                leg(
                    "sip:a@192.0.2.1",
                    "voip",
                    "cancelled-elsewhere",
                    "globex",
                    0,
                ),
                leg("tel:+15550100000", "pstn", "answered", "bob", 90_000),
            ],
        ),
        cdr(
            "jan-1",
            JAN_1,
            vec![leg("sip:a@192.0.2.1", "voip", "busy", "acme", 0)],
        ),
    ];
    for c in &calls {
        store.append_cdr(c).expect("append CDR");
    }
}

/// An app over a fresh SQLite store holding [`append_sample`], rating VoIP at 0.02 and PSTN
/// at 0.10 per minute.
fn app() -> (App<SqliteStore>, TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("trustring.db")).expect("open sqlite");
    append_sample(&store);
    let rates = Rates {
        voip_per_min: 0.02,
        pstn_per_min: 0.10,
    };
    let app = App::over_options(Arc::new(store), TOKEN, ApiOptions::default().rates(rates));
    (app, dir)
}

fn call_ids(reply: &Value) -> Vec<&str> {
    reply["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| r["call_id"].as_str().expect("call_id"))
        .collect()
}

#[tokio::test]
async fn all_time_by_default_with_totals_at_the_configured_rates() {
    let (app, _dir) = app();
    let reply = app.call("GET", "/api/v1/cdrs", None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    assert_eq!(
        call_ids(&reply.json),
        ["nov-30", "dec-1", "dec-15", "jan-1"]
    );
    // The records are the store's, as it serializes them (what `cdr export` prints).
    let stored = app.store.cdrs(0, i64::MAX, None).expect("read");
    assert_eq!(
        reply.json["records"],
        serde_json::to_value(&stored).expect("json")
    );
    assert!(stored.iter().all(|c| c.hash.len() == 64));
    assert_eq!(
        reply.json["rates"],
        json!({"voip_per_min": 0.02, "pstn_per_min": 0.10})
    );
    // acme: 60 s + 31 s (rounded up) at 0.02/min; bob: 90 s at 0.10/min; globex and the
    // busy call have nothing billable.
    assert_eq!(
        reply.json["totals"],
        json!([
            {"entity": "acme", "calls": 2, "billable_secs": 91, "amount": 0.0303},
            {"entity": "bob", "calls": 1, "billable_secs": 90, "amount": 0.15},
        ])
    );
}

#[tokio::test]
async fn the_period_is_setup_time_from_inclusive_to_exclusive() {
    let (app, _dir) = app();
    let december = app
        .call("GET", "/api/v1/cdrs?from=2026-12-01&to=2027-01-01", None)
        .await;
    assert_eq!(december.status, StatusCode::OK, "{}", december.json);
    assert_eq!(call_ids(&december.json), ["dec-1", "dec-15"]);
    assert_eq!(
        december.json["totals"],
        json!([
            {"entity": "acme", "calls": 1, "billable_secs": 31, "amount": 0.0103},
            {"entity": "bob", "calls": 1, "billable_secs": 90, "amount": 0.15},
        ])
    );
    // Unix ms work too, and mix with dates.
    let one_ms = app
        .call(
            "GET",
            &format!("/api/v1/cdrs?from={DEC_1}&to={}", DEC_1 + 1),
            None,
        )
        .await;
    assert_eq!(call_ids(&one_ms.json), ["dec-1"]);
    let since = app
        .call("GET", &format!("/api/v1/cdrs?from={JAN_1}"), None)
        .await;
    assert_eq!(call_ids(&since.json), ["jan-1"]);
    assert_eq!(since.json["totals"], json!([]));
    let until = app.call("GET", "/api/v1/cdrs?to=2026-12-01", None).await;
    assert_eq!(call_ids(&until.json), ["nov-30"]);
    let empty = app
        .call("GET", "/api/v1/cdrs?from=2026-12-02&to=2026-12-02", None)
        .await;
    assert_eq!(empty.status, StatusCode::OK);
    assert_eq!(empty.json["records"], json!([]));
}

#[tokio::test]
async fn the_entity_filter_keeps_records_with_a_leg_billed_to_it() {
    let (app, _dir) = app();
    let globex = app.call("GET", "/api/v1/cdrs?entity=globex", None).await;
    assert_eq!(globex.status, StatusCode::OK, "{}", globex.json);
    assert_eq!(call_ids(&globex.json), ["dec-15"]);
    // The totals cover the records listed (as `cdr export --entity` does).
    assert_eq!(
        globex.json["totals"],
        json!([{"entity": "bob", "calls": 1, "billable_secs": 90, "amount": 0.15}])
    );
    let acme = app
        .call("GET", "/api/v1/cdrs?entity=acme&from=2026-12-01", None)
        .await;
    assert_eq!(call_ids(&acme.json), ["dec-1", "jan-1"]);
    let nobody = app.call("GET", "/api/v1/cdrs?entity=initech", None).await;
    assert_eq!(nobody.json["records"], json!([]));
    assert_eq!(nobody.json["totals"], json!([]));
}

#[tokio::test]
async fn bad_queries_are_400_and_the_token_is_required() {
    let (app, _dir) = app();
    for (query, names) in [
        ("from=someday", "from"),
        ("from=2026-02-30", "from"),
        ("from=2026-12-1", "from"),
        ("to=2027-13-01", "to"),
        ("to=", "to"),
        ("from=2027-01-01&to=2026-12-01", "from"),
        ("entity=", "entity"),
        ("since=5", "since"),
    ] {
        let reply = app
            .call("GET", &format!("/api/v1/cdrs?{query}"), None)
            .await;
        let message = reply.assert_error(StatusCode::BAD_REQUEST, "invalid_request");
        assert!(message.contains(names), "{query}: {message}");
    }
    let reply = app.call_as(None, "GET", "/api/v1/cdrs", None).await;
    reply.assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn without_rates_the_amounts_are_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("trustring.db")).expect("open sqlite");
    append_sample(&store);
    let app = App::over(Arc::new(store), TOKEN);
    let reply = app.call("GET", "/api/v1/cdrs", None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    assert_eq!(
        reply.json["rates"],
        json!({"voip_per_min": 0.0, "pstn_per_min": 0.0})
    );
    let amounts: Vec<f64> = reply.json["totals"]
        .as_array()
        .expect("totals")
        .iter()
        .map(|t| t["amount"].as_f64().expect("amount"))
        .collect();
    assert_eq!(amounts, [0.0, 0.0]);
}

#[tokio::test]
async fn records_come_in_pages_with_a_cursor_and_totals_on_the_first() {
    let (app, _dir) = app();
    let first = app.call("GET", "/api/v1/cdrs?limit=2", None).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.json);
    assert_eq!(call_ids(&first.json), ["nov-30", "dec-1"]);
    let next = first.json["next"].as_i64().expect("a next cursor");
    assert_eq!(Some(next), first.json["records"][1]["id"].as_i64());
    // The totals cover the whole period, not only the page.
    assert_eq!(
        first.json["totals"],
        json!([
            {"entity": "acme", "calls": 2, "billable_secs": 91, "amount": 0.0303},
            {"entity": "bob", "calls": 1, "billable_secs": 90, "amount": 0.15},
        ])
    );
    let second = app
        .call("GET", &format!("/api/v1/cdrs?limit=2&after={next}"), None)
        .await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.json);
    assert_eq!(call_ids(&second.json), ["dec-15", "jan-1"]);
    assert_eq!(second.json["next"], Value::Null, "the last page");
    assert_eq!(
        second.json["totals"],
        Value::Null,
        "totals come with the first page"
    );
    assert_eq!(
        second.json["rates"],
        json!({"voip_per_min": 0.02, "pstn_per_min": 0.10})
    );

    // Filters and the cursor combine; an exact fit has no next page.
    let acme = app
        .call("GET", "/api/v1/cdrs?entity=acme&limit=1", None)
        .await;
    assert_eq!(call_ids(&acme.json), ["nov-30"]);
    let after = acme.json["next"].as_i64().expect("cursor");
    let acme2 = app
        .call(
            "GET",
            &format!("/api/v1/cdrs?entity=acme&limit=2&after={after}"),
            None,
        )
        .await;
    assert_eq!(call_ids(&acme2.json), ["dec-1", "jan-1"]);
    assert_eq!(acme2.json["next"], Value::Null);
    let all = app.call("GET", "/api/v1/cdrs?limit=4", None).await;
    assert_eq!(call_ids(&all.json).len(), 4);
    assert_eq!(all.json["next"], Value::Null);

    // Newest first: the same records the other way round, the cursor going down.
    let newest = app
        .call("GET", "/api/v1/cdrs?order=desc&limit=3", None)
        .await;
    assert_eq!(call_ids(&newest.json), ["jan-1", "dec-15", "dec-1"]);
    assert_eq!(newest.json["totals"], first.json["totals"]);
    let cursor = newest.json["next"].as_i64().expect("cursor");
    let oldest = app
        .call(
            "GET",
            &format!("/api/v1/cdrs?order=desc&limit=3&after={cursor}"),
            None,
        )
        .await;
    assert_eq!(call_ids(&oldest.json), ["nov-30"]);
    assert_eq!(oldest.json["next"], Value::Null);
    let asc = app
        .call("GET", "/api/v1/cdrs?order=asc&limit=1", None)
        .await;
    assert_eq!(call_ids(&asc.json), ["nov-30"]);

    // limit is kept within 1..=1000; a cursor past the end gives an empty last page.
    let one = app.call("GET", "/api/v1/cdrs?limit=0", None).await;
    assert_eq!(call_ids(&one.json), ["nov-30"]);
    let big = app.call("GET", "/api/v1/cdrs?limit=100000", None).await;
    assert_eq!(big.status, StatusCode::OK);
    assert_eq!(call_ids(&big.json).len(), 4);
    let past = app.call("GET", "/api/v1/cdrs?after=999", None).await;
    assert_eq!(past.json["records"], json!([]));
    assert_eq!(past.json["next"], Value::Null);
    for (query, names) in [
        ("after=-1", "after"),
        ("after=x", "after"),
        ("limit=-5", "limit"),
        ("limit=many", "limit"),
        ("order=newest", "order"),
    ] {
        let reply = app
            .call("GET", &format!("/api/v1/cdrs?{query}"), None)
            .await;
        let message = reply.assert_error(StatusCode::BAD_REQUEST, "invalid_request");
        assert!(message.contains(names), "{query}: {message}");
    }
}

/// The default page is 100 records, and the totals still cover every record of the period.
#[tokio::test]
async fn the_default_page_is_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("trustring.db")).expect("open sqlite");
    for i in 0..1_205 {
        store
            .append_cdr(&cdr(
                &format!("c{i}"),
                DEC_1 + i,
                vec![leg("sip:a@192.0.2.1", "voip", "answered", "acme", 1_000)],
            ))
            .expect("append");
    }
    let app = App::over(Arc::new(store), TOKEN);
    let reply = app.call("GET", "/api/v1/cdrs", None).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(call_ids(&reply.json).len(), 100);
    assert_eq!(reply.json["next"], 100);
    assert_eq!(reply.json["totals"][0]["calls"], 1_205);
    let max = app.call("GET", "/api/v1/cdrs?limit=5000", None).await;
    assert_eq!(call_ids(&max.json).len(), 1_000);
    assert_eq!(max.json["next"], 1_000);
}
