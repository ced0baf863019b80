//! `BollardEngine` against the real Docker engine on this machine.
//!
//! Needs the engine at /var/run/docker.sock (or DOCKER_HOST) and the local `busybox:1.36`
//! image from `scripts/build-images.sh`. Every container is labelled `attune.test=true` plus a
//! per-test run label, and a guard removes it with `docker rm -f` even when an assertion fails.

use attune_docker::archive::{InjectionArchive, EXECUTABLE_MODE, FILE_MODE};
use attune_docker::bollard_engine::BollardEngine;
use attune_docker::{
    ContainerCreateSpec, ContainerEvent, DockerError, DockerOps, RegistryCredentials,
};
use futures_util::StreamExt;
use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const BUSYBOX: &str = "busybox:1.36";
const DEADLINE: Duration = Duration::from_secs(60);
const MEMORY_BYTES: i64 = 64 * 1024 * 1024;

/// A name unique to this test process and call.
fn unique_name(purpose: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.subsec_nanos())
        .unwrap_or_default();
    format!(
        "attune-test-{purpose}-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Removes the named containers when dropped, whatever happened in the test.
struct ContainerGuard {
    names: Vec<String>,
}

impl ContainerGuard {
    fn new() -> Self {
        Self { names: Vec::new() }
    }

    fn track(&mut self, name: &str) {
        self.names.push(name.to_string());
    }
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        for name in &self.names {
            // Best effort: the container may already be gone, which is what we want.
            let _ = Command::new("docker")
                .args(["rm", "-f", "-v", name])
                .output();
        }
    }
}

async fn engine() -> BollardEngine {
    let engine = BollardEngine::connect(None)
        .await
        .expect("connect to the docker engine (is dockerd running?)");
    let busybox = engine
        .inspect_image(BUSYBOX)
        .await
        .expect("inspect busybox image");
    assert!(
        busybox.is_some(),
        "image {BUSYBOX} is missing: run scripts/build-images.sh"
    );
    engine
}

/// Labels for one test run: the common test label plus one only this run uses.
fn run_labels(run: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("attune.test".to_string(), "true".to_string()),
        ("attune.test.run".to_string(), run.to_string()),
    ])
}

fn parse_api_version(version: &str) -> (u32, u32) {
    let (major, minor) = version
        .split_once('.')
        .unwrap_or_else(|| panic!("api version {version} has no dot"));
    (
        major.parse().expect("api major version"),
        minor.parse().expect("api minor version"),
    )
}

#[tokio::test]
async fn negotiates_the_api_version_and_reports_the_engine() {
    let engine = engine().await;
    engine.ping().await.expect("ping");
    let info = engine.engine_info().await.expect("engine info");
    assert_eq!(info.api_version, engine.api_version());
    assert!(
        parse_api_version(&info.api_version) <= parse_api_version(&info.engine_api_version),
        "negotiated {} above the engine's {}",
        info.api_version,
        info.engine_api_version
    );
    if info.server_version.starts_with("20.10") {
        assert!(
            parse_api_version(&info.api_version) <= (1, 41),
            "engine 20.10 speaks 1.41 at most, negotiated {}",
            info.api_version
        );
    }
    assert!(
        ["amd64", "arm64", "arm", "386", "ppc64le", "s390x", "riscv64"]
            .contains(&info.architecture.as_str()),
        "unexpected architecture {:?}",
        info.architecture
    );
    assert_eq!(info.os, "linux");
    let busybox = engine.inspect_image(BUSYBOX).await.unwrap().unwrap();
    assert_eq!(busybox.architecture, info.architecture);
    assert!(busybox.id.starts_with("sha256:"));
}

#[tokio::test]
async fn hardened_container_runs_an_uploaded_script() {
    let engine = engine().await;
    let mut guard = ContainerGuard::new();
    let run = unique_name("run");
    let name = unique_name("hardened");
    guard.track(&name);

    let bind_dir = tempfile::tempdir().expect("create bind directory");
    std::fs::write(bind_dir.path().join("input.txt"), "from-the-bind-mount\n")
        .expect("write bind input");

    let mut events = engine.container_events(&[("attune.test", "true"), ("attune.test.run", &run)]);

    let spec = ContainerCreateSpec {
        name: name.clone(),
        image: BUSYBOX.to_string(),
        entrypoint: vec!["/bin/sh".into(), "/opt/attune/run.sh".into()],
        cmd: vec!["first-argument".into()],
        env: vec!["GREETING=hello".into()],
        labels: run_labels(&run),
        user: Some("65534:65534".into()),
        working_dir: Some("/tmp".into()),
        network_mode: Some("none".into()),
        init: true,
        cap_drop: vec!["ALL".into()],
        cap_add: vec!["NET_BIND_SERVICE".into()],
        security_opt: vec!["no-new-privileges".into()],
        pids_limit: Some(64),
        memory_bytes: Some(MEMORY_BYTES),
        nano_cpus: Some(500_000_000),
        nofile_limit: Some(256),
        read_only_rootfs: false,
        tmpfs: BTreeMap::from([("/scratch".into(), "rw,size=1m".into())]),
        binds: vec![format!("{}:/data:ro", bind_dir.path().display())],
        log_config: None,
        open_stdin: false,
    };
    let container_id = engine.create_container(&spec).await.expect("create");

    let script = "\
echo \"greeting=$GREETING arg=$1 uid=$(id -u) pwd=$(pwd)\"
cat /data/input.txt
echo \"nofile=$(ulimit -n)\"
cat /opt/attune/data.txt
echo to-stderr >&2
exit 7
";
    let mut archive = InjectionArchive::new();
    archive
        .add_file("opt/attune/run.sh", EXECUTABLE_MODE, script)
        .unwrap()
        .add_file("opt/attune/data.txt", FILE_MODE, "uploaded-data\n")
        .unwrap();
    engine
        .upload_archive(&container_id, "/", archive.finish())
        .await
        .expect("upload archive");

    // The engine's own view of the HostConfig, read with the docker CLI (independent of us).
    let inspect = docker_inspect(&container_id);
    let host_config = &inspect["HostConfig"];
    assert_eq!(host_config["CapDrop"], serde_json::json!(["ALL"]));
    assert_eq!(
        host_config["CapAdd"],
        serde_json::json!(["NET_BIND_SERVICE"])
    );
    assert!(host_config["SecurityOpt"]
        .as_array()
        .is_some_and(|options| options.contains(&serde_json::json!("no-new-privileges"))));
    assert_eq!(host_config["Init"], true);
    assert_eq!(host_config["PidsLimit"], 64);
    assert_eq!(host_config["Memory"], MEMORY_BYTES);
    assert_eq!(host_config["MemorySwap"], MEMORY_BYTES);
    assert_eq!(host_config["NanoCpus"], 500_000_000);
    let nofile = host_config["Ulimits"]
        .as_array()
        .and_then(|ulimits| ulimits.iter().find(|ulimit| ulimit["Name"] == "nofile"))
        .expect("nofile ulimit");
    assert_eq!(
        (&nofile["Soft"], &nofile["Hard"]),
        (&serde_json::json!(256), &serde_json::json!(256))
    );
    assert_eq!(host_config["NetworkMode"], "none");
    assert_eq!(host_config["AutoRemove"], false);
    assert_eq!(host_config["ReadonlyRootfs"], false);
    assert_eq!(host_config["Tmpfs"]["/scratch"], "rw,size=1m");
    assert_eq!(inspect["Config"]["User"], "65534:65534");
    assert_eq!(inspect["Config"]["WorkingDir"], "/tmp");

    engine.start_container(&container_id).await.expect("start");
    let exit_code = tokio::time::timeout(DEADLINE, engine.wait_container(&container_id))
        .await
        .expect("container exits before the deadline")
        .expect("wait");
    assert_eq!(exit_code, 7, "a non-zero exit is a result, not an error");

    let logs = engine
        .container_logs(&container_id, 100)
        .await
        .expect("logs");
    assert!(
        logs.contains("greeting=hello arg=first-argument uid=65534 pwd=/tmp"),
        "logs: {logs}"
    );
    assert!(logs.contains("from-the-bind-mount"), "logs: {logs}");
    assert!(logs.contains("nofile=256"), "logs: {logs}");
    assert!(logs.contains("uploaded-data"), "logs: {logs}");
    assert!(logs.contains("to-stderr"), "logs: {logs}");
    // stdout and stderr interleave in arrival order; the tail is the end of the whole log.
    let last_line = engine.container_logs(&container_id, 1).await.unwrap();
    assert_eq!(last_line.lines().count(), 1, "tail 1: {last_line:?}");
    assert!(
        logs.ends_with(&last_line),
        "{logs:?} ends with {last_line:?}"
    );

    let state = engine
        .inspect_container(&name)
        .await
        .expect("inspect")
        .expect("container exists");
    assert_eq!(state.id, container_id);
    assert_eq!(state.name, name);
    assert_eq!(state.status, "exited");
    assert!(!state.running);
    assert_eq!(state.exit_code, Some(7));
    assert_eq!(state.labels.get("attune.test.run"), Some(&run));
    assert!(!state.created.is_empty());

    let listed = engine
        .list_containers(&[("attune.test", "true"), ("attune.test.run", &run)])
        .await
        .expect("list");
    assert_eq!(listed.len(), 1, "listed: {listed:?}");
    assert_eq!(listed[0].id, container_id);
    assert_eq!(listed[0].name, name);
    assert_eq!(listed[0].state, "exited");
    assert!(listed[0].created_unix > 0);

    let mut seen: Vec<ContainerEvent> = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        while !(seen.iter().any(|event| event.action == "start")
            && seen.iter().any(|event| event.action == "die"))
        {
            let event = events
                .next()
                .await
                .expect("event stream ended")
                .expect("event");
            seen.push(event);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("start and die events before the deadline, saw {seen:?}"));
    assert!(seen.iter().all(|event| event.container_id == container_id));
    let die = seen.iter().find(|event| event.action == "die").unwrap();
    assert_eq!(die.exit_code, Some(7));
    assert_eq!(die.labels.get("attune.test.run"), Some(&run));
    assert!(!die.labels.contains_key("exitCode"));

    engine
        .remove_container(&container_id)
        .await
        .expect("remove");
    assert_eq!(engine.inspect_container(&container_id).await.unwrap(), None);
    assert!(engine
        .list_containers(&[("attune.test.run", &run)])
        .await
        .unwrap()
        .is_empty());
    engine
        .remove_container(&container_id)
        .await
        .expect("removing again is not an error");
    assert!(matches!(
        engine.wait_container(&container_id).await,
        Err(DockerError::NotFound(_))
    ));
}

#[tokio::test]
async fn kill_stops_a_running_container_and_tolerates_stopped_ones() {
    let engine = engine().await;
    let mut guard = ContainerGuard::new();
    let run = unique_name("run");
    let name = unique_name("sleeper");
    guard.track(&name);
    let spec = ContainerCreateSpec {
        // No network: a second engine on this machine (scripts/second-engine.sh)
        // removes the host's docker0 bridge when it starts.
        network_mode: Some("none".into()),
        name: name.clone(),
        image: BUSYBOX.to_string(),
        entrypoint: vec!["sleep".into(), "300".into()],
        labels: run_labels(&run),
        init: true,
        cap_drop: vec!["ALL".into()],
        ..Default::default()
    };
    let container_id = engine.create_container(&spec).await.expect("create");
    // Polled from the start, so events arrive live rather than replayed.
    let mut events = engine.container_events(&[("attune.test.run", &run)]);
    let die_event = tokio::spawn(async move {
        while let Some(event) = events.next().await {
            let event = event.expect("event");
            if event.action == "die" {
                return Some(event);
            }
        }
        None
    });

    let duplicate = engine.create_container(&spec).await.unwrap_err();
    match duplicate {
        DockerError::Rejected { operation, reason } => {
            assert_eq!(operation, format!("create container {name}"));
            assert!(reason.contains("already in use"), "reason: {reason}");
        }
        other => panic!("expected rejected, got {other:?}"),
    }

    engine.start_container(&container_id).await.expect("start");
    let running = engine
        .inspect_container(&container_id)
        .await
        .unwrap()
        .unwrap();
    assert!(running.running);
    assert_eq!(running.status, "running");

    engine
        .kill_container(&container_id, "SIGKILL")
        .await
        .expect("kill");
    let exit_code = tokio::time::timeout(DEADLINE, engine.wait_container(&container_id))
        .await
        .expect("container dies before the deadline")
        .expect("wait");
    assert_eq!(exit_code, 137);
    let die = tokio::time::timeout(DEADLINE, die_event)
        .await
        .expect("die event before the deadline")
        .expect("event task")
        .expect("die event");
    assert_eq!(die.container_id, container_id);
    assert_eq!(die.exit_code, Some(137));
    engine
        .kill_container(&container_id, "SIGKILL")
        .await
        .expect("killing a stopped container is not an error");
    engine
        .remove_container(&container_id)
        .await
        .expect("remove");
    engine
        .kill_container(&container_id, "SIGTERM")
        .await
        .expect("killing a removed container is not an error");
}

#[tokio::test]
async fn missing_things_map_to_typed_errors() {
    let engine = engine().await;
    let missing_container = unique_name("missing");

    assert_eq!(
        engine
            .inspect_image("attune-test/definitely-missing:never")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        engine.inspect_container(&missing_container).await.unwrap(),
        None
    );
    assert!(matches!(
        engine.start_container(&missing_container).await,
        Err(DockerError::NotFound(_))
    ));
    assert!(matches!(
        engine.wait_container(&missing_container).await,
        Err(DockerError::NotFound(_))
    ));
    assert!(matches!(
        engine.container_logs(&missing_container, 10).await,
        Err(DockerError::NotFound(_))
    ));
    let mut archive = InjectionArchive::new();
    archive.add_file("a.txt", FILE_MODE, "x").unwrap();
    assert!(matches!(
        engine
            .upload_archive(&missing_container, "/", archive.finish())
            .await,
        Err(DockerError::NotFound(_))
    ));
    engine
        .remove_container(&missing_container)
        .await
        .expect("removing a missing container is not an error");

    let spec = ContainerCreateSpec {
        // No network: a second engine on this machine (scripts/second-engine.sh)
        // removes the host's docker0 bridge when it starts.
        network_mode: Some("none".into()),
        name: unique_name("no-image"),
        image: "attune-test/definitely-missing:never".into(),
        labels: run_labels("no-image"),
        ..Default::default()
    };
    assert!(matches!(
        engine.create_container(&spec).await,
        Err(DockerError::NotFound(_))
    ));
}

#[tokio::test]
async fn unpullable_image_fails_fast_with_the_engine_message() {
    let engine = engine().await;
    // A registry on a closed loopback port: the engine fails at once and no traffic leaves.
    let image = "127.0.0.1:1/attune-test/unpullable:latest";
    let credentials = RegistryCredentials {
        username: "attune-test".into(),
        password: "never-sent-anywhere".into(),
    };
    // Anonymous, then with credentials (sent as X-Registry-Auth): both fail fast and clearly.
    for credentials in [None, Some(&credentials)] {
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(
            Duration::from_secs(30),
            engine.pull_image(image, credentials),
        )
        .await
        .expect("pull fails before the deadline");
        match result {
            Err(DockerError::PullFailed {
                image: failed,
                reason,
            }) => {
                assert_eq!(failed, image);
                assert!(
                    reason.contains("127.0.0.1:1") && reason.contains("connection refused"),
                    "reason: {reason}"
                );
                assert!(
                    !reason.contains("never-sent-anywhere"),
                    "the password is not echoed: {reason}"
                );
            }
            other => panic!("expected pull failure, got {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a refused pull fails fast, took {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn uploads_are_refused_into_a_read_only_rootfs_and_never_compressed() {
    let engine = engine().await;
    let mut guard = ContainerGuard::new();
    let name = unique_name("read-only");
    guard.track(&name);
    let spec = ContainerCreateSpec {
        // No network: a second engine on this machine (scripts/second-engine.sh)
        // removes the host's docker0 bridge when it starts.
        network_mode: Some("none".into()),
        name: name.clone(),
        image: BUSYBOX.to_string(),
        entrypoint: vec!["true".into()],
        labels: run_labels(&name),
        read_only_rootfs: true,
        ..Default::default()
    };
    let container_id = engine.create_container(&spec).await.expect("create");
    let mut archive = InjectionArchive::new();
    archive.add_file("a.txt", FILE_MODE, "x").unwrap();
    match engine
        .upload_archive(&container_id, "/", archive.finish())
        .await
    {
        Err(DockerError::Rejected { reason, .. }) => {
            assert!(reason.contains("read-only"), "reason: {reason}")
        }
        other => panic!("expected rejected, got {other:?}"),
    }
    let gzip_header = vec![0x1f, 0x8b, 0x08, 0x00, 0, 0, 0, 0];
    match engine
        .upload_archive(&container_id, "/tmp", gzip_header)
        .await
    {
        Err(DockerError::Rejected { reason, .. }) => {
            assert!(reason.contains("gzip"), "reason: {reason}")
        }
        other => panic!("expected rejected, got {other:?}"),
    }
    engine
        .remove_container(&container_id)
        .await
        .expect("remove");
}

/// Removes the named volumes when dropped (after the containers' guard, declared before it).
struct VolumeGuard {
    names: Vec<String>,
}

impl Drop for VolumeGuard {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("docker")
                .args(["volume", "rm", "-f", name])
                .output();
        }
    }
}

#[tokio::test]
async fn a_volume_filled_through_a_created_container_serves_a_read_only_container() {
    let engine = engine().await;
    let volume = unique_name("volume");
    let _volumes = VolumeGuard {
        names: vec![volume.clone()],
    };
    let mut guard = ContainerGuard::new();
    let run = unique_name("run");
    let labels = BTreeMap::from([
        ("attune.test".to_string(), "true".to_string()),
        ("attune.agent-sha256".to_string(), "f".repeat(64)),
    ]);

    assert_eq!(engine.inspect_volume(&volume).await.unwrap(), None);
    let created = engine
        .create_volume(&volume, &labels)
        .await
        .expect("create volume");
    assert_eq!(created.name, volume);
    assert_eq!(created.labels, labels);
    let again = engine
        .create_volume(&volume, &BTreeMap::new())
        .await
        .expect("creating an existing volume returns it");
    assert_eq!(again.labels, labels, "the existing volume keeps its labels");

    // Fill it through a created, never started container (no shell needed).
    let filler_name = unique_name("filler");
    guard.track(&filler_name);
    let filler = ContainerCreateSpec {
        name: filler_name.clone(),
        image: BUSYBOX.to_string(),
        entrypoint: vec!["/never-started".into()],
        labels: run_labels(&run),
        network_mode: Some("none".into()),
        binds: vec![format!("{volume}:/fill")],
        ..Default::default()
    };
    let filler_id = engine
        .create_container(&filler)
        .await
        .expect("create filler");
    assert_eq!(
        engine.read_file(&filler_id, "/fill/run.sh").await.unwrap(),
        None,
        "a missing path reads as none"
    );
    let mut archive = InjectionArchive::new();
    archive
        .add_file("run.sh", EXECUTABLE_MODE, "#!/bin/sh\necho from-the-volume uid=$(id -u)\ntouch /fill-test 2>/dev/null || echo rootfs-read-only\n")
        .unwrap()
        .add_file(".ready", FILE_MODE, "digest")
        .unwrap();
    engine
        .upload_archive(&filler_id, "/fill", archive.finish())
        .await
        .expect("put_archive into a volume mount of a created container");
    assert_eq!(
        engine.read_file(&filler_id, "/fill/.ready").await.unwrap(),
        Some(b"digest".to_vec())
    );
    let in_use = engine.remove_volume(&volume).await.unwrap_err();
    assert!(
        matches!(in_use, DockerError::Rejected { ref reason, .. } if reason.contains("in use")),
        "{in_use:?}"
    );
    engine
        .remove_container(&filler_id)
        .await
        .expect("remove filler");

    // Mounted read-only into a read-only container of a non-root user, it runs.
    let user_name = unique_name("reader");
    guard.track(&user_name);
    let reader = ContainerCreateSpec {
        name: user_name.clone(),
        image: BUSYBOX.to_string(),
        entrypoint: vec!["/opt/attune/bin/run.sh".into()],
        labels: run_labels(&run),
        user: Some("65534:65534".into()),
        network_mode: Some("none".into()),
        init: true,
        cap_drop: vec!["ALL".into()],
        read_only_rootfs: true,
        binds: vec![format!("{volume}:/opt/attune/bin:ro")],
        ..Default::default()
    };
    let reader_id = engine
        .create_container(&reader)
        .await
        .expect("create reader");
    engine
        .start_container(&reader_id)
        .await
        .expect("start reader");
    let exit_code = tokio::time::timeout(DEADLINE, engine.wait_container(&reader_id))
        .await
        .expect("reader ends before the deadline")
        .expect("wait");
    let logs = engine.container_logs(&reader_id, 10).await.unwrap();
    assert_eq!(exit_code, 0, "{logs}");
    assert!(logs.contains("from-the-volume uid=65534"), "{logs}");
    assert!(logs.contains("rootfs-read-only"), "{logs}");
    engine
        .remove_container(&reader_id)
        .await
        .expect("remove reader");
    engine.remove_volume(&volume).await.expect("remove volume");
    assert_eq!(engine.inspect_volume(&volume).await.unwrap(), None);
    engine
        .remove_volume(&volume)
        .await
        .expect("removing a missing volume is not an error");
}

/// `docker inspect` of one container, as JSON.
fn docker_inspect(container_id: &str) -> serde_json::Value {
    let output = std::process::Command::new("docker")
        .args(["inspect", container_id])
        .output()
        .expect("run docker inspect");
    assert!(
        output.status.success(),
        "docker inspect {container_id} failed"
    );
    let mut all: Vec<serde_json::Value> =
        serde_json::from_slice(&output.stdout).expect("docker inspect prints JSON");
    all.pop().expect("one container")
}
