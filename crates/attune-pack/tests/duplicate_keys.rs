//! A key repeated in any mapping of a pack's YAML (pack.yaml, actions/*.yaml, inside
//! `container:`, `parameters:`, `env:`, flow mappings) is refused with the file, the key and
//! the line of the repetition, from a directory and from an uploaded archive alike.

mod common;

use attune_pack::{load_pack_archive, load_pack_dir, PackError, PackLimits};
use common::{demo_archive_with, pack_dir, pack_with_action, RawEntry, ACTION_YAML, PACK_YAML};

/// The file, line and message of the error refusing a pack whose action file is `action_yaml`.
fn action_yaml_error(action_yaml: &str) -> (String, Option<usize>, String) {
    let error = load_pack_dir(pack_with_action(action_yaml).path())
        .expect_err("a pack with a repeated key must be refused");
    yaml_parts(error)
}

fn yaml_parts(error: PackError) -> (String, Option<usize>, String) {
    let shown = error.to_string();
    match error {
        PackError::Yaml {
            file,
            line,
            message,
        } => {
            let prefix = match line {
                Some(line) => format!("{file} line {line}: "),
                None => format!("{file}: "),
            };
            assert!(shown.starts_with(&prefix), "{shown}");
            (file, line, message)
        }
        other => panic!("expected a YAML error, got {other:?}"),
    }
}

#[track_caller]
fn assert_duplicate(action_yaml: &str, key: &str, line: usize) {
    let (file, found_line, message) = action_yaml_error(action_yaml);
    assert_eq!(file, "actions/echo.yaml");
    assert_eq!(found_line, Some(line), "{message}");
    assert!(
        message.contains(&format!("duplicate key \"{key}\"")),
        "names the key {key}: {message}"
    );
}

#[test]
fn repeated_top_level_fields_of_an_action_are_refused() {
    // A field the loader reads.
    assert_duplicate(
        "ref: demo.echo\nrunner_type: shell\nentry_point: echo.sh\nrunner_type: python\n",
        "runner_type",
        4,
    );
    // A field the loader ignores (serde would drop both values silently).
    assert_duplicate(
        "ref: demo.echo\ntags: [a]\nrunner_type: shell\nentry_point: echo.sh\ntags: [b]\n",
        "tags",
        5,
    );
}

#[test]
fn repeated_keys_inside_container_are_refused() {
    let base = "ref: demo.echo\nrunner_type: shell\nentry_point: echo.sh\n";
    assert_duplicate(
        &format!("{base}container:\n  image: busybox:1.36\n  user: \"1000\"\n  image: ruby:3.3\n"),
        "image",
        7,
    );
    assert_duplicate(
        &format!("{base}container:\n  image: busybox:1.36\n  env:\n    A: one\n    B: two\n    A: three\n"),
        "A",
        9,
    );
    assert_duplicate(
        &format!("{base}container:\n  image: busybox:1.36\n  resources:\n    memory: 64Mi\n    memory: 1Gi\n"),
        "memory",
        8,
    );
}

#[test]
fn repeated_keys_inside_parameters_are_refused() {
    let base = "ref: demo.echo\nrunner_type: shell\nentry_point: echo.sh\n";
    assert_duplicate(
        &format!(
            "{base}parameters:\n  type: object\n  properties:\n    word:\n      type: string\n      default: hi\n      default: ho\n"
        ),
        "default",
        10,
    );
    assert_duplicate(
        &format!(
            "{base}parameters:\n  type: object\n  properties:\n    word:\n      type: string\n    count:\n      type: integer\n    word:\n      type: number\n"
        ),
        "word",
        11,
    );
    // StackStorm-style flat map.
    assert_duplicate(
        &format!("{base}parameters:\n  word:\n    type: string\n  word:\n    type: integer\n"),
        "word",
        7,
    );
}

#[test]
fn flow_mappings_and_quoting_do_not_hide_a_repeated_key() {
    let base = "ref: demo.echo\nrunner_type: shell\nentry_point: echo.sh\n";
    assert_duplicate(
        &format!("{base}container: {{image: busybox:1.36, image: ruby:3.3}}\n"),
        "image",
        4,
    );
    // `"A"` and `A` are the same key.
    assert_duplicate(
        &format!("{base}container:\n  image: busybox:1.36\n  env:\n    A: one\n    \"A\": two\n"),
        "A",
        8,
    );
}

#[test]
fn repeated_keys_in_pack_yaml_are_refused() {
    let directory = pack_dir(&[
        (
            "pack.yaml",
            "ref: demo\nlabel: Demo\nversion: 1.0.0\nref: other\n",
            0o644,
        ),
        ("actions/echo.yaml", ACTION_YAML, 0o644),
        ("actions/echo.sh", "#!/bin/sh\necho hi\n", 0o755),
    ]);
    let (file, line, message) = yaml_parts(load_pack_dir(directory.path()).expect_err("refused"));
    assert_eq!(file, "pack.yaml");
    assert_eq!(line, Some(4), "{message}");
    assert!(message.contains("duplicate key \"ref\""), "{message}");
}

#[test]
fn an_uploaded_archive_is_checked_the_same_way() {
    let action = "ref: demo.other\nrunner_type: shell\nentry_point: echo.sh\ncontainer:\n  image: busybox:1.36\n  image: ruby:3.3\n";
    let archive = demo_archive_with(vec![RawEntry::File(
        "actions/other.yaml",
        action.as_bytes(),
        0o644,
    )]);
    let (file, line, message) =
        yaml_parts(load_pack_archive(&archive, &PackLimits::default()).expect_err("refused"));
    assert_eq!(file, "actions/other.yaml");
    assert_eq!(line, Some(6), "{message}");
    assert!(message.contains("duplicate key \"image\""), "{message}");
}

#[test]
fn the_same_key_in_different_mappings_is_fine() {
    let action = "\
ref: demo.echo
runner_type: shell
entry_point: echo.sh
container:
  image: busybox:1.36
  env:
    type: object
    image: also-a-variable
parameters:
  type: object
  properties:
    word:
      type: string
      default: hi
    other:
      type: string
      default: ho
  examples:
    - {type: a}
    - {type: b}
";
    let pack = load_pack_dir(pack_with_action(action).path()).expect("distinct keys load");
    assert_eq!(pack.actions.len(), 1);
    // The shared fixtures have no repeated keys either.
    load_pack_dir(pack_with_action(ACTION_YAML).path()).expect("fixture loads");
    assert!(PACK_YAML.contains("ref: demo"));
}

#[test]
fn alias_bombs_are_refused() {
    // Nine levels of nine aliases each: 9^9 nodes if expanded.
    let mut action = String::from("ref: demo.echo\nrunner_type: shell\nentry_point: echo.sh\n");
    action.push_str("bomb:\n  l0: &l0 [x, x, x, x, x, x, x, x, x]\n");
    for level in 1..9 {
        let previous = format!("*l{}", level - 1);
        let items = [previous.as_str(); 9].join(", ");
        action.push_str(&format!("  l{level}: &l{level} [{items}]\n"));
    }
    // The duplicate-key walk expands aliases as the parser does, under the parser's own
    // repetition limit.
    let (file, _, message) = action_yaml_error(&action);
    assert_eq!(file, "actions/echo.yaml");
    assert!(message.contains("repetition limit"), "{message}");
}
