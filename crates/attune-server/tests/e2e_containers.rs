//! End to end against the real engine, broker and database: packs are registered over HTTP,
//! executions run in containers made from real local images with the real static agent
//! injected, and every bad input ends with a clear error and no container left behind.
//!
//! Needs Docker, RabbitMQ, Postgres, the images of scripts/build-images.sh and the agent of
//! scripts/build-agent.sh (`make test` provides all of them).

use attune_protocol::api::{ErrorBody, ExecutionStatus, ExecutionView, List};
use attune_testkit::{TestClient, TestServer};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

fn test_pack_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/packs/e2e")
}

fn hello_pack_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/packs/hello")
}

async fn start() -> (TestServer, TestClient) {
    let server = TestServer::start(&[("ATTUNE__EXECUTOR__KILL_GRACE_SECONDS", "1")])
        .await
        .expect("start test server");
    let client = TestClient::new(&server);
    client.register_dir(test_pack_dir()).await;
    (server, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_pack_runs_shell_in_busybox_and_python_in_debian() {
    let server = TestServer::start(&[]).await.expect("start test server");
    let client = TestClient::new(&server);
    client.register_dir(hello_pack_dir()).await;

    let greet = client
        .run_succeeded("hello.greet", json!({"name": "Ada"}))
        .await;
    assert_eq!(greet.result.as_ref().unwrap()["greeting"], "Hello, Ada!");
    assert_eq!(greet.exit_code, Some(0));
    assert!(
        greet.duration_ms.is_some(),
        "the agent's measured duration is kept"
    );
    assert_eq!(greet.image.as_deref(), Some("busybox:1.36"));
    assert!(greet.container_id.is_some());
    for timestamp in [&greet.scheduled_at, &greet.started_at, &greet.finished_at] {
        assert!(
            timestamp.is_some(),
            "every step has its timestamp: {greet:?}"
        );
    }

    let stats = client
        .run_succeeded("hello.stats", json!({"text": "any image becomes a worker"}))
        .await;
    let result = stats.result.unwrap();
    assert_eq!(result["words"], 5);
    assert_eq!(result["token_received"], true);
    assert!(result["python"].as_str().unwrap().starts_with("3."));
    assert_eq!(
        stats.parameters["api_token"], "********",
        "secret parameters are masked in API output"
    );
    server.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_parameter_delivery_mode_and_format() {
    let (server, client) = start().await;
    let parameters = json!({"name": "Ada", "count": 7});

    let env = client
        .run_succeeded("e2e.env_dotenv", parameters.clone())
        .await;
    let result = env.result.unwrap();
    assert_eq!(result["name"], "Ada");
    assert_eq!(result["count"], "7");
    assert_eq!(result["token_in_env"], "", "secrets never go into env");
    assert_eq!(result["execution_id"], env.id.to_string());
    assert_eq!(result["action_ref"], "e2e.env_dotenv");
    assert_eq!(result["pack_dir"], "/opt/attune/packs/e2e");

    for action in ["e2e.stdin_json", "e2e.file_json"] {
        let execution = client.run_succeeded(action, parameters.clone()).await;
        let result = execution.result.unwrap();
        assert_eq!(result["name"], "Ada", "{action}");
        assert_eq!(result["count"], 7, "{action}");
        // The secret reached stdin or the file; printed back, the agent masks it.
        assert_eq!(
            result["token"], "********",
            "{action}: secrets reach stdin/file, and are masked in the output"
        );
    }
    for (action, expected_lines) in [
        ("e2e.stdin_yaml", ["name: Ada", "count: 7"]),
        ("e2e.file_yaml", ["name: Ada", "count: 7"]),
        ("e2e.stdin_dotenv", ["name='Ada'", "count='7'"]),
        ("e2e.file_dotenv", ["name='Ada'", "count='7'"]),
    ] {
        let execution = client.run_succeeded(action, parameters.clone()).await;
        for line in expected_lines {
            assert!(
                execution.stdout.contains(line),
                "{action}: {}",
                execution.stdout
            );
        }
    }

    let python = client
        .run_succeeded("e2e.python_json", parameters.clone())
        .await;
    assert_eq!(python.result.unwrap()["python"], 3);
    server.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_image_with_several_interpreters_runs_each_runtime() {
    let (server, client) = start().await;
    for language in ["node", "ruby", "perl", "python"] {
        let action = format!("e2e.poly_{language}");
        let execution = client.run_succeeded(&action, json!({"name": "Ada"})).await;
        let result = execution.result.unwrap();
        assert_eq!(result["language"], language, "{action}");
        assert_eq!(result["greeting"], "Hello, Ada", "{action}");
        assert!(!result["version"].as_str().unwrap().is_empty(), "{action}");
    }
    server.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_zero_exit_fails_and_keeps_the_code_and_output() {
    let (server, client) = start().await;
    let execution = client.run("e2e.fail", json!({})).await;
    assert_eq!(execution.status, ExecutionStatus::Failed);
    assert_eq!(execution.exit_code, Some(3));
    assert!(execution.stdout.contains("about to fail"));
    assert!(execution.stderr.contains("something went wrong"));
    assert!(execution.error.unwrap().contains("code 3"));

    let logs = client.logs(execution.id).await;
    let joined: String = logs.iter().map(|chunk| chunk.data.as_str()).collect();
    assert!(
        joined.contains("about to fail"),
        "live log chunks stored: {joined}"
    );
    server.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_requests_answer_when_the_execution_ends() {
    let (server, client) = start().await;
    let created: ExecutionView = client
        .submit("e2e.fail", json!({}))
        .await
        .json()
        .await
        .unwrap();
    assert!(!created.status.is_terminal());
    // One request, answered when the execution ends (the Postgres status feed wakes it).
    let ended: ExecutionView = client
        .get_json(&format!(
            "/api/v1/executions/{}?wait_seconds=60",
            created.id
        ))
        .await;
    assert_eq!(ended.status, ExecutionStatus::Failed, "{ended:?}");
    let too_long = client
        .http
        .get(client.url(&format!(
            "/api/v1/executions/{}?wait_seconds=600",
            created.id
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(too_long.status(), 400);
    let body: ErrorBody = too_long.json().await.unwrap();
    assert!(body.detail.contains("wait_seconds"), "{body:?}");
    server.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_ends_with_status_timeout() {
    let (server, client) = start().await;
    let execution = client.run("e2e.sleepy", json!({})).await;
    assert_eq!(execution.status, ExecutionStatus::Timeout, "{execution:?}");
    assert!(execution.stdout.contains("sleeping past the timeout"));
    assert!(!execution.stdout.contains("never printed"));
    assert!(execution.error.unwrap().contains("timed out"));
    server.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_interpreters_and_images_are_named() {
    let (server, client) = start().await;

    let python = client.run("e2e.python_in_busybox", json!({})).await;
    assert_eq!(python.status, ExecutionStatus::Failed);
    let error = python.error.unwrap();
    assert!(
        error.contains("interpreter python not found in image busybox:1.36"),
        "{error}"
    );

    let shell = client.run("e2e.shell_in_noshell", json!({})).await;
    assert_eq!(shell.status, ExecutionStatus::Failed);
    let error = shell.error.unwrap();
    assert!(error.contains("interpreter shell not found"), "{error}");

    let missing = client.run("e2e.missing_image", json!({})).await;
    assert_eq!(missing.status, ExecutionStatus::Failed);
    let error = missing.error.unwrap();
    assert!(
        error.contains(
            "attune-test/does-not-exist:1.0 is not present locally and could not be pulled"
        ),
        "{error}"
    );
    assert!(missing.container_id.is_none(), "no container was created");

    let never = client.run("e2e.never_pull", json!({})).await;
    assert_eq!(never.status, ExecutionStatus::Failed);
    assert!(never.error.unwrap().contains("pull_policy is never"));
    server.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awkward_images_non_root_user_and_foreign_entrypoint() {
    let (server, client) = start().await;
    let nonroot = client.run_succeeded("e2e.nonroot", json!({})).await;
    assert_eq!(nonroot.result.unwrap()["uid"], 65534);

    let entrypoint = client
        .run_succeeded("e2e.entrypoint_override", json!({}))
        .await;
    assert_eq!(entrypoint.result.unwrap()["uid"], 0);

    // A numeric USER with no passwd entry and a /tmp only root may write: the container's
    // work area (a tmpfs any user may write) holds the agent's files, HOME and TMPDIR.
    let anyuser = client.run_succeeded("e2e.anyuser", json!({})).await;
    let result = anyuser.result.unwrap();
    assert_eq!(result["uid"], 4242, "{result}");
    assert_eq!(result["home"], "/opt/attune/work", "{result}");
    assert_eq!(result["tmpdir"], "/opt/attune/work", "{result}");
    assert_eq!(result["home_file"], "home", "{result}");
    server.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors() {
    let (server, client) = start().await;

    let unknown = client.submit("e2e.nope", json!({})).await;
    assert_eq!(unknown.status(), 404);
    let body: ErrorBody = unknown.json().await.unwrap();
    assert!(
        body.detail.contains("action e2e.nope not found"),
        "{body:?}"
    );

    let missing = client.submit("e2e.strict", json!({})).await;
    assert_eq!(missing.status(), 422);
    let body: ErrorBody = missing.json().await.unwrap();
    assert!(body.detail.contains("count"), "{body:?}");

    let wrong = client
        .submit("e2e.strict", json!({"count": 3, "mode": "warp"}))
        .await;
    assert_eq!(wrong.status(), 422);
    let body: ErrorBody = wrong.json().await.unwrap();
    assert!(body.detail.contains("mode"), "{body:?}");

    let extra = client
        .submit("e2e.strict", json!({"count": 3, "colour": "red"}))
        .await;
    assert_eq!(extra.status(), 422);
    let body: ErrorBody = extra.json().await.unwrap();
    assert!(body.detail.contains("colour"), "{body:?}");

    assert!(
        client.executions().await.is_empty(),
        "refused requests store nothing"
    );

    let cancel_unknown = client.cancel(999999).await;
    assert_eq!(cancel_unknown.status(), 404);
    server.finish().await;
}

/// A tar built by hand, so the server (not the CLI's local checks) must catch the problem.
fn raw_archive(files: &[(&str, &str, u32)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, contents, mode) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(contents.len() as u64);
        header.set_mode(*mode);
        header.set_entry_type(tar::EntryType::Regular);
        let name = header.as_gnu_mut().unwrap();
        name.name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_cksum();
        builder.append(&header, contents.as_bytes()).unwrap();
    }
    builder.into_inner().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_packs_are_refused_with_file_and_reason() {
    let server = TestServer::start(&[("ATTUNE__SERVER__MAX_PACK_BYTES", "65536")])
        .await
        .expect("start test server");
    let client = TestClient::new(&server);
    let pack_yaml = "ref: bad\nversion: 1.0.0\n";
    let script = "#!/bin/sh\necho hi\n";

    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "malformed yaml",
            raw_archive(&[
                ("pack.yaml", pack_yaml, 0o644),
                ("actions/a.yaml", "ref: bad.a\nrunner_type: shell\nentry_point: a.sh\nparameters: [unclosed\n", 0o644),
                ("actions/a.sh", script, 0o755),
            ]),
            422,
            "actions/a.yaml",
        ),
        (
            "entry point escaping the pack",
            raw_archive(&[
                ("pack.yaml", pack_yaml, 0o644),
                ("actions/a.yaml", "ref: bad.a\nrunner_type: shell\nentry_point: ../../../etc/passwd\ncontainer: busybox:1.36\n", 0o644),
            ]),
            422,
            "entry_point",
        ),
        (
            "invalid image reference",
            raw_archive(&[
                ("pack.yaml", pack_yaml, 0o644),
                ("actions/a.yaml", "ref: bad.a\nrunner_type: shell\nentry_point: a.sh\ncontainer: \"Busy Box::latest\"\n", 0o644),
                ("actions/a.sh", script, 0o755),
            ]),
            422,
            "Busy Box::latest",
        ),
        (
            "pack ref with a dot",
            raw_archive(&[("pack.yaml", "ref: bad.pack\n", 0o644)]),
            422,
            "bad.pack",
        ),
        (
            "archive path escaping",
            raw_archive(&[
                ("pack.yaml", pack_yaml, 0o644),
                ("../evil.sh", script, 0o755),
            ]),
            422,
            "..",
        ),
        ("not an archive", b"this is not a tar archive at all".repeat(40), 400, "not a tar archive"),
        ("too large", vec![0u8; 70_000], 413, "65536"),
    ];
    for (case, archive, expected_status, expected_text) in cases {
        let response = client.upload(archive, false).await;
        let status = response.status().as_u16();
        let body: ErrorBody = response
            .json()
            .await
            .unwrap_or_else(|error| panic!("{case}: error body is JSON: {error}"));
        assert_eq!(status, expected_status, "{case}: {body:?}");
        assert!(
            body.detail.contains(expected_text),
            "{case}: detail should name {expected_text:?}: {body:?}"
        );
    }
    let packs: List<Value> = client.get_json("/api/v1/packs").await;
    assert!(packs.items.is_empty(), "nothing half-registered");

    client.register_dir(hello_pack_dir()).await;
    let again = client
        .upload(
            attune_pack::build_pack_archive(hello_pack_dir()).unwrap(),
            false,
        )
        .await;
    assert_eq!(
        again.status(),
        409,
        "registering twice without force conflicts"
    );
    server.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_running_execution_and_finished_ones_conflict() {
    let (server, client) = start().await;
    let id = client.submit_ok("e2e.sleepy", json!({})).await;
    let running = client
        .with_deadline(Duration::from_secs(60))
        .wait_running(id)
        .await;
    assert_eq!(running.status, ExecutionStatus::Running, "{running:?}");
    let cancel = client.cancel(id).await;
    assert_eq!(cancel.status(), 202);
    let canceled = client.wait_terminal(id).await;
    assert_eq!(canceled.status, ExecutionStatus::Canceled, "{canceled:?}");

    let again = client.cancel(id).await;
    assert_eq!(again.status(), 409);
    let body: ErrorBody = again.json().await.unwrap();
    assert!(body.detail.contains("already ended"), "{body:?}");
    server.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_checks_every_dependency() {
    let server = TestServer::start(&[]).await.expect("start test server");
    let body: Value = reqwest::get(format!("{}/readyz", server.base_url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["status"], "ready", "{body}");
    for dependency in ["database", "message_queue", "docker"] {
        assert_eq!(body["checks"][dependency], "ok", "{body}");
    }
    let live = reqwest::get(format!("{}/livez", server.base_url))
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    server.finish().await;
}
