//! One dump run, as a short sequence of named steps: open the output, take the day's
//! lease, take the snapshot, (with `--shards`) gather the other pods, withdraw the day,
//! dump, hear the others, confirm what was written, publish the manifest. Every write that
//! makes the day visible or invisible goes through [`egress_common::day`].

use anyhow::Context;
use egress_common::day::lease::{self, Lease};
use egress_common::day::shared::{self, Assigned, Coordinator, Plan};
use egress_common::day::{self, Written};
use egress_common::manifest;
use egress_store::Store;
use tracing::{info, warn};

use crate::catalog::ResolvedTable;
use crate::database::{self, Postgres};
use crate::day_manifest::{self, ManifestParts};
use crate::failure::AttemptError;
use crate::report::TableReport;
use crate::settings::Settings;
use crate::shard;
use crate::source::{OpenSnapshot, TableSource};

/// Run a whole dump as `settings` say.
pub async fn run(settings: &Settings) -> anyhow::Result<Vec<TableReport>> {
    let source = Postgres::new(settings);
    let store = database::open_output(settings).await?;
    if settings.dry_run {
        return database::dry_run(settings, &store).await;
    }
    // Another index of a shared day follows the coordinator's plan, under its lease.
    if settings.shards.index > 0 {
        return shard::run(settings, store, &source).await;
    }
    day(settings, store, &source).await
}

/// The day, dumped by this process alone or coordinated by it (index 0), under the day's
/// lease: every write of the day asks the lease first, so a run that lost it writes
/// nothing more.
pub async fn day(
    settings: &Settings,
    store: Store,
    source: &dyn TableSource,
) -> anyhow::Result<Vec<TableReport>> {
    let key = lease::key_in(&settings.date);
    let lease = lease::acquire(&store, &key, "egress-dump", settings.lease).await?;
    // Done, failed or stopped by a signal, a shared day's coordination objects go.
    let coordination = settings
        .shards
        .sharded()
        .then(|| shared::clear_on_stop(store.clone(), &settings.date));
    let fenced = egress_store::guarded(store, lease.fence());
    clear_dead_uploads(&fenced, &settings.date, lease.since()).await;
    let outcome = with_retries(settings, &fenced, &lease, source).await;
    if let Some(ticket) = coordination {
        egress_store::stop::done(ticket);
        shared::clear(&fenced, &settings.date).await;
    }
    lease.end(outcome).await
}

/// The day's attempts. A standby may cancel a read for a recovery conflict: the day then
/// starts again from a fresh snapshot (up to `--conflict-retries` times), so that it stays
/// one snapshot; objects written from the abandoned one are written again, and no manifest
/// vouches for them meanwhile. A shared day is not retried here: its other pods read the
/// abandoned snapshot; the Job's next attempt starts all pods afresh.
async fn with_retries(
    settings: &Settings,
    store: &Store,
    lease: &Lease,
    source: &dyn TableSource,
) -> anyhow::Result<Vec<TableReport>> {
    let run_started = manifest::now_rfc3339();
    let retries_left = match settings.shards.sharded() {
        true => 0,
        false => settings.conflict_retries,
    };
    let mut retries = 0;
    loop {
        let attempt = Attempt {
            settings,
            store,
            lease,
            run_started: run_started.clone(),
            retries,
        };
        let error = match attempt.run(source).await {
            Ok(reports) => return Ok(reports),
            Err(e) => e,
        };
        if !source.conflicted(&error).await {
            error.log_tables();
            return Err(error.into_anyhow());
        }
        if retries >= retries_left {
            error.log_tables();
            return Err(error.into_anyhow().context(format!(
                "still cancelled for recovery conflicts after {retries} retries from a fresh snapshot: raise max_standby_streaming_delay or enable hot_standby_feedback on the standby, raise --conflict-retries, or read from the primary"
            )));
        }
        retries += 1;
        warn!(
            retry = retries,
            of = settings.conflict_retries,
            error = %egress_common::error::chain(&error),
            "the standby cancelled a read for a recovery conflict: starting the day again from a fresh snapshot (retry {retries} of {})",
            settings.conflict_retries
        );
    }
}

/// One attempt at the day, from one snapshot.
struct Attempt<'a> {
    settings: &'a Settings,
    store: &'a Store,
    lease: &'a Lease,
    run_started: String,
    retries: u32,
}

impl Attempt<'_> {
    /// Take the snapshot, gather the other pods, withdraw the day, dump, hear the others,
    /// publish.
    async fn run(self, source: &dyn TableSource) -> Result<Vec<TableReport>, AttemptError> {
        let (settings, store) = (self.settings, self.store);
        let snapshot = source.open(settings.shards.sharded()).await?;
        let mut coordinator = match settings.shards.sharded() {
            true => Some(self.share_out(snapshot.as_ref()).await?),
            false => None,
        };
        if let Some(c) = &coordinator {
            if let Some(missing) = c.gather::<TableReport>().await? {
                snapshot.close().await;
                return self.leave_as_it_is(c.plan(), missing).await;
            }
        }
        // The day changes from here: first its manifest goes, then its earlier objects.
        day::withdraw(store, &settings.date).await?;
        clear_objects(settings, store, snapshot.tables()).await?;
        let mine = match &mut coordinator {
            Some(c) => {
                c.go().await?;
                database::share(c.plan(), 0, snapshot.tables())
            }
            None => snapshot.tables().to_vec(),
        };
        let mut reports = snapshot.dump(store, &mine).await?;
        if let Some(c) = &coordinator {
            // The snapshot stays exported until every other index has reported.
            reports.extend(c.hear::<TableReport>().await?);
            abort_shards_uploads(store, &settings.date).await;
        }
        let opened = snapshot.opened().clone();
        snapshot.close().await;
        let reports = day_manifest::in_listed_order(&opened.tables, reports)?;
        let parts = ManifestParts {
            settings,
            run_started: self.run_started,
            snapshot: opened.info,
            text_settings: opened.text_settings,
        };
        let (tables, plans) = (&opened.tables, &opened.plans);
        let manifest = day_manifest::build_manifest(parts, tables, &reports, plans);
        publish(settings, store, self.lease, manifest, (&reports, plans)).await?;
        success(&reports, self.retries);
        Ok(reports)
    }

    /// With `--shards`: share the tables out between the indexes (a table over
    /// `--split-larger-than` in one page range per index, the others whole, by size) and
    /// publish the plan (the snapshot is exported for them).
    async fn share_out(&self, snapshot: &dyn OpenSnapshot) -> Result<Coordinator, AttemptError> {
        let settings = self.settings;
        let count = settings.shards.count;
        let tables = snapshot.tables();
        let mut pieces = Vec::with_capacity(tables.len());
        for table in tables {
            pieces.push(snapshot.pieces(table, count).await?);
        }
        let whole: Vec<usize> = (0..tables.len()).filter(|&i| pieces[i].is_none()).collect();
        let sizes: Vec<i64> = whole.iter().map(|&i| tables[i].estimated_bytes).collect();
        let mut shard_of = vec![0; tables.len()];
        for (&i, shard) in whole.iter().zip(shared::assign(&sizes, count)) {
            shard_of[i] = shard;
        }
        let mut assigned = Vec::new();
        for (i, table) in tables.iter().enumerate() {
            let entry = |shard, piece| Assigned {
                table: table.requested.file_stem(),
                oid: table.oid,
                shard,
                piece,
            };
            match &pieces[i] {
                Some(ranges) => assigned.extend(ranges.iter().map(|&p| entry(p.of.index, Some(p)))),
                None => assigned.push(entry(shard_of[i], None)),
            }
        }
        let plan = Plan {
            run_id: self.lease.run_id().to_string(),
            shards: count,
            snapshot: snapshot.info().clone(),
            format: settings.format.name().to_string(),
            header: settings.header,
            compression_level: settings.compression_level,
            tables: assigned,
            go: false,
        };
        Ok(Coordinator::publish(self.store, &settings.date, plan, settings.shards).await?)
    }

    /// Not every index joined the plan: the day is left as it is. A day already complete
    /// for this plan (the same objects) is a success with nothing rewritten (a late or
    /// duplicate index 0); any other day fails, named.
    async fn leave_as_it_is(
        &self,
        plan: &Plan,
        missing: String,
    ) -> Result<Vec<TableReport>, AttemptError> {
        let (settings, store) = (self.settings, self.store);
        let extension = settings.format.extension();
        let mut planned: Vec<String> = (0..plan.shards)
            .flat_map(|i| plan.objects(i, extension))
            .collect();
        planned.sort();
        if let Some(done) = day::complete(store, &settings.date).await? {
            let mut files: Vec<String> = done.tables.iter().map(|t| t.file.clone()).collect();
            files.sort();
            if files == planned {
                info!(
                    date = %settings.date,
                    "Day {} is complete already (its manifest lists the objects this plan would write), and not every index joined to write it again ({missing}): nothing was rewritten.",
                    settings.date
                );
                return Ok(Vec::new());
            }
        }
        Err(anyhow::anyhow!("{missing}; the day was left as it was: run the Job again").into())
    }
}

/// Remove what earlier runs wrote for the day's tables (in this layout or another: a table
/// shared by more pods, or whole, or as CSV) and its descriptor, once the manifest is
/// withdrawn: each object of the day is then created by this run, never replaced, and the
/// folder holds each table in the one form this run writes it.
async fn clear_objects(
    settings: &Settings,
    store: &Store,
    tables: &[ResolvedTable],
) -> Result<(), AttemptError> {
    let stems: Vec<String> = tables.iter().map(|t| t.requested.file_stem()).collect();
    let ours = |file: &str| {
        file == crate::descriptor::FILE_NAME
            || stems.iter().any(|s| manifest::is_object_of(file, s))
    };
    day::clear_objects(store, &settings.date, ours).await?;
    Ok(())
}

/// The descriptor, then (every object confirmed still the one written, the lease still
/// held, the day on disk) the manifest, last.
async fn publish(
    settings: &Settings,
    store: &Store,
    lease: &Lease,
    mut manifest: manifest::Manifest,
    (reports, plans): (&[TableReport], &[crate::parquet::TablePlan]),
) -> anyhow::Result<()> {
    let descriptor =
        day_manifest::write_descriptor(store, &manifest, plans, settings.format).await?;
    manifest.descriptor = Some(descriptor);
    let written: Vec<Written> = manifest
        .tables
        .iter()
        .zip(reports)
        .map(|(entry, report)| Written {
            key: egress_store::key::join(&manifest.date, &entry.file),
            size: entry.compressed_bytes,
            etag: report.committed.etag.clone(),
        })
        .collect();
    day::confirm_written(store, &written).await?;
    lease.check().await?;
    // A local day's objects are on disk before its manifest is named, and all of it
    // before the run says it succeeded.
    store
        .persist()
        .await
        .context("cannot flush the day to disk")?;
    day::publish(store, &manifest).await?;
    store
        .persist()
        .await
        .context("cannot flush the day to disk")?;
    Ok(())
}

/// The closing line of a day written.
fn success(reports: &[TableReport], conflict_retries: u32) {
    // A table the pods shared has a report per piece: named once.
    let mut names: Vec<&str> = reports.iter().map(|r| r.table.as_str()).collect();
    names.dedup();
    let peak_rss_mib = egress_common::memory::peak_rss_mib();
    info!(tables = names.len(), succeeded = %names.join(" "), conflict_retries, peak_rss_mib, "Success.");
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

/// Every index is done: any upload still pending in the day's folder is a killed shard's.
async fn abort_shards_uploads(store: &Store, date: &str) {
    let folder = format!("{date}/");
    let aborted = lease::abort_dead_uploads(store, &folder, i64::MAX, |_| None).await;
    if aborted > 0 {
        info!(
            aborted,
            "aborted the uploads of shards that were killed and run again"
        );
    }
}
