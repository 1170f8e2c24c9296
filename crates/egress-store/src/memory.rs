//! [`MemoryStore`]: objects in memory, following S3's rules where callers can tell: ETags
//! (a single PUT's is its MD5, a multipart object's `md5(concat(part MD5s))-N`), every part
//! but the last at least 5 MiB, `Content-MD5` and conditions checked, `?partNumber`
//! honoured, listings in pages in byte order. For unit tests of what is built on the trait
//! (the part writer, the sync's transfers) without a server; the contract suite holds it to
//! the same tests as the real stores.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use md5::{Digest, Md5};

use crate::error::{ErrorKind, StoreError};
use crate::{
    multipart_etag, stop, Attributes, Body, CompletedPart, Condition, Entry, EntryStream,
    GetOptions, GetResult, ObjectInfo, ObjectMeta, ObjectStore, PageStream, PartData,
    PendingUpload, PutOptions, PutResult, StoreTraits, Stored, Upload,
};

/// S3's smallest part but the last.
const MIN_PART: u64 = 5 * 1024 * 1024;

/// The store's clock: seconds since the epoch.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// A store in memory; clones share the objects.
#[derive(Clone)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
    page: usize,
    /// Whether PUT conditions are checked (a store that ignores them does not).
    conditions: bool,
    /// The smallest part but the last (S3's 5 MiB unless a test lowers it).
    min_part: u64,
    /// The store's clock (the system's unless a test gives its own).
    clock: Option<Clock>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("page", &self.page)
            .field("conditions", &self.conditions)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct State {
    objects: BTreeMap<String, Object>,
    uploads: HashMap<String, Pending>,
    next_id: u64,
}

#[derive(Debug, Clone)]
struct Object {
    data: Bytes,
    etag: String,
    modified: i64,
    attributes: Attributes,
    /// Part sizes of a multipart object.
    parts: Option<Vec<u64>>,
}

#[derive(Debug)]
struct Pending {
    key: String,
    initiated: i64,
    attributes: Attributes,
    parts: BTreeMap<u32, (Bytes, String)>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl MemoryStore {
    /// An empty store listing 1,000 keys a page, as S3 does.
    pub fn new() -> MemoryStore {
        MemoryStore {
            state: Arc::new(Mutex::new(State::default())),
            page: 1000,
            conditions: true,
            min_part: MIN_PART,
            clock: None,
        }
    }

    /// The same store, its time told by `clock` (a simulation's virtual time).
    pub fn with_clock(self, clock: Clock) -> MemoryStore {
        MemoryStore {
            clock: Some(clock),
            ..self
        }
    }

    /// The same store, accepting parts down to `bytes` (a simulation's small objects).
    pub fn with_min_part(self, bytes: u64) -> MemoryStore {
        MemoryStore {
            min_part: bytes,
            ..self
        }
    }

    /// Every object: its key, bytes and ETag (for a simulation's checks).
    pub fn objects(&self) -> Vec<(String, Bytes, String)> {
        self.with_state(|s| {
            s.objects
                .iter()
                .map(|(k, o)| (k.clone(), o.data.clone(), o.etag.clone()))
                .collect()
        })
    }

    fn now(&self) -> i64 {
        match &self.clock {
            Some(clock) => clock(),
            None => chrono::Utc::now().timestamp(),
        }
    }

    /// The same store, as a server that ignores PUT conditions would be (write anyway).
    pub fn ignoring_conditions(self) -> MemoryStore {
        MemoryStore {
            conditions: false,
            ..self
        }
    }

    /// An empty store listing `page` keys a page (to exercise paging with few keys).
    #[cfg(test)]
    pub(crate) fn with_page(page: usize) -> MemoryStore {
        MemoryStore {
            page,
            ..MemoryStore::new()
        }
    }

    fn with_state<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        match self.state.lock() {
            Ok(mut state) => f(&mut state),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    fn object(&self, key: &str) -> Result<Object, StoreError> {
        self.with_state(|s| s.objects.get(key).cloned())
            .ok_or_else(|| not_found(key))
    }
}

fn not_found(key: &str) -> StoreError {
    StoreError::new(ErrorKind::NotFound, format!("memory:{key} does not exist"))
}

fn md5_hex(data: &[u8]) -> String {
    hex::encode(Md5::digest(data))
}

/// The objects and sub-folders directly in the folder `under`, in key order.
fn folder(objects: &BTreeMap<String, Object>, under: &str) -> Vec<Entry> {
    let mut entries: Vec<Entry> = Vec::new();
    let below = objects
        .range::<str, _>((Bound::Included(under), Bound::Unbounded))
        .take_while(|(k, _)| k.starts_with(under));
    for (key, o) in below {
        let rest = &key[under.len()..];
        match rest.find('/') {
            Some(end) => {
                let sub = &key[..under.len() + end + 1];
                if entries.last().map(Entry::key) != Some(sub) {
                    entries.push(Entry::Folder(sub.to_string()));
                }
            }
            None => entries.push(Entry::Object(ObjectInfo {
                key: key.clone(),
                size: o.data.len() as u64,
                etag: Some(o.etag.clone()),
                modified: o.modified,
                modified_nanos: 0,
            })),
        }
    }
    entries
}

fn meta(o: &Object) -> ObjectMeta {
    ObjectMeta {
        size: o.data.len() as u64,
        etag: Some(o.etag.clone()),
        modified: o.modified,
        attributes: o.attributes.clone(),
        etag_not_md5: false,
        parts_count: o.parts.as_ref().map(|p| p.len() as u32),
    }
}

/// The bytes of `body`, checked against its length and, when given, its MD5.
async fn read_body(body: Body, content_md5: Option<[u8; 16]>) -> Result<Bytes, StoreError> {
    let len = body.len();
    let mut buf = BytesMut::with_capacity(len.min(64 << 20) as usize);
    let mut stream = body.into_stream();
    while let Some(chunk) = stream.next().await {
        buf.extend_from_slice(&chunk?);
    }
    let data = buf.freeze();
    if content_md5.is_some_and(|m| m != <[u8; 16]>::from(Md5::digest(&data))) {
        return Err(StoreError::new(
            ErrorKind::ChecksumMismatch,
            "BadDigest: the Content-MD5 does not match the bytes",
        ));
    }
    Ok(data)
}

fn check_condition(current: Option<&Object>, condition: &Condition) -> Result<(), StoreError> {
    let holds = match condition {
        Condition::None => true,
        Condition::IfAbsent => current.is_none(),
        Condition::IfMatch(etag) => current.is_some_and(|o| &o.etag == etag),
    };
    if holds {
        return Ok(());
    }
    Err(StoreError::new(
        ErrorKind::PreconditionFailed,
        "PreconditionFailed: the condition does not hold",
    ))
}

#[async_trait]
impl ObjectStore for MemoryStore {
    fn describe(&self, key: &str) -> String {
        format!("memory:{key}")
    }

    fn traits(&self) -> StoreTraits {
        StoreTraits {
            keeps_modified: false,
            keeps_metadata: true,
        }
    }

    fn now(&self) -> i64 {
        MemoryStore::now(self)
    }

    async fn probe(&self, _write: bool) -> Result<(), StoreError> {
        Ok(())
    }

    fn list(&self, under: &str) -> PageStream {
        let (store, under, page) = (self.clone(), under.to_string(), self.page);
        // The state is the last key listed (None before the first page).
        futures::stream::unfold(Some(None::<String>), move |state| {
            let (store, under) = (store.clone(), under.clone());
            async move {
                let after = state?;
                let start = match after {
                    Some(last) => Bound::Excluded(last),
                    None => Bound::Included(under.clone()),
                };
                let items: Vec<ObjectInfo> = store.with_state(|s| {
                    s.objects
                        .range::<String, _>((start, Bound::Unbounded))
                        .take_while(|(k, _)| k.starts_with(&under))
                        .take(page)
                        .map(|(k, o)| ObjectInfo {
                            key: k.clone(),
                            size: o.data.len() as u64,
                            etag: Some(o.etag.clone()),
                            modified: o.modified,
                            modified_nanos: 0,
                        })
                        .collect()
                });
                let last = items.last()?.key.clone();
                let next = (items.len() == page).then_some(Some(last));
                Some((Ok(items), next))
            }
        })
        .boxed()
    }

    fn list_folder(&self, under: &str) -> EntryStream {
        let entries = self.with_state(|s| folder(&s.objects, under));
        crate::walk::in_pages(std::future::ready(Ok(entries)), self.page)
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        Ok(meta(&self.object(key)?))
    }

    async fn part_size(&self, key: &str, number: u32) -> Result<Option<u64>, StoreError> {
        let object = self.object(key)?;
        Ok(match &object.parts {
            Some(parts) => parts.get(number.saturating_sub(1) as usize).copied(),
            None => (number == 1).then_some(object.data.len() as u64),
        })
    }

    async fn get(&self, key: &str, options: GetOptions) -> Result<GetResult, StoreError> {
        let object = self.object(key)?;
        if options.if_match.as_ref().is_some_and(|e| e != &object.etag) {
            return Err(StoreError::new(
                ErrorKind::PreconditionFailed,
                format!("PreconditionFailed: memory:{key} changed"),
            ));
        }
        let size = object.data.len() as u64;
        let (offset, len) = match (options.part_number, &object.parts) {
            (Some(n), Some(parts)) => {
                let i = n.saturating_sub(1) as usize;
                let len = *parts.get(i).ok_or_else(|| not_found(key))?;
                (parts[..i].iter().sum(), len)
            }
            _ => options.range.unwrap_or((0, size)),
        };
        let end = offset.saturating_add(len).min(size);
        let data = object.data.slice(offset.min(size) as usize..end as usize);
        Ok(GetResult {
            meta: meta(&object),
            offset,
            body: Body::from_bytes(data),
        })
    }

    async fn put(&self, key: &str, body: Body, options: &PutOptions) -> Stored {
        let data = read_body(body, options.content_md5).await?;
        let etag = md5_hex(&data);
        let object = Object {
            data,
            etag: etag.clone(),
            modified: self.now(),
            attributes: options.attributes.clone(),
            parts: None,
        };
        self.with_state(|s| {
            if self.conditions {
                check_condition(s.objects.get(key), &options.condition)?;
            }
            s.objects.insert(key.to_string(), object);
            Ok(PutResult { etag: Some(etag) })
        })
    }

    async fn create_multipart(
        &self,
        key: &str,
        options: &PutOptions,
    ) -> Result<Upload, StoreError> {
        let id = self.with_state(|s| {
            s.next_id += 1;
            let id = format!("upload-{}", s.next_id);
            let pending = Pending {
                key: key.to_string(),
                initiated: self.now(),
                attributes: options.attributes.clone(),
                parts: BTreeMap::new(),
            };
            s.uploads.insert(id.clone(), pending);
            id
        });
        Ok(Upload::new(key, id, options, stop::Ticket::none()))
    }

    async fn upload_part(&self, upload: &Upload, part: PartData) -> Result<String, StoreError> {
        let data = read_body(part.body, part.content_md5).await?;
        let etag = md5_hex(&data);
        self.with_state(|s| match s.uploads.get_mut(&upload.id) {
            Some(p) => {
                p.parts.insert(part.slot.number, (data, etag.clone()));
                Ok(etag)
            }
            None => Err(no_upload(&upload.key)),
        })
    }

    async fn complete(&self, upload: Upload, parts: &[CompletedPart], size: u64) -> Stored {
        let (min_part, now) = (self.min_part, self.now());
        let assembled = self.with_state(|s| {
            let pending = s
                .uploads
                .get(&upload.id)
                .ok_or_else(|| no_upload(&upload.key))?;
            let refused = match self.conditions {
                true => check_condition(s.objects.get(&upload.key), &upload.condition),
                false => Ok(()),
            };
            let assembled = refused.and_then(|()| assemble(pending, parts, (min_part, now)));
            let assembled = assembled.and_then(|object| {
                if object.data.len() as u64 == size {
                    return Ok(object);
                }
                Err(StoreError::new(
                    ErrorKind::ChecksumMismatch,
                    format!("{} bytes completed, {size} expected", object.data.len()),
                ))
            });
            // A refused completion leaves nothing behind (as S3Store aborts it).
            let object = assembled.inspect_err(|_| {
                s.uploads.remove(&upload.id);
            })?;
            let etag = object.etag.clone();
            s.uploads.remove(&upload.id);
            s.objects.insert(upload.key.clone(), object);
            Ok(etag)
        });
        stop::done(upload.ticket);
        Ok(PutResult {
            etag: Some(assembled?),
        })
    }

    async fn abort(&self, upload: Upload) {
        self.with_state(|s| s.uploads.remove(&upload.id));
        stop::done(upload.ticket);
    }

    async fn pending_uploads(&self, under: &str) -> Result<Vec<PendingUpload>, StoreError> {
        Ok(self.with_state(|s| {
            let mut out: Vec<PendingUpload> = s
                .uploads
                .iter()
                .filter(|(_, p)| p.key.starts_with(under))
                .map(|(id, p)| PendingUpload {
                    key: p.key.clone(),
                    id: id.clone(),
                    initiated: p.initiated,
                })
                .collect();
            out.sort_by(|a, b| (&a.key, &a.id).cmp(&(&b.key, &b.id)));
            out
        }))
    }

    async fn abort_pending(&self, upload: &PendingUpload) -> Result<(), StoreError> {
        self.with_state(|s| match s.uploads.remove(&upload.id) {
            Some(_) => Ok(()),
            None => Err(no_upload(&upload.key)),
        })
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.with_state(|s| s.objects.remove(key));
        Ok(())
    }

    async fn delete_if_match(&self, key: &str, etag: &str) -> Result<(), StoreError> {
        self.with_state(|s| match s.objects.get(key) {
            Some(o) if o.etag != etag => Err(StoreError::new(
                ErrorKind::PreconditionFailed,
                format!("PreconditionFailed: memory:{key} changed"),
            )),
            _ => {
                s.objects.remove(key);
                Ok(())
            }
        })
    }
}

fn no_upload(key: &str) -> StoreError {
    StoreError::new(
        ErrorKind::Unreachable,
        format!("NoSuchUpload: no upload in progress for memory:{key}"),
    )
}

/// The object `parts` make of `pending`, as S3 checks it: parts in ascending order, each
/// with the ETag it was given, every one but the last at least 5 MiB.
fn assemble(
    pending: &Pending,
    parts: &[CompletedPart],
    (min_part, modified): (u64, i64),
) -> Result<Object, StoreError> {
    let invalid = |why: String| StoreError::new(ErrorKind::ChecksumMismatch, why);
    if parts.is_empty() || parts.windows(2).any(|w| w[0].number >= w[1].number) {
        return Err(invalid("InvalidPartOrder: parts must ascend".into()));
    }
    let mut data = BytesMut::new();
    let (mut md5s, mut sizes) = (Vec::new(), Vec::new());
    for (i, part) in parts.iter().enumerate() {
        let (bytes, etag) = pending.parts.get(&part.number).ok_or_else(|| {
            invalid(format!(
                "InvalidPart: part {} was not uploaded",
                part.number
            ))
        })?;
        if etag != &part.etag {
            return Err(invalid(format!(
                "InvalidPart: part {} has another ETag",
                part.number
            )));
        }
        if i + 1 < parts.len() && (bytes.len() as u64) < min_part {
            return Err(StoreError::new(
                ErrorKind::Other,
                format!("EntityTooSmall: part {} is under 5 MiB", part.number),
            ));
        }
        md5s.push(<[u8; 16]>::from(Md5::digest(bytes)));
        sizes.push(bytes.len() as u64);
        data.extend_from_slice(bytes);
    }
    Ok(Object {
        data: data.freeze(),
        etag: multipart_etag(&md5s),
        modified,
        attributes: pending.attributes.clone(),
        parts: Some(sizes),
    })
}
