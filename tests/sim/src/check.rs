//! The invariants, checked after every change to either store and once all runs ended:
//!
//! 1. a day with a manifest, at the input or the output, holds exactly the objects it
//!    lists, with their sizes and hashes, from one snapshot (at the output: and nothing
//!    else in its folder);
//! 2. an output manifest is byte-identical to a version of the input's, and its objects to
//!    that version's (by 1, since the manifest is the same bytes);
//! 3. a complete day is withdrawn only by a run that holds its lease, and that run then
//!    completes it, or fails visibly because of a fault (injected into it or another
//!    process, or the input changing under the mirror) after the withdrawal;
//! 4. no run exits 3 for its own lease; no run waits forever; once every run ended (and
//!    the day's runs were repeated without faults) no upload is pending and every day is
//!    complete at both sides, the output's manifest the input's.

use std::collections::BTreeMap;

use egress_common::day::lease;
use egress_common::manifest::{self, Manifest};
use egress_store::MemoryStore;
use sha2::{Digest, Sha256};

use crate::source;
use crate::world::{lock, Side, World};

/// Before a write of `key` by process `proc` (`body` for a PUT): what it means for the
/// protocol (a withdrawal, a lease, a version of a manifest).
pub fn before_write(world: &World, proc: usize, side: Side, key: &str, body: Option<&[u8]>) {
    let store = world.store(side);
    if manifest::is_manifest(key) && body.is_none() && exists(store, key) {
        withdrawing(world, proc, side, key);
    }
    if lease::is_lease(key) {
        if let Some(holder) = body.and_then(|b| serde_json::from_slice::<lease::Holder>(b).ok()) {
            world.with_proc(proc, |p| p.lease_runs.insert(holder.run_id));
        }
    }
    if manifest::is_manifest(key) && body.is_some() {
        let date = manifest::folder_of(key).to_string();
        let at = world.now_ms();
        world.with_proc(proc, |p| p.published.push((side, date, at)));
    }
}

/// A complete day's manifest is about to be deleted by `proc`: it must hold the day.
fn withdrawing(world: &World, proc: usize, side: Side, key: &str) {
    let date = manifest::folder_of(key).to_string();
    let (host, pid, name) = world.with_proc(proc, |p| (p.host.clone(), p.pid, p.name.clone()));
    let leases: Vec<String> = match side {
        Side::Input => vec![lease::key_in(&date)],
        Side::Output => world
            .output
            .objects()
            .into_iter()
            .map(|(k, _, _)| k)
            .filter(|k| lease::is_lease(k) && !k.contains('/'))
            .collect(),
    };
    let holds = leases.iter().any(|k| {
        read(world.store(side), k)
            .and_then(|b| serde_json::from_slice::<lease::Holder>(&b).ok())
            .is_some_and(|h| h.host == host && h.pid == pid)
    });
    if !holds {
        world.violate(format!(
            "I3: {name} withdrew the complete day {}:{date} without holding its lease",
            side.label()
        ));
    }
    let at = world.now_ms();
    if side == Side::Input {
        lock(&world.input_changed).insert(date.clone(), at);
    }
    world.with_proc(proc, |p| p.withdrew.push((side, date, at)));
}

/// After a write: the invariants on both stores.
pub fn after_write(world: &World, _proc: usize, _side: Side, _key: &str) {
    record_input_versions(world);
    for side in [Side::Input, Side::Output] {
        for problem in days_problems(world, side) {
            world.violate(problem);
        }
    }
    for problem in output_versions(world) {
        world.violate(problem);
    }
    for problem in crate::tables::problems(world) {
        world.violate(problem);
    }
}

fn exists(store: &MemoryStore, key: &str) -> bool {
    store.objects().iter().any(|(k, _, _)| k == key)
}

fn read(store: &MemoryStore, key: &str) -> Option<Vec<u8>> {
    store
        .objects()
        .into_iter()
        .find(|(k, _, _)| k == key)
        .map(|(_, b, _)| b.to_vec())
}

/// Every input manifest is a version the output may publish.
fn record_input_versions(world: &World) {
    let now = world.now_ms();
    for (key, body, _) in world.input.objects() {
        if !manifest::is_manifest(&key) {
            continue;
        }
        let date = manifest::folder_of(&key).to_string();
        let mut versions = lock(&world.input_versions);
        if versions
            .entry(date.clone())
            .or_default()
            .insert(body.to_vec())
        {
            lock(&world.input_changed).insert(date, now);
        }
    }
}

/// Invariant 1 on `side`: each day with a manifest holds exactly what it lists.
pub fn days_problems(world: &World, side: Side) -> Vec<String> {
    let objects: BTreeMap<String, bytes::Bytes> = world
        .store(side)
        .objects()
        .into_iter()
        .map(|(k, b, _)| (k, b))
        .collect();
    let tampered = lock(&world.tampered).clone();
    let mut problems = Vec::new();
    for (key, body) in &objects {
        if !manifest::is_manifest(key) {
            continue;
        }
        let date = manifest::folder_of(key);
        if tampered.contains(&(side, date.to_string(), body.to_vec())) {
            continue;
        }
        let where_ = format!("{}:{date}", side.label());
        let m = match Manifest::parse(body) {
            Ok(m) => m,
            Err(e) => {
                problems.push(format!("I1: the manifest of {where_} cannot be read: {e}"));
                continue;
            }
        };
        let snapshot = source::snapshot_id(&m.snapshot.txid_snapshot);
        for listed in m.objects() {
            let object = format!("{date}/{}", listed.file);
            let Some(bytes) = objects.get(&object) else {
                problems.push(format!(
                    "I1: {where_} lists {} but it is not there",
                    listed.file
                ));
                continue;
            };
            let sha = hex::encode(Sha256::digest(bytes));
            if bytes.len() as u64 != listed.bytes || sha != listed.sha256 {
                problems.push(format!(
                    "I1: {where_}: {} is {} bytes with SHA-256 {}..., the manifest says {} bytes with {}...",
                    listed.file,
                    bytes.len(),
                    &sha[..12],
                    listed.bytes,
                    &listed.sha256[..listed.sha256.len().min(12)]
                ));
                continue;
            }
            if let Some(from) = source::header_snapshot(bytes) {
                if from != snapshot {
                    problems.push(format!(
                        "I1: {where_}: {} is from snapshot {from}, the manifest's is {snapshot}",
                        listed.file
                    ));
                }
            }
        }
        if side == Side::Output {
            problems.extend(unlisted(&objects, date, &m, &where_));
        }
    }
    problems
}

/// Objects of an output day its manifest does not list.
fn unlisted(
    objects: &BTreeMap<String, bytes::Bytes>,
    date: &str,
    m: &Manifest,
    where_: &str,
) -> Vec<String> {
    let listed: Vec<String> = m
        .objects()
        .iter()
        .map(|o| format!("{date}/{}", o.file))
        .collect();
    let prefix = format!("{date}/");
    objects
        .keys()
        .filter(|k| k.starts_with(&prefix) && !manifest::is_manifest(k))
        .filter(|k| !lease::is_coordination(k) && !listed.contains(k))
        .map(|k| format!("I1: {where_} holds {k}, which its manifest does not list"))
        .collect()
}

/// Invariant 2: every output manifest is a version of the input's.
fn output_versions(world: &World) -> Vec<String> {
    let versions = lock(&world.input_versions);
    world
        .output
        .objects()
        .into_iter()
        .filter(|(k, _, _)| manifest::is_manifest(k))
        .filter(|(k, b, _)| {
            let date = manifest::folder_of(k);
            !versions.get(date).is_some_and(|v| v.contains(&b.to_vec()))
        })
        .map(|(k, _, _)| format!("I2: out:{k} is no version of the input's manifest"))
        .collect()
}

/// A process ended with `code` and `error` (its chain): invariant 4 on leases, and
/// invariant 3 on what it withdrew.
pub fn at_end(world: &World, proc: usize, code: i32, error: Option<&anyhow::Error>) {
    let (name, runs) = world.with_proc(proc, |p| (p.name.clone(), p.lease_runs.clone()));
    if let Some(error) = error {
        if let Some(busy) = egress_common::error::find::<lease::Busy>(error) {
            if busy.run_id.as_ref().is_some_and(|r| runs.contains(r)) {
                world.violate(format!(
                    "I4: {name} exited 3 naming its own lease ({})",
                    busy.location
                ));
            }
        }
        let lost = egress_common::error::find::<egress_store::StoreError>(error)
            .is_some_and(|e| e.kind() == egress_store::ErrorKind::LeaseLost);
        if lost && holds_own_lease(world, &runs) {
            world.violate(format!(
                "I4: {name} declared its lease lost while the lease is still its own"
            ));
        }
    }
    withdrawals_justified(world, proc, code);
}

/// True when a lease object at either store holds one of `runs`.
fn holds_own_lease(world: &World, runs: &std::collections::BTreeSet<String>) -> bool {
    [&world.input, &world.output].iter().any(|store| {
        store.objects().into_iter().any(|(k, b, _)| {
            lease::is_lease(&k)
                && serde_json::from_slice::<lease::Holder>(&b)
                    .is_ok_and(|h| runs.contains(&h.run_id))
        })
    })
}

/// Invariant 3's second half, for a process that ended with `code` (`-9`: killed).
pub fn withdrawals_justified(world: &World, proc: usize, code: i32) {
    let (name, withdrew, published) = world.with_proc(proc, |p| {
        (p.name.clone(), p.withdrew.clone(), p.published.clone())
    });
    for (side, date, at) in withdrew {
        let completed = published
            .iter()
            .any(|(s, d, t)| *s == side && *d == date && *t >= at);
        if completed {
            continue;
        }
        let input_changed = side == Side::Output
            && lock(&world.input_changed)
                .get(&date)
                .is_some_and(|t| *t >= at);
        // Another tool broke the day: a run may find out only after it withdrew it.
        let broken = lock(&world.tampered).iter().any(|(_, d, _)| *d == date);
        if (code != 0 && (world.faulted_since(at, side, &date) || broken)) || input_changed {
            continue;
        }
        world.violate(format!(
            "I3: {name} withdrew the complete day {}:{date} and ended (exit {code}) without completing it, no fault after the withdrawal to explain it",
            side.label()
        ));
    }
}

/// Invariant 4's last part and the days' liveness, once every run (and the runs repeated
/// without faults) ended.
pub async fn at_rest(world: &World, dates: &[String]) {
    for (side, store) in [(Side::Input, &world.input), (Side::Output, &world.output)] {
        let pending = egress_store::ObjectStore::pending_uploads(store, "")
            .await
            .unwrap_or_default();
        for upload in pending {
            world.violate(format!(
                "I4: an upload of {}:{} is still pending after every run ended",
                side.label(),
                upload.key
            ));
        }
    }
    for date in dates {
        let key = manifest::key_in(date);
        let input = read(&world.input, &key);
        let output = read(&world.output, &key);
        match (input, output) {
            (Some(i), Some(o)) if i == o => {}
            (None, _) => world.violate(format!(
                "liveness: day {date} is not complete at the input after the last runs"
            )),
            (Some(_), None) => world.violate(format!(
                "liveness: day {date} is not complete at the output after the last mirror"
            )),
            (Some(_), Some(_)) => world.violate(format!(
                "liveness: day {date} at the output is not the input's after the last mirror"
            )),
        }
    }
    for problem in crate::tables::at_rest(world, dates) {
        world.violate(problem);
    }
}
