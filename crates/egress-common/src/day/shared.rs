//! A day shared by several processes (the pods of an Indexed Job) from one snapshot.
//!
//! Index 0, the **coordinator**, holds the day's lease. It takes and exports the snapshot,
//! decides which index dumps which table ([`assign`]) and publishes that [`Plan`], bound
//! to its run id, in `<date>/.egress-shards/`. Every other index, a **shard**, imports the
//! snapshot and **claims** its index: its [`Status`] object, created only if absent (or
//! taken over from a claim that went stale or failed), names the pod that dumps the index;
//! a second pod of the same index finds the claim and writes nothing. Once every index has
//! joined, the coordinator withdraws the day's manifest, clears the day's objects, and
//! marks the plan **go**; only then does anyone write a table object, each created only if
//! absent. Each shard reports its objects done (a write conditional on its claim); the
//! coordinator hears every index, checks every object and writes the manifest last.
//!
//! So a coordinator that cannot gather its shards (a late index 0, a duplicate, a manual
//! retry after the day is done) leaves a complete day as it is, and a pod that lost the
//! race for its index can neither write nor overwrite its objects.
//!
//! The pure part (the assignment, the verdict on what was heard) is unit-tested here; the
//! waits are driven by the caller's clock (`tokio::time`), the simulation's virtual one in
//! tests/sim.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::{info, warn};

use super::lease;
use super::objects;
use crate::cli::Slice;
use crate::manifest::{PieceOf, SnapshotInfo};
use crate::ConfigError;
use egress_store::{task, Condition, ErrorKind, Guard, Store, StoreError};

/// How often the statuses, the plan and the lease are read while waiting.
const POLL: Duration = Duration::from_millis(250);
/// How long a shard's confirmation that it may still write is trusted: at most one read
/// of the lease and of its claim every 2 s.
const TRUST: Duration = Duration::from_secs(2);

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

    /// How often a shard rewrites its status: often enough that a quarter of
    /// `--shard-wait` never passes in silence, at most every 30 s.
    pub fn beat(&self) -> Duration {
        (self.wait / 4).clamp(Duration::from_millis(250), Duration::from_secs(30))
    }

    /// How old (on the store's clock) a claim must be, unrewritten, before another pod of
    /// its index takes it over: half of `--shard-wait` (two beats), so that a takeover comes
    /// before the coordinator gives the index up, and 5 s more: a pod estimates another
    /// host's write age up to 3 s high (whole-second times, its estimate of the store's
    /// clock), and trusts its own claim for 2 s between reads ([`TRUST`]), so a claim is
    /// taken over only from a pod that cannot write any more without reading it again.
    fn stale_after(&self) -> Duration {
        self.wait / 2 + Duration::from_secs(5)
    }
}

/// One of the objects a table is written as when the pods of a shared day split it
/// (`--shards` with `--split-larger-than`): which one, and the heap pages it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Piece {
    /// Which object.
    pub of: PieceOf,
    /// First heap page.
    pub first: u64,
    /// One past its last page; `None` for the last piece.
    pub end: Option<u64>,
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
    /// Every index has joined and the day's earlier objects are gone: write.
    #[serde(default)]
    pub go: bool,
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

impl Plan {
    /// The exported snapshot's id.
    pub fn snapshot_id(&self) -> &str {
        self.snapshot.exported_id.as_deref().unwrap_or("")
    }

    /// The object names index `index` writes (`<table>.<extension>`, or a piece's).
    pub fn objects(&self, index: u64, extension: &str) -> Vec<String> {
        self.tables
            .iter()
            .filter(|a| a.shard == index)
            .map(|a| match a.piece {
                Some(piece) => piece.of.file(&a.table, extension),
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

    /// True when `other` is this plan (same run, same snapshot).
    fn same(&self, other: &Plan) -> bool {
        self.run_id == other.run_id && self.snapshot_id() == other.snapshot_id()
    }
}

/// Where a shard is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// In the snapshot, its index claimed, waiting for the go or dumping.
    Joined,
    /// Its share is written.
    Done,
    /// Its share failed.
    Failed,
}

/// What a shard reports: its claim on its index, rewritten as it goes (`beat` counts the
/// rewrites); `R` is what it reports of each object written.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status<R> {
    /// The run whose plan it follows.
    pub run_id: String,
    /// The snapshot it imported (a run that starts its day again has a new one).
    pub snapshot_id: String,
    /// Its index.
    pub index: u64,
    /// The pod holding the claim (a random id per process).
    #[serde(default)]
    pub pod: String,
    /// The host (pod name) it runs on.
    #[serde(default)]
    pub host: String,
    /// Its process id there.
    #[serde(default)]
    pub pid: u32,
    /// Where it is.
    pub state: State,
    /// Rewrites so far: a status that changes is a shard alive.
    pub beat: u64,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Its objects, once done.
    #[serde(default = "Vec::new")]
    pub tables: Vec<R>,
}

impl<R> Status<R> {
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

/// The key of the day's plan.
pub fn plan_key(date: &str) -> String {
    format!("{}plan.json", folder(date))
}

/// The key of shard `index`'s status (its claim).
pub fn status_key(date: &str, index: u64) -> String {
    format!("{}shard-{index}.json", folder(date))
}

/// The folder of the day's coordination objects.
pub fn folder(date: &str) -> String {
    format!("{date}/{}/", lease::SHARDS_FOLDER)
}

/// Remove the day's coordination objects, once it is done or abandoned (failures are
/// logged: the next attempt removes them).
pub async fn clear(store: &Store, date: &str) {
    objects::clear(store, &folder(date)).await
}

/// Remove them also when a signal stops the run (through `store`, not fenced: the lease
/// may be given back first); [`egress_store::stop::done`] the ticket after [`clear`].
pub fn clear_on_stop(store: Store, date: &str) -> egress_store::stop::Ticket {
    let folder = folder(date);
    egress_store::stop::register(
        egress_store::stop::Phase::Known,
        Box::new(move || {
            Box::pin(async move {
                objects::clear(&store, &folder).await;
                true
            })
        }),
    )
}

/// True while run `run_id` holds the day's lease.
pub async fn holds_the_day(store: &Store, date: &str, run_id: &str) -> Result<bool, StoreError> {
    Ok(holder(store, date)
        .await?
        .is_some_and(|h| h.run_id == run_id))
}

/// Who holds the day's lease now, if anyone.
pub async fn holder(store: &Store, date: &str) -> Result<Option<lease::Holder>, StoreError> {
    let found = lease::live_holder(store, &lease::key_in(date)).await?;
    Ok(found.and_then(|f| f.holder))
}

// ---------------------------------------------------------------------------------------
// The coordinator's side.

/// What the coordinator has heard from one index (1 and up).
#[derive(Debug, Clone)]
pub struct Heard<R> {
    /// Its status, when one of this plan's was found.
    pub status: Option<Status<R>>,
    /// When it last changed (or when the plan was published, if never heard).
    pub changed: Instant,
}

/// The coordinator's verdict.
#[derive(Debug, PartialEq)]
pub enum Verdict<R> {
    /// Keep waiting.
    Wait,
    /// Every index is there (`Done` carries their objects, for the last wait).
    Done(Vec<R>),
    /// The day cannot go on: why, in one line.
    Fail(String),
}

/// Judge what was heard from indexes 1.. at `now`: there when every index is in `wanted`
/// (joined, or done), failed when one has been silent (not joined, or not rewritten its
/// status) for longer than `wait`.
pub fn judge<R: Clone>(
    heard: &[Heard<R>],
    wanted: &[State],
    now: Instant,
    wait: Duration,
) -> Verdict<R> {
    let mut tables = Vec::new();
    let mut waiting = false;
    for (offset, h) in heard.iter().enumerate() {
        let index = offset + 1;
        let silent = now.saturating_duration_since(h.changed);
        match &h.status {
            Some(s) if wanted.contains(&s.state) => tables.extend(s.tables.iter().cloned()),
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

/// Index 0's side of a shared day: its plan, published and followed through.
pub struct Coordinator {
    store: Store,
    date: String,
    plan: Plan,
    shards: Shards,
    published: Instant,
}

impl Coordinator {
    /// Publish `plan` for the other indexes of `date`, after removing what an earlier
    /// attempt left (its plan must never be followed).
    pub async fn publish(
        store: &Store,
        date: &str,
        plan: Plan,
        shards: Shards,
    ) -> anyhow::Result<Coordinator> {
        clear(store, date).await;
        objects::write(store, &plan_key(date), &plan, Condition::None)
            .await
            .map_err(|e| {
                anyhow::Error::new(e).context("cannot publish the plan for the other shards")
            })?;
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
        Ok(Coordinator {
            store: store.clone(),
            date: date.to_string(),
            plan,
            shards,
            published: Instant::now(),
        })
    }

    /// The plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Wait until every other index has joined the plan: `Ok(None)` then, else the line
    /// saying which did not (the day must not be withdrawn for a plan that cannot
    /// complete).
    pub async fn gather<R: DeserializeOwned + Clone>(&self) -> anyhow::Result<Option<String>> {
        if egress_store::mutant::active("late-coordinator-withdraws") {
            return Ok(None);
        }
        match self
            .listen::<R>(&[State::Joined, State::Done], self.published)
            .await?
        {
            Verdict::Fail(line) => Ok(Some(line)),
            _ => Ok(None),
        }
    }

    /// Tell every index to write: the plan again, marked go.
    pub async fn go(&mut self) -> anyhow::Result<()> {
        self.plan.go = true;
        objects::write(
            &self.store,
            &plan_key(&self.date),
            &self.plan,
            Condition::None,
        )
        .await
        .map_err(|e| anyhow::Error::new(e).context("cannot tell the shards to write"))?;
        Ok(())
    }

    /// Wait for every other index to report its objects done; theirs, or why the day
    /// fails.
    pub async fn hear<R: DeserializeOwned + Clone>(&self) -> anyhow::Result<Vec<R>> {
        match self.listen(&[State::Done], Instant::now()).await? {
            Verdict::Done(tables) => Ok(tables),
            Verdict::Fail(line) => anyhow::bail!("{line}; no manifest written: run the Job again"),
            Verdict::Wait => anyhow::bail!("internal: stopped listening while waiting"),
        }
    }

    /// Read the statuses until every index is in `wanted`, or one was silent too long.
    async fn listen<R: DeserializeOwned + Clone>(
        &self,
        wanted: &[State],
        since: Instant,
    ) -> anyhow::Result<Verdict<R>> {
        let others = self.shards.count.saturating_sub(1) as usize;
        let mut heard: Vec<Heard<R>> = (0..others)
            .map(|_| Heard {
                status: None,
                changed: since,
            })
            .collect();
        loop {
            for (offset, h) in heard.iter_mut().enumerate() {
                let index = offset as u64 + 1;
                if let Some(status) = self.read_status(index).await {
                    note(h, status);
                }
            }
            match judge(&heard, wanted, Instant::now(), self.shards.wait) {
                Verdict::Wait => tokio::time::sleep(POLL).await,
                verdict => return Ok(verdict),
            }
        }
    }

    /// Shard `index`'s status, when it is one of this plan's (a read that fails counts as
    /// silence).
    async fn read_status<R: DeserializeOwned>(&self, index: u64) -> Option<Status<R>> {
        let key = status_key(&self.date, index);
        match objects::read::<Status<R>>(&self.store, &key).await {
            Ok(found) => found
                .map(|f| f.value)
                .filter(|s| s.follows(&self.plan) && s.index == index),
            Err(e) => {
                warn!(shard = index, error = %e, "cannot read shard {index}'s status; trying again");
                None
            }
        }
    }
}

/// Record `status` in `h` if it changed (a new state, pod or beat), logging new states.
fn note<R>(h: &mut Heard<R>, status: Status<R>) {
    let before = h.status.as_ref().map(|s| (s.state, s.beat, s.pod.clone()));
    let now = (status.state, status.beat, status.pod.clone());
    if before.as_ref() == Some(&now) {
        return;
    }
    if before.map(|(state, _, _)| state) != Some(status.state) {
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

// ---------------------------------------------------------------------------------------
// A shard's side.

/// Wait up to `--shard-wait` for a plan of one of `dates` whose run holds that day's
/// lease now (an earlier attempt's plan is never followed): the plan and its date, or
/// `None` when none came.
pub async fn wait_for_plan(
    store: &Store,
    dates: &[String],
    wait: Duration,
) -> anyhow::Result<Option<(Plan, String)>> {
    let started = Instant::now();
    loop {
        for date in dates {
            if let Some(found) = objects::read::<Plan>(store, &plan_key(date)).await? {
                if holds_the_day(store, date, &found.value.run_id).await? {
                    return Ok(Some((found.value, date.clone())));
                }
            }
        }
        if started.elapsed() >= wait {
            return Ok(None);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Wait for the coordinator's go (its plan again, marked go): true once it is said; false
/// when the coordinator's run no longer holds the day (it ended, well or not, without this
/// pod: [`wait_for_end`] tells which).
pub async fn wait_for_go(store: &Store, date: &str, plan: &Plan) -> anyhow::Result<bool> {
    loop {
        if let Some(found) = objects::read::<Plan>(store, &plan_key(date)).await? {
            if found.value.same(plan) && found.value.go {
                return Ok(true);
            }
        }
        if !holds_the_day(store, date, &plan.run_id).await? {
            return Ok(false);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// What became of the claim on an index.
pub enum Claimed<R> {
    /// This pod holds it: it dumps the index.
    Mine(Claim),
    /// The index was done already for this plan (this pod was started again after
    /// reporting): its report.
    Done(Status<R>),
    /// The day ended without this pod (another pod of its index did the index, or the
    /// attempt was abandoned): this one wrote nothing.
    Ended,
}

/// A pod's claim on its index of a plan: its status object, rewritten only while it is
/// still this pod's (each write conditional on the ETag of the last).
pub struct Claim {
    store: Store,
    key: String,
    date: String,
    run_id: String,
    snapshot_id: String,
    index: u64,
    pod: String,
    beats: AtomicU64,
    etag: tokio::sync::Mutex<Option<String>>,
    lost: AtomicBool,
    /// When the lease and the claim were last confirmed.
    confirmed: Mutex<Option<Instant>>,
}

/// Claim index `index` of `plan` for this pod (its status written, state joined). While
/// another pod of the index holds a live claim, wait: take it over once it goes stale or
/// fails, stop when it is done or the coordinator's run ends.
pub async fn claim<R: DeserializeOwned>(
    store: &Store,
    (date, plan): (&str, &Plan),
    shards: Shards,
) -> anyhow::Result<Claimed<R>> {
    let key = status_key(date, shards.index);
    let claim = Claim {
        store: store.clone(),
        key: key.clone(),
        date: date.to_string(),
        run_id: plan.run_id.clone(),
        snapshot_id: plan.snapshot_id().to_string(),
        index: shards.index,
        pod: format!("{:016x}", task::random()),
        beats: AtomicU64::new(0),
        etag: tokio::sync::Mutex::new(None),
        lost: AtomicBool::new(false),
        confirmed: Mutex::new(None),
    };
    let mut told = false;
    loop {
        let found = objects::read::<Status<R>>(store, &key).await?;
        // No status and no plan: the coordinator cleared the day's coordination objects (the
        // plan first), so the day ended without this pod.
        if found.is_none() && !planned(store, date, plan).await? {
            return Ok(Claimed::Ended);
        }
        let condition = match found {
            _ if egress_store::mutant::active("pieces-overwrite") => Condition::None,
            None => Condition::IfAbsent,
            Some(found) if found.value.follows(plan) => match found.value.state {
                State::Done => return Ok(Claimed::Done(found.value)),
                State::Joined if live(store, &found, shards) => {
                    if !holds_the_day(store, date, &plan.run_id).await? {
                        return Ok(Claimed::Ended);
                    }
                    if !told {
                        told = true;
                        info!(shard = shards.index, pod = %found.value.pod, "Another pod ({} on {}) holds this index for this plan: this one writes nothing, and takes the index over only if that pod stops.", found.value.pod, found.value.host);
                    }
                    tokio::time::sleep(POLL).await;
                    continue;
                }
                _ => conditional(found.etag),
            },
            // An earlier attempt's status: this plan's claim replaces it.
            Some(found) => conditional(found.etag),
        };
        let status = claim.status::<serde_json::Value>(State::Joined, None, Vec::new());
        if claim.write(&status, condition).await? {
            // A store whose conditional write is not atomic (s3s-fs checks, then writes)
            // lets two pods' claims both succeed, the last one standing: read the claim
            // back a beat later, and wait for the other pod when its claim landed last.
            // (Seen once in CI: both pods dumped, the first then found its claim gone.)
            tokio::time::sleep(POLL).await;
            if claim.holds().await? || egress_store::mutant::active("pieces-overwrite") {
                return Ok(Claimed::Mine(claim));
            }
        }
        // Another pod's claim came first: look again.
        tokio::time::sleep(POLL).await;
    }
}

/// True while the day's plan is still `plan`.
async fn planned(store: &Store, date: &str, plan: &Plan) -> Result<bool, StoreError> {
    let found = objects::read::<Plan>(store, &plan_key(date)).await?;
    Ok(found.is_some_and(|f| f.value.same(plan)))
}

/// True while a claim binds the other pods of its index: rewritten within
/// [`Shards::stale_after`] (the store's clock), and not held by a process of this host that
/// no longer exists.
fn live<R>(store: &Store, found: &objects::Found<Status<R>>, shards: Shards) -> bool {
    let age = store.now() - found.modified;
    let fresh = age < shards.stale_after().as_secs() as i64;
    let status = &found.value;
    let gone = status.host == task::host() && !task::is_alive(status.pid);
    fresh && !gone
}

fn conditional(etag: Option<String>) -> Condition {
    match etag {
        Some(etag) => Condition::IfMatch(etag),
        None => Condition::None,
    }
}

impl Claim {
    /// The pod holding this claim.
    pub fn pod(&self) -> &str {
        &self.pod
    }

    fn status<R>(&self, state: State, error: Option<String>, tables: Vec<R>) -> Status<R> {
        Status {
            run_id: self.run_id.clone(),
            snapshot_id: self.snapshot_id.clone(),
            index: self.index,
            pod: self.pod.clone(),
            host: task::host(),
            pid: task::pid(),
            state,
            beat: self.beats.fetch_add(1, Ordering::SeqCst),
            error,
            tables,
        }
    }

    /// Rewrite the status (a heartbeat, or the final report) while the claim is still
    /// this pod's; an error once another pod holds it.
    pub async fn report<R: Serialize>(
        &self,
        state: State,
        error: Option<String>,
        tables: Vec<R>,
    ) -> anyhow::Result<()> {
        let status = self.status(state, error, tables);
        let etag = self.etag.lock().await.clone();
        let condition = match etag {
            Some(etag) => Condition::IfMatch(etag),
            None => Condition::None,
        };
        if self.write(&status, condition).await? {
            return Ok(());
        }
        self.lost.store(true, Ordering::SeqCst);
        anyhow::bail!(
            "another pod of index {} took its claim over (this pod was paused or silent too long): this pod writes nothing more",
            self.index
        )
    }

    /// Write `status` under `condition`: true when written. A write whose reply was lost
    /// is settled by reading the status back: this pod's when it holds this very beat.
    async fn write<R: Serialize>(
        &self,
        status: &Status<R>,
        condition: Condition,
    ) -> anyhow::Result<bool> {
        let mut etag = self.etag.lock().await;
        let error = match objects::write(&self.store, &self.key, status, condition).await {
            Ok(written) => {
                *etag = written;
                return Ok(true);
            }
            Err(e) => e,
        };
        let refused = error.kind() == ErrorKind::PreconditionFailed;
        if !egress_store::mutant::active("lost-reply-fails") {
            let back = objects::read::<serde_json::Value>(&self.store, &self.key).await?;
            let ours = back.as_ref().is_some_and(|b| {
                b.value.get("pod").and_then(|p| p.as_str()) == Some(self.pod.as_str())
                    && b.value.get("beat").and_then(|p| p.as_u64()) == Some(status.beat)
            });
            if let (true, Some(back)) = (ours, back) {
                *etag = back.etag;
                return Ok(true);
            }
        }
        match refused {
            true => Ok(false),
            false => Err(anyhow::Error::new(error).context("cannot write this shard's status")),
        }
    }

    /// Confirm that this pod may still write: the coordinator's run holds the day, and the
    /// claim is still this pod's (at most one read of each every [`TRUST`]).
    async fn confirm(&self) -> Result<(), StoreError> {
        loop {
            if self.lost.load(Ordering::SeqCst) {
                return Err(self.refusal("another pod of this index took its claim over"));
            }
            let recent = self
                .confirmed
                .lock()
                .ok()
                .and_then(|c| *c)
                .is_some_and(|at| at.elapsed() < TRUST);
            if recent || egress_store::mutant::active("unfenced-writes") {
                return Ok(());
            }
            // A confirmation holds from when its reads began: one that took longer than
            // the trust window (a pause while they were answered) is read again.
            let began = Instant::now();
            self.read_and_confirm().await?;
            if let Ok(mut c) = self.confirmed.lock() {
                *c = Some(began);
            }
        }
    }

    /// Read the day's lease and the claim: both still this pod's plan's and this pod's.
    async fn read_and_confirm(&self) -> Result<(), StoreError> {
        if !holds_the_day(&self.store, &self.date, &self.run_id).await? {
            return Err(self.refusal(&format!(
                "the coordinator's run {} no longer holds the day's lease ({})",
                self.run_id,
                self.store.describe(&lease::key_in(&self.date))
            )));
        }
        if !self.holds().await? && !egress_store::mutant::active("pieces-overwrite") {
            self.lost.store(true, Ordering::SeqCst);
            return Err(self.refusal("another pod of this index took its claim over"));
        }
        Ok(())
    }

    /// True when the index's status is this pod's claim.
    async fn holds(&self) -> Result<bool, StoreError> {
        let found = objects::read::<serde_json::Value>(&self.store, &self.key).await?;
        Ok(found.as_ref().is_some_and(|f| {
            f.value.get("pod").and_then(|p| p.as_str()) == Some(self.pod.as_str())
        }))
    }

    /// Not LeaseLost (exit 3, which fails the Job): the Job retries this index, and the
    /// retry joins the next attempt's plan.
    fn refusal(&self, why: &str) -> StoreError {
        StoreError::new(
            ErrorKind::Other,
            format!("{why}: this shard's attempt was abandoned and writes nothing more"),
        )
    }

    /// Remove this pod's status, when it is still this pod's (an abandoned attempt).
    pub async fn withdraw(&self) {
        if let Ok(Some(found)) = objects::read::<serde_json::Value>(&self.store, &self.key).await {
            if found.value.get("pod").and_then(|p| p.as_str()) == Some(self.pod.as_str()) {
                let _ = self.store.delete(&self.key).await;
            }
        }
    }
}

#[async_trait]
impl Guard for Claim {
    async fn before_change(&self, _key: &str) -> Result<(), StoreError> {
        self.confirm().await
    }
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Claim({} by pod {})", self.key, self.pod)
    }
}

/// How a day a shard worked on ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The coordinator wrote the day's manifest for this plan's snapshot.
    Complete,
    /// The coordinator's run ended without it.
    Abandoned,
}

/// Wait until the coordinator's run no longer holds the day; whether it wrote the day's
/// manifest for `plan`'s snapshot.
pub async fn wait_for_end(store: &Store, date: &str, plan: &Plan) -> anyhow::Result<Ended> {
    while holds_the_day(store, date, &plan.run_id)
        .await
        .unwrap_or(true)
    {
        tokio::time::sleep(POLL).await;
    }
    let written =
        objects::read::<crate::manifest::Manifest>(store, &crate::manifest::key_in(date)).await?;
    match written {
        Some(m) if m.value.snapshot.txid_snapshot == plan.snapshot.txid_snapshot => {
            Ok(Ended::Complete)
        }
        _ => Ok(Ended::Abandoned),
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
        let args = crate::cli::ShardArgs {
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
        assert_eq!(s.stale_after(), Duration::from_secs(35));
    }

    fn status(state: State) -> Status<u32> {
        Status {
            run_id: "r".into(),
            snapshot_id: "s".into(),
            index: 1,
            pod: "p".into(),
            host: "h".into(),
            pid: 1,
            state,
            beat: 0,
            error: Some("boom".into()),
            tables: vec![7],
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
        assert_eq!(
            judge(&[done.clone(), done.clone()], &[State::Done], at(100), wait),
            Verdict::Done(vec![7, 7])
        );
        assert_eq!(
            judge(
                &[done.clone(), heard(None, t0)],
                &[State::Done],
                at(5),
                wait
            ),
            Verdict::Wait
        );
        let line = |v| match v {
            Verdict::Fail(line) => line,
            other => panic!("{other:?}"),
        };
        assert!(line(judge(
            &[done.clone(), heard(None, t0)],
            &[State::Done],
            at(11),
            wait
        ))
        .starts_with("shard 2 has not joined the day within --shard-wait 10s"));
        assert!(line(judge(
            &[heard(Some(State::Joined), at(1))],
            &[State::Done],
            at(12),
            wait
        ))
        .starts_with("shard 1 stopped reporting 11s ago"));
        assert!(line(judge(
            &[heard(Some(State::Failed), t0)],
            &[State::Done],
            at(10),
            wait
        ))
        .starts_with("shard 1 failed (boom)"));
        // A joined shard that keeps rewriting its status is waited for however long.
        assert_eq!(
            judge(
                &[heard(Some(State::Joined), at(995))],
                &[State::Done],
                at(1000),
                wait
            ),
            Verdict::Wait
        );
        // Gathering: joined is enough.
        assert!(matches!(
            judge(
                &[heard(Some(State::Joined), t0)],
                &[State::Joined, State::Done],
                at(1),
                wait
            ),
            Verdict::Done(_)
        ));
    }
}
