//! The Docker operations the controller needs, behind one trait.
//!
//! [`bollard_engine::BollardEngine`] talks to a real engine (negotiating the API version down to
//! what the engine speaks, 1.41 for Docker 20.10); [`fake::RecordingDocker`] records every call
//! and answers from a scripted state so controller logic is tested without a daemon.

pub mod archive;
pub mod bollard_engine;
pub mod fake;

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use std::collections::BTreeMap;

/// Errors from Docker operations; callers branch on the kind.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The engine cannot be reached.
    #[error("docker engine unavailable: {0}")]
    Unavailable(String),
    /// The named image, container or volume does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// Pulling an image failed (no registry, unknown image, auth).
    #[error("pull image {image}: {reason}")]
    PullFailed { image: String, reason: String },
    /// The engine refused a request (bad parameters, conflict, ...).
    #[error("{operation}: {reason}")]
    Rejected { operation: String, reason: String },
}

/// What the engine says about itself: for readiness reports and the architecture check.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EngineInfo {
    /// The engine's version, e.g. `20.10.24+dfsg1`.
    pub server_version: String,
    /// The API version spoken with the engine after negotiation, e.g. `1.41`.
    pub api_version: String,
    /// The newest API version the engine supports.
    pub engine_api_version: String,
    /// `amd64`, `arm64`, ... (Go architecture names, as image configs use).
    pub architecture: String,
    /// `linux`, ...
    pub os: String,
    /// CPUs the engine's host has (0 when unknown).
    pub cpus: i64,
}

/// What the controller needs to know about a local image.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageInfo {
    pub id: String,
    /// `amd64`, `arm64`, ... as the image config says.
    pub architecture: String,
    pub os: String,
    /// The image's configured user (may be empty).
    pub user: String,
}

/// Everything needed to create one container.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ContainerCreateSpec {
    /// Container name; unique per engine.
    pub name: String,
    pub image: String,
    /// Replaces the image's ENTRYPOINT.
    pub entrypoint: Vec<String>,
    /// Replaces the image's CMD (empty = none).
    pub cmd: Vec<String>,
    /// `KEY=value` entries.
    pub env: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub user: Option<String>,
    pub working_dir: Option<String>,
    /// `host`, `bridge`, or a network name; `None` leaves the engine default.
    pub network_mode: Option<String>,
    /// Run a tiny init as PID 1 (reaps zombies, forwards signals).
    pub init: bool,
    pub cap_drop: Vec<String>,
    pub cap_add: Vec<String>,
    /// e.g. `no-new-privileges`.
    pub security_opt: Vec<String>,
    pub pids_limit: Option<i64>,
    /// Memory limit in bytes; memory-swap is set to the same value.
    pub memory_bytes: Option<i64>,
    /// CPU quota in billionths of a CPU.
    pub nano_cpus: Option<i64>,
    /// Soft and hard `nofile` ulimit.
    pub nofile_limit: Option<i64>,
    pub read_only_rootfs: bool,
    /// Mount point → tmpfs options.
    pub tmpfs: BTreeMap<String, String>,
    /// `volume_name:/path:ro` style binds.
    pub binds: Vec<String>,
}

/// The state of one container as the engine reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerState {
    pub id: String,
    pub name: String,
    /// `created`, `running`, `exited`, ...
    pub status: String,
    pub running: bool,
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
    /// The engine's error text (e.g. "exec format error" when start failed).
    pub error: String,
    pub labels: BTreeMap<String, String>,
    /// RFC 3339 creation time.
    pub created: String,
}

/// A container found by listing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerSummary {
    pub id: String,
    pub name: String,
    pub state: String,
    pub labels: BTreeMap<String, String>,
    /// Unix seconds.
    pub created_unix: i64,
}

/// A named volume as the engine reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VolumeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// RFC 3339 creation time (may be empty).
    pub created: String,
}

/// A lifecycle event of a container (`start`, `die`, `oom`, `destroy`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerEvent {
    pub action: String,
    pub container_id: String,
    pub labels: BTreeMap<String, String>,
    /// `exitCode` attribute of `die` events.
    pub exit_code: Option<i64>,
}

/// The Docker operations the controller uses.
#[async_trait]
pub trait DockerOps: Send + Sync + 'static {
    /// Checks the engine answers.
    async fn ping(&self) -> Result<(), DockerError>;
    /// The engine's version, negotiated API version and architecture.
    async fn engine_info(&self) -> Result<EngineInfo, DockerError>;
    /// Inspects a local image; `Ok(None)` when it is absent.
    async fn inspect_image(&self, image: &str) -> Result<Option<ImageInfo>, DockerError>;
    /// Pulls an image from its registry.
    async fn pull_image(&self, image: &str) -> Result<(), DockerError>;
    /// Creates (does not start) a container; returns its id.
    async fn create_container(&self, spec: &ContainerCreateSpec) -> Result<String, DockerError>;
    /// Extracts an uncompressed tar archive into `dest_dir` of a container (put_archive).
    async fn upload_archive(
        &self,
        container_id: &str,
        dest_dir: &str,
        tar: Vec<u8>,
    ) -> Result<(), DockerError>;
    async fn start_container(&self, container_id: &str) -> Result<(), DockerError>;
    /// `Ok(None)` when the container does not exist.
    async fn inspect_container(
        &self,
        container_id: &str,
    ) -> Result<Option<ContainerState>, DockerError>;
    /// Waits for the container to stop; returns its exit code.
    async fn wait_container(&self, container_id: &str) -> Result<i64, DockerError>;
    /// Sends a signal (`SIGKILL`, `SIGTERM`) to the container's PID 1.
    async fn kill_container(&self, container_id: &str, signal: &str) -> Result<(), DockerError>;
    /// Removes a container (forced, with anonymous volumes); a missing container is not an error.
    async fn remove_container(&self, container_id: &str) -> Result<(), DockerError>;
    /// Lists all containers (running or not) carrying every `key=value` label given.
    async fn list_containers(
        &self,
        labels: &[(&str, &str)],
    ) -> Result<Vec<ContainerSummary>, DockerError>;
    /// The last `tail` lines of a container's combined output.
    async fn container_logs(&self, container_id: &str, tail: usize) -> Result<String, DockerError>;
    /// Creates a named local volume with labels; an existing volume of that name is returned
    /// as it is (the engine's create is idempotent).
    async fn create_volume(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<VolumeInfo, DockerError>;
    /// `Ok(None)` when the volume does not exist.
    async fn inspect_volume(&self, name: &str) -> Result<Option<VolumeInfo>, DockerError>;
    /// Removes a volume; a missing volume is not an error, one in use is `Rejected`.
    async fn remove_volume(&self, name: &str) -> Result<(), DockerError>;
    /// Reads one regular file out of a container (created or running) through the archive
    /// endpoint; `Ok(None)` when the path does not exist.
    async fn read_file(
        &self,
        container_id: &str,
        path: &str,
    ) -> Result<Option<Vec<u8>>, DockerError>;
    /// Container events carrying every `key=value` label given, from now on.
    fn container_events(
        &self,
        labels: &[(&str, &str)],
    ) -> BoxStream<'static, Result<ContainerEvent, DockerError>>;
}
