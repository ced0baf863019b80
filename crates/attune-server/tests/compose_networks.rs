//! The compose stack (compose/docker-compose.yaml) keeps action containers off the database's
//! network: a static check of the file, since this machine has no registry to run it.
//!
//! Action containers join the network the server names in `ATTUNE__DOCKER__NETWORK`; that
//! network must reach the broker and must not reach Postgres; Postgres must sit only on
//! internal networks and publish no port; the API is published on the host's loopback only;
//! nothing uses host networking. Workers (services whose entrypoint is the agent) join the
//! actions network alone, and init-agent none. compose_workers.rs checks the file with
//! docker-compose itself and runs its workers.

use serde_norway::Value;
use std::collections::BTreeSet;
use std::path::PathBuf;

fn compose() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../compose/docker-compose.yaml");
    let text = std::fs::read_to_string(&path).expect("read compose/docker-compose.yaml");
    let mut compose: Value =
        serde_norway::from_str(&text).expect("compose/docker-compose.yaml is YAML");
    // The workers are written with `<<: *worker` merge keys.
    compose.apply_merge().expect("merge keys resolve");
    compose
}

fn networks_of(service: &Value) -> BTreeSet<String> {
    match &service["networks"] {
        Value::Sequence(names) => names
            .iter()
            .filter_map(|name| name.as_str().map(str::to_string))
            .collect(),
        Value::Mapping(names) => names
            .keys()
            .filter_map(|name| name.as_str().map(str::to_string))
            .collect(),
        _ => BTreeSet::new(),
    }
}

/// The compose key of the network named `name` (`networks.<key>.name`, or the key itself).
fn network_key(compose: &Value, name: &str) -> Option<String> {
    let Value::Mapping(networks) = &compose["networks"] else {
        return None;
    };
    networks.iter().find_map(|(key, network)| {
        let key = key.as_str()?;
        let named = network["name"].as_str().unwrap_or(key);
        (named == name || key == name).then(|| key.to_string())
    })
}

#[test]
fn action_containers_reach_the_broker_and_not_the_database() {
    let compose = compose();
    let services = &compose["services"];
    let server = &services["attune-server"];
    let postgres = &services["postgres"];
    let rabbitmq = &services["rabbitmq"];

    let actions_network = server["environment"]["ATTUNE__DOCKER__NETWORK"]
        .as_str()
        .expect("the server names the network of action containers");
    assert_ne!(
        actions_network, "host",
        "action containers must not share the host's network"
    );
    let actions_key = network_key(&compose, actions_network)
        .unwrap_or_else(|| panic!("network {actions_network} is declared in the compose file"));

    assert!(
        networks_of(rabbitmq).contains(&actions_key),
        "agents reach the broker on {actions_key}"
    );
    let database_networks = networks_of(postgres);
    assert!(
        !database_networks.is_empty(),
        "postgres sits on a network of its own"
    );
    assert!(
        !database_networks.contains(&actions_key),
        "postgres must not be on the action containers' network"
    );
    for key in &database_networks {
        assert_eq!(
            compose["networks"][key.as_str()]["internal"].as_bool(),
            Some(true),
            "postgres's network {key} must be internal"
        );
    }
    assert!(postgres["ports"].is_null(), "postgres publishes no port");
    assert!(
        networks_of(server).contains(&actions_key)
            && networks_of(server).is_superset(&database_networks),
        "the server reaches both"
    );
    for (name, service) in services.as_mapping().expect("services") {
        assert!(
            service["network_mode"].as_str() != Some("host"),
            "{name:?} uses host networking"
        );
    }
    let published: Vec<&str> = server["ports"]
        .as_sequence()
        .map(|ports| ports.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(
        published.iter().all(|port| port.starts_with("127.0.0.1:")),
        "the API is published on the host's loopback only: {published:?}"
    );
}

#[test]
fn workers_join_the_actions_network_alone() {
    let compose = compose();
    let services = compose["services"].as_mapping().expect("services");
    let server = &compose["services"]["attune-server"];
    let actions_network = server["environment"]["ATTUNE__DOCKER__NETWORK"]
        .as_str()
        .expect("the server names the network of action containers");
    let workers: Vec<(&str, &Value)> = services
        .iter()
        .filter(|(_, service)| {
            service["entrypoint"][0].as_str() == Some("/opt/attune/agent/attune-agent")
        })
        .filter_map(|(name, service)| Some((name.as_str()?, service)))
        .collect();
    assert!(
        workers.len() >= 4,
        "the stack has its workers (python, node, ruby, shell): {:?}",
        workers.iter().map(|(name, _)| name).collect::<Vec<_>>()
    );
    for (name, worker) in workers {
        // `network_mode` names the network itself (so an override can replace it).
        assert_eq!(
            worker["network_mode"].as_str(),
            Some(actions_network),
            "worker {name} is on the actions network"
        );
        assert!(
            networks_of(worker).is_empty(),
            "worker {name} joins no other network"
        );
        assert!(worker["ports"].is_null(), "worker {name} publishes no port");
    }
    assert_eq!(
        compose["services"]["init-agent"]["network_mode"].as_str(),
        Some("none"),
        "init-agent needs no network"
    );
}
