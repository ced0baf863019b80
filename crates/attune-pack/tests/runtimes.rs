//! A pack's `runtimes/*.yaml` files: loaded into [`Pack::runtimes`] from a directory and from
//! the archive built from it alike, and a file with a field the format does not have is
//! refused naming the file, the field and its line.

mod common;

use attune_pack::{build_pack_archive, load_pack_archive, load_pack_dir, PackLimits};
use attune_protocol::api::RuntimeEnvironmentKind;
use common::{pack_dir, ACTION_YAML, PACK_YAML};

const DENO_YAML: &str = r#"ref: demo.deno
pack_ref: demo
name: Deno
aliases: [deno]
description: TypeScript with Deno
distributions:
  verification:
    commands:
      - binary: deno
        args: ["--version"]
        exit_code: 0
        pattern: "deno (\\d+\\.\\d+\\.\\d+)"
        priority: 1
execution_config:
  interpreter:
    binary: deno
    args: ["run", "--allow-all"]
    file_extension: ".ts"
"#;

const RUBY_YAML: &str = r#"ref: demo.ruby
name: Ruby
execution_config:
  interpreter:
    binary: ruby
    file_extension: ".rb"
  environment:
    env_type: bundler
  dependencies:
    manifest_file: Gemfile
    install_command: ["bundle", "install"]
  env_vars:
    BUNDLE_PATH: "{env_dir}"
"#;

fn demo_pack(runtime_files: &[(&str, &str)]) -> tempfile::TempDir {
    let mut files = vec![
        ("pack.yaml", PACK_YAML, 0o644),
        ("actions/echo.yaml", ACTION_YAML, 0o644),
        ("actions/echo.sh", "#!/bin/sh\necho hi\n", 0o755),
        ("runtimes/README.md", "# not a runtime\n", 0o644),
    ];
    files.extend(
        runtime_files
            .iter()
            .map(|(path, text)| (*path, *text, 0o644)),
    );
    pack_dir(&files)
}

#[test]
fn runtime_files_load_from_a_directory_and_its_archive_alike() {
    let directory = demo_pack(&[
        ("runtimes/ruby.yaml", RUBY_YAML),
        ("runtimes/deno.yml", DENO_YAML),
    ]);
    let pack = load_pack_dir(directory.path()).expect("the pack loads");
    let refs: Vec<&str> = pack
        .runtimes
        .iter()
        .map(|runtime| runtime.runtime_ref.as_str())
        .collect();
    assert_eq!(
        refs,
        ["demo.deno", "demo.ruby"],
        "sorted by ref, README ignored"
    );
    let deno = &pack.runtimes[0];
    assert_eq!(deno.name, "Deno");
    assert_eq!(deno.interpreters, ["deno"]);
    assert_eq!(deno.file_extension.as_deref(), Some(".ts"));
    assert_eq!(deno.version_command.as_deref(), Some("deno --version"));
    assert_eq!(deno.metadata_file, "runtimes/deno.yml");
    let ruby = &pack.runtimes[1];
    let environment = ruby
        .environment
        .as_ref()
        .expect("ruby installs its Gemfile");
    assert_eq!(environment.kind, RuntimeEnvironmentKind::Bundler);
    assert_eq!(environment.manifest_file.as_deref(), Some("Gemfile"));

    let archive = build_pack_archive(directory.path()).expect("archive");
    let from_archive = load_pack_archive(&archive, &PackLimits::default()).expect("loads");
    assert_eq!(from_archive.runtimes, pack.runtimes);
}

#[test]
fn a_pack_without_runtime_files_has_no_runtimes() {
    let pack = load_pack_dir(common::hello_pack_dir()).expect("the example pack loads");
    assert!(pack.runtimes.is_empty());
}

#[test]
fn an_unknown_field_is_refused_naming_the_file_the_field_and_the_line() {
    let top_level = demo_pack(&[(
        "runtimes/deno.yaml",
        "ref: demo.deno\nname: Deno\ninterpreter: deno\n",
    )]);
    let error = load_pack_dir(top_level.path()).unwrap_err().to_string();
    assert!(
        error.starts_with("runtimes/deno.yaml line 3: unknown field `interpreter`"),
        "{error}"
    );

    let nested = demo_pack(&[(
        "runtimes/python.yaml",
        "ref: demo.python\nexecution_config:\n  interpreter:\n    binary: python3\n    extension: .py\n",
    )]);
    let error = load_pack_dir(nested.path()).unwrap_err().to_string();
    assert!(error.starts_with("runtimes/python.yaml line 5:"), "{error}");
    assert!(error.contains("unknown field `extension`"), "{error}");

    let bad_kind = demo_pack(&[(
        "runtimes/python.yaml",
        "ref: demo.python\nexecution_config:\n  environment:\n    env_type: poetry\n",
    )]);
    let error = load_pack_dir(bad_kind.path()).unwrap_err().to_string();
    assert!(
        error.starts_with("runtimes/python.yaml: execution_config.environment.env_type:"),
        "{error}"
    );
}

#[test]
fn a_runtime_of_another_pack_is_refused() {
    let directory = demo_pack(&[("runtimes/deno.yaml", "ref: other.deno\n")]);
    let error = load_pack_dir(directory.path()).unwrap_err().to_string();
    assert_eq!(
        error,
        "runtimes/deno.yaml: ref: \"other.deno\" names pack \"other\" but the runtime is in pack \"demo\""
    );
}
