//! A process's view of a store: the shared in-memory store, on its own (skewed) estimate
//! of the store's clock, its requests slowed and failed as its [`Faults`] say (refused
//! before they take effect, or their replies lost after they did). Every change is traced
//! and followed by the invariants' check.

use std::sync::Arc;

use async_trait::async_trait;
use egress_store::{
    Body, CompletedPart, Condition, EntryStream, ErrorKind, GetOptions, GetResult, ObjectMeta,
    ObjectStore, PageStream, PartData, PendingUpload, PutOptions, PutResult, StoreError,
    StoreTraits, Upload,
};

use crate::check;
use crate::world::{Dice, Faults, Side, World};

/// The end of a write: the object written, or why not.
type Written = Result<PutResult, StoreError>;

/// One process's view of one store.
pub struct View {
    world: Arc<World>,
    side: Side,
    proc: usize,
    name: String,
    faults: Faults,
    skew: i64,
    dice: Arc<Dice>,
    lost_once: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "View({} by {})", self.side.label(), self.name)
    }
}

impl View {
    /// Process `proc`'s view of `side`, its faults thrown with `dice`.
    pub fn new(world: Arc<World>, side: Side, proc: usize, dice: Arc<Dice>) -> View {
        let (name, faults, skew) = world.with_proc(proc, |p| (p.name.clone(), p.faults, p.skew));
        View {
            world,
            side,
            proc,
            name,
            faults,
            skew,
            dice,
            lost_once: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn inner(&self) -> &egress_store::MemoryStore {
        self.world.store(self.side)
    }

    fn key(&self, key: &str) -> String {
        format!("{}:{key}", self.side.label())
    }

    /// Send a request: once sent it goes on, whatever becomes of its process (a frozen or
    /// killed process's request already on the wire still lands), so it runs outside the
    /// process's gate; the process sees the reply when it runs again.
    async fn send<T, F>(&self, request: F) -> T
    where
        T: Send + 'static,
        F: std::future::Future<Output = T> + Send + 'static,
    {
        self.request(false, request).await
    }

    /// [`View::send`] a request that changes the store: the invariants are checked the
    /// moment it lands.
    async fn change<T, F>(&self, request: F) -> T
    where
        T: Send + 'static,
        F: std::future::Future<Output = T> + Send + 'static,
    {
        self.request(true, request).await
    }

    async fn request<T, F>(&self, writes: bool, request: F) -> T
    where
        T: Send + 'static,
        F: std::future::Future<Output = T> + Send + 'static,
    {
        let delay = self.dice.delay(self.faults.max_delay_ms);
        let (world, proc, side) = (self.world.clone(), self.proc, self.side);
        let wire = tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let reply = request.await;
            if writes {
                check::after_write(&world, proc, side, "");
            }
            reply
        });
        match wire.await {
            Ok(reply) => reply,
            Err(_) => std::future::pending().await,
        }
    }

    /// Whether a request is refused before it takes effect.
    async fn arrive(&self, what: &str, key: &str) -> Result<(), StoreError> {
        if self.dice.chance(self.faults.refused) {
            self.world.fault(Some(self.proc));
            self.world.note(
                &self.name,
                format!("{what} {} -> 503 (injected, no effect)", self.key(key)),
            );
            return Err(StoreError::new(
                ErrorKind::Unreachable,
                format!("503 SlowDown on {} (injected)", self.key(key)),
            ));
        }
        Ok(())
    }

    /// After a write took effect: trace it, check the invariants, and maybe lose its reply
    /// (`lost`: the error the caller then sees, as the SDK's retry would meet it).
    fn landed<T>(
        &self,
        what: &str,
        key: &str,
        done: Result<T, StoreError>,
        lost: ErrorKind,
    ) -> Result<T, StoreError> {
        let line = match &done {
            Ok(_) => format!("{what} {} ok", self.key(key)),
            Err(e) => format!("{what} {} -> {:?}", self.key(key), e.kind()),
        };
        self.world.note(&self.name, line);
        let scripted = self.faults.lose_first.is_some_and(|end| key.ends_with(end))
            && !self
                .lost_once
                .swap(true, std::sync::atomic::Ordering::SeqCst);
        if done.is_ok() && (scripted || self.dice.chance(self.faults.lost_reply)) {
            self.world.fault(Some(self.proc));
            self.world.note(
                &self.name,
                format!("  reply lost: the caller sees {lost:?}"),
            );
            return Err(StoreError::new(
                lost,
                format!("the reply to {what} {} was lost (injected)", self.key(key)),
            ));
        }
        done
    }
}

#[async_trait]
impl ObjectStore for View {
    fn describe(&self, key: &str) -> String {
        self.key(key)
    }

    fn traits(&self) -> StoreTraits {
        self.inner().traits()
    }

    fn now(&self) -> i64 {
        self.inner().now() + self.skew
    }

    async fn probe(&self, _write: bool) -> Result<(), StoreError> {
        Ok(())
    }

    fn list(&self, under: &str) -> PageStream {
        self.inner().list(under)
    }

    fn list_folder(&self, under: &str) -> EntryStream {
        self.inner().list_folder(under)
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        self.arrive("HEAD", key).await?;
        let (store, key) = (self.inner().clone(), key.to_string());
        self.send(async move { store.head(&key).await }).await
    }

    async fn part_size(&self, key: &str, number: u32) -> Result<Option<u64>, StoreError> {
        self.arrive("HEAD part", key).await?;
        let (store, key) = (self.inner().clone(), key.to_string());
        self.send(async move { store.part_size(&key, number).await })
            .await
    }

    async fn get(&self, key: &str, options: GetOptions) -> Result<GetResult, StoreError> {
        self.arrive("GET", key).await?;
        let (store, key) = (self.inner().clone(), key.to_string());
        self.send(async move { store.get(&key, options).await })
            .await
    }

    async fn put(&self, key: &str, body: Body, options: &PutOptions) -> Written {
        self.arrive("PUT", key).await?;
        let bytes = body.collect().await?;
        check::before_write(&self.world, self.proc, self.side, key, Some(&bytes));
        let (store, owned, opts) = (self.inner().clone(), key.to_string(), options.clone());
        let done = self
            .change(async move { store.put(&owned, Body::from_bytes(bytes), &opts).await })
            .await;
        // A conditional write whose reply is lost is retried by the SDK, which meets 412.
        let lost = match options.condition {
            Condition::None => ErrorKind::Unreachable,
            _ => ErrorKind::PreconditionFailed,
        };
        let what = match &options.condition {
            Condition::None => "PUT",
            Condition::IfAbsent => "PUT if-absent",
            Condition::IfMatch(_) => "PUT if-match",
        };
        self.landed(what, key, done, lost)
    }

    async fn create_multipart(
        &self,
        key: &str,
        options: &PutOptions,
    ) -> Result<Upload, StoreError> {
        self.arrive("CREATE-UPLOAD", key).await?;
        let (store, key, options) = (self.inner().clone(), key.to_string(), options.clone());
        self.send(async move { store.create_multipart(&key, &options).await })
            .await
    }

    async fn upload_part(&self, upload: &Upload, part: PartData) -> Result<String, StoreError> {
        self.arrive("UPLOAD-PART", &upload.key).await?;
        self.inner().upload_part(upload, part).await
    }

    async fn complete(&self, upload: Upload, parts: &[CompletedPart], size: u64) -> Written {
        let key = upload.key.clone();
        if let Err(e) = self.arrive("COMPLETE", &key).await {
            // As S3Store does with a failed completion: the upload is aborted.
            self.inner().abort(upload).await;
            return Err(e);
        }
        check::before_write(&self.world, self.proc, self.side, &key, None);
        let (store, parts) = (self.inner().clone(), parts.to_vec());
        let done = self
            .change(async move { store.complete(upload, &parts, size).await })
            .await;
        // The SDK's retry of a completed upload meets NoSuchUpload (or 403, 500).
        self.landed("COMPLETE", &key, done, ErrorKind::NotFound)
    }

    async fn abort(&self, upload: Upload) {
        self.inner().abort(upload).await
    }

    async fn pending_uploads(&self, under: &str) -> Result<Vec<PendingUpload>, StoreError> {
        self.arrive("LIST-UPLOADS", under).await?;
        self.inner().pending_uploads(under).await
    }

    async fn abort_pending(&self, upload: &PendingUpload) -> Result<(), StoreError> {
        self.arrive("ABORT", &upload.key).await?;
        let (store, upload) = (self.inner().clone(), upload.clone());
        self.change(async move { store.abort_pending(&upload).await })
            .await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.arrive("DELETE", key).await?;
        check::before_write(&self.world, self.proc, self.side, key, None);
        let (store, owned) = (self.inner().clone(), key.to_string());
        let done = self.change(async move { store.delete(&owned).await }).await;
        self.landed("DELETE", key, done, ErrorKind::Unreachable)
    }

    async fn delete_if_match(&self, key: &str, etag: &str) -> Result<(), StoreError> {
        self.arrive("DELETE if-match", key).await?;
        check::before_write(&self.world, self.proc, self.side, key, None);
        let (store, owned, etag) = (self.inner().clone(), key.to_string(), etag.to_string());
        let done = self
            .change(async move { store.delete_if_match(&owned, &etag).await })
            .await;
        self.landed("DELETE if-match", key, done, ErrorKind::PreconditionFailed)
    }
}
