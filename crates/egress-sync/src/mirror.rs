//! A mirror run, as named steps: open both sides, clear dead uploads, count what
//! `--remove` would delete (and refuse too many), march the two listings while the pool
//! copies, copy each complete folder's manifest last, delete, summarise.

use std::collections::HashSet;
use std::sync::Arc;

use egress_common::day::handoff::{self, DayFacts, Departure, HandOff, Withdrawals};
use egress_common::day::lease;
use egress_common::manifest;
use egress_store::{list_parallel, ObjectInfo, Store, StoreError};
use futures::StreamExt;
use tokio::sync::mpsc;
use tracing::info;

use crate::decide::{self, Decision};
use crate::iceberg::storage::{Root, Warehouse};
use crate::iceberg::Tables;
use crate::manifests::{Expected, Folder, InputManifests};
use crate::march::{Listing, March, Pair};
use crate::output::OutputGuard;
use crate::pool::{Names, Pool, Publication, Task};
use crate::report::{Failed, Report};
use crate::settings::Settings;
use crate::sides::{Sides, OLD_RECORDS_KEY};
use crate::transfer::{self, Item, Stores};
use crate::uploads::{self, Marks};

/// A mirror run: the pool, and what the passes share.
struct Mirror<'a> {
    settings: &'a Settings,
    pool: Pool,
    manifests: tokio::sync::Mutex<InputManifests>,
    /// The Iceberg tables days are committed to (`--iceberg`).
    tables: Option<Arc<Tables>>,
    /// Folders whose manifest is, or may be after the hand-over, at the output.
    days: tokio::sync::Mutex<std::collections::BTreeSet<String>>,
}

/// Keys of no day: the programs' own files.
fn outside_days(key: &str) -> bool {
    lease::is_coordination(key) || key == OLD_RECORDS_KEY
}

/// Mirror the input into the output of `sides` as `settings` say.
pub async fn run(settings: &Settings, mut sides: Sides) -> anyhow::Result<Report> {
    // One writer per mirror: a dry run writes nothing and takes no lease.
    if settings.dry_run {
        let withdrawals = Arc::new(Withdrawals::new(sides.dest.clone(), outside_days));
        return Mirror::new(settings, sides, withdrawals, None)
            .run(None)
            .await;
    }
    // A shared mirror: one lease per share, and none of another layout live (checked once
    // ours is taken, so that of two runs starting together at least one sees the other).
    let slice = settings.slice;
    let lease = lease::acquire(
        &sides.dest,
        &lease::mirror_key(slice),
        "egress-sync",
        settings.lease,
    )
    .await?;
    let tables = match lease::check_mirror_layout(&sides.dest, slice).await {
        Ok(()) => open_tables(settings, &sides, &lease).await,
        Err(e) => Err(e),
    };
    let tables = match tables {
        Ok(tables) => tables,
        Err(e) => {
            lease.release().await;
            return Err(e);
        }
    };
    // A day leaves its tables before it leaves the output.
    let departure = tables.clone().map(|t| t as Arc<dyn Departure>);
    let withdrawals =
        Arc::new(Withdrawals::new(sides.dest.clone(), outside_days).telling(departure));
    // Every write into the output asks the lease first (a run that lost it writes nothing
    // more) and withdraws its day's manifest; every upload it starts is marked as its own.
    let marks = Marks::new(sides.dest.clone(), lease.run_id(), lease.since());
    let guard = OutputGuard::new(lease.fence(), withdrawals.clone(), marks);
    sides.dest = egress_store::guarded(sides.dest, Arc::new(guard));
    let output = sides.dest.clone();
    let mut outcome = Mirror::new(settings, sides, withdrawals, tables)
        .run(Some(&lease))
        .await;
    // A local output is on disk, names included, before the run says it succeeded.
    if outcome.is_ok() {
        if let Err(e) = output.persist().await {
            outcome = Err(anyhow::Error::new(e).context("cannot flush the output to disk"));
        }
    }
    lease.end(outcome).await
}

/// The Iceberg tables of `--iceberg`: their warehouse written only while the run holds
/// `lease`.
async fn open_tables(
    settings: &Settings,
    sides: &Sides,
    lease: &lease::Lease,
) -> anyhow::Result<Option<Arc<Tables>>> {
    let Some(iceberg) = &settings.iceberg else {
        refuse_untended_tables(&sides.dest).await?;
        return Ok(None);
    };
    let output = &settings.output;
    // Inside the output (the default), the tables are keys of the output's own store,
    // written past the hand-over's withdrawals (they are no day's objects).
    let warehouse = match &iceberg.inside_output {
        Some(prefix) => Warehouse {
            store: egress_store::guarded(sides.dest.clone(), lease.fence()),
            root: Root::of(&output.location),
            prefix: prefix.clone(),
        },
        None => Warehouse {
            store: egress_store::guarded(
                iceberg.warehouse.open(&output.s3, settings.local).await?,
                lease.fence(),
            ),
            root: Root::of(&iceberg.warehouse),
            prefix: String::new(),
        },
    };
    let tables = Tables::open(iceberg, sides.dest.clone(), &output.location, warehouse).await?;
    Ok(Some(Arc::new(tables)))
}

/// Without `--iceberg`, an output whose default warehouse holds tables is refused: this
/// run would change or remove days under them (the tables then name files that are gone
/// or other bytes), and no later run could tell which.
async fn refuse_untended_tables(output: &Store) -> anyhow::Result<()> {
    let folder = format!("{}/", crate::settings::DEFAULT_WAREHOUSE);
    let Some(page) = output.list(&folder).next().await else {
        return Ok(());
    };
    if page?.is_empty() {
        return Ok(());
    }
    Err(egress_common::ConfigError::new(format!(
        "the output holds Iceberg tables in {folder} but this run has no --iceberg: it would change days under them; run with --iceberg (ICEBERG=true) as before, or delete {folder} to stop keeping tables"
    ))
    .into())
}

impl<'a> Mirror<'a> {
    async fn run(&self, lease: Option<&lease::Lease>) -> anyhow::Result<Report> {
        if let Some(lease) = lease {
            self.clear_dead_uploads(lease).await;
        }
        let deletions = match self.settings.remove {
            true => Some(self.count_deletions().await?),
            false => None,
        };
        let (manifests, old_records) = self.copy_objects().await?;
        // Deletions may withdraw a day's manifest (an extra object in it): before the
        // hand-over, which writes it again.
        if let Some(allowed) = deletions {
            self.delete_extra(allowed).await?;
        }
        self.hand_over_all(manifests).await?;
        self.commit_tables().await;
        self.summarise(old_records).await
    }

    fn new(
        settings: &'a Settings,
        sides: Sides,
        withdrawals: Arc<Withdrawals>,
        tables: Option<Arc<Tables>>,
    ) -> Mirror<'a> {
        let t = settings.transfer;
        let shape = transfer::Settings::new(t.buffer_threshold, t.part_size, t.memory_budget);
        let manifests = InputManifests::new(sides.source.clone());
        let names = Names {
            input: sides.input_name,
            output: sides.output_name,
        };
        let transfers = Stores {
            source: sides.source,
            dest: sides.dest,
            settings: shape,
        };
        Mirror {
            settings,
            pool: Pool::new(
                transfers,
                names,
                settings.jobs,
                settings.dry_run,
                withdrawals,
            ),
            manifests: tokio::sync::Mutex::new(manifests),
            tables,
            days: tokio::sync::Mutex::new(std::collections::BTreeSet::new()),
        }
    }

    fn march(&self) -> March {
        let t = self.pool.transfers();
        let width = self.settings.list_jobs;
        let list = |store: &egress_store::Store| list_parallel(store.clone(), "", width);
        let filter = &self.settings.filter;
        March::new(
            Listing::new(list(&t.source), filter.clone(), "input"),
            Listing::new(list(&t.dest), filter.clone(), "output"),
        )
    }

    /// Abort the uploads dead egress-sync runs left at the output (this run holds the
    /// mirror's lease, so every other run is gone); nobody else's.
    async fn clear_dead_uploads(&self, lease: &lease::Lease) {
        let dest = &self.pool.transfers().dest;
        let mine = |key: &str| self.settings.filter.accepts(key);
        let aborted = uploads::clear_dead(dest, lease.run_id(), lease.since(), mine).await;
        if aborted > 0 {
            info!(
                aborted,
                "cleaned up multipart uploads left by an earlier run"
            );
        }
    }

    /// Pass 1 of `--remove`: how many output objects it would delete, checked against its
    /// guards before anything is changed.
    async fn count_deletions(&self) -> anyhow::Result<u64> {
        let mut march = self.march();
        let mut deletes = 0u64;
        while let Some(pair) = march.next().await? {
            if let Pair::DestOnly(d) = &pair {
                if !self.protected(d).await? {
                    deletes += 1;
                }
            }
        }
        let (_, dests) = march.counts();
        // The whole input, not this share's: a share whose days all expired still deletes.
        if deletes > 0 && march.input_in_any_share() == 0 {
            return egress_common::error::config(format!(
                "the input listing is empty; refusing to delete {deletes} output object(s) with --remove: check INPUT_URL and INPUT_PATH"
            ));
        }
        let limit = self.settings.max_delete.unwrap_or(dests / 10);
        if deletes > limit {
            return egress_common::error::config(format!(
                "--remove would delete {deletes} of {dests} output objects, more than the limit of {limit}: check the paths, or pass --max-delete {deletes} if this is intended"
            ));
        }
        Ok(deletes)
    }

    /// Under `--require-manifest` an output object is never deleted while it belongs to a
    /// day: its folder is still being written at the input (no manifest yet), or the
    /// input's manifest still lists it (the lifecycle rule expired it at the input first).
    async fn protected(&self, object: &ObjectInfo) -> Result<bool, StoreError> {
        if !self.settings.require_manifest {
            return Ok(false);
        }
        let mut manifests = self.manifests.lock().await;
        let folder = manifest::folder_of(&object.key);
        Ok(manifests.in_progress(folder).await? || manifests.lists(&object.key).await?)
    }

    /// March both listings and copy what differs, the manifests left for the hand-over.
    /// Returns them, and whether the output holds an earlier version's records file.
    async fn copy_objects(&self) -> anyhow::Result<(Vec<Pair>, bool)> {
        let march = self.march();
        let line = progress_line(self.settings.progress, &self.pool);
        let planned = self.pool.run(async |tx| self.plan(march, tx).await).await;
        line.finish().await;
        if let Some(fatal) = self.pool.fatal() {
            return Err(fatal.into());
        }
        planned
    }

    /// Each day's objects done: its manifest's turn (see [`crate::handoff`]).
    async fn hand_over_all(&self, deferred: Vec<Pair>) -> anyhow::Result<()> {
        let mut days = self.judge_days(deferred).await;
        // Objects the output had already are read back and checked before their day's
        // manifest vouches for them; those days are judged again once that is done.
        let proofs: Vec<Task> = days.iter().flat_map(|d| d.proofs()).collect();
        if !proofs.is_empty() {
            self.run_tasks(proofs).await?;
            for day in days.iter_mut().filter(|d| d.proving()) {
                day.decision = self.judge(&day.pair, &day.folder).await;
            }
        }
        // Each day's task (its manifest read again) is made as the pool takes it: made all
        // first, they held every day's manifest at once (70 MB for 730 days of 96 KB).
        self.pool
            .run(async |tx| {
                for day in days {
                    if let Some(task) = self.act(day).await {
                        let _ = tx.send(task).await;
                    }
                }
            })
            .await;
        self.stopped()
    }

    /// Run `tasks` in the pool; the configuration error that stopped it, if one did.
    async fn run_tasks(&self, tasks: Vec<Task>) -> anyhow::Result<()> {
        self.pool
            .run(async |tx| {
                for task in tasks {
                    let _ = tx.send(task).await;
                }
            })
            .await;
        self.stopped()
    }

    /// The configuration error that stopped the pool, if one did.
    fn stopped(&self) -> anyhow::Result<()> {
        match self.pool.fatal() {
            Some(fatal) => Err(fatal.into()),
            None => Ok(()),
        }
    }

    /// Decide each pair as the march yields it and hand copies to the pool; manifests wait
    /// until every object is done.
    async fn plan(
        &self,
        mut march: March,
        tx: mpsc::Sender<Task>,
    ) -> anyhow::Result<(Vec<Pair>, bool)> {
        let dest_traits = self.pool.transfers().dest.traits();
        let mut deferred = Vec::new();
        let mut announced = HashSet::new();
        while let Some(pair) = march.next().await? {
            if self.pool.stopped() {
                break;
            }
            if let (Pair::DestOnly(d) | Pair::Both(_, d), true) =
                (&pair, self.settings.require_manifest)
            {
                self.manifests.lock().await.at_output(&d.key).await?;
            }
            self.note_day(&pair).await;
            let source = match &pair {
                Pair::DestOnly(_) => continue,
                Pair::SourceOnly(s) | Pair::Both(s, _) => s.clone(),
            };
            if manifest::is_manifest(&source.key) {
                if egress_store::mutant::active("publish-unconfirmed") {
                    let folder = manifest::folder_of(&source.key).to_string();
                    if let Some(task) = self.publication(&source, &folder).await {
                        let _ = tx.send(task).await;
                    }
                    continue;
                }
                deferred.push(pair);
                continue;
            }
            let Some(item) = self.item(source, &mut announced).await? else {
                continue;
            };
            let task = match decide::decide(&pair, dest_traits) {
                Decision::Copy(reason) => Task::Copy(item, reason),
                Decision::Check => Task::Check(item),
                Decision::Skip(reason) => {
                    if self.settings.dry_run {
                        println!("skip ({reason}) {}", item.object.key);
                    }
                    self.skipped(&item);
                    continue;
                }
                Decision::Delete => continue,
            };
            if tx.send(task).await.is_err() {
                break;
            }
        }
        Ok((deferred, march.saw_old_records()))
    }

    /// Remember the folder of a manifest at either side: its day may be at the output
    /// after the hand-over, to be committed to its tables (`--iceberg`).
    async fn note_day(&self, pair: &Pair) {
        if self.tables.is_none() {
            return;
        }
        let key = pair_key(pair);
        if manifest::is_manifest(&key) {
            let folder = manifest::folder_of(&key).to_string();
            self.days.lock().await.insert(folder);
        }
    }

    /// Commit every day the output holds to its Iceberg tables (`--iceberg`), in date
    /// order; a table that cannot take a day fails the run, the others go on.
    async fn commit_tables(&self) {
        let Some(tables) = &self.tables else {
            return;
        };
        let days = std::mem::take(&mut *self.days.lock().await);
        let mut csv = Vec::new();
        for folder in days {
            let published = self.pool.published(&folder);
            match tables.commit_day(&folder, published).await {
                Ok(outcome) => {
                    if outcome.csv {
                        csv.push(folder.clone());
                    }
                    for (table, line) in outcome.failures {
                        tracing::error!(folder = %folder, table = %table, "day {folder} not committed to Iceberg table {table}: {line}");
                        self.pool
                            .record(|r| r.fail(&format!("{folder} (Iceberg table {table})"), line));
                    }
                }
                Err(e) => {
                    let line = format!("day {folder} not committed to its Iceberg tables: {e}");
                    tracing::error!(folder = %folder, "{line}");
                    self.pool.record(|r| r.fail(&folder, line));
                }
            }
        }
        if let (Some(first), Some(last)) = (csv.first(), csv.last()) {
            info!("{} CSV day(s) ({first} to {last}) mirrored, not committed to Iceberg tables: Iceberg has no CSV data files", csv.len());
        }
    }

    /// An object the output already has: skipped, unless its size is not its manifest's
    /// (a day whose objects do not match its manifest is never handed over; the bytes are
    /// checked when copied, and by `--verify`).
    fn skipped(&self, item: &Item) {
        match &item.expected {
            Some(e) if e.size != item.object.size => {
                let why = format!(
                    "{} does not match its manifest: {} bytes, the manifest says {}",
                    item.object.key, item.object.size, e.size
                );
                tracing::error!(key = %item.object.key, "{why}");
                self.pool.record(|r| r.fail(&item.object.key, why));
            }
            _ => self.pool.record(|r| r.skipped += 1),
        }
    }

    /// The copy item for `source`, with what its folder's manifest says; `None` when it is
    /// not to be copied: its folder is not ready, or (`--require-manifest`) its day's
    /// manifest does not list it.
    async fn item(
        &self,
        source: ObjectInfo,
        announced: &mut HashSet<String>,
    ) -> anyhow::Result<Option<Item>> {
        let folder = manifest::folder_of(&source.key).to_string();
        let mut gates = self.manifests.lock().await;
        if self.settings.require_manifest {
            let ready = self.folder_ready(&mut gates, &folder, announced).await?;
            if !ready {
                return Ok(None);
            }
        }
        let needs_layout = source.etag.as_deref().is_none_or(|e| e.contains('-'));
        let listed = if self.settings.require_manifest || needs_layout {
            gates.see(&source.key).await?
        } else {
            None
        };
        if self.settings.require_manifest && listed.is_none() {
            let input = &self.pool.names().input;
            tracing::warn!(key = %source.key, "`{input}/{}` is not listed in its day's manifest: not copied into the day", source.key);
            self.pool.record(|r| r.unlisted += 1);
            return Ok(None);
        }
        let (expected, part_sizes) = match listed {
            Some((expected, parts)) => (self.settings.require_manifest.then_some(expected), parts),
            None => (None, None),
        };
        Ok(Some(Item {
            object: source,
            expected,
            part_sizes,
        }))
    }

    /// Whether `folder` may be copied (`--require-manifest`): it has a usable manifest.
    /// Each folder's state is said once: skipped in progress (INFO), skipped unusable
    /// (WARN), or copied without its manifest because the filter leaves it out (WARN).
    async fn folder_ready(
        &self,
        gates: &mut InputManifests,
        folder: &str,
        announced: &mut HashSet<String>,
    ) -> anyhow::Result<bool> {
        let input = &self.pool.names().input;
        let first = announced.insert(folder.to_string());
        match gates.folder(folder).await? {
            Folder::Complete(_) => {
                if first && !self.settings.filter.accepts(&manifest::key_in(folder)) {
                    tracing::warn!(folder = %folder, "day `{input}/{folder}`: its _manifest.json is outside --include/--exclude: its objects are copied, each checked against it, but the day stays without its manifest at the output");
                    self.pool.record(|r| r.held_days += 1);
                }
                Ok(true)
            }
            Folder::NoManifest => {
                if first {
                    info!(folder = %folder, "folder `{input}/{folder}` has no _manifest.json; skipped (it may still be in progress)");
                }
                Ok(false)
            }
            Folder::Unusable(why) => {
                if first {
                    tracing::warn!(folder = %folder, "folder `{input}/{folder}` has an unusable _manifest.json ({why}); skipped");
                }
                Ok(false)
            }
        }
    }

    /// The manifests' turn, each day's objects done: what becomes of each day.
    async fn judge_days(&self, deferred: Vec<Pair>) -> Vec<Day> {
        let mut days = Vec::new();
        for pair in deferred {
            let (Pair::SourceOnly(source) | Pair::Both(source, _)) = &pair else {
                continue;
            };
            let folder = manifest::folder_of(&source.key).to_string();
            let decision = match self.settings.require_manifest {
                true => self.judge(&pair, &folder).await,
                false => Decided::Plain,
            };
            days.push(Day {
                pair,
                folder,
                decision,
            });
        }
        days
    }

    /// What becomes of the day of the manifest `pair` in `folder`, from what the run knows.
    async fn judge(&self, pair: &Pair, folder: &str) -> Decided {
        match self.day_facts(pair, folder).await {
            Ok(facts) => {
                let handoff = handoff::decide(&facts);
                let expected = match &handoff {
                    HandOff::Prepare { prove, .. } => self.expected(folder, prove).await,
                    _ => Vec::new(),
                };
                Decided::HandOff(facts, handoff, expected)
            }
            Err(e) => Decided::Unknown(e.to_string()),
        }
    }

    /// What each of `keys` (objects of `folder`) must be, by its manifest.
    async fn expected(&self, folder: &str, keys: &[String]) -> Vec<(String, Expected)> {
        let manifests = self.manifests.lock().await;
        manifests
            .seen(folder)
            .into_iter()
            .filter(|(k, _)| keys.contains(k))
            .collect()
    }

    /// Without `--require-manifest` a manifest is copied like any object, after its
    /// folder's objects, and always when this run withdrew it.
    fn plain_manifest(&self, pair: &Pair, folder: &str) -> Option<Task> {
        let (Pair::SourceOnly(source) | Pair::Both(source, _)) = pair else {
            return None;
        };
        let item = Item {
            object: source.clone(),
            expected: None,
            part_sizes: None,
        };
        if self.pool.report().failed_folders.contains_key(folder) {
            let why = "manifest not copied: some of its folder's objects failed to copy";
            tracing::error!(key = %source.key, "{why}");
            self.pool.record(|r| r.fail(&source.key, why.to_string()));
            return None;
        }
        if self.pool.withdrawals().withdrawn(folder) {
            return Some(Task::Copy(item, decide::CopyReason::New));
        }
        match decide::decide(pair, self.pool.transfers().dest.traits()) {
            Decision::Copy(reason) => Some(Task::Copy(item, reason)),
            Decision::Check => Some(Task::Check(item)),
            _ => {
                self.pool.record(|r| r.skipped += 1);
                None
            }
        }
    }

    /// What the run knows of a gated day when its manifest's turn comes.
    async fn day_facts(&self, pair: &Pair, folder: &str) -> Result<DayFacts, StoreError> {
        let mut gates = self.manifests.lock().await;
        let unusable = match gates.folder(folder).await? {
            Folder::Unusable(why) => Some(why.clone()),
            _ => None,
        };
        let (filtered, missing): (Vec<String>, Vec<String>) = gates
            .missing(folder)
            .into_iter()
            .partition(|key| !self.settings.filter.accepts(key));
        let changed = unusable.is_none() && !gates.unchanged(folder).await?;
        let withdrawn = self.pool.withdrawals().withdrawn(folder);
        let unproven = gates
            .seen(folder)
            .into_iter()
            .filter(|(key, _)| !self.pool.proven(key))
            .map(|(key, _)| key)
            .collect();
        let unlisted = gates
            .unlisted_at_output(folder)
            .into_iter()
            .filter(|key| !self.pool.removed(key))
            .collect();
        Ok(DayFacts {
            unusable,
            changed,
            filtered,
            missing,
            failed: self.pool.report().failed_folders.contains_key(folder),
            already_published: !withdrawn && self.at_output(pair).await?,
            unproven,
            unlisted,
        })
    }

    /// True when the output's manifest is the input's (by ETag, time, or the copy's record).
    async fn at_output(&self, pair: &Pair) -> Result<bool, StoreError> {
        let Pair::Both(source, dest) = pair else {
            return Ok(false);
        };
        Ok(
            match decide::decide(pair, self.pool.transfers().dest.traits()) {
                Decision::Skip(_) => true,
                Decision::Check => {
                    let meta = self.pool.transfers().dest.head(&dest.key).await?;
                    matches!(decide::after_head(source, &meta), Decision::Skip(_))
                }
                _ => false,
            },
        )
    }

    /// Carry out a day's hand-off: the task that writes its manifest, or the line that
    /// says why it is not written.
    async fn act(&self, day: Day) -> Option<Task> {
        let Day {
            pair,
            folder,
            decision,
        } = day;
        let key = pair_key(&pair);
        let input = &self.pool.names().input;
        let (facts, handoff) = match decision {
            Decided::Plain => return self.plain_manifest(&pair, &folder),
            Decided::Unknown(e) => {
                tracing::error!(key = %key, "manifest not copied: {e}");
                self.pool
                    .record(|r| r.fail(&key, format!("manifest not copied: {e}")));
                return None;
            }
            Decided::HandOff(facts, handoff, _) => (facts, handoff),
        };
        match handoff {
            HandOff::Publish => match &pair {
                Pair::SourceOnly(source) | Pair::Both(source, _) => {
                    self.publication(source, &folder).await
                }
                Pair::DestOnly(_) => None,
            },
            HandOff::AlreadyThere { lost } => {
                if !lost.is_empty() {
                    info!(folder = %folder, "day `{input}/{folder}` was mirrored already; the input has since lost {} of its objects (expired?): {}", lost.len(), lost.join(", "));
                }
                self.pool.record(|r| r.skipped += 1);
                None
            }
            HandOff::Hold(why) => {
                tracing::warn!(folder = %folder, "day `{input}/{folder}` left without its manifest at the output: {why}");
                // A day being written again at the input: its objects' mismatches are that,
                // not failures of this run.
                let forgive = facts.changed;
                self.pool.record(|r| {
                    r.held_days += 1;
                    if forgive {
                        r.forgive(&folder);
                    }
                });
                None
            }
            HandOff::Prepare { prove, remove } => {
                let keys: Vec<String> = prove.into_iter().chain(remove).collect();
                let why = format!(
                    "{} object(s) at the output could not be proven or removed: {}",
                    keys.len(),
                    keys.join(", ")
                );
                tracing::error!(key = %key, "manifest not copied: {why}");
                self.pool
                    .record(|r| r.fail(&key, format!("manifest not copied: {why}")));
                None
            }
            HandOff::Fail(why) => {
                tracing::error!(key = %key, "manifest not copied: {why}");
                self.pool
                    .record(|r| r.fail(&key, format!("manifest not copied: {why}")));
                None
            }
        }
    }

    /// The manifest as read, to be written with the record of the version it is, as the
    /// input's listing (`source`) names versions: by ETag, or by size and time where the
    /// listing has no ETags (s3s-fs): recording the ETag of the read there made the next
    /// run find every manifest changed, publish it again and read its day back.
    async fn publication(&self, source: &ObjectInfo, folder: &str) -> Option<Task> {
        let key = source.key.as_str();
        // Manifests on their way hold memory budget: the hand-over reads them again one by
        // one, and at most the budget's worth waits for the pool.
        let size = match self.manifests.lock().await.folder(folder).await {
            Ok(Folder::Complete(listed)) => listed.meta.size,
            _ => return None,
        };
        let memory = self.pool.hold_memory(size).await;
        let mut gates = self.manifests.lock().await;
        let body = match gates.bytes_as_read(folder).await {
            Ok(Some(body)) => body,
            Ok(None) => {
                let input = &self.pool.names().input;
                tracing::warn!(folder = %folder, "day `{input}/{folder}` left without its manifest at the output: the input's manifest changed after its objects were checked");
                self.pool.record(|r| {
                    r.held_days += 1;
                    r.forgive(folder);
                });
                return None;
            }
            Err(e) => {
                tracing::error!(key = %key, "manifest not copied: {e}");
                self.pool
                    .record(|r| r.fail(key, format!("manifest not copied: {e}")));
                return None;
            }
        };
        let Ok(Folder::Complete(listed)) = gates.folder(folder).await else {
            return None;
        };
        let version = ObjectInfo {
            key: key.to_string(),
            size: body.len() as u64,
            etag: source.etag.as_ref().and(listed.meta.etag.clone()),
            modified: source.modified,
            modified_nanos: 0,
        };
        let md5: [u8; 16] =
            md5::Digest::finalize(<md5::Md5 as md5::Digest>::new_with_prefix(&body)).into();
        Some(Task::Publish(Publication {
            key: key.to_string(),
            body,
            options: crate::transfer::dest_options(&listed.meta, &version, Some(md5)),
            memory,
        }))
    }

    /// Pass 3 of `--remove`, only after every copy succeeded: delete the output objects
    /// the input lacks, at most as many as were counted.
    async fn delete_extra(&self, allowed: u64) -> anyhow::Result<()> {
        let report = self.pool.report();
        if report.failed > 0 {
            tracing::error!("not deleting anything because some copies failed");
            return Ok(());
        }
        let march = self.march();
        self.pool
            .run(async |tx| -> anyhow::Result<()> {
                let mut march = march;
                let mut sent = 0u64;
                while let Some(pair) = march.next().await? {
                    let Pair::DestOnly(d) = pair else { continue };
                    if self.protected(&d).await? {
                        continue;
                    }
                    sent += 1;
                    if sent > allowed {
                        return egress_common::error::config(format!(
                            "the output gained objects to delete since they were counted ({allowed}); nothing more deleted: run again"
                        ));
                    }
                    if tx.send(Task::Delete(d.key)).await.is_err() {
                        break;
                    }
                }
                Ok(())
            })
            .await
    }

    /// The closing lines; the run's error when anything failed.
    async fn summarise(&self, old_records: bool) -> anyhow::Result<Report> {
        let report = self.pool.report();
        if self.settings.dry_run {
            println!(
                "Dry run: {} to copy ({}), {} to skip, {} to delete; nothing was changed.",
                report.planned_copies,
                egress_common::units::human_bytes(report.planned_bytes),
                report.skipped,
                report.planned_deletes
            );
            return Ok(report);
        }
        if old_records && report.failed == 0 {
            match self.pool.transfers().dest.delete(OLD_RECORDS_KEY).await {
                Ok(()) => info!("removed `{OLD_RECORDS_KEY}`, the copy records an earlier version kept in the output: the listings and the copies' metadata now decide"),
                Err(e) => tracing::warn!(error = %e, "could not remove the earlier version's records file"),
            }
        }
        if report.checked > 0 {
            info!(objects = report.checked, "{} object(s) needed a HEAD of their copy to decide (their ETags cannot match the input's)", report.checked);
        }
        let line = report.total_line();
        let peak = egress_common::memory::peak_rss_mib();
        let (copied, skipped, deleted) = (report.copied, report.skipped, report.deleted);
        let (failed, vanished) = (report.failed, report.vanished);
        let (unlisted, held) = (report.unlisted, report.held_days);
        // The same total line whatever the outcome, at the level the outcome calls for.
        macro_rules! total_line {
            ($level:ident) => {
                tracing::$level!(
                    copied,
                    skipped,
                    deleted,
                    failed,
                    vanished,
                    unlisted,
                    held,
                    peak_rss_mib = peak,
                    "{line}"
                )
            };
        }
        match report.failure_line() {
            None => {
                total_line!(info);
                Ok(report)
            }
            Some(failure) => {
                total_line!(error);
                Err(Failed {
                    report,
                    line: failure,
                }
                .into())
            }
        }
    }
}

/// One day's manifest, and what becomes of the day.
struct Day {
    pair: Pair,
    folder: String,
    decision: Decided,
}

/// What was decided for a day.
enum Decided {
    /// Without `--require-manifest`: copied like any object.
    Plain,
    /// What the run knows, what it decided, and what the objects to prove must be.
    HandOff(DayFacts, HandOff, Vec<(String, Expected)>),
    /// The facts could not be gathered: why.
    Unknown(String),
}

impl Day {
    /// True while the day waits for its output to be made ready.
    fn proving(&self) -> bool {
        matches!(
            &self.decision,
            Decided::HandOff(_, HandOff::Prepare { .. }, _)
        )
    }

    /// The tasks that make it ready: prove the objects the output had, remove the ones
    /// the day no longer has.
    fn proofs(&self) -> Vec<Task> {
        match &self.decision {
            Decided::HandOff(_, HandOff::Prepare { remove, .. }, expected) => expected
                .iter()
                .map(|(key, e)| Task::Prove(key.clone(), e.clone()))
                .chain(remove.iter().map(|key| Task::Delete(key.clone())))
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// The input key of a pair.
fn pair_key(pair: &Pair) -> String {
    match pair {
        Pair::SourceOnly(o) | Pair::Both(o, _) | Pair::DestOnly(o) => o.key.clone(),
    }
}

fn progress_line(enabled: bool, pool: &Pool) -> egress_common::progress::Line {
    let done = pool.progress.clone();
    egress_common::progress::Line::start(enabled, move |elapsed| {
        use std::sync::atomic::Ordering;
        let bytes = done.bytes.load(Ordering::Relaxed);
        format!(
            "sync: {} objects, {} copied, {}",
            done.objects.load(Ordering::Relaxed),
            egress_common::units::human_bytes(bytes),
            egress_common::units::human_rate(bytes, elapsed.as_secs_f64())
        )
    })
}
