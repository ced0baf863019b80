//! Lazy pack environments through the runner on the host (needs `python3` with `venv` and `npm`;
//! no network: dependencies are a wheel and a package directory the tests make themselves).
//!
//! Each test puts counting shims for `python3` and `npm` first in the job's `PATH`, so it can
//! assert how many times a virtualenv was created or `npm install` ran. Separate runner
//! contexts sharing one cache directory stand for separate containers sharing the cache volume.

mod runner_support;

use attune_agent::detect::{Detector, SearchPath};
use attune_agent::environment::{EnvironmentCache, READY_MARKER};
use attune_agent::hints::RuntimeHints;
use attune_agent::runner::{RunnerContext, StopRequest};
use attune_protocol::{
    AgentEvent, FailureKind, Job, JobOutcome, JobReport, ParameterDelivery, ParameterFormat,
    Runtime, PROTOCOL_VERSION,
};
use runner_support::{start, Running};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Upper bound for anything a test waits on (a venv with one local wheel takes about 3 s).
const WAIT_LIMIT: Duration = Duration::from_secs(120);

const WHEEL_NAME: &str = "attune_testpkg-1.0-py3-none-any.whl";

/// Writes a pure-python wheel of `attune_testpkg` whose `VALUE` is argv[2].
const MAKE_WHEEL: &str = include_str!("fixtures/make_wheel.py");

const SHOW_PYTHON: &str = r#"import json, os, sys
import attune_testpkg
print(json.dumps({"value": attune_testpkg.VALUE, "prefix": sys.prefix,
                  "virtual_env": os.environ.get("VIRTUAL_ENV")}))
"#;

const SHOW_NODE: &str = r#"const lib = require("attune-node-testlib");
console.log(JSON.stringify({value: lib.value, node_path: process.env.NODE_PATH}));
"#;

struct Fixture {
    pack: tempfile::TempDir,
    cache: tempfile::TempDir,
    scratch: tempfile::TempDir,
    shims: tempfile::TempDir,
}

fn host_program(name: &str) -> PathBuf {
    SearchPath::from_environment()
        .find(name)
        .unwrap_or_else(|| panic!("these tests need {name} on the host"))
}

fn write_executable(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

impl Fixture {
    fn new() -> Self {
        let fixture = Self {
            pack: tempfile::tempdir().unwrap(),
            cache: tempfile::tempdir().unwrap(),
            scratch: tempfile::tempdir().unwrap(),
            shims: tempfile::tempdir().unwrap(),
        };
        let counter = |name: &str| fixture.scratch.path().join(name).display().to_string();
        // `slow-venv` in the scratch dir makes the next venv creation hang (for cancel).
        write_executable(
            &fixture.shims.path().join("python3"),
            &format!(
                "#!/bin/sh\nif [ \"$1 $2\" = \"-m venv\" ]; then\n  echo venv >> {venvs}\n  if [ -e {slow} ]; then rm -f {slow}; echo hanging; exec sleep 300; fi\nfi\nexec {python} \"$@\"\n",
                venvs = counter("venv-count"),
                slow = counter("slow-venv"),
                python = host_program("python3").display(),
            ),
        );
        write_executable(
            &fixture.shims.path().join("npm"),
            &format!(
                "#!/bin/sh\n[ \"$1\" = install ] && echo install >> {installs}\nexec {npm} \"$@\"\n",
                installs = counter("npm-install-count"),
                npm = host_program("npm").display(),
            ),
        );
        fixture
    }

    fn write_pack_file(&self, relative: &str, contents: &str) {
        let path = self.pack.path().join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }

    fn make_wheel(&self, value: &str) {
        let vendor = self.pack.path().join("vendor");
        std::fs::create_dir_all(&vendor).unwrap();
        let status = Command::new(host_program("python3"))
            .args(["-c", MAKE_WHEEL])
            .arg(vendor.join(WHEEL_NAME))
            .arg(value)
            .status()
            .unwrap();
        assert!(status.success(), "make the test wheel: {status}");
    }

    fn python_pack(&self) {
        self.write_pack_file("actions/show.py", SHOW_PYTHON);
        self.write_pack_file(
            "requirements.txt",
            &format!("--no-index\n./vendor/{WHEEL_NAME}\n"),
        );
    }

    fn count(&self, counter: &str) -> usize {
        std::fs::read_to_string(self.scratch.path().join(counter))
            .map(|text| text.lines().count())
            .unwrap_or(0)
    }

    /// A fresh context (a new "container") over the shared cache.
    fn context(&self) -> RunnerContext {
        let work_base = self.scratch.path().join("work");
        RunnerContext {
            agent_id: "agent-under-test".to_string(),
            image: Some("attune-test/image:1".to_string()),
            workdir_base: work_base,
            detector: Detector::new(SearchPath::from_environment(), RuntimeHints::default()),
            environments: EnvironmentCache {
                root: self.cache.path().to_path_buf(),
                image_identity: "sha256:test-image".to_string(),
                build_timeout: WAIT_LIMIT,
            },
            packs: None,
        }
    }

    fn job(&self, execution_id: i64, runtime: Runtime, entry_point: &str) -> Job {
        let path = format!(
            "{}:{}",
            self.shims.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Job {
            protocol_version: PROTOCOL_VERSION,
            execution_id,
            action_ref: "testpack.show".to_string(),
            pack_ref: "testpack".to_string(),
            runtime,
            pack_dir: self.pack.path().display().to_string(),
            entry_point: entry_point.to_string(),
            parameters: Default::default(),
            secret_parameters: Vec::new(),
            parameter_delivery: ParameterDelivery::Env,
            parameter_format: ParameterFormat::Json,
            timeout_seconds: 60,
            kill_grace_seconds: 1,
            env: BTreeMap::from([("PATH".to_string(), path)]),
            output_limit_bytes: 1024 * 1024,
            stream_logs: false,
            pack_sha256: None,
        }
    }

    /// Directories in the cache that hold an environment (not locks or installer caches).
    fn environments(&self) -> Vec<PathBuf> {
        let mut directories: Vec<PathBuf> = std::fs::read_dir(self.cache.path())
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| {
                path.is_dir() && !path.file_name().unwrap().to_string_lossy().starts_with('.')
            })
            .collect();
        directories.sort();
        directories
    }
}

impl Running {
    async fn report(mut self) -> JobReport {
        let report = tokio::time::timeout(WAIT_LIMIT, self.task)
            .await
            .expect("the runner reports within the wait limit")
            .expect("the runner does not panic");
        let mut finished = None;
        while let Ok(event) = self.events.try_recv() {
            if let AgentEvent::Finished(sent) = event {
                finished = Some(sent);
            }
        }
        assert_eq!(finished.as_ref(), Some(&report), "finished is sent");
        report
    }
}

async fn run(context: RunnerContext, job: Job) -> JobReport {
    start(context, job).report().await
}

fn result_of(report: &JobReport) -> &Value {
    assert_eq!(report.outcome, JobOutcome::Succeeded, "{report:#?}");
    report.result.as_ref().expect("a result")
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT_LIMIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn python_environment_is_built_once_and_reused_by_later_containers() {
    let fixture = Fixture::new();
    fixture.python_pack();
    fixture.make_wheel("first");

    let report = run(
        fixture.context(),
        fixture.job(1, Runtime::Python, "actions/show.py"),
    )
    .await;
    let result = result_of(&report).clone();
    assert_eq!(result["value"], "first");
    let environments = fixture.environments();
    assert_eq!(environments.len(), 1, "{environments:?}");
    let environment = &environments[0];
    let name = environment.file_name().unwrap().to_string_lossy();
    assert!(
        name.starts_with("python-") && name.len() == 7 + 64,
        "{name}"
    );
    assert!(environment.join(READY_MARKER).is_file());
    assert_eq!(result["prefix"], environment.display().to_string());
    assert_eq!(result["virtual_env"], environment.display().to_string());
    assert_eq!(fixture.count("venv-count"), 1);

    // Another container over the same cache, after the wheel is gone: nothing is installed.
    std::fs::remove_file(fixture.pack.path().join("vendor").join(WHEEL_NAME)).unwrap();
    let report = run(
        fixture.context(),
        fixture.job(2, Runtime::Python, "actions/show.py"),
    )
    .await;
    assert_eq!(result_of(&report)["value"], "first");
    assert_eq!(fixture.count("venv-count"), 1, "the environment is reused");
    assert_eq!(fixture.environments(), environments);
}

#[tokio::test]
async fn concurrent_first_executions_build_once() {
    let fixture = Fixture::new();
    fixture.python_pack();
    fixture.make_wheel("shared");
    let context = fixture.context();
    let running: Vec<Running> = (1..=3)
        .map(|execution_id| {
            start(
                context.clone(),
                fixture.job(execution_id, Runtime::Python, "actions/show.py"),
            )
        })
        .collect();
    for job in running {
        let report = job.report().await;
        assert_eq!(result_of(&report)["value"], "shared");
    }
    assert_eq!(fixture.count("venv-count"), 1);
    assert_eq!(fixture.environments().len(), 1);
}

#[tokio::test]
async fn changed_requirements_get_their_own_environment() {
    let fixture = Fixture::new();
    fixture.python_pack();
    fixture.make_wheel("before");
    let first = run(
        fixture.context(),
        fixture.job(1, Runtime::Python, "actions/show.py"),
    )
    .await;
    let first_prefix = result_of(&first)["prefix"].clone();

    fixture.make_wheel("after");
    fixture.write_pack_file(
        "requirements.txt",
        &format!("# changed\n--no-index\n./vendor/{WHEEL_NAME}\n"),
    );
    let second = run(
        fixture.context(),
        fixture.job(2, Runtime::Python, "actions/show.py"),
    )
    .await;
    assert_eq!(result_of(&second)["value"], "after");
    assert_ne!(result_of(&second)["prefix"], first_prefix);
    assert_eq!(fixture.count("venv-count"), 2);
    assert_eq!(fixture.environments().len(), 2);
}

#[tokio::test]
async fn a_failed_build_reports_the_installer_output_and_the_next_execution_retries() {
    let fixture = Fixture::new();
    fixture.python_pack();

    let failed = run(
        fixture.context(),
        fixture.job(1, Runtime::Python, "actions/show.py"),
    )
    .await;
    assert_eq!(failed.outcome, JobOutcome::Failed, "{failed:#?}");
    assert_eq!(failed.failure_kind, Some(FailureKind::Spawn));
    let error = failed.error.as_deref().unwrap();
    assert!(
        error.starts_with(
            "build python environment for pack testpack: pip install exited with code 1:"
        ),
        "{error}"
    );
    assert!(error.contains(WHEEL_NAME), "{error}");
    assert!(
        failed.stderr.contains("No such file or directory"),
        "{}",
        failed.stderr
    );
    assert!(
        fixture.environments().is_empty(),
        "the partial environment is removed"
    );

    // Same requirements, now satisfiable: the next execution builds again and succeeds.
    fixture.make_wheel("fixed");
    let report = run(
        fixture.context(),
        fixture.job(2, Runtime::Python, "actions/show.py"),
    )
    .await;
    assert_eq!(result_of(&report)["value"], "fixed");
    assert_eq!(fixture.count("venv-count"), 2);
}

#[tokio::test]
async fn cancel_during_a_build_stops_the_installer_and_leaves_nothing_behind() {
    let fixture = Fixture::new();
    fixture.python_pack();
    fixture.make_wheel("never");
    std::fs::write(fixture.scratch.path().join("slow-venv"), "").unwrap();

    let running = start(
        fixture.context(),
        fixture.job(1, Runtime::Python, "actions/show.py"),
    );
    wait_until("the venv creation hangs", || {
        fixture.count("venv-count") == 1 && !fixture.scratch.path().join("slow-venv").exists()
    })
    .await;
    let canceled_at = Instant::now();
    running.stop.send(Some(StopRequest::Cancel)).unwrap();
    let report = running.report().await;
    assert_eq!(report.outcome, JobOutcome::Canceled, "{report:#?}");
    assert!(
        canceled_at.elapsed() < Duration::from_secs(10),
        "cancel took {:?}",
        canceled_at.elapsed()
    );
    assert!(fixture.environments().is_empty());

    // The lock was released with the canceled build: the next execution builds.
    let report = run(
        fixture.context(),
        fixture.job(2, Runtime::Python, "actions/show.py"),
    )
    .await;
    assert_eq!(result_of(&report)["value"], "never");
}

#[tokio::test]
async fn packs_without_a_dependency_file_use_the_plain_interpreter() {
    let fixture = Fixture::new();
    fixture.write_pack_file(
        "actions/plain.py",
        "import sys, json\nprint(json.dumps({\"prefix\": sys.prefix}))\n",
    );
    let report = run(
        fixture.context(),
        fixture.job(1, Runtime::Python, "actions/plain.py"),
    )
    .await;
    let prefix = result_of(&report)["prefix"].as_str().unwrap().to_string();
    assert!(
        !prefix.starts_with(&fixture.cache.path().display().to_string()),
        "{prefix}"
    );
    assert_eq!(fixture.count("venv-count"), 0);
    assert!(fixture.environments().is_empty());
}

#[tokio::test]
async fn node_environment_installs_a_local_dependency_once() {
    let fixture = Fixture::new();
    fixture.write_pack_file("actions/show.js", SHOW_NODE);
    fixture.write_pack_file(
        "vendor/testlib/package.json",
        r#"{"name": "attune-node-testlib", "version": "1.0.0", "main": "index.js"}"#,
    );
    fixture.write_pack_file(
        "vendor/testlib/index.js",
        "module.exports = {value: \"from-lib\"};\n",
    );
    fixture.write_pack_file(
        "package.json",
        &json!({
            "name": "testpack",
            "version": "1.0.0",
            "dependencies": {"attune-node-testlib": "file:./vendor/testlib"}
        })
        .to_string(),
    );

    let report = run(
        fixture.context(),
        fixture.job(1, Runtime::Node, "actions/show.js"),
    )
    .await;
    let result = result_of(&report).clone();
    assert_eq!(result["value"], "from-lib");
    let environments = fixture.environments();
    assert_eq!(environments.len(), 1, "{environments:?}");
    let installed = environments[0].join("node_modules/attune-node-testlib");
    assert!(
        !installed
            .symlink_metadata()
            .unwrap()
            .file_type()
            .is_symlink(),
        "the local dependency is copied, not linked into the pack"
    );
    assert!(result["node_path"]
        .as_str()
        .unwrap()
        .starts_with(&environments[0].join("node_modules").display().to_string()));

    let report = run(
        fixture.context(),
        fixture.job(2, Runtime::Node, "actions/show.js"),
    )
    .await;
    assert_eq!(result_of(&report)["value"], "from-lib");
    assert_eq!(fixture.count("npm-install-count"), 1);
}
