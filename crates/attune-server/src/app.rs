//! Wires the server's roles together and runs them until a shutdown future completes, then
//! drains. The `controller` role is one Docker host's controller: engine, broker, container
//! events tracker, events consumer, membership (registration, heartbeats, take-over), start-up
//! reconcile, scheduler (claims work for this controller), pools and the periodic sweep. The
//! `api` role serves HTTP from the database alone. Every background task is aborted when
//! [`run`] is dropped, so an aborted server (a simulated crash) leaves nothing running behind.

use crate::config::{AgentCredentials, MessageQueueSettings, Settings};
use attune_api::{Admission, AppState};
use attune_broker::accounts::AgentAccounts;
use attune_broker::{AgentAccess, AgentChannel, Broker, BrokerError};
use attune_controller::identity::AgentSecret;
use attune_controller::limits::ExecutionPolicy;
use attune_controller::membership::{
    follow_cancels, store_pool_snapshots, Membership, MembershipSettings,
};
use attune_controller::scheduler::{
    reconcile_at_start, run_periodic_reconcile, run_scheduler, SchedulerWakeup,
};
use attune_controller::signals::ExecutionSignals;
use attune_controller::{AgentBinary, AgentBinaryError, Controller, ControllerSettings};
use attune_docker::bollard_engine::BollardEngine;
use attune_docker::retry::{RetryPolicy, RetryingDocker};
use attune_docker::{DockerError, DockerOps};
use attune_store::status_feed::StatusFeed;
use attune_store::{ControllerRegistration, Store, StoreError};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

/// Aborts the tasks it holds when dropped (the server future was dropped or aborted).
#[derive(Default)]
struct AbortOnDrop(Vec<tokio::task::AbortHandle>);

impl AbortOnDrop {
    fn track<T>(&mut self, handle: &JoinHandle<T>) {
        self.0.push(handle.abort_handle());
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for handle in &self.0 {
            handle.abort();
        }
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    AgentBinary(#[from] AgentBinaryError),
    #[error("connect to database: {0}")]
    Database(#[from] StoreError),
    #[error(transparent)]
    MessageQueue(#[from] BrokerError),
    #[error("connect to docker engine: {0}")]
    Docker(#[from] DockerError),
    #[error("serve http: {0}")]
    Http(#[from] std::io::Error),
    #[error(transparent)]
    AdminToken(#[from] attune_api::auth::BootstrapError),
    #[error(transparent)]
    Keyring(#[from] attune_store::secrets::KeyringError),
    #[error("{0}")]
    BrokerSettings(String),
}

/// Which parts of the server a process runs (`--roles api,controller`; default both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    /// Serve the HTTP API.
    pub api: bool,
    /// Run a controller for this process's Docker engine (claims and runs executions).
    pub controller: bool,
}

impl Roles {
    pub const ALL: Roles = Roles {
        api: true,
        controller: true,
    };

    /// Parses `api,controller` (`scheduler` is accepted as part of `controller`: each
    /// controller schedules the work it claims).
    pub fn parse(text: &str) -> Result<Roles, String> {
        let mut roles = Roles {
            api: false,
            controller: false,
        };
        for role in text
            .split(',')
            .map(str::trim)
            .filter(|role| !role.is_empty())
        {
            match role {
                "api" => roles.api = true,
                "controller" | "scheduler" => roles.controller = true,
                "all" => roles = Roles::ALL,
                other => {
                    return Err(format!(
                        "unknown role {other:?}: roles are api, scheduler, controller"
                    ))
                }
            }
        }
        if !roles.api && !roles.controller {
            return Err("no role given: name api, controller or both".into());
        }
        Ok(roles)
    }
}

/// Runs every role on `listener` until `shutdown` resolves.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    run_roles(settings, Roles::ALL, Some(listener), shutdown).await
}

/// Runs the given roles until `shutdown` resolves; the API serves on `listener`.
pub async fn run_roles(
    settings: Settings,
    roles: Roles,
    listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let keyring =
        attune_store::secrets::Keyring::load_or_create(&settings.server.secrets_key_file)?;
    tracing::info!(path = %settings.server.secrets_key_file.display(), keyring = ?keyring, "secrets keyring loaded");
    let store = Store::connect(&settings.database.url, settings.database.max_connections)
        .await?
        .with_keyring(Arc::new(keyring));
    if roles.api {
        attune_api::auth::bootstrap_admin_token(&store, &settings.server.admin_token_file).await?;
    }
    let mut tasks = AbortOnDrop::default();
    let stop = CancellationToken::new();
    let status_feed = StatusFeed::default();
    let status_feed_task = tokio::spawn(status_feed.clone().run(store.clone()));
    tasks.track(&status_feed_task);

    let controller = if roles.controller {
        Some(start_controller(&settings, &store, &status_feed, &stop, &mut tasks).await?)
    } else {
        None
    };

    // Shutdown order: readiness flips to "draining" at once, the controller stops claiming and
    // drains (running executions get `executor.shutdown_grace_seconds`, then are abandoned),
    // and the API keeps answering (clients can watch their executions end) until the drain is
    // done; then it stops listening.
    let draining = Arc::new(AtomicBool::new(false));
    let http_stop = CancellationToken::new();
    let serving = match (roles.api, listener) {
        (true, Some(listener)) => {
            let state = AppState {
                store: store.clone(),
                max_pack_bytes: settings.server.max_pack_bytes,
                max_json_bytes: settings.server.max_json_bytes,
                idempotency_key_ttl: Duration::from_secs(
                    settings.server.idempotency_key_ttl_seconds,
                ),
                admission: Arc::new(ImageAdmission(settings.docker.execution_policy())),
                controller_grace: Duration::from_secs(settings.executor.controller_grace_seconds),
                status_feed,
                validators: Default::default(),
                draining: draining.clone(),
                workers: Some(worker_enrollment(&settings, &store).await?),
                agent_downloads: Some(attune_api::agent_binary::AgentDownloads::new(
                    settings.agent_binary_dir(),
                    Some(settings.agent.bootstrap_token.clone()),
                )),
            };
            let address = listener.local_addr()?;
            tracing::info!(%address, "attune-server listening");
            let serve = attune_api::serve(listener, state, http_stop.clone().cancelled_owned());
            let task = tokio::spawn(serve);
            tasks.track(&task);
            Some(task)
        }
        _ => None,
    };
    match serving {
        Some(mut task) => {
            tokio::select! {
                _ = shutdown => {}
                // The API stopped by itself (an error): shut the rest down too.
                ended = &mut task => {
                    drop(tasks);
                    return match ended {
                        Ok(served) => served.map_err(ServerError::from),
                        Err(error) => Err(ServerError::Http(std::io::Error::other(error))),
                    };
                }
            }
            draining.store(true, Ordering::SeqCst);
            tracing::info!("shutting down: readiness is draining; no new executions");
            stop.cancel();
            if let Some(controller) = controller {
                controller.drain().await;
            }
            http_stop.cancel();
            let served = task
                .await
                .map_err(|error| ServerError::Http(std::io::Error::other(error)))?;
            drop(tasks);
            served?;
        }
        None => {
            shutdown.await;
            tracing::info!("shutting down: no new executions");
            stop.cancel();
            if let Some(controller) = controller {
                controller.drain().await;
            }
            drop(tasks);
        }
    }
    Ok(())
}

/// A running controller role, to drain at shutdown.
struct ControllerRole {
    broker: Arc<Broker>,
    /// The consumer of the workers' events queue (every controller-role server shares it).
    workers_broker: Arc<Broker>,
    scheduler: JoinHandle<()>,
    pools: JoinHandle<()>,
    membership: JoinHandle<()>,
}

impl ControllerRole {
    /// Waits for running executions and warm containers to end, marks the controller stopped.
    async fn drain(self) {
        if let Err(error) = self.scheduler.await {
            tracing::error!(%error, "scheduler task");
        }
        if let Err(error) = self.pools.await {
            tracing::error!(%error, "pool maintenance task");
        }
        if let Err(error) = self.membership.await {
            tracing::error!(%error, "membership task");
        }
        self.workers_broker.close().await;
        self.broker.close().await;
    }
}

/// Starts this process's controller: registers it, adopts what its previous incarnation left,
/// and starts claiming work.
async fn start_controller(
    settings: &Settings,
    store: &Store,
    status_feed: &StatusFeed,
    stop: &CancellationToken,
    tasks: &mut AbortOnDrop,
) -> Result<ControllerRole, ServerError> {
    let controller_id = settings.executor.controller_id.clone();
    let agent = AgentBinary::load(&settings.docker.agent_binary)?;
    tracing::info!(path = %settings.docker.agent_binary.display(), sha256 = %agent.sha256, architecture = %agent.architecture, "agent binary loaded");
    // The secret every agent's event key derives from: this controller's first start stores
    // one, later starts (and adoptions) use it.
    let agent_secret = AgentSecret::from_bytes(
        store
            .controller_agent_secret(&controller_id, AgentSecret::random().as_bytes())
            .await?,
    );
    let event_keys: attune_broker::EventKeys = {
        let agent_secret = agent_secret.clone();
        Arc::new(move |agent_id: &str| agent_secret.event_key(agent_id))
    };
    let broker_ca = broker_ca(&settings.message_queue)?;
    let broker = Arc::new(
        Broker::connect_with_ca(
            &settings.message_queue.url,
            &settings.message_queue.events_queue,
            Duration::from_secs(30),
            broker_ca.clone(),
        )
        .await?
        .with_publish_patience(Duration::from_secs(
            settings.message_queue.publish_patience_seconds,
        ))
        .with_event_keys(event_keys)
        .with_agent_access(agent_access(settings)?),
    );
    let engine = BollardEngine::connect(settings.docker.host.as_deref()).await?;
    let engine_is_local = attune_controller::delivery::engine_is_local(engine.docker_host());
    let docker_host = engine.docker_host().to_string();
    // Transient engine errors of pull, create, start, put_archive and remove are retried.
    let docker: Arc<dyn DockerOps> = Arc::new(RetryingDocker::new(
        Arc::new(engine),
        RetryPolicy::default(),
    ));
    let (host_cpus, engine_version) = match docker.engine_info().await {
        Ok(info) => {
            tracing::info!(version = %info.server_version, api = %info.api_version, cpus = info.cpus, local = engine_is_local, "docker engine connected");
            (
                Some(info.cpus as f64).filter(|cpus| *cpus > 0.0),
                info.server_version.clone(),
            )
        }
        Err(error) => {
            tracing::warn!(%error, "docker engine info");
            (None, String::new())
        }
    };

    let signals = ExecutionSignals::default();
    let wakeup = SchedulerWakeup::default();
    let agents: Arc<dyn AgentChannel> = broker.clone();
    let controller_settings = controller_settings(
        settings,
        engine_is_local,
        host_cpus,
        agent_secret,
        broker_ca,
    );
    let lease = controller_settings.lease;
    let architecture = agent.architecture.clone();
    let controller = Controller::new(
        store.clone(),
        docker.clone(),
        agents.clone(),
        signals.clone(),
        controller_settings,
        agent,
    );
    // Follow container events before anything starts, so no die/oom is missed.
    let tracker_task = tokio::spawn(controller.lifecycle().clone().run(
        docker.clone(),
        controller_id.clone(),
        stop.clone(),
    ));
    tasks.track(&tracker_task);

    // Reports that arrived while no server ran must reach the supervisions adopted below.
    // The consumer consumes again on every new connection after a broker outage.
    let events_task = {
        let store = store.clone();
        let signals = signals.clone();
        let broker = broker.clone();
        tokio::spawn(async move {
            broker
                .run_events(64, move |event| {
                    let store = store.clone();
                    let signals = signals.clone();
                    async move {
                        attune_controller::events::apply_event(&store, &signals, lease, event).await
                    }
                })
                .await
        })
    };
    tasks.track(&events_task);
    let cancels_task = tokio::spawn(follow_cancels(
        status_feed.clone(),
        signals.clone(),
        stop.clone(),
    ));
    tasks.track(&cancels_task);
    let wakeup_task = tokio::spawn(wakeup.clone().follow(status_feed.clone(), stop.clone()));
    tasks.track(&wakeup_task);
    let snapshots_task = tokio::spawn(store_pool_snapshots(
        store.clone(),
        controller.clone(),
        Duration::from_millis(250),
        stop.clone(),
    ));
    tasks.track(&snapshots_task);

    let membership = Membership {
        store: store.clone(),
        controller: controller.clone(),
        docker: docker.clone(),
        agents: agents.clone(),
        settings: MembershipSettings {
            heartbeat: Duration::from_secs(settings.executor.controller_heartbeat_seconds),
            grace: Duration::from_secs(settings.executor.controller_grace_seconds),
        },
    };
    let registration = ControllerRegistration {
        id: controller_id.clone(),
        docker_host,
        engine_version,
        architecture,
        capacity: settings.executor.concurrency as i32,
        events_queue: settings.message_queue.events_queue.clone(),
    };
    let incarnation = membership.register(&registration).await?;
    tracing::info!(%controller_id, incarnation, events_queue = %registration.events_queue, "controller registered");

    let mut adoptions = JoinSet::new();
    match reconcile_at_start(store, &docker, &controller, &mut adoptions).await {
        Ok(report) => tracing::info!(?report, "start-up reconcile done"),
        Err(error) => tracing::error!(%error, "start-up reconcile"),
    }
    let membership_task = tokio::spawn(membership.run(stop.clone()));
    tasks.track(&membership_task);

    let reconcile_task = tokio::spawn(run_periodic_reconcile(
        store.clone(),
        docker.clone(),
        controller.clone(),
        Duration::from_secs(settings.executor.reconcile_interval_seconds),
        Duration::from_secs(settings.executor.reconcile_grace_seconds),
        stop.clone(),
    ));
    tasks.track(&reconcile_task);
    let pool_task = {
        let controller = controller.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            controller
                .run_pool_maintenance(Duration::from_secs(1), stop)
                .await
        })
    };
    // Long-lived workers: their events (every controller-role server consumes the shared
    // queue; any may apply any worker's event) and the router that gives them executions.
    let workers_secret = workers_secret(store).await?;
    let workers_keys: attune_broker::EventKeys = Arc::new(move |agent_id: &str| {
        attune_protocol::signing::agent_event_key(&workers_secret, agent_id)
    });
    let workers_broker = Arc::new(
        Broker::connect_with_ca(
            &settings.message_queue.url,
            &settings.workers.events_queue,
            Duration::from_secs(30),
            self::broker_ca(&settings.message_queue)?,
        )
        .await?
        .with_publish_patience(Duration::from_secs(
            settings.message_queue.publish_patience_seconds,
        ))
        .with_event_keys(workers_keys),
    );
    let workers_events_task = {
        let store = store.clone();
        let signals = signals.clone();
        let workers_broker = workers_broker.clone();
        let lease = Duration::from_secs(settings.workers.heartbeat_seconds * 3);
        tokio::spawn(async move {
            workers_broker
                .run_events(64, move |event| {
                    let store = store.clone();
                    let signals = signals.clone();
                    async move {
                        attune_controller::events::apply_event(&store, &signals, lease, event).await
                    }
                })
                .await
        })
    };
    tasks.track(&workers_events_task);
    let router_task = tokio::spawn(attune_controller::workers::run_router(
        controller.clone(),
        attune_controller::workers::RouterSettings {
            queue_timeout: Duration::from_secs(settings.workers.queue_timeout_seconds),
            heartbeat: Duration::from_secs(settings.workers.heartbeat_seconds),
            ..Default::default()
        },
        status_feed.clone(),
        stop.clone(),
    ));
    tasks.track(&router_task);
    let scheduler_task = tokio::spawn(run_scheduler(
        store.clone(),
        controller,
        settings.executor.concurrency,
        wakeup,
        stop.clone(),
        adoptions,
        Duration::from_secs(settings.executor.shutdown_grace_seconds),
    ));
    tasks.track(&pool_task);
    tasks.track(&scheduler_task);
    Ok(ControllerRole {
        broker,
        workers_broker,
        scheduler: scheduler_task,
        pools: pool_task,
        membership: membership_task,
    })
}

/// The deployment's workers secret (event keys of workers derive from it), kept in Postgres
/// beside the controllers' under a name no controller id takes.
const WORKERS_SECRET_ID: &str = "attune-workers";

async fn workers_secret(store: &Store) -> Result<Vec<u8>, ServerError> {
    Ok(store
        .controller_agent_secret(WORKERS_SECRET_ID, AgentSecret::random().as_bytes())
        .await?)
}

/// Workers' broker accounts: per-agent accounts under the pseudo-controller `workers`, whose
/// events go to the exchange of `workers.events_queue`.
struct ServerWorkerAccounts {
    access: AgentAccess,
    ca_pem: Option<String>,
}

#[async_trait::async_trait]
impl attune_api::workers::WorkerAccounts for ServerWorkerAccounts {
    async fn issue(&self, agent_id: &str) -> Result<String, String> {
        match &self.access {
            AgentAccess::Shared(url) => Ok(url.clone()),
            AgentAccess::PerAgent(accounts) => accounts
                .issue(agent_id)
                .await
                .map_err(|error| error.to_string()),
        }
    }

    async fn revoke(&self, agent_id: &str) -> Result<(), String> {
        match &self.access {
            AgentAccess::Shared(_) => Ok(()),
            AgentAccess::PerAgent(accounts) => accounts
                .revoke(agent_id)
                .await
                .map_err(|error| error.to_string()),
        }
    }

    fn ca_pem(&self) -> Option<String> {
        self.ca_pem.clone()
    }
}

/// How this server's API enrolls workers.
async fn worker_enrollment(
    settings: &Settings,
    store: &Store,
) -> Result<attune_api::workers::WorkerEnrollmentSettings, ServerError> {
    let mut workers_settings = settings.clone();
    workers_settings.executor.controller_id = "workers".to_string();
    workers_settings.message_queue.events_queue = settings.workers.events_queue.clone();
    Ok(attune_api::workers::WorkerEnrollmentSettings {
        accounts: Arc::new(ServerWorkerAccounts {
            access: agent_access(&workers_settings)?,
            ca_pem: broker_ca(&settings.message_queue)?,
        }),
        secret: Arc::new(workers_secret(store).await?),
        heartbeat_seconds: settings.workers.heartbeat_seconds,
        events_queue: settings.workers.events_queue.clone(),
    })
}

/// The broker's CA certificates (`message_queue.tls_ca_file`), for the server and its agents.
fn broker_ca(settings: &MessageQueueSettings) -> Result<Option<String>, ServerError> {
    if settings.tls_ca_file.as_os_str().is_empty() {
        return Ok(None);
    }
    let file = settings.tls_ca_file.display();
    let pem = std::fs::read_to_string(&settings.tls_ca_file).map_err(|error| {
        ServerError::BrokerSettings(format!("read message_queue.tls_ca_file {file}: {error}"))
    })?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(ServerError::BrokerSettings(format!(
            "message_queue.tls_ca_file {file} holds no PEM certificate"
        )));
    }
    Ok(Some(pem))
}

/// How agents log in to the broker (`message_queue.agent_credentials`).
fn agent_access(settings: &Settings) -> Result<AgentAccess, ServerError> {
    let queue = &settings.message_queue;
    match queue.agent_credentials {
        AgentCredentials::Shared => {
            tracing::warn!(
                "message_queue.agent_credentials = shared: every agent logs in with the same \
                 broker account, so an action that obtains it can read or send any agent's \
                 messages; use per-agent (the default) with a broker that has the management plugin"
            );
            Ok(AgentAccess::Shared(queue.url_for_agents().to_string()))
        }
        AgentCredentials::PerAgent => Ok(AgentAccess::PerAgent(Box::new(
            AgentAccounts::new(
                &queue.management_url,
                &queue.url,
                queue.url_for_agents(),
                &settings.executor.controller_id,
                &queue.events_queue,
            )
            .map_err(|error| {
                ServerError::BrokerSettings(format!("set up per-agent broker accounts: {error}"))
            })?
            .with_patience(Duration::from_secs(queue.publish_patience_seconds)),
        ))),
    }
}

fn controller_settings(
    settings: &Settings,
    engine_is_local: bool,
    host_cpus: Option<f64>,
    agent_secret: AgentSecret,
    agent_mq_ca_pem: Option<String>,
) -> ControllerSettings {
    ControllerSettings {
        controller_id: settings.executor.controller_id.clone(),
        network: Some(settings.docker.network.clone()).filter(|network| !network.is_empty()),
        agent_mq_ca_pem,
        events_queue: settings.message_queue.events_queue.clone(),
        remove_containers: settings.docker.remove_containers,
        default_image: settings.docker.default_image.clone(),
        pids_limit: settings.docker.pids_limit,
        nofile_limit: settings.docker.nofile_limit,
        output_limit_bytes: settings.executor.output_limit_bytes,
        kill_grace_seconds: settings.executor.kill_grace_seconds,
        agent_start_timeout: Duration::from_secs(settings.executor.agent_start_timeout_seconds),
        report_grace: Duration::from_secs(3),
        agent_delivery: settings.docker.agent_delivery,
        engine_is_local,
        default_memory_bytes: settings.docker.default_memory_bytes(),
        host_cpus,
        policy: settings.docker.execution_policy(),
        timeout_slack: Duration::from_secs(5),
        lease: Duration::from_secs(settings.executor.lease_seconds),
        registry_auth: settings.docker.registry_auth.clone(),
        agent_secret,
    }
}

/// The image and capability allow-lists and the resource ceilings, as the API checks them at
/// submission.
struct ImageAdmission(ExecutionPolicy);

impl Admission for ImageAdmission {
    fn check_action_image(&self, container: Option<&serde_json::Value>) -> Result<(), String> {
        self.0
            .check_action_image(container)
            .map_err(|error| error.to_string())
    }

    fn check_action_limits(
        &self,
        action_ref: &str,
        container: Option<&serde_json::Value>,
    ) -> Result<(), String> {
        self.0
            .check_action_limits(action_ref, container)
            .map_err(|error| match error {
                // Names the action itself.
                attune_controller::limits::LimitError::OverCeiling { .. } => error.to_string(),
                other => format!("action {action_ref}: {other}"),
            })
    }
}
