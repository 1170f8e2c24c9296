//! Typed days: a table read with `COPY ... (FORMAT binary)` ([`binary`]), its columns
//! planned from the catalog ([`columns`], [`types`]), each value decoded exactly into Arrow
//! arrays ([`decode`]) and written as one Parquet file, uploaded in parts as it is
//! written, the footer last.
//!
//! Memory is bounded whatever the table's size: the batch being decoded (at most
//! [`BATCH_ROWS`] rows or [`BATCH_BYTES`] of values) and one handed over, the row group
//! the writer holds (closed at [`ROW_GROUP_BYTES`] or [`ROW_GROUP_ROWS`] rows), and the
//! parts as for CSV.

pub mod binary;
pub mod columns;
pub mod decode;
pub mod types;

use std::io::Write;
use std::sync::Arc;

use ::parquet::arrow::ArrowWriter;
use ::parquet::basic::{Compression, ZstdLevel};
use ::parquet::file::properties::{EnabledStatistics, WriterProperties};
use ::parquet::schema::types::ColumnPath;
use arrow_array::{RecordBatch, RecordBatchOptions};
use arrow_schema::{Schema, SchemaRef};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::gzip::{CompressStats, Stage};
use crate::progress::Counters;
pub use columns::TablePlan;
use decode::Column;

/// Rows decoded before they are handed to the writer as one batch.
pub const BATCH_ROWS: usize = 8192;
/// Value bytes decoded before a batch is handed over, however few its rows.
pub const BATCH_BYTES: usize = 8 * 1024 * 1024;
/// A row group is closed once the writer holds this much of it in memory.
pub const ROW_GROUP_BYTES: usize = 64 * 1024 * 1024;
/// A row group is closed at this many rows (the Parquet writer's default).
pub const ROW_GROUP_ROWS: usize = 1024 * 1024;

/// Why a typed table could not be written.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// A value the column's type cannot hold: the table fails, nothing is altered.
    #[error("column '{column}', row {row}: {why}")]
    Refused {
        /// The column.
        column: String,
        /// The row, from 1, in the file's order.
        row: u64,
        /// What the value is and what to do.
        why: String,
    },
    /// The stream was not what a binary `COPY` sends.
    #[error(transparent)]
    Format(#[from] binary::FormatError),
    /// The Parquet writer failed.
    #[error("the Parquet writer failed: {0}")]
    Parquet(String),
    /// The upload stage went away (it reports why).
    #[error("the upload stage stopped")]
    Closed,
    /// A table without columns has rows: Parquet counts a file's rows by its columns.
    #[error("it has no columns but has rows, and a Parquet file counts its rows by its columns (it would hold none): dump it with --format csv")]
    NoColumns,
}

/// What an encoding needs besides its input and output.
pub struct Encoding<F: Fn(u32) -> usize> {
    /// The table's columns.
    pub plan: Arc<TablePlan>,
    /// Size of part `n` (from 1).
    pub part_size: F,
}

/// What was written.
pub struct Encoded {
    /// Rows written.
    pub rows: u64,
    /// Bytes in and out, and their hashes.
    pub stats: CompressStats,
}

/// Read the binary `COPY` stream from `input`, write it as Parquet into parts on `output`.
///
/// Two threads: this one decodes rows into batches, another writes them (encoding and
/// compressing the columns), one batch handed over at a time. On the bench table they take
/// about the same time each, so the split nearly halves the wall time on two cores.
pub fn encode<F: Fn(u32) -> usize + Send>(
    stage: Stage<'_>,
    encoding: Encoding<F>,
) -> Result<Encoded, EncodeError> {
    let (mut input, output, progress) = (stage.input, stage.output, stage.progress);
    let plan = encoding.plan;
    let schema: SchemaRef = Arc::new(Schema::new(
        plan.columns.iter().map(decode::field).collect::<Vec<_>>(),
    ));
    let sink = PartSink::new(output, encoding.part_size, progress);
    // A rendezvous: the writer's batch and the one the decoder finished, never a third
    // (a large row is a batch of its own: three of them were a 48 MiB row's 144 MiB). After
    // a large batch the decoder waits until it is written.
    let (batches, handed) = std::sync::mpsc::sync_channel(0);
    let (written_tx, written_rx) = std::sync::mpsc::sync_channel(1);
    std::thread::scope(|scope| {
        let (writer_schema, writer_plan) = (schema.clone(), &plan);
        let writer = scope
            .spawn(move || write_batches(sink, writer_schema, writer_plan, (handed, written_tx)));
        let decoded = decode_stream(&mut input, &plan, schema, (batches, written_rx));
        let written = writer
            .join()
            .unwrap_or_else(|_| Err(EncodeError::Parquet("the Parquet writer panicked".into())));
        // The decoder's own failure is the cause when there is one (the writer then only
        // saw its input end early); when the writer went away first, the writer's is.
        let ((rows, raw_bytes), (compressed_bytes, compressed_sha256)) = match (decoded, written) {
            (Ok(decoded), Ok(written)) => (decoded, written),
            (Err(EncodeError::Closed), Err(writer)) => return Err(writer),
            (Err(decoder), _) => return Err(decoder),
            (Ok(_), Err(writer)) => return Err(writer),
        };
        Ok(Encoded {
            rows,
            stats: CompressStats {
                uncompressed_bytes: raw_bytes,
                compressed_bytes,
                // A Parquet file has no uncompressed form to check: the manifest's
                // `uncompressed_sha256` is the file's own (hashing the binary COPY stream
                // cost 10% of the run and nobody could check it).
                uncompressed_sha256: compressed_sha256.clone(),
                compressed_sha256,
                gzip_members: 0,
            },
        })
    })
}

/// What the decoder hands the writer.
enum Handed {
    /// Rows to write; `true` for a large batch (its values over [`BATCH_BYTES`]), which the
    /// writer closes its row group after and says it wrote.
    Batch(RecordBatch, bool),
    /// The last batch was handed over: write the footer.
    End,
}

/// Decode every tuple of `input` into batches for the writer: rows and bytes read.
fn decode_stream(
    input: &mut mpsc::Receiver<Bytes>,
    plan: &TablePlan,
    schema: SchemaRef,
    (batches, written): (
        std::sync::mpsc::SyncSender<Handed>,
        std::sync::mpsc::Receiver<()>,
    ),
) -> Result<(u64, u64), EncodeError> {
    let mut batch = Batch::new(plan, schema);
    let mut reader = binary::Reader::new(plan.columns.len());
    let mut raw_bytes = 0u64;
    let hand = |batch: &mut Batch<'_>| -> Result<(), EncodeError> {
        let large = batch.bytes >= BATCH_BYTES;
        let Some(b) = batch.take()? else {
            return Ok(());
        };
        batches
            .send(Handed::Batch(b, large))
            .map_err(|_| WRITER_STOPPED)?;
        match large {
            true => written.recv().map_err(|_| WRITER_STOPPED),
            false => Ok(()),
        }
    };
    while let Some(chunk) = input.blocking_recv() {
        raw_bytes += chunk.len() as u64;
        reader.feed(&chunk, &mut |tuple| {
            batch.push(tuple)?;
            if batch.full() {
                hand(&mut batch)?;
            }
            Ok(())
        })?;
    }
    reader.finish()?;
    hand(&mut batch)?;
    batches.send(Handed::End).map_err(|_| WRITER_STOPPED)?;
    Ok((batch.rows, raw_bytes))
}

/// The decoder's error when the writer went away (the writer's own error says why; the
/// decoder never fails with `Closed` otherwise).
const WRITER_STOPPED: EncodeError = EncodeError::Closed;

/// Write the batches handed over as one Parquet file into `sink`, a row group closed
/// whenever the writer holds [`ROW_GROUP_BYTES`] of it; the file's size and SHA-256. Without
/// [`Handed::End`] (the decoder failed) no footer is written.
fn write_batches<F: Fn(u32) -> usize + Send>(
    sink: PartSink<'_, F>,
    schema: SchemaRef,
    plan: &TablePlan,
    (handed, written): (
        std::sync::mpsc::Receiver<Handed>,
        std::sync::mpsc::SyncSender<()>,
    ),
) -> Result<(u64, String), EncodeError> {
    let mut writer =
        ArrowWriter::try_new(sink, schema, Some(properties(plan))).map_err(parquet_error)?;
    for message in handed {
        match message {
            Handed::Batch(batch, large) => {
                writer.write(&batch).map_err(parquet_error)?;
                drop(batch);
                // A large batch's pages go out at once rather than wait for the row group.
                if large || writer.memory_size() >= ROW_GROUP_BYTES {
                    writer.flush().map_err(parquet_error)?;
                }
                if large {
                    let _ = written.send(());
                }
            }
            Handed::End => return writer.into_inner().map_err(parquet_error)?.finish(),
        }
    }
    Err(EncodeError::Parquet("the decoder stopped".into()))
}

/// zstd: about as fast as snappy to write here and markedly smaller, and every reader
/// named in the README (Spark, Trino, DuckDB, pandas/pyarrow) reads it.
///
/// A column whose values mostly differ gets no dictionary: the writer would intern every
/// value of each row group, outgrow the dictionary page and start over plain (interning
/// was 4% of the bench table's samples, `perf record`; the file is the same size).
///
/// Min/max statistics only where values are small: the writer keeps two whole copies of a
/// byte array's smallest and largest values until its row group closes (truncating them
/// only as it writes them), so a 24 MiB text or bytea cost 48 MiB more (439 MiB peak for
/// three rows of 48 MiB, measured). Kept for fixed-width columns and strings of at most
/// [`STATISTICS_CHARS`] declared characters.
fn properties(plan: &TablePlan) -> WriterProperties {
    let path = |c: &types::ColumnPlan| ColumnPath::new(vec![c.name.clone()]);
    let props = plan
        .columns
        .iter()
        .filter(|c| c.mostly_distinct)
        .fold(WriterProperties::builder(), |props, c| {
            props.set_column_dictionary_enabled(path(c), false)
        });
    plan.columns
        .iter()
        .filter(|c| !small_values(c))
        .fold(props, |props, c| {
            props.set_column_statistics_enabled(path(c), EnabledStatistics::None)
        })
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_created_by(format!("egress-dump {}", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Strings declared at most this long keep their min/max statistics.
pub const STATISTICS_CHARS: u32 = 1024;

/// True when a column's values are small enough to keep min/max statistics of.
fn small_values(column: &types::ColumnPlan) -> bool {
    let mut kind = &column.kind;
    while let types::Kind::List(element) = kind {
        kind = element;
    }
    match kind {
        types::Kind::Text => column.max_chars.is_some_and(|n| n <= STATISTICS_CHARS),
        types::Kind::PgText | types::Kind::Bytes | types::Kind::Json | types::Kind::Jsonb => false,
        _ => true,
    }
}

fn parquet_error(e: ::parquet::errors::ParquetError) -> EncodeError {
    // The sink reports a stopped upload as an I/O error of its own.
    if e.to_string().contains(SINK_CLOSED) {
        return EncodeError::Closed;
    }
    EncodeError::Parquet(e.to_string())
}

/// The rows being decoded, one column each.
struct Batch<'a> {
    plan: &'a TablePlan,
    schema: SchemaRef,
    columns: Vec<Box<dyn Column>>,
    len: usize,
    bytes: usize,
    /// Rows pushed in all.
    rows: u64,
}

impl<'a> Batch<'a> {
    fn new(plan: &'a TablePlan, schema: SchemaRef) -> Batch<'a> {
        Batch {
            plan,
            schema,
            columns: plan
                .columns
                .iter()
                .map(|c| decode::column(&c.kind))
                .collect(),
            len: 0,
            bytes: 0,
            rows: 0,
        }
    }

    fn push(&mut self, tuple: &binary::Tuple<'_>) -> Result<(), EncodeError> {
        if self.columns.is_empty() {
            return Err(EncodeError::NoColumns);
        }
        self.rows += 1;
        for (i, column) in self.columns.iter_mut().enumerate() {
            let value = tuple.field(i);
            self.bytes += value.map_or(0, <[u8]>::len);
            column.push(value).map_err(|why| EncodeError::Refused {
                column: self.plan.columns[i].name.clone(),
                row: self.rows,
                why,
            })?;
        }
        self.len += 1;
        Ok(())
    }

    fn full(&self) -> bool {
        self.len >= BATCH_ROWS || self.bytes >= BATCH_BYTES
    }

    /// The rows decoded since the last call, as one batch (`None` when there are none).
    fn take(&mut self) -> Result<Option<RecordBatch>, EncodeError> {
        if self.len == 0 {
            return Ok(None);
        }
        let arrays = self.columns.iter_mut().map(|c| c.finish()).collect();
        // A table without columns still has rows: the count is given.
        let options = RecordBatchOptions::new().with_row_count(Some(self.len));
        let batch = RecordBatch::try_new_with_options(self.schema.clone(), arrays, &options)
            .map_err(|e| EncodeError::Parquet(e.to_string()))?;
        (self.len, self.bytes) = (0, 0);
        Ok(Some(batch))
    }
}

/// The file's bytes cut into parts for the upload stage, hashed as they pass.
struct PartSink<'a, F: Fn(u32) -> usize> {
    output: mpsc::Sender<Bytes>,
    part_size: F,
    part: Vec<u8>,
    number: u32,
    hash: Sha256,
    bytes: u64,
    progress: &'a Counters,
}

/// The sink's I/O error text when the upload stage is gone.
const SINK_CLOSED: &str = "egress: upload stage stopped";

impl<'a, F: Fn(u32) -> usize> PartSink<'a, F> {
    fn new(output: mpsc::Sender<Bytes>, part_size: F, progress: &'a Counters) -> Self {
        PartSink {
            output,
            part: Vec::with_capacity(part_size(1)),
            part_size,
            number: 1,
            hash: Sha256::new(),
            bytes: 0,
            progress,
        }
    }

    fn send(&mut self) -> std::io::Result<()> {
        self.number += 1;
        let next = Vec::with_capacity((self.part_size)(self.number));
        let part = std::mem::replace(&mut self.part, next);
        self.progress.add_compressed(part.len() as u64);
        self.output
            .blocking_send(Bytes::from(part))
            .map_err(|_| std::io::Error::other(SINK_CLOSED))
    }

    /// Send the last part; the file's size and SHA-256.
    fn finish(mut self) -> Result<(u64, String), EncodeError> {
        if !self.part.is_empty() {
            self.send().map_err(|_| EncodeError::Closed)?;
        }
        Ok((self.bytes, hex::encode(self.hash.finalize())))
    }
}

impl<F: Fn(u32) -> usize> Write for PartSink<'_, F> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let target = (self.part_size)(self.number);
        let take = buf.len().min(target - self.part.len());
        self.part.extend_from_slice(&buf[..take]);
        self.hash.update(&buf[..take]);
        self.bytes += take as u64;
        if self.part.len() == target {
            self.send()?;
        }
        Ok(take)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::types::{self, PgType};
    use super::*;
    use ::parquet::schema::types::ColumnPath;

    #[test]
    fn mostly_distinct_columns_are_written_without_a_dictionary() {
        let text = PgType {
            oid: 25,
            typmod: -1,
            is_enum: false,
            element: None,
        };
        let mut id = types::plan("id", &text, true);
        id.mostly_distinct = true;
        let plan = TablePlan {
            columns: vec![id, types::plan("kind", &text, false)],
            primary_key: vec!["id".into()],
        };
        let props = properties(&plan);
        let path = |name: &str| ColumnPath::new(vec![name.to_string()]);
        assert!(!props.dictionary_enabled(&path("id")));
        assert!(props.dictionary_enabled(&path("kind")));
        assert_eq!(
            props.compression(&path("kind")),
            Compression::ZSTD(ZstdLevel::default())
        );
        // Unbounded text keeps no min/max (its values may be megabytes).
        assert_eq!(
            props.statistics_enabled(&path("kind")),
            EnabledStatistics::None
        );
    }

    #[test]
    fn only_small_values_keep_min_max_statistics() {
        let pg = |oid, typmod| PgType {
            oid,
            typmod,
            is_enum: false,
            element: None,
        };
        let short = types::plan("code", &pg(1043, 4 + 16), false);
        let long = types::plan("note", &pg(1043, 4 + 100_000), false);
        let blob = types::plan("blob", &pg(17, -1), false);
        let count = types::plan("n", &pg(20, -1), false);
        assert_eq!(short.max_chars, Some(16));
        let plan = TablePlan {
            columns: vec![short, long, blob, count],
            primary_key: Vec::new(),
        };
        let props = properties(&plan);
        let stats = |name: &str| props.statistics_enabled(&ColumnPath::new(vec![name.into()]));
        assert_ne!(stats("code"), EnabledStatistics::None);
        assert_ne!(stats("n"), EnabledStatistics::None);
        assert_eq!(stats("note"), EnabledStatistics::None);
        assert_eq!(stats("blob"), EnabledStatistics::None);
    }
}
