//! The scheduler: claims requested executions from Postgres and hands each to the controller,
//! never running more than the configured concurrency at once. Also the start-up reconcile that
//! makes a restarted server adopt or clean up what its predecessor left, and the periodic sweep
//! that removes containers whose execution ended or is unknown.

use crate::execution::Controller;
use attune_docker::labels::{
    LABEL_AGENT_ID, LABEL_AGENT_SHA256, LABEL_CONTROLLER, LABEL_EXECUTION, LABEL_MANAGED,
};
use attune_docker::DockerOps;
use attune_protocol::api::ExecutionStatus;
use attune_protocol::FailureKind;
use attune_store::status_feed::StatusFeed;
use attune_store::{ExecutionRow, Fence, Store, TransitionFields};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Wakes the scheduler when an execution is requested.
#[derive(Clone, Default)]
pub struct SchedulerWakeup(Arc<Notify>);

impl SchedulerWakeup {
    pub fn wake(&self) {
        self.0.notify_one();
    }

    /// Wakes the scheduler whenever any server stores a requested execution (or the feed
    /// reconnects, after which a notification may have been missed), until `stop`.
    pub async fn follow(self, feed: StatusFeed, stop: CancellationToken) {
        let mut changes = feed.subscribe();
        let mut connections = feed.connections();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = connections.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    self.wake();
                }
                change = changes.recv() => match change {
                    Ok(change) if change.status == ExecutionStatus::Requested => self.wake(),
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => self.wake(),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }
}

/// Claims and launches executions until `shutdown`; then waits up to `shutdown_grace` for
/// running ones (and the `adopted` supervisions from the start-up reconcile) to end, and
/// abandons the rest (each ends `abandoned`, an idempotent one is requeued, its container is
/// removed). Dropping the returned future aborts every execution task it owns.
pub async fn run_scheduler(
    store: Store,
    controller: Controller,
    concurrency: usize,
    wakeup: SchedulerWakeup,
    shutdown: CancellationToken,
    adopted: JoinSet<()>,
    shutdown_grace: Duration,
) {
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut tasks = adopted;
    let mut paused = false;
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        // Nothing is claimed while the broker is unreachable: requested executions wait in the
        // database (where another controller may claim them) until it is back.
        let can_launch = controller.can_launch();
        if can_launch == paused {
            paused = !can_launch;
            if paused {
                tracing::warn!(
                    "message queue unreachable: no executions are claimed until it is back"
                );
            } else {
                tracing::info!("message queue reachable again: claiming executions");
            }
        }
        let free = permits.available_permits();
        if free > 0 && can_launch {
            let controller_id = &controller.settings().controller_id;
            let imageless = controller.settings().default_image.is_some();
            match store
                .claim_requested(controller_id, free as i64, imageless)
                .await
            {
                Ok(claimed) => {
                    let claimed_any = !claimed.is_empty();
                    for execution in claimed {
                        let permit = permits
                            .clone()
                            .acquire_owned()
                            .await
                            .expect("scheduler semaphore is never closed");
                        let controller = controller.clone();
                        tracing::debug!(execution_id = execution.id, "execution scheduled");
                        tasks.spawn(async move {
                            controller.run_execution(execution).await;
                            drop(permit);
                        });
                    }
                    if claimed_any {
                        continue;
                    }
                }
                Err(error) => tracing::error!(%error, "claim requested executions"),
            }
        }
        while tasks.try_join_next().is_some() {}
        tokio::select! {
            _ = wakeup.0.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.cancelled() => break,
            _ = async { permits.clone().acquire_owned().await.map(drop) }, if free == 0 => {}
        }
    }
    tracing::info!(
        running = tasks.len(),
        grace_seconds = shutdown_grace.as_secs(),
        "scheduler stopping; waiting for running executions"
    );
    let drained = tokio::time::timeout(shutdown_grace, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            running = tasks.len(),
            "shutdown grace passed; abandoning the executions still running"
        );
        controller.abandon_all();
        while tasks.join_next().await.is_some() {}
    }
}

/// What the start-up reconcile did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub adopted: usize,
    pub removed: usize,
    pub failed: usize,
}

/// Compares managed containers with live executions: adopts started containers whose execution
/// is still live (the supervisions are spawned into `adoptions`), removes the rest, and fails
/// live executions whose container is gone or never started. A per-execution container names
/// its execution in a label; a warm pool container (`attune.pool`) carries none, so a busy one
/// is matched by its id against the executions' `container_id` and adopted the same way (it
/// is removed when that execution ends: the pools start empty), and idle ones are removed.
/// Start the events consumer first, so reports sent while no server was running reach the
/// adopted supervisions.
pub async fn reconcile_at_start(
    store: &Store,
    docker: &Arc<dyn DockerOps>,
    controller: &Controller,
    adoptions: &mut JoinSet<()>,
) -> Result<ReconcileReport, String> {
    let mut report = ReconcileReport::default();
    let controller_id = controller.settings().controller_id.clone();
    let containers = docker
        .list_containers(&[(LABEL_MANAGED, "true"), (LABEL_CONTROLLER, &controller_id)])
        .await
        .map_err(|error| format!("list managed containers: {error}"))?;
    let live = store
        .live_executions_of(&controller_id)
        .await
        .map_err(|error| format!("list live executions: {error}"))?;
    let live_by_container: HashMap<String, i64> = live
        .iter()
        .filter_map(|row| Some((row.container_id.clone()?, row.id)))
        .collect();
    let mut live_by_id: HashMap<i64, _> = live.into_iter().map(|row| (row.id, row)).collect();
    for container in containers {
        let pooled = crate::execution::pool::is_pool_container(&container.labels);
        let execution_id = if pooled {
            live_by_container.get(&container.id).copied()
        } else {
            container
                .labels
                .get(LABEL_EXECUTION)
                .and_then(|id| id.parse::<i64>().ok())
        };
        let agent_id = container.labels.get(LABEL_AGENT_ID).cloned();
        match (execution_id.and_then(|id| live_by_id.remove(&id)), agent_id) {
            // Started containers are adopted even when they already stopped: the agent's report
            // may be waiting in the events queue, and the supervisor classifies the exit if not.
            (Some(execution), Some(agent_id)) if container.state != "created" => {
                tracing::info!(execution_id = execution.id, container_id = %container.id, pooled, "adopting container");
                let controller = controller.clone();
                let container_id = container.id.clone();
                let labelled_sha256 = container.labels.get(LABEL_AGENT_SHA256).cloned();
                adoptions.spawn(async move {
                    controller
                        .adopt(execution, container_id, agent_id, labelled_sha256)
                        .await;
                });
                report.adopted += 1;
            }
            (execution, _) => {
                if let Some(execution) = execution {
                    // Its container never started: the execution cannot continue.
                    fail_orphaned(store, &execution).await;
                    report.failed += 1;
                }
                if pooled {
                    tracing::info!(container_id = %container.id, "removing warm container left by the previous run");
                } else {
                    tracing::info!(container_id = %container.id, "removing orphaned container");
                }
                if let Err(error) = docker.remove_container(&container.id).await {
                    tracing::error!(container_id = %container.id, %error, "remove orphaned container");
                } else {
                    report.removed += 1;
                    if let Some(agent_id) = container.labels.get(LABEL_AGENT_ID) {
                        if let Err(error) = controller.agents().forget_agent(agent_id).await {
                            tracing::warn!(%agent_id, %error, "delete the queue and broker account of an orphaned container's agent");
                        }
                    }
                }
            }
        }
    }
    for execution in live_by_id.into_values() {
        fail_orphaned(store, &execution).await;
        report.failed += 1;
    }
    Ok(report)
}

/// Ends an execution whose container did not survive the restart; an idempotent one is
/// requeued once (its action may not have run to its end).
async fn fail_orphaned(store: &Store, execution: &ExecutionRow) {
    let mut fields = TransitionFields::error(
        FailureKind::ControllerRestarted,
        "the controller restarted and the execution's container was not running any more",
    );
    fields.fence = Fence::of(execution);
    match store
        .finish(execution.id, ExecutionStatus::Failed, fields, true)
        .await
    {
        Ok(Some((_, Some(retry_id)))) => {
            tracing::info!(
                execution_id = execution.id,
                retry_id,
                "orphaned idempotent execution requeued"
            )
        }
        Ok(_) => {}
        Err(error) => {
            tracing::error!(execution_id = execution.id, %error, "fail orphaned execution")
        }
    }
}

/// What one periodic sweep did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub removed: usize,
    /// Agent ids of the containers that stay (their broker accounts are in use).
    pub agents_in_use: HashSet<String>,
    /// Agent ids of the containers removed (their queues and accounts go too).
    pub agents_removed: Vec<String>,
    /// Containers to remove that are still inside the creation grace period.
    pub too_young: usize,
}

/// Removes this controller's containers whose execution is terminal or unknown (helpers that
/// fill volumes included), and warm pool containers its pools do not know (`known_warm`: the
/// ones whose create response was lost, or left by a previous run), except those created less
/// than `grace` ago: a container whose create response is still in flight must not vanish.
pub async fn sweep_containers(
    store: &Store,
    docker: &Arc<dyn DockerOps>,
    controller_id: &str,
    known_warm: &HashSet<String>,
    grace: Duration,
) -> Result<SweepReport, String> {
    let containers = docker
        .list_containers(&[(LABEL_MANAGED, "true"), (LABEL_CONTROLLER, controller_id)])
        .await
        .map_err(|error| format!("list managed containers: {error}"))?;
    let live: HashSet<i64> = store
        .live_executions_of(controller_id)
        .await
        .map_err(|error| format!("list live executions: {error}"))?
        .into_iter()
        .map(|row| row.id)
        .collect();
    let now = chrono::Utc::now().timestamp();
    let mut report = SweepReport::default();
    for container in containers {
        let execution_id = container
            .labels
            .get(LABEL_EXECUTION)
            .and_then(|id| id.parse::<i64>().ok());
        if crate::execution::pool::is_pool_container(&container.labels) {
            if known_warm.contains(&container.id) {
                report
                    .agents_in_use
                    .extend(container.labels.get(LABEL_AGENT_ID).cloned());
                continue;
            }
        } else if execution_id.is_some_and(|id| live.contains(&id)) {
            report
                .agents_in_use
                .extend(container.labels.get(LABEL_AGENT_ID).cloned());
            continue;
        }
        if now - container.created_unix < grace.as_secs() as i64 {
            report.too_young += 1;
            report
                .agents_in_use
                .extend(container.labels.get(LABEL_AGENT_ID).cloned());
            continue;
        }
        tracing::info!(container_id = %container.id, execution_id, "removing container whose execution ended or is unknown");
        match docker.remove_container(&container.id).await {
            Ok(()) => {
                report.removed += 1;
                report
                    .agents_removed
                    .extend(container.labels.get(LABEL_AGENT_ID).cloned());
            }
            Err(error) => {
                tracing::error!(container_id = %container.id, %error, "remove stale container")
            }
        }
    }
    Ok(report)
}

/// Sweeps every `interval` until `stop` (the first sweep after one interval: the start-up
/// reconcile has just run).
pub async fn run_periodic_reconcile(
    store: Store,
    docker: Arc<dyn DockerOps>,
    controller: Controller,
    interval: Duration,
    grace: Duration,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let controller_id = &controller.settings().controller_id;
        let known_warm: HashSet<String> = controller
            .pool_container_views()
            .into_iter()
            .map(|view| view.container_id)
            .collect();
        match sweep_containers(&store, &docker, controller_id, &known_warm, grace).await {
            Ok(report) => {
                if report.removed > 0 {
                    tracing::info!(
                        removed = report.removed,
                        too_young = report.too_young,
                        "periodic reconcile"
                    );
                }
                for agent_id in &report.agents_removed {
                    if let Err(error) = controller.agents().forget_agent(agent_id).await {
                        tracing::warn!(%agent_id, %error, "delete the queue and broker account of a removed container's agent");
                    }
                }
                // Accounts of agents whose container is gone (made by an earlier run).
                match controller
                    .agents()
                    .sweep_agent_accounts(&report.agents_in_use)
                    .await
                {
                    Ok(0) => {}
                    Ok(removed) => {
                        tracing::info!(removed, "broker accounts of gone agents removed")
                    }
                    Err(error) => tracing::warn!(%error, "sweep broker accounts"),
                }
            }
            Err(error) => tracing::warn!(%error, "periodic reconcile"),
        }
    }
}
