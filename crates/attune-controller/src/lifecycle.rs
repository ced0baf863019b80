//! Follows the engine's container events (start, die, oom, destroy) for the containers this
//! controller manages, so supervisors learn at once that their container ended and whether the
//! kernel killed something in it for lack of memory.
//!
//! The stream is filtered by `attune.managed=true` and this controller's label. When it fails or
//! ends (the engine restarted, the socket dropped) the tracker reconnects with exponential
//! backoff and replays what it may have missed by inspecting every watched container. The
//! tracker only adds knowledge: supervisors keep `wait_container` as a fallback, so no execution
//! depends on the stream being up.

use attune_docker::labels::{LABEL_CONTROLLER, LABEL_MANAGED};
use attune_docker::{ContainerEvent, DockerOps};
use backon::BackoffBuilder;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What the tracker knows about one container. Flags only ever turn on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ContainerObservation {
    pub started: bool,
    /// The container stopped (`die`, or found not running on a replay).
    pub died: bool,
    pub exit_code: Option<i64>,
    /// The kernel killed a process in it for lack of memory (`oom` event or `State.OOMKilled`).
    pub oom: bool,
    /// The container no longer exists.
    pub destroyed: bool,
}

impl ContainerObservation {
    fn merge_event(&mut self, event: &ContainerEvent) {
        match event.action.as_str() {
            "start" => self.started = true,
            "die" => {
                self.died = true;
                if event.exit_code.is_some() {
                    self.exit_code = event.exit_code;
                }
            }
            "oom" => self.oom = true,
            "destroy" => {
                self.died = true;
                self.destroyed = true;
            }
            _ => {}
        }
    }
}

/// The events a tracker handles; everything else is ignored.
pub const TRACKED_ACTIONS: [&str; 4] = ["start", "die", "oom", "destroy"];

/// A watched container: its observation and how many watches share it.
struct Watched {
    sender: watch::Sender<ContainerObservation>,
    watches: usize,
}

#[derive(Default)]
struct TrackerState {
    watched: Mutex<HashMap<String, Watched>>,
    following: AtomicBool,
    connections: AtomicU64,
    /// Events received over every connection.
    events_received: AtomicU64,
    /// The number of the connection the latest event came over (0: none yet).
    last_event_connection: AtomicU64,
}

/// Shared handle on the tracker; cheap to clone.
#[derive(Clone, Default)]
pub struct LifecycleTracker {
    state: Arc<TrackerState>,
}

/// A supervisor's view of one container; stops watching on drop.
pub struct ContainerWatch {
    container_id: String,
    tracker: LifecycleTracker,
    pub receiver: watch::Receiver<ContainerObservation>,
}

impl Drop for ContainerWatch {
    fn drop(&mut self) {
        let mut watched = self.tracker.state.watched.lock().expect("tracker lock");
        if let Some(entry) = watched.get_mut(&self.container_id) {
            entry.watches -= 1;
            if entry.watches == 0 {
                watched.remove(&self.container_id);
            }
        }
    }
}

impl ContainerWatch {
    /// What is known now.
    pub fn current(&self) -> ContainerObservation {
        *self.receiver.borrow()
    }

    /// Waits until the container is known to have stopped, at most `patience`.
    pub async fn wait_died(&mut self, patience: Duration) -> ContainerObservation {
        let _ = tokio::time::timeout(patience, self.receiver.wait_for(|seen| seen.died)).await;
        self.current()
    }
}

impl LifecycleTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts watching a container (watches of the same container share what is known).
    /// Register before starting it so no event is missed.
    pub fn watch(&self, container_id: &str) -> ContainerWatch {
        let mut watched = self.state.watched.lock().expect("tracker lock");
        let entry = watched
            .entry(container_id.to_string())
            .or_insert_with(|| Watched {
                sender: watch::channel(ContainerObservation::default()).0,
                watches: 0,
            });
        entry.watches += 1;
        let receiver = entry.sender.subscribe();
        drop(watched);
        ContainerWatch {
            container_id: container_id.to_string(),
            tracker: self.clone(),
            receiver,
        }
    }

    /// Whether the events stream is connected now.
    pub fn is_following(&self) -> bool {
        self.state.following.load(Ordering::SeqCst)
    }

    /// How many times the stream was (re)opened.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// How many events the stream delivered, over all connections.
    pub fn events_received(&self) -> u64 {
        self.state.events_received.load(Ordering::SeqCst)
    }

    /// Which connection (1 = the first) delivered the latest event; 0 before any event. Once
    /// it passes the connection count seen before an engine restart, the stream has resumed.
    pub fn last_event_connection(&self) -> u64 {
        self.state.last_event_connection.load(Ordering::SeqCst)
    }

    /// How many containers are watched now.
    pub fn watched(&self) -> usize {
        self.state.watched.lock().expect("tracker lock").len()
    }

    /// Applies one event to the container it is about, if watched.
    pub fn apply(&self, event: &ContainerEvent) {
        if !TRACKED_ACTIONS.contains(&event.action.as_str()) {
            return;
        }
        let watched = self.state.watched.lock().expect("tracker lock");
        if let Some(Watched { sender, .. }) = watched.get(&event.container_id) {
            sender.send_if_modified(|seen| {
                let before = *seen;
                seen.merge_event(event);
                *seen != before
            });
        }
    }

    /// Inspects every watched container and records what events may have been missed.
    pub async fn replay(&self, docker: &Arc<dyn DockerOps>) {
        let container_ids: Vec<String> = self
            .state
            .watched
            .lock()
            .expect("tracker lock")
            .keys()
            .cloned()
            .collect();
        for container_id in container_ids {
            let inspected = docker.inspect_container(&container_id).await;
            let watched = self.state.watched.lock().expect("tracker lock");
            let Some(Watched { sender, .. }) = watched.get(&container_id) else {
                continue;
            };
            match inspected {
                Ok(Some(state)) => {
                    sender.send_if_modified(|seen| {
                        let before = *seen;
                        if state.running {
                            seen.started = true;
                        } else if state.status == "exited" || state.status == "dead" {
                            seen.started = true;
                            seen.died = true;
                            seen.exit_code = state.exit_code;
                        }
                        seen.oom |= state.oom_killed;
                        *seen != before
                    });
                }
                Ok(None) => {
                    sender.send_if_modified(|seen| {
                        let before = *seen;
                        seen.died = true;
                        seen.destroyed = true;
                        *seen != before
                    });
                }
                Err(error) => {
                    tracing::debug!(%container_id, %error, "replay container state");
                }
            }
        }
    }

    /// Follows the events stream until `stop`: reconnects with backoff after the stream fails
    /// or ends, replaying state after every (re)connection.
    pub async fn run(
        self,
        docker: Arc<dyn DockerOps>,
        controller_id: String,
        stop: CancellationToken,
    ) {
        let backoff_builder = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(10))
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        let mut backoff = backoff_builder.build();
        loop {
            let mut stream = docker.container_events(&[
                (LABEL_MANAGED, "true"),
                (LABEL_CONTROLLER, controller_id.as_str()),
            ]);
            let connection = self.state.connections.fetch_add(1, Ordering::SeqCst) + 1;
            self.state.following.store(true, Ordering::SeqCst);
            // The stream replays from the moment it was asked for; inspecting now covers the
            // time before (and any gap while disconnected).
            self.replay(&docker).await;
            let ended = loop {
                tokio::select! {
                    _ = stop.cancelled() => {
                        self.state.following.store(false, Ordering::SeqCst);
                        return;
                    }
                    item = stream.next() => match item {
                        Some(Ok(event)) => {
                            self.state.events_received.fetch_add(1, Ordering::SeqCst);
                            self.state
                                .last_event_connection
                                .store(connection, Ordering::SeqCst);
                            self.apply(&event);
                            backoff = backoff_builder.build();
                        }
                        Some(Err(error)) => break format!("failed: {error}"),
                        None => break "ended".to_string(),
                    }
                }
            };
            self.state.following.store(false, Ordering::SeqCst);
            let delay = backoff.next().unwrap_or(Duration::from_secs(10));
            tracing::warn!(
                delay_ms = delay.as_millis() as u64,
                "docker events stream {ended}; reconnecting"
            );
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use attune_docker::fake::RecordingDocker;
    use attune_docker::{ContainerCreateSpec, DockerError};
    use std::collections::BTreeMap;

    const DEADLINE: Duration = Duration::from_secs(10);

    fn spec(name: &str, controller: &str) -> ContainerCreateSpec {
        ContainerCreateSpec {
            name: name.to_string(),
            image: "busybox:1.36".to_string(),
            labels: BTreeMap::from([
                (LABEL_MANAGED.to_string(), "true".to_string()),
                (LABEL_CONTROLLER.to_string(), controller.to_string()),
            ]),
            ..Default::default()
        }
    }

    async fn wait_until(mut condition: impl FnMut() -> bool, what: &str) {
        tokio::time::timeout(DEADLINE, async {
            while !condition() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
    }

    #[tokio::test]
    async fn oom_before_die_is_recorded_and_other_controllers_are_ignored() {
        let docker = RecordingDocker::new();
        docker
            .add_image("busybox:1.36", "amd64")
            .set_lifecycle_events(true);
        let engine: Arc<dyn DockerOps> = Arc::new(docker.clone());
        let tracker = LifecycleTracker::new();
        let stop = CancellationToken::new();
        let task = tokio::spawn(
            tracker
                .clone()
                .run(engine.clone(), "mine".into(), stop.clone()),
        );
        wait_until(|| tracker.is_following(), "the stream").await;

        let ours = engine
            .create_container(&spec("ours", "mine"))
            .await
            .unwrap();
        let theirs = engine
            .create_container(&spec("theirs", "other"))
            .await
            .unwrap();
        let mut watch = tracker.watch(&ours);
        let other_watch = tracker.watch(&theirs);
        engine.start_container(&ours).await.unwrap();
        engine.start_container(&theirs).await.unwrap();
        assert!(docker.emit_oom_event(&ours));
        assert!(docker.exit_container(&ours, 137));
        assert!(docker.exit_container(&theirs, 1));
        let seen = watch.wait_died(DEADLINE).await;
        assert!(seen.started && seen.died && seen.oom, "{seen:?}");
        assert_eq!(seen.exit_code, Some(137));
        assert_eq!(
            other_watch.current(),
            ContainerObservation::default(),
            "another controller's container is not followed"
        );
        let second_look = tracker.watch(&ours);
        assert!(
            second_look.current().oom,
            "a second watch shares what is known"
        );
        drop(watch);
        assert_eq!(tracker.watched(), 2, "still watched by the second look");
        drop(second_look);
        drop(other_watch);
        assert_eq!(tracker.watched(), 0);
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn reconnects_after_the_stream_fails_and_replays_what_was_missed() {
        let docker = RecordingDocker::new();
        docker
            .add_image("busybox:1.36", "amd64")
            .set_lifecycle_events(true);
        let engine: Arc<dyn DockerOps> = Arc::new(docker.clone());
        let tracker = LifecycleTracker::new();
        let stop = CancellationToken::new();
        let task = tokio::spawn(
            tracker
                .clone()
                .run(engine.clone(), "mine".into(), stop.clone()),
        );
        wait_until(|| tracker.connections() == 1, "the first connection").await;

        let container = engine.create_container(&spec("c1", "mine")).await.unwrap();
        let mut watch = tracker.watch(&container);
        engine.start_container(&container).await.unwrap();
        // The engine goes away: the stream errors, then is gone.
        docker.set_lifecycle_events(false);
        docker.push_event_error(|| DockerError::Unavailable("socket closed".into()));
        docker.close_event_streams();
        // While nobody listens the container is OOM-killed; no event reaches the tracker.
        assert!(docker.oom_kill_container(&container));
        docker.set_lifecycle_events(true);
        let seen = watch.wait_died(DEADLINE).await;
        assert!(
            seen.died && seen.oom,
            "replay found the exit and OOMKilled: {seen:?}"
        );
        assert!(tracker.connections() >= 2);

        // A container removed while the stream is down is seen as destroyed.
        let gone = engine.create_container(&spec("c2", "mine")).await.unwrap();
        let gone_watch = tracker.watch(&gone);
        docker.set_lifecycle_events(false);
        docker.close_event_streams();
        engine.remove_container(&gone).await.unwrap();
        docker.set_lifecycle_events(true);
        let mut gone_watch = gone_watch;
        let seen = gone_watch.wait_died(DEADLINE).await;
        assert!(seen.destroyed, "{seen:?}");

        // Events flow again over the newest connection.
        let received = tracker.events_received();
        let fresh = engine.create_container(&spec("c3", "mine")).await.unwrap();
        engine.start_container(&fresh).await.unwrap();
        wait_until(
            || tracker.events_received() > received,
            "an event after the reconnection",
        )
        .await;
        assert_eq!(tracker.last_event_connection(), tracker.connections());
        assert!(tracker.last_event_connection() >= 2);
        stop.cancel();
        task.await.unwrap();
    }
}
