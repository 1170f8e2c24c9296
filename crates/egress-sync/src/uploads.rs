//! Which unfinished multipart uploads at the output are egress-sync's. A listing of
//! pending uploads says nothing about who started them, so a run marks its own: before it
//! starts an upload it writes a small object under [`UPLOAD_MARKERS`] naming the key, the
//! run and when the run took the mirror's lease, and deletes it when the upload is
//! completed or aborted. The next run holds the mirror's
//! lease, so every other run is gone: it aborts the pending uploads at keys other runs
//! marked and leaves every unmarked upload alone, naming them.

use egress_common::day::lease::UPLOAD_MARKERS;
use egress_store::{Body, GetOptions, PendingUpload, PutOptions, Store, StoreError};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tracing::{info, warn};

/// What a mark records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Mark {
    key: String,
    run_id: String,
    /// When the run took the mirror's lease (the store's clock), for people.
    since: i64,
}

/// The marks of one run's uploads.
#[derive(Debug)]
pub struct Marks {
    /// The output, unguarded (marks are bookkeeping, not the mirror's data).
    dest: Store,
    run_id: String,
    since: i64,
}

impl Marks {
    /// Marks written into `dest` for the run `run_id`, which took its lease at `since`.
    pub fn new(dest: Store, run_id: &str, since: i64) -> Marks {
        Marks {
            dest,
            run_id: run_id.to_string(),
            since,
        }
    }

    /// Mark an upload to `key` as this run's, before it starts.
    pub async fn write(&self, key: &str) -> Result<(), StoreError> {
        let mark = Mark {
            key: key.to_string(),
            run_id: self.run_id.clone(),
            since: self.since,
        };
        let body = serde_json::to_vec(&mark).unwrap_or_default();
        self.dest
            .put(
                &mark_key(&self.run_id, key),
                Body::from_bytes(body),
                &PutOptions::default(),
            )
            .await
            .map(|_| ())
            .map_err(|e| e.context("marking an upload as this run's"))
    }

    /// The upload to `key` was completed or aborted: its mark goes. (A run stopped by a
    /// signal leaves its marks: the next run aborts what they mark, then removes them.)
    pub async fn remove(&self, key: &str) {
        let _ = self.dest.delete(&mark_key(&self.run_id, key)).await;
    }
}

fn mark_key(run_id: &str, key: &str) -> String {
    let digest = sha2::Sha256::digest(key.as_bytes());
    format!("{UPLOAD_MARKERS}{run_id}/{}", &hex::encode(digest)[..24])
}

/// Abort the uploads other (dead) egress-sync runs marked at `dest`, and remove their
/// marks; uploads nobody marked are left alone and named. `ours` is this run's id; only
/// uploads started before `before` (this run's lease, the store's clock) count as left,
/// and only at keys `mine` accepts (a share of the mirror holds its own keys alone).
/// Returns how many were aborted.
pub async fn clear_dead(
    dest: &Store,
    ours: &str,
    before: i64,
    mine: impl Fn(&str) -> bool,
) -> usize {
    let pending = match dest.pending_uploads("").await {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(error = %e, "cannot list pending uploads; the bucket's lifecycle rule removes dead ones");
            return 0;
        }
    };
    let marks: Vec<(String, Mark)> = read_marks(dest)
        .await
        .into_iter()
        .filter(|(_, m)| m.run_id != ours && mine(&m.key))
        .collect();
    // Any pending upload at a key a dead run marked is that run's: the mirror's keys are
    // written by the mirror alone. (Start times cannot narrow it further: moto answers a
    // fixed date from 2010 for every upload, measured.)
    let owner = |u: &PendingUpload| marks.iter().map(|(_, m)| m).find(|m| m.key == u.key);
    let mut aborted = 0;
    let (mut others, mut kept) = (Vec::new(), std::collections::HashSet::new());
    for upload in pending
        .iter()
        .filter(|u| u.initiated < before && mine(&u.key))
    {
        let Some(mark) = owner(upload) else {
            others.push(upload.key.as_str());
            continue;
        };
        match dest.abort_pending(upload).await {
            Ok(()) => {
                info!(key = %upload.key, run = %mark.run_id, "aborted an upload left by egress-sync run {} (gone)", mark.run_id);
                aborted += 1;
            }
            Err(e) => {
                warn!(key = %upload.key, error = %e, "could not abort an upload left by an earlier run");
                kept.insert(upload.key.as_str());
            }
        }
    }
    for (at, mark) in &marks {
        if !kept.contains(mark.key.as_str()) {
            let _ = dest.delete(at).await;
        }
    }
    if !others.is_empty() {
        info!(
            uploads = others.len(),
            "left {} unfinished upload(s) under the output alone: no egress-sync run marked them as its own (another writer's, or an earlier version's), so the bucket's lifecycle rule decides: {}",
            others.len(),
            others.join(", ")
        );
    }
    aborted
}

/// Every mark at `dest`, with its key; unreadable ones are skipped.
async fn read_marks(dest: &Store) -> Vec<(String, Mark)> {
    let mut keys = Vec::new();
    let mut pages = dest.list(UPLOAD_MARKERS);
    while let Some(Ok(page)) = pages.next().await {
        keys.extend(page.into_iter().map(|o| o.key));
    }
    let mut marks = Vec::new();
    for key in keys {
        let Ok(got) = dest.get(&key, GetOptions::default()).await else {
            continue;
        };
        let Ok(body) = got.body.collect().await else {
            continue;
        };
        if let Ok(mark) = serde_json::from_slice::<Mark>(&body) {
            marks.push((key, mark));
        }
    }
    marks
}
