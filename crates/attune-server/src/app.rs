//! Wires the server together: database, broker, Docker engine, controller, container events
//! tracker, scheduler, periodic reconcile, events consumer and HTTP API; runs until a shutdown
//! future completes, then drains. Every background task is aborted when [`run`] is dropped, so
//! an aborted server (a simulated crash) leaves nothing running behind it.

use crate::config::Settings;
use attune_api::{AppState, ControlPlane};
use attune_broker::{AgentChannel, Broker, BrokerError};
use attune_controller::scheduler::{
    reconcile_at_start, run_periodic_reconcile, run_scheduler, SchedulerWakeup,
};
use attune_controller::signals::ExecutionSignals;
use attune_controller::{AgentBinary, AgentBinaryError, Controller, ControllerSettings};
use attune_docker::bollard_engine::BollardEngine;
use attune_docker::{DockerError, DockerOps};
use attune_protocol::api::{ContainerView, PoolView};
use attune_protocol::AgentCommand;
use attune_store::{Store, StoreError};
use std::future::Future;
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
}

/// Runs the whole server on `listener` until `shutdown` resolves.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let agent = AgentBinary::load(&settings.docker.agent_binary)?;
    tracing::info!(path = %settings.docker.agent_binary.display(), sha256 = %agent.sha256, architecture = %agent.architecture, "agent binary loaded");
    let store = Store::connect(&settings.database.url, settings.database.max_connections).await?;
    let broker = Arc::new(
        Broker::connect(
            &settings.message_queue.url,
            &settings.message_queue.events_queue,
            Duration::from_secs(30),
        )
        .await?,
    );
    let engine = BollardEngine::connect(settings.docker.host.as_deref()).await?;
    let engine_is_local = attune_controller::delivery::engine_is_local(engine.docker_host());
    let docker: Arc<dyn DockerOps> = Arc::new(engine);
    let host_cpus = match docker.engine_info().await {
        Ok(info) => {
            tracing::info!(version = %info.server_version, api = %info.api_version, cpus = info.cpus, local = engine_is_local, "docker engine connected");
            Some(info.cpus as f64).filter(|cpus| *cpus > 0.0)
        }
        Err(error) => {
            tracing::warn!(%error, "docker engine info");
            None
        }
    };

    let signals = ExecutionSignals::default();
    let wakeup = SchedulerWakeup::default();
    let agents: Arc<dyn AgentChannel> = broker.clone();
    let controller = Controller::new(
        store.clone(),
        docker.clone(),
        agents.clone(),
        signals.clone(),
        controller_settings(&settings, engine_is_local, host_cpus),
        agent,
    );
    let mut tasks = AbortOnDrop::default();
    let stop = CancellationToken::new();
    // Follow container events before anything starts, so no die/oom is missed.
    let tracker_task = tokio::spawn(controller.lifecycle().clone().run(
        docker.clone(),
        settings.executor.controller_id.clone(),
        stop.clone(),
    ));
    tasks.track(&tracker_task);

    // Reports that arrived while no server ran must reach the supervisions adopted below.
    let consumer = broker.consume_events(64).await?;
    let events_task = {
        let store = store.clone();
        let signals = signals.clone();
        tokio::spawn(attune_broker::apply_deliveries(consumer, move |event| {
            let store = store.clone();
            let signals = signals.clone();
            async move { attune_controller::events::apply_event(&store, &signals, event).await }
        }))
    };
    tasks.track(&events_task);
    let status_feed = attune_store::status_feed::StatusFeed::default();
    let status_feed_task = tokio::spawn(status_feed.clone().run(store.clone()));
    tasks.track(&status_feed_task);

    let mut adoptions = JoinSet::new();
    match reconcile_at_start(&store, &docker, &controller, &mut adoptions).await {
        Ok(report) => tracing::info!(?report, "start-up reconcile done"),
        Err(error) => tracing::error!(%error, "start-up reconcile"),
    }

    let reconcile_task = tokio::spawn(run_periodic_reconcile(
        store.clone(),
        docker.clone(),
        settings.executor.controller_id.clone(),
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
    let scheduler_task = tokio::spawn(run_scheduler(
        store.clone(),
        controller.clone(),
        settings.executor.concurrency,
        wakeup.clone(),
        stop.clone(),
        adoptions,
    ));
    tasks.track(&pool_task);
    tasks.track(&scheduler_task);

    let control = LocalControlPlane {
        docker,
        agents,
        broker: broker.clone(),
        signals,
        wakeup,
        controller,
    };
    let state = AppState {
        store,
        max_pack_bytes: settings.server.max_pack_bytes,
        control: Arc::new(control),
        status_feed,
        validators: Default::default(),
    };
    let address = listener.local_addr()?;
    tracing::info!(%address, "attune-server listening");
    let http_stop = stop.clone();
    let served = attune_api::serve(listener, state, async move {
        tokio::select! {
            _ = shutdown => {}
            _ = http_stop.cancelled() => {}
        }
    })
    .await;
    tracing::info!("shutting down: no new executions; waiting for running ones");
    stop.cancel();
    if let Err(error) = scheduler_task.await {
        tracing::error!(%error, "scheduler task");
    }
    if let Err(error) = pool_task.await {
        tracing::error!(%error, "pool maintenance task");
    }
    broker.close().await;
    drop(tasks);
    served?;
    Ok(())
}

fn controller_settings(
    settings: &Settings,
    engine_is_local: bool,
    host_cpus: Option<f64>,
) -> ControllerSettings {
    ControllerSettings {
        controller_id: settings.executor.controller_id.clone(),
        network: Some(settings.docker.network.clone()).filter(|network| !network.is_empty()),
        agent_mq_url: settings.message_queue.url_for_agents().to_string(),
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
    }
}

/// The controller of this process, as the API sees it.
struct LocalControlPlane {
    docker: Arc<dyn DockerOps>,
    agents: Arc<dyn AgentChannel>,
    broker: Arc<Broker>,
    signals: ExecutionSignals,
    wakeup: SchedulerWakeup,
    controller: Controller,
}

#[async_trait::async_trait]
impl ControlPlane for LocalControlPlane {
    async fn checks(&self) -> Vec<(&'static str, Result<(), String>)> {
        let message_queue = if self.broker.is_connected() {
            Ok(())
        } else {
            Err("not connected".to_string())
        };
        let docker = self.docker.ping().await.map_err(|error| error.to_string());
        vec![("message_queue", message_queue), ("docker", docker)]
    }

    fn details(&self) -> serde_json::Value {
        // Informational: supervisors fall back to waiting on containers while the stream is down.
        let tracker = self.controller.lifecycle();
        serde_json::json!({
            "following": tracker.is_following(),
            "connections": tracker.connections(),
            "events_received": tracker.events_received(),
            "last_event_connection": tracker.last_event_connection(),
        })
    }

    fn pool_views(&self) -> Vec<PoolView> {
        self.controller.pool_views()
    }

    fn pool_container_views(&self) -> Vec<ContainerView> {
        self.controller.pool_container_views()
    }

    fn check_action_image(&self, container: Option<&serde_json::Value>) -> Result<(), String> {
        self.controller
            .settings()
            .policy
            .check_action_image(container)
            .map_err(|error| error.to_string())
    }

    fn execution_requested(&self) {
        self.wakeup.wake();
    }

    async fn cancel_requested(&self, execution_id: i64, agent_id: Option<&str>) {
        if let Some(agent_id) = agent_id {
            if let Err(error) = self
                .agents
                .send_command(agent_id, &AgentCommand::Cancel { execution_id })
                .await
            {
                tracing::error!(execution_id, %error, "send cancel to agent");
            }
        }
        self.signals.cancel(execution_id);
    }
}
