//! Reading one table's chunks ([`crate::split`]) on several connections at once, joined
//! in ctid order into the one stream the compressor reads, so the object is the same as a
//! serial read's.
//!
//! Each worker connection takes the next chunk and COPYs it into a channel of its own
//! (its share of [`split::WINDOW_BYTES`]). The assembler forwards chunk 0's channel until
//! it ends, then chunk 1's, and so on. A chunk is about half its channel, so workers read
//! whole chunks ahead in parallel; one read ahead of its turn that fills its channel waits
//! for the assembler to reach it (the COPY then pauses and the server holds the rest). At
//! most one chunk per worker is taken and not yet forwarded, so memory is bounded by the
//! window whatever the table's size.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::copy_stream::{self, CopyError, CopyStats};
use crate::pg::Session;
use crate::progress::Counters;
use crate::split::{self, Chunk};

/// A chunk being read: its data, then how its COPY ended.
struct Started {
    index: usize,
    data: mpsc::Receiver<Bytes>,
    ended: oneshot::Receiver<Result<CopyStats, CopyError>>,
}

/// What the readers share.
struct Shared<'a> {
    chunks: &'a [Chunk],
    sql: &'a (dyn Fn(&Chunk) -> String + Sync),
    header: bool,
    progress: &'a Arc<Counters>,
    next: AtomicUsize,
    window: Semaphore,
    buffer: usize,
}

/// Read `chunks` (`sql` says how) on `sessions` and send their bytes to `output` in
/// chunk order. Returns the rows and bytes of all chunks.
pub async fn copy_chunks(
    sessions: &[Session],
    chunks: &[Chunk],
    sql: &(dyn Fn(&Chunk) -> String + Sync),
    header: bool,
    output: mpsc::Sender<Bytes>,
    progress: &Arc<Counters>,
) -> Result<CopyStats, CopyError> {
    let shared = Shared {
        chunks,
        sql,
        header,
        progress,
        next: AtomicUsize::new(0),
        window: Semaphore::new(sessions.len().max(1)),
        buffer: split::chunk_buffer(sessions.len()),
    };
    let (started_tx, started_rx) = mpsc::unbounded_channel();
    let readers: Vec<_> = sessions
        .iter()
        .map(|session| read_chunks(session, &shared, started_tx.clone()))
        .collect();
    drop(started_tx);
    let assemble = async {
        let result = assemble(chunks.len(), started_rx, &shared.window, output).await;
        // Whatever happened, no reader may wait for a chunk that will never be taken.
        shared.window.close();
        result
    };
    let (assembled, _) = tokio::join!(assemble, futures::future::join_all(readers));
    assembled
}

/// One worker: take the next chunk while the window allows, COPY it into its channel.
async fn read_chunks(
    session: &Session,
    shared: &Shared<'_>,
    started: mpsc::UnboundedSender<Started>,
) {
    loop {
        let Ok(permit) = shared.window.acquire().await else {
            return;
        };
        // The assembler gives the slot back once it has forwarded the chunk.
        permit.forget();
        let index = shared.next.fetch_add(1, Ordering::SeqCst);
        let Some(chunk) = shared.chunks.get(index) else {
            return;
        };
        let (data_tx, data_rx) = mpsc::channel(shared.buffer);
        let (ended_tx, ended_rx) = oneshot::channel();
        let message = Started {
            index,
            data: data_rx,
            ended: ended_rx,
        };
        if started.send(message).is_err() {
            return;
        }
        let sql = (shared.sql)(chunk);
        let header = shared.header && index == 0;
        // In slices: the reorder window counts the bytes of the chunks it holds.
        let shape = copy_stream::Shape {
            header,
            whole_rows: false,
        };
        let copied = copy_stream::copy_out(session, &sql, shape, data_tx, shared.progress).await;
        let failed = copied.is_err();
        let _ = ended_tx.send(copied);
        if failed {
            // No new chunk starts; the assembler stops when it reaches this one.
            shared.window.close();
            return;
        }
    }
}

/// Forward the chunks' data in order; the sum of their statistics, or the first failure.
async fn assemble(
    count: usize,
    mut started: mpsc::UnboundedReceiver<Started>,
    window: &Semaphore,
    output: mpsc::Sender<Bytes>,
) -> Result<CopyStats, CopyError> {
    let mut waiting: BTreeMap<usize, Started> = BTreeMap::new();
    let mut total = CopyStats::default();
    for next in 0..count {
        let mut chunk = loop {
            if let Some(chunk) = waiting.remove(&next) {
                break chunk;
            }
            match started.recv().await {
                Some(s) => {
                    waiting.insert(s.index, s);
                }
                None => return Err(CopyError::Closed),
            }
        };
        while let Some(bytes) = chunk.data.recv().await {
            output.send(bytes).await.map_err(|_| CopyError::Closed)?;
        }
        let stats = chunk.ended.await.map_err(|_| CopyError::Closed)??;
        total.rows += stats.rows;
        total.bytes += stats.bytes;
        window.add_permits(1);
    }
    Ok(total)
}
