//! [`S3Store`]: a bucket and key prefix on AWS S3 or an S3-compatible store (Ceph RGW,
//! MinIO), through aws-sdk-s3. The only module that calls the SDK for object operations.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::head_object::HeadObjectOutput;
use aws_sdk_s3::types::CompletedMultipartUpload;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use futures::StreamExt;

mod body;
mod client;
mod clock;
mod error;
mod list;
mod page_xml;
mod uploads;

use self::body::{parse_content_range, sdk_body, stall_guarded};
pub use self::client::{is_aws_host, S3Settings};
use self::clock::StoreClock;
use self::error::{from_sdk, S3Context, Target};
use self::uploads::{abort_upload, uploads_page};
use crate::error::{ErrorKind, StoreError};
use crate::key::{dir_prefix, join};
use crate::stop::{self, Phase};
use crate::{
    clean_etag, Attributes, Body, CompletedPart, Condition, EntryStream, GetOptions, GetResult,
    ObjectMeta, ObjectStore, PageStream, PartData, PendingUpload, PutOptions, PutResult,
    StoreTraits, Stored, Upload,
};

/// Whether the store honours `?partNumber` on HEAD/GET: not yet known, yes, no.
const PARTS_UNKNOWN: u8 = 0;
const PARTS_YES: u8 = 1;
const PARTS_NO: u8 = 2;

/// A bucket and prefix.
#[derive(Debug)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
    endpoint: String,
    hint: &'static str,
    timeout: Duration,
    part_numbers: AtomicU8,
    /// The store wants If-Match's ETag unquoted on PUT (Ceph RGW 16).
    if_match_bare: AtomicBool,
    clock: Arc<StoreClock>,
}

impl S3Store {
    /// A store for `bucket`/`prefix` reached as `settings` say. Only a bad CA bundle can
    /// fail here; nothing is sent yet.
    pub async fn new(
        settings: &S3Settings,
        bucket: &str,
        prefix: &str,
    ) -> Result<Self, StoreError> {
        if let Some(url) = settings
            .endpoint_url
            .as_deref()
            .filter(|u| u.starts_with("http://"))
        {
            tracing::warn!(endpoint = %url, "{url} is plain HTTP: the requests' signatures and all data travel unencrypted; use an https:// endpoint outside a trusted network");
        }
        let clock = Arc::new(StoreClock::default());
        Ok(S3Store {
            client: client::client(settings, clock.clone()).await?,
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            endpoint: settings
                .endpoint_url
                .clone()
                .unwrap_or_else(|| "AWS S3".to_string()),
            hint: settings.credentials_hint,
            timeout: settings.timeout,
            part_numbers: AtomicU8::new(PARTS_UNKNOWN),
            if_match_bare: AtomicBool::new(false),
            clock,
        })
    }

    fn ctx(&self) -> S3Context<'_> {
        S3Context {
            bucket: &self.bucket,
            endpoint: &self.endpoint,
            credentials_hint: self.hint,
        }
    }

    fn full(&self, key: &str) -> String {
        join(&self.prefix, key)
    }

    fn error<E>(&self, e: &SdkError<E, HttpResponse>, what: &str, target: Target) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        from_sdk(e, what, target, self.ctx())
    }

    fn relative<'a>(&self, full: &'a str) -> Option<&'a str> {
        full.strip_prefix(&dir_prefix(&self.prefix))
    }
}

/// The headers and user metadata an object carries, for PutObject and
/// CreateMultipartUpload alike (their builders are different types with the same setters).
macro_rules! with_attributes {
    ($request:expr, $a:expr) => {
        $request
            .set_content_type($a.content_type.clone())
            .set_content_encoding($a.content_encoding.clone())
            .set_cache_control($a.cache_control.clone())
            .set_content_disposition($a.content_disposition.clone())
            .set_metadata((!$a.metadata.is_empty()).then(|| {
                $a.metadata
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            }))
    };
}

/// An [`ObjectMeta`] from a HeadObject or GetObject reply (different types, same getters).
macro_rules! object_meta {
    ($reply:expr, $size:expr) => {
        ObjectMeta {
            size: $size,
            etag: clean_etag($reply.e_tag()),
            modified: $reply.last_modified().map(|t| t.secs()).unwrap_or(0),
            attributes: Attributes {
                content_type: $reply.content_type().map(str::to_string),
                content_encoding: $reply.content_encoding().map(str::to_string),
                cache_control: $reply.cache_control().map(str::to_string),
                content_disposition: $reply.content_disposition().map(str::to_string),
                metadata: $reply
                    .metadata()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                            .collect()
                    })
                    .unwrap_or_default(),
            },
            etag_not_md5: $reply.sse_customer_algorithm().is_some()
                || $reply
                    .server_side_encryption()
                    .is_some_and(|s| s.as_str().starts_with("aws:kms")),
            parts_count: $reply.parts_count().and_then(|n| u32::try_from(n).ok()),
        }
    };
}

fn quoted(etag: &str) -> String {
    format!("\"{etag}\"")
}

impl S3Store {
    /// How to list `under` (one level with `delimiter`).
    fn list_ctx(&self, under: &str, delimiter: bool) -> list::ListCtx {
        let list_prefix = format!("{}{under}", dir_prefix(&self.prefix));
        list::ListCtx {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            root: dir_prefix(&self.prefix),
            what: format!("listing s3://{}/{list_prefix}", self.bucket),
            list_prefix,
            endpoint: self.endpoint.clone(),
            hint: self.hint,
            delimiter,
        }
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    fn describe(&self, key: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.full(key))
    }

    fn traits(&self) -> StoreTraits {
        StoreTraits {
            keeps_modified: false,
            keeps_metadata: true,
        }
    }

    fn now(&self) -> i64 {
        self.clock.now()
    }

    async fn probe(&self, _write: bool) -> Result<(), StoreError> {
        // The first page of the listing proves the bucket, the credentials and the region.
        match self.list("").next().await {
            Some(Err(e)) => Err(e),
            _ => Ok(()),
        }
    }

    fn list(&self, under: &str) -> PageStream {
        list::pages(self.list_ctx(under, false))
    }

    fn list_folder(&self, under: &str) -> EntryStream {
        list::entries(self.list_ctx(under, true))
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        let reply = self.head_object(key, None).await?;
        let size = reply.content_length().unwrap_or(0).max(0) as u64;
        Ok(object_meta!(reply, size))
    }

    async fn part_size(&self, key: &str, number: u32) -> Result<Option<u64>, StoreError> {
        if self.part_numbers.load(Ordering::Relaxed) == PARTS_NO {
            return Ok(None);
        }
        let reply = self.head_object(key, Some(number)).await?;
        // A store that ignores partNumber answers for the whole object, without a count.
        if reply.parts_count().is_none() {
            self.part_numbers.store(PARTS_NO, Ordering::Relaxed);
            return Ok(None);
        }
        self.part_numbers.store(PARTS_YES, Ordering::Relaxed);
        Ok(reply.content_length().map(|n| n.max(0) as u64))
    }

    async fn get(&self, key: &str, options: GetOptions) -> Result<GetResult, StoreError> {
        let full = self.full(key);
        let what = format!("reading {full}");
        let mut request = self.client.get_object().bucket(&self.bucket).key(&full);
        if let Some((offset, len)) = options.range {
            request = request.range(format!("bytes={}-{}", offset, offset + len.max(1) - 1));
        }
        if let Some(n) = options.part_number {
            request = request.part_number(n as i32);
        }
        if let Some(etag) = &options.if_match {
            request = request.if_match(quoted(etag));
        }
        let reply = request
            .send()
            .await
            .map_err(|e| self.error(&e, &what, Target::Object))?;
        let len = reply.content_length().unwrap_or(0).max(0) as u64;
        let (offset, size) = match reply.content_range().and_then(parse_content_range) {
            Some((offset, total)) => (offset, total),
            None => (0, len),
        };
        let meta = object_meta!(reply, size);
        let stream = stall_guarded(reply.body, self.timeout, what);
        Ok(GetResult {
            meta,
            offset,
            body: Body::from_stream(len, stream),
        })
    }

    async fn put(&self, key: &str, body: Body, options: &PutOptions) -> Stored {
        let retry = match (&options.condition, body.as_bytes()) {
            (Condition::IfMatch(_), Some(bytes)) => Some(bytes.clone()),
            _ => None,
        };
        let first = self.put_object(key, body, options).await;
        // Ceph RGW 16 compares If-Match on PUT with the ETag unquoted, so a quoted one
        // (the standard form, which AWS, moto and s3s-fs expect) never matches: measured.
        // A refused condition that does match the object now is asked again unquoted, and
        // the store remembered as one that wants it so.
        let (Err(e), Some(bytes), Condition::IfMatch(etag)) = (&first, retry, &options.condition)
        else {
            return first;
        };
        let refused = e.kind() == ErrorKind::PreconditionFailed;
        if !refused || self.if_match_bare.load(Ordering::Relaxed) {
            return first;
        }
        match self.head(key).await {
            Ok(now) if now.etag.as_deref() == Some(etag.as_str()) => {
                self.if_match_bare.store(true, Ordering::Relaxed);
                self.put_object(key, Body::from_bytes(bytes), options).await
            }
            _ => first,
        }
    }

    async fn create_multipart(
        &self,
        key: &str,
        options: &PutOptions,
    ) -> Result<Upload, StoreError> {
        let full = self.full(key);
        if stop::stopping() {
            return Err(StoreError::new(
                ErrorKind::Other,
                format!("not starting the upload of {full}: the run is stopping"),
            ));
        }
        // Until the id comes back, a stop waits for it (or looks for the upload by key).
        let (created, creation) = tokio::sync::watch::channel(None);
        let sweep = stop::register(Phase::Sweep, self.sweep_for(&full, creation));
        let request = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&full);
        let reply = with_attributes!(request, options.attributes).send().await;
        let id = match reply {
            Ok(reply) => reply
                .upload_id()
                .filter(|id| !id.is_empty())
                .map(str::to_string),
            Err(e) => {
                stop::done(sweep);
                let what = format!("starting the upload of {full}");
                return Err(self.error(&e, &what, Target::Object));
            }
        };
        let _ = created.send(Some(id.clone()));
        let Some(id) = id else {
            stop::done(sweep);
            return Err(StoreError::new(
                ErrorKind::NotS3,
                format!("starting the upload of {full}: the server returned no upload id"),
            ));
        };
        let ticket = stop::replace(sweep, Phase::Known, self.abort_action(&full, &id));
        Ok(Upload::new(key, id, options, ticket))
    }

    async fn upload_part(&self, upload: &Upload, part: PartData) -> Result<String, StoreError> {
        let full = self.full(&upload.key);
        let number = part.slot.number;
        let reply = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&full)
            .upload_id(&upload.id)
            .part_number(number as i32)
            .content_length(part.body.len() as i64)
            .set_content_md5(part.content_md5.map(aws_smithy_types::base64::encode))
            .body(sdk_body(part.body))
            .send()
            .await
            .map_err(|e| {
                self.error(
                    &e,
                    &format!("uploading part {number} of {full}"),
                    Target::Object,
                )
            })?;
        Ok(clean_etag(reply.e_tag()).unwrap_or_default())
    }

    async fn complete(&self, upload: Upload, parts: &[CompletedPart], size: u64) -> Stored {
        let full = self.full(&upload.key);
        let completed: Vec<aws_sdk_s3::types::CompletedPart> = parts
            .iter()
            .map(|p| {
                aws_sdk_s3::types::CompletedPart::builder()
                    .part_number(p.number as i32)
                    .e_tag(quoted(&p.etag))
                    .build()
            })
            .collect();
        let mut request = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&full)
            .upload_id(&upload.id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(completed))
                    .build(),
            );
        // AWS S3, moto and s3s-fs refuse to replace an object then; Ceph RGW 16 ignores it
        // (measured).
        if upload.condition == Condition::IfAbsent {
            request = request.if_none_match("*");
        }
        let reply = request.send().await;
        match reply {
            Ok(reply) => {
                stop::done(upload.ticket);
                // Ceph RGW 16 answers without the new object's ETag (measured): ask for it.
                let etag = match clean_etag(reply.e_tag()) {
                    Some(etag) => Some(etag),
                    None => self.head(&upload.key).await.ok().and_then(|m| m.etag),
                };
                Ok(PutResult { etag })
            }
            Err(e) => {
                // Some S3 clones answer 200 with a body the SDK cannot parse: the object
                // then exists; believe the object (its size), not the body.
                if e.raw_response().is_some_and(|r| r.status().is_success()) {
                    if let Ok(meta) = self.head(&upload.key).await {
                        if meta.size == size {
                            stop::done(upload.ticket);
                            return Ok(PutResult { etag: meta.etag });
                        }
                    }
                }
                let error = self.error(
                    &e,
                    &format!("completing the upload of {full}"),
                    Target::Object,
                );
                self.abort(upload).await;
                Err(error)
            }
        }
    }

    async fn abort(&self, upload: Upload) {
        let full = self.full(&upload.key);
        let result = abort_upload(&self.client, &self.bucket, &full, &upload.id).await;
        stop::done(upload.ticket);
        if let Err(e) = result {
            let what = format!("aborting the upload of {full}");
            let e = self.error(&e, &what, Target::Object);
            tracing::warn!(error = %e, "could not abort a multipart upload; the next run (or the bucket's lifecycle rule) removes it");
        }
    }

    async fn pending_uploads(&self, under: &str) -> Result<Vec<PendingUpload>, StoreError> {
        let list_prefix = format!("{}{under}", dir_prefix(&self.prefix));
        let what = format!(
            "listing pending uploads under s3://{}/{list_prefix}",
            self.bucket
        );
        let mut out = Vec::new();
        let mut markers: (Option<String>, Option<String>) = (None, None);
        loop {
            let page = uploads_page(&self.client, &self.bucket, &list_prefix, markers)
                .await
                .map_err(|e| self.error(&e, &what, Target::Bucket))?;
            for u in page.uploads() {
                let (Some(full), Some(id)) = (u.key(), u.upload_id()) else {
                    continue;
                };
                let Some(key) = self.relative(full) else {
                    continue;
                };
                out.push(PendingUpload {
                    key: key.to_string(),
                    id: id.to_string(),
                    initiated: u.initiated().map(|t| t.secs()).unwrap_or(0),
                });
            }
            markers = (
                page.next_key_marker().map(str::to_string),
                page.next_upload_id_marker().map(str::to_string),
            );
            if !page.is_truncated().unwrap_or(false) || markers.0.is_none() {
                return Ok(out);
            }
        }
    }

    async fn abort_pending(&self, upload: &PendingUpload) -> Result<(), StoreError> {
        use aws_sdk_s3::error::ProvideErrorMetadata;
        let full = self.full(&upload.key);
        match abort_upload(&self.client, &self.bucket, &full, &upload.id).await {
            Ok(()) => Ok(()),
            // Another process aborted (or completed) it first: it is no longer pending.
            Err(e) if e.code() == Some("NoSuchUpload") => Ok(()),
            Err(e) => Err(self.error(
                &e,
                &format!("aborting the upload of {full}"),
                Target::Object,
            )),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.delete_object(key, None).await
    }

    async fn delete_if_match(&self, key: &str, etag: &str) -> Result<(), StoreError> {
        self.delete_object(key, Some(etag)).await
    }
}

impl S3Store {
    /// PutObject, as `options` say.
    async fn put_object(&self, key: &str, body: Body, options: &PutOptions) -> Stored {
        let full = self.full(key);
        let mut request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&full)
            .content_length(body.len() as i64)
            .set_content_md5(options.content_md5.map(aws_smithy_types::base64::encode));
        request = match &options.condition {
            Condition::None => request,
            Condition::IfAbsent => request.if_none_match("*"),
            Condition::IfMatch(etag) if self.if_match_bare.load(Ordering::Relaxed) => {
                request.if_match(etag)
            }
            Condition::IfMatch(etag) => request.if_match(quoted(etag)),
        };
        let reply = with_attributes!(request, options.attributes)
            .body(sdk_body(body))
            .send()
            .await
            .map_err(|e| self.error(&e, &format!("writing {full}"), Target::Object))?;
        Ok(PutResult {
            etag: clean_etag(reply.e_tag()),
        })
    }

    /// DeleteObject, conditional on the ETag when one is given; an absent object is fine.
    async fn delete_object(&self, key: &str, if_match: Option<&str>) -> Result<(), StoreError> {
        let full = self.full(key);
        let reply = self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(&full)
            .set_if_match(if_match.map(quoted))
            .send()
            .await;
        match reply {
            Ok(_) => Ok(()),
            Err(e) => {
                let error = self.error(&e, &format!("deleting {full}"), Target::Object);
                match error.kind() {
                    ErrorKind::NotFound => Ok(()),
                    _ => Err(error),
                }
            }
        }
    }

    async fn head_object(
        &self,
        key: &str,
        part: Option<u32>,
    ) -> Result<HeadObjectOutput, StoreError> {
        let full = self.full(key);
        let what = match part {
            Some(n) => format!("reading part {n} of {full}"),
            None => format!("reading metadata of {full}"),
        };
        self.client
            .head_object()
            .bucket(&self.bucket)
            .key(&full)
            .set_part_number(part.map(|n| n as i32))
            .send()
            .await
            .map_err(|e| self.error(&e, &what, Target::Object))
    }
}
