//! The label vocabulary on every container and volume Attune creates, so a controller finds
//! its own after a restart and leaves everyone else's alone.

/// Label marking every container Attune manages.
pub const LABEL_MANAGED: &str = "attune.managed";
/// Label naming the execution a container runs.
pub const LABEL_EXECUTION: &str = "attune.execution";
/// Label naming the controller that created a container.
pub const LABEL_CONTROLLER: &str = "attune.controller";
/// Label naming the agent id inside a container.
pub const LABEL_AGENT_ID: &str = "attune.agent-id";
/// Label carrying the agent's sha256 (on containers running it and volumes holding it).
pub const LABEL_AGENT_SHA256: &str = "attune.agent-sha256";
/// Label carrying a pack archive's sha256 on the volume holding its files.
pub const LABEL_PACK_SHA256: &str = "attune.pack-sha256";
/// Label naming what a helper container is for (e.g. `volume-fill`).
pub const LABEL_ROLE: &str = "attune.role";
/// Label naming how the agent reached a container (`volume` or `put-archive`).
pub const LABEL_AGENT_DELIVERY: &str = "attune.agent-delivery";
/// Label naming the warm pool a container belongs to.
pub const LABEL_POOL: &str = "attune.pool";
/// Label naming the pack of a warm pool container.
pub const LABEL_PACK: &str = "attune.pack";
