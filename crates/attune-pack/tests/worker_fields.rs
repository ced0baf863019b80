//! Upstream's worker fields of an action without `container:`: `worker_selector`,
//! `runtime_version` and `required_worker_runtimes`, each valid form and each invalid input
//! with its message.

mod common;

use attune_pack::{load_pack_dir, ActionDefinition, PackError};
use common::pack_with_action;

const HEADER: &str = "ref: demo.echo\nrunner_type: python3\nentry_point: echo.sh\n";

fn load_action(extra_yaml: &str) -> Result<ActionDefinition, PackError> {
    let directory = pack_with_action(&format!("{HEADER}{extra_yaml}"));
    load_pack_dir(directory.path()).map(|pack| pack.actions[0].clone())
}

#[test]
fn worker_fields_load_with_canonical_runtime_names() {
    let action = load_action(
        "worker_selector: {zone: eu, gpu: \"yes\"}\nruntime_version: \">=3.11,<4\"\nrequired_worker_runtimes: [bash, nodejs]\n",
    )
    .expect("load action");
    assert_eq!(action.worker_selector["zone"], "eu");
    assert_eq!(action.worker_selector["gpu"], "yes");
    assert_eq!(action.runtime_version.as_deref(), Some(">=3.11,<4"));
    assert_eq!(action.required_worker_runtimes, vec!["shell", "node"]);
    let plain = load_action("").expect("load action");
    assert!(plain.worker_selector.is_empty());
    assert_eq!(plain.runtime_version, None);
    assert!(plain.required_worker_runtimes.is_empty());
}

#[test]
fn a_bad_version_constraint_or_runtime_is_named() {
    let error = load_action("runtime_version: three\n")
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("runtime_version") && error.contains("\"three\""),
        "{error}"
    );
    let error = load_action("required_worker_runtimes: [cobol]\n")
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("required_worker_runtimes") && error.contains("unknown runtime \"cobol\""),
        "{error}"
    );
}
