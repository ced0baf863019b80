//! The `attune` command-line client: registers packs, lists actions, runs executions and follows
//! their logs through the Attune server's HTTP API.
//!
//! The binary's `main` only parses arguments and calls [`run`]; everything else lives here so
//! tests can drive whole commands against an in-process HTTP server and capture their output.

pub mod cli;
pub mod client;
pub mod commands;
pub mod credentials;
pub mod format;
pub mod output;
pub mod parameters;

pub use commands::run;
