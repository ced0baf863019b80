//! Agents' broker accounts against the real RabbitMQ (management plugin on, as
//! scripts/rabbitmq-config.sh sets it up): every agent a controller starts logs in with an
//! account of its own, which is gone with its container; an account reaches its own job queue
//! and its controller's events exchange and nothing else — consuming another agent's job queue,
//! publishing through the default exchange, publishing to another controller, reading the
//! events queue and declaring queues are all refused by the broker.

mod outage;

use attune_broker::accounts::AgentAccounts;
use attune_broker::{AgentChannel, Broker};
use attune_protocol::api::ExecutionStatus;
use attune_protocol::queues::{agent_job_queue, controller_events_queue, events_exchange};
use attune_testkit::{TestClient, TestEnvironment, TestServer, MANAGEMENT_URL};
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::{json, Value};
use std::time::Duration;

/// The names of the broker's users starting with `prefix`.
async fn users_with_prefix(prefix: &str) -> Vec<String> {
    let listed: Vec<Value> = reqwest::Client::new()
        .get(format!("{MANAGEMENT_URL}/api/users"))
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .expect("management API")
        .json()
        .await
        .expect("users as JSON");
    listed
        .iter()
        .filter_map(|user| user["name"].as_str())
        .filter(|name| name.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

/// Waits (up to 30 s: the management API's statistics lag by up to 5 s) until an agent of
/// `controller_id` has a connection, and returns the users of that controller's agents'
/// connections.
async fn agent_connection_users(controller_id: &str) -> Vec<(String, String, bool)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let agents: Vec<_> = attune_testkit::broker_connections()
            .await
            .into_iter()
            .filter(|(name, _, _)| name.starts_with("attune-agent "))
            .filter(|(_, user, _)| {
                user == "guest" || user.starts_with(&format!("attune-agent.{controller_id}."))
            })
            .collect();
        if !agents.is_empty() {
            return agents;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no agent of {controller_id} connected within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until no account of `prefix` is left.
async fn wait_accounts_gone(prefix: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left = users_with_prefix(prefix).await;
        if left.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "broker accounts left: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_agent_logs_in_with_an_account_of_its_own_that_goes_with_its_container() {
    let server = TestServer::start(&[]).await.expect("start test server");
    let _containers = server.container_guard();
    let client = TestClient::new(&server);
    outage::register(&client).await;
    let prefix = format!("attune-agent.{}.", server.controller_id);

    // Held running until the gate answers, so its connection can be looked at.
    let gate = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = gate.local_addr().unwrap().port();
    let held = client
        .submit_ok("outage.until", json!({"item": 1, "port": port}))
        .await;
    client.wait_running(held).await;
    let users = agent_connection_users(&server.controller_id).await;
    assert!(
        users
            .iter()
            .all(|(_, user, _)| user.starts_with(&prefix) && user != "guest"),
        "every agent logs in as an account of its own, never the server's: {users:?}"
    );
    assert_eq!(
        users_with_prefix(&prefix).await.len(),
        1,
        "one account for the one agent"
    );
    let opened = tokio::spawn(outage::answer_forever(gate));
    let ended = client.wait_terminal(held).await;
    assert_eq!(ended.status, ExecutionStatus::Succeeded, "{ended:?}");
    wait_accounts_gone(&prefix).await;

    // A warm container's agent has one too, for as long as the container lives.
    let warm = client
        .run_succeeded("outage.pooled", json!({"item": 2}))
        .await;
    assert!(warm.stdout.contains("item 2"), "{warm:?}");
    assert!(
        !users_with_prefix(&prefix).await.is_empty(),
        "the warm agent's account lives with its container"
    );
    opened.abort();
    server.finish().await;
    wait_accounts_gone(&prefix).await;
}

/// Deletes what the accounts test made on the broker, whatever happened in it: the events
/// queues, exchanges and agent accounts of its controllers, and its agents' job queues.
struct BrokerCleanup {
    events_queues: Vec<String>,
    agents: Vec<String>,
}

impl Drop for BrokerCleanup {
    fn drop(&mut self) {
        let events_queues = std::mem::take(&mut self.events_queues);
        let agents = std::mem::take(&mut self.agents);
        let cleaning = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("clean-up runtime");
            runtime.block_on(async move {
                let url = TestEnvironment::from_env().message_queue_url;
                if let Ok(broker) =
                    Broker::connect(&url, &events_queues[0], Duration::from_secs(10)).await
                {
                    for agent in &agents {
                        let _ = broker.forget_agent(agent).await;
                    }
                    broker.close().await;
                }
                for queue in &events_queues {
                    let _ = attune_testkit::delete_events_queues(queue).await;
                }
            });
        });
        let _ = cleaning.join();
    }
}

/// The broker's refusal of one operation, as text (empty when it was allowed).
fn refusal(outcome: Result<(), lapin::Error>) -> String {
    match outcome {
        Ok(()) => String::new(),
        Err(error) => error.to_string(),
    }
}

/// Publishes `payload` to `exchange` with `routing_key` on a new confirm channel.
async fn publish(
    connection: &Connection,
    exchange: &str,
    routing_key: &str,
) -> Result<(), lapin::Error> {
    let channel = connection.create_channel().await?;
    channel.confirm_select(Default::default()).await?;
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            b"{}",
            BasicProperties::default(),
        )
        .await?
        .await?;
    assert!(confirm.is_ack(), "a publish that passed must be confirmed");
    // A refused publish closes the channel asynchronously: ask the broker something on it.
    channel.basic_qos(1, Default::default()).await?;
    Ok(())
}

async fn consume(connection: &Connection, queue: &str) -> Result<(), lapin::Error> {
    let channel = connection.create_channel().await?;
    channel
        .basic_consume(
            queue.into(),
            "accounts-test".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

async fn declare(
    connection: &Connection,
    queue: &str,
    arguments: FieldTable,
) -> Result<(), lapin::Error> {
    let channel = connection.create_channel().await?;
    channel
        .queue_declare(queue.into(), QueueDeclareOptions::durable(), arguments)
        .await?;
    Ok(())
}

/// Waits until `queue` holds `count` messages (rabbitmqctl's counts lag by up to 5 s).
async fn wait_messages(queue: &str, count: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let held = attune_testkit::services::queue_messages(queue);
        if held == Some(count) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{queue} holds {held:?} messages, not {count}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn job_queue_arguments() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-expires".into(),
        AMQPValue::LongUInt(attune_protocol::queues::AGENT_QUEUE_EXPIRES_MS),
    );
    arguments
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_account_reaches_its_own_queue_and_its_controllers_exchange_only() {
    let environment = TestEnvironment::from_env();
    let url = environment.message_queue_url.clone();
    let unique = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
    let controller_id = format!("test-accounts-{unique}");
    let other_controller = format!("test-accounts-other-{unique}");
    let events_queue = controller_events_queue(&controller_id);
    let other_events = controller_events_queue(&other_controller);
    // The controllers declare their events queues and exchanges, as servers do.
    let broker = Broker::connect(&url, &events_queue, Duration::from_secs(10))
        .await
        .expect("connect as the controller");
    let other = Broker::connect(&url, &other_events, Duration::from_secs(10))
        .await
        .expect("connect as another controller");
    let accounts =
        AgentAccounts::new(MANAGEMENT_URL, &url, &url, &controller_id, &events_queue).unwrap();
    let (agent_a, agent_b) = (&format!("test-a-{unique}"), &format!("test-b-{unique}"));
    let _cleanup = BrokerCleanup {
        events_queues: vec![events_queue.clone(), other_events.clone()],
        agents: vec![agent_a.clone(), agent_b.clone()],
    };
    let a_url = accounts
        .issue(agent_a)
        .await
        .expect("make agent a's account");
    accounts
        .issue(agent_b)
        .await
        .expect("make agent b's account");
    broker.declare_agent_queue(agent_b).await.unwrap();
    broker
        .send_command(
            agent_b,
            &attune_protocol::AgentCommand::Shutdown {
                deadline_seconds: 1,
            },
        )
        .await
        .unwrap();

    let a = Connection::connect(&a_url, ConnectionProperties::default())
        .await
        .expect("agent a logs in with its own account");
    // What agent a may do: declare and consume its own job queue, publish its events.
    assert_eq!(
        refusal(declare(&a, &agent_job_queue(agent_a), job_queue_arguments()).await),
        ""
    );
    assert_eq!(refusal(consume(&a, &agent_job_queue(agent_a)).await), "");
    assert_eq!(
        refusal(publish(&a, &events_exchange(&events_queue), &events_queue).await),
        ""
    );
    // What it may not.
    for (what, refused) in [
        (
            "consume agent b's job queue",
            refusal(consume(&a, &agent_job_queue(agent_b)).await),
        ),
        (
            "publish a job to agent b through the default exchange",
            refusal(publish(&a, "", &agent_job_queue(agent_b)).await),
        ),
        (
            "publish straight to its controller's events queue",
            refusal(publish(&a, "", &events_queue).await),
        ),
        (
            "publish to another controller's events exchange",
            refusal(publish(&a, &events_exchange(&other_events), &other_events).await),
        ),
        (
            "read its controller's events queue",
            refusal(consume(&a, &events_queue).await),
        ),
        (
            "declare a queue of its own choosing",
            refusal(
                declare(
                    &a,
                    &format!("attune.test.squat.{unique}"),
                    FieldTable::default(),
                )
                .await,
            ),
        ),
        (
            "declare agent b's job queue",
            refusal(declare(&a, &agent_job_queue(agent_b), job_queue_arguments()).await),
        ),
    ] {
        assert!(
            refused.contains("ACCESS_REFUSED"),
            "agent a could {what} (outcome: {refused:?})"
        );
    }
    // Agent b's job is still there for agent b, and the one event reached the events queue.
    wait_messages(&agent_job_queue(agent_b), 1).await;
    wait_messages(&events_queue, 1).await;
    let _ = a.close(200, "done".into()).await;

    // A revoked account no longer logs in.
    accounts.revoke(agent_a).await.unwrap();
    broker.forget_agent(agent_a).await.unwrap();
    let after = Connection::connect(&a_url, ConnectionProperties::default()).await;
    assert!(after.is_err(), "a revoked account still logs in");

    accounts.revoke(agent_b).await.unwrap();
    broker.forget_agent(agent_b).await.unwrap();
    assert!(users_with_prefix(&accounts.user_prefix()).await.is_empty());
    broker.delete_events_queues().await.unwrap();
    other.delete_events_queues().await.unwrap();
    broker.close().await;
    other.close().await;
}
