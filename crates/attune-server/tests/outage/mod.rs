//! The workload of the outage tests (e2e_broker_restart.rs, e2e_database_restart.rs): a
//! hundred executions of the `outage` pack, per-execution and pooled, succeeding and failing,
//! and the check that each ended exactly as its item says it must.

// Each outage test binary uses part of this module.
#![allow(dead_code)]

use attune_protocol::api::{ExecutionStatus, ExecutionView};
use attune_testkit::{TestClient, TestServer};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// How many executions the workload submits before the outage.
pub const ITEMS: i64 = 100;
/// How long every execution may take to end, outage included.
pub const DEADLINE: Duration = Duration::from_secs(300);

/// One execution of the workload, and what it must end as.
#[derive(Debug, Clone)]
pub struct Item {
    pub item: i64,
    pub action: &'static str,
    pub code: i32,
    pub deciseconds: i64,
}

impl Item {
    /// Item `item`: even ones pooled, every tenth (7, 17, …) exits 3, work of 0 to 1.6 s.
    pub fn new(item: i64) -> Item {
        Item {
            item,
            action: if item % 2 == 0 {
                "outage.pooled"
            } else {
                "outage.work"
            },
            code: if item % 10 == 7 { 3 } else { 0 },
            deciseconds: (item % 5) * 4,
        }
    }

    pub fn parameters(&self) -> Value {
        json!({"item": self.item, "deciseconds": self.deciseconds, "code": self.code})
    }

    /// Panics unless `execution` ended as this item must: succeeded printing its item, or
    /// failed with exit code 3 (and printed its item too).
    pub fn check(&self, execution: &ExecutionView) {
        let expected = if self.code == 0 {
            ExecutionStatus::Succeeded
        } else {
            ExecutionStatus::Failed
        };
        assert_eq!(
            execution.status, expected,
            "item {} ({}) ended otherwise: {execution:?}",
            self.item, self.action
        );
        assert_eq!(
            execution.exit_code,
            Some(self.code),
            "item {}: {execution:?}",
            self.item
        );
        assert_eq!(
            execution.stdout,
            format!("item {} done\n", self.item),
            "item {}: {execution:?}",
            self.item
        );
    }
}

/// Settings of the outage servers: enough concurrency that some executions run while others
/// wait, a short kill grace.
pub const SETTINGS: &[(&str, &str)] = &[
    ("ATTUNE__EXECUTOR__CONCURRENCY", "6"),
    ("ATTUNE__EXECUTOR__KILL_GRACE_SECONDS", "1"),
    // Two of the agents' 5 s heartbeats.
    ("ATTUNE__EXECUTOR__LEASE_SECONDS", "10"),
];

/// Answers every HTTP request on `gate` with 200 (opens the gate of `outage.until`).
pub async fn answer_forever(gate: tokio::net::TcpListener) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut stream, _)) = gate.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request).await;
            let _ = stream
                .write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .await;
        });
    }
}

/// Registers the outage pack.
pub async fn register(client: &TestClient) {
    client
        .register_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/packs/outage"))
        .await;
}

/// Submits items `range`, returning each execution id with its item.
pub async fn submit(client: &TestClient, range: std::ops::Range<i64>) -> BTreeMap<i64, Item> {
    let mut submitted = BTreeMap::new();
    for number in range {
        let item = Item::new(number);
        let id = client.submit_ok(item.action, item.parameters()).await;
        submitted.insert(id, item);
    }
    submitted
}

/// How many of `ids` have ended so far, and how many run.
pub async fn progress(client: &TestClient, ids: &BTreeMap<i64, Item>) -> (usize, usize) {
    let executions = client.executions().await;
    let ended = executions
        .iter()
        .filter(|execution| ids.contains_key(&execution.id) && execution.status.is_terminal())
        .count();
    let running = executions
        .iter()
        .filter(|execution| {
            ids.contains_key(&execution.id) && execution.status == ExecutionStatus::Running
        })
        .count();
    (ended, running)
}

/// Waits until at least `ended` of `ids` have ended and some others run.
pub async fn wait_underway(client: &TestClient, ids: &BTreeMap<i64, Item>, ended: usize) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let (done, running) = progress(client, ids).await;
        if done >= ended && running > 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the workload never got underway: {done} ended, {running} running"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every execution of `ids` has ended, then checks each one.
pub async fn wait_all_correct(client: &TestClient, ids: &BTreeMap<i64, Item>) {
    let client = client.with_deadline(DEADLINE);
    for (id, item) in ids {
        let execution = client.wait_terminal(*id).await;
        item.check(&execution);
    }
    let unfinished = client.unfinished_executions().await;
    assert!(
        unfinished.is_empty(),
        "executions never ended: {unfinished:?}"
    );
}

/// Polls `/readyz` until `condition` holds for its status and body.
pub async fn wait_readiness(
    client: &TestClient,
    what: &str,
    condition: impl Fn(u16, &Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let answer = client.http.get(client.url("/readyz")).send().await;
        let (status, body) = match answer {
            Ok(response) => {
                let status = response.status().as_u16();
                (
                    status,
                    response.json::<Value>().await.unwrap_or(Value::Null),
                )
            }
            Err(error) => (0, json!({"error": error.to_string()})),
        };
        if condition(status, &body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: never seen in /readyz (last {status}: {body})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts a server for the workload and registers the pack.
pub async fn start() -> (TestServer, TestClient) {
    let server = TestServer::start(SETTINGS)
        .await
        .expect("start test server");
    let client = TestClient::new(&server);
    register(&client).await;
    wait_readiness(&client, "ready", |status, _| status == 200).await;
    (server, client)
}
