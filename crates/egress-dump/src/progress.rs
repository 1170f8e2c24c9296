//! Live progress: counters the pipeline stages bump, and the status line drawn from them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use egress_common::progress::Line;

/// Counters the pipeline stages bump as data flows.
#[derive(Debug, Default)]
pub struct Counters {
    rows: AtomicU64,
    raw_bytes: AtomicU64,
    compressed_bytes: AtomicU64,
}

impl Counters {
    /// Count rows and CSV bytes read from the database.
    pub fn add_read(&self, rows: u64, bytes: u64) {
        self.rows.fetch_add(rows, Ordering::Relaxed);
        self.raw_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
    /// Count gzip bytes produced.
    pub fn add_compressed(&self, bytes: u64) {
        self.compressed_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
    fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.rows.load(Ordering::Relaxed),
            self.raw_bytes.load(Ordering::Relaxed),
            self.compressed_bytes.load(Ordering::Relaxed),
        )
    }
}

/// The dump's status line: rows, CSV and gzip bytes, rate.
pub fn display(label: String, counters: Arc<Counters>, enabled: bool) -> Line {
    Line::start(enabled, move |elapsed| {
        let (rows, raw, gz) = counters.snapshot();
        format!(
            "{label}: {rows} rows, {} CSV -> {} gzip, {}",
            egress_common::units::human_bytes(raw),
            egress_common::units::human_bytes(gz),
            egress_common::units::human_rate(raw, elapsed.as_secs_f64()),
        )
    })
}
