//! Who reads which table: the holder (the session holding the snapshot) alone, or `--jobs`
//! worker connections that import its snapshot. With workers, a table split into chunks ([`crate::split`]) is read
//! by all of them at once, one such table after another, before the remaining tables are
//! shared out, largest first, one table per worker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tracing::error;

use crate::catalog::{ResolvedTable, Select};
use crate::gzip;
use crate::locks;
use crate::pg::{self, DbError, Session, Target};
use crate::pipeline::{self, Context, Source, TableError};
use crate::progress::{self, Counters};
use crate::report::TableReport;
use crate::settings::Settings;
use crate::snapshot::{self, SnapshotInfo};
use crate::split::Chunk;

/// How one table ended.
pub enum Outcome {
    /// Dumped.
    Done(Box<TableReport>),
    /// Failed (the error says why).
    Failed(TableError),
    /// Not started, after another table failed.
    NotAttempted,
}

/// Everything the tables' dump needs.
pub struct Tables<'a> {
    /// The tables, as listed.
    pub tables: &'a [ResolvedTable],
    /// For each table, its chunks when it is split.
    pub chunks: &'a [Option<Vec<Chunk>>],
    /// For each table, the columns a plain `COPY` prints and the format.
    pub selects: &'a [Select],
}

/// The worker connections for a run: `--jobs` of them when a table is split, else one per
/// table at most; none (the holder reads) without an exported snapshot.
pub fn worker_count(jobs: usize, tables: &Tables<'_>, snapshot: &SnapshotInfo) -> usize {
    match snapshot.exported_id {
        None => 0,
        Some(_) if tables.chunks.iter().any(Option::is_some) => jobs,
        Some(_) => jobs.min(tables.tables.len()),
    }
}

/// Dump every table, each outcome in the order listed.
pub async fn dump_tables(
    context: &Context<'_>,
    target: &Target,
    holder: &Session,
    snapshot: &SnapshotInfo,
    tables: &Tables<'_>,
) -> Result<Vec<Outcome>, DbError> {
    let workers = worker_count(context.settings.jobs, tables, snapshot);
    let display = progress::display(
        "dump".to_string(),
        context.counters.clone(),
        context.settings.progress,
    );
    let outcomes = match &snapshot.exported_id {
        Some(id) => {
            let open = Workers {
                target,
                snapshot_id: id,
                count: workers,
                lock_timeout: context.settings.lock_timeout,
                typed: context.settings.format == crate::config::Format::Parquet,
            };
            let sessions = open.open(tables.tables).await?;
            let outcomes = dump_with_workers(&sessions, tables, context).await;
            for session in &sessions {
                let _ = session.batch_execute("COMMIT").await;
            }
            outcomes
        }
        None => dump_serial(holder, tables, context).await,
    };
    display.finish().await;
    Ok(outcomes)
}

/// The context of a run with `workers` tables dumped at once: the machine's compression
/// threads shared among them.
pub fn context_for<'a>(
    settings: &'a Settings,
    store: &'a egress_store::Store,
    date: &'a str,
    counters: &'a Arc<Counters>,
    concurrent_tables: usize,
) -> Context<'a> {
    Context {
        settings,
        compress_threads: (gzip::default_threads() / concurrent_tables.max(1)).max(1),
        store,
        date,
        counters,
    }
}

/// The worker connections to open: how many, into which snapshot.
struct Workers<'a> {
    target: &'a Target,
    snapshot_id: &'a str,
    count: usize,
    lock_timeout: std::time::Duration,
    /// A typed day: the sessions pin what shapes values' text, as the first one does.
    typed: bool,
}

impl Workers<'_> {
    /// Connect the workers, each in the run's snapshot and holding the tables' locks.
    async fn open(&self, tables: &[ResolvedTable]) -> Result<Vec<Session>, DbError> {
        let mut sessions = Vec::with_capacity(self.count);
        for _ in 0..self.count {
            let session = self.target.connect_with_retry(5).await?;
            pg::prepare_session(&session, self.lock_timeout, self.typed).await?;
            snapshot::import(&session, self.snapshot_id).await?;
            locks::in_worker(&session, tables, self.lock_timeout).await?;
            sessions.push(session);
        }
        Ok(sessions)
    }
}

/// Split tables first (all workers on each, one table at a time, all compression threads),
/// then the others shared out among the workers.
async fn dump_with_workers(
    sessions: &[Session],
    tables: &Tables<'_>,
    context: &Context<'_>,
) -> Vec<Outcome> {
    let mut outcomes: Vec<Outcome> = tables
        .tables
        .iter()
        .map(|_| Outcome::NotAttempted)
        .collect();
    let whole_job = Context {
        compress_threads: gzip::default_threads(),
        ..*context
    };
    let mut stop = false;
    for (index, chunks) in tables.chunks.iter().enumerate() {
        let Some(chunks) = chunks else { continue };
        if stop {
            break;
        }
        let source = Source::Chunks {
            sessions,
            chunks,
            select: &tables.selects[index],
        };
        let outcome = dump_in_savepoint(sessions, source, &tables.tables[index], &whole_job).await;
        stop = matches!(outcome, Outcome::Failed(_)) && !context.settings.keep_going;
        outcomes[index] = outcome;
    }
    if stop {
        return outcomes;
    }
    let rest: Vec<usize> = (0..tables.tables.len())
        .filter(|&i| tables.chunks[i].is_none())
        .collect();
    for (index, outcome) in dump_parallel(sessions, tables, rest, context).await {
        outcomes[index] = outcome;
    }
    outcomes
}

/// Dump one table inside a savepoint on each connection that reads it, so that with
/// `--keep-going` a failed COPY does not poison the transaction for the tables after it.
async fn dump_in_savepoint(
    sessions: &[Session],
    source: Source<'_>,
    table: &ResolvedTable,
    context: &Context<'_>,
) -> Outcome {
    let name = table.requested.file_stem();
    for session in sessions {
        let _ = session.batch_execute("SAVEPOINT egress_table").await;
    }
    let outcome = pipeline::dump_table(source, table, context).await;
    let end = match outcome {
        Ok(_) => "RELEASE SAVEPOINT egress_table",
        Err(_) => "ROLLBACK TO SAVEPOINT egress_table",
    };
    for session in sessions {
        let _ = session.batch_execute(end).await;
    }
    match outcome {
        Ok(report) => Outcome::Done(Box::new(report)),
        Err(e) => {
            let line = egress_common::error::chain(&e);
            error!(table = %name, error = %line, "Table '{name}': Dump failed.");
            Outcome::Failed(e)
        }
    }
}

async fn dump_serial(
    session: &Session,
    tables: &Tables<'_>,
    context: &Context<'_>,
) -> Vec<Outcome> {
    let mut outcomes = Vec::with_capacity(tables.tables.len());
    let mut stop = false;
    for ((table, select), chunks) in tables.tables.iter().zip(tables.selects).zip(tables.chunks) {
        if stop {
            outcomes.push(Outcome::NotAttempted);
            continue;
        }
        let sessions = std::slice::from_ref(session);
        // Chunks here are a shared day's piece of a table: its page range.
        let source = match chunks {
            Some(chunks) => Source::Chunks {
                sessions,
                chunks,
                select,
            },
            None => Source::Whole { session, select },
        };
        let outcome = dump_in_savepoint(sessions, source, table, context).await;
        stop = matches!(outcome, Outcome::Failed(_)) && !context.settings.keep_going;
        outcomes.push(outcome);
    }
    outcomes
}

/// Workers take the tables `which` largest first from a shared queue; after a failure
/// (without `--keep-going`) no new table is started. Returns (table index, outcome).
async fn dump_parallel(
    sessions: &[Session],
    tables: &Tables<'_>,
    mut which: Vec<usize>,
    context: &Context<'_>,
) -> Vec<(usize, Outcome)> {
    which.sort_by_key(|&i| std::cmp::Reverse(tables.tables[i].estimated_bytes));
    let queue = Mutex::new(std::collections::VecDeque::from(which));
    let stop = AtomicBool::new(false);
    let results = Mutex::new(Vec::new());
    let workers = sessions.iter().map(|session| async {
        while !stop.load(Ordering::SeqCst) {
            let next = queue.lock().ok().and_then(|mut q| q.pop_front());
            let Some(index) = next else { break };
            let one = std::slice::from_ref(session);
            let select = &tables.selects[index];
            let source = Source::Whole { session, select };
            let outcome = dump_in_savepoint(one, source, &tables.tables[index], context).await;
            if matches!(outcome, Outcome::Failed(_)) && !context.settings.keep_going {
                stop.store(true, Ordering::SeqCst);
            }
            if let Ok(mut r) = results.lock() {
                r.push((index, outcome));
            }
        }
    });
    futures::future::join_all(workers).await;
    results.into_inner().unwrap_or_default()
}
