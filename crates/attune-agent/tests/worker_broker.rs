//! The built agent binary as an enrolled worker, end to end against a fake API on 127.0.0.1
//! and the real RabbitMQ on 127.0.0.1:5672: it enrolls, reaches the broker at
//! `ATTUNE__MESSAGE_QUEUE__URL` with the enrolled account, registers under the enrolled agent
//! id, heartbeats while idle, runs a job from the pack archive it downloads by digest (with
//! neither its token nor the API's address in the action's environment), and on SIGTERM
//! deregisters and exits 0.
//!
//! The events queue and the job queue are private to the run and deleted at the end.

mod support;
mod worker_support;

use attune_protocol::{
    queues, AgentCommand, AgentEvent, Job, JobOutcome, Runtime, PROTOCOL_VERSION,
};
use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{
    declare_queue, delete_queues, open_channel, read_events, send_command, unique_suffix,
};
use worker_support::{archive, sha256_hex, Entry, Reply, TestServer, TOKEN};

const WAIT_LIMIT: Duration = Duration::from_secs(30);

/// Kills the worker if the test ends early and deletes the test's queues in every case.
struct Cleanup {
    worker: Option<Child>,
    queue_names: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(worker) = self.worker.as_mut() {
            if worker.try_wait().ok().flatten().is_none() {
                let _ = worker.kill();
                let _ = worker.wait();
            }
        }
        delete_queues(std::mem::take(&mut self.queue_names));
    }
}

async fn wait_for_exit(worker: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT_LIMIT;
    loop {
        if let Some(status) = worker.try_wait().expect("poll worker") {
            return status;
        }
        assert!(Instant::now() < deadline, "worker did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_enrolled_worker_heartbeats_runs_a_pack_by_digest_and_deregisters() {
    let unique = unique_suffix();
    let agent_id = format!("worker-e2e-{unique}");
    let events_queue = format!("attune.test.workers.{unique}");
    let job_queue = queues::agent_job_queue(&agent_id);
    let mut cleanup = Cleanup {
        worker: None,
        queue_names: vec![events_queue.clone(), job_queue.clone()],
    };

    let script = b"#!/bin/sh\ncat \"$ATTUNE_PACK_DIR/data/greeting.txt\"\nenv\n";
    let pack = archive(&[
        Entry::Dir("actions"),
        Entry::Dir("data"),
        Entry::File("actions/run.sh", script, 0o755),
        Entry::File("data/greeting.txt", b"hello from a worker\n", 0o644),
    ]);
    let digest = sha256_hex(&pack);
    let answer = json!({
        "agent_id": agent_id,
        // Not reachable from here: ATTUNE__MESSAGE_QUEUE__URL gives the address, this the account.
        "mq_url": "amqp://guest:guest@rabbitmq.invalid:5672/%2f",
        "event_key": "42".repeat(32),
        "events_queue": events_queue,
        "heartbeat_seconds": 1,
    });
    let server = TestServer::start(move |request, _| {
        if request.method == "POST" && request.target == "/api/v1/workers" {
            Reply::json(201, &answer)
        } else if request
            .target
            .starts_with("/api/v1/packs/hello/archive?sha256=")
        {
            Reply::bytes(200, pack.clone())
        } else {
            Reply::json(404, &json!({"error": "not_found"}))
        }
    })
    .await;

    let (connection, channel) = open_channel().await;
    declare_queue(
        &channel,
        &job_queue,
        attune_agent::mq::job_queue_arguments(),
    )
    .await;
    let mut events = read_events(&channel, &events_queue, "worker-e2e-reader", WAIT_LIMIT).await;

    let work = tempfile::tempdir().unwrap();
    let worker = Command::new(env!("CARGO_BIN_EXE_attune-agent"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("ATTUNE_API_URL", &server.url)
        .env("ATTUNE_WORKER_TOKEN", TOKEN)
        .env("ATTUNE_WORKER_NAME", "e2e")
        .env("ATTUNE_WORKER_LABELS", "zone=test")
        .env("ATTUNE_WORKER_RUNTIMES", "shell,native")
        .env("ATTUNE__MESSAGE_QUEUE__URL", "amqp://127.0.0.1:5672/%2f")
        .env(
            "ATTUNE_WORKER_PACKS_DIR",
            work.path().join("no-mounted-packs"),
        )
        .env(queues::ENV_AGENT_WORKDIR, work.path())
        .env("ATTUNE_AGENT_SHUTDOWN_SECONDS", "1")
        .stdin(Stdio::null())
        .spawn()
        .expect("start the agent binary");
    let worker_pid = i32::try_from(worker.id()).unwrap();
    cleanup.worker = Some(worker);

    let (register, before) = events
        .wait_for("register", |event| matches!(event, AgentEvent::Register(_)))
        .await;
    assert!(before.is_empty(), "{before:?}");
    let AgentEvent::Register(registration) = register else {
        unreachable!()
    };
    assert_eq!(registration.agent_id, agent_id);
    assert_eq!(registration.mode, "worker");
    let names: Vec<&str> = registration
        .runtimes
        .iter()
        .map(|runtime| runtime.name.as_str())
        .collect();
    assert_eq!(names, ["shell", "native"]);
    let enrolled: serde_json::Value = serde_json::from_slice(&server.requests()[0].body).unwrap();
    assert_eq!(enrolled["name"], "e2e");
    assert_eq!(enrolled["labels"], json!({"zone": "test"}));
    assert_eq!(enrolled["runtimes"][1]["name"], "native");

    // Idle, it heartbeats anyway.
    for _ in 0..2 {
        let (heartbeat, before) = events
            .wait_for("idle heartbeat", |event| {
                matches!(event, AgentEvent::Heartbeat { .. })
            })
            .await;
        assert!(before.is_empty(), "{before:?}");
        assert_eq!(
            heartbeat,
            AgentEvent::Heartbeat {
                agent_id: agent_id.clone(),
                running: vec![]
            }
        );
    }

    let job = Job {
        protocol_version: PROTOCOL_VERSION,
        execution_id: 7,
        action_ref: "hello.run".to_string(),
        pack_ref: "hello".to_string(),
        runtime: Runtime::Native,
        pack_dir: "/opt/attune/packs/hello".to_string(),
        entry_point: "actions/run.sh".to_string(),
        parameters: Default::default(),
        secret_parameters: Vec::new(),
        parameter_delivery: Default::default(),
        parameter_format: Default::default(),
        timeout_seconds: 30,
        kill_grace_seconds: 1,
        env: Default::default(),
        output_limit_bytes: 1024 * 1024,
        stream_logs: false,
        pack_sha256: Some(digest.clone()),
    };
    send_command(&channel, &job_queue, &AgentCommand::Job(job)).await;
    let (report, _) = events.finished(7).await;
    assert_eq!(report.outcome, JobOutcome::Succeeded, "{report:?}");
    assert!(
        report.stdout.starts_with("hello from a worker\n"),
        "{}",
        report.stdout
    );
    let pack_dir = work.path().join("attune-packs").join(&digest);
    assert!(
        report
            .stdout
            .contains(&format!("ATTUNE_PACK_DIR={}", pack_dir.display())),
        "{}",
        report.stdout
    );
    for hidden in [
        TOKEN,
        "ATTUNE_API_URL",
        "ATTUNE_WORKER_",
        "ATTUNE__MESSAGE_QUEUE__URL",
    ] {
        assert!(
            !report.stdout.contains(hidden),
            "{hidden} reached the action"
        );
    }
    let downloads = server
        .requests()
        .iter()
        .filter(|request| request.target.contains("/archive?sha256="))
        .count();
    assert_eq!(downloads, 1);

    // SIGTERM: it drains, deregisters and exits 0.
    // SAFETY: kill only sends a signal to the worker this test started.
    assert_eq!(unsafe { libc::kill(worker_pid, libc::SIGTERM) }, 0);
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
    let status = wait_for_exit(cleanup.worker.as_mut().unwrap()).await;
    assert!(status.success(), "worker exit status {status:?}");
    let _ = connection.close(200, "test done".into()).await;
}
