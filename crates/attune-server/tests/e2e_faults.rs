//! Faults end to end against the real engine, broker and database: a fork bomb held by its
//! container's pids limit and ended by its timeout, the agent SIGKILLed from the host in the
//! middle of a job, the server *process* SIGKILLed and started again (the real binary, not a
//! task), and a pull through a registry login from a loopback registry that refuses. Every
//! execution must end (never stuck, never a false success) and no container may outlive it.
//!
//! Needs Docker, RabbitMQ, Postgres, the images of scripts/build-images.sh and the agent of
//! scripts/build-agent.sh (`make test` provides all of them).

use attune_protocol::api::ExecutionStatus;
use attune_testkit::{
    assert_no_containers_left, containers_of, wait_no_containers, ContainerGuard, TestClient,
    TestDatabase, TestEnvironment, TestServer,
};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(120);

fn faults_pack_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/packs/faults")
}

async fn start_in_process() -> (TestServer, TestClient, ContainerGuard) {
    let server = TestServer::start(&[("ATTUNE__EXECUTOR__KILL_GRACE_SECONDS", "1")])
        .await
        .expect("start test server");
    let guard = ContainerGuard::new(&server.controller_id);
    let client = TestClient::new(&server);
    client.register_dir(faults_pack_dir()).await;
    (server, client, guard)
}

/// `docker inspect -f <template>` of a container.
fn inspect_field(container_id: &str, template: &str) -> String {
    let output = Command::new("docker")
        .args(["inspect", "-f", template, container_id])
        .output()
        .expect("docker inspect");
    assert!(
        output.status.success(),
        "docker inspect {container_id}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// The container's pids cgroup directory (cgroup v1 with the cgroupfs driver, or v2 with
/// either driver); `None` where none of those layouts is found.
fn pids_cgroup(container_id: &str) -> Option<PathBuf> {
    [
        format!("/sys/fs/cgroup/pids/docker/{container_id}"),
        format!("/sys/fs/cgroup/pids/system.slice/docker-{container_id}.scope"),
        format!("/sys/fs/cgroup/docker/{container_id}"),
        format!("/sys/fs/cgroup/system.slice/docker-{container_id}.scope"),
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|directory| directory.join("pids.current").exists())
}

/// How many forks the pids limit refused (`max` in pids.events).
fn refused_forks(cgroup: &Path) -> Option<u64> {
    let events = std::fs::read_to_string(cgroup.join("pids.events")).ok()?;
    events
        .lines()
        .find_map(|line| line.strip_prefix("max "))
        .and_then(|count| count.trim().parse().ok())
}

fn pids_current(cgroup: &Path) -> Option<u64> {
    std::fs::read_to_string(cgroup.join("pids.current"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_is_held_by_the_pids_limit_and_ends_as_timeout_or_failed() {
    let (server, client, _guard) = start_in_process().await;
    let id = client.submit_ok("faults.forkbomb", json!({})).await;
    let running = client.wait_running(id).await;
    assert_eq!(running.status, ExecutionStatus::Running, "{running:?}");
    let container_id = running.container_id.clone().expect("container id");
    assert_eq!(
        inspect_field(&container_id, "{{.HostConfig.PidsLimit}}"),
        "64",
        "the action's pids limit reached the container"
    );

    // While the bomb runs: it hits the limit, never exceeds it, and the host can still fork.
    let mut refused_seen = None;
    let mut most_pids = 0;
    if let Some(cgroup) = pids_cgroup(&container_id) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while refused_seen.is_none_or(|refused| refused == 0) {
            if let Some(current) = pids_current(&cgroup) {
                most_pids = most_pids.max(current);
            }
            refused_seen = refused_forks(&cgroup);
            if !cgroup.exists() || tokio::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            refused_seen.is_some_and(|refused| refused > 0),
            "the bomb never hit the pids limit (pids.events max: {refused_seen:?})"
        );
        assert!(
            most_pids <= 64,
            "{most_pids} tasks in a container limited to 64"
        );
    } else {
        eprintln!("no pids cgroup found for {container_id}; checking with docker top only");
    }
    let top = Command::new("docker")
        .args(["top", &container_id, "-eo", "pid"])
        .output()
        .expect("docker top");
    if top.status.success() {
        let processes = String::from_utf8_lossy(&top.stdout).lines().count() - 1;
        assert!(processes <= 64, "{processes} processes in the container");
    }
    let host_forks = Command::new("true").status().expect("fork on the host");
    assert!(host_forks.success(), "the host can still start processes");

    let done = client.wait_terminal(id).await;
    eprintln!(
        "fork bomb ended {:?} ({:?}); forks refused: {refused_seen:?}, most tasks: {most_pids}",
        done.status, done.error
    );
    assert!(
        matches!(
            done.status,
            ExecutionStatus::Timeout | ExecutionStatus::Failed
        ),
        "a fork bomb ends as timeout or failed: {done:?}"
    );
    assert!(
        !done.error.clone().unwrap_or_default().is_empty(),
        "with a reason: {done:?}"
    );
    wait_no_containers(&server.controller_id, DEADLINE).await;
    server.finish().await;
}

/// The host pid of the agent in a container, from `docker top` (its comm is attune-agent).
fn agent_host_pid(container_id: &str) -> Option<u32> {
    let output = Command::new("docker")
        .args(["top", container_id, "-eo", "pid,comm"])
        .output()
        .expect("docker top");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .skip(1)
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            let pid = fields.next()?.parse().ok()?;
            (fields.next()? == "attune-agent").then_some(pid)
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_job_fails_the_execution_and_its_container_is_removed() {
    let (server, client, _guard) = start_in_process().await;
    let id = client.submit_ok("faults.nap", json!({"seconds": 90})).await;
    let running = client.wait_running(id).await;
    assert_eq!(running.status, ExecutionStatus::Running, "{running:?}");
    let container_id = running.container_id.clone().expect("container id");
    let agent_pid = agent_host_pid(&container_id).expect("an attune-agent process in docker top");
    let killed = Command::new("kill")
        .args(["-9", &agent_pid.to_string()])
        .output()
        .expect("kill the agent");
    assert!(
        killed.status.success(),
        "kill -9 {agent_pid}: {}",
        String::from_utf8_lossy(&killed.stderr)
    );

    let done = client.wait_terminal(id).await;
    assert_eq!(done.status, ExecutionStatus::Failed, "{done:?}");
    let kind = server.database.failure_kind(id).await;
    assert!(
        matches!(kind.as_deref(), Some("agent-exited") | Some("killed")),
        "kind {kind:?}: {done:?}"
    );
    let error = done.error.clone().unwrap_or_default();
    assert!(
        error.contains("agent")
            && (error.contains("killed") || error.contains("exited"))
            && error.contains("before report"),
        "the reason says the agent died before reporting: {error}"
    );
    wait_no_containers(&server.controller_id, DEADLINE).await;
    server.stop().await.expect("stop test server");
}

/// How to start `attune-server` (the built binary) on a fresh database, the same way twice.
struct ServerCommand {
    database_url: String,
    /// Where the first start writes the admin token (the test database's, as the testkit's).
    admin_token_file: PathBuf,
    controller_id: String,
    events_queue: String,
    port: u16,
    agent_binary: PathBuf,
    extra: Vec<(String, String)>,
    log_directory: tempfile::TempDir,
}

impl ServerCommand {
    fn new(database: &TestDatabase, extra: &[(&str, &str)]) -> ServerCommand {
        let unique = uuid::Uuid::new_v4().simple().to_string();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("find a free port")
            .port();
        ServerCommand {
            database_url: database.url.clone(),
            admin_token_file: attune_testkit::admin_token_file(database),
            controller_id: format!("test-{}", &unique[..12]),
            events_queue: format!("attune.test.{}.events", &unique[..12]),
            port,
            agent_binary: TestEnvironment::from_env().agent_binary,
            extra: extra
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
            log_directory: tempfile::tempdir().expect("log directory"),
        }
    }

    fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A client of the server process with the admin token its first start wrote.
    fn client(&self) -> TestClient {
        let token = std::fs::read_to_string(&self.admin_token_file)
            .unwrap_or_else(|error| panic!("read {}: {error}", self.admin_token_file.display()));
        TestClient::for_url(&self.base_url(), Some(token.trim()))
    }

    /// Starts the binary; its output goes to `server-<generation>.log`.
    fn spawn(&self, generation: u32) -> ServerProcess {
        let log_path = self
            .log_directory
            .path()
            .join(format!("server-{generation}.log"));
        let log = std::fs::File::create(&log_path).expect("create server log");
        let environment = TestEnvironment::from_env();
        let mut command = Command::new(env!("CARGO_BIN_EXE_attune-server"));
        command
            .args(["--bind", &format!("127.0.0.1:{}", self.port)])
            .arg("--agent-binary")
            .arg(&self.agent_binary)
            .env_remove("ATTUNE_CONFIG")
            .env("ATTUNE__DATABASE__URL", &self.database_url)
            .env("ATTUNE__SERVER__ADMIN_TOKEN_FILE", &self.admin_token_file)
            .env(
                "ATTUNE__SERVER__SECRETS_KEY_FILE",
                format!("{}.secrets-key", self.admin_token_file.display()),
            )
            .env("ATTUNE__DATABASE__MAX_CONNECTIONS", "8")
            .env("ATTUNE__MESSAGE_QUEUE__URL", &environment.message_queue_url)
            .env("ATTUNE__MESSAGE_QUEUE__EVENTS_QUEUE", &self.events_queue)
            .env("ATTUNE__EXECUTOR__CONTROLLER_ID", &self.controller_id)
            .env("ATTUNE__EXECUTOR__KILL_GRACE_SECONDS", "1")
            .env("ATTUNE__DOCKER__NETWORK", "host")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        for (key, value) in &self.extra {
            command.env(key, value);
        }
        let child = command.spawn().expect("start attune-server");
        ServerProcess {
            child: Some(child),
            log_path,
        }
    }
}

/// A running `attune-server` process; SIGKILLed on drop if still running.
struct ServerProcess {
    child: Option<Child>,
    log_path: PathBuf,
}

impl ServerProcess {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Waits until the server answers `/readyz` with 200, failing if the process exits.
    async fn wait_ready(&mut self, base_url: &str) {
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.as_mut().and_then(|child| child.try_wait().ok()?) {
                panic!(
                    "attune-server exited during start-up ({status}):\n{}",
                    self.log_tail()
                );
            }
            let ready = http
                .get(format!("{base_url}/readyz"))
                .send()
                .await
                .is_ok_and(|response| response.status().is_success());
            if ready {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "attune-server not ready after 60s:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `kill -9`: no drain, no clean-up; returns once the process is gone.
    fn sigkill(&mut self) {
        let mut child = self.child.take().expect("a running server");
        child.kill().expect("SIGKILL attune-server");
        let status = child.wait().expect("reap attune-server");
        assert!(!status.success(), "killed, not exited: {status}");
    }

    /// SIGTERM, then waits (bounded) for the graceful exit.
    async fn sigterm(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("a running server");
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("send SIGTERM");
        assert!(sent.success(), "kill -TERM {}", child.id());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().expect("poll attune-server") {
                return status;
            }
            if tokio::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "attune-server did not stop within 60s of SIGTERM:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_server_process_is_restarted_and_leaves_no_container_and_no_live_execution() {
    let database = TestDatabase::create().await.expect("create test database");
    let command = ServerCommand::new(&database, &[]);
    let _guard = ContainerGuard::new(&command.controller_id);
    let base_url = command.base_url();
    let mut first = command.spawn(1);
    first.wait_ready(&base_url).await;
    let client = command.client();
    client.register_dir(faults_pack_dir()).await;
    let long = client.submit_ok("faults.nap", json!({"seconds": 20})).await;
    let short = client.submit_ok("faults.nap", json!({"seconds": 4})).await;
    for id in [long, short] {
        let running = client.wait_running(id).await;
        assert_eq!(
            running.status,
            ExecutionStatus::Running,
            "{running:?}\n{}",
            first.log_tail()
        );
    }

    first.sigkill();
    let left = containers_of(&command.controller_id);
    assert_eq!(left.len(), 2, "a killed server removes nothing: {left:?}");

    let mut second = command.spawn(2);
    second.wait_ready(&base_url).await;
    // A fresh client: the old connections died with the first process.
    let client = command.client();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let live = client.unfinished_executions().await;
        if live.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "executions still requested/scheduled/running: {live:?}\n{}",
            second.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let short_done = client.execution(short).await;
    assert_eq!(
        short_done.status,
        ExecutionStatus::Succeeded,
        "the short nap was adopted and its report reached the new process: {short_done:?}"
    );
    assert_eq!(
        short_done.result.as_ref().map(|result| &result["slept"]),
        Some(&json!(4))
    );
    let long_done = client.execution(long).await;
    match long_done.status {
        ExecutionStatus::Succeeded => {
            assert_eq!(
                long_done.result.as_ref().map(|result| &result["slept"]),
                Some(&json!(20))
            )
        }
        ExecutionStatus::Failed => assert!(
            !long_done.error.clone().unwrap_or_default().is_empty(),
            "failed with a reason: {long_done:?}"
        ),
        other => panic!("the long nap ended {other:?}: {long_done:?}"),
    }
    assert!(
        second.log().contains("adopting container"),
        "the new process adopted the running containers:\n{}",
        second.log_tail()
    );
    wait_no_containers(&command.controller_id, DEADLINE).await;

    let status = second.sigterm().await;
    assert!(
        status.success(),
        "SIGTERM stops the server cleanly ({status}):\n{}",
        second.log_tail()
    );
    assert_no_containers_left(&command.controller_id);
    database.drop_database().await.expect("drop test database");
    attune_testkit::delete_events_queues(&command.events_queue)
        .await
        .expect("delete the test's queues");
}

/// Two controllers on two engines sharing one database: the real server process of one is
/// SIGKILLed while it runs a nap; the survivor takes it over within lease + grace
/// (`controller-lost`), and when the killed controller starts again it removes the container
/// it left on its own engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_controller_process_is_taken_over_by_the_other_controller() {
    let membership = [
        ("ATTUNE__EXECUTOR__CONTROLLER_HEARTBEAT_SECONDS", "1"),
        ("ATTUNE__EXECUTOR__CONTROLLER_GRACE_SECONDS", "5"),
    ];
    let second = attune_testkit::Engine::second();
    let second_host = second.docker_host().expect("the second engine").to_string();
    let database = TestDatabase::create().await.expect("create test database");
    let mut settings = membership.to_vec();
    settings.push(("ATTUNE__DOCKER__HOST", second_host.as_str()));
    let command = ServerCommand::new(&database, &settings);
    let _guard = ContainerGuard::on(&second, &command.controller_id);
    let base_url = command.base_url();
    let mut doomed = command.spawn(1);
    doomed.wait_ready(&base_url).await;
    let client = command.client();
    client.register_dir(faults_pack_dir()).await;
    // Only the doomed controller runs yet, so it claims the nap.
    let nap = client
        .submit_ok("faults.nap", json!({"seconds": 300}))
        .await;
    let running = client.wait_running(nap).await;
    assert_eq!(
        running.controller_id.as_deref(),
        Some(command.controller_id.as_str())
    );
    assert_eq!(second.containers_of(&command.controller_id).len(), 1);

    let survivor = TestServer::builder()
        .settings(&membership)
        .share_database_with_url(&database)
        .start()
        .await
        .expect("start the surviving controller");
    let survivor_client = TestClient::new(&survivor);
    doomed.sigkill();
    let ended = survivor_client.wait_terminal(nap).await;
    assert_eq!(ended.status, ExecutionStatus::Failed, "{ended:?}");
    assert_eq!(
        ended.failure_kind.map(|kind| kind.as_str()),
        Some("controller-lost"),
        "{ended:?}"
    );
    assert!(
        ended
            .error
            .clone()
            .unwrap_or_default()
            .contains(&survivor.controller_id),
        "the reason names the controller that took over: {ended:?}"
    );
    assert_eq!(
        second.containers_of(&command.controller_id).len(),
        1,
        "a killed controller removes nothing"
    );

    // The returning controller finds none of its executions live and reaps its container.
    let mut returned = command.spawn(2);
    returned.wait_ready(&base_url).await;
    second
        .wait_no_containers(&command.controller_id, DEADLINE)
        .await;
    let status = returned.sigterm().await;
    assert!(status.success(), "{}", returned.log_tail());
    survivor.finish().await;
    database.drop_database().await.expect("drop test database");
    attune_testkit::delete_events_queues(&command.events_queue)
        .await
        .expect("delete the test's queues");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_with_credentials_from_a_refusing_loopback_registry_fails_fast_and_never_logs_the_password(
) {
    const PASSWORD: &str = "pa55-never-in-any-log";
    let database = TestDatabase::create().await.expect("create test database");
    let registry_auth =
        format!(r#"{{"127.0.0.1:1": {{"username": "attune-robot", "password": "{PASSWORD}"}}}}"#);
    let command = ServerCommand::new(
        &database,
        &[
            ("ATTUNE__DOCKER__REGISTRY_AUTH", registry_auth.as_str()),
            ("ATTUNE__LOG__LEVEL", "debug"),
        ],
    );
    let _guard = ContainerGuard::new(&command.controller_id);
    let base_url = command.base_url();
    let mut server = command.spawn(1);
    server.wait_ready(&base_url).await;
    let client = command.client();
    client.register_dir(faults_pack_dir()).await;

    let submitted = tokio::time::Instant::now();
    let id = client.submit_ok("faults.private_image", json!({})).await;
    let done = client.wait_terminal(id).await;
    let took = submitted.elapsed();
    assert_eq!(done.status, ExecutionStatus::Failed, "{done:?}");
    assert_eq!(
        database.failure_kind(id).await.as_deref(),
        Some("pull-failed")
    );
    let error = done.error.clone().unwrap_or_default();
    assert!(
        error.contains("127.0.0.1:1/attune-test/private:1") && error.contains("connection refused"),
        "a clear reason: {error}"
    );
    assert!(took < Duration::from_secs(20), "fails fast, took {took:?}");
    assert!(done.container_id.is_none(), "no container: {done:?}");

    let status = server.sigterm().await;
    assert!(status.success(), "{status}:\n{}", server.log_tail());
    let log = server.log();
    assert!(
        log.contains("attune-robot"),
        "the pull's user name is logged:\n{}",
        server.log_tail()
    );
    assert!(
        !log.contains(PASSWORD) && !error.contains(PASSWORD),
        "the password never appears in the log or the reason"
    );
    // Every request above carried the admin token, with debug logging on: it is never logged,
    // nor the agent's event key, nor the broker URL's password.
    let token = std::fs::read_to_string(&command.admin_token_file).expect("the admin token");
    let token = token.trim();
    assert!(log.contains("attune-server listening"), "the log was read");
    assert!(
        !log.contains(token),
        "the API token appears in the debug log"
    );
    assert!(
        !log.contains("event_key"),
        "an agent's event key appears in the debug log"
    );
    assert!(
        !log.contains("guest:guest@"),
        "the broker password appears in the debug log"
    );
    assert_no_containers_left(&command.controller_id);
    database.drop_database().await.expect("drop test database");
    attune_testkit::delete_events_queues(&command.events_queue)
        .await
        .expect("delete the test's queues");
}
