//! The events queue against the real RabbitMQ on 127.0.0.1:5672 (`ATTUNE_TEST_MQ_URL`): a
//! poison event is delivered at most `EVENTS_DELIVERY_LIMIT + 1` times, flagged as the last
//! attempt once and parked in the dead-letter queue while 50 other events are applied; a newer
//! agent's event type is acked and counted; a malformed report goes to the dead-letter queue
//! with its execution named; an event held while the database is away is applied once without
//! spending its delivery budget; a classic queue of an older server is converted when empty;
//! a connection the broker closes is opened again, consumption resumes and commands go out.

use attune_broker::{
    apply_deliveries, AgentChannel, ApplyError, Broker, EventConsumer, EventDelivery,
    EventsQueueMode, EVENTS_DELIVERY_LIMIT,
};
use attune_protocol::queues::dead_letter_queue;
use attune_protocol::{AgentEvent, JobOutcome, JobReport};
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

const WAIT_LIMIT: Duration = Duration::from_secs(30);

fn broker_url() -> String {
    std::env::var("ATTUNE_TEST_MQ_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string())
}

fn unique_queue(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "attune.test.broker-{what}-{}-{nanos}.events",
        std::process::id()
    )
}

/// A plain connection and confirmed channel, standing in for agents.
async fn agent_side() -> (Connection, Channel) {
    let connection = Connection::connect(&broker_url(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ on 127.0.0.1:5672");
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(Default::default()).await.unwrap();
    (connection, channel)
}

async fn publish(channel: &Channel, queue: &str, payload: &[u8]) {
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            payload,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack(), "the broker took the message");
}

async fn publish_event(channel: &Channel, queue: &str, event: &AgentEvent) {
    publish(channel, queue, &serde_json::to_vec(event).unwrap()).await;
}

/// Messages waiting in a queue.
async fn message_count(channel: &Channel, queue: &str) -> u32 {
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .unwrap()
        .message_count()
}

/// Deletes a test's events queue, its exchange and its dead-letter queue when dropped, also when the test
/// fails (quorum queues left behind would pile up on the shared broker).
struct QueueGuard(String);

impl Drop for QueueGuard {
    fn drop(&mut self) {
        for queue in [self.0.clone(), dead_letter_queue(&self.0)] {
            let _ = std::process::Command::new("rabbitmqctl")
                .args(["-q", "delete_queue", &queue])
                .output();
        }
        // The events exchange the broker declares beside the queue (rabbitmqctl has no
        // command for exchanges; the management API on loopback does).
        let _ = std::process::Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-u",
                "guest:guest",
                "-X",
                "DELETE",
                &format!(
                    "http://127.0.0.1:15672/api/exchanges/%2F/{}",
                    attune_protocol::queues::events_exchange(&self.0)
                ),
            ])
            .output();
    }
}

fn report(execution_id: i64) -> AgentEvent {
    AgentEvent::Finished(JobReport {
        agent_id: "agent-under-test".into(),
        execution_id,
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
    })
}

/// What the apply function of these tests fails with.
#[derive(Debug)]
struct Refusal {
    transient: bool,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(if self.transient {
            "database unreachable"
        } else {
            "the store rejects this event"
        })
    }
}

impl ApplyError for Refusal {
    fn is_transient(&self) -> bool {
        self.transient
    }
}

/// Waits until `condition` holds, checking every 20 ms, failing after [`WAIT_LIMIT`].
async fn wait_until(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT_LIMIT;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited too long for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_poison_event_is_dead_lettered_after_the_limit_while_fifty_others_apply() {
    let queue = unique_queue("poison");
    let _cleanup = QueueGuard(queue.clone());
    let broker = Broker::connect(&broker_url(), &queue, Duration::from_secs(10))
        .await
        .expect("connect");
    assert_eq!(broker.events_mode(), EventsQueueMode::Quorum);
    let (_connection, channel) = agent_side().await;

    const POISONED: i64 = 1;
    publish_event(&channel, &queue, &report(POISONED)).await;
    for execution_id in 100..150 {
        publish_event(&channel, &queue, &report(execution_id)).await;
    }
    publish(
        &channel,
        &queue,
        br#"{"type": "gpu_usage", "agent_id": "a-new", "execution_id": 7, "percent": 80}"#,
    )
    .await;
    publish(
        &channel,
        &queue,
        br#"{"type": "finished", "agent_id": "a-1", "execution_id": 8, "outcome": 42}"#,
    )
    .await;
    publish(&channel, &queue, b"\x00not json at all").await;

    let poison_attempts = Arc::new(Mutex::new(Vec::new()));
    let (applied_sender, mut applied) = mpsc::unbounded_channel();
    let consumer = broker.consume_events(64).await.expect("consume");
    let consuming = {
        let poison_attempts = Arc::clone(&poison_attempts);
        tokio::spawn(apply_deliveries(consumer, move |delivery| {
            let poison_attempts = Arc::clone(&poison_attempts);
            let applied = applied_sender.clone();
            async move {
                match delivery {
                    EventDelivery::Apply {
                        event,
                        attempt,
                        last_attempt,
                    } => {
                        let execution_id = event.execution_id().unwrap();
                        if execution_id == POISONED {
                            poison_attempts
                                .lock()
                                .unwrap()
                                .push((attempt, last_attempt));
                            return Err(Refusal { transient: false });
                        }
                        let _ = applied.send(Ok(execution_id));
                        Ok(())
                    }
                    EventDelivery::Unreadable {
                        event_type,
                        execution_id,
                        error,
                    } => {
                        let _ = applied.send(Err((event_type, execution_id, error)));
                        Ok(())
                    }
                }
            }
        }))
    };

    let mut good = Vec::new();
    let mut unreadable = Vec::new();
    while good.len() < 50 || unreadable.is_empty() {
        match tokio::time::timeout(WAIT_LIMIT, applied.recv()).await {
            Ok(Some(Ok(execution_id))) => good.push(execution_id),
            Ok(Some(Err(unreadable_event))) => unreadable.push(unreadable_event),
            other => panic!("events stopped arriving: {other:?}; applied {}", good.len()),
        }
    }
    good.sort_unstable();
    assert_eq!(good, (100..150).collect::<Vec<_>>(), "each good event once");
    assert_eq!(unreadable.len(), 1, "{unreadable:?}");
    assert_eq!(unreadable[0].0, "finished");
    assert_eq!(
        unreadable[0].1, 8,
        "the malformed report names its execution"
    );

    let dead_letters = dead_letter_queue(&queue);
    wait_until(
        "the poison and the malformed messages to be dead-lettered",
        async || message_count(&channel, &dead_letters).await == 3,
    )
    .await;
    let attempts = poison_attempts.lock().unwrap().clone();
    let limit = EVENTS_DELIVERY_LIMIT;
    let expected: Vec<(u32, bool)> = (1..=limit + 1)
        .map(|attempt| (attempt, attempt == limit + 1))
        .collect();
    assert_eq!(
        attempts, expected,
        "delivered once plus {limit} redeliveries, the last flagged"
    );
    assert_eq!(message_count(&channel, &queue).await, 0, "nothing loops");
    let counts = broker.event_counts();
    assert_eq!(counts.applied, 50, "{counts:?}");
    assert_eq!(counts.unknown, 1, "{counts:?}");
    assert_eq!(counts.malformed, 2, "{counts:?}");
    assert_eq!(counts.dead_lettered, 3, "{counts:?}");
    assert_eq!(counts.redelivered, u64::from(limit), "{counts:?}");

    consuming.abort();
    broker.close().await;
}

#[tokio::test]
async fn an_event_held_while_the_database_is_away_is_applied_once_without_spending_its_budget() {
    let queue = unique_queue("held");
    let _cleanup = QueueGuard(queue.clone());
    let broker = Broker::connect(&broker_url(), &queue, Duration::from_secs(10))
        .await
        .expect("connect");
    let (_connection, channel) = agent_side().await;
    publish_event(&channel, &queue, &report(5)).await;

    let tries = Arc::new(AtomicU32::new(0));
    let (applied_sender, mut applied) = mpsc::unbounded_channel();
    let consumer: EventConsumer = broker.consume_events(8).await.expect("consume");
    let consuming = {
        let tries = Arc::clone(&tries);
        tokio::spawn(apply_deliveries(consumer, move |delivery| {
            let tries = Arc::clone(&tries);
            let applied = applied_sender.clone();
            async move {
                if tries.fetch_add(1, Ordering::SeqCst) < 3 {
                    return Err(Refusal { transient: true });
                }
                let _ = applied.send(delivery);
                Ok(())
            }
        }))
    };
    let delivery = tokio::time::timeout(WAIT_LIMIT, applied.recv())
        .await
        .expect("applied once the database answers")
        .unwrap();
    assert!(
        matches!(
            delivery,
            EventDelivery::Apply {
                attempt: 1,
                last_attempt: false,
                ..
            }
        ),
        "held in place, not redelivered: {delivery:?}"
    );
    assert_eq!(tries.load(Ordering::SeqCst), 4);
    let counts = broker.event_counts();
    assert_eq!((counts.held, counts.applied, counts.redelivered), (3, 1, 0));
    wait_until("the event to be acked", async || {
        message_count(&channel, &queue).await == 0
    })
    .await;
    consuming.abort();
    broker.close().await;
}

#[tokio::test]
async fn an_older_servers_classic_queue_is_converted_when_empty_and_kept_while_it_holds_events() {
    let (_connection, channel) = agent_side().await;

    let empty = unique_queue("classic-empty");
    let _cleanup_empty = QueueGuard(empty.clone());
    channel
        .queue_declare(
            empty.as_str().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let broker = Broker::connect(&broker_url(), &empty, Duration::from_secs(10))
        .await
        .expect("connect over an empty classic queue");
    assert_eq!(broker.events_mode(), EventsQueueMode::Quorum);
    broker.close().await;

    let holding = unique_queue("classic-holding");
    let _cleanup_holding = QueueGuard(holding.clone());
    channel
        .queue_declare(
            holding.as_str().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    publish_event(&channel, &holding, &report(3)).await;
    let broker = Broker::connect(&broker_url(), &holding, Duration::from_secs(10))
        .await
        .expect("connect over a classic queue holding an event");
    assert_eq!(broker.events_mode(), EventsQueueMode::Legacy);
    assert_eq!(message_count(&channel, &holding).await, 1, "nothing lost");

    // A legacy queue still bounds a poison event: first delivery and one redelivery.
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let consumer = broker.consume_events(8).await.expect("consume");
    let consuming = {
        let attempts = Arc::clone(&attempts);
        tokio::spawn(apply_deliveries(consumer, move |delivery| {
            let attempts = Arc::clone(&attempts);
            async move {
                if let EventDelivery::Apply {
                    attempt,
                    last_attempt,
                    ..
                } = delivery
                {
                    attempts.lock().unwrap().push((attempt, last_attempt));
                }
                Err::<(), _>(Refusal { transient: false })
            }
        }))
    };
    wait_until("the poison event to be dropped", async || {
        attempts.lock().unwrap().len() == 2 && message_count(&channel, &holding).await == 0
    })
    .await;
    assert_eq!(*attempts.lock().unwrap(), vec![(1, false), (2, true)]);
    consuming.abort();
    broker.close().await;
}

/// Closes the connections RabbitMQ lists under `name` (as `rabbitmqctl close_connection`
/// does for an operator); returns how many it closed.
fn close_connections_named(name: &str) -> usize {
    let listed = std::process::Command::new("rabbitmqctl")
        .args([
            "-q",
            "list_connections",
            "pid",
            "name",
            "client_properties",
            "--no-table-headers",
        ])
        .output()
        .expect("rabbitmqctl list_connections");
    let listing = String::from_utf8_lossy(&listed.stdout);
    let pids: Vec<String> = listing
        .lines()
        .filter(|line| line.contains(&format!("\"{name}\"")))
        .filter_map(|line| line.split('\t').next().map(str::to_string))
        .collect();
    for pid in &pids {
        let closed = std::process::Command::new("rabbitmqctl")
            .args([
                "-q",
                "close_connection",
                pid,
                "closed by the reconnection test",
            ])
            .output()
            .expect("rabbitmqctl close_connection");
        assert!(closed.status.success(), "close {pid}: {closed:?}");
    }
    pids.len()
}

#[tokio::test]
async fn a_connection_the_broker_closes_is_opened_again_and_consumption_resumes() {
    let queue = unique_queue("reconnect");
    let _cleanup = QueueGuard(queue.clone());
    let agent_queue_id = format!("reconnect-{}", std::process::id());
    let _agent_queue = QueueGuard(attune_protocol::queues::agent_job_queue(&agent_queue_id));
    let broker = Arc::new(
        Broker::connect(&broker_url(), &queue, Duration::from_secs(10))
            .await
            .expect("connect")
            .with_publish_patience(WAIT_LIMIT),
    );
    assert_eq!(broker.sessions(), 1);
    let (_connection, channel) = agent_side().await;
    let (applied_sender, mut applied) = mpsc::unbounded_channel();
    let consuming = {
        let broker = Arc::clone(&broker);
        tokio::spawn(async move {
            broker
                .run_events(8, move |delivery| {
                    let applied = applied_sender.clone();
                    async move {
                        if let EventDelivery::Apply { event, .. } = delivery {
                            let _ = applied.send(event.execution_id().unwrap());
                        }
                        Ok::<(), Refusal>(())
                    }
                })
                .await
        })
    };
    publish_event(&channel, &queue, &report(1)).await;
    let first = tokio::time::timeout(WAIT_LIMIT, applied.recv()).await;
    assert_eq!(first.ok().flatten(), Some(1));
    assert!(broker.is_connected());

    let name = format!("attune-controller {queue}");
    assert_eq!(
        close_connections_named(&name),
        1,
        "the broker's connection by its name"
    );
    // A command waits for the new session and goes out on it.
    broker
        .declare_agent_queue(&agent_queue_id)
        .await
        .expect("declare an agent queue after the connection was closed");
    broker
        .send_command(
            &agent_queue_id,
            &attune_protocol::AgentCommand::Cancel { execution_id: 9 },
        )
        .await
        .expect("send a command after the connection was closed");
    assert!(broker.sessions() >= 2, "a new session was opened");
    // Events published meanwhile are consumed on the new connection.
    publish_event(&channel, &queue, &report(2)).await;
    let second = tokio::time::timeout(WAIT_LIMIT, async {
        loop {
            match applied.recv().await {
                Some(2) => return Some(2),
                Some(_) => continue,
                None => return None,
            }
        }
    })
    .await;
    assert_eq!(second.ok().flatten(), Some(2), "consumption resumed");
    wait_until("connected again", async || broker.is_connected()).await;

    broker.close().await;
    tokio::time::timeout(WAIT_LIMIT, consuming)
        .await
        .expect("run_events returns once the broker is closed")
        .expect("events task");
    let refused = broker
        .send_command(
            &agent_queue_id,
            &attune_protocol::AgentCommand::Cancel { execution_id: 9 },
        )
        .await;
    assert!(
        matches!(refused, Err(attune_broker::BrokerError::Closed)),
        "{refused:?}"
    );
}
