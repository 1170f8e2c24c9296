//! A store whose writes are supervised: before anything becomes visible or is removed, and
//! before an upload starts, a [`Guard`] says whether the run may still write (a run that
//! lost its lease may not) and may do what must come first (withdraw a day's manifest,
//! mark an upload as the run's own); it is told when each upload ends. Reads pass
//! straight through.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::StreamExt;

use super::{
    Body, CompletedPart, EntryStream, GetOptions, GetResult, ObjectMeta, ObjectStore, PageStream,
    PartData, PendingUpload, PutOptions, Store, StoreError, StoreTraits, Stored, Upload,
};

/// What a [`Guarded`] store consults.
#[async_trait]
pub trait Guard: Send + Sync + std::fmt::Debug {
    /// Before the object at `key` is written, completed or deleted (something visible
    /// changes): an error stops that write.
    async fn before_change(&self, key: &str) -> Result<(), StoreError>;

    /// Before a multipart upload to `key` is started (nothing visible yet): an error stops
    /// it. By default the same check as [`Guard::before_change`]: a lease or a claim
    /// fences both alike.
    async fn before_upload(&self, key: &str) -> Result<(), StoreError> {
        self.before_change(key).await
    }

    /// A multipart upload was completed or aborted.
    async fn upload_ended(&self, _key: &str, _id: &str) {}
}

/// `inner`, with every write asked of `guard` first.
#[derive(Debug)]
pub struct Guarded {
    inner: Store,
    guard: Arc<dyn Guard>,
}

/// `inner` supervised by `guard`.
pub fn guarded(inner: Store, guard: Arc<dyn Guard>) -> Store {
    Arc::new(Guarded { inner, guard })
}

#[async_trait]
impl ObjectStore for Guarded {
    fn describe(&self, key: &str) -> String {
        self.inner.describe(key)
    }

    fn traits(&self) -> StoreTraits {
        self.inner.traits()
    }

    fn now(&self) -> i64 {
        self.inner.now()
    }

    async fn probe(&self, write: bool) -> Result<(), StoreError> {
        self.inner.probe(write).await
    }

    fn list(&self, under: &str) -> PageStream {
        self.inner.list(under)
    }

    fn list_folder(&self, under: &str) -> EntryStream {
        self.inner.list_folder(under)
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        self.inner.head(key).await
    }

    async fn part_size(&self, key: &str, number: u32) -> Result<Option<u64>, StoreError> {
        self.inner.part_size(key, number).await
    }

    async fn get(&self, key: &str, options: GetOptions) -> Result<GetResult, StoreError> {
        self.inner.get(key, options).await
    }

    async fn put(&self, key: &str, body: Body, options: &PutOptions) -> Stored {
        // A body in memory goes at once: ask first. A streamed one is asked just before
        // its last bytes go, the moment the object can become visible: a run paused midway
        // is still fenced, and a body refused on its way (a failed check) changes nothing.
        if body.as_bytes().is_some() || body.is_empty() {
            self.guard.before_change(key).await?;
            return self.inner.put(key, body, options).await;
        }
        let refusal = Arc::new(Mutex::new(None));
        let body = ask_before_last(body, self.guard.clone(), key, refusal.clone());
        let put = self.inner.put(key, body, options).await;
        match refusal.lock().ok().and_then(|mut r| r.take()) {
            Some(refused) => Err(refused),
            None => put,
        }
    }

    async fn create_multipart(
        &self,
        key: &str,
        options: &PutOptions,
    ) -> Result<Upload, StoreError> {
        self.guard.before_upload(key).await?;
        self.inner.create_multipart(key, options).await
    }

    async fn upload_part(&self, upload: &Upload, part: PartData) -> Result<String, StoreError> {
        self.inner.upload_part(upload, part).await
    }

    async fn complete(&self, upload: Upload, parts: &[CompletedPart], size: u64) -> Stored {
        let (key, id) = (upload.key.clone(), upload.id.clone());
        let done = match self.guard.before_change(&key).await {
            Ok(()) => self.inner.complete(upload, parts, size).await,
            Err(e) => {
                self.inner.abort(upload).await;
                Err(e)
            }
        };
        self.guard.upload_ended(&key, &id).await;
        done
    }

    async fn abort(&self, upload: Upload) {
        let (key, id) = (upload.key.clone(), upload.id.clone());
        self.inner.abort(upload).await;
        self.guard.upload_ended(&key, &id).await;
    }

    async fn pending_uploads(&self, under: &str) -> Result<Vec<PendingUpload>, StoreError> {
        self.inner.pending_uploads(under).await
    }

    async fn abort_pending(&self, upload: &PendingUpload) -> Result<(), StoreError> {
        // A dead run's upload: nothing visible changes, and it is no upload of this run's.
        self.inner.abort_pending(upload).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.guard.before_change(key).await?;
        self.inner.delete(key).await
    }

    async fn persist(&self) -> Result<(), StoreError> {
        self.inner.persist().await
    }

    async fn delete_if_match(&self, key: &str, etag: &str) -> Result<(), StoreError> {
        self.guard.before_change(key).await?;
        self.inner.delete_if_match(key, etag).await
    }
}

/// `body`, its last chunk held back until `guard` allows the change of `key` (a refusal
/// is left in `refusal` and ends the body with it).
fn ask_before_last(
    body: Body,
    guard: Arc<dyn Guard>,
    key: &str,
    refusal: Arc<Mutex<Option<StoreError>>>,
) -> Body {
    let (len, key) = (body.len(), key.to_string());
    let mut seen = 0u64;
    let stream = body.into_stream().then(move |chunk| {
        seen += chunk.as_ref().map(|c| c.len() as u64).unwrap_or(0);
        let last = seen >= len;
        let (guard, key, refusal) = (guard.clone(), key.clone(), refusal.clone());
        async move {
            let chunk = chunk?;
            if last {
                if let Err(e) = guard.before_change(&key).await {
                    if let Ok(mut r) = refusal.lock() {
                        *r = Some(e.clone());
                    }
                    return Err(e);
                }
            }
            Ok(chunk)
        }
    });
    Body::from_stream(len, stream.boxed())
}
