//! Writing one object in parts, several in flight (the `WriteMultipart` of arrow-rs's
//! `object_store`): used by the dump for its compressed stream and by the sync for large
//! copies. Nothing becomes visible until [`Uploaded::complete`].

use std::future::Future;
use std::sync::Arc;

use tokio::task::JoinSet;

use super::{
    etag_md5, multipart_etag, Body, CompletedPart, ErrorKind, PartData, PartSlot, PutOptions,
    PutResult, Store, StoreError, Upload,
};

/// One part the store has.
#[derive(Debug, Clone)]
struct PartDone {
    number: u32,
    etag: String,
    size: u64,
    md5: Option<[u8; 16]>,
}

/// How each part's arrival at the store is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartCheck {
    /// Not at all: the caller trusts the transport (the dump, writing its own bytes).
    Nothing,
    /// Each part's MD5 is computed as it streams and compared with the ETag the store
    /// returns; [`Uploaded::composite_etag`] is that of the bytes sent.
    Md5,
    /// The store's part ETags are taken as the parts' MD5s (S3, Ceph RGW, s3s-fs and moto
    /// return them for unencrypted parts), and [`Uploaded::composite_etag`] is theirs: a
    /// caller that compares it with a source's multipart ETag has proved every byte the
    /// store holds without hashing any itself. Hashing each byte here was half the sync's
    /// CPU on large copies (perf: `md5_compress` 48 % of its samples, 768 MiB s3s-fs to
    /// s3s-fs).
    StoreEtags,
}

/// An upload receiving parts.
pub struct PartWriter {
    store: Store,
    upload: Arc<Upload>,
    running: JoinSet<Result<PartDone, StoreError>>,
    max_in_flight: usize,
    check: PartCheck,
    next: u32,
    offset: u64,
    done: Vec<PartDone>,
}

impl PartWriter {
    /// Start a multipart upload of `key`, each part checked as `check` says.
    pub async fn start(
        store: Store,
        key: &str,
        options: &PutOptions,
        max_in_flight: usize,
        check: PartCheck,
    ) -> Result<PartWriter, StoreError> {
        let upload = store.create_multipart(key, options).await?;
        Ok(PartWriter {
            store,
            upload: Arc::new(upload),
            running: JoinSet::new(),
            max_in_flight: max_in_flight.max(1),
            check,
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
        let (store, upload, check) = (self.store.clone(), self.upload.clone(), self.check);
        self.running.spawn(crate::task::scoped(async move {
            let body = body.await?;
            upload_one(store, upload, slot, body, check).await
        }));
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
                hashed: self.check == PartCheck::Md5,
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
    check: PartCheck,
) -> Result<PartDone, StoreError> {
    let size = body.len();
    // With Md5, in memory: send Content-MD5 so the store itself refuses damaged bytes, and
    // hash what streams past to compare with the ETag the store returns.
    let (body, content_md5, tap) = match check {
        PartCheck::Md5 => {
            let content_md5 = body.as_bytes().map(|b| {
                use md5::{Digest, Md5};
                <[u8; 16]>::from(Md5::digest(b))
            });
            let (body, tap) = body.tap_md5();
            (body, content_md5, Some(tap))
        }
        _ => (body, None, None),
    };
    let part = PartData {
        slot,
        body,
        content_md5,
    };
    let etag = store.upload_part(&upload, part).await?;
    let md5 = match tap {
        Some(tap) => Some(sent_md5(tap.digest(), &etag, slot.number, &upload.key)?),
        None if check == PartCheck::StoreEtags => etag_md5(&etag),
        None => None,
    };
    Ok(PartDone {
        number: slot.number,
        etag,
        size,
        md5,
    })
}

/// The MD5 `md5` of part `number`'s bytes as sent, when the store's `etag` does not say
/// otherwise (an ETag that is no MD5 says nothing).
fn sent_md5(md5: [u8; 16], etag: &str, number: u32, key: &str) -> Result<[u8; 16], StoreError> {
    if etag_md5(etag).is_some_and(|stored| stored != md5) {
        return Err(StoreError::new(
            ErrorKind::ChecksumMismatch,
            format!(
                "part {number} of {key}: the store's ETag {etag} is not the MD5 {} of the bytes sent",
                hex::encode(md5)
            ),
        ));
    }
    Ok(md5)
}

/// Every part uploaded; the object is not visible yet.
pub struct Uploaded {
    store: Store,
    upload: Upload,
    parts: Vec<PartDone>,
    hashed: bool,
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

    /// `md5(concat(part md5s))-N`: of the bytes sent ([`PartCheck::Md5`]) or of the
    /// store's part ETags ([`PartCheck::StoreEtags`]; `None` if one is no MD5).
    pub fn composite_etag(&self) -> Option<String> {
        let md5s: Option<Vec<[u8; 16]>> = self.parts.iter().map(|p| p.md5).collect();
        md5s.map(|m| multipart_etag(&m))
    }

    /// True when each part was hashed here and matched the store's ETag
    /// ([`PartCheck::Md5`]).
    pub fn hashed(&self) -> bool {
        self.hashed
    }

    /// Make the object visible. A completion whose reply was lost may have taken effect
    /// (its retry then meets 412, or 403, 404 or 500 for an upload the store no longer
    /// has, measured on moto, s3s-fs and Ceph RGW 16): it is settled by reading the object
    /// back, ours when it has our size and our parts' composite ETag.
    pub async fn complete(self) -> Result<PutResult, StoreError> {
        let size = self.size();
        let ours = self.stored_etag();
        let (store, key) = (self.store.clone(), self.upload.key.clone());
        let parts: Vec<CompletedPart> = self
            .parts
            .iter()
            .map(|p| CompletedPart {
                number: p.number,
                etag: p.etag.clone(),
            })
            .collect();
        match self.store.complete(self.upload, &parts, size).await {
            Ok(done) => Ok(done),
            Err(e) => settle(&store, &key, (size, ours), e).await,
        }
    }

    /// The composite ETag of the parts as the store acknowledged them (their ETags are
    /// their MD5s on every store we know): what the completed object must have.
    fn stored_etag(&self) -> Option<String> {
        let md5s: Option<Vec<[u8; 16]>> = self.parts.iter().map(|p| etag_md5(&p.etag)).collect();
        md5s.map(|m| multipart_etag(&m))
    }

    /// Throw it away.
    pub async fn abort(self) {
        self.store.abort(self.upload).await;
    }
}

/// `error`, unless the object at `key` is the one a lost reply was about: `size` bytes
/// with the ETag `ours`.
pub async fn settle(
    store: &Store,
    key: &str,
    (size, ours): (u64, Option<String>),
    error: StoreError,
) -> Result<PutResult, StoreError> {
    let Some(ours) = ours else {
        return Err(error);
    };
    if crate::mutant::active("lost-reply-fails") {
        return Err(error);
    }
    match store.head(key).await {
        Ok(meta) if meta.size == size && meta.etag.as_deref() == Some(ours.as_str()) => {
            tracing::info!(key, error = %error, "the write's reply was lost, but the object in the store is the one written: settled by reading it back");
            Ok(PutResult { etag: meta.etag })
        }
        _ => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GetOptions, MemoryStore};
    use md5::{Digest, Md5};

    const MIB: usize = 1024 * 1024;

    fn data(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    async fn write(store: &Store, key: &str, parts: &[Vec<u8>], in_flight: usize) -> Uploaded {
        let mut writer = PartWriter::start(
            store.clone(),
            key,
            &PutOptions::default(),
            in_flight,
            PartCheck::Md5,
        )
        .await
        .unwrap();
        for part in parts {
            let body = Body::from_bytes(part.clone());
            writer
                .put(part.len() as u64, async move { Ok(body) })
                .await
                .unwrap();
        }
        writer.finish().await.unwrap()
    }

    #[tokio::test]
    async fn parts_of_odd_sizes_make_the_object_and_its_composite_etag() {
        let store: Store = Arc::new(MemoryStore::new());
        let parts = vec![data(5 * MIB, 1), data(7 * MIB, 2), data(1, 3)];
        let uploaded = write(&store, "d/t.csv.gz", &parts, 2).await;
        assert_eq!(
            uploaded.part_sizes(),
            vec![5 * MIB as u64, 7 * MIB as u64, 1]
        );
        let md5s: Vec<[u8; 16]> = parts.iter().map(|p| Md5::digest(p).into()).collect();
        let expected = multipart_etag(&md5s);
        assert_eq!(
            uploaded.composite_etag().as_deref(),
            Some(expected.as_str())
        );
        assert!(
            store.head("d/t.csv.gz").await.is_err(),
            "not visible before complete"
        );
        let done = uploaded.complete().await.unwrap();
        assert_eq!(
            done.etag.as_deref(),
            Some(expected.as_str()),
            "the store agrees"
        );
        let got = store
            .get("d/t.csv.gz", GetOptions::default())
            .await
            .unwrap();
        assert_eq!(got.body.collect().await.unwrap(), parts.concat());
        assert!(store.pending_uploads("").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_failed_part_aborts_the_upload_and_nothing_is_visible() {
        let store: Store = Arc::new(MemoryStore::new());
        let mut writer = PartWriter::start(
            store.clone(),
            "k",
            &PutOptions::default(),
            2,
            PartCheck::Md5,
        )
        .await
        .unwrap();
        let good = Body::from_bytes(data(5 * MIB, 4));
        writer
            .put(5 * MIB as u64, async move { Ok(good) })
            .await
            .unwrap();
        let failing = async { Err(StoreError::new(ErrorKind::Unreachable, "source gone")) };
        writer.put(3, failing).await.unwrap();
        let err = writer.finish().await.err().expect("the part's failure");
        assert_eq!(err.kind(), ErrorKind::Unreachable);
        assert!(
            store.pending_uploads("").await.unwrap().is_empty(),
            "aborted"
        );
        assert!(store.head("k").await.is_err());
    }

    #[tokio::test]
    async fn a_short_part_before_the_last_is_refused_at_complete_as_s3_does() {
        let store: Store = Arc::new(MemoryStore::new());
        let uploaded = write(&store, "k", &[data(MIB, 5), data(MIB, 6)], 1).await;
        let err = uploaded.complete().await.expect_err("EntityTooSmall");
        assert!(err.to_string().contains("EntityTooSmall"), "{err}");
        assert!(
            store.pending_uploads("").await.unwrap().is_empty(),
            "and nothing pending"
        );
    }
}
