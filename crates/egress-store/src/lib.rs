//! The object store both egress programs write through, modelled on the `object_store`
//! crate of apache/arrow-rs: one trait, [`ObjectStore`], over an S3 bucket and prefix
//! ([`S3Store`]), a local directory ([`LocalStore`]) and memory ([`MemoryStore`], which
//! follows S3's ETag and multipart rules, for tests). Keys are relative to the store's root
//! (the prefix or the directory). This crate knows nothing of its callers; nothing outside
//! it calls the AWS SDK.
//!
//! Around the trait: [`PartWriter`] (a multipart upload fed part by part), [`Guarded`] (a
//! store whose writes a [`Guard`] supervises), and [`stop`] (what a stopped process must
//! undo: uploads in flight, temporary files).

mod body;
mod error;
mod guard;
pub mod key;
mod local;
mod memory;
pub mod mutant;
mod s3;
mod secret;
pub mod stop;
pub mod task;
mod walk;
mod writer;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;

pub use body::{Body, ByteStream};
pub use error::{chain, ErrorKind, StoreError};
pub use guard::{guarded, Guard, Guarded};
pub use local::{Durability, LocalOptions, LocalStore};
pub use memory::{Clock, MemoryStore};
pub use s3::{is_aws_host, S3Settings, S3Store};
pub use secret::{redact_urls, Secret};
pub use walk::list_parallel;
pub use writer::{settle, PartCheck, PartWriter, Uploaded};

/// One object as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Key relative to the store's root (`2024-01-01/t.csv.gz`).
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// ETag without quotes; `None` when the listing carries none (local files; s3s-fs for
    /// multipart objects).
    pub etag: Option<String>,
    /// Last-Modified, whole seconds since the epoch (stores differ below a second).
    pub modified: i64,
    /// The sub-second part of Last-Modified where the listing gives one (0 otherwise).
    pub modified_nanos: u32,
}

/// Headers and user metadata that travel with an object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    /// Content-Type.
    pub content_type: Option<String>,
    /// Content-Encoding.
    pub content_encoding: Option<String>,
    /// Cache-Control.
    pub cache_control: Option<String>,
    /// Content-Disposition.
    pub content_disposition: Option<String>,
    /// User metadata (`x-amz-meta-*`), names in lower case.
    pub metadata: BTreeMap<String, String>,
}

/// What HEAD or GET says about an object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Size of the whole object.
    pub size: u64,
    /// ETag without quotes.
    pub etag: Option<String>,
    /// Last-Modified, whole seconds.
    pub modified: i64,
    /// Headers and user metadata.
    pub attributes: Attributes,
    /// Encrypted with KMS or a customer key: the ETag is then not an MD5 of the content.
    pub etag_not_md5: bool,
    /// Parts of a multipart object, when the reply says (`x-amz-mp-parts-count`).
    pub parts_count: Option<u32>,
}

/// Which bytes of an object to read.
#[derive(Debug, Clone, Default)]
pub struct GetOptions {
    /// `len` bytes from `offset`; `None` for the whole object.
    pub range: Option<(u64, u64)>,
    /// One part of a multipart object (`?partNumber=N`), where the store honours it.
    pub part_number: Option<u32>,
    /// Fail with [`ErrorKind::PreconditionFailed`] unless the object still has this ETag.
    pub if_match: Option<String>,
}

/// An object being read.
#[derive(Debug)]
pub struct GetResult {
    /// The object's metadata (its whole size, even for a range).
    pub meta: ObjectMeta,
    /// First byte of `body` within the object.
    pub offset: u64,
    /// The bytes asked for.
    pub body: Body,
}

/// When a write may happen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Condition {
    /// Always.
    #[default]
    None,
    /// Only if no object has the key (`If-None-Match: *`).
    IfAbsent,
    /// Only if the object still has this ETag (`If-Match`).
    IfMatch(String),
}

/// How to write an object.
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    /// Headers and user metadata.
    pub attributes: Attributes,
    /// The body's MD5: the store refuses the write if the bytes differ.
    pub content_md5: Option<[u8; 16]>,
    /// Conditional write.
    pub condition: Condition,
    /// Last-Modified to give the object where the store lets us (a local file's mtime).
    pub modified: Option<i64>,
}

/// What a write produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutResult {
    /// The new object's ETag.
    pub etag: Option<String>,
}

/// A multipart upload in progress; pass it to [`ObjectStore::complete`] or
/// [`ObjectStore::abort`].
#[derive(Debug)]
pub struct Upload {
    /// Key relative to the store's root.
    pub key: String,
    /// The store's id for it.
    pub id: String,
    modified: Option<i64>,
    /// The condition of the write that makes it visible ([`Condition::IfAbsent`]: create
    /// only), honoured at [`ObjectStore::complete`] where the store honours one.
    condition: Condition,
    ticket: stop::Ticket,
}

impl Upload {
    /// The upload `id` of `key`, to be made visible as `options` ask; `ticket` is what a
    /// stop aborts it by. One constructor, so that every store carries the options alike.
    pub(crate) fn new(key: &str, id: String, options: &PutOptions, ticket: stop::Ticket) -> Self {
        Upload {
            key: key.to_string(),
            id,
            modified: options.modified,
            condition: options.condition.clone(),
            ticket,
        }
    }
}

/// One uploaded part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletedPart {
    /// 1-based part number.
    pub number: u32,
    /// The ETag the store gave the part.
    pub etag: String,
}

/// Where a part goes: its number and its first byte in the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartSlot {
    /// 1-based part number.
    pub number: u32,
    /// Offset of its first byte in the object.
    pub offset: u64,
}

/// One part on its way: where it goes, its bytes, and their MD5 when the caller knows it
/// (the store then refuses bytes that do not match).
#[derive(Debug)]
pub struct PartData {
    /// Where the part goes.
    pub slot: PartSlot,
    /// Its bytes.
    pub body: Body,
    /// The MD5 the bytes must have (sent as `Content-MD5`).
    pub content_md5: Option<[u8; 16]>,
}

/// An upload some run started and nobody completed or aborted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingUpload {
    /// Key relative to the store's root.
    pub key: String,
    /// Upload id.
    pub id: String,
    /// When it was started, seconds since the epoch.
    pub initiated: i64,
}

/// What a store can be relied on to do, for the sync's comparisons and `--check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreTraits {
    /// Objects keep the Last-Modified we write ([`PutOptions::modified`]): a local file.
    pub keeps_modified: bool,
    /// Objects keep user metadata ([`Attributes::metadata`]).
    pub keeps_metadata: bool,
}

/// A page of a listing, in key (UTF-8 byte) order.
pub type PageStream = BoxStream<'static, Result<Vec<ObjectInfo>, StoreError>>;

/// What a listing of one folder holds: an object, or a sub-folder (its key prefix, ending
/// in `/`) that holds more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// An object directly in the folder.
    Object(ObjectInfo),
    /// A sub-folder: every key below it starts with this prefix.
    Folder(String),
}

impl Entry {
    /// The object's key or the folder's prefix: where the entry sorts.
    pub fn key(&self) -> &str {
        match self {
            Entry::Object(o) => &o.key,
            Entry::Folder(f) => f,
        }
    }
}

/// A page of one folder's listing, in key order (a folder sorts as its prefix, which is
/// where every key below it sorts).
pub type EntryStream = BoxStream<'static, Result<Vec<Entry>, StoreError>>;

/// What a write that makes an object visible (a put, a completed upload) returns: named,
/// because every store's signatures of both say it.
pub type Stored = Result<PutResult, StoreError>;

/// An S3 bucket and prefix, or a local directory.
#[async_trait]
pub trait ObjectStore: Send + Sync + std::fmt::Debug {
    /// Where `key` lives, for messages (`s3://bucket/prefix/key` or a path).
    fn describe(&self, key: &str) -> String;

    /// What the store keeps of what we write.
    fn traits(&self) -> StoreTraits;

    /// The store's clock now, in seconds since the epoch: what the `Last-Modified` times
    /// it returns are measured against (an S3 store's from the `Date` of its latest reply,
    /// a directory's from the local clock), so that ages of objects written by other hosts
    /// do not depend on this host's clock.
    fn now(&self) -> i64;

    /// Check that the store is there and usable before any work starts: the bucket exists
    /// and the credentials are accepted, or the directory exists (and, with `write`, can
    /// be written).
    async fn probe(&self, write: bool) -> Result<(), StoreError>;

    /// Every object under `under` (a key prefix ending in `/`, or empty for all), in
    /// pages, in key order.
    fn list(&self, under: &str) -> PageStream;

    /// The objects and sub-folders directly in the folder `under` (as [`ObjectStore::list`],
    /// but one level deep: S3's `/` delimiter), in pages, in key order.
    fn list_folder(&self, under: &str) -> EntryStream;

    /// An object's metadata.
    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError>;

    /// The size of part `number` of a multipart object: `Ok(None)` when the store does not
    /// reveal its parts (Ceph RGW 16 ignores `?partNumber`).
    async fn part_size(&self, key: &str, number: u32) -> Result<Option<u64>, StoreError>;

    /// Read an object, a byte range of it, or one of its parts, streamed.
    async fn get(&self, key: &str, options: GetOptions) -> Result<GetResult, StoreError>;

    /// Write a whole object in one request; it appears whole or not at all.
    async fn put(&self, key: &str, body: Body, options: &PutOptions) -> Stored;

    /// Start a multipart upload; nothing is visible until [`ObjectStore::complete`].
    async fn create_multipart(&self, key: &str, options: &PutOptions)
        -> Result<Upload, StoreError>;

    /// Upload one part; returns its ETag (the MD5 of its bytes on AWS S3, Ceph RGW, MinIO
    /// and the local store).
    async fn upload_part(&self, upload: &Upload, part: PartData) -> Result<String, StoreError>;

    /// Make the upload visible as one object of `size` bytes.
    async fn complete(&self, upload: Upload, parts: &[CompletedPart], size: u64) -> Stored;

    /// Throw the upload away (logged, never fails: the bucket's lifecycle rule is the
    /// last resort).
    async fn abort(&self, upload: Upload);

    /// Uploads under `under` nobody completed or aborted; [`ErrorKind::Unsupported`]
    /// where the store cannot list them.
    async fn pending_uploads(&self, under: &str) -> Result<Vec<PendingUpload>, StoreError>;

    /// Abort an upload found by [`ObjectStore::pending_uploads`].
    async fn abort_pending(&self, upload: &PendingUpload) -> Result<(), StoreError>;

    /// Delete an object (absent is fine).
    async fn delete(&self, key: &str) -> Result<(), StoreError>;

    /// Make everything written so far survive a crash of the machine: a directory flushes
    /// its filesystem (the last renames); an S3 write is durable once acknowledged, so
    /// there is nothing to do.
    async fn persist(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Delete an object only while it has this ETag (`If-Match`): another writer's newer
    /// version is left alone ([`ErrorKind::PreconditionFailed`]). Stores that ignore the
    /// condition delete whatever is there.
    async fn delete_if_match(&self, key: &str, etag: &str) -> Result<(), StoreError>;
}

/// A shared store.
pub type Store = Arc<dyn ObjectStore>;

/// The composite ETag of a multipart object whose parts have these MD5s, as AWS S3, Ceph
/// RGW and MinIO compute it: `md5(concat(part md5s))-N`.
pub fn multipart_etag(part_md5s: &[[u8; 16]]) -> String {
    use md5::{Digest, Md5};
    let mut h = Md5::new();
    for m in part_md5s {
        h.update(m);
    }
    format!("{}-{}", hex::encode(h.finalize()), part_md5s.len())
}

/// A multipart ETag's part count (`md5-N`), or `None` for a plain MD5.
pub fn etag_parts(etag: &str) -> Option<u32> {
    let (hash, parts) = etag.split_once('-')?;
    if is_md5_hex(hash) {
        parts.parse().ok()
    } else {
        None
    }
}

/// The MD5 a plain (single-part) ETag stands for.
pub fn etag_md5(etag: &str) -> Option<[u8; 16]> {
    if !is_md5_hex(etag) {
        return None;
    }
    let mut out = [0u8; 16];
    hex::decode_to_slice(etag, &mut out).ok()?;
    Some(out)
}

fn is_md5_hex(s: &str) -> bool {
    s.len() == 32 && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// Strip the quotes S3 puts around ETags; `None` for an empty one.
pub(crate) fn clean_etag(etag: Option<&str>) -> Option<String> {
    let e = etag?.trim().trim_matches('"');
    (!e.is_empty()).then(|| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etag_shapes() {
        assert_eq!(clean_etag(Some("\"abc\"")).as_deref(), Some("abc"));
        assert_eq!(clean_etag(Some("\"\"")), None);
        assert_eq!(etag_parts("0123456789abcdef0123456789abcdef-16"), Some(16));
        assert_eq!(etag_parts("0123456789abcdef0123456789abcdef"), None);
        assert!(etag_md5("0123456789abcdef0123456789abcdef").is_some());
        assert!(etag_md5("0123456789abcdef0123456789abcdef-2").is_none());
    }

    #[test]
    fn multipart_etag_is_md5_of_part_md5s() {
        use md5::{Digest, Md5};
        let parts: Vec<[u8; 16]> = [&b"part one"[..], b"part two"]
            .iter()
            .map(|p| Md5::digest(p).into())
            .collect();
        let mut both = Vec::new();
        both.extend_from_slice(&parts[0]);
        both.extend_from_slice(&parts[1]);
        assert_eq!(
            multipart_etag(&parts),
            format!("{}-2", hex::encode(Md5::digest(&both)))
        );
    }
}
