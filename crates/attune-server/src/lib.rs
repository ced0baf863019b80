//! `attune-server`: the HTTP API, the scheduler and the container controller in one process.
//!
//! Modules: [`config`] (layered settings), [`db`] (Postgres), [`broker`] (RabbitMQ),
//! [`events`] (agents' reports into the database), [`signals`] (in-process wakeups),
//! [`docker`] (engine operations behind a trait), [`controller`] (one execution in one
//! container), [`delivery`] (agent and pack files by shared volume or put_archive),
//! [`lifecycle`] (the engine's container events), [`limits`] (resources and allow-lists),
//! [`scheduler`] (claims work, reconciles), [`api`] (axum routes), [`app`] (wiring and graceful
//! shutdown), [`telemetry`] (logging).

pub mod api;
pub mod app;
pub mod broker;
pub mod config;
pub mod controller;
pub mod db;
pub mod delivery;
pub mod docker;
pub mod events;
pub mod images;
pub mod lifecycle;
pub mod limits;
pub mod scheduler;
pub mod signals;
pub mod status_feed;
pub mod telemetry;
pub mod testing;
