//! Applies agents' events to the database: registration, running, log chunks, final reports.
//!
//! Each event is acked only after its effect is stored; redelivered events are harmless because
//! status changes are conditional and log chunks are keyed by sequence number.
//!
//! An event the store refuses is redelivered by the events queue up to its delivery limit
//! (attune-broker). At the last attempt a refused `running` or `finished` event ends its
//! execution `failed` with kind `report-rejected` and the store's error as the reason, and the
//! event goes to the dead-letter queue; so does a report that does not parse. While the
//! database does not answer at all, the event is held and tried again instead (it is not the
//! event's fault).

use crate::signals::ExecutionSignals;
use attune_broker::{ApplyError, EventDelivery};
use attune_protocol::api::ExecutionStatus;
use attune_protocol::{AgentEvent, ExecutionId, FailureKind, JobOutcome, JobReport};
use attune_store::{Store, StoreError, TransitionFields};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Why an event was not applied; [`ApplyError::is_transient`] when the database did not answer.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct EventError {
    #[source]
    pub source: StoreError,
    transient: bool,
}

impl EventError {
    /// Classifies a store error: transient only when the database is unreachable (and still
    /// does not answer a ping, so a statement that breaks its own connection is not mistaken
    /// for an outage and held forever).
    async fn classify(store: &Store, source: StoreError) -> EventError {
        let transient = source.is_unreachable() && store.ping().await.is_err();
        EventError { source, transient }
    }
}

impl ApplyError for EventError {
    fn is_transient(&self) -> bool {
        self.transient
    }
}

/// Applies one delivered event (an [`AgentEvent`] converts into a first delivery). Returns an
/// error when the event should be delivered again (or, at its last attempt, dead-lettered).
/// `lease` is how long a running execution stays alive after its agent's last word.
pub async fn apply_event(
    store: &Store,
    signals: &ExecutionSignals,
    lease: Duration,
    delivery: impl Into<EventDelivery>,
) -> Result<(), EventError> {
    match delivery.into() {
        EventDelivery::Apply {
            event,
            attempt,
            last_attempt,
        } => {
            let rejection = rejection_summary(&event);
            // In flight until classified: an unreachable database takes a while to tell.
            let applying = signals.applying();
            let Err(error) = apply_known(store, signals, lease, event).await else {
                signals.set_events_held(false);
                return Ok(());
            };
            let error = EventError::classify(store, error).await;
            signals.set_events_held(error.transient);
            drop(applying);
            if let (false, true, Some((execution_id, summary))) =
                (error.transient, last_attempt, rejection)
            {
                let reason = format!(
                    "{summary} could not be stored after {attempt} attempts and was moved to the events dead-letter queue: {}",
                    error.source
                );
                reject(store, signals, execution_id, reason).await?;
            }
            Err(error)
        }
        EventDelivery::Unreadable {
            event_type,
            execution_id,
            error,
        } => {
            if matches!(event_type.as_str(), "finished" | "running") {
                let reason = format!(
                    "the agent's {event_type} event could not be read and was moved to the events dead-letter queue: {error}"
                );
                reject(store, signals, execution_id, reason).await?;
            } else {
                tracing::warn!(execution_id, %event_type, %error, "unreadable agent event dropped into the dead-letter queue");
            }
            Ok(())
        }
    }
}

/// For the events whose loss leaves their execution unable to end as it did (`running`,
/// `finished`): the execution and how to describe the event in its failure reason.
fn rejection_summary(event: &AgentEvent) -> Option<(ExecutionId, String)> {
    match event {
        AgentEvent::Finished(report) => {
            let mut summary = format!(
                "the agent's report ({}",
                serde_json::to_value(report.outcome)
                    .ok()
                    .and_then(|value| value.as_str().map(str::to_string))
                    .unwrap_or_default()
            );
            if let Some(code) = report.exit_code {
                summary.push_str(&format!(", exit code {code}"));
            }
            summary.push(')');
            Some((report.execution_id, summary))
        }
        AgentEvent::Running { execution_id, .. } => {
            Some((*execution_id, "the agent's running event".to_string()))
        }
        _ => None,
    }
}

/// Ends an execution whose report could not be stored: `failed`, kind `report-rejected`.
async fn reject(
    store: &Store,
    signals: &ExecutionSignals,
    execution_id: ExecutionId,
    reason: String,
) -> Result<(), EventError> {
    let fields = TransitionFields::error(FailureKind::ReportRejected, reason);
    match store
        .transition(execution_id, ExecutionStatus::Failed, fields)
        .await
    {
        Ok(Some(row)) => {
            tracing::error!(execution_id, error = ?row.error, "execution failed: its agent's report could not be stored");
            signals.terminal(execution_id, ExecutionStatus::Failed);
            Ok(())
        }
        Ok(None) => {
            tracing::warn!(
                execution_id,
                "an event of this execution was dead-lettered after it had ended"
            );
            Ok(())
        }
        Err(StoreError::NotFound(_)) => Ok(()),
        Err(error) => {
            let error = EventError::classify(store, error).await;
            tracing::error!(execution_id, %error, "record that the agent's report was rejected");
            Err(error)
        }
    }
}

/// Events refused because their agent is not the one the execution is placed on, since start.
static FOREIGN_EVENTS: AtomicU64 = AtomicU64::new(0);

/// How many events were refused for coming from an agent their execution is not placed on.
pub fn foreign_events() -> u64 {
    FOREIGN_EVENTS.load(Ordering::Relaxed)
}

/// Counts and logs an event about an execution from an agent it is not placed on (dropped).
fn foreign_event(execution_id: ExecutionId, agent_id: &str, event_type: &str) {
    let count = FOREIGN_EVENTS.fetch_add(1, Ordering::Relaxed) + 1;
    tracing::warn!(execution_id, %agent_id, event_type, foreign_events = count, "event from an agent the execution is not placed on: dropped");
}

/// Whether the execution is placed on `agent_id` (or gone); counts and logs it when not.
async fn placed_on(
    store: &Store,
    execution_id: ExecutionId,
    agent_id: &str,
) -> Result<bool, StoreError> {
    match store.get_execution(execution_id).await {
        Ok(row)
            if row
                .agent_id
                .as_deref()
                .is_some_and(|placed| placed != agent_id) =>
        {
            foreign_event(execution_id, agent_id, "running");
            Ok(false)
        }
        Ok(_) | Err(StoreError::NotFound(_)) => Ok(true),
        Err(error) => Err(error),
    }
}

/// Applies one decoded event.
async fn apply_known(
    store: &Store,
    signals: &ExecutionSignals,
    lease: Duration,
    event: AgentEvent,
) -> Result<(), StoreError> {
    match event {
        AgentEvent::Register(registration) => {
            tracing::debug!(agent_id = %registration.agent_id, "agent registered");
            store.record_agent(&registration).await?;
            signals.registered(&registration.agent_id, &registration.agent_sha256);
        }
        AgentEvent::Running {
            agent_id,
            execution_id,
            ..
        } => {
            let fields = TransitionFields {
                agent_id: Some(agent_id.clone()),
                from_agent: Some(agent_id.clone()),
                lease: Some(lease),
                ..Default::default()
            };
            if store
                .transition(execution_id, ExecutionStatus::Running, fields)
                .await?
                .is_some()
            {
                tracing::info!(execution_id, "execution running");
            } else if !placed_on(store, execution_id, &agent_id).await? {
                return Ok(());
            }
            signals.running(execution_id);
        }
        AgentEvent::Log {
            agent_id,
            execution_id,
            seq,
            stream,
            data,
        } => {
            if !store
                .append_log(execution_id, &agent_id, seq, stream, &data)
                .await?
            {
                foreign_event(execution_id, &agent_id, "log");
            }
        }
        AgentEvent::Finished(report) => {
            let execution_id = report.execution_id;
            if let Some(status) = apply_report(store, report).await? {
                signals.terminal(execution_id, status);
            }
        }
        AgentEvent::Heartbeat { agent_id, running } => {
            let renewed = store.renew_leases(&agent_id, &running, lease).await?;
            if renewed.len() < running.len() {
                tracing::debug!(%agent_id, listed = running.len(), renewed = renewed.len(), "heartbeat lists executions not running on this agent");
            }
            for execution_id in renewed {
                signals.heartbeat(execution_id);
            }
            store.touch_agent(&agent_id, false).await?;
            // A long-lived worker's heartbeat keeps it online (no-op for other agents).
            store.worker_heartbeat(&agent_id).await?
        }
        AgentEvent::Deregister { agent_id, .. } => {
            store.touch_agent(&agent_id, true).await?;
            store.worker_deregistered(&agent_id).await?
        }
    }
    Ok(())
}

/// Stores a final report; returns the execution's terminal status (as stored), or `None` when
/// the execution does not exist (any more): there is nothing to apply the report to.
async fn apply_report(
    store: &Store,
    report: JobReport,
) -> Result<Option<ExecutionStatus>, StoreError> {
    let execution_id = report.execution_id;
    let status = match report.outcome {
        JobOutcome::Succeeded => ExecutionStatus::Succeeded,
        JobOutcome::Failed => ExecutionStatus::Failed,
        JobOutcome::Timeout => ExecutionStatus::Timeout,
        JobOutcome::Canceled => ExecutionStatus::Canceled,
        JobOutcome::Abandoned => ExecutionStatus::Abandoned,
    };
    // A report implies the process ran: if `running` was not stored yet (its message was
    // redelivered behind this one), record that step first so the state machine holds.
    let running = TransitionFields {
        agent_id: Some(report.agent_id.clone()),
        from_agent: Some(report.agent_id.clone()),
        ..Default::default()
    };
    store
        .transition(execution_id, ExecutionStatus::Running, running)
        .await?;
    let agent_id = report.agent_id.clone();
    let fields = TransitionFields {
        from_agent: Some(report.agent_id.clone()),
        agent_id: Some(report.agent_id),
        exit_code: report.exit_code,
        signal: report.signal,
        duration_ms: Some(i64::try_from(report.duration_ms).unwrap_or(i64::MAX)),
        stdout: Some(report.stdout),
        stderr: Some(report.stderr),
        stdout_truncated: Some(report.stdout_truncated),
        stderr_truncated: Some(report.stderr_truncated),
        result: report.result,
        error: report.error,
        failure_kind: report.failure_kind,
        ..Default::default()
    };
    match store.transition(execution_id, status, fields).await? {
        Some(row) => {
            tracing::info!(execution_id, status = %status, exit_code = ?row.exit_code, "execution finished");
            Ok(Some(status))
        }
        None => match store.get_execution(execution_id).await {
            // Already terminal (a redelivery, or the controller ended it first): keep what is stored.
            Ok(current) if !current.status().is_terminal() => {
                // Not terminal, so the write was refused for its agent: another agent's word.
                foreign_event(execution_id, &agent_id, "finished");
                Ok(None)
            }
            Ok(current) => {
                tracing::debug!(execution_id, status = %current.status, "report for an execution that already ended");
                Ok(Some(current.status()))
            }
            Err(StoreError::NotFound(_)) => {
                tracing::warn!(
                    execution_id,
                    "report for an execution that does not exist; dropped"
                );
                Ok(None)
            }
            Err(error) => Err(error),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rejected_report_is_described_with_what_the_agent_said() {
        let report = JobReport {
            agent_id: "a".into(),
            execution_id: 4,
            outcome: JobOutcome::Succeeded,
            failure_kind: None,
            exit_code: Some(0),
            signal: None,
            stdout: String::new(),
            stderr: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            result: None,
            error: None,
            duration_ms: 3,
        };
        assert_eq!(
            rejection_summary(&AgentEvent::Finished(report)),
            Some((4, "the agent's report (succeeded, exit code 0)".to_string()))
        );
        let log = AgentEvent::Log {
            agent_id: "a".into(),
            execution_id: 4,
            seq: 0,
            stream: attune_protocol::OutputStream::Stdout,
            data: String::new(),
        };
        assert_eq!(rejection_summary(&log), None, "a lost chunk fails nothing");
    }
}
