//! A day dumped by several processes (the pods of a Kubernetes Indexed Job) from one
//! snapshot. Index 0 coordinates: under the day's lease it takes and exports the snapshot,
//! decides which index dumps which table ([`assign`]) and publishes that plan, bound to its
//! run id, in the date folder ([`Plan`]); every other index imports the snapshot, dumps its
//! share and reports ([`Status`]); index 0 holds the exporting transaction open until every
//! index has reported ([`judge`]), checks every object and writes the manifest last.
//!
//! The plan and the statuses live in `<date>/.egress-shards/`: coordination objects, never
//! mirrored, removed once the day is done or abandoned. A shard writes only while the
//! day's lease is held by the run whose plan it follows ([`join::Fence`]); a plan whose
//! run no longer holds the lease is never used.
//!
//! This module is the pure part: the settings, the objects' shapes, the assignment and the
//! coordinator's verdict on what it has heard. [`coordinate`] and [`join`] do the I/O.

pub mod coordinate;
pub mod join;
mod objects;

use std::time::{Duration, Instant};

use egress_common::cli::Slice;
use egress_common::manifest::SnapshotInfo;
use egress_common::ConfigError;
use serde::{Deserialize, Serialize};

use crate::catalog::{Piece, ResolvedTable};
use crate::report::TableReport;

/// Which share of the day this process dumps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shards {
    /// How many processes share the day (1: this one alone, no coordination).
    pub count: u64,
    /// This process's index (0 coordinates).
    pub index: u64,
    /// How long to wait for the plan, or for a shard that has not joined or went silent.
    pub wait: Duration,
}

impl Shards {
    /// `slice` (`--shards`, `--shard-index`) and `--shard-wait`, checked.
    pub fn new(slice: Slice, wait: Duration) -> Result<Shards, ConfigError> {
        let Slice { index, count } = slice;
        if wait < Duration::from_secs(1) {
            return Err(ConfigError::new(
                "--shard-wait (SHARD_WAIT) must be at least 1s, e.g. 10m".to_string(),
            ));
        }
        Ok(Shards { count, index, wait })
    }

    /// True when the day is shared between processes.
    pub fn sharded(&self) -> bool {
        self.count > 1
    }

    /// How often a shard tells the coordinator it is alive: often enough that a quarter
    /// of `--shard-wait` never passes in silence, at most every 30 s.
    pub fn beat(&self) -> Duration {
        (self.wait / 4).clamp(Duration::from_millis(250), Duration::from_secs(30))
    }
}

/// A plan the coordinator published, held while the other indexes work.
pub struct Shared {
    /// The plan.
    pub plan: Plan,
    /// When it was published.
    pub published: Instant,
}

impl Shared {
    /// The coordinator's own share of `tables`.
    pub fn mine(&self, tables: &[ResolvedTable]) -> Vec<ResolvedTable> {
        self.plan.share(0, tables)
    }

    /// Wait for the other indexes' tables ([`coordinate::hear`]); then abort the uploads
    /// that shards killed mid-table left in the day's folder (every index is done, so
    /// any upload still pending there is dead).
    pub async fn hear(
        &self,
        store: &egress_store::Store,
        settings: &crate::settings::Settings,
    ) -> anyhow::Result<Vec<TableReport>> {
        let date = &settings.date;
        let tables =
            coordinate::hear(store, date, &self.plan, settings.shards, self.published).await?;
        let folder = format!("{date}/");
        let aborted =
            egress_common::day::lease::abort_dead_uploads(store, &folder, i64::MAX, |_| None).await;
        if aborted > 0 {
            tracing::info!(
                aborted,
                "aborted the uploads of shards that were killed and run again"
            );
        }
        Ok(tables)
    }
}

/// Remove the day's coordination objects, once it is done or abandoned.
pub async fn clear(store: &egress_store::Store, date: &str) {
    objects::clear(store, date).await
}

/// Remove them also when a signal stops the run (through `store`, not fenced: the lease
/// may be given back first); [`egress_store::stop::done`] the ticket after [`clear`].
pub fn clear_on_stop(store: egress_store::Store, date: &str) -> egress_store::stop::Ticket {
    let date = date.to_string();
    egress_store::stop::register(
        egress_store::stop::Phase::Known,
        Box::new(move || {
            Box::pin(async move {
                objects::clear(&store, &date).await;
                true
            })
        }),
    )
}

/// The key of the day's plan.
pub fn plan_key(date: &str) -> String {
    format!(
        "{date}/{}/plan.json",
        egress_common::day::lease::SHARDS_FOLDER
    )
}

/// The key of shard `index`'s status.
pub fn status_key(date: &str, index: u64) -> String {
    format!(
        "{date}/{}/shard-{index}.json",
        egress_common::day::lease::SHARDS_FOLDER
    )
}

/// The folder of the day's coordination objects.
pub fn folder(date: &str) -> String {
    format!("{date}/{}/", egress_common::day::lease::SHARDS_FOLDER)
}

impl Plan {
    /// The exported snapshot's id.
    pub fn snapshot_id(&self) -> &str {
        self.snapshot.exported_id.as_deref().unwrap_or("")
    }

    /// What index `index` dumps of `tables` (the day's, as listed): whole tables, and
    /// pieces of shared ones.
    pub fn share(&self, index: u64, tables: &[ResolvedTable]) -> Vec<ResolvedTable> {
        self.tables
            .iter()
            .filter(|a| a.shard == index)
            .filter_map(|a| {
                let table = tables.iter().find(|t| t.requested.file_stem() == a.table)?;
                Some(ResolvedTable {
                    piece: a.piece,
                    ..table.clone()
                })
            })
            .collect()
    }

    /// The object names index `index` writes (`<table>.<extension>`, or a piece's).
    pub fn objects(&self, index: u64, extension: &str) -> Vec<String> {
        self.tables
            .iter()
            .filter(|a| a.shard == index)
            .map(|a| match a.piece {
                Some(piece) => piece.part.file(&a.table, extension),
                None => format!("{}.{extension}", a.table),
            })
            .collect()
    }

    /// The day's tables, as listed (a shared table once).
    pub fn table_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.tables.iter().map(|a| a.table.clone()).collect();
        names.dedup();
        names
    }
}

/// What the coordinator publishes: the snapshot to import and who dumps what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The coordinator's run (the id in the day's lease).
    pub run_id: String,
    /// How many indexes share the day.
    pub shards: u64,
    /// The snapshot, its exported id (`pg_export_snapshot()`) included.
    pub snapshot: SnapshotInfo,
    /// `csv` or `parquet`.
    pub format: String,
    /// A CSV header line.
    pub header: bool,
    /// The gzip level (the manifest records one for the day).
    pub compression_level: u32,
    /// Every table of the day, in the order listed, with the index that dumps it.
    pub tables: Vec<Assigned>,
}

/// One table of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assigned {
    /// As listed (`TABLES`).
    pub table: String,
    /// Its oid in the snapshot.
    pub oid: i64,
    /// The index that dumps it.
    pub shard: u64,
    /// The piece of it that index writes, when the pods share the table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub piece: Option<Piece>,
}

/// Where a shard is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// In the snapshot, dumping.
    Joined,
    /// Its share is written.
    Done,
    /// Its share failed.
    Failed,
}

/// What a shard reports, rewritten as it goes (`beat` counts the rewrites).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// The run whose plan it follows.
    pub run_id: String,
    /// The snapshot it imported (a run that starts its day again has a new one).
    pub snapshot_id: String,
    /// Its index.
    pub index: u64,
    /// Where it is.
    pub state: State,
    /// Rewrites so far: a status that changes is a shard alive.
    pub beat: u64,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Its tables, once done.
    #[serde(default)]
    pub tables: Vec<TableReport>,
}

impl Status {
    /// True when this status reports on `plan` (its run and its snapshot).
    pub fn follows(&self, plan: &Plan) -> bool {
        self.run_id == plan.run_id && self.snapshot_id == plan.snapshot_id()
    }
}

/// Each table's index: the largest tables first, each to the index with the fewest bytes
/// so far (ties to the lowest index), so the pods finish close together.
pub fn assign(sizes: &[i64], shards: u64) -> Vec<u64> {
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(sizes[i].max(0)), i));
    let mut load = vec![0i64; shards.max(1) as usize];
    let mut assigned = vec![0u64; sizes.len()];
    for i in order {
        let (least, _) = load
            .iter()
            .enumerate()
            .min_by_key(|&(index, bytes)| (*bytes, index))
            .unwrap_or((0, &0));
        load[least] += sizes[i].max(0);
        assigned[i] = least as u64;
    }
    assigned
}

/// What the coordinator has heard from one index (1 and up).
#[derive(Debug, Clone)]
pub struct Heard {
    /// Its status, when one of this run's was found.
    pub status: Option<Status>,
    /// When it last changed (or when the plan was published, if never heard).
    pub changed: Instant,
}

/// The coordinator's verdict.
#[derive(Debug)]
pub enum Verdict {
    /// Keep waiting.
    Wait,
    /// Every index is done: their tables.
    Done(Vec<TableReport>),
    /// The day cannot complete: why, in one line.
    Fail(String),
}

/// Judge what was heard from indexes 1.. at `now`: done when all are, failed when one has
/// been silent (not joined, or not rewritten its status) for longer than `wait`.
pub fn judge(heard: &[Heard], now: Instant, wait: Duration) -> Verdict {
    let mut tables = Vec::new();
    let mut waiting = false;
    for (offset, h) in heard.iter().enumerate() {
        let index = offset + 1;
        let silent = now.saturating_duration_since(h.changed);
        match &h.status {
            Some(s) if s.state == State::Done => tables.extend(s.tables.iter().cloned()),
            _ if silent < wait => waiting = true,
            None => return Verdict::Fail(format!(
                "shard {index} has not joined the day within --shard-wait {}: is the Job running all its pods (completions = parallelism = SHARDS)?",
                humantime(wait)
            )),
            Some(s) if s.state == State::Failed => return Verdict::Fail(format!(
                "shard {index} failed ({}) and no retry rejoined within --shard-wait {}",
                s.error.as_deref().unwrap_or("no reason given"),
                humantime(wait)
            )),
            Some(_) => return Verdict::Fail(format!(
                "shard {index} stopped reporting {} ago (its pod died or hangs); no retry rejoined within --shard-wait {}",
                humantime(silent),
                humantime(wait)
            )),
        }
    }
    if waiting {
        Verdict::Wait
    } else {
        Verdict::Done(tables)
    }
}

/// A duration as people write it (`90s`, `10m`).
fn humantime(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s >= 60 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_tables_go_first_to_the_least_loaded_index() {
        assert_eq!(assign(&[10, 50, 30, 20], 2), vec![0, 0, 1, 1]);
        assert_eq!(assign(&[5, 5, 5], 3), vec![0, 1, 2]);
        assert_eq!(assign(&[5], 3), vec![0]);
        assert_eq!(assign(&[-1, 7], 1), vec![0, 0]);
        // Balanced by bytes: 100 alone, the rest together.
        assert_eq!(assign(&[100, 40, 30, 20], 2), vec![0, 1, 1, 1]);
    }

    fn from_args(count: u64, index: Option<u64>, wait: Duration) -> Result<Shards, ConfigError> {
        let args = egress_common::cli::ShardArgs {
            shards: count,
            shard_index: index,
        };
        Shards::new(args.slice()?, wait)
    }

    #[test]
    fn shard_settings_are_checked() {
        let wait = Duration::from_secs(60);
        assert!(from_args(3, None, wait).is_err());
        assert!(from_args(3, Some(3), wait).is_err());
        assert!(from_args(1, Some(1), wait).is_err());
        assert!(from_args(3, Some(2), Duration::ZERO).is_err());
        let one = from_args(1, None, wait).unwrap();
        assert!(!one.sharded());
        let s = from_args(3, Some(2), wait).unwrap();
        assert_eq!((s.count, s.index, s.sharded()), (3, 2, true));
        assert_eq!(s.beat(), Duration::from_secs(15));
    }

    fn status(state: State) -> Status {
        Status {
            run_id: "r".into(),
            snapshot_id: "s".into(),
            index: 1,
            state,
            beat: 0,
            error: Some("boom".into()),
            tables: Vec::new(),
        }
    }

    #[test]
    fn the_coordinator_waits_then_gives_up_on_silence() {
        let t0 = Instant::now();
        let wait = Duration::from_secs(10);
        let at = |s| t0 + Duration::from_secs(s);
        let heard = |state: Option<State>, changed| Heard {
            status: state.map(status),
            changed,
        };
        let done = heard(Some(State::Done), t0);
        assert!(matches!(
            judge(&[done.clone(), done.clone()], at(100), wait),
            Verdict::Done(_)
        ));
        assert!(matches!(
            judge(&[done.clone(), heard(None, t0)], at(5), wait),
            Verdict::Wait
        ));
        let line = |v| match v {
            Verdict::Fail(line) => line,
            other => panic!("{other:?}"),
        };
        assert!(line(judge(&[done.clone(), heard(None, t0)], at(11), wait))
            .starts_with("shard 2 has not joined the day within --shard-wait 10s"));
        assert!(
            line(judge(&[heard(Some(State::Joined), at(1))], at(12), wait))
                .starts_with("shard 1 stopped reporting 11s ago")
        );
        assert!(line(judge(&[heard(Some(State::Failed), t0)], at(10), wait))
            .starts_with("shard 1 failed (boom)"));
        // A joined shard that keeps rewriting its status is waited for however long.
        assert!(matches!(
            judge(&[heard(Some(State::Joined), at(995))], at(1000), wait),
            Verdict::Wait
        ));
    }
}
