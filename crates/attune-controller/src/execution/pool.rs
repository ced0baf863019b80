//! Warm pools: containers started ahead of need, with a worker-mode agent registered and the
//! pack's files in place, claimed one execution at a time and returned afterwards.
//!
//! A pool is keyed by pack (and its files' digest), image id, agent sha256 and resource class,
//! so a warm container only ever runs actions of the pack it was made for. Each pool keeps
//! `min_idle` ready containers while it is in use, never exceeds `max` live containers, retires
//! a container after `max_uses` executions or `idle_timeout` idle, and drains to nothing when
//! unused for `idle_timeout`. Per-execution isolation never touches this module.

use super::{ContainerRole, Controller, ExecutionFailure};
use crate::signals::ExecutionSignal;
use attune_docker::labels::{LABEL_AGENT_ID, LABEL_POOL};
use attune_docker::ImageInfo;
use attune_protocol::api::{ContainerSpec, ContainerView, PoolSpec, PoolView};
use attune_protocol::AgentCommand;
use attune_protocol::FailureKind;
use attune_store::{ActionRow, ExecutionRow};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

/// What makes two warm containers interchangeable.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolKey {
    pub pack_ref: String,
    pub pack_sha256: String,
    pub image: String,
    pub image_id: String,
    pub agent_sha256: String,
    pub resource_class: String,
}

impl PoolKey {
    /// A short stable name for labels and the API.
    pub fn name(&self) -> String {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(
            format!(
                "{}\n{}\n{}\n{}\n{}\n{}",
                self.pack_ref,
                self.pack_sha256,
                self.image,
                self.image_id,
                self.agent_sha256,
                self.resource_class
            )
            .as_bytes(),
        );
        let hex: String = digest[..6]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        format!("{}-{hex}", self.pack_ref)
    }
}

/// The class of a container spec: everything about the container that matters to whoever
/// runs in it — its limits, read-only root, user, working directory, added capabilities and
/// environment (as a digest: values may be private). A warm container serves only actions of
/// the same class, so an action never inherits another's user, capabilities or environment.
pub fn resource_class(spec: &ContainerSpec) -> String {
    use sha2::{Digest, Sha256};
    let limits = match &spec.resources {
        None => "default".to_string(),
        Some(resources) => format!(
            "memory={},cpus={},pids={}",
            resources.memory.as_deref().unwrap_or("-"),
            resources
                .cpus
                .map(|cpus| cpus.to_string())
                .unwrap_or_else(|| "-".into()),
            resources
                .pids
                .map(|pids| pids.to_string())
                .unwrap_or_else(|| "-".into()),
        ),
    };
    let mut cap_add: Vec<String> = spec
        .cap_add
        .iter()
        .map(|cap| cap.to_ascii_uppercase())
        .collect();
    cap_add.sort();
    cap_add.dedup();
    let mut environment = Sha256::new();
    for (name, value) in &spec.env {
        environment.update(name.as_bytes());
        environment.update(b"=");
        environment.update(value.as_bytes());
        environment.update(b"\0");
    }
    let environment: String = environment.finalize()[..6]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!(
        "{limits},read_only={},user={},workdir={},cap_add={},env={environment}",
        spec.read_only,
        spec.user.as_deref().unwrap_or("-"),
        spec.workdir.as_deref().unwrap_or("-"),
        if cap_add.is_empty() {
            "-".to_string()
        } else {
            cap_add.join("+")
        },
    )
}

#[derive(Debug, Clone)]
struct WarmContainer {
    container_id: String,
    agent_id: String,
    uses: u32,
    idle_since: Instant,
}

/// What a pool needs to make more containers.
#[derive(Clone)]
struct PoolTemplate {
    action: ActionRow,
    container_spec: ContainerSpec,
    image: ImageInfo,
}

struct Pool {
    spec: PoolSpec,
    template: PoolTemplate,
    idle: VecDeque<WarmContainer>,
    busy: HashMap<String, (WarmContainer, i64)>,
    starting: u32,
    total_created: u64,
    retired: u64,
    last_claim: Instant,
}

impl Pool {
    fn live(&self) -> u32 {
        self.idle.len() as u32 + self.busy.len() as u32 + self.starting
    }
}

/// Every pool of one controller.
pub struct Pools {
    pools: Mutex<BTreeMap<PoolKey, Pool>>,
    /// Woken when a container is returned, retired or finished starting.
    returned: Notify,
    /// Set at shutdown: containers coming back or finishing their start are retired.
    shutting_down: std::sync::atomic::AtomicBool,
    /// Bounds warm containers being created at once: refilling a large pool must not open
    /// hundreds of engine connections (and memory) in one burst.
    starts: tokio::sync::Semaphore,
}

/// Warm containers created at once, across all pools.
const CONCURRENT_WARM_STARTS: usize = 8;

impl Default for Pools {
    fn default() -> Self {
        Pools {
            pools: Mutex::default(),
            returned: Notify::new(),
            shutting_down: std::sync::atomic::AtomicBool::new(false),
            starts: tokio::sync::Semaphore::new(CONCURRENT_WARM_STARTS),
        }
    }
}

impl Pools {
    fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(std::sync::atomic::Ordering::SeqCst)
    }
}

enum Claim {
    Ready(WarmContainer),
    Start,
    Wait,
}

impl Controller {
    /// Runs an execution on a warm container of its action's pool.
    pub(super) async fn run_pooled(
        &self,
        execution: &ExecutionRow,
        action: &ActionRow,
        container_spec: &ContainerSpec,
        image: &ImageInfo,
        pool_spec: PoolSpec,
        signal: &mut watch::Receiver<ExecutionSignal>,
    ) -> Result<(), ExecutionFailure> {
        let execution_id = execution.id;
        let key = PoolKey {
            pack_ref: action.pack_ref.clone(),
            pack_sha256: action.pack_sha256.clone(),
            image: container_spec.image.clone(),
            image_id: image.id.clone(),
            agent_sha256: self.agent.sha256.clone(),
            resource_class: resource_class(container_spec),
        };
        let template = PoolTemplate {
            action: action.clone(),
            container_spec: container_spec.clone(),
            image: image.clone(),
        };
        let job = self.job_for(execution, action, container_spec)?;
        let warm = self
            .claim_warm(&key, &pool_spec, &template, execution_id, signal)
            .await?;
        tracing::debug!(execution_id, container_id = %warm.container_id, pool = %key.name(), "claimed warm container");
        if let Err(failure) = self
            .record_placement(
                execution,
                &container_spec.image,
                &warm.container_id,
                &warm.agent_id,
            )
            .await
        {
            self.release_warm(&key, warm, execution_id, false).await;
            return Err(failure);
        }
        if let Err(error) = self
            .agents
            .send_command(&warm.agent_id, &AgentCommand::Job(job))
            .await
        {
            self.release_warm(&key, warm.clone(), execution_id, false)
                .await;
            return Err(ExecutionFailure::failed(
                FailureKind::MessageQueue,
                format!("queue job for agent {}: {error}", warm.agent_id),
            ));
        }
        let timeout = Duration::from_secs(action.timeout_seconds.max(1) as u64);
        let outcome = self
            .supervise(
                execution_id,
                &warm.container_id,
                &warm.agent_id,
                &container_spec.image,
                timeout,
                signal,
            )
            .await;
        self.release_warm(&key, warm, execution_id, outcome.is_ok())
            .await;
        outcome
    }

    /// Takes a ready container, starts one when below `max`, or waits for one to come back.
    async fn claim_warm(
        &self,
        key: &PoolKey,
        pool_spec: &PoolSpec,
        template: &PoolTemplate,
        execution_id: i64,
        signal: &mut watch::Receiver<ExecutionSignal>,
    ) -> Result<WarmContainer, ExecutionFailure> {
        let deadline = Instant::now() + self.settings.agent_start_timeout * 4;
        loop {
            let returned = self.pools.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            let claim = {
                let mut pools = self.pools.pools.lock().expect("pools lock");
                let pool = pools.entry(key.clone()).or_insert_with(|| Pool {
                    spec: pool_spec.clone(),
                    template: template.clone(),
                    idle: VecDeque::new(),
                    busy: HashMap::new(),
                    starting: 0,
                    total_created: 0,
                    retired: 0,
                    last_claim: Instant::now(),
                });
                pool.spec = pool_spec.clone();
                pool.template = template.clone();
                pool.last_claim = Instant::now();
                if let Some(warm) = pool.idle.pop_front() {
                    pool.busy
                        .insert(warm.container_id.clone(), (warm.clone(), execution_id));
                    Claim::Ready(warm)
                } else if pool.live() < pool.spec.max {
                    pool.starting += 1;
                    Claim::Start
                } else {
                    Claim::Wait
                }
            };
            match claim {
                Claim::Ready(warm) => return Ok(warm),
                Claim::Start => {
                    let started = self.start_warm(key, template).await;
                    let mut pools = self.pools.pools.lock().expect("pools lock");
                    let pool = pools.get_mut(key);
                    return match (started, pool) {
                        (Ok(warm), Some(pool)) => {
                            pool.starting = pool.starting.saturating_sub(1);
                            pool.total_created += 1;
                            pool.busy
                                .insert(warm.container_id.clone(), (warm.clone(), execution_id));
                            Ok(warm)
                        }
                        (Ok(warm), None) => Ok(warm),
                        (Err(failure), pool) => {
                            if let Some(pool) = pool {
                                pool.starting = pool.starting.saturating_sub(1);
                            }
                            self.pools.returned.notify_waiters();
                            Err(failure)
                        }
                    };
                }
                Claim::Wait => {
                    if signal.borrow().cancel_requested {
                        return Err(super::canceled_before_start());
                    }
                    if signal.borrow().abandon_requested {
                        return Err(super::abandoned_at_shutdown());
                    }
                    tokio::select! {
                        _ = &mut returned => {}
                        _ = signal.changed() => {}
                        _ = tokio::time::sleep_until(deadline) => {
                            return Err(ExecutionFailure::failed(
                                FailureKind::PoolExhausted,
                                format!(
                                    "all {} containers of pool {} stayed busy for {}s",
                                    pool_spec.max,
                                    key.name(),
                                    (self.settings.agent_start_timeout * 4).as_secs()
                                ),
                            ));
                        }
                    }
                }
            }
        }
    }

    /// Creates, injects and starts a worker container and waits for its agent to register.
    async fn start_warm(
        &self,
        key: &PoolKey,
        template: &PoolTemplate,
    ) -> Result<WarmContainer, ExecutionFailure> {
        let _start_permit = self
            .pools
            .starts
            .acquire()
            .await
            .expect("the warm start semaphore is never closed");
        let short_id = &uuid::Uuid::new_v4().simple().to_string()[..10];
        let agent_id = format!("pool-{short_id}");
        let role = ContainerRole::Warm {
            pool: key.name(),
            pack_ref: key.pack_ref.clone(),
        };
        let mut spec =
            self.create_spec(&role, &agent_id, &template.container_spec, &template.image)?;
        let plan = self
            .plan_delivery(&template.action, &template.container_spec)
            .await?;
        plan.apply_to(&mut spec);
        let registration = self.signals.await_registration(&agent_id);
        // The agent's broker account is made while the engine creates the container.
        let (created, agent_url) = tokio::join!(
            self.docker.create_container(&spec),
            self.agents.agent_url(&agent_id)
        );
        let container_id = match created {
            Ok(container_id) => container_id,
            Err(error) => {
                if let Err(error) = self.agents.forget_agent(&agent_id).await {
                    tracing::warn!(%agent_id, %error, "remove broker account of an agent that never started");
                }
                return Err(ExecutionFailure::docker(
                    &format!("create warm container {}", spec.name),
                    error,
                ));
            }
        };
        let warm = WarmContainer {
            container_id: container_id.clone(),
            agent_id: agent_id.clone(),
            uses: 0,
            idle_since: Instant::now(),
        };
        let prepared = async {
            if let Some(archive) = plan.upload {
                self.docker
                    .upload_archive(&container_id, "/", archive)
                    .await
                    .map_err(|error| {
                        ExecutionFailure::failed(
                            FailureKind::InjectionFailed,
                            format!("inject agent into warm container {}: {error}", spec.name),
                        )
                    })?;
            }
            self.agents
                .declare_agent_queue(&agent_id)
                .await
                .map_err(|error| {
                    ExecutionFailure::failed(
                        FailureKind::MessageQueue,
                        format!("declare queue of agent {agent_id}: {error}"),
                    )
                })?;
            let agent_url = agent_url.map_err(|error| {
                ExecutionFailure::failed(
                    FailureKind::MessageQueue,
                    format!("make the broker account of agent {agent_id}: {error}"),
                )
            })?;
            let secrets = self.settings.agent_secret.stdin_line(
                &agent_url,
                self.settings.agent_mq_ca_pem.as_deref(),
                &agent_id,
            );
            self.docker
                .start_container_with_input(&container_id, &secrets)
                .await
                .map_err(|error| {
                    super::classify_start_error(&template.container_spec.image, &self.agent, error)
                })?;
            match tokio::time::timeout(self.settings.agent_start_timeout, registration).await {
                Ok(Ok(agent_sha256))
                    if agent_sha256.is_empty() || agent_sha256 == self.agent.sha256 =>
                {
                    Ok(())
                }
                Ok(Ok(agent_sha256)) => Err(ExecutionFailure::failed(
                    FailureKind::InjectionFailed,
                    format!(
                        "agent in warm container {} reports sha256 {agent_sha256}, expected {}",
                        spec.name, self.agent.sha256
                    ),
                )),
                _ => {
                    let logs = self.recent_logs(&container_id).await;
                    Err(ExecutionFailure::failed(
                        FailureKind::InjectionFailed,
                        format!(
                            "agent of warm container {} did not register within {}s{logs}",
                            spec.name,
                            self.settings.agent_start_timeout.as_secs()
                        ),
                    ))
                }
            }
        };
        match prepared.await {
            Ok(()) => {
                tracing::info!(container_id = %container_id, pool = %key.name(), "warm container ready");
                Ok(warm)
            }
            Err(failure) => {
                self.signals.forget_registration(&agent_id);
                self.retire_container(&warm).await;
                Err(failure)
            }
        }
    }

    /// Returns a container after an execution, or retires it when it is spent or unhealthy.
    async fn release_warm(
        &self,
        key: &PoolKey,
        warm: WarmContainer,
        execution_id: i64,
        healthy: bool,
    ) {
        let retire = {
            let mut pools = self.pools.pools.lock().expect("pools lock");
            match pools.get_mut(key) {
                Some(pool) => {
                    let mut warm = pool
                        .busy
                        .remove(&warm.container_id)
                        .map(|(warm, _)| warm)
                        .unwrap_or(warm);
                    warm.uses += 1;
                    if healthy && warm.uses < pool.spec.max_uses && !self.pools.is_shutting_down() {
                        warm.idle_since = Instant::now();
                        pool.idle.push_back(warm);
                        None
                    } else {
                        pool.retired += 1;
                        Some(warm)
                    }
                }
                None => Some(warm),
            }
        };
        self.pools.returned.notify_waiters();
        if let Some(warm) = retire {
            tracing::debug!(execution_id, container_id = %warm.container_id, uses = warm.uses, healthy, "retiring warm container");
            self.retire_container(&warm).await;
        }
    }

    /// Asks the agent to stop, then removes the container, its queue and its broker account.
    async fn retire_container(&self, warm: &WarmContainer) {
        let shutdown = AgentCommand::Shutdown {
            deadline_seconds: 1,
        };
        if let Err(error) = self.agents.send_command(&warm.agent_id, &shutdown).await {
            tracing::debug!(agent_id = %warm.agent_id, %error, "ask warm agent to shut down");
        }
        if let Err(error) = self.docker.remove_container(&warm.container_id).await {
            tracing::error!(container_id = %warm.container_id, %error, "remove warm container");
        }
        if let Err(error) = self.agents.forget_agent(&warm.agent_id).await {
            tracing::warn!(agent_id = %warm.agent_id, %error, "delete warm agent's queue and broker account");
        }
    }

    /// One maintenance pass: retire containers idle past `idle_timeout`, refill `min_idle` in
    /// pools used within `idle_timeout`, forget empty unused pools.
    pub async fn maintain_pools(&self) {
        let mut to_retire = Vec::new();
        let mut to_start = Vec::new();
        {
            let mut pools = self.pools.pools.lock().expect("pools lock");
            let now = Instant::now();
            pools.retain(|key, pool| {
                let idle_timeout = Duration::from_secs(pool.spec.idle_timeout_seconds);
                let in_use = now.duration_since(pool.last_claim) < idle_timeout;
                let mut kept = VecDeque::new();
                while let Some(warm) = pool.idle.pop_front() {
                    if now.duration_since(warm.idle_since) >= idle_timeout {
                        pool.retired += 1;
                        to_retire.push(warm);
                    } else {
                        kept.push_back(warm);
                    }
                }
                pool.idle = kept;
                if in_use {
                    while (pool.idle.len() as u32 + pool.starting) < pool.spec.min_idle
                        && pool.live() < pool.spec.max
                    {
                        pool.starting += 1;
                        to_start.push((key.clone(), pool.template.clone()));
                    }
                }
                in_use || pool.live() > 0
            });
        }
        for warm in to_retire {
            tracing::debug!(container_id = %warm.container_id, "retiring idle warm container");
            self.retire_container(&warm).await;
        }
        for (key, template) in to_start {
            let controller = self.clone();
            tokio::spawn(async move {
                let started = controller.start_warm(&key, &template).await;
                let orphan = {
                    let mut pools = controller.pools.pools.lock().expect("pools lock");
                    match (pools.get_mut(&key), started) {
                        (Some(pool), Ok(warm)) if !controller.pools.is_shutting_down() => {
                            pool.starting = pool.starting.saturating_sub(1);
                            pool.total_created += 1;
                            pool.idle.push_back(warm);
                            None
                        }
                        (Some(pool), Ok(warm)) => {
                            pool.starting = pool.starting.saturating_sub(1);
                            pool.total_created += 1;
                            pool.retired += 1;
                            Some(warm)
                        }
                        (None, Ok(warm)) => Some(warm),
                        (pool, Err(failure)) => {
                            if let Some(pool) = pool {
                                pool.starting = pool.starting.saturating_sub(1);
                            }
                            tracing::error!(pool = %key.name(), reason = %failure.reason, "start warm container");
                            None
                        }
                    }
                };
                controller.pools.returned.notify_waiters();
                if let Some(warm) = orphan {
                    controller.retire_container(&warm).await;
                }
            });
        }
    }

    /// Runs maintenance every `interval` until `shutdown`, then retires every idle container.
    pub async fn run_pool_maintenance(
        &self,
        interval: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(interval) => self.maintain_pools().await,
            }
        }
        self.retire_idle_pools().await;
    }

    /// Retires every idle warm container (at shutdown).
    pub async fn retire_idle_pools(&self) {
        self.pools
            .shutting_down
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // Starts in flight retire their container when they finish; wait for them (bounded),
        // so the process does not exit with a half-made container.
        let deadline = Instant::now() + self.settings.agent_start_timeout + Duration::from_secs(5);
        loop {
            let returned = self.pools.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            let starting: u32 = {
                let pools = self.pools.pools.lock().expect("pools lock");
                pools.values().map(|pool| pool.starting).sum()
            };
            if starting == 0 {
                break;
            }
            tokio::select! {
                _ = &mut returned => {}
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(starting, "warm containers still starting at shutdown; the next start-up reconcile removes them");
                    break;
                }
            }
        }
        let idle: Vec<WarmContainer> = {
            let mut pools = self.pools.pools.lock().expect("pools lock");
            pools
                .values_mut()
                .flat_map(|pool| {
                    pool.retired += pool.idle.len() as u64;
                    pool.idle.drain(..).collect::<Vec<_>>()
                })
                .collect()
        };
        for warm in idle {
            self.retire_container(&warm).await;
        }
    }

    /// The pools as the API shows them.
    pub fn pool_views(&self) -> Vec<PoolView> {
        let pools = self.pools.pools.lock().expect("pools lock");
        pools
            .iter()
            .map(|(key, pool)| PoolView {
                controller_id: self.settings.controller_id.clone(),
                key: key.name(),
                pack: key.pack_ref.clone(),
                image: key.image.clone(),
                image_id: key.image_id.clone(),
                agent_sha256: key.agent_sha256.clone(),
                resource_class: key.resource_class.clone(),
                ready: pool.idle.len() as u32,
                busy: pool.busy.len() as u32,
                starting: pool.starting,
                total_created: pool.total_created,
                retired: pool.retired,
                min_idle: pool.spec.min_idle,
                max: pool.spec.max,
            })
            .collect()
    }

    /// The warm containers as the API shows them.
    pub fn pool_container_views(&self) -> Vec<ContainerView> {
        let pools = self.pools.pools.lock().expect("pools lock");
        let mut views = Vec::new();
        for (key, pool) in pools.iter() {
            for warm in &pool.idle {
                views.push(ContainerView {
                    controller_id: self.settings.controller_id.clone(),
                    container_id: warm.container_id.clone(),
                    state: "idle".into(),
                    pool: Some(key.name()),
                    execution_id: None,
                    agent_id: Some(warm.agent_id.clone()),
                    image: key.image.clone(),
                    uses: warm.uses,
                });
            }
            for (warm, execution_id) in pool.busy.values() {
                views.push(ContainerView {
                    controller_id: self.settings.controller_id.clone(),
                    container_id: warm.container_id.clone(),
                    state: "busy".into(),
                    pool: Some(key.name()),
                    execution_id: Some(*execution_id),
                    agent_id: Some(warm.agent_id.clone()),
                    image: key.image.clone(),
                    uses: warm.uses,
                });
            }
        }
        views
    }
}

/// Labels that mark a container as a pool member (for reconcile).
pub fn is_pool_container(labels: &BTreeMap<String, String>) -> bool {
    labels.contains_key(LABEL_POOL) && labels.contains_key(LABEL_AGENT_ID)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ContainerSpec {
        serde_json::from_value(serde_json::json!({"image": "busybox:1.36"})).unwrap()
    }

    #[test]
    fn a_warm_container_is_shared_only_by_actions_with_identical_container_settings() {
        let base = spec();
        assert_eq!(resource_class(&base), resource_class(&spec()));
        let variants: Vec<ContainerSpec> = vec![
            ContainerSpec {
                user: Some("1000".into()),
                ..spec()
            },
            ContainerSpec {
                workdir: Some("/srv".into()),
                ..spec()
            },
            ContainerSpec {
                read_only: true,
                ..spec()
            },
            ContainerSpec {
                cap_add: vec!["NET_BIND_SERVICE".into()],
                ..spec()
            },
            ContainerSpec {
                env: [("MODE".to_string(), "a".to_string())].into(),
                ..spec()
            },
            ContainerSpec {
                env: [("MODE".to_string(), "b".to_string())].into(),
                ..spec()
            },
            serde_json::from_value(
                serde_json::json!({"image": "busybox:1.36", "resources": {"memory": "64Mi"}}),
            )
            .unwrap(),
        ];
        let mut classes: Vec<String> = variants.iter().map(resource_class).collect();
        classes.push(resource_class(&base));
        let distinct: std::collections::BTreeSet<&String> = classes.iter().collect();
        assert_eq!(distinct.len(), classes.len(), "{classes:#?}");
        // The environment is in the class only as a digest.
        let secret_env = ContainerSpec {
            env: [("TOKEN".to_string(), "hunter2".to_string())].into(),
            ..spec()
        };
        assert!(!resource_class(&secret_env).contains("hunter2"));
        // Capability order and case do not matter.
        let one = ContainerSpec {
            cap_add: vec!["chown".into(), "NET_RAW".into()],
            ..spec()
        };
        let other = ContainerSpec {
            cap_add: vec!["NET_RAW".into(), "CHOWN".into()],
            ..spec()
        };
        assert_eq!(resource_class(&one), resource_class(&other));
    }
}
