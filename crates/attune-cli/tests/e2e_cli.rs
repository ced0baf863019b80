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
    let token = server.admin_token.clone();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_attune"))
            .args(&arguments)
            .env("ATTUNE_API_URL", api_url)
            .env("ATTUNE_API_TOKEN", token)
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

/// Runs `attune` with only `config_dir` for its saved token (no ATTUNE_API_TOKEN).
async fn attune_logged_in(
    server: &TestServer,
    config_dir: &std::path::Path,
    arguments: &[&str],
) -> Output {
    let arguments: Vec<String> = arguments
        .iter()
        .map(|argument| argument.to_string())
        .collect();
    let api_url = server.base_url.clone();
    let config_dir = config_dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_attune"))
            .args(&arguments)
            .env("ATTUNE_API_URL", api_url)
            .env_remove("ATTUNE_API_TOKEN")
            .env("ATTUNE_CONFIG_DIR", config_dir)
            .current_dir(workspace())
            .output()
            .expect("run attune")
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_made_listed_and_revoked_and_login_saves_one_privately() {
    use std::os::unix::fs::PermissionsExt;
    let server = TestServer::start(&[]).await.expect("start test server");
    let config = tempfile::tempdir().unwrap();

    let anonymous = attune_logged_in(&server, config.path(), &["pack", "list"]).await;
    assert_eq!(anonymous.status.code(), Some(1));
    assert_contains(&anonymous.stderr, "needs an API token");

    let created = attune(
        &server,
        &["token", "create", "--name", "cli", "--role", "viewer"],
    )
    .await;
    assert!(created.status.success(), "{}", text(&created.stderr));
    let token = text(&created.stdout).trim().to_string();
    assert!(token.starts_with("attune_"), "{token}");
    assert_contains(&created.stderr, "shown only this once");

    let token_file = config.path().join("given-token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let loose = attune_logged_in(
        &server,
        config.path(),
        &["login", "--token-file", token_file.to_str().unwrap()],
    )
    .await;
    assert_eq!(
        loose.status.code(),
        Some(1),
        "a token file others can read is refused"
    );
    assert_contains(&loose.stderr, "readable by others");
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let login = attune_logged_in(
        &server,
        config.path(),
        &["login", "--token-file", token_file.to_str().unwrap()],
    )
    .await;
    assert!(login.status.success(), "{}", text(&login.stderr));
    assert_contains(&login.stdout, "as cli (viewer)");
    let saved = config.path().join("token");
    assert_eq!(
        std::fs::metadata(&saved).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let listed = attune_logged_in(&server, config.path(), &["pack", "list"]).await;
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    let refused = attune_logged_in(&server, config.path(), &["token", "list"]).await;
    assert_eq!(refused.status.code(), Some(1));
    assert_contains(&refused.stderr, "needs the role admin");

    let tokens = attune(&server, &["token", "list"]).await;
    assert!(tokens.status.success(), "{}", text(&tokens.stderr));
    assert_contains(&tokens.stdout, "cli");
    assert!(
        !text(&tokens.stdout).contains(&token),
        "a listing never shows a token"
    );
    let id = text(&tokens.stdout)
        .lines()
        .find(|line| line.contains(" cli "))
        .and_then(|line| line.split_whitespace().next().map(str::to_string))
        .expect("the cli token's row");
    let revoked = attune(&server, &["token", "revoke", &id]).await;
    assert!(revoked.status.success(), "{}", text(&revoked.stderr));
    let after = attune_logged_in(&server, config.path(), &["pack", "list"]).await;
    assert_eq!(after.status.code(), Some(1));
    assert_contains(&after.stderr, "unknown or revoked");
    server.finish().await;
}
