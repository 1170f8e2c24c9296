//! Writing one object in parts, several in flight (the `WriteMultipart` of arrow-rs's
//! `object_store`): used by the dump for its compressed stream and by the sync for large
//! copies. Nothing becomes visible until [`Uploaded::complete`].

use std::future::Future;
use std::sync::Arc;

use tokio::task::JoinSet;

use super::{
    etag_md5, multipart_etag, Body, CompletedPart, ErrorKind, PartSlot, PutOptions, PutResult,
    Store, StoreError, Upload,
};

/// One part the store has.
#[derive(Debug, Clone)]
struct PartDone {
    number: u32,
    etag: String,
    size: u64,
    md5: Option<[u8; 16]>,
}

/// An upload receiving parts.
pub struct PartWriter {
    store: Store,
    upload: Arc<Upload>,
    running: JoinSet<Result<PartDone, StoreError>>,
    max_in_flight: usize,
    verify: bool,
    next: u32,
    offset: u64,
    done: Vec<PartDone>,
}

impl PartWriter {
    /// Start a multipart upload of `key`. With `verify`, every part's MD5 is computed as it
    /// streams and checked against the ETag the store returns, and
    /// [`Uploaded::composite_etag`] is available.
    pub async fn start(
        store: Store,
        key: &str,
        options: &PutOptions,
        max_in_flight: usize,
        verify: bool,
    ) -> Result<PartWriter, StoreError> {
        let upload = store.create_multipart(key, options).await?;
        Ok(PartWriter {
            store,
            upload: Arc::new(upload),
            running: JoinSet::new(),
            max_in_flight: max_in_flight.max(1),
            verify,
            next: 1,
            offset: 0,
            done: Vec::new(),
        })
    }

    /// Upload the next part (numbered in call order) of `len` bytes, whose body `body`
    /// produces once a slot is free (so a part's source is read only when it can be sent);
    /// waits while `max_in_flight` parts are being uploaded. After an error, call
    /// [`PartWriter::abort`].
    pub async fn put(
        &mut self,
        len: u64,
        body: impl Future<Output = Result<Body, StoreError>> + Send + 'static,
    ) -> Result<(), StoreError> {
        while self.running.len() >= self.max_in_flight {
            self.join_one().await?;
        }
        let slot = PartSlot {
            number: self.next,
            offset: self.offset,
        };
        self.next += 1;
        self.offset += len;
        let (store, upload, verify) = (self.store.clone(), self.upload.clone(), self.verify);
        self.running.spawn(async move {
            let body = body.await?;
            upload_one(store, upload, slot, body, verify).await
        });
        Ok(())
    }

    async fn join_one(&mut self) -> Result<(), StoreError> {
        match self.running.join_next().await {
            Some(Ok(Ok(part))) => {
                self.done.push(part);
                Ok(())
            }
            Some(Ok(Err(e))) => Err(e),
            Some(Err(join)) => Err(StoreError::new(
                ErrorKind::Other,
                format!("a part upload task failed: {join}"),
            )),
            None => Ok(()),
        }
    }

    /// Wait for every part; on failure the upload is aborted.
    pub async fn finish(mut self) -> Result<Uploaded, StoreError> {
        while !self.running.is_empty() {
            if let Err(e) = self.join_one().await {
                self.abort().await;
                return Err(e);
            }
        }
        let mut parts = std::mem::take(&mut self.done);
        parts.sort_by_key(|p| p.number);
        match Arc::try_unwrap(self.upload) {
            Ok(upload) => Ok(Uploaded {
                store: self.store,
                upload,
                parts,
            }),
            Err(_) => Err(StoreError::new(
                ErrorKind::Other,
                "internal: a part is still in flight",
            )),
        }
    }

    /// Stop the parts in flight and throw the upload away.
    pub async fn abort(mut self) {
        self.running.abort_all();
        while self.running.join_next().await.is_some() {}
        if let Ok(upload) = Arc::try_unwrap(self.upload) {
            self.store.abort(upload).await;
        }
    }
}

async fn upload_one(
    store: Store,
    upload: Arc<Upload>,
    slot: PartSlot,
    body: Body,
    verify: bool,
) -> Result<PartDone, StoreError> {
    let size = body.len();
    if !verify {
        let etag = store.upload_part(&upload, slot, body, None).await?;
        return Ok(PartDone {
            number: slot.number,
            etag,
            size,
            md5: None,
        });
    }
    // In memory: send Content-MD5 so the store itself refuses damaged bytes.
    let content_md5 = body.as_bytes().map(|b| {
        use md5::{Digest, Md5};
        <[u8; 16]>::from(Md5::digest(b))
    });
    let (body, tap) = body.tap_md5();
    let etag = store.upload_part(&upload, slot, body, content_md5).await?;
    let md5 = tap.digest();
    if etag_md5(&etag).is_some_and(|stored| stored != md5) {
        return Err(StoreError::new(
            ErrorKind::ChecksumMismatch,
            format!(
                "part {} of {}: the store's ETag {etag} is not the MD5 {} of the bytes sent",
                slot.number,
                upload.key,
                hex::encode(md5)
            ),
        ));
    }
    Ok(PartDone {
        number: slot.number,
        etag,
        size,
        md5: Some(md5),
    })
}

/// Every part uploaded; the object is not visible yet.
pub struct Uploaded {
    store: Store,
    upload: Upload,
    parts: Vec<PartDone>,
}

impl Uploaded {
    /// Total bytes uploaded.
    pub fn size(&self) -> u64 {
        self.parts.iter().map(|p| p.size).sum()
    }

    /// The parts' sizes, in order.
    pub fn part_sizes(&self) -> Vec<u64> {
        self.parts.iter().map(|p| p.size).collect()
    }

    /// `md5(concat(part md5s))-N` of what was sent, when the parts were verified.
    pub fn composite_etag(&self) -> Option<String> {
        let md5s: Option<Vec<[u8; 16]>> = self.parts.iter().map(|p| p.md5).collect();
        md5s.map(|m| multipart_etag(&m))
    }

    /// Make the object visible.
    pub async fn complete(self) -> Result<PutResult, StoreError> {
        let size = self.size();
        let parts: Vec<CompletedPart> = self
            .parts
            .iter()
            .map(|p| CompletedPart {
                number: p.number,
                etag: p.etag.clone(),
            })
            .collect();
        self.store.complete(self.upload, &parts, size).await
    }

    /// Throw it away.
    pub async fn abort(self) {
        self.store.abort(self.upload).await;
    }
}
