//! Attune's pack format: loading a pack from a directory or an uploaded tar, validating its
//! manifest and actions, building the deterministic archive the CLI uploads, and checking
//! execution parameters against an action's JSON Schema.
//!
//! A pack is a directory with `pack.yaml` (ref, label, description, version, tags) and
//! `actions/<name>.yaml` files, each naming an entry point script beside it in `actions/`, and
//! optionally the container it runs in (image, resources, capabilities) and how containers are
//! shared (`isolation: pooled` with `pool:` settings). `runtimes/<name>.yaml` files define the
//! pack's runtimes in upstream Attune's runtime format ([`RuntimeDefinition`]).
//! [`load_pack_dir`] and [`load_pack_archive`] share one validation path, so a directory and the
//! archive built from it with [`build_pack_archive`] give the same [`Pack`] (same `sha256`).

mod archive;
mod container;
mod error;
mod load;
mod manifest;
mod model;
mod parameters;
mod pool;
mod resources;
pub mod runtime_version;
mod runtimes;
pub mod stored;
mod unique_keys;

pub use container::{validate_image_reference, validate_workdir};
pub use error::PackError;
pub use load::{
    build_pack_archive, load_pack_archive, load_pack_dir, load_pack_dir_with_limits, validate_name,
    ACTIONS_DIRECTORY, MAX_NAME_LENGTH, PACK_MANIFEST,
};
pub use model::{
    ActionDefinition, Pack, PackFile, PackLimits, DEFAULT_MAX_ARCHIVE_BYTES, DEFAULT_MAX_FILES,
    DEFAULT_MAX_UNPACKED_BYTES, DEFAULT_TIMEOUT_SECONDS, MAX_TIMEOUT_SECONDS,
};
pub use parameters::{
    redact_secret_defaults, redact_secrets, secret_parameter_names, validate_parameters,
    ParameterError, ParameterFailure, ParameterValidator, REDACTED,
};
pub use pool::{MAX_IDLE_TIMEOUT_SECONDS, MAX_POOL_SIZE, MIN_IDLE_TIMEOUT_SECONDS};
pub use resources::{
    normalize_capability, parse_memory_quantity, ResourceLimits, LINUX_CAPABILITIES, MAX_CPUS,
    MAX_MEMORY_BYTES, MAX_PIDS, MIN_CPUS, MIN_MEMORY_BYTES, MIN_PIDS,
};
pub use runtimes::{RuntimeDefinition, RUNTIMES_DIRECTORY};
