//! `on_change` reports changes in commit order, so a directory kept from the changes alone
//! ends up equal to the store even under racing writes.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::http::StatusCode;
use store::Store;
use trustring_api::Change;

use crate::App;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_creates_and_deletes_leave_directory_equal_to_store() {
    let app = Arc::new(App::new());
    let mut tasks = Vec::new();
    for i in 0..64 {
        let app = Arc::clone(&app);
        let user = ["alice", "bob"][i % 2];
        tasks.push(tokio::spawn(async move {
            if i % 4 < 2 {
                let body = format!(
                    r#"{{"user":"{user}","password":"long-enough-pw","enterprise":"acme"}}"#
                );
                let reply = app.call("POST", "/api/v1/subscribers", Some(&body)).await;
                assert!(
                    [StatusCode::CREATED, StatusCode::CONFLICT].contains(&reply.status),
                    "{}",
                    reply.json
                );
            } else {
                let path = format!("/api/v1/subscribers/{user}");
                let reply = app.call("DELETE", &path, None).await;
                assert!(
                    [StatusCode::NO_CONTENT, StatusCode::NOT_FOUND].contains(&reply.status),
                    "{}",
                    reply.json
                );
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }

    let mut directory = BTreeSet::new();
    for change in app.changes() {
        match change {
            Change::SubscriberUpserted(sub) => {
                directory.insert(sub.user);
            }
            Change::SubscriberDeleted(user) => {
                assert!(
                    directory.remove(&user),
                    "deleted {user} before it was created"
                );
            }
            other => panic!("unexpected change {other:?}"),
        }
    }
    let stored: BTreeSet<String> = app
        .store
        .subscribers()
        .expect("store")
        .into_iter()
        .map(|sub| sub.user)
        .collect();
    assert_eq!(directory, stored);
}
