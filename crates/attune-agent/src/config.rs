//! Agent settings: command-line flags with environment fallback, parsed by hand. An agent
//! without an agent id and without secrets on stdin, given an API (`ATTUNE_API_URL`) or a
//! config file, is a long-lived worker: its own settings are [`crate::worker_config`]'s.

use crate::environment::{EnvironmentCache, DEFAULT_BUILD_TIMEOUT};
use crate::worker_config::{parse_worker_settings, wants_worker, HostPaths, WorkerSettings};
use attune_protocol::{queues, signing, worker};
use std::path::PathBuf;
use std::time::Duration;

/// Environment variable: how many jobs a worker runs at once (default 4).
pub const ENV_CONCURRENCY: &str = attune_protocol::queues::ENV_AGENT_CONCURRENCY;
/// Environment variable: seconds between heartbeats while jobs run (default 5).
/// A PEM file of CA certificates trusted for an `amqps://` broker URL (an agent started by
/// hand; the controller sends its agents the CA with their secrets).
pub const ENV_MQ_CA_FILE: &str = "ATTUNE_AGENT_MQ_CA_FILE";
pub const ENV_HEARTBEAT_SECONDS: &str = "ATTUNE_AGENT_HEARTBEAT_SECONDS";
/// Environment variable: deadline for running jobs when the agent gets SIGTERM (default 20).
pub const ENV_SHUTDOWN_SECONDS: &str = "ATTUNE_AGENT_SHUTDOWN_SECONDS";
/// Environment variable: how long to keep retrying the first broker connection (default 30).
pub const ENV_CONNECT_SECONDS: &str = "ATTUNE_AGENT_CONNECT_SECONDS";
/// Environment variable: directory where pack environments are built and reused (a volume
/// shared by containers; default `<ATTUNE_AGENT_WORKDIR>/attune-envs`).
pub const ENV_ENVIRONMENT_CACHE: &str = "ATTUNE_AGENT_ENV_CACHE";
/// Environment variable: the image id (`sha256:...`) environments are keyed by; when unset,
/// `ATTUNE_AGENT_IMAGE` is used.
pub const ENV_IMAGE_ID: &str = "ATTUNE_AGENT_IMAGE_ID";
/// Environment variable: how long building one pack environment may take (default 600).
pub const ENV_ENVIRONMENT_BUILD_SECONDS: &str = "ATTUNE_AGENT_ENV_BUILD_SECONDS";

const DEFAULT_CONCURRENCY: u16 = 4;
const DEFAULT_HEARTBEAT_SECONDS: u64 = 5;
const DEFAULT_SHUTDOWN_SECONDS: u64 = 20;
const DEFAULT_CONNECT_SECONDS: u64 = 30;
/// Directory under the work directory base used when no environment cache is given.
pub const DEFAULT_ENVIRONMENT_CACHE_NAME: &str = "attune-envs";

/// Usage text printed by `--help`.
pub const USAGE: &str = "\
usage: attune-agent [--mq-url URL] [--agent-id ID] [--mode oneshot|worker]
       attune-agent [--config PATH]      (a worker: ATTUNE_API_URL, no agent id)
       attune-agent --detect-only [--json]
       attune-agent --version

Runs Attune actions inside any container: takes jobs from RabbitMQ, runs them, reports back.

options (each falls back to its environment variable):
  --mq-url URL        AMQP URL of the broker          ATTUNE_AGENT_MQ_URL
  --agent-id ID       this agent's id (queue suffix)  ATTUNE_AGENT_ID
  --mode MODE         oneshot (default) or worker     ATTUNE_AGENT_MODE
  --config PATH       a worker's YAML config file     ATTUNE_CONFIG
  --detect-only       print the interpreters found in this image and exit
  --json              with --detect-only: print a JSON array
  --version           print the agent and protocol versions

ATTUNE_AGENT_SECRETS=stdin: read the broker URL and the event key as one JSON line on stdin
  (how the controller starts agents: never in the environment).
other environment: ATTUNE_AGENT_IMAGE, ATTUNE_AGENT_IMAGE_ID, ATTUNE_AGENT_WORKDIR,
  ATTUNE_AGENT_ENV_CACHE, ATTUNE_AGENT_ENV_BUILD_SECONDS, ATTUNE_WORKER_RUNTIMES,
  ATTUNE_AGENT_CONCURRENCY, ATTUNE_AGENT_HEARTBEAT_SECONDS, ATTUNE_AGENT_SHUTDOWN_SECONDS,
  ATTUNE_AGENT_CONNECT_SECONDS, ATTUNE_AGENT_EVENTS_QUEUE

a worker (no agent id, ATTUNE_API_URL set or a config file given or at
  /opt/attune/config/config.yaml) enrolls with the API and serves jobs until SIGTERM:
  ATTUNE_API_URL, ATTUNE_WORKER_TOKEN or ATTUNE_WORKER_TOKEN_FILE, ATTUNE_WORKER_NAME,
  ATTUNE_WORKER_LABELS (k=v,k2=v2), ATTUNE_WORKER_CONCURRENCY (1 to 256, default 4),
  ATTUNE_WORKER_RUNTIMES, ATTUNE__MESSAGE_QUEUE__URL (the broker's address as this worker
  reaches it), ATTUNE_WORKER_PACKS_DIR (default /opt/attune/packs); the config file may set
  worker.{name,labels,concurrency,runtimes}, api_url and message_queue.url
";

/// Whether the agent runs one job or serves many (the protocol's [`AgentMode`]).
pub use attune_protocol::AgentMode as Mode;

/// Everything the running agent needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    pub message_queue_url: String,
    pub agent_id: String,
    pub mode: Mode,
    /// The image the agent runs in, for registration and error messages.
    pub image: Option<String>,
    /// Directory under which each job gets `attune-exec-<execution_id>`.
    pub workdir_base: PathBuf,
    /// Pack environments, keyed by dependency files, image identity and interpreter.
    pub environments: EnvironmentCache,
    /// Jobs run at once (also the consumer prefetch).
    pub concurrency: u16,
    pub heartbeat_interval: Duration,
    /// How long running jobs may continue after SIGTERM before they are abandoned.
    pub shutdown_deadline: Duration,
    /// How long to keep retrying the first broker connection.
    pub connect_timeout: Duration,
    /// Queue every event is published to.
    pub events_queue: String,
    /// Whether the broker URL and the event key come on stdin ([`attune_protocol::signing`]):
    /// `ATTUNE_AGENT_SECRETS=stdin`, as the controller starts its agents.
    pub secrets_on_stdin: bool,
    /// CA certificates (PEM) trusted for an `amqps://` broker URL besides the bundled public
    /// roots: from stdin, or the file `ATTUNE_AGENT_MQ_CA_FILE` names.
    pub message_queue_ca_pem: Option<String>,
    /// The key this agent signs its events with, once read from stdin; without one (an agent
    /// started by hand) events go unsigned, and a controller drops them.
    pub event_key: Option<attune_protocol::signing::Key>,
    /// Kill every other process of the container between two jobs (a warm container's agent,
    /// `ATTUNE_AGENT_SWEEP_PROCESSES=1`).
    pub sweep_processes: bool,
    /// Send a heartbeat every interval even with nothing running (an enrolled worker, whose
    /// heartbeats keep it online); other agents heartbeat only while jobs run.
    pub heartbeat_when_idle: bool,
}

/// A long-lived worker: the agent's settings (its identity, broker and events queue still to
/// come from the enrollment) and the worker's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerInvocation {
    pub agent: AgentConfig,
    pub worker: WorkerSettings,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invocation {
    Version,
    Help,
    DetectOnly {
        json: bool,
    },
    Run(Box<AgentConfig>),
    /// A worker: enroll with the API, then serve as the agent it names.
    Worker(Box<WorkerInvocation>),
}

/// A command line or environment that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("unknown argument {0:?} (see --help)")]
    UnknownArgument(String),
    #[error("option {0} needs a value")]
    MissingValue(&'static str),
    #[error("missing {what}: pass {flag} or set {env}")]
    Missing {
        what: &'static str,
        flag: &'static str,
        env: &'static str,
    },
    #[error("invalid mode {0:?}: expected oneshot or worker")]
    InvalidMode(String),
    #[error(
        "invalid agent id {0:?}: use 1 to 200 characters from a-z, A-Z, 0-9, '.', '_' and '-'"
    )]
    InvalidAgentId(String),
    #[error("invalid {name}={value:?}: expected a whole number from {minimum}")]
    InvalidNumber {
        name: &'static str,
        value: String,
        minimum: u64,
    },
    #[error("invalid ATTUNE_AGENT_SECRETS={0:?}: the only source is stdin")]
    InvalidSecrets(String),
    #[error("read {ENV_MQ_CA_FILE}={path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("missing {what}: {hint}")]
    MissingWorkerSetting { what: &'static str, hint: String },
    /// `setting` names the variable (`ATTUNE_WORKER_LABELS`) or the file's field
    /// (`worker.labels in /opt/attune/config/config.yaml`).
    #[error("invalid {setting}: {reason}")]
    InvalidWorkerSetting { setting: String, reason: String },
    #[error("read config file {path}: {reason}")]
    ConfigFile { path: String, reason: String },
    #[error("--config is for a worker (no agent id), but this agent has agent id {0:?}")]
    ConfigWithAgentId(String),
    #[error("a worker (no agent id, enrolled through {api}) runs in worker mode, not {mode:?}", api = worker::ENV_API_URL)]
    WorkerMode { mode: String },
}

/// Parses the arguments (without the program name), looking up missing settings with `env`.
pub fn parse_invocation<I, E>(arguments: I, env: E) -> Result<Invocation, ConfigError>
where
    I: IntoIterator<Item = String>,
    E: Fn(&str) -> Option<String>,
{
    parse_invocation_on(arguments, env, &HostPaths::system())
}

/// [`parse_invocation`] with the host's files (default config file, `/etc/hostname`) at
/// `host`.
pub fn parse_invocation_on<I, E>(
    arguments: I,
    env: E,
    host: &HostPaths,
) -> Result<Invocation, ConfigError>
where
    I: IntoIterator<Item = String>,
    E: Fn(&str) -> Option<String>,
{
    let mut message_queue_url = None;
    let mut config_file = None;
    let mut agent_id = None;
    let mut mode = None;
    let mut detect_only = false;
    let mut json = false;
    let mut arguments = arguments.into_iter();
    while let Some(argument) = arguments.next() {
        let (flag, inline_value) = match argument.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag.to_string(), Some(value)),
            _ => (argument.clone(), None),
        };
        let mut value_for = |name: &'static str| -> Result<String, ConfigError> {
            match inline_value {
                Some(value) => Ok(value.to_string()),
                None => arguments.next().ok_or(ConfigError::MissingValue(name)),
            }
        };
        match flag.as_str() {
            "--version" | "-V" => return Ok(Invocation::Version),
            "--help" | "-h" => return Ok(Invocation::Help),
            "--detect-only" => detect_only = true,
            "--json" => json = true,
            "--mq-url" => message_queue_url = Some(value_for("--mq-url")?),
            "--agent-id" => agent_id = Some(value_for("--agent-id")?),
            "--mode" => mode = Some(value_for("--mode")?),
            "--config" => config_file = Some(value_for("--config")?),
            _ => return Err(ConfigError::UnknownArgument(argument)),
        }
    }
    if detect_only {
        return Ok(Invocation::DetectOnly { json });
    }
    if json {
        return Err(ConfigError::UnknownArgument(
            "--json (only valid with --detect-only)".to_string(),
        ));
    }

    let non_empty = |value: Option<String>| value.filter(|value| !value.trim().is_empty());
    let secrets_on_stdin = match non_empty(env(signing::ENV_AGENT_SECRETS)).as_deref() {
        None => false,
        Some("stdin") => true,
        Some(other) => return Err(ConfigError::InvalidSecrets(other.to_string())),
    };
    let agent_id = non_empty(agent_id).or_else(|| non_empty(env(queues::ENV_AGENT_ID)));
    if let (Some(agent_id), Some(_)) = (&agent_id, &config_file) {
        return Err(ConfigError::ConfigWithAgentId(agent_id.clone()));
    }
    if agent_id.is_none() && !secrets_on_stdin && wants_worker(config_file.as_deref(), &env, host) {
        let mode = non_empty(mode).or_else(|| non_empty(env(queues::ENV_AGENT_MODE)));
        if let Some(mode) = mode {
            if Mode::parse(&mode) != Some(Mode::Worker) {
                return Err(ConfigError::WorkerMode { mode });
            }
        }
        let worker = parse_worker_settings(config_file, &env, host)?;
        let identity = Identity {
            message_queue_url: String::new(),
            agent_id: String::new(),
            mode: Mode::Worker,
            secrets_on_stdin: false,
        };
        let mut agent = agent_settings(&env, identity, Some(worker.concurrency))?;
        agent.heartbeat_when_idle = true;
        return Ok(Invocation::Worker(Box::new(WorkerInvocation {
            agent,
            worker,
        })));
    }
    let message_queue_url = match non_empty(message_queue_url)
        .or_else(|| non_empty(env(queues::ENV_MESSAGE_QUEUE_URL)))
    {
        Some(url) => url,
        // Read from stdin before the agent connects (see `read_secrets`).
        None if secrets_on_stdin => String::new(),
        None => {
            return Err(ConfigError::Missing {
                what: "broker url",
                flag: "--mq-url",
                env: queues::ENV_MESSAGE_QUEUE_URL,
            })
        }
    };
    let agent_id = agent_id.ok_or(ConfigError::Missing {
        what: "agent id",
        flag: "--agent-id",
        env: queues::ENV_AGENT_ID,
    })?;
    if !is_valid_agent_id(&agent_id) {
        return Err(ConfigError::InvalidAgentId(agent_id));
    }
    let mode = match non_empty(mode).or_else(|| non_empty(env(queues::ENV_AGENT_MODE))) {
        None => Mode::Oneshot,
        Some(name) => match Mode::parse(&name) {
            Some(mode) => mode,
            None => return Err(ConfigError::InvalidMode(name)),
        },
    };
    let identity = Identity {
        message_queue_url,
        agent_id,
        mode,
        secrets_on_stdin,
    };
    agent_settings(&env, identity, None).map(|config| Invocation::Run(Box::new(config)))
}

/// Who an agent is and where its broker is, as its command line says.
struct Identity {
    message_queue_url: String,
    agent_id: String,
    mode: Mode,
    secrets_on_stdin: bool,
}

/// The settings every agent reads from the environment, around its identity; `concurrency`
/// when it is already decided (a worker's).
fn agent_settings<E>(
    env: &E,
    identity: Identity,
    concurrency: Option<u16>,
) -> Result<AgentConfig, ConfigError>
where
    E: Fn(&str) -> Option<String>,
{
    let Identity {
        message_queue_url,
        agent_id,
        mode,
        secrets_on_stdin,
    } = identity;
    let non_empty = |value: Option<String>| value.filter(|value| !value.trim().is_empty());
    let concurrency = match (mode, concurrency) {
        (_, Some(concurrency)) => concurrency,
        (Mode::Oneshot, None) => 1,
        (Mode::Worker, None) => {
            let concurrency = number_from_env(env, ENV_CONCURRENCY, DEFAULT_CONCURRENCY.into(), 1)?;
            u16::try_from(concurrency).map_err(|_| ConfigError::InvalidNumber {
                name: ENV_CONCURRENCY,
                value: concurrency.to_string(),
                minimum: 1,
            })?
        }
    };
    let heartbeat_seconds =
        number_from_env(env, ENV_HEARTBEAT_SECONDS, DEFAULT_HEARTBEAT_SECONDS, 1)?;
    let shutdown_seconds = number_from_env(env, ENV_SHUTDOWN_SECONDS, DEFAULT_SHUTDOWN_SECONDS, 0)?;
    let connect_seconds = number_from_env(env, ENV_CONNECT_SECONDS, DEFAULT_CONNECT_SECONDS, 1)?;
    let workdir_base = non_empty(env(queues::ENV_AGENT_WORKDIR))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    let environment_build_seconds = number_from_env(
        env,
        ENV_ENVIRONMENT_BUILD_SECONDS,
        DEFAULT_BUILD_TIMEOUT.as_secs(),
        1,
    )?;
    let image = non_empty(env(queues::ENV_AGENT_IMAGE));
    let environments = EnvironmentCache {
        root: non_empty(env(ENV_ENVIRONMENT_CACHE))
            .map(PathBuf::from)
            .unwrap_or_else(|| workdir_base.join(DEFAULT_ENVIRONMENT_CACHE_NAME)),
        image_identity: non_empty(env(ENV_IMAGE_ID))
            .or_else(|| image.clone())
            .unwrap_or_default(),
        build_timeout: Duration::from_secs(environment_build_seconds),
    };
    let events_queue = non_empty(env(queues::ENV_AGENT_EVENTS_QUEUE))
        .unwrap_or_else(|| queues::AGENT_EVENTS_QUEUE.to_string());
    let message_queue_ca_pem = match non_empty(env(ENV_MQ_CA_FILE)) {
        Some(path) => {
            Some(
                std::fs::read_to_string(&path).map_err(|error| ConfigError::CaFile {
                    path,
                    reason: error.to_string(),
                })?,
            )
        }
        None => None,
    };

    Ok(AgentConfig {
        message_queue_url,
        agent_id,
        mode,
        image,
        workdir_base,
        environments,
        concurrency,
        heartbeat_interval: Duration::from_secs(heartbeat_seconds),
        shutdown_deadline: Duration::from_secs(shutdown_seconds),
        connect_timeout: Duration::from_secs(connect_seconds),
        events_queue,
        secrets_on_stdin,
        event_key: None,
        message_queue_ca_pem,
        sweep_processes: mode == Mode::Worker
            && non_empty(env(queues::ENV_AGENT_SWEEP_PROCESSES)).as_deref() == Some("1"),
        heartbeat_when_idle: false,
    })
}

/// Agent ids become part of a queue name: keep them short and plain.
pub fn is_valid_agent_id(agent_id: &str) -> bool {
    !agent_id.is_empty()
        && agent_id.len() <= 200
        && agent_id.chars().all(|character| {
            character.is_ascii_alphanumeric() || matches!(character, '.' | '_' | '-')
        })
}

fn number_from_env<E>(
    env: &E,
    name: &'static str,
    default: u64,
    minimum: u64,
) -> Result<u64, ConfigError>
where
    E: Fn(&str) -> Option<String>,
{
    let Some(value) = env(name).filter(|value| !value.trim().is_empty()) else {
        return Ok(default);
    };
    match value.trim().parse::<u64>() {
        Ok(number) if number >= minimum => Ok(number),
        _ => Err(ConfigError::InvalidNumber {
            name,
            value,
            minimum,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(arguments: &[&str], env: &[(&str, &str)]) -> Result<Invocation, ConfigError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        let host = HostPaths {
            default_config_file: PathBuf::from("/nonexistent/attune/config.yaml"),
            hostname_file: PathBuf::from("/nonexistent/hostname"),
        };
        parse_invocation_on(
            arguments.iter().map(|argument| argument.to_string()),
            |name| env.get(name).cloned(),
            &host,
        )
    }

    fn worker_invocation(arguments: &[&str], env: &[(&str, &str)]) -> WorkerInvocation {
        match parse(arguments, env).expect("valid invocation") {
            Invocation::Worker(invocation) => *invocation,
            other => panic!("expected a worker invocation, got {other:?}"),
        }
    }

    #[test]
    fn without_an_agent_id_an_api_url_makes_a_worker() {
        let invocation = worker_invocation(
            &[],
            &[
                ("ATTUNE_API_URL", "http://attune:8080"),
                ("ATTUNE_WORKER_TOKEN", "t0ken"),
                ("ATTUNE_WORKER_NAME", "py-1"),
                ("ATTUNE_WORKER_CONCURRENCY", "3"),
                ("ATTUNE_AGENT_WORKDIR", "/work"),
                ("ATTUNE_AGENT_CONNECT_SECONDS", "7"),
            ],
        );
        assert_eq!(invocation.worker.name, "py-1");
        assert_eq!(invocation.agent.mode, Mode::Worker);
        assert_eq!(invocation.agent.concurrency, 3);
        assert!(invocation.agent.heartbeat_when_idle);
        assert!(!invocation.agent.secrets_on_stdin);
        assert_eq!(invocation.agent.workdir_base, PathBuf::from("/work"));
        assert_eq!(invocation.agent.connect_timeout, Duration::from_secs(7));
        assert_eq!(invocation.agent.agent_id, "", "the enrollment gives it");

        // A config file alone makes a worker too (its api_url is then required).
        let directory = tempfile::tempdir().unwrap();
        let config = directory.path().join("worker.yaml");
        std::fs::write(&config, "api_url: http://file:8080\n").unwrap();
        let config = config.to_str().unwrap();
        let invocation = worker_invocation(&["--config", config], &[("ATTUNE_WORKER_TOKEN", "t")]);
        assert_eq!(invocation.worker.api_url, "http://file:8080");
        let error = parse(&["--config", config], &[]).unwrap_err().to_string();
        assert!(error.contains("ATTUNE_WORKER_TOKEN"), "{error}");
    }

    #[test]
    fn controller_started_agents_stay_what_they_were() {
        // An agent id, or secrets on stdin, keeps the agent a controller's, API URL or not.
        let config = run_config(
            &["--agent-id", "exec-1"],
            &[
                ("ATTUNE_API_URL", "http://attune:8080"),
                ("ATTUNE_AGENT_SECRETS", "stdin"),
            ],
        );
        assert_eq!(config.agent_id, "exec-1");
        assert!(config.secrets_on_stdin);
        assert!(!config.heartbeat_when_idle);
        let error = parse(
            &[],
            &[
                ("ATTUNE_API_URL", "http://attune:8080"),
                ("ATTUNE_AGENT_SECRETS", "stdin"),
            ],
        )
        .unwrap_err();
        assert!(error.to_string().contains("missing agent id"), "{error}");
        let error = parse(&["--config", "/x.yaml", "--agent-id", "a"], &[]).unwrap_err();
        assert_eq!(error, ConfigError::ConfigWithAgentId("a".to_string()));
        let error = parse(
            &["--mode", "oneshot"],
            &[("ATTUNE_API_URL", "http://a"), ("ATTUNE_WORKER_TOKEN", "t")],
        )
        .unwrap_err();
        assert!(error.to_string().contains("worker mode"), "{error}");
    }

    fn run_config(arguments: &[&str], env: &[(&str, &str)]) -> AgentConfig {
        match parse(arguments, env).expect("valid invocation") {
            Invocation::Run(config) => *config,
            other => panic!("expected a run invocation, got {other:?}"),
        }
    }

    #[test]
    fn flags_win_over_environment() {
        let config = run_config(
            &[
                "--mq-url",
                "amqp://flag",
                "--agent-id=from-flag",
                "--mode",
                "worker",
            ],
            &[
                ("ATTUNE_AGENT_MQ_URL", "amqp://env"),
                ("ATTUNE_AGENT_ID", "from-env"),
                ("ATTUNE_AGENT_MODE", "oneshot"),
            ],
        );
        assert_eq!(config.message_queue_url, "amqp://flag");
        assert_eq!(config.agent_id, "from-flag");
        assert_eq!(config.mode, Mode::Worker);
        assert_eq!(config.concurrency, 4);
    }

    #[test]
    fn environment_fills_in_and_defaults_apply() {
        let config = run_config(
            &[],
            &[
                ("ATTUNE_AGENT_MQ_URL", "amqp://env"),
                ("ATTUNE_AGENT_ID", "agent-7"),
                ("ATTUNE_AGENT_IMAGE", "busybox:1.36"),
                ("ATTUNE_AGENT_EVENTS_QUEUE", "test.events"),
            ],
        );
        assert_eq!(config.mode, Mode::Oneshot);
        assert_eq!(config.concurrency, 1);
        assert_eq!(config.image.as_deref(), Some("busybox:1.36"));
        assert_eq!(config.workdir_base, PathBuf::from("/tmp"));
        assert_eq!(
            config.environments,
            EnvironmentCache {
                root: PathBuf::from("/tmp/attune-envs"),
                image_identity: "busybox:1.36".to_string(),
                build_timeout: Duration::from_secs(600),
            }
        );
        assert_eq!(config.heartbeat_interval, Duration::from_secs(5));
        assert_eq!(config.shutdown_deadline, Duration::from_secs(20));
        assert_eq!(config.events_queue, "test.events");
    }

    #[test]
    fn a_broker_ca_file_is_read_and_a_missing_one_named() {
        let directory = tempfile::tempdir().unwrap();
        let ca = directory.path().join("ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let base = [
            ("ATTUNE_AGENT_MQ_URL", "amqps://env"),
            ("ATTUNE_AGENT_ID", "a"),
        ];
        let with_ca = [base[0], base[1], (ENV_MQ_CA_FILE, ca.to_str().unwrap())];
        let config = run_config(&[], &with_ca);
        assert_eq!(
            config.message_queue_ca_pem.as_deref(),
            Some("-----BEGIN CERTIFICATE-----\n")
        );
        assert_eq!(run_config(&[], &base).message_queue_ca_pem, None);
        let missing = [base[0], base[1], (ENV_MQ_CA_FILE, "/nonexistent/ca.pem")];
        let error = parse(&[], &missing).err().unwrap().to_string();
        assert!(
            error.starts_with("read ATTUNE_AGENT_MQ_CA_FILE=/nonexistent/ca.pem: "),
            "{error}"
        );
    }

    #[test]
    fn environment_cache_settings_come_from_environment() {
        let config = run_config(
            &[],
            &[
                ("ATTUNE_AGENT_MQ_URL", "amqp://env"),
                ("ATTUNE_AGENT_ID", "agent-7"),
                ("ATTUNE_AGENT_IMAGE", "python:3.11-slim"),
                ("ATTUNE_AGENT_IMAGE_ID", "sha256:0123"),
                ("ATTUNE_AGENT_WORKDIR", "/work"),
                ("ATTUNE_AGENT_ENV_CACHE", "/opt/attune/envs"),
                ("ATTUNE_AGENT_ENV_BUILD_SECONDS", "90"),
            ],
        );
        assert_eq!(config.workdir_base, PathBuf::from("/work"));
        assert_eq!(config.environments.root, PathBuf::from("/opt/attune/envs"));
        assert_eq!(config.environments.image_identity, "sha256:0123");
        assert_eq!(config.environments.build_timeout, Duration::from_secs(90));

        let config = run_config(
            &[],
            &[
                ("ATTUNE_AGENT_MQ_URL", "amqp://env"),
                ("ATTUNE_AGENT_ID", "agent-7"),
                ("ATTUNE_AGENT_WORKDIR", "/work"),
            ],
        );
        assert_eq!(config.environments.root, PathBuf::from("/work/attune-envs"));
        assert_eq!(config.environments.image_identity, "");
    }

    #[test]
    fn worker_concurrency_comes_from_environment() {
        let config = run_config(
            &["--mode", "worker"],
            &[
                ("ATTUNE_AGENT_MQ_URL", "amqp://env"),
                ("ATTUNE_AGENT_ID", "agent-7"),
                ("ATTUNE_AGENT_CONCURRENCY", "9"),
            ],
        );
        assert_eq!(config.concurrency, 9);
    }

    #[test]
    fn missing_and_invalid_settings_are_named() {
        let error = parse(&[], &[("ATTUNE_AGENT_ID", "a")]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "missing broker url: pass --mq-url or set ATTUNE_AGENT_MQ_URL"
        );
        let error = parse(&["--mq-url", "amqp://x"], &[]).unwrap_err();
        assert!(error.to_string().contains("ATTUNE_AGENT_ID"), "{error}");
        let error = parse(&["--mq-url", "amqp://x", "--agent-id", "a b"], &[]).unwrap_err();
        assert!(matches!(error, ConfigError::InvalidAgentId(_)), "{error}");
        let error = parse(
            &[
                "--mq-url",
                "amqp://x",
                "--agent-id",
                "a",
                "--mode",
                "daemon",
            ],
            &[],
        )
        .unwrap_err();
        assert_eq!(error, ConfigError::InvalidMode("daemon".to_string()));
        let error = parse(&["--mode"], &[]).unwrap_err();
        assert_eq!(error, ConfigError::MissingValue("--mode"));
        let error = parse(&["--frobnicate"], &[]).unwrap_err();
        assert_eq!(
            error,
            ConfigError::UnknownArgument("--frobnicate".to_string())
        );
        let error = parse(
            &["--mq-url", "amqp://x", "--agent-id", "a"],
            &[("ATTUNE_AGENT_HEARTBEAT_SECONDS", "soon")],
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("ATTUNE_AGENT_HEARTBEAT_SECONDS"),
            "{error}"
        );
    }

    #[test]
    fn version_and_detection_need_no_broker() {
        assert_eq!(parse(&["--version"], &[]).unwrap(), Invocation::Version);
        assert_eq!(
            parse(&["--detect-only", "--json"], &[]).unwrap(),
            Invocation::DetectOnly { json: true }
        );
        assert_eq!(
            parse(&["--detect-only"], &[]).unwrap(),
            Invocation::DetectOnly { json: false }
        );
    }
}
