//! Messages between the controller and an agent.
//!
//! The controller sends [`AgentCommand`]s to an agent's own queue
//! ([`crate::queues::agent_job_queue`]); every agent sends [`AgentEvent`]s to the shared
//! [`crate::queues::AGENT_EVENTS_QUEUE`]. All types ignore unknown fields so that old and new
//! agents and servers can talk.

use crate::{ExecutionId, OutputStream, ParameterDelivery, ParameterFormat, Runtime};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Default cap on each captured output stream: 10 MiB.
pub const DEFAULT_OUTPUT_LIMIT_BYTES: u64 = 10 * 1024 * 1024;
/// Default grace period between SIGTERM and SIGKILL.
pub const DEFAULT_KILL_GRACE_SECONDS: u64 = 5;

fn default_output_limit() -> u64 {
    DEFAULT_OUTPUT_LIMIT_BYTES
}

fn default_kill_grace() -> u64 {
    DEFAULT_KILL_GRACE_SECONDS
}

fn default_true() -> bool {
    true
}

/// What the controller asks of an agent.
// One command is decoded per message and moved once: the size difference of the variants
// costs nothing worth a box on every construction and match.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentCommand {
    /// Run one execution.
    Job(Job),
    /// Stop an execution: SIGTERM to its process group, grace period, then SIGKILL.
    Cancel { execution_id: ExecutionId },
    /// Stop taking jobs, finish running ones up to the deadline, then exit.
    Shutdown {
        #[serde(default)]
        deadline_seconds: u64,
    },
}

/// One execution for an agent to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub protocol_version: u32,
    pub execution_id: ExecutionId,
    /// `<pack>.<action>`.
    pub action_ref: String,
    pub pack_ref: String,
    pub runtime: Runtime,
    /// Absolute path of the pack's files inside the container.
    pub pack_dir: String,
    /// Path of the entry point relative to `pack_dir` (already checked not to escape it).
    pub entry_point: String,
    /// Parameters after schema validation and defaults, secrets included.
    #[serde(default)]
    pub parameters: Map<String, Value>,
    /// Names of the parameters marked `secret: true`: never put in env, never logged.
    #[serde(default)]
    pub secret_parameters: Vec<String>,
    #[serde(default)]
    pub parameter_delivery: ParameterDelivery,
    #[serde(default)]
    pub parameter_format: ParameterFormat,
    pub timeout_seconds: u64,
    #[serde(default = "default_kill_grace")]
    pub kill_grace_seconds: u64,
    /// Extra environment for the process (from the action's `container.env`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Cap on each captured output stream; beyond it output is dropped with a marker.
    #[serde(default = "default_output_limit")]
    pub output_limit_bytes: u64,
    /// Send [`AgentEvent::Log`] chunks while the action runs.
    #[serde(default = "default_true")]
    pub stream_logs: bool,
    /// sha256 (hex) of the pack's stored archive: set for a long-lived worker, which finds
    /// the pack's files by it ([`crate::worker`]); a controller's container has them at
    /// `pack_dir` already.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pack_sha256: Option<String>,
}

/// What an agent tells the controller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentEvent {
    /// First message after connecting.
    Register(AgentRegistration),
    /// The execution's process has started.
    Running {
        agent_id: String,
        execution_id: ExecutionId,
        #[serde(default)]
        pid: Option<u32>,
    },
    /// A chunk of live output; `seq` counts from 0 per execution across both streams.
    Log {
        agent_id: String,
        execution_id: ExecutionId,
        seq: u64,
        stream: OutputStream,
        /// The chunk's bytes as output text ([`crate::output`]: lossless, any bytes).
        data: String,
    },
    /// The execution reached its end.
    Finished(JobReport),
    /// The agent is alive; lists the executions it is running.
    Heartbeat {
        agent_id: String,
        #[serde(default)]
        running: Vec<ExecutionId>,
    },
    /// The agent is exiting.
    Deregister {
        agent_id: String,
        #[serde(default)]
        reason: String,
    },
}

impl AgentEvent {
    /// The `type` of every event this build knows.
    pub const TYPES: [&'static str; 6] = [
        "register",
        "running",
        "log",
        "finished",
        "heartbeat",
        "deregister",
    ];

    /// This event's `type` on the wire.
    pub fn event_type(&self) -> &'static str {
        match self {
            AgentEvent::Register(_) => "register",
            AgentEvent::Running { .. } => "running",
            AgentEvent::Log { .. } => "log",
            AgentEvent::Finished(_) => "finished",
            AgentEvent::Heartbeat { .. } => "heartbeat",
            AgentEvent::Deregister { .. } => "deregister",
        }
    }

    /// The execution the event is about, when it is about one.
    pub fn execution_id(&self) -> Option<ExecutionId> {
        match self {
            AgentEvent::Running { execution_id, .. } | AgentEvent::Log { execution_id, .. } => {
                Some(*execution_id)
            }
            AgentEvent::Finished(report) => Some(report.execution_id),
            AgentEvent::Register(_)
            | AgentEvent::Heartbeat { .. }
            | AgentEvent::Deregister { .. } => None,
        }
    }

    /// The agent that sent the event (as the event says; its signature proves it).
    pub fn agent_id(&self) -> &str {
        match self {
            AgentEvent::Register(registration) => &registration.agent_id,
            AgentEvent::Finished(report) => &report.agent_id,
            AgentEvent::Running { agent_id, .. }
            | AgentEvent::Log { agent_id, .. }
            | AgentEvent::Heartbeat { agent_id, .. }
            | AgentEvent::Deregister { agent_id, .. } => agent_id,
        }
    }

    /// The `agent_id` field of any event body, however broken the rest (to check the
    /// signature of a message this build cannot read).
    pub fn claimed_agent_id(bytes: &[u8]) -> Option<String> {
        #[derive(Deserialize)]
        struct Claimed {
            agent_id: String,
        }
        serde_json::from_slice::<Claimed>(bytes)
            .ok()
            .map(|claimed| claimed.agent_id)
    }

    /// Reads one message of an events queue, telling a newer agent's event (a `type` this
    /// build does not know) from a message that is broken.
    pub fn decode(bytes: &[u8]) -> IncomingEvent {
        let error = match serde_json::from_slice::<AgentEvent>(bytes) {
            Ok(event) => return IncomingEvent::Known(event),
            Err(error) => error.to_string(),
        };
        let object = serde_json::from_slice::<Value>(bytes)
            .ok()
            .and_then(|value| match value {
                Value::Object(object) => Some(object),
                _ => None,
            });
        let event_type = object
            .as_ref()
            .and_then(|object| object.get("type"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let execution_id = object
            .as_ref()
            .and_then(|object| object.get("execution_id"))
            .and_then(Value::as_i64);
        match event_type {
            Some(event_type) if !AgentEvent::TYPES.contains(&event_type.as_str()) => {
                IncomingEvent::Unknown {
                    event_type,
                    execution_id,
                }
            }
            event_type => IncomingEvent::Malformed {
                event_type,
                execution_id,
                error,
            },
        }
    }
}

/// A message of an events queue as [`AgentEvent::decode`] reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum IncomingEvent {
    /// An event this build knows.
    Known(AgentEvent),
    /// A JSON object whose `type` this build does not know: a newer agent's event, to be
    /// counted and not applied.
    Unknown {
        event_type: String,
        execution_id: Option<ExecutionId>,
    },
    /// Not an event: not a JSON object, no `type`, or a known `type` whose fields do not parse.
    Malformed {
        event_type: Option<String>,
        execution_id: Option<ExecutionId>,
        error: String,
    },
}

/// Who an agent is and what it can run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRegistration {
    pub agent_id: String,
    pub protocol_version: u32,
    pub agent_version: String,
    /// sha256 of the agent's own binary, hex.
    #[serde(default)]
    pub agent_sha256: String,
    /// `oneshot` or `worker`.
    #[serde(default)]
    pub mode: String,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub runtimes: Vec<DetectedRuntime>,
}

/// An interpreter the agent found in its image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetectedRuntime {
    /// A [`Runtime`] name or a custom name from a hints file.
    pub name: String,
    #[serde(default)]
    pub version: Option<String>,
    pub path: String,
}

/// How an execution ended, as the agent saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobOutcome {
    Succeeded,
    Failed,
    Timeout,
    Canceled,
    /// The agent shut down before the execution could finish.
    Abandoned,
}

/// Whether an agent runs one job and exits, or serves jobs until told to stop
/// (`ATTUNE_AGENT_MODE`, and the `mode` an agent registers with).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentMode {
    /// Run one job, then exit 0 (a per-execution container).
    #[serde(alias = "one-shot")]
    Oneshot,
    /// Serve jobs until SIGTERM or a Shutdown command (a warm or long-lived container).
    Worker,
}

impl AgentMode {
    /// The name used on the wire and in `ATTUNE_AGENT_MODE`.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentMode::Oneshot => "oneshot",
            AgentMode::Worker => "worker",
        }
    }

    /// Reads a mode name (case-insensitive; `one-shot` is accepted too).
    pub fn parse(name: &str) -> Option<AgentMode> {
        match name.trim().to_ascii_lowercase().as_str() {
            "oneshot" | "one-shot" => Some(AgentMode::Oneshot),
            "worker" => Some(AgentMode::Worker),
            _ => None,
        }
    }
}

impl std::fmt::Display for AgentMode {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// Why an execution failed: every failure class, the agent's and the controller's, in one
/// naming style (kebab-case, as stored in `executions.failure_kind`). The agent's kinds are also
/// read in the snake_case older agents send; a kind newer than this build reads as `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    // --- reported by the agent ---
    /// The process ran and exited non-zero or by a signal.
    #[serde(alias = "non_zero_exit")]
    NonZeroExit,
    /// The runtime's interpreter is not in the image.
    #[serde(alias = "interpreter_missing")]
    InterpreterMissing,
    /// The entry point file is missing (or not executable for native).
    #[serde(alias = "entry_point_missing")]
    EntryPointMissing,
    /// Parameters could not be delivered (e.g. the parameter file could not be written).
    #[serde(alias = "parameter_delivery")]
    ParameterDelivery,
    /// The process could not be started.
    Spawn,
    /// The job's protocol version is not supported by this agent.
    #[serde(alias = "unsupported_protocol")]
    UnsupportedProtocol,
    // --- decided by the controller ---
    /// The image was not present and could not be pulled.
    PullFailed,
    /// The agent binary cannot run in the image (architecture).
    ExecFormat,
    /// The agent or pack files could not be put into the container, or the agent never
    /// reported after the container started.
    InjectionFailed,
    /// The container ran out of memory.
    Oom,
    /// The agent or its container was killed (SIGKILL, exit 137) or removed.
    Killed,
    /// The agent exited before reporting a result.
    AgentExited,
    /// A running agent stopped sending heartbeats.
    LeaseExpired,
    /// The action ran past its timeout.
    Timeout,
    /// Someone canceled it.
    Canceled,
    /// The operator's policy refuses the action's image or capabilities.
    NotAllowed,
    /// The action's stored settings are invalid.
    InvalidAction,
    /// The action names no image and there is no default image.
    NoImage,
    /// The action was removed.
    ActionMissing,
    /// Every container of its warm pool stayed busy.
    PoolExhausted,
    /// The Docker engine refused an operation.
    DockerError,
    /// The Docker engine could not be reached.
    DockerUnavailable,
    /// The message queue could not take the job.
    MessageQueue,
    /// The database could not record a step.
    Database,
    /// The controller restarted and the execution's container was gone.
    ControllerRestarted,
    /// The owning controller stopped heartbeating and another took the execution over.
    ControllerLost,
    /// The controller shut down before the action finished (its shutdown grace passed).
    ControllerShutdown,
    /// The agent's report (or another event of the execution) could not be stored after the
    /// events queue's delivery limit; it went to the dead-letter queue, its reason is the error.
    ReportRejected,
    /// A worker could not get the pack's files (download refused, digest mismatch, unpack).
    PackFiles,
    /// No online worker could run the action before its queue timeout.
    NoWorker,
    /// The worker running it went offline (stopped heartbeating or exited).
    WorkerLost,
    /// Anything newer than this build knows.
    #[serde(other)]
    Other,
}

impl FailureKind {
    /// The stored (and wire) name, e.g. `exec-format`.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::NonZeroExit => "non-zero-exit",
            FailureKind::InterpreterMissing => "interpreter-missing",
            FailureKind::EntryPointMissing => "entry-point-missing",
            FailureKind::ParameterDelivery => "parameter-delivery",
            FailureKind::Spawn => "spawn",
            FailureKind::UnsupportedProtocol => "unsupported-protocol",
            FailureKind::PullFailed => "pull-failed",
            FailureKind::ExecFormat => "exec-format",
            FailureKind::InjectionFailed => "injection-failed",
            FailureKind::Oom => "oom",
            FailureKind::Killed => "killed",
            FailureKind::AgentExited => "agent-exited",
            FailureKind::LeaseExpired => "lease-expired",
            FailureKind::Timeout => "timeout",
            FailureKind::Canceled => "canceled",
            FailureKind::NotAllowed => "not-allowed",
            FailureKind::InvalidAction => "invalid-action",
            FailureKind::NoImage => "no-image",
            FailureKind::ActionMissing => "action-missing",
            FailureKind::PoolExhausted => "pool-exhausted",
            FailureKind::DockerError => "docker-error",
            FailureKind::DockerUnavailable => "docker-unavailable",
            FailureKind::MessageQueue => "message-queue",
            FailureKind::Database => "database",
            FailureKind::ControllerRestarted => "controller-restarted",
            FailureKind::ControllerLost => "controller-lost",
            FailureKind::ControllerShutdown => "controller-shutdown",
            FailureKind::ReportRejected => "report-rejected",
            FailureKind::PackFiles => "pack-files",
            FailureKind::NoWorker => "no-worker",
            FailureKind::WorkerLost => "worker-lost",
            FailureKind::Other => "other",
        }
    }

    /// Reads a stored or wire name (either naming style); unknown names are `Other`.
    pub fn from_name(name: &str) -> FailureKind {
        serde_json::from_value(Value::String(name.to_string())).unwrap_or(FailureKind::Other)
    }

    /// Whether an idempotent action that failed this way is requeued once: its agent,
    /// container or controller died, so it may not have run to its end.
    pub fn requeues_idempotent(self) -> bool {
        matches!(
            self,
            FailureKind::Killed
                | FailureKind::AgentExited
                | FailureKind::LeaseExpired
                | FailureKind::ControllerRestarted
                | FailureKind::ControllerLost
                | FailureKind::ControllerShutdown
                | FailureKind::WorkerLost
        )
    }
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// The final report of one execution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobReport {
    pub agent_id: String,
    pub execution_id: ExecutionId,
    pub outcome: JobOutcome,
    #[serde(default)]
    pub failure_kind: Option<FailureKind>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub signal: Option<i32>,
    /// Captured stdout as output text ([`crate::output`]: lossless, any bytes).
    #[serde(default)]
    pub stdout: String,
    /// Captured stderr as output text.
    #[serde(default)]
    pub stderr: String,
    #[serde(default)]
    pub stdout_truncated: bool,
    #[serde(default)]
    pub stderr_truncated: bool,
    /// stdout parsed as JSON when it is JSON, else stdout as a string.
    #[serde(default)]
    pub result: Option<Value>,
    /// A human-readable reason when the outcome is not `succeeded`.
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub duration_ms: u64,
}
