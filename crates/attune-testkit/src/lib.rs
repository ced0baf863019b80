//! A real server for tests and benchmarks: a fresh Postgres database, a private events queue
//! and its own controller id on the shared broker and Docker engine, listening on a free port.
//!
//! Dropping a [`TestServer`] stops it; [`TestServer::stop`] also drops its database.
//! [`TestServer::crash`] ends one abruptly and [`TestServer::restart`] starts its successor on
//! the same database, controller id and events queue, as a restarted server would.
//!
//! [`TestClient`] speaks the server's HTTP API the way end-to-end tests do; [`containers_of`],
//! [`ContainerGuard`] and [`TestServer::finish`] check and clean the containers a controller
//! leaves on the shared Docker engine.
//!
//! Two controllers: [`TestServer::builder`] starts a server on another Docker engine
//! ([`Engine::second`], the one of scripts/second-engine.sh) and/or sharing another server's
//! database ([`TestServerBuilder::share_database_with`], [`TestServer::start_sharing`]), each
//! with its own controller id and events queue; the database is dropped by the last
//! [`TestServer::stop`]. [`containers_on`] and [`Engine`] list and remove containers on a
//! given engine.

mod engines;
pub mod services;
mod share;

pub use engines::{
    assert_no_containers_left_on, containers_on, wait_no_containers_on, Engine,
    DEFAULT_SECOND_DOCKER_HOST, SECOND_DOCKER_HOST_ENV,
};
use share::DatabaseLease;

use attune_client::{ApiClient, ExecutionFilter, TAR_CONTENT_TYPE};
use attune_protocol::api::{
    ContainerView, CreateExecutionRequest, ExecutionStatus, ExecutionView, LogChunkView, PoolView,
};
use attune_server::config::{Settings, SettingsOverrides};
pub use attune_store::testing::{TestDatabase, TestEnvironment};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running server.
pub struct TestServer {
    pub base_url: String,
    pub controller_id: String,
    /// The queue this server's agents report to.
    pub events_queue: String,
    pub database: TestDatabase,
    /// The Docker engine this server's controller runs containers on.
    pub engine: Engine,
    /// The admin token the first server on [`TestServer::database`] wrote
    /// ([`admin_token_file`]); [`TestClient::new`] sends it.
    pub admin_token: String,
    /// This server's claim on [`TestServer::database`], shared with the servers started
    /// with [`TestServerBuilder::share_database_with`] it (and with its successors).
    lease: Option<DatabaseLease>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), attune_server::app::ServerError>>>,
    /// Whether this server still owns its events queues (a successor from
    /// [`TestServer::restart`] takes them over; a final stop or a drop deletes them).
    owns_queues: bool,
}

/// How to start a [`TestServer`]: settings, Docker engine, own or shared database.
#[derive(Default)]
pub struct TestServerBuilder {
    settings: Vec<(String, String)>,
    engine: Engine,
    shared: Option<(TestDatabase, DatabaseLease)>,
}

impl TestServerBuilder {
    /// Adds `ATTUNE__...` settings (later ones win). `ATTUNE__DOCKER__HOST` also sets the
    /// engine, as [`TestServerBuilder::engine`] does.
    pub fn settings(mut self, extra: &[(&str, &str)]) -> TestServerBuilder {
        for (key, value) in extra {
            if *key == DOCKER_HOST_SETTING {
                self.engine = Engine::for_setting(Some(value));
            }
            self.settings.push((key.to_string(), value.to_string()));
        }
        self
    }

    /// Runs the server's containers on `engine` (`ATTUNE__DOCKER__HOST`).
    pub fn engine(mut self, engine: &Engine) -> TestServerBuilder {
        self.engine = engine.clone();
        self.settings.retain(|(key, _)| key != DOCKER_HOST_SETTING);
        self
    }

    /// Runs the server's containers on the engine at `docker_host` (`unix:///…`).
    pub fn docker_host(self, docker_host: &str) -> TestServerBuilder {
        self.engine(&Engine::at(docker_host))
    }

    /// Uses `other`'s database instead of a fresh one (another controller on the same
    /// Postgres). Whichever of the two stops last drops it.
    pub fn share_database_with(mut self, other: &TestServer) -> TestServerBuilder {
        let lease = match &other.lease {
            Some(lease) => lease.join(),
            // Only a server being torn down has no lease; a new one starts the count again.
            None => DatabaseLease::first(),
        };
        self.shared = Some((other.database.clone(), lease));
        self
    }

    /// Uses a database the caller keeps and drops itself (e.g. one a server process of the
    /// test also uses); stopping this server never drops it.
    pub fn share_database_with_url(mut self, database: &TestDatabase) -> TestServerBuilder {
        self.shared = Some((database.clone(), DatabaseLease::borrowed()));
        self
    }

    /// Starts the server (with a fresh controller id and events queue) and waits until it
    /// listens.
    pub async fn start(self) -> Result<TestServer, String> {
        let unique = uuid::Uuid::new_v4().simple().to_string();
        let (database, lease) = match self.shared {
            Some(shared) => shared,
            None => (TestDatabase::create().await?, DatabaseLease::first()),
        };
        let controller_id = format!("test-{}", &unique[..12]);
        let events_queue = format!("attune.test.{}.events", &unique[..12]);
        TestServer::start_with_identity(Identity {
            settings: self.settings,
            engine: self.engine,
            database,
            lease,
            controller_id,
            events_queue,
        })
        .await
    }
}

/// The setting naming the Docker engine of a server.
const DOCKER_HOST_SETTING: &str = "ATTUNE__DOCKER__HOST";

/// Everything a server is started with; a restarted server keeps all but the settings.
struct Identity {
    settings: Vec<(String, String)>,
    engine: Engine,
    database: TestDatabase,
    lease: DatabaseLease,
    controller_id: String,
    events_queue: String,
}

impl TestServer {
    /// Starts a server; `extra` adds `ATTUNE__...` settings (e.g. `ATTUNE__EXECUTOR__KILL_GRACE_SECONDS`).
    pub async fn start(extra: &[(&str, &str)]) -> Result<TestServer, String> {
        Self::builder().settings(extra).start().await
    }

    /// How to start a server on another engine or sharing a database.
    pub fn builder() -> TestServerBuilder {
        TestServerBuilder::default()
    }

    /// Starts a server whose containers run on `engine`.
    pub async fn start_on(engine: &Engine, extra: &[(&str, &str)]) -> Result<TestServer, String> {
        Self::builder().engine(engine).settings(extra).start().await
    }

    /// Starts another server (own controller id and events queue) on `other`'s database and
    /// Docker engine. Whichever stops last drops the database.
    pub async fn start_sharing(
        other: &TestServer,
        extra: &[(&str, &str)],
    ) -> Result<TestServer, String> {
        Self::builder()
            .engine(&other.engine)
            .share_database_with(other)
            .settings(extra)
            .start()
            .await
    }

    /// Starts the successor of this server: same database, controller id, events queue and
    /// Docker engine, with `extra` settings. A server still running is stopped first
    /// (draining, database kept); a crashed one is simply replaced.
    pub async fn restart(mut self, extra: &[(&str, &str)]) -> Result<TestServer, String> {
        self.stop_task().await?;
        let mut engine = self.engine.clone();
        for (key, value) in extra {
            if *key == DOCKER_HOST_SETTING {
                engine = Engine::for_setting(Some(value));
            }
        }
        let lease = self.lease.take().unwrap_or_else(DatabaseLease::first);
        // The successor takes the identity over, queues included.
        self.owns_queues = false;
        Self::start_with_identity(Identity {
            settings: extra
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
            engine,
            database: self.database.clone(),
            lease,
            controller_id: self.controller_id.clone(),
            events_queue: self.events_queue.clone(),
        })
        .await
    }

    async fn start_with_identity(identity: Identity) -> Result<TestServer, String> {
        // `ATTUNE_TEST_LOG=info,attune_controller=debug` shows the servers' logs of a test run.
        if let Ok(filter) = std::env::var("ATTUNE_TEST_LOG") {
            static LOGGING: std::sync::Once = std::sync::Once::new();
            LOGGING.call_once(|| {
                attune_server::telemetry::init(&filter, false, std::io::stderr);
            });
        }
        let Identity {
            settings: extra,
            engine,
            database,
            lease,
            controller_id,
            events_queue,
        } = identity;
        let environment = TestEnvironment::from_env();
        let database_url = database.url.clone();
        let token_file = admin_token_file(&database).display().to_string();
        let secrets_key_file = format!("{token_file}.secrets-key");
        let mut variables: HashMap<String, String> = [
            ("ATTUNE__DATABASE__URL", database_url.as_str()),
            ("ATTUNE__DATABASE__MAX_CONNECTIONS", "8"),
            (
                "ATTUNE__MESSAGE_QUEUE__URL",
                environment.message_queue_url.as_str(),
            ),
            ("ATTUNE__MESSAGE_QUEUE__EVENTS_QUEUE", events_queue.as_str()),
            (
                "ATTUNE__WORKERS__EVENTS_QUEUE",
                workers_events_queue(&database).as_str(),
            ),
            ("ATTUNE__EXECUTOR__CONTROLLER_ID", controller_id.as_str()),
            ("ATTUNE__DOCKER__NETWORK", "host"),
            ("ATTUNE__SERVER__ADMIN_TOKEN_FILE", token_file.as_str()),
            (
                "ATTUNE__SERVER__SECRETS_KEY_FILE",
                secrets_key_file.as_str(),
            ),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect();
        if let Some(docker_host) = engine.docker_host() {
            variables.insert(DOCKER_HOST_SETTING.to_string(), docker_host.to_string());
        }
        for (key, value) in extra {
            variables.insert(key, value);
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
        let task = tokio::spawn(attune_server::app::run(settings, listener, async move {
            let _ = stopped.await;
        }));
        let mut server = TestServer {
            base_url: format!("http://{address}"),
            controller_id,
            events_queue,
            database,
            engine,
            admin_token: String::new(),
            lease: Some(lease),
            stop: Some(stop),
            task: Some(task),
            owns_queues: true,
        };
        server.wait_until_listening().await?;
        server.admin_token = server.wait_admin_token().await?;
        Ok(server)
    }

    /// The database's admin token, once the first server on it has written it (right after
    /// it connected to the database, before it serves).
    async fn wait_admin_token(&self) -> Result<String, String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let error = match read_admin_token(&self.database) {
                Ok(token) if !token.is_empty() => return Ok(token),
                Ok(_) => "it is empty".to_string(),
                Err(error) => error,
            };
            if let Some(task) = &self.task {
                if task.is_finished() {
                    return Err(format!("test server exited during start-up ({error})"));
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err(error);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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

    /// Stops the server (draining running executions) and drops its database, unless
    /// another server still shares it (then the last one to stop drops it).
    pub async fn stop(mut self) -> Result<(), String> {
        let stopped = self.stop_task().await;
        let last = self.lease.take().is_none_or(DatabaseLease::release);
        if last {
            self.database.drop_database().await?;
            let _ = std::fs::remove_file(admin_token_file(&self.database));
            let _ = std::fs::remove_file(format!(
                "{}.secrets-key",
                admin_token_file(&self.database).display()
            ));
        }
        // This server's identity is retired for good (a restart keeps it and never gets here).
        self.owns_queues = false;
        delete_events_queues(&self.events_queue).await?;
        // Accounts its agents kept because the broker was away when they ended (the server's
        // periodic sweep would remove them; a test ends first).
        let environment = TestEnvironment::from_env();
        delete_agent_accounts(
            &environment.message_queue_url,
            &self.controller_id,
            &self.events_queue,
        )
        .await?;
        // Per database, but a test that drops the database itself (a borrowed lease) never
        // has a last server: every stop deletes it (a server still running on the database
        // declares it again at its next connection).
        delete_events_queues(&workers_events_queue(&self.database)).await?;
        stopped
    }

    /// Stops the server as [`TestServer::stop`] does, then asserts that no container of its
    /// controller is left on its engine.
    pub async fn finish(self) {
        let controller_id = self.controller_id.clone();
        let engine = self.engine.clone();
        self.stop().await.expect("stop test server");
        engine.assert_no_containers_left(&controller_id);
    }

    /// The containers (running or not) of this server's controller on its engine.
    pub fn containers(&self) -> Vec<String> {
        self.engine.containers_of(&self.controller_id)
    }

    /// Waits until no container of this server's controller is left on its engine.
    pub async fn wait_no_containers(&self, deadline: Duration) {
        self.engine
            .wait_no_containers(&self.controller_id, deadline)
            .await;
    }

    /// A guard removing this server's containers from its engine when dropped.
    pub fn container_guard(&self) -> ContainerGuard {
        ContainerGuard::on(&self.engine, &self.controller_id)
    }

    /// Signals the server to stop (draining) and waits for its task, if it still has one
    /// (a crashed server has none).
    async fn stop_task(&mut self) -> Result<(), String> {
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
        Ok(())
    }

    /// Sends the server its shutdown signal (as SIGTERM would) without waiting: it drains in
    /// the background while the test watches (`/readyz`, its executions); then
    /// [`TestServer::wait_stopped`].
    pub fn request_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits until a server told to stop has stopped (its drain included).
    pub async fn wait_stopped(&mut self) -> Result<(), String> {
        self.stop_task().await
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
    /// Stops the server, removes its containers and deletes its queues when a test ends
    /// without [`TestServer::stop`] (a failed assertion, an early return), so no container or
    /// queue is left behind.
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if self.owns_queues {
            // Retired for good by a test that ended early: nothing of it may keep running and
            // create containers after the test's own clean-up, so it ends here, and what it
            // left on its engine is removed.
            if let Some(task) = self.task.take() {
                task.abort();
                self.engine.remove_containers_of(&self.controller_id);
            }
            let events_queue = self.events_queue.clone();
            let workers_queue = workers_events_queue(&self.database);
            let controller_id = self.controller_id.clone();
            // On a thread with a runtime of its own: a drop may happen inside or outside one.
            let deleting = std::thread::spawn(move || {
                if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    let _ = runtime.block_on(delete_events_queues(&events_queue));
                    let _ = runtime.block_on(delete_events_queues(&workers_queue));
                    let _ = runtime.block_on(delete_agent_accounts(
                        &TestEnvironment::from_env().message_queue_url,
                        &controller_id,
                        &events_queue,
                    ));
                }
            });
            let _ = deleting.join();
        }
    }
}

/// How long a [`TestClient`] waits for an execution unless told otherwise.
pub const EXECUTION_DEADLINE: Duration = Duration::from_secs(120);

/// How often a waiting [`TestClient`] asks again.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// The server's HTTP API as end-to-end tests use it, built on the shared typed client
/// ([`ApiClient`], also available as [`TestClient::api`]). Calls that tests expect to succeed
/// (registering a pack, submitting, reading an execution) panic with the client's error when
/// they do not; [`TestClient::upload`], [`TestClient::submit`] and [`TestClient::cancel`]
/// return the raw response (built with [`ApiClient::request`]) for tests that check refusals,
/// and [`TestClient::get_json`] decodes any path's body whatever the status.
#[derive(Clone)]
pub struct TestClient {
    /// The typed client's HTTP client (same connection pool), for requests of a test's own.
    pub http: reqwest::Client,
    pub base_url: String,
    api: ApiClient,
    deadline: Duration,
}

impl TestClient {
    /// A client of a [`TestServer`], waiting up to [`EXECUTION_DEADLINE`] for executions.
    pub fn new(server: &TestServer) -> TestClient {
        TestClient::for_url(&server.base_url, Some(&server.admin_token))
    }

    /// A client of the server at `base_url` (e.g. a server process a test started itself),
    /// sending `token` (none: unauthenticated, for tests of refusals and health routes).
    pub fn for_url(base_url: &str, token: Option<&str>) -> TestClient {
        let api = match token {
            Some(token) => ApiClient::with_token(base_url, token),
            None => ApiClient::new(base_url),
        }
        .unwrap_or_else(|error| panic!("client of {base_url}: {error}"));
        TestClient {
            http: api.http().clone(),
            base_url: base_url.to_string(),
            api,
            deadline: EXECUTION_DEADLINE,
        }
    }

    /// The same client, waiting up to `deadline` for an execution instead.
    pub fn with_deadline(&self, deadline: Duration) -> TestClient {
        TestClient {
            deadline,
            ..self.clone()
        }
    }

    /// The typed client underneath, for calls whose errors a test inspects.
    pub fn api(&self) -> &ApiClient {
        &self.api
    }

    /// The address of an API path such as `/api/v1/executions`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// `POST /api/v1/packs?force=…` with a pack archive, whatever the answer.
    pub async fn upload(&self, archive: Vec<u8>, force: bool) -> reqwest::Response {
        self.api
            .request(Method::POST, &format!("/api/v1/packs?force={force}"))
            .header(reqwest::header::CONTENT_TYPE, TAR_CONTENT_TYPE)
            .body(archive)
            .send()
            .await
            .expect("upload pack")
    }

    /// Registers the pack in `dir`, replacing any earlier version; panics unless the server
    /// registers it.
    pub async fn register_dir(&self, dir: impl AsRef<Path>) {
        let dir = dir.as_ref();
        let archive = attune_pack::build_pack_archive(dir).expect("build pack archive");
        if let Err(error) = self.api.register_pack(archive, true).await {
            panic!("register {}: {error}", dir.display());
        }
    }

    /// `POST /api/v1/executions`, whatever the answer.
    pub async fn submit(&self, action: &str, parameters: Value) -> reqwest::Response {
        self.api
            .request(Method::POST, "/api/v1/executions")
            .json(&json!({"action": action, "parameters": parameters}))
            .send()
            .await
            .expect("submit execution")
    }

    /// Submits an execution; panics unless the server creates it, and returns its id.
    pub async fn submit_ok(&self, action: &str, parameters: Value) -> i64 {
        let Value::Object(parameters) = parameters else {
            panic!("submit {action}: parameters must be a JSON object, not {parameters}");
        };
        let request = CreateExecutionRequest {
            action: action.to_string(),
            parameters,
        };
        self.api
            .create_execution(&request)
            .await
            .unwrap_or_else(|error| panic!("submit {action}: {error}"))
            .id
    }

    /// `GET` of an API path (with its query), decoding its JSON body whatever the status.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> T {
        self.api
            .request(Method::GET, path)
            .send()
            .await
            .unwrap_or_else(|error| panic!("get {path}: {error}"))
            .json()
            .await
            .unwrap_or_else(|error| panic!("body of {path}: {error}"))
    }

    /// `GET /api/v1/executions/{id}`.
    pub async fn execution(&self, execution_id: i64) -> ExecutionView {
        self.api
            .get_execution(execution_id)
            .await
            .unwrap_or_else(|error| panic!("get execution {execution_id}: {error}"))
    }

    /// Every execution (up to 1000), newest first.
    pub async fn executions(&self) -> Vec<ExecutionView> {
        let filter = ExecutionFilter {
            limit: Some(1000),
            ..ExecutionFilter::default()
        };
        self.api
            .list_executions(&filter)
            .await
            .unwrap_or_else(|error| panic!("list executions: {error}"))
    }

    /// The executions that have not ended yet.
    pub async fn unfinished_executions(&self) -> Vec<ExecutionView> {
        self.executions()
            .await
            .into_iter()
            .filter(|execution| !execution.status.is_terminal())
            .collect()
    }

    /// Polls an execution until `done` holds for it; fails the test after the deadline,
    /// naming `what` was awaited.
    pub async fn wait_for(
        &self,
        execution_id: i64,
        what: &str,
        done: impl Fn(&ExecutionView) -> bool,
    ) -> ExecutionView {
        let deadline = tokio::time::Instant::now() + self.deadline;
        loop {
            let execution = self.execution(execution_id).await;
            if done(&execution) {
                return execution;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "execution {execution_id} not {what} after {:?}: {execution:?}",
                self.deadline
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Waits until the execution has ended.
    pub async fn wait_terminal(&self, execution_id: i64) -> ExecutionView {
        self.wait_for(execution_id, "terminal", |execution| {
            execution.status.is_terminal()
        })
        .await
    }

    /// Waits until the execution runs, or ended early (which the caller then reports).
    pub async fn wait_running(&self, execution_id: i64) -> ExecutionView {
        self.wait_for(execution_id, "running", |execution| {
            execution.status == ExecutionStatus::Running || execution.status.is_terminal()
        })
        .await
    }

    /// Submits (panicking unless created) and waits until the execution has ended.
    pub async fn run(&self, action: &str, parameters: Value) -> ExecutionView {
        let execution_id = self.submit_ok(action, parameters).await;
        self.wait_terminal(execution_id).await
    }

    /// Runs an execution as [`TestClient::run`] does and asserts that it succeeded.
    pub async fn run_succeeded(&self, action: &str, parameters: Value) -> ExecutionView {
        let execution = self.run(action, parameters).await;
        assert_eq!(
            execution.status,
            ExecutionStatus::Succeeded,
            "{action}: {execution:?}"
        );
        execution
    }

    /// `POST /api/v1/executions/{id}/cancel`, whatever the answer.
    pub async fn cancel(&self, execution_id: i64) -> reqwest::Response {
        self.api
            .request(
                Method::POST,
                &format!("/api/v1/executions/{execution_id}/cancel"),
            )
            .send()
            .await
            .expect("cancel execution")
    }

    /// The stored log chunks of an execution.
    pub async fn logs(&self, execution_id: i64) -> Vec<LogChunkView> {
        self.api
            .execution_logs(execution_id, None)
            .await
            .unwrap_or_else(|error| panic!("logs of execution {execution_id}: {error}"))
    }

    /// The warm pools.
    pub async fn pools(&self) -> Vec<PoolView> {
        self.api
            .list_pools()
            .await
            .unwrap_or_else(|error| panic!("list pools: {error}"))
    }

    /// The managed containers (`GET /api/v1/containers`).
    pub async fn containers(&self) -> Vec<ContainerView> {
        self.api
            .list_containers()
            .await
            .unwrap_or_else(|error| panic!("list containers: {error}"))
    }
}

/// Runs one query with `psql` against a test database and returns its unaligned output (for
/// tests that look at what is stored, as an operator with the database would).
pub fn psql(url: &str, query: &str) -> String {
    let output = std::process::Command::new("psql")
        .args([url, "-qtAX", "-v", "ON_ERROR_STOP=1", "-c", query])
        .output()
        .expect("run psql");
    assert!(output.status.success(), "psql {query}: {output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Where the servers of a test database keep its first admin token (`server.admin_token_file`):
/// the first server on the database writes it, the others (sharing it, restarted, or a server
/// process the test starts with this setting) find it there.
pub fn admin_token_file(database: &TestDatabase) -> std::path::PathBuf {
    std::env::temp_dir()
        .join("attune-test-tokens")
        .join(&database.name)
}

/// The first admin token of a test database ([`admin_token_file`]).
pub fn read_admin_token(database: &TestDatabase) -> Result<String, String> {
    let path = admin_token_file(database);
    std::fs::read_to_string(&path)
        .map(|token| token.trim().to_string())
        .map_err(|error| {
            format!(
                "read the test database's admin token {}: {error}",
                path.display()
            )
        })
}

/// The full ids of every container (running or not) labelled with a controller's id, on the
/// default engine; none when the engine does not answer (as it always did: tests that stop
/// dockerd call it). [`Engine::containers_of`] fails instead.
pub fn containers_of(controller_id: &str) -> Vec<String> {
    Engine::Default
        .try_containers_labelled(&format!("attune.controller={controller_id}"))
        .unwrap_or_default()
}

/// Asserts that no container (running or not) of a controller is left on the default engine.
pub fn assert_no_containers_left(controller_id: &str) {
    let left = containers_of(controller_id);
    assert!(left.is_empty(), "containers left behind: {left:?}");
}

/// Waits until no container of a controller is left on the default engine; fails the test
/// after `deadline`.
pub async fn wait_no_containers(controller_id: &str, deadline: Duration) {
    let give_up = tokio::time::Instant::now() + deadline;
    loop {
        let left = containers_of(controller_id);
        if left.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "containers of {controller_id} never removed: {left:?}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Removes every container of a controller when dropped, whatever happened in the test.
pub struct ContainerGuard {
    engine: Engine,
    controller_id: String,
}

impl ContainerGuard {
    /// Guards a controller's containers on the default engine.
    pub fn new(controller_id: &str) -> ContainerGuard {
        ContainerGuard::on(&Engine::Default, controller_id)
    }

    /// Guards a controller's containers on `engine`.
    pub fn on(engine: &Engine, controller_id: &str) -> ContainerGuard {
        ContainerGuard {
            engine: engine.clone(),
            controller_id: controller_id.to_string(),
        }
    }
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        self.engine.remove_containers_of(&self.controller_id);
    }
}

/// Deletes a retired test server's events queue, exchange and dead-letter queue, and the
/// broker accounts of its agents, from the shared broker (a production controller keeps its
/// queues: reports wait there across restarts). The controller id is read from the events
/// queue's name (`attune.controller.<id>.events`).
pub async fn delete_events_queues(events_queue: &str) -> Result<(), String> {
    let environment = TestEnvironment::from_env();
    if let Some(controller_id) = events_queue
        .strip_prefix("attune.controller.")
        .and_then(|rest| rest.strip_suffix(".events"))
    {
        delete_agent_accounts(&environment.message_queue_url, controller_id, events_queue).await?;
    }
    let broker = attune_broker::Broker::connect(
        &environment.message_queue_url,
        events_queue,
        Duration::from_secs(10),
    )
    .await
    .map_err(|error| format!("connect to delete test queues: {error}"))?;
    let deleted = broker
        .delete_events_queues()
        .await
        .map_err(|error| format!("delete test queues of {events_queue}: {error}"));
    broker.close().await;
    deleted
}

/// Deletes every broker account of `controller_id`'s agents (a server that was killed or
/// aborted could not).
pub async fn delete_agent_accounts(
    message_queue_url: &str,
    controller_id: &str,
    events_queue: &str,
) -> Result<(), String> {
    let accounts = attune_broker::accounts::AgentAccounts::new(
        MANAGEMENT_URL,
        message_queue_url,
        message_queue_url,
        controller_id,
        events_queue,
    )
    .map_err(|error| error.to_string())?;
    for agent_id in accounts.listed().await.map_err(|error| error.to_string())? {
        accounts
            .revoke(&agent_id)
            .await
            .map_err(|error| error.to_string())?;
    }
    Ok(())
}

/// The shared broker's management API (scripts/rabbitmq-config.sh turns it on).
pub const MANAGEMENT_URL: &str = "http://127.0.0.1:15672";

/// The workers' events queue of the servers on `database` (one per test database, so tests
/// sharing the broker never read each other's workers' events).
pub fn workers_events_queue(database: &TestDatabase) -> String {
    format!("attune.test.workers.{}", database.name)
}

/// Deletes the broker accounts and job queues of test workers' enrollments (their agent ids).
pub async fn delete_worker_enrollments(agent_ids: &[String]) {
    let url = TestEnvironment::from_env().message_queue_url;
    if let Ok(accounts) = attune_broker::accounts::AgentAccounts::new(
        MANAGEMENT_URL,
        &url,
        &url,
        "workers",
        attune_protocol::worker::WORKERS_EVENTS_QUEUE,
    ) {
        for agent_id in agent_ids {
            let _ = accounts.revoke(agent_id).await;
        }
    }
    for agent_id in agent_ids {
        services::delete_queue(&attune_protocol::queues::agent_job_queue(agent_id));
    }
}

/// Deletes the enrollments ([`delete_worker_enrollments`]) of every worker whose agent id
/// starts with `worker-<name>-` for one of `names` (a test's workers, whatever it got to).
pub async fn delete_enrollments_of_workers(names: &[String]) {
    let url = TestEnvironment::from_env().message_queue_url;
    let Ok(accounts) = attune_broker::accounts::AgentAccounts::new(
        MANAGEMENT_URL,
        &url,
        &url,
        "workers",
        attune_protocol::worker::WORKERS_EVENTS_QUEUE,
    ) else {
        return;
    };
    let agent_ids: Vec<String> = accounts
        .listed()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|agent_id| {
            names
                .iter()
                .any(|name| agent_id.starts_with(&format!("worker-{name}-")))
        })
        .collect();
    delete_worker_enrollments(&agent_ids).await;
}

/// What the shared broker's management API says of its connections: (connection name, user,
/// whether it is TLS).
pub async fn broker_connections() -> Vec<(String, String, bool)> {
    let listed: Vec<serde_json::Value> = reqwest::Client::new()
        .get(format!("{MANAGEMENT_URL}/api/connections"))
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .expect("management API")
        .json()
        .await
        .expect("connections as JSON");
    listed
        .iter()
        .map(|connection| {
            (
                connection["client_properties"]["connection_name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                connection["user"].as_str().unwrap_or_default().to_string(),
                connection["ssl"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}
