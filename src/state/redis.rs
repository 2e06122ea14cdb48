//! The Redis state backend (several replicas).
