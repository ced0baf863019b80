//! `attune-broker`: the controller's side of RabbitMQ (commands to agents' own queues, events
//! from the controller's events queue); the only crate besides the agent that depends on lapin.
//!
//! Publishing uses publisher confirms and persistent messages; consuming uses manual acks.
//! [`AgentChannel`] is what the controller needs, so its logic is tested with a recording fake.

use async_trait::async_trait;
use attune_protocol::queues::agent_job_queue;
use attune_protocol::{AgentCommand, AgentEvent};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use std::time::Duration;

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
}

/// A connection to RabbitMQ with a confirm-mode publishing channel.
pub struct Broker {
    connection: Connection,
    publish_channel: Channel,
    events_queue: String,
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
        let publish_channel = connection
            .create_channel()
            .await
            .map_err(amqp("open publish channel"))?;
        publish_channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(amqp("enable publisher confirms"))?;
        publish_channel
            .queue_declare(
                events_queue.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(amqp(format!("declare queue {events_queue}")))?;
        Ok(Broker {
            connection,
            publish_channel,
            events_queue: events_queue.to_string(),
        })
    }

    /// Whether the connection is up.
    pub fn is_connected(&self) -> bool {
        self.connection.status().connected()
    }

    /// Consumes the shared events queue with manual acks.
    pub async fn consume_events(&self, prefetch: u16) -> Result<Consumer, BrokerError> {
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
        channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(amqp(format!("declare queue {queue}")))?;
        channel
            .basic_consume(
                queue.into(),
                "attune-server-events".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(amqp(format!("consume {queue}")))
    }

    /// Consumes the events queue until the consumer ends, handing each decoded event to
    /// `apply` and acking it only after `apply` succeeded; an event `apply` fails on is nacked
    /// (after a short pause) so the broker redelivers it. A message that is not an event is
    /// logged and dropped.
    pub async fn consume_events_with<F, Fut, E>(
        &self,
        prefetch: u16,
        apply: F,
    ) -> Result<(), BrokerError>
    where
        F: Fn(AgentEvent) -> Fut,
        Fut: std::future::Future<Output = Result<(), E>>,
        E: std::fmt::Display,
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

/// Drives a consumer of agent events: decode, apply, then ack (or nack to retry).
pub async fn apply_deliveries<F, Fut, E>(mut consumer: Consumer, apply: F)
where
    F: Fn(AgentEvent) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    while let Some(delivery) = consumer.next().await {
        let delivery = match delivery {
            Ok(delivery) => delivery,
            Err(error) => {
                tracing::error!(%error, "receive agent event");
                continue;
            }
        };
        let event: AgentEvent = match serde_json::from_slice(&delivery.data) {
            Ok(event) => event,
            Err(error) => {
                tracing::error!(%error, "drop malformed agent event");
                if let Err(error) = delivery.ack(BasicAckOptions::default()).await {
                    tracing::error!(%error, "ack malformed agent event");
                }
                continue;
            }
        };
        match apply(event).await {
            Ok(()) => {
                if let Err(error) = delivery.ack(BasicAckOptions::default()).await {
                    tracing::error!(%error, "ack agent event");
                }
            }
            Err(error) => {
                tracing::error!(%error, "store agent event; it will be redelivered");
                tokio::time::sleep(Duration::from_millis(500)).await;
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
    use super::redact_url;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            redact_url("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact_url("amqp://127.0.0.1"), "amqp://127.0.0.1");
    }
}
