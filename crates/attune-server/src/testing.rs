//! A real server for tests and benchmarks: a fresh Postgres database, a private events queue
//! and its own controller id on the shared broker and Docker engine, listening on a free port.
//!
//! Dropping a [`TestServer`] stops it; [`TestServer::stop`] also drops its database.
//! [`TestServer::crash`] ends one abruptly and [`TestServer::restart`] starts its successor on
//! the same database, controller id and events queue, as a restarted server would.

use crate::config::{Settings, SettingsOverrides};
use sqlx::Connection;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Where the services are, from the environment with local defaults.
pub struct TestEnvironment {
    /// A Postgres URL whose user may create databases.
    pub admin_database_url: String,
    pub message_queue_url: String,
    pub agent_binary: PathBuf,
}

impl TestEnvironment {
    pub fn from_env() -> TestEnvironment {
        let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
        TestEnvironment {
            admin_database_url: std::env::var("ATTUNE_TEST_DATABASE_URL").unwrap_or_else(|_| {
                "postgres://postgres:postgres@127.0.0.1:5432/postgres".to_string()
            }),
            message_queue_url: std::env::var("ATTUNE_TEST_MQ_URL")
                .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string()),
            agent_binary: std::env::var("ATTUNE_AGENT_BINARY")
                .map(PathBuf::from)
                .unwrap_or_else(|_| workspace.join("agent-dist/attune-agent-x86_64")),
        }
    }
}

/// A fresh, migrated database, dropped by [`TestDatabase::drop_database`].
pub struct TestDatabase {
    pub url: String,
    pub name: String,
    admin_database_url: String,
}

impl TestDatabase {
    /// Creates an empty database (migrations run when a [`crate::db::Store`] connects).
    pub async fn create() -> Result<TestDatabase, String> {
        let environment = TestEnvironment::from_env();
        let unique = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("attune_test_{}", &unique[..12]);
        let mut admin = sqlx::PgConnection::connect(&environment.admin_database_url)
            .await
            .map_err(|error| format!("connect to {}: {error}", environment.admin_database_url))?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .map_err(|error| format!("create database {name}: {error}"))?;
        admin.close().await.ok();
        Ok(TestDatabase {
            url: replace_database(&environment.admin_database_url, &name),
            name,
            admin_database_url: environment.admin_database_url,
        })
    }

    /// Drops the database, closing any connection still open to it.
    pub async fn drop_database(&self) -> Result<(), String> {
        let mut admin = sqlx::PgConnection::connect(&self.admin_database_url)
            .await
            .map_err(|error| format!("connect to drop test database: {error}"))?;
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut admin)
        .await
        .map_err(|error| format!("drop test database {}: {error}", self.name))?;
        Ok(())
    }
}

/// A running server.
pub struct TestServer {
    pub base_url: String,
    pub controller_id: String,
    /// The queue this server's agents report to.
    pub events_queue: String,
    pub database: TestDatabase,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), crate::app::ServerError>>>,
}

impl TestServer {
    /// Starts a server; `extra` adds `ATTUNE__...` settings (e.g. `ATTUNE__EXECUTOR__KILL_GRACE_SECONDS`).
    pub async fn start(extra: &[(&str, &str)]) -> Result<TestServer, String> {
        let unique = uuid::Uuid::new_v4().simple().to_string();
        let database = TestDatabase::create().await?;
        let controller_id = format!("test-{}", &unique[..12]);
        let events_queue = format!("attune.test.{}.events", &unique[..12]);
        Self::start_with_identity(extra, database, controller_id, events_queue).await
    }

    /// Starts the successor of this server: same database, controller id and events queue,
    /// with `extra` settings. A server still running is stopped first (draining, database
    /// kept); a crashed one is simply replaced.
    pub async fn restart(mut self, extra: &[(&str, &str)]) -> Result<TestServer, String> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return Err(format!("test server failed: {error}")),
                Err(error) if error.is_cancelled() => {}
                Err(error) => return Err(format!("test server task: {error}")),
            }
        }
        let database = TestDatabase {
            url: self.database.url.clone(),
            name: self.database.name.clone(),
            admin_database_url: self.database.admin_database_url.clone(),
        };
        Self::start_with_identity(
            extra,
            database,
            self.controller_id.clone(),
            self.events_queue.clone(),
        )
        .await
    }

    async fn start_with_identity(
        extra: &[(&str, &str)],
        database: TestDatabase,
        controller_id: String,
        events_queue: String,
    ) -> Result<TestServer, String> {
        let environment = TestEnvironment::from_env();
        let database_url = database.url.clone();
        let mut variables: HashMap<String, String> = [
            ("ATTUNE__DATABASE__URL", database_url.as_str()),
            ("ATTUNE__DATABASE__MAX_CONNECTIONS", "8"),
            (
                "ATTUNE__MESSAGE_QUEUE__URL",
                environment.message_queue_url.as_str(),
            ),
            ("ATTUNE__MESSAGE_QUEUE__EVENTS_QUEUE", events_queue.as_str()),
            ("ATTUNE__EXECUTOR__CONTROLLER_ID", controller_id.as_str()),
            ("ATTUNE__DOCKER__NETWORK", "host"),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect();
        for (key, value) in extra {
            variables.insert(key.to_string(), value.to_string());
        }
        let overrides = SettingsOverrides {
            agent_binary: Some(environment.agent_binary.clone()),
            ..Default::default()
        };
        let settings = Settings::load_from_env(None, &overrides, Some(variables))
            .map_err(|error| error.to_string())?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|error| format!("bind test listener: {error}"))?;
        let address = listener
            .local_addr()
            .map_err(|error| format!("test listener address: {error}"))?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(crate::app::run(settings, listener, async move {
            let _ = stopped.await;
        }));
        let server = TestServer {
            base_url: format!("http://{address}"),
            controller_id,
            events_queue,
            database,
            stop: Some(stop),
            task: Some(task),
        };
        server.wait_until_listening().await?;
        Ok(server)
    }

    async fn wait_until_listening(&self) -> Result<(), String> {
        let address = self.base_url.trim_start_matches("http://").to_string();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if tokio::net::TcpStream::connect(&address).await.is_ok() {
                return Ok(());
            }
            if let Some(task) = &self.task {
                if task.is_finished() {
                    return Err("test server exited during start-up".to_string());
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!("test server not listening on {address} after 60s"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the server (draining running executions) and drops its database.
    pub async fn stop(mut self) -> Result<(), String> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return Err(format!("test server failed: {error}")),
                Err(error) => return Err(format!("test server task: {error}")),
            }
        }
        self.database.drop_database().await
    }

    /// Ends the server abruptly, as a crash would: no drain, containers stay. Returns once
    /// the server and every task it started are gone.
    pub async fn crash(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        self.stop.take();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// `postgres://user:pw@host:port/old?x` → same with `new` as the database.
fn replace_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|index| index + 3).unwrap_or(0);
    let prefix = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{prefix}/{database}?{query}"),
        None => format!("{prefix}/{database}"),
    }
}

#[cfg(test)]
mod tests {
    use super::replace_database;

    #[test]
    fn database_is_replaced() {
        assert_eq!(
            replace_database("postgres://u:p@127.0.0.1:5432/postgres", "x"),
            "postgres://u:p@127.0.0.1:5432/x"
        );
        assert_eq!(
            replace_database("postgres://u@h/postgres?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
    }
}
