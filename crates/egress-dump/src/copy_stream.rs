//! Reading a table with `COPY ... TO STDOUT (FORMAT csv)`, untouched, in batched chunks.

use crate::pg::DbError;
use crate::pg::Session;
use crate::pg::{Flow, TakenOnDrop};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::progress::Counters;

/// Chunks handed to the compressor are about this large: one channel message per row
/// would cost more than the compression itself.
const BATCH_BYTES: usize = 256 * 1024;

/// What the COPY produced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Data rows (the header line, if any, not counted).
    pub rows: u64,
    /// CSV bytes.
    pub bytes: u64,
}

/// Why reading stopped early.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The database reported an error or the connection broke (the message is the
    /// cause alone; the caller says what was being read).
    #[error(transparent)]
    Database(#[from] DbError),
    /// The compression stage stopped (it reports its own cause).
    #[error("the compression stage stopped")]
    Closed,
}

/// Run `sql` (a `COPY ... TO STDOUT`) and send its bytes to `output`.
///
/// PostgreSQL sends one CopyData message per row, so counting messages counts rows
/// exactly, quoted newlines included, with no CSV parsing on the hot path. Small rows are
/// batched into chunks of about [`BATCH_BYTES`]; a row larger than that is sent in slices
/// of that size, so every chunk in the channel is at most `2 x BATCH_BYTES` and the channel
/// is bounded in bytes, not only in chunks; the connection's read-ahead is bounded in bytes
/// too ([`Flow`]).
///
/// With `whole_rows` (a binary COPY, read by the Parquet writer) a large row goes on whole,
/// not copied into slices: the reader takes a tuple from one chunk without reassembling it
/// (a 48 MiB row was held three times). It counts as taken, and the next large row is read,
/// only once the reader drops it.
pub async fn copy_out(
    client: &Session,
    sql: &str,
    (header, whole_rows): (bool, bool),
    output: mpsc::Sender<Bytes>,
    progress: &Counters,
) -> Result<CopyStats, CopyError> {
    let _metered = client.flow.meter();
    let failed = |e: tokio_postgres::Error| CopyError::Database(client.error(&e));
    let stream = client.copy_out(sql).await.map_err(failed)?;
    futures::pin_mut!(stream);
    let mut out = Batcher {
        output,
        progress,
        batch: BytesMut::with_capacity(BATCH_BYTES * 2),
        whole_rows,
        rows: 0,
        bytes: 0,
    };
    let mut messages: u64 = 0;
    while let Some(row) = stream.next().await {
        let row = row.map_err(failed)?;
        messages += 1;
        out.push(row, &client.flow).await?;
    }
    out.flush().await?;
    Ok(CopyStats {
        rows: if header {
            messages.saturating_sub(1)
        } else {
            messages
        },
        bytes: out.bytes,
    })
}

/// A row handed on whole, and its place in the read-ahead until it is dropped.
struct Owned {
    row: Bytes,
    _taken: TakenOnDrop,
}

impl AsRef<[u8]> for Owned {
    fn as_ref(&self) -> &[u8] {
        &self.row
    }
}

/// Rows in, chunks of bounded size out.
struct Batcher<'a> {
    output: mpsc::Sender<Bytes>,
    progress: &'a Counters,
    batch: BytesMut,
    /// Large rows go on whole (see [`copy_out`]).
    whole_rows: bool,
    rows: u64,
    bytes: u64,
}

impl Batcher<'_> {
    /// Batch a small row; send a large one in copied slices, and tell `flow` it was taken
    /// only once it is gone: the connection reads the next large row only then, so a dump
    /// holds one large row at a time (a slice of it would keep all of it alive).
    async fn push(&mut self, row: Bytes, flow: &std::sync::Arc<Flow>) -> Result<(), CopyError> {
        self.rows += 1;
        let len = row.len();
        if len < BATCH_BYTES {
            flow.took(len);
            self.batch.extend_from_slice(&row);
            if self.batch.len() >= BATCH_BYTES {
                self.flush().await?;
            }
            return Ok(());
        }
        self.flush().await?;
        if self.whole_rows {
            let taken = flow.taken_on_drop(len);
            return self
                .send(Bytes::from_owner(Owned { row, _taken: taken }))
                .await;
        }
        for slice in row.chunks(BATCH_BYTES) {
            self.send(Bytes::copy_from_slice(slice)).await?;
        }
        drop(row);
        flow.took(len);
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), CopyError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let chunk = self.batch.split().freeze();
        self.batch.reserve(BATCH_BYTES * 2);
        self.send(chunk).await
    }

    async fn send(&mut self, chunk: Bytes) -> Result<(), CopyError> {
        self.bytes += chunk.len() as u64;
        self.progress
            .add_read(std::mem::take(&mut self.rows), chunk.len() as u64);
        self.output.send(chunk).await.map_err(|_| CopyError::Closed)
    }
}
