//! Names of the RabbitMQ queues and the environment variables that wire an agent to them.

/// Durable queue the server consumes: every [`crate::AgentEvent`] from every agent.
pub const AGENT_EVENTS_QUEUE: &str = "attune.agent.events";

/// Prefix of an agent's own job queue; the full name is `attune.agent.<agent_id>.jobs`.
pub const AGENT_QUEUE_PREFIX: &str = "attune.agent.";

/// How long an agent's job queue lives unused, in milliseconds (`x-expires`): the controller
/// and the agent declare it with the same arguments.
pub const AGENT_QUEUE_EXPIRES_MS: u32 = 600_000;

/// How many jobs a worker agent runs at once (`ATTUNE_AGENT_CONCURRENCY`).
pub const ENV_AGENT_CONCURRENCY: &str = "ATTUNE_AGENT_CONCURRENCY";

/// The events queue of one controller: the agents it starts report there, and only it
/// consumes it (so no controller sees another's agents' events).
pub fn controller_events_queue(controller_id: &str) -> String {
    format!("attune.controller.{controller_id}.events")
}

/// The exchange agents publish their events to: a durable fanout exchange named like the
/// events queue and bound to it alone, declared by the controller that consumes the queue.
/// Agents publish nowhere else, so an agent's broker account needs write permission on this
/// one exchange only (publishing through the default exchange would need `amq.default`, which
/// reaches every queue).
pub fn events_exchange(events_queue: &str) -> String {
    events_queue.to_string()
}

/// Type of every events queue (`x-queue-type`): a quorum queue, which counts deliveries.
pub const EVENTS_QUEUE_TYPE: &str = "quorum";

/// `x-delivery-limit` of every events queue: an event nacked (or returned by a lost channel)
/// this many times is dead-lettered at its next return, so it is delivered at most
/// `EVENTS_DELIVERY_LIMIT + 1` times and never loops.
pub const EVENTS_DELIVERY_LIMIT: u32 = 10;

/// The dead-letter queue of an events queue: events that could not be applied within the
/// delivery limit (or were rejected as malformed) wait there for an operator. They reach it
/// through the default exchange (`x-dead-letter-exchange = ""`) with this queue's name as
/// `x-dead-letter-routing-key`.
pub fn dead_letter_queue(events_queue: &str) -> String {
    format!("{events_queue}.dead")
}

/// The arguments an events queue is declared with, by the controller and by agents alike (the
/// broker refuses a declaration whose arguments differ): `x-queue-type`, `x-delivery-limit`,
/// `x-dead-letter-exchange`, `x-dead-letter-routing-key`.
pub fn events_queue_arguments(events_queue: &str) -> Vec<(&'static str, QueueArgument)> {
    vec![
        (
            "x-queue-type",
            QueueArgument::Text(EVENTS_QUEUE_TYPE.to_string()),
        ),
        (
            "x-delivery-limit",
            QueueArgument::Integer(i64::from(EVENTS_DELIVERY_LIMIT)),
        ),
        ("x-dead-letter-exchange", QueueArgument::Text(String::new())),
        (
            "x-dead-letter-routing-key",
            QueueArgument::Text(dead_letter_queue(events_queue)),
        ),
    ]
}

/// A queue argument's value, for the AMQP client of each side to encode (a text as a long
/// string, an integer as a signed 64-bit integer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueArgument {
    Text(String),
    Integer(i64),
}

/// The job queue of one agent.
pub fn agent_job_queue(agent_id: &str) -> String {
    format!("{AGENT_QUEUE_PREFIX}{agent_id}.jobs")
}

/// Environment variable naming the queue an agent sends its events to (default
/// [`AGENT_EVENTS_QUEUE`]); servers sharing a broker use separate queues.
pub const ENV_AGENT_EVENTS_QUEUE: &str = "ATTUNE_AGENT_EVENTS_QUEUE";
/// Environment variable naming the AMQP URL an agent connects to.
pub const ENV_MESSAGE_QUEUE_URL: &str = "ATTUNE_AGENT_MQ_URL";
/// Environment variable holding the agent's id (also its queue's suffix).
pub const ENV_AGENT_ID: &str = "ATTUNE_AGENT_ID";
/// Environment variable: `oneshot` (run one job, then exit) or `worker` (serve until stopped).
pub const ENV_AGENT_MODE: &str = "ATTUNE_AGENT_MODE";
/// Environment variable naming the container image the agent runs in (for messages).
pub const ENV_AGENT_IMAGE: &str = "ATTUNE_AGENT_IMAGE";
/// Environment variable overriding runtime detection (`python,shell`).
pub const ENV_WORKER_RUNTIMES: &str = "ATTUNE_WORKER_RUNTIMES";
/// Environment variable naming the directory where the agent creates work directories.
pub const ENV_AGENT_WORKDIR: &str = "ATTUNE_AGENT_WORKDIR";
/// Environment variable (`1`) telling a worker agent that its container is its own: between
/// two jobs it kills every process but the container's init and itself, so nothing a job left
/// running (a `setsid` child) survives into the next. The controller sets it for warm
/// containers; an agent on a shared host never gets it.
pub const ENV_AGENT_SWEEP_PROCESSES: &str = "ATTUNE_AGENT_SWEEP_PROCESSES";

/// Environment variable naming the directory where the agent keeps lazily built pack
/// environments (venvs, node_modules), shared between containers of one host.
pub const ENV_AGENT_ENV_CACHE: &str = "ATTUNE_AGENT_ENV_CACHE";
/// Environment variable holding the image id (`sha256:...`) the agent runs in; pack
/// environments are keyed by it.
pub const ENV_AGENT_IMAGE_ID: &str = "ATTUNE_AGENT_IMAGE_ID";
/// Where the controller mounts the shared environments volume.
pub const ENVIRONMENTS_DIR_IN_CONTAINER: &str = "/opt/attune/envs";

/// Where the controller puts the agent binary inside a container.
pub const AGENT_PATH_IN_CONTAINER: &str = "/opt/attune/bin/attune-agent";
/// Where the controller puts pack files inside a container: `<dir>/<pack_ref>/`.
pub const PACKS_DIR_IN_CONTAINER: &str = "/opt/attune/packs";
/// The writable work area every container gets (a tmpfs any user may write): the agent's
/// per-execution directories, and the actions' HOME and TMPDIR.
pub const WORK_AREA_IN_CONTAINER: &str = "/opt/attune/work";
