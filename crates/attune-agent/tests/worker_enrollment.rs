//! A worker's enrollment against a tiny HTTP server on 127.0.0.1: the JSON and bearer token it
//! sends, the answer it reads, refusals that end it at once with the API's words (and never
//! the token), retries while the API answers 503 (on tokio's paused clock), HTTPS with the CA
//! of `ATTUNE_AGENT_MQ_CA_FILE`, and the binary's exit code for a refusal.

mod worker_support;

use attune_agent::api::{ApiClient, ApiToken, EnrollError};
use attune_protocol::worker::{WorkerEnrolled, WorkerEnrollment};
use attune_protocol::{DetectedRuntime, PROTOCOL_VERSION};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;
use worker_support::{Reply, TestServer, TEST_CA_PEM, TOKEN};

fn enrollment() -> WorkerEnrollment {
    WorkerEnrollment {
        name: "py-1".to_string(),
        protocol_version: PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        agent_sha256: "ab".repeat(32),
        runtimes: vec![DetectedRuntime {
            name: "python".to_string(),
            version: Some("3.12.1".to_string()),
            path: "/usr/local/bin/python3".to_string(),
        }],
        labels: BTreeMap::from([("zone".to_string(), "eu".to_string())]),
        concurrency: 3,
        image: Some("python:3.12-slim".to_string()),
    }
}

fn enrolled_answer() -> serde_json::Value {
    json!({
        "agent_id": "worker-py-1-7c1d",
        "mq_url": "amqp://worker-py-1-7c1d:pw@rabbitmq:5672/%2f",
        "event_key": "11".repeat(32),
        "events_queue": "attune.workers.events",
        "heartbeat_seconds": 10,
    })
}

fn client(server: &TestServer) -> ApiClient {
    ApiClient::new(&format!("{}/", server.url), ApiToken::new(TOKEN), None).unwrap()
}

#[tokio::test]
async fn enrollment_sends_the_worker_as_json_with_its_token_and_reads_the_answer() {
    let server = TestServer::start(|_, _| Reply::json(201, &enrolled_answer())).await;
    let enrolled = client(&server)
        .enroll(&enrollment(), Duration::from_secs(10))
        .await
        .expect("enrolled");
    assert_eq!(
        enrolled,
        WorkerEnrolled {
            agent_id: "worker-py-1-7c1d".to_string(),
            mq_url: "amqp://worker-py-1-7c1d:pw@rabbitmq:5672/%2f".to_string(),
            mq_ca_pem: None,
            event_key: "11".repeat(32),
            events_queue: "attune.workers.events".to_string(),
            heartbeat_seconds: 10,
        }
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.target, "/api/v1/workers");
    assert_eq!(
        request.header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert_eq!(request.header("content-type"), Some("application/json"));
    let sent: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(
        sent,
        json!({
            "name": "py-1",
            "protocol_version": PROTOCOL_VERSION,
            "agent_version": env!("CARGO_PKG_VERSION"),
            "agent_sha256": "ab".repeat(32),
            "runtimes": [{"name": "python", "version": "3.12.1", "path": "/usr/local/bin/python3"}],
            "labels": {"zone": "eu"},
            "concurrency": 3,
            "image": "python:3.12-slim",
        })
    );
}

#[tokio::test]
async fn a_refusal_ends_enrollment_at_once_with_the_status_and_the_apis_words() {
    for (status, body, expected) in [
        (
            401,
            json!({"error": "unauthorized", "message": "token is not valid"}),
            "the API answered 401 Unauthorized: unauthorized: token is not valid",
        ),
        (
            422,
            json!({"error": "invalid", "message": "runtimes is empty"}),
            "the API answered 422 Unprocessable Entity: invalid: runtimes is empty",
        ),
        (
            409,
            json!({"message": "worker py-1 is draining"}),
            "the API answered 409 Conflict: worker py-1 is draining",
        ),
        (
            403,
            json!({"error": "forbidden"}),
            "the API answered 403 Forbidden: forbidden",
        ),
    ] {
        let server = TestServer::start(move |_, _| Reply::json(status, &body)).await;
        let error = client(&server)
            .enroll(&enrollment(), Duration::from_secs(30))
            .await
            .unwrap_err();
        assert!(matches!(error, EnrollError::Refused { .. }), "{error:?}");
        let text = error.to_string();
        assert!(text.starts_with("enroll worker py-1: POST "), "{text}");
        assert!(text.ends_with(expected), "{text}");
        assert!(!text.contains(TOKEN), "{text}");
        assert_eq!(server.requests().len(), 1, "a refusal is not retried");
    }
}

#[tokio::test(start_paused = true)]
async fn a_503_is_retried_until_the_api_enrolls_the_worker() {
    let server = TestServer::start(|_, index| match index {
        0 | 1 => Reply::json(503, &json!({"error": "unavailable", "message": "draining"})),
        _ => Reply::json(201, &enrolled_answer()),
    })
    .await;
    let started = tokio::time::Instant::now();
    let enrolled = client(&server)
        .enroll(&enrollment(), Duration::from_secs(30))
        .await
        .expect("enrolled after two 503s");
    assert_eq!(enrolled.agent_id, "worker-py-1-7c1d");
    assert_eq!(server.requests().len(), 3);
    // 100 ms, then 200 ms between the attempts.
    assert_eq!(started.elapsed(), Duration::from_millis(300));
}

#[tokio::test(start_paused = true)]
async fn an_api_that_keeps_answering_503_is_given_up_after_the_connect_timeout() {
    let server = TestServer::start(|_, _| Reply::json(503, &json!({"message": "not ready"}))).await;
    let error = client(&server)
        .enroll(&enrollment(), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(error, EnrollError::GaveUp { .. }), "{error:?}");
    let text = error.to_string();
    assert!(
        text.contains("503 Service Unavailable: not ready") && text.ends_with("(gave up after 5s)"),
        "{text}"
    );
    // Attempts at 0, 0.1, 0.3, 0.7, 1.5 and 3.1 s; the next would start after 5 s.
    assert_eq!(server.requests().len(), 6);
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_api_is_retried_then_given_up() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = ApiClient::new(
        &format!("http://127.0.0.1:{port}"),
        ApiToken::new(TOKEN),
        None,
    )
    .unwrap();
    let started = tokio::time::Instant::now();
    let error = client
        .enroll(&enrollment(), Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(matches!(error, EnrollError::GaveUp { .. }), "{error:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "it retried"
    );
    assert!(!error.to_string().contains(TOKEN));
}

#[tokio::test]
async fn the_binary_exits_2_when_the_api_refuses_the_worker() {
    let server = TestServer::start(|_, _| {
        Reply::json(
            401,
            &json!({"error": "unauthorized", "message": "token is not valid"}),
        )
    })
    .await;
    let work = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_attune-agent"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("ATTUNE_API_URL", &server.url)
        .env("ATTUNE_WORKER_TOKEN", TOKEN)
        .env("ATTUNE_WORKER_NAME", "bin-worker")
        .env("ATTUNE_WORKER_RUNTIMES", "shell")
        .env("ATTUNE_AGENT_WORKDIR", work.path())
        .env("ATTUNE_CONFIG", work.path().join("absent.yaml"))
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    // ATTUNE_CONFIG names a file that does not exist: a usage error, before any request.
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("read config file"), "{stderr}");
    assert!(server.requests().is_empty());

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_attune-agent"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("ATTUNE_API_URL", &server.url)
        .env("ATTUNE_WORKER_TOKEN", TOKEN)
        .env("ATTUNE_WORKER_NAME", "bin-worker")
        .env("ATTUNE_WORKER_RUNTIMES", "shell")
        .env("ATTUNE_AGENT_WORKDIR", work.path())
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("enroll worker bin-worker: POST ")
            && stderr
                .contains("the API answered 401 Unauthorized: unauthorized: token is not valid"),
        "{stderr}"
    );
    assert!(!stderr.contains(TOKEN), "{stderr}");
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let sent: serde_json::Value = serde_json::from_slice(&requests[0].body).unwrap();
    assert_eq!(sent["name"], "bin-worker");
    assert_eq!(sent["concurrency"], 4);
    assert_eq!(sent["runtimes"][0]["name"], "shell");
    assert_eq!(sent["agent_sha256"].as_str().map(str::len), Some(64));
}

#[tokio::test]
async fn the_binary_names_a_missing_token_without_calling_the_api() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_attune-agent"))
        .env_clear()
        .env("ATTUNE_API_URL", "http://127.0.0.1:9")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr
            .contains("missing worker token: set ATTUNE_WORKER_TOKEN or ATTUNE_WORKER_TOKEN_FILE"),
        "{stderr}"
    );
}

#[tokio::test]
async fn https_trusts_the_given_ca_and_refuses_a_server_it_cannot_verify() {
    let server = TestServer::start_tls(|_, _| Reply::json(201, &enrolled_answer()));
    let trusting = ApiClient::new(&server.url, ApiToken::new(TOKEN), Some(TEST_CA_PEM)).unwrap();
    let enrolled = trusting
        .enroll(&enrollment(), Duration::from_secs(10))
        .await
        .expect("enrolled over https");
    assert_eq!(enrolled.agent_id, "worker-py-1-7c1d");
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );

    // Without the CA only the public roots are trusted: the handshake fails, no request.
    let untrusting = ApiClient::new(&server.url, ApiToken::new(TOKEN), None).unwrap();
    let error = untrusting
        .enroll(&enrollment(), Duration::from_millis(1))
        .await
        .unwrap_err();
    assert!(matches!(error, EnrollError::GaveUp { .. }), "{error:?}");
    assert!(
        error
            .to_string()
            .to_ascii_lowercase()
            .contains("certificate"),
        "{error}"
    );
    assert_eq!(server.requests().len(), 1);

    let error = ApiClient::new(&server.url, ApiToken::new(TOKEN), Some("not a certificate"))
        .unwrap_err()
        .to_string();
    assert_eq!(
        error,
        "trust the CA certificates for the api: no PEM certificate found"
    );
}
