//! Agent binaries over HTTP and the wrapper script, against a real server and in a real busybox
//! container: `GET /api/v1/agent/binary` streams the binary with its length and RFC 9530
//! digest only with the bootstrap token (missing, wrong, 10 KB and non-ASCII tokens refused),
//! refuses unknown architectures and names (path tricks included) with 404, answers HEAD and
//! ignores ranges; `binary.sha256` and `info` describe what exists. The wrapper
//! (scripts/attune-agent-wrapper.sh) downloads, verifies and execs the agent — as a worker that
//! then runs a job — and refuses a wrong token, an unknown architecture, an altered binary and an image without a
//! downloader (python:3.11-slim: dash, no curl or wget), each with a message saying so.

use attune_protocol::api::{ExecutionStatus, Role};
use attune_protocol::worker::{WorkerStatus, WorkerView};
use attune_testkit::{TestClient, TestEnvironment, TestServer};
use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn wrapper() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/attune-agent-wrapper.sh")
}

/// A directory holding the test's agent as `attune-agent-x86_64`, and its bytes.
fn binary_dir() -> (tempfile::TempDir, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let agent = std::fs::read(TestEnvironment::from_env().agent_binary).expect("the agent binary");
    std::fs::write(dir.path().join("attune-agent-x86_64"), &agent).unwrap();
    (dir, agent)
}

/// `docker run --rm` of busybox with the wrapper as its entrypoint: (exit code, stdout, stderr).
fn run_wrapper(environment: &[(&str, &str)], arguments: &[&str]) -> (i32, String, String) {
    run_wrapper_in("busybox:1.36", environment, arguments)
}

/// [`run_wrapper`] in `image`.
fn run_wrapper_in(
    image: &str,
    environment: &[(&str, &str)],
    arguments: &[&str],
) -> (i32, String, String) {
    let mut command = Command::new("docker");
    command.args([
        "run",
        "--rm",
        "--network",
        "host",
        "--label",
        "attune.test=true",
        "-v",
        &format!("{}:/attune-agent-wrapper.sh:ro", wrapper().display()),
        "--entrypoint",
        "/bin/sh",
    ]);
    for (key, value) in environment {
        command.args(["-e", &format!("{key}={value}")]);
    }
    command.args([image, "/attune-agent-wrapper.sh"]);
    command.args(arguments);
    let output = command.output().expect("docker run");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).to_string(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_binaries_are_served_with_their_digest_and_only_with_the_bootstrap_token() {
    let (dir, agent) = binary_dir();
    let token = format!("boot-{}", uuid::Uuid::new_v4().simple());
    let server = TestServer::start(&[
        ("ATTUNE__AGENT__BINARY_DIR", dir.path().to_str().unwrap()),
        ("ATTUNE__AGENT__BOOTSTRAP_TOKEN", &token),
    ])
    .await
    .expect("start test server");
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", server.base_url);
    let binary = url("/api/v1/agent/binary");

    // Without the bootstrap token (an API bearer token does not count), or with a bad one: 401.
    for request in [
        http.get(&binary),
        http.get(&binary).bearer_auth(&server.admin_token),
        http.get(&binary).header("x-agent-token", "wrong"),
        http.get(&binary).header("x-agent-token", ""),
        http.get(&binary)
            .header("x-agent-token", "x".repeat(10_000)),
        http.get(format!("{binary}?token=%C3%A9t%C3%A9")),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401);
        let body: Value = response.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap().starts_with("agent_token"),
            "{body}"
        );
        assert!(!body.to_string().contains(&token), "{body}");
    }

    let response = http
        .get(&binary)
        .header("x-agent-token", &token)
        .header("range", "bytes=0-9")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        200,
        "a range is ignored: the whole binary"
    );
    let headers = response.headers().clone();
    let digest = Sha256::digest(&agent);
    assert_eq!(headers["content-length"], agent.len().to_string().as_str());
    assert_eq!(headers["content-type"], "application/octet-stream");
    assert_eq!(
        headers["content-disposition"],
        "attachment; filename=\"attune-agent\""
    );
    assert_eq!(
        headers["repr-digest"],
        format!(
            "sha-256=:{}:",
            base64::engine::general_purpose::STANDARD.encode(digest)
        )
        .as_str()
    );
    assert_eq!(response.bytes().await.unwrap().as_ref(), agent.as_slice());

    let head = http
        .head(format!("{binary}?token={token}&arch=amd64"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(
        head.headers()["content-length"],
        agent.len().to_string().as_str()
    );

    let sha = http
        .get(url("/api/v1/agent/binary.sha256?arch=x86_64"))
        .header("x-agent-token", &token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(sha, format!("{}  attune-agent\n", hex_digest(&agent)));

    // Unknown architectures and names, path tricks included: 404 naming what exists.
    for query in [
        "arch=arm64",
        "arch=mips",
        "arch=../x",
        "arch=..%2f..%2fetc%2fpasswd",
        "arch=%252e%252e%252f",
        "name=../../etc/passwd",
        "name=attune-sensor-agent",
    ] {
        let response = http
            .get(format!("{binary}?{query}"))
            .header("x-agent-token", &token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{query}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "not_found", "{query}: {body}");
    }

    let info: Value = http
        .get(url("/api/v1/agent/info"))
        .header("x-agent-token", &token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let items = info["items"].as_array().unwrap();
    let x86 = items
        .iter()
        .find(|item| item["name"] == "attune-agent" && item["arch"] == "x86_64")
        .unwrap();
    assert_eq!(x86["available"], true);
    assert_eq!(x86["sha256"], hex_digest(&agent).as_str());
    let arm = items
        .iter()
        .find(|item| item["name"] == "attune-agent" && item["arch"] == "aarch64")
        .unwrap();
    assert_eq!(arm["available"], false);
    server.finish().await;
}

fn hex_digest(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Serves `/api/v1/agent/binary.sha256` with the real digest and `/api/v1/agent/binary` with
/// other bytes: a binary altered in transit.
async fn serve_altered(listener: tokio::net::TcpListener, real_sha256: String, altered: Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let real_sha256 = real_sha256.clone();
        let altered = altered.clone();
        tokio::spawn(async move {
            let mut request = vec![0u8; 4096];
            let read = stream.read(&mut request).await.unwrap_or(0);
            let request = String::from_utf8_lossy(&request[..read]).to_string();
            let body = if request.contains("binary.sha256") {
                format!("{real_sha256}  attune-agent\n").into_bytes()
            } else {
                altered
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(&body).await;
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wrapper_downloads_verifies_and_runs_the_agent_and_refuses_what_it_cannot_trust() {
    let (dir, agent) = binary_dir();
    let token = format!("boot-{}", uuid::Uuid::new_v4().simple());
    let server = TestServer::start(&[
        ("ATTUNE__AGENT__BINARY_DIR", dir.path().to_str().unwrap()),
        ("ATTUNE__AGENT__BOOTSTRAP_TOKEN", &token),
        ("ATTUNE__WORKERS__HEARTBEAT_SECONDS", "1"),
    ])
    .await
    .expect("start test server");
    let client = TestClient::new(&server);

    // Download, verify, exec.
    let (code, stdout, stderr) = run_wrapper(
        &[
            ("ATTUNE_AGENT_URL", &server.base_url),
            ("ATTUNE_AGENT_TOKEN", &token),
        ],
        &["--version"],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("attune-agent "), "{stdout}{stderr}");

    // A wrong token, an unknown architecture, no downloader: refused, saying why.
    let (code, stdout, stderr) = run_wrapper(
        &[
            ("ATTUNE_AGENT_URL", &server.base_url),
            ("ATTUNE_AGENT_TOKEN", "wrong"),
        ],
        &["--version"],
    );
    assert_eq!(code, 1);
    assert!(
        stderr.contains("refused the agent download (401)"),
        "{stdout}{stderr}"
    );
    let (code, _, stderr) = run_wrapper(
        &[
            ("ATTUNE_AGENT_URL", &server.base_url),
            ("ATTUNE_AGENT_ARCH", "mips"),
        ],
        &["--version"],
    );
    assert_eq!(code, 1);
    assert!(
        stderr.contains("architecture mips has no agent build"),
        "{stderr}"
    );
    // python:3.11-slim has a shell (dash) and sha256sum but neither curl nor wget.
    let (code, _, stderr) = run_wrapper_in(
        "python:3.11-slim",
        &[("ATTUNE_AGENT_URL", &server.base_url)],
        &["--version"],
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("neither curl nor wget"), "{stderr}");

    // A binary altered in transit is refused and never run.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let altered_url = format!("http://{}", listener.local_addr().unwrap());
    let mut altered = agent.clone();
    altered.truncate(agent.len() / 2);
    let serving = tokio::spawn(serve_altered(listener, hex_digest(&agent), altered));
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || {
        run_wrapper(
            &[
                ("ATTUNE_AGENT_URL", &altered_url),
                ("ATTUNE_AGENT_DOWNLOAD_TRIES", "1"),
            ],
            &["--version"],
        )
    })
    .await
    .unwrap();
    serving.abort();
    assert_eq!(code, 1);
    assert!(
        stderr.contains("refusing to run it (truncated or altered in transit)"),
        "{stderr}"
    );
    assert!(
        !stdout.contains("attune-agent"),
        "the altered binary ran: {stdout}"
    );

    // As a worker: the wrapper fetches the agent, which enrolls and runs a job.
    client
        .register_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/packs/workers"))
        .await;
    let worker_token = client
        .api()
        .create_token("wrapped-worker", Role::Worker)
        .await
        .unwrap()
        .token;
    let name = format!(
        "wrapped-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let started = Command::new("docker")
        .args([
            "run",
            "-d",
            "--network",
            "host",
            "--label",
            "attune.test=true",
            "--name",
            &name,
            "-v",
            &format!("{}:/attune-agent-wrapper.sh:ro", wrapper().display()),
            "--entrypoint",
            "/bin/sh",
            "-e",
            &format!("ATTUNE_AGENT_URL={}", server.base_url),
            "-e",
            &format!("ATTUNE_AGENT_TOKEN={token}"),
            "-e",
            &format!("ATTUNE_API_URL={}", server.base_url),
            "-e",
            &format!("ATTUNE_WORKER_TOKEN={worker_token}"),
            "-e",
            &format!("ATTUNE_WORKER_NAME={name}"),
            "busybox:1.36",
            "/attune-agent-wrapper.sh",
        ])
        .output()
        .expect("docker run");
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    let _remove = RemoveContainer(name.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let worker = loop {
        let list: Value = client.get_json("/api/v1/workers").await;
        let workers: Vec<WorkerView> = serde_json::from_value(list["items"].clone()).unwrap();
        if let Some(worker) = workers
            .into_iter()
            .find(|worker| worker.name == name && worker.status == WorkerStatus::Online)
        {
            break worker;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the wrapped worker never came online: {}",
            String::from_utf8_lossy(
                &Command::new("docker")
                    .args(["logs", &name])
                    .output()
                    .unwrap()
                    .stderr
            )
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ran = client
        .run_succeeded("workers.hello_sh", json!({"item": 5}))
        .await;
    assert_eq!(ran.status, ExecutionStatus::Succeeded);
    assert_eq!(ran.worker.as_deref(), Some(name.as_str()));
    drop(_remove);
    attune_testkit::delete_worker_enrollments(&[worker.agent_id]).await;
    server.finish().await;
}

/// Removes a container when dropped.
struct RemoveContainer(String);

impl Drop for RemoveContainer {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}
