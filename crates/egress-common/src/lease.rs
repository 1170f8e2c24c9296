//! One writer per output: a run holds a lease (a small object with its id, host and
//! expiry) on the date folder it writes (egress-dump) or on the mirror it writes
//! (egress-sync), renews it while it works and deletes it at the end. A second run finds
//! the live lease and stops with [`Busy`] (exit 3), or waits for it to go.
//!
//! Taking a lease is a conditional write where the store honours one (`If-None-Match: *` to
//! create, `If-Match` to take over an expired lease: AWS S3 and MinIO do). Where a store
//! ignores the condition, the lease is read back after a pause and the run that finds
//! another's id there backs off: a documented best effort, whose only window is two runs
//! starting within that pause.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::store::{Body, Condition, ErrorKind, GetOptions, PutOptions, Store, StoreError};

/// The lease of a date folder (egress-dump), inside the folder.
pub const FILE_NAME: &str = ".egress-lease.json";
/// The lease of a mirror (egress-sync), at the root of its output.
pub const MIRROR_KEY: &str = ".egress-sync-lease.json";

/// The key of `folder`'s lease.
pub fn key_in(folder: &str) -> String {
    crate::store::key::join(folder, FILE_NAME)
}

/// True for a lease object's key (never mirrored, never part of a day).
pub fn is_lease(key: &str) -> bool {
    key == MIRROR_KEY || key == FILE_NAME || key.ends_with(&format!("/{FILE_NAME}"))
}

/// How long a lease lasts without renewal: a run killed without a chance to release it
/// (SIGKILL, a lost node) blocks its output at most this long.
pub const TTL: Duration = Duration::from_secs(60);
/// How often a live run renews its lease.
const RENEW_EVERY: Duration = Duration::from_secs(15);
/// How long a writer waits before reading its lease back (stores that ignore conditions).
const SETTLE: Duration = Duration::from_millis(500);
/// How often a run waiting for a lease looks again.
const POLL: Duration = Duration::from_secs(2);

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
    /// When it took the lease, seconds since the epoch.
    pub since: i64,
    /// When the lease ends unless renewed, seconds since the epoch.
    pub expires: i64,
}

impl Holder {
    /// True while the lease binds other runs: not expired, and not held by a process of
    /// this host that no longer exists (a run killed here a moment ago).
    pub fn is_live(&self, now: i64) -> bool {
        if self.expires <= now {
            return false;
        }
        self.host != hostname() || process_exists(self.pid)
    }
}

/// Another run holds the lease.
#[derive(Debug, Clone, thiserror::Error)]
#[error("another run holds the lease on {location}: {} (run {}) on host {} since {}, until {} unless renewed; it is writing there now: run again later, or pass --wait-for-lease to wait for it", .holder.program, .holder.run_id, .holder.host, rfc3339(.holder.since), rfc3339(.holder.expires))]
pub struct Busy {
    /// Where.
    pub location: String,
    /// Who.
    pub holder: Holder,
}

/// A lease this run holds; renewed in the background until [`Lease::release`].
pub struct Lease {
    store: Store,
    key: String,
    run_id: String,
    since: i64,
    lost: Arc<AtomicBool>,
    renewer: tokio::task::JoinHandle<()>,
    ticket: crate::cleanup::Ticket,
}

/// Take the lease at `key` of `store` for `program`, waiting up to `wait` for a live one
/// to go; [`Busy`] when it does not.
pub async fn acquire(
    store: &Store,
    key: &str,
    program: &str,
    wait: Duration,
) -> anyhow::Result<Lease> {
    let started = std::time::Instant::now();
    let ours = new_holder(program);
    loop {
        let current = read(store, key).await?;
        if let Some((holder, _)) = current.as_ref().filter(|(h, _)| h.is_live(now())) {
            if started.elapsed() >= wait {
                let location = store.describe(key);
                return Err(Busy {
                    location,
                    holder: holder.clone(),
                }
                .into());
            }
            tracing::info!(holder = %holder.run_id, host = %holder.host, "waiting for another run's lease on {}", store.describe(key));
            tokio::time::sleep(
                POLL.min(wait.saturating_sub(started.elapsed()))
                    .max(Duration::from_millis(100)),
            )
            .await;
            continue;
        }
        let condition = match &current {
            None => Condition::IfAbsent,
            Some((_, Some(etag))) => Condition::IfMatch(etag.clone()),
            Some((_, None)) => Condition::None,
        };
        match write(store, key, &ours, condition).await {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::PreconditionFailed => continue,
            Err(e) => return Err(e.into()),
        }
        tokio::time::sleep(SETTLE).await;
        if read(store, key)
            .await?
            .is_some_and(|(h, _)| h.run_id == ours.run_id)
        {
            if let Some((old, _)) = current {
                tracing::info!(run = %old.run_id, host = %old.host, "took over the lease of a run that is gone");
            }
            return Ok(Lease::start(store.clone(), key, ours));
        }
    }
}

/// Abort the uploads under `under` that no live lease covers: those `covering` maps to no
/// lease key (the caller's own lease covers them), or to a lease nobody holds now; only
/// uploads started before `before` (this run's lease) are touched. A live run's uploads
/// are never aborted; a killed run's are, as soon as its lease is gone. Returns how many.
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

/// The live holder of the lease at `key`, if any (another run writing there).
pub async fn live_holder(store: &Store, key: &str) -> Result<Option<Holder>, StoreError> {
    Ok(read(store, key)
        .await?
        .map(|(h, _)| h)
        .filter(|h| h.is_live(now())))
}

impl Lease {
    fn start(store: Store, key: &str, ours: Holder) -> Lease {
        let lost = Arc::new(AtomicBool::new(false));
        let renewer = tokio::spawn(renew(
            store.clone(),
            key.to_string(),
            ours.clone(),
            lost.clone(),
        ));
        // A run stopped by a signal gives its lease back too.
        let (s, k) = (store.clone(), key.to_string());
        let ticket = crate::cleanup::register(
            crate::cleanup::Phase::Known,
            Box::new(move || Box::pin(async move { s.delete(&k).await.is_ok() })),
        );
        Lease {
            store,
            key: key.to_string(),
            run_id: ours.run_id,
            since: ours.since,
            lost,
            renewer,
            ticket,
        }
    }

    /// When this run took the lease: uploads started before it under the lease are dead.
    pub fn since(&self) -> i64 {
        self.since
    }

    /// True when the lease could not be renewed and another run may have taken it: what
    /// this run wrote must not be declared complete.
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// This run's id.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// Stop renewing and delete the lease (if it is still ours).
    pub async fn release(self) {
        self.renewer.abort();
        crate::cleanup::done(self.ticket);
        match read(&self.store, &self.key).await {
            Ok(Some((holder, _))) if holder.run_id == self.run_id => {
                if let Err(e) = self.store.delete(&self.key).await {
                    tracing::warn!(error = %e, "could not release the lease; it expires by itself");
                }
            }
            _ => {}
        }
    }
}

async fn renew(store: Store, key: String, mut ours: Holder, lost: Arc<AtomicBool>) {
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        let still_ours = match read(&store, &key).await {
            Ok(Some((h, etag))) if h.run_id == ours.run_id => Some(etag),
            Ok(_) => None,
            // A failed read is not a lost lease; the next round tries again.
            Err(_) => continue,
        };
        let Some(etag) = still_ours else {
            tracing::error!(
                "the lease on {} was taken by another run",
                store.describe(&key)
            );
            lost.store(true, Ordering::SeqCst);
            return;
        };
        ours.expires = now() + TTL.as_secs() as i64;
        let condition = etag.map(Condition::IfMatch).unwrap_or_default();
        if let Err(e) = write(&store, &key, &ours, condition).await {
            tracing::warn!(error = %e, "could not renew the lease");
        }
    }
}

async fn read(store: &Store, key: &str) -> Result<Option<(Holder, Option<String>)>, StoreError> {
    let got = match store.get(key, GetOptions::default()).await {
        Ok(got) => got,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let etag = got.meta.etag.clone();
    let body = got.body.collect().await?;
    // An unreadable lease binds nobody; writing a valid one replaces it.
    Ok(serde_json::from_slice(&body).ok().map(|h| (h, etag)))
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

fn new_holder(program: &str) -> Holder {
    let since = now();
    Holder {
        run_id: format!("{:016x}", rand::random::<u64>()),
        program: program.to_string(),
        host: hostname(),
        pid: std::process::id(),
        since,
        expires: since + TTL.as_secs() as i64,
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn rfc3339(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

/// This host's name (the pod's, in Kubernetes).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

fn process_exists(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks whether the process exists.
    let alive = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0;
    alive || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LocalStore;

    fn store(dir: &std::path::Path) -> Store {
        Arc::new(LocalStore::new(dir))
    }

    #[tokio::test]
    async fn a_live_lease_keeps_a_second_run_out_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let first = acquire(&s, "d/.egress-lease.json", "egress-dump", Duration::ZERO)
            .await
            .unwrap();
        let err = acquire(&s, "d/.egress-lease.json", "egress-dump", Duration::ZERO)
            .await
            .err()
            .unwrap();
        let busy = err.downcast_ref::<Busy>().expect("busy");
        assert_eq!(busy.holder.run_id, first.run_id());
        assert!(err.to_string().contains("--wait-for-lease"), "{err}");
        first.release().await;
        let second = acquire(&s, "d/.egress-lease.json", "egress-dump", Duration::ZERO)
            .await
            .unwrap();
        second.release().await;
        assert!(
            !dir.path().join("d/.egress-lease.json").exists(),
            "released"
        );
    }

    #[test]
    fn expired_and_locally_dead_holders_bind_nobody() {
        let mut h = new_holder("egress-sync");
        assert!(h.is_live(now()));
        assert!(!h.is_live(h.expires));
        h.pid = u32::MAX / 2; // no such process on this host
        assert!(!h.is_live(now()));
        h.host = "another-pod".into();
        assert!(
            h.is_live(now()),
            "a process elsewhere is trusted until its lease expires"
        );
    }
}
