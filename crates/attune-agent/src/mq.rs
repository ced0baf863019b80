//! RabbitMQ wiring: connecting with retries (plain or TLS), the job queue's declaration, the
//! job consumer and the event publisher (the controller's events exchange, persistent JSON
//! messages, publisher confirms). The agent declares nothing but its own job queue: with its
//! own broker account it may not.

use attune_protocol::{queues, signing, AgentEvent};
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// An agent's job queue expires after 10 minutes without a consumer.
pub const JOB_QUEUE_EXPIRES_MILLISECONDS: u32 = queues::AGENT_QUEUE_EXPIRES_MS;
/// AMQP delivery mode of messages that survive a broker restart.
const PERSISTENT: u8 = 2;
/// How often publishing one event is tried before it is dropped.
const PUBLISH_ATTEMPTS: u32 = 5;
/// Longest wait for one connection attempt (see [`connect`]).
const CONNECT_ATTEMPT_LIMIT: Duration = Duration::from_secs(3);
/// Largest AMQP frame the agent asks for: the protocol's minimum. lapin keeps a receive and a
/// send buffer of 32 frames each, so RabbitMQ's default of 128 KiB would cost 8 MiB of resident
/// memory in every container; 8 KiB frames cost 512 KiB. Larger messages (a 10 MiB report)
/// simply travel as more frames. A `frame_max` in the broker URL wins.
pub const AGENT_FRAME_MAX: u32 = 8192;

/// A broker operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum MqError {
    #[error("connect to broker at {url}: {message} (gave up after {seconds}s)")]
    Connect {
        url: String,
        message: String,
        seconds: u64,
    },
    #[error("invalid broker url {url}: {message}")]
    InvalidUrl { url: String, message: String },
    #[error("{operation}: {source}")]
    Broker {
        operation: String,
        source: lapin::Error,
    },
}

fn broker_error(operation: impl Into<String>) -> impl FnOnce(lapin::Error) -> MqError {
    let operation = operation.into();
    move |source| MqError::Broker { operation, source }
}

/// The URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((credentials, host)) => {
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_string(),
    }
}

/// Parses the broker URL and asks for [`AGENT_FRAME_MAX`] unless it names a `frame_max`.
pub fn agent_uri(url: &str) -> Result<AMQPUri, MqError> {
    let mut uri: AMQPUri = url.parse().map_err(|message| MqError::InvalidUrl {
        url: redact_url(url),
        message,
    })?;
    if uri.query.frame_max.is_none() {
        uri.query.frame_max = Some(AGENT_FRAME_MAX);
    }
    Ok(uri)
}

/// Connects, retrying with backoff (100 ms doubling to 2 s) until `timeout` has passed. An
/// `amqps://` URL is checked against the bundled public roots and the CA certificates in
/// `ca_pem`.
pub async fn connect(
    url: &str,
    ca_pem: Option<&str>,
    agent_id: &str,
    timeout: Duration,
) -> Result<Connection, MqError> {
    let uri = agent_uri(url)?;
    let runtime = lapin::runtime::default_runtime().map_err(|error| MqError::Connect {
        url: redact_url(url),
        message: error.to_string(),
        seconds: 0,
    })?;
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(100);
    loop {
        // Reconnects like the controller does (100 ms doubling to 2 s), for as long as the
        // agent lives: a broker outage must not end a job whose report is still to be sent.
        let properties = ConnectionProperties::default()
            .with_connection_name(format!("attune-agent {agent_id}").into())
            .configure_backoff(|backoff| {
                backoff
                    .with_min_delay(Duration::from_millis(100))
                    .with_max_delay(Duration::from_secs(2))
                    .with_max_times(100_000)
            })
            .enable_auto_recover();
        let remaining = deadline.saturating_duration_since(Instant::now());
        let tls = lapin::tcp::OwnedTLSConfig {
            identity: None,
            cert_chain: ca_pem.map(str::to_string),
        };
        let connecting =
            Connection::connect_uri_with_config(uri.clone(), properties, tls, runtime.clone());
        // One attempt waits at most CONNECT_ATTEMPT_LIMIT: a broker that is still starting may
        // accept the connection and not answer the handshake, and the next attempt succeeds.
        let message =
            match tokio::time::timeout(remaining.min(CONNECT_ATTEMPT_LIMIT), connecting).await {
                Ok(Ok(connection)) => return Ok(connection),
                Ok(Err(error)) => error.to_string(),
                Err(_) => "timed out".to_string(),
            };
        if Instant::now() + delay >= deadline {
            return Err(MqError::Connect {
                url: redact_url(url),
                message,
                seconds: timeout.as_secs(),
            });
        }
        eprintln!(
            "attune-agent: connect to broker at {}: {message}; retrying in {} ms",
            redact_url(url),
            delay.as_millis()
        );
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// Declares `queue` durable with `arguments`. When the broker refuses because the queue already
/// exists with other arguments (declared by a newer or older server), the refusal closes the
/// channel: a new channel is opened, the queue is checked to exist, and that channel is returned.
pub async fn declare_queue(
    connection: &Connection,
    channel: Channel,
    queue: &str,
    arguments: FieldTable,
) -> Result<Channel, MqError> {
    let declared = channel
        .queue_declare(queue.into(), QueueDeclareOptions::durable(), arguments)
        .await;
    let refusal = match declared {
        Ok(_) => return Ok(channel),
        Err(error) => error,
    };
    let replacement = connection
        .create_channel()
        .await
        .map_err(broker_error("open channel"))?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    match replacement
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
    {
        Ok(_) => {
            eprintln!(
                "attune-agent: queue {queue} exists with other settings ({refusal}); using it as it is"
            );
            Ok(replacement)
        }
        Err(_) => Err(MqError::Broker {
            operation: format!("declare queue {queue}"),
            source: refusal,
        }),
    }
}

/// Arguments of an agent's job queue; whoever declares it first must use the same ones.
pub fn job_queue_arguments() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-expires".into(),
        AMQPValue::LongUInt(JOB_QUEUE_EXPIRES_MILLISECONDS),
    );
    arguments
}

/// Declares the agent's own durable job queue, expiring when unused (see [`declare_queue`]).
pub async fn declare_job_queue(
    connection: &Connection,
    channel: Channel,
    agent_id: &str,
) -> Result<(Channel, String), MqError> {
    let queue = queues::agent_job_queue(agent_id);
    let channel = declare_queue(connection, channel, &queue, job_queue_arguments()).await?;
    Ok((channel, queue))
}

/// Consumes `queue` with manual acks and `prefetch` unacked deliveries at most.
pub async fn consume(
    channel: &Channel,
    queue: &str,
    consumer_tag: &str,
    prefetch: u16,
) -> Result<Consumer, MqError> {
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(broker_error(format!("set prefetch {prefetch}")))?;
    channel
        .basic_consume(
            queue.into(),
            consumer_tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(broker_error(format!("consume queue {queue}")))
}

/// Publishes events in order from a channel until every sender is dropped.
#[derive(Debug)]
pub struct Publisher {
    task: JoinHandle<()>,
}

impl Publisher {
    /// Enables confirms on `channel` and starts publishing what arrives on the returned sender.
    /// With `event_key`, every event carries its signature ([`signing::SIGNATURE_HEADER`]).
    pub async fn start(
        channel: Channel,
        queue: String,
        event_key: Option<signing::Key>,
    ) -> Result<(crate::EventSender, Publisher), MqError> {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(broker_error("enable publisher confirms"))?;
        let (sender, receiver) = mpsc::unbounded_channel();
        let task = tokio::spawn(publish_events(channel, queue, event_key, receiver));
        Ok((sender, Publisher { task }))
    }

    /// Waits until every event sent before the senders were dropped has been confirmed.
    pub async fn finish(self) {
        let _ = self.task.await;
    }
}

async fn publish_events(
    channel: Channel,
    queue: String,
    event_key: Option<signing::Key>,
    mut receiver: mpsc::UnboundedReceiver<AgentEvent>,
) {
    while let Some(event) = receiver.recv().await {
        let payload = match serde_json::to_vec(&event) {
            Ok(payload) => payload,
            Err(error) => {
                eprintln!("attune-agent: encode event: {error}");
                continue;
            }
        };
        let signature = event_key.map(|key| signing::sign(&key, &payload));
        if let Err(error) = publish_signed(&channel, &queue, &payload, signature.as_deref()).await {
            eprintln!(
                "attune-agent: publish {} event to {queue}: {error}; dropped",
                event.event_type()
            );
        }
    }
}

/// Publishes one event to the events exchange of `queue` ([`queues::events_exchange`]) and
/// waits for the broker's confirm, retrying after recovery; with `signature`, the event carries
/// it in [`signing::SIGNATURE_HEADER`].
pub async fn publish_signed(
    channel: &Channel,
    queue: &str,
    payload: &[u8],
    signature: Option<&str>,
) -> Result<(), String> {
    let mut last_error = String::new();
    for attempt in 1..=PUBLISH_ATTEMPTS {
        let mut properties = BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_content_type("application/json".into());
        if let Some(signature) = signature {
            let mut headers = FieldTable::default();
            headers.insert(
                signing::SIGNATURE_HEADER.into(),
                AMQPValue::LongString(signature.into()),
            );
            properties = properties.with_headers(headers);
        }
        let published = channel
            .basic_publish(
                queues::events_exchange(queue).as_str().into(),
                queue.into(),
                BasicPublishOptions::default(),
                payload,
                properties,
            )
            .await;
        let error = match published {
            Ok(confirm) => match confirm.await {
                Ok(confirmation) if confirmation.is_ack() => return Ok(()),
                Ok(_) => {
                    last_error = "broker refused the message (nack)".to_string();
                    None
                }
                Err(error) => Some(error),
            },
            Err(error) => Some(error),
        };
        if let Some(error) = error {
            last_error = error.to_string();
            if attempt < PUBLISH_ATTEMPTS && channel.wait_for_recovery(error).await.is_err() {
                break;
            }
        } else {
            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
        }
    }
    Err(last_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_password_in_messages() {
        assert_eq!(
            redact_url("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact_url("amqp://127.0.0.1:5672"), "amqp://127.0.0.1:5672");
    }

    #[test]
    fn the_agent_asks_for_small_frames_unless_the_url_says_otherwise() {
        let uri = agent_uri("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(uri.query.frame_max, Some(AGENT_FRAME_MAX));
        assert_eq!(uri.authority.port, 5672);
        let uri = agent_uri("amqp://127.0.0.1:5672/%2f?frame_max=131072").unwrap();
        assert_eq!(uri.query.frame_max, Some(131_072));
        let error = agent_uri("http://guest:secret@host/").unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("invalid broker url http://guest:***@host/: "),
            "{error}"
        );
    }

    #[test]
    fn job_queue_expires_after_ten_minutes() {
        let arguments = job_queue_arguments();
        assert_eq!(
            arguments.inner().get("x-expires"),
            Some(&AMQPValue::LongUInt(600_000))
        );
    }
}
