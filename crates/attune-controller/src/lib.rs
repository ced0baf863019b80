//! `attune-controller`: runs executions in containers on one Docker host. It is the only caller
//! of mutating Docker operations and depends on the engine only through
//! [`attune_docker::DockerOps`], on the broker only through [`attune_broker::AgentChannel`], and
//! on Postgres only through [`attune_store::Store`].
//!
//! Modules: [`execution`] (one execution in one container, and warm pools), [`delivery`] (agent
//! and pack files by shared volume or put_archive), [`images`] (pull policy, one pull per
//! image), [`limits`] (resources and allow-lists), [`lifecycle`] (the engine's container
//! events), [`signals`] (in-process wakeups of supervisors), [`supervision`] (the deadlines of one
//! execution as a state machine), [`events`] (agents' reports into
//! the database), [`scheduler`] (claims work, reconciles at start and periodically),
//! [`membership`] (registration, heartbeats, take-over of lost controllers, cancels),
//! [`identity`] (each agent's event key, handed over on its stdin).

pub mod delivery;
pub mod events;
pub mod execution;
pub mod identity;
pub mod images;
pub mod lifecycle;
pub mod limits;
pub mod membership;
pub mod scheduler;
pub mod signals;
pub mod supervision;
pub mod workers;

pub use execution::{AgentBinary, AgentBinaryError, Controller, ControllerSettings};
