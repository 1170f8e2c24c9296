//! How an attempt at the day fails: typed where the run decides on it (a recovery
//! conflict starts the day again), and the closing `Failed.` line.

use tracing::error;

use crate::catalog::ResolvedTable;
use crate::pg::{DbError, DbErrorKind};
use crate::pipeline::TableError;
use crate::report::TableReport;
use crate::workers::Outcome;

/// Why an attempt at the day failed, typed where the run decides on it: a recovery
/// conflict (a database failure of that kind, also inside a table's) starts the day again.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    /// The database, outside any one table (connecting, locking, the snapshot).
    #[error("{0}")]
    Db(#[from] DbError),
    /// Tables failed.
    #[error("{0}")]
    Tables(#[from] TablesFailed),
    /// Anything else: the store, the manifest, the configuration.
    #[error("{0}")]
    Other(#[from] anyhow::Error),
}

impl From<egress_store::StoreError> for AttemptError {
    fn from(e: egress_store::StoreError) -> Self {
        AttemptError::Other(e.into())
    }
}

impl From<egress_common::ConfigError> for AttemptError {
    fn from(e: egress_common::ConfigError) -> Self {
        AttemptError::Other(e.into())
    }
}

impl AttemptError {
    /// The database failure's kind, when the database failed.
    pub fn db_kind(&self) -> Option<DbErrorKind> {
        match self {
            AttemptError::Db(e) => Some(e.kind),
            AttemptError::Tables(t) => t.first.db_kind(),
            AttemptError::Other(_) => None,
        }
    }

    /// The closing `Failed.` line, when tables failed.
    pub fn log_tables(&self) {
        if let AttemptError::Tables(t) = self {
            t.log();
        }
    }

    /// The error, for `main` (each typed error in the chain, for the exit code).
    pub fn into_anyhow(self) -> anyhow::Error {
        match self {
            AttemptError::Db(e) => e.into(),
            AttemptError::Tables(e) => e.into(),
            AttemptError::Other(e) => e,
        }
    }
}

/// Tables failed: how many, which, and the first failure (what a retry decides on).
#[derive(Debug, thiserror::Error)]
#[error("{summary}")]
pub struct TablesFailed {
    summary: String,
    #[source]
    first: TableError,
    tally: Box<Tally>,
}

/// The reports, or (when any table failed) an error naming them all: no manifest then,
/// so the day stays visibly incomplete. The closing `Failed.` line is the caller's
/// ([`TablesFailed::log`]), once it knows the run ends (a recovery conflict may start the
/// day again).
pub(crate) fn all_succeeded(
    tables: &[ResolvedTable],
    outcomes: Vec<Outcome>,
) -> Result<Vec<TableReport>, TablesFailed> {
    let mut reports = Vec::new();
    let mut failed: Vec<(String, TableError)> = Vec::new();
    let mut skipped: Vec<String> = Vec::new();
    for (table, outcome) in tables.iter().zip(outcomes) {
        match outcome {
            Outcome::Done(report) => reports.push(*report),
            Outcome::Failed(e) => failed.push((table.requested.file_stem(), e)),
            Outcome::NotAttempted => skipped.push(table.requested.file_stem()),
        }
    }
    if failed.is_empty() {
        return Ok(reports);
    }
    let ok: Vec<&str> = reports.iter().map(|r| r.table.as_str()).collect();
    let bad: Vec<String> = failed.iter().map(|(t, _)| t.clone()).collect();
    let summary = format!(
        "{} table(s) failed ({}); first failure",
        bad.len(),
        bad.join(", ")
    );
    let tally = Box::new(Tally {
        succeeded: ok.join(" "),
        failed: bad.join(" "),
        not_attempted: skipped.join(" "),
        dumped: ok.len(),
        of: ok.len() + bad.len() + skipped.len(),
    });
    // The first failure is what the caller retries on; its text names its table.
    let (_, first) = failed.swap_remove(0);
    Err(TablesFailed {
        summary,
        first,
        tally,
    })
}

/// Which tables ended how, for the closing `Failed.` line.
#[derive(Debug)]
pub struct Tally {
    succeeded: String,
    failed: String,
    not_attempted: String,
    dumped: usize,
    of: usize,
}

impl TablesFailed {
    /// The run's closing line: which tables succeeded, failed, were not attempted.
    pub fn log(&self) {
        let t = &self.tally;
        error!(
            succeeded = %t.succeeded,
            failed = %t.failed,
            not_attempted = %t.not_attempted,
            "Failed. {} of {} tables dumped.",
            t.dumped,
            t.of
        );
    }
}
