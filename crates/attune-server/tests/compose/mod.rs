//! Driving compose/docker-compose.yaml from tests with Debian's docker-compose (1.29): the
//! command with a controlled environment, a project removed on drop, and stand-in images for
//! the stock images this machine (no registry) does not have.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The credentials docker-compose.yaml requires from the environment.
pub const REQUIRED_VARIABLES: &[&str] = &[
    "POSTGRES_PASSWORD",
    "RABBITMQ_DEFAULT_PASS",
    "WORKER_TOKEN_FILE",
];
/// What docker-compose.local.yaml requires besides.
pub const LOCAL_VARIABLES: &[&str] = &["ATTUNE_API_URL", "ATTUNE_AGENT_DIR"];
/// Variables of the caller's environment that would change what compose reads.
const COMPOSE_VARIABLES: &[&str] = &[
    "COMPOSE_FILE",
    "COMPOSE_PROJECT_NAME",
    "COMPOSE_PROFILES",
    "COMPOSE_PATH_SEPARATOR",
    "RABBITMQ_DEFAULT_USER",
];

/// The worker services of docker-compose.yaml: service (also the worker's name), image,
/// the runtime it is there for, and the `image` label its actions select.
pub const WORKERS: &[(&str, &str, &str, &str)] = &[
    ("python-worker", "python:3.12-slim", "python", "python"),
    ("node-worker", "node:20-slim", "node", "node"),
    ("ruby-worker", "ruby:3.3-slim", "ruby", "ruby"),
    ("shell-worker", "alpine:3.20", "shell", "alpine"),
];

pub fn compose_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../compose")
}

pub fn stack_file() -> PathBuf {
    compose_dir().join("docker-compose.yaml")
}

pub fn local_file() -> PathBuf {
    compose_dir().join("docker-compose.local.yaml")
}

/// Whether docker-compose can be run; without it a test is skipped, except under CI=true,
/// where its absence fails the test.
pub fn docker_compose_available() -> bool {
    let found = Command::new("docker-compose")
        .arg("version")
        .output()
        .is_ok_and(|output| output.status.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "docker-compose is not installed (CI=true: this is a failure, not a skip); \
             scripts/setup-host.sh installs Debian's docker-compose"
        );
        eprintln!("skipping: docker-compose is not installed (scripts/setup-host.sh installs it)");
    }
    found
}

/// One invocation context of docker-compose: files, project name and exactly the variables
/// given (the caller's credentials, compose settings and any `.env` file are not read).
pub struct Compose {
    files: Vec<PathBuf>,
    project: Option<String>,
    variables: Vec<(String, String)>,
    /// An empty file passed as `--env-file`, so that a compose/.env cannot fill in a missing
    /// variable.
    env_file: tempfile::NamedTempFile,
}

impl Compose {
    pub fn new(files: &[PathBuf], project: Option<&str>, variables: &[(&str, &str)]) -> Compose {
        Compose {
            files: files.to_vec(),
            project: project.map(str::to_string),
            variables: variables
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
            env_file: tempfile::NamedTempFile::new().expect("an empty env file"),
        }
    }

    pub fn project(&self) -> Option<&str> {
        self.project.as_deref()
    }

    /// `docker-compose [-p project] -f … --env-file <empty> <args>`.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("docker-compose");
        if let Some(project) = &self.project {
            command.args(["-p", project]);
        }
        for file in &self.files {
            command.arg("-f").arg(file);
        }
        command.arg("--env-file").arg(self.env_file.path());
        command.args(args);
        for name in REQUIRED_VARIABLES
            .iter()
            .chain(LOCAL_VARIABLES)
            .chain(COMPOSE_VARIABLES)
        {
            command.env_remove(name);
        }
        command.envs(self.variables.iter().map(|(key, value)| (key, value)));
        command
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args)
            .output()
            .unwrap_or_else(|error| panic!("run docker-compose {args:?}: {error}"))
    }

    /// The last lines of a service's log, for assertion messages.
    pub fn logs(&self, service: &str) -> String {
        let output = self.run(&["logs", "--no-color", "--tail", "40", service]);
        text(&output)
    }
}

/// stdout and stderr of a command, for messages.
pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A started project: `down -v --remove-orphans` on drop (containers, volumes, networks).
pub struct Project {
    pub compose: Compose,
    down: bool,
}

impl Project {
    pub fn up(compose: Compose, services: &[&str]) -> Project {
        assert!(compose.project().is_some(), "a started project has a name");
        let mut project = Project {
            compose,
            down: false,
        };
        let mut args = vec!["up", "-d", "--no-deps", "--no-build"];
        args.extend_from_slice(services);
        let output = project.compose.run(&args);
        assert!(
            output.status.success(),
            "docker-compose up {services:?} failed:\n{}",
            text(&output)
        );
        project.down = true;
        project
    }

    /// Stops and removes everything, then checks nothing of the project is left.
    pub fn down(mut self) {
        self.down = false;
        let output = self.take_down();
        assert!(
            output.status.success(),
            "docker-compose down failed:\n{}",
            text(&output)
        );
        let project = self.compose.project().unwrap_or_default().to_string();
        let label = format!("label=com.docker.compose.project={project}");
        for kind in ["container", "volume", "network"] {
            let mut args = vec![kind, "ls", "-q", "--filter", &label];
            if kind == "container" {
                args.push("-a");
            }
            let left = Command::new("docker")
                .args(&args)
                .output()
                .expect("docker ls");
            assert!(
                String::from_utf8_lossy(&left.stdout).trim().is_empty(),
                "docker-compose down left {kind}s of project {project}:\n{}",
                text(&left)
            );
        }
    }

    fn take_down(&self) -> Output {
        self.compose
            .run(&["down", "-v", "--remove-orphans", "-t", "30"])
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        if self.down {
            let _ = self.take_down();
        }
    }
}

fn image_present(image: &str) -> bool {
    Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", image])
        .output()
        .is_ok_and(|output| output.status.success())
}

/// Tags local images under the names the compose file uses when those are absent (never
/// retagging an image that is present); the tags it made are removed on drop (`docker rmi`
/// of an extra tag only removes the tag).
pub struct StandIns {
    made: Vec<String>,
}

impl StandIns {
    /// `pairs`: (name the compose file uses, local image standing in for it).
    pub fn ensure(pairs: &[(&str, &str)]) -> StandIns {
        let mut stand_ins = StandIns { made: Vec::new() };
        for (wanted, local) in pairs {
            if image_present(wanted) {
                continue;
            }
            assert!(
                image_present(local),
                "neither {wanted} nor its stand-in {local} is present (scripts/build-images.sh --all builds the attune-test images)"
            );
            let output = Command::new("docker")
                .args(["tag", local, wanted])
                .output()
                .expect("docker tag");
            assert!(
                output.status.success(),
                "docker tag {local} {wanted}: {}",
                text(&output)
            );
            stand_ins.made.push(wanted.to_string());
        }
        stand_ins
    }
}

impl Drop for StandIns {
    fn drop(&mut self) {
        for tag in &self.made {
            let _ = Command::new("docker").args(["rmi", tag]).output();
        }
    }
}

/// A directory holding `attune-agent`, a copy of `binary` (the layout init-agent leaves in
/// the agent_bin volume).
pub fn agent_dir(binary: &Path) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    assert!(
        binary.is_file(),
        "the agent binary {} is missing (scripts/build-agent.sh builds it)",
        binary.display()
    );
    let dir = tempfile::tempdir().expect("a directory for the agent");
    let copy = dir.path().join("attune-agent");
    std::fs::copy(binary, &copy).expect("copy the agent");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).expect("chmod agent");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod agent dir");
    dir
}
