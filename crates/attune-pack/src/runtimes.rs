//! `runtimes/<name>.yaml`: the runtimes a pack defines, in upstream Attune's runtime format.
//!
//! A file holds one runtime:
//!
//! ```yaml
//! ref: my_pack.python            # <pack>.<name>, required
//! pack_ref: my_pack              # optional; must be the pack's ref
//! name: Python                   # optional; the part of the ref after the dot
//! aliases: [python, python3]     # lowercased
//! description: ...
//! distributions:
//!   verification:
//!     always_available: false
//!     check_required: true
//!     commands:                  # the one of lowest priority gives the version command
//!       - {binary: python3, args: ["--version"], exit_code: 0, pattern: "Python 3\\.", priority: 1}
//! installation: {}               # accepted, not used
//! execution_config:
//!   interpreter: {binary: python3, args: ["-u"], file_extension: ".py"}
//!   inline_execution: {strategy: direct}
//!   environment: {env_type: virtualenv, dir_name: .venv, create_command: [...], interpreter_path: ...}
//!   dependencies: {manifest_file: requirements.txt, install_command: [...]}
//!   env_vars: {NODE_PATH: "{env_dir}/node_modules", PYTHONPATH: {operation: prepend, value: ..., separator: ":"}}
//! versions:                      # checked, not stored
//!   - {version: "3.12", is_default: true, distributions: ..., execution_config: ..., meta: ...}
//! ```
//!
//! Every mapping refuses fields it does not know; the error names the field, the file and the
//! line. The registry keeps the parts it shows ([`RuntimeDefinition`]): interpreters, file
//! extension, version command and pattern, and the environment set-up.

use crate::error::PackError;
use crate::load::validate_name;
use crate::manifest::parse_yaml;
use crate::model::PackFile;
use attune_protocol::api::{
    EnvVarOperation, RuntimeEnvVar, RuntimeEnvironment, RuntimeEnvironmentKind,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// The directory holding a pack's runtime files.
pub const RUNTIMES_DIRECTORY: &str = "runtimes";

/// A validated runtime of a pack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeDefinition {
    /// `<pack>.<name>`.
    pub runtime_ref: String,
    pub name: String,
    /// Lowercase, without repeats.
    pub aliases: Vec<String>,
    pub description: String,
    /// The interpreter's binary, then the verification commands' binaries by priority.
    pub interpreters: Vec<String>,
    /// `execution_config.interpreter.file_extension`.
    pub file_extension: Option<String>,
    /// The first verification command by priority, as one line (`python3 --version`).
    pub version_command: Option<String>,
    /// That command's `pattern`.
    pub version_regex: Option<String>,
    /// From `execution_config.environment`, `dependencies` and `env_vars`.
    pub environment: Option<RuntimeEnvironment>,
    /// The runtime file, relative to the pack root (`runtimes/python.yaml`).
    pub metadata_file: String,
}

/// `runtimes/<name>.yaml` or `.yml`, directly in `runtimes/`.
pub(crate) fn is_runtime_file(relative_path: &str) -> bool {
    relative_path.strip_prefix("runtimes/").is_some_and(|name| {
        !name.contains('/') && (name.ends_with(".yaml") || name.ends_with(".yml"))
    })
}

/// Parses and validates every runtime file of the pack; sorted by ref.
pub(crate) fn load_runtimes(
    pack_ref: &str,
    files: &[PackFile],
) -> Result<Vec<RuntimeDefinition>, PackError> {
    let mut runtimes: BTreeMap<String, RuntimeDefinition> = BTreeMap::new();
    for file in files
        .iter()
        .filter(|file| is_runtime_file(&file.relative_path))
    {
        let runtime = load_runtime(pack_ref, file)?;
        if let Some(existing) = runtimes.get(&runtime.runtime_ref) {
            return Err(PackError::InvalidField {
                file: runtime.metadata_file.clone(),
                field: "ref".to_string(),
                reason: format!(
                    "runtime {} is also defined in {}",
                    runtime.runtime_ref, existing.metadata_file
                ),
            });
        }
        runtimes.insert(runtime.runtime_ref.clone(), runtime);
    }
    Ok(runtimes.into_values().collect())
}

/// One runtime file, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuntimeManifest {
    #[serde(rename = "ref")]
    runtime_ref: Option<String>,
    pack_ref: Option<String>,
    name: Option<String>,
    #[serde(default)]
    aliases: Vec<String>,
    description: Option<String>,
    distributions: Option<Distributions>,
    /// Installation metadata for operators; accepted, not used.
    #[allow(dead_code)]
    installation: Option<Value>,
    execution_config: Option<ExecutionConfig>,
    #[serde(default)]
    versions: Vec<VersionEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Distributions {
    verification: Option<Verification>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Verification {
    always_available: Option<bool>,
    check_required: Option<bool>,
    #[serde(default)]
    commands: Vec<VerificationCommand>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VerificationCommand {
    binary: String,
    #[serde(default)]
    args: Vec<String>,
    #[allow(dead_code)]
    exit_code: Option<i64>,
    pattern: Option<String>,
    priority: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecutionConfig {
    interpreter: Option<InterpreterSection>,
    #[allow(dead_code)]
    inline_execution: Option<InlineExecution>,
    environment: Option<EnvironmentSection>,
    dependencies: Option<Dependencies>,
    #[serde(default)]
    env_vars: BTreeMap<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InterpreterSection {
    binary: String,
    #[allow(dead_code)]
    #[serde(default)]
    args: Vec<String>,
    file_extension: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct InlineExecution {
    strategy: Option<String>,
    extension: Option<String>,
    inject_shell_helpers: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvironmentSection {
    env_type: Option<String>,
    #[allow(dead_code)]
    dir_name: Option<String>,
    #[serde(default)]
    create_command: Vec<String>,
    interpreter_path: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Dependencies {
    manifest_file: Option<String>,
    #[serde(default)]
    install_command: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct VersionEntry {
    /// A string, or a number such as `3.12` written without quotes.
    version: Value,
    execution_config: Option<ExecutionConfig>,
    distributions: Option<Distributions>,
    is_default: Option<bool>,
    meta: Option<Value>,
}

/// An object form of `env_vars.<NAME>`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvVarObject {
    operation: Option<EnvVarOperation>,
    value: String,
    separator: Option<String>,
}

fn invalid(file: &str, field: &str, reason: impl Into<String>) -> PackError {
    PackError::InvalidField {
        file: file.to_string(),
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// Parses and validates one runtime file.
fn load_runtime(pack_ref: &str, runtime_file: &PackFile) -> Result<RuntimeDefinition, PackError> {
    let file = runtime_file.relative_path.as_str();
    let manifest: RuntimeManifest = parse_yaml(file, &runtime_file.contents)?;

    let runtime_ref = manifest
        .runtime_ref
        .ok_or_else(|| invalid(file, "ref", format!("is required (\"{pack_ref}.<name>\")")))?;
    let short_name = match runtime_ref.split_once('.') {
        Some((ref_pack, name)) if ref_pack == pack_ref => {
            validate_name(name).map_err(|reason| {
                invalid(
                    file,
                    "ref",
                    format!("{runtime_ref:?}: runtime name {reason}"),
                )
            })?;
            name.to_string()
        }
        Some((ref_pack, _)) => {
            return Err(invalid(
                file,
                "ref",
                format!(
                "{runtime_ref:?} names pack {ref_pack:?} but the runtime is in pack {pack_ref:?}"
            ),
            ))
        }
        None => {
            return Err(invalid(
                file,
                "ref",
                format!("{runtime_ref:?} must be \"{pack_ref}.<name>\""),
            ))
        }
    };
    if let Some(owner) = &manifest.pack_ref {
        if owner != pack_ref {
            return Err(invalid(
                file,
                "pack_ref",
                format!("is {owner:?} but the runtime is in pack {pack_ref:?}"),
            ));
        }
    }
    let name = match manifest.name.as_deref().map(str::trim) {
        Some("") => return Err(invalid(file, "name", "must not be empty")),
        Some(name) => name.to_string(),
        None => short_name,
    };
    let mut aliases: Vec<String> = Vec::new();
    for alias in &manifest.aliases {
        let alias = alias.trim().to_ascii_lowercase();
        if alias.is_empty() {
            return Err(invalid(file, "aliases", "an alias is empty"));
        }
        if !aliases.contains(&alias) {
            aliases.push(alias);
        }
    }

    let mut commands: Vec<&VerificationCommand> = manifest
        .distributions
        .as_ref()
        .and_then(|distributions| distributions.verification.as_ref())
        .map(|verification| verification.commands.iter().collect())
        .unwrap_or_default();
    for command in &commands {
        if command.binary.trim().is_empty() {
            return Err(invalid(
                file,
                "distributions.verification.commands.binary",
                "must not be empty",
            ));
        }
    }
    // Stable: commands of equal (or no) priority keep the file's order.
    commands.sort_by_key(|command| command.priority.unwrap_or(i64::MAX));

    let execution = manifest.execution_config.as_ref();
    let interpreter = execution.and_then(|config| config.interpreter.as_ref());
    if interpreter.is_some_and(|interpreter| interpreter.binary.trim().is_empty()) {
        return Err(invalid(
            file,
            "execution_config.interpreter.binary",
            "must not be empty",
        ));
    }
    let mut interpreters: Vec<String> = Vec::new();
    for binary in interpreter
        .map(|interpreter| interpreter.binary.trim())
        .into_iter()
        .chain(commands.iter().map(|command| command.binary.trim()))
    {
        if !interpreters.iter().any(|known| known == binary) {
            interpreters.push(binary.to_string());
        }
    }
    let version_command = commands.first().map(|command| {
        std::iter::once(command.binary.trim())
            .chain(command.args.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ")
    });
    let version_regex = commands.first().and_then(|command| command.pattern.clone());
    let environment = execution
        .map(|config| parse_environment(file, config))
        .transpose()?
        .flatten();

    for (index, version) in manifest.versions.iter().enumerate() {
        let valid = match &version.version {
            Value::String(text) => !text.trim().is_empty(),
            Value::Number(_) => true,
            _ => false,
        };
        if !valid {
            return Err(invalid(
                file,
                &format!("versions[{index}].version"),
                format!(
                    "must be a version such as \"3.12\", found {}",
                    version.version
                ),
            ));
        }
        if let Some(config) = &version.execution_config {
            parse_environment(file, config)?;
        }
    }

    Ok(RuntimeDefinition {
        runtime_ref,
        name,
        aliases,
        description: manifest.description.unwrap_or_default(),
        interpreters,
        file_extension: interpreter.and_then(|interpreter| interpreter.file_extension.clone()),
        version_command,
        version_regex,
        environment,
        metadata_file: file.to_string(),
    })
}

/// The environment set-up of an `execution_config`; `None` when it installs nothing.
fn parse_environment(
    file: &str,
    config: &ExecutionConfig,
) -> Result<Option<RuntimeEnvironment>, PackError> {
    let mut env_vars = BTreeMap::new();
    for (name, value) in &config.env_vars {
        let field = format!("execution_config.env_vars.{name}");
        let variable = match value {
            Value::String(value) => RuntimeEnvVar {
                operation: EnvVarOperation::Set,
                value: value.clone(),
                separator: None,
            },
            Value::Object(_) => {
                let object: EnvVarObject = serde_json::from_value(value.clone())
                    .map_err(|error| invalid(file, &field, error.to_string()))?;
                RuntimeEnvVar {
                    operation: object.operation.unwrap_or_default(),
                    value: object.value,
                    separator: object.separator,
                }
            }
            other => {
                return Err(invalid(
                    file,
                    &field,
                    format!("must be a string or {{operation, value, separator}}, found {other}"),
                ))
            }
        };
        env_vars.insert(name.clone(), variable);
    }
    if config.environment.is_none() && config.dependencies.is_none() && env_vars.is_empty() {
        return Ok(None);
    }
    let kind = match config
        .environment
        .as_ref()
        .and_then(|environment| environment.env_type.as_deref())
    {
        Some(name) => name
            .parse::<RuntimeEnvironmentKind>()
            .map_err(|reason| invalid(file, "execution_config.environment.env_type", reason))?,
        None => RuntimeEnvironmentKind::Custom,
    };
    Ok(Some(RuntimeEnvironment {
        kind,
        manifest_file: config
            .dependencies
            .as_ref()
            .and_then(|dependencies| dependencies.manifest_file.clone()),
        create_command: config
            .environment
            .as_ref()
            .map(|environment| environment.create_command.clone())
            .unwrap_or_default(),
        install_command: config
            .dependencies
            .as_ref()
            .map(|dependencies| dependencies.install_command.clone())
            .unwrap_or_default(),
        interpreter_path: config
            .environment
            .as_ref()
            .and_then(|environment| environment.interpreter_path.clone()),
        env_vars,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, text: &str) -> PackFile {
        PackFile {
            relative_path: path.to_string(),
            mode: 0o644,
            contents: text.as_bytes().to_vec(),
        }
    }

    #[test]
    fn only_yaml_files_directly_in_runtimes_are_runtime_files() {
        assert!(is_runtime_file("runtimes/python.yaml"));
        assert!(is_runtime_file("runtimes/deno.yml"));
        assert!(!is_runtime_file("runtimes/README.md"));
        assert!(!is_runtime_file("runtimes/old/python.yaml"));
        assert!(!is_runtime_file("actions/python.yaml"));
    }

    #[test]
    fn the_upstream_template_gives_interpreters_version_and_environment() {
        let runtime = load_runtime(
            "my_pack",
            &file(
                "runtimes/python.yaml",
                r#"
ref: my_pack.python
pack_ref: my_pack
name: Python
aliases: [Python, python3, python]
description: Python runtime for my_pack
distributions:
  verification:
    always_available: false
    check_required: true
    commands:
      - binary: python3.12
        args: ["--version"]
        priority: 2
      - binary: python3
        args: ["--version"]
        exit_code: 0
        pattern: "Python 3\\."
        priority: 1
installation: {}
execution_config:
  interpreter:
    binary: python3
    args: ["-u"]
    file_extension: ".py"
  inline_execution:
    strategy: direct
  environment:
    env_type: virtualenv
    dir_name: ".venv"
    create_command: ["python3", "-m", "venv", "{env_dir}"]
    interpreter_path: "{env_dir}/bin/python3"
  dependencies:
    manifest_file: requirements.txt
    install_command: ["{interpreter}", "-m", "pip", "install", "-r", "{manifest_path}"]
  env_vars:
    PYTHONPATH:
      operation: prepend
      value: "{pack_dir}/lib"
      separator: ":"
    PIP_NO_INPUT: "1"
versions:
  - version: 3.12
    is_default: true
    execution_config:
      interpreter:
        binary: python3.12
        file_extension: ".py"
"#,
            ),
        )
        .unwrap();
        assert_eq!(runtime.runtime_ref, "my_pack.python");
        assert_eq!(runtime.name, "Python");
        assert_eq!(runtime.aliases, ["python", "python3"]);
        assert_eq!(runtime.interpreters, ["python3", "python3.12"]);
        assert_eq!(runtime.file_extension.as_deref(), Some(".py"));
        assert_eq!(
            runtime.version_command.as_deref(),
            Some("python3 --version")
        );
        assert_eq!(runtime.version_regex.as_deref(), Some("Python 3\\."));
        let environment = runtime.environment.unwrap();
        assert_eq!(environment.kind, RuntimeEnvironmentKind::Virtualenv);
        assert_eq!(
            environment.manifest_file.as_deref(),
            Some("requirements.txt")
        );
        assert_eq!(environment.create_command[0], "python3");
        assert_eq!(
            environment.install_command.last().unwrap(),
            "{manifest_path}"
        );
        assert_eq!(
            environment.env_vars["PYTHONPATH"].operation,
            EnvVarOperation::Prepend
        );
        assert_eq!(environment.env_vars["PIP_NO_INPUT"].value, "1");
    }

    #[test]
    fn a_native_runtime_has_no_environment_and_its_name_comes_from_the_ref() {
        let runtime = load_runtime(
            "tools",
            &file(
                "runtimes/native.yaml",
                "ref: tools.native\naliases: [builtin]\ndistributions:\n  verification:\n    always_available: true\n    check_required: false\nexecution_config: {}\n",
            ),
        )
        .unwrap();
        assert_eq!(runtime.name, "native");
        assert!(runtime.interpreters.is_empty());
        assert_eq!(runtime.environment, None);
        assert_eq!(runtime.version_command, None);
    }

    #[test]
    fn refs_env_types_and_env_vars_are_checked_by_field() {
        let error = |text: &str| {
            load_runtime("tools", &file("runtimes/x.yaml", text))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            error("name: x\n"),
            "runtimes/x.yaml: ref: is required (\"tools.<name>\")"
        );
        assert!(error("ref: other.x\n").contains("names pack \"other\""));
        assert!(error("ref: tools.X\n").contains("runtime name must be lowercase"));
        assert!(error("ref: tools.x\npack_ref: other\n").starts_with("runtimes/x.yaml: pack_ref:"));
        assert!(error(
            "ref: tools.x\nexecution_config:\n  environment:\n    env_type: conda\n"
        )
        .starts_with("runtimes/x.yaml: execution_config.environment.env_type: unknown environment type \"conda\""));
        assert!(
            error("ref: tools.x\nexecution_config:\n  env_vars:\n    A: [1]\n")
                .starts_with("runtimes/x.yaml: execution_config.env_vars.A: must be a string")
        );
        assert!(error("ref: tools.x\nversions:\n  - version: [3]\n")
            .starts_with("runtimes/x.yaml: versions[0].version:"));
    }

    #[test]
    fn two_files_with_one_ref_are_refused_naming_both() {
        let error = load_runtimes(
            "tools",
            &[
                file("runtimes/a.yaml", "ref: tools.x\n"),
                file("runtimes/b.yaml", "ref: tools.x\n"),
            ],
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            error,
            "runtimes/b.yaml: ref: runtime tools.x is also defined in runtimes/a.yaml"
        );
    }
}
