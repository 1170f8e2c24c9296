//! Reading a table with `COPY ... TO STDOUT (FORMAT csv)`, untouched, in batched chunks.

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::Client;

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
    /// The database reported an error or the connection broke.
    #[error(transparent)]
    Database(#[from] tokio_postgres::Error),
    /// The compression stage stopped (it reports its own cause).
    #[error("the compression stage stopped")]
    Closed,
}

/// Run `sql` (a `COPY ... TO STDOUT`) and send its bytes to `output`.
///
/// PostgreSQL sends one CopyData message per row, so counting messages counts rows
/// exactly, quoted newlines included, with no CSV parsing on the hot path.
pub async fn copy_out(
    client: &Client,
    sql: &str,
    header: bool,
    output: mpsc::Sender<Bytes>,
    progress: &Counters,
) -> Result<CopyStats, CopyError> {
    let stream = client.copy_out(sql).await?;
    futures::pin_mut!(stream);
    let mut stats = CopyStats::default();
    let mut messages: u64 = 0;
    let mut batch = BytesMut::with_capacity(BATCH_BYTES * 2);
    let mut batch_rows = 0u64;
    while let Some(row) = stream.next().await {
        let row = row?;
        messages += 1;
        batch_rows += 1;
        batch.extend_from_slice(&row);
        if batch.len() >= BATCH_BYTES {
            let chunk = batch.split().freeze();
            stats.bytes += chunk.len() as u64;
            progress.add_read(batch_rows, chunk.len() as u64);
            batch_rows = 0;
            output.send(chunk).await.map_err(|_| CopyError::Closed)?;
            batch.reserve(BATCH_BYTES * 2);
        }
    }
    if !batch.is_empty() {
        let chunk = batch.split().freeze();
        stats.bytes += chunk.len() as u64;
        progress.add_read(batch_rows, chunk.len() as u64);
        output.send(chunk).await.map_err(|_| CopyError::Closed)?;
    }
    stats.rows = if header {
        messages.saturating_sub(1)
    } else {
        messages
    };
    Ok(stats)
}
