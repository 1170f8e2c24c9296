//! Handing a day over from the input to the output so that, seen from the output, a day is
//! either complete (its manifest beside exactly the objects it lists) or visibly not (no
//! manifest), never a manifest beside a mix:
//!
//! 1. **Withdraw.** Before the first object of a folder is replaced or deleted at the
//!    output (the moment it would become visible: a copy checked and about to be
//!    committed), the folder's manifest there is deleted ([`Withdrawals`], asked by the
//!    output guard before every write), as egress-dump does at the input before
//!    it rewrites a day.
//! 2. **Copy.** The objects are copied, each checked against the manifest as it was read
//!    (`--require-manifest`); objects the manifest does not list are not copied into the
//!    day.
//! 3. **Prove.** An object the output already had (skipped as unchanged) is read back and
//!    checked against the manifest too, before the manifest can vouch for it.
//! 4. **Publish.** Last, the manifest is written: exactly the bytes the objects were checked
//!    against, and only if the input's manifest is still that version; [`decide`] says
//!    what to do with each day, from facts gathered by the run.

use std::collections::HashMap;
use std::sync::Arc;

use egress_store::{ErrorKind, Store, StoreError};
use tokio::sync::OnceCell;

use crate::manifest;

/// What must let go of a day before it leaves the output (its manifest withdrawn): a
/// reader that refers to the day's objects (egress-sync's Iceberg tables).
#[async_trait::async_trait]
pub trait Departure: Send + Sync + std::fmt::Debug {
    /// Before `folder`'s manifest is withdrawn from the output: an error keeps it there.
    async fn before_leaving(&self, folder: &str) -> Result<(), StoreError>;
}

/// One folder's withdrawal, done once; every writer in the folder waits for it.
type Withdrawal = OnceCell<()>;

/// The folders whose manifest this run has withdrawn from the output.
#[derive(Debug)]
pub struct Withdrawals {
    dest: Store,
    folders: std::sync::Mutex<HashMap<String, Arc<Withdrawal>>>,
    /// Folders this run already failed: a complete day there is left as it is.
    failed: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Keys that belong to no day (the programs' own files).
    outside: fn(&str) -> bool,
    /// Told before a day's manifest is withdrawn.
    departure: Option<Arc<dyn Departure>>,
}

impl Withdrawals {
    /// Withdrawals at `dest` (the output unguarded: the guard asked the lease already);
    /// keys `outside` says are no day's change nothing.
    pub fn new(dest: Store, outside: fn(&str) -> bool) -> Withdrawals {
        Withdrawals {
            dest,
            folders: std::sync::Mutex::new(HashMap::new()),
            failed: std::sync::Mutex::new(std::collections::HashSet::new()),
            outside,
            departure: None,
        }
    }

    /// The same withdrawals, telling `departure` first each time a day leaves.
    pub fn telling(self, departure: Option<Arc<dyn Departure>>) -> Withdrawals {
        Withdrawals { departure, ..self }
    }

    /// Before `key` is written or deleted at the output: its folder's manifest is removed
    /// first (once per run; every writer in the folder waits for it). A manifest itself
    /// needs nothing.
    pub async fn before_change(&self, key: &str) -> Result<(), StoreError> {
        if manifest::is_manifest(key) || (self.outside)(key) {
            return Ok(());
        }
        self.withdraw_once(manifest::folder_of(key)).await
    }

    /// Before the manifest `key` is deleted from the output (`--remove`): that is its
    /// day's withdrawal, done as any other (what refers to the day lets go first).
    pub async fn before_delete(&self, key: &str) -> Result<(), StoreError> {
        match manifest::is_manifest(key) {
            true => self.withdraw_once(manifest::folder_of(key)).await,
            false => Ok(()),
        }
    }

    /// Withdraw `folder`'s manifest, once per run; every writer in the folder waits.
    async fn withdraw_once(&self, folder: &str) -> Result<(), StoreError> {
        let folder = folder.to_string();
        // A failed day keeps a manifest the output has; one it lacks protects nothing,
        // and the day's other objects are still copied.
        if self.failed(&folder) && !self.withdrawn(&folder) && self.has_manifest(&folder).await? {
            return Err(already_failed(&folder));
        }
        let cell = match self.folders.lock() {
            Ok(mut map) => map.entry(folder.clone()).or_default().clone(),
            Err(_) => Arc::new(OnceCell::new()),
        };
        // Only a withdrawal that succeeded is remembered: a failed one is tried again.
        cell.get_or_try_init(|| self.withdraw(&folder)).await?;
        Ok(())
    }

    /// True when the output holds `folder`'s manifest.
    async fn has_manifest(&self, folder: &str) -> Result<bool, StoreError> {
        match self.dest.head(&manifest::key_in(folder)).await {
            Ok(_) => Ok(true),
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::InvalidKey) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Delete `folder`'s manifest at the output, if it has one (a HEAD first: a new day
    /// needs no DELETE, nor the permission for one).
    async fn withdraw(&self, folder: &str) -> Result<(), StoreError> {
        let key = manifest::key_in(folder);
        let failed = |e: StoreError| {
            e.context(format!(
                "withdrawing {} before its day changes",
                self.dest.describe(&key)
            ))
        };
        // None there, or no manifest can be there (a key no output can hold): a new day
        // needs no DELETE, nor the permission for one.
        if !self.has_manifest(folder).await.map_err(failed)? {
            return Ok(());
        }
        let late = egress_store::mutant::active("iceberg-late-departure");
        if let Some(departure) = self.departure.as_ref().filter(|_| !late) {
            departure.before_leaving(folder).await.map_err(failed)?;
        }
        // The day may have failed while its tables let it go (a departure takes seconds):
        // then its manifest stays, and the run's commit brings the day back to its tables.
        if self.failed(folder) {
            return Err(already_failed(folder));
        }
        self.dest.delete(&key).await.map_err(failed)?;
        if let Some(departure) = self.departure.as_ref().filter(|_| late) {
            departure.before_leaving(folder).await.map_err(failed)?;
        }
        tracing::info!(
            "withdrew {}: its day changes at the input; the new manifest is written once the day is copied",
            self.dest.describe(&key)
        );
        Ok(())
    }

    /// This run cannot complete `folder` (one of its objects failed): a complete day
    /// there is not withdrawn from now on.
    pub fn fail(&self, folder: &str) {
        if let Ok(mut failed) = self.failed.lock() {
            failed.insert(folder.to_string());
        }
    }

    /// True when this run failed an object of `folder`.
    fn failed(&self, folder: &str) -> bool {
        self.failed.lock().is_ok_and(|f| f.contains(folder))
    }

    /// True when this run withdrew `folder`'s manifest.
    pub fn withdrawn(&self, folder: &str) -> bool {
        self.folders
            .lock()
            .map(|m| m.get(folder).is_some_and(|c| c.get().is_some()))
            .unwrap_or(false)
    }
}

/// Why a day this run failed is not withdrawn.
fn already_failed(folder: &str) -> StoreError {
    StoreError::new(
        ErrorKind::Other,
        format!(
            "day {folder} already failed in this run: its manifest at the output stays, and so does the day"
        ),
    )
}

/// What the run knows of one day when its manifest's turn comes (`--require-manifest`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DayFacts {
    /// Why the input's manifest cannot be used, if it cannot.
    pub unusable: Option<String>,
    /// The input's manifest is no longer the version read (re-dumped or deleted meanwhile).
    pub changed: bool,
    /// Objects the manifest lists that `--include`/`--exclude` leave out (also the
    /// manifest itself, when it is left out).
    pub filtered: Vec<String>,
    /// Objects the manifest lists that the input listing lacks.
    pub missing: Vec<String>,
    /// Some object of the day failed to copy or did not match the manifest.
    pub failed: bool,
    /// The output already holds this very manifest, and this run withdrew nothing there.
    pub already_published: bool,
    /// Objects the output already had (skipped, not copied) that nothing has yet proven
    /// to be the ones the manifest lists.
    pub unproven: Vec<String>,
    /// Objects the output holds in the day's folder that the manifest does not list (an
    /// earlier layout of the day): they go before the manifest is published.
    pub unlisted: Vec<String>,
}

/// What becomes of a day's manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandOff {
    /// Write the manifest the objects were checked against.
    Publish,
    /// Make the output ready first, then decide again: prove the objects it had already
    /// (read each back and check it against the manifest), remove the ones the day no
    /// longer lists.
    Prepare {
        /// Objects to read back and check.
        prove: Vec<String>,
        /// Objects to delete.
        remove: Vec<String>,
    },
    /// The output has it already (`lost`: objects the input no longer has since).
    AlreadyThere {
        /// Objects the input lost after the day was mirrored (expired).
        lost: Vec<String>,
    },
    /// Leave the day without its manifest, with a warning: not an error of the run.
    Hold(String),
    /// Leave the day without its manifest: a failure of the run.
    Fail(String),
}

/// Decide a day's hand-off from its facts: an unusable manifest, failed objects, or a
/// manifest listing what the input does not have fail; a change at the input during the
/// run or a filter leaving part of the day out hold it (the next run, or the operator's
/// filter, decides); a day the output already has stays as it is, even when the input has
/// since lost some of its objects to the lifecycle rule.
pub fn decide(facts: &DayFacts) -> HandOff {
    if let Some(why) = &facts.unusable {
        return HandOff::Fail(format!("the manifest is unusable: {why}"));
    }
    // The output holds this very manifest and nothing of the day changed there: it stays.
    if facts.already_published && !facts.failed {
        return HandOff::AlreadyThere {
            lost: facts.missing.clone(),
        };
    }
    if facts.changed {
        return HandOff::Hold(
            "the input's manifest changed during this run (the day is being written again): the next run completes it".into(),
        );
    }
    if facts.failed {
        return HandOff::Fail("some of its objects failed to copy or did not match it".into());
    }
    if !facts.missing.is_empty() {
        return HandOff::Fail(format!(
            "the manifest lists objects the input does not have: {}",
            facts.missing.join(", ")
        ));
    }
    let prove = match egress_store::mutant::active("trust-unchanged") {
        true => Vec::new(),
        false => facts.unproven.clone(),
    };
    if !prove.is_empty() || !facts.unlisted.is_empty() {
        return HandOff::Prepare {
            prove,
            remove: facts.unlisted.clone(),
        };
    }
    if !facts.filtered.is_empty() {
        return HandOff::Hold(format!(
            "--include/--exclude leave out {} it lists ({}): its other objects are copied, and the day stays without its manifest at the output",
            count(facts.filtered.len()),
            facts.filtered.join(", ")
        ));
    }
    HandOff::Publish
}

fn count(n: usize) -> String {
    match n {
        1 => "1 object".into(),
        n => format!("{n} objects"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> DayFacts {
        DayFacts::default()
    }

    #[test]
    fn a_complete_day_is_published_once_its_skipped_objects_are_proven() {
        assert_eq!(decide(&facts()), HandOff::Publish);
        let skipped = DayFacts {
            unproven: vec!["d/a.csv.gz".into()],
            ..facts()
        };
        assert_eq!(
            decide(&skipped),
            HandOff::Prepare {
                prove: vec!["d/a.csv.gz".into()],
                remove: vec![]
            }
        );
        let there = DayFacts {
            already_published: true,
            ..facts()
        };
        assert_eq!(decide(&there), HandOff::AlreadyThere { lost: vec![] });
    }

    #[test]
    fn expiry_at_the_input_never_fails_a_day_already_mirrored() {
        let missing = vec!["d/a.csv.gz".to_string()];
        let expired = DayFacts {
            missing: missing.clone(),
            already_published: true,
            ..facts()
        };
        assert_eq!(
            decide(&expired),
            HandOff::AlreadyThere {
                lost: missing.clone()
            }
        );
        let never_mirrored = DayFacts { missing, ..facts() };
        assert!(
            matches!(decide(&never_mirrored), HandOff::Fail(why) if why.contains("d/a.csv.gz"))
        );
    }

    #[test]
    fn filters_and_changes_hold_a_day_without_failing_the_run() {
        let filtered = DayFacts {
            filtered: vec!["d/b.csv.gz".into()],
            ..facts()
        };
        assert!(
            matches!(decide(&filtered), HandOff::Hold(why) if why.contains("1 object it lists (d/b.csv.gz)"))
        );
        // A day the output already has whole stays as it is, filtered or changed.
        let there = DayFacts {
            already_published: true,
            ..filtered
        };
        assert_eq!(decide(&there), HandOff::AlreadyThere { lost: vec![] });
        let missing_and_filtered = DayFacts {
            missing: vec!["d/a.csv.gz".into()],
            filtered: vec!["d/b.csv.gz".into()],
            ..facts()
        };
        assert!(
            matches!(decide(&missing_and_filtered), HandOff::Fail(_)),
            "missing wins over a filter"
        );
        let changed = DayFacts {
            changed: true,
            failed: true,
            ..facts()
        };
        assert!(
            matches!(decide(&changed), HandOff::Hold(why) if why.contains("changed during this run"))
        );
    }

    #[test]
    fn unusable_manifests_and_failed_objects_fail() {
        let unusable = DayFacts {
            unusable: Some("not JSON".into()),
            ..facts()
        };
        assert!(matches!(decide(&unusable), HandOff::Fail(why) if why.contains("not JSON")));
        let failed = DayFacts {
            failed: true,
            already_published: true,
            ..facts()
        };
        assert!(matches!(decide(&failed), HandOff::Fail(_)));
    }

    #[tokio::test]
    async fn a_failed_day_keeps_its_manifest_and_a_day_without_one_goes_on() {
        let store: Store = Arc::new(egress_store::MemoryStore::new());
        let body = || egress_store::Body::from_bytes(bytes::Bytes::from_static(b"{}"));
        let put = egress_store::PutOptions::default();
        store.put("d/_manifest.json", body(), &put).await.unwrap();
        let withdrawals = Withdrawals::new(store.clone(), |_| false);
        withdrawals.fail("d");
        withdrawals.fail("e");
        let refused = withdrawals.before_change("d/a.csv.gz").await.unwrap_err();
        assert!(refused.to_string().contains("already failed"), "{refused}");
        assert!(
            store.head("d/_manifest.json").await.is_ok(),
            "the complete day stays"
        );
        withdrawals.before_change("e/a.csv.gz").await.unwrap();
    }
}
