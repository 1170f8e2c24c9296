//! An index other than 0: wait for the coordinator's plan, import its snapshot, dump this
//! index's share, report it, and stay until the coordinator has ended the day (exiting 0
//! only when the day's manifest is written), so a pod's success means the day's.
//!
//! Whatever ends a shard's attempt without the day (the coordinator gone, its lease taken)
//! is exit 1, never 3: the Job retries the index, which joins the next attempt's plan.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use egress_common::day::lease;
use egress_common::manifest::{self, Manifest};
use egress_common::ConfigError;
use egress_store::{ErrorKind, Guard, Store, StoreError};
use tokio::sync::Notify;
use tracing::info;

use super::{objects, plan_key, status_key, Plan, State, Status};
use crate::catalog::ResolvedTable;
use crate::report::TableReport;
use crate::run as day;
use crate::settings::Settings;
use crate::snapshot;

/// How often a shard looks for the plan, and for the day's end.
const POLL: Duration = Duration::from_millis(250);

/// Dump this index's share of the day.
pub async fn run(settings: &Settings) -> anyhow::Result<Vec<TableReport>> {
    let store = day::open_output(settings).await?;
    let (plan, date) = wait_for_plan(&store, settings).await?;
    // A pod started after midnight joins the day its coordinator started.
    let settings = &Settings {
        date,
        ..settings.clone()
    };
    // Already done for this plan (a pod evicted after reporting): wait for the day.
    if let Some(done) = own_done_status(&store, settings, &plan).await {
        info!(
            shard = settings.shards.index,
            "This index already reported its share for this plan; waiting for the day's end."
        );
        wait_for_end(&store, settings, &plan).await?;
        return Ok(done.tables);
    }
    let fence = Arc::new(Fence::new(store.clone(), &settings.date, &plan.run_id));
    let fenced = egress_store::guarded(store.clone(), fence);
    let reporter = Arc::new(Reporter::new(fenced.clone(), settings, &plan));
    let outcome = dump_share(settings, &fenced, &plan, &reporter).await;
    let outcome = match outcome {
        Ok(reports) => match reporter.send(State::Done, None, reports.clone()).await {
            Ok(()) => Ok(reports),
            Err(e) => Err(e),
        },
        Err(e) => {
            let line = egress_common::error::one_line(&e);
            let _ = reporter.send(State::Failed, Some(line), Vec::new()).await;
            Err(e)
        }
    };
    let reports = match outcome {
        Ok(reports) => reports,
        Err(e) => {
            // Failed because the coordinator is gone: leave nothing of the attempt pending.
            if !holds_the_day(&store, &settings.date, &plan.run_id)
                .await
                .unwrap_or(true)
            {
                abandoned(&store, settings, &plan).await;
            }
            return Err(e);
        }
    };
    wait_for_end(&store, settings, &plan).await?;
    Ok(reports)
}

/// Wait up to `--shard-wait` for a plan whose run holds the day's lease now (an earlier
/// attempt's plan is never followed), and check that it is the day this index was given.
/// Without `--date`, yesterday's folder is looked at too (a pod started after midnight).
async fn wait_for_plan(store: &Store, settings: &Settings) -> anyhow::Result<(Plan, String)> {
    let index = settings.shards.index;
    let mut dates = vec![settings.date.clone()];
    if !settings.date_given {
        dates.extend(day_before(&settings.date));
    }
    let started = Instant::now();
    info!(
        shard = index,
        "Shard {index} of {}: waiting for the coordinator's plan.", settings.shards.count
    );
    loop {
        for date in &dates {
            if let Some((plan, _)) = objects::read::<Plan>(store, &plan_key(date)).await? {
                if holds_the_day(store, date, &plan.run_id).await? {
                    agree(&plan, settings)?;
                    return Ok((plan, date.clone()));
                }
            }
        }
        if started.elapsed() >= settings.shards.wait {
            anyhow::bail!(
                "no plan from the coordinator (index 0) for {} within --shard-wait {:?}: index 0 has not started, or failed (see its log); this index wrote nothing",
                settings.date,
                settings.shards.wait
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The date before `date` (`YYYY-MM-DD`).
fn day_before(date: &str) -> Option<String> {
    let day = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
    Some(day.pred_opt()?.format("%Y-%m-%d").to_string())
}

/// True while run `run_id` holds the day's lease.
async fn holds_the_day(store: &Store, date: &str, run_id: &str) -> Result<bool, StoreError> {
    Ok(holder(store, date)
        .await?
        .is_some_and(|h| h.run_id == run_id))
}

/// Who holds the day's lease now, if anyone.
async fn holder(store: &Store, date: &str) -> Result<Option<lease::Holder>, StoreError> {
    let found = lease::live_holder(store, &lease::key_in(date)).await?;
    Ok(found.and_then(|f| f.holder))
}

/// The plan must be for the day this index was started for: same shard count, format,
/// compression and tables (every pod of the Job gets the same settings).
fn agree(plan: &Plan, settings: &Settings) -> Result<(), ConfigError> {
    let mine: Vec<String> = settings.tables.iter().map(|t| t.file_stem()).collect();
    let planned = plan.table_names();
    let flags = |format: &str, header: bool, level: u32| {
        let header = if header { " --header" } else { "" };
        format!("--format {format}{header} --compression-level {level}")
    };
    let here = flags(
        settings.format.name(),
        settings.header,
        settings.compression_level,
    );
    let there = flags(&plan.format, plan.header, plan.compression_level);
    let problem = if plan.shards != settings.shards.count {
        format!(
            "this index was started with --shards {} but the coordinator planned the day for {}",
            settings.shards.count, plan.shards
        )
    } else if here != there {
        format!("this index was started with {here} but the coordinator writes {there}")
    } else if mine != planned {
        format!(
            "this index was given TABLES {} but the coordinator planned {}",
            mine.join(","),
            planned.join(",")
        )
    } else {
        return Ok(());
    };
    Err(ConfigError::new(format!(
        "{problem}: give every pod of the Job the same settings (SHARDS = the Job's completions)"
    )))
}

/// This index's status when it already reported its share done for `plan`.
async fn own_done_status(store: &Store, settings: &Settings, plan: &Plan) -> Option<Status> {
    let key = status_key(&settings.date, settings.shards.index);
    let (status, _) = objects::read::<Status>(store, &key).await.ok()??;
    (status.state == State::Done && status.follows(plan)).then_some(status)
}

/// Import the plan's snapshot, lock and dump this index's tables.
async fn dump_share(
    settings: &Settings,
    store: &Store,
    plan: &Plan,
    reporter: &Arc<Reporter>,
) -> anyhow::Result<Vec<TableReport>> {
    let standby = OnceLock::new();
    let db = day::connect(settings, &standby).await?;
    snapshot::import(&db.coordinator, plan.snapshot_id()).await?;
    let mine = my_tables(settings, &db, plan).await?;
    let index = settings.shards.index;
    info!(shard = index, snapshot = %plan.snapshot_id(), tables = mine.len(), "Shard {index} imported snapshot {} ({} tables to dump).", plan.snapshot_id(), mine.len());
    reporter.send(State::Joined, None, Vec::new()).await?;
    let beating = Beating::start(reporter.clone(), settings.shards.beat());
    // One connection reads on the session that imported the snapshot; more import it
    // again, which needs the coordinator's transaction still open.
    let snapshot = egress_common::manifest::SnapshotInfo {
        exported_id: plan
            .snapshot
            .exported_id
            .clone()
            .filter(|_| settings.jobs > 1),
        ..plan.snapshot.clone()
    };
    let outcome = day::dump_share(settings, store, &db, &snapshot, &mine).await;
    beating.stop().await;
    let _ = db.coordinator.batch_execute("COMMIT").await;
    outcome.map_err(|e| {
        e.log_tables();
        e.into_anyhow()
    })
}

/// This index's tables, looked up inside the snapshot and locked; the same tables the
/// coordinator planned (by oid), or the run fails.
async fn my_tables(
    settings: &Settings,
    db: &day::Database,
    plan: &Plan,
) -> anyhow::Result<Vec<ResolvedTable>> {
    let found = day::find_tables(&db.coordinator, &settings.tables).await?;
    for assigned in &plan.tables {
        let here = found
            .iter()
            .find(|t| t.requested.file_stem() == assigned.table);
        if let Some(table) = here.filter(|t| t.oid != assigned.oid) {
            anyhow::bail!(
                "table '{}' is not the one the coordinator planned (oid {} here, {} in the plan): it was replaced meanwhile; run the Job again",
                assigned.table,
                table.oid,
                assigned.oid
            );
        }
    }
    let mut mine = plan.share(settings.shards.index, &found);
    day::measure(&db.coordinator, &mut mine).await?;
    crate::locks::in_worker(&db.coordinator, &mine, settings.lock_timeout).await?;
    Ok(mine)
}

/// Wait until the coordinator's run no longer holds the day: done when this run's
/// manifest is there; otherwise the day was abandoned, and what it left pending goes.
async fn wait_for_end(store: &Store, settings: &Settings, plan: &Plan) -> anyhow::Result<()> {
    let date = &settings.date;
    while holds_the_day(store, date, &plan.run_id)
        .await
        .unwrap_or(true)
    {
        tokio::time::sleep(POLL).await;
    }
    let written = objects::read::<Manifest>(store, &manifest::key_in(date)).await?;
    if written.is_some_and(|(m, _)| m.snapshot.txid_snapshot == plan.snapshot.txid_snapshot) {
        info!(
            shard = settings.shards.index,
            "The coordinator wrote the day's manifest."
        );
        return Ok(());
    }
    abandoned(store, settings, plan).await;
    anyhow::bail!(
        "the coordinator (index 0) ended the day without a manifest (see its log): the day is incomplete; the Job's next attempt starts from a fresh snapshot"
    )
}

/// The coordinator is gone without a manifest: abort the uploads of its own share (the
/// other shards abort theirs as they fail; only uploads started before a newer run took
/// the day, if one did) and remove this index's status.
async fn abandoned(store: &Store, settings: &Settings, plan: &Plan) {
    let date = &settings.date;
    let its: Vec<String> = plan
        .objects(0, settings.format.extension())
        .into_iter()
        .map(|file| format!("{date}/{file}"))
        .collect();
    let newer = holder(store, date).await.ok().flatten();
    let before = newer.map_or(i64::MAX, |h| h.since);
    let pending = store
        .pending_uploads(&format!("{date}/"))
        .await
        .unwrap_or_default();
    let left = pending
        .iter()
        .filter(|u| its.contains(&u.key) && u.initiated < before);
    for upload in left {
        match store.abort_pending(upload).await {
            Ok(()) => info!(key = %upload.key, "aborted an upload the coordinator left"),
            Err(e) => {
                tracing::warn!(key = %upload.key, error = %e, "cannot abort an upload the coordinator left; the next run (or the bucket's lifecycle rule) removes it")
            }
        }
    }
    let key = status_key(date, settings.shards.index);
    if let Ok(Some((status, _))) = objects::read::<Status>(store, &key).await {
        if status.follows(plan) {
            let _ = store.delete(&key).await;
        }
    }
}

/// Writes this index's status, and rewrites it while the share is dumped.
struct Reporter {
    store: Store,
    key: String,
    run_id: String,
    snapshot_id: String,
    index: u64,
    beats: AtomicU64,
}

impl Reporter {
    fn new(store: Store, settings: &Settings, plan: &Plan) -> Reporter {
        Reporter {
            store,
            key: status_key(&settings.date, settings.shards.index),
            run_id: plan.run_id.clone(),
            snapshot_id: plan.snapshot_id().to_string(),
            index: settings.shards.index,
            beats: AtomicU64::new(0),
        }
    }

    /// Write the status.
    async fn send(
        &self,
        state: State,
        error: Option<String>,
        tables: Vec<TableReport>,
    ) -> anyhow::Result<()> {
        let status = Status {
            run_id: self.run_id.clone(),
            snapshot_id: self.snapshot_id.clone(),
            index: self.index,
            state,
            beat: self.beats.fetch_add(1, Ordering::SeqCst),
            error,
            tables,
        };
        objects::write(&self.store, &self.key, &status).await
    }
}

/// The `Joined` status rewritten every `every` until [`Beating::stop`], which waits for a
/// rewrite in flight: no heartbeat lands after the final status.
struct Beating {
    stop: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Beating {
    fn start(reporter: Arc<Reporter>, every: Duration) -> Beating {
        let stop = Arc::new(Notify::new());
        let told = stop.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = told.notified() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                if let Err(e) = reporter.send(State::Joined, None, Vec::new()).await {
                    tracing::debug!(error = %e, "cannot rewrite this shard's status");
                }
            }
        });
        Beating { stop, task }
    }

    async fn stop(self) {
        self.stop.notify_one();
        let _ = self.task.await;
    }
}

/// Every write of a shard asks first whether the coordinator's run still holds the day's
/// lease: a shard of an abandoned attempt writes nothing more.
#[derive(Debug)]
struct Fence {
    store: Store,
    date: String,
    run_id: String,
    /// When the lease was last seen held by `run_id`.
    confirmed: Mutex<Option<Instant>>,
}

/// How long a confirmation is trusted: a GET per write at most every 2 s.
const TRUST: Duration = Duration::from_secs(2);

impl Fence {
    fn new(store: Store, date: &str, run_id: &str) -> Fence {
        Fence {
            store,
            date: date.to_string(),
            run_id: run_id.to_string(),
            confirmed: Mutex::new(None),
        }
    }

    async fn confirm(&self) -> Result<(), StoreError> {
        let recent = self
            .confirmed
            .lock()
            .ok()
            .and_then(|c| *c)
            .is_some_and(|at| at.elapsed() < TRUST);
        if recent {
            return Ok(());
        }
        if holds_the_day(&self.store, &self.date, &self.run_id).await? {
            if let Ok(mut c) = self.confirmed.lock() {
                *c = Some(Instant::now());
            }
            return Ok(());
        }
        // Not LeaseLost (exit 3, which fails the Job): the Job retries this index, and the
        // retry joins the next attempt's plan.
        Err(StoreError::new(
            ErrorKind::Other,
            format!(
                "the coordinator's run {} no longer holds the day's lease ({}): this shard's attempt was abandoned and writes nothing more",
                self.run_id,
                self.store.describe(&lease::key_in(&self.date))
            ),
        ))
    }
}

#[async_trait]
impl Guard for Fence {
    async fn before_change(&self, _key: &str) -> Result<(), StoreError> {
        self.confirm().await
    }

    async fn before_upload(&self, _key: &str) -> Result<(), StoreError> {
        self.confirm().await
    }
}
