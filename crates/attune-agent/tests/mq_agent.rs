//! The built agent binary against the real RabbitMQ on 127.0.0.1:5672: register, run a job with
//! live logs, heartbeat, cancel, reject malformed commands, and drain on SIGTERM.
//!
//! Every run uses a unique agent id and a private events queue (`ATTUNE_AGENT_EVENTS_QUEUE`),
//! so it never touches the shared `attune.agent.events` queue; both queues are deleted at the end.

mod support;

use attune_protocol::{
    queues, AgentCommand, AgentEvent, AgentRegistration, FailureKind, Job, JobOutcome, Runtime,
    PROTOCOL_VERSION,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{
    declare_queue, delete_queues, open_channel, publish, read_events, send_command, unique_suffix,
    EventReader, BROKER_URL,
};

const WAIT_LIMIT: Duration = Duration::from_secs(30);

/// Kills the agent if the test ends early and deletes the test's queues in every case.
struct Cleanup {
    agent: Option<Child>,
    queue_names: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(agent) = self.agent.as_mut() {
            if agent.try_wait().ok().flatten().is_none() {
                let _ = agent.kill();
                let _ = agent.wait();
            }
        }
        delete_queues(std::mem::take(&mut self.queue_names));
    }
}

/// One test's agent id, private queues and broker connection, with its clean-up.
struct Broker {
    agent_id: String,
    events_queue: String,
    job_queue: String,
    connection: Connection,
    channel: Channel,
    cleanup: Cleanup,
}

impl Broker {
    /// Unique queue names for an agent named `<agent_prefix>-<unique>`.
    async fn open(agent_prefix: &str) -> Broker {
        let unique = unique_suffix();
        let agent_id = format!("{agent_prefix}-{unique}");
        let events_queue = format!("attune.test.events.{unique}");
        let job_queue = queues::agent_job_queue(&agent_id);
        let cleanup = Cleanup {
            agent: None,
            queue_names: vec![events_queue.clone(), job_queue.clone()],
        };
        let (connection, channel) = open_channel().await;
        Broker {
            agent_id,
            events_queue,
            job_queue,
            connection,
            channel,
            cleanup,
        }
    }

    /// Declares the events queue and reads it as `consumer_tag`.
    async fn events(&self, consumer_tag: &str) -> EventReader {
        read_events(&self.channel, &self.events_queue, consumer_tag, WAIT_LIMIT).await
    }

    async fn send(&self, command: &AgentCommand) {
        send_command(&self.channel, &self.job_queue, command).await;
    }

    /// Sends a shell job of the test pack.
    async fn send_job(&self, execution_id: i64, pack_dir: &std::path::Path, entry_point: &str) {
        self.send(&AgentCommand::Job(shell_job(
            execution_id,
            pack_dir,
            entry_point,
        )))
        .await;
    }

    /// Waits for the agent to exit (successfully) and closes the connection.
    async fn finish(mut self) {
        let status = wait_for_exit(self.cleanup.agent.as_mut().unwrap()).await;
        assert!(status.success(), "agent exit status {status:?}");
        let _ = self.connection.close(200, "test done".into()).await;
    }
}

/// The events both tests wait for.
impl EventReader {
    async fn register(&mut self) -> (AgentRegistration, Vec<AgentEvent>) {
        let (register, before) = self
            .wait_for("register", |event| matches!(event, AgentEvent::Register(_)))
            .await;
        let AgentEvent::Register(registration) = register else {
            unreachable!()
        };
        (registration, before)
    }

    async fn running(&mut self, execution_id: i64) {
        self.wait_for(&format!("running {execution_id}"), |event| {
            matches!(event, AgentEvent::Running { execution_id: running, .. } if *running == execution_id)
        })
        .await;
    }

    async fn deregister(&mut self) -> AgentEvent {
        self.wait_for("deregister", |event| {
            matches!(event, AgentEvent::Deregister { .. })
        })
        .await
        .0
    }
}

fn shell_job(execution_id: i64, pack_dir: &std::path::Path, entry_point: &str) -> Job {
    Job {
        protocol_version: PROTOCOL_VERSION,
        execution_id,
        action_ref: "mqtest.action".to_string(),
        pack_ref: "mqtest".to_string(),
        runtime: Runtime::Shell,
        pack_dir: pack_dir.display().to_string(),
        entry_point: entry_point.to_string(),
        parameters: serde_json::json!({"name": "broker"})
            .as_object()
            .unwrap()
            .clone(),
        secret_parameters: Vec::new(),
        parameter_delivery: Default::default(),
        parameter_format: Default::default(),
        timeout_seconds: 60,
        kill_grace_seconds: 1,
        env: Default::default(),
        output_limit_bytes: 1024 * 1024,
        stream_logs: true,
        pack_sha256: None,
    }
}

async fn wait_for_exit(agent: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT_LIMIT;
    loop {
        if let Some(status) = agent.try_wait().expect("poll agent") {
            return status;
        }
        assert!(Instant::now() < deadline, "agent did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn worker_agent_registers_runs_cancels_and_drains_on_sigterm() {
    let mut broker = Broker::open("mqtest").await;

    let pack = tempfile::tempdir().unwrap();
    let work_base = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(pack.path().join("actions")).unwrap();
    std::fs::write(
        pack.path().join("actions/hello.sh"),
        "#!/bin/sh\necho working >&2\nprintf '{\"hello\": \"%s\"}\\n' \"$ATTUNE_ACTION_NAME\"\n",
    )
    .unwrap();
    std::fs::write(
        pack.path().join("actions/sleep.sh"),
        "#!/bin/sh\necho sleeping\nwhile :; do sleep 0.1; done\n",
    )
    .unwrap();

    // The server declares an agent's queue before the agent starts; the test does the same.
    declare_queue(
        &broker.channel,
        &broker.job_queue,
        attune_agent::mq::job_queue_arguments(),
    )
    .await;
    let mut events = broker.events("mqtest-reader").await;

    let agent = Command::new(env!("CARGO_BIN_EXE_attune-agent"))
        .args(["--mode", "worker"])
        .env(queues::ENV_MESSAGE_QUEUE_URL, BROKER_URL)
        .env(queues::ENV_AGENT_ID, &broker.agent_id)
        .env(queues::ENV_AGENT_EVENTS_QUEUE, &broker.events_queue)
        .env(queues::ENV_AGENT_WORKDIR, work_base.path())
        .env(queues::ENV_AGENT_IMAGE, "host-test")
        .env("ATTUNE_AGENT_HEARTBEAT_SECONDS", "1")
        .env("ATTUNE_AGENT_SHUTDOWN_SECONDS", "1")
        .stdin(Stdio::null())
        .spawn()
        .expect("start the agent binary");
    let agent_pid = i32::try_from(agent.id()).unwrap();
    broker.cleanup.agent = Some(agent);

    // Register comes first.
    let (registration, before) = events.register().await;
    assert!(
        before.is_empty(),
        "register must be the first event: {before:?}"
    );
    assert_eq!(registration.agent_id, broker.agent_id);
    assert_eq!(registration.protocol_version, PROTOCOL_VERSION);
    assert_eq!(registration.mode, "worker");
    assert_eq!(registration.image.as_deref(), Some("host-test"));
    assert_eq!(registration.agent_sha256.len(), 64);
    let shell = registration
        .runtimes
        .iter()
        .find(|runtime| runtime.name == "shell")
        .expect("the host has a shell");
    assert!(shell.path.starts_with('/'));

    // A job runs end to end with Running, Log and Finished.
    broker.send_job(1, pack.path(), "actions/hello.sh").await;
    let (report, before) = events.finished(1).await;
    assert_eq!(report.outcome, JobOutcome::Succeeded, "{report:?}");
    assert_eq!(report.result, Some(serde_json::json!({"hello": "broker"})));
    assert!(
        matches!(
            before.first(),
            Some(AgentEvent::Running {
                execution_id: 1,
                pid: Some(_),
                ..
            })
        ),
        "{before:?}"
    );
    assert!(
        before
            .iter()
            .any(|event| matches!(event, AgentEvent::Log { execution_id: 1, data, .. } if data.contains("working"))),
        "{before:?}"
    );

    // A job delivered again after it ran (a controller resends a command whose confirm was
    // lost with its broker connection) is ignored: the next job runs, the first not again.
    broker.send_job(1, pack.path(), "actions/hello.sh").await;
    broker.send_job(5, pack.path(), "actions/hello.sh").await;
    let (report, before) = events.finished(5).await;
    assert_eq!(report.outcome, JobOutcome::Succeeded, "{report:?}");
    assert!(
        !before.iter().any(|event| event.execution_id() == Some(1)),
        "execution 1 ran again: {before:?}"
    );

    // Malformed commands are rejected; an unreadable job with an id is reported.
    publish(&broker.channel, &broker.job_queue, b"this is not json").await;
    publish(
        &broker.channel,
        &broker.job_queue,
        br#"{"type":"job","protocol_version":7,"execution_id":2,"runtime":"cobol"}"#,
    )
    .await;
    let (report, _) = events.finished(2).await;
    assert_eq!(report.outcome, JobOutcome::Failed);
    assert_eq!(report.failure_kind, Some(FailureKind::UnsupportedProtocol));
    assert!(
        report
            .error
            .as_deref()
            .unwrap()
            .contains("protocol version 7"),
        "{report:?}"
    );

    // A sleeping job heartbeats and stops on Cancel.
    broker.send_job(3, pack.path(), "actions/sleep.sh").await;
    events.running(3).await;
    events
        .wait_for(
            "heartbeat listing 3",
            |event| matches!(event, AgentEvent::Heartbeat { running, .. } if running == &vec![3]),
        )
        .await;
    broker.send(&AgentCommand::Cancel { execution_id: 3 }).await;
    let (report, _) = events.finished(3).await;
    assert_eq!(report.outcome, JobOutcome::Canceled, "{report:?}");
    assert_eq!(report.stdout, "sleeping\n");

    // SIGTERM: the running job is abandoned after the 1 s deadline, then the agent deregisters.
    broker.send_job(4, pack.path(), "actions/sleep.sh").await;
    events.running(4).await;
    // SAFETY: kill has no memory-safety preconditions; the pid is our own child.
    assert_eq!(unsafe { libc::kill(agent_pid, libc::SIGTERM) }, 0);
    let (report, _) = events.finished(4).await;
    assert_eq!(report.outcome, JobOutcome::Abandoned, "{report:?}");
    assert_eq!(
        events.deregister().await,
        AgentEvent::Deregister {
            agent_id: broker.agent_id.clone(),
            reason: "received SIGTERM".to_string()
        }
    );
    broker.finish().await;
    assert_eq!(
        std::fs::read_dir(work_base.path()).unwrap().count(),
        0,
        "work dirs removed"
    );
}

#[tokio::test]
async fn oneshot_agent_runs_one_job_and_exits() {
    let mut broker = Broker::open("mqtest-oneshot").await;
    let pack = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(pack.path().join("actions")).unwrap();
    std::fs::write(
        pack.path().join("actions/hello.sh"),
        "#!/bin/sh\necho '[1,2,3]'\n",
    )
    .unwrap();

    // A server that declares the job queue with other arguments must not stop the agent.
    let mut other_arguments = FieldTable::default();
    other_arguments.insert(
        "x-expires".into(),
        lapin::types::AMQPValue::LongUInt(300_000),
    );
    declare_queue(&broker.channel, &broker.job_queue, other_arguments).await;
    // The job waits in the queue before the agent starts, as it does for a fresh container.
    broker.send_job(10, pack.path(), "actions/hello.sh").await;
    let mut events = broker.events("mqtest-oneshot-reader").await;

    let agent = Command::new(env!("CARGO_BIN_EXE_attune-agent"))
        .args(["--mq-url", BROKER_URL, "--agent-id", &broker.agent_id])
        .env(queues::ENV_AGENT_EVENTS_QUEUE, &broker.events_queue)
        .stdin(Stdio::null())
        .spawn()
        .expect("start the agent binary");
    broker.cleanup.agent = Some(agent);

    let (registration, _) = events.register().await;
    assert_eq!(registration.mode, "oneshot");
    let (report, _) = events.finished(10).await;
    assert_eq!(report.outcome, JobOutcome::Succeeded, "{report:?}");
    assert_eq!(report.result, Some(serde_json::json!([1, 2, 3])));
    let deregister = events.deregister().await;
    assert!(
        matches!(deregister, AgentEvent::Deregister { reason, .. } if reason == "oneshot execution finished")
    );
    broker.finish().await;
}
