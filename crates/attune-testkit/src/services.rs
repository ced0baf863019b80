//! Stops and starts the host's shared RabbitMQ and PostgreSQL for the outage tests, through
//! scripts/services.sh (the way scripts/setup-host.sh runs them). [`ServiceGuard`] leaves the
//! service running however a test ends. Only a test binary of its own may use these (cargo
//! runs test binaries one after another): every other test shares the services.

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// A host service the outage tests restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    RabbitMq,
    Postgres,
}

impl Service {
    fn name(self) -> &'static str {
        match self {
            Service::RabbitMq => "rabbitmq",
            Service::Postgres => "postgres",
        }
    }

    fn run(self, verb: &str) -> Result<(), String> {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/services.sh");
        let output = Command::new("bash")
            .arg(&script)
            .args([self.name(), verb])
            .stdin(Stdio::null())
            .output()
            .map_err(|error| format!("run {} {} {verb}: {error}", script.display(), self.name()))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "services.sh {} {verb}: {}: {}",
                self.name(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    }

    /// Stops the service and waits until it is down.
    pub fn stop(self) {
        self.run("stop")
            .unwrap_or_else(|error| panic!("stop {}: {error}", self.name()));
    }

    /// Starts the service and waits until it answers.
    pub fn start(self) {
        self.run("start")
            .unwrap_or_else(|error| panic!("start {}: {error}", self.name()));
    }

    /// Whether the service runs.
    pub fn is_up(self) -> bool {
        self.run("status").is_ok()
    }

    /// Stops the service in a blocking task (the tokio runtime keeps serving the server).
    pub async fn stop_async(self) {
        tokio::task::spawn_blocking(move || self.stop())
            .await
            .expect("stop service task");
    }

    /// Starts the service in a blocking task.
    pub async fn start_async(self) {
        tokio::task::spawn_blocking(move || self.start())
            .await
            .expect("start service task");
    }
}

/// Starts the service again when dropped, if a test left it stopped.
pub struct ServiceGuard(pub Service);

impl Drop for ServiceGuard {
    fn drop(&mut self) {
        if !self.0.is_up() {
            eprintln!("{:?} is down; starting it again", self.0);
            if let Err(error) = self.0.run("start") {
                eprintln!("start {:?} again: {error}", self.0);
            }
        }
    }
}

/// Deletes a queue of the shared broker with `rabbitmqctl` (absent is fine).
pub fn delete_queue(queue: &str) {
    let _ = Command::new("rabbitmqctl")
        .args(["-q", "delete_queue", queue])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// How many messages (ready and unacknowledged) a queue on the shared broker holds, from
/// `rabbitmqctl`; `None` when the queue does not exist or the broker does not answer.
pub fn queue_messages(queue: &str) -> Option<u64> {
    let output = Command::new("rabbitmqctl")
        .args([
            "-q",
            "list_queues",
            "name",
            "messages",
            "--no-table-headers",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .find(|(name, _)| *name == queue)
        .and_then(|(_, count)| count.trim().parse().ok())
}
