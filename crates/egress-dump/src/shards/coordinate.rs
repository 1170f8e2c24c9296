//! Index 0's side of a shared day: publish the plan, then hear every shard while the
//! snapshot is held, until all are done or one has been silent past `--shard-wait`.

use std::time::{Duration, Instant};

use anyhow::Context;
use egress_store::Store;
use tracing::{info, warn};

use super::{judge, objects, plan_key, status_key, Heard, Plan, Shards, State, Status, Verdict};
use crate::report::TableReport;

/// How often the statuses are read while waiting.
const POLL: Duration = Duration::from_millis(250);

/// Publish `plan` for the other indexes, after removing what an earlier attempt left (its
/// plan must never be followed). Returns when it was published.
pub async fn publish(store: &Store, date: &str, plan: &Plan) -> anyhow::Result<Instant> {
    objects::clear(store, date).await;
    objects::write(store, &plan_key(date), plan)
        .await
        .context("cannot publish the plan for the other shards")?;
    let here = plan.tables.iter().filter(|t| t.shard == 0).count();
    info!(
        run_id = %plan.run_id,
        snapshot = %plan.snapshot_id(),
        shards = plan.shards,
        objects = plan.tables.len(),
        "Snapshot {} published for {} shards ({} of the day's {} objects written here).",
        plan.snapshot_id(),
        plan.shards,
        here,
        plan.tables.len()
    );
    Ok(Instant::now())
}

/// Wait for every other index of `plan` to report; their tables, or why the day fails.
pub async fn hear(
    store: &Store,
    date: &str,
    plan: &Plan,
    shards: Shards,
    published: Instant,
) -> anyhow::Result<Vec<TableReport>> {
    let others = shards.count.saturating_sub(1) as usize;
    let mut heard: Vec<Heard> = (0..others)
        .map(|_| Heard {
            status: None,
            changed: published,
        })
        .collect();
    loop {
        for (offset, h) in heard.iter_mut().enumerate() {
            let index = offset as u64 + 1;
            if let Some(status) = read_status(store, date, plan, index).await {
                note(h, status);
            }
        }
        match judge(&heard, Instant::now(), shards.wait) {
            Verdict::Wait => tokio::time::sleep(POLL).await,
            Verdict::Done(tables) => return Ok(tables),
            Verdict::Fail(line) => anyhow::bail!("{line}; no manifest written: run the Job again"),
        }
    }
}

/// Shard `index`'s status, when it is one of this run's (a read that fails counts as
/// silence).
async fn read_status(store: &Store, date: &str, plan: &Plan, index: u64) -> Option<Status> {
    match objects::read::<Status>(store, &status_key(date, index)).await {
        Ok(found) => found
            .map(|(status, _)| status)
            .filter(|s| s.follows(plan) && s.index == index),
        Err(e) => {
            warn!(shard = index, error = %e, "cannot read shard {index}'s status; trying again");
            None
        }
    }
}

/// Record `status` in `h` if it changed (a new state, or a new beat), logging new states.
fn note(h: &mut Heard, status: Status) {
    let before = h.status.as_ref().map(|s| (s.state, s.beat));
    if before == Some((status.state, status.beat)) {
        return;
    }
    if before.map(|(state, _)| state) != Some(status.state) {
        let index = status.index;
        match status.state {
            State::Joined => info!(shard = index, "Shard {index} imported the snapshot."),
            State::Done => info!(
                shard = index,
                tables = status.tables.len(),
                "Shard {index} is done ({} tables).",
                status.tables.len()
            ),
            State::Failed => warn!(
                shard = index,
                error = status.error.as_deref().unwrap_or(""),
                "Shard {index} failed; waiting for the Job to retry it."
            ),
        }
    }
    h.status = Some(status);
    h.changed = Instant::now();
}
