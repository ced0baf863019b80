//! The static agent in real containers (Docker + RabbitMQ on this host): two oneshot agents in
//! two containers of `attune-test/python-venv` share a named volume as their environment cache
//! (`ATTUNE_AGENT_ENV_CACHE`), as the controller wires it; the first builds the pack's virtualenv,
//! the second reuses it untouched.
//!
//! Needs `agent-dist/attune-agent-x86_64` (scripts/build-agent.sh) and the image
//! (`scripts/build-images.sh python-venv`); without them the test is skipped with a note, unless
//! `ATTUNE_REQUIRE_AGENT_BINARY=1` (set by `make test`), which makes their absence a failure. Containers are labelled `attune.test=true` and removed with
//! the volume and the queues by a guard, also when the test fails.

mod support;

use attune_protocol::{
    queues, AgentCommand, Job, JobOutcome, ParameterDelivery, ParameterFormat, Runtime,
    PROTOCOL_VERSION,
};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::{
    declare_queue, delete_queues, open_channel, read_events, send_command, unique_suffix,
    BROKER_URL,
};

const IMAGE: &str = "attune-test/python-venv:latest";
const WAIT_LIMIT: Duration = Duration::from_secs(180);
const WHEEL_NAME: &str = "attune_testpkg-1.0-py3-none-any.whl";
const PACK_DIR_IN_CONTAINER: &str = "/opt/attune/packs/envpack";
const CACHE_IN_CONTAINER: &str = "/opt/attune/envs";

/// Writes a pure-python wheel of `attune_testpkg` whose `VALUE` is argv[2].
const MAKE_WHEEL: &str = include_str!("fixtures/make_wheel.py");

/// The pack's action: prints the package's VALUE, its environment and when that was ready.
const SHOW: &str = include_str!("fixtures/show_environment.py");

fn docker(arguments: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(arguments)
        .output()
        .expect("run the docker cli")
}

/// Removes the test's containers, volume and queues, whatever happened.
struct Cleanup {
    containers: Vec<String>,
    volume: String,
    queue_names: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for container in &self.containers {
            let _ = docker(&["rm", "-f", container]);
        }
        let _ = docker(&["volume", "rm", "-f", &self.volume]);
        delete_queues(std::mem::take(&mut self.queue_names));
    }
}

fn job(execution_id: i64) -> Job {
    Job {
        protocol_version: PROTOCOL_VERSION,
        execution_id,
        action_ref: "envpack.show".to_string(),
        pack_ref: "envpack".to_string(),
        runtime: Runtime::Python,
        pack_dir: PACK_DIR_IN_CONTAINER.to_string(),
        entry_point: "actions/show.py".to_string(),
        parameters: Default::default(),
        secret_parameters: Vec::new(),
        parameter_delivery: ParameterDelivery::Env,
        parameter_format: ParameterFormat::Json,
        timeout_seconds: 60,
        kill_grace_seconds: 1,
        env: Default::default(),
        output_limit_bytes: 1024 * 1024,
        stream_logs: false,
        pack_sha256: None,
    }
}

/// Whether this test must run rather than skip: under `make test`
/// (ATTUNE_REQUIRE_AGENT_BINARY=1) and in CI (CI=true), a missing agent or image is a failure.
fn must_run() -> bool {
    std::env::var("ATTUNE_REQUIRE_AGENT_BINARY").is_ok_and(|value| value == "1")
        || std::env::var("CI").is_ok_and(|value| value == "true")
}

fn agent_binary() -> Option<PathBuf> {
    let path = match std::env::var_os("ATTUNE_AGENT_BINARY") {
        Some(path) => PathBuf::from(path),
        None => {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../agent-dist/attune-agent-x86_64")
        }
    };
    let required = must_run();
    if path.exists() {
        return Some(path.canonicalize().unwrap());
    }
    assert!(
        !required,
        "agent binary {} is missing and ATTUNE_REQUIRE_AGENT_BINARY=1: run scripts/build-agent.sh",
        path.display()
    );
    eprintln!(
        "skipping: agent binary {} not built (run scripts/build-agent.sh)",
        path.display()
    );
    None
}

fn make_pack(pack: &Path) {
    std::fs::create_dir_all(pack.join("actions")).unwrap();
    std::fs::create_dir_all(pack.join("vendor")).unwrap();
    std::fs::write(pack.join("actions/show.py"), SHOW).unwrap();
    std::fs::write(
        pack.join("requirements.txt"),
        format!("--no-index\n./vendor/{WHEEL_NAME}\n"),
    )
    .unwrap();
    let status = Command::new("python3")
        .args(["-c", MAKE_WHEEL])
        .arg(pack.join("vendor").join(WHEEL_NAME))
        .arg("in-a-volume")
        .status()
        .expect("python3 on the host makes the test wheel");
    assert!(status.success(), "make the test wheel: {status}");
}

#[tokio::test]
async fn containers_sharing_a_cache_volume_build_the_environment_once() {
    let Some(agent) = agent_binary() else {
        return;
    };
    let inspected = docker(&["image", "inspect", "--format", "{{.Id}}", IMAGE]);
    if !inspected.status.success() {
        assert!(
            !must_run(),
            "image {IMAGE} is missing and ATTUNE_REQUIRE_AGENT_BINARY=1: run scripts/build-images.sh python-venv"
        );
        eprintln!("skipping: image {IMAGE} missing (run scripts/build-images.sh python-venv)");
        return;
    }
    let image_id = String::from_utf8(inspected.stdout)
        .unwrap()
        .trim()
        .to_string();

    let unique = unique_suffix();
    let events_queue = format!("attune.test.events.{unique}");
    let mut cleanup = Cleanup {
        containers: Vec::new(),
        volume: format!("attune-test-envs-{unique}"),
        queue_names: vec![events_queue.clone()],
    };
    let pack = tempfile::tempdir().unwrap();
    make_pack(pack.path());

    let (connection, channel) = open_channel().await;
    let mut events = read_events(&channel, &events_queue, "envtest-reader", WAIT_LIMIT).await;

    let mut results: Vec<Value> = Vec::new();
    for execution_id in [1_i64, 2] {
        let agent_id = format!("envtest-{unique}-{execution_id}");
        let job_queue = queues::agent_job_queue(&agent_id);
        cleanup.queue_names.push(job_queue.clone());
        declare_queue(
            &channel,
            &job_queue,
            attune_agent::mq::job_queue_arguments(),
        )
        .await;
        send_command(&channel, &job_queue, &AgentCommand::Job(job(execution_id))).await;

        let container = format!("attune-test-envs-{unique}-{execution_id}");
        cleanup.containers.push(container.clone());
        let mounts = [
            format!("{}:{}:ro", agent.display(), queues::AGENT_PATH_IN_CONTAINER),
            format!("{}:{PACK_DIR_IN_CONTAINER}:ro", pack.path().display()),
            format!("{}:{CACHE_IN_CONTAINER}", cleanup.volume),
        ];
        let environment = [
            format!("{}={BROKER_URL}", queues::ENV_MESSAGE_QUEUE_URL),
            format!("{}={agent_id}", queues::ENV_AGENT_ID),
            format!("{}={events_queue}", queues::ENV_AGENT_EVENTS_QUEUE),
            format!("{}={IMAGE}", queues::ENV_AGENT_IMAGE),
            format!("ATTUNE_AGENT_IMAGE_ID={image_id}"),
            format!("ATTUNE_AGENT_ENV_CACHE={CACHE_IN_CONTAINER}"),
        ];
        let mut arguments = vec![
            "run".to_string(),
            "--detach".to_string(),
            "--name".to_string(),
            container.clone(),
            "--label".to_string(),
            "attune.test=true".to_string(),
            "--network".to_string(),
            "host".to_string(),
            "--entrypoint".to_string(),
            queues::AGENT_PATH_IN_CONTAINER.to_string(),
        ];
        for mount in &mounts {
            arguments.extend(["--volume".to_string(), mount.clone()]);
        }
        for variable in &environment {
            arguments.extend(["--env".to_string(), variable.clone()]);
        }
        arguments.push(IMAGE.to_string());
        let arguments: Vec<&str> = arguments.iter().map(String::as_str).collect();
        let started = docker(&arguments);
        assert!(
            started.status.success(),
            "docker run: {}",
            String::from_utf8_lossy(&started.stderr)
        );

        let (report, _) = events.finished(execution_id).await;
        if report.outcome != JobOutcome::Succeeded {
            let logs = docker(&["logs", &container]);
            panic!(
                "execution {execution_id}: {report:#?}\nagent log:\n{}",
                String::from_utf8_lossy(&logs.stderr)
            );
        }
        results.push(report.result.expect("a result"));
    }

    assert_eq!(results[0]["value"], "in-a-volume");
    let prefix = results[0]["prefix"].as_str().unwrap();
    assert!(
        prefix.starts_with(&format!("{CACHE_IN_CONTAINER}/python-")),
        "{prefix}"
    );
    assert_eq!(
        results[1], results[0],
        "the second container reuses the environment (same directory, .ready untouched)"
    );
    let _ = connection.close(200, "test done".into()).await;
}
