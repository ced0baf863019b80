//! Lazy pack environments through the whole system: a python pack with requirements.txt runs in
//! fresh containers of `attune-test/python-venv`; the first execution builds the venv in the
//! pack's own `attune-envs-<pack>` volume, the next reuses it untouched, and a changed dependency
//! file gets an environment of its own. Another pack's containers mount only that pack's volume:
//! they see nothing of the first pack's environments and cannot alter them. Needs
//! `scripts/build-images.sh python-venv` (`make test` builds it).

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

    // Another pack: its own volume, where nothing of envpack's environments is.
    let other = tempfile::tempdir().unwrap();
    write_other_pack(other.path(), &unique);
    client.register_dir(other.path()).await;
    let looked = client.run_succeeded("otherpack.look", json!({})).await;
    let found = looked.result.unwrap()["found"].clone();
    let found: Vec<String> = serde_json::from_value(found).unwrap();
    assert!(
        !found.is_empty(),
        "the other pack built its own environment"
    );
    for path in &found {
        assert!(
            !path.starts_with(&prefix),
            "another pack sees envpack's environment {path}"
        );
    }
    let changed_prefix = changed_result["prefix"].as_str().unwrap();
    assert!(
        !found.iter().any(|path| path.starts_with(changed_prefix)),
        "{found:?}"
    );
    let volumes = std::process::Command::new("docker")
        .args([
            "volume",
            "ls",
            "-q",
            "--filter",
            "label=attune.role=environments",
        ])
        .output()
        .unwrap();
    let volumes = String::from_utf8_lossy(&volumes.stdout);
    assert!(
        volumes.contains("attune-envs-envpack") && volumes.contains("attune-envs-otherpack"),
        "one environments volume per pack: {volumes}"
    );
    server.stop().await.unwrap();
}

/// A second python pack whose action lists everything it can see of the environments.
fn write_other_pack(dir: &Path, unique: &str) {
    std::fs::create_dir_all(dir.join("actions")).unwrap();
    std::fs::create_dir_all(dir.join("vendor")).unwrap();
    std::fs::write(dir.join("pack.yaml"), "ref: otherpack\nversion: 1.0.0\n").unwrap();
    std::fs::write(
        dir.join("actions/look.yaml"),
        format!(
            "ref: otherpack.look\nrunner_type: python\nentry_point: look.py\ncontainer: {IMAGE}\ntimeout: 120\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("actions/look.py"),
        "import json, os\nfound = []\nfor root, dirs, files in os.walk('/opt/attune/envs'):\n    found += [os.path.join(root, name) for name in dirs + files]\nprint(json.dumps({'found': found}))\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("requirements.txt"),
        format!("# other {unique}\n./vendor/{WHEEL}\n"),
    )
    .unwrap();
    let made = std::process::Command::new("python3")
        .args(["-c", MAKE_WHEEL])
        .arg(dir.join("vendor").join(WHEEL))
        .arg("other")
        .status()
        .expect("run python3 to build the test wheel");
    assert!(made.success());
}
