//! The deadlines of one supervised execution as a state machine: what the supervisor has
//! heard ([`Supervision::on_signal`]) and what time it is ([`Supervision::expired`]) decide
//! what it does, with no clock or I/O of its own, so every path is tested with plain instants
//! on a paused tokio clock.
//!
//! Deadlines: the agent must report `running` within the start timeout of its container being
//! placed; a running agent must heartbeat within the lease; a cancel must be honoured within
//! the kill grace (plus slack); and nothing runs past start timeout + action timeout + grace +
//! slack. An adopted execution counts from its stored timestamps ([`SupervisionOrigin`]).

use crate::signals::ExecutionSignal;
use std::time::Duration;
use tokio::time::Instant;

/// The durations a supervision enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SupervisionTiming {
    /// From placement to the agent reporting `running`.
    pub agent_start_timeout: Duration,
    /// The action's own timeout.
    pub timeout: Duration,
    /// Between SIGTERM and SIGKILL (the agent's grace).
    pub kill_grace: Duration,
    /// Slack on top of the hard deadline (the agent enforces the timeout itself first).
    pub timeout_slack: Duration,
    /// How long a running agent may stay silent.
    pub lease: Duration,
}

impl SupervisionTiming {
    /// How long a cancel may take before the container is killed.
    pub fn cancel_patience(&self) -> Duration {
        self.kill_grace + Duration::from_secs(2)
    }
}

/// Where a supervision's deadlines count from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SupervisionOrigin {
    /// The container was just started: every deadline counts from now.
    Fresh,
    /// An adopted execution: deadlines count from its stored timestamps.
    Adopted {
        /// Time since its container was chosen (the start deadline's base).
        since_placed: Duration,
        /// What is left of its agent's lease, when one was stored.
        lease_remaining: Option<Duration>,
    },
}

impl SupervisionOrigin {
    /// The origin of an adopted execution, against the database's clock.
    pub fn adopted(
        execution: &attune_store::ExecutionRow,
        database_now: chrono::DateTime<chrono::Utc>,
    ) -> Self {
        let since = |time: chrono::DateTime<chrono::Utc>| {
            (database_now - time).to_std().unwrap_or(Duration::ZERO)
        };
        let since_placed = execution
            .placed_at
            .or(execution.scheduled_at)
            .map(since)
            .unwrap_or(Duration::ZERO);
        let lease_remaining = execution
            .lease_expires_at
            .map(|expires| (expires - database_now).to_std().unwrap_or(Duration::ZERO));
        SupervisionOrigin::Adopted {
            since_placed,
            lease_remaining,
        }
    }
}

/// What the supervisor does after hearing a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalEffect {
    /// Keep waiting.
    Wait,
    /// Tell the agent to cancel (once), then keep waiting.
    SendCancel,
    /// The execution is terminal: stop supervising.
    Done,
    /// The controller is shutting down and its grace passed: kill and end it `abandoned`.
    Abandon,
}

/// Which deadline passed; the supervisor kills the container and ends the execution so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// A cancel was not honoured in time → `canceled`.
    Cancel,
    /// A running agent stopped heartbeating → `lease-expired`.
    Lease,
    /// The agent never reported `running` → `injection-failed`.
    AgentStart,
    /// The action ran past its hard deadline → `timeout`.
    Hard,
}

/// How long after the supervisor could hear again the agent's start or a cancel may still take
/// ([`Supervision::hold`]).
pub const STALL_GRACE: Duration = Duration::from_secs(5);

/// One execution's deadlines and what is known of it.
#[derive(Debug, Clone)]
pub struct Supervision {
    timing: SupervisionTiming,
    start_deadline: Instant,
    hard_deadline: Instant,
    lease_renewed: Instant,
    cancel_deadline: Option<Instant>,
    running: bool,
    heartbeats: u64,
}

impl Supervision {
    /// Starts supervising at `now`; `seen` is what was already heard (an adopted running
    /// execution keeps the lease its stored timestamps give).
    pub fn new(
        timing: SupervisionTiming,
        origin: SupervisionOrigin,
        seen: ExecutionSignal,
        now: Instant,
    ) -> Supervision {
        let (started, lease_renewed) = match origin {
            SupervisionOrigin::Fresh => (now, now),
            SupervisionOrigin::Adopted {
                since_placed,
                lease_remaining,
            } => (
                now.checked_sub(since_placed).unwrap_or(now),
                lease_remaining
                    .and_then(|remaining| (now + remaining).checked_sub(timing.lease))
                    .unwrap_or(now),
            ),
        };
        Supervision {
            timing,
            start_deadline: started + timing.agent_start_timeout,
            hard_deadline: started
                + timing.agent_start_timeout
                + timing.timeout
                + timing.kill_grace
                + timing.timeout_slack,
            lease_renewed,
            cancel_deadline: None,
            running: seen.running,
            heartbeats: seen.heartbeats,
        }
    }

    /// Applies what the supervisor heard at `now`.
    pub fn on_signal(&mut self, signal: ExecutionSignal, now: Instant) -> SignalEffect {
        if signal.terminal.is_some() {
            return SignalEffect::Done;
        }
        if signal.abandon_requested {
            return SignalEffect::Abandon;
        }
        if signal.heartbeats != self.heartbeats || signal.running != self.running {
            self.heartbeats = signal.heartbeats;
            self.running = signal.running;
            self.lease_renewed = now;
        }
        if signal.cancel_requested && self.cancel_deadline.is_none() {
            self.cancel_deadline = Some(now + self.timing.cancel_patience());
            return SignalEffect::SendCancel;
        }
        SignalEffect::Wait
    }

    /// The next moment a deadline may pass.
    pub fn next_deadline(&self) -> Instant {
        let mut deadline = self.hard_deadline;
        if self.running {
            deadline = deadline.min(self.lease_deadline());
        } else {
            deadline = deadline.min(self.start_deadline);
        }
        if let Some(cancel_at) = self.cancel_deadline {
            deadline = deadline.min(cancel_at);
        }
        deadline
    }

    /// Which deadline has passed at `now`, if any (a cancel first, then the lease, the start,
    /// the hard deadline).
    pub fn expired(&self, now: Instant) -> Option<Expired> {
        if self
            .cancel_deadline
            .is_some_and(|cancel_at| now >= cancel_at)
        {
            return Some(Expired::Cancel);
        }
        if self.running && now >= self.lease_deadline() && now < self.hard_deadline {
            return Some(Expired::Lease);
        }
        if !self.running && now >= self.start_deadline && now < self.hard_deadline {
            return Some(Expired::AgentStart);
        }
        (now >= self.hard_deadline).then_some(Expired::Hard)
    }

    /// The slack the hard deadline adds on top of the action's timeout.
    pub fn hard_slack(&self) -> Duration {
        self.timing.agent_start_timeout + self.timing.kill_grace + self.timing.timeout_slack
    }

    fn lease_deadline(&self) -> Instant {
        self.lease_renewed + self.timing.lease
    }

    /// The supervisor could not hear the agent for the last `by` up to `now` (its events were
    /// held while the database did not answer): that is not the agent's silence. The lease
    /// counts from `now` at the earliest, the agent's start and a cancel get at least
    /// [`STALL_GRACE`] from `now` (their word may be waiting in the broker), and the hard
    /// deadline moves `by` later.
    pub fn hold(&mut self, now: Instant, by: Duration) {
        self.lease_renewed = self.lease_renewed.max(now);
        self.start_deadline = (self.start_deadline + by).max(now + STALL_GRACE);
        self.hard_deadline += by;
        if let Some(cancel_at) = self.cancel_deadline.as_mut() {
            *cancel_at = (*cancel_at + by).max(now + STALL_GRACE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing() -> SupervisionTiming {
        SupervisionTiming {
            agent_start_timeout: Duration::from_secs(30),
            timeout: Duration::from_secs(60),
            kill_grace: Duration::from_secs(5),
            timeout_slack: Duration::from_secs(5),
            lease: Duration::from_secs(20),
        }
    }

    fn running(heartbeats: u64) -> ExecutionSignal {
        ExecutionSignal {
            running: true,
            heartbeats,
            ..Default::default()
        }
    }

    /// Advances the paused clock to the machine's next deadline and says what expired there.
    async fn run_to_next_deadline(machine: &Supervision) -> Option<Expired> {
        tokio::time::sleep_until(machine.next_deadline()).await;
        machine.expired(Instant::now())
    }

    #[tokio::test(start_paused = true)]
    async fn an_agent_that_never_reports_expires_at_the_start_timeout() {
        let start = Instant::now();
        let machine = Supervision::new(
            timing(),
            SupervisionOrigin::Fresh,
            ExecutionSignal::default(),
            start,
        );
        assert_eq!(machine.expired(start + Duration::from_secs(29)), None);
        assert_eq!(
            run_to_next_deadline(&machine).await,
            Some(Expired::AgentStart)
        );
        assert_eq!(Instant::now() - start, Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_renew_the_lease_and_silence_ends_it() {
        let start = Instant::now();
        let mut machine = Supervision::new(
            timing(),
            SupervisionOrigin::Fresh,
            ExecutionSignal::default(),
            start,
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            machine.on_signal(running(0), Instant::now()),
            SignalEffect::Wait
        );
        for beat in 1..=3 {
            tokio::time::advance(Duration::from_secs(15)).await;
            machine.on_signal(running(beat), Instant::now());
            assert_eq!(machine.expired(Instant::now()), None);
        }
        // Silent from 47 s on: the lease ends 20 s later, before the hard deadline (100 s).
        assert_eq!(run_to_next_deadline(&machine).await, Some(Expired::Lease));
        assert_eq!(Instant::now() - start, Duration::from_secs(67));
    }

    #[tokio::test(start_paused = true)]
    async fn time_the_agent_could_not_be_heard_does_not_count_as_its_silence() {
        let start = Instant::now();
        let mut machine = Supervision::new(
            timing(),
            SupervisionOrigin::Fresh,
            ExecutionSignal::default(),
            start,
        );
        machine.on_signal(running(0), start);
        // The lease would end at 20 s; the agent could not be heard for the last 12 s of it.
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(machine.expired(Instant::now()), Some(Expired::Lease));
        machine.hold(Instant::now(), Duration::from_secs(12));
        assert_eq!(machine.expired(Instant::now()), None);
        // A whole lease from when it could be heard again.
        assert_eq!(run_to_next_deadline(&machine).await, Some(Expired::Lease));
        assert_eq!(Instant::now() - start, Duration::from_secs(40));
        // The hard deadline (100 s) moved as far as the hold; the start deadline (30 s) too.
        assert_eq!(machine.hard_deadline, start + Duration::from_secs(112));
        assert_eq!(machine.start_deadline, start + Duration::from_secs(42));
        // Just before its start deadline: an agent whose registration was held gets the
        // stall grace after the hold.
        let mut starting = Supervision::new(
            timing(),
            SupervisionOrigin::Fresh,
            ExecutionSignal::default(),
            Instant::now(),
        );
        let now = Instant::now() + Duration::from_secs(29);
        starting.hold(now, Duration::from_secs(1));
        assert_eq!(starting.start_deadline, now + STALL_GRACE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_heartbeating_agent_still_ends_at_the_hard_deadline() {
        let start = Instant::now();
        let mut machine = Supervision::new(
            timing(),
            SupervisionOrigin::Fresh,
            ExecutionSignal::default(),
            start,
        );
        let mut beats = 0;
        loop {
            tokio::time::advance(Duration::from_secs(5)).await;
            beats += 1;
            machine.on_signal(running(beats), Instant::now());
            if let Some(expired) = machine.expired(Instant::now()) {
                assert_eq!(expired, Expired::Hard);
                break;
            }
        }
        // start timeout + timeout + grace + slack.
        assert_eq!(Instant::now() - start, Duration::from_secs(100));
        assert_eq!(machine.hard_slack(), Duration::from_secs(40));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancel_is_sent_once_and_enforced_after_the_grace() {
        let start = Instant::now();
        let mut machine = Supervision::new(timing(), SupervisionOrigin::Fresh, running(0), start);
        let cancel = ExecutionSignal {
            cancel_requested: true,
            ..running(0)
        };
        assert_eq!(machine.on_signal(cancel, start), SignalEffect::SendCancel);
        assert_eq!(machine.on_signal(cancel, start), SignalEffect::Wait);
        assert_eq!(run_to_next_deadline(&machine).await, Some(Expired::Cancel));
        assert_eq!(Instant::now() - start, Duration::from_secs(7));
    }

    #[tokio::test(start_paused = true)]
    async fn a_terminal_signal_ends_the_supervision() {
        let mut machine = Supervision::new(
            timing(),
            SupervisionOrigin::Fresh,
            ExecutionSignal::default(),
            Instant::now(),
        );
        let terminal = ExecutionSignal {
            terminal: Some(attune_protocol::api::ExecutionStatus::Succeeded),
            ..running(3)
        };
        assert_eq!(
            machine.on_signal(terminal, Instant::now()),
            SignalEffect::Done
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_shutdown_abandons_unless_the_execution_already_ended() {
        let mut machine = Supervision::new(
            timing(),
            SupervisionOrigin::Fresh,
            running(1),
            Instant::now(),
        );
        let abandon = ExecutionSignal {
            abandon_requested: true,
            ..running(1)
        };
        assert_eq!(
            machine.on_signal(abandon, Instant::now()),
            SignalEffect::Abandon
        );
        let ended = ExecutionSignal {
            terminal: Some(attune_protocol::api::ExecutionStatus::Succeeded),
            ..abandon
        };
        assert_eq!(machine.on_signal(ended, Instant::now()), SignalEffect::Done);
    }

    #[tokio::test(start_paused = true)]
    async fn an_adopted_execution_keeps_its_stored_deadlines() {
        // Placed 25 s ago and never running: 5 s are left of the start timeout, not 30.
        let start = Instant::now();
        let waiting = Supervision::new(
            timing(),
            SupervisionOrigin::Adopted {
                since_placed: Duration::from_secs(25),
                lease_remaining: None,
            },
            ExecutionSignal::default(),
            start,
        );
        assert_eq!(
            run_to_next_deadline(&waiting).await,
            Some(Expired::AgentStart)
        );
        assert_eq!(Instant::now() - start, Duration::from_secs(5));

        // Running, with 3 s left of its stored lease: it expires then unless the agent beats.
        let start = Instant::now();
        let running_machine = Supervision::new(
            timing(),
            SupervisionOrigin::Adopted {
                since_placed: Duration::from_secs(40),
                lease_remaining: Some(Duration::from_secs(3)),
            },
            running(0),
            start,
        );
        assert_eq!(
            run_to_next_deadline(&running_machine).await,
            Some(Expired::Lease)
        );
        assert_eq!(Instant::now() - start, Duration::from_secs(3));

        // Placed 95 s ago: the hard deadline (100 s) is 5 s away whatever the lease says.
        let start = Instant::now();
        let late = Supervision::new(
            timing(),
            SupervisionOrigin::Adopted {
                since_placed: Duration::from_secs(95),
                lease_remaining: Some(Duration::from_secs(20)),
            },
            running(0),
            start,
        );
        assert_eq!(run_to_next_deadline(&late).await, Some(Expired::Hard));
        assert_eq!(Instant::now() - start, Duration::from_secs(5));
    }
}
