//! One table's dump: `COPY` stream -> compress -> upload, three stages joined by bounded
//! channels. The object becomes visible only when all three succeeded.

use std::sync::Arc;
use std::time::Instant;

use crate::pg::Session;
use egress_store::StoreError;

use crate::pg::{DbError, DbErrorKind};
use egress_common::units::mib_per_sec;
use egress_store::Store;
use tokio::sync::mpsc;
use tracing::info;

use crate::catalog::ResolvedTable;
use crate::chunked;
use crate::copy_stream::{self, CopyError, CopyStats};
use crate::gzip::{self, CompressError, CompressStats};
use crate::progress::Counters;
use crate::report::TableReport;
use crate::settings::Settings;
use crate::split::{self, Chunk};
use crate::upload;
use bytes::Bytes;

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
    /// The run's settings.
    pub settings: &'a Settings,
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

/// Why one table's dump failed, typed for the run (a recovery conflict restarts the day).
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// Reading it from PostgreSQL.
    #[error("reading table '{table}' failed: {source}")]
    Read {
        /// The table.
        table: String,
        /// What the database said.
        #[source]
        source: DbError,
    },
    /// Compressing it.
    #[error("compressing table '{table}' failed: {why}")]
    Compress {
        /// The table.
        table: String,
        /// Why.
        why: String,
    },
    /// The stages ended without a cause (the copy saw the compression stage close while
    /// it reported success): a bug, never a fault of the input.
    #[error("dumping table '{table}' stopped unexpectedly: its stages ended out of order (a bug: please report it)")]
    Stopped {
        /// The table.
        table: String,
    },
    /// Storing it.
    #[error("table '{table}': {source}")]
    Store {
        /// The table.
        table: String,
        /// What the store said.
        #[source]
        source: StoreError,
    },
}

impl TableError {
    /// The database failure's kind, when the database failed.
    pub fn db_kind(&self) -> Option<DbErrorKind> {
        match self {
            TableError::Read { source, .. } => Some(source.kind),
            _ => None,
        }
    }
}

/// What the three stages ended with: all three succeeded, or the table's failure (the
/// upload aborted when it was not the one that failed).
async fn settle(
    name: &str,
    copied: Result<CopyStats, CopyError>,
    compressed: Result<Result<CompressStats, CompressError>, tokio::task::JoinError>,
    received: Result<upload::Pending, StoreError>,
) -> Result<(CopyStats, CompressStats, upload::Pending), TableError> {
    let table = name.to_string();
    let pending = match (copied, compressed, received) {
        (Ok(copy), Ok(Ok(stats)), Ok(pending)) => return Ok((copy, stats, pending)),
        // The upload stage failed: it has cleaned up after itself.
        (_, _, Err(source)) => return Err(TableError::Store { table, source }),
        (copied, compressed, Ok(pending)) => (copied, compressed, pending),
    };
    let (copied, compressed, pending) = pending;
    upload::abort(pending).await;
    Err(match (copied, compressed) {
        (Err(CopyError::Database(source)), _) => TableError::Read { table, source },
        (_, Ok(Err(e))) => TableError::Compress {
            table,
            why: e.to_string(),
        },
        (_, Err(join)) => TableError::Compress {
            table,
            why: join.to_string(),
        },
        _ => TableError::Stopped { table },
    })
}

/// Dump one table through the three stages.
pub async fn dump_table(
    source: Source<'_>,
    table: &ResolvedTable,
    job: &Job<'_>,
) -> Result<TableReport, TableError> {
    let settings = job.settings;
    let name = table.requested.file_stem();
    let key = job.key(table);
    let target = job.store.describe(&key);
    info!(table = %name, target = %target, "Table '{name}': Data collection started.");
    let started = Instant::now();

    let (raw_tx, raw_rx) = mpsc::channel(8);
    let (part_tx, part_rx) = mpsc::channel(1);
    let base = settings.part_size;
    let compression = gzip::Settings {
        level: settings.compression_level,
        engine: match settings.single_gzip_member {
            true => gzip::Engine::Zlib,
            false => gzip::Engine::Libdeflate,
        },
        threads: job.compress_threads,
        part_size: move |n| upload::part_size(n, base),
    };
    let counters = job.counters.clone();
    let compressor = tokio::task::spawn_blocking(move || {
        gzip::compress(raw_rx, part_tx, compression, &counters)
    });
    let chunks = source.chunks();
    let copy = read(source, table, settings.header, raw_tx, job.counters);
    let receive = upload::receive(job.store, &key, part_rx, settings.upload_concurrency);
    let (copied, compressed, received) = tokio::join!(copy, compressor, receive);

    // Only when all three stages succeeded may the object become visible.
    let (copy, stats, pending) = settle(&name, copied, compressed, received).await?;
    let committed = match upload::commit(job.store, &key, pending).await {
        Ok(committed) => committed,
        Err(source) => {
            return Err(TableError::Store {
                table: name,
                source,
            })
        }
    };
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
