//! One dump run, as a short sequence of named steps: check the request, open the output,
//! connect, take the snapshot, find the tables, dump them, write the manifest.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use egress_common::day::lease::{self, Lease};
use egress_common::manifest::{self, FileEntry, Manifest, TableEntry};
use egress_common::{ConfigError, Location};
use egress_store::{Body, PutOptions, Store};
use sha2::Digest;
use tokio_postgres::Client;
use tracing::{error, info, warn};

use crate::catalog::{self, Problem, ResolvedTable, Select};
use crate::config::Format;
use crate::describe;
use crate::locks;
use crate::pg::Params;
use crate::pg::{self, DbError, DbErrorKind, Session, Target};
use crate::pipeline::TableError;
use crate::progress::Counters;
use crate::report::TableReport;
use crate::settings::Settings;
use crate::shards;
use crate::snapshot::{self, SnapshotInfo};
use crate::split::{self, Chunk};
use crate::tables::TableRef;
use crate::typed::{self, TablePlan};
use crate::workers::{self, Outcome};

/// The database side of a run: how to connect, and the connection holding the snapshot.
pub(crate) struct Database {
    pub(crate) target: Target,
    pub(crate) coordinator: Session,
    /// `server_version_num` (e.g. 150010).
    server_version_num: i32,
}

/// Why an attempt at the day failed, typed where the run decides on it: a recovery
/// conflict (a database failure of that kind, also inside a table's) starts the day again.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AttemptError {
    /// The database, outside any one table (connecting, locking, the snapshot).
    #[error("{0}")]
    Db(#[from] DbError),
    /// Tables failed.
    #[error("{0}")]
    Tables(#[from] TablesFailed),
    /// Anything else: the store, the manifest, the configuration.
    #[error("{0}")]
    Other(#[from] anyhow::Error),
}

impl From<egress_store::StoreError> for AttemptError {
    fn from(e: egress_store::StoreError) -> Self {
        AttemptError::Other(e.into())
    }
}

impl From<egress_common::ConfigError> for AttemptError {
    fn from(e: egress_common::ConfigError) -> Self {
        AttemptError::Other(e.into())
    }
}

impl AttemptError {
    /// The database failure's kind, when the database failed.
    fn db_kind(&self) -> Option<DbErrorKind> {
        match self {
            AttemptError::Db(e) => Some(e.kind),
            AttemptError::Tables(t) => t.first.db_kind(),
            AttemptError::Other(_) => None,
        }
    }

    /// The closing `Failed.` line, when tables failed.
    pub(crate) fn log_tables(&self) {
        if let AttemptError::Tables(t) = self {
            t.log();
        }
    }

    /// The error, for `main` (each typed error in the chain, for the exit code).
    pub(crate) fn into_anyhow(self) -> anyhow::Error {
        match self {
            AttemptError::Db(e) => e.into(),
            AttemptError::Tables(e) => e.into(),
            AttemptError::Other(e) => e,
        }
    }
}

/// Tables failed: how many, which, and the first failure (what a retry decides on).
#[derive(Debug, thiserror::Error)]
#[error("{summary}")]
pub(crate) struct TablesFailed {
    summary: String,
    #[source]
    first: TableError,
    tally: Box<Tally>,
}

/// Run a whole dump as `settings` say.
pub async fn run(settings: &Settings) -> anyhow::Result<Vec<TableReport>> {
    // Another index of a shared day follows the coordinator's plan, under its lease.
    if settings.shards.index > 0 && !settings.dry_run {
        return shards::join::run(settings).await;
    }
    let store = open_output(settings).await?;
    // One writer per date folder: a dry run writes nothing and takes no lease.
    if settings.dry_run {
        return dump_day(settings, &store, None).await;
    }
    let key = lease::key_in(&settings.date);
    let lease = lease::acquire(&store, &key, "egress-dump", settings.lease).await?;
    // Done, failed or stopped by a signal, a shared day's coordination objects go.
    let coordination = settings
        .shards
        .sharded()
        .then(|| shards::clear_on_stop(store.clone(), &settings.date));
    // Every write of the day asks the lease first: a run that lost it writes nothing more.
    let fenced = egress_store::guarded(store, lease.fence());
    let outcome = dump_day(settings, &fenced, Some(&lease)).await;
    if let Some(ticket) = coordination {
        egress_store::stop::done(ticket);
        shards::clear(&fenced, &settings.date).await;
    }
    let outcome = lease::explain_failure(outcome, &lease).await;
    lease.release().await;
    outcome
}

/// The day's steps, under the lease (none for a dry run). A standby may cancel a read
/// for a recovery conflict: the day then starts again from a fresh snapshot (up to
/// `--conflict-retries` times), so that it stays one snapshot; objects written from the
/// abandoned one are written again, and no manifest vouches for them meanwhile.
async fn dump_day(
    settings: &Settings,
    store: &Store,
    lease: Option<&Lease>,
) -> anyhow::Result<Vec<TableReport>> {
    let run_started = manifest::now_rfc3339();
    if let Some(lease) = lease {
        clear_dead_uploads(store, &settings.date, lease.since()).await;
    }
    let mut retries = 0;
    loop {
        let standby = OnceLock::new();
        let attempt = Attempt {
            settings,
            store,
            lease,
            run_started: run_started.clone(),
            retries,
            standby: &standby,
        };
        let outcome = dump_snapshot(attempt).await;
        let conflict = match &outcome {
            Err(e) => {
                e.db_kind() == Some(DbErrorKind::RecoveryConflict)
                    || lost_to_a_conflict(e, &standby).await
            }
            Ok(_) => false,
        };
        // Not in a shared day: its other pods read the abandoned snapshot; the day fails,
        // and the Job's next attempt (or the next run) starts all pods afresh.
        let retries_left = match settings.shards.sharded() {
            true => 0,
            false => settings.conflict_retries,
        };
        match outcome {
            Err(e) if conflict && retries < retries_left => {
                retries += 1;
                warn!(
                    retry = retries,
                    of = settings.conflict_retries,
                    error = %egress_common::error::chain(&e),
                    "the standby cancelled a read for a recovery conflict: starting the day again from a fresh snapshot (retry {retries} of {})",
                    settings.conflict_retries
                );
            }
            Err(e) if conflict => {
                e.log_tables();
                return Err(e.into_anyhow().context(format!(
                    "still cancelled for recovery conflicts after {retries} retries from a fresh snapshot: raise max_standby_streaming_delay or enable hot_standby_feedback on the standby, raise --conflict-retries, or read from the primary"
                )));
            }
            outcome => {
                return outcome.map_err(|e| {
                    e.log_tables();
                    e.into_anyhow()
                })
            }
        }
    }
}

/// One attempt at the day.
struct Attempt<'a> {
    settings: &'a Settings,
    store: &'a Store,
    lease: Option<&'a Lease>,
    run_started: String,
    retries: u32,
    /// Set on a standby: where to reach it, and the conflicts it had counted at the start.
    standby: &'a OnceLock<(Target, i64)>,
}

/// A session lost during an attempt on a standby that has since counted more recovery
/// conflicts: the backend was terminated for one, but its closing message was lost (the
/// server resets a connection that has unread input, e.g. the next chunk's query).
async fn lost_to_a_conflict(error: &AttemptError, standby: &OnceLock<(Target, i64)>) -> bool {
    let lost = error.db_kind() == Some(DbErrorKind::ConnectionLost);
    let Some((target, before)) = standby.get().filter(|_| lost) else {
        return false;
    };
    // A terminated backend's statistics reach the server as it exits: allow a moment.
    for _ in 0..5 {
        if pg::conflicts_counted(target)
            .await
            .is_some_and(|now| now > *before)
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    false
}

/// The day from one snapshot: connect, take the snapshot, find the tables, dump them,
/// write the manifest.
async fn dump_snapshot(attempt: Attempt<'_>) -> Result<Vec<TableReport>, AttemptError> {
    let Attempt {
        settings, store, ..
    } = attempt;
    let db = connect(settings, attempt.standby).await?;
    let mut tables = find_tables(&db.coordinator, &settings.tables).await?;
    let Some(lease) = attempt.lease else {
        // In a transaction of its own: measuring takes savepoints.
        snapshot::open(&db.coordinator).await?;
        measure(&db.coordinator, &mut tables).await?;
        print_plan(&tables, store, settings);
        return Ok(Vec::new());
    };
    // One snapshot for every table of the run, taken with the tables locked (as pg_dump
    // does): the day's files agree with each other and with the manifest.
    let (snapshot, tables) = lock_and_snapshot(settings, &db, tables).await?;
    let plans = read_plans(&db.coordinator, &tables).await?;
    // A re-run replaces the day: first withdraw the completion marker, so the folder never
    // looks complete while its objects are being replaced.
    store.delete(&manifest::key_in(&settings.date)).await?;
    let shared = share_out(settings, store, lease, &db, &snapshot, &tables).await?;
    remove_stale(store, settings, &tables, shared.as_ref()).await?;
    let mine = match &shared {
        Some(share) => share.mine(&tables),
        None => tables.clone(),
    };
    let mut reports = dump_share(settings, store, &db, &snapshot, &mine).await?;
    if let Some(share) = &shared {
        // The snapshot stays exported until every other index has reported.
        reports.extend(share.hear(store, settings).await?);
    }
    let _ = db.coordinator.batch_execute("COMMIT").await;
    let reports = in_listed_order(&tables, reports)?;
    let parts = ManifestParts {
        settings,
        run_started: attempt.run_started,
        snapshot,
    };
    let mut manifest = build_manifest(parts, &tables, &reports, &plans);
    manifest.descriptor = Some(write_descriptor(store, &manifest, &plans, settings.format).await?);
    check_written(store, &manifest, &reports, lease).await?;
    // A local day's objects are on disk before its manifest is named, and all of it
    // before the run says it succeeded.
    store
        .persist()
        .await
        .context("cannot flush the day to disk")?;
    write_manifest(store, &settings.date, &manifest).await?;
    store
        .persist()
        .await
        .context("cannot flush the day to disk")?;
    // A table the pods shared has a report per piece: named once.
    let mut names: Vec<&str> = reports.iter().map(|r| r.table.as_str()).collect();
    names.dedup();
    let peak_rss_mib = egress_common::memory::peak_rss_mib();
    let conflict_retries = attempt.retries;
    info!(tables = names.len(), succeeded = %names.join(" "), conflict_retries, peak_rss_mib, "Success.");
    Ok(reports)
}

/// Dump `tables` (all of the day's, or this index's share) in `snapshot`, as `--jobs` says.
pub(crate) async fn dump_share(
    settings: &Settings,
    store: &Store,
    db: &Database,
    snapshot: &SnapshotInfo,
    tables: &[ResolvedTable],
) -> Result<Vec<TableReport>, AttemptError> {
    let plans = read_plans(&db.coordinator, tables).await?;
    let chunks = plan_splits(settings, db, tables).await?;
    let selects = selects(settings, &plans);
    let which = workers::Tables {
        tables,
        chunks: &chunks,
        selects: &selects,
    };
    let counters = Arc::new(Counters::default());
    let concurrent = workers::worker_count(settings.jobs, &which, snapshot).max(1);
    let job = workers::job_for(settings, store, &settings.date, &counters, concurrent);
    let outcomes =
        workers::dump_tables(&job, &db.target, &db.coordinator, snapshot, &which).await?;
    Ok(all_succeeded(tables, outcomes)?)
}

/// With `--shards`: share the tables out between the indexes (a table over
/// `--split-larger-than` in one page range per index, the others whole, by size) and
/// publish the plan (the snapshot is exported for them); `None` for a day dumped by this
/// process alone.
async fn share_out(
    settings: &Settings,
    store: &Store,
    lease: &Lease,
    db: &Database,
    snapshot: &SnapshotInfo,
    tables: &[ResolvedTable],
) -> Result<Option<shards::Shared>, AttemptError> {
    if !settings.shards.sharded() {
        return Ok(None);
    }
    let count = settings.shards.count;
    let mut pieces = Vec::with_capacity(tables.len());
    for table in tables {
        pieces.push(split_between_pods(settings, db, table).await?);
    }
    let whole: Vec<usize> = (0..tables.len()).filter(|&i| pieces[i].is_none()).collect();
    let sizes: Vec<i64> = whole.iter().map(|&i| tables[i].estimated_bytes).collect();
    let mut shard_of = vec![0; tables.len()];
    for (&i, shard) in whole.iter().zip(shards::assign(&sizes, count)) {
        shard_of[i] = shard;
    }
    let mut assigned = Vec::new();
    for (i, table) in tables.iter().enumerate() {
        let entry = |shard, piece| shards::Assigned {
            table: table.requested.file_stem(),
            oid: table.oid,
            shard,
            piece,
        };
        match &pieces[i] {
            Some(ranges) => assigned.extend(ranges.iter().map(|&p| entry(p.part.index, Some(p)))),
            None => assigned.push(entry(shard_of[i], None)),
        }
    }
    let plan = shards::Plan {
        run_id: lease.run_id().to_string(),
        shards: count,
        snapshot: snapshot.clone(),
        format: settings.format.name().to_string(),
        header: settings.header,
        compression_level: settings.compression_level,
        tables: assigned,
    };
    let published = shards::coordinate::publish(store, &settings.date, &plan).await?;
    Ok(Some(shards::Shared { plan, published }))
}

/// A table the pods share, one page range each (over `--split-larger-than`, a plain
/// table, PostgreSQL 14 or later); `None` for a table one pod dumps whole.
async fn split_between_pods(
    settings: &Settings,
    db: &Database,
    table: &ResolvedTable,
) -> Result<Option<Vec<catalog::Piece>>, AttemptError> {
    let Some(threshold) = settings.split_larger_than else {
        return Ok(None);
    };
    let size = catalog::table_size(&db.coordinator, table.oid)
        .await
        .map_err(|e| DbError::new(&format!("cannot measure '{}'", table.requested), &e))?;
    let of = settings.shards.count;
    let version = db.server_version_num;
    let Ok(ranges) = split::pieces(table.kind, size, Some(threshold), of, version) else {
        return Ok(None);
    };
    let name = table.requested.file_stem();
    info!(table = %name, pieces = of, pages = size.pages, "Table '{name}': shared by the {of} pods, one page range and one object each.");
    Ok(Some(
        ranges
            .into_iter()
            .map(|c| catalog::Piece {
                part: manifest::PartOf {
                    index: c.index as u64,
                    of,
                },
                first: c.first,
                end: c.end,
            })
            .collect(),
    ))
}

/// Remove what earlier runs wrote for the day's tables in another format or layout (a
/// table shared by more pods, or whole, or as CSV): once the manifest is withdrawn, so
/// that the folder holds each table in the one form this run writes it.
async fn remove_stale(
    store: &Store,
    settings: &Settings,
    tables: &[ResolvedTable],
    shared: Option<&shards::Shared>,
) -> anyhow::Result<()> {
    let extension = settings.format.extension();
    let expected: Vec<String> = match shared {
        Some(share) => (0..settings.shards.count)
            .flat_map(|i| share.plan.objects(i, extension))
            .collect(),
        None => tables
            .iter()
            .map(|t| format!("{}.{extension}", t.requested.file_stem()))
            .collect(),
    };
    let stems: Vec<String> = tables.iter().map(|t| t.requested.file_stem()).collect();
    let folder = format!("{}/", settings.date);
    let mut pages = store.list(&folder);
    let mut stale = Vec::new();
    while let Some(page) = futures::StreamExt::next(&mut pages).await {
        for object in page? {
            let Some(file) = object.key.strip_prefix(&folder) else {
                continue;
            };
            let ours = stems.iter().any(|s| manifest::is_object_of(file, s));
            if ours && !expected.iter().any(|e| e == file) {
                stale.push(object.key);
            }
        }
    }
    for key in stale {
        store.delete(&key).await?;
        info!(key = %key, "removed an earlier run's object of this day's tables (another format or layout)");
    }
    Ok(())
}

/// The reports of every table, in the order listed (the manifest's order); a table the
/// pods shared has one report per piece, in piece order, and must have all of them.
fn in_listed_order(
    tables: &[ResolvedTable],
    reports: Vec<TableReport>,
) -> Result<Vec<TableReport>, AttemptError> {
    let mut ordered = Vec::with_capacity(reports.len());
    for table in tables {
        let name = table.requested.file_stem();
        let mut mine: Vec<&TableReport> = reports.iter().filter(|r| r.table == name).collect();
        mine.sort_by_key(|r| r.part.map(|p| p.index));
        let expected = mine.first().and_then(|r| r.part).map_or(1, |p| p.of) as usize;
        if mine.len() != expected {
            return Err(anyhow::anyhow!(
                "{} of the {expected} object(s) of table '{name}' were reported: run the Job again",
                mine.len()
            )
            .into());
        }
        ordered.extend(mine.into_iter().cloned());
    }
    Ok(ordered)
}

/// Open the transaction, lock the tables, take the snapshot; then look the tables up again
/// inside it (a name may have changed hands before its lock) and confirm the locks.
async fn lock_and_snapshot(
    settings: &Settings,
    db: &Database,
    found: Vec<ResolvedTable>,
) -> Result<(SnapshotInfo, Vec<ResolvedTable>), AttemptError> {
    snapshot::open(&db.coordinator).await?;
    locks::before_snapshot(&db.coordinator, &found, settings.lock_timeout).await?;
    let export = settings.jobs > 1 || settings.shards.sharded();
    let snapshot = snapshot::take(&db.coordinator, export).await?;
    let mut tables = look_again(&db.coordinator, &found).await?;
    locks::confirm(&db.coordinator, &tables).await?;
    measure(&db.coordinator, &mut tables).await?;
    Ok((snapshot, tables))
}

/// The tables found before the locks, as they are inside the snapshot; a name gone
/// meanwhile (dropped, or renamed away before its lock) fails the run.
async fn look_again(
    client: &Client,
    found: &[ResolvedTable],
) -> Result<Vec<ResolvedTable>, AttemptError> {
    let again = catalog::again(client, found)
        .await
        .map_err(|e| DbError::new("cannot look the tables up again", &e))?;
    found
        .iter()
        .zip(again)
        .map(|(before, now)| {
            now.ok_or_else(|| {
                AttemptError::Other(anyhow::anyhow!(
                    "table '{}' ({}.{}) was dropped or renamed while it was being locked: run again",
                    before.requested,
                    before.schema,
                    before.name
                ))
            })
        })
        .collect()
}

pub(crate) async fn measure(client: &Client, tables: &mut [ResolvedTable]) -> Result<(), DbError> {
    catalog::measure(client, tables)
        .await
        .map_err(|e| DbError::new("cannot measure the tables", &e))
}

/// Which tables are read in chunks (`--split-larger-than`), each decision logged.
async fn plan_splits(
    settings: &Settings,
    db: &Database,
    tables: &[ResolvedTable],
) -> Result<Vec<Option<Vec<Chunk>>>, AttemptError> {
    let mut plans = Vec::with_capacity(tables.len());
    for table in tables {
        // A shared day's piece is its page range, read in one stream (a header, if any,
        // on the first piece only, so the pieces in order are the whole table), whatever
        // this pod's own --split-larger-than says.
        if let Some(piece) = table.piece {
            let (first, end) = (piece.first, piece.end);
            let index = piece.part.index as usize;
            plans.push(Some(vec![Chunk { index, first, end }]));
            continue;
        }
        let Some(threshold) = settings.split_larger_than else {
            plans.push(None);
            continue;
        };
        let size = catalog::table_size(&db.coordinator, table.oid)
            .await
            .map_err(|e| DbError::new(&format!("cannot measure '{}'", table.requested), &e))?;
        let name = table.requested.file_stem();
        let decision = split::decide(
            table.kind,
            size,
            Some(threshold),
            settings.jobs,
            db.server_version_num,
        );
        match &decision {
            Ok(chunks) => {
                info!(table = %name, chunks = chunks.len(), pages = size.pages, "Table '{name}': read in {} chunks by {} workers.", chunks.len(), settings.jobs)
            }
            Err(split::Whole::Small) => {}
            Err(why) => {
                info!(table = %name, reason = ?why, "Table '{name}' is larger than --split-larger-than but is read in one stream: {}", why.explain())
            }
        }
        plans.push(decision.ok());
    }
    Ok(plans)
}

/// Abort the uploads killed runs left: in this run's date folder (its lease is ours) all
/// older ones; in other folders only where no live run holds the folder's lease.
async fn clear_dead_uploads(store: &Store, date: &str, since: i64) {
    let covering = |key: &str| {
        let folder = key.split('/').next().unwrap_or("");
        (folder != date).then(|| lease::key_in(folder))
    };
    let aborted = lease::abort_dead_uploads(store, "", since, covering).await;
    if aborted > 0 {
        info!(aborted, "aborted multipart uploads left by an earlier run");
    }
}

/// Before the manifest vouches for the day: every object is still the one this run wrote
/// (another run that bypassed the lease may have replaced it), and the lease is still ours.
async fn check_written(
    store: &Store,
    manifest: &Manifest,
    reports: &[TableReport],
    lease: &Lease,
) -> anyhow::Result<()> {
    let date = &manifest.date;
    for (entry, report) in manifest.tables.iter().zip(reports) {
        let key = egress_store::key::join(date, &entry.file);
        let meta = store.head(&key).await?;
        let wrote = (entry.compressed_bytes, report.committed.etag.as_deref());
        let same_etag = match (wrote.1, meta.etag.as_deref()) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        if meta.size != wrote.0 || !same_etag {
            anyhow::bail!(
                "{} is no longer the object this run wrote ({} bytes, ETag {}; this run wrote {} bytes, ETag {}): another run wrote the same day; no manifest written, run again",
                store.describe(&key),
                meta.size,
                meta.etag.as_deref().unwrap_or("-"),
                wrote.0,
                wrote.1.unwrap_or("-")
            );
        }
    }
    lease.check().await?;
    Ok(())
}

/// Open the output and check it before touching the database: credentials, bucket, a
/// writable directory.
pub(crate) async fn open_output(settings: &Settings) -> anyhow::Result<Store> {
    let store = settings.output.open(&settings.s3, settings.local).await?;
    // A dry run writes nothing, so a local output that does not exist yet is fine.
    let local = matches!(settings.output, Location::Local(_));
    if !(settings.dry_run && local) {
        store.probe(!settings.dry_run).await?;
    }
    Ok(store)
}

pub(crate) async fn connect(
    settings: &Settings,
    standby: &OnceLock<(Target, i64)>,
) -> Result<Database, AttemptError> {
    let conninfo = settings.database_url.as_ref().map(|u| u.expose());
    let params = Params::resolve(conninfo, &pg::env_from_process())?;
    let target = pg::resolve(&params, settings.timeout)?;
    let coordinator = target.connect_with_retry(5).await?;
    pg::prepare_session(&coordinator, settings.lock_timeout).await?;
    let server = pg::server_facts(&coordinator).await?;
    if server.standby {
        let _ = standby.set((target.clone(), server.conflicts));
        info!(
            max_standby_streaming_delay = %server.max_standby_streaming_delay,
            hot_standby_feedback = %server.hot_standby_feedback,
            "Reading from a standby: a long read may be cancelled by a recovery conflict (then retried from a fresh snapshot, --conflict-retries {})",
            settings.conflict_retries
        );
    }
    Ok(Database {
        target,
        coordinator,
        server_version_num: server.version_num,
    })
}

/// Look every table up; all problems are reported at once.
pub(crate) async fn find_tables(
    client: &Client,
    tables: &[TableRef],
) -> Result<Vec<ResolvedTable>, AttemptError> {
    let mut resolved = Vec::new();
    let mut problems = Vec::new();
    for table in tables {
        let found = catalog::resolve(client, table)
            .await
            .map_err(|e| DbError::new(&format!("cannot look up table '{table}'"), &e))?;
        match found {
            Ok(found) => resolved.push(found),
            Err(Problem::Missing) => problems.push(format!(
                "'{table}' does not exist (or is not visible to this user)"
            )),
            Err(Problem::NotReadable) => problems.push(format!(
                "'{table}' is not readable (GRANT SELECT to the dump user)"
            )),
            Err(Problem::NotATable(kind)) => problems.push(format!(
                "'{table}' is not a table or view (relkind '{kind}')"
            )),
        }
    }
    if !problems.is_empty() {
        return Err(ConfigError::new(format!(
            "{} of {} tables cannot be dumped: {}; fix TABLES or the database grants",
            problems.len(),
            tables.len(),
            problems.join(", ")
        ))
        .into());
    }
    for (i, table) in resolved.iter().enumerate() {
        if let Some(twin) = resolved[..i].iter().find(|t| t.oid == table.oid) {
            return Err(ConfigError::new(format!(
                "'{}' and '{}' are the same table ({}.{}): list it once in TABLES",
                twin.requested.spelled(),
                table.requested.spelled(),
                table.schema,
                table.name
            ))
            .into());
        }
    }
    Ok(resolved)
}

/// Each table's columns with their types, and its primary key.
async fn read_plans(client: &Client, tables: &[ResolvedTable]) -> Result<Vec<TablePlan>, DbError> {
    let mut plans = Vec::with_capacity(tables.len());
    for table in tables {
        let plan = typed::catalog::table_plan(client, table.oid)
            .await
            .map_err(|e| {
                DbError::new(
                    &format!("cannot read the columns of '{}'", table.requested),
                    &e,
                )
            })?;
        plans.push(plan);
    }
    Ok(plans)
}

/// What each table's `COPY` selects, in the run's format.
fn selects(settings: &Settings, plans: &[TablePlan]) -> Vec<Select> {
    plans
        .iter()
        .map(|plan| match settings.format {
            Format::Csv => {
                let names: Vec<String> = plan.columns.iter().map(|c| c.name.clone()).collect();
                Select::csv(&names, settings.header)
            }
            Format::Parquet => Select::binary(Arc::new(plan.clone())),
        })
        .collect()
}

/// Write the day's `datapackage.json`; what the manifest records of it.
async fn write_descriptor(
    store: &Store,
    manifest: &Manifest,
    plans: &[TablePlan],
    format: Format,
) -> anyhow::Result<FileEntry> {
    let value = describe::descriptor(manifest, plans, format);
    let body = serde_json::to_vec_pretty(&value).context("cannot encode the descriptor")?;
    let entry = FileEntry {
        file: describe::FILE_NAME.to_string(),
        bytes: body.len() as u64,
        sha256: hex::encode(sha2::Sha256::digest(&body)),
    };
    let key = egress_store::key::join(&manifest.date, describe::FILE_NAME);
    put_json(store, &key, body).await?;
    Ok(entry)
}

fn print_plan(tables: &[ResolvedTable], store: &Store, settings: &Settings) {
    let (date, extension) = (&settings.date, settings.format.extension());
    println!(
        "{:<32} {:>14} {:>12}  target",
        "table", "est. rows", "est. size"
    );
    for t in tables {
        let target = store.describe(&format!("{date}/{}.{extension}", t.requested.file_stem()));
        let rows = if t.estimated_rows < 0 {
            "unknown".to_string()
        } else {
            t.estimated_rows.to_string()
        };
        println!(
            "{:<32} {:>14} {:>12}  {target}",
            t.requested.file_stem(),
            rows,
            egress_common::units::human_bytes(t.estimated_bytes.max(0) as u64)
        );
    }
    info!(tables = tables.len(), "Dry run: nothing was written.");
}

/// The reports, or (when any table failed) an error naming them all: no manifest then,
/// so the day stays visibly incomplete. The closing `Failed.` line is the caller's
/// ([`TablesFailed::log`]), once it knows the run ends (a recovery conflict may start the
/// day again).
fn all_succeeded(
    tables: &[ResolvedTable],
    outcomes: Vec<Outcome>,
) -> Result<Vec<TableReport>, TablesFailed> {
    let mut reports = Vec::new();
    let mut failed: Vec<(String, TableError)> = Vec::new();
    let mut skipped: Vec<String> = Vec::new();
    for (table, outcome) in tables.iter().zip(outcomes) {
        match outcome {
            Outcome::Done(report) => reports.push(*report),
            Outcome::Failed(e) => failed.push((table.requested.file_stem(), e)),
            Outcome::NotAttempted => skipped.push(table.requested.file_stem()),
        }
    }
    if failed.is_empty() {
        return Ok(reports);
    }
    let ok: Vec<&str> = reports.iter().map(|r| r.table.as_str()).collect();
    let bad: Vec<String> = failed.iter().map(|(t, _)| t.clone()).collect();
    let summary = format!(
        "{} table(s) failed ({}); first failure",
        bad.len(),
        bad.join(", ")
    );
    let tally = Box::new(Tally {
        succeeded: ok.join(" "),
        failed: bad.join(" "),
        not_attempted: skipped.join(" "),
        dumped: ok.len(),
        of: ok.len() + bad.len() + skipped.len(),
    });
    // The first failure is what the caller retries on; its text names its table.
    let (_, first) = failed.swap_remove(0);
    Err(TablesFailed {
        summary,
        first,
        tally,
    })
}

/// Which tables ended how, for the closing `Failed.` line.
#[derive(Debug)]
pub(crate) struct Tally {
    succeeded: String,
    failed: String,
    not_attempted: String,
    dumped: usize,
    of: usize,
}

impl TablesFailed {
    /// The run's closing line: which tables succeeded, failed, were not attempted.
    pub(crate) fn log(&self) {
        let t = &self.tally;
        error!(
            succeeded = %t.succeeded,
            failed = %t.failed,
            not_attempted = %t.not_attempted,
            "Failed. {} of {} tables dumped.",
            t.dumped,
            t.of
        );
    }
}

/// What the manifest records about the run as a whole.
struct ManifestParts<'a> {
    settings: &'a Settings,
    run_started: String,
    snapshot: SnapshotInfo,
}

fn build_manifest(
    run: ManifestParts<'_>,
    tables: &[ResolvedTable],
    reports: &[TableReport],
    plans: &[TablePlan],
) -> Manifest {
    let format = run.settings.format;
    let date = &run.settings.date;
    // One entry per object: a table pods shared has one per piece, in order.
    let entries = reports
        .iter()
        .filter_map(|report| {
            let at = tables
                .iter()
                .position(|t| t.requested.file_stem() == report.table)?;
            let (table, plan) = (&tables[at], &plans[at]);
            let stem = table.requested.file_stem();
            let file = match report.part {
                Some(part) => part.file(&stem, format.extension()),
                None => format!("{stem}.{}", format.extension()),
            };
            Some(TableEntry {
                table: report.table.clone(),
                schema: table.schema.clone(),
                name: table.name.clone(),
                key: run.settings.output.key_for(&format!("{date}/{file}")),
                file,
                format: Some(format.name().to_string()),
                rows: report.rows,
                uncompressed_bytes: report.stats.uncompressed_bytes,
                compressed_bytes: report.stats.compressed_bytes,
                sha256: report.stats.compressed_sha256.clone(),
                uncompressed_sha256: report.stats.uncompressed_sha256.clone(),
                columns: manifest_columns(plan, format),
                primary_key: (!plan.primary_key.is_empty()).then(|| plan.primary_key.clone()),
                gzip_members: (format == Format::Csv).then_some(report.stats.gzip_members),
                chunks: Some(report.chunks as u64),
                part_sizes: report.committed.part_sizes.clone(),
                part: report.part,
            })
        })
        .collect();
    Manifest {
        format_version: manifest::FORMAT_VERSION,
        tool: "egress-dump".into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        date: date.clone(),
        run_started: run.run_started,
        run_finished: manifest::now_rfc3339(),
        snapshot: SnapshotInfo {
            exported_id: None,
            ..run.snapshot
        },
        compression_level: run.settings.compression_level,
        header: run.settings.header,
        tables: entries,
        descriptor: None,
    }
}

/// The manifest's columns: declared type, `NOT NULL`, and the type written.
fn manifest_columns(plan: &TablePlan, format: Format) -> Vec<catalog::Column> {
    plan.columns
        .iter()
        .map(|c| catalog::Column {
            name: c.name.clone(),
            type_name: c.type_name.clone(),
            not_null: Some(c.not_null),
            written_as: Some(match format {
                Format::Csv => "text".to_string(),
                Format::Parquet => c.kind.to_string(),
            }),
        })
        .collect()
}

async fn write_manifest(store: &Store, date: &str, manifest: &Manifest) -> anyhow::Result<()> {
    let body = serde_json::to_vec_pretty(manifest).context("cannot encode the manifest")?;
    put_json(store, &manifest::key_in(date), body).await
}

/// PUT a small JSON object, with its Content-MD5.
pub(crate) async fn put_json(store: &Store, key: &str, body: Vec<u8>) -> anyhow::Result<()> {
    use md5::{Digest, Md5};
    let options = PutOptions {
        attributes: egress_store::Attributes {
            content_type: Some("application/json".into()),
            ..Default::default()
        },
        content_md5: Some(Md5::digest(&body).into()),
        ..Default::default()
    };
    store.put(key, Body::from_bytes(body), &options).await?;
    Ok(())
}
