//! The operator's limits end to end, against the real engine, broker and database: an action
//! whose pack asks past a resource ceiling (`docker.max_memory`, `docker.max_cpus`,
//! `docker.max_pids`) or adds back a capability that is not allowed is refused at submission
//! (422 naming the action, the resource, what it asked and the limit) and, when it was
//! submitted anyway (before a ceiling was lowered), at launch; an action exactly at every
//! ceiling runs; every action and warm pool container logs through a bounded json-file driver,
//! so a flood written to PID 1's stdout stays within `docker.log_max_size` × 2 on the engine's
//! disk; the never-started helpers that fill volumes are hardened like action containers.
//!
//! Needs Docker, RabbitMQ, Postgres, the busybox image and the agent of scripts/build-agent.sh
//! (`make test` provides all of them).

use async_trait::async_trait;
use attune_controller::delivery::{VolumeContent, VolumeFiller};
use attune_controller::limits::ExecutionPolicy;
use attune_docker::bollard_engine::BollardEngine;
use attune_docker::labels::{LABEL_AGENT_SHA256, LABEL_CONTROLLER, LABEL_MANAGED, LABEL_ROLE};
use attune_docker::{
    ContainerCreateSpec, ContainerEventStream, ContainerState, ContainerSummary, DockerError,
    DockerOps, EngineInfo, ImageInfo, RegistryCredentials, VolumeInfo,
};
use attune_protocol::api::{ErrorBody, ExecutionStatus};
use attune_protocol::FailureKind;
use attune_store::Store;
use attune_testkit::{ContainerGuard, TestClient, TestServer};
use bollard::container::{InspectContainerOptions, ListContainersOptions};
use bollard::models::HostConfig;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};

/// The default `docker.log_max_size` (10m) in bytes, as the json-file driver reads it.
const LOG_MAX_BYTES: u64 = 10 << 20;

fn limits_pack_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/packs/limits")
}

/// A server with the default ceilings (8Gi memory, 4096 pids), a CPU ceiling of 1 and no
/// capability allowed, keeping containers after their execution so they can be inspected.
async fn start() -> (TestServer, TestClient, ContainerGuard) {
    let server = TestServer::start(&[
        ("ATTUNE__DOCKER__MAX_CPUS", "1"),
        ("ATTUNE__DOCKER__REMOVE_CONTAINERS", "false"),
        ("ATTUNE__EXECUTOR__RECONCILE_INTERVAL_SECONDS", "3600"),
    ])
    .await
    .expect("start test server");
    let guard = ContainerGuard::new(&server.controller_id);
    let client = TestClient::new(&server);
    client.register_dir(limits_pack_dir()).await;
    (server, client, guard)
}

async fn docker() -> bollard::Docker {
    bollard::Docker::connect_with_unix_defaults()
        .expect("docker socket")
        .negotiate_version()
        .await
        .expect("negotiate docker api version")
}

/// Removes a container this test kept for inspection (`docker.remove_containers` is off).
async fn remove_kept(docker: &bollard::Docker, container_id: &str) {
    docker
        .remove_container(
            container_id,
            Some(bollard::container::RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await
        .expect("remove an inspected container");
}

async fn host_config(docker: &bollard::Docker, container_id: &str) -> HostConfig {
    docker
        .inspect_container(container_id, None::<InspectContainerOptions>)
        .await
        .expect("inspect container")
        .host_config
        .expect("host config")
}

/// Asserts a container logs through json-file, rotated at `max_size`, two files kept.
fn assert_bounded_log(host: &HostConfig, max_size: &str, what: &str) {
    let log_config = host.log_config.clone().expect("a log config");
    assert_eq!(log_config.typ.as_deref(), Some("json-file"), "{what}");
    let options = log_config.config.unwrap_or_default();
    assert_eq!(
        options.get("max-size").map(String::as_str),
        Some(max_size),
        "{what}: {options:?}"
    );
    assert_eq!(
        options.get("max-file").map(String::as_str),
        Some("2"),
        "{what}: {options:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asks_past_a_ceiling_are_refused_at_submission_and_at_launch() {
    let (server, client, _guard) = start().await;
    for (action, detail) in [
        (
            "limits.huge_memory",
            "action limits.huge_memory asks for 1Ti memory; the operator's limit docker.max_memory is 8Gi",
        ),
        (
            "limits.many_pids",
            "action limits.many_pids asks for 32768 pids; the operator's limit docker.max_pids is 4096",
        ),
        (
            "limits.many_cpus",
            "action limits.many_cpus asks for 2 cpus; the operator's limit docker.max_cpus is 1",
        ),
        (
            "limits.net_admin",
            "action limits.net_admin: capability NET_ADMIN is not allowed (docker.allowed_capabilities: none)",
        ),
    ] {
        let refused = client.submit(action, json!({})).await;
        assert_eq!(refused.status(), 422, "{action}");
        let body: ErrorBody = refused.json().await.expect("an error body");
        assert_eq!(body.error, "limit_exceeded", "{action}: {body:?}");
        assert_eq!(body.detail, detail, "{action}");
    }
    assert!(client.executions().await.is_empty(), "nothing stored");

    // Exactly at every ceiling: runs, with those limits.
    let docker = docker().await;
    let at_ceilings = client.run_succeeded("limits.at_ceilings", json!({})).await;
    let container_id = at_ceilings.container_id.clone().expect("a container");
    let host = host_config(&docker, &container_id).await;
    assert_eq!(host.memory, Some(8 << 30));
    assert_eq!(host.nano_cpus, Some(1_000_000_000));
    assert_eq!(host.pids_limit, Some(4096));
    assert_bounded_log(&host, "10m", "an action container");
    remove_kept(&docker, &container_id).await;

    // A warm pool container has the same log bound.
    client.run_succeeded("limits.warm", json!({})).await;
    let warm = docker
        .list_containers(Some(ListContainersOptions::<String> {
            all: true,
            filters: HashMap::from([(
                "label".to_string(),
                vec![
                    format!("attune.controller={}", server.controller_id),
                    "attune.pool".to_string(),
                ],
            )]),
            ..Default::default()
        }))
        .await
        .expect("list warm containers");
    assert!(!warm.is_empty(), "a warm container of limits.warm");
    for summary in warm {
        let host = host_config(&docker, summary.id.as_deref().unwrap()).await;
        assert_bounded_log(&host, "10m", "a warm pool container");
    }

    // Submitted before the ceiling was lowered (written straight into the database, as the
    // API of that time took it): the controller refuses it before creating anything.
    let store = Store::connect(&server.database.url, 1)
        .await
        .expect("connect to the test database");
    let action = store
        .get_action("limits.huge_memory")
        .await
        .expect("the action");
    let execution = store
        .create_execution(&action, &serde_json::Map::new())
        .await
        .expect("insert an execution");
    store.pool().close().await;
    let ended = client.wait_terminal(execution.id).await;
    assert_eq!(ended.status, ExecutionStatus::Failed, "{ended:?}");
    assert_eq!(
        ended.failure_kind,
        Some(FailureKind::NotAllowed),
        "{ended:?}"
    );
    assert_eq!(
        ended.error.as_deref(),
        Some("action limits.huge_memory asks for 1Ti memory; the operator's limit docker.max_memory is 8Gi"),
    );
    assert_eq!(ended.container_id, None, "no container created");
    server.finish().await;
}

/// The size of a file, which must exist.
fn file_size(path: &str) -> u64 {
    std::fs::metadata(path)
        .unwrap_or_else(|error| panic!("size of {path}: {error}"))
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_flood_through_pid_1_stays_within_the_log_bound() {
    let (server, client, _guard) = start().await;
    let flood = client
        .with_deadline(std::time::Duration::from_secs(300))
        .run_succeeded("limits.flood", json!({}))
        .await;
    assert_eq!(
        flood.result,
        Some(json!({"flooded_bytes": 52428800})),
        "{flood:?}"
    );
    let container_id = flood.container_id.clone().expect("a container");
    let docker = docker().await;
    let host = host_config(&docker, &container_id).await;
    assert_bounded_log(&host, "10m", "the flooded container");

    // What the engine keeps on its disk: the file being written and one rotated file, each
    // at most max-size (plus the one line that crossed it).
    let log_path = docker
        .inspect_container(&container_id, None::<InspectContainerOptions>)
        .await
        .expect("inspect")
        .log_path
        .expect("a log path");
    let slack = 64 << 10;
    let current = file_size(&log_path);
    assert!(
        current <= LOG_MAX_BYTES + slack,
        "a log file of {current} bytes, over 10m"
    );
    // The flood did reach the log: it was rotated.
    let rotated = file_size(&format!("{log_path}.1"));
    assert!(
        rotated <= LOG_MAX_BYTES + slack,
        "a rotated log file of {rotated} bytes, over 10m"
    );
    assert!(
        !std::path::Path::new(&format!("{log_path}.2")).exists(),
        "two files kept"
    );
    // And what it still serves of the ~50 MB written: at most the two files' worth.
    let logs = Command::new("docker")
        .args(["logs", &container_id])
        .output()
        .expect("docker logs");
    assert!(logs.status.success(), "docker logs {container_id}");
    let kept = (logs.stdout.len() + logs.stderr.len()) as u64;
    assert!(
        kept <= 2 * (LOG_MAX_BYTES + slack),
        "{kept} bytes of log kept, over 2 × 10m"
    );
    remove_kept(&docker, &container_id).await;
    server.finish().await;
}

/// The real engine, with each container's HostConfig inspected when something is uploaded
/// into it (a fill helper is removed right after its fill).
struct InspectingEngine {
    engine: BollardEngine,
    docker: bollard::Docker,
    inspected: Mutex<Vec<(HostConfig, HashMap<String, String>)>>,
}

#[async_trait]
impl DockerOps for InspectingEngine {
    async fn ping(&self) -> Result<(), DockerError> {
        self.engine.ping().await
    }
    async fn engine_info(&self) -> Result<EngineInfo, DockerError> {
        self.engine.engine_info().await
    }
    async fn inspect_image(&self, image: &str) -> Result<Option<ImageInfo>, DockerError> {
        self.engine.inspect_image(image).await
    }
    async fn pull_image(
        &self,
        image: &str,
        credentials: Option<&RegistryCredentials>,
    ) -> Result<(), DockerError> {
        self.engine.pull_image(image, credentials).await
    }
    async fn create_container(&self, spec: &ContainerCreateSpec) -> Result<String, DockerError> {
        self.engine.create_container(spec).await
    }
    async fn upload_archive(
        &self,
        container_id: &str,
        dest_dir: &str,
        tar: Vec<u8>,
    ) -> Result<(), DockerError> {
        let inspect = self
            .docker
            .inspect_container(container_id, None::<InspectContainerOptions>)
            .await
            .expect("inspect the helper");
        let labels = inspect
            .config
            .and_then(|config| config.labels)
            .unwrap_or_default();
        self.inspected
            .lock()
            .unwrap()
            .push((inspect.host_config.expect("host config"), labels));
        self.engine
            .upload_archive(container_id, dest_dir, tar)
            .await
    }
    async fn start_container(&self, container_id: &str) -> Result<(), DockerError> {
        self.engine.start_container(container_id).await
    }
    async fn start_container_with_input(
        &self,
        container_id: &str,
        input: &[u8],
    ) -> Result<(), DockerError> {
        self.engine
            .start_container_with_input(container_id, input)
            .await
    }
    async fn inspect_container(
        &self,
        container_id: &str,
    ) -> Result<Option<ContainerState>, DockerError> {
        self.engine.inspect_container(container_id).await
    }
    async fn wait_container(&self, container_id: &str) -> Result<i64, DockerError> {
        self.engine.wait_container(container_id).await
    }
    async fn kill_container(&self, container_id: &str, signal: &str) -> Result<(), DockerError> {
        self.engine.kill_container(container_id, signal).await
    }
    async fn remove_container(&self, container_id: &str) -> Result<(), DockerError> {
        self.engine.remove_container(container_id).await
    }
    async fn list_containers(
        &self,
        labels: &[(&str, &str)],
    ) -> Result<Vec<ContainerSummary>, DockerError> {
        self.engine.list_containers(labels).await
    }
    async fn container_logs(&self, container_id: &str, tail: usize) -> Result<String, DockerError> {
        self.engine.container_logs(container_id, tail).await
    }
    async fn create_volume(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<VolumeInfo, DockerError> {
        self.engine.create_volume(name, labels).await
    }
    async fn inspect_volume(&self, name: &str) -> Result<Option<VolumeInfo>, DockerError> {
        self.engine.inspect_volume(name).await
    }
    async fn remove_volume(&self, name: &str) -> Result<(), DockerError> {
        self.engine.remove_volume(name).await
    }
    async fn read_file(
        &self,
        container_id: &str,
        path: &str,
    ) -> Result<Option<Vec<u8>>, DockerError> {
        self.engine.read_file(container_id, path).await
    }
    fn container_events(&self, labels: &[(&str, &str)]) -> ContainerEventStream {
        self.engine.container_events(labels)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_fill_helpers_are_hardened_on_the_real_engine() {
    let engine = Arc::new(InspectingEngine {
        engine: BollardEngine::connect(None).await.expect("docker engine"),
        docker: docker().await,
        inspected: Mutex::default(),
    });
    let controller_id = format!("limits-helper-{}", uuid::Uuid::new_v4().simple());
    let _guard = ContainerGuard::new(&controller_id);
    let policy = ExecutionPolicy::default()
        .with_log_max_size("3m")
        .expect("a log size");
    let digest = uuid::Uuid::new_v4().simple().to_string().repeat(2);
    let content = VolumeContent {
        volume: format!("attune-agent-test-{}", &digest[..12]),
        labels: BTreeMap::from([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_AGENT_SHA256.to_string(), digest.clone()),
        ]),
        identity_label: LABEL_AGENT_SHA256,
        digest,
        directories: Vec::new(),
        files: vec![(
            "attune-agent".to_string(),
            0o755,
            Arc::new(b"not really an agent".to_vec()),
        )],
    };
    let filler =
        || VolumeFiller::new(engine.clone(), &controller_id).with_log_config(policy.log_config());
    let filled = filler().ensure(&content, "busybox:1.36").await;
    // A new process finds the volume filled: the fill through a read-only root landed.
    let checked = filler().ensure(&content, "busybox:1.36").await;
    let inspected = engine.inspected.lock().unwrap().clone();
    let remaining = engine
        .engine
        .list_containers(&[(LABEL_CONTROLLER, &controller_id)])
        .await
        .expect("list containers");
    engine
        .engine
        .remove_volume(&content.volume)
        .await
        .expect("remove the test volume");
    filled.expect("fill the volume");
    checked.expect("check the volume");
    assert_eq!(inspected.len(), 1, "one fill, then found ready");
    assert!(remaining.is_empty(), "helpers removed: {remaining:?}");
    let (host, labels) = &inspected[0];
    assert_eq!(host.cap_drop, Some(vec!["ALL".to_string()]));
    assert!(host.cap_add.clone().unwrap_or_default().is_empty());
    assert!(
        host.security_opt
            .clone()
            .unwrap_or_default()
            .contains(&"no-new-privileges".to_string()),
        "{:?}",
        host.security_opt
    );
    assert_eq!(host.network_mode.as_deref(), Some("none"));
    assert_eq!(host.readonly_rootfs, Some(true));
    assert_eq!(host.pids_limit, Some(16));
    assert_eq!(host.memory, Some(16 << 20));
    assert_eq!(host.memory_swap, Some(16 << 20), "no swap");
    assert_bounded_log(host, "3m", "a fill helper");
    assert_eq!(labels.get(LABEL_MANAGED).map(String::as_str), Some("true"));
    assert_eq!(
        labels.get(LABEL_CONTROLLER).map(String::as_str),
        Some(controller_id.as_str())
    );
    assert_eq!(
        labels.get(LABEL_ROLE).map(String::as_str),
        Some("volume-fill")
    );
}
