//! `_manifest.json` (format and types shared with egress-sync, in egress-common).

pub use egress_common::manifest::*;
