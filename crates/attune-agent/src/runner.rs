//! Running one job end to end: pack files (a worker's, by digest), checks, pack environment,
//! work dir, parameters, process, logs, timeout, report.
//!
//! [`run_job`] never fails: every problem becomes a [`JobReport`] sent as
//! [`AgentEvent::Finished`]. Events go to an [`EventSender`] channel, so the runner works the
//! same under the broker and in tests with an in-memory receiver.

use crate::delivery;
use crate::detect::{Detector, SearchPath};
use crate::environment::{
    read_dependency_files, EnvironmentCache, EnvironmentError, EnvironmentKind, EnvironmentRequest,
    ReadyEnvironment,
};
use crate::output::{start_capture, CaptureSettings, CapturedOutput};
use crate::packs::{PackLease, PackStore};
use crate::process::{clean_up_group, inherited_environment, terminate_group};
use crate::EventSender;
use attune_protocol::output::bytes_into_text;
use attune_protocol::{AgentEvent, FailureKind, Job, JobOutcome, JobReport, Runtime};
use serde_json::Value;
use std::ffi::OsString;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio::time::Instant;

/// Environment variable holding the execution id.
pub const ENV_EXECUTION_ID: &str = "ATTUNE_EXECUTION_ID";
/// Environment variable holding the action's `<pack>.<action>` ref.
pub const ENV_ACTION_REF: &str = "ATTUNE_ACTION_REF";
/// Environment variable holding the pack's directory.
pub const ENV_PACK_DIR: &str = "ATTUNE_PACK_DIR";
/// Environment variable holding the pack's ref.
pub const ENV_PACK_REF: &str = "ATTUNE_PACK_REF";
/// Environment variable holding the job's work directory (also its cwd).
pub const ENV_WORK_DIR: &str = "ATTUNE_WORK_DIR";

/// How long output may keep flowing after the process group is gone.
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);
/// Longest grace given to background processes left behind by an action that exited.
const LEFTOVER_GRACE: Duration = Duration::from_secs(1);

/// Why a running job is being stopped from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopRequest {
    /// A Cancel command: the outcome is `canceled`.
    Cancel,
    /// The agent is shutting down past its deadline: the outcome is `abandoned`.
    Abandon,
}

/// Receives at most one [`StopRequest`] for a job.
pub type StopReceiver = watch::Receiver<Option<StopRequest>>;

/// What every job of one agent shares.
#[derive(Debug, Clone)]
pub struct RunnerContext {
    pub agent_id: String,
    /// The image, for error messages (`this image` when unknown).
    pub image: Option<String>,
    /// Each job works in `<workdir_base>/attune-exec-<execution_id>`.
    pub workdir_base: PathBuf,
    pub detector: Detector,
    /// Where pack environments (venvs, node_modules) are built and reused.
    pub environments: EnvironmentCache,
    /// A worker's pack files by digest: a job with `pack_sha256` runs in the directory they
    /// give. `None` for a controller's agent, whose container has the files at `pack_dir`.
    pub packs: Option<Arc<PackStore>>,
}

/// How the process ended, from the runner's point of view.
enum Ending {
    Exited,
    TimedOut,
    Stopped(StopRequest),
}

/// Runs `job`, sends Running, Log and Finished events, and returns the final report.
pub async fn run_job(
    context: &RunnerContext,
    job: &Job,
    events: &EventSender,
    stop: StopReceiver,
) -> JobReport {
    run_job_then_sweep(context, job, events, stop, false).await
}

/// [`run_job`]; with `sweep`, every other process of the container but its init is killed
/// before the report is sent (an agent alone in a warm container, one job at a time).
pub async fn run_job_then_sweep(
    context: &RunnerContext,
    job: &Job,
    events: &EventSender,
    stop: StopReceiver,
    sweep: bool,
) -> JobReport {
    let report = execute(context, job, events, stop).await;
    if sweep {
        let killed = crate::process::kill_every_other_process();
        if killed > 0 {
            eprintln!(
                "attune-agent: execution {} left {killed} processes running; killed before the next job",
                job.execution_id
            );
        }
        let pack_cache = context.packs.as_ref().map(|packs| packs.cache_dir());
        clear_work_area(
            &context.workdir_base,
            &context.environments.root,
            pack_cache,
        );
    }
    let _ = events.send(AgentEvent::Finished(report.clone()));
    report
}

/// Empties the work area (HOME and TMPDIR of the jobs) but for the environments cache (and a
/// worker's pack cache), so the next job in this container finds nothing the last one left
/// there.
fn clear_work_area(work_area: &Path, environments: &Path, pack_cache: Option<&Path>) {
    let Ok(entries) = std::fs::read_dir(work_area) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if environments.starts_with(&path)
            || pack_cache.is_some_and(|pack_cache| pack_cache.starts_with(&path))
        {
            continue;
        }
        let removed = match entry.file_type() {
            Ok(kind) if kind.is_dir() => std::fs::remove_dir_all(&path),
            _ => std::fs::remove_file(&path),
        };
        if let Err(error) = removed {
            eprintln!(
                "attune-agent: clear {} before the next job: {error}",
                path.display()
            );
        }
    }
}

/// A report for a job that ends before or without its process.
pub fn early_report(
    agent_id: &str,
    job: &Job,
    outcome: JobOutcome,
    failure_kind: Option<FailureKind>,
    error: String,
) -> JobReport {
    JobReport {
        agent_id: agent_id.to_string(),
        execution_id: job.execution_id,
        outcome,
        failure_kind,
        exit_code: None,
        signal: None,
        stdout: String::new(),
        stderr: String::new(),
        stdout_truncated: false,
        stderr_truncated: false,
        result: None,
        error: Some(error),
        duration_ms: 0,
    }
}

fn stop_report(agent_id: &str, job: &Job, request: StopRequest) -> JobReport {
    match request {
        StopRequest::Cancel => early_report(
            agent_id,
            job,
            JobOutcome::Canceled,
            None,
            "canceled".to_string(),
        ),
        StopRequest::Abandon => early_report(
            agent_id,
            job,
            JobOutcome::Abandoned,
            None,
            "agent shut down before the execution finished".to_string(),
        ),
    }
}

/// The result of an action: its stdout as JSON when it is JSON, else the text itself.
pub fn result_from_stdout(stdout: &str) -> Value {
    let trimmed = stdout.trim();
    if !trimmed.is_empty() {
        if let Ok(value) = serde_json::from_str::<Value>(trimmed) {
            return value;
        }
    }
    Value::String(stdout.to_string())
}

/// Resolves to the first stop request; never resolves when the sender is gone without one.
pub(crate) async fn wait_for_stop(stop: &mut StopReceiver) -> StopRequest {
    loop {
        if let Some(request) = *stop.borrow_and_update() {
            return request;
        }
        if stop.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// Creates a fresh, private work directory (replacing one left by an earlier delivery).
fn create_work_dir(path: &Path) -> std::io::Result<()> {
    if let Some(base) = path.parent() {
        std::fs::create_dir_all(base)?;
    }
    if path.exists() {
        std::fs::remove_dir_all(path)?;
    }
    std::fs::DirBuilder::new().mode(0o700).create(path)
}

fn remove_work_dir(path: &Path) {
    if let Err(error) = std::fs::remove_dir_all(path) {
        if error.kind() != std::io::ErrorKind::NotFound {
            eprintln!(
                "attune-agent: remove work directory {}: {error}",
                path.display()
            );
        }
    }
}

async fn execute(
    context: &RunnerContext,
    job: &Job,
    events: &EventSender,
    mut stop: StopReceiver,
) -> JobReport {
    let agent_id = context.agent_id.as_str();
    if let Some(request) = *stop.borrow_and_update() {
        return stop_report(agent_id, job, request);
    }

    // Held until the job ends, so the pack's files stay while it runs.
    let mut _pack_lease: Option<PackLease> = None;
    let with_pack_files: Job;
    let job = match (&job.pack_sha256, &context.packs) {
        (Some(digest), Some(packs)) => {
            let leased = tokio::select! {
                leased = packs.lease(&job.pack_ref, digest) => leased,
                request = wait_for_stop(&mut stop) => return stop_report(agent_id, job, request),
            };
            match leased {
                Ok(lease) => {
                    with_pack_files = Job {
                        pack_dir: lease.dir().display().to_string(),
                        ..job.clone()
                    };
                    _pack_lease = Some(lease);
                    &with_pack_files
                }
                Err(error) => {
                    return early_report(
                        agent_id,
                        job,
                        JobOutcome::Failed,
                        Some(FailureKind::PackFiles),
                        error.to_string(),
                    )
                }
            }
        }
        _ => job,
    };

    let entry_path = Path::new(&job.pack_dir).join(&job.entry_point);
    if !entry_path.is_file() {
        return early_report(
            agent_id,
            job,
            JobOutcome::Failed,
            Some(FailureKind::EntryPointMissing),
            format!(
                "entry point {} not found in pack {} ({})",
                job.entry_point,
                job.pack_ref,
                entry_path.display()
            ),
        );
    }

    let job_detector = job.env.get("PATH").map(|path| {
        Detector::new(
            SearchPath::from_path_variable(Some(std::ffi::OsStr::new(path))),
            context.detector.hints().clone(),
        )
    });
    let detector = job_detector.as_ref().unwrap_or(&context.detector);
    let (mut program, mut arguments) = if job.runtime == Runtime::Native {
        if !crate::detect::is_executable_file(&entry_path) {
            return early_report(
                agent_id,
                job,
                JobOutcome::Failed,
                Some(FailureKind::EntryPointMissing),
                format!(
                    "entry point {} in pack {} is not executable ({}): native actions must have an execute bit",
                    job.entry_point,
                    job.pack_ref,
                    entry_path.display()
                ),
            );
        }
        (entry_path.clone(), Vec::new())
    } else {
        match detector.interpreter_for(job.runtime, &entry_path) {
            Ok(interpreter) => (interpreter.program, interpreter.arguments),
            Err(not_found) => {
                return early_report(
                    agent_id,
                    job,
                    JobOutcome::Failed,
                    Some(FailureKind::InterpreterMissing),
                    format!(
                        "interpreter {} not found in image {} (looked for {} in PATH and /usr/bin, /usr/local/bin, /bin)",
                        job.runtime,
                        context.image.as_deref().unwrap_or("this image"),
                        not_found.looked_for.join(", ")
                    ),
                );
            }
        }
    };
    if job.runtime != Runtime::Native {
        arguments.push(entry_path.display().to_string());
    }

    let process_environment = job_environment(job);
    let mut environment_variables = Vec::new();
    if let Some(kind) = EnvironmentKind::for_runtime(job.runtime) {
        let request = EnvironmentSetup {
            kind,
            interpreter: &program,
            search_path: detector.search_path(),
            process_environment: &process_environment,
        };
        match prepare_environment(context, job, request, &mut stop).await {
            Ok(None) => {}
            Ok(Some(ready)) => {
                if let Some(environment_program) = ready.program() {
                    program = environment_program;
                }
                let variable = |name: &str| {
                    process_environment
                        .iter()
                        .rev()
                        .find(|(existing, _)| existing == name)
                        .map(|(_, value)| value.as_os_str())
                };
                environment_variables = ready.variables(variable("PATH"), variable("NODE_PATH"));
            }
            Err(report) => return *report,
        }
    }

    let work_dir = context
        .workdir_base
        .join(format!("attune-exec-{}", job.execution_id));
    if let Err(error) = create_work_dir(&work_dir) {
        return early_report(
            agent_id,
            job,
            JobOutcome::Failed,
            Some(FailureKind::Spawn),
            format!("create work directory {}: {error}", work_dir.display()),
        );
    }
    let prepared = match delivery::prepare(job, &work_dir) {
        Ok(prepared) => prepared,
        Err(error) => {
            remove_work_dir(&work_dir);
            return early_report(
                agent_id,
                job,
                JobOutcome::Failed,
                Some(FailureKind::ParameterDelivery),
                error.to_string(),
            );
        }
    };

    let mut command = tokio::process::Command::new(&program);
    command
        .args(&arguments)
        .current_dir(&work_dir)
        .env_clear()
        .envs(
            process_environment
                .iter()
                .map(|(name, value)| (name, value)),
        )
        .envs(environment_variables);
    match job.runtime {
        Runtime::Python if !job.env.contains_key("PYTHONUNBUFFERED") => {
            command.env("PYTHONUNBUFFERED", "1");
        }
        Runtime::Go
            if !job.env.contains_key("GOCACHE") && std::env::var_os("GOCACHE").is_none() =>
        {
            command.env("GOCACHE", context.workdir_base.join("attune-go-cache"));
        }
        _ => {}
    }
    command
        .envs(prepared.env.iter().map(|(name, value)| (name, value)))
        .env(ENV_EXECUTION_ID, job.execution_id.to_string())
        .env(ENV_ACTION_REF, &job.action_ref)
        .env(ENV_PACK_REF, &job.pack_ref)
        .env(ENV_PACK_DIR, &job.pack_dir)
        .env(ENV_WORK_DIR, &work_dir)
        .stdin(if prepared.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);

    let started = Instant::now();
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            remove_work_dir(&work_dir);
            return early_report(
                agent_id,
                job,
                JobOutcome::Failed,
                Some(FailureKind::Spawn),
                format!(
                    "start {} {}: {error}",
                    program.display(),
                    entry_path.display()
                ),
            );
        }
    };
    let pid = child.id();
    let process_group = pid.and_then(|pid| i32::try_from(pid).ok()).unwrap_or(0);
    let _ = events.send(AgentEvent::Running {
        agent_id: agent_id.to_string(),
        execution_id: job.execution_id,
        pid,
    });

    if let (Some(bytes), Some(mut stdin)) = (prepared.stdin, child.stdin.take()) {
        tokio::spawn(async move {
            // An action that does not read its stdin closes the pipe early: not an error.
            let _ = stdin.write_all(&bytes).await;
            let _ = stdin.shutdown().await;
        });
    }
    let capture = match (child.stdout.take(), child.stderr.take()) {
        (Some(stdout), Some(stderr)) => Some(start_capture(
            stdout,
            stderr,
            CaptureSettings {
                agent_id: agent_id.to_string(),
                execution_id: job.execution_id,
                limit_bytes: job.output_limit_bytes,
                stream_logs: job.stream_logs,
                events: events.clone(),
                secrets: crate::mask::secret_texts(&job.parameters, &job.secret_parameters),
            },
        )),
        _ => None,
    };

    let grace = Duration::from_secs(job.kill_grace_seconds);
    let timeout = async {
        if job.timeout_seconds == 0 {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep_until(started + Duration::from_secs(job.timeout_seconds)).await;
    };
    let (ending, status) = tokio::select! {
        status = child.wait() => (Ending::Exited, status),
        _ = timeout => (Ending::TimedOut, terminate_group(&mut child, process_group, grace).await),
        request = wait_for_stop(&mut stop) => (
            Ending::Stopped(request),
            terminate_group(&mut child, process_group, grace.min(stop_grace(request))).await,
        ),
    };
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    if matches!(ending, Ending::Exited) {
        clean_up_group(process_group, grace.min(LEFTOVER_GRACE)).await;
    }
    let output = match capture {
        Some(capture) => capture.finish(OUTPUT_DRAIN).await,
        None => CapturedOutput::default(),
    };
    remove_work_dir(&work_dir);

    let (exit_code, signal) = match &status {
        Ok(status) => (status.code(), status.signal()),
        Err(_) => (None, None),
    };
    let exit_error =
        |code: i32| crate::exit_reason::exit_error(code, &output.stderr, context.image.as_deref());
    let (outcome, failure_kind, error) = match (ending, &status) {
        (_, Err(error)) => (
            JobOutcome::Failed,
            Some(FailureKind::Other),
            Some(format!(
                "wait for process {}: {error}",
                pid.unwrap_or_default()
            )),
        ),
        (Ending::TimedOut, Ok(_)) => (
            JobOutcome::Timeout,
            None,
            Some(format!("timed out after {}s", job.timeout_seconds)),
        ),
        (Ending::Stopped(StopRequest::Cancel), Ok(_)) => {
            (JobOutcome::Canceled, None, Some("canceled".to_string()))
        }
        (Ending::Stopped(StopRequest::Abandon), Ok(_)) => (
            JobOutcome::Abandoned,
            None,
            Some("agent shut down before the execution finished".to_string()),
        ),
        (Ending::Exited, Ok(_)) => match (exit_code, signal) {
            (Some(0), _) => (JobOutcome::Succeeded, None, None),
            (Some(code), _) => (
                JobOutcome::Failed,
                Some(FailureKind::NonZeroExit),
                Some(exit_error(code)),
            ),
            (None, Some(signal)) => (
                JobOutcome::Failed,
                Some(FailureKind::NonZeroExit),
                Some(format!("killed by signal {signal}")),
            ),
            (None, None) => (
                JobOutcome::Failed,
                Some(FailureKind::Other),
                Some("exited without a code or signal".to_string()),
            ),
        },
    };
    // Output text: the captured bytes, losslessly (see `attune_protocol::output`).
    let stdout = bytes_into_text(output.stdout);
    let stderr = bytes_into_text(output.stderr);
    JobReport {
        agent_id: agent_id.to_string(),
        execution_id: job.execution_id,
        outcome,
        failure_kind,
        exit_code,
        signal,
        result: Some(result_from_stdout(&stdout)),
        stdout,
        stderr,
        stdout_truncated: output.stdout_truncated,
        stderr_truncated: output.stderr_truncated,
        error,
        duration_ms,
    }
}

/// The container's environment without the agent's own variables, then the job's `env`.
fn job_environment(job: &Job) -> Vec<(OsString, OsString)> {
    let mut environment = inherited_environment();
    for (name, value) in &job.env {
        environment.retain(|(existing, _)| existing != name.as_str());
        environment.push((name.into(), value.into()));
    }
    environment
}

/// What [`prepare_environment`] needs besides the job.
struct EnvironmentSetup<'a> {
    kind: EnvironmentKind,
    interpreter: &'a Path,
    search_path: &'a SearchPath,
    process_environment: &'a [(OsString, OsString)],
}

/// The job's runtime environment when its pack carries a dependency file (built on first use),
/// or the report that ends the job when it cannot be had.
async fn prepare_environment(
    context: &RunnerContext,
    job: &Job,
    setup: EnvironmentSetup<'_>,
    stop: &mut StopReceiver,
) -> Result<Option<ReadyEnvironment>, Box<JobReport>> {
    let agent_id = context.agent_id.as_str();
    let pack_dir = Path::new(&job.pack_dir);
    let build_failed = |error: String| {
        Box::new(early_report(
            agent_id,
            job,
            JobOutcome::Failed,
            Some(FailureKind::Spawn),
            error,
        ))
    };
    let files = match read_dependency_files(setup.kind, pack_dir) {
        Ok(Some(files)) => files,
        Ok(None) => return Ok(None),
        Err(error) => {
            return Err(build_failed(format!(
                "build {} environment for pack {}: {error}",
                setup.kind.as_str(),
                job.pack_ref
            )))
        }
    };
    let request = EnvironmentRequest {
        kind: setup.kind,
        pack_ref: &job.pack_ref,
        pack_dir,
        interpreter: setup.interpreter,
        search_path: setup.search_path,
        files: &files,
        process_environment: setup.process_environment,
    };
    match context.environments.prepare(&request, stop).await {
        Ok(ready) => Ok(Some(ready)),
        Err(EnvironmentError::Stopped(request)) => {
            Err(Box::new(stop_report(agent_id, job, request)))
        }
        Err(error @ EnvironmentError::Build { .. }) => {
            let mut report = build_failed(error.to_string());
            if let EnvironmentError::Build {
                installer_output, ..
            } = error
            {
                let (stderr, truncated) = capped(installer_output, job.output_limit_bytes);
                report.stderr = stderr;
                report.stderr_truncated = truncated;
            }
            Err(report)
        }
    }
}

/// `text` cut to at most `limit` bytes (at a character boundary) with the truncation marker.
fn capped(text: String, limit: u64) -> (String, bool) {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if text.len() <= limit {
        return (text, false);
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut cut = text[..end].to_string();
    cut.push_str(&crate::output::truncation_marker(limit as u64));
    (cut, true)
}

/// Grace before SIGKILL when a job is stopped from outside: a cancel honours the job's grace,
/// an abandon at shutdown keeps it short because the agent's own deadline has passed.
fn stop_grace(request: StopRequest) -> Duration {
    match request {
        StopRequest::Cancel => Duration::MAX,
        StopRequest::Abandon => Duration::from_secs(2),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_stdout_becomes_the_result() {
        assert_eq!(result_from_stdout("{\"a\": 1}\n"), json!({"a": 1}));
        assert_eq!(result_from_stdout("  [1, 2]  "), json!([1, 2]));
        assert_eq!(result_from_stdout("42\n"), json!(42));
        assert_eq!(result_from_stdout("hello world\n"), json!("hello world\n"));
        assert_eq!(
            result_from_stdout("{\"a\": 1}\nmore"),
            json!("{\"a\": 1}\nmore")
        );
        assert_eq!(result_from_stdout(""), json!(""));
    }
}
