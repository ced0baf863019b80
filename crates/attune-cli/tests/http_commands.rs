//! Whole `attune` commands against an in-test HTTP server (axum on 127.0.0.1:0) that returns
//! scripted responses and records every request.

use attune_cli::cli::Cli;
use attune_cli::output::Terminal;
use attune_protocol::api::{
    ActionView, CreateExecutionRequest, ErrorBody, ExecutionStatus, ExecutionView, List,
    LogChunkView, PackView,
};
use attune_protocol::{OutputStream, ParameterDelivery, ParameterFormat};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use clap::Parser;
use serde_json::{json, Value};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// One request the fake server received.
#[derive(Debug, Clone)]
struct RecordedRequest {
    method: String,
    path: String,
    query: Option<String>,
    content_type: Option<String>,
    body: Vec<u8>,
}

/// A log chunk the fake server shows once the execution has been polled `visible_after` times.
struct ScriptedChunk {
    visible_after: usize,
    chunk: LogChunkView,
}

#[derive(Default)]
struct ServerState {
    requests: Vec<RecordedRequest>,
    /// Successive answers of `GET /executions/7`; the last one repeats.
    execution_script: Vec<ExecutionView>,
    execution_polls: usize,
    chunks: Vec<ScriptedChunk>,
    pack_exists: bool,
}

type SharedState = Arc<Mutex<ServerState>>;

fn lock(state: &SharedState) -> std::sync::MutexGuard<'_, ServerState> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn error_response(status: StatusCode, error: &str, detail: &str) -> Response {
    (
        status,
        Json(ErrorBody {
            error: error.to_string(),
            detail: detail.to_string(),
        }),
    )
        .into_response()
}

fn execution(status: ExecutionStatus) -> ExecutionView {
    ExecutionView {
        id: 7,
        action: "hello.greet".to_string(),
        status,
        parameters: serde_json::Map::new(),
        result: None,
        exit_code: None,
        signal: None,
        duration_ms: None,
        stdout: String::new(),
        stderr: String::new(),
        stdout_truncated: false,
        stderr_truncated: false,
        error: None,
        failure_kind: None,
        retry_of: None,
        image: Some("busybox:1.36".to_string()),
        container_id: None,
        agent_id: None,
        controller_id: None,
        worker: None,
        waiting_reason: None,
        requested_at: "2024-05-01T12:00:00Z".to_string(),
        scheduled_at: None,
        started_at: Some("2024-05-01T12:00:01Z".to_string()),
        finished_at: None,
    }
}

fn greet_action() -> ActionView {
    ActionView {
        action_ref: "hello.greet".to_string(),
        pack: "hello".to_string(),
        label: "Greet someone".to_string(),
        description: "Prints a JSON greeting".to_string(),
        runner_type: "shell".to_string(),
        entry_point: "greet.sh".to_string(),
        parameters: json!({"type": "object", "properties": {"name": {"type": "string"}}}),
        parameter_delivery: ParameterDelivery::Env,
        parameter_format: ParameterFormat::Dotenv,
        timeout: 30,
        container: None,
        isolation: None,
        pool: None,
        idempotent: false,
    }
}

async fn handle(
    State(state): State<SharedState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut state = lock(&state);
    state.requests.push(RecordedRequest {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().map(str::to_string),
        content_type: headers
            .get("content-type")
            .and_then(|value| value.to_str().ok())
            .map(str::to_string),
        body: body.to_vec(),
    });
    let force = uri.query() == Some("force=true");
    match (method.as_str(), uri.path()) {
        ("POST", "/api/v1/packs") => {
            if state.pack_exists && !force {
                return error_response(
                    StatusCode::CONFLICT,
                    "conflict",
                    "pack hello already exists",
                );
            }
            match attune_pack::load_pack_archive(&body, &attune_pack::PackLimits::default()) {
                Ok(pack) => (
                    StatusCode::CREATED,
                    Json(pack.to_view("2024-05-01T12:00:00Z".to_string())),
                )
                    .into_response(),
                Err(error) => error_response(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_pack",
                    &error.to_string(),
                ),
            }
        }
        ("GET", "/api/v1/packs") => Json(List {
            items: vec![PackView {
                pack_ref: "hello".to_string(),
                label: "Hello".to_string(),
                description: String::new(),
                version: "1.0.0".to_string(),
                actions: vec!["hello.greet".to_string(), "hello.stats".to_string()],
                registered_at: "2024-05-01T12:00:00Z".to_string(),
            }],
        })
        .into_response(),
        ("GET", "/api/v1/actions/hello.greet") => Json(greet_action()).into_response(),
        ("GET", path) if path.starts_with("/api/v1/actions/") => {
            let action_ref = path.trim_start_matches("/api/v1/actions/");
            error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("action {action_ref} not found"),
            )
        }
        ("POST", "/api/v1/executions") => {
            let Ok(request) = serde_json::from_slice::<CreateExecutionRequest>(&body) else {
                return error_response(StatusCode::BAD_REQUEST, "bad_request", "body is not JSON");
            };
            if request.parameters.get("punctuation") == Some(&json!("?!")) {
                return error_response(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_parameters",
                    r#"parameter "punctuation": "?!" is not one of ["!", ".", "?"]"#,
                );
            }
            let mut created = execution(ExecutionStatus::Requested);
            created.parameters = request.parameters;
            (StatusCode::CREATED, Json(created)).into_response()
        }
        ("GET", "/api/v1/executions") => Json(List {
            items: vec![execution(ExecutionStatus::Running)],
        })
        .into_response(),
        ("GET", "/api/v1/executions/7") => {
            let index = state
                .execution_polls
                .min(state.execution_script.len().saturating_sub(1));
            state.execution_polls += 1;
            match state.execution_script.get(index) {
                Some(view) => Json(view.clone()).into_response(),
                None => error_response(StatusCode::NOT_FOUND, "not_found", "execution 7 not found"),
            }
        }
        ("GET", "/api/v1/executions/7/logs") => {
            let after_seq: Option<u64> = uri
                .query()
                .and_then(|query| query.strip_prefix("after_seq="))
                .and_then(|value| value.parse().ok());
            let polls = state.execution_polls;
            let items: Vec<LogChunkView> = state
                .chunks
                .iter()
                .filter(|scripted| scripted.visible_after <= polls)
                .filter(|scripted| after_seq.is_none_or(|after| scripted.chunk.seq > after))
                .map(|scripted| scripted.chunk.clone())
                .collect();
            Json(List { items }).into_response()
        }
        ("POST", "/api/v1/executions/7/cancel") => error_response(
            StatusCode::CONFLICT,
            "conflict",
            "execution 7 is already succeeded",
        ),
        _ => error_response(StatusCode::NOT_FOUND, "not_found", "no such route"),
    }
}

/// The fake server: its base URL and state.
struct FakeServer {
    base_url: String,
    state: SharedState,
}

impl FakeServer {
    async fn start(state: ServerState) -> FakeServer {
        let state = Arc::new(Mutex::new(state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind test server");
        let address = listener.local_addr().expect("test server address");
        let router = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        tokio::spawn(async move {
            axum::serve(listener, router).await.expect("serve test API");
        });
        FakeServer {
            base_url: format!("http://{address}"),
            state,
        }
    }

    fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state).requests.clone()
    }
}

/// A `Write` whose bytes the test can read back.
#[derive(Clone, Default)]
struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl SharedBuffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(
            &self
                .0
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
        .into_owned()
    }
}

struct Outcome {
    code: u8,
    stdout: String,
    stderr: String,
}

/// Runs `attune <arguments> --api-url <base_url> --poll-interval-ms 5` in process.
async fn attune(base_url: &str, arguments: &[&str]) -> Outcome {
    let mut command_line = vec!["attune"];
    command_line.extend_from_slice(arguments);
    command_line.extend_from_slice(&["--api-url", base_url, "--poll-interval-ms", "5"]);
    let cli = Cli::try_parse_from(&command_line).expect("arguments parse");
    let stdout = SharedBuffer::default();
    let stderr = SharedBuffer::default();
    let mut terminal = Terminal::new(Box::new(stdout.clone()), Box::new(stderr.clone()));
    let code = attune_cli::run(cli, &mut terminal).await;
    Outcome {
        code,
        stdout: stdout.text(),
        stderr: stderr.text(),
    }
}

fn hello_pack_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/packs/hello")
}

fn chunk(visible_after: usize, seq: u64, stream: OutputStream, data: &str) -> ScriptedChunk {
    ScriptedChunk {
        visible_after,
        chunk: LogChunkView {
            seq,
            stream,
            data: data.to_string(),
        },
    }
}

#[tokio::test]
async fn register_uploads_the_archive_as_tar() {
    let server = FakeServer::start(ServerState::default()).await;
    let hello = hello_pack_dir();
    let outcome = attune(
        &server.base_url,
        &["pack", "register", hello.to_str().expect("utf-8 path")],
    )
    .await;
    assert_eq!(outcome.code, 0, "{}", outcome.stderr);
    assert!(
        outcome
            .stdout
            .starts_with("registered pack hello 1.0.0 (7 files, "),
        "{}",
        outcome.stdout
    );
    assert!(
        outcome.stdout.contains("hello.greet  shell   busybox:1.36"),
        "{}",
        outcome.stdout
    );

    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let upload = &requests[0];
    assert_eq!(
        (upload.method.as_str(), upload.path.as_str()),
        ("POST", "/api/v1/packs")
    );
    assert_eq!(upload.query, None);
    assert_eq!(upload.content_type.as_deref(), Some("application/x-tar"));
    assert_eq!(
        upload.body,
        attune_pack::build_pack_archive(&hello).expect("build archive")
    );
}

#[tokio::test]
async fn register_conflict_suggests_force_and_force_replaces() {
    let server = FakeServer::start(ServerState {
        pack_exists: true,
        ..ServerState::default()
    })
    .await;
    let hello = hello_pack_dir();
    let hello = hello.to_str().expect("utf-8 path");
    let outcome = attune(&server.base_url, &["pack", "register", hello]).await;
    assert_eq!(outcome.code, 1);
    assert_eq!(
        outcome.stderr,
        "error: pack hello already exists (use --force to replace it)\n"
    );

    let outcome = attune(&server.base_url, &["pack", "register", hello, "--force"]).await;
    assert_eq!(outcome.code, 0, "{}", outcome.stderr);
    assert_eq!(server.requests()[1].query.as_deref(), Some("force=true"));
}

#[tokio::test]
async fn invalid_packs_fail_locally_without_uploading() {
    let server = FakeServer::start(ServerState::default()).await;
    let directory = tempfile::tempdir().expect("temporary directory");
    std::fs::create_dir(directory.path().join("actions")).expect("create actions/");
    std::fs::write(directory.path().join("pack.yaml"), "ref: demo\n").expect("write pack.yaml");
    std::fs::write(
        directory.path().join("actions/echo.yaml"),
        "ref: demo.echo\nrunner_type: shell\nentry_point: echo.sh\ntimeout: [1\n",
    )
    .expect("write action");
    let path = directory.path().to_str().expect("utf-8 path");
    let outcome = attune(&server.base_url, &["pack", "register", path]).await;
    assert_eq!(outcome.code, 1);
    let expected_prefix = format!("error: invalid pack {path}: actions/echo.yaml line ");
    assert!(
        outcome.stderr.starts_with(&expected_prefix),
        "{}",
        outcome.stderr
    );
    assert!(server.requests().is_empty());
}

#[tokio::test]
async fn run_wait_streams_logs_and_exits_1_when_the_execution_fails() {
    let mut failed = execution(ExecutionStatus::Failed);
    failed.error = Some("the process exited with code 3".to_string());
    failed.exit_code = Some(3);
    failed.finished_at = Some("2024-05-01T12:00:03Z".to_string());
    let server = FakeServer::start(ServerState {
        execution_script: vec![
            execution(ExecutionStatus::Scheduled),
            execution(ExecutionStatus::Running),
            execution(ExecutionStatus::Running),
            failed,
        ],
        chunks: vec![
            chunk(2, 0, OutputStream::Stdout, "starting\n"),
            chunk(3, 1, OutputStream::Stderr, "boom\n"),
            chunk(4, 2, OutputStream::Stdout, "last words\n"),
        ],
        ..ServerState::default()
    })
    .await;
    let outcome = attune(
        &server.base_url,
        &[
            "run",
            "hello.greet",
            "name=Ada",
            "count=3",
            "flags=[1,2]",
            "--wait",
        ],
    )
    .await;
    assert_eq!(outcome.code, 1, "{}", outcome.stderr);
    assert_eq!(outcome.stdout, "starting\nlast words\n");
    assert_eq!(
        outcome.stderr,
        "boom\nerror: execution 7 failed in 2.0s: the process exited with code 3\n"
    );

    let requests = server.requests();
    let create: CreateExecutionRequest =
        serde_json::from_slice(&requests[0].body).expect("create body is JSON");
    assert_eq!(create.action, "hello.greet");
    assert_eq!(
        Value::Object(create.parameters),
        json!({"name": "Ada", "count": 3, "flags": [1, 2]})
    );
    let log_queries: Vec<Option<String>> = requests
        .iter()
        .filter(|request| request.path == "/api/v1/executions/7/logs")
        .map(|request| request.query.clone())
        .collect();
    assert_eq!(log_queries.first(), Some(&None));
    assert_eq!(log_queries.last(), Some(&Some("after_seq=1".to_string())));
}

#[tokio::test]
async fn run_wait_prints_the_result_when_the_execution_succeeds() {
    let mut succeeded = execution(ExecutionStatus::Succeeded);
    succeeded.result = Some(json!({"greeting": "Hello, Ada!"}));
    succeeded.exit_code = Some(0);
    succeeded.finished_at = Some("2024-05-01T12:00:01.5Z".to_string());
    let server = FakeServer::start(ServerState {
        execution_script: vec![execution(ExecutionStatus::Running), succeeded],
        chunks: vec![chunk(
            0,
            0,
            OutputStream::Stdout,
            "{\"greeting\": \"Hello, Ada!\"}\n",
        )],
        ..ServerState::default()
    })
    .await;
    let outcome = attune(
        &server.base_url,
        &["run", "hello.greet", "name=Ada", "--wait"],
    )
    .await;
    assert_eq!(outcome.code, 0, "{}", outcome.stderr);
    assert_eq!(
        outcome.stdout,
        "{\"greeting\": \"Hello, Ada!\"}\n{\n  \"greeting\": \"Hello, Ada!\"\n}\n"
    );
    assert_eq!(outcome.stderr, "execution 7 succeeded in 500ms\n");
}

#[tokio::test]
async fn streamed_plain_text_output_is_not_printed_twice() {
    let mut succeeded = execution(ExecutionStatus::Succeeded);
    succeeded.stdout = "tick 1\ntick 2\n".to_string();
    succeeded.result = Some(json!("tick 1\ntick 2\n"));
    let server = FakeServer::start(ServerState {
        execution_script: vec![execution(ExecutionStatus::Running), succeeded],
        chunks: vec![
            chunk(0, 0, OutputStream::Stdout, "tick 1\n"),
            chunk(1, 1, OutputStream::Stdout, "tick 2\n"),
        ],
        ..ServerState::default()
    })
    .await;
    let outcome = attune(&server.base_url, &["run", "hello.greet", "--wait"]).await;
    assert_eq!(outcome.code, 0, "{}", outcome.stderr);
    assert_eq!(outcome.stdout, "tick 1\ntick 2\n");
}

#[tokio::test]
async fn run_json_prints_only_the_final_execution() {
    let mut succeeded = execution(ExecutionStatus::Succeeded);
    succeeded.result = Some(json!({"ok": true}));
    let server = FakeServer::start(ServerState {
        execution_script: vec![execution(ExecutionStatus::Running), succeeded.clone()],
        chunks: vec![chunk(0, 0, OutputStream::Stdout, "noise\n")],
        ..ServerState::default()
    })
    .await;
    let outcome = attune(
        &server.base_url,
        &["run", "hello.greet", "--wait", "--json"],
    )
    .await;
    assert_eq!(outcome.code, 0, "{}", outcome.stderr);
    let printed: ExecutionView = serde_json::from_str(&outcome.stdout).expect("stdout is JSON");
    assert_eq!(printed, succeeded);
    assert!(server
        .requests()
        .iter()
        .all(|request| !request.path.ends_with("/logs")));
}

#[tokio::test]
async fn run_without_wait_prints_id_and_status() {
    let server = FakeServer::start(ServerState::default()).await;
    let outcome = attune(&server.base_url, &["run", "hello.greet"]).await;
    assert_eq!(outcome.code, 0, "{}", outcome.stderr);
    assert_eq!(outcome.stdout, "execution 7 requested (hello.greet)\n");
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn run_gives_up_after_the_timeout() {
    let server = FakeServer::start(ServerState {
        execution_script: vec![execution(ExecutionStatus::Running)],
        ..ServerState::default()
    })
    .await;
    let outcome = attune(
        &server.base_url,
        &["run", "hello.greet", "--timeout-seconds", "1"],
    )
    .await;
    assert_eq!(outcome.code, 1);
    assert_eq!(
        outcome.stderr,
        "error: stopped waiting for execution 7 after 1s; it is still running (follow it with: attune execution logs 7 --follow)\n"
    );
}

#[tokio::test]
async fn server_error_details_are_shown() {
    let server = FakeServer::start(ServerState::default()).await;
    let outcome = attune(&server.base_url, &["run", "hello.greet", "punctuation=?!"]).await;
    assert_eq!(outcome.code, 1);
    assert_eq!(
        outcome.stderr,
        "error: parameter \"punctuation\": \"?!\" is not one of [\"!\", \".\", \"?\"]\n"
    );

    let outcome = attune(&server.base_url, &["action", "get", "hello.nope"]).await;
    assert_eq!(outcome.code, 1);
    assert_eq!(outcome.stderr, "error: action hello.nope not found\n");

    let outcome = attune(&server.base_url, &["execution", "cancel", "7"]).await;
    assert_eq!(outcome.code, 1);
    assert_eq!(outcome.stderr, "error: execution 7 is already succeeded\n");
}

#[tokio::test]
async fn lists_send_filters_and_print_tables() {
    let server = FakeServer::start(ServerState::default()).await;
    let outcome = attune(
        &server.base_url,
        &[
            "execution",
            "list",
            "--status",
            "failed",
            "--action",
            "hello.greet",
            "--limit",
            "5",
        ],
    )
    .await;
    assert_eq!(outcome.code, 0, "{}", outcome.stderr);
    assert!(
        outcome
            .stdout
            .starts_with("ID  ACTION       STATUS   STARTED               DURATION\n7   hello.greet  running  2024-05-01 12:00:01Z  "),
        "{}",
        outcome.stdout
    );
    let request = server.requests().pop().expect("one request");
    assert_eq!(request.path, "/api/v1/executions");
    assert_eq!(
        request.query.as_deref(),
        Some("status=failed&action=hello.greet&limit=5")
    );

    let outcome = attune(&server.base_url, &["pack", "list"]).await;
    assert_eq!(
        outcome.stdout,
        "REF    VERSION  ACTIONS  REGISTERED            LABEL\nhello  1.0.0    2        2024-05-01 12:00:00Z  Hello\n"
    );

    let outcome = attune(
        &server.base_url,
        &["action", "get", "hello.greet", "--json"],
    )
    .await;
    let printed: ActionView = serde_json::from_str(&outcome.stdout).expect("stdout is JSON");
    assert_eq!(printed, greet_action());
}

#[tokio::test]
async fn logs_follow_prints_everything_once() {
    let mut succeeded = execution(ExecutionStatus::Succeeded);
    succeeded.stdout = "one\ntwo\n".to_string();
    let server = FakeServer::start(ServerState {
        execution_script: vec![
            execution(ExecutionStatus::Running),
            execution(ExecutionStatus::Running),
            succeeded,
        ],
        chunks: vec![
            chunk(1, 0, OutputStream::Stdout, "one\n"),
            chunk(3, 1, OutputStream::Stdout, "two\n"),
        ],
        ..ServerState::default()
    })
    .await;
    let outcome = attune(&server.base_url, &["execution", "logs", "7", "--follow"]).await;
    assert_eq!(outcome.code, 0, "{}", outcome.stderr);
    assert_eq!(outcome.stdout, "one\ntwo\n");

    let outcome = attune(&server.base_url, &["execution", "logs", "7"]).await;
    assert_eq!(outcome.stdout, "one\ntwo\n");
}

#[tokio::test]
async fn connection_failures_name_the_url() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    drop(listener);
    let base_url = format!("http://{address}");
    let outcome = attune(&base_url, &["pack", "list"]).await;
    assert_eq!(outcome.code, 1);
    assert!(
        outcome.stderr.starts_with(&format!(
            "error: could not connect to the attune server at {base_url} ("
        )),
        "{}",
        outcome.stderr
    );
    assert!(
        outcome.stderr.contains("is it running?"),
        "{}",
        outcome.stderr
    );
}

#[tokio::test]
async fn the_binary_exits_1_when_the_execution_fails() {
    let mut failed = execution(ExecutionStatus::Failed);
    failed.error = Some("interpreter python3 not found in image".to_string());
    failed.stderr = "sh: python3: not found\n".to_string();
    let server = FakeServer::start(ServerState {
        execution_script: vec![failed],
        ..ServerState::default()
    })
    .await;
    let base_url = server.base_url.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_attune"))
            .args(["run", "hello.greet", "--wait", "--poll-interval-ms", "5"])
            .env("ATTUNE_API_URL", &base_url)
            .output()
            .expect("run the attune binary")
    })
    .await
    .expect("join the attune process");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr,
        "sh: python3: not found\nerror: execution 7 failed: interpreter python3 not found in image\n"
    );
}
