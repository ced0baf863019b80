//! Server settings: defaults < config file < `ATTUNE__SECTION__KEY` environment < command-line flags.

use attune_controller::delivery::AgentDelivery;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Every setting of `attune-server`.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub message_queue: MessageQueueSettings,
    pub workers: WorkerSettings,
    pub agent: AgentDownloadSettings,
    pub docker: DockerSettings,
    pub executor: ExecutorSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServerSettings {
    /// Address the HTTP API listens on.
    pub bind: String,
    /// Largest accepted pack upload, in bytes.
    pub max_pack_bytes: u64,
    /// Largest accepted JSON request body, in bytes (a larger one is 413).
    pub max_json_bytes: usize,
    /// Seconds an `Idempotency-Key` of `POST /api/v1/executions` answers with the execution it
    /// created; after that the key is new again (and its record is deleted).
    pub idempotency_key_ttl_seconds: u64,
    /// Where the first start on a database without API tokens writes its admin token (mode
    /// 0600). Later starts leave it alone.
    pub admin_token_file: std::path::PathBuf,
    /// The keyring secret parameters are sealed with (AES-256-GCM): lines `<id>:<64 hex>`,
    /// the first one current; written with one random key (mode 0600) when missing. Every
    /// server of a deployment needs the same file.
    pub secrets_key_file: std::path::PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    pub url: String,
    pub max_connections: u32,
}

/// Agent binaries over HTTP (`[agent]`), for containers that fetch their agent.
#[derive(Debug, Clone, Deserialize)]
pub struct AgentDownloadSettings {
    /// Where `attune-agent-<arch>` (and `attune-sensor-agent-<arch>`) are; empty means the
    /// directory of `docker.agent_binary`.
    pub binary_dir: PathBuf,
    /// When set, `GET /api/v1/agent/*` needs it in `X-Agent-Token` or `?token=`; empty (the
    /// default, as upstream) serves the binaries to anyone who reaches the API.
    pub bootstrap_token: String,
}

impl Settings {
    /// The directory agent binaries are served from.
    pub fn agent_binary_dir(&self) -> PathBuf {
        if !self.agent.binary_dir.as_os_str().is_empty() {
            return self.agent.binary_dir.clone();
        }
        self.docker
            .agent_binary
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }
}

/// Long-lived workers (`[workers]`).
#[derive(Debug, Clone, Deserialize)]
pub struct WorkerSettings {
    /// How often workers heartbeat; one silent for three is offline and what it ran ends
    /// `worker-lost`.
    pub heartbeat_seconds: u64,
    /// How long an action without an image waits for a capable worker before it ends
    /// `no-worker`.
    pub queue_timeout_seconds: u64,
    /// The queue (and exchange) every worker of this deployment reports to; every
    /// controller-role server on the same database consumes it. Deployments sharing a broker
    /// need their own.
    pub events_queue: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MessageQueueSettings {
    /// AMQP URL the server uses.
    pub url: String,
    /// AMQP URL handed to agents in containers (defaults to `url`; differs when the
    /// containers are not on the host network).
    pub agent_url: Option<String>,
    /// Queue this controller's agents report to; empty (the default) means
    /// `attune.controller.<controller id>.events`. Each controller must have its own.
    pub events_queue: String,
    /// How long a command to an agent waits for a lost broker connection to come back before
    /// its execution fails (the server reconnects with backoff meanwhile; no new executions
    /// are claimed while the broker is unreachable).
    pub publish_patience_seconds: u64,
    /// How agents log in: `per-agent` (the default: each agent gets a broker account of its
    /// own that reaches only its job queue and this controller's events exchange, made
    /// through the management API) or `shared` (every agent uses `agent_url`'s account; only
    /// for a broker without the management plugin — any agent can then read or forge any
    /// other's messages, and the server says so at start).
    pub agent_credentials: AgentCredentials,
    /// RabbitMQ's management API (per-agent accounts are made there), logged in to as the
    /// user of `url`, which needs the `administrator` tag.
    pub management_url: String,
    /// A PEM file of the CA certificates that sign the broker's certificate, for `amqps://`
    /// URLs (the server's and, sent with their secrets, the agents'); empty uses the bundled
    /// public roots (webpki-roots).
    pub tls_ca_file: PathBuf,
}

/// How agents log in to the broker (`message_queue.agent_credentials`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentCredentials {
    PerAgent,
    Shared,
}

impl MessageQueueSettings {
    /// The URL agents should use.
    pub fn url_for_agents(&self) -> &str {
        self.agent_url.as_deref().unwrap_or(&self.url)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct DockerSettings {
    /// Engine address (`unix:///var/run/docker.sock`); unset uses DOCKER_HOST or the default socket.
    pub host: Option<String>,
    /// Network mode for action containers (`host`, `bridge` or a network name).
    pub network: String,
    /// The static agent binary injected into containers.
    pub agent_binary: PathBuf,
    /// Remove containers after their execution ends (turn off only to debug).
    pub remove_containers: bool,
    /// Image for actions that name none; unset means such actions fail with a clear error.
    pub default_image: Option<String>,
    /// Process limit per container.
    pub pids_limit: i64,
    /// Open-files limit per container.
    pub nofile_limit: i64,
    /// How the agent reaches action containers: `auto` (a shared read-only volume when the
    /// engine is local, else put-archive), `volume` or `put-archive`.
    pub agent_delivery: AgentDelivery,
    /// Memory limit of actions that set none (`512Mi`, `1G`, bytes; empty or `none`: no
    /// limit). Swap is never added: memory-swap equals memory.
    pub default_memory: String,
    /// Images actions may run in, with `*` and `?` wildcards (`busybox:*`, `python:3.11-*`);
    /// empty allows every image.
    pub allowed_images: Vec<String>,
    /// Capabilities an action may add back after all are dropped (`NET_BIND_SERVICE`);
    /// empty allows none.
    pub allowed_capabilities: Vec<String>,
    /// Most memory an action's `resources.memory` may ask for (`8Gi`, the pack format's
    /// units; empty or `none`: only the format's 1Ti). Refused at submit (422) and at launch.
    pub max_memory: String,
    /// Most CPUs an action's `resources.cpus` may ask for; unset means the docker host's CPUs
    /// (which the controller checks at launch).
    #[serde(default)]
    pub max_cpus: Option<f64>,
    /// Most processes an action's `resources.pids` may ask for.
    pub max_pids: i64,
    /// Size at which a container's json-file log is rotated (`10m`; k, m or g); two files are
    /// kept, so a container's output takes at most twice this on the engine's disk.
    pub log_max_size: String,
    /// Credentials for pulls, by registry host (`docker.io` for unqualified images):
    /// `[docker.registry_auth."ghcr.io"] username = "..." password = "..."` in a settings
    /// file, or `ATTUNE__DOCKER__REGISTRY_AUTH='{"ghcr.io": {"username": "...", "password":
    /// "..."}}'` (JSON) in the environment. Passwords are never logged.
    #[serde(default)]
    pub registry_auth: attune_docker::RegistryAuth,
}

impl DockerSettings {
    /// `default_memory` in bytes (`None`: no limit).
    pub fn default_memory_bytes(&self) -> Option<i64> {
        attune_controller::limits::parse_default_memory(&self.default_memory)
            .ok()
            .flatten()
    }

    /// The allow-lists, ceilings and log bound as a policy (checked valid by
    /// [`Settings::load`]).
    pub fn execution_policy(&self) -> attune_controller::limits::ExecutionPolicy {
        let policy = attune_controller::limits::ExecutionPolicy::new(
            &self.allowed_images,
            &self.allowed_capabilities,
            self.default_image.clone(),
        )
        .unwrap_or_default()
        .with_ceilings(self.resource_ceilings().unwrap_or_default());
        policy
            .clone()
            .with_log_max_size(&self.log_max_size)
            .unwrap_or(policy)
    }

    /// `max_memory`, `max_cpus` and `max_pids`; an error names the setting.
    pub fn resource_ceilings(
        &self,
    ) -> Result<attune_controller::limits::ResourceCeilings, (&'static str, String)> {
        attune_controller::limits::ResourceCeilings::new(
            &self.max_memory,
            self.max_cpus,
            Some(self.max_pids),
        )
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ExecutorSettings {
    /// Executions run at once by this server.
    pub concurrency: usize,
    /// Cap per captured output stream, bytes.
    pub output_limit_bytes: u64,
    /// Seconds between SIGTERM and SIGKILL on timeout or cancel.
    pub kill_grace_seconds: u64,
    /// Seconds an agent may take from container start to reporting `running`.
    pub agent_start_timeout_seconds: u64,
    /// Seconds a running execution's agent may go without a heartbeat (it beats every 5 s)
    /// before the execution is ended as `lease-expired`.
    pub lease_seconds: u64,
    /// Identity of this controller, put on the labels of every container it creates; it
    /// adopts or removes only containers carrying its own id. Defaults to the host name.
    pub controller_id: String,
    /// Seconds between sweeps removing containers whose execution ended or is unknown.
    pub reconcile_interval_seconds: u64,
    /// A container younger than this many seconds is never swept (its creation may still be
    /// in flight).
    pub reconcile_grace_seconds: u64,
    /// Seconds between this controller's heartbeats in the `controllers` table.
    pub controller_heartbeat_seconds: u64,
    /// Seconds another controller may go without a heartbeat before this one takes over its
    /// live executions (and before the API stops counting it as live).
    pub controller_grace_seconds: u64,
    /// At shutdown, how long running executions may go on; then they end `abandoned`
    /// (idempotent ones requeued) and their containers are removed.
    pub shutdown_grace_seconds: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    /// `text` or `json`.
    pub format: String,
    /// A tracing filter, e.g. `info,attune_server=debug`.
    pub level: String,
}

/// Values given on the command line; each wins over every other source.
#[derive(Debug, Clone, Default)]
pub struct SettingsOverrides {
    pub bind: Option<String>,
    pub database_url: Option<String>,
    pub message_queue_url: Option<String>,
    pub log_format: Option<String>,
    pub agent_binary: Option<PathBuf>,
}

/// Why the settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("load settings: {0}")]
    Load(#[from] config::ConfigError),
    #[error("invalid setting {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

const DEFAULTS: &str = r#"
[server]
bind = "127.0.0.1:8080"
max_pack_bytes = 16777216
max_json_bytes = 2097152
idempotency_key_ttl_seconds = 86400
admin_token_file = "attune-admin-token"
secrets_key_file = "attune-secrets-key"

[database]
url = "postgres://postgres:postgres@127.0.0.1:5432/attune"
max_connections = 16

[message_queue]
url = "amqp://guest:guest@127.0.0.1:5672/%2f"
events_queue = ""
publish_patience_seconds = 60
agent_credentials = "per-agent"
management_url = "http://127.0.0.1:15672"
tls_ca_file = ""

[agent]
binary_dir = ""
bootstrap_token = ""

[workers]
heartbeat_seconds = 5
queue_timeout_seconds = 300
events_queue = "attune.workers.events"

[docker]
network = "host"
agent_binary = "agent-dist/attune-agent-x86_64"
remove_containers = true
pids_limit = 512
nofile_limit = 4096
agent_delivery = "auto"
default_memory = "512Mi"
allowed_images = []
allowed_capabilities = []
max_memory = "8Gi"
max_pids = 4096
log_max_size = "10m"

[executor]
concurrency = 16
output_limit_bytes = 10485760
kill_grace_seconds = 5
agent_start_timeout_seconds = 30
lease_seconds = 20
controller_id = ""
reconcile_interval_seconds = 30
reconcile_grace_seconds = 60
controller_heartbeat_seconds = 2
controller_grace_seconds = 10
shutdown_grace_seconds = 30

[log]
format = "text"
level = "info"
"#;

impl Settings {
    /// Loads the layers in order; `config_file` may be `None`.
    pub fn load(
        config_file: Option<&Path>,
        overrides: &SettingsOverrides,
    ) -> Result<Settings, SettingsError> {
        Self::load_from_env(config_file, overrides, None)
    }

    /// Like [`Settings::load`], with the environment given explicitly (for tests).
    pub fn load_from_env(
        config_file: Option<&Path>,
        overrides: &SettingsOverrides,
        environment: Option<std::collections::HashMap<String, String>>,
    ) -> Result<Settings, SettingsError> {
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
        if let Some(path) = config_file {
            builder = builder.add_source(config::File::from(path).required(true));
        }
        let mut environment_source = config::Environment::with_prefix("ATTUNE")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("docker.allowed_images")
            .with_list_parse_key("docker.allowed_capabilities");
        if let Some(environment) = environment {
            environment_source = environment_source.source(Some(environment));
        }
        builder = builder.add_source(environment_source);
        builder = builder
            .set_override_option("server.bind", overrides.bind.clone())?
            .set_override_option("database.url", overrides.database_url.clone())?
            .set_override_option("message_queue.url", overrides.message_queue_url.clone())?
            .set_override_option("log.format", overrides.log_format.clone())?
            .set_override_option(
                "docker.agent_binary",
                overrides
                    .agent_binary
                    .as_ref()
                    .map(|path| path.display().to_string()),
            )?;
        let mut settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        if settings.executor.controller_id.is_empty() {
            settings.executor.controller_id = default_controller_id();
        }
        if settings.message_queue.events_queue.is_empty() {
            settings.message_queue.events_queue =
                attune_protocol::queues::controller_events_queue(&settings.executor.controller_id);
        }
        Ok(settings)
    }

    fn validate(&self) -> Result<(), SettingsError> {
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(SettingsError::Invalid {
                key: "log.format",
                reason: format!("{:?} is not text or json", self.log.format),
            });
        }
        if self.server.max_json_bytes < 1024 {
            return Err(SettingsError::Invalid {
                key: "server.max_json_bytes",
                reason: format!(
                    "{} is below the minimum of 1024",
                    self.server.max_json_bytes
                ),
            });
        }
        if self.server.idempotency_key_ttl_seconds == 0 {
            return Err(SettingsError::Invalid {
                key: "server.idempotency_key_ttl_seconds",
                reason: "must be at least 1".into(),
            });
        }
        if self.executor.concurrency == 0 {
            return Err(SettingsError::Invalid {
                key: "executor.concurrency",
                reason: "must be at least 1".into(),
            });
        }
        if let Err(reason) =
            attune_controller::limits::parse_default_memory(&self.docker.default_memory)
        {
            return Err(SettingsError::Invalid {
                key: "docker.default_memory",
                reason,
            });
        }
        if let Err(reason) = attune_controller::limits::ExecutionPolicy::new(
            &self.docker.allowed_images,
            &self.docker.allowed_capabilities,
            None,
        ) {
            return Err(SettingsError::Invalid {
                key: "docker.allowed_capabilities",
                reason,
            });
        }
        if self.executor.reconcile_interval_seconds == 0 {
            return Err(SettingsError::Invalid {
                key: "executor.reconcile_interval_seconds",
                reason: "must be at least 1".into(),
            });
        }
        if self.executor.controller_heartbeat_seconds == 0 {
            return Err(SettingsError::Invalid {
                key: "executor.controller_heartbeat_seconds",
                reason: "must be at least 1".into(),
            });
        }
        if self.executor.controller_grace_seconds < 2 * self.executor.controller_heartbeat_seconds {
            return Err(SettingsError::Invalid {
                key: "executor.controller_grace_seconds",
                reason: format!(
                    "{} must be at least twice executor.controller_heartbeat_seconds ({}), or a slow heartbeat would count as a lost controller",
                    self.executor.controller_grace_seconds,
                    self.executor.controller_heartbeat_seconds
                ),
            });
        }
        if self.docker.pids_limit < 16 {
            return Err(SettingsError::Invalid {
                key: "docker.pids_limit",
                reason: format!("{} is below the minimum of 16", self.docker.pids_limit),
            });
        }
        let ceilings = self
            .docker
            .resource_ceilings()
            .map_err(|(key, reason)| SettingsError::Invalid { key, reason })?;
        if let (Some(max_pids), true) = (
            ceilings.max_pids(),
            self.docker.pids_limit > ceilings.max_pids().unwrap_or(i64::MAX),
        ) {
            return Err(SettingsError::Invalid {
                key: "docker.pids_limit",
                reason: format!(
                    "{} is above docker.max_pids ({max_pids}): actions that set no pids would be over the ceiling",
                    self.docker.pids_limit
                ),
            });
        }
        if let (Some(default_bytes), Some(max_bytes)) = (
            self.docker.default_memory_bytes(),
            ceilings.max_memory_bytes(),
        ) {
            if default_bytes > max_bytes {
                return Err(SettingsError::Invalid {
                    key: "docker.default_memory",
                    reason: format!(
                        "{} is above docker.max_memory ({}): actions that set no memory would be over the ceiling",
                        self.docker.default_memory.trim(),
                        self.docker.max_memory.trim()
                    ),
                });
            }
        }
        if let Err(reason) =
            attune_controller::limits::parse_log_max_size(&self.docker.log_max_size)
        {
            return Err(SettingsError::Invalid {
                key: "docker.log_max_size",
                reason,
            });
        }
        Ok(())
    }
}

/// The host's name: stable across restarts, so a restarted controller finds its containers.
fn default_controller_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .unwrap_or_default();
    if host.is_empty() {
        "attune-controller".to_string()
    } else {
        host
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn environment(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
        )
    }

    #[test]
    fn defaults_load() {
        let settings =
            Settings::load_from_env(None, &SettingsOverrides::default(), environment(&[])).unwrap();
        assert_eq!(
            settings.server.bind, "127.0.0.1:8080",
            "only this machine by default"
        );
        assert_eq!(
            settings.server.max_json_bytes,
            attune_api::DEFAULT_MAX_JSON_BYTES
        );
        assert_eq!(
            settings.server.idempotency_key_ttl_seconds,
            attune_api::DEFAULT_IDEMPOTENCY_KEY_TTL.as_secs()
        );
        assert_eq!(settings.docker.network, "host");
        assert!(!settings.executor.controller_id.is_empty());
    }

    #[test]
    fn file_then_environment_then_flags() {
        let directory = tempfile::tempdir().unwrap();
        let file = directory.path().join("attune.toml");
        std::fs::write(
            &file,
            "[database]\nurl = \"postgres://file/db\"\n[server]\nbind = \"127.0.0.1:1\"\n[docker]\nnetwork = \"bridge\"\n",
        )
        .unwrap();
        let environment = environment(&[
            ("ATTUNE__DATABASE__URL", "postgres://env/db"),
            ("ATTUNE__MESSAGE_QUEUE__URL", "amqp://env"),
        ]);
        let overrides = SettingsOverrides {
            bind: Some("127.0.0.1:9".into()),
            ..Default::default()
        };
        let settings = Settings::load_from_env(Some(&file), &overrides, environment).unwrap();
        assert_eq!(settings.docker.network, "bridge", "file beats defaults");
        assert_eq!(settings.database.url, "postgres://env/db", "env beats file");
        assert_eq!(settings.message_queue.url, "amqp://env");
        assert_eq!(settings.server.bind, "127.0.0.1:9", "flags beat file");
    }

    #[test]
    fn bad_log_format_is_named() {
        let error = Settings::load_from_env(
            None,
            &SettingsOverrides::default(),
            environment(&[("ATTUNE__LOG__FORMAT", "xml")]),
        )
        .unwrap_err();
        assert!(error.to_string().contains("log.format"), "{error}");
    }

    #[test]
    fn container_defaults_and_lists_from_the_environment() {
        let settings =
            Settings::load_from_env(None, &SettingsOverrides::default(), environment(&[])).unwrap();
        assert_eq!(settings.docker.agent_delivery, AgentDelivery::Auto);
        assert_eq!(settings.docker.default_memory_bytes(), Some(512 << 20));
        assert!(settings.docker.allowed_images.is_empty());
        assert_eq!(settings.executor.reconcile_interval_seconds, 30);
        assert_eq!(settings.executor.reconcile_grace_seconds, 60);

        let settings = Settings::load_from_env(
            None,
            &SettingsOverrides::default(),
            environment(&[
                ("ATTUNE__DOCKER__AGENT_DELIVERY", "put-archive"),
                ("ATTUNE__DOCKER__ALLOWED_IMAGES", "busybox:*,python:3.11-*"),
                ("ATTUNE__DOCKER__ALLOWED_CAPABILITIES", "NET_BIND_SERVICE"),
                ("ATTUNE__DOCKER__DEFAULT_MEMORY", "none"),
            ]),
        )
        .unwrap();
        assert_eq!(settings.docker.agent_delivery, AgentDelivery::PutArchive);
        assert_eq!(
            settings.docker.allowed_images,
            vec!["busybox:*".to_string(), "python:3.11-*".to_string()]
        );
        assert_eq!(
            settings.docker.allowed_capabilities,
            vec!["NET_BIND_SERVICE"]
        );
        assert_eq!(settings.docker.default_memory_bytes(), None);
        let policy = settings.docker.execution_policy();
        assert!(policy.check_image("busybox:1.36").is_ok());
        assert!(policy.check_image("ruby:3.3").is_err());
    }

    #[test]
    fn bad_container_settings_are_named() {
        for (key, value, named) in [
            ("ATTUNE__DOCKER__AGENT_DELIVERY", "copy", "agent_delivery"),
            (
                "ATTUNE__DOCKER__DEFAULT_MEMORY",
                "512m",
                "docker.default_memory",
            ),
            (
                "ATTUNE__DOCKER__ALLOWED_CAPABILITIES",
                "NOT_A_CAP",
                "docker.allowed_capabilities",
            ),
            (
                "ATTUNE__EXECUTOR__RECONCILE_INTERVAL_SECONDS",
                "0",
                "executor.reconcile_interval_seconds",
            ),
            (
                "ATTUNE__SERVER__IDEMPOTENCY_KEY_TTL_SECONDS",
                "0",
                "server.idempotency_key_ttl_seconds",
            ),
            (
                "ATTUNE__SERVER__MAX_JSON_BYTES",
                "10",
                "server.max_json_bytes",
            ),
        ] {
            let error = Settings::load_from_env(
                None,
                &SettingsOverrides::default(),
                environment(&[(key, value)]),
            )
            .unwrap_err();
            assert!(error.to_string().contains(named), "{key}={value}: {error}");
        }
    }

    #[test]
    fn resource_ceilings_and_log_bound_settings() {
        let settings =
            Settings::load_from_env(None, &SettingsOverrides::default(), environment(&[])).unwrap();
        assert_eq!(settings.docker.max_memory, "8Gi");
        assert_eq!(settings.docker.max_cpus, None, "the docker host's CPUs");
        assert_eq!(settings.docker.max_pids, 4096);
        assert_eq!(settings.docker.log_max_size, "10m");
        let ceilings = settings.docker.resource_ceilings().unwrap();
        assert_eq!(ceilings.max_memory_bytes(), Some(8 << 30));
        assert_eq!(ceilings.max_pids(), Some(4096));
        let log_config = settings.docker.execution_policy().log_config();
        assert_eq!(log_config.driver, "json-file");
        assert_eq!(log_config.options["max-size"], "10m");
        assert_eq!(log_config.options["max-file"], "2");

        let settings = Settings::load_from_env(
            None,
            &SettingsOverrides::default(),
            environment(&[
                ("ATTUNE__DOCKER__MAX_MEMORY", "1Gi"),
                ("ATTUNE__DOCKER__MAX_CPUS", "1.5"),
                ("ATTUNE__DOCKER__MAX_PIDS", "1024"),
                ("ATTUNE__DOCKER__LOG_MAX_SIZE", "50M"),
            ]),
        )
        .unwrap();
        assert_eq!(settings.docker.max_cpus, Some(1.5));
        let policy = settings.docker.execution_policy();
        assert_eq!(policy.log_config().options["max-size"], "50m");
        let asks = |container: serde_json::Value| {
            policy
                .check_action_limits("heavy.job", Some(&container))
                .map_err(|error| error.to_string())
        };
        assert_eq!(
            asks(serde_json::json!({"image": "busybox:1.36", "resources": {"memory": "2Gi"}})),
            Err("action heavy.job asks for 2Gi memory; the operator's limit docker.max_memory is 1Gi".to_string())
        );
        assert!(
            asks(serde_json::json!({"image": "busybox:1.36", "resources": {"cpus": 2}})).is_err()
        );
        assert!(
            asks(serde_json::json!({"image": "busybox:1.36", "resources": {"pids": 1025}}))
                .is_err()
        );
        assert!(asks(serde_json::json!({"image": "busybox:1.36", "resources": {"memory": "1Gi", "cpus": 1.5, "pids": 1024}})).is_ok());
    }

    #[test]
    fn bad_ceilings_and_log_bounds_are_named() {
        for (pairs, named) in [
            (
                &[("ATTUNE__DOCKER__MAX_MEMORY", "8gi")][..],
                "docker.max_memory",
            ),
            (&[("ATTUNE__DOCKER__MAX_CPUS", "0")][..], "docker.max_cpus"),
            (&[("ATTUNE__DOCKER__MAX_PIDS", "8")][..], "docker.max_pids"),
            (
                &[("ATTUNE__DOCKER__LOG_MAX_SIZE", "10mb")][..],
                "docker.log_max_size",
            ),
            (
                &[("ATTUNE__DOCKER__LOG_MAX_SIZE", "100")][..],
                "docker.log_max_size",
            ),
            (
                &[("ATTUNE__DOCKER__MAX_PIDS", "256")][..],
                "docker.pids_limit",
            ),
            (
                &[("ATTUNE__DOCKER__MAX_MEMORY", "256Mi")][..],
                "docker.default_memory",
            ),
        ] {
            let error =
                Settings::load_from_env(None, &SettingsOverrides::default(), environment(pairs))
                    .unwrap_err();
            assert!(error.to_string().contains(named), "{pairs:?}: {error}");
        }
        // A ceiling exactly at the defaults for actions that set nothing is fine.
        assert!(Settings::load_from_env(
            None,
            &SettingsOverrides::default(),
            environment(&[
                ("ATTUNE__DOCKER__MAX_PIDS", "512"),
                ("ATTUNE__DOCKER__MAX_MEMORY", "512Mi"),
            ]),
        )
        .is_ok());
    }

    #[test]
    fn registry_auth_from_a_file_or_a_json_environment_variable() {
        let settings =
            Settings::load_from_env(None, &SettingsOverrides::default(), environment(&[])).unwrap();
        assert!(settings.docker.registry_auth.is_empty());

        let directory = tempfile::tempdir().unwrap();
        let file = directory.path().join("attune.toml");
        std::fs::write(
            &file,
            "[docker.registry_auth.\"registry.example.com:5000\"]\nusername = \"robot\"\npassword = \"from-file\"\n",
        )
        .unwrap();
        let settings =
            Settings::load_from_env(Some(&file), &SettingsOverrides::default(), environment(&[]))
                .unwrap();
        let from_file = settings
            .docker
            .registry_auth
            .credentials_for("registry.example.com:5000/team/tool:1")
            .expect("credentials from the file");
        assert_eq!(
            (from_file.username.as_str(), from_file.password.as_str()),
            ("robot", "from-file")
        );

        let settings = Settings::load_from_env(
            Some(&file),
            &SettingsOverrides::default(),
            environment(&[(
                "ATTUNE__DOCKER__REGISTRY_AUTH",
                r#"{"docker.io": {"username": "hub", "password": "from-env"}}"#,
            )]),
        )
        .unwrap();
        let auth = &settings.docker.registry_auth;
        assert_eq!(
            auth.credentials_for("busybox:1.36")
                .map(|credentials| credentials.password.as_str()),
            Some("from-env")
        );
        let shown = format!("{settings:?}");
        assert!(
            !shown.contains("from-env") && !shown.contains("from-file"),
            "settings never show passwords: {shown}"
        );

        let error = Settings::load_from_env(
            None,
            &SettingsOverrides::default(),
            environment(&[("ATTUNE__DOCKER__REGISTRY_AUTH", "ghcr.io=robot:secret")]),
        )
        .unwrap_err();
        assert!(error.to_string().contains("registry_auth"), "{error}");
        assert!(!error.to_string().contains("secret"), "{error}");
    }

    #[test]
    fn missing_config_file_is_an_error() {
        let error = Settings::load_from_env(
            Some(Path::new("/nonexistent/attune.toml")),
            &SettingsOverrides::default(),
            environment(&[]),
        )
        .unwrap_err();
        assert!(error.to_string().contains("attune.toml"), "{error}");
    }
}
