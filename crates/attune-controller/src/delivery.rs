//! How the agent binary and a pack's files reach an action's container.
//!
//! Two paths: `put-archive` copies them into every container before it starts (works on any
//! engine, costs a few MiB per container, impossible with a read-only root filesystem); `volume`
//! fills a named volume once per agent version (`attune-agent-<sha256 prefix>`) or pack digest
//! (`attune-pack-<sha256 prefix>`) per Docker host and mounts it read-only in every container.
//!
//! A volume is filled through a helper container that is created (never started) with the
//! volume mounted, then removed: put_archive into a volume mount of a created container works
//! on every engine, also for images without a shell, and also with a read-only root. The
//! helper is hardened like an action's container all the same (no capabilities, no new
//! privileges, no network, read-only root, small pids and memory limits, bounded logs), so a
//! start by anyone else gains nothing. The archive ends with a marker file holding
//! the full digest, so a fill cut short is noticed and redone. Each volume is checked or filled
//! once per process; concurrent first users wait for the same fill.

use attune_docker::archive::InjectionArchive;
use attune_docker::labels::{LABEL_CONTROLLER, LABEL_MANAGED, LABEL_ROLE};
use attune_docker::{ContainerCreateSpec, DockerError, DockerOps, LogConfig};
use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use tokio::sync::OnceCell;

/// Role of the short-lived containers that fill volumes.
pub const ROLE_VOLUME_FILL: &str = "volume-fill";
/// File written last into a filled volume; holds the full digest of what was filled.
pub const READY_MARKER: &str = ".attune-ready";
/// Prefix of agent volumes.
pub const AGENT_VOLUME_PREFIX: &str = "attune-agent-";
/// Prefix of pack volumes.
pub const PACK_VOLUME_PREFIX: &str = "attune-pack-";
/// Process limit of a fill helper (it is never started; the smallest limit packs may ask).
pub const HELPER_PIDS_LIMIT: i64 = attune_pack::MIN_PIDS;
/// Memory limit of a fill helper (it is never started): 16 MiB.
pub const HELPER_MEMORY_BYTES: i64 = 16 * 1024 * 1024;

/// Setting `docker.agent_delivery`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentDelivery {
    /// `volume` when the engine is local, else `put-archive`; falls back on volume failures.
    #[default]
    Auto,
    /// Always mount the shared volume (falls back to put-archive, with a warning, on failure).
    Volume,
    /// Copy the agent into every container.
    PutArchive,
}

impl AgentDelivery {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentDelivery::Auto => "auto",
            AgentDelivery::Volume => "volume",
            AgentDelivery::PutArchive => "put-archive",
        }
    }

    /// What this setting means for an engine that is (or is not) on this host.
    pub fn prefers_volume(self, engine_is_local: bool) -> bool {
        match self {
            AgentDelivery::Auto => engine_is_local,
            AgentDelivery::Volume => true,
            AgentDelivery::PutArchive => false,
        }
    }
}

impl FromStr for AgentDelivery {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "auto" => Ok(AgentDelivery::Auto),
            "volume" => Ok(AgentDelivery::Volume),
            "put-archive" => Ok(AgentDelivery::PutArchive),
            other => Err(format!("{other:?} is not one of auto, volume, put-archive")),
        }
    }
}

/// Whether a Docker host address points at this machine (a unix socket or loopback TCP).
pub fn engine_is_local(docker_host: &str) -> bool {
    if docker_host.starts_with("unix://") || docker_host.starts_with('/') {
        return true;
    }
    let without_scheme = docker_host
        .split_once("://")
        .map_or(docker_host, |(_, rest)| rest);
    let host = without_scheme
        .rsplit_once(':')
        .map_or(without_scheme, |(host, _)| host);
    matches!(host, "127.0.0.1" | "localhost" | "[::1]" | "::1")
}

/// The agent volume's name for an agent digest.
pub fn agent_volume_name(agent_sha256: &str) -> String {
    format!("{AGENT_VOLUME_PREFIX}{}", short_digest(agent_sha256))
}

/// The pack volume's name for a pack archive digest.
pub fn pack_volume_name(pack_sha256: &str) -> String {
    format!("{PACK_VOLUME_PREFIX}{}", short_digest(pack_sha256))
}

fn short_digest(sha256: &str) -> &str {
    &sha256[..sha256.len().min(12)]
}

/// Why a volume could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("volume {volume}: {source}")]
    Docker {
        volume: String,
        #[source]
        source: DockerError,
    },
    #[error("volume {volume} exists but belongs to something else: label {label}={found:?}, expected {expected:?}")]
    Foreign {
        volume: String,
        label: String,
        found: String,
        expected: String,
    },
    #[error("volume {volume}: build archive: {reason}")]
    Archive { volume: String, reason: String },
}

/// What to put into one volume.
pub struct VolumeContent {
    /// The volume's name.
    pub volume: String,
    /// Labels the volume is created with; `identity_label` must match on an existing volume.
    pub labels: BTreeMap<String, String>,
    /// The label whose value names the content (`attune.agent-sha256`, `attune.pack-sha256`).
    pub identity_label: &'static str,
    /// Full digest of the content; written into the ready marker.
    pub digest: String,
    /// Directories to create with their modes, relative to the volume's root (parents of files
    /// are implied, 0755).
    pub directories: Vec<(String, u32)>,
    /// Files to write, relative to the volume's root: `(path, mode, bytes)`.
    pub files: Vec<(String, u32, Arc<Vec<u8>>)>,
}

/// Fills volumes once per process and Docker host.
#[derive(Clone)]
pub struct VolumeFiller {
    docker: Arc<dyn DockerOps>,
    controller_id: String,
    /// The helpers' log driver (the same bound as action containers').
    log_config: LogConfig,
    ready: Arc<Mutex<HashMap<String, Arc<OnceCell<()>>>>>,
}

impl VolumeFiller {
    pub fn new(docker: Arc<dyn DockerOps>, controller_id: &str) -> Self {
        VolumeFiller {
            docker,
            controller_id: controller_id.to_string(),
            log_config: LogConfig::bounded_json_file(
                crate::limits::DEFAULT_LOG_MAX_SIZE,
                crate::limits::LOG_MAX_FILES,
            ),
            ready: Arc::default(),
        }
    }

    /// The same filler with helpers logging through `log_config` (`docker.log_max_size`).
    pub fn with_log_config(mut self, log_config: LogConfig) -> Self {
        self.log_config = log_config;
        self
    }

    /// Makes sure `content` is in its volume; `helper_image` is any local image (the helper
    /// container is never started). Concurrent callers for the same volume share one fill; a
    /// failed fill is retried by the next caller.
    pub async fn ensure(
        &self,
        content: &VolumeContent,
        helper_image: &str,
    ) -> Result<(), VolumeError> {
        let cell = self
            .ready
            .lock()
            .expect("volume registry lock")
            .entry(content.volume.clone())
            .or_default()
            .clone();
        cell.get_or_try_init(|| self.fill(content, helper_image))
            .await
            .map(|_| ())
    }

    /// Forgets that a volume is ready (e.g. it was removed behind our back); the next
    /// [`VolumeFiller::ensure`] checks it again.
    pub fn forget(&self, volume: &str) {
        self.ready
            .lock()
            .expect("volume registry lock")
            .remove(volume);
    }

    async fn fill(&self, content: &VolumeContent, helper_image: &str) -> Result<(), VolumeError> {
        let volume = content.volume.as_str();
        let docker_error = |source| VolumeError::Docker {
            volume: volume.to_string(),
            source,
        };
        let existing = match self
            .docker
            .inspect_volume(volume)
            .await
            .map_err(docker_error)?
        {
            Some(existing) => existing,
            None => self
                .docker
                .create_volume(volume, &content.labels)
                .await
                .map_err(docker_error)?,
        };
        let found = existing
            .labels
            .get(content.identity_label)
            .cloned()
            .unwrap_or_default();
        let expected = content
            .labels
            .get(content.identity_label)
            .cloned()
            .unwrap_or_default();
        if found != expected {
            return Err(VolumeError::Foreign {
                volume: volume.to_string(),
                label: content.identity_label.to_string(),
                found,
                expected,
            });
        }

        const MOUNT: &str = "/attune-volume";
        let helper = self.helper_spec(volume, MOUNT, helper_image);
        let helper_id = self
            .docker
            .create_container(&helper)
            .await
            .map_err(docker_error)?;
        let filled = self.fill_through(&helper_id, MOUNT, content).await;
        if let Err(error) = self.docker.remove_container(&helper_id).await {
            tracing::warn!(%volume, container_id = %helper_id, %error, "remove volume fill helper");
        }
        filled
    }

    /// The helper container filling `volume` through `mount`: never started, and hardened like
    /// an action's container all the same. Uploads and reads go to the volume only, so its root
    /// is read-only.
    fn helper_spec(&self, volume: &str, mount: &str, helper_image: &str) -> ContainerCreateSpec {
        let unique = uuid::Uuid::new_v4().simple().to_string();
        ContainerCreateSpec {
            name: format!("attune-fill-{volume}-{}", &unique[..8]),
            image: helper_image.to_string(),
            // Never started; an entrypoint is only needed because images without CMD refuse
            // to be created without one.
            entrypoint: vec![format!("{mount}/never-started")],
            labels: [
                (LABEL_MANAGED, "true".to_string()),
                (LABEL_CONTROLLER, self.controller_id.clone()),
                (LABEL_ROLE, ROLE_VOLUME_FILL.to_string()),
            ]
            .into_iter()
            .map(|(key, value)| (key.to_string(), value))
            .collect(),
            network_mode: Some("none".to_string()),
            cap_drop: vec!["ALL".to_string()],
            security_opt: vec!["no-new-privileges".to_string()],
            pids_limit: Some(HELPER_PIDS_LIMIT),
            memory_bytes: Some(HELPER_MEMORY_BYTES),
            read_only_rootfs: true,
            binds: vec![format!("{volume}:{mount}")],
            log_config: Some(self.log_config.clone()),
            ..Default::default()
        }
    }

    async fn fill_through(
        &self,
        helper_id: &str,
        mount: &str,
        content: &VolumeContent,
    ) -> Result<(), VolumeError> {
        let volume = content.volume.as_str();
        let docker_error = |source| VolumeError::Docker {
            volume: volume.to_string(),
            source,
        };
        let marker = self
            .docker
            .read_file(helper_id, &format!("{mount}/{READY_MARKER}"))
            .await
            .map_err(docker_error)?;
        if marker.as_deref() == Some(content.digest.as_bytes()) {
            tracing::debug!(%volume, "volume already filled");
            return Ok(());
        }
        let archive_error = |error: attune_docker::archive::ArchiveError| VolumeError::Archive {
            volume: volume.to_string(),
            reason: error.to_string(),
        };
        let mut archive = InjectionArchive::new();
        for (directory, mode) in &content.directories {
            archive.add_dir(directory, *mode).map_err(archive_error)?;
        }
        for (path, mode, bytes) in &content.files {
            archive
                .add_file(path, *mode, bytes.as_slice())
                .map_err(archive_error)?;
        }
        archive
            .add_file(READY_MARKER, 0o644, content.digest.as_bytes())
            .map_err(archive_error)?;
        let started = std::time::Instant::now();
        self.docker
            .upload_archive(helper_id, mount, archive.finish())
            .await
            .map_err(docker_error)?;
        tracing::info!(%volume, elapsed_ms = started.elapsed().as_millis() as u64, "volume filled");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use attune_docker::fake::{DockerCall, Operation, RecordingDocker};
    use attune_docker::labels::LABEL_AGENT_SHA256;

    fn agent_content(bytes: &[u8]) -> VolumeContent {
        let digest = "ab".repeat(32);
        VolumeContent {
            volume: agent_volume_name(&digest),
            labels: BTreeMap::from([
                (LABEL_MANAGED.to_string(), "true".to_string()),
                (LABEL_AGENT_SHA256.to_string(), digest.clone()),
            ]),
            identity_label: LABEL_AGENT_SHA256,
            digest,
            directories: Vec::new(),
            files: vec![("attune-agent".to_string(), 0o755, Arc::new(bytes.to_vec()))],
        }
    }

    fn docker() -> RecordingDocker {
        let docker = RecordingDocker::new();
        docker.add_image("busybox:1.36", "amd64");
        docker
    }

    #[test]
    fn settings_and_names() {
        assert_eq!("put-archive".parse(), Ok(AgentDelivery::PutArchive));
        assert!("copy"
            .parse::<AgentDelivery>()
            .unwrap_err()
            .contains("auto, volume"));
        assert!(AgentDelivery::Auto.prefers_volume(true));
        assert!(!AgentDelivery::Auto.prefers_volume(false));
        assert!(AgentDelivery::Volume.prefers_volume(false));
        assert!(!AgentDelivery::PutArchive.prefers_volume(true));
        assert!(engine_is_local("unix:///var/run/docker.sock"));
        assert!(engine_is_local("/var/run/docker.sock"));
        assert!(engine_is_local("tcp://127.0.0.1:2375"));
        assert!(!engine_is_local("tcp://10.0.0.5:2376"));
        assert_eq!(
            agent_volume_name(&"0123456789abcdef".repeat(4)),
            "attune-agent-0123456789ab"
        );
        assert_eq!(pack_volume_name("ffee"), "attune-pack-ffee");
    }

    #[tokio::test]
    async fn fills_once_with_a_helper_that_is_never_started_and_then_removed() {
        let docker = docker();
        let filler = VolumeFiller::new(Arc::new(docker.clone()), "controller-a");
        let content = agent_content(b"\x7fELF-agent");
        let (first, second) = tokio::join!(
            filler.ensure(&content, "busybox:1.36"),
            filler.ensure(&content, "busybox:1.36")
        );
        first.unwrap();
        second.unwrap();
        filler.ensure(&content, "busybox:1.36").await.unwrap();
        let calls = docker.calls();
        let creates = calls
            .iter()
            .filter(|call| matches!(call, DockerCall::CreateContainer(_)))
            .count();
        assert_eq!(creates, 1, "one fill for three callers: {calls:#?}");
        assert!(!calls
            .iter()
            .any(|call| matches!(call, DockerCall::Start(_))));
        assert!(docker.containers().is_empty(), "helper removed");
        let volume = docker.volume(&content.volume).unwrap();
        assert_eq!(volume.labels[LABEL_AGENT_SHA256], content.digest);
        let agent = &volume.files["attune-agent"];
        assert_eq!(
            (agent.mode, agent.bytes.as_slice()),
            (0o755, &b"\x7fELF-agent"[..])
        );
        assert_eq!(volume.files[READY_MARKER].bytes, content.digest.as_bytes());
    }

    #[tokio::test]
    async fn the_fill_helper_is_hardened_like_an_action_container() {
        let docker = docker();
        let filler = VolumeFiller::new(Arc::new(docker.clone()), "controller-a")
            .with_log_config(LogConfig::bounded_json_file("3m", 2));
        let content = agent_content(b"agent");
        filler.ensure(&content, "busybox:1.36").await.unwrap();
        let helpers: Vec<ContainerCreateSpec> = docker
            .calls()
            .into_iter()
            .filter_map(|call| match call {
                DockerCall::CreateContainer(spec) => Some(spec),
                _ => None,
            })
            .collect();
        assert_eq!(helpers.len(), 1, "{helpers:#?}");
        let helper = &helpers[0];
        assert_eq!(helper.cap_drop, vec!["ALL".to_string()]);
        assert!(helper.cap_add.is_empty());
        assert_eq!(helper.security_opt, vec!["no-new-privileges".to_string()]);
        assert_eq!(helper.network_mode.as_deref(), Some("none"));
        assert!(helper.read_only_rootfs, "uploads go to the volume only");
        assert_eq!(helper.pids_limit, Some(HELPER_PIDS_LIMIT));
        assert_eq!(helper.memory_bytes, Some(HELPER_MEMORY_BYTES));
        assert_eq!(
            helper.log_config,
            Some(LogConfig::bounded_json_file("3m", 2)),
            "the operator's log bound"
        );
        assert_eq!(helper.labels[LABEL_MANAGED], "true");
        assert_eq!(helper.labels[LABEL_CONTROLLER], "controller-a");
        assert_eq!(helper.labels[LABEL_ROLE], ROLE_VOLUME_FILL);
        assert_eq!(
            helper.binds,
            vec![format!("{}:/attune-volume", content.volume)],
            "only the volume, read-write"
        );
        // The read-only root does not stop the fill: it lands in the volume.
        assert!(docker
            .volume(&content.volume)
            .unwrap()
            .files
            .contains_key(READY_MARKER));
        let default_filler = VolumeFiller::new(Arc::new(docker.clone()), "controller-a");
        assert_eq!(
            default_filler.log_config,
            LogConfig::bounded_json_file("10m", 2),
            "bounded without a setting too"
        );
    }

    #[tokio::test]
    async fn a_filled_volume_is_reused_by_a_new_process_and_a_partial_one_refilled() {
        let docker = docker();
        let content = agent_content(b"agent");
        VolumeFiller::new(Arc::new(docker.clone()), "a")
            .ensure(&content, "busybox:1.36")
            .await
            .unwrap();
        docker.clear_calls();
        VolumeFiller::new(Arc::new(docker.clone()), "b")
            .ensure(&content, "busybox:1.36")
            .await
            .unwrap();
        assert!(
            !docker
                .calls()
                .iter()
                .any(|call| matches!(call, DockerCall::UploadArchive { .. })),
            "a ready volume is not written again"
        );

        // A volume without its marker (a fill cut short) is filled again.
        let partial = VolumeContent {
            volume: "attune-agent-partial".into(),
            ..agent_content(b"agent")
        };
        docker
            .create_volume(&partial.volume, &partial.labels)
            .await
            .unwrap();
        docker.clear_calls();
        VolumeFiller::new(Arc::new(docker.clone()), "c")
            .ensure(&partial, "busybox:1.36")
            .await
            .unwrap();
        assert!(docker
            .calls()
            .iter()
            .any(|call| matches!(call, DockerCall::UploadArchive { .. })));
        assert!(docker
            .volume("attune-agent-partial")
            .unwrap()
            .files
            .contains_key(READY_MARKER));
    }

    #[tokio::test]
    async fn failures_are_reported_retried_and_never_leave_the_helper() {
        let docker = docker();
        let filler = VolumeFiller::new(Arc::new(docker.clone()), "a");
        let content = agent_content(b"agent");
        docker.fail_next(
            Operation::UploadArchive,
            DockerError::Rejected {
                operation: "upload".into(),
                reason: "disk full".into(),
            },
        );
        let error = filler
            .ensure(&content, "busybox:1.36")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(&content.volume) && error.contains("disk full"),
            "{error}"
        );
        assert!(
            docker.containers().is_empty(),
            "helper removed after a failure"
        );
        filler.ensure(&content, "busybox:1.36").await.unwrap();

        let foreign = VolumeContent {
            volume: "attune-agent-foreign".into(),
            ..agent_content(b"agent")
        };
        docker
            .create_volume(&foreign.volume, &BTreeMap::new())
            .await
            .unwrap();
        let error = filler
            .ensure(&foreign, "busybox:1.36")
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("belongs to something else"), "{error}");
    }
}
