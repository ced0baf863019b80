//! Attune server.
