//! Any output is stored, against a real Postgres: NUL bytes, terminal escapes and invalid UTF-8
//! in reports and log chunks come back as the same output text (the bytes are kept in `bytea`),
//! a result holding `\u0000` is kept (`json`, not `jsonb`), NUL in an error message is escaped,
//! and an unreachable database is told from a refused statement.

use attune_protocol::api::ExecutionStatus;
use attune_protocol::output::{bytes_to_text, text_to_bytes};
use attune_protocol::OutputStream;
use attune_store::testing::{store_with_pack, TestDatabase};
use attune_store::{Store, StoreError, TransitionFields};
use serde_json::json;

async fn store_with_hello() -> (TestDatabase, Store) {
    store_with_pack("examples/packs/hello", 4).await
}

/// The agent the test's execution runs on.
const AGENT: &str = "agent-a";

async fn running_execution(store: &Store) -> i64 {
    let action = store.get_action("hello.greet").await.unwrap();
    let execution = store
        .create_execution(&action, json!({"name": "Ada"}).as_object().unwrap())
        .await
        .unwrap();
    let claimed = store
        .claim_requested("controller-a", 1, false)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    store
        .transition(
            execution.id,
            ExecutionStatus::Running,
            TransitionFields {
                agent_id: Some(AGENT.to_string()),
                ..TransitionFields::default()
            },
        )
        .await
        .unwrap()
        .expect("running");
    execution.id
}

/// Bytes no `text` column takes: NUL, an escape sequence, invalid UTF-8, a lone continuation
/// byte, a literal character from the escape range, and a long line without a newline.
fn awkward_bytes() -> Vec<u8> {
    let mut bytes = b"a\x00b \x1b[31mred\x1b[0m \xff\xfe \x80 ".to_vec();
    bytes.extend_from_slice("\u{10ff80} é".as_bytes());
    bytes.extend(std::iter::repeat_n(b'x', 100_000));
    bytes
}

#[tokio::test]
async fn reports_and_chunks_with_any_bytes_are_stored_and_read_back_exactly() {
    let (database, store) = store_with_hello().await;
    let execution_id = running_execution(&store).await;
    let bytes = awkward_bytes();
    let text = bytes_to_text(&bytes);

    store
        .append_log(execution_id, AGENT, 0, OutputStream::Stdout, &text)
        .await
        .expect("a chunk with NUL and invalid UTF-8 is stored");
    store
        .append_log(execution_id, AGENT, 1, OutputStream::Stderr, "plain\n")
        .await
        .unwrap();
    // Another agent cannot add to this execution's output.
    let placed = store
        .append_log(execution_id, "agent-b", 2, OutputStream::Stdout, "forged\n")
        .await
        .unwrap();
    assert!(
        !placed,
        "a chunk from an agent the execution is not placed on"
    );
    let chunks = store.logs_after(execution_id, None, 10).await.unwrap();
    assert_eq!(chunks.len(), 2);
    assert_eq!(text_to_bytes(&chunks[0].data), bytes, "the exact bytes");
    assert_eq!(chunks[1].data, "plain\n");

    let result = json!({"nul": "a\u{0}b", "escape": "\u{1b}[0m", "list": ["\u{0}"]});
    let fields = TransitionFields {
        exit_code: Some(0),
        stdout: Some(text.clone()),
        stderr: Some(bytes_to_text(b"\x00\xc3")),
        result: Some(result.clone()),
        error: Some("warning\0with a NUL".to_string()),
        ..Default::default()
    };
    let row = store
        .transition(execution_id, ExecutionStatus::Succeeded, fields)
        .await
        .expect("a report with NUL, invalid UTF-8 and \\u0000 in its result is stored")
        .expect("succeeded");
    assert_eq!(row.stdout, text);
    let read = store.get_execution(execution_id).await.unwrap();
    assert_eq!(text_to_bytes(&read.stdout), bytes);
    assert_eq!(text_to_bytes(&read.stderr), b"\x00\xc3");
    assert_eq!(read.result, Some(result.clone()));
    assert_eq!(read.error.as_deref(), Some("warning\\0with a NUL"));
    let view = read.to_view();
    assert_eq!(view.stdout, text, "the API shows the same output text");
    assert_eq!(view.result, Some(result));

    store.pool().close().await;
    database.drop_database().await.unwrap();
}

#[tokio::test]
async fn an_unreachable_database_is_told_from_a_refused_statement() {
    let (database, store) = store_with_hello().await;
    let execution_id = running_execution(&store).await;
    // A refused statement: NUL in a text column.
    let refused = store
        .transition(
            execution_id,
            ExecutionStatus::Succeeded,
            TransitionFields {
                agent_id: Some("agent\0with a NUL".to_string()),
                ..Default::default()
            },
        )
        .await
        .expect_err("text columns refuse NUL");
    assert!(!refused.is_unreachable(), "{refused}");
    assert!(!StoreError::NotFound("x".into()).is_unreachable());

    store.pool().close().await;
    let closed = store.ping().await.expect_err("closed pool");
    assert!(closed.is_unreachable(), "{closed}");
    database.drop_database().await.unwrap();
}
