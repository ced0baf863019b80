//! A controller's membership in the fleet that shares one database: it registers itself in
//! the `controllers` table, heartbeats with its health checks and a snapshot of its warm pools,
//! and takes over the live executions of any controller whose heartbeats stopped for longer
//! than the grace. It also turns cancel notifications (from any server's API) into the
//! in-process signal of the supervision that owns the execution, if it is this controller's.

use crate::signals::ExecutionSignals;
use crate::Controller;
use attune_broker::AgentChannel;
use attune_docker::DockerOps;
use attune_store::status_feed::StatusFeed;
use attune_store::{ControllerRegistration, Store, StoreError};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How a controller takes part in the fleet.
#[derive(Debug, Clone)]
pub struct MembershipSettings {
    /// How often it heartbeats (and looks for lost controllers).
    pub heartbeat: Duration,
    /// How long another controller may stay silent before its executions are taken over.
    pub grace: Duration,
}

/// A controller's heartbeat, health and take-over loop.
pub struct Membership {
    pub store: Store,
    pub controller: Controller,
    pub docker: Arc<dyn DockerOps>,
    pub agents: Arc<dyn AgentChannel>,
    pub settings: MembershipSettings,
}

impl Membership {
    /// Registers this controller (before it adopts or claims anything) and stores its first
    /// heartbeat, so the API reports it ready as soon as it is.
    pub async fn register(&self, registration: &ControllerRegistration) -> Result<i64, StoreError> {
        let incarnation = self.store.register_controller(registration).await?;
        self.beat().await?;
        Ok(incarnation)
    }

    /// Heartbeats until `stop`, then marks the controller stopped.
    pub async fn run(self, stop: CancellationToken) {
        let controller_id = self.controller.settings().controller_id.clone();
        let mut ticks = tokio::time::interval(self.settings.heartbeat);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = ticks.tick() => {}
            }
            if let Err(error) = self.beat().await {
                tracing::warn!(%error, "controller heartbeat");
                continue;
            }
            match self
                .store
                .take_over_lost_controllers(&controller_id, self.settings.grace)
                .await
            {
                Ok(taken) => {
                    for taken in taken {
                        tracing::warn!(
                            execution_id = taken.execution_id,
                            lost_controller = %taken.lost_controller_id,
                            retry_id = ?taken.retry_id,
                            "took over an execution of a lost controller"
                        );
                    }
                }
                Err(error) => tracing::error!(%error, "take over lost controllers"),
            }
        }
        if let Err(error) = self.store.controller_stopped(&controller_id).await {
            tracing::warn!(%error, "mark controller stopped");
        }
    }

    /// One heartbeat: health checks and details.
    async fn beat(&self) -> Result<(), StoreError> {
        let controller_id = &self.controller.settings().controller_id;
        let (checks, details) = self.health().await;
        self.store
            .controller_heartbeat(controller_id, &checks, &details)
            .await
    }

    async fn health(&self) -> (Value, Value) {
        let message_queue = if self.agents.is_connected() {
            json!("ok")
        } else {
            json!("not connected")
        };
        let docker = match self.docker.ping().await {
            Ok(()) => json!("ok"),
            Err(error) => json!(error.to_string()),
        };
        let tracker = self.controller.lifecycle();
        let events = self.agents.event_counts();
        let details = json!({
            "docker_events": {
                "following": tracker.is_following(),
                "connections": tracker.connections(),
                "events_received": tracker.events_received(),
                "last_event_connection": tracker.last_event_connection(),
            },
            "agent_events": {
                "applied": events.applied,
                "redelivered": events.redelivered,
                "dead_lettered": events.dead_lettered,
                "unknown": events.unknown,
                "malformed": events.malformed,
                "held": events.held,
                "unauthenticated": events.unauthenticated,
                "from_another_agent": crate::events::foreign_events(),
            },
        });
        (
            json!({"message_queue": message_queue, "docker": docker}),
            details,
        )
    }
}

/// Stores the controller's pools and their containers whenever they change (looked at every
/// `interval`, written only when different), so every server's API shows them.
pub async fn store_pool_snapshots(
    store: Store,
    controller: Controller,
    interval: Duration,
    stop: CancellationToken,
) {
    let controller_id = controller.settings().controller_id.clone();
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stored: Option<(
        Vec<attune_protocol::api::PoolView>,
        Vec<attune_protocol::api::ContainerView>,
    )> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let current = (controller.pool_views(), controller.pool_container_views());
        if stored.as_ref() == Some(&current) {
            continue;
        }
        match store
            .put_pool_snapshot(&controller_id, &current.0, &current.1)
            .await
        {
            Ok(()) => stored = Some(current),
            Err(error) => tracing::warn!(%error, "store pool snapshot"),
        }
    }
}

/// Forwards cancel notifications to the supervisions of this process until `stop` (an
/// execution supervised elsewhere is not in `signals` and is ignored here). A cancel missed
/// while the feed was reconnecting is still seen by the supervision's periodic database check.
pub async fn follow_cancels(feed: StatusFeed, signals: ExecutionSignals, stop: CancellationToken) {
    let mut cancels = feed.subscribe_cancels();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            cancel = cancels.recv() => match cancel {
                Ok(execution_id) => signals.cancel(execution_id),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "cancel notifications lagged; supervisions re-read the database");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}
