//! In-process signals about live executions: the events consumer and the API tell the
//! controller task supervising an execution that it started, ended, or should be canceled.
//!
//! Postgres stays the source of truth; a signal only wakes the supervisor early.

use attune_protocol::api::ExecutionStatus;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

/// What a supervisor has heard about its execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExecutionSignal {
    /// The agent reported `running`.
    pub running: bool,
    /// The execution reached this terminal status.
    pub terminal: Option<ExecutionStatus>,
    /// Someone asked to cancel it.
    pub cancel_requested: bool,
    /// Heartbeats received from the agent running it (renews its lease).
    pub heartbeats: u64,
    /// The controller is shutting down and its grace has passed: end the execution now.
    pub abandon_requested: bool,
}

/// Registry of supervised executions, and of agents whose registration someone awaits.
#[derive(Clone, Default)]
pub struct ExecutionSignals {
    senders: Arc<Mutex<HashMap<i64, watch::Sender<ExecutionSignal>>>>,
    registrations: Arc<Mutex<HashMap<String, oneshot::Sender<String>>>>,
    /// Agents' events are being held because the database does not answer: supervisors hear
    /// nothing, through no fault of the agents, so no silence-based deadline may pass.
    events_held: Arc<AtomicBool>,
    /// Since when the event being applied now has been in flight (a statement waiting for an
    /// unreachable database takes as long as the pool's acquire timeout to fail).
    applying_since: Arc<Mutex<Option<Instant>>>,
    /// When events last flowed again after a stall: the backlog (heartbeats, reports waiting in
    /// the broker) takes a moment to be applied, so the stall counts a little longer.
    stall_ended_at: Arc<Mutex<Option<Instant>>>,
}

/// How long after a stall ends supervisors still treat agents' events as stalled.
pub const STALL_RECOVERY: Duration = Duration::from_secs(5);

/// How long one event may take to apply before supervisors treat agents' events as stalled.
pub const EVENTS_STALL_AFTER: Duration = Duration::from_secs(1);

/// Marks an event as being applied until dropped ([`ExecutionSignals::applying`]).
pub struct Applying<'signals>(&'signals ExecutionSignals);

impl Drop for Applying<'_> {
    fn drop(&mut self) {
        let since = self.0.applying_since.lock().expect("applying lock").take();
        if since.is_some_and(|since| since.elapsed() >= EVENTS_STALL_AFTER) {
            self.0.stall_ended();
        }
    }
}

/// A supervisor's subscription; unregisters on drop.
pub struct SignalSubscription {
    execution_id: i64,
    signals: ExecutionSignals,
    pub receiver: watch::Receiver<ExecutionSignal>,
}

impl Drop for SignalSubscription {
    fn drop(&mut self) {
        self.signals
            .senders
            .lock()
            .expect("signal registry lock")
            .remove(&self.execution_id);
    }
}

impl ExecutionSignals {
    /// Records whether agents' events are held (the database does not answer) or flow again.
    pub fn set_events_held(&self, held: bool) {
        let was = self.events_held.swap(held, Ordering::SeqCst);
        if was && !held {
            self.stall_ended();
        }
        if was != held {
            if held {
                tracing::warn!("agent events held while the database does not answer; supervision deadlines wait");
            } else {
                tracing::info!("agent events flow again");
            }
        }
    }

    /// Marks an event as being applied, until the returned guard is dropped.
    pub fn applying(&self) -> Applying<'_> {
        *self.applying_since.lock().expect("applying lock") = Some(Instant::now());
        Applying(self)
    }

    fn stall_ended(&self) {
        *self.stall_ended_at.lock().expect("stall lock") = Some(Instant::now());
    }

    /// Whether supervisors cannot hear agents now: their events are held (the database does
    /// not answer), the event being applied has been in flight for [`EVENTS_STALL_AFTER`], or
    /// such a stall ended less than [`STALL_RECOVERY`] ago (its backlog is being applied).
    pub fn events_stalled(&self) -> bool {
        let recovering = self
            .stall_ended_at
            .lock()
            .expect("stall lock")
            .is_some_and(|ended| ended.elapsed() < STALL_RECOVERY);
        recovering
            || self.events_held.load(Ordering::SeqCst)
            || self
                .applying_since
                .lock()
                .expect("applying lock")
                .is_some_and(|since| since.elapsed() >= EVENTS_STALL_AFTER)
    }

    /// Starts listening for an execution's signals.
    pub fn subscribe(&self, execution_id: i64) -> SignalSubscription {
        let (sender, receiver) = watch::channel(ExecutionSignal::default());
        self.senders
            .lock()
            .expect("signal registry lock")
            .insert(execution_id, sender);
        SignalSubscription {
            execution_id,
            signals: self.clone(),
            receiver,
        }
    }

    fn update(&self, execution_id: i64, change: impl FnOnce(&mut ExecutionSignal)) {
        if let Some(sender) = self
            .senders
            .lock()
            .expect("signal registry lock")
            .get(&execution_id)
        {
            sender.send_modify(change);
        }
    }

    pub fn running(&self, execution_id: i64) {
        self.update(execution_id, |signal| signal.running = true);
    }

    pub fn terminal(&self, execution_id: i64, status: ExecutionStatus) {
        self.update(execution_id, |signal| signal.terminal = Some(status));
    }

    pub fn heartbeat(&self, execution_id: i64) {
        self.update(execution_id, |signal| signal.heartbeats += 1);
    }

    pub fn cancel(&self, execution_id: i64) {
        self.update(execution_id, |signal| signal.cancel_requested = true);
    }

    /// Tells every supervised execution to end now (the shutdown grace passed).
    pub fn abandon_all(&self) {
        for sender in self.senders.lock().expect("signal registry lock").values() {
            sender.send_modify(|signal| signal.abandon_requested = true);
        }
    }

    /// Resolves with the agent's reported sha256 when the agent registers.
    pub fn await_registration(&self, agent_id: &str) -> oneshot::Receiver<String> {
        let (sender, receiver) = oneshot::channel();
        self.registrations
            .lock()
            .expect("registration registry lock")
            .insert(agent_id.to_string(), sender);
        receiver
    }

    /// Stops waiting for an agent (it will not come).
    pub fn forget_registration(&self, agent_id: &str) {
        self.registrations
            .lock()
            .expect("registration registry lock")
            .remove(agent_id);
    }

    /// An agent registered with this binary sha256.
    pub fn registered(&self, agent_id: &str, agent_sha256: &str) {
        let waiter = self
            .registrations
            .lock()
            .expect("registration registry lock")
            .remove(agent_id);
        if let Some(waiter) = waiter {
            let _ = waiter.send(agent_sha256.to_string());
        }
    }

    /// How many executions are supervised here now.
    pub fn supervised(&self) -> usize {
        self.senders.lock().expect("signal registry lock").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn events_stall_when_one_takes_long_or_the_database_holds_them() {
        let signals = ExecutionSignals::default();
        assert!(!signals.events_stalled());
        let applying = signals.applying();
        tokio::time::advance(EVENTS_STALL_AFTER / 2).await;
        assert!(!signals.events_stalled(), "a quick apply is not a stall");
        tokio::time::advance(EVENTS_STALL_AFTER).await;
        assert!(signals.events_stalled());
        signals.set_events_held(true);
        drop(applying);
        assert!(signals.events_stalled(), "held between two tries");
        signals.set_events_held(false);
        assert!(
            signals.events_stalled(),
            "its backlog is still being applied"
        );
        tokio::time::advance(STALL_RECOVERY).await;
        assert!(!signals.events_stalled());
        // A quick apply ends no stall.
        drop(signals.applying());
        assert!(!signals.events_stalled());
    }

    #[tokio::test]
    async fn signals_reach_the_subscriber_and_unregister_on_drop() {
        let signals = ExecutionSignals::default();
        let mut subscription = signals.subscribe(7);
        signals.running(7);
        signals.terminal(7, ExecutionStatus::Succeeded);
        signals.running(8);
        subscription.receiver.changed().await.unwrap();
        let seen = *subscription.receiver.borrow();
        assert!(seen.running);
        assert_eq!(seen.terminal, Some(ExecutionStatus::Succeeded));
        assert_eq!(signals.supervised(), 1);
        drop(subscription);
        assert_eq!(signals.supervised(), 0);
    }

    #[tokio::test]
    async fn registration_reaches_its_waiter_only() {
        let signals = ExecutionSignals::default();
        let waiter = signals.await_registration("pool-1");
        signals.registered("pool-2", "bb");
        signals.registered("pool-1", "aa");
        assert_eq!(waiter.await.unwrap(), "aa");
        let forgotten = signals.await_registration("pool-3");
        signals.forget_registration("pool-3");
        assert!(forgotten.await.is_err());
    }
}
