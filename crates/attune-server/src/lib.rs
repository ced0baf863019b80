//! `attune-server`: composes the API, the scheduler and the container controller into one
//! process. It owns the settings ([`config`]), the wiring and graceful shutdown ([`app`]) and
//! logging ([`telemetry`]); the work itself lives in the `attune-*` crates it composes.

pub mod app;
pub mod config;
pub mod telemetry;
