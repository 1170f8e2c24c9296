//! Copying one object so that the copy keeps the source's form, and checking it before it
//! becomes visible:
//!
//! - a single-part source (its ETag is its MD5) is one PUT whose body streams straight
//!   from the GET, with `Content-MD5` = that ETag: the destination itself refuses a
//!   damaged copy, and nothing is buffered;
//! - a multipart source is copied with the same part boundaries (from its folder's
//!   manifest, or `HEAD ?partNumber=N` where the store honours it), each part streamed
//!   from a ranged GET into UploadPart with its MD5 checked against the ETag the
//!   destination returns; the upload is completed only when the composite ETag equals the
//!   source's, so the copy carries the source's ETag;
//! - where the boundaries cannot be learned, or the source has no ETag (a local file), the
//!   parts are ours, each verified the same way, and the copy's metadata records the source.
//!
//! With a manifest (`--require-manifest`), the bytes must also have its SHA-256, checked
//! before anything is made visible and without holding an object in memory: a single PUT
//! holds back its last bytes until the hash matches, parts are streamed one at a time,
//! hashed in order, before the upload is completed. Only an object with no usable ETag
//! and at most `--multipart-threshold-mib` is read whole (to send its Content-MD5).

use std::sync::{Arc, Mutex};

use egress_store::{
    etag_md5, etag_parts, Body, ErrorKind, GetOptions, ObjectInfo, ObjectMeta, PartCheck,
    PartWriter, PutOptions, Store, StoreError,
};
use futures::StreamExt;
use md5::{Digest, Md5};
use sha2::Sha256;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::decide::Record;
use crate::manifests::Expected;

/// S3's largest single PUT.
const MAX_SINGLE_PUT: u64 = 5 * 1024 * 1024 * 1024;
/// Budget permits are KiB.
const PERMIT_BYTES: u64 = 1024;
/// What one streamed copy (a GET feeding a PUT) may hold in buffers, for sizing the number
/// of streams the memory budget allows.
const STREAM_BYTES: u64 = 512 * 1024;

/// How transfers are shaped, shared by every transfer of a run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Objects without a known MD5 up to this size are read into memory (to send their
    /// Content-MD5); larger ones are copied in parts.
    pub buffer_threshold: u64,
    /// Part size where the source's own layout is unknown.
    pub part_size: u64,
    /// Parts in flight per object.
    pub parts_in_flight: usize,
    /// Memory for objects held whole, in KiB permits.
    budget: Arc<Semaphore>,
    budget_permits: u32,
    /// Streams (GET feeding PUT) allowed at once.
    streams: Arc<Semaphore>,
}

impl Settings {
    /// Settings within a memory budget of `budget_bytes`.
    pub fn new(buffer_threshold: u64, part_size: u64, budget_bytes: u64) -> Settings {
        let budget_permits = (budget_bytes / PERMIT_BYTES).clamp(1, u32::MAX as u64) as u32;
        let streams = (budget_bytes / STREAM_BYTES).clamp(4, 4096) as usize;
        Settings {
            buffer_threshold,
            part_size,
            parts_in_flight: 4,
            budget: Arc::new(Semaphore::new(budget_permits as usize)),
            budget_permits,
            streams: Arc::new(Semaphore::new(streams)),
        }
    }

    async fn memory(&self, bytes: u64) -> Result<tokio::sync::SemaphorePermit<'_>, CopyError> {
        // An object larger than the whole budget still proceeds, alone.
        let permits = bytes
            .div_ceil(PERMIT_BYTES)
            .clamp(1, self.budget_permits as u64) as u32;
        self.budget
            .acquire_many(permits)
            .await
            .map_err(|_| closed())
    }

    /// `bytes` of the memory budget, held until the permit is dropped (a day's manifest
    /// on its way to the output).
    pub async fn hold(&self, bytes: u64) -> Option<OwnedSemaphorePermit> {
        let permits = bytes
            .div_ceil(PERMIT_BYTES)
            .clamp(1, self.budget_permits as u64) as u32;
        self.budget.clone().acquire_many_owned(permits).await.ok()
    }

    async fn stream(&self) -> Result<OwnedSemaphorePermit, CopyError> {
        self.streams
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| closed())
    }
}

fn closed() -> CopyError {
    CopyError::Store(StoreError::new(
        ErrorKind::Other,
        "the transfer pool is closed",
    ))
}

/// Both stores and the settings.
pub struct Stores {
    /// Where objects are read.
    pub source: Store,
    /// Where they are written.
    pub dest: Store,
    /// How.
    pub settings: Settings,
}

/// One object to copy.
#[derive(Debug, Clone)]
pub struct Item {
    /// The object as listed.
    pub object: ObjectInfo,
    /// What its manifest says it must be (`--require-manifest`).
    pub expected: Option<Expected>,
    /// Its part sizes, from its folder's manifest.
    pub part_sizes: Option<Vec<u64>>,
}

/// A finished copy.
#[derive(Debug, Clone)]
pub struct Copied {
    /// Bytes copied.
    pub bytes: u64,
    /// How the copy was checked.
    pub verified: &'static str,
}

/// Why a copy failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// A store operation failed (its kind says whether retrying can help).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The bytes are not what the folder's manifest says: retrying cannot help.
    #[error("{0}")]
    Manifest(String),
}

/// Copy `item`'s object.
pub async fn copy(t: &Stores, item: &Item) -> Result<Copied, CopyError> {
    let key = &item.object.key;
    let etag = match &item.object.etag {
        Some(e) => Some(e.clone()),
        None => t.source.head(key).await?.etag,
    };
    let single_part = etag.as_deref().and_then(etag_md5).is_some();
    let multipart = etag.as_deref().and_then(etag_parts).is_some();
    let size = item.object.size;
    if single_part && size <= MAX_SINGLE_PUT {
        return streamed_put(t, item).await;
    }
    // No usable ETag, and small enough to hold: read it, then PUT it with its MD5.
    if !multipart && size <= t.settings.buffer_threshold {
        return buffered_put(t, item).await;
    }
    let layout = source_layout(t, item, etag.as_deref()).await?;
    in_parts(t, item, layout).await
}

/// The version actually copied: the listed one, unless the read shows that the source
/// changed since it was listed.
fn copied_version(listed: &ObjectInfo, read: &ObjectMeta) -> ObjectInfo {
    match (&listed.etag, &read.etag) {
        (Some(l), Some(r)) if l != r => ObjectInfo {
            key: listed.key.clone(),
            size: read.size,
            etag: read.etag.clone(),
            modified: read.modified,
            modified_nanos: 0,
        },
        _ => listed.clone(),
    }
}

/// The destination's headers: the source's, its record, its time (kept by a local output).
pub(crate) fn dest_options(
    meta: &ObjectMeta,
    version: &ObjectInfo,
    content_md5: Option<[u8; 16]>,
) -> PutOptions {
    let mut attributes = meta.attributes.clone();
    Record::of(version).write_into(&mut attributes.metadata);
    PutOptions {
        attributes,
        content_md5,
        modified: Some(version.modified),
        ..Default::default()
    }
}

/// One PUT whose body streams from the GET. Checked against a manifest, the body holds
/// back its last bytes until their SHA-256 matches: a wrong object fails its PUT before
/// it can become visible, and nothing is held in memory.
async fn streamed_put(t: &Stores, item: &Item) -> Result<Copied, CopyError> {
    let key = &item.object.key;
    if let Some(expected) = item
        .expected
        .as_ref()
        .filter(|e| e.size != item.object.size)
    {
        return Err(manifest_mismatch(key, item.object.size, None, expected));
    }
    let _stream = t.settings.stream().await?;
    let got = t.source.get(key, GetOptions::default()).await?;
    let meta = got.meta;
    // The ETag is the content's MD5 unless a KMS or customer key encrypted it.
    let md5 = meta
        .etag
        .as_deref()
        .and_then(etag_md5)
        .filter(|_| !meta.etag_not_md5);
    let version = copied_version(&item.object, &meta);
    if let Some(expected) = item.expected.as_ref().filter(|_| item.object.size == 0) {
        check_manifest(key, 0, &hex::encode(Sha256::digest(b"")), expected)?;
    }
    let refused = Arc::new(Mutex::new(None));
    let body = match &item.expected {
        Some(expected) => checked_body(key, got.body, expected.clone(), refused.clone()),
        None => got.body,
    };
    let put = t
        .dest
        .put(key, body, &dest_options(&meta, &version, md5))
        .await;
    if let Some(why) = refused.lock().ok().and_then(|mut r| r.take()) {
        return Err(CopyError::Manifest(why));
    }
    put?;
    let verified = match (md5.is_some(), item.expected.is_some()) {
        (true, true) => "size+md5+manifest-sha256",
        (true, false) => "size+md5",
        (false, true) => "size+manifest-sha256",
        (false, false) => "size",
    };
    Ok(Copied {
        bytes: meta.size,
        verified,
    })
}

/// `body` hashed as it streams; its last chunk is replaced by an error unless the bytes
/// have the size and SHA-256 `expected` says (the reason is left in `refused`).
fn checked_body(
    key: &str,
    body: Body,
    expected: Expected,
    refused: Arc<Mutex<Option<String>>>,
) -> Body {
    let (len, key) = (body.len(), key.to_string());
    let mut sha = Sha256::new();
    let mut seen = 0u64;
    let stream = body.into_stream().map(move |chunk| {
        let chunk = chunk?;
        seen += chunk.len() as u64;
        sha2::Digest::update(&mut sha, &chunk);
        if seen < len {
            return Ok(chunk);
        }
        let digest = hex::encode(sha.clone().finalize());
        if seen == expected.size && digest == expected.sha256 {
            return Ok(chunk);
        }
        let why = manifest_mismatch(&key, seen, Some(&digest), &expected).to_string();
        if let Ok(mut r) = refused.lock() {
            *r = Some(why.clone());
        }
        Err(StoreError::new(ErrorKind::ChecksumMismatch, why))
    });
    Body::from_stream(len, stream.boxed())
}

async fn buffered_put(t: &Stores, item: &Item) -> Result<Copied, CopyError> {
    let _memory = t.settings.memory(item.object.size).await?;
    let got = t
        .source
        .get(&item.object.key, GetOptions::default())
        .await?;
    let meta = got.meta;
    let bytes = got.body.collect().await?;
    let md5: [u8; 16] = Md5::digest(&bytes).into();
    let mut verified = "size+md5";
    if let Some(source) = meta
        .etag
        .as_deref()
        .and_then(etag_md5)
        .filter(|_| !meta.etag_not_md5)
    {
        if source != md5 {
            return Err(mismatch(
                &item.object.key,
                format!(
                    "read MD5 {}, the source's ETag is {}",
                    hex::encode(md5),
                    hex::encode(source)
                ),
            ));
        }
    }
    if let Some(expected) = &item.expected {
        check_manifest(
            &item.object.key,
            bytes.len() as u64,
            &hex::encode(Sha256::digest(&bytes)),
            expected,
        )?;
        verified = "size+md5+manifest-sha256";
    }
    let version = copied_version(&item.object, &meta);
    t.dest
        .put(
            &item.object.key,
            Body::from_bytes(bytes),
            &dest_options(&meta, &version, Some(md5)),
        )
        .await?;
    Ok(Copied {
        bytes: meta.size,
        verified,
    })
}

/// Part sizes, and what the copy's composite ETag is checked against.
struct Layout {
    sizes: Vec<u64>,
    /// The source's multipart ETag, when these are (or may be) its boundaries.
    source_etag: Option<String>,
    /// The boundaries are a guess: a different composite ETag is then no error, only a
    /// copy whose ETag differs from the source's.
    guessed: bool,
}

const MIB: u64 = 1024 * 1024;
/// Part sizes uploaders commonly use (the AWS CLI's 8 MiB first), tried in this order
/// when a store hides an object's boundaries.
const COMMON_PART_MIB: [u64; 12] = [8, 5, 16, 10, 15, 32, 64, 100, 128, 256, 512, 1024];

async fn source_layout(t: &Stores, item: &Item, etag: Option<&str>) -> Result<Layout, StoreError> {
    let size = item.object.size;
    if let Some(parts) = etag
        .and_then(etag_parts)
        .filter(|n| (1..=10_000).contains(n))
    {
        let source_etag = etag.map(str::to_string);
        let from_manifest = item
            .part_sizes
            .clone()
            .filter(|s| s.len() == parts as usize && s.iter().sum::<u64>() == size);
        let known = match from_manifest {
            Some(sizes) => Some(sizes),
            None => probe_parts(&t.source, &item.object.key, parts, size).await?,
        };
        if let Some(sizes) = known {
            return Ok(Layout {
                sizes,
                source_etag,
                guessed: false,
            });
        }
        if let Some(sizes) = uniform_guess(size, parts) {
            return Ok(Layout {
                sizes,
                source_etag,
                guessed: true,
            });
        }
    }
    Ok(Layout {
        sizes: own_parts(&item.object.key, size, t.settings.part_size)?,
        source_etag: None,
        guessed: false,
    })
}

/// S3's limits on a multipart upload: parts, and bytes in a part.
const MAX_PARTS: u64 = 10_000;
const MAX_PART: u64 = 5 * 1024 * 1024 * 1024;

/// Our own parts for `size` bytes: `part` bytes each, or larger (whole MiB) where that
/// many would pass 10,000 parts; an object past 10,000 parts of 5 GiB cannot be stored.
fn own_parts(key: &str, size: u64, part: u64) -> Result<Vec<u64>, StoreError> {
    let part = part.max(size.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB);
    if part > MAX_PART {
        return Err(StoreError::new(
            ErrorKind::InvalidKey,
            format!("{key} is {size} bytes: more than an S3 multipart upload can hold (10,000 parts of 5 GiB)"),
        ));
    }
    Ok(uniform(size, part))
}

/// `size` in parts of `part` bytes (the last shorter); one empty part for an empty object.
fn uniform(size: u64, part: u64) -> Vec<u64> {
    let mut sizes = Vec::new();
    let mut left = size;
    while left > 0 || sizes.is_empty() {
        let n = left.min(part);
        sizes.push(n);
        left -= n;
    }
    sizes
}

/// Equal parts of a common size that give exactly `parts` parts: most uploaders cut that
/// way, and the composite ETag tells afterwards whether the guess was right.
fn uniform_guess(size: u64, parts: u32) -> Option<Vec<u64>> {
    let parts = u64::from(parts);
    if parts == 1 {
        return Some(vec![size]);
    }
    let fits = |p: u64| p > 0 && size.div_ceil(p) == parts;
    let part = COMMON_PART_MIB
        .iter()
        .map(|m| m * MIB)
        .find(|&p| fits(p))
        .or_else(|| {
            // Else the smallest whole number of MiB that fits.
            let lo = size.div_ceil(parts).div_ceil(MIB) * MIB;
            fits(lo).then_some(lo)
        })?;
    Some(uniform(size, part))
}

/// `HEAD ?partNumber=N` for every part, where the store honours it.
async fn probe_parts(
    source: &Store,
    key: &str,
    parts: u32,
    size: u64,
) -> Result<Option<Vec<u64>>, StoreError> {
    let mut sizes = Vec::with_capacity(parts as usize);
    for n in 1..=parts {
        match source.part_size(key, n).await? {
            Some(len) => sizes.push(len),
            None => return Ok(None),
        }
    }
    Ok((sizes.iter().sum::<u64>() == size).then_some(sizes))
}

/// With the source's multipart ETag to compare, the store's own part ETags prove the copy
/// and nothing is hashed here ([`PartCheck::StoreEtags`]). Where the boundaries were
/// guessed wrong, that proof is missing: the object is copied once more with each part
/// hashed as it streams and checked against the ETag the store returns.
async fn in_parts(t: &Stores, item: &Item, layout: Layout) -> Result<Copied, CopyError> {
    let first = match layout.source_etag {
        Some(_) => PartCheck::StoreEtags,
        None => PartCheck::Md5,
    };
    match copy_parts(t, item, &layout, first).await? {
        Some(copied) => Ok(copied),
        None => {
            // Nothing was made visible; say so, as for any failed copy.
            tracing::warn!(key = %item.object.key, "the copy's parts do not add up to the source's ETag (its part boundaries were guessed wrong, or a byte was damaged in flight): retrying with each part hashed");
            copy_parts(t, item, &layout, PartCheck::Md5)
                .await?
                .ok_or_else(|| mismatch(&item.object.key, "its parts could not be checked".into()))
        }
    }
}

/// One copy in parts; `None` when it could not be proved (nothing was made visible).
async fn copy_parts(
    t: &Stores,
    item: &Item,
    layout: &Layout,
    check: PartCheck,
) -> Result<Option<Copied>, CopyError> {
    let key = &item.object.key;
    let meta = t.source.head(key).await?;
    let version = copied_version(&item.object, &meta);
    // Hashing the whole object for a manifest needs its parts in order: one at a time.
    let in_flight = if item.expected.is_some() {
        1
    } else {
        t.settings.parts_in_flight
    };
    let options = dest_options(&meta, &version, None);
    let mut writer = PartWriter::start(t.dest.clone(), key, &options, in_flight, check).await?;
    let sha = Arc::new(Mutex::new(Sha256::new()));
    let mut offset = 0;
    for &len in &layout.sizes {
        let read = read_part(
            t,
            key,
            (offset, len),
            meta.etag.clone(),
            item.expected.is_some().then(|| sha.clone()),
        );
        if let Err(e) = writer.put(len, read).await {
            writer.abort().await;
            return Err(e.into());
        }
        offset += len;
    }
    let uploaded = writer.finish().await?;
    let checked = verify_parts(key, &uploaded, &meta, layout).and_then(|verified| {
        let (Some(_), Some(expected)) = (verified, &item.expected) else {
            return Ok(verified);
        };
        let digest = sha
            .lock()
            .map(|h| hex::encode(h.clone().finalize()))
            .unwrap_or_default();
        check_manifest(key, uploaded.size(), &digest, expected)
            .map(|_| Some("size+manifest-sha256"))
    });
    match checked {
        Ok(Some(verified)) => {
            uploaded.complete().await?;
            Ok(Some(Copied {
                bytes: meta.size,
                verified,
            }))
        }
        Ok(None) => {
            uploaded.abort().await;
            Ok(None)
        }
        Err(e) => {
            uploaded.abort().await;
            Err(e)
        }
    }
}

/// Read one part of the source, holding a stream slot while its bytes flow (and feeding
/// the whole-object hash when one is kept).
fn read_part(
    t: &Stores,
    key: &str,
    range: (u64, u64),
    etag: Option<String>,
    sha: Option<Arc<Mutex<Sha256>>>,
) -> impl std::future::Future<Output = Result<Body, StoreError>> + Send + 'static {
    let (source, settings, key) = (t.source.clone(), t.settings.clone(), key.to_string());
    async move {
        let slot = settings.stream().await.map_err(|e| match e {
            CopyError::Store(s) => s,
            CopyError::Manifest(m) => StoreError::new(ErrorKind::Other, m),
        })?;
        let options = GetOptions {
            range: Some(range),
            if_match: etag,
            ..Default::default()
        };
        let got = source.get(&key, options).await?;
        let len = got.body.len();
        let stream = got.body.into_stream().map(move |chunk| {
            let _held = &slot;
            if let (Ok(c), Some(sha)) = (&chunk, &sha) {
                if let Ok(mut h) = sha.lock() {
                    sha2::Digest::update(&mut *h, c);
                }
            }
            chunk
        });
        Ok(Body::from_stream(len, stream.boxed()))
    }
}

/// How the copy was proved, or `None` when it was not (guessed boundaries, checked by the
/// store's ETags alone).
fn verify_parts(
    key: &str,
    uploaded: &egress_store::Uploaded,
    meta: &ObjectMeta,
    layout: &Layout,
) -> Result<Option<&'static str>, CopyError> {
    if uploaded.size() != meta.size {
        return Err(mismatch(
            key,
            format!(
                "copied {} bytes, the source has {}",
                uploaded.size(),
                meta.size
            ),
        ));
    }
    let Some(source_etag) = &layout.source_etag else {
        return Ok(Some("size+part-md5"));
    };
    let composite = uploaded.composite_etag().unwrap_or_default();
    match (&composite == source_etag, layout.guessed, uploaded.hashed()) {
        (true, _, _) => Ok(Some("size+multipart-etag")),
        // Each part's MD5 matched the store's ETag: the boundaries alone differ.
        (false, true, true) => Ok(Some("size+part-md5")),
        (false, true, false) => Ok(None),
        (false, false, _) => Err(mismatch(
            key,
            format!("the parts' composite ETag is {composite}, the source's is {source_etag}"),
        )),
    }
}

/// Prove that the output's object at `key` is the one its manifest lists (read back in one
/// stream, hashed): an object the output already had, before a manifest vouches for it.
pub async fn prove(t: &Stores, key: &str, expected: &Expected) -> Result<(), CopyError> {
    prove_in(t, &t.dest, key, expected).await
}

/// Prove that `store`'s object at `key` (the input's or the output's) is the one its
/// manifest lists.
pub async fn prove_in(
    t: &Stores,
    store: &egress_store::Store,
    key: &str,
    expected: &Expected,
) -> Result<(), CopyError> {
    let _stream = t.settings.stream().await?;
    let got = store.get(key, GetOptions::default()).await?;
    let size = got.meta.size;
    let mut hash = Sha256::new();
    let mut body = got.body.into_stream();
    while let Some(chunk) = body.next().await {
        hash.update(chunk?);
    }
    check_manifest(key, size, &hex::encode(hash.finalize()), expected)
}

fn mismatch(key: &str, what: String) -> CopyError {
    CopyError::Store(StoreError::new(
        ErrorKind::ChecksumMismatch,
        format!("verification of {key} failed: {what}"),
    ))
}

fn check_manifest(key: &str, size: u64, sha256: &str, e: &Expected) -> Result<(), CopyError> {
    if size != e.size || sha256 != e.sha256 {
        return Err(manifest_mismatch(key, size, Some(sha256), e));
    }
    Ok(())
}

fn manifest_mismatch(key: &str, size: u64, sha256: Option<&str>, e: &Expected) -> CopyError {
    let hash = sha256
        .map(|h| format!(" with SHA-256 {h}"))
        .unwrap_or_default();
    CopyError::Manifest(format!(
        "{key} does not match its manifest: {size} bytes{hash}, the manifest says {} bytes with SHA-256 {}",
        e.size, e.sha256
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_guesses_try_common_part_sizes() {
        let mib = MIB;
        // 128 MiB uploaded by the AWS CLI: 16 parts of 8 MiB.
        assert_eq!(uniform_guess(128 * mib, 16), Some(vec![8 * mib; 16]));
        // 5 MiB + 5 MiB + 1 byte: 5 MiB parts.
        assert_eq!(
            uniform_guess(10 * mib + 1, 3),
            Some(vec![5 * mib, 5 * mib, 1])
        );
        // 17 MiB in 2 parts: 16 MiB fits (16 + 1).
        assert_eq!(uniform_guess(17 * mib, 2), Some(vec![16 * mib, mib]));
        assert_eq!(uniform_guess(42, 1), Some(vec![42]));
        // No whole-MiB size gives 3 parts of a 1 KiB object.
        assert_eq!(uniform_guess(1024, 3), None);
        assert_eq!(uniform(0, 8), vec![0]);
        assert_eq!(uniform(17, 8), vec![8, 8, 1]);
    }

    #[test]
    fn our_own_parts_stay_within_s3s_limits() {
        let gib = 1024 * MIB;
        // 100 GiB in 8 MiB parts would be 12,800 parts: the parts grow instead.
        let parts = own_parts("k", 100 * gib, 8 * MIB).unwrap();
        assert!(parts.len() <= 10_000, "{} parts", parts.len());
        assert_eq!(parts.iter().sum::<u64>(), 100 * gib);
        assert!(parts
            .iter()
            .all(|&p| p <= MAX_PART && p % MIB == 0 || p == *parts.last().unwrap()));
        assert_eq!(parts[0], 11 * MIB, "the smallest whole MiB that fits");
        assert_eq!(own_parts("k", 80 * MIB, 8 * MIB).unwrap().len(), 10);
        let five_tib = 5 * 1024 * gib;
        assert!(own_parts("k", five_tib, 8 * MIB).unwrap().len() <= 10_000);
        assert!(own_parts("k", five_tib * 10, 8 * MIB).is_err(), "50 TiB");
    }

    // Stores on the in-memory store, which follows S3's ETag and multipart rules.
    mod on_memory {
        use super::super::*;
        use egress_store::{MemoryStore, ObjectStore};
        use std::sync::Arc;

        fn data(len: usize, seed: u8) -> Vec<u8> {
            (0..len)
                .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
                .collect()
        }

        fn transfers() -> (Stores, Arc<MemoryStore>, Arc<MemoryStore>) {
            let (source, dest) = (Arc::new(MemoryStore::new()), Arc::new(MemoryStore::new()));
            let t = Stores {
                source: source.clone(),
                dest: dest.clone(),
                settings: Settings::new(8 * MIB, 8 * MIB, 40 * MIB),
            };
            (t, source, dest)
        }

        async fn listed(store: &MemoryStore, key: &str) -> ObjectInfo {
            let meta = store.head(key).await.unwrap();
            ObjectInfo {
                key: key.to_string(),
                size: meta.size,
                etag: meta.etag,
                modified: meta.modified,
                modified_nanos: 0,
            }
        }

        async fn bytes(store: &MemoryStore, key: &str) -> bytes::Bytes {
            let got = store.get(key, GetOptions::default()).await.unwrap();
            got.body.collect().await.unwrap()
        }

        fn expected(body: &[u8]) -> Expected {
            Expected {
                size: body.len() as u64,
                sha256: hex::encode(Sha256::digest(body)),
            }
        }

        /// `body` stored at `key` in parts of `sizes`, as listed.
        async fn multipart(
            store: &Arc<MemoryStore>,
            key: &str,
            body: &[u8],
            sizes: &[u64],
        ) -> ObjectInfo {
            let options = PutOptions::default();
            let mut writer = PartWriter::start(store.clone(), key, &options, 1, PartCheck::Md5)
                .await
                .unwrap();
            let mut offset = 0usize;
            for &size in sizes {
                let part = Body::from_bytes(body[offset..offset + size as usize].to_vec());
                writer.put(size, async move { Ok(part) }).await.unwrap();
                offset += size as usize;
            }
            writer.finish().await.unwrap().complete().await.unwrap();
            listed(store, key).await
        }

        #[tokio::test]
        async fn guessed_boundaries_are_proved_by_the_stores_etags_or_copied_again_hashed() {
            let (t, source, dest) = transfers();
            let body = data(13 * MIB as usize + 1, 7);
            let object = multipart(&source, "d/big", &body, &[5 * MIB, 8 * MIB, 1]).await;
            let item = Item {
                object: object.clone(),
                expected: None,
                part_sizes: None,
            };
            for (sizes, verified) in [
                (vec![5 * MIB, 8 * MIB, 1], "size+multipart-etag"),
                (vec![8 * MIB, 5 * MIB, 1], "size+part-md5"),
            ] {
                let layout = Layout {
                    sizes,
                    source_etag: object.etag.clone(),
                    guessed: true,
                };
                let copied = in_parts(&t, &item, layout).await.unwrap();
                assert_eq!(copied.verified, verified);
                assert_eq!(bytes(&dest, "d/big").await, body);
                assert!(dest.pending_uploads("").await.unwrap().is_empty());
            }
        }

        #[tokio::test]
        async fn a_multipart_object_keeps_its_layout_and_its_etag() {
            let (t, source, dest) = transfers();
            let body = data(13 * MIB as usize + 1, 1);
            multipart(&source, "d/big", &body, &[5 * MIB, 8 * MIB, 1]).await;
            let object = listed(&source, "d/big").await;
            // The in-memory store answers ?partNumber, as AWS does: the layout is learnt.
            let item = Item {
                object: object.clone(),
                expected: Some(expected(&body)),
                part_sizes: None,
            };
            let copied = copy(&t, &item).await.unwrap();
            assert_eq!(copied.verified, "size+manifest-sha256");
            assert_eq!(
                dest.head("d/big").await.unwrap().etag,
                object.etag,
                "the ETag survives"
            );
            assert_eq!(bytes(&dest, "d/big").await, body);
        }

        #[tokio::test]
        async fn a_checked_object_that_does_not_match_its_manifest_never_becomes_visible() {
            let (t, source, dest) = transfers();
            let body = data(3000, 2);
            source
                .put(
                    "d/a",
                    Body::from_bytes(body.clone()),
                    &PutOptions::default(),
                )
                .await
                .unwrap();
            let mut wrong = expected(&body);
            wrong.sha256 = "0".repeat(64);
            let item = Item {
                object: listed(&source, "d/a").await,
                expected: Some(wrong),
                part_sizes: None,
            };
            let err = copy(&t, &item).await.expect_err("refused");
            assert!(matches!(err, CopyError::Manifest(_)), "{err}");
            assert!(dest.head("d/a").await.is_err(), "nothing visible");
            let item = Item {
                expected: Some(expected(&body)),
                ..item
            };
            assert_eq!(
                copy(&t, &item).await.unwrap().verified,
                "size+md5+manifest-sha256"
            );
            assert_eq!(bytes(&dest, "d/a").await, body);
        }

        #[tokio::test]
        async fn a_source_changed_since_its_listing_is_copied_as_it_is_now_with_its_record() {
            let (t, source, dest) = transfers();
            source
                .put("k", Body::from_bytes(data(100, 3)), &PutOptions::default())
                .await
                .unwrap();
            let old = listed(&source, "k").await;
            let now = data(120, 4);
            source
                .put("k", Body::from_bytes(now.clone()), &PutOptions::default())
                .await
                .unwrap();
            copy(
                &t,
                &Item {
                    object: old,
                    expected: None,
                    part_sizes: None,
                },
            )
            .await
            .unwrap();
            assert_eq!(bytes(&dest, "k").await, now);
            let record = Record::from_metadata(&dest.head("k").await.unwrap().attributes.metadata);
            assert!(
                record.unwrap().describes(&listed(&source, "k").await),
                "the copy records the version it is"
            );
        }
    }
}
