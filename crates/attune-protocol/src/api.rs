//! HTTP API bodies shared by `attune-server` and the `attune` CLI.
//!
//! Timestamps are RFC 3339 strings so this crate needs no time library.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Lifecycle of an execution: requested → scheduled → running → a terminal status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionStatus {
    Requested,
    Scheduled,
    Running,
    Succeeded,
    Failed,
    Timeout,
    Canceled,
    Abandoned,
}

impl ExecutionStatus {
    pub const ALL: [ExecutionStatus; 8] = [
        ExecutionStatus::Requested,
        ExecutionStatus::Scheduled,
        ExecutionStatus::Running,
        ExecutionStatus::Succeeded,
        ExecutionStatus::Failed,
        ExecutionStatus::Timeout,
        ExecutionStatus::Canceled,
        ExecutionStatus::Abandoned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionStatus::Requested => "requested",
            ExecutionStatus::Scheduled => "scheduled",
            ExecutionStatus::Running => "running",
            ExecutionStatus::Succeeded => "succeeded",
            ExecutionStatus::Failed => "failed",
            ExecutionStatus::Timeout => "timeout",
            ExecutionStatus::Canceled => "canceled",
            ExecutionStatus::Abandoned => "abandoned",
        }
    }

    /// True once nothing can change the status any more.
    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            ExecutionStatus::Requested | ExecutionStatus::Scheduled | ExecutionStatus::Running
        )
    }

    /// The statuses an execution may move to from `self`: the one table of legal transitions.
    pub fn allowed_next(self) -> &'static [ExecutionStatus] {
        use ExecutionStatus::*;
        match self {
            Requested => &[Scheduled, Failed, Canceled],
            Scheduled => &[Running, Failed, Timeout, Canceled, Abandoned],
            Running => &[Succeeded, Failed, Timeout, Canceled, Abandoned],
            Succeeded | Failed | Timeout | Canceled | Abandoned => &[],
        }
    }

    /// Whether moving from `self` to `next` is legal.
    pub fn can_become(self, next: ExecutionStatus) -> bool {
        self.allowed_next().contains(&next)
    }

    /// The statuses from which `next` may be reached.
    pub fn allowed_previous(next: ExecutionStatus) -> Vec<ExecutionStatus> {
        ExecutionStatus::ALL
            .into_iter()
            .filter(|previous| previous.can_become(next))
            .collect()
    }
}

impl fmt::Display for ExecutionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ExecutionStatus {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        ExecutionStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == name)
            .ok_or_else(|| {
                format!(
                    "unknown execution status {name:?} (known: requested, scheduled, running, succeeded, failed, timeout, canceled, abandoned)"
                )
            })
    }
}

/// Whether the controller pulls an action's image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PullPolicy {
    #[default]
    IfNotPresent,
    Always,
    Never,
}

/// Resource limits of an action's container (`resources:` under `container:`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ResourceSpec {
    /// A quantity such as `256Mi`, `1Gi`, `512M` or a number of bytes.
    #[serde(default)]
    pub memory: Option<String>,
    /// CPUs, e.g. `0.5`.
    #[serde(default)]
    pub cpus: Option<f64>,
    /// Process limit.
    #[serde(default)]
    pub pids: Option<i64>,
}

/// Whether an action gets a fresh container or a warm one from a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    /// A container used once and destroyed.
    PerExecution,
    /// A warm container of the action's pool, reused within the same pack.
    Pooled,
}

/// Warm pool settings of an action (`pool:`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolSpec {
    /// Ready containers kept waiting.
    pub min_idle: u32,
    /// Most containers alive at once (ready, busy or starting).
    pub max: u32,
    /// An idle container older than this is retired.
    pub idle_timeout_seconds: u64,
    /// A container is retired after this many executions.
    pub max_uses: u32,
}

impl Default for PoolSpec {
    fn default() -> Self {
        PoolSpec {
            min_idle: 1,
            max: 8,
            idle_timeout_seconds: 300,
            max_uses: 100,
        }
    }
}

/// The image an action runs in and how its container is set up.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub image: String,
    #[serde(default)]
    pub pull_policy: PullPolicy,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default)]
    pub resources: Option<ResourceSpec>,
    /// Read-only root filesystem (the agent works in a tmpfs).
    #[serde(default)]
    pub read_only: bool,
    /// Capabilities added back after dropping all (checked against the operator's allow-list).
    #[serde(default)]
    pub cap_add: Vec<String>,
}

/// Body of `POST /api/v1/executions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateExecutionRequest {
    pub action: String,
    #[serde(default)]
    pub parameters: Map<String, Value>,
}

/// An execution as the API shows it; secret parameters are masked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionView {
    pub id: i64,
    pub action: String,
    pub status: ExecutionStatus,
    #[serde(default)]
    pub parameters: Map<String, Value>,
    #[serde(default)]
    pub result: Option<Value>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub signal: Option<i32>,
    /// How long the action's process ran, as its agent measured it.
    #[serde(default)]
    pub duration_ms: Option<u64>,
    #[serde(default)]
    pub stdout: String,
    #[serde(default)]
    pub stderr: String,
    #[serde(default)]
    pub stdout_truncated: bool,
    #[serde(default)]
    pub stderr_truncated: bool,
    /// Why the execution did not succeed.
    #[serde(default)]
    pub error: Option<String>,
    /// A short class of that reason: `non-zero-exit`, `interpreter-missing`, `pull-failed`,
    /// `oom`, `killed`, `timeout`, `lease-expired`, ...
    #[serde(default)]
    pub failure_kind: Option<crate::FailureKind>,
    /// The execution this one retries (idempotent actions are requeued once).
    #[serde(default)]
    pub retry_of: Option<i64>,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub container_id: Option<String>,
    #[serde(default)]
    pub agent_id: Option<String>,
    /// The controller that owns (or owned) the execution.
    #[serde(default)]
    pub controller_id: Option<String>,
    /// The long-lived worker it was routed to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// Why a requested execution still waits (`waiting for a worker with runtime ruby`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_reason: Option<String>,
    pub requested_at: String,
    #[serde(default)]
    pub scheduled_at: Option<String>,
    #[serde(default)]
    pub started_at: Option<String>,
    #[serde(default)]
    pub finished_at: Option<String>,
}

/// Body of every list endpoint (`GET /api/v1/packs`, `/actions`, `/executions`, logs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct List<T> {
    pub items: Vec<T>,
}

/// A registered pack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackView {
    #[serde(rename = "ref")]
    pub pack_ref: String,
    #[serde(default)]
    pub label: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub actions: Vec<String>,
    pub registered_at: String,
}

/// A registered action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionView {
    #[serde(rename = "ref")]
    pub action_ref: String,
    pub pack: String,
    #[serde(default)]
    pub label: String,
    #[serde(default)]
    pub description: String,
    pub runner_type: String,
    pub entry_point: String,
    /// The parameters' JSON Schema.
    #[serde(default)]
    pub parameters: Value,
    pub parameter_delivery: crate::ParameterDelivery,
    pub parameter_format: crate::ParameterFormat,
    pub timeout: u64,
    #[serde(default)]
    pub container: Option<ContainerSpec>,
    /// `None`: the server's default (pooled when a pool is configured).
    #[serde(default)]
    pub isolation: Option<Isolation>,
    #[serde(default)]
    pub pool: Option<PoolSpec>,
    /// Safe to run twice: requeued once if its agent dies mid-run.
    #[serde(default)]
    pub idempotent: bool,
}

/// A chunk of an execution's live output (`GET /api/v1/executions/{id}/logs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogChunkView {
    pub seq: u64,
    pub stream: crate::OutputStream,
    pub data: String,
}

/// Every error response: a short machine-friendly `error` and a human `detail`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub detail: String,
}

/// A warm pool (`GET /api/v1/pools`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolView {
    /// Identifies the pool: pack, image digest, agent version and resource class.
    /// The controller whose pool this is.
    #[serde(default)]
    pub controller_id: String,
    pub key: String,
    pub pack: String,
    pub image: String,
    #[serde(default)]
    pub image_id: String,
    #[serde(default)]
    pub agent_sha256: String,
    #[serde(default)]
    pub resource_class: String,
    /// Started and registered, waiting for work.
    pub ready: u32,
    /// Running an execution.
    pub busy: u32,
    /// Being created or waiting for its agent to register.
    pub starting: u32,
    pub total_created: u64,
    pub retired: u64,
    pub min_idle: u32,
    pub max: u32,
}

/// A container the controller manages (`GET /api/v1/containers`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerView {
    /// The controller that manages the container.
    #[serde(default)]
    pub controller_id: String,
    pub container_id: String,
    /// `idle`, `busy` or `starting` for pool containers; `running` for per-execution ones.
    pub state: String,
    #[serde(default)]
    pub pool: Option<String>,
    #[serde(default)]
    pub execution_id: Option<i64>,
    #[serde(default)]
    pub agent_id: Option<String>,
    #[serde(default)]
    pub image: String,
    /// Executions this container has run.
    #[serde(default)]
    pub uses: u32,
}

/// What an API token may do, after upstream Attune's permission sets. Each role includes the
/// ones before it: a viewer reads everything but tokens; an executor also runs and cancels
/// executions; an editor also registers and replaces packs; an admin also manages tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Executor,
    Editor,
    Admin,
    /// A long-lived worker's token: enrolls the worker and downloads pack files, nothing
    /// else; outside the chain of the others (an admin token cannot enroll a worker).
    Worker,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Viewer,
        Role::Executor,
        Role::Editor,
        Role::Admin,
        Role::Worker,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Executor => "executor",
            Role::Editor => "editor",
            Role::Admin => "admin",
            Role::Worker => "worker",
        }
    }

    /// Whether a token of this role may do what `needed` may: viewer < executor < editor <
    /// admin, each doing what the smaller ones do; `worker` only what needs `worker`.
    pub fn allows(self, needed: Role) -> bool {
        match (self, needed) {
            (Role::Worker, needed) => needed == Role::Worker,
            (_, Role::Worker) => false,
            (role, needed) => role >= needed,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == text)
            .ok_or_else(|| {
                format!("unknown role {text:?}: roles are viewer, executor, editor, admin, worker")
            })
    }
}

/// An API token as listed (`GET /api/v1/tokens`): never the token itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenView {
    pub id: i64,
    pub name: String,
    pub role: Role,
    pub created_at: String,
    #[serde(default)]
    pub revoked_at: Option<String>,
}

/// `POST /api/v1/tokens`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateTokenRequest {
    pub name: String,
    pub role: Role,
}

/// The answer to `POST /api/v1/tokens`: the token, shown this once (only its hash is kept).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreatedToken {
    pub token: String,
    #[serde(flatten)]
    pub view: TokenView,
}

/// `GET /api/v1/whoami`: the token a request was made with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WhoAmI {
    pub token_id: i64,
    pub name: String,
    pub role: Role,
}

/// How a runtime prepares a pack's dependencies (upstream Attune's `environment.env_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeEnvironmentKind {
    /// A Python virtualenv (`requirements.txt`).
    Virtualenv,
    /// `node_modules` installed with npm (`package.json`).
    NodeModules,
    /// Gems installed with bundler (`Gemfile`).
    Bundler,
    /// The runtime's own commands.
    Custom,
    /// Anything newer than this build knows.
    #[serde(other)]
    Other,
}

impl RuntimeEnvironmentKind {
    /// The kinds a runtime file may name.
    pub const NAMED: [RuntimeEnvironmentKind; 4] = [
        RuntimeEnvironmentKind::Virtualenv,
        RuntimeEnvironmentKind::NodeModules,
        RuntimeEnvironmentKind::Bundler,
        RuntimeEnvironmentKind::Custom,
    ];

    /// The wire name, e.g. `node_modules`.
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeEnvironmentKind::Virtualenv => "virtualenv",
            RuntimeEnvironmentKind::NodeModules => "node_modules",
            RuntimeEnvironmentKind::Bundler => "bundler",
            RuntimeEnvironmentKind::Custom => "custom",
            RuntimeEnvironmentKind::Other => "other",
        }
    }
}

impl fmt::Display for RuntimeEnvironmentKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl FromStr for RuntimeEnvironmentKind {
    type Err = String;

    /// One of [`RuntimeEnvironmentKind::NAMED`], case-insensitively.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let lowered = text.trim().to_ascii_lowercase();
        RuntimeEnvironmentKind::NAMED
            .into_iter()
            .find(|kind| kind.as_str() == lowered)
            .ok_or_else(|| {
                format!("unknown environment type {text:?} (known: virtualenv, node_modules, bundler, custom)")
            })
    }
}

/// How an environment variable of a runtime's environment is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnvVarOperation {
    /// Replaces the variable.
    #[default]
    Set,
    /// Goes before the existing value, joined by the separator.
    Prepend,
    /// Goes after the existing value, joined by the separator.
    Append,
}

/// One environment variable a runtime sets for its actions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeEnvVar {
    #[serde(default)]
    pub operation: EnvVarOperation,
    /// May hold the template variables (`{env_dir}/node_modules`).
    pub value: String,
    /// For prepend and append (`:` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub separator: Option<String>,
}

/// How a runtime installs a pack's dependencies before its first execution. Commands are
/// argument vectors that may hold upstream Attune's template variables: `{interpreter}`,
/// `{env_dir}`, `{pack_dir}`, `{manifest_path}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeEnvironment {
    pub kind: RuntimeEnvironmentKind,
    /// The pack file that asks for an environment (`requirements.txt`).
    #[serde(default)]
    pub manifest_file: Option<String>,
    /// Makes the environment (`python3 -m venv {env_dir}`); empty: nothing to make.
    #[serde(default)]
    pub create_command: Vec<String>,
    /// Installs the manifest's dependencies into it.
    #[serde(default)]
    pub install_command: Vec<String>,
    /// The interpreter inside the environment, when it has its own (`{env_dir}/bin/python`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interpreter_path: Option<String>,
    #[serde(default)]
    pub env_vars: BTreeMap<String, RuntimeEnvVar>,
}

/// A runtime of the registry (`GET /api/v1/runtimes`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuntimeView {
    /// `core.python`, `<pack>.<name>`, or `detected.<name>` for one a worker reported.
    #[serde(rename = "ref")]
    pub runtime_ref: String,
    pub name: String,
    /// The pack whose `runtimes/*.yaml` defines it; `None` for templates and detected ones.
    #[serde(default)]
    pub pack_ref: Option<String>,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Interpreter binaries, in lookup order.
    #[serde(default)]
    pub interpreters: Vec<String>,
    #[serde(default)]
    pub file_extension: Option<String>,
    #[serde(default)]
    pub version_command: Option<String>,
    #[serde(default)]
    pub version_regex: Option<String>,
    #[serde(default)]
    pub environment: Option<RuntimeEnvironment>,
    /// Registered because a worker reported it and no record covered it.
    #[serde(default)]
    pub auto_detected: bool,
    /// RFC 3339.
    pub created_at: String,
}
