//! Warm pools end to end: warm containers are reused within a pack, retired after max_uses,
//! never exceed max, never cross packs, and are all removed when the server stops.

use attune_protocol::api::ExecutionStatus;
use attune_testkit::{containers_of, TestClient, TestServer};
use serde_json::json;
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

fn pack_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/packs")
        .join(name)
}

/// Starts a server and registers the named test packs.
async fn start(pack_names: &[&str]) -> (TestServer, TestClient) {
    let server = TestServer::start(&[]).await.expect("start test server");
    let client = TestClient::new(&server).with_deadline(Duration::from_secs(90));
    for name in pack_names {
        client.register_dir(pack_dir(name)).await;
    }
    (server, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_containers_are_reused_retired_and_kept_per_pack() {
    let (server, client) = start(&["pooled", "pooled2"]).await;

    let mut containers = Vec::new();
    for round in 0..5 {
        let execution = client
            .run_succeeded("pooled.quick", json!({"name": format!("round {round}")}))
            .await;
        assert_eq!(execution.result.unwrap()["name"], format!("round {round}"));
        containers.push(execution.container_id.unwrap());
    }
    assert_eq!(containers[0], containers[1], "a warm container is reused");
    assert_eq!(containers[1], containers[2], "up to max_uses (3)");
    assert_ne!(containers[2], containers[3], "then retired and replaced");

    let other = client.run_succeeded("pooled2.quick", json!({})).await;
    assert!(
        !containers.contains(other.container_id.as_ref().unwrap()),
        "never across packs"
    );

    // Pools are shown from the snapshot each controller stores when they change.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let pools = loop {
        let pools = client.pools().await;
        if pools.len() == 2 || tokio::time::Instant::now() > deadline {
            break pools;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(pools.len(), 2, "one pool per pack: {pools:?}");
    let pooled = pools.iter().find(|pool| pool.pack == "pooled").unwrap();
    assert!(pooled.retired >= 1, "{pooled:?}");
    assert!(pooled.ready + pooled.busy + pooled.starting <= pooled.max);

    let controller_id = server.controller_id.clone();
    server.stop().await.unwrap();
    let left = containers_of(&controller_id);
    assert!(
        left.is_empty(),
        "warm containers removed at shutdown: {left:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_executions_never_exceed_the_pool_max() {
    let (server, client) = start(&["pooled"]).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(client.submit_ok("pooled.slow", json!({})).await);
    }
    let mut seen_containers = HashSet::new();
    let watcher = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut most_live = 0;
            for _ in 0..150 {
                for pool in client.pools().await {
                    most_live = most_live.max(pool.ready + pool.busy + pool.starting);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            most_live
        })
    };
    for id in ids {
        let execution = client.wait_terminal(id).await;
        assert_eq!(
            execution.status,
            ExecutionStatus::Succeeded,
            "{execution:?}"
        );
        seen_containers.insert(execution.container_id.unwrap());
    }
    assert!(
        seen_containers.len() <= 2,
        "max 2 containers: {seen_containers:?}"
    );
    let most_live = watcher.await.unwrap();
    assert!(most_live <= 2, "pool exceeded max: {most_live}");
    server.finish().await;
}
