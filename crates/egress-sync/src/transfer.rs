//! Copying one object, streamed in bounded parts and verified before it counts as done.
//!
//! Small objects: one GET, one PUT with Content-MD5. Large ones: ranged GETs feeding
//! UploadPart, several parts in flight, each part's bytes held only while in flight
//! (a shared byte budget bounds memory across all transfers). The whole-object MD5 (and
//! the multipart ETag, when the source's part layout is known) is computed while
//! streaming and compared with the source's ETag before the upload is completed.

use std::sync::{Arc, Mutex};

use anyhow::anyhow;
use egress_common::{ExitCode, Failure};
use md5::{Digest, Md5};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::gate::Expected;
use crate::object::{is_plain_md5, meta_keys, multipart_parts, ObjectInfo, Record};
use crate::store::{ObjectMeta, Store, Upload};
use sha2::Sha256;

/// Parts bigger than this are not held in memory to mirror the source's layout.
const MAX_REPLICATED_PART: u64 = 64 * 1024 * 1024;
/// Budget permits are KiB.
const PERMIT_BYTES: u64 = 1024;

/// How transfers are shaped.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Objects up to this size take one GET and one PUT.
    pub multipart_threshold: u64,
    /// Part size when the source's layout is not reused.
    pub part_size: u64,
    /// Parts in flight per object.
    pub parts_in_flight: usize,
    /// Shared memory budget in KiB permits.
    pub budget: Arc<Semaphore>,
    /// The budget's size in permits.
    budget_permits: u32,
}

impl Settings {
    /// Settings with a memory budget of `budget_bytes`.
    pub fn new(multipart_threshold: u64, part_size: u64, budget_bytes: u64) -> Settings {
        let budget_permits = (budget_bytes / PERMIT_BYTES).clamp(1, u32::MAX as u64) as u32;
        Settings {
            multipart_threshold,
            part_size,
            parts_in_flight: 4,
            budget: Arc::new(Semaphore::new(budget_permits as usize)),
            budget_permits,
        }
    }

    fn permits(&self, bytes: u64) -> u32 {
        // A single part larger than the whole budget still proceeds, alone.
        bytes
            .div_ceil(PERMIT_BYTES)
            .clamp(1, self.budget_permits as u64) as u32
    }
}

/// A finished copy.
#[derive(Debug, Clone)]
pub struct Copied {
    /// Bytes copied.
    pub bytes: u64,
    /// Record of what was copied (source as read, destination ETag).
    pub record: Record,
    /// How the copy was checked against the source.
    pub verified: &'static str,
}

/// The bytes read do not match the folder's manifest: retrying cannot help.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ManifestMismatch(String);

/// Copy `object` from `source` to `dest`; with `expected`, the bytes must also match the
/// size and SHA-256 its manifest records.
pub async fn copy(
    source: &Arc<Store>,
    dest: &Arc<Store>,
    object: &ObjectInfo,
    settings: &Settings,
    expected: Option<&Expected>,
) -> Result<Copied, Failure> {
    if object.size <= settings.multipart_threshold {
        copy_small(source, dest, object, settings, expected).await
    } else {
        copy_large(source, dest, object, settings, expected).await
    }
}

fn check_manifest(
    key: &str,
    size: u64,
    sha256: &str,
    expected: Option<&Expected>,
) -> Result<(), Failure> {
    let Some(e) = expected else { return Ok(()) };
    if size != e.size || sha256 != e.sha256 {
        return Err(Failure::runtime(ManifestMismatch(format!(
            "{key} does not match its manifest: {size} bytes with SHA-256 {sha256}, the manifest says {} bytes with SHA-256 {}",
            e.size, e.sha256
        ))));
    }
    Ok(())
}

/// What was copied, in listing terms: the listed version, unless the read shows that the
/// source changed since it was listed.
fn copied_version(listed: &ObjectInfo, read: &ObjectMeta) -> ObjectInfo {
    if !listed.etag.is_empty() && !read.etag.is_empty() && listed.etag != read.etag {
        ObjectInfo {
            key: listed.key.clone(),
            size: read.size,
            etag: read.etag.clone(),
            modified: read.modified,
        }
    } else {
        listed.clone()
    }
}

/// The destination's metadata: the source's, minus any old record, plus ours.
fn dest_meta(source: &ObjectMeta, record: &Record) -> ObjectMeta {
    let mut meta = source.clone();
    meta.metadata.retain(|k, _| {
        ![
            meta_keys::SOURCE_ETAG,
            meta_keys::SOURCE_SIZE,
            meta_keys::SOURCE_MODIFIED,
        ]
        .iter()
        .any(|m| k.eq_ignore_ascii_case(m))
    });
    meta.metadata.extend(record.to_metadata());
    meta
}

fn mismatch(key: &str, what: String) -> Failure {
    Failure::runtime(anyhow!("verification of {key} failed: {what}"))
}

async fn copy_small(
    source: &Arc<Store>,
    dest: &Arc<Store>,
    object: &ObjectInfo,
    settings: &Settings,
    expected: Option<&Expected>,
) -> Result<Copied, Failure> {
    let _permit = settings
        .budget
        .acquire_many(settings.permits(object.size))
        .await
        .map_err(|_| Failure::runtime(anyhow!("memory budget closed")))?;
    let (body, meta) = source.get(&object.key, None, None).await?;
    if body.len() as u64 != meta.size {
        return Err(mismatch(
            &object.key,
            format!("read {} bytes, the source says {}", body.len(), meta.size),
        ));
    }
    let md5 = Md5::digest(&body);
    let md5_hex = hex::encode(md5);
    let mut verified = "size";
    if is_plain_md5(&meta.etag) && !meta.etag_not_md5 {
        if md5_hex != meta.etag {
            return Err(mismatch(
                &object.key,
                format!("MD5 {md5_hex} differs from the source ETag {}", meta.etag),
            ));
        }
        verified = "size+md5";
    }
    if expected.is_some() {
        check_manifest(
            &object.key,
            meta.size,
            &hex::encode(Sha256::digest(&body)),
            expected,
        )?;
        verified = "size+md5+manifest-sha256";
    }
    let version = copied_version(object, &meta);
    let write_meta = dest_meta(&meta, &Record::of(&version, "", meta.size));
    let dest_etag = dest.put(&object.key, body, &write_meta, &md5).await?;
    Ok(Copied {
        bytes: meta.size,
        record: Record::of(&version, &dest_etag, meta.size),
        verified,
    })
}

/// Part sizes: the source's own layout when it can be learned (then the multipart ETag
/// can be checked too), else uniform parts.
async fn layout(source: &Store, meta: &ObjectMeta, key: &str, part_size: u64) -> (Vec<u64>, bool) {
    if let Some(parts) = multipart_parts(&meta.etag).filter(|&n| n > 1 && n <= 10_000) {
        if let Some(sizes) = source.part_layout(key, parts, meta.size).await {
            if sizes.iter().all(|&s| s <= MAX_REPLICATED_PART && s > 0) {
                return (sizes, true);
            }
        }
    }
    let mut sizes = Vec::new();
    let mut left = meta.size;
    while left > 0 {
        let n = left.min(part_size);
        sizes.push(n);
        left -= n;
    }
    (sizes, false)
}

async fn copy_large(
    source: &Arc<Store>,
    dest: &Arc<Store>,
    object: &ObjectInfo,
    settings: &Settings,
    expected: Option<&Expected>,
) -> Result<Copied, Failure> {
    let meta = source.head(&object.key).await?;
    let (sizes, replicated) = layout(source, &meta, &object.key, settings.part_size).await;
    let version = copied_version(object, &meta);
    let upload = Arc::new(
        dest.create_multipart(
            &object.key,
            &dest_meta(&meta, &Record::of(&version, "", meta.size)),
        )
        .await?,
    );
    let trust_etag = !meta.etag_not_md5;
    let hashing = Hashing {
        whole_md5: trust_etag && is_plain_md5(&meta.etag),
        part_md5: trust_etag && replicated,
        sha256: expected.is_some(),
    };
    let parts = match upload_parts(
        source,
        dest,
        &upload,
        &object.key,
        &meta,
        &sizes,
        settings,
        hashing,
    )
    .await
    {
        Ok(parts) => parts,
        Err(f) => {
            dest.abort(&upload).await;
            return Err(f);
        }
    };
    // Verify before completing, so a bad copy never becomes visible.
    let (whole_md5, whole_sha256, part_md5s, etags) = parts;
    if let Err(f) = check_manifest(&object.key, meta.size, &hex::encode(whole_sha256), expected) {
        dest.abort(&upload).await;
        return Err(f);
    }
    // Without a comparable source checksum (a multipart source whose part layout the store
    // does not reveal), sizes and the signed payloads are what protect the copy.
    let mut verified = "size";
    let check = if hashing.whole_md5 {
        verified = "size+md5";
        Some(hex::encode(whole_md5))
    } else if hashing.part_md5 {
        verified = "size+multipart-etag";
        let mut h = Md5::new();
        for m in &part_md5s {
            h.update(m);
        }
        Some(format!("{}-{}", hex::encode(h.finalize()), part_md5s.len()))
    } else {
        None
    };
    if expected.is_some() {
        verified = "size+manifest-sha256";
    }
    if let Some(computed) = check {
        if computed != meta.etag {
            dest.abort(&upload).await;
            return Err(mismatch(
                &object.key,
                format!("computed {computed}, the source ETag is {}", meta.etag),
            ));
        }
    }
    let numbered: Vec<(u32, String)> = etags
        .into_iter()
        .enumerate()
        .map(|(i, e)| (i as u32 + 1, e))
        .collect();
    let dest_etag = dest.complete(&upload, numbered).await?;
    Ok(Copied {
        bytes: meta.size,
        record: Record::of(&version, &dest_etag, meta.size),
        verified,
    })
}

/// Which checksums a large copy computes.
#[derive(Debug, Clone, Copy)]
struct Hashing {
    /// MD5 of the whole object (to compare with a single-part source ETag).
    whole_md5: bool,
    /// MD5 of each part (to rebuild a multipart ETag; also sent as Content-MD5).
    part_md5: bool,
    /// SHA-256 of the whole object (to compare with a manifest).
    sha256: bool,
}

/// Whole-object MD5 and SHA-256, each part's MD5, each part's ETag.
type PartsResult = ([u8; 16], [u8; 32], Vec<[u8; 16]>, Vec<String>);
/// A finished part: index, MD5, ETag.
type PartDone = Result<(usize, [u8; 16], String), Failure>;

#[allow(clippy::too_many_arguments)]
async fn upload_parts(
    source: &Arc<Store>,
    dest: &Arc<Store>,
    upload: &Arc<Upload>,
    key: &str,
    meta: &ObjectMeta,
    sizes: &[u64],
    settings: &Settings,
    hashing: Hashing,
) -> Result<PartsResult, Failure> {
    // Parts are read in parallel but whole-object hashes need them in order: `turn` says
    // whose turn it is. Only the hashes a check will use are computed (MD5 is the costliest
    // thing a copy does here).
    let (turn_tx, turn_rx) = watch::channel(0usize);
    let turn_tx = Arc::new(turn_tx);
    let whole = Arc::new(Mutex::new((Md5::new(), Sha256::new())));
    let ordered = hashing.whole_md5 || hashing.sha256;
    let mut running: JoinSet<PartDone> = JoinSet::new();
    let mut part_md5s = vec![[0u8; 16]; sizes.len()];
    let mut etags = vec![String::new(); sizes.len()];
    let mut offset = 0u64;
    let result: Result<(), Failure> = async {
        for (index, &len) in sizes.iter().enumerate() {
            while running.len() >= settings.parts_in_flight.max(1) {
                collect(&mut running, &mut part_md5s, &mut etags).await?;
            }
            // Acquired in part order, so the part whose turn it is always holds memory.
            let permit = settings
                .budget
                .clone()
                .acquire_many_owned(settings.permits(len))
                .await
                .map_err(|_| Failure::runtime(anyhow!("memory budget closed")))?;
            let (source, dest, key, etag) = (
                source.clone(),
                dest.clone(),
                key.to_string(),
                meta.etag.clone(),
            );
            let (turn_tx, mut turn_rx, whole, upload) = (
                turn_tx.clone(),
                turn_rx.clone(),
                whole.clone(),
                upload.clone(),
            );
            let start = offset;
            running.spawn(async move {
                let _permit = permit;
                let if_match =
                    (!etag.is_empty() && !etag.starts_with("local-")).then_some(etag.as_str());
                let (body, _) = source.get(&key, Some((start, len)), if_match).await?;
                if body.len() as u64 != len {
                    return Err(mismatch(
                        &key,
                        format!(
                            "part {} read {} bytes, expected {len}",
                            index + 1,
                            body.len()
                        ),
                    ));
                }
                let part_md5: Option<[u8; 16]> =
                    hashing.part_md5.then(|| Md5::digest(&body).into());
                if ordered {
                    turn_rx.wait_for(|t| *t == index).await.map_err(|_| {
                        Failure::runtime(anyhow!("transfer of {key} was cancelled"))
                    })?;
                    if let Ok(mut h) = whole.lock() {
                        if hashing.whole_md5 {
                            h.0.update(&body);
                        }
                        if hashing.sha256 {
                            h.1.update(&body);
                        }
                    }
                    let _ = turn_tx.send(index + 1);
                }
                let etag = dest
                    .upload_part(
                        &upload,
                        index as u32 + 1,
                        start,
                        body,
                        part_md5.as_ref().map(|m| &m[..]),
                    )
                    .await?;
                Ok((index, part_md5.unwrap_or_default(), etag))
            });
            offset += len;
        }
        while !running.is_empty() {
            collect(&mut running, &mut part_md5s, &mut etags).await?;
        }
        Ok(())
    }
    .await;
    if let Err(f) = result {
        running.abort_all();
        while running.join_next().await.is_some() {}
        return Err(f);
    }
    let (md5, sha256) = whole
        .lock()
        .map_err(|_| Failure::runtime(anyhow!("hash state poisoned")))?
        .clone();
    Ok((
        md5.finalize().into(),
        sha256.finalize().into(),
        part_md5s,
        etags,
    ))
}

async fn collect(
    running: &mut JoinSet<PartDone>,
    part_md5s: &mut [[u8; 16]],
    etags: &mut [String],
) -> Result<(), Failure> {
    match running.join_next().await {
        Some(Ok(Ok((index, md5, etag)))) => {
            part_md5s[index] = md5;
            etags[index] = etag;
            Ok(())
        }
        Some(Ok(Err(f))) => Err(f),
        Some(Err(e)) => Err(Failure::runtime(anyhow!("part task failed: {e}"))),
        None => Ok(()),
    }
}

/// True when retrying cannot help (credentials, missing bucket, manifest mismatch).
pub fn is_permanent(failure: &Failure) -> bool {
    failure.code == ExitCode::Usage || failure.error.is::<ManifestMismatch>()
}
