//! PostgreSQL restarted (`pg_ctlcluster … stop -m fast`, then start) under a running server
//! while a hundred executions are queued and running: the server's pool reconnects, its
//! listeners resume, reports held by the broker are applied when the database returns, and
//! every execution ends in the status its action earns — none lost, none stuck, no container
//! left. `/readyz` says not ready while the database is down.
//!
//! This stops and starts the database every other test shares, so it is the only test of its
//! binary (cargo runs test binaries one after another). A guard leaves PostgreSQL running.

mod outage;

use attune_protocol::api::ExecutionStatus;
use attune_testkit::services::{queue_messages, Service, ServiceGuard};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_execution_ends_correctly_across_a_database_restart() {
    let _database = ServiceGuard(Service::Postgres);
    let (server, client) = outage::start().await;
    let _containers = server.container_guard();

    let ids = outage::submit(&client, 0..outage::ITEMS).await;
    outage::wait_underway(&client, &ids, 10).await;

    Service::Postgres.stop_async().await;
    outage::wait_readiness(&client, "the database reported down", |status, body| {
        status == 503 && body["checks"]["database"] != "ok"
    })
    .await;
    // Executions run on meanwhile; their reports wait in the broker. Let some pile up.
    let deadline = tokio::time::Instant::now() + outage::DEADLINE;
    let events_queue = server.events_queue.clone();
    while queue_messages(&events_queue).unwrap_or(0) < 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no report waited in {events_queue} while the database was down"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    Service::Postgres.start_async().await;

    outage::wait_readiness(&client, "ready again", |status, _| status == 200).await;
    outage::wait_all_correct(&client, &ids).await;

    // A longer outage than the lease while two executions run: their heartbeats wait in the
    // broker, and the supervisors must not take that silence for the agents'.
    let gate = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the gate");
    let port = gate.local_addr().expect("gate address").port();
    let mut long = Vec::new();
    for item in [1000, 1001] {
        let id = client
            .submit_ok("outage.until", json!({"item": item, "port": port}))
            .await;
        client
            .wait_for(id, "running", |execution| {
                execution.status == ExecutionStatus::Running
            })
            .await;
        long.push((id, item));
    }
    Service::Postgres.stop_async().await;
    outage::wait_readiness(&client, "the database reported down again", |status, _| {
        status == 503
    })
    .await;
    // Nothing else runs, so what piles up are the two agents' heartbeats (one each per 5 s):
    // eight of them span more than the 10 s lease.
    let deadline = tokio::time::Instant::now() + outage::DEADLINE;
    while queue_messages(&events_queue).unwrap_or(0) < 8 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the running agents' heartbeats never waited in {events_queue}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    Service::Postgres.start_async().await;
    outage::wait_readiness(&client, "ready after the long outage", |status, _| {
        status == 200
    })
    .await;
    let answering = tokio::spawn(outage::answer_forever(gate));
    for (id, item) in long {
        let execution = client
            .with_deadline(outage::DEADLINE)
            .wait_terminal(id)
            .await;
        assert_eq!(
            execution.status,
            ExecutionStatus::Succeeded,
            "a run across an outage longer than its lease: {execution:?}"
        );
        assert_eq!(execution.stdout, format!("item {item} done\n"));
    }
    answering.abort();
    server.finish().await;
}
