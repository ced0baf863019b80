//! Routing executions to long-lived workers, and supervising them through the workers'
//! heartbeats.
//!
//! Every controller-role server runs [`run_router`]; the routing itself is a Postgres
//! transaction ([`attune_store::Store::route_to_workers`]), so several servers route
//! consistently. [`choose_worker`] is the policy: an online worker whose runtimes include the
//! action's (alias-aware: `sh`/`bash` are shell, `python3` python, `nodejs`/`node.js` node,
//! `builtin`/`standalone` native), whose labels include every label of the action's
//! `worker_selector`, and that runs fewer executions than its concurrency; the least loaded
//! (running ÷ concurrency) first. An execution no worker can take waits with a visible reason
//! until its queue timeout, then ends `failed` with kind `no-worker`.
//!
//! A pass runs every 250 ms and at once when an execution is requested or ends anywhere (the
//! status feed's notifications). Each pass also marks offline the workers silent for three heartbeats and ends what they ran
//! `worker-lost` (idempotent actions requeued once), ends `lease-expired` what a worker keeps
//! past its timeout without a report, and sends cancels to workers.

use crate::Controller;
use attune_protocol::api::ExecutionStatus;
use attune_protocol::worker::WorkerStatus;
use attune_protocol::{AgentCommand, FailureKind};
use attune_store::status_feed::StatusFeed;
use attune_store::workers::{QueuedForWorker, RouteDecision, WorkerRow};
use attune_store::{Store, TransitionFields};
use chrono::{DateTime, Utc};
use std::collections::HashSet;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// How the router works.
#[derive(Debug, Clone)]
pub struct RouterSettings {
    /// How long an execution waits for a capable worker before it ends `no-worker`.
    pub queue_timeout: Duration,
    /// The workers' heartbeat interval; three silent ones make a worker offline.
    pub heartbeat: Duration,
    /// How often a pass runs.
    pub interval: Duration,
    /// How long past its action's timeout a worker may take to report (and how long a routed
    /// execution may wait to start) before it ends `lease-expired`.
    pub overdue: Duration,
    /// Executions looked at per pass.
    pub batch: i64,
}

impl Default for RouterSettings {
    fn default() -> Self {
        RouterSettings {
            queue_timeout: Duration::from_secs(300),
            heartbeat: Duration::from_secs(5),
            interval: Duration::from_millis(250),
            overdue: Duration::from_secs(60),
            batch: 500,
        }
    }
}

/// Whether `worker` can run `queued` at all (ignoring its load): online, with the action's
/// runtime (satisfying its `runtime_version`), every required runtime, and every selector label.
pub fn capable(worker: &WorkerRow, queued: &QueuedForWorker) -> bool {
    let has = |wanted: attune_protocol::Runtime| {
        worker.runtimes.iter().filter(move |runtime| {
            runtime
                .name
                .parse::<attune_protocol::Runtime>()
                .is_ok_and(|name| name == wanted)
        })
    };
    worker.status == WorkerStatus::Online
        && has(queued.runtime).any(|runtime| match &queued.runtime_version {
            Some(constraint) => {
                attune_pack::runtime_version::satisfies(constraint, runtime.version.as_deref())
            }
            None => true,
        })
        && queued.required_runtimes.iter().all(|required| {
            required
                .parse::<attune_protocol::Runtime>()
                .is_ok_and(|required| has(required).next().is_some())
        })
        && queued
            .selector
            .iter()
            .all(|(key, value)| worker.labels.get(key) == Some(value))
}

/// What the router does with one queued execution (see the module docs).
pub fn choose_worker(
    workers: &[WorkerRow],
    queued: &QueuedForWorker,
    now: DateTime<Utc>,
    queue_timeout: Duration,
) -> RouteDecision {
    let capable: Vec<usize> = (0..workers.len())
        .filter(|&index| capable(&workers[index], queued))
        .collect();
    let free = capable
        .iter()
        .copied()
        .filter(|&index| workers[index].running < workers[index].concurrency)
        .min_by(|&a, &b| {
            let load = |index: usize| {
                f64::from(workers[index].running) / f64::from(workers[index].concurrency.max(1))
            };
            load(a)
                .total_cmp(&load(b))
                .then(workers[a].running.cmp(&workers[b].running))
                .then(workers[a].name.cmp(&workers[b].name))
        });
    if let Some(index) = free {
        return RouteDecision::Worker(index);
    }
    let mut needs = format!("runtime {}", queued.runtime);
    if let Some(constraint) = &queued.runtime_version {
        needs.push_str(&format!(" {constraint}"));
    }
    if !queued.required_runtimes.is_empty() {
        needs.push_str(&format!(
            " and runtimes {}",
            queued.required_runtimes.join(",")
        ));
    }
    if !queued.selector.is_empty() {
        let labels: Vec<String> = queued
            .selector
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        needs.push_str(&format!(" and labels {}", labels.join(",")));
    }
    let reason = if capable.is_empty() {
        format!("waiting for a worker with {needs}")
    } else {
        format!(
            "waiting for a free worker with {needs} ({} capable, all busy)",
            capable.len()
        )
    };
    let waited = (now - queued.requested_at).to_std().unwrap_or_default();
    if waited >= queue_timeout {
        return RouteDecision::GiveUp(format!(
            "no worker took it within its queue timeout of {}s: {reason}",
            queue_timeout.as_secs()
        ));
    }
    RouteDecision::Wait(reason)
}

/// Routes and supervises worker executions until `stop` (see the module docs): a pass every
/// `settings.interval`, and at once when any server stores a requested execution (new work)
/// or a terminal one (a worker's slot may be free) — `feed` carries Postgres's notifications;
/// notifications that arrive during a pass are folded into the next one.
pub async fn run_router(
    controller: Controller,
    settings: RouterSettings,
    feed: StatusFeed,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(settings.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut changes = Some(feed.subscribe());
    let mut memory = RouterMemory::default();
    loop {
        let woken = async {
            match changes.as_mut() {
                Some(receiver) => loop {
                    match receiver.recv().await {
                        Ok(change)
                            if change.status == ExecutionStatus::Requested
                                || change.status.is_terminal() =>
                        {
                            return true
                        }
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Lagged(_)) => return true,
                        Err(broadcast::error::RecvError::Closed) => return false,
                    }
                },
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
            open = woken => {
                if !open {
                    changes = None;
                }
            }
        }
        // Fold what else arrived into this pass.
        if let Some(receiver) = changes.as_mut() {
            while !matches!(
                receiver.try_recv(),
                Err(broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed)
            ) {}
        }
        if let Err(error) = pass(&controller, &settings, &mut memory).await {
            tracing::warn!(%error, "worker routing pass");
        }
    }
}

/// What a router remembers between passes (only to avoid repeating itself; losing it is
/// harmless).
#[derive(Debug, Default)]
pub struct RouterMemory {
    /// Executions whose cancel was sent to their worker.
    cancels_sent: HashSet<i64>,
    /// Workers' agents whose job queue this router declared (a job published before the worker
    /// declared its queue would otherwise be dropped).
    queues_declared: HashSet<String>,
}

/// One pass: silent workers, lost executions, routing, cancels.
pub async fn pass(
    controller: &Controller,
    settings: &RouterSettings,
    memory: &mut RouterMemory,
) -> Result<(), attune_store::StoreError> {
    let store: &Store = controller.store();
    for name in store.workers_gone_silent(settings.heartbeat * 3).await? {
        tracing::warn!(worker = %name, "worker stopped sending heartbeats: offline");
    }
    for execution_id in store.end_lost_worker_executions(settings.overdue).await? {
        tracing::warn!(
            execution_id,
            "worker execution ended: its worker is gone or silent"
        );
    }
    let now = store.now().await?;
    let routing = store
        .route_to_workers(settings.batch, |workers, queued| {
            choose_worker(workers, queued, now, settings.queue_timeout)
        })
        .await?;
    for execution_id in &routing.given_up {
        tracing::info!(
            execution_id,
            "no worker took the execution within its queue timeout"
        );
    }
    for routed in routing.routed {
        let execution_id = routed.execution.id;
        let job = match routed.execution.action_id {
            Some(action_id) => match store.get_action_by_id(action_id).await {
                Ok(action) => controller.worker_job(&routed.execution, &action),
                Err(error) => Err((FailureKind::ActionMissing, error.to_string())),
            },
            None => Err((
                FailureKind::ActionMissing,
                "the action no longer exists".into(),
            )),
        };
        if !memory.queues_declared.contains(&routed.agent_id) {
            match controller
                .agents()
                .declare_agent_queue(&routed.agent_id)
                .await
            {
                Ok(()) => {
                    memory.queues_declared.insert(routed.agent_id.clone());
                }
                Err(error) => {
                    tracing::warn!(agent_id = %routed.agent_id, %error, "declare a worker's job queue")
                }
            }
        }
        let sent = match job {
            Ok(job) => controller
                .agents()
                .send_command(&routed.agent_id, &AgentCommand::Job(job))
                .await
                .map_err(|error| {
                    (
                        FailureKind::MessageQueue,
                        format!("queue job for worker {}: {error}", routed.worker_name),
                    )
                }),
            Err(failure) => Err(failure),
        };
        match sent {
            Ok(()) => {
                tracing::info!(execution_id, worker = %routed.worker_name, "execution routed to a worker")
            }
            Err((kind, reason)) => {
                tracing::error!(execution_id, worker = %routed.worker_name, %reason, "could not hand the execution to its worker");
                let fields = TransitionFields::error(kind, reason);
                store
                    .finish(execution_id, ExecutionStatus::Failed, fields, false)
                    .await?;
            }
        }
    }
    for (execution_id, agent_id) in store.worker_cancels().await? {
        if memory.cancels_sent.insert(execution_id) {
            let cancel = AgentCommand::Cancel { execution_id };
            if let Err(error) = controller.agents().send_command(&agent_id, &cancel).await {
                tracing::warn!(execution_id, %error, "send cancel to worker");
                memory.cancels_sent.remove(&execution_id);
            }
        }
    }
    if memory.cancels_sent.len() > 10_000 {
        memory.cancels_sent.clear();
    }
    if memory.queues_declared.len() > 10_000 {
        memory.queues_declared.clear();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use attune_protocol::{DetectedRuntime, Runtime};
    use std::collections::BTreeMap;

    fn worker(
        name: &str,
        runtimes: &[&str],
        labels: &[(&str, &str)],
        running: u32,
        concurrency: u32,
    ) -> WorkerRow {
        WorkerRow {
            name: name.into(),
            agent_id: format!("worker-{name}"),
            status: WorkerStatus::Online,
            runtimes: runtimes
                .iter()
                .map(|runtime| DetectedRuntime {
                    name: runtime.to_string(),
                    version: None,
                    path: format!("/usr/bin/{runtime}"),
                })
                .collect(),
            labels: labels
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
            concurrency,
            agent_version: "0.1.0".into(),
            agent_sha256: String::new(),
            image: None,
            registered_at: Utc::now(),
            last_heartbeat: Utc::now(),
            running,
        }
    }

    fn queued(runtime: Runtime, selector: &[(&str, &str)], waited_seconds: i64) -> QueuedForWorker {
        QueuedForWorker {
            execution_id: 1,
            action_ref: "p.a".into(),
            runtime,
            selector: selector
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect::<BTreeMap<_, _>>(),
            requested_at: Utc::now() - chrono::Duration::seconds(waited_seconds),
            waiting_reason: None,
            runtime_version: None,
            required_runtimes: Vec::new(),
        }
    }

    #[test]
    fn version_constraints_and_required_runtimes_narrow_the_choice() {
        let mut old = worker("old", &["python"], &[], 0, 2);
        old.runtimes[0].version = Some("3.10.9".into());
        let mut new = worker("new", &["python", "node"], &[], 1, 2);
        new.runtimes[0].version = Some("3.12.1".into());
        let workers = [old, new];
        let mut wants = queued(Runtime::Python, &[], 0);
        wants.runtime_version = Some(">=3.11,<4".into());
        // The less loaded worker is too old: the newer one is chosen.
        assert_eq!(
            choose_worker(&workers, &wants, Utc::now(), TIMEOUT),
            RouteDecision::Worker(1)
        );
        let mut with_node = queued(Runtime::Python, &[], 0);
        with_node.required_runtimes = vec!["node".into()];
        assert_eq!(
            choose_worker(&workers, &with_node, Utc::now(), TIMEOUT),
            RouteDecision::Worker(1)
        );
        let mut ruby_too = queued(Runtime::Python, &[], 0);
        ruby_too.runtime_version = Some(">=3.13".into());
        ruby_too.required_runtimes = vec!["ruby".into()];
        assert_eq!(
            choose_worker(&workers, &ruby_too, Utc::now(), TIMEOUT),
            RouteDecision::Wait(
                "waiting for a worker with runtime python >=3.13 and runtimes ruby".into()
            )
        );
    }

    const TIMEOUT: Duration = Duration::from_secs(300);

    #[test]
    fn runtimes_match_by_alias_and_selectors_by_every_label() {
        let workers = [
            worker("py", &["python3"], &[], 0, 2),
            worker("sh", &["bash"], &[("zone", "eu")], 0, 2),
            worker("js", &["node.js"], &[], 0, 2),
        ];
        let decide = |runtime, selector: &[(&str, &str)]| {
            choose_worker(&workers, &queued(runtime, selector, 0), Utc::now(), TIMEOUT)
        };
        assert_eq!(decide(Runtime::Python, &[]), RouteDecision::Worker(0));
        assert_eq!(
            decide(Runtime::Shell, &[("zone", "eu")]),
            RouteDecision::Worker(1)
        );
        assert_eq!(decide(Runtime::Node, &[]), RouteDecision::Worker(2));
        assert_eq!(
            decide(Runtime::Shell, &[("zone", "us")]),
            RouteDecision::Wait(
                "waiting for a worker with runtime shell and labels zone=us".into()
            )
        );
        assert_eq!(
            decide(Runtime::Ruby, &[]),
            RouteDecision::Wait("waiting for a worker with runtime ruby".into())
        );
    }

    #[test]
    fn the_least_loaded_capable_worker_wins_and_a_full_one_is_never_chosen() {
        let workers = [
            worker("a", &["shell"], &[], 3, 4),
            worker("b", &["shell"], &[], 1, 4),
            worker("c", &["shell"], &[], 1, 1),
        ];
        let decision = choose_worker(
            &workers,
            &queued(Runtime::Shell, &[], 0),
            Utc::now(),
            TIMEOUT,
        );
        assert_eq!(decision, RouteDecision::Worker(1));
        let full = [worker("a", &["shell"], &[], 2, 2)];
        assert_eq!(
            choose_worker(&full, &queued(Runtime::Shell, &[], 0), Utc::now(), TIMEOUT),
            RouteDecision::Wait(
                "waiting for a free worker with runtime shell (1 capable, all busy)".into()
            )
        );
    }

    #[test]
    fn an_offline_worker_is_not_capable_and_the_queue_timeout_gives_up() {
        let mut gone = worker("a", &["shell"], &[], 0, 2);
        gone.status = WorkerStatus::Offline;
        let decision = choose_worker(
            &[gone],
            &queued(Runtime::Shell, &[], 301),
            Utc::now(),
            TIMEOUT,
        );
        assert_eq!(
            decision,
            RouteDecision::GiveUp(
                "no worker took it within its queue timeout of 300s: waiting for a worker with runtime shell".into()
            )
        );
    }
}
