//! Controller logic against the recording Docker fake and a scripted agent channel, with a real
//! Postgres for state: every path ends in a terminal status with its reason (each exit class:
//! oom, killed, exec-format, injection-failed, pull-failed, agent-exited, timeout, canceled),
//! every created container is removed, the agent arrives by volume or put_archive, limits and
//! allow-lists reach (or stop) the container, and the periodic sweep removes only what it may.

use async_trait::async_trait;
use attune_broker::{AgentChannel, BrokerError};
use attune_controller::delivery::AgentDelivery;
use attune_controller::events::apply_event;
use attune_controller::execution::{
    check_agent_sha256, AgentBinary, AgentIdentity, Controller, ControllerSettings,
};
use attune_controller::limits::ExecutionPolicy;
use attune_controller::scheduler::{reconcile_at_start, sweep_containers};
use attune_controller::signals::ExecutionSignals;
use attune_docker::fake::{DockerCall, Operation, RecordingDocker};
use attune_docker::{ContainerCreateSpec, DockerError, DockerOps};
use attune_protocol::api::ExecutionStatus;
use attune_protocol::FailureKind;
use attune_protocol::{AgentCommand, AgentEvent, Job, JobOutcome, JobReport};
use attune_store::testing::TestDatabase;
use attune_store::{ExecutionRow, Fence, NewPack, Store};
use serde_json::json;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

/// Records commands; hands jobs to the test, which plays the agent.
#[derive(Clone)]
struct ScriptedAgents {
    commands: Arc<Mutex<Vec<(String, AgentCommand)>>>,
    jobs: mpsc::UnboundedSender<(String, Job)>,
    /// Agents whose broker account was made and not yet removed.
    accounts: Arc<Mutex<std::collections::HashSet<String>>>,
}

#[async_trait]
impl AgentChannel for ScriptedAgents {
    fn is_connected(&self) -> bool {
        true
    }

    async fn declare_agent_queue(&self, _agent_id: &str) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn send_command(
        &self,
        agent_id: &str,
        command: &AgentCommand,
    ) -> Result<(), BrokerError> {
        self.commands
            .lock()
            .unwrap()
            .push((agent_id.to_string(), command.clone()));
        if let AgentCommand::Job(job) = command {
            let _ = self.jobs.send((agent_id.to_string(), job.clone()));
        }
        Ok(())
    }

    async fn agent_url(&self, agent_id: &str) -> Result<String, BrokerError> {
        self.accounts.lock().unwrap().insert(agent_id.to_string());
        Ok(format!(
            "amqp://attune-agent.test.{agent_id}:pw@127.0.0.1:5672/%2f"
        ))
    }

    async fn forget_agent(&self, agent_id: &str) -> Result<(), BrokerError> {
        self.accounts.lock().unwrap().remove(agent_id);
        Ok(())
    }
}

struct Harness {
    database: TestDatabase,
    store: Store,
    docker: RecordingDocker,
    signals: ExecutionSignals,
    agents: ScriptedAgents,
    jobs: mpsc::UnboundedReceiver<(String, Job)>,
    controller: Controller,
    stop_tracker: CancellationToken,
}

fn settings(agent_start_timeout: Duration) -> ControllerSettings {
    ControllerSettings {
        controller_id: "controller-under-test".into(),
        network: Some("host".into()),
        events_queue: "attune.agent.events".into(),
        agent_mq_ca_pem: None,
        remove_containers: true,
        default_image: None,
        pids_limit: 512,
        nofile_limit: 4096,
        output_limit_bytes: 1024,
        kill_grace_seconds: 1,
        agent_start_timeout,
        report_grace: Duration::from_millis(200),
        agent_delivery: AgentDelivery::PutArchive,
        engine_is_local: true,
        default_memory_bytes: Some(512 << 20),
        host_cpus: Some(2.0),
        policy: ExecutionPolicy::default(),
        timeout_slack: Duration::from_millis(500),
        lease: Duration::from_secs(30),
        registry_auth: Default::default(),
        agent_secret: attune_controller::identity::AgentSecret::from_bytes(vec![9; 32]),
    }
}

/// A tiny x86-64 ELF header is all the controller reads of the agent binary.
fn fake_agent_binary(machine: u16) -> AgentBinary {
    let mut bytes = vec![0u8; 64];
    bytes[..4].copy_from_slice(b"\x7fELF");
    bytes[18..20].copy_from_slice(&machine.to_le_bytes());
    AgentBinary::from_bytes(bytes).unwrap()
}

impl Harness {
    async fn new(agent_start_timeout: Duration) -> Harness {
        Harness::with_settings(settings(agent_start_timeout)).await
    }

    /// The harness most tests need: agents get ten seconds to start and the engine has
    /// `busybox:1.36` for amd64 (the image of `hello.greet`).
    async fn with_busybox() -> Harness {
        let harness = Harness::new(Duration::from_secs(10)).await;
        harness.docker.add_image("busybox:1.36", "amd64");
        harness
    }

    /// A harness whose controller follows the fake's container events, as in production.
    async fn with_settings(settings: ControllerSettings) -> Harness {
        let database = TestDatabase::create().await.unwrap();
        let store = Store::connect(&database.url, 4).await.unwrap();
        let pack_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/packs/hello");
        let pack = attune_pack::load_pack_dir(&pack_dir).unwrap();
        let archive = pack.to_archive().unwrap();
        store
            .register_pack(
                NewPack {
                    pack: &pack,
                    archive: &archive,
                },
                false,
            )
            .await
            .unwrap();
        let docker = RecordingDocker::new();
        let signals = ExecutionSignals::default();
        let (sender, jobs) = mpsc::unbounded_channel();
        let agents = ScriptedAgents {
            commands: Arc::default(),
            jobs: sender,
            accounts: Arc::default(),
        };
        let controller = Controller::new(
            store.clone(),
            Arc::new(docker.clone()),
            Arc::new(agents.clone()),
            signals.clone(),
            settings,
            fake_agent_binary(62),
        );
        docker.set_lifecycle_events(true);
        let stop_tracker = CancellationToken::new();
        tokio::spawn(controller.lifecycle().clone().run(
            Arc::new(docker.clone()),
            controller.settings().controller_id.clone(),
            stop_tracker.clone(),
        ));
        wait_until("tracker never followed events", || {
            controller.lifecycle().is_following()
        })
        .await;
        Harness {
            database,
            store,
            docker,
            signals,
            agents,
            jobs,
            controller,
            stop_tracker,
        }
    }

    /// Replaces the stored `container` settings of an action (keys merged over the current).
    async fn set_container(&self, action_ref: &str, changes: serde_json::Value) {
        let action = self.store.get_action(action_ref).await.unwrap();
        let mut container = action.container.unwrap_or_else(|| json!({}));
        for (key, value) in changes.as_object().unwrap() {
            container[key] = value.clone();
        }
        sqlx::query("UPDATE actions SET container = $1 WHERE ref = $2")
            .bind(container)
            .bind(action_ref)
            .execute(self.store.pool())
            .await
            .unwrap();
    }

    /// The spec of the one container created for an agent's job.
    fn created_spec(&self) -> ContainerCreateSpec {
        let specs: Vec<_> = self
            .docker
            .calls()
            .into_iter()
            .filter_map(|call| match call {
                DockerCall::CreateContainer(spec)
                    if spec.labels.contains_key("attune.execution") =>
                {
                    Some(spec)
                }
                _ => None,
            })
            .collect();
        assert_eq!(specs.len(), 1, "one action container: {specs:#?}");
        specs[0].clone()
    }

    /// Waits until the container running an agent's job has started.
    async fn wait_started(&self, container_id: &str) {
        wait_until("container never started", || {
            self.docker
                .container(container_id)
                .is_some_and(|container| container.status == "running")
        })
        .await;
    }

    async fn scheduled_execution(&self, action_ref: &str) -> ExecutionRow {
        let action = self.store.get_action(action_ref).await.unwrap();
        let parameters = json!({"name": "Ada", "punctuation": "!"});
        let created = self
            .store
            .create_execution(&action, parameters.as_object().unwrap())
            .await
            .unwrap();
        let controller_id = self.controller.settings().controller_id.clone();
        let mut claimed = self
            .store
            .claim_requested(&controller_id, 10, false)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].id, created.id);
        claimed.remove(0)
    }

    /// Schedules an execution of `hello.greet` and runs it in a task, as the scheduler does;
    /// returns its id and the task.
    async fn spawn_greet(&self) -> (i64, JoinHandle<()>) {
        let execution = self.scheduled_execution("hello.greet").await;
        let id = execution.id;
        let controller = self.controller.clone();
        let run = tokio::spawn(async move { controller.run_execution(execution).await });
        (id, run)
    }

    /// Runs an execution of `hello.greet` whose agent reports success; returns its id.
    async fn run_succeeding(&mut self) -> i64 {
        let (id, run) = self.spawn_greet().await;
        self.agent_reports(JobOutcome::Succeeded, 0).await;
        run.await.unwrap();
        id
    }

    /// Starts an execution of `hello.greet` and waits until its container runs; returns its
    /// id, the agent's id, its container and the task running it.
    async fn start_greet(&mut self) -> (i64, String, String, JoinHandle<()>) {
        let (id, run) = self.spawn_greet().await;
        let agent_id = self.next_job_agent().await;
        let container_id = self.container_of(&agent_id);
        self.wait_started(&container_id).await;
        (id, agent_id, container_id, run)
    }

    /// The agent the next job was sent to.
    async fn next_job_agent(&mut self) -> String {
        let (agent_id, _job) = self.jobs.recv().await.expect("a job was queued");
        agent_id
    }

    /// Stores an agent's event, as the events consumer does.
    async fn apply(&self, event: AgentEvent) {
        apply_event(&self.store, &self.signals, Duration::from_secs(20), event)
            .await
            .unwrap();
    }

    fn container_of(&self, agent_id: &str) -> String {
        self.docker
            .containers()
            .into_iter()
            .find(|container| {
                container
                    .spec
                    .labels
                    .get("attune.agent-id")
                    .map(String::as_str)
                    == Some(agent_id)
            })
            .map(|container| container.id)
            .expect("container for agent")
    }

    /// Plays a well-behaved agent for the next job: running, then finished, then exits.
    async fn agent_reports(&mut self, outcome: JobOutcome, exit_code: i32) {
        let (agent_id, job) = self.jobs.recv().await.expect("a job was queued");
        let container_id = self.container_of(&agent_id);
        self.apply(running_event(&agent_id, job.execution_id, Some(7)))
            .await;
        let report = JobReport {
            exit_code: Some(exit_code),
            stdout: "{\"ok\": true}\n".into(),
            result: Some(json!({"ok": true})),
            duration_ms: 3,
            ..job_report(&agent_id, job.execution_id, outcome)
        };
        self.apply(AgentEvent::Finished(report)).await;
        self.docker.exit_container(&container_id, exit_code as i64);
    }

    async fn finish(self) {
        self.stop_tracker.cancel();
        self.database.drop_database().await.unwrap();
    }
}

/// Polls `done` until it holds; fails the test with `what` after ten seconds.
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// An agent's `running` event.
fn running_event(agent_id: &str, execution_id: i64, pid: Option<u32>) -> AgentEvent {
    AgentEvent::Running {
        agent_id: agent_id.to_string(),
        execution_id,
        pid,
    }
}

/// An agent's report with no output, exit code or error; tests set what they need.
fn job_report(agent_id: &str, execution_id: i64, outcome: JobOutcome) -> JobReport {
    JobReport {
        agent_id: agent_id.to_string(),
        execution_id,
        outcome,
        failure_kind: None,
        exit_code: None,
        signal: None,
        stdout: String::new(),
        stderr: String::new(),
        stdout_truncated: false,
        stderr_truncated: false,
        result: None,
        error: None,
        duration_ms: 1,
    }
}

/// A finished report of a successful job, as an agent sends it.
fn succeeded_report(agent_id: &str, execution_id: i64) -> AgentEvent {
    AgentEvent::Finished(JobReport {
        exit_code: Some(0),
        ..job_report(agent_id, execution_id, JobOutcome::Succeeded)
    })
}

/// A busybox container named `name` with these labels, as a controller creates it.
fn busybox_spec(name: &str, labels: &[(&str, &str)]) -> ContainerCreateSpec {
    ContainerCreateSpec {
        name: name.to_string(),
        image: "busybox:1.36".into(),
        labels: labels
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect(),
        ..Default::default()
    }
}

/// What the engine answers when it refuses an operation.
fn rejected(operation: &str, reason: &str) -> DockerError {
    DockerError::Rejected {
        operation: operation.to_string(),
        reason: reason.to_string(),
    }
}

fn count(calls: &[DockerCall], matches: impl Fn(&DockerCall) -> bool) -> usize {
    calls.iter().filter(|call| matches(call)).count()
}

fn created(calls: &[DockerCall]) -> usize {
    count(calls, |call| matches!(call, DockerCall::CreateContainer(_)))
}

fn started(calls: &[DockerCall]) -> usize {
    count(calls, |call| matches!(call, DockerCall::Start(_)))
}

fn killed(calls: &[DockerCall]) -> usize {
    count(calls, |call| matches!(call, DockerCall::Kill(_, _)))
}

fn pulled(calls: &[DockerCall]) -> usize {
    count(calls, |call| matches!(call, DockerCall::PullImage(_)))
}

fn assert_all_removed(docker: &RecordingDocker) {
    let calls = docker.calls();
    let created = created(&calls);
    let removed = count(&calls, |call| matches!(call, DockerCall::Remove(_)));
    assert_eq!(
        created, removed,
        "every created container is removed: {calls:#?}"
    );
    assert!(docker.containers().is_empty(), "no container left");
}

#[tokio::test]
async fn happy_path_creates_injects_starts_and_removes_a_hardened_container() {
    let mut harness = Harness::with_busybox().await;
    let id = harness.run_succeeding().await;

    let stored = harness.store.get_execution(id).await.unwrap();
    assert_eq!(stored.status(), ExecutionStatus::Succeeded);
    assert_eq!(stored.result, Some(json!({"ok": true})));

    let calls = harness.docker.calls();
    let spec = calls
        .iter()
        .find_map(|call| match call {
            DockerCall::CreateContainer(spec) => Some(spec.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(spec.image, "busybox:1.36");
    assert_eq!(spec.entrypoint, vec!["/opt/attune/bin/attune-agent"]);
    assert_eq!(spec.labels["attune.managed"], "true");
    assert_eq!(spec.labels["attune.execution"], id.to_string());
    assert_eq!(spec.labels["attune.controller"], "controller-under-test");
    assert_eq!(spec.cap_drop, vec!["ALL"]);
    assert_eq!(spec.security_opt, vec!["no-new-privileges"]);
    assert!(spec.init);
    assert_eq!(spec.pids_limit, Some(512));
    assert_eq!(spec.nofile_limit, Some(4096));
    assert_eq!(spec.network_mode.as_deref(), Some("host"));
    assert_eq!(spec.user.as_deref(), Some("0"), "explicit user");
    assert!(spec.working_dir.is_some(), "explicit working dir");

    let uploaded: Vec<(String, u32, u64)> = calls
        .iter()
        .find_map(|call| match call {
            DockerCall::UploadArchive {
                dest_dir, entries, ..
            } if dest_dir == "/" => Some(entries.clone()),
            _ => None,
        })
        .expect("one archive uploaded at /");
    let mode_of = |path: &str| {
        uploaded
            .iter()
            .find(|(entry, _, _)| entry.trim_end_matches('/') == path)
            .map(|(_, mode, _)| *mode)
    };
    assert_eq!(
        mode_of("opt/attune/bin/attune-agent"),
        Some(0o755),
        "{uploaded:?}"
    );
    assert_eq!(
        mode_of("opt/attune/packs/hello/actions/greet.sh"),
        Some(0o755)
    );
    assert_eq!(
        mode_of("opt/attune/packs/hello/actions/greet.yaml"),
        Some(0o644)
    );
    let order: Vec<&str> = calls
        .iter()
        .filter_map(|call| match call {
            DockerCall::CreateContainer(_) => Some("create"),
            DockerCall::UploadArchive { .. } => Some("upload"),
            DockerCall::Start(_) => Some("start"),
            DockerCall::Remove(_) => Some("remove"),
            _ => None,
        })
        .collect();
    assert_eq!(order, vec!["create", "upload", "start", "remove"]);
    assert_all_removed(&harness.docker);
    harness.finish().await;
}

/// Runs an execution the agent never answers; returns the stored row.
async fn run_unanswered(harness: &Harness) -> ExecutionRow {
    let execution = harness.scheduled_execution("hello.greet").await;
    let id = execution.id;
    harness.controller.run_execution(execution).await;
    harness.store.get_execution(id).await.unwrap()
}

#[tokio::test]
async fn image_that_cannot_be_pulled_fails_without_a_container() {
    let harness = Harness::new(Duration::from_secs(10)).await;
    let row = run_unanswered(&harness).await;
    assert_eq!(row.status(), ExecutionStatus::Failed);
    assert_eq!(
        row.failure_kind.map(FailureKind::as_str),
        Some("pull-failed")
    );
    assert!(row
        .error
        .unwrap()
        .contains("image busybox:1.36 is not present locally and could not be pulled"));
    let calls = harness.docker.calls();
    assert_eq!(created(&calls), 0);
    assert_eq!(pulled(&calls), 1);
    harness.finish().await;
}

#[tokio::test]
async fn pullable_image_is_pulled_once_then_used() {
    let mut harness = Harness::new(Duration::from_secs(10)).await;
    harness.docker.add_pullable_image("busybox:1.36", "amd64");
    harness.run_succeeding().await;
    let calls = harness.docker.calls();
    assert_eq!(pulled(&calls), 1);
    assert_all_removed(&harness.docker);
    harness.finish().await;
}

#[tokio::test]
async fn image_of_another_architecture_is_refused_before_create() {
    let harness = Harness::new(Duration::from_secs(10)).await;
    harness.docker.add_image("busybox:1.36", "arm64");
    let row = run_unanswered(&harness).await;
    assert_eq!(row.status(), ExecutionStatus::Failed);
    assert_eq!(
        row.failure_kind.map(FailureKind::as_str),
        Some("exec-format")
    );
    assert!(row
        .error
        .unwrap()
        .contains("built for arm64 but the agent binary is for amd64"));
    assert_eq!(created(&harness.docker.calls()), 0);
    harness.finish().await;
}

#[tokio::test]
async fn start_failure_with_exec_format_error_is_classified_and_cleaned_up() {
    let harness = Harness::with_busybox().await;
    harness.docker.fail_next(
        Operation::Start,
        rejected(
            "start container",
            "OCI runtime create failed: exec format error",
        ),
    );
    let row = run_unanswered(&harness).await;
    assert_eq!(row.status(), ExecutionStatus::Failed);
    assert_eq!(
        row.failure_kind.map(FailureKind::as_str),
        Some("exec-format")
    );
    assert_all_removed(&harness.docker);
    harness.finish().await;
}

#[tokio::test]
async fn container_exiting_without_a_report_fails_with_its_output() {
    let harness = Harness::with_busybox().await;
    harness.docker.set_exit("attune-exec-", 2);
    harness.docker.set_logs(
        "attune-exec-",
        "attune-agent: connect to message queue: refused",
    );
    let row = run_unanswered(&harness).await;
    assert_eq!(row.status(), ExecutionStatus::Failed);
    assert_eq!(
        row.failure_kind.map(FailureKind::as_str),
        Some("agent-exited")
    );
    let error = row.error.unwrap();
    assert!(
        error.contains("exited with code 2 before reporting"),
        "{error}"
    );
    assert!(
        error.contains("connect to message queue: refused"),
        "{error}"
    );
    assert_all_removed(&harness.docker);
    harness.finish().await;
}

#[tokio::test]
async fn out_of_memory_is_classified_as_oom_never_success() {
    let mut harness = Harness::with_busybox().await;
    let (id, _agent_id, container_id, run) = harness.start_greet().await;
    assert!(harness.docker.oom_kill_container(&container_id));
    run.await.unwrap();
    let row = harness.store.get_execution(id).await.unwrap();
    assert_eq!(row.status(), ExecutionStatus::Failed);
    assert_eq!(row.failure_kind.map(FailureKind::as_str), Some("oom"));
    assert_all_removed(&harness.docker);
    harness.finish().await;
}

#[tokio::test]
async fn agent_that_never_reports_is_injection_failed_and_killed() {
    let harness = Harness::new(Duration::from_millis(300)).await;
    harness.docker.add_image("busybox:1.36", "amd64");
    let row = run_unanswered(&harness).await;
    assert_eq!(row.status(), ExecutionStatus::Failed);
    assert_eq!(
        row.failure_kind.map(FailureKind::as_str),
        Some("injection-failed")
    );
    let calls = harness.docker.calls();
    assert_eq!(killed(&calls), 1);
    assert_all_removed(&harness.docker);
    harness.finish().await;
}

#[tokio::test]
async fn cancel_is_sent_to_the_agent_and_enforced_by_killing() {
    let mut harness = Harness::with_busybox().await;
    // Cancel only once the container runs: earlier, the controller never starts it at all
    // (cancel_before_start_never_starts_the_container).
    let (id, agent_id, _container_id, run) = harness.start_greet().await;
    harness.apply(running_event(&agent_id, id, None)).await;
    harness.store.request_cancel(id).await.unwrap();
    harness.signals.cancel(id);
    // This agent ignores the cancel: the controller must kill after grace (1 s) + 2 s.
    run.await.unwrap();
    let row = harness.store.get_execution(id).await.unwrap();
    assert_eq!(row.status(), ExecutionStatus::Canceled);
    let commands = harness.agents.commands.lock().unwrap().clone();
    assert!(commands
        .iter()
        .any(|(_, command)| matches!(command, AgentCommand::Cancel { execution_id } if *execution_id == id)));
    assert_eq!(killed(&harness.docker.calls()), 1);
    assert_all_removed(&harness.docker);
    harness.finish().await;
}

#[tokio::test]
async fn cancel_before_start_never_starts_the_container() {
    let harness = Harness::with_busybox().await;
    let execution = harness.scheduled_execution("hello.greet").await;
    let id = execution.id;
    harness.store.request_cancel(id).await.unwrap();
    harness.controller.run_execution(execution).await;
    let row = harness.store.get_execution(id).await.unwrap();
    assert_eq!(row.status(), ExecutionStatus::Canceled);
    assert_eq!(started(&harness.docker.calls()), 0);
    harness.finish().await;
}

#[tokio::test]
async fn restart_reconcile_adopts_live_removes_orphans_and_fails_the_lost() {
    let harness = Harness::with_busybox().await;
    let docker: Arc<dyn DockerOps> = Arc::new(harness.docker.clone());
    // A live execution whose container is running (left by a crashed controller).
    let live = harness.scheduled_execution("hello.greet").await;
    let spec = busybox_spec(
        "attune-exec-live",
        &[
            ("attune.managed", "true"),
            ("attune.controller", "controller-under-test"),
            ("attune.execution", &live.id.to_string()),
            ("attune.agent-id", "exec-live"),
        ],
    );
    let live_container = docker.create_container(&spec).await.unwrap();
    docker.start_container(&live_container).await.unwrap();
    // An orphan: its execution is unknown.
    let mut orphan_spec = spec.clone();
    orphan_spec.name = "attune-exec-orphan".into();
    orphan_spec
        .labels
        .insert("attune.execution".into(), "999999".into());
    let orphan = docker.create_container(&orphan_spec).await.unwrap();
    // A container of another controller: not ours to touch.
    let mut foreign_spec = orphan_spec.clone();
    foreign_spec.name = "attune-exec-foreign".into();
    foreign_spec
        .labels
        .insert("attune.controller".into(), "someone-else".into());
    let foreign = docker.create_container(&foreign_spec).await.unwrap();
    // A live execution whose container is gone.
    let lost = harness.scheduled_execution("hello.greet").await;

    let mut adoptions = JoinSet::new();
    let report = reconcile_at_start(&harness.store, &docker, &harness.controller, &mut adoptions)
        .await
        .unwrap();
    assert_eq!(report.adopted, 1);
    assert_eq!(report.removed, 1);
    assert_eq!(report.failed, 1);
    assert!(harness.docker.container(&orphan).is_none());
    assert!(harness.docker.container(&foreign).is_some());
    let lost = harness.store.get_execution(lost.id).await.unwrap();
    assert_eq!(lost.status(), ExecutionStatus::Failed);
    assert_eq!(
        lost.failure_kind.map(FailureKind::as_str),
        Some("controller-restarted")
    );

    // The adopted container's agent reports; the adopter removes the container.
    harness.apply(succeeded_report("exec-live", live.id)).await;
    harness.docker.exit_container(&live_container, 0);
    wait_until("adopted container never removed", || {
        harness.docker.container(&live_container).is_none()
    })
    .await;
    let live = harness.store.get_execution(live.id).await.unwrap();
    assert_eq!(live.status(), ExecutionStatus::Succeeded);
    harness.finish().await;
}

fn uploads(calls: &[DockerCall]) -> Vec<Vec<(String, u32, u64)>> {
    calls
        .iter()
        .filter_map(|call| match call {
            DockerCall::UploadArchive { entries, .. } => Some(entries.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn volume_delivery_mounts_agent_and_pack_read_only_filled_once_and_copies_nothing() {
    let mut harness = Harness::with_settings(ControllerSettings {
        agent_delivery: AgentDelivery::Volume,
        ..settings(Duration::from_secs(10))
    })
    .await;
    harness.docker.add_image("busybox:1.36", "amd64");
    let agent = fake_agent_binary(62);
    let volume = format!("attune-agent-{}", &agent.sha256[..12]);
    let mut pack_volume = String::new();
    for round in 0..2 {
        harness.docker.clear_calls();
        harness.run_succeeding().await;

        let spec = harness.created_spec();
        assert!(
            spec.binds.contains(&format!("{volume}:/opt/attune/bin:ro")),
            "{:?}",
            spec.binds
        );
        let pack_bind = spec
            .binds
            .iter()
            .find(|bind| bind.ends_with(":/opt/attune/packs/hello:ro"))
            .unwrap_or_else(|| panic!("the pack comes from a volume: {:?}", spec.binds));
        pack_volume = pack_bind.split(':').next().unwrap().to_string();
        assert!(pack_volume.starts_with("attune-pack-"), "{pack_volume}");
        assert_eq!(spec.labels["attune.agent-delivery"], "volume");
        let calls = harness.docker.calls();
        let helpers = count(
            &calls,
            |call| matches!(call, DockerCall::CreateContainer(spec) if spec.labels.get("attune.role").map(String::as_str) == Some("volume-fill")),
        );
        assert_eq!(
            helpers,
            if round == 0 { 2 } else { 0 },
            "agent and pack volumes filled once per process"
        );
        assert_eq!(
            uploads(&calls).len(),
            helpers,
            "only the volume fills upload anything: nothing is copied into the action's container"
        );
        assert!(
            !calls.iter().any(|call| matches!(call, DockerCall::Start(id) if harness.docker.container(id).is_some_and(|c| c.spec.labels.contains_key("attune.role")))),
            "the fill helper is never started"
        );
    }
    let pack = harness.docker.volume(&pack_volume).expect("pack volume");
    assert_eq!(pack.files["actions/greet.sh"].mode, 0o755);
    let filled = harness.docker.volume(&volume).expect("agent volume");
    assert_eq!(filled.labels["attune.agent-sha256"], agent.sha256);
    assert_eq!(filled.labels["attune.managed"], "true");
    assert_eq!(filled.files["attune-agent"].mode, 0o755);
    assert_eq!(filled.files["attune-agent"].bytes, *agent.bytes);
    assert_all_removed(&harness.docker);
    harness.finish().await;
}

#[tokio::test]
async fn auto_delivery_falls_back_to_put_archive_when_a_volume_operation_fails() {
    let mut harness = Harness::with_settings(ControllerSettings {
        agent_delivery: AgentDelivery::Auto,
        ..settings(Duration::from_secs(10))
    })
    .await;
    harness.docker.add_image("busybox:1.36", "amd64");
    harness.docker.fail_next(
        Operation::CreateVolume,
        rejected("create volume", "volume driver unavailable"),
    );
    let id = harness.run_succeeding().await;
    let stored = harness.store.get_execution(id).await.unwrap();
    assert_eq!(stored.status(), ExecutionStatus::Succeeded);
    let spec = harness.created_spec();
    assert!(spec.binds.is_empty());
    assert_eq!(spec.labels["attune.agent-delivery"], "put-archive");
    let uploaded = uploads(&harness.docker.calls());
    assert!(uploaded[0]
        .iter()
        .any(|(path, mode, _)| path == "opt/attune/bin/attune-agent" && *mode == 0o755));
    assert_all_removed(&harness.docker);
    harness.finish().await;
}

#[tokio::test]
async fn read_only_action_gets_agent_and_pack_volumes_and_a_tmpfs_work_dir() {
    let mut harness = Harness::with_busybox().await;
    harness
        .set_container("hello.greet", json!({"read_only": true}))
        .await;
    harness.run_succeeding().await;

    let spec = harness.created_spec();
    assert!(spec.read_only_rootfs);
    assert_eq!(spec.tmpfs["/tmp"], "rw,nosuid,nodev,mode=1777,size=64m");
    assert_eq!(
        spec.tmpfs["/opt/attune/work"],
        "rw,nosuid,nodev,mode=1777,size=64m"
    );
    assert!(spec
        .env
        .contains(&"ATTUNE_AGENT_WORKDIR=/opt/attune/work".to_string()));
    let agent_bind = spec
        .binds
        .iter()
        .find(|bind| bind.starts_with("attune-agent-"));
    let pack_bind = spec
        .binds
        .iter()
        .find(|bind| bind.starts_with("attune-pack-"));
    assert!(
        agent_bind.is_some_and(|bind| bind.ends_with(":/opt/attune/bin:ro")),
        "{:?}",
        spec.binds
    );
    assert!(
        pack_bind.is_some_and(|bind| bind.ends_with(":/opt/attune/packs/hello:ro")),
        "{:?}",
        spec.binds
    );
    let pack_volume = pack_bind.unwrap().split(':').next().unwrap().to_string();
    let volume = harness.docker.volume(&pack_volume).unwrap();
    assert_eq!(volume.files["actions/greet.sh"].mode, 0o755);
    assert_eq!(volume.files["actions/greet.yaml"].mode, 0o644);
    let action_uploads = harness
        .docker
        .calls()
        .into_iter()
        .filter(
            |call| matches!(call, DockerCall::UploadArchive { dest_dir, .. } if dest_dir == "/"),
        )
        .count();
    assert_eq!(
        action_uploads, 0,
        "nothing is copied into a read-only container"
    );
    assert_all_removed(&harness.docker);
    harness.finish().await;
}

#[tokio::test]
async fn read_only_action_without_volumes_fails_as_injection_failed() {
    let harness = Harness::with_busybox().await;
    harness
        .set_container("hello.greet", json!({"read_only": true}))
        .await;
    harness.docker.fail_next(
        Operation::CreateVolume,
        rejected("create volume", "volumes are disabled"),
    );
    let row = run_unanswered(&harness).await;
    assert_eq!(row.status(), ExecutionStatus::Failed);
    assert_eq!(
        row.failure_kind.map(FailureKind::as_str),
        Some("injection-failed")
    );
    let error = row.error.unwrap();
    assert!(
        error.contains("read-only root filesystem") && error.contains("volumes are disabled"),
        "{error}"
    );
    assert_eq!(started(&harness.docker.calls()), 0);
    assert!(harness.docker.containers().is_empty());
    harness.finish().await;
}

#[tokio::test]
async fn resources_capabilities_and_default_memory_reach_host_config() {
    let mut harness = Harness::with_settings(ControllerSettings {
        policy: ExecutionPolicy::new(&[], &["NET_BIND_SERVICE".into()], None).unwrap(),
        ..settings(Duration::from_secs(10))
    })
    .await;
    harness.docker.add_image("busybox:1.36", "amd64");
    // Without resources: the default memory, memory-swap the same (no swap), default pids.
    harness.run_succeeding().await;
    let spec = harness.created_spec();
    assert_eq!(spec.memory_bytes, Some(512 << 20));
    assert_eq!(spec.nano_cpus, None);
    assert_eq!(spec.pids_limit, Some(512));
    assert!(spec.cap_add.is_empty());
    assert!(!spec.read_only_rootfs);

    harness
        .set_container(
            "hello.greet",
            json!({"resources": {"memory": "64Mi", "cpus": 0.5, "pids": 64}, "cap_add": ["CAP_NET_BIND_SERVICE"]}),
        )
        .await;
    harness.docker.clear_calls();
    harness.run_succeeding().await;
    let spec = harness.created_spec();
    assert_eq!(spec.memory_bytes, Some(64 << 20));
    assert_eq!(spec.nano_cpus, Some(500_000_000));
    assert_eq!(spec.pids_limit, Some(64));
    assert_eq!(spec.cap_add, vec!["NET_BIND_SERVICE"]);
    assert_eq!(spec.cap_drop, vec!["ALL"]);
    assert_all_removed(&harness.docker);
    harness.finish().await;
}

#[tokio::test]
async fn allow_lists_bad_limits_and_proc_workdirs_are_refused_before_any_container() {
    let harness = Harness::with_settings(ControllerSettings {
        policy: ExecutionPolicy::new(&["python:3.11-*".into()], &[], None).unwrap(),
        ..settings(Duration::from_secs(10))
    })
    .await;
    harness.docker.add_image("busybox:1.36", "amd64");
    let row = run_unanswered(&harness).await;
    assert_eq!(
        row.failure_kind.map(FailureKind::as_str),
        Some("not-allowed")
    );
    assert!(row
        .error
        .unwrap()
        .contains("image busybox:1.36 is not allowed (docker.allowed_images: python:3.11-*)"));

    let harness_open = Harness::with_busybox().await;
    let cases = [
        (
            json!({"cap_add": ["NET_ADMIN"]}),
            "not-allowed",
            "capability NET_ADMIN is not allowed",
        ),
        (
            json!({"workdir": "/proc/self/cwd"}),
            "invalid-action",
            "/proc",
        ),
        (
            json!({"resources": {"memory": "lots"}}),
            "invalid-action",
            "resources: memory",
        ),
        (
            json!({"resources": {"cpus": 64.0}}),
            "invalid-action",
            "more than the 2 CPUs",
        ),
        (
            json!({"resources": {"pids": 4}}),
            "invalid-action",
            "pids must be between 16 and 32768",
        ),
    ];
    for (changes, kind, text) in cases {
        harness_open
            .set_container("hello.greet", changes.clone())
            .await;
        let row = run_unanswered(&harness_open).await;
        assert_eq!(row.status(), ExecutionStatus::Failed, "{changes}");
        assert_eq!(
            row.failure_kind.map(FailureKind::as_str),
            Some(kind),
            "{changes}: {:?}",
            row.error
        );
        let error = row.error.unwrap();
        assert!(error.contains(text), "{changes}: {error}");
        // Reset what this case changed.
        harness_open
            .set_container(
                "hello.greet",
                json!({"cap_add": [], "workdir": null, "resources": null}),
            )
            .await;
    }
    for harness in [&harness, &harness_open] {
        assert_eq!(created(&harness.docker.calls()), 0);
    }
    harness.finish().await;
    harness_open.finish().await;
}

#[tokio::test]
async fn a_container_killed_from_outside_is_failed_as_killed() {
    let mut harness = Harness::with_busybox().await;
    let (id, _agent_id, container_id, run) = harness.start_greet().await;
    // `docker kill`: SIGKILL, exit 137, no OOMKilled, no oom event, no report.
    let engine: Arc<dyn DockerOps> = Arc::new(harness.docker.clone());
    engine
        .kill_container(&container_id, "SIGKILL")
        .await
        .unwrap();
    run.await.unwrap();
    let row = harness.store.get_execution(id).await.unwrap();
    assert_eq!(row.status(), ExecutionStatus::Failed);
    assert_eq!(row.failure_kind.map(FailureKind::as_str), Some("killed"));
    assert!(row.error.unwrap().contains("exit code 137"));
    assert_all_removed(&harness.docker);
    harness.finish().await;
}

#[tokio::test]
async fn an_oom_event_before_die_means_oom_even_without_oom_killed() {
    let mut harness = Harness::with_busybox().await;
    let (id, _agent_id, container_id, run) = harness.start_greet().await;
    assert!(harness.docker.emit_oom_event(&container_id));
    assert!(harness.docker.exit_container(&container_id, 137));
    assert!(!harness.docker.container(&container_id).unwrap().oom_killed);
    run.await.unwrap();
    let row = harness.store.get_execution(id).await.unwrap();
    assert_eq!(
        row.failure_kind.map(FailureKind::as_str),
        Some("oom"),
        "{:?}",
        row.error
    );
    assert!(row.error.unwrap().contains("oom event"));
    assert_all_removed(&harness.docker);
    harness.finish().await;
}

#[tokio::test]
async fn a_failed_report_after_an_oom_kill_is_reclassified_as_oom() {
    let mut harness = Harness::with_busybox().await;
    let (id, agent_id, container_id, run) = harness.start_greet().await;
    // The kernel kills the action's process for memory; the agent survives and reports it.
    assert!(harness.docker.emit_oom_event(&container_id));
    harness.apply(running_event(&agent_id, id, Some(7))).await;
    let report = JobReport {
        failure_kind: Some(attune_protocol::FailureKind::NonZeroExit),
        signal: Some(9),
        error: Some("the action was killed by signal 9".into()),
        duration_ms: 5,
        ..job_report(&agent_id, id, JobOutcome::Failed)
    };
    harness.apply(AgentEvent::Finished(report)).await;
    harness.docker.exit_container(&container_id, 0);
    run.await.unwrap();
    let row = harness.store.get_execution(id).await.unwrap();
    assert_eq!(row.status(), ExecutionStatus::Failed);
    assert_eq!(row.failure_kind.map(FailureKind::as_str), Some("oom"));
    let error = row.error.unwrap();
    assert!(
        error.contains("out of memory") && error.contains("signal 9"),
        "{error}"
    );
    assert_eq!(row.signal, Some(9), "the agent's report is kept");
    assert_all_removed(&harness.docker);
    harness.finish().await;
}

#[tokio::test]
async fn a_container_removed_from_outside_is_failed_as_killed() {
    let mut harness = Harness::with_busybox().await;
    let (id, _agent_id, container_id, run) = harness.start_greet().await;
    let engine: Arc<dyn DockerOps> = Arc::new(harness.docker.clone());
    engine.remove_container(&container_id).await.unwrap();
    run.await.unwrap();
    let row = harness.store.get_execution(id).await.unwrap();
    assert_eq!(row.failure_kind.map(FailureKind::as_str), Some("killed"));
    assert!(row.error.unwrap().contains("removed while the action ran"));
    harness.finish().await;
}

#[tokio::test]
async fn a_running_action_past_its_deadline_is_killed_as_timeout() {
    let mut harness = Harness::with_busybox().await;
    sqlx::query("UPDATE actions SET timeout_seconds = 1 WHERE ref = 'hello.greet'")
        .execute(harness.store.pool())
        .await
        .unwrap();
    let (id, run) = harness.spawn_greet().await;
    let agent_id = harness.next_job_agent().await;
    // The agent says running, then goes silent (hung): the controller's own deadline ends it.
    let running = AgentEvent::Running {
        agent_id,
        execution_id: id,
        pid: Some(7),
    };
    harness.apply(running).await;
    run.await.unwrap();
    let row = harness.store.get_execution(id).await.unwrap();
    assert_eq!(row.status(), ExecutionStatus::Timeout);
    assert_eq!(row.failure_kind.map(FailureKind::as_str), Some("timeout"));
    assert_eq!(killed(&harness.docker.calls()), 1);
    assert_all_removed(&harness.docker);
    harness.finish().await;
}

#[tokio::test]
async fn upload_failure_is_injection_failed_and_exec_format_in_output_is_named() {
    let harness = Harness::with_busybox().await;
    harness.docker.fail_next(
        Operation::UploadArchive,
        rejected("upload", "no space left on device"),
    );
    let row = run_unanswered(&harness).await;
    assert_eq!(
        row.failure_kind.map(FailureKind::as_str),
        Some("injection-failed")
    );
    assert!(row.error.unwrap().contains("no space left on device"));

    harness.docker.set_exit("attune-exec-", 1);
    harness.docker.set_logs(
        "attune-exec-",
        "exec /opt/attune/bin/attune-agent: exec format error",
    );
    let row = run_unanswered(&harness).await;
    assert_eq!(
        row.failure_kind.map(FailureKind::as_str),
        Some("exec-format")
    );
    assert_all_removed(&harness.docker);
    harness.finish().await;
}

#[tokio::test]
async fn periodic_sweep_removes_only_old_containers_of_ended_or_unknown_executions() {
    let harness = Harness::with_busybox().await;
    let docker: Arc<dyn DockerOps> = Arc::new(harness.docker.clone());
    let live = harness.scheduled_execution("hello.greet").await;
    let ended = harness.scheduled_execution("hello.greet").await;
    harness
        .store
        .transition(
            ended.id,
            ExecutionStatus::Failed,
            attune_store::TransitionFields::error(FailureKind::Other, "ended"),
        )
        .await
        .unwrap();
    let mut created = std::collections::HashMap::new();
    let live_id = live.id.to_string();
    let ended_id = ended.id.to_string();
    for (name, extra) in [
        ("live", vec![("attune.execution", live_id.as_str())]),
        ("ended", vec![("attune.execution", ended_id.as_str())]),
        ("unknown", vec![("attune.execution", "999999")]),
        ("helper", vec![("attune.role", "volume-fill")]),
        (
            "pooled",
            vec![("attune.pool", "hello-abc"), ("attune.agent-id", "pool-1")],
        ),
        (
            "pooled-lost",
            vec![("attune.pool", "hello-abc"), ("attune.agent-id", "pool-2")],
        ),
    ] {
        let mut labels = vec![
            ("attune.managed", "true"),
            ("attune.controller", "controller-under-test"),
            ("test.name", name),
        ];
        labels.extend(extra);
        let spec = busybox_spec(&format!("attune-sweep-{name}"), &labels);
        created.insert(name, docker.create_container(&spec).await.unwrap());
    }
    let foreign = busybox_spec(
        "attune-sweep-foreign",
        &[
            ("attune.managed", "true"),
            ("attune.controller", "someone-else"),
        ],
    );
    let foreign = docker.create_container(&foreign).await.unwrap();

    // The pools know "pooled"; "pooled-lost" is a warm container whose create response never
    // came back, so no pool holds it.
    let known_warm: std::collections::HashSet<String> = [created["pooled"].clone()].into();
    let young = sweep_containers(
        &harness.store,
        &docker,
        "controller-under-test",
        &known_warm,
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert_eq!(
        (young.removed, young.too_young),
        (0, 4),
        "inside the creation grace period"
    );
    let swept = sweep_containers(
        &harness.store,
        &docker,
        "controller-under-test",
        &known_warm,
        Duration::ZERO,
    )
    .await
    .unwrap();
    assert_eq!(swept.removed, 4);
    for name in ["ended", "unknown", "helper", "pooled-lost"] {
        assert!(
            harness.docker.container(&created[name]).is_none(),
            "{name} removed"
        );
    }
    for name in ["live", "pooled"] {
        assert!(
            harness.docker.container(&created[name]).is_some(),
            "{name} kept"
        );
    }
    assert!(
        harness.docker.container(&foreign).is_some(),
        "another controller's kept"
    );
    harness.finish().await;
}

#[test]
fn registered_agent_digest_is_compared_with_the_label() {
    assert_eq!(
        check_agent_sha256("abc123", "abc123"),
        AgentIdentity::Matches
    );
    assert_eq!(
        check_agent_sha256("abc123", "ABC123"),
        AgentIdentity::Matches
    );
    assert_eq!(check_agent_sha256("abc123", ""), AgentIdentity::Unreported);
    assert_eq!(
        check_agent_sha256("abc123", "def456"),
        AgentIdentity::Mismatch
    );
}

#[tokio::test]
async fn silent_agent_loses_its_lease_and_the_execution_fails() {
    let mut harness = Harness::with_settings(ControllerSettings {
        lease: Duration::from_millis(1500),
        ..settings(Duration::from_secs(10))
    })
    .await;
    harness.docker.add_image("busybox:1.36", "amd64");
    let (id, agent_id, _container_id, run) = harness.start_greet().await;
    harness.apply(running_event(&agent_id, id, None)).await;
    // Heartbeats every 500 ms keep the lease (1.5 s) alive well past its first expiry...
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let heartbeat = AgentEvent::Heartbeat {
            agent_id: agent_id.clone(),
            running: vec![id],
        };
        harness.apply(heartbeat).await;
        assert!(!run.is_finished(), "heartbeats renew the lease");
    }
    // ...then the agent goes silent.
    run.await.unwrap();
    let row = harness.store.get_execution(id).await.unwrap();
    assert_eq!(row.status(), ExecutionStatus::Failed);
    assert_eq!(
        row.failure_kind.map(FailureKind::as_str),
        Some("lease-expired")
    );
    assert!(row.error.unwrap().contains("no heartbeat"));
    assert_eq!(killed(&harness.docker.calls()), 1);
    assert_all_removed(&harness.docker);
    harness.finish().await;
}

#[tokio::test]
async fn restart_reconcile_adopts_a_busy_warm_container_by_id_and_removes_idle_ones() {
    let harness = Harness::with_busybox().await;
    let docker: Arc<dyn DockerOps> = Arc::new(harness.docker.clone());
    // Warm containers a crashed controller left: labelled with their pool, not an execution.
    let warm_spec = |name: &str, agent_id: &str| {
        busybox_spec(
            name,
            &[
                ("attune.managed", "true"),
                ("attune.controller", "controller-under-test"),
                ("attune.pool", "hello-0123456789ab"),
                ("attune.pack", "hello"),
                ("attune.agent-id", agent_id),
            ],
        )
    };
    let busy = docker
        .create_container(&warm_spec("attune-pool-busy", "pool-busy"))
        .await
        .unwrap();
    let idle = docker
        .create_container(&warm_spec("attune-pool-idle", "pool-idle"))
        .await
        .unwrap();
    for container in [&busy, &idle] {
        docker.start_container(container).await.unwrap();
    }
    // The busy one runs a live execution, which knows it only by the container's id.
    let pooled = harness.scheduled_execution("hello.greet").await;
    harness
        .store
        .set_placement(
            pooled.id,
            &Fence::of(&pooled).unwrap(),
            "busybox:1.36",
            &busy,
            "pool-busy",
        )
        .await
        .unwrap();
    harness
        .apply(running_event("pool-busy", pooled.id, Some(7)))
        .await;
    // A pooled execution whose warm container is gone cannot continue.
    let lost = harness.scheduled_execution("hello.greet").await;
    harness
        .store
        .set_placement(
            lost.id,
            &Fence::of(&lost).unwrap(),
            "busybox:1.36",
            &"f".repeat(64),
            "pool-gone",
        )
        .await
        .unwrap();

    let mut adoptions = JoinSet::new();
    let report = reconcile_at_start(&harness.store, &docker, &harness.controller, &mut adoptions)
        .await
        .unwrap();
    assert_eq!(
        (report.adopted, report.removed, report.failed),
        (1, 1, 1),
        "{report:?}"
    );
    assert!(
        harness.docker.container(&idle).is_none(),
        "idle warm container removed"
    );
    assert!(
        harness.docker.container(&busy).is_some(),
        "busy warm container adopted, not removed"
    );
    let lost = harness.store.get_execution(lost.id).await.unwrap();
    assert_eq!(lost.status(), ExecutionStatus::Failed);
    assert_eq!(
        lost.failure_kind.map(FailureKind::as_str),
        Some("controller-restarted")
    );
    let still_running = harness.store.get_execution(pooled.id).await.unwrap();
    assert_eq!(still_running.status(), ExecutionStatus::Running);

    // The worker agent reports (and, being a worker, keeps running): the adopter ends the
    // supervision and removes the container, since the new controller's pools start empty.
    apply_event(
        &harness.store,
        &harness.signals,
        Duration::from_secs(20),
        succeeded_report("pool-busy", pooled.id),
    )
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        while adoptions.join_next().await.is_some() {}
    })
    .await
    .expect("the adopted supervision ends");
    assert!(
        harness.docker.container(&busy).is_none(),
        "adopted warm container removed"
    );
    let done = harness.store.get_execution(pooled.id).await.unwrap();
    assert_eq!(done.status(), ExecutionStatus::Succeeded);
    assert!(harness.docker.containers().is_empty(), "nothing left");
    harness.finish().await;
}

#[tokio::test]
async fn pulls_carry_the_credentials_of_the_image_registry_and_no_others() {
    use attune_docker::{RegistryAuth, RegistryCredentials};
    let hub = RegistryCredentials {
        username: "hub-user".into(),
        password: "hub-secret".into(),
    };
    let private = RegistryCredentials {
        username: "robot".into(),
        password: "robot-secret".into(),
    };
    let mut harness = Harness::with_settings(ControllerSettings {
        registry_auth: RegistryAuth::from_json(
            r#"{"docker.io": {"username": "hub-user", "password": "hub-secret"},
                "registry.example.com:5000": {"username": "robot", "password": "robot-secret"}}"#,
        )
        .unwrap(),
        ..settings(Duration::from_secs(10))
    })
    .await;
    harness
        .docker
        .add_pullable_image("busybox:1.36", "amd64")
        .require_registry_login("docker.io", hub.clone())
        .add_pullable_image("registry.example.com:5000/team/tool:1", "amd64")
        .require_registry_login("registry.example.com:5000", private.clone())
        .add_pullable_image("quay.io/team/public:1", "amd64")
        .add_pullable_image("ghcr.io/team/private:1", "amd64")
        .require_registry_login("ghcr.io", private.clone());

    // Docker Hub (an unqualified name), a private registry, then a public one.
    for image in [
        "busybox:1.36",
        "registry.example.com:5000/team/tool:1",
        "quay.io/team/public:1",
    ] {
        harness
            .set_container("hello.greet", json!({"image": image}))
            .await;
        let id = harness.run_succeeding().await;
        let row = harness.store.get_execution(id).await.unwrap();
        assert_eq!(row.status(), ExecutionStatus::Succeeded, "{image}: {row:?}");
    }
    assert_eq!(
        harness.docker.pulls(),
        vec![
            ("busybox:1.36".to_string(), Some(hub)),
            (
                "registry.example.com:5000/team/tool:1".to_string(),
                Some(private)
            ),
            ("quay.io/team/public:1".to_string(), None),
        ],
        "each pull carries its registry's credentials, and only those"
    );

    // A registry that wants a login nobody configured: the pull fails with its reason.
    harness
        .set_container("hello.greet", json!({"image": "ghcr.io/team/private:1"}))
        .await;
    let row = run_unanswered(&harness).await;
    assert_eq!(row.status(), ExecutionStatus::Failed);
    assert_eq!(
        row.failure_kind.map(FailureKind::as_str),
        Some("pull-failed")
    );
    let error = row.error.unwrap_or_default();
    assert!(error.contains("authentication required"), "{error}");
    assert!(!error.contains("secret"), "{error}");
    assert_eq!(harness.docker.pulls().last().unwrap().1, None);
    assert_all_removed(&harness.docker);
    harness.finish().await;
}
