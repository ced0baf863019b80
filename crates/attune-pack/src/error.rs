//! Typed errors of pack loading, building and validation.

use std::path::PathBuf;

/// Why a pack (a directory or an uploaded archive) was rejected.
///
/// File names in messages are relative to the pack root (`actions/greet.yaml`).
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// Reading the pack directory failed.
    #[error("read {path}: {source}", path = path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The pack has no `pack.yaml` at its root.
    #[error("pack.yaml not found at the root of the pack")]
    MissingManifest,

    /// A YAML file does not parse or does not have the expected shape.
    #[error("{file}{}: {message}", line.map(|line| format!(" line {line}")).unwrap_or_default())]
    Yaml {
        file: String,
        /// 1-based line of the error, when the parser knows it.
        line: Option<usize>,
        message: String,
    },

    /// A manifest field has a value that is not allowed.
    #[error("{file}: {field}: {reason}")]
    InvalidField {
        file: String,
        field: String,
        reason: String,
    },

    /// The pack's `ref` is not lowercase `[a-z0-9_-]`.
    #[error("{file}: invalid pack ref {value:?}: {reason}")]
    InvalidPackRef {
        file: String,
        value: String,
        reason: String,
    },

    /// An action's `ref` is not `<pack>.<name>` for this pack.
    #[error("{file}: invalid action ref {value:?}: {reason}")]
    InvalidActionRef {
        file: String,
        value: String,
        reason: String,
    },

    /// Two action files define the same ref.
    #[error("action {action_ref} is defined twice: in {first_file} and {second_file}")]
    DuplicateAction {
        action_ref: String,
        first_file: String,
        second_file: String,
    },

    /// `runner_type` names no known runtime.
    #[error(
        "{file}: runner_type {value:?} is not a known runtime (known: shell, python, node, ruby, go, java, perl, r, native, and aliases such as local-shell-script, python-script, nodejs)"
    )]
    UnknownRuntime { file: String, value: String },

    /// The entry point is absent, absolute, escapes the pack or names a missing file.
    #[error("{file}: entry_point {entry_point:?}: {reason}")]
    InvalidEntryPoint {
        file: String,
        entry_point: String,
        reason: String,
    },

    /// The action's `parameters` is not a usable JSON Schema.
    #[error("{file}: parameters: {reason}")]
    InvalidParameterSchema { file: String, reason: String },

    /// The action's `container` section is malformed.
    #[error("{file}: container: {reason}")]
    InvalidContainer { file: String, reason: String },

    /// The action's container image is not a valid image reference.
    #[error("{file}: container image {reference:?} is not a valid image reference: {reason}")]
    InvalidImageReference {
        file: String,
        reference: String,
        reason: String,
    },

    /// The archive is bigger than the configured limit.
    #[error("pack archive is {size} bytes, more than the limit of {limit} bytes")]
    TooLarge { size: u64, limit: u64 },

    /// The pack's files add up to more than the configured limit.
    #[error("pack files add up to more than {limit} bytes (at least {size})")]
    UnpackedTooLarge { size: u64, limit: u64 },

    /// The pack has more files than the configured limit.
    #[error("pack has more than {limit} files")]
    TooManyFiles { limit: usize },

    /// The uploaded bytes are not an uncompressed tar archive.
    #[error("upload is not a tar archive: {0}")]
    NotAnArchive(String),

    /// An archive entry or a file in the pack directory cannot be accepted safely.
    #[error("{path}: {reason}")]
    UnsafeEntry { path: String, reason: String },
}
