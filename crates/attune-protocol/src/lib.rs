//! Every wire type shared by the Attune server, the in-container agent and the CLI.
//!
//! This crate depends on serde (and on hmac and sha2 for [`signing`], the one definition of how
//! agents sign their events). Messages between the controller and agents carry
//! [`PROTOCOL_VERSION`]; agents in warm pools or baked into old images lag behind the server, so
//! every message type ignores unknown fields and new fields are added with `#[serde(default)]`.

pub mod agent;
pub mod api;
pub mod output;
pub mod queues;
pub mod runtime;
pub mod signing;
pub mod worker;

pub use agent::*;
pub use runtime::*;

/// Version of the agent ↔ controller protocol.
///
/// History:
/// - 1: register, job, running, log chunk, finished, heartbeat, cancel.
pub const PROTOCOL_VERSION: u32 = 1;

/// Identifier of an execution (a Postgres `bigserial`).
pub type ExecutionId = i64;
