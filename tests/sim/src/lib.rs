//! The day protocol of egress-dump and egress-sync, run under a deterministic simulation
//! with injected faults (after FoundationDB's simulation and TigerBeetle's VOPR).
//!
//! A seed draws a [`schedule::Schedule`]: dump runs, the pods of shared days (duplicates
//! of an index, late coordinators, replacements), mirror runs, a writer changing tables,
//! another tool changing objects; kills at any moment, pauses past the lease; each
//! process's store requests slowed, refused, or their replies lost after they took effect,
//! and its clock skewed. The [`runner`] runs the programs' real day steps against
//! in-memory stores on one virtual-time runtime, so a seed replays exactly; after every
//! change to a store, and once every run ended, [`check`] holds the invariants (the
//! Iceberg tables' in [`tables`]).

pub mod check;
pub mod runner;
pub mod schedule;
pub mod source;
pub mod store;
pub mod tables;
pub mod world;

pub use runner::{run, Outcome};
pub use schedule::Schedule;
