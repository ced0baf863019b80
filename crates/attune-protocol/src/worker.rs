//! Long-lived workers: agents an operator starts on any image (a compose service, a pod, a
//! plain process) that run actions without `container:`.
//!
//! A worker enrolls over HTTP with a token of role `worker`: `POST /api/v1/workers` with a
//! [`WorkerEnrollment`] (its name, detected runtimes, labels, concurrency, agent version). The
//! answer, [`WorkerEnrolled`], is what a controller's agent gets on stdin: an agent id, a broker
//! URL with a broker account of its own (its job queue and the workers' events exchange only),
//! the broker's CA, and its event key. The worker then consumes its job queue
//! (`attune.agent.<agent id>.jobs`), publishes every event signed to
//! [`WORKERS_EVENTS_QUEUE`]'s exchange, sends a heartbeat every
//! [`WorkerEnrolled::heartbeat_seconds`] whether busy or not, and deregisters when it stops.
//!
//! A job for a worker names its pack's archive digest ([`crate::Job::pack_sha256`]): the worker
//! uses the pack's files from a mounted packs directory when they carry that digest, and
//! otherwise downloads `GET /api/v1/packs/{ref}/archive?sha256=<digest>` (the stored,
//! normalized tar; the same token), checks its sha256, and keeps it in a cache per digest.

use crate::DetectedRuntime;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The default queue (and exchange of the same name) every worker reports to
/// (`workers.events_queue`); every controller-role server on the deployment's database
/// consumes it.
pub const WORKERS_EVENTS_QUEUE: &str = "attune.workers.events";

/// Environment variables of a worker, with Attune's names.
pub const ENV_WORKER_NAME: &str = "ATTUNE_WORKER_NAME";
/// `k=v,k2=v2`: labels an action's `worker_selector` matches.
pub const ENV_WORKER_LABELS: &str = "ATTUNE_WORKER_LABELS";
/// Jobs a worker runs at once.
pub const ENV_WORKER_CONCURRENCY: &str = "ATTUNE_WORKER_CONCURRENCY";
/// The API a worker enrolls with and downloads pack files from (`http://attune:8080`).
pub const ENV_API_URL: &str = "ATTUNE_API_URL";
/// The worker's API token (role `worker`); or a file holding it, [`ENV_WORKER_TOKEN_FILE`].
pub const ENV_WORKER_TOKEN: &str = "ATTUNE_WORKER_TOKEN";
/// A file holding the worker's API token.
pub const ENV_WORKER_TOKEN_FILE: &str = "ATTUNE_WORKER_TOKEN_FILE";
/// The broker as the worker reaches it (`amqp://rabbitmq:5672/%2f`): its scheme, host, port
/// and vhost replace those of the enrolled URL (the credentials are always the enrolled ones).
pub const ENV_WORKER_MQ_URL: &str = "ATTUNE__MESSAGE_QUEUE__URL";
/// A directory of pack files mounted into a worker (default `/opt/attune/packs`): a pack's
/// files at `<dir>/<pack ref>/` are used when their [`PACK_DIGEST_FILE`] holds the job's digest.
pub const ENV_WORKER_PACKS_DIR: &str = "ATTUNE_WORKER_PACKS_DIR";
/// The file in a pack's directory holding the sha256 of the stored archive its files came from;
/// whoever fills a mounted packs directory writes it.
pub const PACK_DIGEST_FILE: &str = ".attune-pack-sha256";
/// A worker's config file (also `--config`; default [`DEFAULT_CONFIG_FILE`] when it exists).
pub const ENV_CONFIG: &str = "ATTUNE_CONFIG";
/// Where a worker looks for its config file when none is named.
pub const DEFAULT_CONFIG_FILE: &str = "/opt/attune/config/config.yaml";

/// Longest worker name.
pub const MAX_WORKER_NAME: usize = 100;
/// Most labels a worker may have.
pub const MAX_WORKER_LABELS: usize = 32;
/// Longest label key or value.
pub const MAX_LABEL_LENGTH: usize = 128;
/// Most runtimes a worker may declare.
pub const MAX_WORKER_RUNTIMES: usize = 32;
/// Highest concurrency a worker may declare.
pub const MAX_WORKER_CONCURRENCY: u32 = 256;

/// What a worker says of itself when it enrolls (`POST /api/v1/workers`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerEnrollment {
    /// Unique among workers: 1 to [`MAX_WORKER_NAME`] characters from a-z, A-Z, 0-9, `.`,
    /// `_` and `-`. Enrolling again under the same name replaces the old registration (a
    /// restarted worker).
    pub name: String,
    pub protocol_version: u32,
    pub agent_version: String,
    /// sha256 of the agent's binary, hex.
    #[serde(default)]
    pub agent_sha256: String,
    /// The runtimes it can run, with versions and interpreter paths.
    pub runtimes: Vec<DetectedRuntime>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Jobs it runs at once (1 to [`MAX_WORKER_CONCURRENCY`]).
    pub concurrency: u32,
    /// The image it runs in, when it knows (for operators).
    #[serde(default)]
    pub image: Option<String>,
}

/// What the API answers an enrollment with: the worker's identity and secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerEnrolled {
    /// The worker's agent id (also its job queue's suffix): `worker-<name>-<random>`, new at
    /// each enrollment.
    pub agent_id: String,
    /// The AMQP URL with the worker's own broker account.
    pub mq_url: String,
    /// CA certificates (PEM) for an `amqps://` URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mq_ca_pem: Option<String>,
    /// The key the worker signs its events with, hex.
    pub event_key: String,
    /// Where the worker publishes its events ([`WORKERS_EVENTS_QUEUE`]).
    pub events_queue: String,
    /// How often the worker sends a heartbeat; a worker silent for three of them is offline.
    pub heartbeat_seconds: u64,
}

/// A worker's state as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerStatus {
    /// Heartbeating and taking jobs.
    Online,
    /// Stopping: finishes what it runs, takes nothing new.
    Draining,
    /// Deregistered, or silent past three heartbeats.
    Offline,
}

impl WorkerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerStatus::Online => "online",
            WorkerStatus::Draining => "draining",
            WorkerStatus::Offline => "offline",
        }
    }
}

impl std::fmt::Display for WorkerStatus {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl std::str::FromStr for WorkerStatus {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "online" => Ok(WorkerStatus::Online),
            "draining" => Ok(WorkerStatus::Draining),
            "offline" => Ok(WorkerStatus::Offline),
            other => Err(format!("unknown worker status {other:?}")),
        }
    }
}

/// `GET /api/v1/workers` and `/api/v1/workers/{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerView {
    pub name: String,
    pub agent_id: String,
    pub status: WorkerStatus,
    pub runtimes: Vec<DetectedRuntime>,
    pub labels: BTreeMap<String, String>,
    /// Executions it runs now.
    pub running: u32,
    pub concurrency: u32,
    /// RFC 3339.
    pub last_heartbeat: String,
    pub registered_at: String,
    pub agent_version: String,
    pub agent_sha256: String,
    #[serde(default)]
    pub image: Option<String>,
}

/// Whether `name` may be a worker's name.
pub fn is_valid_worker_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_WORKER_NAME
        && name
            .chars()
            .all(|character| character.is_ascii_alphanumeric() || "._-".contains(character))
}

/// Parses `k=v,k2=v2` ([`ENV_WORKER_LABELS`]); empty text is no labels.
pub fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    for part in text
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
    {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| format!("label {part:?} is not key=value"))?;
        let key = key.trim();
        if key.is_empty() {
            return Err(format!("label {part:?} has an empty key"));
        }
        labels.insert(key.to_string(), value.trim().to_string());
    }
    Ok(labels)
}

/// What is wrong with an enrollment, if anything (each message names the field).
pub fn check_enrollment(enrollment: &WorkerEnrollment) -> Result<(), String> {
    if !is_valid_worker_name(&enrollment.name) {
        return Err(format!(
            "name {:?} is not a worker name: use 1 to {MAX_WORKER_NAME} characters from a-z, A-Z, 0-9, '.', '_' and '-'",
            enrollment.name
        ));
    }
    if enrollment.concurrency == 0 || enrollment.concurrency > MAX_WORKER_CONCURRENCY {
        return Err(format!(
            "concurrency {} is out of range: 1 to {MAX_WORKER_CONCURRENCY}",
            enrollment.concurrency
        ));
    }
    if enrollment.runtimes.is_empty() {
        return Err("runtimes is empty: a worker must declare at least one runtime".into());
    }
    if enrollment.runtimes.len() > MAX_WORKER_RUNTIMES {
        return Err(format!(
            "runtimes has {} entries, more than {MAX_WORKER_RUNTIMES}",
            enrollment.runtimes.len()
        ));
    }
    for runtime in &enrollment.runtimes {
        if runtime.name.is_empty()
            || runtime.name.len() > MAX_LABEL_LENGTH
            || !runtime
                .name
                .chars()
                .all(|character| character.is_ascii_alphanumeric() || "._-".contains(character))
        {
            return Err(format!("runtime name {:?} is not valid", runtime.name));
        }
    }
    if enrollment.labels.len() > MAX_WORKER_LABELS {
        return Err(format!(
            "labels has {} entries, more than {MAX_WORKER_LABELS}",
            enrollment.labels.len()
        ));
    }
    for (key, value) in &enrollment.labels {
        if key.is_empty() || key.len() > MAX_LABEL_LENGTH || value.len() > MAX_LABEL_LENGTH {
            return Err(format!(
                "label {key:?} is empty or longer than {MAX_LABEL_LENGTH} characters (key or value)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enrollment() -> WorkerEnrollment {
        WorkerEnrollment {
            name: "py-1".into(),
            protocol_version: crate::PROTOCOL_VERSION,
            agent_version: "0.1.0".into(),
            agent_sha256: String::new(),
            runtimes: vec![DetectedRuntime {
                name: "python".into(),
                version: Some("3.12.1".into()),
                path: "/usr/local/bin/python3".into(),
            }],
            labels: BTreeMap::new(),
            concurrency: 4,
            image: None,
        }
    }

    #[test]
    fn labels_parse_and_bad_ones_are_named() {
        let labels = parse_labels("zone=eu, gpu = yes,").unwrap();
        assert_eq!(labels["zone"], "eu");
        assert_eq!(labels["gpu"], "yes");
        assert!(parse_labels("").unwrap().is_empty());
        assert!(parse_labels("zone").unwrap_err().contains("\"zone\""));
        assert!(parse_labels("=x").unwrap_err().contains("empty key"));
    }

    #[test]
    fn enrollments_are_checked_field_by_field() {
        assert_eq!(check_enrollment(&enrollment()), Ok(()));
        let mut bad = enrollment();
        bad.name = "bad name".into();
        assert!(check_enrollment(&bad).unwrap_err().starts_with("name "));
        let mut bad = enrollment();
        bad.concurrency = 0;
        assert!(check_enrollment(&bad)
            .unwrap_err()
            .starts_with("concurrency 0"));
        let mut bad = enrollment();
        bad.runtimes.clear();
        assert!(check_enrollment(&bad)
            .unwrap_err()
            .starts_with("runtimes is empty"));
        let mut bad = enrollment();
        bad.runtimes[0].name = "py thon".into();
        assert!(check_enrollment(&bad).unwrap_err().contains("runtime name"));
        let mut bad = enrollment();
        bad.labels
            .insert("k".into(), "v".repeat(MAX_LABEL_LENGTH + 1));
        assert!(check_enrollment(&bad)
            .unwrap_err()
            .starts_with("label \"k\""));
    }

    #[test]
    fn statuses_round_trip() {
        for status in [
            WorkerStatus::Online,
            WorkerStatus::Draining,
            WorkerStatus::Offline,
        ] {
            assert_eq!(status.as_str().parse::<WorkerStatus>(), Ok(status));
        }
    }
}
