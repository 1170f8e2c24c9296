//! An index other than 0 of a shared day, as named steps: wait for the coordinator's plan,
//! import its snapshot, claim the index, wait for the go, dump this index's tables and pieces, report
//! it, and stay until the coordinator has ended the day (exiting 0 only when the day's
//! manifest is written), so a pod's success means the day's.
//!
//! Whatever ends a shard's attempt without the day (the coordinator gone, its lease taken,
//! the claim taken over) is exit 1, never 3: the Job retries the index, which joins the
//! next attempt's plan. A pod that finds its index done, or held by another live pod of
//! the same index, writes nothing and waits for the day's end like the holder.

use std::sync::Arc;
use std::time::Duration;

use egress_common::day;
use egress_common::day::shared::{self, Claim, Claimed, Ended, Plan, State};
use egress_common::ConfigError;
use egress_store::Store;
use tokio::sync::Notify;
use tracing::info;

use crate::report::TableReport;
use crate::settings::Settings;
use crate::source::TableSource;

/// Dump this index's tables and pieces of the day.
pub async fn run(
    settings: &Settings,
    store: Store,
    source: &dyn TableSource,
) -> anyhow::Result<Vec<TableReport>> {
    let index = settings.shards.index;
    info!(
        shard = index,
        "Shard {index} of {}: waiting for the coordinator's plan.", settings.shards.count
    );
    // Without --date, yesterday's folder is looked at too (a pod started after midnight).
    let mut dates = vec![settings.date.clone()];
    if !settings.date_given {
        dates.extend(day_before(&settings.date));
    }
    let Some((plan, date)) = shared::wait_for_plan(&store, &dates, settings.shards.wait).await?
    else {
        return without_a_plan(settings, &store).await;
    };
    agree(&plan, settings)?;
    // A pod started after midnight joins the day its coordinator started.
    let settings = &Settings {
        date,
        ..settings.clone()
    };
    let snapshot = source.join(&plan, index).await?;
    let claim = match shared::claim::<TableReport>(&store, (&settings.date, &plan), settings.shards)
        .await
    {
        Ok(Claimed::Mine(claim)) => Arc::new(claim),
        Ok(Claimed::Done(status)) => {
            snapshot.close().await;
            info!(
                shard = index,
                "This index already reported its tables for this plan; waiting for the day's end."
            );
            return end(&store, settings, &plan, None)
                .await
                .map(|()| status.tables);
        }
        Ok(Claimed::Ended) => {
            snapshot.close().await;
            return end(&store, settings, &plan, None)
                .await
                .map(|()| Vec::new());
        }
        Err(e) => {
            snapshot.close().await;
            return Err(e);
        }
    };
    info!(shard = index, snapshot = %plan.snapshot_id(), tables = snapshot.tables().len(), pod = %claim.pod(), "Shard {index} imported snapshot {} and claimed its index ({} tables to dump).", plan.snapshot_id(), snapshot.tables().len());
    // Every write asks whether the coordinator's run still holds the day and the claim is
    // still this pod's: a shard of an abandoned attempt, or one whose claim was taken
    // over, writes nothing more.
    let fenced = egress_store::guarded(store.clone(), claim.clone());
    let beating = Beating::start(claim.clone(), settings.shards.beat());
    let dumped = async {
        if !shared::wait_for_go(&store, &settings.date, &plan).await? {
            return Ok(None);
        }
        let tables = snapshot.tables().to_vec();
        snapshot
            .dump(&fenced, &tables)
            .await
            .map(Some)
            .map_err(|e| {
                e.log_tables();
                e.into_anyhow()
            })
    }
    .await;
    beating.stop().await;
    snapshot.close().await;
    let dumped = match dumped {
        // The day ended without this pod (another pod of this index did its share, or the
        // attempt was abandoned): it wrote nothing, and the day's end says how it went.
        Ok(None) => {
            claim.withdraw().await;
            return end(&store, settings, &plan, None)
                .await
                .map(|()| Vec::new());
        }
        Ok(Some(reports)) => Ok(reports),
        Err(e) => Err(e),
    };
    let reports = match report(&claim, dumped).await {
        Ok(reports) => reports,
        Err(e) => {
            // Failed because the coordinator is gone: leave nothing of the attempt pending.
            let gone = !shared::holds_the_day(&store, &settings.date, &plan.run_id)
                .await
                .unwrap_or(true);
            if gone {
                abort_coordinators_uploads(&store, settings, &plan).await;
                claim.withdraw().await;
            }
            return Err(e);
        }
    };
    end(&store, settings, &plan, Some(&claim)).await?;
    Ok(reports)
}

/// Report this index's tables done (or failed) on the claim.
async fn report(
    claim: &Claim,
    dumped: anyhow::Result<Vec<TableReport>>,
) -> anyhow::Result<Vec<TableReport>> {
    match dumped {
        Ok(reports) => {
            claim.report(State::Done, None, reports.clone()).await?;
            Ok(reports)
        }
        Err(e) => {
            let line = egress_common::error::one_line(&e);
            let _ = claim
                .report(State::Failed, Some(line), Vec::<TableReport>::new())
                .await;
            Err(e)
        }
    }
}

/// Wait for the day's end: done when the coordinator wrote this plan's manifest; otherwise
/// the day was abandoned, and this pod's claim goes.
async fn end(
    store: &Store,
    settings: &Settings,
    plan: &Plan,
    claim: Option<&Claim>,
) -> anyhow::Result<()> {
    match shared::wait_for_end(store, &settings.date, plan).await? {
        Ended::Complete => {
            info!(
                shard = settings.shards.index,
                "The coordinator wrote the day's manifest."
            );
            Ok(())
        }
        Ended::Abandoned => {
            abort_coordinators_uploads(store, settings, plan).await;
            if let Some(claim) = claim {
                claim.withdraw().await;
            }
            anyhow::bail!(
                "the coordinator (index 0) ended the day without a manifest (see its log): the day is incomplete; the Job's next attempt starts from a fresh snapshot"
            )
        }
    }
}

/// The coordinator is gone without a manifest: abort the uploads of its own share (the
/// other shards abort theirs as they fail; only uploads started before a newer run took
/// the day, if one did), so the abandoned day leaves nothing pending.
async fn abort_coordinators_uploads(store: &Store, settings: &Settings, plan: &Plan) {
    let date = &settings.date;
    let its: Vec<String> = plan
        .objects(0, settings.format.extension())
        .into_iter()
        .map(|file| format!("{date}/{file}"))
        .collect();
    let newer = shared::holder(store, date).await.ok().flatten();
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
}

/// No plan came within `--shard-wait`: nothing to do when the day is complete already (a
/// pod started again after the day was done), else a failure.
async fn without_a_plan(settings: &Settings, store: &Store) -> anyhow::Result<Vec<TableReport>> {
    if let Some(done) = day::complete(store, &settings.date).await? {
        let mine: Vec<String> = settings.tables.iter().map(|t| t.file_stem()).collect();
        let mut listed: Vec<String> = done.tables.iter().map(|t| t.table.clone()).collect();
        listed.dedup();
        if listed == mine {
            info!(
                shard = settings.shards.index,
                "Day {} is complete already (its manifest lists the tables this index was started for), and no coordinator is writing it: nothing to do.",
                settings.date
            );
            return Ok(Vec::new());
        }
    }
    anyhow::bail!(
        "no plan from the coordinator (index 0) for {} within --shard-wait {:?}: index 0 has not started, or failed (see its log); this index wrote nothing",
        settings.date,
        settings.shards.wait
    )
}

/// The date before `date` (`YYYY-MM-DD`).
fn day_before(date: &str) -> Option<String> {
    let day = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
    Some(day.pred_opt()?.format("%Y-%m-%d").to_string())
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

/// The claim's status rewritten every `every` until [`Beating::stop`], which waits for a
/// rewrite in flight: no heartbeat lands after the final status.
struct Beating {
    stop: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Beating {
    fn start(claim: Arc<Claim>, every: Duration) -> Beating {
        let stop = Arc::new(Notify::new());
        let told = stop.clone();
        let task = egress_store::task::spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    _ = told.notified() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                if let Err(e) = claim
                    .report(State::Joined, None, Vec::<TableReport>::new())
                    .await
                {
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
