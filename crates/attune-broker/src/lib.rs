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
//!
//! The connection survives the broker: a [`Broker`] keeps one session (connection, confirm-mode
//! publishing channel, declared events queues) and opens a new one, with bounded exponential
//! backoff, whenever the old one is lost. Commands wait for the new session up to the
//! publish patience and are sent again if their confirm was lost with the connection (agents
//! ignore a job they already run or ran); [`Broker::run_events`] consumes again on every new
//! session, and events whose ack was lost with the old one are simply delivered again
//! (applying an event twice is harmless). [`Broker::is_connected`] is false meanwhile, which
//! the controller's heartbeat turns into "not ready".

pub mod accounts;

use async_trait::async_trait;
use attune_protocol::queues::{
    agent_job_queue, dead_letter_queue, events_queue_arguments, QueueArgument,
};
use attune_protocol::{AgentCommand, AgentEvent, ExecutionId, IncomingEvent};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    #[error("the message queue connection is closed (the server is stopping)")]
    Closed,
    #[error("{operation}: {reason}")]
    Management { operation: String, reason: String },
}

/// What the controller needs from the broker.
#[async_trait]
pub trait AgentChannel: Send + Sync + 'static {
    /// Declares an agent's job queue (so commands published before it starts wait for it).
    async fn declare_agent_queue(&self, agent_id: &str) -> Result<(), BrokerError>;
    /// Publishes a command to an agent's queue and waits for the broker's confirm.
    async fn send_command(&self, agent_id: &str, command: &AgentCommand)
        -> Result<(), BrokerError>;
    /// The AMQP URL (with credentials) an agent about to start connects with: with per-agent
    /// accounts, a new account of its own ([`accounts`]); otherwise the agents' shared URL.
    async fn agent_url(&self, agent_id: &str) -> Result<String, BrokerError>;
    /// Deletes an agent's job queue and its broker account once the agent is gone.
    async fn forget_agent(&self, agent_id: &str) -> Result<(), BrokerError>;
    /// Deletes this controller's broker accounts whose agent is not in `in_use` and was not
    /// made by this process (see [`accounts::AgentAccounts::sweep`]); returns how many.
    async fn sweep_agent_accounts(
        &self,
        _in_use: &std::collections::HashSet<String>,
    ) -> Result<usize, BrokerError> {
        Ok(0)
    }
    /// Whether the connection to the broker is up (for the controller's health checks).
    fn is_connected(&self) -> bool;
    /// What the events consumer did so far (for health details); zero when not known.
    fn event_counts(&self) -> EventCounts {
        EventCounts::default()
    }
}

/// A connection to RabbitMQ that is opened again whenever it is lost (see the module docs).
pub struct Broker {
    url: String,
    events_queue: String,
    /// The current session; `None` before the first and after [`Broker::close`]. Locked while
    /// a new session is being opened, so one reconnection serves every waiting caller.
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
    /// Whether the current session is up, readable without waiting for a reconnection.
    connected: AtomicBool,
    /// Sessions opened so far (1 after [`Broker::connect`]).
    sessions: AtomicU64,
    events_mode: std::sync::Mutex<EventsQueueMode>,
    counters: Arc<EventCounters>,
    /// How long a command waits for the broker to come back before it fails.
    publish_patience: Duration,
    closed: AtomicBool,
    closing: tokio::sync::Notify,
    keys: Option<EventKeys>,
    access: AgentAccess,
    /// CA certificates (PEM) trusted for `amqps://`, besides the bundled public roots.
    tls_ca: Option<String>,
}

/// How agents log in to the broker.
pub enum AgentAccess {
    /// Every agent uses this URL (one shared account): only for brokers without the
    /// management plugin, and said so at start.
    Shared(String),
    /// Each agent gets an account of its own.
    PerAgent(Box<accounts::AgentAccounts>),
}

/// One connection with its confirm-mode publishing channel.
struct Session {
    connection: Connection,
    publish_channel: tokio::sync::Mutex<Channel>,
    /// Set when an operation saw the connection fail (lapin may notice a moment later).
    lost: AtomicBool,
}

impl Session {
    fn is_alive(&self) -> bool {
        !self.lost.load(Ordering::SeqCst) && self.connection.status().connected()
    }

    /// The publishing channel, opened again if a channel error closed it.
    async fn publish_channel(&self) -> Result<Channel, BrokerError> {
        let mut channel = self.publish_channel.lock().await;
        if !channel.status().connected() {
            *channel = open_confirm_channel(&self.connection).await?;
        }
        Ok(channel.clone())
    }
}

async fn open_confirm_channel(connection: &Connection) -> Result<Channel, BrokerError> {
    let channel = connection
        .create_channel()
        .await
        .map_err(amqp("open publish channel"))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(amqp("enable publisher confirms"))?;
    Ok(channel)
}

/// Whether an error means the connection is gone (rather than one channel refusing one
/// operation, e.g. a queue declared with other arguments).
fn connection_lost(error: &lapin::Error) -> bool {
    !error.is_amqp_soft_error()
}

/// First pause between two connection attempts.
const RECONNECT_FIRST_DELAY: Duration = Duration::from_millis(100);
/// Longest pause between two connection attempts.
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(2);
/// How long a command waits for a lost broker by default ([`Broker::with_publish_patience`]).
pub const DEFAULT_PUBLISH_PATIENCE: Duration = Duration::from_secs(60);

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
    unauthenticated: AtomicU64,
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
    /// Events dropped because their signature is missing or not their agent's.
    pub unauthenticated: u64,
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
            unauthenticated: self.unauthenticated.load(Ordering::Relaxed),
        }
    }
}

/// The events consumer with what [`apply_deliveries`] needs to bound redelivery.
pub struct EventConsumer {
    pub consumer: Consumer,
    pub mode: EventsQueueMode,
    pub counters: Arc<EventCounters>,
    /// When set, only events signed with their agent's key are applied
    /// ([`attune_protocol::signing`]).
    pub keys: Option<EventKeys>,
}

/// The event key of an agent, by its id.
pub type EventKeys = Arc<dyn Fn(&str) -> attune_protocol::signing::Key + Send + Sync>;

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

/// Declares the events queue ([`declare_events_queue`]) and the events exchange agents publish
/// to ([`attune_protocol::queues::events_exchange`]): a durable fanout exchange bound to the
/// events queue alone.
async fn declare_events_queues(
    connection: &Connection,
    events_queue: &str,
) -> Result<EventsQueueMode, BrokerError> {
    let mode = declare_events_queue(connection, events_queue).await?;
    let channel = connection
        .create_channel()
        .await
        .map_err(amqp("open setup channel"))?;
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
        .map_err(amqp(format!("declare exchange {exchange}")))?;
    channel
        .queue_bind(
            events_queue.into(),
            exchange.as_str().into(),
            events_queue.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(amqp(format!(
            "bind queue {events_queue} to exchange {exchange}"
        )))?;
    let _ = channel.close(200, "declared".into()).await;
    Ok(mode)
}

/// Declares the events queue as a quorum queue with its dead-letter queue. An events queue an
/// older server declared otherwise (a classic queue, other limits) is replaced when it is
/// empty, and otherwise used as it is ([`EventsQueueMode::Legacy`]).
async fn declare_events_queue(
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
        Broker::connect_with_ca(url, events_queue, patience, None).await
    }

    /// [`Broker::connect`] trusting the CA certificates in `ca_pem` (PEM) for an `amqps://`
    /// URL, besides the bundled public roots.
    pub async fn connect_with_ca(
        url: &str,
        events_queue: &str,
        patience: Duration,
        ca_pem: Option<String>,
    ) -> Result<Broker, BrokerError> {
        let broker = Broker {
            tls_ca: ca_pem,
            url: url.to_string(),
            events_queue: events_queue.to_string(),
            session: tokio::sync::Mutex::new(None),
            connected: AtomicBool::new(false),
            sessions: AtomicU64::new(0),
            events_mode: std::sync::Mutex::new(EventsQueueMode::Quorum),
            counters: Arc::default(),
            publish_patience: DEFAULT_PUBLISH_PATIENCE,
            closed: AtomicBool::new(false),
            closing: tokio::sync::Notify::new(),
            keys: None,
            access: AgentAccess::Shared(url.to_string()),
        };
        broker
            .session_within(tokio::time::Instant::now() + patience)
            .await?;
        Ok(broker)
    }

    /// How long a command waits for a lost broker to come back before it fails.
    pub fn with_publish_patience(mut self, patience: Duration) -> Broker {
        self.publish_patience = patience;
        self
    }

    /// How agents log in (the default: the server's own URL, shared).
    pub fn with_agent_access(mut self, access: AgentAccess) -> Broker {
        self.access = access;
        self
    }

    /// Applies only events signed with the key `keys` gives for the agent each names; the
    /// rest are dropped and counted ([`EventCounts::unauthenticated`]).
    pub fn with_event_keys(mut self, keys: EventKeys) -> Broker {
        self.keys = Some(keys);
        self
    }

    /// The current session, or a new one (after a lost connection) opened with backoff until
    /// `deadline`.
    async fn session_within(
        &self,
        deadline: tokio::time::Instant,
    ) -> Result<Arc<Session>, BrokerError> {
        let mut current = self.session.lock().await;
        if let Some(session) = current.as_ref().filter(|session| session.is_alive()) {
            return Ok(Arc::clone(session));
        }
        if self.closed.load(Ordering::SeqCst) {
            return Err(BrokerError::Closed);
        }
        if current.take().is_some() {
            self.connected.store(false, Ordering::SeqCst);
            tracing::warn!(url = %redact_url(&self.url), "message queue connection lost; reconnecting");
        }
        let mut delay = RECONNECT_FIRST_DELAY;
        let session = loop {
            let error = match self.open_session().await {
                Ok(session) => break session,
                Err(error) => error,
            };
            if self.closed.load(Ordering::SeqCst) {
                return Err(BrokerError::Closed);
            }
            if tokio::time::Instant::now() + delay >= deadline {
                return Err(error);
            }
            tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "message queue not reachable, retrying");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.closing.notified() => return Err(BrokerError::Closed),
            }
            delay = (delay * 2).min(RECONNECT_MAX_DELAY);
        };
        let session = Arc::new(session);
        let number = self.sessions.fetch_add(1, Ordering::SeqCst) + 1;
        if number > 1 {
            tracing::info!(sessions = number, "message queue connection opened again");
        }
        *current = Some(Arc::clone(&session));
        self.connected.store(true, Ordering::SeqCst);
        Ok(session)
    }

    /// Opens a connection, declares the events queues on it and opens the publishing channel.
    async fn open_session(&self) -> Result<Session, BrokerError> {
        // Named after its events queue, so an operator (or a test) can tell it apart.
        let properties = ConnectionProperties::default()
            .with_connection_name(format!("attune-controller {}", self.events_queue).into());
        let tls = lapin::tcp::OwnedTLSConfig {
            identity: None,
            cert_chain: self.tls_ca.clone(),
        };
        let runtime = lapin::runtime::default_runtime().map_err(|error| BrokerError::Connect {
            url: redact_url(&self.url),
            reason: error.to_string(),
        })?;
        let connection = Connection::connect_with_config(&self.url, properties, tls, runtime)
            .await
            .map_err(|error| BrokerError::Connect {
                url: redact_url(&self.url),
                reason: error.to_string(),
            })?;
        let events_mode = declare_events_queues(&connection, &self.events_queue).await?;
        *self.events_mode.lock().expect("events mode lock") = events_mode;
        let publish_channel = open_confirm_channel(&connection).await?;
        Ok(Session {
            connection,
            publish_channel: tokio::sync::Mutex::new(publish_channel),
            lost: AtomicBool::new(false),
        })
    }

    /// Runs `operation` on the publishing channel, on a new session if the connection is lost
    /// (before or during it), until [`Broker::with_publish_patience`] has passed. A refusal of
    /// the operation itself (a channel error) is returned at once.
    async fn on_publish_channel<T, F, Fut>(
        &self,
        description: &str,
        operation: F,
    ) -> Result<T, BrokerError>
    where
        F: Fn(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<T, BrokerError>>,
    {
        let deadline = tokio::time::Instant::now() + self.publish_patience;
        loop {
            let session = self.session_within(deadline).await?;
            let outcome = match session.publish_channel().await {
                Ok(channel) => operation(channel).await,
                Err(error) => Err(error),
            };
            let lost = match &outcome {
                Ok(_) => return outcome,
                Err(BrokerError::Amqp { source, .. }) => connection_lost(source),
                Err(BrokerError::NotConfirmed { .. }) => false,
                Err(_) => true,
            };
            if !lost && session.is_alive() {
                return outcome;
            }
            session.lost.store(true, Ordering::SeqCst);
            self.connected.store(false, Ordering::SeqCst);
            if tokio::time::Instant::now() >= deadline {
                return outcome;
            }
            if let Err(error) = &outcome {
                tracing::warn!(%error, operation = description, "message queue connection lost; trying again on a new one");
            }
        }
    }

    /// Deletes this connection's events queue, its exchange and its dead-letter queue: for a
    /// controller that is retired for good (a test server whose database is dropped), never at
    /// an ordinary stop — reports wait there for the controller's next start.
    pub async fn delete_events_queues(&self) -> Result<(), BrokerError> {
        let exchange = attune_protocol::queues::events_exchange(&self.events_queue);
        self.on_publish_channel("delete exchange", |channel| {
            let exchange = exchange.clone();
            async move {
                channel
                    .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                    .await
                    .map_err(amqp(format!("delete exchange {exchange}")))
            }
        })
        .await?;
        for queue in [
            self.events_queue.clone(),
            attune_protocol::queues::dead_letter_queue(&self.events_queue),
        ] {
            self.on_publish_channel("delete queue", |channel| {
                let queue = queue.clone();
                async move {
                    channel
                        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                        .await
                        .map_err(amqp(format!("delete queue {queue}")))
                }
            })
            .await?;
        }
        Ok(())
    }

    /// How the events queue bounds redelivery.
    pub fn events_mode(&self) -> EventsQueueMode {
        *self.events_mode.lock().expect("events mode lock")
    }

    /// What the events consumer did so far.
    pub fn event_counts(&self) -> EventCounts {
        self.counters.snapshot()
    }

    /// Whether the connection is up (false while it is being opened again).
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
            && self
                .session
                .try_lock()
                .map(|session| session.as_ref().is_some_and(|session| session.is_alive()))
                .unwrap_or(false)
    }

    /// How many connections were opened so far (more than one after a reconnection).
    pub fn sessions(&self) -> u64 {
        self.sessions.load(Ordering::SeqCst)
    }

    /// Consumes the events queue with manual acks on the current session (opening a new one
    /// first if it is lost, within the publish patience). The consumer ends with its
    /// connection; [`Broker::run_events`] consumes again on the next one.
    pub async fn consume_events(&self, prefetch: u16) -> Result<EventConsumer, BrokerError> {
        let session = self
            .session_within(tokio::time::Instant::now() + self.publish_patience)
            .await?;
        self.consume_on(&session, prefetch).await
    }

    async fn consume_on(
        &self,
        session: &Session,
        prefetch: u16,
    ) -> Result<EventConsumer, BrokerError> {
        let events_mode = self.events_mode();
        let channel = session
            .connection
            .create_channel()
            .await
            .map_err(amqp("open events channel"))?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(amqp("set events prefetch"))?;
        let queue = self.events_queue.as_str();
        let (options, arguments) = match events_mode {
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
            mode: events_mode,
            counters: Arc::clone(&self.counters),
            keys: self.keys.clone(),
        })
    }

    /// Consumes the events queue until [`Broker::close`], applying each event (see
    /// [`apply_deliveries`]); when the connection is lost it waits for a new one and consumes
    /// again. Events left unacked on the lost connection are delivered again.
    pub async fn run_events<F, Fut, E>(&self, prefetch: u16, apply: F)
    where
        F: Fn(EventDelivery) -> Fut,
        Fut: std::future::Future<Output = Result<(), E>>,
        E: ApplyError,
    {
        let mut pause = RECONNECT_FIRST_DELAY;
        while !self.closed.load(Ordering::SeqCst) {
            let forever = tokio::time::Instant::now() + Duration::from_secs(365 * 24 * 3600);
            let session = match self.session_within(forever).await {
                Ok(session) => session,
                Err(BrokerError::Closed) => break,
                Err(error) => {
                    tracing::error!(%error, "open message queue session for agent events");
                    continue;
                }
            };
            match self.consume_on(&session, prefetch).await {
                Ok(consumer) => {
                    tracing::info!(queue = %self.events_queue, "consuming agent events");
                    pause = RECONNECT_FIRST_DELAY;
                    apply_deliveries_with(consumer, &apply).await;
                }
                Err(error) => tracing::error!(%error, "consume agent events"),
            }
            if self.closed.load(Ordering::SeqCst) {
                break;
            }
            if !session.is_alive() {
                self.connected.store(false, Ordering::SeqCst);
                continue;
            }
            // The connection is up but the consumer ended (its channel was closed, or the queue
            // deleted): consume again after a pause, declaring the queue anew.
            tracing::warn!(
                retry_in_ms = pause.as_millis() as u64,
                "agent events consumer ended while connected; consuming again"
            );
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.closing.notified() => break,
            }
            pause = (pause * 2).min(RECONNECT_MAX_DELAY);
        }
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

    /// Closes the connection for good: [`Broker::run_events`] returns and commands fail.
    pub async fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.closing.notify_waiters();
        let session = self.session.lock().await.take();
        self.connected.store(false, Ordering::SeqCst);
        if let Some(session) = session {
            if let Err(error) = session
                .connection
                .close(200, "server shutting down".into())
                .await
            {
                tracing::debug!(%error, "close message queue connection");
            }
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
        self.on_publish_channel("declare agent queue", |channel| {
            let queue = queue.clone();
            async move {
                channel
                    .queue_declare(queue.as_str().into(), durable(), agent_queue_arguments())
                    .await
                    .map_err(amqp(format!("declare queue {queue}")))?;
                Ok(())
            }
        })
        .await
    }

    async fn send_command(
        &self,
        agent_id: &str,
        command: &AgentCommand,
    ) -> Result<(), BrokerError> {
        let queue = agent_job_queue(agent_id);
        let payload = serde_json::to_vec(command).expect("commands always serialize");
        self.on_publish_channel("publish command", |channel| {
            let queue = queue.clone();
            let payload = &payload;
            async move {
                let operation = format!("publish command to {queue}");
                let confirm = channel
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        payload,
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
        })
        .await
    }

    async fn agent_url(&self, agent_id: &str) -> Result<String, BrokerError> {
        match &self.access {
            AgentAccess::Shared(url) => Ok(url.clone()),
            AgentAccess::PerAgent(accounts) => accounts.issue(agent_id).await,
        }
    }

    async fn forget_agent(&self, agent_id: &str) -> Result<(), BrokerError> {
        let queue = agent_job_queue(agent_id);
        let deleted = self
            .on_publish_channel("delete agent queue", |channel| {
                let queue = queue.clone();
                async move {
                    channel
                        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                        .await
                        .map_err(amqp(format!("delete queue {queue}")))?;
                    Ok(())
                }
            })
            .await;
        if let AgentAccess::PerAgent(accounts) = &self.access {
            accounts.revoke(agent_id).await?;
        }
        deleted
    }

    async fn sweep_agent_accounts(
        &self,
        in_use: &std::collections::HashSet<String>,
    ) -> Result<usize, BrokerError> {
        match &self.access {
            AgentAccess::Shared(_) => Ok(0),
            AgentAccess::PerAgent(accounts) => accounts.sweep(in_use).await,
        }
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
const HOLD_BACKOFF_LIMIT: Duration = Duration::from_secs(1);

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
    apply_deliveries_with(events, &apply).await
}

/// [`apply_deliveries`] with a borrowed apply function (used again on every new consumer).
async fn apply_deliveries_with<F, Fut, E>(events: EventConsumer, apply: &F)
where
    F: Fn(EventDelivery) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: ApplyError,
{
    let EventConsumer {
        mut consumer,
        mode,
        counters,
        keys,
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
        if let Some(keys) = &keys {
            if let Err(claimed) = authenticate(keys, &delivery) {
                let count = EventCounters::bump(&counters.unauthenticated);
                tracing::warn!(agent_id = ?claimed, bytes = delivery.data.len(), unauthenticated_events = count, "agent event without its agent's signature: dropped");
                if let Err(error) = delivery.ack(BasicAckOptions::default()).await {
                    tracing::error!(%error, "ack agent event");
                }
                continue;
            }
        }
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
                    if let Err(error) = apply_holding(apply, unreadable, &counters).await {
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
        match apply_holding(apply, applying, &counters).await {
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

/// Checks a delivery's signature against the key of the agent its body names; the claimed
/// agent (if any) when it does not hold.
fn authenticate(
    keys: &EventKeys,
    delivery: &lapin::message::Delivery,
) -> Result<(), Option<String>> {
    let claimed = AgentEvent::claimed_agent_id(&delivery.data);
    let signature = delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|headers| {
            headers
                .inner()
                .get(attune_protocol::signing::SIGNATURE_HEADER)
        })
        .and_then(|value| match value {
            AMQPValue::LongString(text) => Some(text.to_string()),
            AMQPValue::ShortString(text) => Some(text.to_string()),
            _ => None,
        });
    match (&claimed, signature) {
        (Some(agent_id), Some(signature))
            if attune_protocol::signing::verify(&keys(agent_id), &delivery.data, &signature) =>
        {
            Ok(())
        }
        _ => Err(claimed),
    }
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
