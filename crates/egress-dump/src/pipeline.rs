//! One table's dump: `COPY` stream -> compress -> upload, three stages joined by bounded
//! channels. The object becomes visible only when all three succeeded.

use std::sync::Arc;
use std::time::Instant;

use crate::database::Session;
use anyhow::{anyhow, Context};
use egress_common::metrics::Family;
use egress_common::units::mib_per_sec;
use egress_store::Store;
use tokio::sync::mpsc;
use tracing::info;

use crate::catalog::ResolvedTable;
use crate::chunked;
use crate::config::Args;
use crate::copy_stream::{self, CopyError, CopyStats};
use crate::gzip::{self, CompressStats};
use crate::progress::Counters;
use crate::split::{self, Chunk};
use crate::upload::{self, Committed};
use bytes::Bytes;

const MIB: usize = 1024 * 1024;

/// What one table's dump produced.
#[derive(Debug, Clone)]
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
}

/// Where a table's rows come from.
#[derive(Clone, Copy)]
pub enum Source<'a> {
    /// One `COPY` on one connection.
    Whole {
        /// The connection, in the run's snapshot.
        session: &'a Session,
        /// The columns the manifest lists, named in the `COPY`.
        columns: &'a [String],
    },
    /// Ranges of its heap read on several connections and joined in order
    /// ([`crate::split`], [`crate::chunked`]).
    Chunks {
        /// The worker connections, all in the run's snapshot.
        sessions: &'a [Session],
        /// The ranges.
        chunks: &'a [Chunk],
        /// The columns a plain `COPY` of the table prints.
        columns: &'a [String],
    },
}

impl Source<'_> {
    /// How many chunks.
    pub fn chunks(&self) -> usize {
        match self {
            Source::Whole { .. } => 1,
            Source::Chunks { chunks, .. } => chunks.len(),
        }
    }
}

/// Read `table` from `source` into `output`.
async fn read(
    source: Source<'_>,
    table: &ResolvedTable,
    header: bool,
    output: mpsc::Sender<Bytes>,
    counters: &Counters,
) -> Result<CopyStats, CopyError> {
    match source {
        Source::Whole { session, columns } => {
            let sql = table.copy_sql(columns, header);
            copy_stream::copy_out(session, &sql, header, output, counters).await
        }
        Source::Chunks {
            sessions,
            chunks,
            columns,
        } => {
            let sql = |chunk: &Chunk| split::chunk_sql(table, columns, chunk, header);
            chunked::copy_chunks(sessions, chunks, &sql, header, output, counters).await
        }
    }
}

/// Everything a table's dump needs besides its connection.
#[derive(Clone, Copy)]
pub struct Job<'a> {
    /// The run's flags.
    pub args: &'a Args,
    /// Compression threads per table (the machine's CPUs shared among the workers).
    pub compress_threads: usize,
    /// Where objects go.
    pub store: &'a Store,
    /// The date folder.
    pub date: &'a str,
    /// Progress counters.
    pub counters: &'a Arc<Counters>,
}

impl Job<'_> {
    /// The key of `table`'s object.
    pub fn key(&self, table: &ResolvedTable) -> String {
        format!("{}/{}.csv.gz", self.date, table.requested.file_stem())
    }
}

/// Dump one table through the three stages.
pub async fn dump_table(
    source: Source<'_>,
    table: &ResolvedTable,
    job: &Job<'_>,
) -> anyhow::Result<TableReport> {
    let args = job.args;
    let name = table.requested.file_stem();
    let key = job.key(table);
    let target = job.store.describe(&key);
    info!(table = %name, target = %target, "Table '{name}': Data collection started.");
    let started = Instant::now();

    let (raw_tx, raw_rx) = mpsc::channel(8);
    let (part_tx, part_rx) = mpsc::channel(1);
    let base = args.part_size_mib as usize * MIB;
    let settings = gzip::Settings {
        level: args.compression_level,
        engine: match args.single_gzip_member {
            true => gzip::Engine::Zlib,
            false => gzip::Engine::Libdeflate,
        },
        threads: job.compress_threads,
        part_size: move |n| upload::part_size(n, base),
    };
    let counters = job.counters.clone();
    let compressor =
        tokio::task::spawn_blocking(move || gzip::compress(raw_rx, part_tx, settings, &counters));
    let chunks = source.chunks();
    let copy = read(source, table, args.header, raw_tx, job.counters);
    let receive = upload::receive(job.store, &key, part_rx, args.upload_concurrency as usize);
    let (copied, compressed, received) = tokio::join!(copy, compressor, receive);

    // Only when all three stages succeeded may the object become visible.
    let (copy, stats, pending) = match (copied, compressed, received) {
        (Ok(copy), Ok(Ok(stats)), Ok(pending)) => (copy, stats, pending),
        // The upload stage failed: it has cleaned up after itself.
        (_, _, Err(e)) => return Err(e.into()),
        (copied, compressed, Ok(pending)) => {
            upload::abort(pending).await;
            return Err(match (copied, compressed) {
                (Err(CopyError::Database(e)), _) => {
                    e.context(&format!("reading table '{name}' failed")).into()
                }
                (_, Ok(Err(e))) => anyhow!("compressing table '{name}' failed: {e}"),
                (_, Err(join)) => anyhow!("compressing table '{name}' failed: {join}"),
                _ => anyhow!("dumping table '{name}' stopped unexpectedly"),
            });
        }
    };
    let committed = upload::commit(job.store, &key, pending)
        .await
        .with_context(|| format!("table '{name}'"))?;
    let seconds = started.elapsed().as_secs_f64();
    info!(
        table = %name,
        target = %target,
        rows = copy.rows,
        uncompressed_bytes = stats.uncompressed_bytes,
        compressed_bytes = stats.compressed_bytes,
        chunks,
        seconds = (seconds * 1000.0).round() / 1000.0,
        mib_per_s = mib_per_sec(stats.uncompressed_bytes, seconds),
        "Table '{name}': Dump uploaded to intermediate storage."
    );
    Ok(TableReport {
        table: name,
        target,
        rows: copy.rows,
        stats,
        committed,
        seconds,
        chunks,
    })
}

/// The per-table metrics of a successful run (figures equal to the manifest's); a failed
/// run reports none, so the last good day's figures stay.
pub fn metrics(outcome: Result<&Vec<TableReport>, &anyhow::Error>) -> Vec<Family> {
    let Ok(reports) = outcome else {
        return Vec::new();
    };
    let per_table = |f: fn(&TableReport) -> f64| {
        reports
            .iter()
            .map(|r| (r.table.clone(), f(r)))
            .collect::<Vec<_>>()
    };
    vec![
        Family::by(
            "egress_dump_rows",
            "Rows dumped per table by the last successful run.",
            "table",
            per_table(|r| r.rows as f64),
        ),
        Family::by(
            "egress_dump_csv_bytes",
            "CSV bytes (before compression) per table in the last successful run.",
            "table",
            per_table(|r| r.stats.uncompressed_bytes as f64),
        ),
        Family::by(
            "egress_dump_object_bytes",
            "Object bytes (compressed, as stored) per table in the last successful run.",
            "table",
            per_table(|r| r.stats.compressed_bytes as f64),
        ),
        Family::by(
            "egress_dump_table_seconds",
            "Seconds each table took in the last successful run.",
            "table",
            per_table(|r| r.seconds),
        ),
    ]
}
