//! A worker's pack files by digest against a tiny HTTP server on 127.0.0.1: a job with
//! `pack_sha256` runs from the downloaded, unpacked archive (executable bit kept), a second
//! job uses the cache, concurrent jobs download once, mounted packs win, a tampered or unsafe
//! archive is refused and leaves nothing in the cache, and only the 8 most recently used
//! digests stay (never one in use).

mod worker_support;

use attune_agent::api::{ApiClient, ApiToken};
use attune_agent::detect::{Detector, SearchPath};
use attune_agent::environment::EnvironmentCache;
use attune_agent::hints::RuntimeHints;
use attune_agent::packs::{PackStore, CACHE_DIR_NAME, DIGESTS_KEPT, PACK_DIGEST_FILE};
use attune_agent::runner::{run_job, RunnerContext};
use attune_protocol::{FailureKind, Job, JobOutcome, JobReport, Runtime, PROTOCOL_VERSION};
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use worker_support::{archive, hello_pack, sha256_hex, Entry, Reply, TestServer, TOKEN};

/// Archives the server has, by the digest in the query; a digest not there is a 404.
#[derive(Clone, Default)]
struct Archives(Arc<Mutex<HashMap<String, Vec<u8>>>>);

impl Archives {
    /// Serves `bytes` under their own digest; returns it.
    fn add(&self, bytes: Vec<u8>) -> String {
        let digest = sha256_hex(&bytes);
        self.0.lock().unwrap().insert(digest.clone(), bytes);
        digest
    }

    /// Serves `bytes` under `digest`, whatever their sha256 is (a tampered archive).
    fn add_as(&self, digest: &str, bytes: Vec<u8>) {
        self.0.lock().unwrap().insert(digest.to_string(), bytes);
    }

    async fn serve(&self) -> TestServer {
        let archives = self.clone();
        TestServer::start(move |request, _| {
            let digest = request
                .target
                .split_once("?sha256=")
                .map(|(_, digest)| digest.to_string())
                .unwrap_or_default();
            let authorized = request.header("authorization") == Some(&format!("Bearer {TOKEN}"));
            match archives.0.lock().unwrap().get(&digest) {
                Some(_) if !authorized => {
                    Reply::json(401, &serde_json::json!({"error": "unauthorized"}))
                }
                Some(bytes) => Reply::bytes(200, bytes.clone()),
                None => Reply::json(
                    404,
                    &serde_json::json!({"error": "not_found", "message": "no such archive"}),
                ),
            }
        })
        .await
    }
}

struct Worker {
    work: tempfile::TempDir,
    mounted: tempfile::TempDir,
    packs: Arc<PackStore>,
}

impl Worker {
    fn new(server: &TestServer) -> Self {
        let work = tempfile::tempdir().unwrap();
        let mounted = tempfile::tempdir().unwrap();
        let api = ApiClient::new(&server.url, ApiToken::new(TOKEN), None).unwrap();
        let packs = Arc::new(PackStore::new(
            mounted.path().to_path_buf(),
            work.path().join(CACHE_DIR_NAME),
            api,
        ));
        Self {
            work,
            mounted,
            packs,
        }
    }

    fn cache(&self) -> PathBuf {
        self.work.path().join(CACHE_DIR_NAME)
    }

    /// The names in the cache directory (none when it does not exist).
    fn cache_entries(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.cache())
            .map(|entries| {
                entries
                    .flatten()
                    .map(|entry| entry.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    fn context(&self) -> RunnerContext {
        RunnerContext {
            agent_id: "worker-test".to_string(),
            image: None,
            workdir_base: self.work.path().to_path_buf(),
            detector: Detector::new(SearchPath::from_environment(), RuntimeHints::default()),
            environments: EnvironmentCache {
                root: self.work.path().join("attune-envs"),
                image_identity: String::new(),
                build_timeout: Duration::from_secs(60),
            },
            packs: Some(Arc::clone(&self.packs)),
        }
    }

    async fn run(&self, execution_id: i64, digest: &str) -> JobReport {
        let (events, _receiver) = mpsc::unbounded_channel();
        let (_stop, stop_receiver) = watch::channel(None);
        run_job(
            &self.context(),
            &job(execution_id, digest),
            &events,
            stop_receiver,
        )
        .await
    }
}

fn job(execution_id: i64, digest: &str) -> Job {
    Job {
        protocol_version: PROTOCOL_VERSION,
        execution_id,
        action_ref: "hello.run".to_string(),
        pack_ref: "hello".to_string(),
        runtime: Runtime::Native,
        // What a controller's container would have; a worker replaces it.
        pack_dir: "/opt/attune/packs/hello".to_string(),
        entry_point: "actions/run.sh".to_string(),
        parameters: Default::default(),
        secret_parameters: Vec::new(),
        parameter_delivery: Default::default(),
        parameter_format: Default::default(),
        timeout_seconds: 30,
        kill_grace_seconds: 1,
        env: Default::default(),
        output_limit_bytes: 1024 * 1024,
        stream_logs: false,
        pack_sha256: Some(digest.to_string()),
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn archive_requests(server: &TestServer) -> usize {
    server
        .requests()
        .iter()
        .filter(|request| request.target.contains("/archive?sha256="))
        .count()
}

#[tokio::test]
async fn a_job_runs_from_the_downloaded_archive_and_a_second_job_uses_the_cache() {
    let archives = Archives::default();
    let digest = archives.add(hello_pack("hello from the archive\n"));
    let server = archives.serve().await;
    let worker = Worker::new(&server);

    let report = worker.run(1, &digest).await;
    assert_eq!(report.outcome, JobOutcome::Succeeded, "{report:?}");
    assert_eq!(report.stdout, "hello from the archive\n");
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].target,
        format!("/api/v1/packs/hello/archive?sha256={digest}")
    );
    assert_eq!(requests[0].method, "GET");

    let entry = worker.cache().join(&digest);
    assert_eq!(
        mode(&entry.join("actions/run.sh")),
        0o755,
        "executable kept"
    );
    assert_eq!(mode(&entry.join("data/greeting.txt")), 0o644);
    assert_eq!(mode(&entry.join("actions")), 0o755);
    assert_eq!(
        std::fs::read_to_string(entry.join(PACK_DIGEST_FILE))
            .unwrap()
            .trim(),
        digest
    );

    let report = worker.run(2, &digest).await;
    assert_eq!(report.outcome, JobOutcome::Succeeded, "{report:?}");
    assert_eq!(
        archive_requests(&server),
        1,
        "the second job used the cache"
    );
    assert_eq!(worker.cache_entries(), vec![digest]);
}

#[tokio::test]
async fn concurrent_jobs_for_one_digest_download_it_once() {
    let archives = Archives::default();
    let digest = archives.add(hello_pack("once\n"));
    let server = archives.serve().await;
    let worker = Worker::new(&server);
    let leases =
        futures_util::future::join_all((0..5).map(|_| worker.packs.lease("hello", &digest))).await;
    for lease in &leases {
        let lease = lease.as_ref().expect("leased");
        assert_eq!(lease.dir(), worker.cache().join(&digest));
    }
    assert_eq!(archive_requests(&server), 1);
}

#[tokio::test]
async fn mounted_packs_with_the_digest_are_used_without_a_download() {
    let archives = Archives::default();
    let digest = archives.add(hello_pack("from the archive\n"));
    let server = archives.serve().await;
    let worker = Worker::new(&server);
    let mounted = worker.mounted.path().join("hello");
    std::fs::create_dir_all(mounted.join("actions")).unwrap();
    std::fs::create_dir_all(mounted.join("data")).unwrap();
    let script = mounted.join("actions/run.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\ncat \"$ATTUNE_PACK_DIR/data/greeting.txt\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(mounted.join("data/greeting.txt"), "from the mount\n").unwrap();
    std::fs::write(mounted.join(PACK_DIGEST_FILE), format!("{digest}\n")).unwrap();

    let report = worker.run(1, &digest).await;
    assert_eq!(report.outcome, JobOutcome::Succeeded, "{report:?}");
    assert_eq!(report.stdout, "from the mount\n");
    assert!(server.requests().is_empty());

    // A mount holding another digest is not used.
    std::fs::write(mounted.join(PACK_DIGEST_FILE), "0".repeat(64)).unwrap();
    let report = worker.run(2, &digest).await;
    assert_eq!(report.stdout, "from the archive\n");
    assert_eq!(archive_requests(&server), 1);
}

#[tokio::test]
async fn a_tampered_archive_is_refused_naming_both_digests_and_leaves_nothing() {
    let archives = Archives::default();
    let genuine = hello_pack("genuine\n");
    let digest = sha256_hex(&genuine);
    let tampered = hello_pack("tampered\n");
    let actual = sha256_hex(&tampered);
    archives.add_as(&digest, tampered);
    let server = archives.serve().await;
    let worker = Worker::new(&server);

    let report = worker.run(1, &digest).await;
    assert_eq!(report.outcome, JobOutcome::Failed);
    assert_eq!(report.failure_kind, Some(FailureKind::PackFiles));
    let error = report.error.unwrap();
    assert!(
        error.contains("hello") && error.contains(&digest),
        "{error}"
    );
    assert!(
        error.contains(&format!("expected sha256 {digest}, got {actual}")),
        "{error}"
    );
    assert!(
        worker.cache_entries().is_empty(),
        "{:?}",
        worker.cache_entries()
    );
}

#[tokio::test]
async fn unsafe_archives_are_refused_and_leave_nothing_in_the_cache() {
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "parent",
            archive(&[Entry::Dir("actions"), Entry::File("../escape", b"x", 0o644)]),
            "entry \"../escape\": its path goes up with '..'",
        ),
        (
            "absolute",
            archive(&[Entry::File("/tmp/attune-absolute", b"x", 0o644)]),
            "entry \"/tmp/attune-absolute\": its path is absolute",
        ),
        (
            "symlink",
            archive(&[
                Entry::File("pack.yaml", b"ref: hello\n", 0o644),
                Entry::Symlink("actions", "/etc"),
            ]),
            "entry \"actions\" is a symbolic link",
        ),
        (
            "hardlink",
            archive(&[
                Entry::File("pack.yaml", b"ref: hello\n", 0o644),
                Entry::HardLink("copy", "pack.yaml"),
            ]),
            "entry \"copy\" is a hard link",
        ),
    ];
    let archives = Archives::default();
    let digests: Vec<(String, &str, &str)> = cases
        .into_iter()
        .map(|(name, bytes, expected)| (archives.add(bytes), name, expected))
        .collect();
    let server = archives.serve().await;
    let worker = Worker::new(&server);
    for (digest, name, expected) in digests {
        let report = worker.run(1, &digest).await;
        assert_eq!(report.failure_kind, Some(FailureKind::PackFiles), "{name}");
        let error = report.error.unwrap();
        assert!(
            error.starts_with(&format!(
                "pack files of hello (archive sha256 {digest}): unpack the archive: "
            )),
            "{name}: {error}"
        );
        assert!(error.contains(expected), "{name}: {error}");
        assert!(
            worker.cache_entries().is_empty(),
            "{name}: {:?}",
            worker.cache_entries()
        );
    }
    assert!(!worker.work.path().join("escape").exists());
    assert!(!worker.cache().join("escape").exists());
    assert!(!Path::new("/tmp/attune-absolute").exists());
}

#[tokio::test]
async fn a_download_the_api_refuses_fails_the_job_with_its_status() {
    let archives = Archives::default();
    let server = archives.serve().await;
    let worker = Worker::new(&server);
    let missing = "a".repeat(64);
    let report = worker.run(1, &missing).await;
    assert_eq!(report.failure_kind, Some(FailureKind::PackFiles));
    let error = report.error.unwrap();
    assert!(
        error.starts_with(&format!(
            "pack files of hello (archive sha256 {missing}): download the archive: GET "
        )),
        "{error}"
    );
    assert!(
        error.ends_with("the API answered 404 Not Found: not_found: no such archive"),
        "{error}"
    );
    assert!(!error.contains(TOKEN));

    let report = worker.run(2, "not-a-digest").await;
    assert_eq!(report.failure_kind, Some(FailureKind::PackFiles));
    assert!(report.error.unwrap().contains("not a sha256"));
    assert_eq!(archive_requests(&server), 1);
}

#[tokio::test]
async fn only_the_most_recently_used_digests_are_kept_and_never_one_in_use() {
    let archives = Archives::default();
    let digests: Vec<String> = (0..DIGESTS_KEPT + 3)
        .map(|index| archives.add(hello_pack(&format!("version {index}\n"))))
        .collect();
    let server = archives.serve().await;
    let worker = Worker::new(&server);

    // The first stays in use throughout; the second is used again after the eighth.
    let held = worker.packs.lease("hello", &digests[0]).await.unwrap();
    for (index, digest) in digests.iter().enumerate().skip(1) {
        drop(worker.packs.lease("hello", digest).await.unwrap());
        if index == DIGESTS_KEPT {
            drop(worker.packs.lease("hello", &digests[1]).await.unwrap());
        }
    }
    let mut expected: Vec<String> = vec![digests[0].clone(), digests[1].clone()];
    // The most recent: 1 (used again), then the last ones down to a total of 8 besides the held one.
    let newest: Vec<String> = digests[2..]
        .iter()
        .rev()
        .take(DIGESTS_KEPT - 1)
        .cloned()
        .collect();
    expected.extend(newest);
    expected.sort();
    assert_eq!(worker.cache_entries(), expected);
    assert!(
        held.dir().join("actions/run.sh").is_file(),
        "the held digest kept its files"
    );
    drop(held);

    // Once released, the held digest is the oldest: the next download removes it.
    let extra = archives.add(hello_pack("one more\n"));
    drop(worker.packs.lease("hello", &extra).await.unwrap());
    let entries = worker.cache_entries();
    assert_eq!(entries.len(), DIGESTS_KEPT, "{entries:?}");
    assert!(!entries.contains(&digests[0]), "{entries:?}");
    assert!(entries.contains(&extra));
}
