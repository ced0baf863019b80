//! TLS to the broker (amqps, rustls) for the server and its agents, against the real RabbitMQ's
//! TLS listener on 127.0.0.1:5671 (scripts/rabbitmq-config.sh makes its CA and certificate):
//! an execution runs end to end with both the server's and the agent's connections encrypted,
//! and a broker whose certificate is signed by a CA nobody named is refused.

mod outage;

use attune_protocol::api::ExecutionStatus;
use attune_testkit::{TestClient, TestServer};
use serde_json::json;
use std::time::Duration;

/// The CA scripts/rabbitmq-config.sh made for the broker's certificate.
const BROKER_CA: &str = "/etc/rabbitmq/tls/ca.pem";
const TLS_URL: &str = "amqps://guest:guest@127.0.0.1:5671/%2f";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_and_its_agents_speak_tls_to_the_broker() {
    assert!(
        std::path::Path::new(BROKER_CA).exists(),
        "{BROKER_CA} is missing: run scripts/setup-host.sh (it configures RabbitMQ's TLS listener)"
    );
    let server = TestServer::start(&[
        ("ATTUNE__MESSAGE_QUEUE__URL", TLS_URL),
        ("ATTUNE__MESSAGE_QUEUE__TLS_CA_FILE", BROKER_CA),
    ])
    .await
    .expect("start a server that speaks amqps");
    let _containers = server.container_guard();
    let client = TestClient::new(&server);
    outage::register(&client).await;

    // Held running until the gate answers, so the agent's connection can be looked at.
    let gate = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = gate.local_addr().unwrap().port();
    let held = client
        .submit_ok("outage.until", json!({"item": 1, "port": port}))
        .await;
    client.wait_running(held).await;
    let server_connection = format!("attune-controller {}", server.events_queue);
    let agent_prefix = format!("attune-agent.{}.", server.controller_id);
    // The management API's statistics lag by up to 5 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (servers, agents) = loop {
        let listed = attune_testkit::broker_connections().await;
        let servers: Vec<_> = listed
            .iter()
            .filter(|(name, _, _)| *name == server_connection)
            .cloned()
            .collect();
        let agents: Vec<_> = listed
            .iter()
            .filter(|(_, user, _)| user.starts_with(&agent_prefix))
            .cloned()
            .collect();
        if !servers.is_empty() && !agents.is_empty() {
            break (servers, agents);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no server and agent connection within 30 s: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        servers.iter().chain(&agents).all(|(_, _, ssl)| *ssl),
        "every connection of the server and its agent is TLS: servers {servers:?}, agents {agents:?}"
    );
    let opened = tokio::spawn(outage::answer_forever(gate));
    let ended = client.wait_terminal(held).await;
    assert_eq!(ended.status, ExecutionStatus::Succeeded, "{ended:?}");
    assert!(ended.stdout.contains("item 1 done"), "{ended:?}");
    opened.abort();
    server.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_certificate_from_an_unknown_ca_is_refused() {
    // Without the test CA only the bundled public roots are trusted: the handshake fails, and
    // the error says why.
    let error = attune_broker::Broker::connect_with_ca(
        TLS_URL,
        "attune.test.tls-refused",
        Duration::from_secs(1),
        None,
    )
    .await
    .err()
    .expect("a certificate no trusted CA signed is refused");
    let message = error.to_string();
    assert!(
        message.contains("amqps://guest:***@127.0.0.1:5671") && message.contains("certificate"),
        "{message}"
    );
    assert!(!message.contains("guest:guest"), "{message}");
}
