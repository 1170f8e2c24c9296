//! One side of a mirror: an S3 bucket/prefix or a local directory, with the handful of
//! operations the sync needs. Keys passed in and out are relative to the side's path.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::anyhow;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use egress_common::s3::failure;
use egress_common::{cleanup, Failure};

use crate::object::{clean_etag, ObjectInfo};

/// The headers and user metadata a copy carries over, for PutObject and
/// CreateMultipartUpload alike (their builders are different types with the same setters).
macro_rules! with_object_meta {
    ($request:expr, $meta:expr) => {
        $request
            .set_content_type($meta.content_type.clone())
            .set_content_encoding($meta.content_encoding.clone())
            .set_cache_control($meta.cache_control.clone())
            .set_content_disposition($meta.content_disposition.clone())
            .set_metadata(Some($meta.metadata.clone()))
    };
}

/// An [`ObjectMeta`] from a HeadObject or GetObject reply (different types, same getters).
macro_rules! object_meta {
    ($reply:expr, $size:expr) => {
        ObjectMeta {
            size: $size,
            etag: clean_etag($reply.e_tag().unwrap_or("")),
            modified: $reply.last_modified().map(|t| t.secs()).unwrap_or(0),
            content_type: $reply.content_type().map(str::to_string),
            content_encoding: $reply.content_encoding().map(str::to_string),
            cache_control: $reply.cache_control().map(str::to_string),
            content_disposition: $reply.content_disposition().map(str::to_string),
            metadata: $reply.metadata().cloned().unwrap_or_default(),
            // With KMS or customer keys the ETag is not the content's MD5.
            etag_not_md5: $reply.sse_customer_algorithm().is_some()
                || $reply
                    .server_side_encryption()
                    .is_some_and(|s| s.as_str().starts_with("aws:kms")),
        }
    };
}

/// Name of the copy-record file kept at the root of the output path.
pub const STATE_KEY: &str = ".egress-sync-state.json";

/// An S3 bucket and prefix, or a directory.
#[derive(Debug)]
pub enum Store {
    /// S3-compatible bucket.
    S3 {
        /// Client for this side's endpoint and credentials.
        client: aws_sdk_s3::Client,
        /// Bucket.
        bucket: String,
        /// Prefix without surrounding slashes (may be empty).
        prefix: String,
        /// Variables to check when credentials are rejected.
        credentials_hint: &'static str,
    },
    /// Local directory.
    Local {
        /// Root directory.
        root: PathBuf,
    },
}

/// What a GET or HEAD says about an object (beyond the listing).
#[derive(Debug, Clone, Default)]
pub struct ObjectMeta {
    /// Size in bytes (of the whole object).
    pub size: u64,
    /// ETag without quotes.
    pub etag: String,
    /// Last-Modified in whole seconds.
    pub modified: i64,
    /// Content-Type.
    pub content_type: Option<String>,
    /// Content-Encoding.
    pub content_encoding: Option<String>,
    /// Cache-Control.
    pub cache_control: Option<String>,
    /// Content-Disposition.
    pub content_disposition: Option<String>,
    /// User metadata.
    pub metadata: HashMap<String, String>,
    /// Encrypted with KMS or a customer key: the ETag is then not an MD5.
    pub etag_not_md5: bool,
}

/// An upload in progress at the destination.
#[derive(Debug)]
pub enum Upload {
    /// S3 multipart upload.
    S3 {
        /// Full key.
        key: String,
        /// Upload id.
        upload_id: String,
        /// Its entry in the interruption clean-up registry.
        ticket: cleanup::Ticket,
    },
    /// Local temp file, renamed into place on completion.
    Local {
        /// Final path.
        path: PathBuf,
        /// Temp path.
        temp: PathBuf,
        /// Open file for positional writes.
        file: Arc<std::fs::File>,
        /// Its entry in the interruption clean-up registry.
        ticket: cleanup::Ticket,
    },
}

impl Upload {
    fn ticket(&self) -> cleanup::Ticket {
        match self {
            Upload::S3 { ticket, .. } | Upload::Local { ticket, .. } => *ticket,
        }
    }
}

fn io_failure(what: String, e: std::io::Error) -> Failure {
    Failure::runtime(anyhow!("{what}: {e}"))
}

impl Store {
    /// Full S3 key for a relative key.
    fn full_key(prefix: &str, key: &str) -> String {
        if prefix.is_empty() {
            key.to_string()
        } else {
            format!("{prefix}/{key}")
        }
    }

    fn local_path(root: &Path, key: &str) -> PathBuf {
        root.join(key)
    }

    /// List every object (all pages), keys relative to the prefix, sorted.
    pub async fn list(&self) -> Result<Vec<ObjectInfo>, Failure> {
        let mut out = Vec::new();
        match self {
            Store::S3 {
                client,
                bucket,
                prefix,
                credentials_hint,
            } => {
                let list_prefix = if prefix.is_empty() {
                    String::new()
                } else {
                    format!("{prefix}/")
                };
                let mut pages = client
                    .list_objects_v2()
                    .bucket(bucket)
                    .prefix(&list_prefix)
                    .max_keys(1000)
                    .into_paginator()
                    .send();
                while let Some(page) = pages.next().await {
                    let page = page.map_err(|e| {
                        failure(
                            &e,
                            &format!("listing s3://{bucket}/{list_prefix}"),
                            bucket,
                            credentials_hint,
                        )
                    })?;
                    for o in page.contents() {
                        let Some(full) = o.key() else { continue };
                        let Some(key) = full.strip_prefix(&list_prefix) else {
                            continue;
                        };
                        // Zero-byte "folder" markers have no file to mirror.
                        if key.is_empty() || (key.ends_with('/') && o.size().unwrap_or(0) == 0) {
                            continue;
                        }
                        out.push(ObjectInfo {
                            key: key.to_string(),
                            size: o.size().unwrap_or(0).max(0) as u64,
                            etag: clean_etag(o.e_tag().unwrap_or("")),
                            modified: o.last_modified().map(|t| t.secs()).unwrap_or(0),
                        });
                    }
                }
            }
            Store::Local { root } => {
                let root = root.clone();
                out = tokio::task::spawn_blocking(move || list_local(&root))
                    .await
                    .map_err(|e| Failure::runtime(anyhow!("listing task failed: {e}")))??;
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// HEAD an object: its metadata.
    pub async fn head(&self, key: &str) -> Result<ObjectMeta, Failure> {
        match self {
            Store::S3 {
                client,
                bucket,
                prefix,
                credentials_hint,
            } => {
                let full = Self::full_key(prefix, key);
                let h = client
                    .head_object()
                    .bucket(bucket)
                    .key(&full)
                    .send()
                    .await
                    .map_err(|e| {
                        failure(
                            &e,
                            &format!("reading metadata of {full}"),
                            bucket,
                            credentials_hint,
                        )
                    })?;
                let size = h.content_length().unwrap_or(0).max(0) as u64;
                Ok(object_meta!(h, size))
            }
            Store::Local { root } => {
                let path = Self::local_path(root, key);
                let m = tokio::fs::metadata(&path)
                    .await
                    .map_err(|e| io_failure(format!("reading {}", path.display()), e))?;
                let (etag, modified) = local_identity(&m);
                Ok(ObjectMeta {
                    size: m.len(),
                    etag,
                    modified,
                    ..Default::default()
                })
            }
        }
    }

    /// Sizes of each part of a multipart object, when the store reports them (HEAD with
    /// partNumber); `None` when it does not.
    pub async fn part_layout(&self, key: &str, parts: u32, size: u64) -> Option<Vec<u64>> {
        let Store::S3 {
            client,
            bucket,
            prefix,
            ..
        } = self
        else {
            return None;
        };
        let full = Self::full_key(prefix, key);
        let mut sizes = Vec::with_capacity(parts as usize);
        for n in 1..=parts {
            let h = client
                .head_object()
                .bucket(bucket)
                .key(&full)
                .part_number(n as i32)
                .send()
                .await
                .ok()?;
            let len = h.content_length()?.max(0) as u64;
            // A store that ignores partNumber answers with the whole object.
            if parts > 1 && len == size {
                return None;
            }
            sizes.push(len);
        }
        (sizes.iter().sum::<u64>() == size).then_some(sizes)
    }

    /// Read a whole object, or `len` bytes at `offset`, requiring ETag `if_match` if given.
    pub async fn get(
        &self,
        key: &str,
        range: Option<(u64, u64)>,
        if_match: Option<&str>,
    ) -> Result<(Bytes, ObjectMeta), Failure> {
        match self {
            Store::S3 {
                client,
                bucket,
                prefix,
                credentials_hint,
            } => {
                let full = Self::full_key(prefix, key);
                let mut req = client.get_object().bucket(bucket).key(&full);
                if let Some((offset, len)) = range {
                    req = req.range(format!("bytes={}-{}", offset, offset + len - 1));
                }
                if let Some(etag) = if_match {
                    req = req.if_match(format!("\"{etag}\""));
                }
                let out = req.send().await.map_err(|e| {
                    failure(&e, &format!("reading {full}"), bucket, credentials_hint)
                })?;
                let size = match (range, out.content_range()) {
                    (Some(_), Some(cr)) => cr
                        .rsplit('/')
                        .next()
                        .and_then(|t| t.parse().ok())
                        .unwrap_or(0),
                    _ => out.content_length().unwrap_or(0).max(0) as u64,
                };
                let meta = object_meta!(out, size);
                let expected = out.content_length().unwrap_or(0).max(0) as usize;
                let mut body = out.body;
                let mut buf = bytes::BytesMut::with_capacity(expected);
                while let Some(chunk) = body.try_next().await.map_err(|e| {
                    Failure::runtime(anyhow!(
                        "reading {full}: {}",
                        egress_common::exit::error_chain(&e)
                    ))
                })? {
                    buf.extend_from_slice(&chunk);
                }
                Ok((buf.freeze(), meta))
            }
            Store::Local { root } => {
                let path = Self::local_path(root, key);
                let read_path = path.clone();
                let data = tokio::task::spawn_blocking(move || read_local(&read_path, range))
                    .await
                    .map_err(|e| Failure::runtime(anyhow!("read task failed: {e}")))?
                    .map_err(|e| io_failure(format!("reading {}", path.display()), e))?;
                let m = tokio::fs::metadata(&path)
                    .await
                    .map_err(|e| io_failure(format!("reading {}", path.display()), e))?;
                let (etag, modified) = local_identity(&m);
                Ok((
                    Bytes::from(data),
                    ObjectMeta {
                        size: m.len(),
                        etag,
                        modified,
                        ..Default::default()
                    },
                ))
            }
        }
    }

    /// Write a whole object; returns its new ETag.
    pub async fn put(
        &self,
        key: &str,
        body: Bytes,
        meta: &ObjectMeta,
        md5: &[u8],
    ) -> Result<String, Failure> {
        match self {
            Store::S3 {
                client,
                bucket,
                prefix,
                credentials_hint,
            } => {
                let full = Self::full_key(prefix, key);
                let request = client
                    .put_object()
                    .bucket(bucket)
                    .key(&full)
                    .content_md5(aws_smithy_types::base64::encode(md5));
                let out = with_object_meta!(request, meta)
                    .body(ByteStream::from(body))
                    .send()
                    .await
                    .map_err(|e| {
                        failure(&e, &format!("writing {full}"), bucket, credentials_hint)
                    })?;
                Ok(clean_etag(out.e_tag().unwrap_or("")))
            }
            Store::Local { root } => {
                let upload = self.create_multipart(key, meta).await?;
                let _ = root;
                if let Err(f) = self.upload_part(&upload, 1, 0, body, Some(md5)).await {
                    self.abort(&upload).await;
                    return Err(f);
                }
                self.complete(&upload, Vec::new()).await
            }
        }
    }

    /// Start a multipart upload (a temp file locally).
    pub async fn create_multipart(&self, key: &str, meta: &ObjectMeta) -> Result<Upload, Failure> {
        match self {
            Store::S3 {
                client,
                bucket,
                prefix,
                credentials_hint,
            } => {
                let full = Self::full_key(prefix, key);
                let request = client.create_multipart_upload().bucket(bucket).key(&full);
                let out = with_object_meta!(request, meta).send().await.map_err(|e| {
                    failure(
                        &e,
                        &format!("starting the upload of {full}"),
                        bucket,
                        credentials_hint,
                    )
                })?;
                let upload_id = out.upload_id().filter(|id| !id.is_empty()).ok_or_else(|| {
                    Failure::runtime(anyhow!("the server returned no upload id for {full}"))
                })?;
                // If the process is told to stop, this upload is aborted (egress_common::cleanup).
                let ticket = cleanup::register(cleanup::Unfinished::Upload {
                    client: client.clone(),
                    bucket: bucket.clone(),
                    key: full.clone(),
                    upload_id: upload_id.to_string(),
                });
                Ok(Upload::S3 {
                    key: full,
                    upload_id: upload_id.to_string(),
                    ticket,
                })
            }
            Store::Local { root } => {
                let path = Self::local_path(root, key);
                let parent = path
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| root.clone());
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default();
                let temp = parent.join(format!(".{name}.partial-{}", std::process::id()));
                let file = tokio::task::spawn_blocking({
                    let (parent, temp) = (parent.clone(), temp.clone());
                    move || {
                        std::fs::create_dir_all(&parent)?;
                        std::fs::File::create(&temp)
                    }
                })
                .await
                .map_err(|e| Failure::runtime(anyhow!("file task failed: {e}")))?
                .map_err(|e| io_failure(format!("creating {}", temp.display()), e))?;
                let ticket = cleanup::register(cleanup::Unfinished::File(temp.clone()));
                Ok(Upload::Local {
                    path,
                    temp,
                    file: Arc::new(file),
                    ticket,
                })
            }
        }
    }

    /// Upload part `number` (1-based) at byte `offset`; returns the part's ETag.
    pub async fn upload_part(
        &self,
        upload: &Upload,
        number: u32,
        offset: u64,
        body: Bytes,
        md5: Option<&[u8]>,
    ) -> Result<String, Failure> {
        match (self, upload) {
            (
                Store::S3 {
                    client,
                    bucket,
                    credentials_hint,
                    ..
                },
                Upload::S3 { key, upload_id, .. },
            ) => {
                let out = client
                    .upload_part()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .part_number(number as i32)
                    .set_content_md5(md5.map(aws_smithy_types::base64::encode))
                    .body(ByteStream::from(body))
                    .send()
                    .await
                    .map_err(|e| {
                        failure(
                            &e,
                            &format!("uploading part {number} of {key}"),
                            bucket,
                            credentials_hint,
                        )
                    })?;
                Ok(clean_etag(out.e_tag().unwrap_or("")))
            }
            (Store::Local { .. }, Upload::Local { temp, file, .. }) => {
                let file = file.clone();
                tokio::task::spawn_blocking(move || {
                    use std::os::unix::fs::FileExt;
                    file.write_all_at(&body, offset)
                })
                .await
                .map_err(|e| Failure::runtime(anyhow!("write task failed: {e}")))?
                .map_err(|e| io_failure(format!("writing {}", temp.display()), e))?;
                Ok(String::new())
            }
            _ => Err(Failure::runtime(anyhow!(
                "internal: upload does not belong to this store"
            ))),
        }
    }

    /// Make the upload visible; returns the object's ETag.
    pub async fn complete(
        &self,
        upload: &Upload,
        parts: Vec<(u32, String)>,
    ) -> Result<String, Failure> {
        // Completed, or aborted on failure below: nothing left to clean up either way.
        cleanup::done(upload.ticket());
        match (self, upload) {
            (
                Store::S3 {
                    client,
                    bucket,
                    credentials_hint,
                    ..
                },
                Upload::S3 { key, upload_id, .. },
            ) => {
                let parts: Vec<CompletedPart> = parts
                    .into_iter()
                    .map(|(n, etag)| {
                        CompletedPart::builder()
                            .part_number(n as i32)
                            .e_tag(format!("\"{etag}\""))
                            .build()
                    })
                    .collect();
                let out = client
                    .complete_multipart_upload()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .multipart_upload(
                        CompletedMultipartUpload::builder()
                            .set_parts(Some(parts))
                            .build(),
                    )
                    .send()
                    .await;
                match out {
                    Ok(out) => Ok(clean_etag(out.e_tag().unwrap_or(""))),
                    Err(e) => {
                        // Some S3 clones reply 200 with a body the SDK cannot parse; the
                        // object then exists, and HEAD tells us its ETag.
                        if e.raw_response().is_some_and(|r| r.status().is_success()) {
                            if let Ok(h) = client.head_object().bucket(bucket).key(key).send().await
                            {
                                return Ok(clean_etag(h.e_tag().unwrap_or("")));
                            }
                        }
                        let f = failure(
                            &e,
                            &format!("completing the upload of {key}"),
                            bucket,
                            credentials_hint,
                        );
                        let _ = client
                            .abort_multipart_upload()
                            .bucket(bucket)
                            .key(key)
                            .upload_id(upload_id)
                            .send()
                            .await;
                        Err(f)
                    }
                }
            }
            (
                Store::Local { .. },
                Upload::Local {
                    path, temp, file, ..
                },
            ) => {
                let (path, temp, file) = (path.clone(), temp.clone(), file.clone());
                let result =
                    tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::Metadata> {
                        file.sync_all()?;
                        std::fs::rename(&temp, &path)?;
                        std::fs::metadata(&path)
                    })
                    .await
                    .map_err(|e| Failure::runtime(anyhow!("file task failed: {e}")))?
                    .map_err(|e| Failure::runtime(anyhow!("finishing a local file: {e}")))?;
                Ok(local_identity(&result).0)
            }
            _ => Err(Failure::runtime(anyhow!(
                "internal: upload does not belong to this store"
            ))),
        }
    }

    /// Throw an upload away.
    pub async fn abort(&self, upload: &Upload) {
        cleanup::done(upload.ticket());
        match (self, upload) {
            (Store::S3 { client, bucket, .. }, Upload::S3 { key, upload_id, .. }) => {
                if let Err(e) = client
                    .abort_multipart_upload()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .send()
                    .await
                {
                    tracing::warn!(key = %key, error = %egress_common::exit::error_chain(&e), "could not abort a multipart upload; the next run removes it");
                }
            }
            (_, Upload::Local { temp, .. }) => {
                let _ = tokio::fs::remove_file(temp).await;
            }
            _ => {}
        }
    }

    /// Delete an object.
    pub async fn delete(&self, key: &str) -> Result<(), Failure> {
        match self {
            Store::S3 {
                client,
                bucket,
                prefix,
                credentials_hint,
            } => {
                let full = Self::full_key(prefix, key);
                client
                    .delete_object()
                    .bucket(bucket)
                    .key(&full)
                    .send()
                    .await
                    .map_err(|e| {
                        failure(&e, &format!("deleting {full}"), bucket, credentials_hint)
                    })?;
                Ok(())
            }
            Store::Local { root } => {
                let path = Self::local_path(root, key);
                tokio::fs::remove_file(&path)
                    .await
                    .map_err(|e| io_failure(format!("deleting {}", path.display()), e))
            }
        }
    }

    /// Read a small object if it exists (the state file).
    pub async fn read_optional(&self, key: &str) -> Result<Option<Bytes>, Failure> {
        match self {
            Store::S3 {
                client,
                bucket,
                prefix,
                credentials_hint,
            } => {
                let full = Self::full_key(prefix, key);
                match client.get_object().bucket(bucket).key(&full).send().await {
                    Ok(out) => {
                        let data = out
                            .body
                            .collect()
                            .await
                            .map_err(|e| Failure::runtime(anyhow!("reading {full}: {e}")))?;
                        Ok(Some(data.into_bytes()))
                    }
                    Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
                    Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => {
                        Ok(None)
                    }
                    Err(e) => Err(failure(
                        &e,
                        &format!("reading {full}"),
                        bucket,
                        credentials_hint,
                    )),
                }
            }
            Store::Local { root } => match tokio::fs::read(Self::local_path(root, key)).await {
                Ok(data) => Ok(Some(Bytes::from(data))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(io_failure(format!("reading {key}"), e)),
            },
        }
    }

    /// Abort multipart uploads under the prefix started before `before` (left by a killed
    /// run). Returns how many were aborted.
    pub async fn abort_stale_uploads(&self, before: aws_smithy_types::DateTime) -> usize {
        match self {
            Store::S3 {
                client,
                bucket,
                prefix,
                ..
            } => egress_common::s3::abort_stale_uploads(client, bucket, prefix, before).await,
            Store::Local { .. } => 0,
        }
    }
}

/// A local file's stand-in ETag and whole-second modification time.
fn local_identity(m: &std::fs::Metadata) -> (String, i64) {
    use std::os::unix::fs::MetadataExt;
    (
        format!("local-{}{:09}-{}", m.mtime(), m.mtime_nsec(), m.len()),
        m.mtime(),
    )
}

fn list_local(root: &Path) -> Result<Vec<ObjectInfo>, Failure> {
    let mut out = Vec::new();
    if !root.is_dir() {
        return Err(Failure::usage(anyhow!(
            "local directory {} does not exist: create it or fix the path",
            root.display()
        )));
    }
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| io_failure(format!("listing {}", dir.display()), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_failure(format!("listing {}", dir.display()), e))?;
            let path = entry.path();
            let ft = entry
                .file_type()
                .map_err(|e| io_failure(format!("reading {}", path.display()), e))?;
            if ft.is_dir() {
                stack.push(path);
                continue;
            }
            let name = entry.file_name().to_string_lossy().to_string();
            if !ft.is_file() || (name.starts_with('.') && name.contains(".partial-")) {
                continue;
            }
            let Ok(rel) = path.strip_prefix(root) else {
                continue;
            };
            let key = rel
                .to_string_lossy()
                .replace(std::path::MAIN_SEPARATOR, "/");
            let m = entry
                .metadata()
                .map_err(|e| io_failure(format!("reading {}", path.display()), e))?;
            let (etag, modified) = local_identity(&m);
            out.push(ObjectInfo {
                key,
                size: m.len(),
                etag,
                modified,
            });
        }
    }
    Ok(out)
}

fn read_local(path: &Path, range: Option<(u64, u64)>) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    match range {
        None => {
            let mut data = Vec::new();
            file.read_to_end(&mut data)?;
            Ok(data)
        }
        Some((offset, len)) => {
            file.seek(SeekFrom::Start(offset))?;
            let mut data = vec![0u8; len as usize];
            file.read_exact(&mut data)?;
            Ok(data)
        }
    }
}
