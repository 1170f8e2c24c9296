//! `egress-sync`: mirror an S3-compatible store (or a local directory) into another,
//! copying what is new or changed, streamed and verified.
//!
//! list -> plan -> transfer: [`march`] walks the two sorted listings side by side,
//! [`decide`] settles each key purely from them, and [`pool`] carries the copies out
//! ([`transfer`]) as the march goes; [`mirror`] is the run as named steps, [`verify`] the
//! other mode.

pub mod config;
pub mod decide;
pub mod iceberg;
pub mod manifests;
pub mod march;
pub mod mirror;
pub mod output;
pub mod pool;
pub mod preflight;
pub mod report;
pub mod settings;
pub mod sides;
pub mod transfer;
pub mod uploads;
pub mod verify;

pub use config::Args;
pub use settings::Settings;
