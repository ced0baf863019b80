//! Bad output and poison events end to end, against the real engine, broker and database with
//! the real agent in busybox containers: actions printing NUL bytes, terminal escapes, invalid
//! UTF-8 and 50 MB succeed with their exact output (as output text, `attune_protocol::output`)
//! and bounded rows; a report the store refuses is dead-lettered after the events queue's
//! delivery limit and its execution ends `report-rejected` while 50 others finish; exit codes
//! 127 and 126 name the command and the image.
//!
//! Needs Docker, RabbitMQ (and `rabbitmqctl`), Postgres (and `psql`), the images of
//! scripts/build-images.sh and the agent of scripts/build-agent.sh (`make test` provides all).

use attune_protocol::api::{ExecutionStatus, ExecutionView, LogChunkView};
use attune_protocol::output::text_to_bytes;
use attune_protocol::queues::{dead_letter_queue, EVENTS_DELIVERY_LIMIT};
use attune_protocol::{FailureKind, OutputStream, DEFAULT_OUTPUT_LIMIT_BYTES};
use attune_testkit::{TestClient, TestServer};
use serde_json::json;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn pack_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/packs/badout")
}

/// Deletes a server's quorum events queue and its dead-letter queue from the shared broker
/// when dropped, also when the test fails.
struct QueueGuard(String);

impl Drop for QueueGuard {
    fn drop(&mut self) {
        for queue in [self.0.clone(), dead_letter_queue(&self.0)] {
            let _ = Command::new("rabbitmqctl")
                .args(["-q", "delete_queue", &queue])
                .output();
        }
    }
}

/// A server with the badout pack (and the guard of its queues, first so that it drops last).
async fn start() -> (QueueGuard, TestServer, TestClient) {
    let server = TestServer::start(&[]).await.expect("start test server");
    let queues = QueueGuard(server.events_queue.clone());
    let client = TestClient::new(&server);
    client.register_dir(pack_dir()).await;
    (queues, server, client)
}

/// Stops the server (no container may be left), then deletes its queues.
async fn finish(server: TestServer, queues: QueueGuard) {
    server.finish().await;
    drop(queues);
}

/// One value from the test's database (`psql`).
fn sql(database_url: &str, query: &str) -> String {
    let output = Command::new("psql")
        .args([
            database_url,
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            query,
        ])
        .output()
        .expect("run psql");
    assert!(
        output.status.success(),
        "psql {query}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Messages ready in a queue of the local broker (`rabbitmqctl`), if it exists.
fn queue_messages(queue: &str) -> Option<u64> {
    let output = Command::new("rabbitmqctl")
        .args(["-q", "list_queues", "name", "messages"])
        .output()
        .expect("run rabbitmqctl");
    assert!(output.status.success(), "rabbitmqctl list_queues");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| {
            let (name, messages) = line.split_once('\t')?;
            (name == queue).then(|| messages.trim().parse().ok())?
        })
}

/// Every stored log chunk of an execution, page by page.
async fn all_logs(client: &TestClient, execution_id: i64) -> Vec<LogChunkView> {
    let mut chunks: Vec<LogChunkView> = Vec::new();
    loop {
        let after = chunks.last().map(|chunk| chunk.seq);
        let page = client
            .api()
            .execution_logs(execution_id, after)
            .await
            .expect("logs");
        if page.is_empty() {
            return chunks;
        }
        chunks.extend(page);
    }
}

/// The bytes of one stream, from the live chunks.
fn streamed(chunks: &[LogChunkView], stream: OutputStream) -> Vec<u8> {
    chunks
        .iter()
        .filter(|chunk| chunk.stream == stream)
        .flat_map(|chunk| text_to_bytes(&chunk.data))
        .collect()
}

fn assert_succeeded(execution: &ExecutionView) {
    assert_eq!(
        execution.status,
        ExecutionStatus::Succeeded,
        "{}",
        // Debug of a 10 MiB execution would drown the message.
        serde_json::json!({"id": execution.id, "error": execution.error, "kind": execution.failure_kind})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_bytes_escapes_and_invalid_utf8_are_stored_and_returned_exactly() {
    let (queues, server, client) = start().await;

    let bytes = client.run("badout.bytes", json!({})).await;
    assert_succeeded(&bytes);
    let mut expected = b"a\0b \x1b[31mred\x1b[0m \xff\xfe ".to_vec();
    expected.extend(std::iter::repeat_n(b'L', 100_000));
    assert_eq!(text_to_bytes(&bytes.stdout), expected, "stdout, exactly");
    assert_eq!(
        text_to_bytes(&bytes.stderr),
        b"err\0\x80\n",
        "stderr, exactly"
    );
    assert!(!bytes.stdout_truncated && !bytes.stderr_truncated);
    let chunks = all_logs(&client, bytes.id).await;
    assert_eq!(streamed(&chunks, OutputStream::Stdout), expected);
    assert_eq!(streamed(&chunks, OutputStream::Stderr), b"err\0\x80\n");
    let stored = sql(
        &server.database.url,
        &format!(
            "SELECT encode(substring(stdout FROM 1 FOR 21), 'hex') FROM executions WHERE id = {}",
            bytes.id
        ),
    );
    assert_eq!(
        stored, "610062201b5b33316d7265641b5b306d20fffe204c",
        "the database keeps the raw bytes"
    );

    let json_nul = client.run("badout.json_nul", json!({})).await;
    assert_succeeded(&json_nul);
    assert_eq!(
        json_nul.result,
        Some(json!({"text": "a\u{0}b", "list": ["\u{1b}[0m", "\u{0}"]})),
        "a result holding \\u0000 is kept"
    );

    finish(server, queues).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_megabytes_of_output_give_bounded_rows_with_the_truncation_marker() {
    let (queues, server, client) = start().await;
    let flood = client.run("badout.flood", json!({})).await;
    assert_succeeded(&flood);

    let limit = DEFAULT_OUTPUT_LIMIT_BYTES as usize;
    let marker = format!("\n[attune: output truncated after {limit} bytes]\n");
    assert!(flood.stdout_truncated);
    assert!(!flood.stderr_truncated);
    assert_eq!(flood.stderr, "done\n");
    assert_eq!(flood.stdout.len(), limit + marker.len());
    assert!(
        flood.stdout.ends_with(&marker),
        "the truncation marker ends stdout"
    );
    assert!(flood.stdout[..limit].bytes().all(|byte| byte == b'y'));

    let chunks = all_logs(&client, flood.id).await;
    let stdout = streamed(&chunks, OutputStream::Stdout);
    assert_eq!(
        stdout.len(),
        limit + marker.len(),
        "live chunks stop at the limit too"
    );
    assert!(stdout.ends_with(marker.as_bytes()));

    // Rows are bounded: stdout at the limit plus its marker, the live chunks the same, the
    // result (stdout as a JSON string) about as much, and no chunk above 16 KiB.
    let database = &server.database.url;
    let sizes = sql(
        database,
        &format!(
            "SELECT octet_length(stdout) || ' ' || octet_length(result::text) FROM executions WHERE id = {}",
            flood.id
        ),
    );
    let sizes: Vec<usize> = sizes.split(' ').map(|size| size.parse().unwrap()).collect();
    assert_eq!(sizes[0], limit + marker.len(), "stored stdout");
    assert!(
        sizes[1] <= limit + marker.len() + 16,
        "stored result: {}",
        sizes[1]
    );
    let logs = sql(
        database,
        &format!(
            "SELECT sum(octet_length(data)) || ' ' || max(octet_length(data)) FROM execution_logs WHERE execution_id = {}",
            flood.id
        ),
    );
    let logs: Vec<usize> = logs.split(' ').map(|size| size.parse().unwrap()).collect();
    assert_eq!(
        logs[0],
        limit + marker.len() + "done\n".len(),
        "stored chunks"
    );
    assert!(
        logs[1] <= 16 * 1024 + marker.len(),
        "largest chunk {}",
        logs[1]
    );

    finish(server, queues).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_the_store_refuses_is_dead_lettered_and_ends_report_rejected_while_fifty_others_finish(
) {
    let (queues, server, client) = start().await;
    // The store refuses this action's `succeeded` row (an operator's constraint, a corrupt
    // row: something no redelivery can fix); a `failed` one it takes.
    sql(
        &server.database.url,
        "ALTER TABLE executions ADD CONSTRAINT e2e_poisoned_report
             CHECK (action_ref <> 'badout.poisoned' OR status <> 'succeeded')",
    );

    let poisoned = client.submit_ok("badout.poisoned", json!({})).await;
    let mut others = Vec::new();
    for _ in 0..50 {
        others.push(client.submit_ok("badout.quick", json!({})).await);
    }

    let rejected = client.wait_terminal(poisoned).await;
    assert_eq!(rejected.status, ExecutionStatus::Failed, "{rejected:?}");
    assert_eq!(
        rejected.failure_kind,
        Some(FailureKind::ReportRejected),
        "{rejected:?}"
    );
    let reason = rejected.error.clone().unwrap_or_default();
    for expected in [
        "the agent's report (succeeded, exit code 0)",
        &format!("after {} attempts", EVENTS_DELIVERY_LIMIT + 1),
        "dead-letter queue",
        "violates check constraint \"e2e_poisoned_report\"",
    ] {
        assert!(reason.contains(expected), "{expected:?} not in {reason:?}");
    }

    for id in &others {
        let other = client.wait_terminal(*id).await;
        assert_succeeded(&other);
        assert_eq!(other.result, Some(json!({"ok": true})));
    }

    let dead_letters = dead_letter_queue(&server.events_queue);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while queue_messages(&dead_letters) != Some(1) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the refused report never reached {dead_letters}: {:?}",
            queue_messages(&dead_letters)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The others' last events (deregistrations) may still be on their way; a looping poison
    // message would keep the queue from ever emptying.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while queue_messages(&server.events_queue) != Some(0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing loops in the events queue: {:?} messages remain",
            queue_messages(&server.events_queue)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    finish(server, queues).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_127_and_126_name_the_command_and_the_image() {
    let (queues, server, client) = start().await;

    let missing = client.run("badout.missing_command", json!({})).await;
    assert_eq!(missing.status, ExecutionStatus::Failed);
    assert_eq!(missing.failure_kind, Some(FailureKind::NonZeroExit));
    assert_eq!(missing.exit_code, Some(127), "the exit code is kept");
    assert_eq!(
        missing.error.as_deref(),
        Some("exited with code 127: command not found: \"jq\" is not in image busybox:1.36 (or not on the action's PATH)"),
        "stderr: {}",
        missing.stderr
    );
    assert_eq!(missing.stdout, "starting\n");

    let not_executable = client.run("badout.not_executable", json!({})).await;
    assert_eq!(not_executable.status, ExecutionStatus::Failed);
    assert_eq!(not_executable.exit_code, Some(126), "the exit code is kept");
    let error = not_executable.error.clone().unwrap_or_default();
    assert!(
        error.starts_with("exited with code 126: not executable: \"/")
            && error.ends_with(
                "/tool\" was found in image busybox:1.36 but cannot be executed (permission denied)"
            ),
        "{error:?}; stderr: {}",
        not_executable.stderr
    );

    finish(server, queues).await;
}
