//! Controller logic against the recording Docker fake and a scripted agent channel, with a real
//! Postgres for state: every path ends in a terminal status with its reason, and every created
//! container is removed.

use async_trait::async_trait;
use attune_protocol::api::ExecutionStatus;
use attune_protocol::{AgentCommand, AgentEvent, Job, JobOutcome, JobReport};
use attune_server::broker::{AgentChannel, BrokerError};
use attune_server::controller::{AgentBinary, Controller, ControllerSettings};
use attune_server::db::{ExecutionRow, NewPack, Store};
use attune_server::docker::fake::{DockerCall, Operation, RecordingDocker};
use attune_server::docker::{DockerError, DockerOps};
use attune_server::events::apply_event;
use attune_server::scheduler::reconcile_at_start;
use attune_server::signals::ExecutionSignals;
use attune_server::testing::TestDatabase;
use serde_json::json;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Records commands; hands jobs to the test, which plays the agent.
#[derive(Clone)]
struct ScriptedAgents {
    commands: Arc<Mutex<Vec<(String, AgentCommand)>>>,
    jobs: mpsc::UnboundedSender<(String, Job)>,
}

#[async_trait]
impl AgentChannel for ScriptedAgents {
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

    async fn delete_agent_queue(&self, _agent_id: &str) -> Result<(), BrokerError> {
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
}

fn settings(agent_start_timeout: Duration) -> ControllerSettings {
    ControllerSettings {
        controller_id: "controller-under-test".into(),
        network: Some("host".into()),
        agent_mq_url: "amqp://127.0.0.1:5672/%2f".into(),
        events_queue: "attune.agent.events".into(),
        remove_containers: true,
        default_image: None,
        pids_limit: 512,
        nofile_limit: 4096,
        output_limit_bytes: 1024,
        kill_grace_seconds: 1,
        agent_start_timeout,
        report_grace: Duration::from_millis(200),
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
        let database = TestDatabase::create().await.unwrap();
        let store = Store::connect(&database.url, 4).await.unwrap();
        let pack_dir =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/packs/hello");
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
        };
        let controller = Controller::new(
            store.clone(),
            Arc::new(docker.clone()),
            Arc::new(agents.clone()),
            signals.clone(),
            settings(agent_start_timeout),
            fake_agent_binary(62),
        );
        Harness {
            database,
            store,
            docker,
            signals,
            agents,
            jobs,
            controller,
        }
    }

    async fn scheduled_execution(&self, action_ref: &str) -> ExecutionRow {
        let action = self.store.get_action(action_ref).await.unwrap();
        let parameters = json!({"name": "Ada", "punctuation": "!"});
        let created = self
            .store
            .create_execution(&action, parameters.as_object().unwrap())
            .await
            .unwrap();
        let mut claimed = self.store.claim_requested(10).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].id, created.id);
        claimed.remove(0)
    }

    fn container_of(&self, agent_id: &str) -> String {
        self.docker
            .containers()
            .into_iter()
            .find(|container| {
                container.spec.labels.get("attune.agent-id").map(String::as_str) == Some(agent_id)
            })
            .map(|container| container.id)
            .expect("container for agent")
    }

    /// Plays a well-behaved agent for the next job: running, then finished, then exits.
    async fn agent_reports(&mut self, outcome: JobOutcome, exit_code: i32) {
        let (agent_id, job) = self.jobs.recv().await.expect("a job was queued");
        let container_id = self.container_of(&agent_id);
        let running = AgentEvent::Running {
            agent_id: agent_id.clone(),
            execution_id: job.execution_id,
            pid: Some(7),
        };
        apply_event(&self.store, &self.signals, running).await.unwrap();
        let report = AgentEvent::Finished(JobReport {
            agent_id,
            execution_id: job.execution_id,
            outcome,
            failure_kind: None,
            exit_code: Some(exit_code),
            signal: None,
            stdout: "{\"ok\": true}\n".into(),
            stderr: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            result: Some(json!({"ok": true})),
            error: None,
            duration_ms: 3,
        });
        apply_event(&self.store, &self.signals, report).await.unwrap();
        self.docker.exit_container(&container_id, exit_code as i64);
    }

    async fn finish(self) {
        self.database.drop_database().await.unwrap();
    }
}

fn count(calls: &[DockerCall], matches: impl Fn(&DockerCall) -> bool) -> usize {
    calls.iter().filter(|call| matches(call)).count()
}

fn assert_all_removed(docker: &RecordingDocker) {
    let calls = docker.calls();
    let created = count(&calls, |call| matches!(call, DockerCall::CreateContainer(_)));
    let removed = count(&calls, |call| matches!(call, DockerCall::Remove(_)));
    assert_eq!(created, removed, "every created container is removed: {calls:#?}");
    assert!(docker.containers().is_empty(), "no container left");
}

#[tokio::test]
async fn happy_path_creates_injects_starts_and_removes_a_hardened_container() {
    let mut harness = Harness::new(Duration::from_secs(10)).await;
    harness.docker.add_image("busybox:1.36", "amd64");
    let execution = harness.scheduled_execution("hello.greet").await;
    let controller = harness.controller.clone();
    let run = tokio::spawn(async move { controller.run_execution(execution).await });
    harness.agent_reports(JobOutcome::Succeeded, 0).await;
    run.await.unwrap();

    let stored = harness.store.list_executions(&recent_executions()).await.unwrap();
    assert_eq!(stored[0].status(), ExecutionStatus::Succeeded);
    assert_eq!(stored[0].result, Some(json!({"ok": true})));

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
    assert_eq!(spec.labels["attune.execution"], stored[0].id.to_string());
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
    assert_eq!(mode_of("opt/attune/bin/attune-agent"), Some(0o755), "{uploaded:?}");
    assert_eq!(mode_of("opt/attune/packs/hello/actions/greet.sh"), Some(0o755));
    assert_eq!(mode_of("opt/attune/packs/hello/actions/greet.yaml"), Some(0o644));
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

fn recent_executions() -> attune_server::db::ExecutionFilter {
    attune_server::db::ExecutionFilter {
        limit: 10,
        ..Default::default()
    }
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
    assert_eq!(row.failure_kind.as_deref(), Some("pull-failed"));
    assert!(row
        .error
        .unwrap()
        .contains("image busybox:1.36 is not present locally and could not be pulled"));
    let calls = harness.docker.calls();
    assert_eq!(count(&calls, |call| matches!(call, DockerCall::CreateContainer(_))), 0);
    assert_eq!(count(&calls, |call| matches!(call, DockerCall::PullImage(_))), 1);
    harness.finish().await;
}

#[tokio::test]
async fn pullable_image_is_pulled_once_then_used() {
    let mut harness = Harness::new(Duration::from_secs(10)).await;
    harness.docker.add_pullable_image("busybox:1.36", "amd64");
    let execution = harness.scheduled_execution("hello.greet").await;
    let controller = harness.controller.clone();
    let run = tokio::spawn(async move { controller.run_execution(execution).await });
    harness.agent_reports(JobOutcome::Succeeded, 0).await;
    run.await.unwrap();
    let calls = harness.docker.calls();
    assert_eq!(count(&calls, |call| matches!(call, DockerCall::PullImage(_))), 1);
    assert_all_removed(&harness.docker);
    harness.finish().await;
}

#[tokio::test]
async fn image_of_another_architecture_is_refused_before_create() {
    let harness = Harness::new(Duration::from_secs(10)).await;
    harness.docker.add_image("busybox:1.36", "arm64");
    let row = run_unanswered(&harness).await;
    assert_eq!(row.status(), ExecutionStatus::Failed);
    assert_eq!(row.failure_kind.as_deref(), Some("exec-format"));
    assert!(row.error.unwrap().contains("built for arm64 but the agent binary is for amd64"));
    assert_eq!(
        count(&harness.docker.calls(), |call| matches!(call, DockerCall::CreateContainer(_))),
        0
    );
    harness.finish().await;
}

#[tokio::test]
async fn start_failure_with_exec_format_error_is_classified_and_cleaned_up() {
    let harness = Harness::new(Duration::from_secs(10)).await;
    harness.docker.add_image("busybox:1.36", "amd64");
    harness.docker.fail_next(
        Operation::Start,
        DockerError::Rejected {
            operation: "start container".into(),
            reason: "OCI runtime create failed: exec format error".into(),
        },
    );
    let row = run_unanswered(&harness).await;
    assert_eq!(row.status(), ExecutionStatus::Failed);
    assert_eq!(row.failure_kind.as_deref(), Some("exec-format"));
    assert_all_removed(&harness.docker);
    harness.finish().await;
}

#[tokio::test]
async fn container_exiting_without_a_report_fails_with_its_output() {
    let harness = Harness::new(Duration::from_secs(10)).await;
    harness.docker.add_image("busybox:1.36", "amd64");
    harness.docker.set_exit("attune-exec-", 2);
    harness
        .docker
        .set_logs("attune-exec-", "attune-agent: connect to message queue: refused");
    let row = run_unanswered(&harness).await;
    assert_eq!(row.status(), ExecutionStatus::Failed);
    assert_eq!(row.failure_kind.as_deref(), Some("agent-exited"));
    let error = row.error.unwrap();
    assert!(error.contains("exited with code 2 before reporting"), "{error}");
    assert!(error.contains("connect to message queue: refused"), "{error}");
    assert_all_removed(&harness.docker);
    harness.finish().await;
}

#[tokio::test]
async fn out_of_memory_is_classified_as_oom_never_success() {
    let mut harness = Harness::new(Duration::from_secs(10)).await;
    harness.docker.add_image("busybox:1.36", "amd64");
    let execution = harness.scheduled_execution("hello.greet").await;
    let id = execution.id;
    let controller = harness.controller.clone();
    let run = tokio::spawn(async move { controller.run_execution(execution).await });
    let (agent_id, _job) = harness.jobs.recv().await.unwrap();
    let container_id = harness.container_of(&agent_id);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while harness.docker.container(&container_id).unwrap().status != "running" {
        assert!(tokio::time::Instant::now() < deadline, "container never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(harness.docker.oom_kill_container(&container_id));
    run.await.unwrap();
    let row = harness.store.get_execution(id).await.unwrap();
    assert_eq!(row.status(), ExecutionStatus::Failed);
    assert_eq!(row.failure_kind.as_deref(), Some("oom"));
    assert_all_removed(&harness.docker);
    harness.finish().await;
}

#[tokio::test]
async fn agent_that_never_reports_is_injection_failed_and_killed() {
    let harness = Harness::new(Duration::from_millis(300)).await;
    harness.docker.add_image("busybox:1.36", "amd64");
    let row = run_unanswered(&harness).await;
    assert_eq!(row.status(), ExecutionStatus::Failed);
    assert_eq!(row.failure_kind.as_deref(), Some("injection-failed"));
    let calls = harness.docker.calls();
    assert_eq!(count(&calls, |call| matches!(call, DockerCall::Kill(_, _))), 1);
    assert_all_removed(&harness.docker);
    harness.finish().await;
}

#[tokio::test]
async fn cancel_is_sent_to_the_agent_and_enforced_by_killing() {
    let mut harness = Harness::new(Duration::from_secs(10)).await;
    harness.docker.add_image("busybox:1.36", "amd64");
    let execution = harness.scheduled_execution("hello.greet").await;
    let id = execution.id;
    let controller = harness.controller.clone();
    let run = tokio::spawn(async move { controller.run_execution(execution).await });
    let (agent_id, _job) = harness.jobs.recv().await.unwrap();
    let running = AgentEvent::Running {
        agent_id: agent_id.clone(),
        execution_id: id,
        pid: None,
    };
    apply_event(&harness.store, &harness.signals, running).await.unwrap();
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
    assert_eq!(
        count(&harness.docker.calls(), |call| matches!(call, DockerCall::Kill(_, _))),
        1
    );
    assert_all_removed(&harness.docker);
    harness.finish().await;
}

#[tokio::test]
async fn cancel_before_start_never_starts_the_container() {
    let harness = Harness::new(Duration::from_secs(10)).await;
    harness.docker.add_image("busybox:1.36", "amd64");
    let execution = harness.scheduled_execution("hello.greet").await;
    let id = execution.id;
    harness.store.request_cancel(id).await.unwrap();
    harness.controller.run_execution(execution).await;
    let row = harness.store.get_execution(id).await.unwrap();
    assert_eq!(row.status(), ExecutionStatus::Canceled);
    assert_eq!(
        count(&harness.docker.calls(), |call| matches!(call, DockerCall::Start(_))),
        0
    );
    harness.finish().await;
}

#[tokio::test]
async fn restart_reconcile_adopts_live_removes_orphans_and_fails_the_lost() {
    let harness = Harness::new(Duration::from_secs(10)).await;
    harness.docker.add_image("busybox:1.36", "amd64");
    let docker: Arc<dyn DockerOps> = Arc::new(harness.docker.clone());
    // A live execution whose container is running (left by a crashed controller).
    let live = harness.scheduled_execution("hello.greet").await;
    let spec = attune_server::docker::ContainerCreateSpec {
        name: "attune-exec-live".into(),
        image: "busybox:1.36".into(),
        labels: [
            ("attune.managed", "true".to_string()),
            ("attune.controller", "controller-under-test".to_string()),
            ("attune.execution", live.id.to_string()),
            ("attune.agent-id", "exec-live".to_string()),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_string(), value))
        .collect(),
        ..Default::default()
    };
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

    let report = reconcile_at_start(&harness.store, &docker, &harness.controller)
        .await
        .unwrap();
    assert_eq!(report.adopted, 1);
    assert_eq!(report.removed, 1);
    assert_eq!(report.failed, 1);
    assert!(harness.docker.container(&orphan).is_none());
    assert!(harness.docker.container(&foreign).is_some());
    let lost = harness.store.get_execution(lost.id).await.unwrap();
    assert_eq!(lost.status(), ExecutionStatus::Failed);
    assert_eq!(lost.failure_kind.as_deref(), Some("controller-restarted"));

    // The adopted container's agent reports; the adopter removes the container.
    let report = AgentEvent::Finished(JobReport {
        agent_id: "exec-live".into(),
        execution_id: live.id,
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
        duration_ms: 1,
    });
    apply_event(&harness.store, &harness.signals, report).await.unwrap();
    harness.docker.exit_container(&live_container, 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while harness.docker.container(&live_container).is_some() {
        assert!(tokio::time::Instant::now() < deadline, "adopted container never removed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let live = harness.store.get_execution(live.id).await.unwrap();
    assert_eq!(live.status(), ExecutionStatus::Succeeded);
    harness.finish().await;
}
