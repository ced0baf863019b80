//! The controller: runs one execution in a fresh container made from its action's image.
//!
//! Steps: resolve the image (honouring the pull policy), check its architecture against the
//! agent binary and the action's container settings against the operator's allow-lists and
//! limits, create a labelled, hardened container whose entrypoint is the agent, deliver the
//! agent (a shared read-only volume, or put_archive) and the pack's files, queue the job on the
//! agent's own queue, start the container, supervise it until the execution is terminal (or the
//! container dies, a deadline passes, or a cancel asks), then remove it. Every failure ends the
//! execution in a terminal status with its reason; no container outlives its execution.

pub mod pool;

use crate::delivery::{
    agent_volume_name, pack_volume_name, AgentDelivery, VolumeContent, VolumeError, VolumeFiller,
};
use crate::lifecycle::{ContainerWatch, LifecycleTracker};
use crate::limits::{container_limits, ExecutionPolicy};
use crate::signals::{ExecutionSignal, ExecutionSignals};
pub use crate::supervision::SupervisionOrigin;
use crate::supervision::{Expired, SignalEffect, Supervision, SupervisionTiming};
use attune_broker::AgentChannel;
use attune_docker::archive::InjectionArchive;
use attune_docker::labels::{
    LABEL_AGENT_DELIVERY, LABEL_AGENT_ID, LABEL_AGENT_SHA256, LABEL_CONTROLLER, LABEL_EXECUTION,
    LABEL_MANAGED, LABEL_PACK, LABEL_PACK_SHA256, LABEL_POOL, LABEL_ROLE,
};
use attune_docker::{
    ContainerCreateSpec, DockerError, DockerOps, ImageInfo, RegistryAuth, StartFailure,
};
use attune_protocol::api::{ContainerSpec, ExecutionStatus, Isolation, PoolSpec};
use attune_protocol::queues::{
    AGENT_PATH_IN_CONTAINER, ENVIRONMENTS_DIR_IN_CONTAINER, ENV_AGENT_CONCURRENCY,
    ENV_AGENT_ENV_CACHE, ENV_AGENT_EVENTS_QUEUE, ENV_AGENT_ID, ENV_AGENT_IMAGE, ENV_AGENT_IMAGE_ID,
    ENV_AGENT_MODE, ENV_AGENT_WORKDIR, PACKS_DIR_IN_CONTAINER, WORK_AREA_IN_CONTAINER,
};
use attune_protocol::FailureKind;
use attune_protocol::{AgentCommand, AgentMode, Job, Runtime, PROTOCOL_VERSION};
use attune_store::{ActionRow, ExecutionRow, Fence, Store, TransitionFields};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// The writable `/tmp` a read-only container gets (it counts against the memory limit).
pub const READ_ONLY_TMP_DIR: &str = "/tmp";
/// Options of the tmpfs mounts (the work area, and `/tmp` of read-only containers): any user
/// may write, sticky, no setuid or devices, bounded.
const TMPFS_OPTIONS: &str = "rw,nosuid,nodev,mode=1777,size=64m";
/// How long the supervisor waits for the report of an agent that exited 0 (its report was
/// confirmed by the broker before it exited) before concluding that none came.
const CLEAN_EXIT_REPORT_PATIENCE: Duration = Duration::from_secs(60);
/// How often a supervisor looks again while agents' events are held (the database does not
/// answer), instead of letting a deadline pass.
const EVENTS_HELD_RECHECK: Duration = Duration::from_secs(1);
/// How long storing an execution's end is retried while the database does not answer (it is
/// then left to the take-over of this controller, or to its next start's reconcile).
const FINISH_PATIENCE: Duration = Duration::from_secs(600);

/// Runs a store operation again (backoff 200 ms doubling to 5 s) while the database does not
/// answer, up to [`FINISH_PATIENCE`]: an outage delays an execution, it does not fail it.
async fn while_database_away<T, F, Fut>(
    what: &str,
    operation: F,
) -> Result<T, attune_store::StoreError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, attune_store::StoreError>>,
{
    let give_up = Instant::now() + FINISH_PATIENCE;
    let mut pause = Duration::from_millis(200);
    loop {
        match operation().await {
            Err(error) if error.is_unreachable() && Instant::now() + pause < give_up => {
                tracing::warn!(%error, operation = what, retry_in_ms = pause.as_millis() as u64, "the database does not answer; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            outcome => return outcome,
        }
    }
}
/// How long `auto` delivery copies the agent after a volume operation failed.
const VOLUME_RETRY_AFTER: Duration = Duration::from_secs(300);

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
    /// CA certificates (PEM) agents trust for an `amqps://` broker, sent with their secrets.
    pub agent_mq_ca_pem: Option<String>,
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
    /// How the agent reaches containers (`auto`, `volume`, `put-archive`).
    pub agent_delivery: AgentDelivery,
    /// Whether the engine runs on this host (`auto` delivery uses the volume only then).
    pub engine_is_local: bool,
    /// Memory limit (and memory-swap: no swap) of actions that set none; `None` for no limit.
    pub default_memory_bytes: Option<i64>,
    /// CPUs of the Docker host; bounds an action's `resources.cpus` when known.
    pub host_cpus: Option<f64>,
    /// The operator's allow-lists of images and capabilities.
    pub policy: ExecutionPolicy,
    /// Slack after the agent start timeout, the action's timeout and the kill grace before the
    /// controller kills a container whose agent never reported.
    pub timeout_slack: Duration,
    /// How long a running execution's agent may stay silent (no heartbeat) before the
    /// controller takes the execution back; agents beat every 5 s.
    pub lease: Duration,
    /// Credentials for pulls, by registry host.
    pub registry_auth: RegistryAuth,
    /// The secret every agent's event key derives from ([`crate::identity`]).
    pub agent_secret: crate::identity::AgentSecret,
}

impl Default for ControllerSettings {
    /// The defaults of `attune-server`'s settings, for a local engine.
    fn default() -> Self {
        ControllerSettings {
            controller_id: "attune-controller".to_string(),
            network: Some("host".to_string()),
            events_queue: attune_protocol::queues::AGENT_EVENTS_QUEUE.to_string(),
            agent_mq_ca_pem: None,
            remove_containers: true,
            default_image: None,
            pids_limit: 512,
            nofile_limit: 4096,
            output_limit_bytes: attune_protocol::DEFAULT_OUTPUT_LIMIT_BYTES,
            kill_grace_seconds: attune_protocol::DEFAULT_KILL_GRACE_SECONDS,
            agent_start_timeout: Duration::from_secs(30),
            report_grace: Duration::from_secs(3),
            agent_delivery: AgentDelivery::Auto,
            engine_is_local: true,
            default_memory_bytes: Some(512 * 1024 * 1024),
            host_cpus: None,
            policy: ExecutionPolicy::default(),
            timeout_slack: Duration::from_secs(5),
            lease: Duration::from_secs(20),
            registry_auth: RegistryAuth::default(),
            agent_secret: crate::identity::AgentSecret::random(),
        }
    }
}

/// Why an execution could not run; becomes its terminal status and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionFailure {
    pub status: ExecutionStatus,
    /// A short class: `pull-failed`, `exec-format`, `injection-failed`, `oom`, `killed`, ...
    pub kind: FailureKind,
    pub reason: String,
}

impl ExecutionFailure {
    fn failed(kind: FailureKind, reason: impl Into<String>) -> Self {
        ExecutionFailure {
            status: ExecutionStatus::Failed,
            kind,
            reason: reason.into(),
        }
    }

    fn docker(operation: &str, error: DockerError) -> Self {
        let kind = match error {
            DockerError::Unavailable(_) => FailureKind::DockerUnavailable,
            _ => FailureKind::DockerError,
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
    tracker: LifecycleTracker,
    filler: VolumeFiller,
    /// Until when `auto` delivery skips the volume after a failure.
    volume_paused_until: Arc<Mutex<Option<Instant>>>,
    /// Pull policy, inspection cache, one pull per image.
    images: Arc<crate::images::ImageResolver>,
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
        let filler = VolumeFiller::new(docker.clone(), &settings.controller_id)
            .with_log_config(settings.policy.log_config());
        let images = crate::images::ImageResolver::new(docker.clone(), Duration::from_secs(30))
            .with_registry_auth(settings.registry_auth.clone());
        Controller {
            store,
            docker: docker.clone(),
            agents,
            signals,
            settings: Arc::new(settings),
            agent,
            pools: Arc::default(),
            tracker: LifecycleTracker::new(),
            filler,
            volume_paused_until: Arc::default(),
            images: Arc::new(images),
        }
    }

    /// The controller's store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The controller's channel to its agents.
    pub fn agents(&self) -> &Arc<dyn AgentChannel> {
        &self.agents
    }

    pub fn settings(&self) -> &ControllerSettings {
        &self.settings
    }

    /// Whether supervisors cannot hear agents now: their events are held or stalled (the
    /// database), or the broker connection is being opened again. Silence then is not theirs.
    fn cannot_hear_agents(&self) -> bool {
        self.signals.events_stalled() || !self.agents.is_connected()
    }

    /// Whether the database answers a ping within a second (one that takes longer was away,
    /// and what agents said meanwhile is still being applied).
    async fn database_answers_at_once(&self) -> bool {
        let asked = Instant::now();
        self.store.ping().await.is_ok() && asked.elapsed() < crate::signals::EVENTS_STALL_AFTER
    }

    /// Whether this controller can launch executions now: its broker connection is up (while
    /// it is lost, requested executions wait in the database instead of being claimed).
    pub fn can_launch(&self) -> bool {
        self.agents.is_connected()
    }

    /// The tracker of this controller's containers; run it with [`LifecycleTracker::run`].
    pub fn lifecycle(&self) -> &LifecycleTracker {
        &self.tracker
    }

    /// Tells every execution this controller supervises to end now (`abandoned`); the
    /// scheduler calls it when the shutdown grace has passed.
    pub fn abandon_all(&self) {
        self.signals.abandon_all();
    }

    /// The agent binary this controller delivers.
    pub fn agent(&self) -> &AgentBinary {
        &self.agent
    }

    /// Runs a scheduled execution to a terminal status. Never returns an error: every failure
    /// is stored on the execution (fenced by the claim, so a take-over wins).
    pub async fn run_execution(&self, execution: ExecutionRow) {
        let execution_id = execution.id;
        let subscription = self.signals.subscribe(execution_id);
        let mut placement = None;
        let outcome = self
            .launch_and_supervise(&execution, subscription.receiver.clone(), &mut placement)
            .await;
        if let Err(failure) = outcome {
            tracing::warn!(execution_id, kind = %failure.kind, reason = %failure.reason, "execution did not succeed");
            self.finish_with_failure(&execution, &failure).await;
        }
        if let Some(placement) = placement {
            self.clean_up(execution_id, &placement).await;
        }
        drop(subscription);
    }

    /// Takes over supervising an execution whose container a previous controller started.
    /// `labelled_sha256` is the container's `attune.agent-sha256` label: the agent's stored
    /// registration is checked against it, as a fresh run checks the registration it awaits.
    pub async fn adopt(
        &self,
        execution: ExecutionRow,
        container_id: String,
        agent_id: String,
        labelled_sha256: Option<String>,
    ) {
        let execution_id = execution.id;
        let subscription = self.signals.subscribe(execution_id);
        if let Some(labelled_sha256) = labelled_sha256 {
            match self.store.agent_sha256(&agent_id).await {
                Ok(Some(reported_sha256)) => report_agent_identity(
                    execution_id,
                    &container_id,
                    &labelled_sha256,
                    &reported_sha256,
                ),
                Ok(None) => {
                    tracing::debug!(execution_id, %agent_id, "adopted agent has not registered yet")
                }
                Err(error) => {
                    tracing::warn!(execution_id, %error, "read the adopted agent's registration")
                }
            }
        }
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
        let origin = match self.store.now().await {
            Ok(database_now) => SupervisionOrigin::adopted(&execution, database_now),
            Err(error) => {
                tracing::error!(execution_id, %error, "read the database clock; deadlines restart from now");
                SupervisionOrigin::Fresh
            }
        };
        let mut watch = self.tracker.watch(&container_id);
        let outcome = self
            .supervise_watched(
                execution_id,
                &container_id,
                &agent_id,
                &image,
                Duration::from_secs(timeout_seconds),
                origin,
                &mut receiver,
                &mut watch,
            )
            .await;
        match outcome {
            Ok(()) => {
                self.record_oom_after_report(execution_id, &container_id, &mut watch)
                    .await
            }
            Err(failure) => self.finish_with_failure(&execution, &failure).await,
        }
        let placement = Placement {
            container_id,
            agent_id,
        };
        self.clean_up(execution_id, &placement).await;
        drop(subscription);
    }

    /// Stores a failure as the execution's end, under this controller's fence; an idempotent
    /// action whose agent, container or controller died is requeued once in the same
    /// transaction, only if this end was stored (a report that landed first wins).
    async fn finish_with_failure(&self, execution: &ExecutionRow, failure: &ExecutionFailure) {
        let execution_id = execution.id;
        let mut fields = TransitionFields::error(failure.kind, failure.reason.clone());
        fields.fence = Fence::of(execution);
        let stored = while_database_away(
            &format!("store the end of execution {execution_id}"),
            || {
                self.store
                    .finish(execution_id, failure.status, fields.clone(), true)
            },
        )
        .await;
        match stored {
            Ok(Some((_, retry_id))) => {
                if let Some(retry_id) = retry_id {
                    tracing::info!(execution_id, retry_id, "idempotent execution requeued");
                }
                self.signals.terminal(execution_id, failure.status)
            }
            Ok(None) => {
                tracing::debug!(
                    execution_id,
                    "execution already terminal or no longer ours; failure not recorded"
                )
            }
            Err(error) => {
                tracing::error!(execution_id, %error, "record failure of execution")
            }
        }
    }

    /// Stores the container chosen for an execution, under this controller's fence.
    pub(crate) async fn record_placement(
        &self,
        execution: &ExecutionRow,
        image: &str,
        container_id: &str,
        agent_id: &str,
    ) -> Result<(), ExecutionFailure> {
        let execution_id = execution.id;
        let fence = Fence::of(execution).ok_or_else(|| {
            ExecutionFailure::failed(
                FailureKind::ControllerLost,
                format!(
                    "execution {execution_id} has no owner; it was not claimed by this controller"
                ),
            )
        })?;
        let placed = while_database_away(
            &format!("record the container of execution {execution_id}"),
            || {
                self.store
                    .set_placement(execution_id, &fence, image, container_id, agent_id)
            },
        )
        .await;
        match placed {
            Ok(true) => Ok(()),
            Ok(false) => Err(ExecutionFailure::failed(
                FailureKind::ControllerLost,
                format!(
                    "execution {execution_id} is no longer owned by controller {} (epoch {}); another controller took it over",
                    fence.controller_id, fence.epoch
                ),
            )),
            Err(error) => Err(ExecutionFailure::failed(
                FailureKind::Database,
                format!("record container of execution {execution_id}: {error}"),
            )),
        }
    }

    async fn clean_up(&self, execution_id: i64, placement: &Placement) {
        self.signals.forget_registration(&placement.agent_id);
        if self.settings.remove_containers {
            if let Err(error) = self.docker.remove_container(&placement.container_id).await {
                tracing::error!(execution_id, container_id = %placement.container_id, %error, "remove container");
            }
        }
        if let Err(error) = self.agents.forget_agent(&placement.agent_id).await {
            tracing::warn!(execution_id, agent_id = %placement.agent_id, %error, "delete agent's queue and broker account");
        }
    }

    async fn launch_and_supervise(
        &self,
        execution: &ExecutionRow,
        mut signal: tokio::sync::watch::Receiver<ExecutionSignal>,
        placement_slot: &mut Option<Placement>,
    ) -> Result<(), ExecutionFailure> {
        let execution_id = execution.id;
        let missing = || {
            ExecutionFailure::failed(
                FailureKind::ActionMissing,
                format!("action {} no longer exists", execution.action_ref),
            )
        };
        let action = match execution.action_id {
            Some(action_id) => match while_database_away(
                &format!("read the action of execution {execution_id}"),
                || self.store.get_action_by_id(action_id),
            )
            .await
            {
                Ok(action) => action,
                Err(attune_store::StoreError::NotFound(_)) => return Err(missing()),
                Err(error) => {
                    return Err(ExecutionFailure::failed(
                        FailureKind::Database,
                        format!("read action {}: {error}", execution.action_ref),
                    ))
                }
            },
            None => return Err(missing()),
        };
        let container_spec = self.container_spec(&action)?;
        let image = self.ensure_image(&container_spec).await?;
        self.check_architecture(&container_spec.image, &image)?;
        let job = self.job_for(execution, &action, &container_spec)?;
        if self.cancel_requested(execution_id, &signal).await {
            return Err(canceled_before_start());
        }
        if signal.borrow().abandon_requested {
            return Err(abandoned_at_shutdown());
        }
        if let Some(pool_spec) = pooled_isolation(&action)? {
            return self
                .run_pooled(
                    execution,
                    &action,
                    &container_spec,
                    &image,
                    pool_spec,
                    &mut signal,
                )
                .await;
        }

        let short_id = &uuid::Uuid::new_v4().simple().to_string()[..10];
        let agent_id = format!("exec-{execution_id}-{short_id}");
        let plan = self.plan_delivery(&action, &container_spec).await?;
        let role = ContainerRole::Execution { execution_id };
        let mut spec = self.create_spec(&role, &agent_id, &container_spec, &image)?;
        plan.apply_to(&mut spec);
        let container_name = spec.name.clone();
        // The agent's broker account is made while the engine creates the container.
        let (created, agent_url) = tokio::join!(
            self.docker.create_container(&spec),
            self.agents.agent_url(&agent_id)
        );
        let container_id = match created {
            Ok(container_id) => container_id,
            Err(error) => {
                if let Err(error) = self.agents.forget_agent(&agent_id).await {
                    tracing::warn!(execution_id, %agent_id, %error, "remove broker account of an agent that never started");
                }
                return Err(ExecutionFailure::docker(
                    &format!("create container {container_name}"),
                    error,
                ));
            }
        };
        *placement_slot = Some(Placement {
            container_id: container_id.clone(),
            agent_id: agent_id.clone(),
        });
        let agent_url = agent_url.map_err(|error| {
            ExecutionFailure::failed(
                FailureKind::MessageQueue,
                format!("make the broker account of agent {agent_id}: {error}"),
            )
        })?;
        tracing::info!(execution_id, %container_id, image = %container_spec.image, agent_delivery = plan.agent_delivery(), "container created");
        self.record_placement(execution, &container_spec.image, &container_id, &agent_id)
            .await?;
        // Watch before starting, so no event of this container is missed.
        let mut watch = self.tracker.watch(&container_id);

        if let Some(archive) = plan.upload {
            self.docker
                .upload_archive(&container_id, "/", archive)
                .await
                .map_err(|error| {
                    let reason = format!("inject agent into container {container_name}: {error}");
                    ExecutionFailure::failed(FailureKind::InjectionFailed, reason)
                })?;
        }
        self.agents
            .declare_agent_queue(&agent_id)
            .await
            .and(
                self.agents
                    .send_command(&agent_id, &AgentCommand::Job(job))
                    .await,
            )
            .map_err(|error| {
                ExecutionFailure::failed(
                    FailureKind::MessageQueue,
                    format!("queue job for agent {agent_id}: {error}"),
                )
            })?;
        if self.cancel_requested(execution_id, &signal).await {
            return Err(canceled_before_start());
        }
        let registration = self.signals.await_registration(&agent_id);
        let secrets = self.settings.agent_secret.stdin_line(
            &agent_url,
            self.settings.agent_mq_ca_pem.as_deref(),
            &agent_id,
        );
        if let Err(error) = self
            .docker
            .start_container_with_input(&container_id, &secrets)
            .await
        {
            if let Some(volume) = &plan.agent_volume {
                if error.start_failure() == StartFailure::MissingPath {
                    // The volume lost the agent behind our back: check it again next time.
                    self.filler.forget(volume);
                    return Err(ExecutionFailure::failed(
                        FailureKind::InjectionFailed,
                        format!("the agent volume {volume} does not hold the agent ({error}); it is refilled for the next execution"),
                    ));
                }
            }
            return Err(classify_start_error(
                &container_spec.image,
                &self.agent,
                error,
            ));
        }
        tracing::debug!(execution_id, %container_id, "container started");

        let timeout = Duration::from_secs(action.timeout_seconds.max(1) as u64);
        let labelled_sha256 = spec
            .labels
            .get(LABEL_AGENT_SHA256)
            .cloned()
            .unwrap_or_default();
        let verification =
            verify_registration(execution_id, &container_id, labelled_sha256, registration);
        let supervision = self.supervise_watched(
            execution_id,
            &container_id,
            &agent_id,
            &container_spec.image,
            timeout,
            SupervisionOrigin::Fresh,
            &mut signal,
            &mut watch,
        );
        alongside(supervision, verification).await?;
        self.record_oom_after_report(execution_id, &container_id, &mut watch)
            .await;
        Ok(())
    }

    /// Decides how the agent and the pack's files reach a new container, filling the shared
    /// volumes when they are used. A read-only root filesystem needs both volumes; otherwise a
    /// volume failure falls back to put_archive with a warning.
    async fn plan_delivery(
        &self,
        action: &ActionRow,
        container_spec: &ContainerSpec,
    ) -> Result<DeliveryPlan, ExecutionFailure> {
        let injection_failed =
            |reason: String| ExecutionFailure::failed(FailureKind::InjectionFailed, reason);
        let read_only = container_spec.read_only;
        let helper_image = container_spec.image.as_str();
        let mut plan = DeliveryPlan::default();
        if read_only || self.volume_delivery_active() {
            let content = self.agent_volume_content();
            match self.filler.ensure(&content, helper_image).await {
                Ok(()) => {
                    plan.binds
                        .push(format!("{}:{}:ro", content.volume, agent_directory()));
                    plan.agent_volume = Some(content.volume);
                }
                Err(error) if read_only => {
                    return Err(injection_failed(format!(
                        "action {} has a read-only root filesystem, which needs the agent volume: {error}",
                        action.action_ref
                    )))
                }
                Err(error) => self.volume_delivery_failed(&error),
            }
        }
        let pack_archive = while_database_away(
            &format!("read the files of pack {}", action.pack_ref),
            || self.store.pack_archive(action.pack_id),
        )
        .await
        .map_err(|error| {
            injection_failed(format!("read files of pack {}: {error}", action.pack_ref))
        })?;
        let pack_entries = pack_entries(&action.pack_ref, &pack_archive)?;
        let pack_dir = format!("{PACKS_DIR_IN_CONTAINER}/{}", action.pack_ref);
        let mut archive = InjectionArchive::new();
        if plan.agent_volume.is_none() {
            archive
                .add_file(
                    AGENT_PATH_IN_CONTAINER.trim_start_matches('/'),
                    0o755,
                    self.agent.bytes.as_slice(),
                )
                .map_err(|error| injection_failed(format!("add agent to archive: {error}")))?;
        }
        // With the agent in a volume, the pack's files come from a per-digest volume too, so
        // nothing is copied per container (put_archive costs ~50 ms even for a few KiB).
        if read_only || plan.agent_volume.is_some() {
            let content = pack_volume_content(&pack_archive, &pack_entries);
            match self.filler.ensure(&content, helper_image).await {
                Ok(()) => plan.binds.push(format!("{}:{pack_dir}:ro", content.volume)),
                Err(error) if read_only => {
                    return Err(injection_failed(format!(
                        "action {} has a read-only root filesystem, which needs the files of pack {} in a volume: {error}",
                        action.action_ref, action.pack_ref
                    )))
                }
                Err(error) => {
                    tracing::warn!(%error, pack = %action.pack_ref, "pack volume unavailable; copying the pack's files into the container");
                    add_pack_entries(&mut archive, &pack_dir, &pack_entries)?;
                }
            }
        } else {
            add_pack_entries(&mut archive, &pack_dir, &pack_entries)?;
        }
        plan.upload = (!archive.is_empty()).then(|| archive.finish());
        if needs_environment(action, &pack_entries) {
            let content = environments_volume_content(&action.pack_ref);
            match self.filler.ensure(&content, helper_image).await {
                Ok(()) => {
                    plan.binds.push(format!(
                        "{}:{ENVIRONMENTS_DIR_IN_CONTAINER}",
                        content.volume
                    ));
                    plan.env.push(format!(
                        "{ENV_AGENT_ENV_CACHE}={ENVIRONMENTS_DIR_IN_CONTAINER}/{ENVIRONMENTS_CACHE_DIR}"
                    ));
                }
                // The agent then builds the environment inside this container only.
                Err(error) => {
                    tracing::warn!(%error, action = %action.action_ref, "shared environments volume unavailable")
                }
            }
        }
        Ok(plan)
    }

    fn volume_delivery_active(&self) -> bool {
        if !self
            .settings
            .agent_delivery
            .prefers_volume(self.settings.engine_is_local)
        {
            return false;
        }
        let paused_until = *self.volume_paused_until.lock().expect("volume pause lock");
        paused_until.is_none_or(|until| Instant::now() >= until)
    }

    fn volume_delivery_failed(&self, error: &VolumeError) {
        if self.settings.agent_delivery == AgentDelivery::Auto {
            *self.volume_paused_until.lock().expect("volume pause lock") =
                Some(Instant::now() + VOLUME_RETRY_AFTER);
            tracing::warn!(%error, retry_after_seconds = VOLUME_RETRY_AFTER.as_secs(), "agent volume unavailable; copying the agent into containers (put-archive) for now");
        } else {
            tracing::warn!(%error, "agent volume unavailable; copying the agent into this container (put-archive)");
        }
    }

    fn agent_volume_content(&self) -> VolumeContent {
        let file_name = AGENT_PATH_IN_CONTAINER
            .rsplit('/')
            .next()
            .unwrap_or("attune-agent");
        VolumeContent {
            volume: agent_volume_name(&self.agent.sha256),
            labels: [
                (LABEL_MANAGED, "true".to_string()),
                (LABEL_AGENT_SHA256, self.agent.sha256.clone()),
            ]
            .into_iter()
            .map(|(key, value)| (key.to_string(), value))
            .collect(),
            identity_label: LABEL_AGENT_SHA256,
            digest: self.agent.sha256.clone(),
            directories: Vec::new(),
            files: vec![(file_name.to_string(), 0o755, self.agent.bytes.clone())],
        }
    }

    /// After a `failed` report: when the kernel killed something in the container for lack of
    /// memory (an `oom` event, or `State.OOMKilled` once the container stopped), the failure is
    /// an out-of-memory one whatever the agent saw (usually a process killed by signal 9).
    async fn record_oom_after_report(
        &self,
        execution_id: i64,
        container_id: &str,
        watch: &mut ContainerWatch,
    ) {
        let Ok(row) = self.store.get_execution(execution_id).await else {
            return;
        };
        if row.status() != ExecutionStatus::Failed || row.failure_kind == Some(FailureKind::Oom) {
            return;
        }
        // A oneshot agent exits right after its report; by then the engine knows.
        let seen = watch.wait_died(self.settings.report_grace).await;
        let oom_killed = seen.oom
            || self
                .docker
                .inspect_container(container_id)
                .await
                .ok()
                .flatten()
                .is_some_and(|state| state.oom_killed);
        if !oom_killed {
            return;
        }
        let mut reason =
            "the container hit its memory limit and the kernel killed a process in it (out of memory)"
                .to_string();
        if let Some(error) = row.error.filter(|error| !error.is_empty()) {
            reason.push_str(&format!("; the agent reported: {error}"));
        }
        match self
            .store
            .reclassify_failure(execution_id, FailureKind::Oom, &reason)
            .await
        {
            Ok(true) => tracing::warn!(execution_id, "execution failed out of memory"),
            Ok(false) => {}
            Err(error) => tracing::error!(execution_id, %error, "record out-of-memory failure"),
        }
    }

    /// [`Controller::supervise_watched`] for a container not watched yet.
    async fn supervise(
        &self,
        execution_id: i64,
        container_id: &str,
        agent_id: &str,
        image: &str,
        timeout: Duration,
        signal: &mut tokio::sync::watch::Receiver<ExecutionSignal>,
    ) -> Result<(), ExecutionFailure> {
        let mut watch = self.tracker.watch(container_id);
        self.supervise_watched(
            execution_id,
            container_id,
            agent_id,
            image,
            timeout,
            SupervisionOrigin::Fresh,
            signal,
            &mut watch,
        )
        .await
    }

    /// Waits until the execution is terminal, ending it ourselves when the container dies
    /// first (seen on the events stream or by waiting on the container), a deadline passes, or
    /// a cancel is not honoured in time.
    #[allow(clippy::too_many_arguments)]
    async fn supervise_watched(
        &self,
        execution_id: i64,
        container_id: &str,
        agent_id: &str,
        image: &str,
        timeout: Duration,
        origin: SupervisionOrigin,
        signal: &mut tokio::sync::watch::Receiver<ExecutionSignal>,
        watch: &mut ContainerWatch,
    ) -> Result<(), ExecutionFailure> {
        let grace = Duration::from_secs(self.settings.kill_grace_seconds);
        let timing = SupervisionTiming {
            agent_start_timeout: self.settings.agent_start_timeout,
            timeout,
            kill_grace: grace,
            timeout_slack: self.settings.timeout_slack,
            lease: self.settings.lease,
        };
        // Deadlines count from the stored timestamps, so they survive a restart and adoption.
        let mut machine = Supervision::new(timing, origin, *signal.borrow(), Instant::now());
        let docker = self.docker.clone();
        let wait_id = container_id.to_string();
        let container_exit = async move { docker.wait_container(&wait_id).await };
        tokio::pin!(container_exit);
        let mut database_check = tokio::time::interval(Duration::from_secs(5));
        database_check.tick().await;
        let mut events_open = true;

        loop {
            let current = *signal.borrow_and_update();
            match machine.on_signal(current, Instant::now()) {
                SignalEffect::Done => return Ok(()),
                SignalEffect::SendCancel => {
                    if let Err(error) = self
                        .agents
                        .send_command(agent_id, &AgentCommand::Cancel { execution_id })
                        .await
                    {
                        tracing::error!(execution_id, %error, "send cancel to agent");
                    }
                }
                SignalEffect::Abandon => {
                    if self.is_terminal_in_database(execution_id).await {
                        return Ok(());
                    }
                    self.kill(execution_id, container_id).await;
                    return Err(abandoned_at_shutdown());
                }
                SignalEffect::Wait => {}
            }

            tokio::select! {
                changed = signal.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                }
                changed = watch.receiver.changed(), if events_open => {
                    if changed.is_err() {
                        events_open = false;
                    } else if watch.current().died {
                        let exit_code = watch.current().exit_code;
                        return self.after_container_exit(execution_id, container_id, image, exit_code, signal, watch).await;
                    }
                }
                exit = &mut container_exit => {
                    let exit_code = match exit {
                        Ok(code) => Some(code),
                        Err(error) => {
                            tracing::debug!(execution_id, container_id, %error, "wait for container");
                            None
                        }
                    };
                    return self.after_container_exit(execution_id, container_id, image, exit_code, signal, watch).await;
                }
                _ = database_check.tick() => {
                    // The database is the truth; the feed's notifications only come sooner.
                    match self.store.get_execution(execution_id).await {
                        Ok(row) if row.status().is_terminal() => return Ok(()),
                        Ok(row) if row.cancel_requested && !current.cancel_requested => {
                            self.signals.cancel(execution_id)
                        }
                        Ok(_) => {}
                        Err(error) => tracing::error!(execution_id, %error, "read execution status"),
                    }
                }
                _ = tokio::time::sleep_until(machine.next_deadline()) => {
                    let Some(expired) = machine.expired(Instant::now()) else {
                        continue;
                    };
                    if self.cannot_hear_agents() || !self.database_answers_at_once().await {
                        // The agent's word may be waiting in the broker (or could not be stored
                        // because the database does not answer): look again later.
                        machine.hold(Instant::now(), EVENTS_HELD_RECHECK);
                        continue;
                    }
                    if self.is_terminal_in_database(execution_id).await {
                        return Ok(());
                    }
                    self.kill(execution_id, container_id).await;
                    return Err(match expired {
                        Expired::Cancel => ExecutionFailure {
                            status: ExecutionStatus::Canceled,
                            kind: FailureKind::Canceled,
                            reason: format!(
                                "canceled; the action did not stop within {}s so its container was killed",
                                timing.cancel_patience().as_secs()
                            ),
                        },
                        Expired::Lease => ExecutionFailure::failed(
                            FailureKind::LeaseExpired,
                            format!(
                                "agent {agent_id} sent no heartbeat for {}s while running the action; its container was killed",
                                self.settings.lease.as_secs()
                            ),
                        ),
                        Expired::AgentStart => {
                            let logs = self.recent_logs(container_id).await;
                            ExecutionFailure::failed(
                                FailureKind::InjectionFailed,
                                format!(
                                    "agent did not report within {}s of container start{logs}",
                                    self.settings.agent_start_timeout.as_secs()
                                ),
                            )
                        }
                        Expired::Hard => ExecutionFailure {
                            status: ExecutionStatus::Timeout,
                            kind: FailureKind::Timeout,
                            reason: format!(
                                "no report from the agent within {}s of the action's {}s timeout; container killed",
                                machine.hard_slack().as_secs(),
                                timeout.as_secs()
                            ),
                        },
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
        exit_code: Option<i64>,
        signal: &mut tokio::sync::watch::Receiver<ExecutionSignal>,
        watch: &mut ContainerWatch,
    ) -> Result<(), ExecutionFailure> {
        // The agent publishes its report (confirmed) before it exits, but the events consumer
        // may still be storing it (behind the log chunks of a large output, or while the
        // database is slow): give it a moment. An agent that exited 0 has had its report
        // confirmed by the broker, so that report will be applied: wait for it much longer
        // rather than infer that none came (a report always wins over that inference).
        let patience = if exit_code == Some(0) {
            self.settings.report_grace.max(CLEAN_EXIT_REPORT_PATIENCE)
        } else {
            self.settings.report_grace
        };
        let mut wait = patience;
        let reported = loop {
            let reported =
                tokio::time::timeout(wait, signal.wait_for(|current| current.terminal.is_some()))
                    .await
                    .is_ok_and(|waited| waited.is_ok());
            // While agents' events are held (the database does not answer), the report may be
            // waiting in the broker: no inference until they flow again and it had its grace.
            if reported || !self.cannot_hear_agents() {
                break reported;
            }
            wait = self.settings.report_grace.max(EVENTS_HELD_RECHECK);
        };
        if reported || self.is_terminal_in_database(execution_id).await {
            return Ok(());
        }
        // The engine sends `oom` before `die`: once `die` is in, so is any `oom`.
        let seen = if self.tracker.is_following() {
            watch.wait_died(Duration::from_secs(1)).await
        } else {
            watch.current()
        };
        let inspected = self.docker.inspect_container(container_id).await;
        let state = inspected.as_ref().ok().cloned().flatten();
        let logs = self.recent_logs(container_id).await;
        let evidence = ExitEvidence {
            exit_code: exit_code
                .or(seen.exit_code)
                .or(state.as_ref().and_then(|state| state.exit_code)),
            oom_killed: state.as_ref().is_some_and(|state| state.oom_killed),
            oom_event: seen.oom,
            removed: matches!(inspected, Ok(None)) || seen.destroyed,
            engine_error: state.map(|state| state.error).unwrap_or_default(),
            logs,
        };
        Err(classify_exit(image, &self.agent, &evidence))
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

    /// The action's container settings, checked against the allow-lists and limits.
    fn container_spec(&self, action: &ActionRow) -> Result<ContainerSpec, ExecutionFailure> {
        let spec = self.stored_container_spec(action)?;
        let policy = &self.settings.policy;
        let not_allowed = |error: crate::limits::LimitError| {
            ExecutionFailure::failed(
                FailureKind::NotAllowed,
                format!("action {}: {error}", action.action_ref),
            )
        };
        policy.check_image(&spec.image).map_err(not_allowed)?;
        // A ceiling lowered after the pack was registered (or the execution submitted).
        policy
            .check_ceilings(&action.action_ref, &spec)
            .map_err(|error| {
                ExecutionFailure::failed(FailureKind::NotAllowed, error.to_string())
            })?;
        let limits = container_limits(&spec, self.settings.host_cpus).map_err(|error| {
            ExecutionFailure::failed(
                FailureKind::InvalidAction,
                format!(
                    "container settings of action {}: {error}",
                    action.action_ref
                ),
            )
        })?;
        policy
            .check_capabilities(&limits.cap_add)
            .map_err(not_allowed)?;
        Ok(spec)
    }

    fn stored_container_spec(&self, action: &ActionRow) -> Result<ContainerSpec, ExecutionFailure> {
        if let Some(container) = &action.container {
            return serde_json::from_value(container.clone()).map_err(|error| {
                ExecutionFailure::failed(
                    FailureKind::InvalidAction,
                    format!(
                        "container settings of action {}: {error}",
                        action.action_ref
                    ),
                )
            });
        }
        match &self.settings.default_image {
            Some(image) => Ok(ContainerSpec {
                image: image.clone(),
                ..Default::default()
            }),
            None => Err(ExecutionFailure::failed(
                FailureKind::NoImage,
                format!(
                    "action {} names no container image and docker.default_image is not set",
                    action.action_ref
                ),
            )),
        }
    }

    /// Finds the image locally or pulls it, as the pull policy says.
    async fn ensure_image(&self, spec: &ContainerSpec) -> Result<ImageInfo, ExecutionFailure> {
        self.images.resolve(spec).await.map_err(|error| {
            let kind = match error {
                crate::images::ImageError::Inspect { .. } => FailureKind::DockerError,
                _ => FailureKind::PullFailed,
            };
            ExecutionFailure::failed(kind, error.to_string())
        })
    }

    fn check_architecture(&self, image: &str, info: &ImageInfo) -> Result<(), ExecutionFailure> {
        let image_architecture = normalize_architecture(&info.architecture);
        if image_architecture.is_empty() || image_architecture == self.agent.architecture {
            return Ok(());
        }
        Err(ExecutionFailure::failed(
            FailureKind::ExecFormat,
            format!(
                "image {image} is built for {image_architecture} but the agent binary is for {}",
                self.agent.architecture
            ),
        ))
    }

    /// The job of an execution routed to a long-lived worker: the worker finds the pack's
    /// files by their digest (`pack_sha256`) and decides where they are.
    pub fn worker_job(
        &self,
        execution: &ExecutionRow,
        action: &ActionRow,
    ) -> Result<Job, (FailureKind, String)> {
        let mut job = self
            .job_for(execution, action, &ContainerSpec::default())
            .map_err(|failure| (failure.kind, failure.reason))?;
        job.pack_dir = String::new();
        job.pack_sha256 = Some(action.pack_sha256.clone());
        Ok(job)
    }

    fn job_for(
        &self,
        execution: &ExecutionRow,
        action: &ActionRow,
        container_spec: &ContainerSpec,
    ) -> Result<Job, ExecutionFailure> {
        // The only place secrets are opened: for the agent's job.
        let parameters = self.store.open_parameters(execution).map_err(|error| {
            ExecutionFailure::failed(FailureKind::ParameterDelivery, error.to_string())
        })?;
        Ok(Job {
            protocol_version: PROTOCOL_VERSION,
            execution_id: execution.id,
            action_ref: action.action_ref.clone(),
            pack_ref: action.pack_ref.clone(),
            runtime: action.runtime,
            pack_dir: format!("{PACKS_DIR_IN_CONTAINER}/{}", action.pack_ref),
            entry_point: action.entry_point_path.clone(),
            parameters,
            secret_parameters: execution.secret_parameters.clone(),
            parameter_delivery: action.parameter_delivery,
            parameter_format: action.parameter_format,
            timeout_seconds: action.timeout_seconds.max(1) as u64,
            kill_grace_seconds: self.settings.kill_grace_seconds,
            env: container_spec.env.clone(),
            output_limit_bytes: self.settings.output_limit_bytes,
            stream_logs: true,
            pack_sha256: None,
        })
    }

    /// The container to create for `role`: labels, agent mode and everything else follow from
    /// the role, so nothing is patched afterwards.
    pub(crate) fn create_spec(
        &self,
        role: &ContainerRole,
        agent_id: &str,
        container_spec: &ContainerSpec,
        image: &ImageInfo,
    ) -> Result<ContainerCreateSpec, ExecutionFailure> {
        let mut labels: BTreeMap<String, String> = [
            (LABEL_MANAGED, "true".to_string()),
            (LABEL_CONTROLLER, self.settings.controller_id.clone()),
            (LABEL_AGENT_ID, agent_id.to_string()),
            (LABEL_AGENT_SHA256, self.agent.sha256.clone()),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_string(), value))
        .collect();
        let mode = match role {
            ContainerRole::Execution { execution_id } => {
                labels.insert(LABEL_EXECUTION.to_string(), execution_id.to_string());
                AgentMode::Oneshot
            }
            ContainerRole::Warm { pool, pack_ref } => {
                labels.insert(LABEL_POOL.to_string(), pool.clone());
                labels.insert(LABEL_PACK.to_string(), pack_ref.clone());
                AgentMode::Worker
            }
        };
        let user = container_spec
            .user
            .clone()
            .or_else(|| Some(image.user.clone()).filter(|user| !user.is_empty()))
            .unwrap_or_else(|| "0".to_string());
        let limits =
            container_limits(container_spec, self.settings.host_cpus).map_err(|error| {
                ExecutionFailure::failed(
                    FailureKind::InvalidAction,
                    format!("container settings: {error}"),
                )
            })?;
        // The broker URL and the agent's event key come on its stdin, never in the environment
        // (the action can read `/proc/1/environ`).
        let mut env = vec![
            format!("{}=stdin", attune_protocol::signing::ENV_AGENT_SECRETS),
            format!("{ENV_AGENT_ID}={agent_id}"),
            format!("{ENV_AGENT_MODE}={mode}"),
            format!("{ENV_AGENT_IMAGE}={}", container_spec.image),
            format!("{ENV_AGENT_EVENTS_QUEUE}={}", self.settings.events_queue),
            format!("{ENV_AGENT_IMAGE_ID}={}", image.id),
        ];
        if mode == AgentMode::Worker {
            // A warm container serves one execution at a time, and nothing one leaves running
            // survives into the next.
            env.push(format!("{ENV_AGENT_CONCURRENCY}=1"));
            env.push(format!(
                "{}=1",
                attune_protocol::queues::ENV_AGENT_SWEEP_PROCESSES
            ));
        }
        // A work area any user can write, whatever the image's /tmp, passwd and root
        // filesystem look like (a numeric USER without a home, a root-only /tmp, read-only).
        env.push(format!("{ENV_AGENT_WORKDIR}={WORK_AREA_IN_CONTAINER}"));
        env.push(format!("HOME={WORK_AREA_IN_CONTAINER}"));
        env.push(format!("TMPDIR={WORK_AREA_IN_CONTAINER}"));
        let mut tmpfs = BTreeMap::new();
        tmpfs.insert(
            WORK_AREA_IN_CONTAINER.to_string(),
            TMPFS_OPTIONS.to_string(),
        );
        if limits.read_only {
            tmpfs.insert(READ_ONLY_TMP_DIR.to_string(), TMPFS_OPTIONS.to_string());
        }
        Ok(ContainerCreateSpec {
            name: format!("attune-{agent_id}"),
            image: container_spec.image.clone(),
            entrypoint: vec![AGENT_PATH_IN_CONTAINER.to_string()],
            cmd: Vec::new(),
            env,
            labels,
            user: Some(user),
            working_dir: Some(container_spec.workdir.clone().unwrap_or_else(|| "/".into())),
            network_mode: self.settings.network.clone(),
            init: true,
            cap_drop: vec!["ALL".to_string()],
            cap_add: limits.cap_add,
            security_opt: vec!["no-new-privileges".to_string()],
            pids_limit: Some(limits.pids.unwrap_or(self.settings.pids_limit)),
            memory_bytes: limits.memory_bytes.or(self.settings.default_memory_bytes),
            nano_cpus: limits.nano_cpus,
            nofile_limit: Some(self.settings.nofile_limit),
            read_only_rootfs: limits.read_only,
            tmpfs,
            binds: Vec::new(),
            log_config: Some(self.settings.policy.log_config()),
            open_stdin: true,
        })
    }
}

/// What a container is made for; its labels and agent mode follow from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ContainerRole {
    /// One execution, then removed (a oneshot agent).
    Execution { execution_id: i64 },
    /// A warm container of a pool (a worker agent serving one job at a time).
    Warm { pool: String, pack_ref: String },
}

/// Compares the sha256 an agent registers with its container's `attune.agent-sha256` label;
/// a mismatch (a stale or tampered volume, a foreign binary) is logged as an error. The agent's
/// reported digest is stored with its registration.
async fn verify_registration(
    execution_id: i64,
    container_id: &str,
    labelled_sha256: String,
    registration: tokio::sync::oneshot::Receiver<String>,
) {
    let Ok(reported_sha256) = registration.await else {
        return;
    };
    report_agent_identity(
        execution_id,
        container_id,
        &labelled_sha256,
        &reported_sha256,
    );
}

/// Logs how an agent's reported digest compares with its container's label; a mismatch (a
/// stale or tampered volume, a foreign binary) is an error.
fn report_agent_identity(
    execution_id: i64,
    container_id: &str,
    labelled_sha256: &str,
    reported_sha256: &str,
) {
    match check_agent_sha256(labelled_sha256, reported_sha256) {
        AgentIdentity::Matches => tracing::debug!(execution_id, "agent registered"),
        AgentIdentity::Unreported => {
            tracing::warn!(
                execution_id,
                container_id,
                "agent registered without its sha256"
            )
        }
        AgentIdentity::Mismatch => tracing::error!(
            execution_id,
            container_id,
            labelled = %labelled_sha256,
            reported = %reported_sha256,
            "agent binary mismatch: the agent in the container is not the one its label names"
        ),
    }
}

/// How an agent's reported digest compares with its container's label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentIdentity {
    Matches,
    /// The agent sent no digest (an old agent).
    Unreported,
    Mismatch,
}

/// Compares a container's `attune.agent-sha256` label with what its agent reported.
pub fn check_agent_sha256(labelled_sha256: &str, reported_sha256: &str) -> AgentIdentity {
    if reported_sha256.is_empty() {
        AgentIdentity::Unreported
    } else if reported_sha256.eq_ignore_ascii_case(labelled_sha256) {
        AgentIdentity::Matches
    } else {
        AgentIdentity::Mismatch
    }
}

/// Runs `main` to its end while also driving `side`, which is dropped if still unfinished.
async fn alongside<T>(
    main: impl std::future::Future<Output = T>,
    side: impl std::future::Future<Output = ()>,
) -> T {
    tokio::pin!(main);
    tokio::pin!(side);
    let mut side_done = false;
    loop {
        tokio::select! {
            output = &mut main => return output,
            _ = &mut side, if !side_done => side_done = true,
        }
    }
}

/// How the agent and the pack's files reach one container.
#[derive(Default)]
struct DeliveryPlan {
    /// `volume:/path[:ro]` binds to add.
    binds: Vec<String>,
    /// `KEY=value` environment entries to add.
    env: Vec<String>,
    /// The agent volume, when the agent goes that way.
    agent_volume: Option<String>,
    /// What put_archive copies in at `/`, if anything.
    upload: Option<Vec<u8>>,
}

impl DeliveryPlan {
    fn agent_delivery(&self) -> &'static str {
        if self.agent_volume.is_some() {
            AgentDelivery::Volume.as_str()
        } else {
            AgentDelivery::PutArchive.as_str()
        }
    }

    fn apply_to(&self, spec: &mut ContainerCreateSpec) {
        spec.binds.extend(self.binds.iter().cloned());
        spec.env.extend(self.env.iter().cloned());
        spec.labels.insert(
            LABEL_AGENT_DELIVERY.to_string(),
            self.agent_delivery().to_string(),
        );
    }
}

/// The prefix of each pack's volume of lazily built environments (`attune-envs-<pack>`): one
/// volume per pack, so no pack can pre-build or alter another pack's environments.
pub const ENVIRONMENTS_VOLUME: &str = "attune-envs";
/// Its world-writable (sticky) cache directory, so images with any USER can build there.
const ENVIRONMENTS_CACHE_DIR: &str = "cache";

/// Whether the action's pack carries dependencies its runtime builds an environment from.
fn needs_environment(action: &ActionRow, entries: &[PackEntry]) -> bool {
    let dependency_file = match action.runtime {
        Runtime::Python => "requirements.txt",
        Runtime::Node => "package.json",
        _ => return false,
    };
    entries.iter().any(|entry| entry.path == dependency_file)
}

/// The volume of `pack_ref`'s environments.
pub fn environments_volume(pack_ref: &str) -> String {
    let name: String = pack_ref
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{ENVIRONMENTS_VOLUME}-{name}")
}

fn environments_volume_content(pack_ref: &str) -> VolumeContent {
    VolumeContent {
        volume: environments_volume(pack_ref),
        labels: [
            (LABEL_MANAGED, "true".to_string()),
            (LABEL_ROLE, "environments".to_string()),
            (LABEL_PACK, pack_ref.to_string()),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_string(), value))
        .collect(),
        identity_label: LABEL_ROLE,
        digest: "environments-v1".to_string(),
        directories: vec![(ENVIRONMENTS_CACHE_DIR.to_string(), 0o1777)],
        files: Vec::new(),
    }
}

/// The directory the agent binary sits in (where its volume is mounted).
fn agent_directory() -> &'static str {
    AGENT_PATH_IN_CONTAINER
        .rsplit_once('/')
        .map_or("/", |(directory, _)| directory)
}

/// One file or directory of a pack, relative to the pack's root.
type PackEntry = attune_pack::stored::StoredEntry;

/// The pack's files from its stored archive (read by attune-pack, the only pack tar reader).
fn pack_entries(pack_ref: &str, pack_archive: &[u8]) -> Result<Vec<PackEntry>, ExecutionFailure> {
    attune_pack::stored::read_stored_archive(pack_archive).map_err(|error| {
        ExecutionFailure::failed(
            FailureKind::InjectionFailed,
            format!("files of pack {pack_ref}: {error}"),
        )
    })
}

/// Adds the pack's directory and files under `pack_dir` (absolute) to a put_archive archive.
fn add_pack_entries(
    archive: &mut InjectionArchive,
    pack_dir: &str,
    entries: &[PackEntry],
) -> Result<(), ExecutionFailure> {
    let injection_failed =
        |reason: String| ExecutionFailure::failed(FailureKind::InjectionFailed, reason);
    let pack_root = pack_dir.trim_start_matches('/');
    archive
        .add_dir(pack_root, 0o755)
        .map_err(|error| injection_failed(format!("add pack directory: {error}")))?;
    for entry in entries {
        let target = format!("{pack_root}/{}", entry.path);
        let added = match &entry.contents {
            None => archive.add_dir(&target, entry.mode).map(|_| ()),
            Some(contents) => archive
                .add_file(&target, entry.mode, contents.as_slice())
                .map(|_| ()),
        };
        added
            .map_err(|error| injection_failed(format!("add pack file {}: {error}", entry.path)))?;
    }
    Ok(())
}

/// The volume holding a pack's files, named and labelled by the stored archive's digest.
fn pack_volume_content(pack_archive: &[u8], entries: &[PackEntry]) -> VolumeContent {
    let digest = hex(&Sha256::digest(pack_archive));
    VolumeContent {
        volume: pack_volume_name(&digest),
        labels: [
            (LABEL_MANAGED, "true".to_string()),
            (LABEL_PACK_SHA256, digest.clone()),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_string(), value))
        .collect(),
        identity_label: LABEL_PACK_SHA256,
        digest,
        directories: entries
            .iter()
            .filter(|entry| entry.contents.is_none())
            .map(|entry| (entry.path.clone(), 0o755))
            .collect(),
        files: entries
            .iter()
            .filter_map(|entry| {
                entry
                    .contents
                    .as_ref()
                    .map(|contents| (entry.path.clone(), entry.mode, contents.clone()))
            })
            .collect(),
    }
}

/// The pool settings when the action runs pooled: `isolation: pooled`, or a `pool:` given
/// without an isolation.
/// Stored pool settings that do not decode are an error, never silently the defaults.
fn pooled_isolation(action: &ActionRow) -> Result<Option<PoolSpec>, ExecutionFailure> {
    let pool = match action.pool.clone() {
        None => None,
        Some(pool) => Some(serde_json::from_value::<PoolSpec>(pool).map_err(|error| {
            ExecutionFailure::failed(
                FailureKind::InvalidAction,
                format!(
                    "stored pool settings of action {}: {error}",
                    action.action_ref
                ),
            )
        })?),
    };
    Ok(match action.isolation {
        Some(Isolation::Pooled) => Some(pool.unwrap_or_default()),
        Some(Isolation::PerExecution) => None,
        None => pool,
    })
}

/// The controller shut down and its grace passed before the execution ended.
fn abandoned_at_shutdown() -> ExecutionFailure {
    ExecutionFailure {
        status: ExecutionStatus::Abandoned,
        kind: FailureKind::ControllerShutdown,
        reason: "the controller shut down and its shutdown grace passed before the action finished; its container was killed".into(),
    }
}

fn canceled_before_start() -> ExecutionFailure {
    ExecutionFailure {
        status: ExecutionStatus::Canceled,
        kind: FailureKind::Canceled,
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
    if error.start_failure() == StartFailure::ExecFormat {
        return ExecutionFailure::failed(
            FailureKind::ExecFormat,
            format!(
                "the agent binary ({}) cannot run in image {image}: exec format error",
                agent.architecture
            ),
        );
    }
    ExecutionFailure::docker("start container", error)
}

/// What is known about a container that ended without its agent reporting a result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExitEvidence {
    pub exit_code: Option<i64>,
    /// `State.OOMKilled` (often false even when the kernel killed for memory).
    pub oom_killed: bool,
    /// The engine sent an `oom` event for the container.
    pub oom_event: bool,
    /// The container no longer exists (someone removed it).
    pub removed: bool,
    /// The engine's error text (e.g. "exec format error" when start failed).
    pub engine_error: String,
    /// The container's last output, as a suffix for a reason (` (container output: ...)`).
    pub logs: String,
}

/// Names why a container ended without its agent reporting a result: `oom` (an `oom` event or
/// OOMKilled), `exec-format`, `killed` (exit 137 otherwise, or the container was removed), or
/// `agent-exited`. Ends the controller caused itself (timeout, cancel) never get here.
pub fn classify_exit(
    image: &str,
    agent: &AgentBinary,
    evidence: &ExitEvidence,
) -> ExecutionFailure {
    let logs = &evidence.logs;
    if evidence.oom_killed || evidence.oom_event {
        let how = if evidence.oom_killed {
            "OOMKilled"
        } else {
            "the engine reported an oom event"
        };
        return ExecutionFailure::failed(
            FailureKind::Oom,
            format!("the container ran out of memory and was killed ({how}){logs}"),
        );
    }
    if StartFailure::of_text(&evidence.engine_error) == StartFailure::ExecFormat
        || StartFailure::of_text(logs) == StartFailure::ExecFormat
    {
        return ExecutionFailure::failed(
            FailureKind::ExecFormat,
            format!(
                "the agent binary ({}) cannot run in image {image}: exec format error",
                agent.architecture
            ),
        );
    }
    if evidence.removed {
        return ExecutionFailure::failed(
            FailureKind::Killed,
            "the container was removed while the action ran".to_string(),
        );
    }
    match evidence.exit_code {
        Some(137) => ExecutionFailure::failed(
            FailureKind::Killed,
            format!("the agent was killed before reporting a result (exit code 137: SIGKILL to the agent or its container, possibly out of memory){logs}"),
        ),
        Some(code) => ExecutionFailure::failed(
            FailureKind::AgentExited,
            format!("the agent exited with code {code} before reporting a result{logs}"),
        ),
        None => ExecutionFailure::failed(
            FailureKind::AgentExited,
            format!("the container stopped before the agent reported a result{logs}"),
        ),
    }
}
