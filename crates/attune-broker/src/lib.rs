//! `attune-broker`: the controller's side of RabbitMQ (commands to agents' own queues, events
//! from the controller's events queue); the only crate besides the agent that depends on lapin.
//!
//! Publishing uses publisher confirms and persistent messages; consuming uses manual acks.
//! [`AgentChannel`] is what the controller needs, so its logic is tested with a recording fake.
//!
//! The events queue is a quorum queue with a delivery limit and a dead-letter queue
//! ([`attune_protocol::queues::events_queue_arguments`]): an event that cannot be applied is
//! redelivered at most [`EVENTS_DELIVERY_LIMIT`] times, then parked in the dead-letter queue, so
//! no message loops and one bad message never stalls the others. [`apply_deliveries`] tells the
//! apply function which attempt is the last, so the controller records why on the execution.

use async_trait::async_trait;
use attune_protocol::queues::{
    agent_job_queue, dead_letter_queue, events_queue_arguments, QueueArgument,
};
use attune_protocol::{AgentCommand, AgentEvent, ExecutionId, IncomingEvent};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use attune_protocol::queues::EVENTS_DELIVERY_LIMIT;

/// How long an agent's job queue lives unused (the agent declares it the same way).
pub use attune_protocol::queues::AGENT_QUEUE_EXPIRES_MS;

/// Errors talking to the broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("connect to message queue {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("{operation}: {source}")]
    Amqp {
        operation: String,
        #[source]
        source: lapin::Error,
    },
    #[error("{operation}: the broker did not confirm the message")]
    NotConfirmed { operation: String },
}

/// What the controller needs from the broker.
#[async_trait]
pub trait AgentChannel: Send + Sync + 'static {
    /// Declares an agent's job queue (so commands published before it starts wait for it).
    async fn declare_agent_queue(&self, agent_id: &str) -> Result<(), BrokerError>;
    /// Publishes a command to an agent's queue and waits for the broker's confirm.
    async fn send_command(&self, agent_id: &str, command: &AgentCommand)
        -> Result<(), BrokerError>;
    /// Deletes an agent's job queue once the agent is gone.
    async fn delete_agent_queue(&self, agent_id: &str) -> Result<(), BrokerError>;
    /// Whether the connection to the broker is up (for the controller's health checks).
    fn is_connected(&self) -> bool;
    /// What the events consumer did so far (for health details); zero when not known.
    fn event_counts(&self) -> EventCounts {
        EventCounts::default()
    }
}

/// A connection to RabbitMQ with a confirm-mode publishing channel.
pub struct Broker {
    connection: Connection,
    publish_channel: Channel,
    events_queue: String,
    events_mode: EventsQueueMode,
    counters: Arc<EventCounters>,
}

/// How the events queue bounds redelivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventsQueueMode {
    /// A quorum queue with [`EVENTS_DELIVERY_LIMIT`] and a dead-letter queue: the broker
    /// counts deliveries (`x-delivery-count`).
    Quorum,
    /// A queue an older server declared otherwise (usually classic) that still held messages
    /// when this one started: it cannot be converted without losing them, so an event that
    /// fails twice (first delivery and one redelivery) is rejected (dropped, or dead-lettered
    /// if that queue has a dead-letter exchange) after its reason is recorded. It is converted
    /// at a start that finds it empty.
    Legacy,
}

/// What the events consumer did, counted since the process started.
#[derive(Debug, Default)]
pub struct EventCounters {
    applied: AtomicU64,
    redelivered: AtomicU64,
    dead_lettered: AtomicU64,
    unknown: AtomicU64,
    malformed: AtomicU64,
    held: AtomicU64,
}

/// A snapshot of [`EventCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventCounts {
    /// Events applied and acked.
    pub applied: u64,
    /// Failed applications nacked for another delivery.
    pub redelivered: u64,
    /// Events sent to the dead-letter queue (delivery limit reached, or malformed).
    pub dead_lettered: u64,
    /// Events of a type this build does not know (a newer agent's): acked, not applied.
    pub unknown: u64,
    /// Messages that are not events (not JSON, or a known type that does not parse).
    pub malformed: u64,
    /// Times an event was held and tried again because the database was unreachable.
    pub held: u64,
}

impl EventCounters {
    fn bump(counter: &AtomicU64) -> u64 {
        counter.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The counts so far.
    pub fn snapshot(&self) -> EventCounts {
        EventCounts {
            applied: self.applied.load(Ordering::Relaxed),
            redelivered: self.redelivered.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            unknown: self.unknown.load(Ordering::Relaxed),
            malformed: self.malformed.load(Ordering::Relaxed),
            held: self.held.load(Ordering::Relaxed),
        }
    }
}

/// The events consumer with what [`apply_deliveries`] needs to bound redelivery.
pub struct EventConsumer {
    pub consumer: Consumer,
    pub mode: EventsQueueMode,
    pub counters: Arc<EventCounters>,
}

/// The AMQP encoding of the events queue's arguments (the agent encodes them the same way).
pub fn events_queue_field_table(events_queue: &str) -> FieldTable {
    let mut arguments = FieldTable::default();
    for (name, value) in events_queue_arguments(events_queue) {
        let value = match value {
            QueueArgument::Text(text) => AMQPValue::LongString(text.into()),
            QueueArgument::Integer(number) => AMQPValue::LongLongInt(number),
        };
        arguments.insert(name.into(), value);
    }
    arguments
}

/// Most events the dead-letter queue keeps (the oldest are dropped beyond it).
pub const DEAD_LETTER_MAX_MESSAGES: i64 = 10_000;
/// Most bytes the dead-letter queue keeps (a report can be 20 MiB; the oldest are dropped).
pub const DEAD_LETTER_MAX_BYTES: i64 = 512 * 1024 * 1024;

/// Arguments of the dead-letter queue: a durable classic queue bounded in messages and bytes,
/// so a flood of bad events cannot fill the broker's disk.
pub fn dead_letter_queue_arguments() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-max-length".into(),
        AMQPValue::LongLongInt(DEAD_LETTER_MAX_MESSAGES),
    );
    arguments.insert(
        "x-max-length-bytes".into(),
        AMQPValue::LongLongInt(DEAD_LETTER_MAX_BYTES),
    );
    arguments
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

/// Declares the events queue as a quorum queue with its dead-letter queue. An events queue an
/// older server declared otherwise (a classic queue, other limits) is replaced when it is
/// empty, and otherwise used as it is ([`EventsQueueMode::Legacy`]).
async fn declare_events_queues(
    connection: &Connection,
    events_queue: &str,
) -> Result<EventsQueueMode, BrokerError> {
    let channel = connection
        .create_channel()
        .await
        .map_err(amqp("open setup channel"))?;
    let dead_letters = dead_letter_queue(events_queue);
    let channel = match channel
        .queue_declare(
            dead_letters.as_str().into(),
            durable(),
            dead_letter_queue_arguments(),
        )
        .await
    {
        Ok(_) => channel,
        Err(refusal) => {
            // Declared earlier with other bounds: use it as it is.
            tracing::warn!(queue = %dead_letters, error = %refusal, "dead-letter queue exists with other arguments; using it as it is");
            connection
                .create_channel()
                .await
                .map_err(amqp("open setup channel"))?
        }
    };
    let arguments = events_queue_field_table(events_queue);
    let refusal = match channel
        .queue_declare(events_queue.into(), durable(), arguments.clone())
        .await
    {
        Ok(_) => {
            let _ = channel.close(200, "declared".into()).await;
            return Ok(EventsQueueMode::Quorum);
        }
        Err(refusal) => refusal,
    };
    // The refusal closed the channel: look at the queue that exists on a new one.
    let channel = connection
        .create_channel()
        .await
        .map_err(amqp("open setup channel"))?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let existing = channel
        .queue_declare(events_queue.into(), passive, FieldTable::default())
        .await
        .map_err(|_| BrokerError::Amqp {
            operation: format!("declare queue {events_queue}"),
            source: refusal,
        })?;
    if existing.message_count() == 0 {
        let if_empty = QueueDeleteOptions {
            if_empty: true,
            ..Default::default()
        };
        channel
            .queue_delete(events_queue.into(), if_empty)
            .await
            .map_err(amqp(format!("replace empty classic queue {events_queue}")))?;
        channel
            .queue_declare(events_queue.into(), durable(), arguments)
            .await
            .map_err(amqp(format!("declare queue {events_queue}")))?;
        tracing::info!(
            queue = events_queue,
            "empty events queue of an older server replaced by a quorum queue with a delivery limit"
        );
        let _ = channel.close(200, "declared".into()).await;
        return Ok(EventsQueueMode::Quorum);
    }
    tracing::warn!(
        queue = events_queue,
        messages = existing.message_count(),
        "the events queue was declared otherwise by an older server and holds messages; using \
         it as it is: an event that fails twice is rejected after its reason is recorded. It \
         becomes a quorum queue with a delivery limit at a start that finds it empty"
    );
    let _ = channel.close(200, "declared".into()).await;
    Ok(EventsQueueMode::Legacy)
}

fn amqp(operation: impl Into<String>) -> impl FnOnce(lapin::Error) -> BrokerError {
    let operation = operation.into();
    move |source| BrokerError::Amqp { operation, source }
}

fn agent_queue_arguments() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-expires".into(),
        AMQPValue::LongUInt(AGENT_QUEUE_EXPIRES_MS),
    );
    arguments
}

impl Broker {
    /// Connects, retrying for up to `patience` (the broker may still be starting).
    /// `events_queue` is the queue agents report to (normally `attune_protocol::queues::AGENT_EVENTS_QUEUE`).
    pub async fn connect(
        url: &str,
        events_queue: &str,
        patience: Duration,
    ) -> Result<Broker, BrokerError> {
        let deadline = tokio::time::Instant::now() + patience;
        let mut delay = Duration::from_millis(100);
        let connection = loop {
            match Connection::connect(url, ConnectionProperties::default()).await {
                Ok(connection) => break connection,
                Err(error) if tokio::time::Instant::now() + delay < deadline => {
                    tracing::warn!(%error, "message queue not reachable yet, retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(error) => {
                    return Err(BrokerError::Connect {
                        url: redact_url(url),
                        reason: error.to_string(),
                    })
                }
            }
        };
        let events_mode = declare_events_queues(&connection, events_queue).await?;
        let publish_channel = connection
            .create_channel()
            .await
            .map_err(amqp("open publish channel"))?;
        publish_channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(amqp("enable publisher confirms"))?;
        Ok(Broker {
            connection,
            publish_channel,
            events_queue: events_queue.to_string(),
            events_mode,
            counters: Arc::default(),
        })
    }

    /// Deletes this connection's events queue and its dead-letter queue: for a controller
    /// that is retired for good (a test server whose database is dropped), never at an ordinary
    /// stop — reports wait there for the controller's next start.
    pub async fn delete_events_queues(&self) -> Result<(), BrokerError> {
        for queue in [
            self.events_queue.clone(),
            attune_protocol::queues::dead_letter_queue(&self.events_queue),
        ] {
            self.publish_channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await
                .map_err(amqp(format!("delete queue {queue}")))?;
        }
        Ok(())
    }

    /// How the events queue bounds redelivery.
    pub fn events_mode(&self) -> EventsQueueMode {
        self.events_mode
    }

    /// What the events consumer did so far.
    pub fn event_counts(&self) -> EventCounts {
        self.counters.snapshot()
    }

    /// Whether the connection is up.
    pub fn is_connected(&self) -> bool {
        self.connection.status().connected()
    }

    /// Consumes the events queue with manual acks.
    pub async fn consume_events(&self, prefetch: u16) -> Result<EventConsumer, BrokerError> {
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(amqp("open events channel"))?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(amqp("set events prefetch"))?;
        let queue = self.events_queue.as_str();
        let (options, arguments) = match self.events_mode {
            EventsQueueMode::Quorum => (durable(), events_queue_field_table(queue)),
            EventsQueueMode::Legacy => (
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            ),
        };
        channel
            .queue_declare(queue.into(), options, arguments)
            .await
            .map_err(amqp(format!("declare queue {queue}")))?;
        let consumer = channel
            .basic_consume(
                queue.into(),
                "attune-server-events".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(amqp(format!("consume {queue}")))?;
        Ok(EventConsumer {
            consumer,
            mode: self.events_mode,
            counters: Arc::clone(&self.counters),
        })
    }

    /// Consumes the events queue until the consumer ends (see [`apply_deliveries`]).
    pub async fn consume_events_with<F, Fut, E>(
        &self,
        prefetch: u16,
        apply: F,
    ) -> Result<(), BrokerError>
    where
        F: Fn(EventDelivery) -> Fut,
        Fut: std::future::Future<Output = Result<(), E>>,
        E: ApplyError,
    {
        let consumer = self.consume_events(prefetch).await?;
        apply_deliveries(consumer, apply).await;
        Ok(())
    }

    /// Closes the connection.
    pub async fn close(&self) {
        if let Err(error) = self
            .connection
            .close(200, "server shutting down".into())
            .await
        {
            tracing::debug!(%error, "close message queue connection");
        }
    }
}

#[async_trait]
impl AgentChannel for Broker {
    fn is_connected(&self) -> bool {
        Broker::is_connected(self)
    }

    fn event_counts(&self) -> EventCounts {
        Broker::event_counts(self)
    }

    async fn declare_agent_queue(&self, agent_id: &str) -> Result<(), BrokerError> {
        let queue = agent_job_queue(agent_id);
        self.publish_channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                agent_queue_arguments(),
            )
            .await
            .map_err(amqp(format!("declare queue {queue}")))?;
        Ok(())
    }

    async fn send_command(
        &self,
        agent_id: &str,
        command: &AgentCommand,
    ) -> Result<(), BrokerError> {
        let queue = agent_job_queue(agent_id);
        let payload = serde_json::to_vec(command).expect("commands always serialize");
        let operation = format!("publish command to {queue}");
        let confirm = self
            .publish_channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                &payload,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into()),
            )
            .await
            .map_err(amqp(operation.clone()))?
            .await
            .map_err(amqp(operation.clone()))?;
        if confirm.is_nack() {
            return Err(BrokerError::NotConfirmed { operation });
        }
        Ok(())
    }

    async fn delete_agent_queue(&self, agent_id: &str) -> Result<(), BrokerError> {
        let queue = agent_job_queue(agent_id);
        self.publish_channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .map_err(amqp(format!("delete queue {queue}")))?;
        Ok(())
    }
}

/// An error of the function that applies events.
pub trait ApplyError: std::fmt::Display {
    /// True when the failure is not the event's fault (the database does not answer): the
    /// event is held and tried again in place, without counting against the delivery limit,
    /// until it applies or fails for a reason of its own.
    fn is_transient(&self) -> bool;
}

/// What [`apply_deliveries`] hands to the function that applies events.
#[derive(Debug, Clone, PartialEq)]
pub enum EventDelivery {
    /// Apply `event`. `attempt` counts deliveries from 1; when `last_attempt`, a failure now
    /// sends the event to the dead-letter queue, so the apply function records why on the
    /// execution before failing.
    Apply {
        event: AgentEvent,
        attempt: u32,
        last_attempt: bool,
    },
    /// A message of a known event type about `execution_id` that does not parse (e.g. a report
    /// with a field of the wrong type). It goes to the dead-letter queue whatever the apply
    /// function does; it should record why on the execution.
    Unreadable {
        event_type: String,
        execution_id: ExecutionId,
        error: String,
    },
}

impl From<AgentEvent> for EventDelivery {
    /// A first delivery.
    fn from(event: AgentEvent) -> Self {
        EventDelivery::Apply {
            event,
            attempt: 1,
            last_attempt: false,
        }
    }
}

/// Which delivery of an event this is (from 1), and whether it is the last one: a quorum
/// queue tells how often the message was returned (`x-delivery-count`); a legacy classic
/// queue only whether it was delivered before.
pub fn delivery_attempt(
    mode: EventsQueueMode,
    headers: Option<&FieldTable>,
    redelivered: bool,
) -> (u32, bool) {
    match mode {
        EventsQueueMode::Quorum => {
            let returned = headers
                .and_then(|headers| headers.inner().get("x-delivery-count"))
                .and_then(amqp_integer)
                .unwrap_or(0);
            let attempt = u32::try_from(returned.saturating_add(1)).unwrap_or(u32::MAX);
            (attempt, returned >= u64::from(EVENTS_DELIVERY_LIMIT))
        }
        EventsQueueMode::Legacy => (if redelivered { 2 } else { 1 }, redelivered),
    }
}

fn amqp_integer(value: &AMQPValue) -> Option<u64> {
    let number: i128 = match value {
        AMQPValue::ShortShortInt(number) => (*number).into(),
        AMQPValue::ShortShortUInt(number) => (*number).into(),
        AMQPValue::ShortInt(number) => (*number).into(),
        AMQPValue::ShortUInt(number) => (*number).into(),
        AMQPValue::LongInt(number) => (*number).into(),
        AMQPValue::LongUInt(number) => (*number).into(),
        AMQPValue::LongLongInt(number) => (*number).into(),
        AMQPValue::Timestamp(number) => (*number).into(),
        _ => return None,
    };
    u64::try_from(number).ok()
}

/// Longest pause between two tries of an event held while the database does not answer.
const HOLD_BACKOFF_LIMIT: Duration = Duration::from_secs(5);

/// Applies `delivery`, holding it and trying again while the failure is transient.
async fn apply_holding<F, Fut, E>(
    apply: &F,
    delivery: EventDelivery,
    counters: &EventCounters,
) -> Result<(), E>
where
    F: Fn(EventDelivery) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: ApplyError,
{
    let mut pause = Duration::from_millis(100);
    loop {
        match apply(delivery.clone()).await {
            Err(error) if error.is_transient() => {
                EventCounters::bump(&counters.held);
                tracing::warn!(%error, retry_in_ms = pause.as_millis() as u64, "agent event held: the database does not answer");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(HOLD_BACKOFF_LIMIT);
            }
            outcome => return outcome,
        }
    }
}

/// Drives the events consumer: decode, apply, then ack. An event `apply` fails on is nacked at
/// once for redelivery (no pause, so the others are not delayed); at its last attempt it is
/// rejected into the dead-letter queue (the quorum queue's delivery limit would do the same
/// at its next return). A transient failure holds the event and tries again. An event of a type
/// this build does not know is logged, counted and acked; a message that is not an event is
/// logged, counted and rejected into the dead-letter queue.
pub async fn apply_deliveries<F, Fut, E>(events: EventConsumer, apply: F)
where
    F: Fn(EventDelivery) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: ApplyError,
{
    let EventConsumer {
        mut consumer,
        mode,
        counters,
    } = events;
    while let Some(delivery) = consumer.next().await {
        let delivery = match delivery {
            Ok(delivery) => delivery,
            Err(error) => {
                tracing::error!(%error, "receive agent event");
                continue;
            }
        };
        let (attempt, last_attempt) = delivery_attempt(
            mode,
            delivery.properties.headers().as_ref(),
            delivery.redelivered,
        );
        let event = match AgentEvent::decode(&delivery.data) {
            IncomingEvent::Known(event) => event,
            IncomingEvent::Unknown {
                event_type,
                execution_id,
            } => {
                let count = EventCounters::bump(&counters.unknown);
                tracing::warn!(%event_type, ?execution_id, unknown_events = count, "agent event of a type this server does not know (a newer agent?): acked, not applied");
                if let Err(error) = delivery.ack(BasicAckOptions::default()).await {
                    tracing::error!(%error, "ack agent event");
                }
                continue;
            }
            IncomingEvent::Malformed {
                event_type,
                execution_id,
                error,
            } => {
                let count = EventCounters::bump(&counters.malformed);
                tracing::error!(?event_type, ?execution_id, %error, malformed_events = count, bytes = delivery.data.len(), "malformed agent event: sent to the dead-letter queue");
                if let (Some(event_type), Some(execution_id)) = (event_type, execution_id) {
                    let unreadable = EventDelivery::Unreadable {
                        event_type,
                        execution_id,
                        error,
                    };
                    if let Err(error) = apply_holding(&apply, unreadable, &counters).await {
                        tracing::error!(execution_id, %error, "record a malformed agent event on its execution");
                    }
                }
                EventCounters::bump(&counters.dead_lettered);
                if let Err(error) = delivery.reject(BasicRejectOptions { requeue: false }).await {
                    tracing::error!(%error, "reject malformed agent event");
                }
                continue;
            }
        };
        let event_type = event.event_type();
        let execution_id = event.execution_id();
        let applying = EventDelivery::Apply {
            event,
            attempt,
            last_attempt,
        };
        match apply_holding(&apply, applying, &counters).await {
            Ok(()) => {
                EventCounters::bump(&counters.applied);
                if let Err(error) = delivery.ack(BasicAckOptions::default()).await {
                    tracing::error!(%error, "ack agent event");
                }
            }
            Err(error) if last_attempt => {
                let count = EventCounters::bump(&counters.dead_lettered);
                tracing::error!(%error, event_type, ?execution_id, attempt, dead_lettered = count, "agent event could not be applied within the delivery limit: sent to the dead-letter queue");
                if let Err(error) = delivery.reject(BasicRejectOptions { requeue: false }).await {
                    tracing::error!(%error, "reject agent event");
                }
            }
            Err(error) => {
                EventCounters::bump(&counters.redelivered);
                tracing::warn!(%error, event_type, ?execution_id, attempt, "agent event not applied; it will be redelivered");
                let options = BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                };
                if let Err(error) = delivery.nack(options).await {
                    tracing::error!(%error, "nack agent event");
                }
            }
        }
    }
    tracing::warn!("agent events consumer ended");
}

/// The URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            let user = credentials.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivered(count: AMQPValue) -> FieldTable {
        let mut headers = FieldTable::default();
        headers.insert("x-delivery-count".into(), count);
        headers
    }

    #[test]
    fn the_last_attempt_is_the_one_the_delivery_limit_dead_letters_next() {
        let limit = EVENTS_DELIVERY_LIMIT;
        assert_eq!(
            delivery_attempt(EventsQueueMode::Quorum, None, false),
            (1, false)
        );
        let headers = delivered(AMQPValue::LongLongInt(i64::from(limit) - 1));
        assert_eq!(
            delivery_attempt(EventsQueueMode::Quorum, Some(&headers), true),
            (limit, false)
        );
        for count in [
            AMQPValue::LongLongInt(i64::from(limit)),
            AMQPValue::LongInt(limit as i32),
            AMQPValue::ShortUInt(limit as u16),
        ] {
            let headers = delivered(count);
            assert_eq!(
                delivery_attempt(EventsQueueMode::Quorum, Some(&headers), true),
                (limit + 1, true)
            );
        }
        assert_eq!(
            delivery_attempt(EventsQueueMode::Legacy, None, false),
            (1, false)
        );
        assert_eq!(
            delivery_attempt(EventsQueueMode::Legacy, None, true),
            (2, true)
        );
    }

    #[test]
    fn the_events_queue_is_a_quorum_queue_dead_lettering_to_its_own_dead_letter_queue() {
        let arguments = events_queue_field_table("attune.controller.c1.events");
        let arguments = arguments.inner();
        assert_eq!(
            arguments.get("x-queue-type"),
            Some(&AMQPValue::LongString("quorum".into()))
        );
        assert_eq!(
            arguments.get("x-delivery-limit"),
            Some(&AMQPValue::LongLongInt(i64::from(EVENTS_DELIVERY_LIMIT)))
        );
        assert_eq!(
            arguments.get("x-dead-letter-exchange"),
            Some(&AMQPValue::LongString("".into()))
        );
        assert_eq!(
            arguments.get("x-dead-letter-routing-key"),
            Some(&AMQPValue::LongString(
                "attune.controller.c1.events.dead".into()
            ))
        );
    }

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            redact_url("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact_url("amqp://127.0.0.1"), "amqp://127.0.0.1");
    }
}
