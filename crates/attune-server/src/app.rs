//! Wires the server together: database, broker, Docker engine, controller, scheduler, events
//! consumer and HTTP API; runs until a shutdown future completes, then drains.

use crate::api::{router, AppState};
use crate::broker::{AgentChannel, Broker, BrokerError};
use crate::config::Settings;
use crate::controller::{AgentBinary, AgentBinaryError, Controller, ControllerSettings};
use crate::db::{Store, StoreError};
use crate::docker::bollard_engine::BollardEngine;
use crate::docker::{DockerError, DockerOps};
use crate::scheduler::{reconcile_at_start, run_scheduler, SchedulerWakeup};
use crate::signals::ExecutionSignals;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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
    let broker = Arc::new(Broker::connect(
        &settings.message_queue.url,
        &settings.message_queue.events_queue,
        Duration::from_secs(30),
    ).await?);
    let docker: Arc<dyn DockerOps> =
        Arc::new(BollardEngine::connect(settings.docker.host.as_deref()).await?);
    match docker.engine_info().await {
        Ok(info) => tracing::info!(version = %info.server_version, api = %info.api_version, "docker engine connected"),
        Err(error) => tracing::warn!(%error, "docker engine info"),
    }

    let signals = ExecutionSignals::default();
    let wakeup = SchedulerWakeup::default();
    let agents: Arc<dyn AgentChannel> = broker.clone();
    let controller = Controller::new(
        store.clone(),
        docker.clone(),
        agents.clone(),
        signals.clone(),
        controller_settings(&settings),
        agent,
    );

    match reconcile_at_start(&store, &docker, &controller).await {
        Ok(report) => tracing::info!(?report, "start-up reconcile done"),
        Err(error) => tracing::error!(%error, "start-up reconcile"),
    }

    let stop = CancellationToken::new();
    let consumer = broker.consume_events(64).await?;
    let events_task = tokio::spawn(crate::events::consume_events(
        consumer,
        store.clone(),
        signals.clone(),
    ));
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
    ));

    let state = AppState {
        store,
        docker,
        agents,
        broker_health: broker.clone(),
        signals,
        wakeup,
        max_pack_bytes: settings.server.max_pack_bytes,
        controller,
    };
    let address = listener.local_addr()?;
    tracing::info!(%address, "attune-server listening");
    let http_stop = stop.clone();
    let serve = axum::serve(listener, router(state)).with_graceful_shutdown(async move {
        tokio::select! {
            _ = shutdown => {}
            _ = http_stop.cancelled() => {}
        }
    });
    let served = serve.await;
    tracing::info!("shutting down: no new executions; waiting for running ones");
    stop.cancel();
    if let Err(error) = scheduler_task.await {
        tracing::error!(%error, "scheduler task");
    }
    if let Err(error) = pool_task.await {
        tracing::error!(%error, "pool maintenance task");
    }
    broker.close().await;
    events_task.abort();
    served?;
    Ok(())
}

fn controller_settings(settings: &Settings) -> ControllerSettings {
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
    }
}
