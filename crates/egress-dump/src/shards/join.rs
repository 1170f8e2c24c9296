//! An index other than 0: wait for the coordinator's plan, import its snapshot, dump this
//! index's share, report it, and stay until the coordinator has ended the day (exiting 0
//! only when the day's manifest is written), so a pod's success means the day's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use egress_common::lease;
use egress_common::manifest::{self, Manifest};
use egress_common::ConfigError;
use egress_store::{ErrorKind, Guard, Store, StoreError};
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
    let plan = wait_for_plan(&store, settings).await?;
    let fence = Arc::new(Fence::new(store.clone(), &settings.date, &plan.run_id));
    let fenced = egress_store::guarded(store.clone(), fence);
    let reporter = Arc::new(Reporter::new(fenced.clone(), settings, &plan));
    let outcome = dump_share(settings, &fenced, &plan, &reporter).await;
    match &outcome {
        Ok(reports) => reporter.send(State::Done, None, reports.clone()).await?,
        Err(e) => {
            let line = egress_common::error::one_line(e);
            let _ = reporter.send(State::Failed, Some(line), Vec::new()).await;
            // Failed because the coordinator is gone: leave nothing of the attempt pending.
            if !holds_the_day(&store, &settings.date, &plan.run_id)
                .await
                .unwrap_or(true)
            {
                abandoned(&store, settings, &plan).await;
            }
        }
    }
    let reports = outcome?;
    wait_for_end(&store, settings, &plan).await?;
    Ok(reports)
}

/// Wait up to `--shard-wait` for a plan whose run holds the day's lease now (an earlier
/// attempt's plan is never followed), and check that it is the day this index was given.
async fn wait_for_plan(store: &Store, settings: &Settings) -> anyhow::Result<Plan> {
    let (date, index) = (&settings.date, settings.shards.index);
    let started = Instant::now();
    info!(
        shard = index,
        "Shard {index} of {}: waiting for the coordinator's plan.", settings.shards.count
    );
    loop {
        if let Some((plan, _)) = objects::read::<Plan>(store, &plan_key(date)).await? {
            if holds_the_day(store, date, &plan.run_id).await? {
                agree(&plan, settings)?;
                return Ok(plan);
            }
        }
        if started.elapsed() >= settings.shards.wait {
            anyhow::bail!(
                "no plan from the coordinator (index 0) for {date} within --shard-wait {:?}: index 0 has not started, or failed (see its log); this index wrote nothing",
                settings.shards.wait
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// True while run `run_id` holds the day's lease.
async fn holds_the_day(store: &Store, date: &str, run_id: &str) -> Result<bool, StoreError> {
    let found = lease::live_holder(store, &lease::key_in(date)).await?;
    Ok(found
        .and_then(|f| f.holder)
        .is_some_and(|h| h.run_id == run_id))
}

/// The plan must be for the day this index was started for: same shard count, format and
/// tables (every pod of the Job gets the same settings).
fn agree(plan: &Plan, settings: &Settings) -> Result<(), ConfigError> {
    let mine: Vec<String> = settings.tables.iter().map(|t| t.file_stem()).collect();
    let planned = plan.table_names();
    let problem = if plan.shards != settings.shards.count {
        format!(
            "this index was started with --shards {} but the coordinator planned the day for {}",
            settings.shards.count, plan.shards
        )
    } else if plan.format != settings.format.name() || plan.header != settings.header {
        format!(
            "this index was started with --format {}{} but the coordinator writes {}{}",
            settings.format.name(),
            if settings.header { " --header" } else { "" },
            plan.format,
            if plan.header { " --header" } else { "" }
        )
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
    let beating = tokio::spawn(reporter.clone().beat(settings.shards.beat()));
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
    let outcome = day::dump_share(settings, store, &db, &snapshot, &mine, false).await;
    beating.abort();
    let _ = db.coordinator.batch_execute("COMMIT").await;
    Ok(outcome?)
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

/// The coordinator is gone without a manifest: abort the uploads of its own tables (the
/// other shards abort theirs as they fail) and remove this index's status.
async fn abandoned(store: &Store, settings: &Settings, plan: &Plan) {
    let date = &settings.date;
    let extension = settings.format.extension();
    let its: Vec<String> = plan
        .tables
        .iter()
        .filter(|t| t.shard == 0)
        .map(|t| format!("{date}/{}.{extension}", t.table))
        .collect();
    let pending = store
        .pending_uploads(&format!("{date}/"))
        .await
        .unwrap_or_default();
    for upload in pending.iter().filter(|u| its.contains(&u.key)) {
        match store.abort_pending(upload).await {
            Ok(()) => info!(key = %upload.key, "aborted an upload the coordinator left"),
            Err(e) => {
                tracing::warn!(key = %upload.key, error = %e, "cannot abort an upload the coordinator left; the next run (or the bucket's lifecycle rule) removes it")
            }
        }
    }
    let key = status_key(date, settings.shards.index);
    if let Ok(Some((status, _))) = objects::read::<Status>(store, &key).await {
        if status.run_id == plan.run_id {
            let _ = store.delete(&key).await;
        }
    }
}

/// Writes this index's status, and rewrites it while the share is dumped.
struct Reporter {
    store: Store,
    key: String,
    run_id: String,
    index: u64,
    beats: AtomicU64,
}

impl Reporter {
    fn new(store: Store, settings: &Settings, plan: &Plan) -> Reporter {
        Reporter {
            store,
            key: status_key(&settings.date, settings.shards.index),
            run_id: plan.run_id.clone(),
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
            index: self.index,
            state,
            beat: self.beats.fetch_add(1, Ordering::SeqCst),
            error,
            tables,
        };
        objects::write(&self.store, &self.key, &status).await
    }

    /// Rewrite the `Joined` status every `every`, until aborted.
    async fn beat(self: Arc<Self>, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            if let Err(e) = self.send(State::Joined, None, Vec::new()).await {
                tracing::debug!(error = %e, "cannot rewrite this shard's status");
            }
        }
    }
}

/// Every write of a shard asks first whether the coordinator's run still holds the day's
/// lease: a shard of an abandoned attempt writes nothing more.
#[derive(Debug)]
struct Fence {
    store: Store,
    lease_key: String,
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
            lease_key: lease::key_in(date),
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
        let found = lease::live_holder(&self.store, &self.lease_key).await?;
        if found
            .and_then(|f| f.holder)
            .is_some_and(|h| h.run_id == self.run_id)
        {
            if let Ok(mut c) = self.confirmed.lock() {
                *c = Some(Instant::now());
            }
            return Ok(());
        }
        Err(StoreError::new(
            ErrorKind::LeaseLost,
            format!(
                "the coordinator's run {} no longer holds the day's lease ({}): this shard's attempt was abandoned and writes nothing more",
                self.run_id,
                self.store.describe(&self.lease_key)
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
