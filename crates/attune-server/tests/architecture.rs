//! The layout is the architecture: reads `cargo metadata` and fails when a crate takes a
//! normal dependency that ARCHITECTURE.md says only another crate may have.

use serde_json::Value;
use std::collections::BTreeMap;
use std::process::Command;

/// Each workspace crate's normal (not dev, not build) dependencies.
fn normal_dependencies() -> BTreeMap<String, Vec<String>> {
    let output = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: Value = serde_json::from_slice(&output.stdout).expect("metadata is JSON");
    let mut crates = BTreeMap::new();
    for package in metadata["packages"].as_array().expect("packages") {
        let name = package["name"].as_str().expect("name").to_string();
        let dependencies = package["dependencies"]
            .as_array()
            .expect("dependencies")
            .iter()
            .filter(|dependency| dependency["kind"].is_null())
            .map(|dependency| dependency["name"].as_str().expect("name").to_string())
            .collect();
        crates.insert(name, dependencies);
    }
    crates
}

/// External crates that exactly these workspace crates may depend on.
const OWNERS: &[(&str, &[&str])] = &[
    ("sqlx", &["attune-store"]),
    ("bollard", &["attune-docker"]),
    ("axum", &["attune-api"]),
    ("lapin", &["attune-broker", "attune-agent"]),
    // The CLI speaks HTTP through attune-client; the test kit also sends raw requests; the
    // broker crate makes agents' accounts through RabbitMQ's management HTTP API.
    (
        "reqwest",
        &["attune-client", "attune-testkit", "attune-broker"],
    ),
    // Test helpers are never part of a production crate.
    ("attune-testkit", &[]),
];

#[test]
fn only_the_owning_crate_depends_on_each_engine_client() {
    let crates = normal_dependencies();
    assert!(crates.len() >= 10, "workspace crates: {:?}", crates.keys());
    let mut violations = Vec::new();
    for (dependency, owners) in OWNERS {
        for (name, dependencies) in &crates {
            if dependencies.iter().any(|used| used == dependency)
                && !owners.contains(&name.as_str())
            {
                violations.push(format!(
                    "{name} depends on {dependency} (only {owners:?} may)"
                ));
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn the_agent_depends_on_the_protocol_crate_alone_of_ours() {
    let crates = normal_dependencies();
    let ours: Vec<&String> = crates["attune-agent"]
        .iter()
        .filter(|dependency| dependency.starts_with("attune-"))
        .collect();
    assert_eq!(
        ours,
        ["attune-protocol"],
        "attune-agent depends on {ours:?}"
    );
}

#[test]
fn the_http_client_depends_on_the_protocol_crate_alone_of_ours() {
    let crates = normal_dependencies();
    let ours: Vec<&String> = crates["attune-client"]
        .iter()
        .filter(|dependency| dependency.starts_with("attune-"))
        .collect();
    assert_eq!(
        ours,
        ["attune-protocol"],
        "attune-client depends on {ours:?}"
    );
}

#[test]
fn the_api_reaches_controllers_only_through_the_store() {
    let crates = normal_dependencies();
    for forbidden in ["attune-docker", "attune-broker", "attune-controller"] {
        assert!(
            !crates["attune-api"]
                .iter()
                .any(|dependency| dependency == forbidden),
            "attune-api depends on {forbidden}"
        );
    }
    for forbidden in ["attune-api", "attune-server"] {
        assert!(
            !crates["attune-controller"]
                .iter()
                .any(|dependency| dependency == forbidden),
            "attune-controller depends on {forbidden}"
        );
    }
}
