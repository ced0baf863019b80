//! The YAML shapes of `pack.yaml` and `actions/<name>.yaml`, as written by users.
//!
//! Fields the loader does not use (`conf_schema`, `output_schema`, `runtime_deps`, ...) are
//! accepted and ignored so existing packs load.

use crate::error::PackError;
use crate::pool::PoolSettings;
use crate::unique_keys::UniqueKeys;
use attune_protocol::api::Isolation;
use attune_protocol::{ParameterDelivery, ParameterFormat};
use serde::de::{DeserializeOwned, DeserializeSeed};
use serde::Deserialize;
use serde_json::Value;

/// `pack.yaml`.
#[derive(Debug, Deserialize)]
pub(crate) struct PackManifest {
    #[serde(rename = "ref")]
    pub pack_ref: Option<String>,
    pub label: Option<String>,
    pub description: Option<String>,
    /// A string, or a number such as `1.0` written without quotes.
    pub version: Option<Value>,
    #[serde(default)]
    pub tags: Vec<String>,
}

/// `actions/<name>.yaml`.
#[derive(Debug, Deserialize)]
pub(crate) struct ActionManifest {
    /// `<pack>.<name>`; may be left out when `name` is given.
    #[serde(rename = "ref")]
    pub action_ref: Option<String>,
    pub name: Option<String>,
    /// StackStorm-style owner pack; must match the pack when given.
    pub pack: Option<String>,
    pub label: Option<String>,
    pub description: Option<String>,
    pub runner_type: Option<String>,
    pub entry_point: Option<String>,
    /// A JSON Schema object or a flat `name → definition` map.
    pub parameters: Option<Value>,
    /// Seconds as a number, or a duration such as `90s` or `5m`.
    #[serde(alias = "timeout_seconds")]
    pub timeout: Option<Value>,
    pub parameter_delivery: Option<ParameterDelivery>,
    pub parameter_format: Option<ParameterFormat>,
    /// An image string or a map with image, pull_policy, env, user, workdir, resources,
    /// read_only, cap_add.
    pub container: Option<Value>,
    pub enabled: Option<bool>,
    /// `per-execution` or `pooled`.
    pub isolation: Option<Isolation>,
    /// Warm pool settings; checked while parsing.
    pub pool: Option<PoolSettings>,
    pub idempotent: Option<bool>,
    /// Labels a long-lived worker must carry to run this action (upstream's field; only for
    /// actions without `container:`).
    pub worker_selector: Option<std::collections::BTreeMap<String, String>>,
    /// A semver constraint on the worker's version of the action's runtime (`>=3.11,<4`).
    pub runtime_version: Option<String>,
    /// Runtimes a worker must have besides the action's own.
    pub required_worker_runtimes: Option<Vec<String>>,
}

/// Parses a YAML file of the pack, naming the file and line on failure. A key repeated in any
/// mapping of the file is an error naming the key and its line (YAML requires unique keys;
/// serde alone would keep the last value).
pub(crate) fn parse_yaml<T: DeserializeOwned>(file: &str, contents: &[u8]) -> Result<T, PackError> {
    if contents.iter().all(u8::is_ascii_whitespace) {
        return Err(PackError::Yaml {
            file: file.to_string(),
            line: None,
            message: "the file is empty".to_string(),
        });
    }
    UniqueKeys
        .deserialize(serde_norway::Deserializer::from_slice(contents))
        .map_err(|error| yaml_error(file, error))?;
    serde_norway::from_slice(contents).map_err(|error| yaml_error(file, error))
}

/// A parser error as [`PackError::Yaml`], its line reported once.
fn yaml_error(file: &str, error: serde_norway::Error) -> PackError {
    let location = error.location();
    let mut message = error.to_string();
    if let Some(location) = &location {
        // The line is reported separately; drop the parser's own copy of it.
        let suffix = format!(" at line {} column {}", location.line(), location.column());
        if let Some(position) = message.find(&suffix) {
            message.replace_range(position..position + suffix.len(), "");
        }
    }
    PackError::Yaml {
        file: file.to_string(),
        line: location.map(|location| location.line()),
        message,
    }
}
