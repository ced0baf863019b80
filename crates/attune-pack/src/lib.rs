//! Attune pack format.
