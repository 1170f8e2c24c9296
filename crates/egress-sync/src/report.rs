//! What a run did, counted as it goes, and the lines that tell it.

use std::collections::BTreeMap;

use egress_common::manifest;
use egress_common::metrics::Family;
use egress_common::units::{human_bytes, human_rate};

/// Failures named in the final error line (the log has every one).
const NAMED_FAILURES: usize = 10;

/// A run in which objects failed: one line, and the report (for the run's metrics).
#[derive(Debug, thiserror::Error)]
#[error("{line}")]
pub struct Failed {
    /// What the run did.
    pub report: Report,
    /// The error line.
    pub line: String,
}

/// The mirror's metrics: objects per action and bytes copied, from the run's report (also
/// of a run that failed: its failures are the point).
pub fn metrics(outcome: Result<&Report, &anyhow::Error>) -> Vec<Family> {
    let report = match outcome {
        Ok(report) => report,
        Err(e) => match egress_common::error::find::<Failed>(e) {
            Some(failed) => &failed.report,
            None => return Vec::new(),
        },
    };
    let actions = [
        ("copied", report.copied),
        ("skipped", report.skipped),
        ("deleted", report.deleted),
        ("failed", report.failed),
        ("vanished", report.vanished),
        ("unlisted", report.unlisted),
    ];
    vec![
        Family::by(
            "egress_sync_objects",
            "Objects per action in the last run.",
            "action",
            actions.map(|(a, n)| (a.to_string(), n as f64)),
        ),
        Family::single(
            "egress_sync_bytes_copied",
            "Bytes copied by the last run.",
            report.bytes_copied as f64,
        ),
        Family::single(
            "egress_sync_folders_held",
            "Days the last run left without their manifest at the output on purpose (a filter leaves part of them out, or they changed at the input meanwhile).",
            report.held_days as f64,
        ),
    ]
}

/// Counts, bytes and failures of a run.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Objects copied.
    pub copied: u64,
    /// Objects left alone (the same on both sides).
    pub skipped: u64,
    /// Of those, the ones only the output's metadata could decide (one HEAD each).
    pub checked: u64,
    /// Objects deleted (`--remove`).
    pub deleted: u64,
    /// Objects gone from the input between its listing and their copy.
    pub vanished: u64,
    /// Objects that failed every attempt.
    pub failed: u64,
    /// Objects in a complete day that its manifest does not list (not copied into it).
    pub unlisted: u64,
    /// Days left without their manifest at the output, with a warning: a filter leaves
    /// part of them out, or they changed at the input during the run.
    pub held_days: u64,
    /// The first failures, with their causes.
    pub failures: Vec<(String, String)>,
    /// Folders holding a failed object (their manifests are not copied), with how many.
    pub failed_folders: BTreeMap<String, u64>,
    /// Bytes copied.
    pub bytes_copied: u64,
    /// Bytes the run decided to copy.
    pub planned_bytes: u64,
    /// Objects the run decided to copy.
    pub planned_copies: u64,
    /// Objects the run decided to delete (dry run).
    pub planned_deletes: u64,
    /// Wall time of the transfers, in seconds.
    pub seconds: f64,
}

impl Report {
    /// Record a failure of `key`.
    pub fn fail(&mut self, key: &str, cause: String) {
        self.failed += 1;
        *self
            .failed_folders
            .entry(manifest::folder_of(key).to_string())
            .or_default() += 1;
        if self.failures.len() < NAMED_FAILURES {
            self.failures.push((key.to_string(), cause));
        }
    }

    /// Take back the failures of `folder`: they were not the run's (its day changed at the
    /// input meanwhile).
    pub fn forgive(&mut self, folder: &str) {
        let count = self.failed_folders.remove(folder).unwrap_or(0);
        self.failed = self.failed.saturating_sub(count);
        self.failures
            .retain(|(key, _)| manifest::folder_of(key) != folder);
    }

    /// The original tool's closing line: `Total: 17.38 MiB, Transferred: 17.38 MiB, Speed: 18.77 MiB/s`.
    pub fn total_line(&self) -> String {
        format!(
            "Total: {}, Transferred: {}, Speed: {}",
            human_bytes(self.planned_bytes),
            human_bytes(self.bytes_copied),
            human_rate(self.bytes_copied, self.seconds)
        )
    }

    /// The run's error when anything failed: how many, and the first causes.
    pub fn failure_line(&self) -> Option<String> {
        if self.failed == 0 {
            return None;
        }
        let named: Vec<String> = self
            .failures
            .iter()
            .map(|(k, e)| format!("{k} ({e})"))
            .collect();
        let more = self.failed.saturating_sub(named.len() as u64);
        let tail = if more > 0 {
            format!("; and {more} more (see the log)")
        } else {
            String::new()
        };
        Some(format!(
            "{} object(s) failed: {}{tail}",
            self.failed,
            named.join("; ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_counted_all_and_named_first() {
        let mut r = Report::default();
        for i in 0..12 {
            r.fail(&format!("d/{i}"), "boom".into());
        }
        assert_eq!(r.failed, 12);
        let line = r.failure_line().unwrap();
        assert!(
            line.starts_with("12 object(s) failed: d/0 (boom)"),
            "{line}"
        );
        assert!(line.ends_with("and 2 more (see the log)"), "{line}");
        assert!(r.failed_folders.contains_key("d"));
        let mut two = Report::default();
        two.fail("d/a", "changed".into());
        two.fail("e/x", "bad".into());
        two.forgive("d");
        assert_eq!(
            (two.failed, two.failures.len()),
            (1, 1),
            "only e's failure stays"
        );
        assert_eq!(two.failure_line().unwrap(), "1 object(s) failed: e/x (bad)");
        assert_eq!(Report::default().failure_line(), None);
        r.planned_bytes = 2048;
        assert!(r
            .total_line()
            .starts_with("Total: 2.00 KiB, Transferred: 0 B"));
    }
}
