//! Reading a table with `COPY ... TO STDOUT`, untouched, in batched chunks.
//!
//! The rows do not pass through tokio-postgres one message at a time: the connection's
//! guard hands their bytes to a [`Batcher`] (a [`Tap`]) as it reads them, 32 KiB at a time,
//! and the driver sees only the COPY start and end. On the bench table (1.8 M rows, typed,
//! two connections) the client's CPU went from 2.97 to 2.03-2.17 s (docs/performance.md).

use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;

use crate::pg::{DbError, DbErrorKind, Flow, Session, TakenOnDrop, Tap};
use crate::progress::Counters;

/// Chunks handed to the compressor are about this large: one channel message per row
/// would cost more than the compression itself.
pub const BATCH_BYTES: usize = 256 * 1024;

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

/// How the rows go into chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// The first row is a CSV header line (not counted as a row).
    pub header: bool,
    /// A large row goes on whole (a binary COPY read by the Parquet writer, which takes a
    /// tuple from one chunk); otherwise in slices of [`BATCH_BYTES`].
    pub whole_rows: bool,
}

/// Run `sql` (a `COPY ... TO STDOUT`) and send its bytes to `output`.
///
/// PostgreSQL sends one CopyData message per row, so counting messages counts rows
/// exactly, quoted newlines included, with no CSV parsing on the hot path. Small rows are
/// batched into chunks of at most [`BATCH_BYTES`]; a row larger than that is sent in slices
/// of that size, so every chunk in the channel is at most `BATCH_BYTES` and the channel is
/// bounded in bytes, not only in chunks.
///
/// With `whole_rows` a large row goes on whole, not copied into slices (a 48 MiB row was
/// held three times when it was reassembled): it counts against the connection's
/// read-ahead ([`Flow`]) until the reader drops it, so the next large row is read only then.
///
/// After a failed `copy_out`, the session makes a round trip (its callers roll back to a
/// savepoint, or stop) before the next one: the tap is armed for the next COPY that starts
/// on the connection, which must not be one given up before it started.
pub async fn copy_out(
    client: &Session,
    sql: &str,
    shape: Shape,
    output: mpsc::Sender<Bytes>,
    progress: &Arc<Counters>,
) -> Result<CopyStats, CopyError> {
    let report = Arc::new(Report::default());
    // A sender of our own, to see the reader go away (the tap's is in the connection).
    let reader = output.clone();
    let batcher = Batcher::new(
        output,
        shape,
        (client.flow.clone(), progress.clone()),
        &report,
    );
    let _tapped = client.flow.tap(Box::new(batcher));
    let failed = |e: tokio_postgres::Error| CopyError::Database(client.error(&e));
    let copied = async {
        let stream = client.copy_out(sql).await.map_err(failed)?;
        futures::pin_mut!(stream);
        if let Some(row) = stream.next().await {
            row.map_err(failed)?;
            return Err(CopyError::Database(DbError::with_kind(
                DbErrorKind::QueryFailed,
                "a COPY row reached the driver instead of the dump (a bug: please report it)"
                    .into(),
            )));
        }
        Ok(())
    };
    tokio::select! {
        copied = copied => copied?,
        () = reader.closed() => return Err(CopyError::Closed),
    }
    if report.closed.load(SeqCst) {
        return Err(CopyError::Closed);
    }
    let rows = report.rows.load(SeqCst);
    Ok(CopyStats {
        rows: if shape.header {
            rows.saturating_sub(1)
        } else {
            rows
        },
        bytes: report.bytes.load(SeqCst),
    })
}

/// What the batcher sent, read by [`copy_out`] once the COPY is over.
#[derive(Debug, Default)]
struct Report {
    rows: AtomicU64,
    bytes: AtomicU64,
    /// The reader went away.
    closed: AtomicBool,
}

/// How the row being read is batched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Into the batch.
    Small,
    /// Into a chunk of its own, sent whole.
    Whole,
    /// Into slices of [`BATCH_BYTES`].
    Sliced,
}

/// A chunk sent whole, and its place in the read-ahead until it is dropped.
struct Owned {
    bytes: Vec<u8>,
    _taken: TakenOnDrop,
}

impl AsRef<[u8]> for Owned {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// Rows in (from the connection's guard), chunks of bounded size out.
struct Batcher {
    output: PollSender<Bytes>,
    flow: Arc<Flow>,
    progress: Arc<Counters>,
    report: Arc<Report>,
    whole_rows: bool,
    /// Small rows, or the slice or whole row being filled.
    batch: Vec<u8>,
    kind: Kind,
    /// Bytes of the current row still to come.
    left: usize,
    /// Rows not yet counted (they are counted with the chunk that ends them).
    rows: u64,
    /// The chunk waiting to be sent.
    ready: Option<Bytes>,
}

impl Batcher {
    fn new(
        output: mpsc::Sender<Bytes>,
        shape: Shape,
        (flow, progress): (Arc<Flow>, Arc<Counters>),
        report: &Arc<Report>,
    ) -> Batcher {
        Batcher {
            output: PollSender::new(output),
            flow,
            progress,
            report: report.clone(),
            whole_rows: shape.whole_rows,
            batch: Vec::new(),
            kind: Kind::Small,
            left: 0,
            rows: 0,
            ready: None,
        }
    }

    /// The row just read completely.
    fn row_done(&mut self) {
        self.rows += 1;
        match self.kind {
            Kind::Small if self.batch.len() >= BATCH_BYTES => self.flush(),
            Kind::Small => {}
            Kind::Sliced => self.flush(),
            Kind::Whole => {
                let bytes = std::mem::take(&mut self.batch);
                let taken = self.flow.sent_whole(bytes.len());
                self.count(bytes.len());
                self.ready = Some(Bytes::from_owner(Owned {
                    bytes,
                    _taken: taken,
                }));
            }
        }
    }

    /// The batch (or slice) goes out as a chunk.
    fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let chunk = std::mem::take(&mut self.batch);
        self.count(chunk.len());
        self.ready = Some(Bytes::from(chunk));
    }

    /// Count a chunk of `len` bytes, and the rows it ends.
    fn count(&mut self, len: usize) {
        let rows = std::mem::take(&mut self.rows);
        self.report.rows.fetch_add(rows, SeqCst);
        self.report.bytes.fetch_add(len as u64, SeqCst);
        self.progress.add_read(rows, len as u64);
    }
}

impl Tap for Batcher {
    fn row(&mut self, len: usize) {
        debug_assert!(self.ready.is_none());
        self.left = len;
        self.kind = match (len < BATCH_BYTES, self.whole_rows) {
            (true, _) => Kind::Small,
            (false, true) => Kind::Whole,
            (false, false) => Kind::Sliced,
        };
        if self.kind == Kind::Small {
            // A row that would not fit goes into the next chunk: a chunk is at most
            // BATCH_BYTES in an allocation of that size, never regrown (past 1 MiB it would
            // be mapped and faulted in anew) nor half empty (at 2 x BATCH_BYTES, a split
            // dump at --jobs 16 took 5 MiB more).
            if self.batch.len() + len > BATCH_BYTES {
                self.flush();
            }
            if self.batch.capacity() == 0 {
                self.batch.reserve_exact(BATCH_BYTES);
            }
        } else {
            // Sent after the rows batched before it.
            self.flush();
        }
        if len == 0 {
            self.row_done();
        }
    }

    fn data(&mut self, bytes: &[u8]) -> usize {
        debug_assert!(self.ready.is_none());
        let mut n = bytes.len().min(self.left);
        match self.kind {
            Kind::Small => {}
            Kind::Whole => self.batch.reserve_exact(self.left),
            Kind::Sliced => {
                if self.batch.is_empty() {
                    self.batch.reserve_exact(BATCH_BYTES);
                }
                n = n.min(BATCH_BYTES - self.batch.len());
            }
        }
        self.batch.extend_from_slice(&bytes[..n]);
        self.left -= n;
        if self.left == 0 {
            self.row_done();
        } else if self.kind == Kind::Sliced && self.batch.len() == BATCH_BYTES {
            self.flush();
        }
        n
    }

    fn end(&mut self) {
        debug_assert!(self.ready.is_none());
        self.flush();
        self.count(0);
    }

    fn waiting(&self) -> bool {
        self.ready.is_some()
    }

    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(chunk) = self.ready.take() else {
            return Poll::Ready(());
        };
        if self.report.closed.load(SeqCst) {
            return Poll::Ready(());
        }
        match self.output.poll_reserve(cx) {
            Poll::Pending => {
                self.ready = Some(chunk);
                return Poll::Pending;
            }
            Poll::Ready(Ok(())) => {
                if self.output.send_item(chunk).is_ok() {
                    return Poll::Ready(());
                }
            }
            Poll::Ready(Err(_)) => {}
        }
        self.report.closed.store(true, SeqCst);
        Poll::Ready(())
    }
}
