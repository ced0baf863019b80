//! The controller: runs one execution in a fresh container made from its action's image.
//!
//! Steps: resolve the image (honouring the pull policy), check its architecture against the
//! agent binary, create a labelled, hardened container whose entrypoint is the agent, upload the
//! agent and the pack's files with put_archive, queue the job on the agent's own queue, start
//! the container, supervise it until the execution is terminal (or the container dies, a
//! deadline passes, or a cancel asks), then remove it. Every failure ends the execution in a
//! terminal status with its reason; no container outlives its execution.

pub mod pool;

use crate::broker::AgentChannel;
use crate::db::{enum_from_name, ActionRow, ExecutionRow, Store, TransitionFields};
use crate::docker::archive::InjectionArchive;
use crate::docker::{ContainerCreateSpec, DockerError, DockerOps, ImageInfo};
use crate::signals::{ExecutionSignal, ExecutionSignals};
use attune_protocol::api::{ContainerSpec, ExecutionStatus, PoolSpec, PullPolicy};
use attune_protocol::queues::{
    AGENT_PATH_IN_CONTAINER, ENV_AGENT_EVENTS_QUEUE, ENV_AGENT_ID, ENV_AGENT_IMAGE, ENV_AGENT_MODE,
    ENV_MESSAGE_QUEUE_URL, PACKS_DIR_IN_CONTAINER,
};
use attune_protocol::{AgentCommand, Job, Runtime, PROTOCOL_VERSION};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Label marking every container Attune manages.
pub const LABEL_MANAGED: &str = "attune.managed";
/// Label naming the execution a container runs.
pub const LABEL_EXECUTION: &str = "attune.execution";
/// Label naming the controller that created a container.
pub const LABEL_CONTROLLER: &str = "attune.controller";
/// Label naming the agent id inside a container.
pub const LABEL_AGENT_ID: &str = "attune.agent-id";
/// Label carrying the agent's sha256 (on containers running it and volumes holding it).
pub const LABEL_AGENT_SHA256: &str = "attune.agent-sha256";
/// Label carrying a pack archive's sha256 on the volume holding its files.
pub const LABEL_PACK_SHA256: &str = "attune.pack-sha256";
/// Label naming what a helper container is for (e.g. `volume-fill`).
pub const LABEL_ROLE: &str = "attune.role";
/// Label naming how the agent reached a container (`volume` or `put-archive`).
pub const LABEL_AGENT_DELIVERY: &str = "attune.agent-delivery";

/// The static agent binary the controller injects.
#[derive(Clone)]
pub struct AgentBinary {
    pub bytes: Arc<Vec<u8>>,
    pub sha256: String,
    /// Docker's name for the binary's architecture (`amd64`, `arm64`).
    pub architecture: String,
}

/// Why the agent binary could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AgentBinaryError {
    #[error("read agent binary {path}: {reason} (build it with scripts/build-agent.sh)")]
    Read { path: String, reason: String },
    #[error("agent binary {path} is not an ELF executable")]
    NotElf { path: String },
}

impl AgentBinary {
    /// Reads the binary and learns its architecture from the ELF header.
    pub fn load(path: &Path) -> Result<AgentBinary, AgentBinaryError> {
        let bytes = std::fs::read(path).map_err(|error| AgentBinaryError::Read {
            path: path.display().to_string(),
            reason: error.to_string(),
        })?;
        AgentBinary::from_bytes(bytes).ok_or_else(|| AgentBinaryError::NotElf {
            path: path.display().to_string(),
        })
    }

    /// Wraps bytes that hold an ELF executable; `None` when they do not.
    pub fn from_bytes(bytes: Vec<u8>) -> Option<AgentBinary> {
        if bytes.len() < 20 || &bytes[..4] != b"\x7fELF" {
            return None;
        }
        let machine = u16::from_le_bytes([bytes[18], bytes[19]]);
        let architecture = match machine {
            62 => "amd64",
            183 => "arm64",
            _ => "unknown",
        }
        .to_string();
        let sha256 = hex(&Sha256::digest(&bytes));
        Some(AgentBinary {
            bytes: Arc::new(bytes),
            sha256,
            architecture,
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The controller's settings.
#[derive(Debug, Clone)]
pub struct ControllerSettings {
    pub controller_id: String,
    /// Network mode for containers (`host` here).
    pub network: Option<String>,
    /// AMQP URL handed to agents.
    pub agent_mq_url: String,
    /// Queue agents report to.
    pub events_queue: String,
    pub remove_containers: bool,
    pub default_image: Option<String>,
    pub pids_limit: i64,
    pub nofile_limit: i64,
    pub output_limit_bytes: u64,
    pub kill_grace_seconds: u64,
    /// From container start to the agent reporting `running`.
    pub agent_start_timeout: Duration,
    /// How long to wait for the agent's report after its container exited.
    pub report_grace: Duration,
}

/// Why an execution could not run; becomes its terminal status and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionFailure {
    pub status: ExecutionStatus,
    /// A short class: `pull-failed`, `exec-format`, `injection-failed`, `oom`, `killed`, ...
    pub kind: &'static str,
    pub reason: String,
}

impl ExecutionFailure {
    fn failed(kind: &'static str, reason: impl Into<String>) -> Self {
        ExecutionFailure {
            status: ExecutionStatus::Failed,
            kind,
            reason: reason.into(),
        }
    }

    fn docker(operation: &str, error: DockerError) -> Self {
        let kind = match error {
            DockerError::Unavailable(_) => "docker-unavailable",
            _ => "docker-error",
        };
        ExecutionFailure::failed(kind, format!("{operation}: {error}"))
    }
}

/// Runs executions in containers.
#[derive(Clone)]
pub struct Controller {
    store: Store,
    docker: Arc<dyn DockerOps>,
    agents: Arc<dyn AgentChannel>,
    signals: ExecutionSignals,
    settings: Arc<ControllerSettings>,
    agent: AgentBinary,
    pools: Arc<pool::Pools>,
}

/// A container created for an execution.
struct Placement {
    container_id: String,
    agent_id: String,
}

impl Controller {
    pub fn new(
        store: Store,
        docker: Arc<dyn DockerOps>,
        agents: Arc<dyn AgentChannel>,
        signals: ExecutionSignals,
        settings: ControllerSettings,
        agent: AgentBinary,
    ) -> Controller {
        Controller {
            store,
            docker,
            agents,
            signals,
            settings: Arc::new(settings),
            agent,
            pools: Arc::default(),
        }
    }

    pub fn settings(&self) -> &ControllerSettings {
        &self.settings
    }

    /// Runs a scheduled execution to a terminal status. Never returns an error: every failure
    /// is stored on the execution.
    pub async fn run_execution(&self, execution: ExecutionRow) {
        let execution_id = execution.id;
        let subscription = self.signals.subscribe(execution_id);
        let mut placement = None;
        let outcome = self
            .launch_and_supervise(&execution, subscription.receiver.clone(), &mut placement)
            .await;
        if let Err(failure) = outcome {
            tracing::warn!(execution_id, kind = failure.kind, reason = %failure.reason, "execution did not succeed");
            self.finish_with_failure(execution_id, &failure).await;
        }
        if let Some(placement) = placement {
            self.clean_up(execution_id, &placement).await;
        }
        drop(subscription);
    }

    /// Takes over supervising an execution whose container a previous controller started.
    pub async fn adopt(&self, execution: ExecutionRow, container_id: String, agent_id: String) {
        let execution_id = execution.id;
        let subscription = self.signals.subscribe(execution_id);
        if execution.status() == ExecutionStatus::Running {
            self.signals.running(execution_id);
        }
        let mut receiver = subscription.receiver.clone();
        let timeout_seconds = match execution.action_id {
            Some(action_id) => self
                .store
                .get_action_by_id(action_id)
                .await
                .map(|action| action.timeout_seconds.max(1) as u64)
                .unwrap_or(3600),
            None => 3600,
        };
        let image = execution.image.clone().unwrap_or_default();
        let outcome = self
            .supervise(
                execution_id,
                &container_id,
                &agent_id,
                &image,
                Duration::from_secs(timeout_seconds),
                &mut receiver,
            )
            .await;
        if let Err(failure) = outcome {
            self.finish_with_failure(execution_id, &failure).await;
        }
        let placement = Placement {
            container_id,
            agent_id,
        };
        self.clean_up(execution_id, &placement).await;
        drop(subscription);
    }

    async fn finish_with_failure(&self, execution_id: i64, failure: &ExecutionFailure) {
        let fields = TransitionFields::error(failure.kind, failure.reason.clone());
        match self
            .store
            .transition(execution_id, failure.status, fields)
            .await
        {
            Ok(Some(_)) => self.signals.terminal(execution_id, failure.status),
            Ok(None) => {
                tracing::debug!(execution_id, "execution already terminal; failure not recorded")
            }
            Err(error) => {
                tracing::error!(execution_id, %error, "record failure of execution")
            }
        }
    }

    async fn clean_up(&self, execution_id: i64, placement: &Placement) {
        if self.settings.remove_containers {
            if let Err(error) = self.docker.remove_container(&placement.container_id).await {
                tracing::error!(execution_id, container_id = %placement.container_id, %error, "remove container");
            }
        }
        if let Err(error) = self.agents.delete_agent_queue(&placement.agent_id).await {
            tracing::debug!(execution_id, %error, "delete agent queue");
        }
    }

    async fn launch_and_supervise(
        &self,
        execution: &ExecutionRow,
        mut signal: tokio::sync::watch::Receiver<ExecutionSignal>,
        placement_slot: &mut Option<Placement>,
    ) -> Result<(), ExecutionFailure> {
        let execution_id = execution.id;
        let action = match execution.action_id {
            Some(action_id) => self.store.get_action_by_id(action_id).await.ok(),
            None => None,
        }
        .ok_or_else(|| {
            ExecutionFailure::failed(
                "action-missing",
                format!("action {} no longer exists", execution.action_ref),
            )
        })?;
        let container_spec = self.container_spec(&action)?;
        let image = self.ensure_image(&container_spec).await?;
        self.check_architecture(&container_spec.image, &image)?;
        let job = self.job_for(execution, &action, &container_spec)?;
        if self.cancel_requested(execution_id, &signal).await {
            return Err(canceled_before_start());
        }
        if let Some(pool_spec) = pooled_isolation(&action) {
            return self
                .run_pooled(execution, &action, &container_spec, &image, pool_spec, &mut signal)
                .await;
        }

        let short_id = &uuid::Uuid::new_v4().simple().to_string()[..10];
        let agent_id = format!("exec-{execution_id}-{short_id}");
        let spec = self.create_spec(execution_id, &agent_id, &container_spec, &image);
        let container_name = spec.name.clone();
        let container_id = self
            .docker
            .create_container(&spec)
            .await
            .map_err(|error| {
                ExecutionFailure::docker(&format!("create container {container_name}"), error)
            })?;
        *placement_slot = Some(Placement {
            container_id: container_id.clone(),
            agent_id: agent_id.clone(),
        });
        tracing::info!(execution_id, %container_id, image = %container_spec.image, "container created");
        if let Err(error) = self
            .store
            .set_placement(execution_id, &container_spec.image, &container_id, &agent_id)
            .await
        {
            return Err(ExecutionFailure::failed(
                "database",
                format!("record container of execution {execution_id}: {error}"),
            ));
        }

        let archive = self.injection_archive(&action).await?;
        self.docker
            .upload_archive(&container_id, "/", archive)
            .await
            .map_err(|error| {
                let reason = format!("inject agent into container {container_name}: {error}");
                ExecutionFailure::failed("injection-failed", reason)
            })?;
        self.agents
            .declare_agent_queue(&agent_id)
            .await
            .and(self.agents.send_command(&agent_id, &AgentCommand::Job(job)).await)
            .map_err(|error| {
                ExecutionFailure::failed("message-queue", format!("queue job for agent {agent_id}: {error}"))
            })?;
        if self.cancel_requested(execution_id, &signal).await {
            return Err(canceled_before_start());
        }
        if let Err(error) = self.docker.start_container(&container_id).await {
            return Err(classify_start_error(&container_spec.image, &self.agent, error));
        }
        tracing::debug!(execution_id, %container_id, "container started");

        let timeout = Duration::from_secs(action.timeout_seconds.max(1) as u64);
        self.supervise(execution_id, &container_id, &agent_id, &container_spec.image, timeout, &mut signal)
            .await
    }

    /// Waits until the execution is terminal, ending it ourselves when the container dies
    /// first, a deadline passes, or a cancel is not honoured in time.
    async fn supervise(
        &self,
        execution_id: i64,
        container_id: &str,
        agent_id: &str,
        image: &str,
        timeout: Duration,
        signal: &mut tokio::sync::watch::Receiver<ExecutionSignal>,
    ) -> Result<(), ExecutionFailure> {
        let grace = Duration::from_secs(self.settings.kill_grace_seconds);
        let started = Instant::now();
        let start_deadline = started + self.settings.agent_start_timeout;
        let hard_deadline =
            started + self.settings.agent_start_timeout + timeout + grace + Duration::from_secs(5);
        let mut cancel_deadline: Option<Instant> = None;
        let docker = self.docker.clone();
        let wait_id = container_id.to_string();
        let container_exit = async move { docker.wait_container(&wait_id).await };
        tokio::pin!(container_exit);
        let mut database_check = tokio::time::interval(Duration::from_secs(5));
        database_check.tick().await;

        loop {
            let current = *signal.borrow_and_update();
            if current.terminal.is_some() {
                return Ok(());
            }
            if current.cancel_requested && cancel_deadline.is_none() {
                if let Err(error) = self
                    .agents
                    .send_command(agent_id, &AgentCommand::Cancel { execution_id })
                    .await
                {
                    tracing::error!(execution_id, %error, "send cancel to agent");
                }
                cancel_deadline = Some(Instant::now() + grace + Duration::from_secs(2));
            }
            let mut deadline = hard_deadline;
            if !current.running {
                deadline = deadline.min(start_deadline);
            }
            if let Some(cancel_at) = cancel_deadline {
                deadline = deadline.min(cancel_at);
            }

            tokio::select! {
                changed = signal.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                }
                exit = &mut container_exit => {
                    return self.after_container_exit(execution_id, container_id, image, exit, signal).await;
                }
                _ = database_check.tick() => {
                    if self.is_terminal_in_database(execution_id).await {
                        return Ok(());
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    let now = Instant::now();
                    if self.is_terminal_in_database(execution_id).await {
                        return Ok(());
                    }
                    self.kill(execution_id, container_id).await;
                    if cancel_deadline.is_some_and(|cancel_at| now >= cancel_at) {
                        return Err(ExecutionFailure {
                            status: ExecutionStatus::Canceled,
                            kind: "canceled",
                            reason: format!("canceled; the action did not stop within {}s so its container was killed", grace.as_secs() + 2),
                        });
                    }
                    if !signal.borrow().running && now >= start_deadline {
                        let logs = self.recent_logs(container_id).await;
                        return Err(ExecutionFailure::failed(
                            "injection-failed",
                            format!(
                                "agent did not report within {}s of container start{logs}",
                                self.settings.agent_start_timeout.as_secs()
                            ),
                        ));
                    }
                    return Err(ExecutionFailure {
                        status: ExecutionStatus::Timeout,
                        kind: "timeout",
                        reason: format!(
                            "no report from the agent within {}s of the action's {}s timeout; container killed",
                            (hard_deadline - started - timeout).as_secs(),
                            timeout.as_secs()
                        ),
                    });
                }
            }
        }
    }

    async fn after_container_exit(
        &self,
        execution_id: i64,
        container_id: &str,
        image: &str,
        exit: Result<i64, DockerError>,
        signal: &mut tokio::sync::watch::Receiver<ExecutionSignal>,
    ) -> Result<(), ExecutionFailure> {
        // The agent publishes its report (confirmed) before it exits, but the events consumer
        // may still be storing it: give it a moment.
        let reported = tokio::time::timeout(
            self.settings.report_grace,
            signal.wait_for(|current| current.terminal.is_some()),
        )
        .await
        .is_ok_and(|waited| waited.is_ok());
        if reported || self.is_terminal_in_database(execution_id).await {
            return Ok(());
        }
        let exit_code = exit.ok();
        let state = self.docker.inspect_container(container_id).await.ok().flatten();
        let logs = self.recent_logs(container_id).await;
        let oom_killed = state.as_ref().is_some_and(|state| state.oom_killed);
        let engine_error = state.map(|state| state.error).unwrap_or_default();
        Err(classify_exit(image, &self.agent, exit_code, oom_killed, &engine_error, &logs))
    }

    async fn is_terminal_in_database(&self, execution_id: i64) -> bool {
        match self.store.get_execution(execution_id).await {
            Ok(row) => row.status().is_terminal(),
            Err(error) => {
                tracing::error!(execution_id, %error, "read execution status");
                false
            }
        }
    }

    async fn cancel_requested(
        &self,
        execution_id: i64,
        signal: &tokio::sync::watch::Receiver<ExecutionSignal>,
    ) -> bool {
        if signal.borrow().cancel_requested {
            return true;
        }
        self.store
            .get_execution(execution_id)
            .await
            .map(|row| row.cancel_requested)
            .unwrap_or(false)
    }

    async fn kill(&self, execution_id: i64, container_id: &str) {
        if let Err(error) = self.docker.kill_container(container_id, "SIGKILL").await {
            tracing::error!(execution_id, container_id, %error, "kill container");
        }
    }

    /// The container's last output lines, formatted as a suffix for a reason.
    async fn recent_logs(&self, container_id: &str) -> String {
        match self.docker.container_logs(container_id, 20).await {
            Ok(logs) if !logs.trim().is_empty() => {
                format!(" (container output: {})", logs.trim())
            }
            _ => String::new(),
        }
    }

    fn container_spec(&self, action: &ActionRow) -> Result<ContainerSpec, ExecutionFailure> {
        if let Some(container) = &action.container {
            return serde_json::from_value(container.clone()).map_err(|error| {
                ExecutionFailure::failed(
                    "invalid-action",
                    format!("container settings of action {}: {error}", action.action_ref),
                )
            });
        }
        match &self.settings.default_image {
            Some(image) => Ok(ContainerSpec {
                image: image.clone(),
                ..Default::default()
            }),
            None => Err(ExecutionFailure::failed(
                "no-image",
                format!(
                    "action {} names no container image and docker.default_image is not set",
                    action.action_ref
                ),
            )),
        }
    }

    /// Finds the image locally or pulls it, as the pull policy says.
    async fn ensure_image(&self, spec: &ContainerSpec) -> Result<ImageInfo, ExecutionFailure> {
        let image = &spec.image;
        let inspect = |error| ExecutionFailure::docker(&format!("inspect image {image}"), error);
        if spec.pull_policy != PullPolicy::Always {
            if let Some(info) = self.docker.inspect_image(image).await.map_err(inspect)? {
                return Ok(info);
            }
            if spec.pull_policy == PullPolicy::Never {
                return Err(ExecutionFailure::failed(
                    "pull-failed",
                    format!("image {image} is not present locally and its pull_policy is never"),
                ));
            }
        }
        if let Err(error) = self.docker.pull_image(image).await {
            let reason = match error {
                DockerError::PullFailed { reason, .. } => reason,
                other => other.to_string(),
            };
            return Err(ExecutionFailure::failed(
                "pull-failed",
                format!("image {image} is not present locally and could not be pulled: {reason}"),
            ));
        }
        self.docker
            .inspect_image(image)
            .await
            .map_err(inspect)?
            .ok_or_else(|| {
                ExecutionFailure::failed("pull-failed", format!("image {image} is missing after its pull"))
            })
    }

    fn check_architecture(&self, image: &str, info: &ImageInfo) -> Result<(), ExecutionFailure> {
        let image_architecture = normalize_architecture(&info.architecture);
        if image_architecture.is_empty() || image_architecture == self.agent.architecture {
            return Ok(());
        }
        Err(ExecutionFailure::failed(
            "exec-format",
            format!(
                "image {image} is built for {image_architecture} but the agent binary is for {}",
                self.agent.architecture
            ),
        ))
    }

    fn job_for(
        &self,
        execution: &ExecutionRow,
        action: &ActionRow,
        container_spec: &ContainerSpec,
    ) -> Result<Job, ExecutionFailure> {
        let invalid = |what: &str, value: &str| {
            ExecutionFailure::failed(
                "invalid-action",
                format!("action {}: invalid {what} {value:?}", action.action_ref),
            )
        };
        let runtime: Runtime = action
            .runtime
            .parse()
            .map_err(|_| invalid("runtime", &action.runtime))?;
        Ok(Job {
            protocol_version: PROTOCOL_VERSION,
            execution_id: execution.id,
            action_ref: action.action_ref.clone(),
            pack_ref: action.pack_ref.clone(),
            runtime,
            pack_dir: format!("{PACKS_DIR_IN_CONTAINER}/{}", action.pack_ref),
            entry_point: action.entry_point_path.clone(),
            parameters: execution.parameters_map(),
            secret_parameters: execution.secret_parameters.clone(),
            parameter_delivery: enum_from_name(&action.parameter_delivery)
                .ok_or_else(|| invalid("parameter_delivery", &action.parameter_delivery))?,
            parameter_format: enum_from_name(&action.parameter_format)
                .ok_or_else(|| invalid("parameter_format", &action.parameter_format))?,
            timeout_seconds: action.timeout_seconds.max(1) as u64,
            kill_grace_seconds: self.settings.kill_grace_seconds,
            env: container_spec.env.clone(),
            output_limit_bytes: self.settings.output_limit_bytes,
            stream_logs: true,
        })
    }

    fn create_spec(
        &self,
        execution_id: i64,
        agent_id: &str,
        container_spec: &ContainerSpec,
        image: &ImageInfo,
    ) -> ContainerCreateSpec {
        let labels: BTreeMap<String, String> = [
            (LABEL_MANAGED, "true".to_string()),
            (LABEL_EXECUTION, execution_id.to_string()),
            (LABEL_CONTROLLER, self.settings.controller_id.clone()),
            (LABEL_AGENT_ID, agent_id.to_string()),
            (LABEL_AGENT_SHA256, self.agent.sha256.clone()),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_string(), value))
        .collect();
        let user = container_spec
            .user
            .clone()
            .or_else(|| Some(image.user.clone()).filter(|user| !user.is_empty()))
            .unwrap_or_else(|| "0".to_string());
        ContainerCreateSpec {
            name: format!("attune-{agent_id}"),
            image: container_spec.image.clone(),
            entrypoint: vec![AGENT_PATH_IN_CONTAINER.to_string()],
            cmd: Vec::new(),
            env: vec![
                format!("{ENV_MESSAGE_QUEUE_URL}={}", self.settings.agent_mq_url),
                format!("{ENV_AGENT_ID}={agent_id}"),
                format!("{ENV_AGENT_MODE}=oneshot"),
                format!("{ENV_AGENT_IMAGE}={}", container_spec.image),
                format!("{ENV_AGENT_EVENTS_QUEUE}={}", self.settings.events_queue),
            ],
            labels,
            user: Some(user),
            working_dir: Some(container_spec.workdir.clone().unwrap_or_else(|| "/".into())),
            network_mode: self.settings.network.clone(),
            init: true,
            cap_drop: vec!["ALL".to_string()],
            security_opt: vec!["no-new-privileges".to_string()],
            pids_limit: Some(self.settings.pids_limit),
            nofile_limit: Some(self.settings.nofile_limit),
            ..Default::default()
        }
    }

    /// The agent binary and the pack's files, as one tar extracted at `/`.
    async fn injection_archive(&self, action: &ActionRow) -> Result<Vec<u8>, ExecutionFailure> {
        let injection_failed = |reason: String| ExecutionFailure::failed("injection-failed", reason);
        let pack_archive = self
            .store
            .pack_archive(action.pack_id)
            .await
            .map_err(|error| injection_failed(format!("read files of pack {}: {error}", action.pack_ref)))?;
        let mut archive = InjectionArchive::new();
        let agent_path = AGENT_PATH_IN_CONTAINER.trim_start_matches('/');
        archive
            .add_file(agent_path, 0o755, self.agent.bytes.as_slice())
            .map_err(|error| injection_failed(format!("add agent to archive: {error}")))?;
        let pack_root = format!(
            "{}/{}",
            PACKS_DIR_IN_CONTAINER.trim_start_matches('/'),
            action.pack_ref
        );
        archive
            .add_dir(&pack_root, 0o755)
            .map_err(|error| injection_failed(format!("add pack directory: {error}")))?;
        let mut reader = tar::Archive::new(pack_archive.as_slice());
        let entries = reader
            .entries()
            .map_err(|error| injection_failed(format!("read files of pack {}: {error}", action.pack_ref)))?;
        for entry in entries {
            let mut entry = entry
                .map_err(|error| injection_failed(format!("read files of pack {}: {error}", action.pack_ref)))?;
            let path = entry
                .path()
                .map_err(|error| injection_failed(format!("pack file path: {error}")))?
                .to_string_lossy()
                .trim_end_matches('/')
                .to_string();
            if path.is_empty() || path == "." {
                continue;
            }
            let target = format!("{pack_root}/{}", path.trim_start_matches("./"));
            let executable = entry.header().mode().unwrap_or(0o644) & 0o111 != 0;
            let result = if entry.header().entry_type().is_dir() {
                archive.add_dir(&target, 0o755).map(|_| ())
            } else if entry.header().entry_type().is_file() {
                let mut contents = Vec::new();
                std::io::Read::read_to_end(&mut entry, &mut contents)
                    .map_err(|error| injection_failed(format!("read pack file {path}: {error}")))?;
                let mode = if executable { 0o755 } else { 0o644 };
                archive.add_file(&target, mode, contents).map(|_| ())
            } else {
                Ok(())
            };
            result.map_err(|error| injection_failed(format!("add pack file {path}: {error}")))?;
        }
        Ok(archive.finish())
    }
}

/// The pool settings when the action runs pooled: `isolation: pooled`, or a `pool:` given
/// without an isolation.
fn pooled_isolation(action: &ActionRow) -> Option<PoolSpec> {
    let pool = action
        .pool
        .clone()
        .and_then(|pool| serde_json::from_value::<PoolSpec>(pool).ok());
    match action.isolation.as_deref() {
        Some("pooled") => Some(pool.unwrap_or_default()),
        Some(_) => None,
        None => pool,
    }
}

fn canceled_before_start() -> ExecutionFailure {
    ExecutionFailure {
        status: ExecutionStatus::Canceled,
        kind: "canceled",
        reason: "canceled before the action started".into(),
    }
}

/// Docker's architecture names for the same thing differ by source.
pub fn normalize_architecture(architecture: &str) -> String {
    match architecture {
        "x86_64" | "amd64" => "amd64".into(),
        "aarch64" | "arm64" | "arm64/v8" => "arm64".into(),
        other => other.to_string(),
    }
}

fn classify_start_error(image: &str, agent: &AgentBinary, error: DockerError) -> ExecutionFailure {
    let text = error.to_string();
    if text.contains("exec format error") {
        return ExecutionFailure::failed(
            "exec-format",
            format!(
                "the agent binary ({}) cannot run in image {image}: exec format error",
                agent.architecture
            ),
        );
    }
    ExecutionFailure::docker("start container", error)
}

/// Names why a container ended without its agent reporting a result.
pub fn classify_exit(
    image: &str,
    agent: &AgentBinary,
    exit_code: Option<i64>,
    oom_killed: bool,
    engine_error: &str,
    logs: &str,
) -> ExecutionFailure {
    if oom_killed {
        return ExecutionFailure::failed(
            "oom",
            format!("the container ran out of memory and was killed (OOMKilled){logs}"),
        );
    }
    if engine_error.contains("exec format error") || logs.contains("exec format error") {
        return ExecutionFailure::failed(
            "exec-format",
            format!(
                "the agent binary ({}) cannot run in image {image}: exec format error",
                agent.architecture
            ),
        );
    }
    match exit_code {
        Some(137) => ExecutionFailure::failed(
            "killed",
            format!("the container was killed (exit code 137, possibly out of memory){logs}"),
        ),
        Some(code) => ExecutionFailure::failed(
            "agent-exited",
            format!("the agent exited with code {code} before reporting a result{logs}"),
        ),
        None => ExecutionFailure::failed(
            "agent-exited",
            format!("the container stopped before the agent reported a result{logs}"),
        ),
    }
}
