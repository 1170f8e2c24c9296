//! The upload stage: compressed parts in, one object out, invisible until committed. A
//! stream that fits in one part becomes a single PUT (with Content-MD5); anything larger a
//! multipart upload with a bounded number of parts in flight.

use bytes::Bytes;
use egress_store::{
    Attributes, Body, PartCheck, PartWriter, PutOptions, Store, StoreError, Uploaded,
};
use md5::{Digest, Md5};
use tokio::sync::mpsc;

/// S3's limit on parts per upload.
pub const MAX_PARTS: u32 = 10_000;
/// S3's limit on one part's size.
const MAX_PART_SIZE: usize = 5 * 1024 * 1024 * 1024;

/// Target size of part `number` (1-based): `base`, doubling every 1,000 parts.
///
/// With an 8 MiB base, 10,000 parts hold about 8 TiB, while small tables use small parts.
pub fn part_size(number: u32, base: usize) -> usize {
    let doublings = (number.saturating_sub(1) / 1000).min(20);
    base.saturating_mul(1usize << doublings).min(MAX_PART_SIZE)
}

/// Data received, not yet visible.
pub enum Pending {
    /// One part: held until [`commit`] PUTs it.
    Single(Bytes),
    /// Every part uploaded.
    Parts(Uploaded),
}

/// What a committed object is.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Committed {
    /// Its ETag, as the store reported it.
    pub etag: Option<String>,
    /// Its multipart part sizes (`None` for a single PUT).
    pub part_sizes: Option<Vec<u64>>,
}

/// A table object's options: its content type; created only if absent (see
/// [`egress_common::day::create_only`]).
fn options(key: &str) -> PutOptions {
    let content_type = match key.ends_with(".parquet") {
        true => "application/vnd.apache.parquet",
        false => "application/gzip",
    };
    egress_common::day::create_only(PutOptions {
        attributes: Attributes {
            content_type: Some(content_type.into()),
            ..Default::default()
        },
        ..Default::default()
    })
}

/// Receive every part from `parts` and upload it under `key`, at most `in_flight` at a
/// time. On failure nothing is left behind.
pub async fn receive(
    store: &Store,
    key: &str,
    mut parts: mpsc::Receiver<Bytes>,
    in_flight: usize,
) -> Result<Pending, StoreError> {
    let Some(first) = parts.recv().await else {
        return Ok(Pending::Single(Bytes::new()));
    };
    let Some(second) = parts.recv().await else {
        return Ok(Pending::Single(first));
    };
    let mut writer = PartWriter::start(
        store.clone(),
        key,
        &options(key),
        in_flight,
        PartCheck::Nothing,
    )
    .await?;
    let mut number = 0u32;
    let mut next = Some(first);
    let mut queued = Some(second);
    while let Some(body) = next.take() {
        number += 1;
        if number > MAX_PARTS {
            writer.abort().await;
            return Err(StoreError::new(
                egress_store::ErrorKind::Other,
                format!("{key} needs more than {MAX_PARTS} parts; raise --part-size-mib"),
            ));
        }
        let len = body.len() as u64;
        if let Err(e) = writer
            .put(len, async move { Ok(Body::from_bytes(body)) })
            .await
        {
            writer.abort().await;
            return Err(e);
        }
        next = match queued.take() {
            Some(q) => Some(q),
            None => parts.recv().await,
        };
    }
    Ok(Pending::Parts(writer.finish().await?))
}

/// Make the object visible, created where nothing is. The day's objects were removed
/// before it was written again, so what is found there now is a stale writer's (a run
/// paused past its lease, a pod whose claim was taken over): removed first, this run
/// holding the day. A write whose reply was lost is settled by reading the object back.
pub async fn commit(store: &Store, key: &str, pending: Pending) -> Result<Committed, StoreError> {
    match store.head(key).await {
        Ok(_) => {
            tracing::warn!(
                key,
                "an object another writer left where this run writes is removed first"
            );
            store.delete(key).await?;
        }
        Err(e) if e.kind() == egress_store::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    match pending {
        Pending::Single(body) => {
            let md5: [u8; 16] = Md5::digest(&body).into();
            let options = PutOptions {
                content_md5: Some(md5),
                ..options(key)
            };
            let size = body.len() as u64;
            let put = match store.put(key, Body::from_bytes(body), &options).await {
                Ok(put) => put,
                Err(e) => {
                    egress_store::settle(store, key, (size, Some(hex::encode(md5))), e).await?
                }
            };
            Ok(Committed {
                etag: put.etag,
                part_sizes: None,
            })
        }
        Pending::Parts(uploaded) => {
            let part_sizes = Some(uploaded.part_sizes());
            let done = uploaded.complete().await?;
            Ok(Committed {
                etag: done.etag,
                part_sizes,
            })
        }
    }
}

/// Throw away what was received.
pub async fn abort(pending: Pending) {
    if let Pending::Parts(uploaded) = pending {
        uploaded.abort().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_size_grows_to_fit_any_table_in_10000_parts() {
        let base = 8 * 1024 * 1024;
        assert_eq!(part_size(1, base), base);
        assert_eq!(part_size(1000, base), base);
        assert_eq!(part_size(1001, base), 2 * base);
        assert_eq!(part_size(10_000, base), 512 * base);
        let total: u128 = (1..=MAX_PARTS).map(|n| part_size(n, base) as u128).sum();
        // Almost 8 TiB fits: far beyond any table we expect, with 5 MiB <= part <= 5 GiB.
        assert!(total > 7 * (1u128 << 40));
        assert!((1..=MAX_PARTS).all(|n| part_size(n, base) >= 5 * 1024 * 1024));
        assert!((1..=MAX_PARTS).all(|n| part_size(n, base) <= MAX_PART_SIZE));
    }
}
