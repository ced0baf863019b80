//! Container lifecycle end to end against the real engine, broker and database: a controller
//! killed mid-run and restarted leaves no orphaned container and no stuck execution; a
//! `docker kill` from outside fails the execution as `killed`; a memory hog over its limit is
//! `oom` (or `killed`), never a success; every container carries the hardened defaults and the
//! action's limits; the image allow-list refuses at submit time; the periodic sweep removes
//! stale containers.
//!
//! Needs Docker, RabbitMQ, Postgres, the images of scripts/build-images.sh and the agent of
//! scripts/build-agent.sh (`make test` provides all of them).

use attune_protocol::api::{ErrorBody, ExecutionStatus};
use attune_testkit::{
    containers_of, wait_no_containers, ContainerGuard, TestClient, TestEnvironment, TestServer,
};
use bollard::container::{InspectContainerOptions, ListContainersOptions};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(120);

fn lifecycle_pack_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/packs/lifecycle")
}

async fn start(extra: &[(&str, &str)]) -> (TestServer, TestClient, ContainerGuard) {
    let mut settings = vec![("ATTUNE__EXECUTOR__KILL_GRACE_SECONDS", "1")];
    settings.extend_from_slice(extra);
    let server = TestServer::start(&settings)
        .await
        .expect("start test server");
    let guard = ContainerGuard::new(&server.controller_id);
    let client = TestClient::new(&server);
    client.register_dir(lifecycle_pack_dir()).await;
    (server, client, guard)
}

/// Waits until a container of the controller is gone; fails the test with `what` after `deadline`.
async fn wait_container_removed(
    controller_id: &str,
    container_id: &str,
    deadline: Duration,
    what: &str,
) {
    let give_up = tokio::time::Instant::now() + deadline;
    while containers_of(controller_id)
        .iter()
        .any(|id| id == container_id)
    {
        assert!(tokio::time::Instant::now() < give_up, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `docker kill` from outside, as an operator would; asserts the engine did it.
fn docker_kill(container_id: &str) {
    let killed = Command::new("docker")
        .args(["kill", container_id])
        .output()
        .expect("docker kill");
    assert!(
        killed.status.success(),
        "docker kill {container_id}: {}",
        String::from_utf8_lossy(&killed.stderr)
    );
}

async fn docker() -> bollard::Docker {
    bollard::Docker::connect_with_unix_defaults()
        .expect("docker socket")
        .negotiate_version()
        .await
        .expect("negotiate docker api version")
}

/// Creates (does not start) a busybox container carrying a controller's labels, as a
/// controller that died mid-create would leave it.
async fn create_stray_container(
    docker: &bollard::Docker,
    controller_id: &str,
    execution: &str,
) -> String {
    let labels = HashMap::from([
        ("attune.managed".to_string(), "true".to_string()),
        ("attune.controller".to_string(), controller_id.to_string()),
        ("attune.execution".to_string(), execution.to_string()),
        (
            "attune.agent-id".to_string(),
            format!("exec-{execution}-stray"),
        ),
        ("attune.test".to_string(), "true".to_string()),
    ]);
    let config = bollard::container::Config {
        image: Some("busybox:1.36".to_string()),
        cmd: Some(vec!["true".to_string()]),
        labels: Some(labels),
        ..Default::default()
    };
    docker
        .create_container(
            None::<bollard::container::CreateContainerOptions<String>>,
            config,
        )
        .await
        .expect("create stray container")
        .id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_killed_mid_run_restarts_with_no_orphan_and_no_stuck_execution() {
    let (mut server, client, _guard) = start(&[]).await;
    let short = client
        .submit_ok("lifecycle.nap", json!({"seconds": 4}))
        .await;
    let long = client
        .submit_ok("lifecycle.nap", json!({"seconds": 90}))
        .await;
    let short_view = client.wait_running(short).await;
    let long_view = client.wait_running(long).await;
    assert_eq!(
        short_view.status,
        ExecutionStatus::Running,
        "{short_view:?}"
    );
    assert_eq!(long_view.status, ExecutionStatus::Running, "{long_view:?}");
    let docker = docker().await;
    // A container whose execution the database never heard of (its create raced the crash).
    let stray = create_stray_container(&docker, &server.controller_id, "999999").await;

    server.crash().await;
    let left_running = containers_of(&server.controller_id);
    assert_eq!(
        left_running.len(),
        3,
        "the crash leaves the containers: {left_running:?}"
    );

    let server = server
        .restart(&[("ATTUNE__EXECUTOR__KILL_GRACE_SECONDS", "1")])
        .await
        .expect("restart");
    let client = TestClient::new(&server);
    // The listener accepts before the start-up reconcile is done: wait for its effect.
    wait_container_removed(
        &server.controller_id,
        &stray,
        DEADLINE,
        "the start-up reconcile never removed the stray container",
    )
    .await;

    // The short nap was adopted: its agent's report reaches the new server.
    let short_done = client.wait_terminal(short).await;
    assert_eq!(
        short_done.status,
        ExecutionStatus::Succeeded,
        "{short_done:?}"
    );
    assert_eq!(short_done.result.as_ref().unwrap()["slept"], 4);
    // The long nap was adopted too: a cancel reaches its agent.
    assert_eq!(
        client.execution(long).await.status,
        ExecutionStatus::Running
    );
    assert_eq!(client.cancel(long).await.status(), 202, "cancel {long}");
    let long_done = client.wait_terminal(long).await;
    assert_eq!(long_done.status, ExecutionStatus::Canceled, "{long_done:?}");

    let stuck = client.unfinished_executions().await;
    assert!(stuck.is_empty(), "no execution stuck: {stuck:?}");
    wait_no_containers(&server.controller_id, DEADLINE).await;
    server.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_kill_of_a_running_action_fails_it_as_killed() {
    let (server, client, _guard) = start(&[]).await;
    let id = client
        .submit_ok("lifecycle.nap", json!({"seconds": 90}))
        .await;
    let running = client.wait_running(id).await;
    assert_eq!(running.status, ExecutionStatus::Running, "{running:?}");
    let container_id = running.container_id.expect("container id");
    docker_kill(&container_id);
    let done = client.wait_terminal(id).await;
    assert_eq!(done.status, ExecutionStatus::Failed, "{done:?}");
    assert!(
        done.error.as_deref().unwrap_or_default().contains("killed"),
        "{done:?}"
    );
    assert_eq!(
        server.database.failure_kind(id).await.as_deref(),
        Some("killed")
    );
    server.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_action_whose_container_dies_is_requeued_once() {
    let (server, client, _guard) = start(&[]).await;
    let id = client
        .submit_ok("lifecycle.nap_idempotent", json!({"seconds": 90}))
        .await;
    let running = client.wait_running(id).await;
    let container_id = running.container_id.expect("container id");
    docker_kill(&container_id);
    let done = client.wait_terminal(id).await;
    assert_eq!(done.status, ExecutionStatus::Failed, "{done:?}");
    let error = done.error.clone().unwrap_or_default();
    let retry_id: i64 = error
        .rsplit("requeued once as execution ")
        .next()
        .and_then(|tail| tail.trim().parse().ok())
        .unwrap_or_else(|| panic!("the reason names the retry: {done:?}"));
    let retry = client.wait_running(retry_id).await;
    assert_eq!(retry.retry_of, Some(id), "{retry:?}");
    assert_eq!(retry.action, "lifecycle.nap_idempotent");
    // A retry is never retried: killing it again ends it for good.
    docker_kill(retry.container_id.as_deref().expect("container id"));
    let retry_done = client.wait_terminal(retry_id).await;
    assert_eq!(retry_done.status, ExecutionStatus::Failed, "{retry_done:?}");
    assert!(
        !retry_done.error.unwrap_or_default().contains("requeued"),
        "requeued only once"
    );
    server.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_hog_over_its_limit_is_oom_or_killed_never_success() {
    let (server, client, _guard) = start(&[]).await;
    let done = client.run("lifecycle.hog", json!({})).await;
    assert_eq!(done.status, ExecutionStatus::Failed, "{done:?}");
    assert!(!done.stderr.contains("without being stopped"), "{done:?}");
    // The agent's report (a process killed by signal 9) is stored first; the controller then
    // learns from the engine that it was an OOM kill and reclassifies it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let kind = server.database.failure_kind(done.id).await;
        if matches!(kind.as_deref(), Some("oom") | Some("killed")) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "kind {kind:?}: {done:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let error = client.execution(done.id).await.error.unwrap_or_default();
    assert!(
        error.contains("memory") || error.contains("killed"),
        "{error}"
    );
    server.finish().await;
}

fn agent_volume_name() -> String {
    let agent = std::fs::read(TestEnvironment::from_env().agent_binary).expect("read agent binary");
    let digest: String = Sha256::digest(&agent)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("attune-agent-{}", &digest[..12])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_container_carries_the_hardened_defaults_and_its_limits() {
    let (server, client, _guard) = start(&[
        ("ATTUNE__DOCKER__REMOVE_CONTAINERS", "false"),
        ("ATTUNE__DOCKER__AGENT_DELIVERY", "volume"),
        ("ATTUNE__EXECUTOR__RECONCILE_INTERVAL_SECONDS", "3600"),
    ])
    .await;
    let mut ran = HashMap::new();
    for action in ["lifecycle.nap", "lifecycle.read_only", "lifecycle.limited"] {
        let parameters = if action == "lifecycle.nap" {
            json!({"seconds": 0})
        } else {
            json!({})
        };
        let done = client.run_succeeded(action, parameters).await;
        ran.insert(done.container_id.clone().expect("container id"), done);
    }
    let read_only = ran
        .values()
        .find(|done| done.action == "lifecycle.read_only")
        .unwrap();
    let seen = read_only.result.as_ref().unwrap();
    assert_eq!(seen["root"], "read-only", "{seen}");
    assert_eq!(seen["tmp"], "writable", "{seen}");
    assert_eq!(seen["pack"], "read-only", "{seen}");
    let limited = ran
        .values()
        .find(|done| done.action == "lifecycle.limited")
        .unwrap();
    assert_eq!(limited.result.as_ref().unwrap()["nofile"], "4096");

    let docker = docker().await;
    let listed = docker
        .list_containers(Some(ListContainersOptions::<String> {
            all: true,
            filters: HashMap::from([(
                "label".to_string(),
                vec![format!("attune.controller={}", server.controller_id)],
            )]),
            ..Default::default()
        }))
        .await
        .expect("list containers");
    assert_eq!(
        listed.len(),
        3,
        "one container per execution, no helper left: {listed:?}"
    );
    let agent_bind = format!("{}:/opt/attune/bin:ro", agent_volume_name());
    for summary in listed {
        let container_id = summary.id.clone().unwrap();
        let execution = &ran[&container_id];
        let inspect = docker
            .inspect_container(&container_id, None::<InspectContainerOptions>)
            .await
            .expect("inspect");
        let host = inspect.host_config.clone().expect("host config");
        let config = inspect.config.clone().expect("config");
        let action = execution.action.as_str();
        assert_eq!(host.cap_drop, Some(vec!["ALL".to_string()]), "{action}");
        assert!(host.cap_add.unwrap_or_default().is_empty(), "{action}");
        assert!(
            host.security_opt
                .clone()
                .unwrap_or_default()
                .contains(&"no-new-privileges".to_string()),
            "{action}"
        );
        assert_eq!(host.init, Some(true), "{action}");
        let nofile = host
            .ulimits
            .clone()
            .unwrap_or_default()
            .into_iter()
            .find(|ulimit| ulimit.name.as_deref() == Some("nofile"))
            .expect("nofile ulimit");
        assert_eq!(
            (nofile.soft, nofile.hard),
            (Some(4096), Some(4096)),
            "{action}"
        );
        assert!(host.memory.unwrap_or(0) > 0, "{action}: a memory limit");
        assert_eq!(host.memory_swap, host.memory, "{action}: no swap");
        assert!(host.pids_limit.unwrap_or(0) > 0, "{action}: a pids limit");
        assert!(
            host.binds.clone().unwrap_or_default().contains(&agent_bind),
            "{action}: the agent volume read-only: {:?}",
            host.binds
        );
        assert!(
            !config.user.clone().unwrap_or_default().is_empty(),
            "{action}: explicit user"
        );
        assert!(
            !config.working_dir.clone().unwrap_or_default().is_empty(),
            "{action}: explicit working dir"
        );
        let labels = config.labels.clone().unwrap_or_default();
        assert_eq!(labels["attune.managed"], "true");
        assert_eq!(labels["attune.agent-delivery"], "volume");
        assert_eq!(labels["attune.execution"], execution.id.to_string());
        match action {
            "lifecycle.nap" => {
                assert_eq!(host.memory, Some(512 << 20), "the default memory");
                assert_eq!(host.pids_limit, Some(512));
                assert_eq!(host.readonly_rootfs, Some(false));
            }
            "lifecycle.read_only" => {
                assert_eq!(host.readonly_rootfs, Some(true));
                assert!(host.tmpfs.clone().unwrap_or_default().contains_key("/tmp"));
                assert!(
                    host.binds
                        .clone()
                        .unwrap_or_default()
                        .iter()
                        .any(|bind| bind.starts_with("attune-pack-")
                            && bind.ends_with(":/opt/attune/packs/lifecycle:ro")),
                    "{:?}",
                    host.binds
                );
            }
            "lifecycle.limited" => {
                assert_eq!(host.memory, Some(128 << 20));
                assert_eq!(host.nano_cpus, Some(500_000_000));
                assert_eq!(host.pids_limit, Some(64));
                assert_eq!(config.working_dir.as_deref(), Some("/tmp"));
            }
            other => panic!("unexpected action {other}"),
        }
        docker
            .remove_container(
                &container_id,
                Some(bollard::container::RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await
            .expect("remove inspected container");
    }
    server.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_allow_list_refuses_at_submit_time() {
    let (server, client, _guard) = start(&[(
        "ATTUNE__DOCKER__ALLOWED_IMAGES",
        "python:3.11-*,attune-test/*",
    )])
    .await;
    let refused = client.submit("lifecycle.nap", json!({})).await;
    assert_eq!(refused.status(), 422);
    let body: ErrorBody = refused.json().await.unwrap();
    assert_eq!(body.error, "image_not_allowed");
    assert!(
        body.detail.contains("image busybox:1.36 is not allowed")
            && body.detail.contains("python:3.11-*, attune-test/*"),
        "{body:?}"
    );
    assert!(client.executions().await.is_empty(), "nothing stored");
    server.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_periodic_reconcile_sweeps_containers_of_unknown_executions() {
    let (server, _client, _guard) = start(&[
        ("ATTUNE__EXECUTOR__RECONCILE_INTERVAL_SECONDS", "1"),
        ("ATTUNE__EXECUTOR__RECONCILE_GRACE_SECONDS", "0"),
    ])
    .await;
    let docker = docker().await;
    let stray = create_stray_container(&docker, &server.controller_id, "424242").await;
    wait_container_removed(
        &server.controller_id,
        &stray,
        Duration::from_secs(30),
        "stray container never swept",
    )
    .await;
    server.finish().await;
}
