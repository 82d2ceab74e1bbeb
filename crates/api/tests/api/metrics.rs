//! `GET /metrics`: the source's text, served as the Prometheus text format 0.0.4, rendered
//! afresh on every scrape, behind the admin token; 503 without a source.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::{StatusCode, header};
use trustring_api::{ApiOptions, METRICS_CONTENT_TYPE};

use crate::mem_store::MemStore;
use crate::{App, TOKEN};

/// What the test routers' metrics source serves.
pub(crate) const SAMPLE: &str =
    "# HELP trustring_up Always 1.\n# TYPE trustring_up gauge\ntrustring_up 1\n";

#[tokio::test]
async fn serves_the_source_as_text_with_the_token_only() {
    let scrapes = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&scrapes);
    let options = ApiOptions::default().metrics(move || {
        let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
        async move { format!("# HELP t_total Scrapes.\n# TYPE t_total counter\nt_total {n}\n") }
    });
    let app = App::over_options(Arc::new(MemStore::default()), TOKEN, options);

    for n in 1..=2 {
        let reply = app.call("GET", "/metrics", None).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(
            reply.header(header::CONTENT_TYPE),
            Some(METRICS_CONTENT_TYPE)
        );
        assert!(METRICS_CONTENT_TYPE.starts_with("text/plain; version=0.0.4"));
        assert!(
            reply.text.starts_with(&format!(
                "# HELP t_total Scrapes.\n# TYPE t_total counter\nt_total {n}\n"
            )),
            "{}",
            reply.text
        );
        // Then the API's own counters, declared like the source's.
        for sample in [
            "trustring_http_connections{listener=\"admin\"} 0",
            "trustring_http_connections_refused_total{listener=\"enrol\"} 0",
            "trustring_http_connections_dropped_total{listener=\"admin\"} 0",
            "trustring_security_events_shed_total 0",
        ] {
            assert!(reply.text.contains(&format!("\n{sample}\n")), "{sample}");
        }
        for family in [
            "trustring_http_connections gauge",
            "trustring_http_connections_refused_total counter",
            "trustring_http_connections_dropped_total counter",
            "trustring_security_events_shed_total counter",
        ] {
            assert!(
                reply.text.contains(&format!("\n# TYPE {family}\n")),
                "{family}"
            );
        }
    }

    for bearer in [None, Some("wrong")] {
        let reply = app.call_as(bearer, "GET", "/metrics", None).await;
        reply.assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    assert_eq!(
        scrapes.load(Ordering::Relaxed),
        2,
        "refused scrapes render nothing"
    );
    let reply = app.call("POST", "/metrics", None).await;
    reply.assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
}

#[tokio::test]
async fn without_a_source_it_is_503() {
    let app = App::new();
    let reply = app.call("GET", "/metrics", None).await;
    reply.assert_error(StatusCode::SERVICE_UNAVAILABLE, "metrics_disabled");
}
