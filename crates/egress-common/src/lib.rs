//! Shared building blocks of `egress-dump` and `egress-sync`: the object store both write
//! through, where data goes (locations), how runs log and end, and the errors `main` turns
//! into exit codes.

pub mod check;
pub mod cleanup;
pub mod cli;
pub mod envlist;
pub mod error;
pub mod lease;
pub mod location;
pub mod logging;
pub mod manifest;
pub mod memory;
pub mod metrics;
pub mod progress;
pub mod secret;
pub mod store;
pub mod termination;
pub mod units;

pub use error::{ConfigError, ExitCode};
pub use location::Location;
pub use secret::Secret;
pub use store::{ObjectStore, Store, StoreError};
