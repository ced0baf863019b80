//! `attune execution get|list|logs|cancel`, and following an execution to its end.

use super::{write_chunk, write_json, write_text, Context, EXIT_FAILURE, EXIT_SUCCESS};
use crate::client::ExecutionFilter;
use crate::format::{elapsed, format_duration, format_table, format_timestamp};
use crate::output::Terminal;
use attune_protocol::api::{ExecutionStatus, ExecutionView, List};
use chrono::Utc;
use std::io::Write;
use std::time::Duration;
use tokio::time::Instant;

/// How following an execution ended.
pub(super) enum Followed {
    /// The execution reached a terminal status.
    Finished {
        execution: ExecutionView,
        chunks_seen: bool,
    },
    /// The wait deadline passed first.
    GaveUp { execution: ExecutionView },
}

/// Polls the execution until it is terminal (or `timeout` passes), printing new log chunks
/// when `stream_logs`. Chunks are fetched after each status check, so once the status is
/// terminal the last fetch holds all remaining output.
pub(super) async fn follow(
    context: &mut Context<'_>,
    execution_id: i64,
    stream_logs: bool,
    timeout: Option<Duration>,
) -> anyhow::Result<Followed> {
    let deadline = timeout.map(|timeout| Instant::now() + timeout);
    let mut after_seq: Option<u64> = None;
    let mut chunks_seen = false;
    loop {
        let execution = context.client.get_execution(execution_id).await?;
        if stream_logs {
            let chunks = context
                .client
                .execution_logs(execution_id, after_seq)
                .await?;
            for chunk in chunks {
                if after_seq.is_some_and(|last| chunk.seq <= last) {
                    continue;
                }
                write_chunk(context.terminal, &chunk)?;
                after_seq = Some(chunk.seq);
                chunks_seen = true;
            }
        }
        if execution.status.is_terminal() {
            return Ok(Followed::Finished {
                execution,
                chunks_seen,
            });
        }
        let mut pause = context.poll_interval;
        if let Some(deadline) = deadline {
            let now = Instant::now();
            if now >= deadline {
                return Ok(Followed::GaveUp { execution });
            }
            pause = pause.min(deadline - now);
        }
        // The server answers as soon as the execution ends (or after `pause`); an older server
        // answers at once, so the rest of the pause is slept here.
        let started = Instant::now();
        let waited = context.client.wait_execution(execution_id, pause).await?;
        if !waited.status.is_terminal() {
            if let Some(rest) = pause.checked_sub(started.elapsed()) {
                tokio::time::sleep(rest).await;
            }
        }
    }
}

/// Prints how a finished execution ended: its result on success, its captured output when
/// no live chunks were shown, and the failure reason on stderr. Returns the exit code.
pub(super) fn report_outcome(
    terminal: &mut Terminal,
    execution: &ExecutionView,
    chunks_seen: bool,
) -> anyhow::Result<u8> {
    let duration = execution_duration(execution, Utc::now())
        .map(|duration| format!(" in {}", format_duration(duration)))
        .unwrap_or_default();
    if execution.status == ExecutionStatus::Succeeded {
        if !chunks_seen {
            write_text(&mut terminal.stderr, &execution.stderr)?;
        }
        match &execution.result {
            // A string result is the raw stdout, already shown when chunks were streamed.
            Some(serde_json::Value::String(_)) if chunks_seen => {}
            Some(serde_json::Value::String(text)) => write_text(&mut terminal.stdout, text)?,
            Some(result) => write_json(&mut terminal.stdout, result)?,
            None if !chunks_seen => write_text(&mut terminal.stdout, &execution.stdout)?,
            None => {}
        }
        write_truncation_notes(terminal, execution)?;
        writeln!(
            terminal.stderr,
            "execution {} succeeded{duration}",
            execution.id
        )?;
        return Ok(EXIT_SUCCESS);
    }
    if !chunks_seen {
        write_text(&mut terminal.stdout, &execution.stdout)?;
        write_text(&mut terminal.stderr, &execution.stderr)?;
    }
    write_truncation_notes(terminal, execution)?;
    writeln!(
        terminal.stderr,
        "error: execution {} {}{duration}: {}",
        execution.id,
        execution.status,
        failure_reason(execution)
    )?;
    Ok(EXIT_FAILURE)
}

fn write_truncation_notes(
    terminal: &mut Terminal,
    execution: &ExecutionView,
) -> std::io::Result<()> {
    if execution.stdout_truncated {
        writeln!(terminal.stderr, "note: stdout was truncated by the agent")?;
    }
    if execution.stderr_truncated {
        writeln!(terminal.stderr, "note: stderr was truncated by the agent")?;
    }
    Ok(())
}

/// How long the execution ran: until it finished, or until `now` while it is not terminal.
pub fn execution_duration(
    execution: &ExecutionView,
    now: chrono::DateTime<Utc>,
) -> Option<Duration> {
    let started = execution.started_at.as_deref();
    match execution.finished_at.as_deref() {
        Some(finished) => elapsed(started, Some(finished), now),
        None if execution.status.is_terminal() => None,
        None => elapsed(started, None, now),
    }
}

/// Why an execution did not succeed, as precisely as the view says.
pub(super) fn failure_reason(execution: &ExecutionView) -> String {
    if let Some(error) = execution.error.as_deref().filter(|error| !error.is_empty()) {
        return error.to_string();
    }
    if let Some(signal) = execution.signal {
        return format!("killed by signal {signal}");
    }
    if let Some(exit_code) = execution.exit_code {
        return format!("exit code {exit_code}");
    }
    "no reason given".to_string()
}

/// Shows one execution.
pub(super) async fn get(
    context: &mut Context<'_>,
    execution_id: i64,
    json: bool,
) -> anyhow::Result<u8> {
    let execution = context.client.get_execution(execution_id).await?;
    let output = &mut context.terminal.stdout;
    if json {
        write_json(output, &execution)?;
    } else {
        output.write_all(describe_execution(&execution).as_bytes())?;
    }
    Ok(EXIT_SUCCESS)
}

/// The text form of an execution.
pub fn describe_execution(execution: &ExecutionView) -> String {
    let optional = |value: &Option<String>| value.clone().unwrap_or_default();
    let mut lines: Vec<(&str, String)> = vec![
        ("id", execution.id.to_string()),
        ("action", execution.action.clone()),
        ("status", execution.status.to_string()),
        (
            "parameters",
            serde_json::Value::Object(execution.parameters.clone()).to_string(),
        ),
        ("image", optional(&execution.image)),
        (
            "container",
            execution
                .container_id
                .as_deref()
                .map(|id| id.chars().take(12).collect())
                .unwrap_or_default(),
        ),
        ("agent", optional(&execution.agent_id)),
        ("requested", format_timestamp(&execution.requested_at)),
    ];
    for (name, timestamp) in [
        ("scheduled", &execution.scheduled_at),
        ("started", &execution.started_at),
        ("finished", &execution.finished_at),
    ] {
        if let Some(timestamp) = timestamp {
            lines.push((name, format_timestamp(timestamp)));
        }
    }
    if let Some(duration) = execution_duration(execution, Utc::now()) {
        lines.push(("duration", format_duration(duration)));
    }
    if let Some(exit_code) = execution.exit_code {
        lines.push(("exit code", exit_code.to_string()));
    }
    if let Some(signal) = execution.signal {
        lines.push(("signal", signal.to_string()));
    }
    lines.push(("error", optional(&execution.error)));
    let mut text = String::new();
    for (name, value) in lines {
        if !value.is_empty() {
            text.push_str(&format!("{:<12}{value}\n", format!("{name}:")));
        }
    }
    // A string result that is the captured stdout is shown once, below.
    let result = execution
        .result
        .as_ref()
        .filter(|result| result.as_str() != Some(execution.stdout.as_str()));
    if let Some(result) = result {
        let pretty = serde_json::to_string_pretty(result).unwrap_or_else(|_| result.to_string());
        text.push_str(&format!("result:\n{pretty}\n"));
    }
    for (name, captured, truncated) in [
        ("stdout", &execution.stdout, execution.stdout_truncated),
        ("stderr", &execution.stderr, execution.stderr_truncated),
    ] {
        if !captured.is_empty() {
            let note = if truncated { " (truncated)" } else { "" };
            text.push_str(&format!("{name}{note}:\n{captured}"));
            if !captured.ends_with('\n') {
                text.push('\n');
            }
        }
    }
    text
}

/// Lists executions, newest first, as a table.
pub(super) async fn list(
    context: &mut Context<'_>,
    filter: &ExecutionFilter,
    json: bool,
) -> anyhow::Result<u8> {
    let executions = context.client.list_executions(filter).await?;
    let output = &mut context.terminal.stdout;
    if json {
        write_json(output, &List { items: executions })?;
        return Ok(EXIT_SUCCESS);
    }
    if executions.is_empty() {
        writeln!(output, "no executions found")?;
        return Ok(EXIT_SUCCESS);
    }
    output.write_all(execution_table(&executions, Utc::now()).as_bytes())?;
    Ok(EXIT_SUCCESS)
}

/// The table of `attune execution list`: id, action, status, started, duration.
pub fn execution_table(executions: &[ExecutionView], now: chrono::DateTime<Utc>) -> String {
    let rows: Vec<Vec<String>> = executions
        .iter()
        .map(|execution| {
            vec![
                execution.id.to_string(),
                execution.action.clone(),
                execution.status.to_string(),
                execution
                    .started_at
                    .as_deref()
                    .map(format_timestamp)
                    .unwrap_or_else(|| "-".to_string()),
                execution_duration(execution, now)
                    .map(format_duration)
                    .unwrap_or_else(|| "-".to_string()),
            ]
        })
        .collect();
    format_table(&["ID", "ACTION", "STATUS", "STARTED", "DURATION"], &rows)
}

/// Prints an execution's output; with `follow`, keeps printing until it finishes.
pub(super) async fn logs(
    context: &mut Context<'_>,
    execution_id: i64,
    follow_logs: bool,
) -> anyhow::Result<u8> {
    if follow_logs {
        let Followed::Finished {
            execution,
            chunks_seen,
        } = follow(context, execution_id, true, None).await?
        else {
            return Ok(EXIT_SUCCESS);
        };
        if !chunks_seen {
            write_captured_output(context.terminal, &execution)?;
        }
        return Ok(EXIT_SUCCESS);
    }
    let chunks = context.client.execution_logs(execution_id, None).await?;
    if chunks.is_empty() {
        // Executions run without live streaming still have their captured output.
        let execution = context.client.get_execution(execution_id).await?;
        write_captured_output(context.terminal, &execution)?;
    }
    for chunk in &chunks {
        write_chunk(context.terminal, chunk)?;
    }
    Ok(EXIT_SUCCESS)
}

fn write_captured_output(
    terminal: &mut Terminal,
    execution: &ExecutionView,
) -> std::io::Result<()> {
    write_text(&mut terminal.stdout, &execution.stdout)?;
    write_text(&mut terminal.stderr, &execution.stderr)
}

/// Asks the server to cancel an execution.
pub(super) async fn cancel(context: &mut Context<'_>, execution_id: i64) -> anyhow::Result<u8> {
    let execution = context.client.cancel_execution(execution_id).await?;
    writeln!(
        context.terminal.stdout,
        "cancel requested for execution {} (status: {})",
        execution.id, execution.status
    )?;
    Ok(EXIT_SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::parse_timestamp;

    fn execution(
        id: i64,
        status: ExecutionStatus,
        started: Option<&str>,
        finished: Option<&str>,
    ) -> ExecutionView {
        ExecutionView {
            id,
            action: "hello.greet".to_string(),
            status,
            parameters: serde_json::Map::new(),
            result: None,
            exit_code: None,
            signal: None,
            duration_ms: None,
            stdout: String::new(),
            stderr: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            error: None,
            failure_kind: None,
            retry_of: None,
            image: None,
            container_id: None,
            agent_id: None,
            controller_id: None,
            worker: None,
            waiting_reason: None,
            requested_at: "2024-05-01T12:00:00Z".to_string(),
            scheduled_at: None,
            started_at: started.map(str::to_string),
            finished_at: finished.map(str::to_string),
        }
    }

    #[test]
    fn execution_table_shows_started_and_duration() {
        let now = parse_timestamp("2024-05-01T12:01:00Z").expect("timestamp");
        let table = execution_table(
            &[
                execution(
                    12,
                    ExecutionStatus::Running,
                    Some("2024-05-01T12:00:30Z"),
                    None,
                ),
                execution(
                    11,
                    ExecutionStatus::Succeeded,
                    Some("2024-05-01T12:00:00Z"),
                    Some("2024-05-01T12:00:01.250Z"),
                ),
                execution(10, ExecutionStatus::Requested, None, None),
            ],
            now,
        );
        assert_eq!(
            table,
            "\
ID  ACTION       STATUS     STARTED               DURATION
12  hello.greet  running    2024-05-01 12:00:30Z  30.0s
11  hello.greet  succeeded  2024-05-01 12:00:00Z  1.2s
10  hello.greet  requested  -                     -
"
        );
    }

    #[test]
    fn terminal_executions_without_finish_time_have_no_duration() {
        let now = parse_timestamp("2024-05-01T13:00:00Z").expect("timestamp");
        let failed = execution(
            1,
            ExecutionStatus::Failed,
            Some("2024-05-01T12:00:00Z"),
            None,
        );
        assert_eq!(execution_duration(&failed, now), None);
        let running = execution(
            2,
            ExecutionStatus::Running,
            Some("2024-05-01T12:59:00Z"),
            None,
        );
        assert_eq!(
            execution_duration(&running, now),
            Some(Duration::from_secs(60))
        );
    }

    #[test]
    fn failure_reasons_prefer_the_error() {
        let mut failed = execution(1, ExecutionStatus::Failed, None, None);
        assert_eq!(failure_reason(&failed), "no reason given");
        failed.exit_code = Some(3);
        assert_eq!(failure_reason(&failed), "exit code 3");
        failed.signal = Some(9);
        assert_eq!(failure_reason(&failed), "killed by signal 9");
        failed.error = Some("interpreter python3 not found".to_string());
        assert_eq!(failure_reason(&failed), "interpreter python3 not found");
    }

    #[test]
    fn execution_text_skips_empty_fields() {
        let mut view = execution(
            5,
            ExecutionStatus::Failed,
            Some("2024-05-01T12:00:00Z"),
            Some("2024-05-01T12:00:02Z"),
        );
        view.exit_code = Some(1);
        view.stderr = "boom".to_string();
        view.error = Some("exit code 1".to_string());
        assert_eq!(
            describe_execution(&view),
            "\
id:         5
action:     hello.greet
status:     failed
parameters: {}
requested:  2024-05-01 12:00:00Z
started:    2024-05-01 12:00:00Z
finished:   2024-05-01 12:00:02Z
duration:   2.0s
exit code:  1
error:      exit code 1
stderr:
boom
"
        );
    }
}
