//! What a run reports: each table's figures (the manifest's, the closing line's) and the
//! metrics a successful run publishes.

use egress_common::metrics::Family;

use crate::gzip::CompressStats;
use crate::upload::Committed;

/// What one table's dump produced.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TableReport {
    /// Table as listed.
    pub table: String,
    /// Where it went (URL or path, for logs).
    pub target: String,
    /// Data rows.
    pub rows: u64,
    /// Compression statistics and checksums.
    pub stats: CompressStats,
    /// The object as stored.
    pub committed: Committed,
    /// Wall time.
    pub seconds: f64,
    /// How many chunks it was read in (1: one `COPY`).
    pub chunks: usize,
    /// Which of the table's objects, when pods shared it.
    #[serde(default)]
    pub piece: Option<egress_common::manifest::PieceOf>,
}

/// The per-table metrics of a successful run (figures equal to the manifest's); a failed
/// run reports none, so the last good day's figures stay.
pub fn metrics(outcome: Result<&Vec<TableReport>, &anyhow::Error>) -> Vec<Family> {
    let Ok(reports) = outcome else {
        return Vec::new();
    };
    // A table the pods shared has a report per piece: one series per table.
    let per_table = |f: fn(&TableReport) -> f64, join: fn(f64, f64) -> f64| {
        let mut series: Vec<(String, f64)> = Vec::new();
        for r in reports {
            match series.iter_mut().find(|(t, _)| *t == r.table) {
                Some((_, v)) => *v = join(*v, f(r)),
                None => series.push((r.table.clone(), f(r))),
            }
        }
        series
    };
    let sum = |a: f64, b: f64| a + b;
    vec![
        Family::by(
            "egress_dump_rows",
            "Rows dumped per table by the last successful run.",
            "table",
            per_table(|r| r.rows as f64, sum),
        ),
        Family::by(
            "egress_dump_csv_bytes",
            "CSV bytes (before compression) per table in the last successful run.",
            "table",
            per_table(|r| r.stats.uncompressed_bytes as f64, sum),
        ),
        Family::by(
            "egress_dump_object_bytes",
            "Object bytes (compressed, as stored) per table in the last successful run.",
            "table",
            per_table(|r| r.stats.compressed_bytes as f64, sum),
        ),
        Family::by(
            "egress_dump_table_seconds",
            "Seconds each table took in the last successful run.",
            "table",
            per_table(|r| r.seconds, f64::max),
        ),
    ]
}
