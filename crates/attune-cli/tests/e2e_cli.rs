//! The real `attune` binary against a real server (real Docker, RabbitMQ, Postgres and agent):
//! the newcomer's commands from the README, with their exit codes.

use attune_protocol::api::{ExecutionStatus, ExecutionView};
use attune_testkit::TestServer;
use std::path::PathBuf;
use std::process::Output;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

async fn attune(server: &TestServer, arguments: &[&str]) -> Output {
    let arguments: Vec<String> = arguments
        .iter()
        .map(|argument| argument.to_string())
        .collect();
    let api_url = server.base_url.clone();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_attune"))
            .args(&arguments)
            .env("ATTUNE_API_URL", api_url)
            .current_dir(workspace())
            .output()
            .expect("run attune")
    })
    .await
    .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts that a command's output contains `expected`, showing the output otherwise.
fn assert_contains(output: &[u8], expected: &str) {
    let output = text(output);
    assert!(output.contains(expected), "{expected:?} not in: {output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_commands_work_with_their_exit_codes() {
    let server = TestServer::start(&[]).await.expect("start test server");

    let register = attune(&server, &["pack", "register", "examples/packs/hello"]).await;
    assert!(register.status.success(), "{}", text(&register.stderr));
    assert_contains(&register.stdout, "hello");

    let again = attune(&server, &["pack", "register", "examples/packs/hello"]).await;
    assert_eq!(
        again.status.code(),
        Some(1),
        "registering twice without --force fails"
    );
    assert_contains(&again.stderr, "--force");

    let run = attune(&server, &["run", "hello.greet", "name=Ada", "--wait"]).await;
    assert!(
        run.status.success(),
        "{}{}",
        text(&run.stdout),
        text(&run.stderr)
    );
    assert_contains(&run.stdout, "Hello, Ada!");

    let bad = attune(&server, &["run", "hello.greet", "punctuation=?!", "--wait"]).await;
    assert_eq!(bad.status.code(), Some(1));
    assert_contains(&bad.stderr, "punctuation");

    let unknown = attune(&server, &["run", "hello.nope", "--wait"]).await;
    assert_eq!(unknown.status.code(), Some(1));
    assert_contains(&unknown.stderr, "hello.nope");

    let list = attune(&server, &["execution", "list"]).await;
    assert!(list.status.success());
    assert_contains(&list.stdout, "hello.greet");
    assert_contains(&list.stdout, "succeeded");

    let json = attune(&server, &["execution", "list", "--json"]).await;
    let listed: attune_protocol::api::List<ExecutionView> =
        serde_json::from_slice(&json.stdout).expect("execution list --json is JSON");
    let id = listed.items[0].id.to_string();
    let get = attune(&server, &["execution", "get", &id, "--json"]).await;
    assert!(get.status.success());
    let execution: ExecutionView = serde_json::from_slice(&get.stdout).unwrap();
    assert_eq!(execution.status, ExecutionStatus::Succeeded);
    assert_eq!(execution.result.unwrap()["greeting"], "Hello, Ada!");

    let cancel = attune(&server, &["execution", "cancel", &id]).await;
    assert_eq!(
        cancel.status.code(),
        Some(1),
        "a finished execution cannot be canceled"
    );
    assert_contains(&cancel.stderr, "already ended");

    server.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_action_exits_non_zero_with_its_reason() {
    let server = TestServer::start(&[]).await.expect("start test server");
    let pack = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../attune-server/tests/packs/e2e")
        .display()
        .to_string();
    let register = attune(&server, &["pack", "register", &pack]).await;
    assert!(register.status.success(), "{}", text(&register.stderr));
    let run = attune(&server, &["run", "e2e.fail", "--wait"]).await;
    assert_eq!(run.status.code(), Some(1));
    let stderr = text(&run.stderr);
    assert!(
        stderr.contains("something went wrong"),
        "live stderr streamed: {stderr}"
    );
    assert!(stderr.contains("code 3"), "{stderr}");
    server.stop().await.unwrap();
}
