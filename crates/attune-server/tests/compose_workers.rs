//! The workers of the compose stack (compose/docker-compose.yaml), checked with Debian's
//! docker-compose 1.29 and run for real on this machine.
//!
//! - The file is valid compose with its credentials given, and each worker resolves to its
//!   stock image with the static agent as entrypoint, read-only from the `agent_bin` volume,
//!   on the actions network, waiting for init-agent's success and the server's health, its
//!   token from a secret file.
//! - It refuses to resolve when any credential variable (POSTGRES_PASSWORD,
//!   RABBITMQ_DEFAULT_PASS, WORKER_TOKEN_FILE) is missing, naming the variable: no default
//!   credential is baked in. docker-compose.local.yaml's own variables are required the same way.
//! - compose/agent.Dockerfile's `init-prebuilt` target builds from local images only and its
//!   container fills a volume with a working agent, as init-agent fills `agent_bin`.
//! - The worker services themselves, started by `docker-compose up` with
//!   docker-compose.local.yaml (host networking, this machine's broker, a test server of the
//!   test kit and a worker token made through its API), each enroll with the runtime their
//!   image has, and each runs the action of its runtime routed to it by its label.
//!
//! Without docker-compose the tests are skipped, except under CI=true where they fail.

mod compose;

use attune_protocol::api::Role;
use attune_protocol::worker::{WorkerStatus, WorkerView};
use attune_testkit::{TestClient, TestEnvironment, TestServer};
use compose::{
    docker_compose_available, local_file, stack_file, text, Compose, Project, StandIns,
    LOCAL_VARIABLES, REQUIRED_VARIABLES, WORKERS,
};
use serde_json::{json, Value as Json};
use serde_norway::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// Stand-ins for the stock images of the workers, present on this machine (see
/// scripts/build-images.sh): attune-test/polyglot has node and ruby.
const STAND_INS: &[(&str, &str)] = &[
    ("python:3.12-slim", "python:3.11-slim"),
    ("node:20-slim", "attune-test/polyglot"),
    ("ruby:3.3-slim", "attune-test/polyglot"),
    ("alpine:3.20", "busybox:1.36"),
];

/// How long every worker may take to enroll after `up`.
const ENROLL_DEADLINE: Duration = Duration::from_secs(90);

fn compose_pack() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/packs/compose")
}

/// Dummy values for every variable the stack requires (a real, empty token file).
fn dummy_variables(token_file: &std::path::Path) -> Vec<(&'static str, String)> {
    vec![
        ("POSTGRES_PASSWORD", "dummy-postgres".to_string()),
        ("RABBITMQ_DEFAULT_PASS", "dummy-rabbitmq".to_string()),
        ("WORKER_TOKEN_FILE", token_file.display().to_string()),
        ("ATTUNE_API_URL", "http://127.0.0.1:9".to_string()),
        ("ATTUNE_AGENT_DIR", "/nonexistent/agent-dir".to_string()),
    ]
}

fn borrowed<'a>(variables: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    variables
        .iter()
        .map(|(key, value)| (*key, value.as_str()))
        .collect()
}

/// `docker-compose config` of `files`, parsed.
fn resolved(files: &[PathBuf], variables: &[(&str, &str)]) -> Value {
    let output = Compose::new(files, None, variables).run(&["config"]);
    assert!(
        output.status.success(),
        "docker-compose config of {files:?} fails with every variable set:\n{}",
        text(&output)
    );
    serde_norway::from_slice(&output.stdout).expect("docker-compose config prints YAML")
}

fn string_list(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| item.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_stack_resolves_with_its_credentials_and_its_workers_are_wired() {
    if !docker_compose_available() {
        return;
    }
    let token_file = tempfile::NamedTempFile::new().unwrap();
    let variables = dummy_variables(token_file.path());
    let variables = borrowed(&variables);

    let stack = resolved(&[stack_file()], &variables);
    let services = &stack["services"];
    assert_eq!(
        services["attune-server"]["environment"]["ATTUNE__DATABASE__URL"].as_str(),
        Some("postgres://postgres:dummy-postgres@postgres:5432/attune"),
        "the server's database URL carries POSTGRES_PASSWORD"
    );
    assert!(
        services["attune-server"]["environment"]["ATTUNE__MESSAGE_QUEUE__URL"]
            .as_str()
            .is_some_and(|url| url.contains(":dummy-rabbitmq@rabbitmq:5672")),
        "the server's broker URL carries RABBITMQ_DEFAULT_PASS: {:?}",
        services["attune-server"]["environment"]
    );
    assert_eq!(
        stack["secrets"]["attune-worker-token"]["file"].as_str(),
        Some(token_file.path().to_str().unwrap()),
        "the worker token secret is WORKER_TOKEN_FILE"
    );
    let init = &services["init-agent"];
    assert_eq!(
        init["build"]["dockerfile"].as_str(),
        Some("compose/agent.Dockerfile")
    );
    assert_eq!(
        init["network_mode"].as_str(),
        Some("none"),
        "init-agent needs no network"
    );
    assert!(
        string_list(&init["volumes"]).contains(&"agent_bin:/opt/attune/agent:rw".to_string()),
        "init-agent fills agent_bin: {:?}",
        init["volumes"]
    );

    for (service, image, _, label) in WORKERS {
        let worker = &services[*service];
        assert_eq!(worker["image"].as_str(), Some(*image), "{service}'s image");
        assert_eq!(
            string_list(&worker["entrypoint"]),
            ["/opt/attune/agent/attune-agent"],
            "{service} runs the agent"
        );
        assert_eq!(
            worker["network_mode"].as_str(),
            Some("attune-actions"),
            "{service} is on the actions network only: {worker:?}"
        );
        assert!(
            worker["networks"].is_null(),
            "{service} joins no other network"
        );
        let volumes = string_list(&worker["volumes"]);
        for volume in [
            "agent_bin:/opt/attune/agent:ro",
            "attune-packs:/opt/attune/packs:ro",
            "attune-envs:/opt/attune/envs:rw",
        ] {
            assert!(
                volumes.iter().any(|v| v == volume),
                "{service} mounts {volume}: {volumes:?}"
            );
        }
        assert_eq!(
            worker["depends_on"]["init-agent"]["condition"].as_str(),
            Some("service_completed_successfully"),
            "{service} waits for the agent"
        );
        assert_eq!(
            worker["depends_on"]["attune-server"]["condition"].as_str(),
            Some("service_healthy"),
            "{service} waits for the server"
        );
        assert_eq!(
            worker["secrets"][0]["source"].as_str(),
            Some("attune-worker-token"),
            "{service} gets the token as a secret"
        );
        let environment = &worker["environment"];
        for (key, value) in [
            ("ATTUNE_WORKER_NAME", *service),
            ("ATTUNE_API_URL", "http://attune-server:8080"),
            ("ATTUNE__MESSAGE_QUEUE__URL", "amqp://rabbitmq:5672/%2f"),
            (
                "ATTUNE_WORKER_TOKEN_FILE",
                "/run/secrets/attune-worker-token",
            ),
            ("ATTUNE_WORKER_LABELS", format!("image={label}").as_str()),
            ("ATTUNE_AGENT_IMAGE", *image),
        ] {
            assert_eq!(
                environment[key].as_str(),
                Some(value),
                "{service}'s {key}: {environment:?}"
            );
        }
    }
    assert!(
        services["attune-server"]["healthcheck"]["test"].is_sequence(),
        "the workers wait for a health check the server has"
    );

    // The local override: the same workers, on the host's network, this host's broker, the
    // agent from a directory; the rest of the stack never started.
    let local = resolved(&[stack_file(), local_file()], &variables);
    for (service, image, _, _) in WORKERS {
        let worker = &local["services"][*service];
        assert_eq!(worker["image"].as_str(), Some(*image));
        assert_eq!(
            worker["network_mode"].as_str(),
            Some("host"),
            "{service}: {worker:?}"
        );
        assert_eq!(
            worker["environment"]["ATTUNE_API_URL"].as_str(),
            Some("http://127.0.0.1:9")
        );
        assert_eq!(
            worker["environment"]["ATTUNE__MESSAGE_QUEUE__URL"].as_str(),
            Some("amqp://127.0.0.1:5672/%2f")
        );
        let volumes = string_list(&worker["volumes"]);
        assert!(
            volumes.contains(&"/nonexistent/agent-dir:/opt/attune/agent:ro".to_string())
                && !volumes
                    .iter()
                    .any(|volume| volume.starts_with("agent_bin:")),
            "{service}'s agent comes from ATTUNE_AGENT_DIR: {volumes:?}"
        );
    }
    for service in ["postgres", "rabbitmq", "attune-server", "init-agent"] {
        assert_eq!(
            string_list(&local["services"][service]["profiles"]),
            ["stack"],
            "{service} is not started by the local override"
        );
    }
}

#[test]
fn the_stack_refuses_to_resolve_without_each_credential() {
    if !docker_compose_available() {
        return;
    }
    let token_file = tempfile::NamedTempFile::new().unwrap();
    let all = dummy_variables(token_file.path());
    let cases = REQUIRED_VARIABLES
        .iter()
        .map(|name| (vec![stack_file()], *name))
        .chain(
            LOCAL_VARIABLES
                .iter()
                .map(|name| (vec![stack_file(), local_file()], *name)),
        );
    for (files, missing) in cases {
        let variables: Vec<(&str, &str)> = borrowed(&all)
            .into_iter()
            .filter(|(key, _)| key != &missing)
            .collect();
        let output = Compose::new(&files, None, &variables).run(&["config"]);
        let said = text(&output);
        assert!(
            !output.status.success(),
            "docker-compose config of {files:?} succeeds without {missing}:\n{said}"
        );
        assert!(
            said.contains("Missing mandatory value") && said.contains(&format!("set {missing} ")),
            "without {missing}, docker-compose config says so by name:\n{said}"
        );
    }
}

/// Builds agent.Dockerfile's `init-prebuilt` target as this machine can (classic builder, a
/// context of the two files it reads), runs it on a fresh volume, and runs the agent it left.
#[test]
fn the_prebuilt_agent_init_image_fills_the_agent_volume() {
    let agent = TestEnvironment::from_env().agent_binary;
    if !agent.is_file() {
        assert!(
            std::env::var("ATTUNE_REQUIRE_AGENT_BINARY").as_deref() != Ok("1"),
            "the agent binary {} is missing",
            agent.display()
        );
        eprintln!("skipping: no agent binary at {}", agent.display());
        return;
    }
    let unique = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let tag = format!("attune-test/agent-init:{unique}");
    let volume = format!("attune-test-agent-{unique}");
    let mut leftovers = Leftovers::default();

    let mut context = tar::Builder::new(Vec::new());
    context
        .append_path_with_name(
            compose::compose_dir().join("agent.Dockerfile"),
            "compose/agent.Dockerfile",
        )
        .unwrap();
    context
        .append_path_with_name(&agent, "agent-dist/attune-agent-x86_64")
        .unwrap();
    let context = context.into_inner().unwrap();
    let mut build = Command::new("docker")
        .args([
            "build",
            "--force-rm",
            "-f",
            "compose/agent.Dockerfile",
            "--target",
            "init-prebuilt",
            "--label",
            "attune.test=true",
            "-t",
            &tag,
            "-",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("docker build");
    {
        use std::io::Write;
        let mut stdin = build.stdin.take().unwrap();
        stdin.write_all(&context).expect("send the build context");
    }
    let built = build.wait_with_output().expect("docker build");
    leftovers.image = Some(tag.clone());
    // The classic builder keeps each stage's image: those it printed that nothing else
    // tags or uses are removed with the test's image.
    leftovers.stages = text(&built)
        .lines()
        .filter_map(|line| line.trim().strip_prefix("---> "))
        .map(|id| id.trim().to_string())
        .filter(|id| id.chars().all(|c| c.is_ascii_hexdigit()))
        .collect();
    assert!(
        built.status.success(),
        "docker build --target init-prebuilt from local images:\n{}",
        text(&built)
    );

    let docker = |args: &[&str]| {
        let output = Command::new("docker").args(args).output().expect("docker");
        (output.status.success(), text(&output))
    };
    let (made, said) = docker(&["volume", "create", "--label", "attune.test=true", &volume]);
    assert!(made, "docker volume create: {said}");
    leftovers.volume = Some(volume.clone());
    let mount = format!("{volume}:/opt/attune/agent");
    let (ran, said) = docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--label",
        "attune.test=true",
        "-v",
        &mount,
        &tag,
    ]);
    assert!(ran, "the init container copies the agent: {said}");
    assert!(
        said.contains("attune-agent installed in /opt/attune/agent"),
        "{said}"
    );
    let read_only = format!("{mount}:ro");
    let (ran, said) = docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--label",
        "attune.test=true",
        "-v",
        &read_only,
        "--entrypoint",
        "/opt/attune/agent/attune-agent",
        "busybox:1.36",
        "--version",
    ]);
    assert!(
        ran && said.contains("attune-agent") && said.contains("protocol"),
        "the agent in the volume runs in a stock image: {said}"
    );
    let (ran, said) = docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--label",
        "attune.test=true",
        "-v",
        &read_only,
        "busybox:1.36",
        "sha256sum",
        "/opt/attune/agent/attune-agent",
    ]);
    let expected = sha256_hex(&std::fs::read(&agent).unwrap());
    assert!(
        ran && said.starts_with(&expected),
        "the volume holds exactly agent-dist's agent ({expected}): {said}"
    );
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The image, stage images and volume of the init-image test, removed on drop.
#[derive(Default)]
struct Leftovers {
    image: Option<String>,
    stages: Vec<String>,
    volume: Option<String>,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        if let Some(volume) = &self.volume {
            let _ = Command::new("docker")
                .args(["volume", "rm", volume])
                .output();
        }
        if let Some(image) = &self.image {
            let _ = Command::new("docker").args(["rmi", image]).output();
        }
        // Only stage images left dangling (untagged, unused): never a base image such as
        // busybox:1.36, whose id the build also printed.
        let dangling = Command::new("docker")
            .args(["images", "-q", "--no-trunc", "--filter", "dangling=true"])
            .output()
            .map(|output| String::from_utf8_lossy(&output.stdout).to_string())
            .unwrap_or_default();
        for id in &self.stages {
            if dangling
                .lines()
                .any(|line| line.trim_start_matches("sha256:").starts_with(id.as_str()))
            {
                let _ = Command::new("docker").args(["rmi", id]).output();
            }
        }
    }
}

async fn workers(client: &TestClient) -> Vec<WorkerView> {
    let list: Json = client.get_json("/api/v1/workers").await;
    serde_json::from_value(list["items"].clone()).expect("workers as a list")
}

/// Deletes the broker accounts and job queues of this test's workers.
async fn delete_worker_accounts(agent_ids: &[String]) {
    attune_testkit::delete_worker_enrollments(agent_ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_workers_enroll_with_their_runtimes_and_run_what_is_routed_to_them() {
    if !docker_compose_available() {
        return;
    }
    let environment = TestEnvironment::from_env();
    let server = TestServer::start(&[]).await.expect("start test server");
    let client = TestClient::new(&server);
    client.register_dir(compose_pack()).await;
    let unique = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let token = client
        .api()
        .create_token(&format!("compose-workers-{unique}"), Role::Worker)
        .await
        .expect("an admin makes a worker token")
        .token;
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("worker-token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let agent_dir = compose::agent_dir(&environment.agent_binary);

    let _stand_ins = StandIns::ensure(STAND_INS);
    let project_name = format!("attune-test-{unique}");
    let token_path = token_file.display().to_string();
    let agent_path = agent_dir.path().display().to_string();
    let compose = Compose::new(
        &[stack_file(), local_file()],
        Some(&project_name),
        &[
            // Unused by the workers (nothing started here reads them), required by the file.
            ("POSTGRES_PASSWORD", "unused"),
            ("RABBITMQ_DEFAULT_PASS", "unused"),
            ("WORKER_TOKEN_FILE", &token_path),
            ("ATTUNE_API_URL", &server.base_url),
            ("ATTUNE_AGENT_DIR", &agent_path),
        ],
    );
    let dummy_token = tempfile::NamedTempFile::new().unwrap();
    let dummies = dummy_variables(dummy_token.path());
    let dummies = borrowed(&dummies);
    let started = std::time::Instant::now();
    let services: Vec<&str> = WORKERS.iter().map(|(service, ..)| *service).collect();
    let project = Project::up(compose, &services);

    // Every worker enrolls, online, with the runtime of its image.
    let deadline = tokio::time::Instant::now() + ENROLL_DEADLINE;
    let enrolled: BTreeMap<String, WorkerView> = loop {
        let online: BTreeMap<String, WorkerView> = workers(&client)
            .await
            .into_iter()
            .filter(|worker| worker.status == WorkerStatus::Online)
            .map(|worker| (worker.name.clone(), worker))
            .collect();
        if services.iter().all(|service| online.contains_key(*service)) {
            break online;
        }
        if tokio::time::Instant::now() >= deadline {
            let missing: Vec<String> = services
                .iter()
                .filter(|service| !online.contains_key(**service))
                .map(|service| format!("{service}:\n{}", project.compose.logs(service)))
                .collect();
            panic!(
                "not every compose worker enrolled within {ENROLL_DEADLINE:?}; online: {:?}; the logs of the others:\n{}",
                online.keys().collect::<Vec<_>>(),
                missing.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let enrolled_after = started.elapsed();
    let agent_ids: Vec<String> = enrolled
        .values()
        .map(|worker| worker.agent_id.clone())
        .collect();
    for (service, image, runtime, label) in WORKERS {
        let worker = &enrolled[*service];
        assert!(
            worker.runtimes.iter().any(|found| found.name == *runtime),
            "{service} ({image}) enrolled without {runtime}: {:?}",
            worker.runtimes
        );
        assert_eq!(worker.labels.get("image").map(String::as_str), Some(*label));
        assert_eq!(worker.image.as_deref(), Some(*image), "{worker:?}");
    }

    // Each runs its runtime's action, routed to it by its label.
    for (service, _, runtime, _) in WORKERS {
        let action = format!("compose.{runtime}_version");
        let ran = client.run_succeeded(&action, json!({})).await;
        assert_eq!(
            ran.worker.as_deref(),
            Some(*service),
            "{action} ran on another worker: {ran:?}"
        );
        assert!(
            ran.stdout.starts_with(&format!("{runtime} ")),
            "{action} prints its interpreter's version: {ran:?}"
        );
        let registered = enrolled[*service]
            .runtimes
            .iter()
            .find(|found| found.name == *runtime)
            .and_then(|found| found.version.clone());
        if let Some(version) = registered {
            assert!(
                ran.stdout.contains(&version),
                "{action} ran the {runtime} {version} {service} enrolled with: {ran:?}"
            );
        }
    }
    let ran_after = started.elapsed();

    // The server's health check (what the workers wait for) passes against a real server.
    let stack = resolved(&[stack_file()], &dummies);
    let check = string_list(&stack["services"]["attune-server"]["healthcheck"]["test"]);
    assert_eq!(check[..3], ["CMD", "bash", "-c"], "{check:?}");
    let port = server.base_url.rsplit(':').next().expect("a port");
    let probe = check[3].replace(
        "/dev/tcp/127.0.0.1/8080",
        &format!("/dev/tcp/127.0.0.1/{port}"),
    );
    let healthy = Command::new("bash")
        .args(["-c", &probe])
        .output()
        .expect("bash");
    assert!(
        healthy.status.success(),
        "the server's health check fails against a live server: {probe}\n{}",
        text(&healthy)
    );

    project.down();
    delete_worker_accounts(&agent_ids).await;
    server.finish().await;
    eprintln!(
        "compose workers: enrolled {:.1?} after up, actions done at {:.1?}, down at {:.1?}",
        enrolled_after,
        ran_after,
        started.elapsed()
    );
}
