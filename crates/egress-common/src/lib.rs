//! Shared building blocks of `egress-dump` and `egress-sync`: where data goes (locations),
//! how the S3 client is built, how runs log, and how failures map to exit codes.

pub mod cleanup;
pub mod cli;
pub mod envlist;
pub mod exit;
pub mod location;
pub mod logging;
pub mod manifest;
pub mod memory;
pub mod progress;
pub mod s3;
pub mod secret;
pub mod termination;
pub mod units;

pub use exit::{ExitCode, Failure, ResultExt};
pub use location::Location;
pub use secret::Secret;
