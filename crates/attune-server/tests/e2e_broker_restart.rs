//! RabbitMQ restarted under a running server while a hundred executions are queued and running:
//! the server reconnects (consumers and publishers), `/readyz` says not ready meanwhile,
//! executions submitted during the outage run after it, and every execution ends in the
//! status its action earns — none lost, none stuck, no container left.
//!
//! This stops and starts the broker every other test shares, so it is the only test of its
//! binary (cargo runs test binaries one after another). A guard leaves RabbitMQ running.

mod outage;

use attune_testkit::services::{Service, ServiceGuard};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_execution_ends_correctly_across_a_broker_restart() {
    let _broker = ServiceGuard(Service::RabbitMq);
    let (server, client) = outage::start().await;
    let _containers = server.container_guard();

    let mut ids = outage::submit(&client, 0..outage::ITEMS).await;
    outage::wait_underway(&client, &ids, 10).await;

    Service::RabbitMq.stop_async().await;
    // The controller's heartbeat reports the broker down.
    outage::wait_readiness(&client, "the broker reported down", |status, body| {
        status == 503 && body["checks"]["message_queue"] != "ok"
    })
    .await;
    // Submissions are accepted meanwhile (the database answers) and run after the outage.
    ids.extend(outage::submit(&client, outage::ITEMS..outage::ITEMS + 10).await);
    Service::RabbitMq.start_async().await;

    outage::wait_readiness(&client, "ready again", |status, _| status == 200).await;
    outage::wait_all_correct(&client, &ids).await;
    server.finish().await;
}
