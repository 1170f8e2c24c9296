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

use crate::catalog::{ResolvedTable, Select, Wire};
use crate::chunked;
use crate::copy_stream::{self, CopyError, CopyStats};
use crate::gzip::{self, CompressError, CompressStats};
use crate::parquet;
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
        /// The columns the manifest lists, named in the `COPY`, and its format.
        select: &'a Select,
    },
    /// Ranges of its heap read on several connections and joined in order
    /// ([`crate::split`], [`crate::chunked`]).
    Chunks {
        /// The worker connections, all in the run's snapshot.
        sessions: &'a [Session],
        /// The ranges.
        chunks: &'a [Chunk],
        /// The columns a plain `COPY` of the table prints, and the format.
        select: &'a Select,
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

impl<'a> Source<'a> {
    /// What is read and how.
    fn select(&self) -> &Select {
        match self {
            Source::Whole { select, .. } | Source::Chunks { select, .. } => select,
        }
    }

    /// The connections that read it.
    fn sessions(&self) -> &'a [Session] {
        match self {
            Source::Whole { session, .. } => std::slice::from_ref(*session),
            Source::Chunks { sessions, .. } => sessions,
        }
    }
}

/// Read `table` from `source` into `output`.
async fn read(
    source: Source<'_>,
    table: &ResolvedTable,
    output: mpsc::Sender<Bytes>,
    counters: &Arc<Counters>,
) -> Result<CopyStats, CopyError> {
    match source {
        Source::Whole { session, select } => {
            let sql = table.copy_sql(select);
            let shape = copy_stream::Shape {
                header: select.header(true),
                whole_rows: select.is_binary(),
            };
            copy_stream::copy_out(session, &sql, shape, output, counters).await
        }
        Source::Chunks {
            sessions,
            chunks,
            select,
        } => {
            let sql = |chunk: &Chunk| split::chunk_sql(table, select, chunk);
            let header = select.header(true);
            chunked::copy_chunks(sessions, chunks, &sql, header, output, counters).await
        }
    }
}

/// Everything a table's dump needs besides its connection.
#[derive(Clone, Copy)]
pub struct Context<'a> {
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

impl Context<'_> {
    /// The key of `table`'s object (of its piece's, in a shared day).
    pub fn key(&self, table: &ResolvedTable) -> String {
        let extension = self.settings.format.extension();
        let stem = table.requested.file_stem();
        match table.piece {
            Some(piece) => format!("{}/{}", self.date, piece.of.file(&stem, extension)),
            None => format!("{}/{stem}.{extension}", self.date),
        }
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
    /// Writing it as Parquet: a value its column's type cannot hold (named with its column
    /// and row), or the writer failed.
    #[error("table '{table}': {why}")]
    Encode {
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
    compressed: Result<Result<Encoded, EncodeError>, tokio::task::JoinError>,
    received: Result<upload::Pending, StoreError>,
) -> Result<(CopyStats, Encoded, upload::Pending), TableError> {
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
        (_, Ok(Err(EncodeError::Parquet(e)))) if !matches!(e, parquet::EncodeError::Closed) => {
            TableError::Encode {
                table,
                why: e.to_string(),
            }
        }
        (_, Ok(Err(e))) if !e.closed() => TableError::Compress {
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

/// Every session that read the table still has the settings that shape values' text.
async fn settings_kept(sessions: &[Session]) -> Result<(), DbError> {
    for session in sessions {
        session.check_settings().await?;
    }
    Ok(())
}

/// What the middle stage made of the rows.
struct Encoded {
    /// Rows, when the stage counted them (a binary `COPY`'s).
    rows: Option<u64>,
    /// Bytes in and out, and their hashes.
    stats: CompressStats,
}

/// Why the middle stage stopped.
#[derive(Debug, thiserror::Error)]
enum EncodeError {
    #[error(transparent)]
    Gzip(#[from] CompressError),
    #[error(transparent)]
    Parquet(#[from] parquet::EncodeError),
}

impl EncodeError {
    /// True when the stage stopped because the upload stage went away.
    fn closed(&self) -> bool {
        matches!(
            self,
            EncodeError::Gzip(CompressError::Closed)
                | EncodeError::Parquet(parquet::EncodeError::Closed)
        )
    }
}

/// Start the middle stage on a blocking thread: gzip for CSV, the Parquet writer for a
/// binary `COPY`.
fn encode(
    select: &Select,
    input: mpsc::Receiver<Bytes>,
    output: mpsc::Sender<Bytes>,
    context: &Context<'_>,
) -> tokio::task::JoinHandle<Result<Encoded, EncodeError>> {
    let settings = context.settings;
    let base = settings.part_size;
    let part_size = move |n| upload::part_size(n, base);
    let counters = context.counters.clone();
    if let Wire::Binary(plan) = &select.wire {
        let encoding = parquet::Encoding {
            plan: plan.clone(),
            part_size,
        };
        return tokio::task::spawn_blocking(move || {
            let done = parquet::encode(gzip::Stage::new(input, output, &counters), encoding)?;
            Ok(Encoded {
                rows: Some(done.rows),
                stats: done.stats,
            })
        });
    }
    let compression = gzip::Settings {
        level: settings.compression_level,
        engine: match settings.single_gzip_member {
            true => gzip::Engine::Zlib,
            false => gzip::Engine::Libdeflate,
        },
        threads: context.compress_threads,
        part_size,
    };
    tokio::task::spawn_blocking(move || {
        let stats = gzip::compress(gzip::Stage::new(input, output, &counters), compression)?;
        Ok(Encoded { rows: None, stats })
    })
}

/// Dump one table through the three stages.
pub async fn dump_table(
    source: Source<'_>,
    table: &ResolvedTable,
    context: &Context<'_>,
) -> Result<TableReport, TableError> {
    let settings = context.settings;
    let name = table.requested.file_stem();
    let key = context.key(table);
    let target = context.store.describe(&key);
    info!(table = %name, target = %target, "Table '{name}': Data collection started.");
    let started = Instant::now();

    let (raw_tx, raw_rx) = mpsc::channel(8);
    let (part_tx, part_rx) = mpsc::channel(1);
    let encoder = encode(source.select(), raw_rx, part_tx, context);
    let chunks = source.chunks();
    let sessions = source.sessions();
    let copy = read(source, table, raw_tx, context.counters);
    let receive = upload::receive(context.store, &key, part_rx, settings.upload_concurrency);
    let (copied, encoded, received) = tokio::join!(copy, encoder, receive);

    // Only when all three stages succeeded may the object become visible.
    let (copy, encoded, pending) = settle(&name, copied, encoded, received).await?;
    if let Err(source) = settings_kept(sessions).await {
        upload::abort(pending).await;
        return Err(TableError::Read {
            table: name,
            source,
        });
    }
    // A binary COPY's rows are counted by its decoder (its trailer is a message too).
    let rows = encoded.rows.unwrap_or(copy.rows);
    let stats = encoded.stats;
    let committed = match upload::commit(context.store, &key, pending).await {
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
        rows,
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
        rows,
        stats,
        committed,
        seconds,
        chunks,
        piece: table.piece.map(|p| p.of),
    })
}
