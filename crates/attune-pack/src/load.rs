//! The one path from a set of pack files to a validated [`Pack`], used for directories and
//! uploaded archives alike.

use crate::archive::{read_archive, read_pack_dir, write_archive};
use crate::container::parse_container;
use crate::error::PackError;
use crate::manifest::{parse_yaml, ActionManifest, PackManifest};
use crate::model::{
    ActionDefinition, Pack, PackFile, PackLimits, DEFAULT_TIMEOUT_SECONDS, MAX_TIMEOUT_SECONDS,
};
use crate::parameters::normalize_parameters;
use crate::pool::resolve_isolation;
use attune_protocol::Runtime;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

/// The pack manifest's path inside a pack.
pub const PACK_MANIFEST: &str = "pack.yaml";
/// The directory holding action files and entry points.
pub const ACTIONS_DIRECTORY: &str = "actions";
/// Longest accepted pack ref or action name.
pub const MAX_NAME_LENGTH: usize = 64;

/// Loads and validates the pack in directory `path` with the default [`PackLimits`].
pub fn load_pack_dir(path: impl AsRef<Path>) -> Result<Pack, PackError> {
    load_pack_dir_with_limits(path, &PackLimits::default())
}

/// Loads and validates the pack in directory `path`.
pub fn load_pack_dir_with_limits(
    path: impl AsRef<Path>,
    limits: &PackLimits,
) -> Result<Pack, PackError> {
    let files = read_pack_dir(path.as_ref(), limits)?;
    pack_from_files(files, limits)
}

/// Loads and validates a pack from an uncompressed tar held in memory; nothing is written to
/// disk.
pub fn load_pack_archive(bytes: &[u8], limits: &PackLimits) -> Result<Pack, PackError> {
    let files = read_archive(bytes, limits)?;
    pack_from_files(files, limits)
}

/// Builds the deterministic tar of the pack directory `dir` (what the CLI uploads): paths
/// relative to the pack root, sorted, modes kept, owner 0:0, mtime 0, symlinks resolved inside
/// the pack, `.git`, `target/` and `__pycache__/` left out. The contents are not validated; use
/// [`load_pack_dir`] for that.
pub fn build_pack_archive(dir: impl AsRef<Path>) -> Result<Vec<u8>, PackError> {
    let limits = PackLimits::default();
    let files = read_pack_dir(dir.as_ref(), &limits)?;
    let archive = write_archive(&files, "")?;
    check_archive_size(&archive, &limits)?;
    Ok(archive)
}

fn check_archive_size(archive: &[u8], limits: &PackLimits) -> Result<(), PackError> {
    let size = archive.len() as u64;
    if size > limits.max_archive_bytes {
        return Err(PackError::TooLarge {
            size,
            limit: limits.max_archive_bytes,
        });
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Validates the files of a pack and builds the [`Pack`].
fn pack_from_files(files: Vec<PackFile>, limits: &PackLimits) -> Result<Pack, PackError> {
    if files.len() > limits.max_files {
        return Err(PackError::TooManyFiles {
            limit: limits.max_files,
        });
    }
    let unpacked_size: u64 = files.iter().map(|file| file.contents.len() as u64).sum();
    if unpacked_size > limits.max_unpacked_bytes {
        return Err(PackError::UnpackedTooLarge {
            size: unpacked_size,
            limit: limits.max_unpacked_bytes,
        });
    }
    let archive = write_archive(&files, "")?;
    check_archive_size(&archive, limits)?;
    let sha256 = hex(&Sha256::digest(&archive));

    let files_by_path: BTreeMap<&str, &PackFile> = files
        .iter()
        .map(|file| (file.relative_path.as_str(), file))
        .collect();
    let manifest_file = files_by_path
        .get(PACK_MANIFEST)
        .ok_or(PackError::MissingManifest)?;
    let manifest: PackManifest = parse_yaml(PACK_MANIFEST, &manifest_file.contents)?;
    let pack_ref = manifest.pack_ref.ok_or_else(|| PackError::InvalidField {
        file: PACK_MANIFEST.to_string(),
        field: "ref".to_string(),
        reason: "is required (lowercase letters, digits, '_' and '-')".to_string(),
    })?;
    validate_name(&pack_ref).map_err(|reason| PackError::InvalidPackRef {
        file: PACK_MANIFEST.to_string(),
        value: pack_ref.clone(),
        reason,
    })?;
    let version = match manifest.version {
        None => String::new(),
        Some(Value::String(version)) => version,
        Some(Value::Number(number)) => number.to_string(),
        Some(other) => {
            return Err(PackError::InvalidField {
                file: PACK_MANIFEST.to_string(),
                field: "version".to_string(),
                reason: format!("must be a string such as \"1.0.0\", found {other}"),
            })
        }
    };

    let mut actions: BTreeMap<String, ActionDefinition> = BTreeMap::new();
    for file in &files {
        if !is_action_file(&file.relative_path) {
            continue;
        }
        let action = load_action(&pack_ref, file, &files_by_path)?;
        if let Some(existing) = actions.get(&action.action_ref) {
            return Err(PackError::DuplicateAction {
                action_ref: action.action_ref.clone(),
                first_file: existing.metadata_file.clone(),
                second_file: action.metadata_file.clone(),
            });
        }
        actions.insert(action.action_ref.clone(), action);
    }

    let runtimes = crate::runtimes::load_runtimes(&pack_ref, &files)?;

    Ok(Pack {
        label: manifest.label.unwrap_or_else(|| pack_ref.clone()),
        pack_ref,
        description: manifest.description.unwrap_or_default(),
        version,
        tags: manifest.tags,
        actions: actions.into_values().collect(),
        runtimes,
        files,
        sha256,
    })
}

/// `actions/<name>.yaml` or `.yml`, directly in `actions/`.
fn is_action_file(relative_path: &str) -> bool {
    relative_path.strip_prefix("actions/").is_some_and(|name| {
        !name.contains('/') && (name.ends_with(".yaml") || name.ends_with(".yml"))
    })
}

/// Checks a pack ref or an action name: lowercase `[a-z0-9_-]`, no dots.
pub fn validate_name(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".to_string());
    }
    if value.contains('.') {
        return Err("must not contain dots".to_string());
    }
    if !value.bytes().all(|byte| {
        byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_' || byte == b'-'
    }) {
        return Err("must be lowercase letters, digits, '_' or '-'".to_string());
    }
    if value.len() > MAX_NAME_LENGTH {
        return Err(format!("must be at most {MAX_NAME_LENGTH} characters"));
    }
    Ok(())
}

/// The action's name from its `ref` (`<pack>.<name>`) and/or `name`.
fn action_name(pack_ref: &str, file: &str, manifest: &ActionManifest) -> Result<String, PackError> {
    let invalid_ref = |value: &str, reason: String| PackError::InvalidActionRef {
        file: file.to_string(),
        value: value.to_string(),
        reason,
    };
    let name = match (&manifest.action_ref, &manifest.name) {
        (Some(action_ref), name) => {
            let Some((ref_pack, ref_name)) = action_ref.split_once('.') else {
                return Err(invalid_ref(
                    action_ref,
                    format!("must be \"{pack_ref}.<name>\""),
                ));
            };
            if ref_pack != pack_ref {
                return Err(invalid_ref(
                    action_ref,
                    format!("names pack {ref_pack:?} but the action is in pack {pack_ref:?}"),
                ));
            }
            validate_name(ref_name)
                .map_err(|reason| invalid_ref(action_ref, format!("action name {reason}")))?;
            if let Some(name) = name {
                if name != ref_name {
                    return Err(invalid_ref(
                        action_ref,
                        format!("does not match name {name:?}"),
                    ));
                }
            }
            ref_name.to_string()
        }
        (None, Some(name)) => {
            validate_name(name).map_err(|reason| {
                invalid_ref(
                    &format!("{pack_ref}.{name}"),
                    format!("action name {reason}"),
                )
            })?;
            name.clone()
        }
        (None, None) => {
            return Err(PackError::InvalidField {
                file: file.to_string(),
                field: "ref".to_string(),
                reason: format!("is required (\"{pack_ref}.<name>\")"),
            })
        }
    };
    if let Some(pack) = &manifest.pack {
        if pack != pack_ref {
            return Err(PackError::InvalidField {
                file: file.to_string(),
                field: "pack".to_string(),
                reason: format!("is {pack:?} but the action is in pack {pack_ref:?}"),
            });
        }
    }
    Ok(name)
}

/// Checks `entry_point` and returns its pack-relative path (`actions/greet.sh`).
fn entry_point_path(
    file: &str,
    entry_point: &str,
    runtime: Runtime,
    files_by_path: &BTreeMap<&str, &PackFile>,
) -> Result<String, PackError> {
    let invalid = |reason: String| PackError::InvalidEntryPoint {
        file: file.to_string(),
        entry_point: entry_point.to_string(),
        reason,
    };
    if entry_point.starts_with('/') {
        return Err(invalid(
            "must be a path relative to actions/, not an absolute path".to_string(),
        ));
    }
    let mut components = Vec::new();
    for component in entry_point.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                return Err(invalid(
                    "must stay inside the pack's actions/ directory (\"..\" is not allowed)"
                        .to_string(),
                ))
            }
            name => components.push(name),
        }
    }
    if components.is_empty() {
        return Err(invalid("names no file".to_string()));
    }
    let path = format!("{ACTIONS_DIRECTORY}/{}", components.join("/"));
    let Some(entry_file) = files_by_path.get(path.as_str()) else {
        return Err(invalid(format!("file {path} is not in the pack")));
    };
    if runtime == Runtime::Native && entry_file.mode & 0o111 == 0 {
        return Err(invalid(format!(
            "file {path} must be executable for a native action (its mode is {:o})",
            entry_file.mode
        )));
    }
    Ok(path)
}

fn parse_timeout(file: &str, value: Option<&Value>) -> Result<u64, PackError> {
    let invalid = |reason: String| PackError::InvalidField {
        file: file.to_string(),
        field: "timeout".to_string(),
        reason,
    };
    let seconds = match value {
        None | Some(Value::Null) => return Ok(DEFAULT_TIMEOUT_SECONDS),
        Some(Value::Number(number)) => number.as_u64().ok_or_else(|| {
            invalid(format!(
                "must be a whole number of seconds between 1 and {MAX_TIMEOUT_SECONDS}, found {number}"
            ))
        })?,
        Some(Value::String(text)) => match text.trim().parse::<u64>() {
            Ok(seconds) => seconds,
            Err(_) => {
                let duration = humantime::parse_duration(text.trim()).map_err(|error| {
                    invalid(format!(
                        "{text:?} is not a number of seconds or a duration such as \"90s\" or \"5m\": {error}"
                    ))
                })?;
                if duration.subsec_nanos() != 0 {
                    return Err(invalid(format!("{text:?} is not a whole number of seconds")));
                }
                duration.as_secs()
            }
        },
        Some(other) => {
            return Err(invalid(format!(
                "must be a number of seconds or a duration such as \"5m\", found {other}"
            )))
        }
    };
    if !(1..=MAX_TIMEOUT_SECONDS).contains(&seconds) {
        return Err(invalid(format!(
            "{seconds} seconds is outside 1..={MAX_TIMEOUT_SECONDS}"
        )));
    }
    Ok(seconds)
}

/// Parses and validates one action file.
fn load_action(
    pack_ref: &str,
    action_file: &PackFile,
    files_by_path: &BTreeMap<&str, &PackFile>,
) -> Result<ActionDefinition, PackError> {
    let file = action_file.relative_path.as_str();
    let manifest: ActionManifest = parse_yaml(file, &action_file.contents)?;
    let name = action_name(pack_ref, file, &manifest)?;

    let runner_type = manifest
        .runner_type
        .clone()
        .ok_or_else(|| PackError::InvalidField {
            file: file.to_string(),
            field: "runner_type".to_string(),
            reason: "is required (shell, python, node, ...)".to_string(),
        })?;
    let runtime: Runtime = runner_type.parse().map_err(|_| PackError::UnknownRuntime {
        file: file.to_string(),
        value: runner_type.clone(),
    })?;

    let entry_point = match manifest.entry_point.as_deref().map(str::trim) {
        Some(entry_point) if !entry_point.is_empty() => entry_point.to_string(),
        _ => {
            return Err(PackError::InvalidField {
                file: file.to_string(),
                field: "entry_point".to_string(),
                reason: "is required (the script's path relative to actions/)".to_string(),
            })
        }
    };
    let entry_point_path = entry_point_path(file, &entry_point, runtime, files_by_path)?;

    let parameters = normalize_parameters(manifest.parameters.as_ref()).map_err(|reason| {
        PackError::InvalidParameterSchema {
            file: file.to_string(),
            reason,
        }
    })?;
    let timeout_seconds = parse_timeout(file, manifest.timeout.as_ref())?;
    let container = manifest
        .container
        .as_ref()
        .filter(|value| !value.is_null())
        .map(|value| parse_container(file, value))
        .transpose()?;
    let (isolation, pool) = resolve_isolation(
        file,
        manifest.isolation,
        manifest.pool.map(|settings| settings.0),
        container.is_some(),
    )?;

    let runtime_version = match manifest.runtime_version {
        Some(constraint) => {
            crate::runtime_version::parse_constraint(&constraint).map_err(|reason| {
                PackError::InvalidField {
                    file: file.to_string(),
                    field: "runtime_version".to_string(),
                    reason,
                }
            })?;
            Some(constraint.trim().to_string())
        }
        None => None,
    };
    let mut required_worker_runtimes = Vec::new();
    for name in manifest.required_worker_runtimes.unwrap_or_default() {
        let required: attune_protocol::Runtime =
            name.parse()
                .map_err(
                    |error: attune_protocol::UnknownRuntime| PackError::InvalidField {
                        file: file.to_string(),
                        field: "required_worker_runtimes".to_string(),
                        reason: error.to_string(),
                    },
                )?;
        required_worker_runtimes.push(required.as_str().to_string());
    }
    Ok(ActionDefinition {
        action_ref: format!("{pack_ref}.{name}"),
        label: manifest.label.unwrap_or_else(|| name.clone()),
        name,
        description: manifest.description.unwrap_or_default(),
        runner_type,
        runtime,
        entry_point,
        entry_point_path,
        parameters_schema: parameters.schema,
        secret_parameters: parameters.secret_parameters,
        parameter_delivery: manifest.parameter_delivery.unwrap_or_default(),
        parameter_format: manifest.parameter_format.unwrap_or_default(),
        timeout_seconds,
        container,
        enabled: manifest.enabled.unwrap_or(true),
        isolation,
        pool,
        idempotent: manifest.idempotent.unwrap_or(false),
        worker_selector: manifest.worker_selector.unwrap_or_default(),
        runtime_version,
        required_worker_runtimes,
        metadata_file: file.to_string(),
    })
}
