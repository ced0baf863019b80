//! Long-lived workers: their enrollment, heartbeats and status, and the routing of requested
//! executions whose action names no image to them.
//!
//! Routing is shared state: [`Store::route_to_workers`] runs in one transaction that locks the
//! online workers' rows (so two servers routing at once serialize and never give a worker more
//! than its concurrency), counts what each runs, picks a batch of waiting executions with
//! `FOR UPDATE SKIP LOCKED`, lets the caller's matcher choose a worker for each, and marks the
//! chosen ones `scheduled` on their worker — a fixed number of statements per batch, whatever
//! the number of executions or workers. A routed execution has no controller (`controller_id`
//! NULL): no controller's restart, reconcile or take-over touches it; the router's sweeps end
//! it when its worker goes silent ([`Store::workers_gone_silent`]).

use crate::{finish_in, ExecutionRow, Store, StoreError, TransitionFields, EXECUTION_COLUMNS};
use attune_protocol::api::ExecutionStatus;
use attune_protocol::worker::{WorkerEnrollment, WorkerStatus, WorkerView};
use attune_protocol::{DetectedRuntime, FailureKind, Runtime};
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// A worker as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerRow {
    pub name: String,
    pub agent_id: String,
    pub status: WorkerStatus,
    pub runtimes: Vec<DetectedRuntime>,
    pub labels: BTreeMap<String, String>,
    pub concurrency: u32,
    pub agent_version: String,
    pub agent_sha256: String,
    pub image: Option<String>,
    pub registered_at: DateTime<Utc>,
    pub last_heartbeat: DateTime<Utc>,
    /// Executions it runs now (scheduled or running on it).
    pub running: u32,
}

impl WorkerRow {
    pub fn view(&self) -> WorkerView {
        WorkerView {
            name: self.name.clone(),
            agent_id: self.agent_id.clone(),
            status: self.status,
            runtimes: self.runtimes.clone(),
            labels: self.labels.clone(),
            running: self.running,
            concurrency: self.concurrency,
            last_heartbeat: self.last_heartbeat.to_rfc3339(),
            registered_at: self.registered_at.to_rfc3339(),
            agent_version: self.agent_version.clone(),
            agent_sha256: self.agent_sha256.clone(),
            image: self.image.clone(),
        }
    }
}

type WorkerTuple = (
    String,
    String,
    String,
    Value,
    Value,
    i32,
    String,
    String,
    Option<String>,
    DateTime<Utc>,
    DateTime<Utc>,
    i64,
);

/// (id, action ref, runtime, worker_selector, requested_at, waiting_reason, runtime_version,
/// required_worker_runtimes).
type QueuedTuple = (
    i64,
    String,
    Option<String>,
    Option<Value>,
    DateTime<Utc>,
    Option<String>,
    Option<String>,
    Vec<String>,
);

const WORKER_COLUMNS: &str = "w.name, w.agent_id, w.status, w.runtimes, w.labels, w.concurrency, \
    w.agent_version, w.agent_sha256, w.image, w.registered_at, w.last_heartbeat, \
    (SELECT count(*) FROM executions e WHERE e.worker_name = w.name \
        AND e.status IN ('scheduled', 'running'))";

fn decode_worker(row: WorkerTuple) -> Result<WorkerRow, StoreError> {
    let corrupt = |what: &str, error: &dyn std::fmt::Display| {
        StoreError::Corrupt(format!("worker {}: stored {what}: {error}", row.0))
    };
    Ok(WorkerRow {
        status: row
            .2
            .parse()
            .map_err(|error: String| corrupt("status", &error))?,
        runtimes: serde_json::from_value(row.3.clone())
            .map_err(|error| corrupt("runtimes", &error))?,
        labels: serde_json::from_value(row.4.clone()).map_err(|error| corrupt("labels", &error))?,
        concurrency: u32::try_from(row.5).map_err(|error| corrupt("concurrency", &error))?,
        running: u32::try_from(row.11).unwrap_or(u32::MAX),
        name: row.0,
        agent_id: row.1,
        agent_version: row.6,
        agent_sha256: row.7,
        image: row.8,
        registered_at: row.9,
        last_heartbeat: row.10,
    })
}

/// A requested execution waiting for a worker, with what its action needs.
#[derive(Debug, Clone)]
pub struct QueuedForWorker {
    pub execution_id: i64,
    pub action_ref: String,
    pub runtime: Runtime,
    /// The action's `worker_selector` labels (all must match).
    pub selector: BTreeMap<String, String>,
    /// The action's `runtime_version:` constraint.
    pub runtime_version: Option<String>,
    /// The action's `required_worker_runtimes:` (canonical names).
    pub required_runtimes: Vec<String>,
    pub requested_at: DateTime<Utc>,
    /// The reason stored at the previous pass, if any.
    pub waiting_reason: Option<String>,
}

/// What the matcher decided for one queued execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteDecision {
    /// Run it on the worker at this index of the list the matcher was given.
    Worker(usize),
    /// Keep it waiting, for this (visible) reason.
    Wait(String),
    /// End it `failed` (`no-worker`) with this reason: it waited past its queue timeout.
    GiveUp(String),
}

/// One execution routed to a worker by [`Store::route_to_workers`].
#[derive(Debug, Clone)]
pub struct Routed {
    pub execution: ExecutionRow,
    pub worker_name: String,
    pub agent_id: String,
}

/// What [`Store::route_to_workers`] did.
#[derive(Debug, Default)]
pub struct RoutingPass {
    pub routed: Vec<Routed>,
    pub waiting: usize,
    /// Executions ended `no-worker`.
    pub given_up: Vec<i64>,
}

impl Store {
    /// Records a worker's enrollment under `agent_id` (replacing an earlier one of the same
    /// name: a restarted worker); returns the agent id of the enrollment it replaced.
    pub async fn enroll_worker(
        &self,
        enrollment: &WorkerEnrollment,
        agent_id: &str,
        token_id: Option<i64>,
    ) -> Result<Option<String>, StoreError> {
        let mut transaction = self.pool.begin().await?;
        let previous: Option<String> =
            sqlx::query_scalar("SELECT agent_id FROM workers WHERE name = $1 FOR UPDATE")
                .bind(&enrollment.name)
                .fetch_optional(&mut *transaction)
                .await?;
        sqlx::query(
            "INSERT INTO workers (name, agent_id, status, runtimes, labels, concurrency,
                 agent_version, agent_sha256, image, token_id)
             VALUES ($1, $2, 'online', $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (name) DO UPDATE SET agent_id = EXCLUDED.agent_id, status = 'online',
                 runtimes = EXCLUDED.runtimes, labels = EXCLUDED.labels,
                 concurrency = EXCLUDED.concurrency, agent_version = EXCLUDED.agent_version,
                 agent_sha256 = EXCLUDED.agent_sha256, image = EXCLUDED.image,
                 token_id = EXCLUDED.token_id, registered_at = now(), last_heartbeat = now()",
        )
        .bind(&enrollment.name)
        .bind(agent_id)
        .bind(serde_json::to_value(&enrollment.runtimes).expect("runtimes serialize"))
        .bind(serde_json::to_value(&enrollment.labels).expect("labels serialize"))
        .bind(i32::try_from(enrollment.concurrency).unwrap_or(i32::MAX))
        .bind(&enrollment.agent_version)
        .bind(&enrollment.agent_sha256)
        .bind(&enrollment.image)
        .bind(token_id)
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(previous)
    }

    /// A worker's heartbeat (or any event of its agent): it is alive. A worker marked offline
    /// for silence comes back online; a draining one stays draining.
    pub async fn worker_heartbeat(&self, agent_id: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE workers SET last_heartbeat = now(),
                 status = CASE WHEN status = 'draining' THEN 'draining' ELSE 'online' END
             WHERE agent_id = $1",
        )
        .bind(agent_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A worker's agent deregistered: it is offline.
    pub async fn worker_deregistered(&self, agent_id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE workers SET status = 'offline' WHERE agent_id = $1")
            .bind(agent_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every worker, by name.
    pub async fn list_workers(&self) -> Result<Vec<WorkerRow>, StoreError> {
        let rows: Vec<WorkerTuple> = sqlx::query_as(&format!(
            "SELECT {WORKER_COLUMNS} FROM workers w ORDER BY w.name"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(decode_worker).collect()
    }

    /// One worker.
    pub async fn get_worker(&self, name: &str) -> Result<WorkerRow, StoreError> {
        let row: Option<WorkerTuple> = sqlx::query_as(&format!(
            "SELECT {WORKER_COLUMNS} FROM workers w WHERE w.name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        decode_worker(row.ok_or_else(|| StoreError::NotFound(format!("worker {name}")))?)
    }

    /// Marks offline the online or draining workers silent for longer than `silence`.
    /// Returns their names.
    pub async fn workers_gone_silent(&self, silence: Duration) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "UPDATE workers SET status = 'offline'
             WHERE status <> 'offline' AND last_heartbeat < now() - make_interval(secs => $1)
             RETURNING name",
        )
        .bind(silence.as_secs_f64())
        .fetch_all(&self.pool)
        .await?)
    }

    /// Ends `failed` with kind `worker-lost` every live execution routed to a worker that is
    /// offline, or to an agent id that is no longer its worker's (a re-enrolled worker), and
    /// those that ran past `overdue` beyond their action's timeout without a report
    /// (`lease-expired`); idempotent ones are requeued once. Returns the execution ids ended.
    pub async fn end_lost_worker_executions(
        &self,
        overdue: Duration,
    ) -> Result<Vec<i64>, StoreError> {
        let mut transaction = self.pool.begin().await?;
        let lost: Vec<(i64, String, String, bool)> = sqlx::query_as(
            "SELECT e.id, e.worker_name, COALESCE(w.status, 'offline'),
                    (e.started_at IS NOT NULL AND e.started_at + make_interval(secs =>
                        COALESCE(a.timeout_seconds, 0) + $1) < now())
                        OR (e.started_at IS NULL AND e.scheduled_at + make_interval(secs => $1) < now())
             FROM executions e
             LEFT JOIN workers w ON w.name = e.worker_name
             LEFT JOIN actions a ON a.id = e.action_id
             WHERE e.worker_name IS NOT NULL AND e.status IN ('scheduled', 'running')
               AND (w.name IS NULL OR w.status = 'offline' OR w.agent_id <> e.agent_id
                    OR (e.started_at IS NOT NULL AND e.started_at + make_interval(secs =>
                        COALESCE(a.timeout_seconds, 0) + $1) < now())
                    OR (e.started_at IS NULL AND e.scheduled_at + make_interval(secs => $1) < now()))
             ORDER BY e.id FOR UPDATE OF e SKIP LOCKED",
        )
        .bind(overdue.as_secs_f64())
        .fetch_all(&mut *transaction)
        .await?;
        let mut ended = Vec::new();
        for (execution_id, worker, status, overdue_now) in lost {
            let fields = if status == "offline" || !overdue_now {
                TransitionFields::error(
                    FailureKind::WorkerLost,
                    format!(
                        "worker {worker} went offline (it stopped sending heartbeats, exited, or enrolled again) while it had this execution"
                    ),
                )
            } else {
                TransitionFields::error(
                    FailureKind::LeaseExpired,
                    format!(
                        "worker {worker} did not report this execution within {}s past its timeout",
                        overdue.as_secs()
                    ),
                )
            };
            if finish_in(
                &mut transaction,
                execution_id,
                ExecutionStatus::Failed,
                fields,
                true,
            )
            .await?
            .is_some()
            {
                ended.push(execution_id);
            }
        }
        transaction.commit().await?;
        Ok(ended)
    }

    /// A pack's stored archive and its sha256, by the pack's ref (for workers' downloads).
    pub async fn pack_archive_by_ref(
        &self,
        pack_ref: &str,
    ) -> Result<(Vec<u8>, String), StoreError> {
        sqlx::query_as("SELECT archive, archive_sha256 FROM packs WHERE ref = $1")
            .bind(pack_ref)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("pack {pack_ref}")))
    }

    /// Live executions on workers whose cancel was requested: (execution id, agent id).
    pub async fn worker_cancels(&self) -> Result<Vec<(i64, String)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT id, agent_id FROM executions
             WHERE worker_name IS NOT NULL AND cancel_requested AND agent_id IS NOT NULL
               AND status IN ('scheduled', 'running')",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// One routing pass (see the module docs): up to `limit` requested executions whose action
    /// names no image — those not looked at yet first, then the waiting ones, each oldest
    /// first (so a backlog no worker can take never hides new work from the router) — each given to `decide` with the online workers (their
    /// `running` counts include what this pass already gave them). Executions routed are
    /// `scheduled` on their worker; the others keep (or get) their waiting reason, or end
    /// `no-worker` when `decide` gives up on them.
    pub async fn route_to_workers<F>(
        &self,
        limit: i64,
        mut decide: F,
    ) -> Result<RoutingPass, StoreError>
    where
        F: FnMut(&[WorkerRow], &QueuedForWorker) -> RouteDecision,
    {
        let mut transaction = self.pool.begin().await?;
        let locked: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM workers WHERE status = 'online' ORDER BY name FOR UPDATE",
        )
        .fetch_all(&mut *transaction)
        .await?;
        let rows: Vec<WorkerTuple> = sqlx::query_as(&format!(
            "SELECT {WORKER_COLUMNS} FROM workers w WHERE w.name = ANY($1) ORDER BY w.name"
        ))
        .bind(&locked)
        .fetch_all(&mut *transaction)
        .await?;
        let mut workers = rows
            .into_iter()
            .map(decode_worker)
            .collect::<Result<Vec<_>, _>>()?;
        let queued: Vec<QueuedTuple> = sqlx::query_as(
            "SELECT e.id, e.action_ref, a.runtime, a.worker_selector, e.requested_at,
                        e.waiting_reason, a.runtime_version, a.required_worker_runtimes
                 FROM executions e JOIN actions a ON a.id = e.action_id
                 WHERE e.status = 'requested'
                   AND (a.container IS NULL OR a.container = 'null'::jsonb)
                 ORDER BY (e.waiting_reason IS NOT NULL), e.id
                 FOR UPDATE OF e SKIP LOCKED LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&mut *transaction)
        .await?;
        let mut pass = RoutingPass::default();
        let mut chosen: Vec<(i64, String, String)> = Vec::new();
        let mut reasons: Vec<(i64, String)> = Vec::new();
        for (
            execution_id,
            action_ref,
            runtime,
            selector,
            requested_at,
            waiting_reason,
            runtime_version,
            required_runtimes,
        ) in queued
        {
            let runtime = match runtime.as_deref().map(str::parse::<Runtime>) {
                Some(Ok(runtime)) => runtime,
                _ => {
                    return Err(StoreError::Corrupt(format!(
                        "action {action_ref}: stored runtime {runtime:?}"
                    )))
                }
            };
            let selector = match selector {
                None | Some(Value::Null) => BTreeMap::new(),
                Some(value) => serde_json::from_value(value).map_err(|error| {
                    StoreError::Corrupt(format!(
                        "action {action_ref}: stored worker_selector: {error}"
                    ))
                })?,
            };
            let queued = QueuedForWorker {
                execution_id,
                action_ref,
                runtime,
                selector,
                runtime_version,
                required_runtimes,
                requested_at,
                waiting_reason,
            };
            match decide(&workers, &queued) {
                RouteDecision::Worker(index) => {
                    let worker = &mut workers[index];
                    worker.running += 1;
                    chosen.push((execution_id, worker.name.clone(), worker.agent_id.clone()));
                }
                RouteDecision::Wait(reason) => {
                    pass.waiting += 1;
                    if queued.waiting_reason.as_deref() != Some(reason.as_str()) {
                        reasons.push((execution_id, reason));
                    }
                }
                RouteDecision::GiveUp(reason) => {
                    let fields = TransitionFields::error(FailureKind::NoWorker, reason);
                    if finish_in(
                        &mut transaction,
                        execution_id,
                        ExecutionStatus::Failed,
                        fields,
                        false,
                    )
                    .await?
                    .is_some()
                    {
                        pass.given_up.push(execution_id);
                    }
                }
            }
        }
        if !reasons.is_empty() {
            let (ids, texts): (Vec<i64>, Vec<String>) = reasons.into_iter().unzip();
            sqlx::query(
                "UPDATE executions e SET waiting_reason = r.reason
                 FROM unnest($1::bigint[], $2::text[]) AS r(id, reason) WHERE e.id = r.id",
            )
            .bind(&ids)
            .bind(&texts)
            .execute(&mut *transaction)
            .await?;
        }
        if !chosen.is_empty() {
            let ids: Vec<i64> = chosen.iter().map(|(id, _, _)| *id).collect();
            let names: Vec<String> = chosen.iter().map(|(_, name, _)| name.clone()).collect();
            let agents: Vec<String> = chosen.iter().map(|(_, _, agent)| agent.clone()).collect();
            let rows: Vec<ExecutionRow> = sqlx::query_as(&format!(
                "UPDATE executions e SET status = 'scheduled', scheduled_at = now(),
                     placed_at = now(), worker_name = r.worker, agent_id = r.agent,
                     controller_id = NULL, waiting_reason = NULL,
                     lease_epoch = e.lease_epoch + 1
                 FROM unnest($1::bigint[], $2::text[], $3::text[]) AS r(id, worker, agent)
                 WHERE e.id = r.id AND e.status = 'requested'
                 RETURNING {}",
                EXECUTION_COLUMNS
                    .split(", ")
                    .map(|column| format!("e.{}", column.trim()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .bind(&ids)
            .bind(&names)
            .bind(&agents)
            .fetch_all(&mut *transaction)
            .await?;
            for execution in rows {
                let (_, worker_name, agent_id) = chosen
                    .iter()
                    .find(|(id, _, _)| *id == execution.id)
                    .cloned()
                    .expect("a routed row was chosen");
                pass.routed.push(Routed {
                    execution,
                    worker_name,
                    agent_id,
                });
            }
        }
        transaction.commit().await?;
        Ok(pass)
    }
}
