//! What `egress-dump` and `egress-sync` share above the object store ([`egress_store`]):
//! where data goes (locations), the formats of a day (manifest, leases), how a run is
//! configured, logged, measured and ended, and the errors `main` turns into exit codes.

pub mod cli;
pub mod day;
pub mod envlist;
pub mod error;
pub mod location;
pub mod logging;
pub mod manifest;
pub mod memory;
pub mod metrics;
pub mod preflight;
pub mod progress;
pub(crate) mod signals;
pub mod termination;
pub mod units;

pub use error::{ConfigError, ExitCode};
pub use location::Location;
