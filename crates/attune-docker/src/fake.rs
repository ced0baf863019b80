//! [`RecordingDocker`]: an in-memory [`DockerOps`] that records every call, for controller tests.
//!
//! It keeps containers in a map and moves them through created → running → exited the way the
//! engine does, so list/inspect/wait/remove answer consistently. Named volumes are kept too:
//! binds mount them, uploads below a mount point land in the volume (refused when the mount is
//! read-only), and a container's read-only root refuses uploads outside its volumes, as the
//! engine does. Tests script it: which images exist locally (and their architecture), which can
//! be pulled (and which registries demand a login), failures to inject for the next call of an operation, the exit code a container
//! reports, its logs, and container events.

use crate::{
    registry_of, ContainerCreateSpec, ContainerEvent, ContainerState, ContainerSummary,
    DockerError, DockerOps, EngineInfo, ImageInfo, RegistryCredentials, VolumeInfo,
};
use async_trait::async_trait;
use futures_util::stream::{self, BoxStream, StreamExt};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Read;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{mpsc, Notify};

/// The operations of [`DockerOps`], to aim injected failures at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    Ping,
    EngineInfo,
    InspectImage,
    PullImage,
    CreateContainer,
    UploadArchive,
    Start,
    InspectContainer,
    Wait,
    Kill,
    Remove,
    ListContainers,
    ContainerLogs,
    CreateVolume,
    InspectVolume,
    RemoveVolume,
    ReadFile,
}

/// One file or directory of an uploaded archive, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadedEntry {
    /// Path inside the archive (relative to the upload destination).
    pub path: String,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub directory: bool,
    pub bytes: Vec<u8>,
}

/// One recorded call, in the order calls were made.
// Calls are few and kept for assertions; a plain spec is easier to match on than a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum DockerCall {
    Ping,
    EngineInfo,
    InspectImage(String),
    PullImage(String),
    CreateContainer(ContainerCreateSpec),
    UploadArchive {
        container_id: String,
        dest_dir: String,
        /// `(path, mode, length)` of every entry, in archive order.
        entries: Vec<(String, u32, u64)>,
    },
    Start(String),
    /// Started with these bytes on its stdin.
    StartWithInput(String, Vec<u8>),
    InspectContainer(String),
    Wait(String),
    Kill(String, String),
    Remove(String),
    ListContainers(Vec<(String, String)>),
    ContainerLogs(String, usize),
    ContainerEvents(Vec<(String, String)>),
    CreateVolume(String),
    InspectVolume(String),
    RemoveVolume(String),
    /// `(container, path)`.
    ReadFile(String, String),
}

/// A container as the fake keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeContainer {
    pub id: String,
    pub spec: ContainerCreateSpec,
    /// `created`, `running` or `exited`.
    pub status: String,
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
    /// Files and directories uploaded into it, keyed by absolute path.
    pub files: BTreeMap<String, UploadedEntry>,
    pub created_unix: i64,
    pub created: String,
    /// What was written to its stdin at start.
    pub stdin: Vec<u8>,
}

/// A named volume as the fake keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeVolume {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Files and directories in it, keyed by path relative to the volume's root.
    pub files: BTreeMap<String, UploadedEntry>,
}

/// A bind of a named volume into a container, parsed from `name:/path[:ro]`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct VolumeMount {
    volume: String,
    target: String,
    read_only: bool,
}

fn parse_bind(bind: &str) -> Option<VolumeMount> {
    let mut parts = bind.split(':');
    let volume = parts.next().filter(|name| !name.is_empty())?;
    let target = parts.next().filter(|path| path.starts_with('/'))?;
    let read_only = match parts.next() {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(_) => return None,
    };
    Some(VolumeMount {
        volume: volume.to_string(),
        target: target.trim_end_matches('/').to_string(),
        read_only,
    })
}

fn mounts_of(spec: &ContainerCreateSpec) -> Vec<VolumeMount> {
    spec.binds
        .iter()
        .filter_map(|bind| parse_bind(bind))
        .collect()
}

/// The mount an absolute path falls under, with the path relative to the mount's root.
fn mount_for(mounts: &[VolumeMount], path: &str) -> Option<(VolumeMount, String)> {
    mounts
        .iter()
        .filter(|mount| path == mount.target || path.starts_with(&format!("{}/", mount.target)))
        .max_by_key(|mount| mount.target.len())
        .map(|mount| {
            let relative = path[mount.target.len()..]
                .trim_start_matches('/')
                .to_string();
            (mount.clone(), relative)
        })
}

struct EventSubscriber {
    labels: Vec<(String, String)>,
    sender: mpsc::UnboundedSender<Result<ContainerEvent, DockerError>>,
}

#[derive(Default)]
struct FakeState {
    calls: Vec<DockerCall>,
    images: HashMap<String, ImageInfo>,
    pullable: HashMap<String, ImageInfo>,
    /// Registries that refuse pulls without these credentials.
    registry_logins: HashMap<String, RegistryCredentials>,
    /// Every pull with the credentials it carried, in order.
    pulls: Vec<(String, Option<RegistryCredentials>)>,
    failures: VecDeque<(Operation, DockerError)>,
    exit_codes: Vec<(String, i64)>,
    logs: Vec<(String, String)>,
    containers: BTreeMap<String, FakeContainer>,
    volumes: BTreeMap<String, FakeVolume>,
    subscribers: Vec<EventSubscriber>,
    lifecycle_events: bool,
    engine_info: EngineInfo,
    next_container_number: u64,
}

impl FakeState {
    /// Finds a container by id, name or unique id prefix, as the engine does.
    fn resolve(&self, id_or_name: &str) -> Option<String> {
        if self.containers.contains_key(id_or_name) {
            return Some(id_or_name.to_string());
        }
        let name = id_or_name.trim_start_matches('/');
        if let Some(container) = self.containers.values().find(|c| c.spec.name == name) {
            return Some(container.id.clone());
        }
        let mut prefixed = self
            .containers
            .keys()
            .filter(|id| !id_or_name.is_empty() && id.starts_with(id_or_name));
        match (prefixed.next(), prefixed.next()) {
            (Some(id), None) => Some(id.clone()),
            _ => None,
        }
    }

    fn file_seen_by(&self, container: &FakeContainer, path: &str) -> Option<UploadedEntry> {
        match mount_for(&mounts_of(&container.spec), path) {
            Some((mount, relative)) => self
                .volumes
                .get(&mount.volume)?
                .files
                .get(&relative)
                .cloned(),
            None => container.files.get(path).cloned(),
        }
    }

    fn take_failure(&mut self, operation: Operation) -> Option<DockerError> {
        let position = self
            .failures
            .iter()
            .position(|(failing, _)| *failing == operation)?;
        self.failures.remove(position).map(|(_, error)| error)
    }

    fn scripted_exit(&self, container: &FakeContainer) -> Option<i64> {
        self.exit_codes
            .iter()
            .rev()
            .find(|(prefix, _)| {
                container.id.starts_with(prefix.as_str())
                    || container.spec.name.starts_with(prefix.as_str())
            })
            .map(|(_, code)| *code)
    }

    fn emit(&mut self, event: ContainerEvent) {
        self.subscribers.retain(|subscriber| {
            if !labels_match(&event.labels, &subscriber.labels) {
                return !subscriber.sender.is_closed();
            }
            subscriber.sender.send(Ok(event.clone())).is_ok()
        });
    }

    fn emit_lifecycle(&mut self, action: &str, container_id: &str) {
        if !self.lifecycle_events {
            return;
        }
        let Some(container) = self.containers.get(container_id) else {
            return;
        };
        let event = ContainerEvent {
            action: action.to_string(),
            container_id: container.id.clone(),
            labels: container.spec.labels.clone(),
            exit_code: if action == "die" {
                container.exit_code
            } else {
                None
            },
        };
        self.emit(event);
    }

    /// Moves a running container to exited with `exit_code`; true when it was running.
    fn exit(&mut self, container_id: &str, exit_code: i64) -> bool {
        let Some(container) = self.containers.get_mut(container_id) else {
            return false;
        };
        if container.status != "running" {
            return false;
        }
        container.status = "exited".to_string();
        container.exit_code = Some(exit_code);
        self.emit_lifecycle("die", container_id);
        true
    }
}

fn labels_match(labels: &BTreeMap<String, String>, wanted: &[(String, String)]) -> bool {
    wanted
        .iter()
        .all(|(key, value)| labels.get(key) == Some(value))
}

fn owned_labels(labels: &[(&str, &str)]) -> Vec<(String, String)> {
    labels
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

/// The exit code of a process killed by `signal`, or `None` for a signal the engine rejects.
fn signal_exit_code(signal: &str) -> Option<i64> {
    let name = signal.trim_start_matches("SIG");
    let number = match name {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "KILL" => 9,
        "USR1" => 10,
        "USR2" => 12,
        "TERM" => 15,
        other => other.parse::<i64>().ok().filter(|n| (1..=64).contains(n))?,
    };
    Some(128 + number)
}

fn parse_archive(tar_bytes: &[u8]) -> Result<Vec<UploadedEntry>, String> {
    let mut archive = tar::Archive::new(tar_bytes);
    let mut entries = Vec::new();
    for entry in archive.entries().map_err(|error| error.to_string())? {
        let mut entry = entry.map_err(|error| error.to_string())?;
        let header = entry.header().clone();
        let path = entry
            .path()
            .map_err(|error| error.to_string())?
            .to_string_lossy()
            .trim_end_matches('/')
            .to_string();
        let mut bytes = Vec::new();
        entry
            .read_to_end(&mut bytes)
            .map_err(|error| format!("read {path}: {error}"))?;
        entries.push(UploadedEntry {
            path,
            mode: header.mode().map_err(|error| error.to_string())?,
            uid: header.uid().map_err(|error| error.to_string())?,
            gid: header.gid().map_err(|error| error.to_string())?,
            directory: header.entry_type().is_dir(),
            bytes,
        });
    }
    Ok(entries)
}

fn join_destination(dest_dir: &str, path: &str) -> String {
    let base = dest_dir.trim_end_matches('/');
    let path = path.trim_start_matches("./");
    format!("{base}/{path}")
}

/// An in-memory Docker engine that records calls; cheap to clone (clones share state).
#[derive(Clone)]
pub struct RecordingDocker {
    state: Arc<Mutex<FakeState>>,
    state_changed: Arc<Notify>,
}

impl Default for RecordingDocker {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for RecordingDocker {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        formatter
            .debug_struct("RecordingDocker")
            .field("calls", &state.calls.len())
            .field("containers", &state.containers.len())
            .finish()
    }
}

impl RecordingDocker {
    /// An engine with no images, reporting Docker 20.10 (API 1.41) on amd64 with 2 CPUs.
    pub fn new() -> Self {
        let state = FakeState {
            engine_info: EngineInfo {
                server_version: "20.10.24".to_string(),
                api_version: "1.41".to_string(),
                engine_api_version: "1.41".to_string(),
                architecture: "amd64".to_string(),
                os: "linux".to_string(),
                cpus: 2,
            },
            ..Default::default()
        };
        Self {
            state: Arc::new(Mutex::new(state)),
            state_changed: Arc::new(Notify::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, FakeState> {
        // A panicking test thread must not hide the state from the assertions that follow.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn image_info(image: &str, architecture: &str) -> ImageInfo {
        ImageInfo {
            // A stable, name-derived id (FNV-1a), distinct for distinct names.
            id: format!(
                "sha256:{:064x}",
                image.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
                    (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
                })
            ),
            architecture: architecture.to_string(),
            os: "linux".to_string(),
            user: String::new(),
        }
    }

    /// Makes `image` present locally with the given architecture (`amd64`, `arm64`, ...).
    pub fn add_image(&self, image: &str, architecture: &str) -> &Self {
        self.add_image_info(image, Self::image_info(image, architecture))
    }

    /// Makes `image` present locally with full details (e.g. a configured USER).
    pub fn add_image_info(&self, image: &str, info: ImageInfo) -> &Self {
        self.lock().images.insert(image.to_string(), info);
        self
    }

    /// Lets `image` be pulled; after a pull it is present locally.
    pub fn add_pullable_image(&self, image: &str, architecture: &str) -> &Self {
        self.lock()
            .pullable
            .insert(image.to_string(), Self::image_info(image, architecture));
        self
    }

    /// Makes the registry `registry` (`docker.io`, `ghcr.io`, ...) refuse pulls that do not
    /// carry exactly these credentials, as a private registry does.
    pub fn require_registry_login(
        &self,
        registry: &str,
        credentials: RegistryCredentials,
    ) -> &Self {
        self.lock()
            .registry_logins
            .insert(registry.to_string(), credentials);
        self
    }

    /// Every pull so far with the credentials it carried, in order.
    pub fn pulls(&self) -> Vec<(String, Option<RegistryCredentials>)> {
        self.lock().pulls.clone()
    }

    /// Makes the next call of `operation` fail with `error` (queued in order per operation).
    pub fn fail_next(&self, operation: Operation, error: DockerError) -> &Self {
        self.lock().failures.push_back((operation, error));
        self
    }

    /// The exit code containers whose id or name starts with `prefix` report: waiting on such
    /// a running container makes it exit with `code` at once. The latest matching rule wins.
    pub fn set_exit(&self, container_id_or_name_prefix: &str, code: i64) -> &Self {
        self.lock()
            .exit_codes
            .push((container_id_or_name_prefix.to_string(), code));
        self
    }

    /// The output `container_logs` returns for containers whose id or name starts with `prefix`.
    pub fn set_logs(&self, container_id_or_name_prefix: &str, output: &str) -> &Self {
        self.lock()
            .logs
            .push((container_id_or_name_prefix.to_string(), output.to_string()));
        self
    }

    /// Reports what `engine_info` returns.
    pub fn set_engine_info(&self, info: EngineInfo) -> &Self {
        self.lock().engine_info = info;
        self
    }

    /// When on, start/die/destroy events are emitted for containers as their state changes.
    pub fn set_lifecycle_events(&self, enabled: bool) -> &Self {
        self.lock().lifecycle_events = enabled;
        self
    }

    /// Makes a running container exit now with `code` (its process ended by itself).
    /// Returns false when no running container matches.
    pub fn exit_container(&self, container_id_or_name: &str, code: i64) -> bool {
        let exited = {
            let mut state = self.lock();
            match state.resolve(container_id_or_name) {
                Some(id) => state.exit(&id, code),
                None => false,
            }
        };
        self.state_changed.notify_waiters();
        exited
    }

    /// Kills a running container for lack of memory: an `oom` event, then `die` with exit 137
    /// (the engine's order), and `State.OOMKilled` set.
    pub fn oom_kill_container(&self, container_id_or_name: &str) -> bool {
        let exited = {
            let mut state = self.lock();
            let Some(id) = state.resolve(container_id_or_name) else {
                return false;
            };
            if state.containers.get(&id).map(|c| c.status.as_str()) != Some("running") {
                return false;
            }
            state.emit_lifecycle("oom", &id);
            if let Some(container) = state.containers.get_mut(&id) {
                container.oom_killed = true;
            }
            state.exit(&id, 137)
        };
        self.state_changed.notify_waiters();
        exited
    }

    /// Emits an `oom` event for a running container without changing its state: the kernel
    /// killed one of its processes, and the engine may or may not set `State.OOMKilled` later.
    pub fn emit_oom_event(&self, container_id_or_name: &str) -> bool {
        let mut state = self.lock();
        let Some(id) = state.resolve(container_id_or_name) else {
            return false;
        };
        state.emit_lifecycle("oom", &id);
        true
    }

    /// A snapshot of a named volume.
    pub fn volume(&self, name: &str) -> Option<FakeVolume> {
        self.lock().volumes.get(name).cloned()
    }

    /// Snapshots of every volume that exists.
    pub fn volumes(&self) -> Vec<FakeVolume> {
        self.lock().volumes.values().cloned().collect()
    }

    /// Sends an event to every open event stream whose label filter it matches.
    pub fn push_event(&self, event: ContainerEvent) {
        self.lock().emit(event);
    }

    /// Sends an error to every open event stream (e.g. the engine went away).
    pub fn push_event_error(&self, make_error: impl Fn() -> DockerError) {
        self.lock()
            .subscribers
            .retain(|subscriber| subscriber.sender.send(Err(make_error())).is_ok());
    }

    /// Ends every open event stream, as when the engine restarts.
    pub fn close_event_streams(&self) {
        self.lock().subscribers.clear();
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<DockerCall> {
        self.lock().calls.clone()
    }

    /// Forgets the recorded calls (state is kept).
    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    /// A snapshot of a container, by id, name or unique id prefix.
    pub fn container(&self, container_id_or_name: &str) -> Option<FakeContainer> {
        let state = self.lock();
        let id = state.resolve(container_id_or_name)?;
        state.containers.get(&id).cloned()
    }

    /// Snapshots of every container that exists.
    pub fn containers(&self) -> Vec<FakeContainer> {
        self.lock().containers.values().cloned().collect()
    }

    /// A file a container sees at an absolute path (e.g. `/opt/attune/bin/attune-agent`):
    /// uploaded into it, or in a volume mounted there.
    pub fn uploaded_file(&self, container_id_or_name: &str, path: &str) -> Option<UploadedEntry> {
        let state = self.lock();
        let id = state.resolve(container_id_or_name)?;
        state.file_seen_by(&state.containers[&id], path)
    }

    /// Records a call and returns the failure injected for its operation, if any.
    fn begin(&self, call: DockerCall, operation: Operation) -> Result<(), DockerError> {
        let mut state = self.lock();
        state.calls.push(call);
        match state.take_failure(operation) {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    fn no_such_container(operation: &str, container_id: &str) -> DockerError {
        DockerError::NotFound(format!("{operation}: No such container: {container_id}"))
    }
}

#[async_trait]
impl DockerOps for RecordingDocker {
    async fn ping(&self) -> Result<(), DockerError> {
        self.begin(DockerCall::Ping, Operation::Ping)
    }

    async fn engine_info(&self) -> Result<EngineInfo, DockerError> {
        self.begin(DockerCall::EngineInfo, Operation::EngineInfo)?;
        Ok(self.lock().engine_info.clone())
    }

    async fn inspect_image(&self, image: &str) -> Result<Option<ImageInfo>, DockerError> {
        self.begin(
            DockerCall::InspectImage(image.to_string()),
            Operation::InspectImage,
        )?;
        Ok(self.lock().images.get(image).cloned())
    }

    async fn pull_image(
        &self,
        image: &str,
        credentials: Option<&RegistryCredentials>,
    ) -> Result<(), DockerError> {
        self.lock()
            .pulls
            .push((image.to_string(), credentials.cloned()));
        self.begin(
            DockerCall::PullImage(image.to_string()),
            Operation::PullImage,
        )?;
        let mut state = self.lock();
        let registry = registry_of(image);
        if let Some(required) = state.registry_logins.get(&registry) {
            if credentials != Some(required) {
                let how = if credentials.is_some() {
                    "incorrect username or password"
                } else {
                    "authentication required"
                };
                return Err(DockerError::PullFailed {
                    image: image.to_string(),
                    reason: format!("Head \"https://{registry}/v2/\": unauthorized: {how}"),
                });
            }
        }
        match state.pullable.get(image).cloned() {
            Some(info) => {
                state.images.insert(image.to_string(), info);
                Ok(())
            }
            None => Err(DockerError::PullFailed {
                image: image.to_string(),
                reason: format!(
                    "pull access denied for {image}, repository does not exist or may require 'docker login'"
                ),
            }),
        }
    }

    async fn create_container(&self, spec: &ContainerCreateSpec) -> Result<String, DockerError> {
        self.begin(
            DockerCall::CreateContainer(spec.clone()),
            Operation::CreateContainer,
        )?;
        let operation = format!("create container {}", spec.name);
        let mut state = self.lock();
        if !state.images.contains_key(&spec.image) {
            return Err(DockerError::NotFound(format!(
                "{operation}: No such image: {}",
                spec.image
            )));
        }
        if state.resolve(&spec.name).is_some() {
            return Err(DockerError::Rejected {
                operation,
                reason: format!(
                    "Conflict. The container name \"/{}\" is already in use (http 409)",
                    spec.name
                ),
            });
        }
        for bind in &spec.binds {
            let Some(mount) = parse_bind(bind) else {
                return Err(DockerError::Rejected {
                    operation,
                    reason: format!("invalid volume specification: '{bind}' (http 400)"),
                });
            };
            // The engine creates a missing named volume on first use, empty and unlabelled.
            state
                .volumes
                .entry(mount.volume.clone())
                .or_insert_with(|| FakeVolume {
                    name: mount.volume.clone(),
                    labels: BTreeMap::new(),
                    files: BTreeMap::new(),
                });
        }
        state.next_container_number += 1;
        let id = format!("{:064x}", 0xfa4e_0000_u64 + state.next_container_number);
        let now = chrono::Utc::now();
        state.containers.insert(
            id.clone(),
            FakeContainer {
                id: id.clone(),
                spec: spec.clone(),
                status: "created".to_string(),
                exit_code: None,
                oom_killed: false,
                files: BTreeMap::new(),
                created_unix: now.timestamp(),
                stdin: Vec::new(),
                created: now.to_rfc3339(),
            },
        );
        state.emit_lifecycle("create", &id);
        Ok(id)
    }

    async fn upload_archive(
        &self,
        container_id: &str,
        dest_dir: &str,
        tar: Vec<u8>,
    ) -> Result<(), DockerError> {
        let operation = format!("upload archive to {dest_dir} in container {container_id}");
        let parsed = parse_archive(&tar);
        let entries = parsed
            .as_ref()
            .map(|entries| {
                entries
                    .iter()
                    .map(|entry| (entry.path.clone(), entry.mode, entry.bytes.len() as u64))
                    .collect()
            })
            .unwrap_or_default();
        self.begin(
            DockerCall::UploadArchive {
                container_id: container_id.to_string(),
                dest_dir: dest_dir.to_string(),
                entries,
            },
            Operation::UploadArchive,
        )?;
        let parsed = parsed.map_err(|reason| DockerError::Rejected {
            operation: operation.clone(),
            reason: format!("unreadable tar archive: {reason}"),
        })?;
        let mut state = self.lock();
        let id = state
            .resolve(container_id)
            .ok_or_else(|| Self::no_such_container(&operation, container_id))?;
        let mounts = mounts_of(&state.containers[&id].spec);
        let destination = dest_dir.trim_end_matches('/');
        match mount_for(
            &mounts,
            if destination.is_empty() {
                "/"
            } else {
                destination
            },
        ) {
            Some((mount, _)) if mount.read_only => {
                return Err(DockerError::Rejected {
                    operation,
                    reason: "mounted volume is marked read-only (http 500)".to_string(),
                })
            }
            None if state.containers[&id].spec.read_only_rootfs => {
                return Err(DockerError::Rejected {
                    operation,
                    reason: "container rootfs is marked read-only (http 500)".to_string(),
                })
            }
            _ => {}
        }
        for entry in parsed {
            let path = join_destination(dest_dir, &entry.path);
            match mount_for(&mounts, &path) {
                Some((mount, relative)) => {
                    if let Some(volume) = state.volumes.get_mut(&mount.volume) {
                        volume.files.insert(relative, entry);
                    }
                }
                None => {
                    if let Some(container) = state.containers.get_mut(&id) {
                        container.files.insert(path, entry);
                    }
                }
            }
        }
        Ok(())
    }

    async fn start_container(&self, container_id: &str) -> Result<(), DockerError> {
        self.begin(
            DockerCall::Start(container_id.to_string()),
            Operation::Start,
        )?;
        {
            let operation = format!("start container {container_id}");
            let mut state = self.lock();
            let id = state
                .resolve(container_id)
                .ok_or_else(|| Self::no_such_container(&operation, container_id))?;
            let container = state
                .containers
                .get_mut(&id)
                .ok_or_else(|| Self::no_such_container(&operation, container_id))?;
            if container.status == "running" {
                return Ok(());
            }
            container.status = "running".to_string();
            container.exit_code = None;
            container.oom_killed = false;
            state.emit_lifecycle("start", &id);
        }
        self.state_changed.notify_waiters();
        Ok(())
    }

    async fn start_container_with_input(
        &self,
        container_id: &str,
        input: &[u8],
    ) -> Result<(), DockerError> {
        let operation = format!("write the stdin of container {container_id}");
        {
            let state = self.lock();
            let id = state
                .resolve(container_id)
                .ok_or_else(|| Self::no_such_container(&operation, container_id))?;
            if !state
                .containers
                .get(&id)
                .is_some_and(|container| container.spec.open_stdin)
            {
                return Err(DockerError::Rejected {
                    operation,
                    reason: "the container was not created with an open stdin".to_string(),
                });
            }
        }
        self.lock().calls.push(DockerCall::StartWithInput(
            container_id.to_string(),
            input.to_vec(),
        ));
        self.start_container(container_id).await?;
        let mut state = self.lock();
        if let Some(id) = state.resolve(container_id) {
            if let Some(container) = state.containers.get_mut(&id) {
                container.stdin = input.to_vec();
            }
        }
        Ok(())
    }

    async fn inspect_container(
        &self,
        container_id: &str,
    ) -> Result<Option<ContainerState>, DockerError> {
        self.begin(
            DockerCall::InspectContainer(container_id.to_string()),
            Operation::InspectContainer,
        )?;
        let state = self.lock();
        let Some(id) = state.resolve(container_id) else {
            return Ok(None);
        };
        let container = &state.containers[&id];
        Ok(Some(ContainerState {
            id: container.id.clone(),
            name: container.spec.name.clone(),
            status: container.status.clone(),
            running: container.status == "running",
            exit_code: Some(container.exit_code.unwrap_or(0)),
            oom_killed: container.oom_killed,
            error: String::new(),
            labels: container.spec.labels.clone(),
            created: container.created.clone(),
        }))
    }

    async fn wait_container(&self, container_id: &str) -> Result<i64, DockerError> {
        self.begin(DockerCall::Wait(container_id.to_string()), Operation::Wait)?;
        let operation = format!("wait for container {container_id}");
        let id = self
            .lock()
            .resolve(container_id)
            .ok_or_else(|| Self::no_such_container(&operation, container_id))?;
        loop {
            let notified = self.state_changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let exited = {
                let mut state = self.lock();
                let Some(container) = state.containers.get(&id).cloned() else {
                    return Err(Self::no_such_container(&operation, container_id));
                };
                match container.status.as_str() {
                    "running" => match state.scripted_exit(&container) {
                        Some(code) => {
                            state.exit(&id, code);
                            Some(code)
                        }
                        None => None,
                    },
                    // A created container is "not running" too: the engine answers at once.
                    _ => return Ok(container.exit_code.unwrap_or(0)),
                }
            };
            if let Some(code) = exited {
                self.state_changed.notify_waiters();
                return Ok(code);
            }
            notified.await;
        }
    }

    async fn kill_container(&self, container_id: &str, signal: &str) -> Result<(), DockerError> {
        self.begin(
            DockerCall::Kill(container_id.to_string(), signal.to_string()),
            Operation::Kill,
        )?;
        let exit_code = signal_exit_code(signal).ok_or_else(|| DockerError::Rejected {
            operation: format!("kill container {container_id} with {signal}"),
            reason: format!("Invalid signal: {signal} (http 400)"),
        })?;
        {
            let mut state = self.lock();
            if let Some(id) = state.resolve(container_id) {
                if state.exit(&id, exit_code) {
                    state.emit_lifecycle("kill", &id);
                }
            }
        }
        self.state_changed.notify_waiters();
        Ok(())
    }

    async fn remove_container(&self, container_id: &str) -> Result<(), DockerError> {
        self.begin(
            DockerCall::Remove(container_id.to_string()),
            Operation::Remove,
        )?;
        {
            let mut state = self.lock();
            if let Some(id) = state.resolve(container_id) {
                state.exit(&id, 137);
                state.emit_lifecycle("destroy", &id);
                state.containers.remove(&id);
            }
        }
        self.state_changed.notify_waiters();
        Ok(())
    }

    async fn list_containers(
        &self,
        labels: &[(&str, &str)],
    ) -> Result<Vec<ContainerSummary>, DockerError> {
        let wanted = owned_labels(labels);
        self.begin(
            DockerCall::ListContainers(wanted.clone()),
            Operation::ListContainers,
        )?;
        let state = self.lock();
        Ok(state
            .containers
            .values()
            .filter(|container| labels_match(&container.spec.labels, &wanted))
            .map(|container| ContainerSummary {
                id: container.id.clone(),
                name: container.spec.name.clone(),
                state: container.status.clone(),
                labels: container.spec.labels.clone(),
                created_unix: container.created_unix,
            })
            .collect())
    }

    async fn container_logs(&self, container_id: &str, tail: usize) -> Result<String, DockerError> {
        self.begin(
            DockerCall::ContainerLogs(container_id.to_string(), tail),
            Operation::ContainerLogs,
        )?;
        let operation = format!("read logs of container {container_id}");
        let state = self.lock();
        let id = state
            .resolve(container_id)
            .ok_or_else(|| Self::no_such_container(&operation, container_id))?;
        let container = &state.containers[&id];
        let output = state
            .logs
            .iter()
            .rev()
            .find(|(prefix, _)| {
                container.id.starts_with(prefix.as_str())
                    || container.spec.name.starts_with(prefix.as_str())
            })
            .map(|(_, output)| output.as_str())
            .unwrap_or_default();
        let lines: Vec<&str> = output.split_inclusive('\n').collect();
        Ok(lines[lines.len().saturating_sub(tail)..].concat())
    }

    async fn create_volume(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<VolumeInfo, DockerError> {
        self.begin(
            DockerCall::CreateVolume(name.to_string()),
            Operation::CreateVolume,
        )?;
        let mut state = self.lock();
        let volume = state
            .volumes
            .entry(name.to_string())
            .or_insert_with(|| FakeVolume {
                name: name.to_string(),
                labels: labels.clone(),
                files: BTreeMap::new(),
            });
        Ok(VolumeInfo {
            name: volume.name.clone(),
            labels: volume.labels.clone(),
            created: String::new(),
        })
    }

    async fn inspect_volume(&self, name: &str) -> Result<Option<VolumeInfo>, DockerError> {
        self.begin(
            DockerCall::InspectVolume(name.to_string()),
            Operation::InspectVolume,
        )?;
        Ok(self.lock().volumes.get(name).map(|volume| VolumeInfo {
            name: volume.name.clone(),
            labels: volume.labels.clone(),
            created: String::new(),
        }))
    }

    async fn remove_volume(&self, name: &str) -> Result<(), DockerError> {
        self.begin(
            DockerCall::RemoveVolume(name.to_string()),
            Operation::RemoveVolume,
        )?;
        let mut state = self.lock();
        let users: Vec<String> = state
            .containers
            .values()
            .filter(|container| {
                mounts_of(&container.spec)
                    .iter()
                    .any(|mount| mount.volume == name)
            })
            .map(|container| container.id.clone())
            .collect();
        if let Some(user) = users.first() {
            return Err(DockerError::Rejected {
                operation: format!("remove volume {name}"),
                reason: format!("volume is in use - [{user}] (http 409)"),
            });
        }
        state.volumes.remove(name);
        Ok(())
    }

    async fn read_file(
        &self,
        container_id: &str,
        path: &str,
    ) -> Result<Option<Vec<u8>>, DockerError> {
        self.begin(
            DockerCall::ReadFile(container_id.to_string(), path.to_string()),
            Operation::ReadFile,
        )?;
        let operation = format!("read {path} from container {container_id}");
        let state = self.lock();
        let id = state
            .resolve(container_id)
            .ok_or_else(|| Self::no_such_container(&operation, container_id))?;
        Ok(state
            .file_seen_by(&state.containers[&id], path)
            .filter(|entry| !entry.directory)
            .map(|entry| entry.bytes))
    }

    fn container_events(
        &self,
        labels: &[(&str, &str)],
    ) -> BoxStream<'static, Result<ContainerEvent, DockerError>> {
        let wanted = owned_labels(labels);
        let (sender, receiver) = mpsc::unbounded_channel();
        {
            let mut state = self.lock();
            state
                .calls
                .push(DockerCall::ContainerEvents(wanted.clone()));
            state.subscribers.push(EventSubscriber {
                labels: wanted,
                sender,
            });
        }
        stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|item| (item, receiver))
        })
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::{InjectionArchive, EXECUTABLE_MODE};
    use std::time::Duration;

    const DEADLINE: Duration = Duration::from_secs(5);

    fn spec(name: &str) -> ContainerCreateSpec {
        ContainerCreateSpec {
            name: name.to_string(),
            image: "busybox:1.36".to_string(),
            labels: BTreeMap::from([
                ("attune.managed".to_string(), "true".to_string()),
                ("attune.execution_id".to_string(), name.to_string()),
            ]),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn lifecycle_is_recorded_and_consistent() {
        let docker = RecordingDocker::new();
        docker
            .add_image("busybox:1.36", "amd64")
            .set_exit("attune-exec-", 3);
        let id = docker
            .create_container(&spec("attune-exec-1"))
            .await
            .unwrap();
        let mut archive = InjectionArchive::new();
        archive
            .add_file("opt/attune/bin/attune-agent", EXECUTABLE_MODE, "agent")
            .unwrap();
        docker
            .upload_archive(&id, "/", archive.finish())
            .await
            .unwrap();
        docker.start_container(&id).await.unwrap();
        assert!(
            docker
                .inspect_container(&id)
                .await
                .unwrap()
                .unwrap()
                .running
        );
        assert_eq!(docker.wait_container("attune-exec-1").await.unwrap(), 3);
        let state = docker.inspect_container(&id).await.unwrap().unwrap();
        assert_eq!(
            (state.status.as_str(), state.exit_code),
            ("exited", Some(3))
        );
        let listed = docker
            .list_containers(&[("attune.managed", "true")])
            .await
            .unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].state, "exited");
        assert!(docker
            .list_containers(&[("attune.managed", "false")])
            .await
            .unwrap()
            .is_empty());
        let agent = docker
            .uploaded_file(&id, "/opt/attune/bin/attune-agent")
            .unwrap();
        assert_eq!((agent.mode, agent.bytes.as_slice()), (0o755, &b"agent"[..]));
        docker.remove_container(&id).await.unwrap();
        docker.remove_container(&id).await.unwrap();
        assert_eq!(docker.inspect_container(&id).await.unwrap(), None);
        assert!(matches!(
            docker.wait_container(&id).await,
            Err(DockerError::NotFound(_))
        ));

        let calls = docker.calls();
        assert!(
            matches!(calls[0], DockerCall::CreateContainer(ref s) if s.name == "attune-exec-1")
        );
        assert_eq!(
            calls[1],
            DockerCall::UploadArchive {
                container_id: id.clone(),
                dest_dir: "/".into(),
                entries: vec![
                    ("opt".into(), 0o755, 0),
                    ("opt/attune".into(), 0o755, 0),
                    ("opt/attune/bin".into(), 0o755, 0),
                    ("opt/attune/bin/attune-agent".into(), 0o755, 5),
                ],
            }
        );
        assert_eq!(calls[2], DockerCall::Start(id.clone()));
        assert!(calls.contains(&DockerCall::Remove(id.clone())));
    }

    #[tokio::test]
    async fn injected_failures_hit_the_next_call_only() {
        let docker = RecordingDocker::new();
        docker.add_image("busybox:1.36", "amd64");
        docker.fail_next(
            Operation::Start,
            DockerError::Rejected {
                operation: "start container".into(),
                reason: "exec format error".into(),
            },
        );
        let id = docker
            .create_container(&spec("attune-exec-2"))
            .await
            .unwrap();
        let error = docker.start_container(&id).await.unwrap_err();
        assert!(error.to_string().contains("exec format error"));
        assert_eq!(docker.container(&id).unwrap().status, "created");
        docker.start_container(&id).await.unwrap();
        assert_eq!(docker.container(&id).unwrap().status, "running");
    }

    #[tokio::test]
    async fn images_and_pulls_follow_the_script() {
        let docker = RecordingDocker::new();
        docker
            .add_image("arm-only:1", "arm64")
            .add_pullable_image("python:3.11-slim", "amd64");
        let arm = docker.inspect_image("arm-only:1").await.unwrap().unwrap();
        assert_eq!(arm.architecture, "arm64");
        assert_eq!(
            docker.inspect_image("python:3.11-slim").await.unwrap(),
            None
        );
        assert!(matches!(
            docker
                .create_container(&ContainerCreateSpec {
                    image: "python:3.11-slim".into(),
                    ..spec("attune-exec-3")
                })
                .await,
            Err(DockerError::NotFound(_))
        ));
        docker.pull_image("python:3.11-slim", None).await.unwrap();
        assert!(docker
            .inspect_image("python:3.11-slim")
            .await
            .unwrap()
            .is_some());
        assert!(matches!(
            docker.pull_image("nowhere/missing:1", None).await,
            Err(DockerError::PullFailed { ref image, .. }) if image == "nowhere/missing:1"
        ));
    }

    #[tokio::test]
    async fn a_registry_that_demands_a_login_refuses_other_credentials() {
        let docker = RecordingDocker::new();
        let robot = RegistryCredentials {
            username: "robot".into(),
            password: "right".into(),
        };
        docker
            .add_pullable_image("registry.example.com/team/tool:1", "amd64")
            .require_registry_login("registry.example.com", robot.clone());
        let image = "registry.example.com/team/tool:1";
        let anonymous = docker.pull_image(image, None).await.unwrap_err();
        assert!(
            anonymous.to_string().contains("authentication required"),
            "{anonymous}"
        );
        let wrong = RegistryCredentials {
            password: "wrong".into(),
            ..robot.clone()
        };
        let refused = docker.pull_image(image, Some(&wrong)).await.unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("incorrect username or password"),
            "{refused}"
        );
        docker.pull_image(image, Some(&robot)).await.unwrap();
        assert!(docker.inspect_image(image).await.unwrap().is_some());
        let carried: Vec<Option<String>> = docker
            .pulls()
            .into_iter()
            .map(|(_, credentials)| credentials.map(|credentials| credentials.password))
            .collect();
        assert_eq!(
            carried,
            vec![None, Some("wrong".to_string()), Some("right".to_string())]
        );
    }

    #[tokio::test]
    async fn wait_blocks_until_the_container_is_killed() {
        let docker = RecordingDocker::new();
        docker.add_image("busybox:1.36", "amd64");
        let id = docker
            .create_container(&spec("attune-exec-4"))
            .await
            .unwrap();
        docker.start_container(&id).await.unwrap();
        let waiter = {
            let docker = docker.clone();
            let id = id.clone();
            tokio::spawn(async move { docker.wait_container(&id).await })
        };
        // The waiter must have registered before the kill for the test to mean anything.
        tokio::time::timeout(DEADLINE, async {
            while !docker.calls().contains(&DockerCall::Wait(id.clone())) {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("waiter registered");
        assert!(!waiter.is_finished());
        docker.kill_container(&id, "SIGTERM").await.unwrap();
        let code = tokio::time::timeout(DEADLINE, waiter)
            .await
            .expect("wait returned")
            .unwrap()
            .unwrap();
        assert_eq!(code, 143);
        docker.kill_container(&id, "SIGKILL").await.unwrap();
        assert!(matches!(
            docker.kill_container(&id, "SIGBOGUS").await,
            Err(DockerError::Rejected { .. })
        ));
    }

    #[tokio::test]
    async fn events_are_filtered_by_label_and_lifecycle_is_optional() {
        let docker = RecordingDocker::new();
        docker.add_image("busybox:1.36", "amd64");
        let mut managed = docker.container_events(&[("attune.managed", "true")]);
        let mut other = docker.container_events(&[("attune.managed", "other")]);
        docker.push_event(ContainerEvent {
            action: "die".into(),
            container_id: "abc".into(),
            labels: BTreeMap::from([("attune.managed".into(), "true".into())]),
            exit_code: Some(1),
        });
        let event = tokio::time::timeout(DEADLINE, managed.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!((event.action.as_str(), event.exit_code), ("die", Some(1)));

        docker
            .set_lifecycle_events(true)
            .set_exit("attune-exec-5", 0);
        let id = docker
            .create_container(&spec("attune-exec-5"))
            .await
            .unwrap();
        docker.start_container(&id).await.unwrap();
        docker.wait_container(&id).await.unwrap();
        let mut actions = Vec::new();
        for _ in 0..3 {
            let event = tokio::time::timeout(DEADLINE, managed.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(event.container_id, id);
            actions.push(event.action);
        }
        assert_eq!(actions, vec!["create", "start", "die"]);

        docker.close_event_streams();
        assert!(tokio::time::timeout(DEADLINE, managed.next())
            .await
            .unwrap()
            .is_none());
        assert!(
            tokio::time::timeout(DEADLINE, other.next())
                .await
                .unwrap()
                .is_none(),
            "the other stream saw no event before it closed"
        );
    }

    #[tokio::test]
    async fn logs_return_the_last_lines() {
        let docker = RecordingDocker::new();
        docker
            .add_image("busybox:1.36", "amd64")
            .set_logs("attune-exec-6", "one\ntwo\nthree\n");
        let id = docker
            .create_container(&spec("attune-exec-6"))
            .await
            .unwrap();
        assert_eq!(docker.container_logs(&id, 2).await.unwrap(), "two\nthree\n");
        assert_eq!(
            docker.container_logs(&id, 10).await.unwrap(),
            "one\ntwo\nthree\n"
        );
    }

    #[tokio::test]
    async fn read_only_rootfs_refuses_uploads_like_the_engine() {
        let docker = RecordingDocker::new();
        docker.add_image("busybox:1.36", "amd64");
        let id = docker
            .create_container(&ContainerCreateSpec {
                read_only_rootfs: true,
                ..spec("attune-exec-7")
            })
            .await
            .unwrap();
        let mut archive = InjectionArchive::new();
        archive.add_file("a", 0o644, "x").unwrap();
        assert!(matches!(
            docker.upload_archive(&id, "/", archive.finish()).await,
            Err(DockerError::Rejected { .. })
        ));
        assert!(matches!(
            docker.create_container(&spec("attune-exec-7")).await,
            Err(DockerError::Rejected { .. })
        ));
    }
}
