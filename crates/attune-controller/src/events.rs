//! Applies agents' events to the database: registration, running, log chunks, final reports.
//!
//! Each event is acked only after its effect is stored; redelivered events are harmless because
//! status changes are conditional and log chunks are keyed by sequence number.

use crate::signals::ExecutionSignals;
use attune_protocol::api::ExecutionStatus;
use attune_protocol::{AgentEvent, JobOutcome, JobReport};
use attune_store::{Store, StoreError, TransitionFields};
use std::time::Duration;

/// Applies one event. Returns an error only when it should be retried (database trouble).
/// `lease` is how long a running execution stays alive after its agent's last word.
pub async fn apply_event(
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
                agent_id: Some(agent_id),
                lease: Some(lease),
                ..Default::default()
            };
            if store
                .transition(execution_id, ExecutionStatus::Running, fields)
                .await?
                .is_some()
            {
                tracing::info!(execution_id, "execution running");
            }
            signals.running(execution_id);
        }
        AgentEvent::Log {
            execution_id,
            seq,
            stream,
            data,
            ..
        } => {
            store.append_log(execution_id, seq, stream, &data).await?;
        }
        AgentEvent::Finished(report) => {
            let execution_id = report.execution_id;
            let status = apply_report(store, report).await?;
            signals.terminal(execution_id, status);
        }
        AgentEvent::Heartbeat { agent_id, running } => {
            store.renew_leases(&running, lease).await?;
            for execution_id in running {
                signals.heartbeat(execution_id);
            }
            store.touch_agent(&agent_id, false).await?
        }
        AgentEvent::Deregister { agent_id, .. } => store.touch_agent(&agent_id, true).await?,
    }
    Ok(())
}

/// Stores a final report; returns the execution's terminal status (as stored).
async fn apply_report(store: &Store, report: JobReport) -> Result<ExecutionStatus, StoreError> {
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
        ..Default::default()
    };
    store
        .transition(execution_id, ExecutionStatus::Running, running)
        .await?;
    let fields = TransitionFields {
        agent_id: Some(report.agent_id),
        exit_code: report.exit_code,
        signal: report.signal,
        duration_ms: Some(report.duration_ms as i64),
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
            Ok(status)
        }
        None => {
            // Already terminal (a redelivery, or the controller ended it first): keep what is stored.
            let current = store.get_execution(execution_id).await?;
            tracing::debug!(execution_id, status = %current.status, "report for an execution that already ended");
            Ok(current.status())
        }
    }
}
