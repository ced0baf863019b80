//! A long-lived worker's own settings (name, API, token, labels, concurrency, runtimes, broker
//! address, packs directory): environment variables with Attune's names
//! ([`attune_protocol::worker`]) over an optional YAML config file over defaults.
//!
//! The config file is `--config PATH`, else `ATTUNE_CONFIG`, else
//! [`worker::DEFAULT_CONFIG_FILE`] when it exists; unknown fields are refused by name. The
//! token comes from the environment alone (`ATTUNE_WORKER_TOKEN`, or the file
//! `ATTUNE_WORKER_TOKEN_FILE` names) and appears in no message. Runtimes are chosen in three
//! tiers: `ATTUNE_WORKER_RUNTIMES`, else the file's `worker.runtimes`, else detection
//! ([`RuntimeChoice`]).

use crate::api::{check_base_url, ApiToken};
use crate::config::ConfigError;
use attune_protocol::queues;
use attune_protocol::worker::{
    self, is_valid_worker_name, parse_labels, MAX_LABEL_LENGTH, MAX_WORKER_CONCURRENCY,
    MAX_WORKER_LABELS, MAX_WORKER_NAME,
};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};

/// Environment variable: where packs are mounted (`<dir>/<pack_ref>/` with its
/// `.attune-pack-sha256`); default [`DEFAULT_PACKS_DIR`].
pub const ENV_PACKS_DIR: &str = attune_protocol::worker::ENV_WORKER_PACKS_DIR;
/// Where a worker looks for mounted packs by default.
pub const DEFAULT_PACKS_DIR: &str = queues::PACKS_DIR_IN_CONTAINER;
/// Jobs a worker runs at once unless told.
pub const DEFAULT_WORKER_CONCURRENCY: u16 = 4;
/// Name used for the generated worker name when the host name has no usable character.
const FALLBACK_HOST_NAME: &str = "worker";

/// Files of the host the settings read, so tests can point elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPaths {
    /// Read when no config file is named and it exists.
    pub default_config_file: PathBuf,
    /// Its first line is the host name of a generated worker name (else `HOSTNAME`).
    pub hostname_file: PathBuf,
}

impl HostPaths {
    /// This machine's: [`worker::DEFAULT_CONFIG_FILE`] and `/etc/hostname`.
    pub fn system() -> Self {
        Self {
            default_config_file: PathBuf::from(worker::DEFAULT_CONFIG_FILE),
            hostname_file: PathBuf::from("/etc/hostname"),
        }
    }
}

/// Where the worker's runtimes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeChoice {
    /// `ATTUNE_WORKER_RUNTIMES`, as written (`python,shell`).
    Environment(String),
    /// `worker.runtimes` of the config file.
    ConfigFile { path: PathBuf, names: Vec<String> },
    /// Every runtime found in the image (never `native`).
    Detect,
}

/// What a worker enrolls and runs with, besides the agent's own settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSettings {
    pub name: String,
    /// The API's base URL, without a trailing `/`.
    pub api_url: String,
    pub token: ApiToken,
    pub labels: BTreeMap<String, String>,
    pub concurrency: u16,
    pub runtimes: RuntimeChoice,
    /// `ATTUNE__MESSAGE_QUEUE__URL` or the file's `message_queue.url`: the scheme, host, port
    /// and vhost the worker reaches the broker at, in place of the enrolled URL's.
    pub message_queue_address: Option<String>,
    /// Where mounted packs are looked for.
    pub packs_dir: PathBuf,
    /// The config file read, if any.
    pub config_file: Option<PathBuf>,
}

/// The YAML config file of a worker.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    worker: WorkerSection,
    #[serde(default)]
    api_url: Option<String>,
    #[serde(default)]
    message_queue: MessageQueueSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkerSection {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    concurrency: Option<u64>,
    #[serde(default)]
    runtimes: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageQueueSection {
    #[serde(default)]
    url: Option<String>,
}

/// Whether an agent without an agent id is meant to be a worker: `ATTUNE_API_URL` is set, or
/// a config file is named or present.
pub fn wants_worker<E>(config_flag: Option<&str>, env: &E, host: &HostPaths) -> bool
where
    E: Fn(&str) -> Option<String>,
{
    non_empty(env(worker::ENV_API_URL)).is_some()
        || config_flag.is_some_and(|path| !path.trim().is_empty())
        || non_empty(env(worker::ENV_CONFIG)).is_some()
        || host.default_config_file.is_file()
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|value| !value.trim().is_empty())
}

/// Reads a worker's settings: environment over the config file over defaults.
pub fn parse_worker_settings<E>(
    config_flag: Option<String>,
    env: &E,
    host: &HostPaths,
) -> Result<WorkerSettings, ConfigError>
where
    E: Fn(&str) -> Option<String>,
{
    let config_path = match (non_empty(config_flag), non_empty(env(worker::ENV_CONFIG))) {
        (Some(path), _) | (None, Some(path)) => Some(PathBuf::from(path)),
        (None, None) if host.default_config_file.is_file() => {
            Some(host.default_config_file.clone())
        }
        (None, None) => None,
    };
    let file = match &config_path {
        Some(path) => read_config_file(path)?,
        None => ConfigFile::default(),
    };
    let in_file = |field: &str| match &config_path {
        Some(path) => format!("{field} in {}", path.display()),
        None => field.to_string(),
    };

    let (api_url, api_url_source) = match (non_empty(env(worker::ENV_API_URL)), file.api_url) {
        (Some(url), _) => (url, worker::ENV_API_URL.to_string()),
        (None, Some(url)) if !url.trim().is_empty() => (url, in_file("api_url")),
        (None, _) => {
            return Err(ConfigError::MissingWorkerSetting {
                what: "api url",
                hint: format!("set {} or api_url in the config file", worker::ENV_API_URL),
            })
        }
    };
    let api_url = check_base_url(&api_url).map_err(|error| ConfigError::InvalidWorkerSetting {
        setting: api_url_source,
        reason: error.to_string(),
    })?;

    let token = read_token(env)?;

    let name = match (non_empty(env(worker::ENV_WORKER_NAME)), file.worker.name) {
        (Some(name), _) => Some((name.trim().to_string(), worker::ENV_WORKER_NAME.to_string())),
        (None, Some(name)) => Some((name.trim().to_string(), in_file("worker.name"))),
        (None, None) => None,
    };
    let name = match name {
        Some((name, source)) => {
            if !is_valid_worker_name(&name) {
                return Err(ConfigError::InvalidWorkerSetting {
                    setting: source,
                    reason: format!(
                        "{name:?} is not a worker name: use 1 to {MAX_WORKER_NAME} characters from a-z, A-Z, 0-9, '.', '_' and '-'"
                    ),
                });
            }
            name
        }
        None => generated_name(&host_name(&host.hostname_file, env), &random_suffix()),
    };

    let (labels, labels_source) = match (
        non_empty(env(worker::ENV_WORKER_LABELS)),
        file.worker.labels,
    ) {
        (Some(text), _) => (
            parse_labels(&text).map_err(|reason| ConfigError::InvalidWorkerSetting {
                setting: worker::ENV_WORKER_LABELS.to_string(),
                reason,
            })?,
            worker::ENV_WORKER_LABELS.to_string(),
        ),
        (None, Some(labels)) => (labels, in_file("worker.labels")),
        (None, None) => (BTreeMap::new(), String::new()),
    };
    check_labels(&labels).map_err(|reason| ConfigError::InvalidWorkerSetting {
        setting: labels_source,
        reason,
    })?;

    let concurrency = match (
        non_empty(env(worker::ENV_WORKER_CONCURRENCY)),
        file.worker.concurrency,
    ) {
        (Some(text), _) => concurrency_in_range(
            text.trim().parse::<u64>().ok(),
            &text,
            worker::ENV_WORKER_CONCURRENCY.to_string(),
        )?,
        (None, Some(number)) => concurrency_in_range(
            Some(number),
            &number.to_string(),
            in_file("worker.concurrency"),
        )?,
        (None, None) => DEFAULT_WORKER_CONCURRENCY,
    };

    let runtimes = match (
        non_empty(env(queues::ENV_WORKER_RUNTIMES)),
        file.worker.runtimes,
    ) {
        (Some(text), _) => RuntimeChoice::Environment(text),
        (None, Some(names)) if !names.is_empty() => RuntimeChoice::ConfigFile {
            path: config_path.clone().unwrap_or_default(),
            names,
        },
        (None, _) => RuntimeChoice::Detect,
    };

    let message_queue_address = match (
        non_empty(env(worker::ENV_WORKER_MQ_URL)),
        file.message_queue.url.filter(|url| !url.trim().is_empty()),
    ) {
        (Some(url), _) => Some((url, worker::ENV_WORKER_MQ_URL.to_string())),
        (None, Some(url)) => Some((url, in_file("message_queue.url"))),
        (None, None) => None,
    };
    let message_queue_address = match message_queue_address {
        Some((url, source)) => {
            let url = url.trim().to_string();
            crate::mq::agent_uri(&url).map_err(|error| ConfigError::InvalidWorkerSetting {
                setting: source,
                reason: error.to_string(),
            })?;
            Some(url)
        }
        None => None,
    };

    let packs_dir = non_empty(env(ENV_PACKS_DIR))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PACKS_DIR));

    Ok(WorkerSettings {
        name,
        api_url,
        token,
        labels,
        concurrency,
        runtimes,
        message_queue_address,
        packs_dir,
        config_file: config_path,
    })
}

fn read_config_file(path: &Path) -> Result<ConfigFile, ConfigError> {
    let failed = |reason: String| ConfigError::ConfigFile {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|error| failed(error.to_string()))?;
    if text.trim().is_empty() {
        return Ok(ConfigFile::default());
    }
    serde_norway::from_str(&text).map_err(|error| failed(error.to_string()))
}

/// The token from `ATTUNE_WORKER_TOKEN`, else the file `ATTUNE_WORKER_TOKEN_FILE` names
/// (trimmed). No error shows it.
fn read_token<E>(env: &E) -> Result<ApiToken, ConfigError>
where
    E: Fn(&str) -> Option<String>,
{
    let (token, source) = if let Some(token) = non_empty(env(worker::ENV_WORKER_TOKEN)) {
        (
            token.trim().to_string(),
            worker::ENV_WORKER_TOKEN.to_string(),
        )
    } else if let Some(path) = non_empty(env(worker::ENV_WORKER_TOKEN_FILE)) {
        let source = format!("{}={path}", worker::ENV_WORKER_TOKEN_FILE);
        let text =
            std::fs::read_to_string(&path).map_err(|error| ConfigError::InvalidWorkerSetting {
                setting: source.clone(),
                reason: format!("cannot read it: {error}"),
            })?;
        if text.trim().is_empty() {
            return Err(ConfigError::InvalidWorkerSetting {
                setting: source,
                reason: "the file is empty".to_string(),
            });
        }
        (text.trim().to_string(), source)
    } else {
        return Err(ConfigError::MissingWorkerSetting {
            what: "worker token",
            hint: format!(
                "set {} or {}",
                worker::ENV_WORKER_TOKEN,
                worker::ENV_WORKER_TOKEN_FILE
            ),
        });
    };
    if !token.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err(ConfigError::InvalidWorkerSetting {
            setting: source,
            reason: "the token has characters a bearer token cannot have (spaces, control or non-ascii characters)"
                .to_string(),
        });
    }
    Ok(ApiToken::new(token))
}

fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), String> {
    if labels.len() > MAX_WORKER_LABELS {
        return Err(format!(
            "{} labels, more than {MAX_WORKER_LABELS}",
            labels.len()
        ));
    }
    for (key, value) in labels {
        if key.trim().is_empty() {
            return Err("a label has an empty key".to_string());
        }
        if key.len() > MAX_LABEL_LENGTH || value.len() > MAX_LABEL_LENGTH {
            return Err(format!(
                "label {key:?} is longer than {MAX_LABEL_LENGTH} characters (key or value)"
            ));
        }
    }
    Ok(())
}

fn concurrency_in_range(
    number: Option<u64>,
    text: &str,
    setting: String,
) -> Result<u16, ConfigError> {
    match number {
        Some(number) if (1..=u64::from(MAX_WORKER_CONCURRENCY)).contains(&number) => {
            u16::try_from(number).map_err(|_| ConfigError::InvalidWorkerSetting {
                setting,
                reason: format!("{number} is too large"),
            })
        }
        _ => Err(ConfigError::InvalidWorkerSetting {
            setting,
            reason: format!(
                "{:?} is not a whole number from 1 to {MAX_WORKER_CONCURRENCY}",
                text.trim()
            ),
        }),
    }
}

/// The host name: the first line of `hostname_file`, else `HOSTNAME`, else empty.
fn host_name<E>(hostname_file: &Path, env: &E) -> String
where
    E: Fn(&str) -> Option<String>,
{
    std::fs::read_to_string(hostname_file)
        .ok()
        .and_then(|text| text.lines().next().map(|line| line.trim().to_string()))
        .filter(|name| !name.is_empty())
        .or_else(|| non_empty(env("HOSTNAME")).map(|name| name.trim().to_string()))
        .unwrap_or_default()
}

/// `<host>-<suffix>`, the host name cut to the allowed characters (others become `-`) and to
/// a length that keeps the whole a valid worker name.
pub fn generated_name(host: &str, suffix: &str) -> String {
    let room = MAX_WORKER_NAME.saturating_sub(suffix.len() + 1);
    let sanitized: String = host
        .chars()
        .map(|character| {
            if character.is_ascii_alphanumeric() || "._-".contains(character) {
                character
            } else {
                '-'
            }
        })
        .take(room)
        .collect();
    let sanitized = sanitized.trim_matches(|character| character == '-' || character == '.');
    let host = if sanitized.is_empty() {
        FALLBACK_HOST_NAME
    } else {
        sanitized
    };
    format!("{host}-{suffix}")
}

/// 8 random hex digits (std's randomly keyed hasher, over the time and the process id).
fn random_suffix() -> String {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    if let Ok(elapsed) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(elapsed.as_nanos());
    }
    format!("{:08x}", hasher.finish() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const TOKEN: &str = "s3cr3t-worker-token-value";

    struct Host {
        directory: tempfile::TempDir,
    }

    impl Host {
        fn new() -> Self {
            Self {
                directory: tempfile::tempdir().unwrap(),
            }
        }

        fn paths(&self) -> HostPaths {
            HostPaths {
                default_config_file: self.directory.path().join("no-config.yaml"),
                hostname_file: self.directory.path().join("hostname"),
            }
        }

        fn file(&self, name: &str, text: &str) -> String {
            let path = self.directory.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        }

        fn parse(
            &self,
            config_flag: Option<&str>,
            env: &[(&str, &str)],
        ) -> Result<WorkerSettings, ConfigError> {
            let env: HashMap<String, String> = env
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect();
            parse_worker_settings(
                config_flag.map(str::to_string),
                &|name: &str| env.get(name).cloned(),
                &self.paths(),
            )
        }
    }

    const BASE: [(&str, &str); 2] = [
        ("ATTUNE_API_URL", "http://attune:8080/"),
        ("ATTUNE_WORKER_TOKEN", TOKEN),
    ];

    fn with<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        BASE.iter().chain(extra).copied().collect()
    }

    #[test]
    fn defaults_apply_and_the_name_is_generated_from_the_host_name() {
        let host = Host::new();
        host.file("hostname", "build box_7\n");
        let settings = host.parse(None, &BASE).unwrap();
        assert_eq!(settings.api_url, "http://attune:8080");
        assert_eq!(settings.token, ApiToken::new(TOKEN));
        assert_eq!(settings.concurrency, 4);
        assert!(settings.labels.is_empty());
        assert_eq!(settings.runtimes, RuntimeChoice::Detect);
        assert_eq!(settings.message_queue_address, None);
        assert_eq!(settings.packs_dir, PathBuf::from("/opt/attune/packs"));
        assert_eq!(settings.config_file, None);
        let (host_part, suffix) = settings.name.rsplit_once('-').unwrap();
        assert_eq!(host_part, "build-box_7");
        assert_eq!(suffix.len(), 8);
        assert!(suffix.bytes().all(|byte| byte.is_ascii_hexdigit()));
        assert!(is_valid_worker_name(&settings.name));
    }

    #[test]
    fn without_a_hostname_file_the_name_comes_from_hostname() {
        let host = Host::new();
        let settings = host.parse(None, &with(&[("HOSTNAME", "pod-abc")])).unwrap();
        assert!(settings.name.starts_with("pod-abc-"), "{}", settings.name);
        let settings = host.parse(None, &BASE).unwrap();
        assert!(settings.name.starts_with("worker-"), "{}", settings.name);
    }

    #[test]
    fn generated_names_are_always_valid() {
        for host in ["", "***", &"h".repeat(300), "é.example", "-x-"] {
            let name = generated_name(host, "0123abcd");
            assert!(is_valid_worker_name(&name), "{host:?} gave {name:?}");
            assert!(name.ends_with("-0123abcd"));
        }
        assert_eq!(generated_name("a b", "00000000"), "a-b-00000000");
    }

    #[test]
    fn environment_wins_over_the_file_and_the_file_over_defaults() {
        let host = Host::new();
        let config = host.file(
            "config.yaml",
            "worker:\n  name: from-file\n  labels: {zone: eu, disk: ssd}\n  concurrency: 8\n  runtimes: [python, native]\napi_url: http://file-api:8080\nmessage_queue:\n  url: amqp://file-broker:5672/%2f\n",
        );
        let from_file = host
            .parse(Some(&config), &[("ATTUNE_WORKER_TOKEN", TOKEN)])
            .unwrap();
        assert_eq!(from_file.name, "from-file");
        assert_eq!(from_file.api_url, "http://file-api:8080");
        assert_eq!(from_file.labels["zone"], "eu");
        assert_eq!(from_file.labels["disk"], "ssd");
        assert_eq!(from_file.concurrency, 8);
        assert_eq!(
            from_file.runtimes,
            RuntimeChoice::ConfigFile {
                path: PathBuf::from(&config),
                names: vec!["python".to_string(), "native".to_string()],
            }
        );
        assert_eq!(
            from_file.message_queue_address.as_deref(),
            Some("amqp://file-broker:5672/%2f")
        );
        assert_eq!(from_file.config_file, Some(PathBuf::from(&config)));

        let from_env = host
            .parse(
                Some(&config),
                &with(&[
                    ("ATTUNE_WORKER_NAME", "from-env"),
                    ("ATTUNE_WORKER_LABELS", "zone=us"),
                    ("ATTUNE_WORKER_CONCURRENCY", "2"),
                    ("ATTUNE_WORKER_RUNTIMES", "shell"),
                    ("ATTUNE__MESSAGE_QUEUE__URL", "amqps://env-broker:5671/prod"),
                    ("ATTUNE_WORKER_PACKS_DIR", "/srv/packs"),
                ]),
            )
            .unwrap();
        assert_eq!(from_env.name, "from-env");
        assert_eq!(from_env.api_url, "http://attune:8080");
        assert_eq!(
            from_env.labels,
            BTreeMap::from([("zone".to_string(), "us".to_string())])
        );
        assert_eq!(from_env.concurrency, 2);
        assert_eq!(
            from_env.runtimes,
            RuntimeChoice::Environment("shell".to_string())
        );
        assert_eq!(
            from_env.message_queue_address.as_deref(),
            Some("amqps://env-broker:5671/prod")
        );
        assert_eq!(from_env.packs_dir, PathBuf::from("/srv/packs"));
    }

    #[test]
    fn the_config_file_is_found_by_environment_then_default_path() {
        let host = Host::new();
        let named = host.file("named.yaml", "worker:\n  name: named\n");
        let settings = host
            .parse(None, &with(&[("ATTUNE_CONFIG", named.as_str())]))
            .unwrap();
        assert_eq!(settings.name, "named");
        host.file("no-config.yaml", "worker:\n  name: by-default\n");
        let settings = host.parse(None, &BASE).unwrap();
        assert_eq!(settings.name, "by-default");
        let error = host
            .parse(Some("/nonexistent/config.yaml"), &BASE)
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("read config file /nonexistent/config.yaml: "),
            "{error}"
        );
        let empty = host.file("empty.yaml", "\n");
        assert!(host.parse(Some(&empty), &BASE).is_ok());
    }

    #[test]
    fn unknown_config_fields_are_named() {
        let host = Host::new();
        let config = host.file("config.yaml", "worker:\n  name: w\n  concurency: 3\n");
        let error = host.parse(Some(&config), &BASE).unwrap_err().to_string();
        assert!(error.contains("concurency"), "{error}");
        assert!(error.starts_with("read config file "), "{error}");
        let config = host.file("top.yaml", "token: abc\n");
        let error = host.parse(Some(&config), &BASE).unwrap_err().to_string();
        assert!(error.contains("token"), "{error}");
    }

    #[test]
    fn bad_labels_are_named_by_their_source() {
        let host = Host::new();
        let error = host
            .parse(None, &with(&[("ATTUNE_WORKER_LABELS", "zone")]))
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("invalid ATTUNE_WORKER_LABELS: ") && error.contains("\"zone\""),
            "{error}"
        );
        let long = format!("k={}", "v".repeat(MAX_LABEL_LENGTH + 1));
        let error = host
            .parse(None, &with(&[("ATTUNE_WORKER_LABELS", long.as_str())]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("longer than 128"), "{error}");
        let config = host.file("config.yaml", "worker:\n  labels: {\"\": x}\n");
        let error = host.parse(Some(&config), &BASE).unwrap_err().to_string();
        assert!(error.starts_with("invalid worker.labels in "), "{error}");
    }

    #[test]
    fn bad_concurrency_is_named_with_its_range() {
        let host = Host::new();
        for bad in ["0", "257", "many", "-1"] {
            let env = with(&[("ATTUNE_WORKER_CONCURRENCY", bad)]);
            let error = host.parse(None, &env).unwrap_err().to_string();
            assert!(
                error.starts_with("invalid ATTUNE_WORKER_CONCURRENCY: ")
                    && error.contains("1 to 256"),
                "{bad}: {error}"
            );
        }
        let host_ok = host
            .parse(None, &with(&[("ATTUNE_WORKER_CONCURRENCY", "256")]))
            .unwrap();
        assert_eq!(host_ok.concurrency, 256);
        let config = host.file("config.yaml", "worker:\n  concurrency: 0\n");
        let error = host.parse(Some(&config), &BASE).unwrap_err().to_string();
        assert!(
            error.starts_with("invalid worker.concurrency in "),
            "{error}"
        );
    }

    #[test]
    fn a_missing_api_url_or_token_is_named() {
        let host = Host::new();
        let error = host
            .parse(None, &[("ATTUNE_WORKER_TOKEN", TOKEN)])
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "missing api url: set ATTUNE_API_URL or api_url in the config file"
        );
        let error = host
            .parse(None, &[("ATTUNE_API_URL", "http://a")])
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "missing worker token: set ATTUNE_WORKER_TOKEN or ATTUNE_WORKER_TOKEN_FILE"
        );
        let error = host
            .parse(None, &with(&[("ATTUNE_API_URL", "ftp://a")]))
            .unwrap_err()
            .to_string();
        // ATTUNE_API_URL from the environment wins over BASE's: the later entry wins.
        assert!(error.starts_with("invalid ATTUNE_API_URL: "), "{error}");
        let error = host
            .parse(
                None,
                &with(&[("ATTUNE__MESSAGE_QUEUE__URL", "http://not-a-broker")]),
            )
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("invalid ATTUNE__MESSAGE_QUEUE__URL: "),
            "{error}"
        );
    }

    #[test]
    fn the_token_comes_from_a_file_trimmed_and_never_shows_in_errors() {
        let host = Host::new();
        let token_file = host.file("token", &format!("  {TOKEN}\n"));
        let settings = host
            .parse(
                None,
                &[
                    ("ATTUNE_API_URL", "http://a"),
                    ("ATTUNE_WORKER_TOKEN_FILE", token_file.as_str()),
                ],
            )
            .unwrap();
        assert_eq!(settings.token, ApiToken::new(TOKEN));
        assert!(!format!("{settings:?}").contains(TOKEN));

        let error = host
            .parse(
                None,
                &[
                    ("ATTUNE_API_URL", "http://a"),
                    ("ATTUNE_WORKER_TOKEN_FILE", "/nonexistent/token"),
                ],
            )
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("invalid ATTUNE_WORKER_TOKEN_FILE=/nonexistent/token: "),
            "{error}"
        );
        let bad_token = format!("{TOKEN} with spaces");
        let env = [
            ("ATTUNE_API_URL", "http://a"),
            ("ATTUNE_WORKER_TOKEN", bad_token.as_str()),
        ];
        let error = host.parse(None, &env).unwrap_err().to_string();
        assert!(
            error.starts_with("invalid ATTUNE_WORKER_TOKEN: "),
            "{error}"
        );
        assert!(!error.contains(TOKEN), "{error}");
        // Every other refusal leaves the token out too.
        for extra in [
            ("ATTUNE_WORKER_LABELS", "bad"),
            ("ATTUNE_WORKER_CONCURRENCY", "0"),
            ("ATTUNE_WORKER_NAME", "bad name"),
            ("ATTUNE_API_URL", "nope"),
        ] {
            let error = host.parse(None, &with(&[extra])).unwrap_err().to_string();
            assert!(!error.contains(TOKEN), "{error}");
        }
    }

    #[test]
    fn an_invalid_name_is_named_by_its_source() {
        let host = Host::new();
        let error = host
            .parse(None, &with(&[("ATTUNE_WORKER_NAME", "bad name")]))
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("invalid ATTUNE_WORKER_NAME: "), "{error}");
        let config = host.file("config.yaml", "worker:\n  name: \"a/b\"\n");
        let error = host.parse(Some(&config), &BASE).unwrap_err().to_string();
        assert!(error.starts_with("invalid worker.name in "), "{error}");
    }

    #[test]
    fn a_worker_is_wanted_with_an_api_url_or_a_config_file() {
        let host = Host::new();
        let none = |_: &str| None::<String>;
        assert!(!wants_worker(None, &none, &host.paths()));
        assert!(wants_worker(Some("/x.yaml"), &none, &host.paths()));
        let api = |name: &str| (name == "ATTUNE_API_URL").then(|| "http://a".to_string());
        assert!(wants_worker(None, &api, &host.paths()));
        host.file("no-config.yaml", "");
        assert!(wants_worker(None, &none, &host.paths()));
    }
}
