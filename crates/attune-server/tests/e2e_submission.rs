//! Bad and repeated input at the API, through the real server and database: idempotent
//! submission (`Idempotency-Key`, IETF httpapi draft semantics), JSON bodies over the limit,
//! and packs whose YAML repeats a key.
//!
//! The executions submitted here use `e2e.never_pull`, whose image is absent with pull policy
//! `never`: each ends at once without a container, so only submission is exercised.
//!
//! Needs Postgres, RabbitMQ and Docker (`make test` provides them).

use attune_protocol::api::{ErrorBody, ExecutionView, List};
use attune_store::{IdempotencyRequest, IdempotencyState, Store};
use attune_testkit::{TestClient, TestServer};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

const ACTION: &str = "e2e.never_pull";
const EXECUTIONS: &str = "/api/v1/executions";

fn test_pack_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/packs/e2e")
}

async fn start(settings: &[(&str, &str)]) -> (TestServer, TestClient) {
    let server = TestServer::start(settings)
        .await
        .expect("start test server");
    let client = TestClient::new(&server);
    client.register_dir(test_pack_dir()).await;
    (server, client)
}

/// An answer: status, `Idempotent-Replayed` header, JSON body.
struct Answer {
    status: u16,
    replayed: bool,
    body: Value,
}

impl Answer {
    fn id(&self) -> i64 {
        self.body["id"]
            .as_i64()
            .unwrap_or_else(|| panic!("no execution id in {}: {}", self.status, self.body))
    }

    fn error(&self) -> ErrorBody {
        serde_json::from_value(self.body.clone())
            .unwrap_or_else(|_| panic!("not an error body ({}): {}", self.status, self.body))
    }
}

/// `POST /api/v1/executions` with `body` sent as these exact bytes and the given
/// `Idempotency-Key` header values.
async fn post(client: &TestClient, keys: &[&[u8]], body: &str) -> Answer {
    let mut request = client
        .http
        .post(client.url(EXECUTIONS))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string());
    for key in keys {
        request = request.header(
            "Idempotency-Key",
            reqwest::header::HeaderValue::from_bytes(key).expect("a header value"),
        );
    }
    let response = request.send().await.expect("post execution");
    let status = response.status().as_u16();
    let replayed = response
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|value| value == "true");
    let body = response.json().await.expect("a JSON answer");
    Answer {
        status,
        replayed,
        body,
    }
}

fn body_for(name: &str) -> String {
    json!({"action": ACTION, "parameters": {"name": name}}).to_string()
}

/// The executions of the test action, as stored.
async fn executions(client: &TestClient) -> Vec<ExecutionView> {
    let list: List<ExecutionView> = client
        .get_json(&format!("{EXECUTIONS}?action={ACTION}&limit=1000"))
        .await;
    list.items
}

/// Waits for every execution of the test action to end (none needs a container).
async fn wait_all_ended(client: &TestClient) {
    for execution in executions(client).await {
        client.wait_terminal(execution.id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_and_body_answer_with_the_first_execution() {
    let (server, client) = start(&[]).await;
    let body = body_for("Ada");

    let first = post(&client, &[b"\"retry-1\""], &body).await;
    assert_eq!(first.status, 201, "{}", first.body);
    assert!(!first.replayed);
    let execution_id = first.id();

    // The retry of a client that never saw the answer: same key, same body (spacing and key
    // order do not matter), bare or quoted key.
    let same_body =
        format!("{{ \"parameters\": {{\"name\": \"Ada\"}},\n  \"action\": \"{ACTION}\" }}");
    for key in [&b"\"retry-1\""[..], b"retry-1"] {
        let again = post(&client, &[key], &same_body).await;
        assert_eq!(again.status, 201, "the draft: the first answer again");
        assert!(again.replayed, "marked Idempotent-Replayed");
        assert_eq!(again.body, first.body, "the first answer's body");
    }
    assert_eq!(
        executions(&client).await.len(),
        1,
        "a retry creates no execution"
    );

    // The same key with another body is refused, naming the key.
    let other = post(&client, &[b"\"retry-1\""], &body_for("Grace")).await;
    assert_eq!(other.status, 422, "{}", other.body);
    let error = other.error();
    assert_eq!(error.error, "idempotency_key_mismatch");
    assert!(error.detail.contains("\"retry-1\""), "{}", error.detail);

    // Another key, or none, is another execution.
    let second = post(&client, &[b"\"retry-2\""], &body).await;
    assert_eq!(second.status, 201);
    assert_ne!(second.id(), execution_id);
    let unkeyed = post(&client, &[], &body).await;
    assert_eq!(unkeyed.status, 201);
    assert_eq!(executions(&client).await.len(), 3);

    // A refused request stores no answer: its retry is processed anew.
    let missing = json!({"action": "e2e.no_such_action", "parameters": {}}).to_string();
    assert_eq!(post(&client, &[b"\"refused\""], &missing).await.status, 404);
    assert_eq!(post(&client, &[b"\"refused\""], &body).await.status, 201);

    wait_all_ended(&client).await;
    server.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_keys_are_refused() {
    let (server, client) = start(&[]).await;
    let body = body_for("Ada");
    let long = format!("\"{}\"", "k".repeat(256));
    for (keys, named) in [
        (vec![&b""[..]], "empty"),
        (vec![&b"\"\""[..]], "empty"),
        (vec![long.as_bytes()], "more than 255"),
        (vec![&b"\"a b\""[..]], "visible ASCII"),
        (vec![&b"cl\xc3\xa9"[..]], "visible ASCII"),
        (vec![&b"\"unclosed"[..]], "closing quote"),
        (
            vec![&b"\"one\""[..], &b"\"two\""[..]],
            "one Idempotency-Key",
        ),
    ] {
        let answer = post(&client, &keys, &body).await;
        assert_eq!(answer.status, 400, "{keys:?}: {}", answer.body);
        let error = answer.error();
        assert_eq!(error.error, "invalid_idempotency_key");
        assert!(error.detail.contains(named), "{keys:?}: {}", error.detail);
    }
    let longest = format!("\"{}\"", "k".repeat(255));
    assert_eq!(
        post(&client, &[longest.as_bytes()], &body).await.status,
        201
    );
    assert_eq!(executions(&client).await.len(), 1);
    wait_all_ended(&client).await;
    server.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_key_create_one_execution() {
    let (server, client) = start(&[]).await;
    let body = body_for("Ada");

    // Racing requests: one creates the execution; each other one either finds it being
    // created (409) or created (the same answer).
    let mut racing = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (client, body) = (client.clone(), body.clone());
        racing.spawn(async move { post(&client, &[b"\"race\""], &body).await });
    }
    let answers = racing.join_all().await;
    let created: Vec<&Answer> = answers
        .iter()
        .filter(|answer| answer.status == 201)
        .collect();
    assert!(!created.is_empty());
    for answer in &answers {
        assert!(
            matches!(answer.status, 201 | 409),
            "{}: {}",
            answer.status,
            answer.body
        );
        if answer.status == 409 {
            assert_eq!(answer.error().error, "idempotency_key_in_progress");
        }
    }
    assert!(created.iter().all(|answer| answer.body == created[0].body));
    assert_eq!(created.iter().filter(|answer| !answer.replayed).count(), 1);
    assert_eq!(executions(&client).await.len(), 1, "one execution");

    // A request held in progress (claimed directly in the database, as a first request being
    // processed would be): a retry is 409, another body still 422; once it gives the key
    // back, the retry is processed.
    let store = Store::connect(&server.database.url, 1)
        .await
        .expect("connect to the test database");
    let held_body: Value = serde_json::from_str(&body).unwrap();
    let fingerprint = attune_api::idempotency::fingerprint(&held_body);
    let state = store
        .claim_idempotency_key(&IdempotencyRequest {
            key: "held",
            fingerprint: &fingerprint,
            ttl: attune_api::DEFAULT_IDEMPOTENCY_KEY_TTL,
            abandoned_after: attune_api::ABANDONED_IDEMPOTENCY_CLAIM,
        })
        .await
        .expect("claim");
    let IdempotencyState::Claimed(claim) = state else {
        panic!("the key is new: {state:?}");
    };
    let busy = post(&client, &[b"\"held\""], &body).await;
    assert_eq!(busy.status, 409, "{}", busy.body);
    assert!(busy.error().detail.contains("still being processed"));
    assert_eq!(
        post(&client, &[b"\"held\""], &body_for("Grace"))
            .await
            .status,
        422
    );
    store
        .release_idempotency_key(&claim)
        .await
        .expect("release");
    assert_eq!(post(&client, &[b"\"held\""], &body).await.status, 201);
    assert_eq!(executions(&client).await.len(), 2);
    store.pool().close().await;

    wait_all_ended(&client).await;
    server.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_key_is_a_new_key() {
    let (server, client) = start(&[("ATTUNE__SERVER__IDEMPOTENCY_KEY_TTL_SECONDS", "1")]).await;
    let body = body_for("Ada");
    let first = post(&client, &[b"\"daily\""], &body).await;
    assert_eq!(first.status, 201);

    // Until it expires the key answers with its execution; then it makes a new one.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let fresh = loop {
        let answer = post(&client, &[b"\"daily\""], &body).await;
        assert_eq!(answer.status, 201, "{}", answer.body);
        if answer.id() != first.id() {
            break answer;
        }
        assert!(answer.replayed);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the key never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!fresh.replayed);
    assert_eq!(executions(&client).await.len(), 2);
    wait_all_ended(&client).await;
    server.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_bodies_over_the_limit_are_413_naming_the_limit() {
    // The default limit (2 MiB).
    let (server, client) = start(&[]).await;
    let padding = "x".repeat(attune_api::DEFAULT_MAX_JSON_BYTES);
    let big = post(&client, &[], &body_for(&padding)).await;
    assert_eq!(big.status, 413, "{}", big.body);
    let error = big.error();
    assert_eq!(error.error, "body_too_large");
    assert!(
        error.detail.contains("limit of 2097152 bytes"),
        "{}",
        error.detail
    );
    assert!(executions(&client).await.is_empty());
    server.finish().await;

    // A configured limit; pack uploads keep their own (server.max_pack_bytes).
    let (server, client) = start(&[("ATTUNE__SERVER__MAX_JSON_BYTES", "4096")]).await;
    let over = post(&client, &[b"\"big\""], &body_for(&"x".repeat(5000))).await;
    assert_eq!(over.status, 413);
    assert!(over.error().detail.contains("limit of 4096 bytes"));
    let under = post(&client, &[], &body_for(&"x".repeat(3000))).await;
    assert_eq!(under.status, 201, "{}", under.body);
    let pack = tempfile::tempdir().unwrap();
    std::fs::create_dir(pack.path().join("actions")).unwrap();
    std::fs::write(pack.path().join("pack.yaml"), "ref: roomy\n").unwrap();
    std::fs::write(pack.path().join("data.bin"), vec![b'x'; 64 * 1024]).unwrap();
    let archive = attune_pack::build_pack_archive(pack.path()).unwrap();
    assert!(archive.len() > 4096);
    let uploaded = client.upload(archive, false).await;
    assert_eq!(uploaded.status().as_u16(), 201);
    wait_all_ended(&client).await;
    server.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pack_repeating_a_key_is_refused_with_file_key_and_line() {
    let server = TestServer::start(&[]).await.expect("start test server");
    let client = TestClient::new(&server);
    let pack = tempfile::tempdir().unwrap();
    std::fs::create_dir(pack.path().join("actions")).unwrap();
    std::fs::write(pack.path().join("pack.yaml"), "ref: twice\n").unwrap();
    std::fs::write(pack.path().join("actions/run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    std::fs::write(
        pack.path().join("actions/run.yaml"),
        "ref: twice.run\nrunner_type: shell\nentry_point: run.sh\ncontainer:\n  image: busybox:1.36\n  env:\n    MODE: safe\n    MODE: unsafe\n",
    )
    .unwrap();
    let archive = attune_pack::build_pack_archive(pack.path()).unwrap();
    let response = client.upload(archive, false).await;
    assert_eq!(response.status().as_u16(), 422);
    let error: ErrorBody = response.json().await.unwrap();
    assert_eq!(error.error, "invalid_pack");
    assert_eq!(
        error.detail,
        "actions/run.yaml line 8: container.env: duplicate key \"MODE\" (a key may appear only once in a mapping)"
    );
    let packs: List<Value> = client.get_json("/api/v1/packs").await;
    assert!(packs.items.is_empty(), "nothing registered");
    server.finish().await;
}
