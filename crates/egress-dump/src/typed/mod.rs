//! Typed days: a table read with `COPY ... (FORMAT binary)` ([`binary`]), its columns
//! planned from the catalog ([`catalog`], [`types`]), each value decoded exactly into Arrow
//! arrays ([`decode`]) and written as one Parquet file, uploaded in parts as it is
//! written, the footer last.
//!
//! Memory is bounded whatever the table's size: the batch being decoded (at most
//! [`BATCH_ROWS`] rows or [`BATCH_BYTES`] of values) and one handed over, the row group
//! the writer holds (closed at [`ROW_GROUP_BYTES`] or [`ROW_GROUP_ROWS`] rows), and the
//! parts as for CSV.

pub mod binary;
pub mod catalog;
pub mod decode;
pub mod types;

use std::io::Write;
use std::sync::Arc;

use arrow_array::{RecordBatch, RecordBatchOptions};
use arrow_schema::{Schema, SchemaRef};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::gzip::CompressStats;
use crate::progress::Counters;
pub use catalog::TablePlan;
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
    mut input: mpsc::Receiver<Bytes>,
    output: mpsc::Sender<Bytes>,
    encoding: Encoding<F>,
    progress: &Counters,
) -> Result<Encoded, EncodeError> {
    let plan = encoding.plan;
    let schema: SchemaRef = Arc::new(Schema::new(
        plan.columns.iter().map(decode::field).collect::<Vec<_>>(),
    ));
    let sink = PartSink::new(output, encoding.part_size, progress);
    let (batches, handed) = std::sync::mpsc::sync_channel(1);
    std::thread::scope(|scope| {
        let (writer_schema, writer_plan) = (schema.clone(), &plan);
        let writer = scope.spawn(move || write_batches(sink, writer_schema, writer_plan, handed));
        let decoded = decode_stream(&mut input, &plan, schema, batches);
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
    /// Rows to write.
    Batch(RecordBatch),
    /// The last batch was handed over: write the footer.
    End,
}

/// Decode every tuple of `input` into batches for the writer: rows and bytes read.
fn decode_stream(
    input: &mut mpsc::Receiver<Bytes>,
    plan: &TablePlan,
    schema: SchemaRef,
    batches: std::sync::mpsc::SyncSender<Handed>,
) -> Result<(u64, u64), EncodeError> {
    let mut batch = Batch::new(plan, schema);
    let mut reader = binary::Reader::new(plan.columns.len());
    let mut raw_bytes = 0u64;
    let hand = |batch: &mut Batch<'_>| -> Result<(), EncodeError> {
        match batch.take()? {
            Some(b) => batches.send(Handed::Batch(b)).map_err(|_| WRITER_STOPPED),
            None => Ok(()),
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
    handed: std::sync::mpsc::Receiver<Handed>,
) -> Result<(u64, String), EncodeError> {
    let mut writer =
        ArrowWriter::try_new(sink, schema, Some(properties(plan))).map_err(parquet_error)?;
    for message in handed {
        match message {
            Handed::Batch(batch) => {
                writer.write(&batch).map_err(parquet_error)?;
                if writer.memory_size() >= ROW_GROUP_BYTES {
                    writer.flush().map_err(parquet_error)?;
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
fn properties(plan: &TablePlan) -> WriterProperties {
    plan.columns
        .iter()
        .filter(|c| c.mostly_distinct)
        .fold(WriterProperties::builder(), |props, c| {
            props.set_column_dictionary_enabled(ColumnPath::new(vec![c.name.clone()]), false)
        })
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_created_by(format!("egress-dump {}", env!("CARGO_PKG_VERSION")))
        .build()
}

fn parquet_error(e: parquet::errors::ParquetError) -> EncodeError {
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
    use parquet::schema::types::ColumnPath;

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
    }
}
