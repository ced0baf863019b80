//! Agents speak only for themselves, and actions cannot reach their agent's secrets: against a
//! real server, broker and agent.
//!
//! - A process holding the broker account publishes a `Finished` for a running execution:
//!   unsigned, signed with a made-up key, and signed with the real key of *another* agent of
//!   the same controller (and a log chunk the same way). All are dropped and counted; the
//!   execution ends with its real result.
//! - An action, as root and as a non-root user, looks through every process's environment and
//!   file descriptors and the filesystem: the broker URL and the event key are nowhere, and
//!   the agent's own `/proc` entries are closed to it.

use attune_protocol::api::ExecutionStatus;
use attune_protocol::signing::{agent_event_key, sign, SIGNATURE_HEADER};
use attune_protocol::{AgentEvent, JobOutcome, JobReport, OutputStream};
use attune_testkit::{psql, TestClient, TestServer};
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::{json, Value};
use std::path::PathBuf;

fn identity_pack() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/packs/identity")
}

fn forged_report(execution_id: i64, agent_id: &str) -> AgentEvent {
    AgentEvent::Finished(JobReport {
        agent_id: agent_id.to_string(),
        execution_id,
        outcome: JobOutcome::Failed,
        exit_code: Some(66),
        signal: None,
        duration_ms: 1,
        stdout: "forged\n".into(),
        stderr: String::new(),
        stdout_truncated: false,
        stderr_truncated: false,
        result: None,
        error: Some("forged".into()),
        failure_kind: None,
    })
}

/// Publishes `event` to `queue`, with `signature` in the signature header when given.
async fn publish(
    channel: &lapin::Channel,
    queue: &str,
    event: &AgentEvent,
    signature: Option<String>,
) {
    let body = serde_json::to_vec(event).unwrap();
    let mut properties = BasicProperties::default().with_delivery_mode(2);
    if let Some(signature) = signature {
        let mut headers = FieldTable::default();
        headers.insert(
            SIGNATURE_HEADER.into(),
            AMQPValue::LongString(signature.into()),
        );
        properties = properties.with_headers(headers);
    }
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            &body,
            properties,
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_from_anyone_but_the_placed_agent_are_dropped_and_the_real_result_stays() {
    let server = TestServer::start(&[]).await.expect("start test server");
    let _containers = server.container_guard();
    let client = TestClient::new(&server);
    client.register_dir(identity_pack()).await;
    let id = client
        .submit_ok("identity.nap", json!({"seconds": 4}))
        .await;
    let running = client.wait_running(id).await;
    assert_eq!(running.status, ExecutionStatus::Running, "{running:?}");
    let agent_id = running.agent_id.clone().expect("placed on an agent");

    let environment = attune_testkit::TestEnvironment::from_env();
    let connection = Connection::connect(
        &environment.message_queue_url,
        ConnectionProperties::default(),
    )
    .await
    .expect("the broker, with the server's own account");
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(Default::default()).await.unwrap();
    let queue = server.events_queue.as_str();

    // As the placed agent, but unsigned and with a made-up key.
    let forged = forged_report(id, &agent_id);
    publish(&channel, queue, &forged, None).await;
    let body = serde_json::to_vec(&forged).unwrap();
    publish(&channel, queue, &forged, Some(sign(&[1; 32], &body))).await;
    // As another agent of this controller, with that agent's real key.
    let secret_hex = psql(
        &server.database.url,
        &format!(
            "SELECT encode(agent_secret, 'hex') FROM controller_secrets WHERE controller_id = '{}'",
            server.controller_id
        ),
    )
    .trim()
    .to_string();
    let secret = attune_protocol::signing::from_hex(&secret_hex).expect("the controller's secret");
    let other = "exec-999999-0123456789";
    let other_key = agent_event_key(&secret, other);
    for event in [
        forged_report(id, other),
        AgentEvent::Log {
            agent_id: other.to_string(),
            execution_id: id,
            seq: 999,
            stream: OutputStream::Stdout,
            data: "forged chunk\n".into(),
        },
        AgentEvent::Running {
            agent_id: other.to_string(),
            execution_id: id,
            pid: Some(1),
        },
    ] {
        let body = serde_json::to_vec(&event).unwrap();
        publish(&channel, queue, &event, Some(sign(&other_key, &body))).await;
    }

    let ended = client.wait_terminal(id).await;
    assert_eq!(ended.status, ExecutionStatus::Succeeded, "{ended:?}");
    assert_eq!(ended.stdout, "the real result\n");
    assert_eq!(ended.agent_id.as_deref(), Some(agent_id.as_str()));
    let logs = client.logs(id).await;
    assert!(
        logs.iter().all(|chunk| !chunk.data.contains("forged")),
        "{logs:?}"
    );

    // Counted where an operator looks (the controller's heartbeat details in /readyz).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let ready: Value = client.get_json("/readyz").await;
        let events = &ready["controllers"][0]["details"]["agent_events"];
        if events["unauthenticated"].as_u64() >= Some(2)
            && events["from_another_agent"].as_u64() >= Some(3)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not counted: {events}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let _ = connection.close(200, "done".into()).await;
    server.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_finds_neither_the_broker_credentials_nor_the_event_key() {
    let server = TestServer::start(&[]).await.expect("start test server");
    let _containers = server.container_guard();
    let client = TestClient::new(&server);
    client.register_dir(identity_pack()).await;
    let environment = attune_testkit::TestEnvironment::from_env();
    let url = environment.message_queue_url.clone();
    let userinfo = url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split_once('@'))
        .map(|(userinfo, _)| format!("{userinfo}@"))
        .expect("the test broker URL has credentials");
    for (action, uid) in [("identity.snoop", "0"), ("identity.snoop_nonroot", "1000")] {
        let ran = client.run_succeeded(action, json!({})).await;
        let seen = ran.stdout;
        assert!(seen.contains(&format!("uid {uid}\n")), "{action}: {seen}");
        assert!(
            seen.contains("--- done"),
            "{action} looked everywhere: {seen}"
        );
        assert!(
            !seen.contains(&userinfo),
            "{action} found the broker credentials: {seen}"
        );
        assert!(
            !seen.contains("amqp://"),
            "{action} found the broker URL: {seen}"
        );
        assert!(
            !seen.contains("event_key"),
            "{action} found the event key: {seen}"
        );
        // It did find its agent, and was refused.
        assert!(
            seen.contains("(attune-agent): denied"),
            "{action}: the agent's /proc entries: {seen}"
        );
        assert!(
            !seen.contains("(attune-agent): readable"),
            "{action} opened the agent's /proc entries: {seen}"
        );
    }
    server.finish().await;
}
