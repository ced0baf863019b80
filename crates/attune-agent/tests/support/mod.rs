//! What the agent's tests against the real RabbitMQ on 127.0.0.1:5672 share: unique queue names,
//! a confirmed channel, publishing commands, reading the agent's events with a deadline, and
//! deleting the test's queues whatever happened.

use attune_protocol::{AgentCommand, AgentEvent, JobReport};
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use std::time::{Duration, Instant};

pub const BROKER_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A suffix no other test run uses (process id and time), for queue and container names.
pub fn unique_suffix() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// Connects to the broker and opens a channel with publisher confirms.
pub async fn open_channel() -> (Connection, Channel) {
    let connection = Connection::connect(BROKER_URL, ConnectionProperties::default())
        .await
        .expect("RabbitMQ on 127.0.0.1:5672");
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(Default::default()).await.unwrap();
    (connection, channel)
}

/// Declares a durable queue with these arguments.
pub async fn declare_queue(channel: &Channel, queue: &str, arguments: FieldTable) {
    channel
        .queue_declare(queue.into(), QueueDeclareOptions::durable(), arguments)
        .await
        .unwrap();
}

/// Declares a private events queue and its exchange (as the controller does: agents publish
/// to the exchange, `attune_protocol::queues::events_exchange`) and reads the queue (no acks),
/// giving up after `wait_limit`.
pub async fn read_events(
    channel: &Channel,
    events_queue: &str,
    consumer_tag: &str,
    wait_limit: Duration,
) -> EventReader {
    declare_queue(channel, events_queue, FieldTable::default()).await;
    let exchange = attune_protocol::queues::events_exchange(events_queue);
    channel
        .exchange_declare(
            exchange.as_str().into(),
            lapin::ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            events_queue.into(),
            exchange.as_str().into(),
            events_queue.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let consumer = channel
        .basic_consume(
            events_queue.into(),
            consumer_tag.into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    EventReader {
        consumer,
        wait_limit,
    }
}

/// Publishes a persistent message and waits for the broker's confirm.
pub async fn publish(channel: &Channel, queue: &str, payload: &[u8]) {
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

pub async fn send_command(channel: &Channel, queue: &str, command: &AgentCommand) {
    publish(channel, queue, &serde_json::to_vec(command).unwrap()).await;
}

/// Deletes queues, the exchange named like each (an events queue's), and the dead-letter queue
/// an events queue declares beside it (`attune_protocol::queues::dead_letter_queue`), on a
/// connection of its own (callable from
/// `Drop`, inside or outside a runtime); failures are ignored, since it runs during clean-up.
pub fn delete_queues(queue_names: Vec<String>) {
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
                let dead_letters: Vec<String> = queue_names
                    .iter()
                    .map(|queue| attune_protocol::queues::dead_letter_queue(queue))
                    .collect();
                for queue in &queue_names {
                    let _ = channel
                        .exchange_delete(queue.as_str().into(), ExchangeDeleteOptions::default())
                        .await;
                }
                for queue in queue_names.into_iter().chain(dead_letters) {
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

/// The agent's events, as the controller reads them.
pub struct EventReader {
    consumer: Consumer,
    wait_limit: Duration,
}

impl EventReader {
    /// The next event; asserts it is persistent JSON.
    pub async fn next(&mut self, deadline: Instant) -> AgentEvent {
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
    pub async fn wait_for(
        &mut self,
        what: &str,
        matches: impl Fn(&AgentEvent) -> bool,
    ) -> (AgentEvent, Vec<AgentEvent>) {
        let deadline = Instant::now() + self.wait_limit;
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

    /// The report of an execution, with the events read before it.
    pub async fn finished(&mut self, execution_id: i64) -> (JobReport, Vec<AgentEvent>) {
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
