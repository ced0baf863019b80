//! The built agent binary against the real RabbitMQ on 127.0.0.1:5672: register, run a job with
//! live logs, heartbeat, cancel, reject malformed commands, and drain on SIGTERM.
//!
//! Every run uses a unique agent id and a private events queue (`ATTUNE_AGENT_EVENTS_QUEUE`),
//! so it never touches the shared `attune.agent.events` queue; both queues are deleted at the end.

use attune_protocol::{
    queues, AgentCommand, AgentEvent, FailureKind, Job, JobOutcome, JobReport, Runtime,
    PROTOCOL_VERSION,
};
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BROKER_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
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
        let queue_names = std::mem::take(&mut self.queue_names);
        let deleting = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let Ok(connection) =
                    Connection::connect(BROKER_URL, ConnectionProperties::default()).await
                else {
                    return;
                };
                if let Ok(channel) = connection.create_channel().await {
                    for queue in queue_names {
                        let _ = channel
                            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                            .await;
                    }
                }
                let _ = connection.close(200, "test cleanup".into()).await;
            });
        });
        let _ = deleting.join();
    }
}

struct EventReader {
    consumer: Consumer,
}

impl EventReader {
    async fn next(&mut self, deadline: Instant) -> AgentEvent {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let delivery = tokio::time::timeout(remaining, self.consumer.next())
            .await
            .expect("an agent event before the deadline")
            .expect("the events consumer stays open")
            .expect("a delivery");
        assert_eq!(
            delivery
                .properties
                .content_type()
                .as_ref()
                .map(|value| value.as_str()),
            Some("application/json")
        );
        assert_eq!(
            *delivery.properties.delivery_mode(),
            Some(2),
            "events are persistent"
        );
        serde_json::from_slice(&delivery.data).expect("events are AgentEvent JSON")
    }

    /// Reads events until one matches; returns it with everything read before it.
    async fn wait_for(
        &mut self,
        what: &str,
        matches: impl Fn(&AgentEvent) -> bool,
    ) -> (AgentEvent, Vec<AgentEvent>) {
        let deadline = Instant::now() + WAIT_LIMIT;
        let mut skipped = Vec::new();
        loop {
            if Instant::now() >= deadline {
                panic!("no {what} event; saw {skipped:?}");
            }
            let event = self.next(deadline).await;
            if matches(&event) {
                return (event, skipped);
            }
            skipped.push(event);
        }
    }

    async fn finished(&mut self, execution_id: i64) -> (JobReport, Vec<AgentEvent>) {
        let (event, before) = self
            .wait_for("finished", |event| {
                matches!(event, AgentEvent::Finished(report) if report.execution_id == execution_id)
            })
            .await;
        match event {
            AgentEvent::Finished(report) => (report, before),
            _ => unreachable!("wait_for matched a finished event"),
        }
    }
}

async fn publish(channel: &Channel, queue: &str, payload: &[u8]) {
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            payload,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("publish")
        .await
        .expect("publish confirm");
}

async fn send_command(channel: &Channel, queue: &str, command: &AgentCommand) {
    publish(channel, queue, &serde_json::to_vec(command).unwrap()).await;
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
    let unique = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let agent_id = format!("mqtest-{unique}");
    let events_queue = format!("attune.test.events.{unique}");
    let job_queue = queues::agent_job_queue(&agent_id);
    let mut cleanup = Cleanup {
        agent: None,
        queue_names: vec![events_queue.clone(), job_queue.clone()],
    };

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

    let connection = Connection::connect(BROKER_URL, ConnectionProperties::default())
        .await
        .expect("RabbitMQ on 127.0.0.1:5672");
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(Default::default()).await.unwrap();
    channel
        .queue_declare(
            events_queue.as_str().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    // The server declares an agent's queue before the agent starts; the test does the same.
    channel
        .queue_declare(
            job_queue.as_str().into(),
            QueueDeclareOptions::durable(),
            attune_agent::mq::job_queue_arguments(),
        )
        .await
        .unwrap();
    let consumer = channel
        .basic_consume(
            events_queue.as_str().into(),
            "mqtest-reader".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut events = EventReader { consumer };

    let agent = Command::new(env!("CARGO_BIN_EXE_attune-agent"))
        .args(["--mode", "worker"])
        .env(queues::ENV_MESSAGE_QUEUE_URL, BROKER_URL)
        .env(queues::ENV_AGENT_ID, &agent_id)
        .env(queues::ENV_AGENT_EVENTS_QUEUE, &events_queue)
        .env(queues::ENV_AGENT_WORKDIR, work_base.path())
        .env(queues::ENV_AGENT_IMAGE, "host-test")
        .env("ATTUNE_AGENT_HEARTBEAT_SECONDS", "1")
        .env("ATTUNE_AGENT_SHUTDOWN_SECONDS", "1")
        .stdin(Stdio::null())
        .spawn()
        .expect("start the agent binary");
    let agent_pid = i32::try_from(agent.id()).unwrap();
    cleanup.agent = Some(agent);

    // Register comes first.
    let (register, before) = events
        .wait_for("register", |event| matches!(event, AgentEvent::Register(_)))
        .await;
    assert!(
        before.is_empty(),
        "register must be the first event: {before:?}"
    );
    let AgentEvent::Register(registration) = register else {
        unreachable!()
    };
    assert_eq!(registration.agent_id, agent_id);
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
    send_command(
        &channel,
        &job_queue,
        &AgentCommand::Job(shell_job(1, pack.path(), "actions/hello.sh")),
    )
    .await;
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

    // Malformed commands are rejected; an unreadable job with an id is reported.
    publish(&channel, &job_queue, b"this is not json").await;
    publish(
        &channel,
        &job_queue,
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
    send_command(
        &channel,
        &job_queue,
        &AgentCommand::Job(shell_job(3, pack.path(), "actions/sleep.sh")),
    )
    .await;
    events
        .wait_for("running 3", |event| {
            matches!(
                event,
                AgentEvent::Running {
                    execution_id: 3,
                    ..
                }
            )
        })
        .await;
    events
        .wait_for(
            "heartbeat listing 3",
            |event| matches!(event, AgentEvent::Heartbeat { running, .. } if running == &vec![3]),
        )
        .await;
    send_command(
        &channel,
        &job_queue,
        &AgentCommand::Cancel { execution_id: 3 },
    )
    .await;
    let (report, _) = events.finished(3).await;
    assert_eq!(report.outcome, JobOutcome::Canceled, "{report:?}");
    assert_eq!(report.stdout, "sleeping\n");

    // SIGTERM: the running job is abandoned after the 1 s deadline, then the agent deregisters.
    send_command(
        &channel,
        &job_queue,
        &AgentCommand::Job(shell_job(4, pack.path(), "actions/sleep.sh")),
    )
    .await;
    events
        .wait_for("running 4", |event| {
            matches!(
                event,
                AgentEvent::Running {
                    execution_id: 4,
                    ..
                }
            )
        })
        .await;
    // SAFETY: kill has no memory-safety preconditions; the pid is our own child.
    assert_eq!(unsafe { libc::kill(agent_pid, libc::SIGTERM) }, 0);
    let (report, _) = events.finished(4).await;
    assert_eq!(report.outcome, JobOutcome::Abandoned, "{report:?}");
    let (deregister, _) = events
        .wait_for("deregister", |event| {
            matches!(event, AgentEvent::Deregister { .. })
        })
        .await;
    assert_eq!(
        deregister,
        AgentEvent::Deregister {
            agent_id: agent_id.clone(),
            reason: "received SIGTERM".to_string()
        }
    );
    let status = wait_for_exit(cleanup.agent.as_mut().unwrap()).await;
    assert!(status.success(), "agent exit status {status:?}");
    assert_eq!(
        std::fs::read_dir(work_base.path()).unwrap().count(),
        0,
        "work dirs removed"
    );

    let _ = connection.close(200, "test done".into()).await;
}

#[tokio::test]
async fn oneshot_agent_runs_one_job_and_exits() {
    let unique = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let agent_id = format!("mqtest-oneshot-{unique}");
    let events_queue = format!("attune.test.events.{unique}");
    let job_queue = queues::agent_job_queue(&agent_id);
    let mut cleanup = Cleanup {
        agent: None,
        queue_names: vec![events_queue.clone(), job_queue.clone()],
    };
    let pack = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(pack.path().join("actions")).unwrap();
    std::fs::write(
        pack.path().join("actions/hello.sh"),
        "#!/bin/sh\necho '[1,2,3]'\n",
    )
    .unwrap();

    let connection = Connection::connect(BROKER_URL, ConnectionProperties::default())
        .await
        .expect("RabbitMQ on 127.0.0.1:5672");
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(Default::default()).await.unwrap();
    channel
        .queue_declare(
            events_queue.as_str().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    // A server that declares the job queue with other arguments must not stop the agent.
    let mut other_arguments = FieldTable::default();
    other_arguments.insert(
        "x-expires".into(),
        lapin::types::AMQPValue::LongUInt(300_000),
    );
    channel
        .queue_declare(
            job_queue.as_str().into(),
            QueueDeclareOptions::durable(),
            other_arguments,
        )
        .await
        .unwrap();
    // The job waits in the queue before the agent starts, as it does for a fresh container.
    send_command(
        &channel,
        &job_queue,
        &AgentCommand::Job(shell_job(10, pack.path(), "actions/hello.sh")),
    )
    .await;
    let consumer = channel
        .basic_consume(
            events_queue.as_str().into(),
            "mqtest-oneshot-reader".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut events = EventReader { consumer };

    let agent = Command::new(env!("CARGO_BIN_EXE_attune-agent"))
        .args(["--mq-url", BROKER_URL, "--agent-id", &agent_id])
        .env(queues::ENV_AGENT_EVENTS_QUEUE, &events_queue)
        .stdin(Stdio::null())
        .spawn()
        .expect("start the agent binary");
    cleanup.agent = Some(agent);

    let (register, _) = events
        .wait_for("register", |event| matches!(event, AgentEvent::Register(_)))
        .await;
    let AgentEvent::Register(registration) = register else {
        unreachable!()
    };
    assert_eq!(registration.mode, "oneshot");
    let (report, _) = events.finished(10).await;
    assert_eq!(report.outcome, JobOutcome::Succeeded, "{report:?}");
    assert_eq!(report.result, Some(serde_json::json!([1, 2, 3])));
    let (deregister, _) = events
        .wait_for("deregister", |event| {
            matches!(event, AgentEvent::Deregister { .. })
        })
        .await;
    assert!(
        matches!(deregister, AgentEvent::Deregister { reason, .. } if reason == "oneshot execution finished")
    );
    let status = wait_for_exit(cleanup.agent.as_mut().unwrap()).await;
    assert!(status.success(), "agent exit status {status:?}");
    let _ = connection.close(200, "test done".into()).await;
}
