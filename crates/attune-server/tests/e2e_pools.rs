//! Warm pools end to end: warm containers are reused within a pack, retired after max_uses,
//! never exceed max, never cross packs, and are all removed when the server stops.

use attune_protocol::api::{ExecutionStatus, ExecutionView, List, PoolView};
use attune_server::testing::TestServer;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

fn pack_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/packs")
        .join(name)
}

struct Client {
    http: reqwest::Client,
    base_url: String,
}

impl Client {
    async fn register(&self, name: &str) {
        let archive = attune_pack::build_pack_archive(pack_dir(name)).unwrap();
        let response = self
            .http
            .post(format!("{}/api/v1/packs?force=true", self.base_url))
            .header("content-type", "application/x-tar")
            .body(archive)
            .send()
            .await
            .unwrap();
        let status = response.status();
        assert_eq!(
            status,
            201,
            "register {name}: {}",
            response.text().await.unwrap()
        );
    }

    async fn submit(&self, action: &str, parameters: Value) -> i64 {
        let response = self
            .http
            .post(format!("{}/api/v1/executions", self.base_url))
            .json(&json!({"action": action, "parameters": parameters}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        response.json::<ExecutionView>().await.unwrap().id
    }

    async fn wait_terminal(&self, id: i64) -> ExecutionView {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            let execution: ExecutionView = self
                .http
                .get(format!("{}/api/v1/executions/{id}", self.base_url))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if execution.status.is_terminal() {
                return execution;
            }
            assert!(tokio::time::Instant::now() < deadline, "{execution:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn pools(&self) -> Vec<PoolView> {
        let list: List<PoolView> = self
            .http
            .get(format!("{}/api/v1/pools", self.base_url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        list.items
    }
}

fn leftover_containers(controller_id: &str) -> String {
    let output = std::process::Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=attune.controller={controller_id}"),
        ])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_containers_are_reused_retired_and_kept_per_pack() {
    let server = TestServer::start(&[]).await.expect("start test server");
    let client = Client {
        http: reqwest::Client::new(),
        base_url: server.base_url.clone(),
    };
    client.register("pooled").await;
    client.register("pooled2").await;

    let mut containers = Vec::new();
    for round in 0..5 {
        let id = client
            .submit("pooled.quick", json!({"name": format!("round {round}")}))
            .await;
        let execution = client.wait_terminal(id).await;
        assert_eq!(
            execution.status,
            ExecutionStatus::Succeeded,
            "{execution:?}"
        );
        assert_eq!(execution.result.unwrap()["name"], format!("round {round}"));
        containers.push(execution.container_id.unwrap());
    }
    assert_eq!(containers[0], containers[1], "a warm container is reused");
    assert_eq!(containers[1], containers[2], "up to max_uses (3)");
    assert_ne!(containers[2], containers[3], "then retired and replaced");

    let other = client.submit("pooled2.quick", json!({})).await;
    let other = client.wait_terminal(other).await;
    assert_eq!(other.status, ExecutionStatus::Succeeded, "{other:?}");
    assert!(
        !containers.contains(other.container_id.as_ref().unwrap()),
        "never across packs"
    );

    let pools = client.pools().await;
    assert_eq!(pools.len(), 2, "one pool per pack: {pools:?}");
    let pooled = pools.iter().find(|pool| pool.pack == "pooled").unwrap();
    assert!(pooled.retired >= 1, "{pooled:?}");
    assert!(pooled.ready + pooled.busy + pooled.starting <= pooled.max);

    let controller_id = server.controller_id.clone();
    server.stop().await.unwrap();
    let left = leftover_containers(&controller_id);
    assert!(
        left.is_empty(),
        "warm containers removed at shutdown: {left}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_executions_never_exceed_the_pool_max() {
    let server = TestServer::start(&[]).await.expect("start test server");
    let client = Client {
        http: reqwest::Client::new(),
        base_url: server.base_url.clone(),
    };
    client.register("pooled").await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(client.submit("pooled.slow", json!({})).await);
    }
    let mut seen_containers = HashSet::new();
    let watcher = {
        let http = client.http.clone();
        let base_url = client.base_url.clone();
        tokio::spawn(async move {
            let mut most_live = 0;
            for _ in 0..150 {
                let list: List<PoolView> = http
                    .get(format!("{base_url}/api/v1/pools"))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                for pool in list.items {
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
    let controller_id = server.controller_id.clone();
    server.stop().await.unwrap();
    assert!(leftover_containers(&controller_id).is_empty());
}
