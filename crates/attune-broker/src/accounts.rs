//! Per-agent broker accounts, made and removed through RabbitMQ's management HTTP API.
//!
//! Every agent a controller starts gets a RabbitMQ user of its own, named
//! `attune-agent.<controller id>.<agent id>`, with a random 256-bit password and permissions on
//! the deployment's vhost that reach exactly two resources:
//!
//! | permission | regex | what it allows |
//! |---|---|---|
//! | configure | `^attune\.agent\.<agent id>\.jobs$` | declaring its own job queue |
//! | write | `^<events exchange>$` | publishing to its controller's events exchange only |
//! | read | `^attune\.agent\.<agent id>\.jobs$` | consuming its own job queue |
//!
//! No write on `amq.default` (which would reach every queue), no read of any other queue, no
//! configure of anything else; user limits of 2 connections and 16 channels bound what a
//! stolen password can hold open. The account is deleted with the agent's queue when its
//! container is removed, and [`AgentAccounts::sweep`] deletes accounts of this controller that
//! no agent uses any more (a crash between making one and removing its container).
//!
//! Why the management API rather than RabbitMQ's OAuth 2.0 backend: it works with a stock
//! broker whose management plugin is on (Debian's, the `rabbitmq:3-management` image) without
//! putting a signing key into the broker's configuration, an account can be revoked at once
//! (deleting it), and nothing expires under a long-lived warm agent. It costs two HTTP round
//! trips (user, then permissions and limits together) per new agent, made while the container
//! is being created; docs/BENCHMARKS.md has the measurement.

use crate::BrokerError;
use attune_protocol::queues::{agent_job_queue, events_exchange};
use std::collections::HashSet;
use std::sync::Mutex;

/// Prefix of every agent account's name.
pub const AGENT_USER_PREFIX: &str = "attune-agent.";
/// The RabbitMQ user tag every agent account carries (no management access).
pub const AGENT_USER_TAG: &str = "attune-agent";
/// Connections one agent account may hold open (a reconnection may overlap the old one).
pub const AGENT_MAX_CONNECTIONS: u32 = 2;
/// Channels one agent account may hold open.
pub const AGENT_MAX_CHANNELS: u32 = 16;

/// The management API client that makes and removes the accounts of one controller's agents.
pub struct AgentAccounts {
    http: reqwest::Client,
    /// `http://host:15672/api/`.
    api: reqwest::Url,
    admin_user: String,
    admin_password: String,
    vhost: String,
    /// The AMQP URL agents connect to, without credentials.
    agent_url: reqwest::Url,
    controller_id: String,
    events_queue: String,
    /// Agents whose account this process made and has not removed yet.
    issued: Mutex<HashSet<String>>,
    /// How long a call waits for a broker that does not answer.
    patience: std::time::Duration,
}

/// An error of the management API, naming the operation.
fn management(operation: &str, reason: impl std::fmt::Display) -> BrokerError {
    BrokerError::Management {
        operation: operation.to_string(),
        reason: reason.to_string(),
    }
}

impl AgentAccounts {
    /// A client of the management API at `management_url` (`http://127.0.0.1:15672`) that
    /// authenticates as the user of `server_url` (the server's own AMQP URL; that user needs the
    /// `administrator` tag) and makes accounts for agents that connect to `agent_url` and report
    /// to `events_queue`.
    pub fn new(
        management_url: &str,
        server_url: &str,
        agent_url: &str,
        controller_id: &str,
        events_queue: &str,
    ) -> Result<AgentAccounts, BrokerError> {
        let invalid = |what: &str, url: &str, reason: &dyn std::fmt::Display| {
            management(
                "configure agent accounts",
                format!("{what} {} is not valid: {reason}", crate::redact_url(url)),
            )
        };
        let mut api = reqwest::Url::parse(management_url)
            .map_err(|error| invalid("message_queue.management_url", management_url, &error))?;
        if !matches!(api.scheme(), "http" | "https") {
            return Err(invalid(
                "message_queue.management_url",
                management_url,
                &"it must be an http:// or https:// URL",
            ));
        }
        if !api.path().ends_with('/') {
            let path = format!("{}/", api.path());
            api.set_path(&path);
        }
        let api = api
            .join("api/")
            .map_err(|error| invalid("message_queue.management_url", management_url, &error))?;
        let server = reqwest::Url::parse(server_url)
            .map_err(|error| invalid("message_queue.url", server_url, &error))?;
        let decode = |text: &str| {
            percent_decode(text).ok_or_else(|| {
                invalid(
                    "message_queue.url",
                    server_url,
                    &"its user or password is not valid percent-encoding",
                )
            })
        };
        let admin_user = decode(server.username())?;
        let admin_password = decode(server.password().unwrap_or(""))?;
        let (admin_user, admin_password) = if admin_user.is_empty() {
            // AMQP's default login, as lapin uses it.
            ("guest".to_string(), "guest".to_string())
        } else {
            (admin_user, admin_password)
        };
        let mut agent_url = reqwest::Url::parse(agent_url)
            .map_err(|error| invalid("message_queue.agent_url", agent_url, &error))?;
        let vhost = vhost_of(&agent_url).ok_or_else(|| {
            invalid(
                "message_queue.agent_url",
                agent_url.as_str(),
                &"its vhost is not valid percent-encoding",
            )
        })?;
        let _ = agent_url.set_username("");
        let _ = agent_url.set_password(None);
        Ok(AgentAccounts {
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .map_err(|error| management("configure agent accounts", error))?,
            api,
            admin_user,
            admin_password,
            vhost,
            agent_url,
            controller_id: controller_id.to_string(),
            events_queue: events_queue.to_string(),
            issued: Mutex::new(HashSet::new()),
            patience: crate::DEFAULT_PUBLISH_PATIENCE,
        })
    }

    /// The prefix of this controller's agent accounts.
    pub fn user_prefix(&self) -> String {
        format!("{AGENT_USER_PREFIX}{}.", self.controller_id)
    }

    /// The account name of `agent_id`.
    pub fn username(&self, agent_id: &str) -> String {
        format!("{}{agent_id}", self.user_prefix())
    }

    /// The permissions of `agent_id`'s account: (configure, write, read) regexes.
    pub fn permissions(&self, agent_id: &str) -> (String, String, String) {
        let own_queue = format!("^{}$", regex_escape(&agent_job_queue(agent_id)));
        let events = format!("^{}$", regex_escape(&events_exchange(&self.events_queue)));
        (own_queue.clone(), events, own_queue)
    }

    fn endpoint(&self, parts: &[&str]) -> reqwest::Url {
        let mut url = self.api.clone();
        {
            let mut segments = url
                .path_segments_mut()
                .expect("an http URL has path segments");
            segments.pop_if_empty();
            for part in parts {
                segments.push(part);
            }
        }
        url
    }

    /// One management API call; while the broker does not answer (no connection, a 5xx: it
    /// is restarting) it is tried again with backoff (100 ms doubling to 2 s) for up to the
    /// patience, as commands wait for a lost broker: an outage delays an agent's start, it
    /// does not fail its execution.
    async fn call(
        &self,
        operation: &str,
        method: reqwest::Method,
        url: reqwest::Url,
        body: Option<serde_json::Value>,
    ) -> Result<reqwest::Response, BrokerError> {
        let deadline = tokio::time::Instant::now() + self.patience;
        let mut delay = std::time::Duration::from_millis(100);
        loop {
            let mut request = self
                .http
                .request(method.clone(), url.clone())
                .basic_auth(&self.admin_user, Some(&self.admin_password));
            if let Some(body) = &body {
                request = request.json(body);
            }
            let (error, transient) = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    if status.is_success() || status == reqwest::StatusCode::NOT_FOUND {
                        return Ok(response);
                    }
                    let detail = response.text().await.unwrap_or_default();
                    let hint = match status {
                        reqwest::StatusCode::UNAUTHORIZED => format!(
                            "; the management API refused user {} (it needs the administrator tag)",
                            self.admin_user
                        ),
                        _ => String::new(),
                    };
                    (
                        management(
                            operation,
                            format!("management API answered {status}: {}{hint}", detail.trim()),
                        ),
                        status.is_server_error(),
                    )
                }
                Err(error) => (management(operation, without_url(error)), true),
            };
            if !transient || tokio::time::Instant::now() + delay >= deadline {
                return Err(error);
            }
            tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "management API not answering; trying again");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(std::time::Duration::from_secs(2));
        }
    }

    /// How long a call waits for a broker that does not answer (default 60 s, the publish
    /// patience's default).
    pub fn with_patience(mut self, patience: std::time::Duration) -> AgentAccounts {
        self.patience = patience;
        self
    }

    /// Makes `agent_id`'s account (replacing one of the same name) and returns the AMQP URL the
    /// agent connects with: the agents' URL with the account's name and password.
    pub async fn issue(&self, agent_id: &str) -> Result<String, BrokerError> {
        let username = self.username(agent_id);
        let operation = format!("make broker account {username}");
        let mut random = [0u8; 32];
        getrandom::fill(&mut random).map_err(|error| management(&operation, error))?;
        let password: String = random.iter().map(|byte| format!("{byte:02x}")).collect();
        self.issued
            .lock()
            .expect("issued lock")
            .insert(agent_id.to_string());
        let created = self
            .call(
                &operation,
                reqwest::Method::PUT,
                self.endpoint(&["users", &username]),
                Some(serde_json::json!({ "password": password, "tags": AGENT_USER_TAG })),
            )
            .await?;
        if created.status() == reqwest::StatusCode::NOT_FOUND {
            return Err(management(
                &operation,
                "the management API has no users endpoint",
            ));
        }
        let (configure, write, read) = self.permissions(agent_id);
        let permissions = self.call(
            &operation,
            reqwest::Method::PUT,
            self.endpoint(&["permissions", &self.vhost, &username]),
            Some(serde_json::json!({ "configure": configure, "write": write, "read": read })),
        );
        let connections = self.call(
            &operation,
            reqwest::Method::PUT,
            self.endpoint(&["user-limits", &username, "max-connections"]),
            Some(serde_json::json!({ "value": AGENT_MAX_CONNECTIONS })),
        );
        let channels = self.call(
            &operation,
            reqwest::Method::PUT,
            self.endpoint(&["user-limits", &username, "max-channels"]),
            Some(serde_json::json!({ "value": AGENT_MAX_CHANNELS })),
        );
        let (permissions, connections, channels) = tokio::join!(permissions, connections, channels);
        let permissions = permissions?;
        if permissions.status() == reqwest::StatusCode::NOT_FOUND {
            return Err(management(
                &operation,
                format!("vhost {} does not exist", self.vhost),
            ));
        }
        connections?;
        channels?;
        let mut url = self.agent_url.clone();
        let invalid = |_| management(&operation, "the agents' URL cannot hold credentials");
        url.set_username(&username).map_err(invalid)?;
        url.set_password(Some(&password)).map_err(invalid)?;
        Ok(url.to_string())
    }

    /// Deletes `agent_id`'s account (which also closes its connections); an account that is
    /// already gone is fine.
    pub async fn revoke(&self, agent_id: &str) -> Result<(), BrokerError> {
        let username = self.username(agent_id);
        self.call(
            &format!("delete broker account {username}"),
            reqwest::Method::DELETE,
            self.endpoint(&["users", &username]),
            None,
        )
        .await?;
        self.issued.lock().expect("issued lock").remove(agent_id);
        Ok(())
    }

    /// The agent ids of this controller's accounts on the broker.
    pub async fn listed(&self) -> Result<Vec<String>, BrokerError> {
        let operation = "list broker accounts";
        let mut url = self.endpoint(&["users"]);
        url.set_query(Some("columns=name"));
        let response = self
            .call(operation, reqwest::Method::GET, url, None)
            .await?;
        let users: Vec<serde_json::Value> = response
            .json()
            .await
            .map_err(|error| management(operation, without_url(error)))?;
        let prefix = self.user_prefix();
        Ok(users
            .iter()
            .filter_map(|user| user.get("name").and_then(|name| name.as_str()))
            .filter_map(|name| name.strip_prefix(&prefix))
            .map(str::to_string)
            .collect())
    }

    /// Deletes this controller's accounts whose agent is neither in `in_use` (agents of
    /// containers that exist) nor made by this process and not yet removed; returns how many.
    pub async fn sweep(&self, in_use: &HashSet<String>) -> Result<usize, BrokerError> {
        let mut removed = 0;
        for agent_id in self.listed().await? {
            let issued = self.issued.lock().expect("issued lock").contains(&agent_id);
            if issued || in_use.contains(&agent_id) {
                continue;
            }
            tracing::info!(%agent_id, "removing a broker account no agent uses");
            self.revoke(&agent_id).await?;
            removed += 1;
        }
        Ok(removed)
    }
}

/// The vhost of an AMQP URL: its percent-decoded path without the leading `/`; `/` when empty.
fn vhost_of(url: &reqwest::Url) -> Option<String> {
    let path = url.path().strip_prefix('/').unwrap_or(url.path());
    if path.is_empty() {
        return Some("/".to_string());
    }
    percent_decode(path)
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = text.get(index + 1..index + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            index += 3;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `text` with every regex metacharacter escaped (RabbitMQ permissions are Erlang regexes).
fn regex_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len() * 2);
    for character in text.chars() {
        if "\\^$.|?*+()[]{}".contains(character) {
            escaped.push('\\');
        }
        escaped.push(character);
    }
    escaped
}

/// A reqwest error's text without its URL (which holds no secret, but is noise in messages).
fn without_url(error: reqwest::Error) -> String {
    error.without_url().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accounts() -> AgentAccounts {
        AgentAccounts::new(
            "http://127.0.0.1:15672",
            "amqp://admin:s%40cret@127.0.0.1:5672/%2f",
            "amqps://rabbit.internal:5671/prod",
            "ctl-1",
            "attune.controller.ctl-1.events",
        )
        .unwrap()
    }

    #[test]
    fn an_agent_may_touch_its_own_queue_and_its_controllers_exchange_only() {
        let accounts = accounts();
        assert_eq!(
            accounts.username("exec-7-ab"),
            "attune-agent.ctl-1.exec-7-ab"
        );
        let (configure, write, read) = accounts.permissions("exec-7-ab");
        assert_eq!(configure, r"^attune\.agent\.exec-7-ab\.jobs$");
        assert_eq!(read, configure);
        assert_eq!(write, r"^attune\.controller\.ctl-1\.events$");
    }

    #[test]
    fn the_admin_login_and_vhost_come_from_the_urls() {
        let accounts = accounts();
        assert_eq!(accounts.admin_user, "admin");
        assert_eq!(accounts.admin_password, "s@cret");
        assert_eq!(accounts.vhost, "prod");
        assert_eq!(
            accounts.agent_url.as_str(),
            "amqps://rabbit.internal:5671/prod"
        );
        assert_eq!(
            accounts.endpoint(&["permissions", "/", "u.1"]).as_str(),
            "http://127.0.0.1:15672/api/permissions/%2F/u.1"
        );
        let default_vhost = AgentAccounts::new(
            "http://127.0.0.1:15672/",
            "amqp://127.0.0.1",
            "amqp://127.0.0.1:5672/%2f",
            "c",
            "q",
        )
        .unwrap();
        assert_eq!(default_vhost.vhost, "/");
        assert_eq!(default_vhost.admin_user, "guest");
    }

    #[test]
    fn a_bad_management_url_is_named() {
        let error = AgentAccounts::new("ftp://x", "amqp://a:b@h", "amqp://h", "c", "q")
            .err()
            .unwrap();
        assert!(
            error
                .to_string()
                .contains("message_queue.management_url ftp://x is not valid"),
            "{error}"
        );
    }

    #[test]
    fn regex_metacharacters_are_escaped() {
        assert_eq!(regex_escape("a.b*c(d)"), r"a\.b\*c\(d\)");
    }
}
