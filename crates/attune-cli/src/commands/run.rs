//! `attune run`: create an execution, optionally wait for it while streaming its output.

use super::execution::{failure_reason, follow, report_outcome, Followed};
use super::{write_json, Context, EXIT_FAILURE, EXIT_SUCCESS};
use crate::cli::RunArgs;
use crate::parameters::collect_parameters;
use anyhow::anyhow;
use attune_protocol::api::{CreateExecutionRequest, ExecutionStatus};
use std::io::Write;
use std::time::Duration;

/// Creates the execution; with `--wait` (or `--timeout-seconds`) follows it to the end.
pub(super) async fn run(context: &mut Context<'_>, arguments: RunArgs) -> anyhow::Result<u8> {
    let parameters = collect_parameters(arguments.parameters).map_err(|error| anyhow!(error))?;
    let request = CreateExecutionRequest {
        action: arguments.action,
        parameters,
    };
    let execution = context.client.create_execution(&request).await?;
    let wait = arguments.wait || arguments.timeout_seconds.is_some();
    if !wait {
        if arguments.json {
            write_json(&mut context.terminal.stdout, &execution)?;
        } else {
            writeln!(
                context.terminal.stdout,
                "execution {} {} ({})",
                execution.id, execution.status, execution.action
            )?;
        }
        return Ok(EXIT_SUCCESS);
    }

    let timeout = arguments.timeout_seconds.map(Duration::from_secs);
    // With --json, stdout carries only the final JSON document.
    let stream_logs = !arguments.json;
    match follow(context, execution.id, stream_logs, timeout).await? {
        Followed::Finished {
            execution,
            chunks_seen,
        } => {
            if arguments.json {
                write_json(&mut context.terminal.stdout, &execution)?;
                if execution.status == ExecutionStatus::Succeeded {
                    return Ok(EXIT_SUCCESS);
                }
                writeln!(
                    context.terminal.stderr,
                    "error: execution {} {}: {}",
                    execution.id,
                    execution.status,
                    failure_reason(&execution)
                )?;
                Ok(EXIT_FAILURE)
            } else {
                report_outcome(context.terminal, &execution, chunks_seen)
            }
        }
        Followed::GaveUp { execution } => {
            if arguments.json {
                write_json(&mut context.terminal.stdout, &execution)?;
            }
            Err(anyhow!(
                "stopped waiting for execution {} after {}s; it is still {} (follow it with: attune execution logs {} --follow)",
                execution.id,
                arguments.timeout_seconds.unwrap_or_default(),
                execution.status,
                execution.id
            ))
        }
    }
}
