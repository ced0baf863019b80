//! The agent's life: connect, register, take commands, run jobs, heartbeat, drain and exit.

use crate::config::{AgentConfig, Mode};
use crate::detect::{Detector, RuntimeName};
use crate::mq::{self, MqError, Publisher};
use crate::packs::PackStore;
use crate::runner::{early_report, run_job_then_sweep, RunnerContext, StopRequest};
use crate::EventSender;
use attune_protocol::{
    AgentCommand, AgentEvent, AgentRegistration, DetectedRuntime, ExecutionId, FailureKind, Job,
    JobOutcome, JobReport, PROTOCOL_VERSION,
};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicRejectOptions};
use lapin::Acker;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Cancel commands remembered for jobs that have not arrived yet.
const EARLY_CANCELS_REMEMBERED: usize = 256;
/// How many finished executions an agent remembers, to ignore a job delivered again.
const RAN_REMEMBERED: usize = 256;
/// How long the last events (final reports, deregister) may take to be confirmed at exit.
const FINAL_PUBLISH_LIMIT: Duration = Duration::from_secs(30);
/// How long closing the broker connection may take at exit.
const CLOSE_LIMIT: Duration = Duration::from_secs(5);

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Broker(#[from] MqError),
}

/// Hex sha256 of the running binary (`/proc/self/exe`), empty when it cannot be read.
pub fn own_sha256() -> String {
    let hash = || -> std::io::Result<String> {
        let mut file = std::fs::File::open("/proc/self/exe")?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0_u8; 64 * 1024];
        loop {
            let length = file.read(&mut buffer)?;
            if length == 0 {
                break;
            }
            hasher.update(&buffer[..length]);
        }
        Ok(hasher
            .finalize()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect())
    };
    hash().unwrap_or_else(|error| {
        eprintln!("attune-agent: hash own binary /proc/self/exe: {error}");
        String::new()
    })
}

/// The execution id and protocol version of a job command that does not parse as a [`Job`].
pub fn salvage_job_identity(data: &[u8]) -> Option<(ExecutionId, Option<u64>)> {
    let value: serde_json::Value = serde_json::from_slice(data).ok()?;
    let object = value.as_object()?;
    if object
        .get("type")
        .and_then(|kind| kind.as_str())
        .is_some_and(|kind| kind != "job")
    {
        return None;
    }
    let execution_id = object.get("execution_id")?.as_i64()?;
    let protocol_version = object
        .get("protocol_version")
        .and_then(|version| version.as_u64());
    Some((execution_id, protocol_version))
}

/// A job delivery held unacked until a slot frees up.
struct HeldJob {
    job: Job,
    acker: Acker,
}

/// The agent's bookkeeping while it serves its queue.
struct Agent {
    config: AgentConfig,
    context: Arc<RunnerContext>,
    events: EventSender,
    running: HashMap<ExecutionId, watch::Sender<Option<StopRequest>>>,
    tasks: JoinSet<ExecutionId>,
    task_executions: HashMap<tokio::task::Id, ExecutionId>,
    held: VecDeque<HeldJob>,
    early_cancels: VecDeque<ExecutionId>,
    /// The last executions this agent ran to their end: a job delivered again (the controller
    /// published it again after losing the broker connection before its confirm) is ignored.
    ran: VecDeque<ExecutionId>,
    /// Jobs started, or settled without running; a oneshot agent is done after the first.
    jobs_taken: u64,
    drain_deadline: Option<Instant>,
    abandoning: bool,
    exit_reason: Option<String>,
}

impl Agent {
    fn report(&self, report: JobReport) {
        let _ = self.events.send(AgentEvent::Finished(report));
    }

    fn not_started(&self, job: &Job, outcome: JobOutcome, error: String) {
        self.report(early_report(
            &self.config.agent_id,
            job,
            outcome,
            None,
            error,
        ));
    }

    fn begin_drain(&mut self, deadline: Duration, reason: String) {
        if self.drain_deadline.is_some() {
            return;
        }
        eprintln!(
            "attune-agent: {reason}: taking no more jobs, {} running, deadline {}s",
            self.running.len(),
            deadline.as_secs()
        );
        self.drain_deadline = Some(Instant::now() + deadline);
        self.exit_reason = Some(reason);
        while let Some(held) = self.held.pop_front() {
            self.not_started(
                &held.job,
                JobOutcome::Abandoned,
                "agent shut down before the execution started".to_string(),
            );
            tokio::spawn(async move {
                let _ = held.acker.ack(BasicAckOptions::default()).await;
            });
        }
    }

    fn abandon_running(&mut self) {
        if self.abandoning {
            return;
        }
        self.abandoning = true;
        if !self.running.is_empty() {
            eprintln!(
                "attune-agent: shutdown deadline passed: abandoning {} running executions",
                self.running.len()
            );
        }
        for stop in self.running.values() {
            let _ = stop.send(Some(StopRequest::Abandon));
        }
    }

    fn is_done(&self) -> bool {
        let drained = self.drain_deadline.is_some() && self.running.is_empty();
        let oneshot_finished = self.config.mode == Mode::Oneshot
            && self.jobs_taken > 0
            && self.running.is_empty()
            && self.held.is_empty();
        drained || oneshot_finished
    }

    async fn handle_delivery(&mut self, data: &[u8], acker: Acker) {
        let command = match serde_json::from_slice::<AgentCommand>(data) {
            Ok(command) => command,
            Err(error) => {
                eprintln!("attune-agent: malformed command rejected: {error}");
                if let Some((execution_id, protocol_version)) = salvage_job_identity(data) {
                    self.report(JobReport {
                        failure_kind: Some(FailureKind::UnsupportedProtocol),
                        ..early_report(
                            &self.config.agent_id,
                            &placeholder_job(execution_id),
                            JobOutcome::Failed,
                            None,
                            format!(
                                "cannot parse job (protocol version {}, this agent speaks {PROTOCOL_VERSION}): {error}",
                                protocol_version.map_or_else(|| "unknown".to_string(), |version| version.to_string())
                            ),
                        )
                    });
                }
                if let Err(error) = acker.reject(BasicRejectOptions { requeue: false }).await {
                    eprintln!("attune-agent: reject malformed command: {error}");
                }
                return;
            }
        };
        match command {
            AgentCommand::Job(job) => self.accept_job(job, acker).await,
            AgentCommand::Cancel { execution_id } => {
                ack(&acker).await;
                self.cancel(execution_id);
            }
            AgentCommand::Shutdown { deadline_seconds } => {
                ack(&acker).await;
                let deadline = if deadline_seconds == 0 {
                    self.config.shutdown_deadline
                } else {
                    Duration::from_secs(deadline_seconds)
                };
                self.begin_drain(deadline, "shutdown requested".to_string());
            }
        }
    }

    async fn accept_job(&mut self, job: Job, acker: Acker) {
        let execution_id = job.execution_id;
        if self.running.contains_key(&execution_id)
            || self
                .held
                .iter()
                .any(|held| held.job.execution_id == execution_id)
        {
            eprintln!(
                "attune-agent: execution {execution_id} delivered again while it runs; ignored"
            );
            ack(&acker).await;
            return;
        }
        if self.ran.contains(&execution_id) {
            eprintln!(
                "attune-agent: execution {execution_id} delivered again after it ran; ignored"
            );
            ack(&acker).await;
            return;
        }
        if self.drain_deadline.is_some() {
            ack(&acker).await;
            self.not_started(
                &job,
                JobOutcome::Abandoned,
                "agent shut down before the execution started".to_string(),
            );
            return;
        }
        if self.config.mode == Mode::Oneshot && self.jobs_taken > 0 {
            ack(&acker).await;
            self.not_started(
                &job,
                JobOutcome::Abandoned,
                "oneshot agent already ran another execution; this one was not started".to_string(),
            );
            return;
        }
        if let Some(position) = self
            .early_cancels
            .iter()
            .position(|canceled| *canceled == execution_id)
        {
            self.early_cancels.remove(position);
            self.jobs_taken += 1;
            ack(&acker).await;
            self.not_started(
                &job,
                JobOutcome::Canceled,
                "canceled before it started".to_string(),
            );
            return;
        }
        if job.protocol_version > PROTOCOL_VERSION {
            eprintln!(
                "attune-agent: execution {execution_id} uses protocol version {} (this agent speaks {PROTOCOL_VERSION}); running it anyway",
                job.protocol_version
            );
        }
        if self.running.len() >= usize::from(self.config.concurrency) {
            self.held.push_back(HeldJob { job, acker });
            return;
        }
        ack(&acker).await;
        self.start(job);
    }

    fn start(&mut self, job: Job) {
        let execution_id = job.execution_id;
        let (stop_sender, stop_receiver) = watch::channel(None);
        self.running.insert(execution_id, stop_sender);
        self.jobs_taken += 1;
        let context = Arc::clone(&self.context);
        let events = self.events.clone();
        // Alone in its container, one job at a time: what a job leaves running is killed
        // before its report goes out (so before the next job can arrive).
        let sweep = self.config.sweep_processes && self.config.concurrency == 1;
        let handle = self.tasks.spawn(async move {
            run_job_then_sweep(&context, &job, &events, stop_receiver, sweep).await;
            job.execution_id
        });
        self.task_executions.insert(handle.id(), execution_id);
    }

    async fn start_held_jobs(&mut self) {
        while self.running.len() < usize::from(self.config.concurrency)
            && self.drain_deadline.is_none()
        {
            let Some(held) = self.held.pop_front() else {
                break;
            };
            ack(&held.acker).await;
            self.start(held.job);
        }
    }

    fn cancel(&mut self, execution_id: ExecutionId) {
        if let Some(stop) = self.running.get(&execution_id) {
            let _ = stop.send(Some(StopRequest::Cancel));
            return;
        }
        if let Some(position) = self
            .held
            .iter()
            .position(|held| held.job.execution_id == execution_id)
        {
            if let Some(held) = self.held.remove(position) {
                self.not_started(
                    &held.job,
                    JobOutcome::Canceled,
                    "canceled before it started".to_string(),
                );
                tokio::spawn(async move {
                    let _ = held.acker.ack(BasicAckOptions::default()).await;
                });
            }
            return;
        }
        eprintln!("attune-agent: cancel for execution {execution_id}, which is not running here; remembered");
        if self.early_cancels.len() == EARLY_CANCELS_REMEMBERED {
            self.early_cancels.pop_front();
        }
        self.early_cancels.push_back(execution_id);
    }

    fn finished(&mut self, joined: Result<ExecutionId, tokio::task::JoinError>) {
        let execution_id = match joined {
            Ok(execution_id) => execution_id,
            Err(error) => {
                let Some(execution_id) = self.task_executions.get(&error.id()).copied() else {
                    return;
                };
                eprintln!("attune-agent: execution {execution_id} crashed the runner: {error}");
                self.report(JobReport {
                    failure_kind: Some(FailureKind::Other),
                    ..early_report(
                        &self.config.agent_id,
                        &placeholder_job(execution_id),
                        JobOutcome::Failed,
                        None,
                        format!("agent error while running the execution: {error}"),
                    )
                });
                execution_id
            }
        };
        self.task_executions
            .retain(|_, running_id| *running_id != execution_id);
        self.running.remove(&execution_id);
        if self.ran.len() == RAN_REMEMBERED {
            self.ran.pop_front();
        }
        self.ran.push_back(execution_id);
    }
}

async fn ack(acker: &Acker) {
    if let Err(error) = acker.ack(BasicAckOptions::default()).await {
        eprintln!("attune-agent: ack command: {error}");
    }
}

/// A job carrying only an execution id, for reports about jobs that could not be read.
fn placeholder_job(execution_id: ExecutionId) -> Job {
    Job {
        protocol_version: PROTOCOL_VERSION,
        execution_id,
        action_ref: String::new(),
        pack_ref: String::new(),
        runtime: attune_protocol::Runtime::Native,
        pack_dir: String::new(),
        entry_point: String::new(),
        parameters: Default::default(),
        secret_parameters: Vec::new(),
        parameter_delivery: Default::default(),
        parameter_format: Default::default(),
        timeout_seconds: 0,
        kill_grace_seconds: 0,
        env: Default::default(),
        output_limit_bytes: 0,
        stream_logs: false,
        pack_sha256: None,
    }
}

/// The heartbeat due at a tick: the running executions (sorted), sent while any run, and with
/// none when `when_idle` (an enrolled worker, which heartbeats to stay online).
pub fn heartbeat_event(
    agent_id: &str,
    running: impl IntoIterator<Item = ExecutionId>,
    when_idle: bool,
) -> Option<AgentEvent> {
    let mut running: Vec<ExecutionId> = running.into_iter().collect();
    if running.is_empty() && !when_idle {
        return None;
    }
    running.sort_unstable();
    Some(AgentEvent::Heartbeat {
        agent_id: agent_id.to_string(),
        running,
    })
}

/// What an agent registers it can run.
#[derive(Debug, Clone)]
pub enum Capabilities {
    /// Detect these runtimes (every detectable one when `None`) while connecting.
    Detect(Option<Vec<RuntimeName>>),
    /// Already detected (a worker's, reported when it enrolled).
    Detected(Vec<DetectedRuntime>),
}

/// Runs the agent until its work is done: one job in oneshot mode, until `shutdown` resolves
/// (to the reason, e.g. `received SIGTERM`) or a Shutdown command in worker mode.
pub async fn run(
    config: AgentConfig,
    detector: Detector,
    selection: Option<Vec<RuntimeName>>,
    shutdown: impl Future<Output = String>,
) -> Result<(), AgentError> {
    serve(
        config,
        detector,
        Capabilities::Detect(selection),
        None,
        shutdown,
    )
    .await
}

/// [`run`] with the runtimes to register and, for a worker, the pack files by digest.
pub async fn serve(
    config: AgentConfig,
    detector: Detector,
    capabilities: Capabilities,
    packs: Option<Arc<PackStore>>,
    shutdown: impl Future<Output = String>,
) -> Result<(), AgentError> {
    let mut shutdown = std::pin::pin!(shutdown);
    let hashing = tokio::task::spawn_blocking(own_sha256);
    // Oneshot agents register what is installed without spawning version probes, to start fast.
    let probe_versions = config.mode == Mode::Worker;
    let detection = async {
        match capabilities {
            Capabilities::Detect(selection) => {
                detector.detect(selection.as_deref(), probe_versions).await
            }
            Capabilities::Detected(runtimes) => runtimes,
        }
    };
    let connecting = mq::connect(
        &config.message_queue_url,
        config.message_queue_ca_pem.as_deref(),
        &config.agent_id,
        config.connect_timeout,
    );
    let (connection, runtimes) = tokio::select! {
        (connection, runtimes) = async { tokio::join!(connecting, detection) } => (connection?, runtimes),
        _ = &mut shutdown => {
            eprintln!("attune-agent: stopped before connecting to the broker");
            return Ok(());
        }
    };
    let agent_sha256 = hashing.await.unwrap_or_default();

    let publish_channel = connection
        .create_channel()
        .await
        .map_err(|source| MqError::Broker {
            operation: "open publish channel".to_string(),
            source,
        })?;
    // The events exchange and queue are the controller's (an agent's broker account may not
    // declare them); the agent only publishes to the exchange.
    let (events, publisher) = Publisher::start(
        publish_channel,
        config.events_queue.clone(),
        config.event_key,
    )
    .await?;
    let _ = events.send(AgentEvent::Register(AgentRegistration {
        agent_id: config.agent_id.clone(),
        protocol_version: PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        agent_sha256,
        mode: config.mode.to_string(),
        image: config.image.clone(),
        runtimes,
    }));

    let consume_channel = connection
        .create_channel()
        .await
        .map_err(|source| MqError::Broker {
            operation: "open consume channel".to_string(),
            source,
        })?;
    let (consume_channel, job_queue) =
        mq::declare_job_queue(&connection, consume_channel, &config.agent_id).await?;
    let consumer_tag = format!("attune-agent-{}", config.agent_id);
    let mut consumer = mq::consume(
        &consume_channel,
        &job_queue,
        &consumer_tag,
        config.concurrency,
    )
    .await?;

    let context = Arc::new(RunnerContext {
        agent_id: config.agent_id.clone(),
        image: config.image.clone(),
        workdir_base: config.workdir_base.clone(),
        detector,
        environments: config.environments.clone(),
        packs,
    });
    let heartbeat_interval = config.heartbeat_interval;
    let mut agent = Agent {
        config,
        context,
        events,
        running: HashMap::new(),
        tasks: JoinSet::new(),
        task_executions: HashMap::new(),
        held: VecDeque::new(),
        early_cancels: VecDeque::new(),
        ran: VecDeque::new(),
        jobs_taken: 0,
        drain_deadline: None,
        abandoning: false,
        exit_reason: None,
    };
    let mut heartbeat =
        tokio::time::interval_at(Instant::now() + heartbeat_interval, heartbeat_interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut consumer_open = true;

    while !agent.is_done() {
        let drain_deadline = agent.drain_deadline.unwrap_or_else(Instant::now);
        tokio::select! {
            delivery = consumer.next(), if consumer_open => match delivery {
                Some(Ok(delivery)) => {
                    let acker = delivery.acker.clone();
                    agent.handle_delivery(&delivery.data, acker).await;
                }
                Some(Err(error)) => eprintln!("attune-agent: receive from {job_queue}: {error}"),
                None => {
                    consumer_open = false;
                    let deadline = agent.config.shutdown_deadline;
                    agent.begin_drain(deadline, format!("job queue {job_queue} consumer closed"));
                }
            },
            Some(joined) = agent.tasks.join_next(), if !agent.tasks.is_empty() => {
                agent.finished(joined);
                agent.start_held_jobs().await;
            }
            _ = heartbeat.tick() => {
                let due = heartbeat_event(
                    &agent.config.agent_id,
                    agent.running.keys().copied(),
                    agent.config.heartbeat_when_idle,
                );
                if let Some(event) = due {
                    let _ = agent.events.send(event);
                }
            }
            reason = &mut shutdown, if agent.drain_deadline.is_none() => {
                let deadline = agent.config.shutdown_deadline;
                agent.begin_drain(deadline, reason);
            }
            _ = tokio::time::sleep_until(drain_deadline), if agent.drain_deadline.is_some() && !agent.abandoning => {
                agent.abandon_running();
            }
        }
    }

    if consumer_open {
        if let Err(error) = consume_channel
            .basic_cancel(consumer_tag.as_str().into(), BasicCancelOptions::default())
            .await
        {
            eprintln!("attune-agent: stop consuming {job_queue}: {error}");
        }
    }
    let reason = agent
        .exit_reason
        .take()
        .unwrap_or_else(|| match agent.config.mode {
            Mode::Oneshot => "oneshot execution finished".to_string(),
            Mode::Worker => "stopped".to_string(),
        });
    let _ = agent.events.send(AgentEvent::Deregister {
        agent_id: agent.config.agent_id.clone(),
        reason,
    });
    drop(agent);
    if tokio::time::timeout(FINAL_PUBLISH_LIMIT, publisher.finish())
        .await
        .is_err()
    {
        eprintln!(
            "attune-agent: events still unconfirmed after {}s; exiting anyway",
            FINAL_PUBLISH_LIMIT.as_secs()
        );
    }
    match tokio::time::timeout(CLOSE_LIMIT, connection.close(200, "agent exiting".into())).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => eprintln!("attune-agent: close broker connection: {error}"),
        Err(_) => eprintln!("attune-agent: close broker connection: timed out"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_identity_is_salvaged_from_unreadable_jobs_only() {
        assert_eq!(
            salvage_job_identity(
                br#"{"type":"job","execution_id":42,"protocol_version":9,"runtime":"cobol"}"#
            ),
            Some((42, Some(9)))
        );
        assert_eq!(
            salvage_job_identity(br#"{"execution_id":5}"#),
            Some((5, None))
        );
        assert_eq!(
            salvage_job_identity(br#"{"type":"cancel","execution_id":5}"#),
            None
        );
        assert_eq!(salvage_job_identity(br#"{"type":"job"}"#), None);
        assert_eq!(salvage_job_identity(b"not json"), None);
    }

    #[test]
    fn heartbeats_go_out_while_busy_and_for_a_worker_when_idle() {
        assert_eq!(heartbeat_event("a", [], false), None);
        assert_eq!(
            heartbeat_event("a", [], true),
            Some(AgentEvent::Heartbeat {
                agent_id: "a".into(),
                running: vec![]
            })
        );
        assert_eq!(
            heartbeat_event("a", [7, 3], false),
            Some(AgentEvent::Heartbeat {
                agent_id: "a".into(),
                running: vec![3, 7]
            })
        );
    }

    #[test]
    fn own_hash_is_hex_sha256() {
        let hash = own_sha256();
        assert_eq!(hash.len(), 64);
        assert!(hash.bytes().all(|byte| byte.is_ascii_hexdigit()));
    }
}
