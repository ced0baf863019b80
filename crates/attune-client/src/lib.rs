//! A typed client of the Attune server's HTTP API, the one both the `attune` CLI and the test
//! kit (`attune-testkit`'s `TestClient`) speak through.
//!
//! [`ApiClient`] has one method per endpoint (packs, actions, executions with their logs,
//! waits and cancels, pools, containers, `/readyz` and `/livez`), typed with the API bodies
//! of [`attune_protocol::api`]. A failed call is a [`ClientError`]: an error the server
//! answered keeps its HTTP status and, when the body is one, the server's
//! [`ErrorBody`](attune_protocol::api::ErrorBody), so callers branch on
//! [`ClientError::status`] and [`ClientError::error_body`] rather than on message text.
//!
//! Raw calls: tests that check refusals need the response itself, whatever its status.
//! [`ApiClient::request`] builds a `reqwest::RequestBuilder` for a path under the base URL,
//! with this client's connection pool and timeouts, and leaves sending and reading it to the
//! caller; the test kit keeps reqwest as a dependency only to name the `reqwest::Response`
//! those calls return.
//!
//! *Invariant:* speaks only HTTP; of our crates it depends on attune-protocol alone, never on
//! a server-side one (`crates/attune-server/tests/architecture.rs` checks).

mod client;
mod error;

pub use client::{ApiClient, ExecutionFilter, Health, TAR_CONTENT_TYPE};
pub use error::ClientError;
