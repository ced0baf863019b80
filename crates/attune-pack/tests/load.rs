//! Loading packs from directories: the example pack, manifests and action files, and each
//! invalid input with its message.

mod common;

use attune_pack::{load_pack_dir, PackError};
use attune_protocol::api::{Isolation, PoolSpec, PullPolicy};
use attune_protocol::{ParameterDelivery, ParameterFormat, Runtime};
use common::{pack_dir, pack_with_action, ACTION_YAML, PACK_YAML};
use serde_json::json;

fn load_error(directory: &tempfile::TempDir) -> PackError {
    load_pack_dir(directory.path()).expect_err("the pack must be rejected")
}

fn action_error(action_yaml: &str) -> PackError {
    load_error(&pack_with_action(action_yaml))
}

#[test]
fn example_hello_pack_loads() {
    let pack = load_pack_dir(common::hello_pack_dir()).expect("load examples/packs/hello");
    assert_eq!(pack.pack_ref, "hello");
    assert_eq!(pack.label, "Hello");
    assert_eq!(pack.version, "1.0.0");
    assert_eq!(pack.tags, vec!["example".to_string()]);
    let refs: Vec<&str> = pack.actions.iter().map(|a| a.action_ref.as_str()).collect();
    assert_eq!(refs, ["hello.greet", "hello.quick", "hello.stats"]);
    assert_eq!(pack.sha256.len(), 64);

    let greet = pack.action("hello.greet").expect("greet action");
    assert_eq!(greet.name, "greet");
    assert_eq!(greet.runner_type, "shell");
    assert_eq!(greet.runtime, Runtime::Shell);
    assert_eq!(greet.entry_point, "greet.sh");
    assert_eq!(greet.entry_point_path, "actions/greet.sh");
    assert_eq!(greet.timeout_seconds, 30);
    assert_eq!(greet.parameter_delivery, ParameterDelivery::Env);
    assert_eq!(greet.parameter_format, ParameterFormat::Dotenv);
    let container = greet.container.as_ref().expect("greet has a container");
    assert_eq!(container.image, "busybox:1.36");
    assert_eq!(container.pull_policy, PullPolicy::IfNotPresent);
    assert!(greet.secret_parameters.is_empty());
    assert!(greet.enabled);
    assert_eq!(greet.parameters_schema["required"], json!(["name"]));
    assert_eq!(greet.pack_ref(), "hello");
    assert_eq!(greet.isolation, None);
    assert_eq!(greet.pool, None);
    assert!(!greet.idempotent);

    let quick = pack.action("hello.quick").expect("quick action");
    assert_eq!(quick.runtime, Runtime::Shell);
    assert_eq!(quick.entry_point_path, "actions/quick.sh");
    assert_eq!(quick.parameter_delivery, ParameterDelivery::Env);
    assert_eq!(
        quick
            .container
            .as_ref()
            .map(|container| container.image.as_str()),
        Some("busybox:1.36")
    );
    assert_eq!(quick.isolation, Some(Isolation::Pooled));
    assert_eq!(
        quick.pool,
        Some(PoolSpec {
            min_idle: 1,
            max: 4,
            idle_timeout_seconds: 300,
            max_uses: 50,
        })
    );
    assert!(quick.idempotent);
    assert_eq!(
        quick.parameters_schema["properties"]["name"]["default"],
        json!("World")
    );

    let stats = pack.action("hello.stats").expect("stats action");
    assert_eq!(stats.runtime, Runtime::Python);
    assert_eq!(stats.secret_parameters, vec!["api_token".to_string()]);
    assert_eq!(stats.parameter_delivery, ParameterDelivery::Stdin);
    assert_eq!(stats.parameter_format, ParameterFormat::Json);
    let container = stats.container.as_ref().expect("stats has a container");
    assert_eq!(container.image, "python:3.11-slim");
    assert_eq!(
        container.env.get("PYTHONUNBUFFERED").map(String::as_str),
        Some("1")
    );

    let paths: Vec<&str> = pack
        .files
        .iter()
        .map(|f| f.relative_path.as_str())
        .collect();
    assert_eq!(
        paths,
        [
            "actions/greet.sh",
            "actions/greet.yaml",
            "actions/quick.sh",
            "actions/quick.yaml",
            "actions/stats.py",
            "actions/stats.yaml",
            "pack.yaml"
        ]
    );
    for script_path in ["actions/greet.sh", "actions/quick.sh"] {
        let script = pack.files.iter().find(|f| f.relative_path == script_path);
        assert_eq!(script.map(|f| f.mode), Some(0o755), "{script_path}");
    }
}

#[test]
fn views_carry_the_definitions() {
    let pack = load_pack_dir(common::hello_pack_dir()).expect("load examples/packs/hello");
    let view = pack.to_view("2024-01-01T00:00:00Z".to_string());
    assert_eq!(view.pack_ref, "hello");
    assert_eq!(view.actions, ["hello.greet", "hello.quick", "hello.stats"]);
    let action_view = pack.actions[0].to_view();
    assert_eq!(action_view.action_ref, "hello.greet");
    assert_eq!(action_view.pack, "hello");
    assert_eq!(action_view.timeout, 30);
    assert_eq!(action_view.entry_point, "greet.sh");
    let quick_view = pack.action("hello.quick").expect("quick action").to_view();
    assert_eq!(quick_view.isolation, Some(Isolation::Pooled));
    assert_eq!(quick_view.pool.map(|pool| pool.max_uses), Some(50));
    assert!(quick_view.idempotent);
}

#[test]
fn defaults_and_aliases_apply() {
    let directory =
        pack_with_action("name: echo\nrunner_type: local-shell-script\nentry_point: ./echo.sh\n");
    let pack = load_pack_dir(directory.path()).expect("load pack");
    let action = &pack.actions[0];
    assert_eq!(action.action_ref, "demo.echo");
    assert_eq!(action.label, "echo");
    assert_eq!(action.runtime, Runtime::Shell);
    assert_eq!(action.runner_type, "local-shell-script");
    assert_eq!(action.entry_point, "./echo.sh");
    assert_eq!(action.entry_point_path, "actions/echo.sh");
    assert_eq!(action.timeout_seconds, 60);
    assert_eq!(action.parameter_delivery, ParameterDelivery::Env);
    assert_eq!(action.parameter_format, ParameterFormat::Json);
    assert_eq!(action.container, None);
    assert_eq!(
        action.parameters_schema,
        json!({"type": "object", "properties": {}})
    );
}

#[test]
fn missing_pack_yaml_is_reported() {
    let directory = pack_dir(&[("actions/echo.yaml", ACTION_YAML, 0o644)]);
    let error = load_error(&directory);
    assert!(matches!(error, PackError::MissingManifest), "{error:?}");
    assert_eq!(
        error.to_string(),
        "pack.yaml not found at the root of the pack"
    );
}

#[test]
fn malformed_yaml_names_file_and_line() {
    let broken = "ref: demo.echo\nrunner_type: shell\nentry_point: echo.sh\nparameters:\n  type: object\n  properties:\n    word: [unclosed\n";
    let error = action_error(broken);
    let PackError::Yaml { file, line, .. } = &error else {
        panic!("expected a YAML error, got {error:?}");
    };
    assert_eq!(file, "actions/echo.yaml");
    assert!(line.is_some(), "{error}");
    assert!(
        error
            .to_string()
            .starts_with(&format!("actions/echo.yaml line {}: ", line.unwrap_or(0))),
        "{error}"
    );
}

#[test]
fn wrong_field_type_names_line() {
    let error =
        action_error("ref: demo.echo\nrunner_type: shell\nentry_point: echo.sh\nenabled: maybe\n");
    let message = error.to_string();
    assert!(
        message.starts_with("actions/echo.yaml line 4: "),
        "{message}"
    );
    assert!(message.contains("enabled"), "{message}");
    assert!(!message.contains("at line"), "{message}");

    let error = action_error(
        "ref: demo.echo\nrunner_type: shell\nentry_point: echo.sh\nparameter_delivery: carrier-pigeon\n",
    );
    let message = error.to_string();
    assert!(
        message.starts_with("actions/echo.yaml line 4: "),
        "{message}"
    );
    assert!(message.contains("carrier-pigeon"), "{message}");
}

#[test]
fn empty_manifest_is_reported() {
    let directory = pack_dir(&[("pack.yaml", "\n", 0o644)]);
    assert_eq!(
        load_error(&directory).to_string(),
        "pack.yaml: the file is empty"
    );
}

#[test]
fn invalid_pack_refs_are_rejected() {
    for (pack_ref, reason) in [
        ("Demo", "must be lowercase letters, digits, '_' or '-'"),
        ("demo.pack", "must not contain dots"),
        ("demo pack", "must be lowercase letters, digits, '_' or '-'"),
        ("\"\"", "must not be empty"),
    ] {
        let directory = pack_dir(&[("pack.yaml", &format!("ref: {pack_ref}\n"), 0o644)]);
        let error = load_error(&directory);
        assert!(
            matches!(error, PackError::InvalidPackRef { .. }),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(
            message.starts_with("pack.yaml: invalid pack ref"),
            "{message}"
        );
        assert!(message.ends_with(reason), "{message}");
    }
    let directory = pack_dir(&[("pack.yaml", "label: no ref\n", 0o644)]);
    assert_eq!(
        load_error(&directory).to_string(),
        "pack.yaml: ref: is required (lowercase letters, digits, '_' and '-')"
    );
}

#[test]
fn invalid_action_refs_are_rejected() {
    let cases = [
        (
            "ref: other.echo",
            "names pack \"other\" but the action is in pack \"demo\"",
        ),
        ("ref: echo", "must be \"demo.<name>\""),
        (
            "ref: demo.Echo",
            "action name must be lowercase letters, digits, '_' or '-'",
        ),
        ("ref: demo.echo.more", "action name must not contain dots"),
        (
            "ref: demo.echo\nname: other",
            "does not match name \"other\"",
        ),
    ];
    for (ref_line, reason) in cases {
        let error = action_error(&format!(
            "{ref_line}\nrunner_type: shell\nentry_point: echo.sh\n"
        ));
        assert!(
            matches!(error, PackError::InvalidActionRef { .. }),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(
            message.starts_with("actions/echo.yaml: invalid action ref"),
            "{message}"
        );
        assert!(message.ends_with(reason), "{message}");
    }
    let error = action_error("runner_type: shell\nentry_point: echo.sh\n");
    assert_eq!(
        error.to_string(),
        "actions/echo.yaml: ref: is required (\"demo.<name>\")"
    );
    let error =
        action_error("ref: demo.echo\npack: other\nrunner_type: shell\nentry_point: echo.sh\n");
    assert_eq!(
        error.to_string(),
        "actions/echo.yaml: pack: is \"other\" but the action is in pack \"demo\""
    );
}

#[test]
fn duplicate_actions_are_rejected() {
    let directory = pack_dir(&[
        ("pack.yaml", PACK_YAML, 0o644),
        ("actions/echo.yaml", ACTION_YAML, 0o644),
        ("actions/echo2.yml", ACTION_YAML, 0o644),
        ("actions/echo.sh", "echo\n", 0o755),
    ]);
    assert_eq!(
        load_error(&directory).to_string(),
        "action demo.echo is defined twice: in actions/echo.yaml and actions/echo2.yml"
    );
}

#[test]
fn unknown_runner_type_names_file_and_value() {
    let error = action_error("ref: demo.echo\nrunner_type: cobol\nentry_point: echo.sh\n");
    let PackError::UnknownRuntime { file, value } = &error else {
        panic!("expected an unknown runtime, got {error:?}");
    };
    assert_eq!(file, "actions/echo.yaml");
    assert_eq!(value, "cobol");
    assert!(
        error
            .to_string()
            .starts_with("actions/echo.yaml: runner_type \"cobol\" is not a known runtime"),
        "{error}"
    );
    let error = action_error("ref: demo.echo\nentry_point: echo.sh\n");
    assert!(
        error
            .to_string()
            .starts_with("actions/echo.yaml: runner_type: is required"),
        "{error}"
    );
}

#[test]
fn bad_entry_points_are_rejected() {
    let cases = [
        (
            "/bin/sh",
            "must be a path relative to actions/, not an absolute path",
        ),
        (
            "../pack.yaml",
            "must stay inside the pack's actions/ directory (\"..\" is not allowed)",
        ),
        (
            "lib/../echo.sh",
            "must stay inside the pack's actions/ directory (\"..\" is not allowed)",
        ),
        ("missing.sh", "file actions/missing.sh is not in the pack"),
        (".", "names no file"),
    ];
    for (entry_point, reason) in cases {
        let error = action_error(&format!(
            "ref: demo.echo\nrunner_type: shell\nentry_point: \"{entry_point}\"\n"
        ));
        assert!(
            matches!(error, PackError::InvalidEntryPoint { .. }),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            format!("actions/echo.yaml: entry_point {entry_point:?}: {reason}")
        );
    }
    let error = action_error("ref: demo.echo\nrunner_type: shell\n");
    assert_eq!(
        error.to_string(),
        "actions/echo.yaml: entry_point: is required (the script's path relative to actions/)"
    );
}

#[test]
fn native_entry_point_must_be_executable() {
    let directory = pack_dir(&[
        ("pack.yaml", PACK_YAML, 0o644),
        (
            "actions/tool.yaml",
            "ref: demo.tool\nrunner_type: native\nentry_point: tool\n",
            0o644,
        ),
        ("actions/tool", "binary", 0o644),
    ]);
    assert_eq!(
        load_error(&directory).to_string(),
        "actions/tool.yaml: entry_point \"tool\": file actions/tool must be executable for a native action (its mode is 644)"
    );
}

#[test]
fn symlinks_that_escape_the_pack_are_rejected() {
    let outside = tempfile::NamedTempFile::new().expect("create outside file");
    let directory = pack_with_action(ACTION_YAML);
    std::os::unix::fs::symlink(outside.path(), directory.path().join("actions/secret.txt"))
        .expect("create symlink");
    let error = load_error(&directory);
    assert!(matches!(error, PackError::UnsafeEntry { .. }), "{error:?}");
    assert!(
        error
            .to_string()
            .starts_with("actions/secret.txt: symlink points outside the pack"),
        "{error}"
    );

    let directory = pack_with_action("ref: demo.echo\nrunner_type: shell\nentry_point: link.sh\n");
    std::os::unix::fs::symlink("../../etc/passwd", directory.path().join("actions/link.sh"))
        .expect("create symlink");
    assert!(matches!(
        load_error(&directory),
        PackError::UnsafeEntry { .. }
    ));
}

#[test]
fn symlinks_inside_the_pack_are_followed() {
    let directory = pack_with_action("ref: demo.echo\nrunner_type: shell\nentry_point: link.sh\n");
    std::os::unix::fs::symlink("echo.sh", directory.path().join("actions/link.sh"))
        .expect("create symlink");
    let pack = load_pack_dir(directory.path()).expect("load pack");
    let link = pack
        .files
        .iter()
        .find(|file| file.relative_path == "actions/link.sh")
        .expect("the link is stored as a file");
    assert_eq!(link.contents, b"#!/bin/sh\necho hi\n");
    assert_eq!(link.mode, 0o755);
    assert_eq!(pack.actions[0].entry_point_path, "actions/link.sh");
}

#[test]
fn timeouts_are_parsed_and_bounded() {
    let load_timeout = |timeout: &str| {
        let directory = pack_with_action(&format!(
            "ref: demo.echo\nrunner_type: shell\nentry_point: echo.sh\ntimeout: {timeout}\n"
        ));
        load_pack_dir(directory.path()).map(|pack| pack.actions[0].timeout_seconds)
    };
    assert_eq!(load_timeout("45").expect("45"), 45);
    assert_eq!(load_timeout("\"5m\"").expect("5m"), 300);
    assert_eq!(load_timeout("86400").expect("86400"), 86_400);
    for bad in ["0", "86401", "-3", "1.5", "\"soon\"", "\"1500ms\""] {
        let error = load_timeout(bad).expect_err(bad);
        assert!(
            error
                .to_string()
                .starts_with("actions/echo.yaml: timeout: "),
            "{bad}: {error}"
        );
    }
    assert_eq!(
        load_timeout("0").expect_err("0").to_string(),
        "actions/echo.yaml: timeout: 0 seconds is outside 1..=86400"
    );
}

#[test]
fn skipped_directories_are_left_out() {
    let directory = pack_dir(&[
        ("pack.yaml", PACK_YAML, 0o644),
        ("actions/echo.yaml", ACTION_YAML, 0o644),
        ("actions/echo.sh", "echo\n", 0o755),
        (".git/config", "[core]\n", 0o644),
        ("target/debug/junk", "junk", 0o644),
        ("actions/__pycache__/x.pyc", "junk", 0o644),
        ("actions/lib/helper.sh", "echo helper\n", 0o644),
    ]);
    let pack = load_pack_dir(directory.path()).expect("load pack");
    let paths: Vec<&str> = pack
        .files
        .iter()
        .map(|f| f.relative_path.as_str())
        .collect();
    assert_eq!(
        paths,
        [
            "actions/echo.sh",
            "actions/echo.yaml",
            "actions/lib/helper.sh",
            "pack.yaml"
        ]
    );
}

#[test]
fn missing_directory_is_an_io_error() {
    let error = load_pack_dir("/nonexistent/attune-pack").expect_err("missing directory");
    assert!(matches!(error, PackError::Io { .. }), "{error:?}");
    assert!(
        error
            .to_string()
            .starts_with("read /nonexistent/attune-pack: "),
        "{error}"
    );
}
