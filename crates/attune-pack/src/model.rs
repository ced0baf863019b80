//! The loaded, validated form of a pack and its actions.

use crate::error::PackError;
use attune_protocol::api::{ActionView, ContainerSpec, Isolation, PackView, PoolSpec};
use attune_protocol::{ParameterDelivery, ParameterFormat, Runtime};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Default for [`PackLimits::max_archive_bytes`]: 16 MiB.
pub const DEFAULT_MAX_ARCHIVE_BYTES: u64 = 16 * 1024 * 1024;
/// Default for [`PackLimits::max_unpacked_bytes`]: 16 MiB.
pub const DEFAULT_MAX_UNPACKED_BYTES: u64 = 16 * 1024 * 1024;
/// Default for [`PackLimits::max_files`].
pub const DEFAULT_MAX_FILES: usize = 1000;
/// Timeout of an action that does not set one.
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 60;
/// Largest accepted action timeout: one day.
pub const MAX_TIMEOUT_SECONDS: u64 = 86_400;

/// Size limits applied to every pack, whether loaded from a directory or an archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackLimits {
    /// Largest accepted (normalized or uploaded) tar archive.
    pub max_archive_bytes: u64,
    /// Largest sum of the sizes of all files.
    pub max_unpacked_bytes: u64,
    /// Largest number of files.
    pub max_files: usize,
}

impl Default for PackLimits {
    fn default() -> Self {
        PackLimits {
            max_archive_bytes: DEFAULT_MAX_ARCHIVE_BYTES,
            max_unpacked_bytes: DEFAULT_MAX_UNPACKED_BYTES,
            max_files: DEFAULT_MAX_FILES,
        }
    }
}

/// One regular file of a pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackFile {
    /// Path relative to the pack root with `/` separators, e.g. `actions/greet.sh`.
    pub relative_path: String,
    /// Permission bits (`0o755`); setuid, setgid and sticky bits are dropped.
    pub mode: u32,
    pub contents: Vec<u8>,
}

/// A validated pack: its manifest, its actions and every file.
#[derive(Debug, Clone, PartialEq)]
pub struct Pack {
    pub pack_ref: String,
    pub label: String,
    pub description: String,
    pub version: String,
    pub tags: Vec<String>,
    /// Sorted by `action_ref`.
    pub actions: Vec<ActionDefinition>,
    /// From `runtimes/*.yaml`, sorted by `runtime_ref`.
    pub runtimes: Vec<crate::RuntimeDefinition>,
    /// Sorted by `relative_path`.
    pub files: Vec<PackFile>,
    /// Hex sha256 of the normalized archive ([`Pack::to_archive`]); equal for a directory and
    /// the archive built from it.
    pub sha256: String,
}

impl Pack {
    /// The normalized archive of the pack's files (what `build_pack_archive` produces).
    pub fn to_archive(&self) -> Result<Vec<u8>, PackError> {
        crate::archive::write_archive(&self.files, "")
    }

    /// The normalized archive with every path under `prefix` (e.g. `opt/attune/packs/hello`),
    /// ready for Docker's put_archive at `/`. Only the prefix's last directory gets an entry, so
    /// extracting it never changes the mode of existing parents such as `/opt`.
    pub fn to_archive_under(&self, prefix: &str) -> Result<Vec<u8>, PackError> {
        crate::archive::write_archive(&self.files, prefix)
    }

    /// The action with this ref.
    pub fn action(&self, action_ref: &str) -> Option<&ActionDefinition> {
        self.actions
            .iter()
            .find(|action| action.action_ref == action_ref)
    }

    /// The API view of this pack.
    pub fn to_view(&self, registered_at: String) -> PackView {
        PackView {
            pack_ref: self.pack_ref.clone(),
            label: self.label.clone(),
            description: self.description.clone(),
            version: self.version.clone(),
            actions: self
                .actions
                .iter()
                .map(|action| action.action_ref.clone())
                .collect(),
            registered_at,
        }
    }
}

/// A validated action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionDefinition {
    /// `<pack>.<name>`.
    pub action_ref: String,
    pub name: String,
    pub label: String,
    pub description: String,
    /// As written in the action file (`local-shell-script`, `python`, ...).
    pub runner_type: String,
    /// Parsed from `runner_type`.
    pub runtime: Runtime,
    /// As written, relative to `actions/`.
    pub entry_point: String,
    /// Relative to the pack root, normalized: `actions/greet.sh`.
    pub entry_point_path: String,
    /// A JSON Schema object (`type: object`); flat parameter maps are converted to it.
    pub parameters_schema: Value,
    /// Names of the parameters marked `secret: true`, sorted.
    pub secret_parameters: Vec<String>,
    pub parameter_delivery: ParameterDelivery,
    pub parameter_format: ParameterFormat,
    pub timeout_seconds: u64,
    pub container: Option<ContainerSpec>,
    pub enabled: bool,
    /// `isolation:`; `None` leaves the choice to the server.
    pub isolation: Option<Isolation>,
    /// `pool:` settings for pooled isolation.
    pub pool: Option<PoolSpec>,
    /// `idempotent: true`: safe to run again if its agent dies mid-run.
    pub idempotent: bool,
    /// `worker_selector:` labels a worker must carry to run it (no `container:`).
    #[serde(default)]
    pub worker_selector: std::collections::BTreeMap<String, String>,
    /// `runtime_version:`, a semver constraint on the worker's runtime version.
    #[serde(default)]
    pub runtime_version: Option<String>,
    /// `required_worker_runtimes:`, canonical runtime names a worker must also have.
    #[serde(default)]
    pub required_worker_runtimes: Vec<String>,
    /// The action file, relative to the pack root (`actions/greet.yaml`).
    pub metadata_file: String,
}

impl ActionDefinition {
    /// The pack part of the ref.
    pub fn pack_ref(&self) -> &str {
        self.action_ref
            .split_once('.')
            .map(|(pack_ref, _)| pack_ref)
            .unwrap_or_default()
    }

    /// The API view of this action.
    pub fn to_view(&self) -> ActionView {
        ActionView {
            action_ref: self.action_ref.clone(),
            pack: self.pack_ref().to_string(),
            label: self.label.clone(),
            description: self.description.clone(),
            runner_type: self.runner_type.clone(),
            entry_point: self.entry_point.clone(),
            parameters: self.parameters_schema.clone(),
            parameter_delivery: self.parameter_delivery,
            parameter_format: self.parameter_format,
            timeout: self.timeout_seconds,
            container: self.container.clone(),
            isolation: self.isolation,
            pool: self.pool.clone(),
            idempotent: self.idempotent,
        }
    }
}
