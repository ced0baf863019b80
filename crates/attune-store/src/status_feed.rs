//! A feed of execution status changes and cancel requests from Postgres (`LISTEN
//! attune_execution_status` and `attune_execution_cancel`, fed by triggers), so API requests
//! wait for an execution to end without polling, schedulers wake when work is requested, and
//! the owning controller hears of a cancel — whichever server stored the change.

use crate::Store;
use attune_protocol::api::ExecutionStatus;
use std::time::Duration;
use tokio::sync::broadcast;

/// The Postgres channel the status trigger notifies.
pub const STATUS_CHANNEL: &str = "attune_execution_status";
/// The Postgres channel the cancel trigger notifies (payload: the execution id).
pub const CANCEL_CHANNEL: &str = "attune_execution_cancel";

/// One status change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusChange {
    pub execution_id: i64,
    pub status: ExecutionStatus,
}

/// Parses a notification payload `"<id>:<status>"`.
pub fn parse_payload(payload: &str) -> Option<StatusChange> {
    let (id, status) = payload.split_once(':')?;
    Some(StatusChange {
        execution_id: id.parse().ok()?,
        status: status.parse().ok()?,
    })
}

/// Subscribable status changes.
#[derive(Clone)]
pub struct StatusFeed {
    sender: broadcast::Sender<StatusChange>,
    cancels: broadcast::Sender<i64>,
    /// Bumped each time the feed (re)connects, so listeners can catch up on what they missed.
    connected: tokio::sync::watch::Sender<u64>,
}

impl Default for StatusFeed {
    fn default() -> Self {
        let (sender, _) = broadcast::channel(4096);
        let (cancels, _) = broadcast::channel(1024);
        let (connected, _) = tokio::sync::watch::channel(0);
        StatusFeed {
            sender,
            cancels,
            connected,
        }
    }
}

impl StatusFeed {
    pub fn subscribe(&self) -> broadcast::Receiver<StatusChange> {
        self.sender.subscribe()
    }

    /// Ids of executions whose cancel was just requested.
    pub fn subscribe_cancels(&self) -> broadcast::Receiver<i64> {
        self.cancels.subscribe()
    }

    /// Changes each time the feed connects (a gap in notifications may precede it).
    pub fn connections(&self) -> tokio::sync::watch::Receiver<u64> {
        self.connected.subscribe()
    }

    /// Listens on Postgres and forwards changes until the task is dropped; reconnects after
    /// the connection drops (a waiter missing a change in between still ends by its timeout and
    /// re-reads the database).
    pub async fn run(self, store: Store) {
        loop {
            match sqlx::postgres::PgListener::connect_with(store.pool()).await {
                Ok(mut listener) => {
                    if let Err(error) = listener.listen_all([STATUS_CHANNEL, CANCEL_CHANNEL]).await
                    {
                        tracing::error!(%error, "listen for execution status changes");
                    } else {
                        self.connected.send_modify(|count| *count += 1);
                        loop {
                            match listener.recv().await {
                                Ok(notification) if notification.channel() == CANCEL_CHANNEL => {
                                    if let Ok(execution_id) = notification.payload().parse() {
                                        let _ = self.cancels.send(execution_id);
                                    }
                                }
                                Ok(notification) => {
                                    if let Some(change) = parse_payload(notification.payload()) {
                                        let _ = self.sender.send(change);
                                    }
                                }
                                Err(error) => {
                                    tracing::warn!(%error, "execution status feed interrupted");
                                    break;
                                }
                            }
                        }
                    }
                }
                Err(error) => tracing::error!(%error, "connect the execution status feed"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Waits until `execution_id` reaches a terminal status or `timeout` passes. The caller
    /// subscribes first, then reads the database, then calls this, so no change is missed.
    pub async fn wait_terminal(
        mut receiver: broadcast::Receiver<StatusChange>,
        execution_id: i64,
        timeout: Duration,
    ) {
        let wait = async {
            loop {
                match receiver.recv().await {
                    Ok(change)
                        if change.execution_id == execution_id && change.status.is_terminal() =>
                    {
                        return;
                    }
                    Ok(_) => {}
                    // Missed some changes: let the caller re-read the database.
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        };
        let _ = tokio::time::timeout(timeout, wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse() {
        assert_eq!(
            parse_payload("42:succeeded"),
            Some(StatusChange {
                execution_id: 42,
                status: ExecutionStatus::Succeeded
            })
        );
        assert_eq!(parse_payload("x:succeeded"), None);
        assert_eq!(parse_payload("42:bogus"), None);
        assert_eq!(parse_payload("42"), None);
    }

    #[tokio::test]
    async fn waiting_ends_on_the_terminal_change_of_that_execution() {
        let feed = StatusFeed::default();
        let receiver = feed.subscribe();
        let sender = feed.sender.clone();
        let waiter = tokio::spawn(StatusFeed::wait_terminal(
            receiver,
            7,
            Duration::from_secs(30),
        ));
        for change in [
            StatusChange {
                execution_id: 8,
                status: ExecutionStatus::Succeeded,
            },
            StatusChange {
                execution_id: 7,
                status: ExecutionStatus::Running,
            },
            StatusChange {
                execution_id: 7,
                status: ExecutionStatus::Failed,
            },
        ] {
            sender.send(change).unwrap();
        }
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiter ends on execution 7's terminal change")
            .unwrap();
    }
}
