//! Secret parameters stay secret, against a real server and agent: an action that prints its
//! secrets (whole, inside longer lines, on stderr, split across two writes, in a JSON result)
//! has every occurrence stored and shown as `********` — in stdout, stderr, live log chunks and
//! the result, and in the database itself; an action's view never shows a secret's default.

use attune_protocol::api::ExecutionStatus;
use attune_testkit::{psql, TestClient, TestServer};
use serde_json::{json, Value};
use std::path::PathBuf;

const TOKEN: &str = "tok-3f9a1c77e2b4-s3cret";
const FALLBACK: &str = "default-s3cret-fallback";

fn secrets_pack() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/packs/secrets")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_masked_in_every_output_and_never_shown_as_defaults() {
    let server = TestServer::start(&[]).await.expect("start test server");
    let _containers = server.container_guard();
    let client = TestClient::new(&server);
    client.register_dir(secrets_pack()).await;

    // The action's view hides the secret default, not the others.
    let view: Value = client.get_json("/api/v1/actions/secrets.leak").await;
    let properties = &view["parameters"]["properties"];
    assert_eq!(
        properties["fallback"]["default"],
        json!("********"),
        "{view}"
    );
    assert_eq!(properties["name"]["default"], json!("visible-name"));
    assert!(!view.to_string().contains(FALLBACK), "{view}");

    let leaked = client
        .run_succeeded("secrets.leak", json!({"token": TOKEN}))
        .await;
    let stdout = &leaked.stdout;
    assert!(
        stdout.contains("token=******** and again x********y"),
        "{stdout}"
    );
    assert!(
        stdout.contains("split:********:end"),
        "split across writes: {stdout}"
    );
    assert!(
        leaked.stderr.contains("fallback=********"),
        "{}",
        leaked.stderr
    );
    let logs = client.logs(leaked.id).await;
    let streamed: String = logs.iter().map(|chunk| chunk.data.as_str()).collect();
    assert!(streamed.contains("token=********"), "{streamed}");
    assert_eq!(leaked.parameters["token"], json!("********"));

    let result = client
        .run_succeeded("secrets.result", json!({"token": TOKEN}))
        .await;
    assert_eq!(
        result.result,
        Some(json!({"token": "********", "note": "x********y"}))
    );

    let everything = format!(
        "{} {} {} {streamed} {}",
        serde_json::to_string(&leaked).unwrap(),
        serde_json::to_string(&result).unwrap(),
        leaked.stderr,
        view
    );
    for secret in [TOKEN, FALLBACK] {
        assert!(!everything.contains(secret), "{secret} shown: {everything}");
    }
    // Nor stored anywhere in the database in the clear.
    let dump = psql(
        &server.database.url,
        "SELECT e::text FROM executions e UNION ALL SELECT l::text FROM execution_logs l",
    );
    let hex = |text: &str| -> String { text.bytes().map(|byte| format!("{byte:02x}")).collect() };
    for secret in [TOKEN, FALLBACK] {
        assert!(
            !dump.contains(secret),
            "{secret} stored in the clear: {dump}"
        );
        assert!(
            !dump.contains(&hex(secret)),
            "{secret} stored as bytes: {dump}"
        );
    }
    assert_eq!(leaked.status, ExecutionStatus::Succeeded);
    server.finish().await;
}
