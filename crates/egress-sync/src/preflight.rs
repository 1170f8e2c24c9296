//! `egress-sync --check`: the input checked as a reader (credentials, bucket, listing,
//! a ranged GET, `HEAD ?partNumber`), the output as a writer (everything a mirror does
//! there, under a temporary key it removes).

use egress_common::preflight::{self, Finding, Status, Use};

use crate::config::Args;
use crate::sides::{self, Side};

/// Every finding for both sides (a side whose flags are wrong is one finding).
pub async fn run(args: &Args) -> Vec<Finding> {
    let mut lines = Vec::new();
    for (side, usage) in [(Side::Input, Use::Read), (Side::Output, Use::Write)] {
        let opened = match sides::side_settings(side, args) {
            Ok(settings) => sides::open_unchecked(&settings, args.common.local()).await,
            Err(e) => Err(e.into()),
        };
        match opened {
            Ok(store) => lines.extend(preflight::check_store(&*store, side.label(), usage).await),
            Err(e) => lines.push(Finding {
                side: side.label().to_string(),
                capability: "configuration",
                status: Status::Fail,
                detail: egress_common::error::one_line(&e),
            }),
        }
    }
    lines
}
