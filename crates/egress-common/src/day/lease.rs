//! One writer per output: a run holds a lease (a small object with its id, host and
//! expiry) on the date folder it writes (egress-dump) or on the mirror it writes
//! (egress-sync), renews it while it works and deletes it at the end. A second run finds
//! the live lease and stops with [`Busy`] (exit 3), or waits for it to go.
//!
//! - **Whose clock.** A lease is live while its object is younger than its time to live,
//!   on the *store's* clock: its `Last-Modified` (stamped by the store) against the
//!   store's time now ([`ObjectStore::now`]), never a pod's own clock.
//! - **Taking it** is a conditional write where the store honours one (`If-None-Match: *`
//!   to create, `If-Match` to take over a dead run's): AWS S3, Ceph RGW and MinIO do.
//!   Where a store ignores the condition, the lease is read back after a pause and the run
//!   that finds another's id there backs off: a best effort whose only window is two runs
//!   starting within that pause.
//! - **Fencing.** Every write of the run asks the lease first ([`Lease::fence`], a
//!   [`Guard`]): unless the lease was confirmed recently (within two thirds of its time to
//!   live, less 2 s), it is read and renewed before the write; a lease another run holds now stops
//!   the write with [`ErrorKind::LeaseLost`] (exit 3). A run paused past its lease (a
//!   frozen node, SIGSTOP) therefore writes nothing more once it resumes. What remains is
//!   the one request in flight at that moment: no store offers a condition across objects.
//! - **Giving it back** deletes it only while it is still this run's (`If-Match` on its
//!   ETag where the store honours it), on success, failure and SIGTERM alike.
//! - **An unreadable lease** (`{}`, a truncated file, another version's format) is reported
//!   in one line and treated as a dead run's once it is older than the reader's own time
//!   to live; it never makes a run spin.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use egress_store::{task, Body, Condition, ErrorKind, Guard, PutOptions, Store, StoreError};

/// The lease of a date folder (egress-dump), inside the folder.
pub const FILE_NAME: &str = ".egress-lease.json";
/// The lease of a mirror (egress-sync), at the root of its output.
pub const MIRROR_KEY: &str = ".egress-sync-lease.json";

/// The key of `folder`'s lease.
pub fn key_in(folder: &str) -> String {
    egress_store::key::join(folder, FILE_NAME)
}

/// The start of the key of a shared mirror's lease, one per share (`--shares`); the key
/// keeps the word it had when the flag was `--shards`, so that runs of either version
/// see each other's leases.
const SHARD_MIRROR_PREFIX: &str = ".egress-sync-lease.shard-";

/// The lease of a mirror written by `slice` (the whole mirror's when it is not shared).
pub fn mirror_key(slice: crate::cli::Slice) -> String {
    match slice.count {
        1 => MIRROR_KEY.to_string(),
        n => format!("{SHARD_MIRROR_PREFIX}{}-of-{n}.json", slice.index),
    }
}

/// The share a mirror lease's key belongs to (`None` for the whole mirror's lease, or a
/// key that is no mirror lease).
fn mirror_slice(key: &str) -> Option<crate::cli::Slice> {
    let rest = key
        .strip_prefix(SHARD_MIRROR_PREFIX)?
        .strip_suffix(".json")?;
    let (index, count) = rest.split_once("-of-")?;
    Some(crate::cli::Slice {
        index: index.parse().ok()?,
        count: count.parse().ok()?,
    })
}

/// True for a lease object's key (never mirrored, never part of a day).
pub fn is_lease(key: &str) -> bool {
    key == MIRROR_KEY
        || mirror_slice(key).is_some()
        || key == FILE_NAME
        || key.ends_with(&format!("/{FILE_NAME}"))
}

/// Refuse ([`Busy`]) when a live lease on the mirror covers keys of `slice` under another
/// layout: the whole mirror's lease while a share runs, a share's while the whole mirror
/// runs, or a share of another `--shares` count (their slices overlap). Shares of one
/// count never overlap, so they run side by side.
pub async fn check_mirror_layout(
    store: &Store,
    slice: crate::cli::Slice,
) -> Result<(), anyhow::Error> {
    use futures::StreamExt;
    let mut keys = vec![MIRROR_KEY.to_string()];
    let mut pages = store.list(SHARD_MIRROR_PREFIX);
    while let Some(page) = pages.next().await {
        keys.extend(page?.into_iter().map(|o| o.key));
    }
    for key in keys {
        let other = mirror_slice(&key).map_or(1, |s| s.count);
        if key == mirror_key(slice) || (other == slice.count && other > 1) {
            continue;
        }
        if let Some(found) = live_holder(store, &key).await? {
            return Err(Busy {
                location: store.describe(&key),
                holder: found.describe(store.now()),
                run_id: found.holder.map(|h| h.run_id),
            }
            .into());
        }
    }
    Ok(())
}

/// Where egress-sync marks the multipart uploads it starts at its output, one small
/// object per upload, so that a later run can tell its own dead uploads from another
/// writer's.
pub const UPLOAD_MARKERS: &str = ".egress-sync-uploads/";

/// The folder, inside a date folder, where the pods of a sharded dump coordinate (the
/// plan, each shard's status): removed once the day is done or abandoned.
pub const SHARDS_FOLDER: &str = ".egress-shards";

/// True for the programs' own coordination objects (leases, upload markers, a sharded
/// dump's plan and statuses): never mirrored, never part of a day, never deleted as extra.
pub fn is_coordination(key: &str) -> bool {
    let shards = format!("{SHARDS_FOLDER}/");
    is_lease(key)
        || key.starts_with(UPLOAD_MARKERS)
        || key.starts_with(&shards)
        || key.contains(&format!("/{shards}"))
}

/// How long a lease lasts without renewal unless `--lease-ttl` says otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);
/// The shortest time to live accepted (at 3 s the trust window is empty: every write
/// renews the lease first).
pub const MIN_TTL: Duration = Duration::from_secs(3);
/// How long a writer waits before reading its lease back (stores that ignore conditions).
const SETTLE: Duration = Duration::from_millis(500);
/// How often a run waiting for a lease looks again.
const POLL: Duration = Duration::from_secs(2);
/// Conditional writes refused in a row before taking the lease is given up.
const MAX_REFUSED: u32 = 10;

/// What a lease object holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// A random id of the run.
    pub run_id: String,
    /// `egress-dump` or `egress-sync`.
    pub program: String,
    /// The host (pod) it runs on.
    pub host: String,
    /// Its process id there.
    pub pid: u32,
    /// When it took the lease, seconds since the epoch (the store's clock).
    pub since: i64,
    /// When the lease ends unless renewed, seconds since the epoch (the store's clock, for
    /// people: runs judge the object's age).
    pub expires: i64,
    /// How long the lease lasts without renewal (absent in earlier versions: 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
}

/// A lease object as found in the store.
#[derive(Debug, Clone)]
pub struct Found {
    /// Its holder; `None` when the object cannot be read as a lease.
    pub holder: Option<Holder>,
    /// Why it cannot be read.
    pub problem: Option<String>,
    /// Its ETag, for a conditional takeover.
    pub etag: Option<String>,
    /// Its `Last-Modified` (the store's clock), seconds since the epoch.
    pub modified: i64,
    /// The time to live of a lease that does not say its own: the reader's.
    pub fallback_ttl: Duration,
}

impl Found {
    fn ttl(&self) -> i64 {
        let ttl = self.holder.as_ref().and_then(|h| h.ttl_seconds);
        ttl.unwrap_or(self.fallback_ttl.as_secs()) as i64
    }

    /// True while the lease binds other runs, at the store's time `now`: renewed within
    /// its time to live, and not held by a process of this host that no longer exists (a
    /// run killed here a moment ago).
    pub fn is_live(&self, now: i64) -> bool {
        if now - self.modified >= self.ttl() {
            return false;
        }
        match &self.holder {
            Some(h) => h.host != task::host() || task::is_alive(h.pid),
            None => true,
        }
    }

    /// Who holds it, for messages.
    pub fn describe(&self, now: i64) -> String {
        let age = (now - self.modified).max(0);
        match (&self.holder, &self.problem) {
            (Some(h), _) => format!(
                "{} (run {}) on host {}, pid {}, since {}, last renewed {age}s ago (it lapses {}s after its last renewal)",
                h.program,
                h.run_id,
                h.host,
                h.pid,
                rfc3339(h.since),
                self.ttl()
            ),
            (None, problem) => format!(
                "a lease object this version cannot read ({}), written {age}s ago: it binds until it is {}s old",
                problem.as_deref().unwrap_or("unreadable"),
                self.ttl()
            ),
        }
    }
}

/// Another run holds the lease.
#[derive(Debug, Clone, thiserror::Error)]
#[error("another run holds the lease on {location}: {holder}; it is writing there now: run again later, or pass --wait-for-lease to wait for it")]
pub struct Busy {
    /// Where.
    pub location: String,
    /// Who, described.
    pub holder: String,
    /// The holder's run id, when the lease could be read.
    pub run_id: Option<String>,
}

/// How a lease is taken.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// How long to wait for a live lease to go.
    pub wait: Duration,
    /// How long the lease lasts without renewal.
    pub ttl: Duration,
}

/// A lease this run holds; renewed in the background until [`Lease::release`].
pub struct Lease {
    shared: Arc<Shared>,
    ticket: egress_store::stop::Ticket,
}

/// What the lease, its renewer, its fence and its release on a stop share.
#[derive(Debug)]
struct Shared {
    store: Store,
    key: String,
    run_id: String,
    program: String,
    since: i64,
    ttl: Duration,
    /// When the write that last confirmed the lease began: milliseconds after `base`,
    /// read without a lock by every write of the run.
    confirmed: AtomicU64,
    base: Instant,
    /// The ETag of our last write of the lease; held while a renewal runs (one at a time).
    etag: tokio::sync::Mutex<Option<String>>,
    lost: AtomicBool,
    /// The background renewer, stopped before the lease is given back.
    renewer: std::sync::Mutex<Option<tokio::task::AbortHandle>>,
}

/// Take the lease at `key` of `store` for `program`, waiting up to `options.wait` for a
/// live one to go; [`Busy`] when it does not.
pub async fn acquire(
    store: &Store,
    key: &str,
    program: &str,
    options: Options,
) -> anyhow::Result<Lease> {
    let ttl = options.ttl.max(MIN_TTL);
    let started = Instant::now();
    let run_id = format!("{:016x}", task::random());
    let (mut refused, mut told) = (0, false);
    // When this run last wrote the lease (a lost reply may have made it ours).
    let mut written_at = None;
    loop {
        let current = read(store, key, ttl).await?;
        let now = store.now();
        // A lease that holds our run id is ours: a write whose reply was lost took effect.
        let mine = current
            .as_ref()
            .filter(|f| f.holder.as_ref().is_some_and(|h| h.run_id == run_id));
        if let Some(found) = mine.filter(|_| !egress_store::mutant::active("lost-reply-fails")) {
            let (Some(ours), Some(began)) = (found.holder.clone(), written_at) else {
                return Err(anyhow::anyhow!(
                    "internal: a lease of this run that it never wrote"
                ));
            };
            tracing::info!(
                "the lease write's reply was lost, but the lease read back is this run's"
            );
            return Ok(Lease::start(
                store.clone(),
                key,
                ours,
                ttl,
                (found.etag.clone(), began),
            ));
        }
        if let Some(found) = current.as_ref().filter(|f| f.is_live(now)) {
            if found.holder.is_none() && !told {
                told = true;
                tracing::warn!("the lease at {} cannot be read ({}): treated as a live run's until it is {}s old, then taken over", store.describe(key), found.problem.as_deref().unwrap_or(""), found.ttl());
            }
            if started.elapsed() >= options.wait {
                return Err(busy(store, key, found, now).into());
            }
            tracing::info!(
                "waiting for another run's lease on {}: {}",
                store.describe(key),
                found.describe(now)
            );
            let left = options.wait.saturating_sub(started.elapsed());
            tokio::time::sleep(POLL.min(left).max(Duration::from_millis(100))).await;
            continue;
        }
        let condition = match &current {
            None => Condition::IfAbsent,
            Some(Found {
                etag: Some(etag), ..
            }) => Condition::IfMatch(etag.clone()),
            Some(_) => Condition::None,
        };
        // The expiry is computed now, when the lease is written, never before a wait.
        let ours = holder(&run_id, program, store.now(), store.now(), ttl);
        let began = Instant::now();
        written_at = Some(began);
        let etag = match write_settled(store, key, &ours, condition.clone(), ttl).await? {
            Some(etag) => etag,
            None if refused < MAX_REFUSED => {
                // Another run wrote it first: look again after a short, random pause.
                refused += 1;
                let pause = 100 + task::random() % 400;
                tokio::time::sleep(Duration::from_millis(pause)).await;
                continue;
            }
            None => return Err(busy_now(store, key, ttl).await),
        };
        if is_ours(store, key, &ours, condition, ttl).await? {
            if let Some(old) = current {
                tracing::info!(
                    "took over the lease of a run that is gone: {}",
                    old.describe(now)
                );
            }
            return Ok(Lease::start(store.clone(), key, ours, ttl, (etag, began)));
        }
    }
}

/// Whether the lease `ours`, just written under `condition`, is ours. Where the store
/// honours the condition the write was atomic: the same write again must be refused, and
/// that one request replaces the half-second wait (measured: 0.5 of the 0.78 s a no-op
/// run spent besides listing). A store that accepts it ignores conditions, so the lease is
/// read back after [`SETTLE`] and a run that finds another's id there backs off.
async fn is_ours(
    store: &Store,
    key: &str,
    ours: &Holder,
    condition: Condition,
    ttl: Duration,
) -> Result<bool, StoreError> {
    if condition != Condition::None {
        match write(store, key, ours, condition).await {
            Err(e) if e.kind() == ErrorKind::PreconditionFailed => return Ok(true),
            // Written, or not: the lease read back decides.
            Err(e) => {
                tracing::debug!(error = %e, "the second write of the lease failed: reading it back")
            }
            Ok(_) => tracing::debug!("the store ignored a write condition: reading the lease back"),
        }
    }
    tokio::time::sleep(SETTLE).await;
    let back = read(store, key, ttl).await?;
    let holder = back.as_ref().and_then(|f| f.holder.as_ref());
    Ok(holder.is_some_and(|h| h.run_id == ours.run_id))
}

/// Write the lease `ours` under `condition`: its ETag once written, `None` when another
/// run's write came first. A write whose reply was lost may have taken effect (the SDK's
/// retry of a conditional write then meets 412, or the last retry's error is all we see):
/// it is settled by reading the lease back, ours when it holds our run id.
async fn write_settled(
    store: &Store,
    key: &str,
    ours: &Holder,
    condition: Condition,
    ttl: Duration,
) -> Result<Option<Option<String>>, StoreError> {
    let error = match write(store, key, ours, condition).await {
        Ok(etag) => return Ok(Some(etag)),
        Err(e) => e,
    };
    let refused = error.kind() == ErrorKind::PreconditionFailed;
    if egress_store::mutant::active("lost-reply-fails") {
        return if refused { Ok(None) } else { Err(error) };
    }
    match read(store, key, ttl).await {
        Ok(Some(found))
            if found
                .holder
                .as_ref()
                .is_some_and(|h| h.run_id == ours.run_id) =>
        {
            tracing::info!(error = %error, "the lease write's reply was lost, but the lease read back is this run's");
            Ok(Some(found.etag))
        }
        _ if refused => Ok(None),
        _ => Err(error),
    }
}

/// [`Busy`] for whoever holds the lease at `key` now.
async fn busy_now(store: &Store, key: &str, ttl: Duration) -> anyhow::Error {
    match read(store, key, ttl).await {
        Ok(Some(found)) => busy(store, key, &found, store.now()).into(),
        Ok(None) => anyhow::anyhow!(
            "the lease on {} kept changing hands: run again later",
            store.describe(key)
        ),
        Err(e) => e.into(),
    }
}

fn busy(store: &Store, key: &str, found: &Found, now: i64) -> Busy {
    Busy {
        location: store.describe(key),
        holder: found.describe(now),
        run_id: found.holder.as_ref().map(|h| h.run_id.clone()),
    }
}

/// The outcome of a run under `lease`: a run that failed after losing its lease failed
/// because it lost it (the new holder aborted its uploads, say), so its error is the lost
/// lease ([`ErrorKind::LeaseLost`], exit 3), with the failure it met meanwhile.
pub async fn explain_failure<T>(outcome: anyhow::Result<T>, lease: &Lease) -> anyhow::Result<T> {
    let Err(error) = outcome else {
        return outcome;
    };
    let already =
        crate::error::find::<StoreError>(&error).is_some_and(|e| e.kind() == ErrorKind::LeaseLost);
    match lease.check().await {
        Err(lost) if !already && lost.kind() == ErrorKind::LeaseLost => {
            let first = crate::error::one_line(&error);
            Err(StoreError::new(ErrorKind::LeaseLost, format!("{lost}; meanwhile: {first}")).into())
        }
        _ => Err(error),
    }
}

/// Abort the uploads under `under` that no live lease covers: those `covering` maps to no
/// lease key (the caller's own lease covers them), or to a lease nobody holds now; only
/// uploads started before `before` (this run's lease, the store's clock) are touched. A
/// live run's uploads are never aborted; a killed run's are, as soon as its lease is gone.
/// Returns how many.
pub async fn abort_dead_uploads(
    store: &Store,
    under: &str,
    before: i64,
    covering: impl Fn(&str) -> Option<String>,
) -> usize {
    let pending = match store.pending_uploads(under).await {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(error = %e, "cannot list pending uploads; the bucket's lifecycle rule removes dead ones");
            return 0;
        }
    };
    let mut live: std::collections::HashMap<String, bool> = std::collections::HashMap::new();
    let mut aborted = 0;
    for upload in pending.iter().filter(|u| u.initiated < before) {
        if let Some(key) = covering(&upload.key) {
            if !live.contains_key(&key) {
                let holder = live_holder(store, &key).await.unwrap_or(None);
                live.insert(key.clone(), holder.is_some());
            }
            if live.get(&key).copied().unwrap_or(true) {
                continue;
            }
        }
        match store.abort_pending(upload).await {
            Ok(()) => {
                tracing::info!(key = %upload.key, "aborted an upload left by a run that is gone");
                aborted += 1;
            }
            Err(e) => {
                tracing::warn!(key = %upload.key, error = %e, "could not abort an upload left by an earlier run")
            }
        }
    }
    aborted
}

/// The live lease at `key`, if any (another run writing there).
pub async fn live_holder(store: &Store, key: &str) -> Result<Option<Found>, StoreError> {
    let now = store.now();
    Ok(read(store, key, DEFAULT_TTL)
        .await?
        .filter(|f| f.is_live(now)))
}

impl Lease {
    /// The lease `ours` at `key`, just written (its ETag, and when the write began).
    fn start(
        store: Store,
        key: &str,
        ours: Holder,
        ttl: Duration,
        (etag, began): (Option<String>, Instant),
    ) -> Lease {
        let shared = Arc::new(Shared {
            store,
            key: key.to_string(),
            run_id: ours.run_id,
            program: ours.program,
            since: ours.since,
            ttl,
            confirmed: AtomicU64::new(0),
            base: began,
            etag: tokio::sync::Mutex::new(etag),
            lost: AtomicBool::new(false),
            renewer: std::sync::Mutex::new(None),
        });
        let renewer = task::spawn(renew_every(shared.clone(), ttl / 4));
        if let Ok(mut slot) = shared.renewer.lock() {
            *slot = Some(renewer.abort_handle());
        }
        // A run stopped by a signal gives its lease back too, if it is still its own.
        let on_stop = shared.clone();
        let ticket = egress_store::stop::register(
            egress_store::stop::Phase::Known,
            Box::new(move || Box::pin(async move { on_stop.release().await })),
        );
        Lease { shared, ticket }
    }

    /// When this run took the lease (the store's clock): uploads started before it under
    /// the lease are dead.
    pub fn since(&self) -> i64 {
        self.shared.since
    }

    /// This run's id.
    pub fn run_id(&self) -> &str {
        &self.shared.run_id
    }

    /// The guard every write of the run asks first (see the module's doc).
    pub fn fence(&self) -> Arc<dyn Guard> {
        self.shared.clone()
    }

    /// Confirm now that this run still holds the lease; [`ErrorKind::LeaseLost`] if not.
    pub async fn check(&self) -> Result<(), StoreError> {
        self.shared.confirm().await
    }

    /// End a run under this lease: its `outcome` explained (see [`explain_failure`]), then
    /// the lease released.
    pub async fn end<T>(self, outcome: anyhow::Result<T>) -> anyhow::Result<T> {
        let outcome = explain_failure(outcome, &self).await;
        self.release().await;
        outcome
    }

    /// Stop renewing and delete the lease (if it is still ours).
    pub async fn release(mut self) {
        let ticket = std::mem::replace(&mut self.ticket, egress_store::stop::Ticket::none());
        egress_store::stop::done(ticket);
        self.shared.release().await;
    }
}

impl Drop for Lease {
    /// A lease dropped without [`Lease::release`] stops renewing: it lapses.
    fn drop(&mut self) {
        if let Some(renewer) = self.shared.renewer.lock().ok().and_then(|mut r| r.take()) {
            renewer.abort();
        }
    }
}

#[async_trait]
impl Guard for Shared {
    async fn before_change(&self, _key: &str) -> Result<(), StoreError> {
        self.confirm().await
    }
}

impl Shared {
    /// Confirm this run still holds the lease: at once when it was confirmed recently
    /// enough that nobody can have taken it over since, else by renewing it.
    async fn confirm(&self) -> Result<(), StoreError> {
        if self.lost.load(Ordering::SeqCst) {
            return Err(self.lost_error("another run holds it now"));
        }
        if self.fresh() || egress_store::mutant::active("unfenced-writes") {
            return Ok(());
        }
        self.renew(Renewal::UnlessFresh).await
    }

    /// True while the last confirmation is within the trust window: two thirds of the time
    /// to live, less 2 s for the stores' whole-second `Last-Modified` and the store-clock
    /// estimate another host makes (at the shortest TTLs a write always renews first).
    fn fresh(&self) -> bool {
        let window = (self.ttl * 2 / 3).saturating_sub(Duration::from_secs(2));
        let since = self.base.elapsed().as_millis() as u64;
        since.saturating_sub(self.confirmed.load(Ordering::SeqCst)) < window.as_millis() as u64
    }

    fn lost_error(&self, why: &str) -> StoreError {
        StoreError::new(
            ErrorKind::LeaseLost,
            format!(
                "this run no longer holds the lease on {} ({why}; it was paused or could not renew it for {}s): it writes nothing more, and leaves the output to the run that holds it",
                self.store.describe(&self.key),
                self.ttl.as_secs()
            ),
        )
    }

    /// Read the lease and, while it is still ours, write it again with a new expiry.
    async fn renew(&self, when: Renewal) -> Result<(), StoreError> {
        let mut etag = self.etag.lock().await;
        if self.lost.load(Ordering::SeqCst) {
            return Err(self.lost_error("another run holds it now"));
        }
        // Another write of the run may have renewed it while this one waited.
        if when == Renewal::UnlessFresh && self.fresh() {
            return Ok(());
        }
        let began = self.base.elapsed().as_millis() as u64;
        let found = read(&self.store, &self.key, self.ttl).await?;
        let ours = found
            .as_ref()
            .and_then(|f| f.holder.as_ref())
            .is_some_and(|h| h.run_id == self.run_id);
        if !ours {
            let why = match &found {
                None => "its lease object is gone".to_string(),
                Some(f) => format!("it is now {}", f.describe(self.store.now())),
            };
            return Err(self.lose(&why));
        }
        let condition = match found.and_then(|f| f.etag) {
            Some(etag) => Condition::IfMatch(etag),
            None => Condition::None,
        };
        let now = self.store.now();
        let again = holder(&self.run_id, &self.program, self.since, now, self.ttl);
        let written = match write(&self.store, &self.key, &again, condition).await {
            Ok(written) => written,
            Err(e) => match self.settle_renewal(&again, e).await? {
                Some(written) => written,
                None => return Err(self.lose("another run wrote it while this one renewed it")),
            },
        };
        *etag = written;
        self.confirmed.fetch_max(began, Ordering::SeqCst);
        Ok(())
    }

    /// A renewal whose reply was lost may have taken effect (its retry then meets 412):
    /// the lease read back is this very renewal when it holds exactly what was written.
    /// Its ETag then; `None` when another run's write came first.
    async fn settle_renewal(
        &self,
        again: &Holder,
        error: StoreError,
    ) -> Result<Option<Option<String>>, StoreError> {
        let refused = error.kind() == ErrorKind::PreconditionFailed;
        if egress_store::mutant::active("lost-reply-fails") {
            return if refused { Ok(None) } else { Err(error) };
        }
        let back = match read(&self.store, &self.key, self.ttl).await {
            Ok(back) => back,
            // Nothing known: the lease may still be ours; the next renewal looks again.
            Err(_) => return Err(error),
        };
        let holder = back.as_ref().and_then(|f| f.holder.as_ref());
        match (holder, back.as_ref()) {
            (Some(h), Some(found)) if h == again => {
                tracing::info!(error = %error, "the lease renewal's reply was lost, but the lease read back is this renewal");
                Ok(Some(found.etag.clone()))
            }
            // Still ours, not renewed: the next renewal tries again.
            (Some(h), _) if h.run_id == self.run_id => Err(error),
            _ if refused => Ok(None),
            _ => Err(error),
        }
    }

    fn lose(&self, why: &str) -> StoreError {
        if !self.lost.swap(true, Ordering::SeqCst) {
            tracing::error!(
                "the lease on {} was lost: {why}",
                self.store.describe(&self.key)
            );
        }
        self.lost_error(why)
    }

    /// Stop renewing, then delete the lease while it is still ours; returns whether it
    /// was deleted.
    async fn release(&self) -> bool {
        if let Some(renewer) = self.renewer.lock().ok().and_then(|mut r| r.take()) {
            renewer.abort();
        }
        // A renewal under way finishes first (its write would change the ETag).
        let ours = self.etag.lock().await.clone();
        let found = match read(&self.store, &self.key, self.ttl).await {
            Ok(Some(found)) => found,
            _ => return false,
        };
        let theirs = found
            .holder
            .as_ref()
            .is_none_or(|h| h.run_id != self.run_id);
        if theirs && !egress_store::mutant::active("release-any-lease") {
            return false;
        }
        let etag = found.etag.or(ours);
        let deleted = match &etag {
            Some(etag) => match self.store.delete_if_match(&self.key, etag).await {
                // A store that refuses conditional deletes: the read above was ours.
                Err(e) if e.kind() == ErrorKind::Unsupported => self.store.delete(&self.key).await,
                other => other,
            },
            None => self.store.delete(&self.key).await,
        };
        match deleted {
            Ok(()) => true,
            Err(e) if e.kind() == ErrorKind::PreconditionFailed => false,
            Err(e) => {
                tracing::warn!(error = %e, "could not release the lease; it lapses by itself");
                false
            }
        }
    }
}

/// Whether a renewal is needed when the lease was just confirmed by someone else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Renewal {
    /// The background renewal: always.
    Always,
    /// Before a write: only when nobody confirmed it meanwhile.
    UnlessFresh,
}

async fn renew_every(shared: Arc<Shared>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        match shared.renew(Renewal::Always).await {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::LeaseLost => return,
            // A failed read or write is not a lost lease; the next round tries again.
            Err(e) => tracing::warn!(error = %e, "could not renew the lease"),
        }
    }
}

/// The lease object at `key`; `fallback_ttl` is what an unreadable one is given.
async fn read(
    store: &Store,
    key: &str,
    fallback_ttl: Duration,
) -> Result<Option<Found>, StoreError> {
    let Some(raw) = super::objects::read_bytes(store, key).await? else {
        return Ok(None);
    };
    let (body, etag, modified) = (raw.value, raw.etag, raw.modified);
    let (holder, problem) = match serde_json::from_slice::<Holder>(&body) {
        Ok(h) => (Some(h), None),
        Err(e) => (None, Some(format!("{} bytes: {e}", body.len()))),
    };
    Ok(Some(Found {
        holder,
        problem,
        etag,
        modified,
        fallback_ttl,
    }))
}

async fn write(
    store: &Store,
    key: &str,
    holder: &Holder,
    condition: Condition,
) -> Result<Option<String>, StoreError> {
    let body = serde_json::to_vec(holder).unwrap_or_default();
    let options = PutOptions {
        condition,
        ..Default::default()
    };
    Ok(store.put(key, Body::from_bytes(body), &options).await?.etag)
}

fn holder(run_id: &str, program: &str, since: i64, now: i64, ttl: Duration) -> Holder {
    Holder {
        run_id: run_id.to_string(),
        program: program.to_string(),
        host: task::host(),
        pid: task::pid(),
        since,
        expires: now + ttl.as_secs() as i64,
        ttl_seconds: Some(ttl.as_secs()),
    }
}

fn rfc3339(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use egress_store::LocalStore;

    fn store(dir: &std::path::Path) -> Store {
        Arc::new(LocalStore::new(dir))
    }

    const NOW: Options = Options {
        wait: Duration::ZERO,
        ttl: DEFAULT_TTL,
    };

    #[tokio::test]
    async fn a_store_that_honours_conditions_gives_the_lease_without_waiting() {
        let s: Store = Arc::new(egress_store::MemoryStore::new());
        let started = Instant::now();
        let lease = acquire(&s, "k", "egress-sync", NOW).await.unwrap();
        assert!(started.elapsed() < SETTLE, "{:?}", started.elapsed());
        lease.release().await;
    }

    #[tokio::test]
    async fn a_store_that_ignores_conditions_still_gives_one_holder_at_a_time() {
        let s: Store = Arc::new(egress_store::MemoryStore::new().ignoring_conditions());
        let started = Instant::now();
        let (a, b) = tokio::join!(
            acquire(&s, "k", "egress-sync", NOW),
            acquire(&s, "k", "egress-sync", NOW)
        );
        assert!(started.elapsed() >= SETTLE, "read back after the wait");
        let (won, lost) = match (a, b) {
            (Ok(won), Err(lost)) | (Err(lost), Ok(won)) => (won, lost),
            (a, b) => panic!("one holder expected: {:?} {:?}", a.is_ok(), b.is_ok()),
        };
        let busy = lost.downcast_ref::<Busy>().expect("busy");
        assert_eq!(busy.run_id.as_deref(), Some(won.run_id()));
        won.release().await;
    }

    #[tokio::test]
    async fn a_live_lease_keeps_a_second_run_out_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let first = acquire(&s, "d/.egress-lease.json", "egress-dump", NOW)
            .await
            .unwrap();
        let err = acquire(&s, "d/.egress-lease.json", "egress-dump", NOW)
            .await
            .err()
            .unwrap();
        let busy = err.downcast_ref::<Busy>().expect("busy");
        assert_eq!(busy.run_id.as_deref(), Some(first.run_id()));
        assert!(err.to_string().contains("--wait-for-lease"), "{err}");
        first.release().await;
        let second = acquire(&s, "d/.egress-lease.json", "egress-dump", NOW)
            .await
            .unwrap();
        second.release().await;
        assert!(
            !dir.path().join("d/.egress-lease.json").exists(),
            "released"
        );
    }

    #[test]
    fn leases_lapse_by_their_age_on_the_stores_clock() {
        let mut found = Found {
            holder: Some(holder("r", "egress-sync", 1000, 1000, DEFAULT_TTL)),
            problem: None,
            etag: None,
            modified: 1000,
            fallback_ttl: DEFAULT_TTL,
        };
        assert!(found.is_live(1059));
        assert!(!found.is_live(1060), "60 s after its last write");
        found.holder.as_mut().unwrap().pid = u32::MAX / 2; // no such process on this host
        assert!(!found.is_live(1001));
        found.holder.as_mut().unwrap().host = "another-pod".into();
        assert!(
            found.is_live(1001),
            "a process elsewhere is trusted until its lease lapses"
        );
        let unreadable = Found {
            holder: None,
            problem: Some("2 bytes: missing field `run_id`".into()),
            etag: None,
            modified: 1000,
            fallback_ttl: DEFAULT_TTL,
        };
        assert!(unreadable.is_live(1030));
        assert!(!unreadable.is_live(1060));
        assert!(unreadable.describe(1030).contains("cannot read"));
    }
}
