//! Carrying out decisions: a bounded pool of transfers, each verified and retried, fed by
//! the march as it goes.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use egress_store::{ErrorKind, ObjectInfo, StoreError};
use futures::StreamExt;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::decide::{self, CopyReason, Decision};
use crate::report::Report;
use crate::transfer::{self, CopyError, Item, Stores};
use egress_common::day::handoff::Withdrawals;

/// Attempts per object (first try included).
const ATTEMPTS: u32 = 3;

/// One thing to do.
#[derive(Debug)]
pub enum Task {
    /// Copy this object.
    Copy(Item, CopyReason),
    /// Read the output object's metadata, then copy or skip.
    Check(Item),
    /// Delete this output object.
    Delete(String),
    /// Write a day's manifest: exactly the bytes its objects were checked against.
    Publish(Publication),
    /// Read back an object the output already had and check it against its manifest.
    Prove(String, crate::manifests::Expected),
}

/// A day's manifest to write at the output.
#[derive(Debug)]
pub struct Publication {
    /// Its key.
    pub key: String,
    /// Its bytes, as read at the input.
    pub body: bytes::Bytes,
    /// How to write it (its headers, and the record of the version it is).
    pub options: egress_store::PutOptions,
    /// Its share of the memory budget, given back once it is written.
    pub memory: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// Objects and bytes done so far, for the status line.
#[derive(Debug, Default)]
pub struct Progress {
    /// Objects copied.
    pub objects: AtomicU64,
    /// Bytes copied.
    pub bytes: AtomicU64,
}

/// How the two sides are named in log lines: `input/<bucket/path>` for an S3 side (then
/// `/<key>`), a local directory's path for a local one.
#[derive(Debug, Clone)]
pub struct Names {
    /// The input's.
    pub input: String,
    /// The output's.
    pub output: String,
}

/// The transfers of a run and what they have done.
pub struct Pool {
    transfers: Stores,
    names: Names,
    jobs: usize,
    dry_run: bool,
    report: Mutex<Report>,
    withdrawals: Arc<Withdrawals>,
    stop: AtomicBool,
    fatal: Mutex<Option<StoreError>>,
    /// Objects of days with a manifest that this run copied (checked against it as they
    /// streamed) or proved (read back): what a manifest may vouch for.
    proven: Mutex<HashSet<String>>,
    /// Objects this run deleted from the output.
    removed: Mutex<HashSet<String>>,
    /// Folders whose manifest this run published at the output.
    published: Mutex<HashSet<String>>,
    /// Counters for the status line.
    pub progress: Arc<Progress>,
}

impl Pool {
    /// A pool running `jobs` tasks at once (the output's manifests withdrawn by
    /// `withdrawals`); with `dry_run` it only says what it would do.
    pub fn new(
        transfers: Stores,
        names: Names,
        jobs: usize,
        dry_run: bool,
        withdrawals: Arc<Withdrawals>,
    ) -> Pool {
        Pool {
            withdrawals,
            transfers,
            names,
            jobs: jobs.max(1),
            dry_run,
            report: Mutex::new(Report::default()),
            stop: AtomicBool::new(false),
            fatal: Mutex::new(None),
            proven: Mutex::new(HashSet::new()),
            removed: Mutex::new(HashSet::new()),
            published: Mutex::new(HashSet::new()),
            progress: Arc::new(Progress::default()),
        }
    }

    /// The transfers' stores and settings.
    pub fn transfers(&self) -> &Stores {
        &self.transfers
    }

    /// The folders whose manifest this run withdrew from the output.
    pub fn withdrawals(&self) -> &Withdrawals {
        &self.withdrawals
    }

    /// How the sides are named in log lines.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// True once a configuration error stopped the run.
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// The configuration error that stopped the run, if one did.
    pub fn fatal(&self) -> Option<StoreError> {
        self.fatal.lock().ok().and_then(|f| f.clone())
    }

    /// Update the report.
    pub fn record(&self, update: impl FnOnce(&mut Report)) {
        if let Ok(mut r) = self.report.lock() {
            update(&mut r);
        }
    }

    /// True when this run copied `key` checked against its manifest, or proved it.
    pub fn proven(&self, key: &str) -> bool {
        self.proven.lock().is_ok_and(|p| p.contains(key))
    }

    /// True when this run deleted `key` from the output.
    pub fn removed(&self, key: &str) -> bool {
        self.removed.lock().is_ok_and(|r| r.contains(key))
    }

    /// True when this run published `folder`'s manifest at the output.
    pub fn published(&self, folder: &str) -> bool {
        self.published.lock().is_ok_and(|p| p.contains(folder))
    }

    fn prove_done(&self, key: &str) {
        if let Ok(mut p) = self.proven.lock() {
            p.insert(key.to_string());
        }
    }

    /// The report so far.
    pub fn report(&self) -> Report {
        self.report.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// `bytes` of the transfers' memory budget, held until the permit is dropped.
    pub async fn hold_memory(&self, bytes: u64) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.transfers.settings.hold(bytes).await
    }

    /// Run every task `produce` sends, `jobs` at a time, while it produces them; returns
    /// what `produce` returned.
    pub async fn run<T>(&self, produce: impl AsyncFnOnce(mpsc::Sender<Task>) -> T) -> T {
        let started = Instant::now();
        let (tx, rx) = mpsc::channel::<Task>(self.jobs);
        let tasks =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|t| (t, rx)) });
        let drain = tasks.for_each_concurrent(self.jobs, |task| self.execute(task));
        let (produced, ()) = tokio::join!(produce(tx), drain);
        let seconds = started.elapsed().as_secs_f64();
        self.record(|r| r.seconds += seconds);
        produced
    }

    async fn execute(&self, task: Task) {
        if self.stopped() {
            return;
        }
        match task {
            Task::Copy(item, reason) => self.copy(item, reason).await,
            Task::Check(item) => self.check(item).await,
            Task::Delete(key) => self.delete(key).await,
            Task::Publish(manifest) => self.publish(manifest).await,
            Task::Prove(key, expected) => self.prove(key, expected).await,
        }
    }

    async fn prove(&self, key: String, expected: crate::manifests::Expected) {
        let output = &self.names.output;
        if self.dry_run {
            println!("check (already there) `{output}/{key}` against its day's manifest");
            self.prove_done(&key);
            return;
        }
        match transfer::prove(&self.transfers, &key, &expected).await {
            Ok(()) => {
                info!(key = %key, "`{output}/{key}` was there already and matches its day's manifest");
                self.prove_done(&key);
            }
            // Same size and time, other bytes (a day written again within the second its
            // first version was): the input's object is copied, if it is the manifest's
            // (else the manifest is wrong, and the day at the output is left as it is).
            Err(CopyError::Manifest(why)) => {
                let source = &self.transfers.source;
                if let Err(e) = transfer::prove_in(&self.transfers, source, &key, &expected).await {
                    return self.failed(&key, e);
                }
                info!(key = %key, "`{output}/{key}` looked unchanged but is not its day's manifest's ({why}): copying it again");
                match self.transfers.source.head(&key).await {
                    Ok(meta) => {
                        let object = ObjectInfo {
                            key: key.clone(),
                            size: meta.size,
                            etag: meta.etag,
                            modified: meta.modified,
                            modified_nanos: 0,
                        };
                        let item = Item {
                            object,
                            expected: Some(expected),
                            part_sizes: None,
                        };
                        Box::pin(self.copy(item, CopyReason::ContentDiffers)).await;
                    }
                    Err(e) => self.failed(&key, CopyError::Store(e)),
                }
            }
            Err(e) => self.failed(&key, e),
        }
    }

    async fn check(&self, item: Item) {
        self.record(|r| r.checked += 1);
        match self.transfers.dest.head(&item.object.key).await {
            Ok(meta) => match decide::after_head(&item.object, &meta) {
                Decision::Copy(reason) => self.copy(item, reason).await,
                _ => self.record(|r| r.skipped += 1),
            },
            // Gone from the output since it was listed: copy it again.
            Err(e) if e.kind() == ErrorKind::NotFound => self.copy(item, CopyReason::New).await,
            Err(e) => self.failed(&item.object.key, CopyError::Store(e)),
        }
    }

    async fn copy(&self, item: Item, reason: CopyReason) {
        let key = item.object.key.clone();
        let size = item.object.size;
        let gated = item.expected.is_some();
        self.record(|r| {
            r.planned_bytes += size;
            r.planned_copies += 1;
        });
        let (input, output) = (&self.names.input, &self.names.output);
        if self.dry_run {
            println!("copy ({reason}) `{input}/{key}` -> `{output}/{key}`");
            if gated {
                self.prove_done(&key);
            }
            return;
        }
        match self.copy_with_retry(item).await {
            Ok(copied) => {
                if gated {
                    self.prove_done(&key);
                }
                info!(
                    size = copied.bytes,
                    verified = copied.verified,
                    "`{input}/{key}` -> `{output}/{key}`"
                );
                self.progress.objects.fetch_add(1, Ordering::Relaxed);
                self.progress
                    .bytes
                    .fetch_add(copied.bytes, Ordering::Relaxed);
                self.record(|r| {
                    r.copied += 1;
                    r.bytes_copied += copied.bytes;
                });
            }
            Err(CopyError::Store(e)) if e.kind() == ErrorKind::NotFound && !gated => {
                warn!(key = %key, "`{input}/{key}` vanished: it was deleted after the listing; not copied");
                self.record(|r| r.vanished += 1);
            }
            Err(CopyError::Store(e)) if e.kind() == ErrorKind::NotFound => self.failed(
                &key,
                CopyError::Manifest(format!(
                    "{key} is listed in its folder's manifest but is gone from the input"
                )),
            ),
            Err(e) => self.failed(&key, e),
        }
    }

    fn failed(&self, key: &str, e: CopyError) {
        self.withdrawals
            .fail(egress_common::manifest::folder_of(key));
        let line = e.to_string();
        error!(key = %key, error = %line, "copy failed");
        if let CopyError::Store(s) = &e {
            if s.kind().stops_the_run() {
                self.stop.store(true, Ordering::SeqCst);
                if let Ok(mut fatal) = self.fatal.lock() {
                    fatal.get_or_insert_with(|| s.clone());
                }
            }
        }
        self.record(|r| r.fail(key, line));
    }

    async fn copy_with_retry(&self, mut item: Item) -> Result<transfer::Copied, CopyError> {
        let mut attempt = 1;
        loop {
            let error = match transfer::copy(&self.transfers, &item).await {
                Ok(copied) => return Ok(copied),
                Err(e) => e,
            };
            let retry = match &error {
                CopyError::Store(s) => matches!(
                    s.kind(),
                    ErrorKind::Unreachable
                        | ErrorKind::ChecksumMismatch
                        | ErrorKind::PreconditionFailed
                        | ErrorKind::Other
                ),
                CopyError::Manifest(_) => false,
            };
            if !retry || attempt >= ATTEMPTS || self.stopped() {
                return Err(error);
            }
            let backoff = Duration::from_millis(
                500 * (1 << (attempt - 1)) + egress_store::task::random() % 250,
            );
            warn!(key = %item.object.key, attempt, error = %error, "copy failed; retrying in {backoff:?}");
            tokio::time::sleep(backoff).await;
            if matches!(&error, CopyError::Store(s) if s.kind() == ErrorKind::PreconditionFailed) {
                // The source changed while being read: copy what it is now.
                let meta = self.transfers.source.head(&item.object.key).await?;
                item.object.size = meta.size;
                item.object.etag = meta.etag;
                item.object.modified = meta.modified;
            }
            attempt += 1;
        }
    }

    async fn delete(&self, key: String) {
        let output = &self.names.output;
        if self.dry_run {
            println!("delete (not in input) `{output}/{key}`");
            self.record(|r| r.planned_deletes += 1);
            return;
        }
        // A manifest's deletion is its day's withdrawal (readers of the day let go first).
        if let Err(e) = self.withdrawals.before_delete(&key).await {
            return self.failed(&key, CopyError::Store(e));
        }
        match self.transfers.dest.delete(&key).await {
            Ok(()) => {
                info!(key = %key, "deleted `{output}/{key}`");
                if let Ok(mut removed) = self.removed.lock() {
                    removed.insert(key);
                }
                self.record(|r| r.deleted += 1);
            }
            Err(e) => self.failed(&key, CopyError::Store(e)),
        }
    }

    async fn publish(&self, manifest: Publication) {
        let (key, size) = (manifest.key, manifest.body.len() as u64);
        let (input, output) = (&self.names.input, &self.names.output);
        self.record(|r| {
            r.planned_bytes += size;
            r.planned_copies += 1;
        });
        if self.dry_run {
            println!("copy (the day's manifest, last) `{input}/{key}` -> `{output}/{key}`");
            return;
        }
        // The day's objects are on disk before its manifest is named (a local output
        // written with `--durability process` flushes nothing before).
        if let Err(e) = self.transfers.dest.persist().await {
            return self.failed(&key, CopyError::Store(e));
        }
        let body = egress_store::Body::from_bytes(manifest.body);
        match self.transfers.dest.put(&key, body, &manifest.options).await {
            Ok(_) => {
                info!(
                    size,
                    verified = "size+md5+checked-version",
                    "`{input}/{key}` -> `{output}/{key}`"
                );
                self.record(|r| {
                    r.copied += 1;
                    r.bytes_copied += size;
                });
                if let Ok(mut published) = self.published.lock() {
                    published.insert(egress_common::manifest::folder_of(&key).to_string());
                }
            }
            Err(e) => self.failed(&key, CopyError::Store(e)),
        }
    }
}
