//! Lazy pack environments through the whole system: a python pack with requirements.txt runs in
//! fresh containers of `attune-test/python-venv`; the first execution builds the venv in the
//! shared `attune-envs` volume, the next reuses it untouched, and a changed dependency file gets
//! an environment of its own. Needs `scripts/build-images.sh python-venv` (`make test` builds it).

use attune_testkit::{TestClient, TestServer};
use serde_json::json;
use std::path::Path;
use std::time::Duration;

const IMAGE: &str = "attune-test/python-venv:latest";
const WHEEL: &str = "attune_testpkg-1.0-py3-none-any.whl";

/// Writes a pure-python wheel of `attune_testpkg` whose `VALUE` is argv[2].
const MAKE_WHEEL: &str = include_str!("../../attune-agent/tests/fixtures/make_wheel.py");

/// The pack's action: prints the package's VALUE, its environment and when that was ready.
const SHOW: &str = include_str!("../../attune-agent/tests/fixtures/show_environment.py");

fn write_pack(dir: &Path, value: &str, requirements_comment: &str) {
    std::fs::create_dir_all(dir.join("actions")).unwrap();
    std::fs::create_dir_all(dir.join("vendor")).unwrap();
    std::fs::write(dir.join("pack.yaml"), "ref: envpack\nversion: 1.0.0\n").unwrap();
    std::fs::write(
        dir.join("actions/show.yaml"),
        format!(
            "ref: envpack.show\nrunner_type: python\nentry_point: show.py\ncontainer: {IMAGE}\ntimeout: 120\n"
        ),
    )
    .unwrap();
    std::fs::write(dir.join("actions/show.py"), SHOW).unwrap();
    std::fs::write(
        dir.join("requirements.txt"),
        format!("# {requirements_comment}\n./vendor/{WHEEL}\n"),
    )
    .unwrap();
    let made = std::process::Command::new("python3")
        .args(["-c", MAKE_WHEEL])
        .arg(dir.join("vendor").join(WHEEL))
        .arg(value)
        .status()
        .expect("run python3 to build the test wheel");
    assert!(made.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_requirements_build_once_per_dependency_digest_and_are_reused() {
    let image_present = std::process::Command::new("docker")
        .args(["image", "inspect", IMAGE])
        .output()
        .unwrap()
        .status
        .success();
    assert!(
        image_present,
        "image {IMAGE} missing: run scripts/build-images.sh python-venv"
    );
    let server = TestServer::start(&[]).await.expect("start test server");
    let client = TestClient::new(&server).with_deadline(Duration::from_secs(180));
    let pack = tempfile::tempdir().unwrap();
    // A per-run marker so each test run keys fresh environments in the shared volume.
    let unique = uuid::Uuid::new_v4().simple().to_string();
    write_pack(pack.path(), "first", &unique);
    client.register_dir(pack.path()).await;

    let first = client.run_succeeded("envpack.show", json!({})).await;
    let first_result = first.result.unwrap();
    assert_eq!(first_result["value"], "first");
    let prefix = first_result["prefix"].as_str().unwrap().to_string();
    assert!(prefix.starts_with("/opt/attune/envs/"), "{prefix}");

    let second = client.run_succeeded("envpack.show", json!({})).await;
    assert_ne!(first.container_id, second.container_id, "a fresh container");
    let second_result = second.result.unwrap();
    assert_eq!(second_result["prefix"], prefix.as_str(), "same environment");
    assert_eq!(
        second_result["ready_mtime_ns"], first_result["ready_mtime_ns"],
        "reused untouched, not rebuilt"
    );

    write_pack(pack.path(), "second", &format!("{unique} changed"));
    client.register_dir(pack.path()).await;
    let changed = client.run_succeeded("envpack.show", json!({})).await;
    let changed_result = changed.result.unwrap();
    assert_eq!(changed_result["value"], "second");
    assert_ne!(
        changed_result["prefix"],
        prefix.as_str(),
        "a new environment"
    );
    server.stop().await.unwrap();
}
