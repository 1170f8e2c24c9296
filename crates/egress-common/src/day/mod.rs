//! The day protocol: every write that makes a day visible or invisible, at the input
//! (egress-dump) and at the output (egress-sync), goes through this module.
//!
//! See `docs/protocol.md` for the state machine and its invariants.

pub mod lease;
