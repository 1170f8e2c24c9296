//! Reading, writing and removing the small JSON objects the protocol coordinates through
//! (plans, statuses).

use bytes::Bytes;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;

use egress_store::{Body, Condition, ErrorKind, GetOptions, PutOptions, Store, StoreError};

/// An object read as `T`, with what conditional writes and ages need.
pub(crate) struct Found<T> {
    /// Its value.
    pub(crate) value: T,
    /// Its ETag.
    pub(crate) etag: Option<String>,
    /// Its `Last-Modified` (the store's clock), seconds since the epoch.
    pub(crate) modified: i64,
}

/// The object at `key` read as `T`; `None` when there is none, or when it is not a `T` (a
/// half-written object, another version's: the caller waits for a good one).
pub(crate) async fn read<T: DeserializeOwned>(
    store: &Store,
    key: &str,
) -> Result<Option<Found<T>>, StoreError> {
    let Some(raw) = read_bytes(store, key).await? else {
        return Ok(None);
    };
    Ok(serde_json::from_slice(&raw.value).ok().map(|value| Found {
        value,
        etag: raw.etag,
        modified: raw.modified,
    }))
}

/// The bytes of the object at `key`, whatever they hold; `None` when there is none. The
/// one read of a coordination object, parsed by each reader its own way.
pub(crate) async fn read_bytes(
    store: &Store,
    key: &str,
) -> Result<Option<Found<Bytes>>, StoreError> {
    let got = match store.get(key, GetOptions::default()).await {
        Ok(got) => got,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let (etag, modified) = (got.meta.etag.clone(), got.meta.modified);
    let value = got.body.collect().await?;
    Ok(Some(Found {
        value,
        etag,
        modified,
    }))
}

/// Write `value` at `key` as JSON under `condition`; its ETag.
pub(crate) async fn write<T: Serialize>(
    store: &Store,
    key: &str,
    value: &T,
    condition: Condition,
) -> Result<Option<String>, StoreError> {
    let body = serde_json::to_vec_pretty(value)
        .map_err(|e| StoreError::new(ErrorKind::Other, format!("cannot encode {key}: {e}")))?;
    let options = PutOptions {
        condition,
        ..super::json_options(&body)
    };
    Ok(store.put(key, Body::from_bytes(body), &options).await?.etag)
}

/// Remove every object under `folder`. Failures are logged: the next attempt removes them.
pub(crate) async fn clear(store: &Store, folder: &str) {
    let mut pages = store.list(folder);
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
