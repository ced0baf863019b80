//! A long-lived worker's life: detect what it can run, enroll with the API
//! ([`crate::api`]), then serve as the worker-mode agent the enrollment names (its agent id,
//! broker account, event key and events queue), with its pack files by digest
//! ([`crate::packs`]), idle heartbeats, and a drain and deregistration on SIGTERM.

use crate::agent::{self, AgentError, Capabilities};
use crate::api::{ApiClient, ApiError, EnrollError};
use crate::config::{is_valid_agent_id, AgentConfig, Mode, WorkerInvocation};
use crate::detect::{Detector, RuntimeName};
use crate::packs::{PackStore, CACHE_DIR_NAME};
use attune_protocol::worker::{check_enrollment, WorkerEnrolled, WorkerEnrollment};
use attune_protocol::{signing, PROTOCOL_VERSION};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Why a worker stopped before or while serving.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("worker settings: {0}")]
    Api(#[source] ApiError),
    #[error("worker {name} cannot enroll: {reason}")]
    Enrollment { name: String, reason: String },
    #[error(transparent)]
    Enroll(#[from] EnrollError),
    #[error("the enrollment of worker {name} is not usable: {reason}")]
    Enrolled { name: String, reason: String },
    #[error(transparent)]
    Agent(#[from] AgentError),
}

impl WorkerError {
    /// Whether the settings or the API's refusal are to blame (trying again as it is will not
    /// help): the exit code of a usage error.
    pub fn is_final(&self) -> bool {
        match self {
            WorkerError::Api(_)
            | WorkerError::Enrollment { .. }
            | WorkerError::Enroll(EnrollError::Refused { .. })
            | WorkerError::Enrolled { .. } => true,
            WorkerError::Enroll(EnrollError::GaveUp { .. }) | WorkerError::Agent(_) => false,
        }
    }
}

/// Enrolls, then serves until `shutdown` resolves (to the reason) or a Shutdown command.
pub async fn run(
    invocation: WorkerInvocation,
    detector: Detector,
    selection: Option<Vec<RuntimeName>>,
    shutdown: impl Future<Output = String>,
) -> Result<(), WorkerError> {
    let WorkerInvocation { agent, worker } = invocation;
    let mut shutdown = std::pin::pin!(shutdown);
    let api = ApiClient::new(
        &worker.api_url,
        worker.token.clone(),
        agent.message_queue_ca_pem.as_deref(),
    )
    .map_err(WorkerError::Api)?;

    let hashing = tokio::task::spawn_blocking(agent::own_sha256);
    let runtimes = detector.detect(selection.as_deref(), true).await;
    let enrollment = WorkerEnrollment {
        name: worker.name.clone(),
        protocol_version: PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        agent_sha256: hashing.await.unwrap_or_default(),
        runtimes: runtimes.clone(),
        labels: worker.labels.clone(),
        concurrency: u32::from(worker.concurrency),
        image: agent.image.clone(),
    };
    check_enrollment(&enrollment).map_err(|reason| WorkerError::Enrollment {
        name: worker.name.clone(),
        reason,
    })?;
    eprintln!(
        "attune-agent: worker {} enrolling with {} (runtimes: {})",
        worker.name,
        api.base_url(),
        runtimes
            .iter()
            .map(|runtime| runtime.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let enrolled = tokio::select! {
        enrolled = api.enroll(&enrollment, agent.connect_timeout) => enrolled?,
        reason = &mut shutdown => {
            eprintln!("attune-agent: {reason} before worker {} enrolled", worker.name);
            return Ok(());
        }
    };
    let config = enrolled_config(agent, &enrolled, worker.message_queue_address.as_deref())
        .map_err(|reason| WorkerError::Enrolled {
            name: worker.name.clone(),
            reason,
        })?;
    eprintln!(
        "attune-agent: worker {} enrolled as agent {}",
        worker.name, config.agent_id
    );
    let packs = PackStore::new(
        worker.packs_dir.clone(),
        config.workdir_base.join(CACHE_DIR_NAME),
        api,
    );
    agent::serve(
        config,
        detector,
        Capabilities::Detected(runtimes),
        Some(Arc::new(packs)),
        shutdown,
    )
    .await?;
    Ok(())
}

/// The agent's settings once enrolled: the enrollment's identity, broker account (at
/// `message_queue_address` when given), CA (with the one of `ATTUNE_AGENT_MQ_CA_FILE`), event
/// key, events queue and heartbeat interval, in worker mode.
pub fn enrolled_config(
    mut config: AgentConfig,
    enrolled: &WorkerEnrolled,
    message_queue_address: Option<&str>,
) -> Result<AgentConfig, String> {
    if !is_valid_agent_id(&enrolled.agent_id) {
        return Err(format!(
            "agent_id {:?} is not a valid agent id",
            enrolled.agent_id
        ));
    }
    let event_key = signing::key_from_hex(&enrolled.event_key)
        .ok_or_else(|| "event_key is not 64 hex digits".to_string())?;
    if enrolled.events_queue.trim().is_empty() {
        return Err("events_queue is empty".to_string());
    }
    let message_queue_url = match message_queue_address {
        Some(address) => broker_url_at(&enrolled.mq_url, address)?,
        None => enrolled.mq_url.clone(),
    };
    crate::mq::agent_uri(&message_queue_url).map_err(|error| format!("mq_url: {error}"))?;
    config.message_queue_ca_pem = match (enrolled.mq_ca_pem.as_deref(), config.message_queue_ca_pem)
    {
        (Some(enrolled_ca), Some(file_ca)) => Some(format!("{enrolled_ca}\n{file_ca}")),
        (Some(enrolled_ca), None) => Some(enrolled_ca.to_string()),
        (None, file_ca) => file_ca,
    };
    config.message_queue_url = message_queue_url;
    config.agent_id = enrolled.agent_id.clone();
    config.event_key = Some(event_key);
    config.events_queue = enrolled.events_queue.clone();
    config.heartbeat_interval = Duration::from_secs(enrolled.heartbeat_seconds.max(1));
    config.mode = Mode::Worker;
    config.secrets_on_stdin = false;
    config.heartbeat_when_idle = true;
    Ok(config)
}

/// The parts of an AMQP URL: `scheme`, `user:password` (if any), and the rest (host, port,
/// vhost path and query).
fn split_amqp_url(url: &str) -> Option<(&str, Option<&str>, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let (credentials, host) = match authority.rsplit_once('@') {
        Some((credentials, host)) => (Some(credentials), host),
        None => (None, authority),
    };
    Some((
        scheme,
        credentials,
        &url[url.len() - host.len() - path.len()..],
    ))
}

/// `enrolled` (the URL with the worker's broker account) at the scheme, host, port and vhost
/// of `address` (how this worker reaches the broker): the credentials stay the enrolled ones.
pub fn broker_url_at(enrolled: &str, address: &str) -> Result<String, String> {
    let (_, credentials, _) = split_amqp_url(enrolled)
        .ok_or_else(|| "mq_url is not an amqp:// or amqps:// url".to_string())?;
    let (scheme, _, location) = split_amqp_url(address)
        .ok_or_else(|| "the broker address is not an amqp:// or amqps:// url".to_string())?;
    Ok(match credentials {
        Some(credentials) => format!("{scheme}://{credentials}@{location}"),
        None => format!("{scheme}://{location}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::environment::EnvironmentCache;
    use std::path::PathBuf;

    fn enrolled() -> WorkerEnrolled {
        WorkerEnrolled {
            agent_id: "worker-py-1-ab12".to_string(),
            mq_url: "amqp://worker-py-1:pw@rabbitmq.internal:5672/attune".to_string(),
            mq_ca_pem: None,
            event_key: "cd".repeat(32),
            events_queue: "attune.workers.events".to_string(),
            heartbeat_seconds: 10,
        }
    }

    fn base_config() -> AgentConfig {
        AgentConfig {
            message_queue_url: String::new(),
            agent_id: String::new(),
            mode: Mode::Worker,
            image: None,
            workdir_base: PathBuf::from("/tmp"),
            environments: EnvironmentCache {
                root: PathBuf::from("/tmp/attune-envs"),
                image_identity: String::new(),
                build_timeout: Duration::from_secs(600),
            },
            concurrency: 4,
            heartbeat_interval: Duration::from_secs(5),
            shutdown_deadline: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(30),
            events_queue: "attune.agent.events".to_string(),
            secrets_on_stdin: false,
            message_queue_ca_pem: None,
            event_key: None,
            sweep_processes: false,
            heartbeat_when_idle: true,
        }
    }

    #[test]
    fn the_enrollment_gives_the_agent_its_identity_broker_key_and_heartbeat() {
        let config = enrolled_config(base_config(), &enrolled(), None).unwrap();
        assert_eq!(config.agent_id, "worker-py-1-ab12");
        assert_eq!(
            config.message_queue_url,
            "amqp://worker-py-1:pw@rabbitmq.internal:5672/attune"
        );
        assert_eq!(config.event_key, Some([0xcd; 32]));
        assert_eq!(config.events_queue, "attune.workers.events");
        assert_eq!(config.heartbeat_interval, Duration::from_secs(10));
        assert_eq!(config.mode, Mode::Worker);
        assert!(config.heartbeat_when_idle);

        let mut answer = enrolled();
        answer.heartbeat_seconds = 0;
        answer.mq_ca_pem = Some("ENROLLED CA".to_string());
        let mut with_file_ca = base_config();
        with_file_ca.message_queue_ca_pem = Some("FILE CA".to_string());
        let config = enrolled_config(with_file_ca, &answer, None).unwrap();
        assert_eq!(config.heartbeat_interval, Duration::from_secs(1));
        assert_eq!(
            config.message_queue_ca_pem.as_deref(),
            Some("ENROLLED CA\nFILE CA")
        );
    }

    #[test]
    fn an_unusable_enrollment_is_named() {
        let mut answer = enrolled();
        answer.event_key = "12".to_string();
        let error = enrolled_config(base_config(), &answer, None).unwrap_err();
        assert!(error.contains("event_key"), "{error}");
        let mut answer = enrolled();
        answer.agent_id = "bad id".to_string();
        let error = enrolled_config(base_config(), &answer, None).unwrap_err();
        assert!(error.contains("agent_id"), "{error}");
        let mut answer = enrolled();
        answer.mq_url = "http://x".to_string();
        let error = enrolled_config(base_config(), &answer, None).unwrap_err();
        assert!(error.starts_with("mq_url: "), "{error}");
        assert!(!error.contains("pw"), "{error}");
    }

    #[test]
    fn a_broker_address_replaces_all_but_the_enrolled_credentials() {
        let config = enrolled_config(
            base_config(),
            &enrolled(),
            Some("amqps://broker.example:5671/prod?heartbeat=30"),
        )
        .unwrap();
        assert_eq!(
            config.message_queue_url,
            "amqps://worker-py-1:pw@broker.example:5671/prod?heartbeat=30"
        );
        assert_eq!(
            broker_url_at(
                "amqp://u:p@internal:5672/%2f",
                "amqp://someone:else@localhost:5673"
            )
            .unwrap(),
            "amqp://u:p@localhost:5673"
        );
        assert_eq!(
            broker_url_at("amqp://internal/%2f", "amqp://localhost/v").unwrap(),
            "amqp://localhost/v"
        );
        assert!(broker_url_at("not a url", "amqp://x").is_err());
    }
}
