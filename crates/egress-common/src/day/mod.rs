//! The day protocol: every write that makes a day visible or invisible, at the input
//! (egress-dump) and at the output (egress-sync), goes through this module.
//!
//! A **day** is a date folder. Its `_manifest.json` says "these objects, exactly, are the
//! day, from one snapshot". A day is
//! - **filling** while objects are written and it has no manifest,
//! - **published** once its manifest is written, last ([`publish`]),
//! - **withdrawn** when a run that is about to change it deletes the manifest first
//!   ([`withdraw`]), and filling again from there.
//!
//! The rules that keep a manifest true:
//! - one writer per day: [`lease`] (taken, renewed, fenced, given back; a lost reply is
//!   settled by reading the lease back);
//! - a table object is created, never replaced ([`create_only`]); the day's earlier objects
//!   are removed once its manifest is withdrawn ([`clear_objects`]), so no pod that lost a
//!   race can overwrite what another wrote;
//! - a manifest entry is published only for bytes this run proved are in the store at
//!   publish time ([`confirm_written`] for what the run wrote; the mirror checks skipped
//!   objects against the input's manifest too);
//! - a day shared by several processes is coordinated by [`shared`]: the complete day is
//!   withdrawn only once every index has joined the plan;
//! - the mirror's check-withdraw-copy-publish is [`handoff`].
//!
//! `docs/protocol.md` states the invariants, and `tests/sim` checks them under injected
//! faults.

pub mod handoff;
pub mod lease;
mod objects;
pub mod shared;

use futures::StreamExt;
use md5::{Digest, Md5};

use crate::manifest::{self, Manifest};
use egress_store::{
    Attributes, Body, Condition, ErrorKind, GetOptions, PutOptions, Store, StoreError,
};

/// How a small JSON object is written: its type, and its Content-MD5.
pub(crate) fn json_options(body: &[u8]) -> PutOptions {
    PutOptions {
        attributes: Attributes {
            content_type: Some("application/json".into()),
            ..Default::default()
        },
        content_md5: Some(Md5::digest(body).into()),
        ..Default::default()
    }
}

/// PUT a small JSON object, with its Content-MD5.
pub async fn put_json(store: &Store, key: &str, body: Vec<u8>) -> Result<(), StoreError> {
    let options = json_options(&body);
    store.put(key, Body::from_bytes(body), &options).await?;
    Ok(())
}

/// The options of a table object: created only if absent (a day's objects are removed
/// before they are written again, so the one thing this refuses is another writer's
/// object: a pod that lost the race for its index, a run paused past its lease).
pub fn create_only(options: PutOptions) -> PutOptions {
    if egress_store::mutant::active("pieces-overwrite") {
        return options;
    }
    PutOptions {
        condition: Condition::IfAbsent,
        ..options
    }
}

/// The manifest of the day `date` at `store`, as written, when it has one.
pub async fn manifest_bytes(store: &Store, date: &str) -> Result<Option<bytes::Bytes>, StoreError> {
    match store
        .get(&manifest::key_in(date), GetOptions::default())
        .await
    {
        Ok(got) if got.meta.size > manifest::MAX_BYTES => Ok(None),
        Ok(got) => Ok(Some(got.body.collect().await?)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The day's manifest, when it has a usable one: the day is complete.
pub async fn complete(store: &Store, date: &str) -> Result<Option<Manifest>, StoreError> {
    Ok(manifest_bytes(store, date)
        .await?
        .and_then(|bytes| Manifest::parse(&bytes).ok()))
}

/// Withdraw the day: delete its manifest before anything of it changes. True when it had
/// one.
pub async fn withdraw(store: &Store, date: &str) -> Result<bool, StoreError> {
    let key = manifest::key_in(date);
    let had = match store.head(&key).await {
        Ok(_) => true,
        Err(e) if e.kind() == ErrorKind::NotFound => false,
        Err(e) => return Err(e),
    };
    if had {
        store.delete(&key).await?;
        tracing::info!(
            "withdrew {}: the day is written again; its new manifest comes last",
            store.describe(&key)
        );
    }
    Ok(had)
}

/// Publish the day: its manifest, written last.
pub async fn publish(store: &Store, manifest: &Manifest) -> anyhow::Result<()> {
    use anyhow::Context;
    let body = serde_json::to_vec_pretty(manifest).context("cannot encode the manifest")?;
    put_json(store, &manifest::key_in(&manifest.date), body).await?;
    Ok(())
}

/// An object a run wrote, as the store acknowledged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Its key.
    pub key: String,
    /// Its size.
    pub size: u64,
    /// Its ETag, when the store gave one.
    pub etag: Option<String>,
}

/// Before a manifest vouches for them: every object is still the one the run wrote
/// (another writer may have replaced it), by size and ETag.
pub async fn confirm_written(store: &Store, written: &[Written]) -> anyhow::Result<()> {
    for w in written {
        let meta = store.head(&w.key).await?;
        let same_etag = match (w.etag.as_deref(), meta.etag.as_deref()) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        if meta.size != w.size || !same_etag {
            anyhow::bail!(
                "{} is no longer the object this run wrote ({} bytes, ETag {}; this run wrote {} bytes, ETag {}): another run wrote the same day; no manifest written, run again",
                store.describe(&w.key),
                meta.size,
                meta.etag.as_deref().unwrap_or("-"),
                w.size,
                w.etag.as_deref().unwrap_or("-")
            );
        }
    }
    Ok(())
}

/// Remove the objects of the day `date` that `ours` claims (the day's tables, in any
/// layout an earlier run wrote them), once its manifest is withdrawn and before they are
/// written again: table objects are created, never replaced. How many went.
pub async fn clear_objects(
    store: &Store,
    date: &str,
    ours: impl Fn(&str) -> bool,
) -> Result<usize, StoreError> {
    let folder = format!("{date}/");
    let mut pages = store.list(&folder);
    let mut gone = Vec::new();
    while let Some(page) = pages.next().await {
        for object in page? {
            let Some(file) = object.key.strip_prefix(&folder) else {
                continue;
            };
            if !file.contains('/') && ours(file) && !manifest::is_manifest(&object.key) {
                gone.push(object.key);
            }
        }
    }
    for key in &gone {
        store.delete(key).await?;
    }
    if !gone.is_empty() {
        tracing::info!(
            objects = gone.len(),
            "removed the day's earlier objects before writing it again"
        );
    }
    Ok(gone.len())
}
