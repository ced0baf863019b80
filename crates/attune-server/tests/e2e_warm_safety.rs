//! A warm container carries nothing from one job to the next, against a real engine and agent:
//! a process a job started outside its process group (`setsid`) is killed before the job's
//! report goes out, and the work area (HOME, TMPDIR) is emptied, so the next job in the same
//! container finds neither; and an action whose
//! container settings differ (here its user) never gets that container at all.

use attune_testkit::{TestClient, TestServer};
use serde_json::json;
use std::path::PathBuf;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_a_job_leaves_running_survives_into_the_next_and_other_settings_get_their_own() {
    let server = TestServer::start(&[]).await.expect("start test server");
    let _containers = server.container_guard();
    let client = TestClient::new(&server);
    client
        .register_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/packs/warmsafety"))
        .await;

    let left = client.run_succeeded("warmsafety.leave", json!({})).await;
    assert_eq!(left.stdout, "left\n");
    let looked = client.run_succeeded("warmsafety.look", json!({})).await;
    assert_eq!(
        looked.container_id, left.container_id,
        "the same warm container serves both jobs"
    );
    assert!(
        !looked.stdout.contains("found:"),
        "a process of the previous job survived: {}",
        looked.stdout
    );
    assert!(
        looked.stdout.contains("looked as uid 0"),
        "{}",
        looked.stdout
    );

    // Another user: another class of container, never this one.
    let other = client
        .run_succeeded("warmsafety.look_other_user", json!({}))
        .await;
    assert_ne!(other.container_id, left.container_id, "{other:?}");
    assert!(
        other.stdout.contains("looked as uid 1000"),
        "{}",
        other.stdout
    );
    server.finish().await;
}
