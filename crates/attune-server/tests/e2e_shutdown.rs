//! Shutdown with work in flight: at the stop signal readiness flips to `draining` at once and
//! the API keeps answering; running executions get the shutdown grace, then end `abandoned`
//! (kind `controller-shutdown`; an idempotent one is requeued once) and their containers are
//! removed; nothing is left running or stuck.

use attune_protocol::api::ExecutionStatus;
use attune_store::Store;
use attune_testkit::{TestClient, TestServer};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(90);

fn pack_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/packs")
        .join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_flips_readiness_and_abandons_what_outlives_the_grace() {
    let mut server = TestServer::start(&[
        ("ATTUNE__EXECUTOR__SHUTDOWN_GRACE_SECONDS", "3"),
        ("ATTUNE__EXECUTOR__CONCURRENCY", "8"),
        ("ATTUNE__EXECUTOR__KILL_GRACE_SECONDS", "1"),
    ])
    .await
    .expect("start test server");
    let guard = server.container_guard();
    let client = TestClient::new(&server);
    client.register_dir(pack_dir("lifecycle")).await;

    // Four plain naps and one idempotent, each far longer than the grace.
    let mut plain = Vec::new();
    for _ in 0..4 {
        plain.push(
            client
                .submit_ok("lifecycle.nap", json!({"seconds": 300}))
                .await,
        );
    }
    let idempotent = client
        .submit_ok("lifecycle.nap_idempotent", json!({"seconds": 300}))
        .await;
    for id in plain.iter().chain([&idempotent]) {
        client.wait_running(*id).await;
    }

    server.request_stop();
    // Readiness says so at once, while the drain goes on and the API still answers.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let response = client
            .http
            .get(client.url("/readyz"))
            .send()
            .await
            .expect("the API answers while draining");
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        if body["status"] == "draining" {
            assert_eq!(status, 503, "{body}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "readiness never said draining: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let during = client.execution(plain[0]).await;
    assert_eq!(during.status, ExecutionStatus::Running, "{during:?}");

    tokio::time::timeout(DEADLINE, server.wait_stopped())
        .await
        .expect("the drain ends after the grace")
        .expect("the server stops cleanly");

    let store = Store::connect(&server.database.url, 2)
        .await
        .expect("connect to the test database");
    for id in plain.iter().chain([&idempotent]) {
        let row = store.get_execution(*id).await.unwrap();
        assert_eq!(row.status(), ExecutionStatus::Abandoned, "{row:?}");
        assert_eq!(
            row.failure_kind.map(|kind| kind.as_str()),
            Some("controller-shutdown"),
            "{row:?}"
        );
    }
    let retries: Vec<i64> = store
        .live_executions()
        .await
        .unwrap()
        .into_iter()
        .map(|row| row.id)
        .collect();
    assert!(retries.is_empty(), "nothing is left live: {retries:?}");
    let requeued = store
        .list_executions(&attune_store::ExecutionFilter {
            status: Some(ExecutionStatus::Requested),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(requeued.len(), 1, "the idempotent nap is requeued once");
    assert_eq!(requeued[0].retry_of, Some(idempotent));
    store.pool().close().await;

    assert!(
        server.containers().is_empty(),
        "no container outlives the drain: {:?}",
        server.containers()
    );
    drop(guard);
    server.stop().await.expect("drop the test database");
}
