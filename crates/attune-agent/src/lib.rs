//! The Attune agent: a static binary injected into any container image that takes jobs from
//! RabbitMQ, runs each action's entry point with the image's own interpreter, streams its output
//! and reports the outcome.
//!
//! Modules, from the outside in: [`entry`] (what the binary does), [`config`] (flags and
//! environment), [`worker`] (a long-lived worker: enroll, then serve) with
//! [`worker_config`] (its settings), [`api`] (its HTTP client) and [`packs`] (its pack files by
//! digest), [`agent`] (the service loop), [`mq`] (broker wiring), [`runner`] (one job end
//! to end), [`environment`] (pack venvs and node_modules, built once and reused), [`delivery`]
//! (parameters), [`output`] (capture and live logs), [`mask`] (secret values out of the output), [`process`] (process groups),
//! [`exit_reason`] (what exit codes 126 and 127 mean), [`detect`] and [`hints`] (interpreters in
//! the image), [`secrets`] (broker URL and event key from stdin, out of the actions' reach).

pub mod agent;
pub mod api;
pub mod config;
pub mod delivery;
pub mod detect;
pub mod entry;
pub mod environment;
pub mod exit_reason;
pub mod hints;
pub mod mask;
pub mod mq;
pub mod output;
pub mod packs;
pub mod process;
pub mod runner;
pub mod secrets;
pub mod worker;
pub mod worker_config;

/// Where the runner and the service loop send events; the publisher (or a test) receives them.
pub type EventSender = tokio::sync::mpsc::UnboundedSender<attune_protocol::AgentEvent>;
