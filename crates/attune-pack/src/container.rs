//! An action's `container:` section: the image (checked against Docker's reference grammar),
//! pull policy, environment, user, working directory, resource limits, read-only root
//! filesystem and added capabilities.

use crate::error::PackError;
use crate::resources::{normalize_capability, ResourceLimits, MAX_PIDS, MIN_PIDS};
use attune_protocol::api::{ContainerSpec, PullPolicy, ResourceSpec};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Longest repository name Docker accepts (registry and path, without tag and digest).
const MAX_NAME_LENGTH: usize = 255;
/// Longest tag Docker accepts.
const MAX_TAG_LENGTH: usize = 128;
/// The keys of a `container:` map, for messages.
const CONTAINER_KEYS: &str =
    "image, pull_policy, env, user, workdir, resources, read_only, cap_add";
/// The keys of a `resources:` map, for messages.
const RESOURCE_KEYS: &str = "memory, cpus, pids";

/// Parses `container:`: an image string (`ruby:3.3`) or a map with `image`, `pull_policy`
/// (`if-not-present`, `always`, `never`), `env`, `user`, `workdir`, `resources` (`memory`,
/// `cpus`, `pids`), `read_only` and `cap_add`.
pub(crate) fn parse_container(file: &str, value: &Value) -> Result<ContainerSpec, PackError> {
    let invalid = |reason: String| PackError::InvalidContainer {
        file: file.to_string(),
        reason,
    };
    let spec = match value {
        Value::String(image) => ContainerSpec {
            image: image.clone(),
            ..ContainerSpec::default()
        },
        Value::Object(map) => parse_container_map(map).map_err(invalid)?,
        other => {
            return Err(invalid(format!(
                "expected an image name or a map with {CONTAINER_KEYS}, found {}",
                describe(other)
            )))
        }
    };
    validate_image_reference(&spec.image).map_err(|reason| PackError::InvalidImageReference {
        file: file.to_string(),
        reference: spec.image.clone(),
        reason,
    })?;
    Ok(spec)
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

fn parse_container_map(map: &Map<String, Value>) -> Result<ContainerSpec, String> {
    let mut spec = ContainerSpec::default();
    for (key, value) in map {
        match key.as_str() {
            "image" => match value {
                Value::String(image) => spec.image = image.clone(),
                other => return Err(format!("image must be a string, found {}", describe(other))),
            },
            "pull_policy" => spec.pull_policy = parse_pull_policy(value)?,
            "env" => spec.env = parse_env(value)?,
            "user" => spec.user = Some(parse_user(value)?),
            "workdir" => match value {
                Value::String(workdir) => {
                    validate_workdir(workdir)?;
                    spec.workdir = Some(workdir.clone());
                }
                other => {
                    return Err(format!(
                        "workdir must be a string, found {}",
                        describe(other)
                    ))
                }
            },
            "resources" => spec.resources = parse_resources(value)?,
            "read_only" => match value {
                Value::Bool(read_only) => spec.read_only = *read_only,
                other => {
                    return Err(format!(
                        "read_only must be true or false, found {}",
                        describe(other)
                    ))
                }
            },
            "cap_add" => spec.cap_add = parse_cap_add(value)?,
            other => return Err(format!("unknown key {other:?} (known: {CONTAINER_KEYS})")),
        }
    }
    if !map.contains_key("image") {
        return Err("image is required".to_string());
    }
    Ok(spec)
}

/// Parses `resources:` and checks it with [`ResourceLimits::from_spec`]; an empty map or `null`
/// sets no limits.
fn parse_resources(value: &Value) -> Result<Option<ResourceSpec>, String> {
    let map = match value {
        Value::Null => return Ok(None),
        Value::Object(map) => map,
        other => {
            return Err(format!(
                "resources must be a map with {RESOURCE_KEYS}, found {}",
                describe(other)
            ))
        }
    };
    let mut spec = ResourceSpec::default();
    for (key, value) in map {
        match key.as_str() {
            "memory" => spec.memory = parse_memory_value(value)?,
            "cpus" => spec.cpus = parse_cpus_value(value)?,
            "pids" => spec.pids = parse_pids_value(value)?,
            other => {
                return Err(format!(
                    "resources: unknown key {other:?} (known: {RESOURCE_KEYS})"
                ))
            }
        }
    }
    ResourceLimits::from_spec(&spec).map_err(|reason| format!("resources: {reason}"))?;
    if spec == ResourceSpec::default() {
        return Ok(None);
    }
    Ok(Some(spec))
}

/// `memory:` as written: a quantity string or a whole number of bytes.
fn parse_memory_value(value: &Value) -> Result<Option<String>, String> {
    match value {
        Value::Null => Ok(None),
        Value::String(memory) => Ok(Some(memory.trim().to_string())),
        Value::Number(number) if number.is_u64() => Ok(Some(number.to_string())),
        other => Err(format!(
            "resources: memory must be a quantity such as 256Mi or a whole number of bytes, found {}",
            describe_value(other)
        )),
    }
}

fn parse_cpus_value(value: &Value) -> Result<Option<f64>, String> {
    match value {
        Value::Null => Ok(None),
        Value::Number(number) => Ok(number.as_f64()),
        other => Err(format!(
            "resources: cpus must be a number such as 0.5, found {}",
            describe_value(other)
        )),
    }
}

fn parse_pids_value(value: &Value) -> Result<Option<i64>, String> {
    match value {
        Value::Null => Ok(None),
        Value::Number(number) if number.as_i64().is_some() => Ok(number.as_i64()),
        other => Err(format!(
            "resources: pids must be a whole number between {MIN_PIDS} and {MAX_PIDS}, found {}",
            describe_value(other)
        )),
    }
}

/// Parses `cap_add:`: a list of capability names, normalized without `CAP_` and without
/// duplicates.
fn parse_cap_add(value: &Value) -> Result<Vec<String>, String> {
    let entries = match value {
        Value::Null => return Ok(Vec::new()),
        Value::Array(entries) => entries,
        other => {
            return Err(format!(
                "cap_add must be a list of capability names such as [NET_BIND_SERVICE], found {}",
                describe(other)
            ))
        }
    };
    let mut capabilities: Vec<String> = Vec::new();
    for entry in entries {
        let Value::String(name) = entry else {
            return Err(format!(
                "cap_add: entries must be capability names, found {}",
                describe_value(entry)
            ));
        };
        let capability =
            normalize_capability(name).map_err(|reason| format!("cap_add: {reason}"))?;
        if !capabilities.contains(&capability) {
            capabilities.push(capability);
        }
    }
    Ok(capabilities)
}

/// A scalar as written (`"x"`, `-1`, `true`), anything else by its kind.
fn describe_value(value: &Value) -> String {
    match value {
        Value::String(_) | Value::Number(_) | Value::Bool(_) => value.to_string(),
        other => describe(other).to_string(),
    }
}

fn parse_pull_policy(value: &Value) -> Result<PullPolicy, String> {
    match value.as_str() {
        Some("if-not-present") => Ok(PullPolicy::IfNotPresent),
        Some("always") => Ok(PullPolicy::Always),
        Some("never") => Ok(PullPolicy::Never),
        _ => Err(format!(
            "pull_policy {value} is not one of if-not-present, always, never"
        )),
    }
}

fn parse_env(value: &Value) -> Result<BTreeMap<String, String>, String> {
    let Value::Object(map) = value else {
        return Err(format!(
            "env must be a map of names to values, found {}",
            describe(value)
        ));
    };
    let mut env = BTreeMap::new();
    for (name, value) in map {
        if !is_environment_name(name) {
            return Err(format!(
                "env name {name:?} must be letters, digits and underscores, not starting with a digit"
            ));
        }
        let value = match value {
            Value::String(text) => text.clone(),
            Value::Number(number) => number.to_string(),
            Value::Bool(flag) => flag.to_string(),
            other => {
                return Err(format!(
                    "env {name}: value must be a string, found {}",
                    describe(other)
                ))
            }
        };
        env.insert(name.clone(), value);
    }
    Ok(env)
}

fn is_environment_name(name: &str) -> bool {
    let mut characters = name.chars();
    matches!(characters.next(), Some(first) if first.is_ascii_alphabetic() || first == '_')
        && characters.all(|character| character.is_ascii_alphanumeric() || character == '_')
}

fn parse_user(value: &Value) -> Result<String, String> {
    let user = match value {
        Value::String(user) => user.clone(),
        Value::Number(number) if number.is_u64() => number.to_string(),
        other => {
            return Err(format!(
                "user must be a name or uid[:gid], found {}",
                describe(other)
            ))
        }
    };
    if user.is_empty() || user.chars().any(char::is_whitespace) {
        return Err(format!("user {user:?} must be a name or uid[:gid]"));
    }
    Ok(user)
}

/// Checks a container working directory: absolute, and not under `/proc` (CVE-2024-21626).
pub fn validate_workdir(workdir: &str) -> Result<(), String> {
    if !workdir.starts_with('/') {
        return Err(format!("workdir {workdir:?} must be an absolute path"));
    }
    let mut components: Vec<&str> = Vec::new();
    for component in workdir.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                components.pop();
            }
            name => components.push(name),
        }
    }
    if components.first() == Some(&"proc") {
        return Err(format!(
            "workdir {workdir:?} is under /proc, which is not allowed"
        ));
    }
    Ok(())
}

/// Checks an image reference against Docker's grammar:
/// `[host[:port]/]path[:tag][@sha256:<64 hex>]`, path components lowercase
/// `[a-z0-9]+` joined by `.`, `_`, `__` or dashes.
pub fn validate_image_reference(reference: &str) -> Result<(), String> {
    if reference.is_empty() {
        return Err("it is empty".to_string());
    }
    let (rest, digest) = match reference.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (reference, None),
    };
    if let Some(digest) = digest {
        validate_digest(digest)?;
    }
    let last_slash = rest.rfind('/');
    let (name, tag) = match rest.rfind(':') {
        Some(colon) if last_slash.is_none_or(|slash| colon > slash) => {
            (&rest[..colon], Some(&rest[colon + 1..]))
        }
        _ => (rest, None),
    };
    if let Some(tag) = tag {
        validate_tag(tag)?;
    }
    if name.is_empty() {
        return Err("the repository name is empty".to_string());
    }
    if name.len() > MAX_NAME_LENGTH {
        return Err(format!(
            "the repository name is longer than {MAX_NAME_LENGTH} characters"
        ));
    }
    let components: Vec<&str> = name.split('/').collect();
    let path = match components.split_first() {
        Some((first, path)) if !path.is_empty() && looks_like_registry(first) => {
            validate_registry(first)?;
            path
        }
        _ => components.as_slice(),
    };
    for component in path {
        validate_path_component(component)?;
    }
    Ok(())
}

/// Docker reads the first component as a registry when it has a dot or a port, or is localhost.
fn looks_like_registry(component: &str) -> bool {
    component.contains('.')
        || component.contains(':')
        || component.starts_with('[')
        || component == "localhost"
}

fn validate_digest(digest: &str) -> Result<(), String> {
    let Some(hex) = digest.strip_prefix("sha256:") else {
        return Err(format!("digest {digest:?} must be sha256:<64 hex digits>"));
    };
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(format!(
            "digest {digest:?} must be sha256: followed by 64 lowercase hex digits"
        ));
    }
    Ok(())
}

fn validate_tag(tag: &str) -> Result<(), String> {
    let is_word = |byte: u8| byte.is_ascii_alphanumeric() || byte == b'_';
    let valid = match tag.as_bytes().split_first() {
        Some((first, rest)) => {
            is_word(*first)
                && tag.len() <= MAX_TAG_LENGTH
                && rest
                    .iter()
                    .all(|byte| is_word(*byte) || *byte == b'.' || *byte == b'-')
        }
        None => false,
    };
    if !valid {
        return Err(format!(
            "tag {tag:?} must be 1 to {MAX_TAG_LENGTH} letters, digits, '_', '.' or '-', not starting with '.' or '-'"
        ));
    }
    Ok(())
}

fn validate_registry(registry: &str) -> Result<(), String> {
    let invalid = || {
        format!("registry {registry:?} must be a host name, IPv4 or [IPv6] address, with an optional :port")
    };
    let (host, port) = if let Some(bracketed) = registry.strip_prefix('[') {
        let (address, after) = bracketed.split_once(']').ok_or_else(invalid)?;
        // Hex digits and colons only: Docker's grammar leaves out IPv4-mapped forms
        // (`[::ffff:1.2.3.4]`) and zone identifiers.
        if address.is_empty()
            || !address
                .chars()
                .all(|character| character.is_ascii_hexdigit() || character == ':')
        {
            return Err(invalid());
        }
        match after {
            "" => (None, None),
            port => (None, Some(port.strip_prefix(':').ok_or_else(invalid)?)),
        }
    } else {
        match registry.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(registry), None),
        }
    };
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|byte| byte.is_ascii_digit()) {
            return Err(invalid());
        }
    }
    if let Some(host) = host {
        let valid_label = |label: &str| {
            let bytes = label.as_bytes();
            !bytes.is_empty()
                && bytes[0].is_ascii_alphanumeric()
                && bytes[bytes.len() - 1].is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|byte| byte.is_ascii_alphanumeric() || *byte == b'-')
        };
        if !host.split('.').all(valid_label) {
            return Err(invalid());
        }
    }
    Ok(())
}

fn validate_path_component(component: &str) -> Result<(), String> {
    let invalid = || {
        if component.bytes().any(|byte| byte.is_ascii_uppercase()) {
            format!("repository name component {component:?} must be lowercase")
        } else {
            format!(
                "repository name component {component:?} must be lowercase letters and digits separated by '.', '_', '__' or dashes"
            )
        }
    };
    let bytes = component.as_bytes();
    let is_alphanumeric = |byte: u8| byte.is_ascii_lowercase() || byte.is_ascii_digit();
    let mut index = 0;
    loop {
        // One run of [a-z0-9]+.
        let start = index;
        while index < bytes.len() && is_alphanumeric(bytes[index]) {
            index += 1;
        }
        if index == start {
            return Err(invalid());
        }
        if index == bytes.len() {
            return Ok(());
        }
        // One separator: '.', '_', '__' or '-'+.
        match bytes[index] {
            b'.' => index += 1,
            b'_' => {
                index += 1;
                if bytes.get(index) == Some(&b'_') {
                    index += 1;
                }
            }
            b'-' => {
                while bytes.get(index) == Some(&b'-') {
                    index += 1;
                }
            }
            _ => return Err(invalid()),
        }
    }
}
