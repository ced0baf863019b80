//! Long-lived workers end to end: the real agent as the entrypoint of stock images
//! (busybox:1.36 for shell, python:3.11-slim for python), started by the test as an operator
//! would (`docker run` with Attune's worker variables, host networking here), enrolling with a
//! `worker` token, heartbeating, taking the actions without an image that fit them (runtime,
//! selector), downloading the pack's files from the API by digest, deregistering on SIGTERM,
//! and — SIGKILLed mid-job — going offline with its execution ending `worker-lost` and the
//! idempotent action requeued. Enrollment is refused without a token, with another role's
//! token, and with a malformed registration.

use attune_protocol::api::{ExecutionStatus, Role};
use attune_protocol::worker::{WorkerStatus, WorkerView};
use attune_protocol::FailureKind;
use attune_testkit::{TestClient, TestEnvironment, TestServer};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn workers_pack() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/packs/workers")
}

/// Worker containers the test started, removed whatever happens.
struct Workers {
    containers: Vec<String>,
    /// The workers' names.
    names: Vec<String>,
}

impl Drop for Workers {
    /// Removes the containers, then the broker accounts and job queues of every enrollment of
    /// the workers' names (also when the test failed before its own clean-up).
    fn drop(&mut self) {
        for container in &self.containers {
            let _ = Command::new("docker")
                .args(["rm", "-f", container])
                .output();
        }
        let names = std::mem::take(&mut self.names);
        let cleaning = std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                runtime.block_on(attune_testkit::delete_enrollments_of_workers(&names));
            }
        });
        let _ = cleaning.join();
    }
}

impl Workers {
    /// `docker run -d` of `image` with the agent as its entrypoint, as a worker named `name`.
    fn start(
        &mut self,
        image: &str,
        name: &str,
        api_url: &str,
        token: &str,
        extra: &[(&str, &str)],
    ) -> String {
        let agent = TestEnvironment::from_env().agent_binary;
        let mut command = Command::new("docker");
        command.args([
            "run",
            "-d",
            "--network",
            "host",
            "--label",
            "attune.test=true",
            "--name",
            name,
            "-v",
            &format!("{}:/opt/attune/agent/attune-agent:ro", agent.display()),
            "--entrypoint",
            "/opt/attune/agent/attune-agent",
            "-e",
            &format!("ATTUNE_WORKER_NAME={name}"),
            "-e",
            &format!("ATTUNE_API_URL={api_url}"),
            "-e",
            &format!("ATTUNE_WORKER_TOKEN={token}"),
            "-e",
            "ATTUNE__MESSAGE_QUEUE__URL=amqp://127.0.0.1:5672/%2f",
        ]);
        for (key, value) in extra {
            command.args(["-e", &format!("{key}={value}")]);
        }
        command.arg(image);
        let output = command.output().expect("docker run");
        assert!(
            output.status.success(),
            "docker run worker {name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let id = String::from_utf8_lossy(&output.stdout).trim().to_string();
        self.containers.push(id.clone());
        self.names.push(name.to_string());
        id
    }
}

fn docker(args: &[&str]) -> String {
    let output = Command::new("docker").args(args).output().expect("docker");
    String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr)
}

async fn workers(client: &TestClient) -> Vec<WorkerView> {
    let list: Value = client.get_json("/api/v1/workers").await;
    serde_json::from_value(list["items"].clone()).expect("workers as a list")
}

/// Waits until worker `name` has `status` (up to 60 s), returning it.
async fn wait_worker(
    client: &TestClient,
    name: &str,
    status: WorkerStatus,
    container: &str,
) -> WorkerView {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(worker) = workers(client)
            .await
            .into_iter()
            .find(|worker| worker.name == name && worker.status == status)
        {
            return worker;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "worker {name} never became {status}; its log:\n{}",
            docker(&["logs", "--tail", "40", container])
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_enroll_run_what_fits_them_and_end_what_they_lose() {
    let server = TestServer::start(&[
        ("ATTUNE__WORKERS__HEARTBEAT_SECONDS", "1"),
        ("ATTUNE__WORKERS__QUEUE_TIMEOUT_SECONDS", "600"),
    ])
    .await
    .expect("start test server");
    let client = TestClient::new(&server);
    client.register_dir(workers_pack()).await;
    let unique = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let token = client
        .api()
        .create_token(&format!("workers-{unique}"), Role::Worker)
        .await
        .expect("an admin makes a worker token")
        .token;

    // Who may enroll: only a worker token, and only a well-formed registration.
    let enrollment = json!({
        "name": format!("probe-{unique}"), "protocol_version": 1, "agent_version": "0",
        "runtimes": [{"name": "shell", "path": "/bin/sh"}], "concurrency": 1
    });
    // A client of its own: the test client sends the admin token on every request.
    let bare = reqwest::Client::new();
    let post = |token: Option<String>, body: Value| {
        let http = bare.clone();
        let url = client.url("/api/v1/workers");
        async move {
            let mut request = http.post(url).json(&body);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    assert_eq!(post(None, enrollment.clone()).await.0, 401);
    let (status, body) = post(Some(server.admin_token.clone()), enrollment.clone()).await;
    assert_eq!(
        status, 403,
        "an admin token does not enroll a worker: {body}"
    );
    let mut bad = enrollment.clone();
    bad["concurrency"] = json!(0);
    let (status, body) = post(Some(token.clone()), bad).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body.to_string().contains("concurrency 0 is out of range"),
        "{body}"
    );
    let mut bad = enrollment.clone();
    bad["runtimes"] = json!("shell");
    let (status, body) = post(Some(token.clone()), bad).await;
    assert!(status == 400 || status == 422, "{status} {body}");
    assert!(
        body.to_string().contains("runtimes"),
        "the error names the field: {body}"
    );
    let mut bad = enrollment.clone();
    bad["labels"] = json!({"k": "v".repeat(200)});
    let (status, body) = post(Some(token.clone()), bad).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("label \\\"k\\\""), "{body}");

    // Two workers on stock images.
    let mut started = Workers {
        containers: Vec::new(),
        names: Vec::new(),
    };
    let shell_name = format!("sh-{unique}");
    let python_name = format!("py-{unique}");
    let shell = started.start(
        "busybox:1.36",
        &shell_name,
        &server.base_url,
        &token,
        &[
            ("ATTUNE_WORKER_LABELS", "zone=eu"),
            ("ATTUNE_WORKER_CONCURRENCY", "2"),
        ],
    );
    let python = started.start(
        "python:3.11-slim",
        &python_name,
        &server.base_url,
        &token,
        &[],
    );
    let shell_view = wait_worker(&client, &shell_name, WorkerStatus::Online, &shell).await;
    let python_view = wait_worker(&client, &python_name, WorkerStatus::Online, &python).await;
    let mut agent_ids = vec![shell_view.agent_id.clone(), python_view.agent_id.clone()];
    assert_eq!(shell_view.labels["zone"], "eu");
    assert_eq!(shell_view.concurrency, 2);
    assert!(
        shell_view
            .runtimes
            .iter()
            .any(|runtime| runtime.name == "shell"),
        "{shell_view:?}"
    );
    assert!(
        python_view
            .runtimes
            .iter()
            .any(|runtime| runtime.name == "python"
                && runtime
                    .version
                    .as_deref()
                    .is_some_and(|version| version.starts_with("3.11"))),
        "{python_view:?}"
    );

    // Routed by runtime and selector; the pack's files come from the API by digest.
    let ran = client.run_succeeded("workers.hello_py", json!({})).await;
    assert_eq!(ran.worker.as_deref(), Some(python_name.as_str()), "{ran:?}");
    assert!(ran.stdout.contains("hello from python 3.11"), "{ran:?}");
    let ran = client.run_succeeded("workers.zoned", json!({})).await;
    assert_eq!(ran.worker.as_deref(), Some(shell_name.as_str()), "{ran:?}");
    let mut ids = Vec::new();
    for item in 0..6 {
        ids.push(
            client
                .submit_ok("workers.hello_sh", json!({"item": item}))
                .await,
        );
    }
    for (item, id) in ids.iter().enumerate() {
        let ended = client.wait_terminal(*id).await;
        assert_eq!(ended.status, ExecutionStatus::Succeeded, "{ended:?}");
        assert!(
            ended.stdout.contains(&format!("hello {item} from")),
            "{ended:?}"
        );
    }

    // A running execution on a worker is canceled there.
    let long = client
        .submit_ok("workers.slow", json!({"item": 9, "deciseconds": 600}))
        .await;
    client.wait_running(long).await;
    assert_eq!(client.cancel(long).await.status(), 202);
    let canceled = client.wait_terminal(long).await;
    assert_eq!(canceled.status, ExecutionStatus::Canceled, "{canceled:?}");
    assert!(canceled.worker.is_some(), "{canceled:?}");

    // No worker has ruby: it waits, saying why.
    let ruby = client.submit_ok("workers.ruby", json!({})).await;
    let waiting = client
        .wait_for(ruby, "waiting with a reason", |execution| {
            execution.waiting_reason.is_some()
        })
        .await;
    assert_eq!(waiting.status, ExecutionStatus::Requested);
    assert_eq!(
        waiting.waiting_reason.as_deref(),
        Some("waiting for a worker with runtime ruby")
    );
    assert_eq!(client.cancel(ruby).await.status(), 202);
    assert_eq!(
        client.wait_terminal(ruby).await.status,
        ExecutionStatus::Canceled
    );

    // SIGTERM: the shell worker drains and deregisters (offline at once, not after silence).
    docker(&["stop", "-t", "30", &shell]);
    wait_worker(&client, &shell_name, WorkerStatus::Offline, &shell).await;

    // SIGKILL mid-job: offline within three heartbeats, the execution ends worker-lost, and
    // the idempotent action is requeued once; it waits until a worker is back.
    let slow = client
        .submit_ok("workers.slow", json!({"item": 7, "deciseconds": 100}))
        .await;
    let running = client.wait_running(slow).await;
    assert_eq!(running.worker.as_deref(), Some(python_name.as_str()));
    docker(&["kill", "-s", "KILL", &python]);
    let lost = client.wait_terminal(slow).await;
    assert_eq!(lost.status, ExecutionStatus::Failed);
    assert_eq!(lost.failure_kind, Some(FailureKind::WorkerLost), "{lost:?}");
    let retry = client
        .executions()
        .await
        .into_iter()
        .find(|execution| execution.retry_of == Some(slow))
        .expect("the idempotent execution was requeued once");
    assert_eq!(retry.status, ExecutionStatus::Requested);
    // A new worker on the same name takes the retry.
    let _ = Command::new("docker").args(["rm", "-f", &python]).output();
    let again = started.start(
        "python:3.11-slim",
        &python_name,
        &server.base_url,
        &token,
        &[],
    );
    let again_view = wait_worker(&client, &python_name, WorkerStatus::Online, &again).await;
    agent_ids.push(again_view.agent_id.clone());
    assert_ne!(
        again_view.agent_id, python_view.agent_id,
        "a new enrollment is a new agent"
    );
    let retried = client.wait_terminal(retry.id).await;
    assert_eq!(retried.status, ExecutionStatus::Succeeded, "{retried:?}");
    assert!(retried.stdout.contains("item 7 done"), "{retried:?}");

    drop(started);
    attune_testkit::delete_worker_enrollments(&agent_ids).await;
    server.finish().await;
}

/// Writes a pure-python wheel of `attune_testpkg` whose `VALUE` is argv[2].
const MAKE_WHEEL: &str = include_str!("../../attune-agent/tests/fixtures/make_wheel.py");
/// The action: prints the package's VALUE, its environment and when that was ready.
const SHOW: &str = include_str!("../../attune-agent/tests/fixtures/show_environment.py");
const WHEEL: &str = "attune_testpkg-1.0-py3-none-any.whl";

/// A python pack without an image whose requirements.txt names a vendored wheel.
fn write_environment_pack(dir: &std::path::Path, value: &str, marker: &str) {
    std::fs::create_dir_all(dir.join("actions")).unwrap();
    std::fs::create_dir_all(dir.join("vendor")).unwrap();
    std::fs::write(dir.join("pack.yaml"), "ref: workerenv\nversion: 1.0.0\n").unwrap();
    std::fs::write(
        dir.join("actions/show.yaml"),
        "ref: workerenv.show\nrunner_type: python\nentry_point: show.py\ntimeout: 120\n",
    )
    .unwrap();
    std::fs::write(dir.join("actions/show.py"), SHOW).unwrap();
    std::fs::write(
        dir.join("requirements.txt"),
        format!("# {marker}\n./vendor/{WHEEL}\n"),
    )
    .unwrap();
    let made = Command::new("python3")
        .args(["-c", MAKE_WHEEL])
        .arg(dir.join("vendor").join(WHEEL))
        .arg(value)
        .status()
        .expect("run python3 to build the test wheel");
    assert!(made.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_builds_a_packs_environment_once_and_reuses_it() {
    const IMAGE: &str = "attune-test/python-venv:latest";
    assert!(
        Command::new("docker")
            .args(["image", "inspect", IMAGE])
            .output()
            .unwrap()
            .status
            .success(),
        "image {IMAGE} missing: run scripts/build-images.sh python-venv"
    );
    let server = TestServer::start(&[("ATTUNE__WORKERS__HEARTBEAT_SECONDS", "1")])
        .await
        .expect("start test server");
    let client = TestClient::new(&server).with_deadline(Duration::from_secs(180));
    let unique = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let token = client
        .api()
        .create_token(&format!("env-worker-{unique}"), Role::Worker)
        .await
        .unwrap()
        .token;
    let pack = tempfile::tempdir().unwrap();
    write_environment_pack(pack.path(), "first", unique);
    client.register_dir(pack.path()).await;
    let mut started = Workers {
        containers: Vec::new(),
        names: Vec::new(),
    };
    let name = format!("venv-{unique}");
    let container = started.start(IMAGE, &name, &server.base_url, &token, &[]);
    let view = wait_worker(&client, &name, WorkerStatus::Online, &container).await;

    let first = client.run_succeeded("workerenv.show", json!({})).await;
    assert_eq!(first.worker.as_deref(), Some(name.as_str()), "{first:?}");
    let first_result = first.result.clone().unwrap();
    assert_eq!(first_result["value"], "first", "{first:?}");
    let prefix = first_result["prefix"].as_str().unwrap().to_string();
    let second = client.run_succeeded("workerenv.show", json!({})).await;
    let second_result = second.result.unwrap();
    assert_eq!(
        second_result["prefix"],
        prefix.as_str(),
        "the same environment"
    );
    assert_eq!(
        second_result["ready_mtime_ns"], first_result["ready_mtime_ns"],
        "reused untouched, not rebuilt"
    );
    // A changed dependency file (a new pack digest, downloaded again) gets its own.
    write_environment_pack(pack.path(), "second", &format!("{unique} changed"));
    client.register_dir(pack.path()).await;
    let changed = client.run_succeeded("workerenv.show", json!({})).await;
    let changed_result = changed.result.unwrap();
    assert_eq!(changed_result["value"], "second");
    assert_ne!(
        changed_result["prefix"],
        prefix.as_str(),
        "a new environment"
    );

    drop(started);
    attune_testkit::delete_worker_enrollments(&[view.agent_id]).await;
    server.finish().await;
}
