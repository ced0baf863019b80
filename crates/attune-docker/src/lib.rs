//! `attune-docker`: the Docker operations the controller needs, behind one trait; the only crate
//! that depends on bollard.
//!
//! [`bollard_engine::BollardEngine`] talks to a real engine (negotiating the API version down to
//! what the engine speaks, 1.41 for Docker 20.10); [`fake::RecordingDocker`] records every call
//! and answers from a scripted state so controller logic is tested without a daemon.

pub mod archive;
pub mod bollard_engine;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
pub mod labels;
pub mod retry;

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
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

/// What a failed start (or an engine error text) means, classified here — the only crate that
/// knows the engine's wording — so callers branch on a kind, not on substrings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFailure {
    /// The entrypoint cannot run on this kernel/architecture (`exec format error`).
    ExecFormat,
    /// A path the container needs (its entrypoint, a mount source) is missing.
    MissingPath,
    /// Anything else.
    Other,
}

impl StartFailure {
    /// Classifies an engine error text (also a container's `State.Error` or its logs).
    pub fn of_text(text: &str) -> StartFailure {
        if text.contains("exec format error") {
            StartFailure::ExecFormat
        } else if text.contains("no such file or directory") {
            StartFailure::MissingPath
        } else {
            StartFailure::Other
        }
    }
}

impl DockerError {
    /// What a failed container start means.
    pub fn start_failure(&self) -> StartFailure {
        StartFailure::of_text(&self.to_string())
    }
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
    /// The log driver (`HostConfig.LogConfig`); `None` leaves the engine's default, which may
    /// keep a container's output without bound.
    pub log_config: Option<LogConfig>,
    /// Keep the container's stdin open for one writer ([`DockerOps::start_container_with_input`]):
    /// how an agent gets its secrets without them being in its environment.
    pub open_stdin: bool,
}

/// A container's log driver and its options (`HostConfig.LogConfig`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogConfig {
    /// `json-file`, `local`, ...
    pub driver: String,
    /// Driver options, e.g. `max-size` and `max-file`.
    pub options: BTreeMap<String, String>,
}

impl LogConfig {
    /// The `json-file` driver rotating at `max_size` (`10m`, in the engine's syntax) and
    /// keeping at most `max_files` files: what a container writes to its stdout or stderr (also
    /// through `/proc/1/fd/1`) takes at most `max_size` × `max_files` of the engine's disk.
    pub fn bounded_json_file(max_size: &str, max_files: u32) -> LogConfig {
        LogConfig {
            driver: "json-file".to_string(),
            options: BTreeMap::from([
                ("max-size".to_string(), max_size.to_string()),
                ("max-file".to_string(), max_files.to_string()),
            ]),
        }
    }
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

/// The stream of [`DockerOps::container_events`] (named, so that wrappers of an engine, in
/// tests too, can write it without a futures crate of their own).
pub type ContainerEventStream = BoxStream<'static, Result<ContainerEvent, DockerError>>;

/// The Docker operations the controller uses.
#[async_trait]
pub trait DockerOps: Send + Sync + 'static {
    /// Checks the engine answers.
    async fn ping(&self) -> Result<(), DockerError>;
    /// The engine's version, negotiated API version and architecture.
    async fn engine_info(&self) -> Result<EngineInfo, DockerError>;
    /// Inspects a local image; `Ok(None)` when it is absent.
    async fn inspect_image(&self, image: &str) -> Result<Option<ImageInfo>, DockerError>;
    /// Pulls an image from its registry, authenticating with `credentials` when given (the
    /// caller picks them for the image's registry, see [`RegistryAuth::credentials_for`]).
    async fn pull_image(
        &self,
        image: &str,
        credentials: Option<&RegistryCredentials>,
    ) -> Result<(), DockerError>;
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
    /// Starts a container created with `open_stdin`, writes `input` to its stdin and closes it
    /// (attach, start, write, close): the bytes reach the container's first process only.
    async fn start_container_with_input(
        &self,
        container_id: &str,
        input: &[u8],
    ) -> Result<(), DockerError>;
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
    fn container_events(&self, labels: &[(&str, &str)]) -> ContainerEventStream;
}

/// The registry Docker Hub images come from: the key for unqualified names (`busybox:1.36`,
/// `library/python:3.11`).
pub const DOCKER_HUB_REGISTRY: &str = "docker.io";

/// The registry host an image reference names, as Docker reads references: the part before
/// the first `/` when it holds a `.` or a `:` or is `localhost`, else Docker Hub. Hub aliases
/// (`index.docker.io`, `registry-1.docker.io`) become `docker.io`; hosts are lowercased.
pub fn registry_of(image: &str) -> String {
    let host = match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first
        }
        _ => DOCKER_HUB_REGISTRY,
    };
    normalize_registry(host)
}

fn normalize_registry(host: &str) -> String {
    let host = host
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .trim_end_matches("/v1")
        .to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            DOCKER_HUB_REGISTRY.to_string()
        }
        _ => host,
    }
}

/// A user name and password for one registry. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq, Deserialize)]
pub struct RegistryCredentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RegistryCredentials {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("RegistryCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Credentials by registry host (`docker.io`, `ghcr.io`, `registry.example.com:5000`), for
/// pulls. Deserializes from a map of host → `{username, password}` (a settings file) or from
/// a JSON string of that map (one environment variable). `Debug` lists hosts and user names
/// only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RegistryAuth {
    by_registry: BTreeMap<String, RegistryCredentials>,
}

impl RegistryAuth {
    /// Credentials keyed by registry host; the hosts are normalized like image references.
    pub fn new(
        entries: impl IntoIterator<Item = (String, RegistryCredentials)>,
    ) -> Result<RegistryAuth, String> {
        let mut by_registry = BTreeMap::new();
        for (host, credentials) in entries {
            let registry = normalize_registry(&host);
            if registry.is_empty() || registry.contains('/') {
                return Err(format!(
                    "{host:?} is not a registry host (e.g. docker.io, ghcr.io, registry.example.com:5000)"
                ));
            }
            if credentials.username.is_empty() {
                return Err(format!("the username for registry {registry} is empty"));
            }
            if by_registry.insert(registry.clone(), credentials).is_some() {
                return Err(format!("registry {registry} is given twice"));
            }
        }
        Ok(RegistryAuth { by_registry })
    }

    /// Parses a JSON object of host → `{"username": ..., "password": ...}`; an empty or blank
    /// text means no credentials.
    pub fn from_json(text: &str) -> Result<RegistryAuth, String> {
        if text.trim().is_empty() {
            return Ok(RegistryAuth::default());
        }
        let entries: BTreeMap<String, RegistryCredentials> = serde_json::from_str(text)
            .map_err(|error| {
                format!("expected a JSON object of registry host to {{\"username\", \"password\"}}: {error}")
            })?;
        RegistryAuth::new(entries)
    }

    /// The credentials for the registry `image` comes from, if any were given.
    pub fn credentials_for(&self, image: &str) -> Option<&RegistryCredentials> {
        self.by_registry.get(&registry_of(image))
    }

    /// The registry hosts with credentials.
    pub fn registries(&self) -> impl Iterator<Item = &str> {
        self.by_registry.keys().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.by_registry.is_empty()
    }
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_map()
            .entries(self.by_registry.iter())
            .finish()
    }
}

impl<'de> Deserialize<'de> for RegistryAuth {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RegistryAuthVisitor;

        impl<'de> Visitor<'de> for RegistryAuthVisitor {
            type Value = RegistryAuth;

            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str(
                    "a map of registry host to {username, password}, or that map as a JSON string",
                )
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<RegistryAuth, E> {
                RegistryAuth::from_json(text).map_err(E::custom)
            }

            fn visit_unit<E: serde::de::Error>(self) -> Result<RegistryAuth, E> {
                Ok(RegistryAuth::default())
            }

            fn visit_none<E: serde::de::Error>(self) -> Result<RegistryAuth, E> {
                Ok(RegistryAuth::default())
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RegistryAuth, A::Error> {
                let mut entries = Vec::new();
                while let Some((host, credentials)) =
                    map.next_entry::<String, RegistryCredentials>()?
                {
                    entries.push((host, credentials));
                }
                RegistryAuth::new(entries).map_err(serde::de::Error::custom)
            }
        }

        deserializer.deserialize_any(RegistryAuthVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials(username: &str, password: &str) -> RegistryCredentials {
        RegistryCredentials {
            username: username.to_string(),
            password: password.to_string(),
        }
    }

    #[test]
    fn registries_are_read_from_references_as_docker_does() {
        for (image, registry) in [
            ("busybox:1.36", "docker.io"),
            ("library/python:3.11-slim", "docker.io"),
            ("attune-test/noshell", "docker.io"),
            ("ghcr.io/org/tool:1", "ghcr.io"),
            (
                "Registry.Example.com:5000/team/tool@sha256:abc",
                "registry.example.com:5000",
            ),
            ("localhost/tool", "localhost"),
            ("localhost:5000/tool:2", "localhost:5000"),
            ("127.0.0.1:1/attune-test/unpullable:latest", "127.0.0.1:1"),
            ("index.docker.io/library/busybox", "docker.io"),
        ] {
            assert_eq!(registry_of(image), registry, "{image}");
        }
    }

    #[test]
    fn credentials_are_chosen_by_the_image_registry() {
        let auth = RegistryAuth::new([
            (
                "https://index.docker.io/v1/".to_string(),
                credentials("hub-user", "hub-secret"),
            ),
            ("GHCR.io".to_string(), credentials("gh-user", "gh-secret")),
        ])
        .unwrap();
        assert_eq!(
            auth.credentials_for("busybox:1.36")
                .map(|found| found.username.as_str()),
            Some("hub-user")
        );
        assert_eq!(
            auth.credentials_for("ghcr.io/org/tool:1")
                .map(|found| found.username.as_str()),
            Some("gh-user")
        );
        assert_eq!(auth.credentials_for("quay.io/org/tool:1"), None);
        assert_eq!(
            auth.registries().collect::<Vec<_>>(),
            vec!["docker.io", "ghcr.io"]
        );
    }

    #[test]
    fn passwords_never_reach_debug_output() {
        let auth = RegistryAuth::from_json(
            r#"{"registry.example.com:5000": {"username": "robot", "password": "s3cr3t-pa55"}}"#,
        )
        .unwrap();
        let shown = format!(
            "{auth:?} {:?}",
            auth.credentials_for("registry.example.com:5000/x")
        );
        assert!(
            shown.contains("robot") && shown.contains("registry.example.com:5000"),
            "{shown}"
        );
        assert!(!shown.contains("s3cr3t-pa55"), "{shown}");
    }

    #[test]
    fn bad_registry_auth_is_explained() {
        for (text, expected) in [
            ("[1, 2]", "expected a JSON object"),
            (
                r#"{"ghcr.io": {"username": "u"}}"#,
                "missing field `password`",
            ),
            (
                r#"{"ghcr.io/org": {"username": "u", "password": "p"}}"#,
                "not a registry host",
            ),
            (
                r#"{"ghcr.io": {"username": "", "password": "p"}}"#,
                "username for registry ghcr.io is empty",
            ),
            (
                r#"{"docker.io": {"username": "a", "password": "p"}, "index.docker.io": {"username": "b", "password": "q"}}"#,
                "registry docker.io is given twice",
            ),
        ] {
            let error = RegistryAuth::from_json(text).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
        }
        assert!(RegistryAuth::from_json("  ").unwrap().is_empty());
    }
}
