//! Runs real jobs through the runner library with an in-memory event sink (no broker needed):
//! parameter delivery, results, exit codes, timeouts of process trees, cancel, truncation,
//! live logs and every early failure.

mod runner_support;

use attune_agent::detect::{Detector, SearchPath};
use attune_agent::environment::EnvironmentCache;
use attune_agent::hints::RuntimeHints;
use attune_agent::runner::{run_job, RunnerContext, StopRequest};
use attune_protocol::output::text_to_bytes;
use attune_protocol::{
    AgentEvent, FailureKind, Job, JobOutcome, JobReport, OutputStream, ParameterDelivery,
    ParameterFormat, Runtime, PROTOCOL_VERSION,
};
use runner_support::{start, Running};
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// SIGTERM on Linux.
const SIGTERM: i32 = 15;

/// Upper bound for anything a test waits on.
const WAIT_LIMIT: Duration = Duration::from_secs(20);

struct Fixture {
    pack: tempfile::TempDir,
    work_base: tempfile::TempDir,
    scratch: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        Self {
            pack: tempfile::tempdir().unwrap(),
            work_base: tempfile::tempdir().unwrap(),
            scratch: tempfile::tempdir().unwrap(),
        }
    }

    fn action(&self, name: &str, script: &str) -> String {
        let relative = format!("actions/{name}");
        let path = self.pack.path().join(&relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, script).unwrap();
        relative
    }

    fn scratch_path(&self, name: &str) -> PathBuf {
        self.scratch.path().join(name)
    }

    fn context(&self) -> RunnerContext {
        RunnerContext {
            agent_id: "agent-under-test".to_string(),
            image: Some("attune-test/image:1".to_string()),
            workdir_base: self.work_base.path().to_path_buf(),
            detector: Detector::new(SearchPath::from_environment(), RuntimeHints::default()),
            environments: EnvironmentCache {
                root: self.work_base.path().join("attune-envs"),
                image_identity: "attune-test/image:1".to_string(),
                build_timeout: Duration::from_secs(60),
            },
            packs: None,
        }
    }

    fn job(&self, execution_id: i64, entry_point: &str) -> Job {
        Job {
            protocol_version: PROTOCOL_VERSION,
            execution_id,
            action_ref: "testpack.action".to_string(),
            pack_ref: "testpack".to_string(),
            runtime: Runtime::Shell,
            pack_dir: self.pack.path().display().to_string(),
            entry_point: entry_point.to_string(),
            parameters: json!({"name": "O'Brien", "count": 3, "token": "s3cret-token"})
                .as_object()
                .unwrap()
                .clone(),
            secret_parameters: vec!["token".to_string()],
            parameter_delivery: ParameterDelivery::Env,
            parameter_format: ParameterFormat::Json,
            timeout_seconds: 30,
            kill_grace_seconds: 1,
            env: Default::default(),
            output_limit_bytes: 1024 * 1024,
            stream_logs: true,
            pack_sha256: None,
        }
    }
}

impl Running {
    async fn next_event(&mut self) -> AgentEvent {
        tokio::time::timeout(WAIT_LIMIT, self.events.recv())
            .await
            .expect("an event within the wait limit")
            .expect("the runner keeps its sender until it reports")
    }

    /// Collects every event through Finished and the returned report.
    async fn finish(mut self) -> (Vec<AgentEvent>, JobReport) {
        let mut events = Vec::new();
        loop {
            let event = self.next_event().await;
            let finished = matches!(event, AgentEvent::Finished(_));
            events.push(event);
            if finished {
                break;
            }
        }
        let report = tokio::time::timeout(WAIT_LIMIT, self.task)
            .await
            .expect("runner returns")
            .expect("runner does not panic");
        assert_eq!(events.last(), Some(&AgentEvent::Finished(report.clone())));
        (events, report)
    }
}

async fn run_to_end(context: RunnerContext, job: Job) -> (Vec<AgentEvent>, JobReport) {
    start(context, job).finish().await
}

fn logged_text(events: &[AgentEvent], wanted: OutputStream) -> String {
    events
        .iter()
        .filter_map(|event| match event {
            AgentEvent::Log { stream, data, .. } if *stream == wanted => Some(data.as_str()),
            _ => None,
        })
        .collect()
}

fn log_sequence(events: &[AgentEvent]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|event| match event {
            AgentEvent::Log { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect()
}

/// A process is gone when /proc has no entry for it or it is a zombie awaiting its reaper.
fn process_is_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            let after_command = &stat[stat.rfind(')').unwrap() + 1..];
            matches!(
                after_command.split_whitespace().next(),
                Some("Z") | Some("X")
            )
        }
    }
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT_LIMIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const PRINT_PARAMETERS: &str = r#"#!/bin/sh
echo "name=${ATTUNE_ACTION_NAME:-unset} count=${ATTUNE_ACTION_COUNT:-unset} token=${ATTUNE_ACTION_TOKEN:-unset}"
echo "delivery=$ATTUNE_PARAMETER_DELIVERY format=$ATTUNE_PARAMETER_FORMAT"
echo "execution=$ATTUNE_EXECUTION_ID action=$ATTUNE_ACTION_REF pack_dir=$ATTUNE_PACK_DIR cwd=$(pwd)"
if [ -n "${ATTUNE_PARAMETER_FILE:-}" ]; then
  echo "file_mode=$(stat -c %a "$ATTUNE_PARAMETER_FILE")"
  echo "--- file"
  cat "$ATTUNE_PARAMETER_FILE"
fi
if [ "$ATTUNE_PARAMETER_DELIVERY" = stdin ]; then
  echo "--- stdin"
  cat
fi
env | grep -c s3cret-token >&2 || true
"#;

#[tokio::test]
async fn env_delivery_sets_variables_and_keeps_secrets_in_a_file() {
    let fixture = Fixture::new();
    let entry = fixture.action("print.sh", PRINT_PARAMETERS);
    let (events, report) = run_to_end(fixture.context(), fixture.job(101, &entry)).await;
    assert_eq!(report.outcome, JobOutcome::Succeeded, "{report:?}");
    let stdout = &report.stdout;
    assert!(
        stdout.contains("name=O'Brien count=3 token=unset"),
        "{stdout}"
    );
    assert!(stdout.contains("delivery=env format=json"), "{stdout}");
    let work_dir = fixture.work_base.path().join("attune-exec-101");
    assert!(
        stdout.contains(&format!(
            "execution=101 action=testpack.action pack_dir={} cwd={}",
            fixture.pack.path().display(),
            work_dir.display()
        )),
        "{stdout}"
    );
    assert!(stdout.contains("file_mode=600"), "{stdout}");
    // The secret reached the file; printed, it is masked (only its exact value is).
    assert!(stdout.contains("\"token\":\"********\""), "{stdout}");
    assert!(!stdout.contains("s3cret-token"), "{stdout}");
    assert_eq!(
        report.stderr.trim(),
        "0",
        "the secret must not be in the environment"
    );
    assert!(!work_dir.exists(), "work dir removed after the job");
    assert!(matches!(
        events[0],
        AgentEvent::Running {
            execution_id: 101,
            pid: Some(_),
            ..
        }
    ));
}

#[tokio::test]
async fn stdin_delivery_in_every_format() {
    let fixture = Fixture::new();
    let entry = fixture.action("print.sh", PRINT_PARAMETERS);
    for (execution_id, format, expected) in [
        (
            111,
            ParameterFormat::Json,
            // The secret arrived on stdin; printed back, it is masked.
            r#"{"count":3,"name":"O'Brien","token":"********"}"#,
        ),
        (112, ParameterFormat::Yaml, "name: O'Brien"),
        (113, ParameterFormat::Dotenv, r#"name='O'"'"'Brien'"#),
    ] {
        let mut job = fixture.job(execution_id, &entry);
        job.parameter_delivery = ParameterDelivery::Stdin;
        job.parameter_format = format;
        let (_, report) = run_to_end(fixture.context(), job).await;
        assert_eq!(report.outcome, JobOutcome::Succeeded, "{report:?}");
        let stdout = &report.stdout;
        assert!(
            stdout.contains("name=unset count=unset token=unset"),
            "{stdout}"
        );
        let stdin_part = stdout.split("--- stdin\n").nth(1).expect("stdin section");
        assert!(stdin_part.contains(expected), "{format:?}: {stdin_part}");
        assert!(!stdout.contains("--- file"), "{stdout}");
    }
}

#[tokio::test]
async fn file_delivery_in_every_format() {
    let fixture = Fixture::new();
    let entry = fixture.action("print.sh", PRINT_PARAMETERS);
    for (execution_id, format, expected) in [
        (121, ParameterFormat::Json, r#""name":"O'Brien""#),
        (122, ParameterFormat::Yaml, "count: 3"),
        (123, ParameterFormat::Dotenv, "count='3'"),
    ] {
        let mut job = fixture.job(execution_id, &entry);
        job.parameter_delivery = ParameterDelivery::File;
        job.parameter_format = format;
        let (_, report) = run_to_end(fixture.context(), job).await;
        assert_eq!(report.outcome, JobOutcome::Succeeded, "{report:?}");
        let stdout = &report.stdout;
        assert!(stdout.contains("file_mode=600"), "{stdout}");
        let format_name = match format {
            ParameterFormat::Json => "json",
            ParameterFormat::Yaml => "yaml",
            ParameterFormat::Dotenv => "dotenv",
        };
        assert!(
            stdout.contains(&format!("delivery=file format={format_name}")),
            "{stdout}"
        );
        let file_part = stdout.split("--- file\n").nth(1).expect("file section");
        assert!(file_part.contains(expected), "{format:?}: {file_part}");
    }
}

#[tokio::test]
async fn json_stdout_becomes_the_result_and_job_env_is_passed() {
    let fixture = Fixture::new();
    let entry = fixture.action(
        "json.sh",
        "#!/bin/sh\nprintf '{\"greeting\": \"hello %s\", \"extra\": \"%s\"}\\n' \"$ATTUNE_ACTION_NAME\" \"$EXTRA\"\n",
    );
    let mut job = fixture.job(131, &entry);
    job.env
        .insert("EXTRA".to_string(), "from-job-env".to_string());
    let (_, report) = run_to_end(fixture.context(), job).await;
    assert_eq!(report.outcome, JobOutcome::Succeeded);
    assert_eq!(report.exit_code, Some(0));
    assert_eq!(report.error, None);
    assert_eq!(
        report.result,
        Some(json!({"greeting": "hello O'Brien", "extra": "from-job-env"}))
    );

    let entry = fixture.action("text.sh", "#!/bin/sh\necho plain words\n");
    let (_, report) = run_to_end(fixture.context(), fixture.job(132, &entry)).await;
    assert_eq!(
        report.result,
        Some(Value::String("plain words\n".to_string()))
    );
}

#[tokio::test]
async fn non_zero_exit_keeps_the_code() {
    let fixture = Fixture::new();
    let entry = fixture.action(
        "fail.sh",
        "#!/bin/sh\necho partial\necho broken >&2\nexit 3\n",
    );
    let (_, report) = run_to_end(fixture.context(), fixture.job(141, &entry)).await;
    assert_eq!(report.outcome, JobOutcome::Failed);
    assert_eq!(report.failure_kind, Some(FailureKind::NonZeroExit));
    assert_eq!(report.exit_code, Some(3));
    assert_eq!(report.signal, None);
    assert_eq!(report.error.as_deref(), Some("exited with code 3"));
    assert_eq!(report.stdout, "partial\n");
    assert_eq!(report.stderr, "broken\n");

    let entry = fixture.action("signal.sh", "#!/bin/sh\nkill -9 $$\n");
    let (_, report) = run_to_end(fixture.context(), fixture.job(142, &entry)).await;
    assert_eq!(report.outcome, JobOutcome::Failed);
    assert_eq!(report.signal, Some(9));
    assert_eq!(report.exit_code, None);
    assert_eq!(report.error.as_deref(), Some("killed by signal 9"));
}

#[tokio::test]
async fn exit_127_and_126_say_what_happened_and_keep_the_code() {
    let fixture = Fixture::new();
    let entry = fixture.action(
        "missing.sh",
        "#!/bin/sh\necho before\nattune-no-such-command --flag\n",
    );
    let (_, report) = run_to_end(fixture.context(), fixture.job(143, &entry)).await;
    assert_eq!(report.outcome, JobOutcome::Failed);
    assert_eq!(report.failure_kind, Some(FailureKind::NonZeroExit));
    assert_eq!(report.exit_code, Some(127));
    assert_eq!(
        report.error.as_deref(),
        Some("exited with code 127: command not found: \"attune-no-such-command\" is not in image attune-test/image:1 (or not on the action's PATH)"),
        "stderr: {}",
        report.stderr
    );

    let tool = fixture.scratch_path("tool");
    std::fs::write(&tool, "#!/bin/sh\necho never\n").unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o644)).unwrap();
    let entry = fixture.action("noexec.sh", "#!/bin/sh\n\"$TOOL\"\n");
    let mut job = fixture.job(144, &entry);
    job.env
        .insert("TOOL".to_string(), tool.display().to_string());
    let (_, report) = run_to_end(fixture.context(), job).await;
    assert_eq!(report.exit_code, Some(126));
    assert_eq!(
        report.error,
        Some(format!(
            "exited with code 126: not executable: {:?} was found in image attune-test/image:1 but cannot be executed (permission denied)",
            tool.display().to_string()
        )),
        "stderr: {}",
        report.stderr
    );

    // An action's own `exit 127` says what the code means without naming a command.
    let entry = fixture.action("exit127.sh", "#!/bin/sh\nexit 127\n");
    let (_, report) = run_to_end(fixture.context(), fixture.job(145, &entry)).await;
    assert_eq!(report.exit_code, Some(127));
    assert!(
        report
            .error
            .as_deref()
            .is_some_and(|error| error.starts_with("exited with code 127: command not found (")),
        "{report:?}"
    );
}

#[tokio::test]
async fn any_bytes_an_action_writes_are_reported_exactly() {
    let fixture = Fixture::new();
    let entry = fixture.action(
        "bytes.sh",
        "#!/bin/sh\nprintf 'a\\000b\\033[31m\\377\\376'\nprintf 'err\\000\\200' >&2\nhead -c 70000 /dev/zero | tr '\\0' 'x'\n",
    );
    let (events, report) = run_to_end(fixture.context(), fixture.job(146, &entry)).await;
    assert_eq!(report.outcome, JobOutcome::Succeeded, "{report:?}");
    let mut expected = b"a\0b\x1b[31m\xff\xfe".to_vec();
    expected.extend(std::iter::repeat_n(b'x', 70_000));
    assert_eq!(text_to_bytes(&report.stdout), expected);
    assert_eq!(text_to_bytes(&report.stderr), b"err\0\x80");
    let streamed = text_to_bytes(&logged_text(&events, OutputStream::Stdout));
    assert_eq!(streamed, expected, "live chunks carry the same bytes");
    assert_eq!(
        report.result,
        Some(Value::String(report.stdout.clone())),
        "not JSON: the result is the output text"
    );
}

#[tokio::test]
async fn timeout_kills_the_tree_including_a_grandchild_that_ignores_sigterm() {
    let fixture = Fixture::new();
    let pid_file = fixture.scratch_path("grandchild.pid");
    let entry = fixture.action(
        "stubborn.sh",
        "#!/bin/sh\nsh -c 'trap \"\" TERM; echo $$ > \"$PID_FILE.tmp\"; mv \"$PID_FILE.tmp\" \"$PID_FILE\"; while :; do sleep 0.1; done' &\necho started\nwait\n",
    );
    let mut job = fixture.job(151, &entry);
    job.timeout_seconds = 1;
    job.kill_grace_seconds = 1;
    job.env
        .insert("PID_FILE".to_string(), pid_file.display().to_string());
    let started = Instant::now();
    let (_, report) = run_to_end(fixture.context(), job).await;
    assert_eq!(report.outcome, JobOutcome::Timeout, "{report:?}");
    assert_eq!(report.error.as_deref(), Some("timed out after 1s"));
    assert_eq!(report.stdout, "started\n");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    let grandchild: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    wait_until("the grandchild is gone", || process_is_gone(grandchild)).await;
}

#[tokio::test]
async fn cancel_stops_a_running_job_without_waiting_out_the_grace() {
    let fixture = Fixture::new();
    let entry = fixture.action(
        "sleepy.sh",
        "#!/bin/sh\necho waiting\nwhile :; do sleep 0.1; done\n",
    );
    let mut job = fixture.job(161, &entry);
    job.kill_grace_seconds = 60;
    let mut running = start(fixture.context(), job);
    let pid = match running.next_event().await {
        AgentEvent::Running { pid, .. } => pid.expect("pid"),
        other => panic!("expected running, got {other:?}"),
    };
    let canceled_at = Instant::now();
    running.stop.send(Some(StopRequest::Cancel)).unwrap();
    let (_, report) = running.finish().await;
    assert_eq!(report.outcome, JobOutcome::Canceled, "{report:?}");
    assert_eq!(report.error.as_deref(), Some("canceled"));
    assert_eq!(report.signal, Some(SIGTERM));
    assert!(
        canceled_at.elapsed() < Duration::from_secs(10),
        "took {:?}",
        canceled_at.elapsed()
    );
    wait_until("the action is gone", || process_is_gone(pid)).await;
}

#[tokio::test]
async fn abandon_reports_abandoned() {
    let fixture = Fixture::new();
    let entry = fixture.action("sleepy.sh", "#!/bin/sh\nwhile :; do sleep 0.1; done\n");
    let mut running = start(fixture.context(), fixture.job(162, &entry));
    assert!(matches!(
        running.next_event().await,
        AgentEvent::Running { .. }
    ));
    running.stop.send(Some(StopRequest::Abandon)).unwrap();
    let (_, report) = running.finish().await;
    assert_eq!(report.outcome, JobOutcome::Abandoned);
}

#[tokio::test]
async fn output_over_the_limit_is_truncated_while_the_action_runs_to_its_end() {
    let fixture = Fixture::new();
    let marker = fixture.scratch_path("reached-the-end");
    let entry = fixture.action(
        "chatty.sh",
        "#!/bin/sh\ni=0\nwhile [ $i -lt 5000 ]; do echo \"line $i of a long and chatty output\"; i=$((i+1)); done\necho small >&2\ntouch \"$MARKER\"\n",
    );
    let mut job = fixture.job(171, &entry);
    job.output_limit_bytes = 100;
    job.env
        .insert("MARKER".to_string(), marker.display().to_string());
    let (events, report) = run_to_end(fixture.context(), job).await;
    assert_eq!(report.outcome, JobOutcome::Succeeded, "{report:?}");
    assert!(marker.exists(), "the action ran to its real end");
    assert!(report.stdout_truncated);
    assert!(!report.stderr_truncated);
    let truncation = "\n[attune: output truncated after 100 bytes]\n";
    assert!(report.stdout.ends_with(truncation), "{}", report.stdout);
    assert_eq!(report.stdout.len(), 100 + truncation.len());
    assert!(report.stdout.starts_with("line 0 of a long"));
    assert_eq!(report.stderr, "small\n");
    assert_eq!(logged_text(&events, OutputStream::Stdout), report.stdout);
    assert_eq!(logged_text(&events, OutputStream::Stderr), "small\n");
}

#[tokio::test]
async fn live_log_chunks_arrive_before_the_process_ends_and_in_order() {
    let fixture = Fixture::new();
    let release = fixture.scratch_path("release");
    let entry = fixture.action(
        "live.sh",
        "#!/bin/sh\necho first line\necho to stderr >&2\nwhile [ ! -f \"$RELEASE\" ]; do sleep 0.02; done\necho after release\n",
    );
    let mut job = fixture.job(181, &entry);
    job.env
        .insert("RELEASE".to_string(), release.display().to_string());
    let mut running = start(fixture.context(), job);
    let mut early_events = Vec::new();
    let mut seen_stdout = String::new();
    let mut seen_stderr = String::new();
    while !(seen_stdout.contains("first line") && seen_stderr.contains("to stderr")) {
        let event = running.next_event().await;
        match &event {
            AgentEvent::Log {
                stream: OutputStream::Stdout,
                data,
                ..
            } => seen_stdout.push_str(data),
            AgentEvent::Log {
                stream: OutputStream::Stderr,
                data,
                ..
            } => seen_stderr.push_str(data),
            AgentEvent::Finished(report) => panic!("finished before release: {report:?}"),
            _ => {}
        }
        early_events.push(event);
    }
    // The action is still waiting for the release file: the chunks were live.
    assert!(!release.exists());
    std::fs::write(&release, "go").unwrap();
    let (later_events, report) = running.finish().await;
    assert_eq!(report.outcome, JobOutcome::Succeeded, "{report:?}");
    let all_events: Vec<AgentEvent> = early_events.into_iter().chain(later_events).collect();
    let sequence = log_sequence(&all_events);
    assert_eq!(sequence, (0..sequence.len() as u64).collect::<Vec<_>>());
    assert_eq!(
        logged_text(&all_events, OutputStream::Stdout),
        "first line\nafter release\n"
    );
    assert!(matches!(all_events[0], AgentEvent::Running { .. }));
}

#[tokio::test]
async fn stream_logs_off_sends_no_chunks_but_keeps_output() {
    let fixture = Fixture::new();
    let entry = fixture.action("quiet.sh", "#!/bin/sh\necho kept\n");
    let mut job = fixture.job(182, &entry);
    job.stream_logs = false;
    let (events, report) = run_to_end(fixture.context(), job).await;
    assert!(log_sequence(&events).is_empty());
    assert_eq!(report.stdout, "kept\n");
}

#[tokio::test]
async fn missing_interpreter_is_reported_with_what_was_looked_for() {
    let fixture = Fixture::new();
    let entry = fixture.action("hello.rb", "puts 'hi'\n");
    let empty = tempfile::tempdir().unwrap();
    let mut context = fixture.context();
    context.detector = Detector::new(
        SearchPath::only(vec![empty.path().to_path_buf()]),
        RuntimeHints::default(),
    );
    let mut job = fixture.job(191, &entry);
    job.runtime = Runtime::Ruby;
    let (events, report) = run_to_end(context.clone(), job.clone()).await;
    assert_eq!(events.len(), 1, "only Finished: {events:?}");
    assert_eq!(report.outcome, JobOutcome::Failed);
    assert_eq!(report.failure_kind, Some(FailureKind::InterpreterMissing));
    assert_eq!(
        report.error.as_deref(),
        Some("interpreter ruby not found in image attune-test/image:1 (looked for ruby in PATH and /usr/bin, /usr/local/bin, /bin)")
    );

    context.image = None;
    job.runtime = Runtime::Python;
    let (_, report) = run_to_end(context, job).await;
    assert_eq!(
        report.error.as_deref(),
        Some("interpreter python not found in image this image (looked for python3, python in PATH and /usr/bin, /usr/local/bin, /bin)")
    );
}

#[tokio::test]
async fn missing_entry_point_names_pack_and_path() {
    let fixture = Fixture::new();
    let (_, report) = run_to_end(fixture.context(), fixture.job(201, "actions/x.sh")).await;
    assert_eq!(report.outcome, JobOutcome::Failed);
    assert_eq!(report.failure_kind, Some(FailureKind::EntryPointMissing));
    assert_eq!(
        report.error.unwrap(),
        format!(
            "entry point actions/x.sh not found in pack testpack ({})",
            fixture.pack.path().join("actions/x.sh").display()
        )
    );
}

#[tokio::test]
async fn native_entry_points_must_be_executable() {
    let fixture = Fixture::new();
    let entry = fixture.action(
        "tool",
        "#!/bin/sh\necho native ran \"$ATTUNE_EXECUTION_ID\"\n",
    );
    let mut job = fixture.job(211, &entry);
    job.runtime = Runtime::Native;
    let (_, report) = run_to_end(fixture.context(), job.clone()).await;
    assert_eq!(report.failure_kind, Some(FailureKind::EntryPointMissing));
    assert!(
        report
            .error
            .as_deref()
            .unwrap()
            .contains("is not executable"),
        "{report:?}"
    );

    let path = fixture.pack.path().join(&entry);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (_, report) = run_to_end(fixture.context(), job).await;
    assert_eq!(report.outcome, JobOutcome::Succeeded, "{report:?}");
    assert_eq!(report.stdout, "native ran 211\n");
}

#[tokio::test]
async fn a_work_dir_that_cannot_be_created_fails_the_execution_clearly() {
    let fixture = Fixture::new();
    let entry = fixture.action("ok.sh", "#!/bin/sh\necho ok\n");
    let blocker = fixture.scratch_path("a-file");
    std::fs::write(&blocker, "not a directory").unwrap();
    let mut context = fixture.context();
    context.workdir_base = blocker.join("below");
    let (events, report) = run_to_end(context, fixture.job(221, &entry)).await;
    assert_eq!(events.len(), 1);
    assert_eq!(report.outcome, JobOutcome::Failed);
    assert_eq!(report.failure_kind, Some(FailureKind::Spawn));
    let error = report.error.unwrap();
    assert!(
        error.starts_with(&format!(
            "create work directory {}: ",
            blocker.join("below/attune-exec-221").display()
        )),
        "{error}"
    );
}

#[tokio::test]
async fn a_stop_before_start_reports_without_running() {
    let fixture = Fixture::new();
    let marker = fixture.scratch_path("ran");
    let entry = fixture.action("touch.sh", "#!/bin/sh\ntouch \"$MARKER\"\n");
    let mut job = fixture.job(231, &entry);
    job.env
        .insert("MARKER".to_string(), marker.display().to_string());
    let (sender, mut events) = mpsc::unbounded_channel();
    let (_stop, stop_receiver) = watch::channel(Some(StopRequest::Cancel));
    let report = run_job(&fixture.context(), &job, &sender, stop_receiver).await;
    assert_eq!(report.outcome, JobOutcome::Canceled);
    assert!(matches!(events.try_recv(), Ok(AgentEvent::Finished(_))));
    assert!(!Path::new(&marker).exists());
}

#[tokio::test]
async fn background_leftovers_do_not_hold_the_report() {
    let fixture = Fixture::new();
    let entry = fixture.action("leftover.sh", "#!/bin/sh\nsleep 300 &\necho done\n");
    let started = Instant::now();
    let (_, report) = run_to_end(fixture.context(), fixture.job(241, &entry)).await;
    assert_eq!(report.outcome, JobOutcome::Succeeded);
    assert_eq!(report.stdout, "done\n");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}
