//! Lazy pack environments through the whole system: a python pack with requirements.txt runs in
//! fresh containers of `attune-test/python-venv`; the first execution builds the venv in the
//! shared `attune-envs` volume, the next reuses it untouched, and a changed dependency file gets
//! an environment of its own. Needs `scripts/build-images.sh python-venv` (`make test` builds it).

use attune_protocol::api::{ExecutionStatus, ExecutionView};
use attune_server::testing::TestServer;
use serde_json::json;
use std::path::Path;
use std::time::Duration;

const IMAGE: &str = "attune-test/python-venv:latest";
const WHEEL: &str = "attune_testpkg-1.0-py3-none-any.whl";

/// Writes a pure-python wheel of `attune_testpkg` whose `VALUE` is argv[2].
const MAKE_WHEEL: &str = r#"
import base64, hashlib, sys, zipfile
destination, value = sys.argv[1], sys.argv[2]
name, version = "attune_testpkg", "1.0"
dist_info = f"{name}-{version}.dist-info"
files = {
    f"{name}/__init__.py": f"VALUE = {value!r}\n",
    f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
    f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: attune-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = []
with zipfile.ZipFile(destination, "w") as wheel:
    for path, text in files.items():
        data = text.encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
        wheel.writestr(path, data)
    record.append(f"{dist_info}/RECORD,,")
    wheel.writestr(f"{dist_info}/RECORD", "\n".join(record) + "\n")
"#;

const SHOW: &str = r#"import json, os, sys
import attune_testpkg
ready = os.stat(os.path.join(sys.prefix, ".ready"))
print(json.dumps({"value": attune_testpkg.VALUE, "prefix": sys.prefix,
                  "ready_mtime_ns": ready.st_mtime_ns}))
"#;

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

async fn register(client: &reqwest::Client, server: &TestServer, dir: &Path) {
    let archive = attune_pack::build_pack_archive(dir).unwrap();
    let response = client
        .post(format!("{}/api/v1/packs?force=true", server.base_url))
        .header("content-type", "application/x-tar")
        .body(archive)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
}

async fn run(client: &reqwest::Client, server: &TestServer) -> ExecutionView {
    let created: ExecutionView = client
        .post(format!("{}/api/v1/executions", server.base_url))
        .json(&json!({"action": "envpack.show", "parameters": {}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let execution: ExecutionView = client
            .get(format!(
                "{}/api/v1/executions/{}",
                server.base_url, created.id
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if execution.status.is_terminal() {
            return execution;
        }
        assert!(tokio::time::Instant::now() < deadline, "{execution:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    let client = reqwest::Client::new();
    let pack = tempfile::tempdir().unwrap();
    let unique = uuid_like();
    write_pack(pack.path(), "first", &unique);
    register(&client, &server, pack.path()).await;

    let first = run(&client, &server).await;
    assert_eq!(first.status, ExecutionStatus::Succeeded, "{first:?}");
    let first_result = first.result.unwrap();
    assert_eq!(first_result["value"], "first");
    let prefix = first_result["prefix"].as_str().unwrap().to_string();
    assert!(prefix.starts_with("/opt/attune/envs/"), "{prefix}");

    let second = run(&client, &server).await;
    assert_eq!(second.status, ExecutionStatus::Succeeded, "{second:?}");
    assert_ne!(first.container_id, second.container_id, "a fresh container");
    let second_result = second.result.unwrap();
    assert_eq!(second_result["prefix"], prefix.as_str(), "same environment");
    assert_eq!(
        second_result["ready_mtime_ns"], first_result["ready_mtime_ns"],
        "reused untouched, not rebuilt"
    );

    write_pack(pack.path(), "second", &format!("{unique} changed"));
    register(&client, &server, pack.path()).await;
    let changed = run(&client, &server).await;
    assert_eq!(changed.status, ExecutionStatus::Succeeded, "{changed:?}");
    let changed_result = changed.result.unwrap();
    assert_eq!(changed_result["value"], "second");
    assert_ne!(
        changed_result["prefix"],
        prefix.as_str(),
        "a new environment"
    );
    server.stop().await.unwrap();
}

/// A per-run marker so each test run keys fresh environments in the shared volume.
fn uuid_like() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}
