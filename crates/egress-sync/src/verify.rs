//! `--verify`: check a side against its manifests without copying anything: every object
//! a manifest lists present, with the recorded size and SHA-256 (read in one stream).

use std::collections::BTreeSet;

use egress_common::manifest::{self, Manifest};
use egress_common::units::human_bytes;
use egress_store::{key, ErrorKind, GetOptions, Store};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tracing::info;

use crate::settings::Settings;
use crate::sides::{Side, Sides};

/// What a verification found.
#[derive(Debug, Default)]
pub struct Verification {
    /// Folders with a manifest, and the problems found in each (none: OK).
    pub folders: Vec<(String, Vec<String>)>,
    /// Folders holding objects but no manifest.
    pub without_manifest: Vec<String>,
    /// Objects in a folder with a manifest that the manifest does not list (left from an
    /// earlier version of the day, or put there by someone else): reported, not a mismatch.
    pub unlisted: Vec<String>,
}

/// Verify `side` as `settings` configure it; prints one line per folder and fails when any
/// folder does not match its manifest.
pub async fn run(settings: &Settings, side: Side) -> anyhow::Result<Verification> {
    let sides = Sides::open(settings).await?;
    let result = verify(sides.store(side), side.label()).await?;
    let bad: Vec<&str> = result
        .folders
        .iter()
        .filter(|(_, p)| !p.is_empty())
        .map(|(f, _)| f.as_str())
        .collect();
    info!(
        folders = result.folders.len(),
        mismatched = bad.len(),
        without_manifest = result.without_manifest.len(),
        unlisted = result.unlisted.len(),
        "Verified {} folder(s) against their manifests.",
        result.folders.len()
    );
    if !result.unlisted.is_empty() {
        tracing::warn!(
            "{} object(s) sit in a day folder whose manifest does not list them (see the UNLISTED lines); the listed objects are as the manifests say",
            result.unlisted.len()
        );
    }
    if !bad.is_empty() {
        anyhow::bail!(
            "{} folder(s) do not match their manifest: {}",
            bad.len(),
            bad.join(", ")
        );
    }
    Ok(result)
}

/// Check every folder of `store` that has a manifest.
pub async fn verify(store: &Store, label: &str) -> anyhow::Result<Verification> {
    let (with, all) = folders(store).await?;
    let mut result = Verification {
        without_manifest: all.difference(&with).cloned().collect(),
        ..Default::default()
    };
    for folder in with {
        let (problems, unlisted) = check_folder(store, label, &folder).await?;
        for p in &problems {
            println!("{label} {folder}: MISMATCH {p}");
        }
        for key in &unlisted {
            println!("{label} {folder}: UNLISTED {key} (not in the manifest)");
        }
        result.unlisted.extend(unlisted);
        result.folders.push((folder, problems));
    }
    for folder in &result.without_manifest {
        println!("{label} {folder}: no manifest (incomplete, or still being written)");
    }
    Ok(result)
}

/// The folders holding a manifest, and all folders holding objects (one listing pass).
async fn folders(store: &Store) -> anyhow::Result<(BTreeSet<String>, BTreeSet<String>)> {
    let (mut with, mut all) = (BTreeSet::new(), BTreeSet::new());
    let mut pages = store.list("");
    while let Some(page) = pages.next().await {
        for o in page? {
            if o.key == crate::sides::OLD_RECORDS_KEY
                || egress_common::day::lease::is_coordination(&o.key)
            {
                continue;
            }
            let folder = manifest::folder_of(&o.key).to_string();
            if manifest::is_manifest(&o.key) {
                with.insert(folder.clone());
            }
            all.insert(folder);
        }
    }
    Ok((with, all))
}

/// The mismatches of `folder` against its manifest, and the objects it holds that the
/// manifest does not list.
async fn check_folder(
    store: &Store,
    label: &str,
    folder: &str,
) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let manifest_key = manifest::key_in(folder);
    let parsed = match store.get(&manifest_key, GetOptions::default()).await {
        Ok(got) => Manifest::parse(&got.body.collect().await?),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            Err("manifest disappeared while verifying".into())
        }
        Err(e) => return Err(e.into()),
    };
    let manifest = match parsed {
        Ok(m) => m,
        Err(e) => return Ok((vec![format!("{manifest_key}: {e}")], Vec::new())),
    };
    let mut problems = Vec::new();
    let mut bytes = 0;
    let objects = manifest.objects();
    for listed in &objects {
        let object = key::join(folder, listed.file);
        match hash(store, &object).await? {
            None => problems.push(format!("{object}: missing")),
            Some((size, _)) if size != listed.bytes => problems.push(format!(
                "{object}: {size} bytes, the manifest says {}",
                listed.bytes
            )),
            Some((_, sha)) if sha != listed.sha256 => problems.push(format!(
                "{object}: SHA-256 {sha}, the manifest says {}",
                listed.sha256
            )),
            Some((size, _)) => bytes += size,
        }
    }
    let listed: BTreeSet<String> = objects.iter().map(|o| key::join(folder, o.file)).collect();
    let unlisted = unlisted_in(store, folder, &listed).await?;
    if problems.is_empty() {
        println!(
            "{label} {folder}: OK ({} objects, {}){}",
            objects.len(),
            human_bytes(bytes),
            match unlisted.len() {
                0 => String::new(),
                n => format!("; {n} more object(s) not in the manifest"),
            }
        );
    }
    Ok((problems, unlisted))
}

/// The objects directly in `folder` besides its manifest, what it lists, and our own
/// coordination objects.
async fn unlisted_in(
    store: &Store,
    folder: &str,
    listed: &BTreeSet<String>,
) -> anyhow::Result<Vec<String>> {
    let mut unlisted = Vec::new();
    let mut pages = store.list(&key::dir_prefix(folder));
    while let Some(page) = pages.next().await {
        for o in page? {
            let ours = manifest::is_manifest(&o.key)
                || egress_common::day::lease::is_coordination(&o.key)
                || o.key == crate::sides::OLD_RECORDS_KEY;
            if manifest::folder_of(&o.key) == folder && !ours && !listed.contains(&o.key) {
                unlisted.push(o.key);
            }
        }
    }
    Ok(unlisted)
}

/// Size and SHA-256 of an object, streamed; `None` when it does not exist.
async fn hash(store: &Store, object: &str) -> anyhow::Result<Option<(u64, String)>> {
    let got = match store.get(object, GetOptions::default()).await {
        Ok(got) => got,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut sha = Sha256::new();
    let mut size = 0u64;
    let mut stream = got.body.into_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        size += chunk.len() as u64;
        sha.update(&chunk);
    }
    Ok(Some((size, hex::encode(sha.finalize()))))
}
