//! Reading, writing and removing the day's coordination objects.

use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;

use egress_store::{ErrorKind, GetOptions, Store, StoreError};

/// The object at `key` read as `T`, with its ETag; `None` when there is none, or when it
/// is not a `T` (a half-written object, another version's: the caller waits for a good one).
pub(super) async fn read<T: DeserializeOwned>(
    store: &Store,
    key: &str,
) -> Result<Option<(T, Option<String>)>, StoreError> {
    let got = match store.get(key, GetOptions::default()).await {
        Ok(got) => got,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let etag = got.meta.etag.clone();
    let body = got.body.collect().await?;
    Ok(serde_json::from_slice(&body).ok().map(|v| (v, etag)))
}

/// Write `value` at `key` as JSON.
pub(super) async fn write<T: Serialize>(store: &Store, key: &str, value: &T) -> anyhow::Result<()> {
    let body = serde_json::to_vec_pretty(value)?;
    crate::run::put_json(store, key, body).await
}

/// Remove every coordination object of `date` (an earlier attempt's plan and statuses, or
/// this one's once the day is over). Failures are logged: the next attempt removes them.
pub(super) async fn clear(store: &Store, date: &str) {
    let folder = super::folder(date);
    let mut pages = store.list(&folder);
    let mut keys = Vec::new();
    while let Some(page) = pages.next().await {
        match page {
            Ok(page) => keys.extend(page.into_iter().map(|o| o.key)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the day's coordination objects; the next run removes them");
                return;
            }
        }
    }
    for key in keys {
        if let Err(e) = store.delete(&key).await {
            tracing::warn!(key = %key, error = %e, "cannot remove a coordination object; the next run removes it");
        }
    }
}
