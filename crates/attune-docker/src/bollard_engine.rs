//! [`DockerOps`] on a real Docker engine through bollard.
//!
//! The client negotiates the API version down to what the engine speaks (1.41 for Docker
//! 20.10; bollard 0.18 starts at 1.47). Engine errors are mapped to [`DockerError`] kinds the
//! controller branches on: unreachable engine → `Unavailable`, HTTP 404 → `NotFound`, failed
//! pulls → `PullFailed`, anything else the engine refuses → `Rejected`.

use crate::{
    registry_of, ContainerCreateSpec, ContainerEvent, ContainerState, ContainerSummary,
    DockerError, DockerOps, EngineInfo, ImageInfo, RegistryCredentials, VolumeInfo,
    DOCKER_HUB_REGISTRY,
};
use async_trait::async_trait;
use bollard::auth::DockerCredentials;
use bollard::container::{
    AttachContainerOptions, Config, CreateContainerOptions, DownloadFromContainerOptions,
    InspectContainerOptions, KillContainerOptions, ListContainersOptions, LogsOptions,
    RemoveContainerOptions, StartContainerOptions, UploadToContainerOptions, WaitContainerOptions,
};
use bollard::errors::Error as BollardError;
use bollard::image::CreateImageOptions;
use bollard::models::{HostConfig, HostConfigLogConfig, ResourcesUlimits};
use bollard::system::EventsOptions;
use bollard::volume::{CreateVolumeOptions, RemoveVolumeOptions};
use bollard::{Docker, API_DEFAULT_VERSION};
use futures_util::stream::{BoxStream, StreamExt, TryStreamExt};
use std::collections::{BTreeMap, HashMap};

/// Where the engine listens when neither the caller nor `DOCKER_HOST` says otherwise.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";

/// Seconds to wait for the engine's response headers. Long operations (wait, events, pull)
/// answer with headers at once and stream the body, so this only bounds an unresponsive engine.
const REQUEST_TIMEOUT_SECONDS: u64 = 120;

/// Event attributes the engine adds beside a container's labels.
const ENGINE_EVENT_ATTRIBUTES: &[&str] = &["name", "image", "exitCode", "signal", "execID"];

/// A Docker engine reached through bollard, with the API version negotiated.
#[derive(Debug, Clone)]
pub struct BollardEngine {
    docker: Docker,
    docker_host: String,
}

impl BollardEngine {
    /// Connects to `docker_host` (`unix:///path`, `/path`, `tcp://host:port`, `http://...`),
    /// else `DOCKER_HOST`, else the local unix socket, and negotiates the API version.
    pub async fn connect(docker_host: Option<&str>) -> Result<Self, DockerError> {
        let docker_host = docker_host
            .map(str::to_string)
            .or_else(|| {
                std::env::var("DOCKER_HOST")
                    .ok()
                    .filter(|host| !host.is_empty())
            })
            .unwrap_or_else(|| DEFAULT_DOCKER_HOST.to_string());
        let docker = open_client(&docker_host)?;
        let docker = docker.negotiate_version().await.map_err(|error| {
            DockerError::Unavailable(format!(
                "negotiate api version with {docker_host}: {}",
                error_chain(&error)
            ))
        })?;
        Ok(Self {
            docker,
            docker_host,
        })
    }

    /// The API version in use after negotiation, e.g. `1.41`.
    pub fn api_version(&self) -> String {
        self.docker.client_version().to_string()
    }

    /// The address this engine was reached at.
    pub fn docker_host(&self) -> &str {
        &self.docker_host
    }
}

fn open_client(docker_host: &str) -> Result<Docker, DockerError> {
    let result = if let Some(path) = docker_host.strip_prefix("unix://") {
        Docker::connect_with_unix(path, REQUEST_TIMEOUT_SECONDS, API_DEFAULT_VERSION)
    } else if docker_host.starts_with('/') {
        Docker::connect_with_unix(docker_host, REQUEST_TIMEOUT_SECONDS, API_DEFAULT_VERSION)
    } else if docker_host.starts_with("tcp://") || docker_host.starts_with("http://") {
        Docker::connect_with_http(docker_host, REQUEST_TIMEOUT_SECONDS, API_DEFAULT_VERSION)
    } else {
        return Err(DockerError::Unavailable(format!(
            "unsupported docker host {docker_host}: use unix://, tcp:// or http://"
        )));
    };
    result.map_err(|error| {
        DockerError::Unavailable(format!("connect to {docker_host}: {}", error_chain(&error)))
    })
}

/// The error and its sources joined with `: ` (hyper's top-level messages say little).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// True when the error says the engine could not be reached or did not answer.
fn is_connection_error(error: &BollardError) -> bool {
    matches!(
        error,
        BollardError::HyperLegacyError { .. }
            | BollardError::HyperResponseError { .. }
            | BollardError::IOError { .. }
            | BollardError::SocketNotFoundError(_)
            | BollardError::RequestTimeoutError
    )
}

fn status_of(error: &BollardError) -> Option<(u16, &str)> {
    match error {
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => Some((*status_code, message.as_str())),
        _ => None,
    }
}

/// Maps a bollard error of `operation` (e.g. `create container attune-exec-42`).
fn map_error(operation: &str, error: BollardError) -> DockerError {
    if is_connection_error(&error) {
        return DockerError::Unavailable(format!("{operation}: {}", error_chain(&error)));
    }
    match error {
        BollardError::DockerResponseServerError {
            status_code: 404,
            message,
        } => DockerError::NotFound(format!("{operation}: {message}")),
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => DockerError::Rejected {
            operation: operation.to_string(),
            reason: format!("{message} (http {status_code})"),
        },
        BollardError::DockerStreamError { error } => DockerError::Rejected {
            operation: operation.to_string(),
            reason: error,
        },
        other => DockerError::Rejected {
            operation: operation.to_string(),
            reason: error_chain(&other),
        },
    }
}

/// Splits `name[:tag]` / `name@digest` into what `POST /images/create` expects; a bare name
/// means `latest` (an empty tag would make the engine pull every tag).
fn split_image_reference(image: &str) -> (&str, &str) {
    if image.contains('@') {
        return (image, "");
    }
    let last_slash = image.rfind('/').map_or(0, |index| index + 1);
    match image[last_slash..].rfind(':') {
        Some(colon) => {
            let colon = last_slash + colon;
            (&image[..colon], &image[colon + 1..])
        }
        None => (image, "latest"),
    }
}

/// The `X-Registry-Auth` credentials for pulling `image`: the engine logs in to the image's
/// registry with them (Docker Hub's server address is the one the engine itself uses).
fn docker_credentials(image: &str, credentials: &RegistryCredentials) -> DockerCredentials {
    let registry = registry_of(image);
    let server_address = if registry == DOCKER_HUB_REGISTRY {
        "https://index.docker.io/v1/".to_string()
    } else {
        registry
    };
    DockerCredentials {
        username: Some(credentials.username.clone()),
        password: Some(credentials.password.clone()),
        serveraddress: Some(server_address),
        ..Default::default()
    }
}

/// Recognizes compressed payloads, which must never be sent to put_archive.
fn compression_of(archive: &[u8]) -> Option<&'static str> {
    const SIGNATURES: &[(&[u8], &str)] = &[
        (&[0x1f, 0x8b], "gzip"),
        (b"BZh", "bzip2"),
        (&[0xfd, b'7', b'z', b'X', b'Z', 0x00], "xz"),
        (&[0x28, 0xb5, 0x2f, 0xfd], "zstd"),
    ];
    SIGNATURES
        .iter()
        .find(|(magic, _)| archive.starts_with(magic))
        .map(|(_, name)| *name)
}

fn non_empty<T>(items: &[T]) -> Option<Vec<T>>
where
    T: Clone,
{
    (!items.is_empty()).then(|| items.to_vec())
}

fn to_hash_map(map: &BTreeMap<String, String>) -> HashMap<String, String> {
    map.iter()
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect()
}

fn to_btree_map(map: Option<HashMap<String, String>>) -> BTreeMap<String, String> {
    map.unwrap_or_default().into_iter().collect()
}

fn label_filters(labels: &[(&str, &str)]) -> Vec<String> {
    labels
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect()
}

/// The create-container body for a spec: every hardening field goes into HostConfig.
pub(crate) fn container_config(spec: &ContainerCreateSpec) -> Config<String> {
    let host_config = HostConfig {
        network_mode: spec.network_mode.clone(),
        init: Some(spec.init),
        cap_drop: non_empty(&spec.cap_drop),
        cap_add: non_empty(&spec.cap_add),
        security_opt: non_empty(&spec.security_opt),
        pids_limit: spec.pids_limit,
        memory: spec.memory_bytes,
        memory_swap: spec.memory_bytes,
        nano_cpus: spec.nano_cpus,
        ulimits: spec.nofile_limit.map(|limit| {
            vec![ResourcesUlimits {
                name: Some("nofile".to_string()),
                soft: Some(limit),
                hard: Some(limit),
            }]
        }),
        readonly_rootfs: Some(spec.read_only_rootfs),
        tmpfs: (!spec.tmpfs.is_empty()).then(|| to_hash_map(&spec.tmpfs)),
        binds: non_empty(&spec.binds),
        log_config: spec
            .log_config
            .as_ref()
            .map(|log_config| HostConfigLogConfig {
                typ: Some(log_config.driver.clone()),
                config: Some(to_hash_map(&log_config.options)),
            }),
        // We remove containers ourselves, after reading their exit state and logs.
        auto_remove: Some(false),
        ..Default::default()
    };
    Config {
        image: Some(spec.image.clone()),
        entrypoint: non_empty(&spec.entrypoint),
        cmd: non_empty(&spec.cmd),
        env: non_empty(&spec.env),
        labels: Some(to_hash_map(&spec.labels)),
        user: spec.user.clone(),
        working_dir: spec.working_dir.clone(),
        tty: Some(false),
        open_stdin: Some(spec.open_stdin),
        stdin_once: Some(spec.open_stdin),
        attach_stdin: Some(spec.open_stdin),
        host_config: Some(host_config),
        ..Default::default()
    }
}

fn volume_info(volume: bollard::models::Volume) -> VolumeInfo {
    VolumeInfo {
        name: volume.name,
        labels: volume.labels.into_iter().collect(),
        created: volume
            .created_at
            .map(|created| created.to_string())
            .unwrap_or_default(),
    }
}

/// The contents of the first regular file in a tar archive; `None` when it holds none.
fn first_regular_file(tar_bytes: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut archive = tar::Archive::new(tar_bytes);
    let entries = archive
        .entries()
        .map_err(|error| format!("unreadable archive from the engine: {error}"))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|error| format!("unreadable archive from the engine: {error}"))?;
        if entry.header().entry_type().is_file() {
            let mut contents = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut contents)
                .map_err(|error| format!("read file from the engine's archive: {error}"))?;
            return Ok(Some(contents));
        }
    }
    Ok(None)
}

/// Now as `seconds.nanoseconds` since the epoch, the form the engine's `since` accepts.
fn unix_timestamp_now() -> String {
    let elapsed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:09}", elapsed.as_secs(), elapsed.subsec_nanos())
}

fn container_event(message: bollard::models::EventMessage) -> ContainerEvent {
    let actor = message.actor.unwrap_or_default();
    let attributes = actor.attributes.unwrap_or_default();
    let exit_code = attributes
        .get("exitCode")
        .and_then(|code| code.parse::<i64>().ok());
    let labels = attributes
        .into_iter()
        .filter(|(key, _)| !ENGINE_EVENT_ATTRIBUTES.contains(&key.as_str()))
        .collect();
    ContainerEvent {
        action: message.action.unwrap_or_default(),
        container_id: actor.id.unwrap_or_default(),
        labels,
        exit_code,
    }
}

#[async_trait]
impl DockerOps for BollardEngine {
    async fn ping(&self) -> Result<(), DockerError> {
        self.docker
            .ping()
            .await
            .map(|_| ())
            .map_err(|error| map_error("ping docker engine", error))
    }

    async fn engine_info(&self) -> Result<EngineInfo, DockerError> {
        let version = self
            .docker
            .version()
            .await
            .map_err(|error| map_error("read docker engine version", error))?;
        let system = self
            .docker
            .info()
            .await
            .map_err(|error| map_error("read docker engine info", error))?;
        Ok(EngineInfo {
            server_version: version.version.unwrap_or_default(),
            api_version: self.api_version(),
            engine_api_version: version.api_version.unwrap_or_default(),
            architecture: version.arch.unwrap_or_default(),
            os: version.os.unwrap_or_default(),
            cpus: system.ncpu.unwrap_or_default(),
        })
    }

    async fn inspect_image(&self, image: &str) -> Result<Option<ImageInfo>, DockerError> {
        match self.docker.inspect_image(image).await {
            Ok(inspect) => Ok(Some(ImageInfo {
                id: inspect.id.unwrap_or_default(),
                architecture: inspect.architecture.unwrap_or_default(),
                os: inspect.os.unwrap_or_default(),
                user: inspect
                    .config
                    .and_then(|config| config.user)
                    .unwrap_or_default(),
            })),
            Err(error) if status_of(&error).is_some_and(|(status, _)| status == 404) => Ok(None),
            Err(error) => Err(map_error(&format!("inspect image {image}"), error)),
        }
    }

    async fn pull_image(
        &self,
        image: &str,
        credentials: Option<&RegistryCredentials>,
    ) -> Result<(), DockerError> {
        let (from_image, tag) = split_image_reference(image);
        let options = CreateImageOptions {
            from_image,
            tag,
            ..Default::default()
        };
        let credentials = credentials.map(|credentials| docker_credentials(image, credentials));
        let mut progress = self.docker.create_image(Some(options), None, credentials);
        while let Some(item) = progress.next().await {
            if let Err(error) = item {
                if is_connection_error(&error) {
                    return Err(map_error(&format!("pull image {image}"), error));
                }
                let reason = match error {
                    BollardError::DockerResponseServerError { message, .. } => message,
                    BollardError::DockerStreamError { error } => error,
                    other => error_chain(&other),
                };
                return Err(DockerError::PullFailed {
                    image: image.to_string(),
                    reason,
                });
            }
        }
        Ok(())
    }

    async fn create_container(&self, spec: &ContainerCreateSpec) -> Result<String, DockerError> {
        let options = CreateContainerOptions {
            name: spec.name.clone(),
            platform: None,
        };
        self.docker
            .create_container(Some(options), container_config(spec))
            .await
            .map(|response| response.id)
            .map_err(|error| map_error(&format!("create container {}", spec.name), error))
    }

    async fn upload_archive(
        &self,
        container_id: &str,
        dest_dir: &str,
        tar: Vec<u8>,
    ) -> Result<(), DockerError> {
        let operation = format!("upload archive to {dest_dir} in container {container_id}");
        if let Some(compression) = compression_of(&tar) {
            return Err(DockerError::Rejected {
                operation,
                reason: format!("archive is {compression}-compressed; only plain tar is sent"),
            });
        }
        let options = UploadToContainerOptions {
            path: dest_dir.to_string(),
            no_overwrite_dir_non_dir: "true".to_string(),
        };
        self.docker
            .upload_to_container(container_id, Some(options), tar.into())
            .await
            .map_err(|error| map_error(&operation, error))
    }

    async fn start_container(&self, container_id: &str) -> Result<(), DockerError> {
        self.docker
            .start_container(container_id, None::<StartContainerOptions<String>>)
            .await
            .map_err(|error| map_error(&format!("start container {container_id}"), error))
    }

    async fn start_container_with_input(
        &self,
        container_id: &str,
        input: &[u8],
    ) -> Result<(), DockerError> {
        use tokio::io::AsyncWriteExt;
        let operation = format!("write the stdin of container {container_id}");
        let options = AttachContainerOptions::<String> {
            stdin: Some(true),
            stream: Some(true),
            ..Default::default()
        };
        // Attached before it starts, so nothing the agent reads is missed.
        let mut attached = self
            .docker
            .attach_container(container_id, Some(options))
            .await
            .map_err(|error| map_error(&operation, error))?;
        self.start_container(container_id).await?;
        // The container runs by now, so this is never retried (its agent fails on its own
        // when no secrets arrive): a refusal, not a transient error.
        let io = |error: std::io::Error| DockerError::Rejected {
            operation: operation.clone(),
            reason: format!("the container started but its stdin could not be written: {error}"),
        };
        attached.input.write_all(input).await.map_err(io)?;
        attached.input.flush().await.map_err(io)?;
        attached.input.shutdown().await.map_err(io)?;
        Ok(())
    }

    async fn inspect_container(
        &self,
        container_id: &str,
    ) -> Result<Option<ContainerState>, DockerError> {
        let inspect = match self
            .docker
            .inspect_container(container_id, None::<InspectContainerOptions>)
            .await
        {
            Ok(inspect) => inspect,
            Err(error) if status_of(&error).is_some_and(|(status, _)| status == 404) => {
                return Ok(None)
            }
            Err(error) => {
                return Err(map_error(
                    &format!("inspect container {container_id}"),
                    error,
                ))
            }
        };
        let state = inspect.state.unwrap_or_default();
        Ok(Some(ContainerState {
            id: inspect.id.unwrap_or_default(),
            name: inspect
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            status: state
                .status
                .map(|status| status.to_string())
                .unwrap_or_default(),
            running: state.running.unwrap_or(false),
            exit_code: state.exit_code,
            oom_killed: state.oom_killed.unwrap_or(false),
            error: state.error.unwrap_or_default(),
            labels: to_btree_map(inspect.config.and_then(|config| config.labels)),
            created: inspect.created.unwrap_or_default(),
        }))
    }

    /// Call after start: a created, never started container counts as not running (exit 0).
    async fn wait_container(&self, container_id: &str) -> Result<i64, DockerError> {
        let operation = format!("wait for container {container_id}");
        let options = WaitContainerOptions {
            condition: "not-running".to_string(),
        };
        let mut responses = self.docker.wait_container(container_id, Some(options));
        match responses.next().await {
            Some(Ok(response)) => Ok(response.status_code),
            // bollard turns a non-zero exit into an error; for us it is a normal result.
            Some(Err(BollardError::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(error)) => Err(map_error(&operation, error)),
            None => Err(DockerError::Rejected {
                operation,
                reason: "engine closed the wait response without an exit status".to_string(),
            }),
        }
    }

    async fn kill_container(&self, container_id: &str, signal: &str) -> Result<(), DockerError> {
        let options = KillContainerOptions { signal };
        match self
            .docker
            .kill_container(container_id, Some(options))
            .await
        {
            Ok(()) => Ok(()),
            Err(error)
                if status_of(&error).is_some_and(|(status, message)| {
                    status == 404 || (status == 409 && message.contains("is not running"))
                }) =>
            {
                Ok(())
            }
            Err(error) => Err(map_error(
                &format!("kill container {container_id} with {signal}"),
                error,
            )),
        }
    }

    async fn remove_container(&self, container_id: &str) -> Result<(), DockerError> {
        let options = RemoveContainerOptions {
            v: true,
            force: true,
            link: false,
        };
        match self
            .docker
            .remove_container(container_id, Some(options))
            .await
        {
            Ok(()) => Ok(()),
            Err(error)
                if status_of(&error).is_some_and(|(status, message)| {
                    status == 404 || message.contains("already in progress")
                }) =>
            {
                Ok(())
            }
            Err(error) => Err(map_error(
                &format!("remove container {container_id}"),
                error,
            )),
        }
    }

    async fn list_containers(
        &self,
        labels: &[(&str, &str)],
    ) -> Result<Vec<ContainerSummary>, DockerError> {
        let mut filters = HashMap::new();
        if !labels.is_empty() {
            filters.insert("label".to_string(), label_filters(labels));
        }
        let options = ListContainersOptions {
            all: true,
            filters,
            ..Default::default()
        };
        let containers = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|error| map_error("list containers", error))?;
        Ok(containers
            .into_iter()
            .map(|container| ContainerSummary {
                id: container.id.unwrap_or_default(),
                name: container
                    .names
                    .and_then(|names| names.into_iter().next())
                    .unwrap_or_default()
                    .trim_start_matches('/')
                    .to_string(),
                state: container.state.unwrap_or_default(),
                labels: to_btree_map(container.labels),
                created_unix: container.created.unwrap_or_default(),
            })
            .collect())
    }

    async fn container_logs(&self, container_id: &str, tail: usize) -> Result<String, DockerError> {
        let options = LogsOptions {
            follow: false,
            stdout: true,
            stderr: true,
            tail: tail.to_string(),
            ..Default::default()
        };
        let chunks: Vec<_> = self
            .docker
            .logs(container_id, Some(options))
            .try_collect()
            .await
            .map_err(|error| map_error(&format!("read logs of container {container_id}"), error))?;
        let mut bytes = Vec::new();
        for chunk in chunks {
            bytes.extend_from_slice(&chunk.into_bytes());
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    async fn create_volume(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<VolumeInfo, DockerError> {
        let options = CreateVolumeOptions {
            name: name.to_string(),
            driver: "local".to_string(),
            driver_opts: HashMap::new(),
            labels: to_hash_map(labels),
        };
        self.docker
            .create_volume(options)
            .await
            .map(volume_info)
            .map_err(|error| map_error(&format!("create volume {name}"), error))
    }

    async fn inspect_volume(&self, name: &str) -> Result<Option<VolumeInfo>, DockerError> {
        match self.docker.inspect_volume(name).await {
            Ok(volume) => Ok(Some(volume_info(volume))),
            Err(error) if status_of(&error).is_some_and(|(status, _)| status == 404) => Ok(None),
            Err(error) => Err(map_error(&format!("inspect volume {name}"), error)),
        }
    }

    async fn remove_volume(&self, name: &str) -> Result<(), DockerError> {
        let options = RemoveVolumeOptions { force: false };
        match self.docker.remove_volume(name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(error) if status_of(&error).is_some_and(|(status, _)| status == 404) => Ok(()),
            Err(error) => Err(map_error(&format!("remove volume {name}"), error)),
        }
    }

    async fn read_file(
        &self,
        container_id: &str,
        path: &str,
    ) -> Result<Option<Vec<u8>>, DockerError> {
        let operation = format!("read {path} from container {container_id}");
        let options = DownloadFromContainerOptions {
            path: path.to_string(),
        };
        let chunks: Vec<_> = match self
            .docker
            .download_from_container(container_id, Some(options))
            .try_collect()
            .await
        {
            Ok(chunks) => chunks,
            Err(error) if status_of(&error).is_some_and(|(status, _)| status == 404) => {
                // The engine answers 404 both for a missing path and a missing container.
                if self.inspect_container(container_id).await?.is_none() {
                    return Err(DockerError::NotFound(format!(
                        "{operation}: No such container: {container_id}"
                    )));
                }
                return Ok(None);
            }
            Err(error) => return Err(map_error(&operation, error)),
        };
        let mut tar_bytes = Vec::new();
        for chunk in chunks {
            tar_bytes.extend_from_slice(&chunk);
        }
        first_regular_file(&tar_bytes).map_err(|reason| DockerError::Rejected { operation, reason })
    }

    fn container_events(
        &self,
        labels: &[(&str, &str)],
    ) -> BoxStream<'static, Result<ContainerEvent, DockerError>> {
        let mut filters = HashMap::new();
        filters.insert("type".to_string(), vec!["container".to_string()]);
        if !labels.is_empty() {
            filters.insert("label".to_string(), label_filters(labels));
        }
        // The request is only sent when the stream is first polled; `since` set to the time of
        // this call makes the engine replay what happened in between, so no event is missed.
        let options = EventsOptions::<String> {
            since: Some(unix_timestamp_now()),
            until: None,
            filters,
        };
        self.docker
            .events(Some(options))
            .map(|item| {
                item.map(container_event)
                    .map_err(|error| map_error("read docker events", error))
            })
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_split_into_name_and_tag() {
        assert_eq!(split_image_reference("busybox:1.36"), ("busybox", "1.36"));
        assert_eq!(split_image_reference("busybox"), ("busybox", "latest"));
        assert_eq!(
            split_image_reference("127.0.0.1:5000/team/app"),
            ("127.0.0.1:5000/team/app", "latest")
        );
        assert_eq!(
            split_image_reference("127.0.0.1:5000/team/app:v2"),
            ("127.0.0.1:5000/team/app", "v2")
        );
        assert_eq!(
            split_image_reference("app@sha256:0123abcd"),
            ("app@sha256:0123abcd", "")
        );
    }

    #[test]
    fn compressed_archives_are_recognized() {
        assert_eq!(compression_of(&[0x1f, 0x8b, 0x08, 0x00]), Some("gzip"));
        assert_eq!(compression_of(b"BZh91AY"), Some("bzip2"));
        assert_eq!(compression_of(b"opt/\0\0\0"), None);
        let mut plain = crate::archive::InjectionArchive::new();
        plain.add_file("a", 0o644, "x").unwrap();
        assert_eq!(compression_of(&plain.finish()), None);
    }

    #[test]
    fn every_spec_field_reaches_the_create_body() {
        let spec = ContainerCreateSpec {
            name: "attune-exec-42".into(),
            image: "busybox:1.36".into(),
            entrypoint: vec!["/opt/attune/bin/attune-agent".into()],
            cmd: vec!["--once".into()],
            env: vec!["A=1".into()],
            labels: BTreeMap::from([("attune.managed".into(), "true".into())]),
            user: Some("65534:65534".into()),
            working_dir: Some("/tmp".into()),
            network_mode: Some("bridge".into()),
            init: true,
            cap_drop: vec!["ALL".into()],
            cap_add: vec!["NET_BIND_SERVICE".into()],
            security_opt: vec!["no-new-privileges".into()],
            pids_limit: Some(256),
            memory_bytes: Some(64 * 1024 * 1024),
            nano_cpus: Some(500_000_000),
            nofile_limit: Some(1024),
            read_only_rootfs: true,
            tmpfs: BTreeMap::from([("/tmp".into(), "rw,size=16m".into())]),
            binds: vec!["attune-agent-0.1.0:/opt/attune:ro".into()],
            log_config: Some(crate::LogConfig::bounded_json_file("10m", 2)),
            open_stdin: false,
        };
        let body = serde_json::to_value(container_config(&spec)).unwrap();
        let host = &body["HostConfig"];
        assert_eq!(body["Image"], "busybox:1.36");
        assert_eq!(
            body["Entrypoint"],
            serde_json::json!(["/opt/attune/bin/attune-agent"])
        );
        assert_eq!(body["Cmd"], serde_json::json!(["--once"]));
        assert_eq!(body["Env"], serde_json::json!(["A=1"]));
        assert_eq!(body["Labels"]["attune.managed"], "true");
        assert_eq!(body["User"], "65534:65534");
        assert_eq!(body["WorkingDir"], "/tmp");
        assert_eq!(host["NetworkMode"], "bridge");
        assert_eq!(host["Init"], true);
        assert_eq!(host["CapDrop"], serde_json::json!(["ALL"]));
        assert_eq!(host["CapAdd"], serde_json::json!(["NET_BIND_SERVICE"]));
        assert_eq!(
            host["SecurityOpt"],
            serde_json::json!(["no-new-privileges"])
        );
        assert_eq!(host["PidsLimit"], 256);
        assert_eq!(host["Memory"], 64 * 1024 * 1024);
        assert_eq!(host["MemorySwap"], 64 * 1024 * 1024);
        assert_eq!(host["NanoCpus"], 500_000_000);
        assert_eq!(
            host["Ulimits"],
            serde_json::json!([{"Name": "nofile", "Soft": 1024, "Hard": 1024}])
        );
        assert_eq!(host["ReadonlyRootfs"], true);
        assert_eq!(host["Tmpfs"]["/tmp"], "rw,size=16m");
        assert_eq!(
            host["Binds"],
            serde_json::json!(["attune-agent-0.1.0:/opt/attune:ro"])
        );
        assert_eq!(host["AutoRemove"], false);
        assert_eq!(
            host["LogConfig"],
            serde_json::json!({"Type": "json-file", "Config": {"max-size": "10m", "max-file": "2"}})
        );
    }

    #[test]
    fn empty_spec_lists_leave_engine_defaults() {
        let spec = ContainerCreateSpec {
            name: "plain".into(),
            image: "busybox:1.36".into(),
            ..Default::default()
        };
        let body = serde_json::to_value(container_config(&spec)).unwrap();
        assert!(body.get("Entrypoint").is_none());
        assert!(body.get("Cmd").is_none());
        assert!(body["HostConfig"].get("CapDrop").is_none());
        assert!(body["HostConfig"].get("Ulimits").is_none());
        assert!(body["HostConfig"].get("Memory").is_none());
        assert!(body["HostConfig"].get("LogConfig").is_none());
    }

    #[test]
    fn die_events_carry_exit_code_and_only_labels() {
        let message = bollard::models::EventMessage {
            action: Some("die".into()),
            actor: Some(bollard::models::EventActor {
                id: Some("abc123".into()),
                attributes: Some(HashMap::from([
                    ("exitCode".to_string(), "3".to_string()),
                    ("name".to_string(), "attune-exec-1".to_string()),
                    ("image".to_string(), "busybox:1.36".to_string()),
                    ("attune.managed".to_string(), "true".to_string()),
                ])),
            }),
            ..Default::default()
        };
        let event = container_event(message);
        assert_eq!(event.action, "die");
        assert_eq!(event.container_id, "abc123");
        assert_eq!(event.exit_code, Some(3));
        assert_eq!(
            event.labels,
            BTreeMap::from([("attune.managed".to_string(), "true".to_string())])
        );
    }

    #[test]
    fn engine_errors_map_to_kinds() {
        let not_found = map_error(
            "start container x",
            BollardError::DockerResponseServerError {
                status_code: 404,
                message: "No such container: x".into(),
            },
        );
        assert!(
            matches!(not_found, DockerError::NotFound(ref text) if text.contains("No such container"))
        );
        let rejected = map_error(
            "create container attune-exec-42",
            BollardError::DockerResponseServerError {
                status_code: 409,
                message: "Conflict. The container name is already in use".into(),
            },
        );
        assert_eq!(
            rejected.to_string(),
            "create container attune-exec-42: Conflict. The container name is already in use (http 409)"
        );
        let unavailable = map_error(
            "ping docker engine",
            BollardError::SocketNotFoundError("/nowhere.sock".into()),
        );
        assert!(matches!(unavailable, DockerError::Unavailable(_)));
    }
}
