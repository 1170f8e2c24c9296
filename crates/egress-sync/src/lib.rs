//! `egress-sync`: mirror new and changed objects between two S3-compatible stores (or local
//! directories), verified.
//!
//! Decide, then do: [`store`] lists both sides, [`plan`] decides purely from the listings
//! and the copy records ([`object`], [`state`]) what to copy, skip or delete and why, and
//! [`execute`] runs a bounded pool of [`transfer`]s.

pub mod config;
pub mod execute;
pub mod gate;
pub mod object;
pub mod plan;
pub mod run;
pub mod state;
pub mod store;
pub mod transfer;
pub mod verify;

pub use config::Args;
pub use run::run;
