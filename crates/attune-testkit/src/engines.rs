//! Docker engines as tests see them, through the `docker` CLI: the default engine (what
//! `DOCKER_HOST` or the default socket names) and others by address, such as the second engine
//! of scripts/second-engine.sh. Lists, waits for and removes the containers a controller left
//! on a given engine.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The variable naming the second engine's address for tests of two Docker hosts.
pub const SECOND_DOCKER_HOST_ENV: &str = "ATTUNE_TEST_SECOND_DOCKER_HOST";

/// Where scripts/second-engine.sh puts the second engine's socket.
pub const DEFAULT_SECOND_DOCKER_HOST: &str = "unix:///run/attune-engine2/docker.sock";

/// How often the waiting helpers look again.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// A Docker engine: the default one or one at an address (`unix:///path`, `tcp://…`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum Engine {
    /// `DOCKER_HOST`, or the default socket.
    #[default]
    Default,
    /// An engine at this address, as `docker -H` and `ATTUNE__DOCKER__HOST` take it.
    At(String),
}

impl Engine {
    /// The engine at `docker_host`.
    pub fn at(docker_host: &str) -> Engine {
        Engine::At(docker_host.to_string())
    }

    /// The engine a server with this `docker.host` setting talks to (`None` or empty: the
    /// default one).
    pub fn for_setting(docker_host: Option<&str>) -> Engine {
        match docker_host {
            Some(host) if !host.is_empty() => Engine::at(host),
            _ => Engine::Default,
        }
    }

    /// The second engine of scripts/second-engine.sh: its address from
    /// [`SECOND_DOCKER_HOST_ENV`] (default [`DEFAULT_SECOND_DOCKER_HOST`]). Panics, saying how
    /// to start it, when its socket is missing or it does not answer: tests that need it fail,
    /// they are never skipped.
    pub fn second() -> Engine {
        let docker_host = std::env::var(SECOND_DOCKER_HOST_ENV)
            .ok()
            .filter(|value| !value.is_empty())
            .unwrap_or_else(|| DEFAULT_SECOND_DOCKER_HOST.to_string());
        if let Some(socket) = docker_host.strip_prefix("unix://") {
            assert!(
                Path::new(socket).exists(),
                "the second Docker engine's socket {socket} does not exist \
                 ({SECOND_DOCKER_HOST_ENV}={docker_host}): run `bash scripts/second-engine.sh start` \
                 (as root) first"
            );
        }
        let engine = Engine::at(&docker_host);
        let info = engine
            .command()
            .args(["info", "--format", "{{.ServerVersion}}"])
            .output()
            .expect("run docker info");
        assert!(
            info.status.success(),
            "the second Docker engine at {docker_host} does not answer `docker info`: {} \
             — run `bash scripts/second-engine.sh start` (as root) first",
            String::from_utf8_lossy(&info.stderr).trim()
        );
        engine
    }

    /// The address as the server's `docker.host` setting takes it (`None` for the default).
    pub fn docker_host(&self) -> Option<&str> {
        match self {
            Engine::Default => None,
            Engine::At(host) => Some(host),
        }
    }

    /// A `docker` command aimed at this engine.
    pub fn command(&self) -> Command {
        let mut command = Command::new("docker");
        if let Engine::At(host) = self {
            command.args(["-H", host]);
        }
        command
    }

    /// The full ids of every container (running or not) carrying `label` (`key=value`);
    /// fails the test when the engine does not answer.
    pub fn containers_labelled(&self, label: &str) -> Vec<String> {
        self.try_containers_labelled(label)
            .unwrap_or_else(|error| panic!("docker ps on {self:?}: {error}"))
    }

    /// [`Engine::containers_labelled`], with the engine's complaint as the error.
    pub fn try_containers_labelled(&self, label: &str) -> Result<Vec<String>, String> {
        let output = self
            .command()
            .args(["ps", "-aq", "--no-trunc", "--filter"])
            .arg(format!("label={label}"))
            .output()
            .map_err(|error| format!("run docker: {error}"))?;
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).trim().to_string());
        }
        Ok(String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect())
    }

    /// The full ids of every container (running or not) labelled with a controller's id.
    pub fn containers_of(&self, controller_id: &str) -> Vec<String> {
        self.containers_labelled(&format!("attune.controller={controller_id}"))
    }

    /// Whether a container exists on this engine (by full or short id, or name).
    pub fn has_container(&self, container_id: &str) -> bool {
        self.command()
            .args(["container", "inspect", "--format", "{{.Id}}", container_id])
            .output()
            .is_ok_and(|output| output.status.success())
    }

    /// Asserts that no container (running or not) of a controller is left on this engine.
    pub fn assert_no_containers_left(&self, controller_id: &str) {
        let left = self.containers_of(controller_id);
        assert!(
            left.is_empty(),
            "containers of {controller_id} left behind on {self:?}: {left:?}"
        );
    }

    /// Waits until no container of a controller is left on this engine; fails the test after
    /// `deadline`.
    pub async fn wait_no_containers(&self, controller_id: &str, deadline: Duration) {
        let give_up = tokio::time::Instant::now() + deadline;
        loop {
            let left = self.containers_of(controller_id);
            if left.is_empty() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < give_up,
                "containers of {controller_id} on {self:?} never removed after {deadline:?}: {left:?}"
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Removes (forcibly) every container of a controller on this engine. Never panics (it
    /// runs in guards' destructors): an engine that does not answer is reported on stderr.
    pub fn remove_containers_of(&self, controller_id: &str) {
        let label = format!("attune.controller={controller_id}");
        match self.try_containers_labelled(&label) {
            Ok(containers) => {
                for container_id in containers {
                    let _ = self.command().args(["rm", "-f", &container_id]).output();
                }
            }
            Err(error) => {
                eprintln!("cannot remove the containers of {controller_id} on {self:?}: {error}")
            }
        }
    }
}

/// The full ids of every container (running or not) labelled with a controller's id on the
/// engine at `docker_host`.
pub fn containers_on(docker_host: &str, controller_id: &str) -> Vec<String> {
    Engine::at(docker_host).containers_of(controller_id)
}

/// Asserts that no container of a controller is left on the engine at `docker_host`.
pub fn assert_no_containers_left_on(docker_host: &str, controller_id: &str) {
    Engine::at(docker_host).assert_no_containers_left(controller_id);
}

/// Waits until no container of a controller is left on the engine at `docker_host`.
pub async fn wait_no_containers_on(docker_host: &str, controller_id: &str, deadline: Duration) {
    Engine::at(docker_host)
        .wait_no_containers(controller_id, deadline)
        .await;
}

#[cfg(test)]
mod tests {
    use super::Engine;

    #[test]
    fn a_setting_names_its_engine() {
        assert_eq!(Engine::for_setting(None), Engine::Default);
        assert_eq!(Engine::for_setting(Some("")), Engine::Default);
        let engine = Engine::for_setting(Some("unix:///x.sock"));
        assert_eq!(engine.docker_host(), Some("unix:///x.sock"));
        let args: Vec<_> = engine
            .command()
            .get_args()
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect();
        assert_eq!(args, ["-H", "unix:///x.sock"]);
        assert_eq!(Engine::Default.command().get_args().count(), 0);
    }
}
