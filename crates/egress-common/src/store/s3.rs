//! [`S3Store`]: a bucket and key prefix on AWS S3 or an S3-compatible store (Ceph RGW,
//! MinIO), through aws-sdk-s3. The only module that calls the SDK for object operations.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_sdk_s3::config::{
    Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::abort_multipart_upload::AbortMultipartUploadError;
use aws_sdk_s3::operation::head_object::HeadObjectOutput;
use aws_sdk_s3::operation::list_multipart_uploads::{
    ListMultipartUploadsError, ListMultipartUploadsOutput,
};
use aws_sdk_s3::operation::list_objects_v2::{ListObjectsV2Error, ListObjectsV2Output};
use aws_sdk_s3::types::{CompletedMultipartUpload, EncodingType};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use bytes::Bytes;
use futures::StreamExt;

use super::clock::{ClockWatch, StoreClock};
use super::error::{from_sdk, unreadable_xml, ErrorKind, S3Context, StoreError, Target};
use super::key::{dir_prefix, join};
use super::{
    clean_etag, Attributes, Body, CompletedPart, Condition, GetOptions, GetResult, ObjectInfo,
    ObjectMeta, ObjectStore, PageStream, PartSlot, PendingUpload, PutOptions, PutResult,
    StoreTraits, Upload,
};
use crate::cleanup::{self, Phase};
use crate::error::ConfigError;
use crate::secret::Secret;

/// How to reach one S3-compatible endpoint.
#[derive(Debug, Clone, Default)]
pub struct S3Settings {
    /// Custom endpoint (Ceph RGW, MinIO, a test server); `None` means AWS S3.
    pub endpoint_url: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`), as non-AWS stores need.
    pub path_style: bool,
    /// Region; defaults to the AWS chain's region, else `us-east-1`.
    pub region: Option<String>,
    /// Static access key; `None` uses the standard AWS credential chain.
    pub access_key_id: Option<String>,
    /// Static secret key, paired with `access_key_id`.
    pub secret_access_key: Option<Secret>,
    /// Connect and per-read timeout; also how long a streamed body may stall.
    pub timeout: Duration,
    /// Attempts per request (first try included) for transient errors.
    pub max_attempts: u32,
    /// Extra CA certificates (PEM) to trust, e.g. an internal Ceph's CA (`AWS_CA_BUNDLE`).
    pub ca_bundle: Option<PathBuf>,
    /// The variables that hold these keys, named when S3 rejects them.
    pub credentials_hint: &'static str,
}

/// True for AWS's own endpoints (`*.amazonaws.com`), which use virtual-host addressing
/// and the SDK's default checksums.
pub fn is_aws_host(url: &str) -> bool {
    let host = url
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .split(['/', ':'])
        .next()
        .unwrap_or("");
    host == "amazonaws.com" || host.ends_with(".amazonaws.com")
}

/// Name printed as the credentials' source in SDK debug output.
const PROVIDER_NAME: &str = "egress-static";

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
    pub async fn new(settings: &S3Settings, bucket: &str, prefix: &str) -> anyhow::Result<Self> {
        if let Some(url) = settings
            .endpoint_url
            .as_deref()
            .filter(|u| u.starts_with("http://"))
        {
            tracing::warn!(endpoint = %url, "{url} is plain HTTP: the requests' signatures and all data travel unencrypted; use an https:// endpoint outside a trusted network");
        }
        let clock = Arc::new(StoreClock::default());
        Ok(S3Store {
            client: client(settings, clock.clone()).await?,
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

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
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

/// Keys in a listing asked with `encoding-type=url` come back URL-encoded (spaces as `+`,
/// as botocore and minio-go decode them): keys with characters XML cannot carry (U+0001)
/// would otherwise break the whole listing.
fn decode_key(key: &str) -> String {
    let plus_as_space = key.replace('+', " ");
    percent_encoding::percent_decode_str(&plus_as_space)
        .decode_utf8_lossy()
        .into_owned()
}

struct ListState {
    token: Option<String>,
    done: bool,
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
        let list_prefix = format!("{}{under}", dir_prefix(&self.prefix));
        let this = ListCtx {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            root: dir_prefix(&self.prefix),
            what: format!("listing s3://{}/{list_prefix}", self.bucket),
            list_prefix,
            endpoint: self.endpoint.clone(),
            hint: self.hint,
        };
        let state = ListState {
            token: None,
            done: false,
        };
        futures::stream::unfold((this, state), |(this, state)| async move {
            if state.done {
                return None;
            }
            let result = this.page(state.token).await;
            match result {
                Ok((objects, next)) => {
                    let state = ListState {
                        done: next.is_none(),
                        token: next,
                    };
                    Some((Ok(objects), (this, state)))
                }
                Err(e) => Some((
                    Err(e),
                    (
                        this,
                        ListState {
                            token: None,
                            done: true,
                        },
                    ),
                )),
            }
        })
        .boxed()
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

    async fn put(
        &self,
        key: &str,
        body: Body,
        options: &PutOptions,
    ) -> Result<PutResult, StoreError> {
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
        if cleanup::stopping() {
            return Err(StoreError::new(
                ErrorKind::Other,
                format!("not starting the upload of {full}: the run is stopping"),
            ));
        }
        // Until the id comes back, a stop waits for it (or looks for the upload by key).
        let (created, creation) = tokio::sync::watch::channel(None);
        let sweep = cleanup::register(Phase::Sweep, self.sweep_for(&full, creation));
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
                cleanup::done(sweep);
                let what = format!("starting the upload of {full}");
                return Err(self.error(&e, &what, Target::Object));
            }
        };
        let _ = created.send(Some(id.clone()));
        let Some(id) = id else {
            cleanup::done(sweep);
            return Err(StoreError::new(
                ErrorKind::NotS3,
                format!("starting the upload of {full}: the server returned no upload id"),
            ));
        };
        let ticket = cleanup::replace(sweep, Phase::Known, self.abort_action(&full, &id));
        Ok(Upload {
            key: key.to_string(),
            id,
            modified: options.modified,
            ticket,
        })
    }

    async fn upload_part(
        &self,
        upload: &Upload,
        slot: PartSlot,
        body: Body,
        content_md5: Option<[u8; 16]>,
    ) -> Result<String, StoreError> {
        let full = self.full(&upload.key);
        let number = slot.number;
        let reply = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&full)
            .upload_id(&upload.id)
            .part_number(number as i32)
            .content_length(body.len() as i64)
            .set_content_md5(content_md5.map(aws_smithy_types::base64::encode))
            .body(body.into_sdk())
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

    async fn complete(
        &self,
        upload: Upload,
        parts: &[CompletedPart],
        size: u64,
    ) -> Result<PutResult, StoreError> {
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
        let reply = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&full)
            .upload_id(&upload.id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(completed))
                    .build(),
            )
            .send()
            .await;
        match reply {
            Ok(reply) => {
                cleanup::done(upload.ticket);
                Ok(PutResult {
                    etag: clean_etag(reply.e_tag()),
                })
            }
            Err(e) => {
                // Some S3 clones answer 200 with a body the SDK cannot parse: the object
                // then exists; believe the object (its size), not the body.
                if e.raw_response().is_some_and(|r| r.status().is_success()) {
                    if let Ok(meta) = self.head(&upload.key).await {
                        if meta.size == size {
                            cleanup::done(upload.ticket);
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
        cleanup::done(upload.ticket);
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
        let full = self.full(&upload.key);
        abort_upload(&self.client, &self.bucket, &full, &upload.id)
            .await
            .map_err(|e| {
                self.error(
                    &e,
                    &format!("aborting the upload of {full}"),
                    Target::Object,
                )
            })
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
    async fn put_object(
        &self,
        key: &str,
        body: Body,
        options: &PutOptions,
    ) -> Result<PutResult, StoreError> {
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
            .body(body.into_sdk())
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

    /// What a stop does for an upload being created: wait for its id (a loaded server
    /// may take a while to answer), else look for it by key among uploads this process
    /// could have started.
    fn sweep_for(&self, full: &str, mut creation: Creation) -> cleanup::Abort {
        let (client, bucket, key) = (self.client.clone(), self.bucket.clone(), full.to_string());
        let since = process_start();
        Box::new(move || {
            Box::pin(async move {
                let known = match tokio::time::timeout(
                    Duration::from_secs(5),
                    creation.wait_for(|c| c.is_some()),
                )
                .await
                {
                    Ok(Ok(id)) => id.clone().flatten(),
                    _ => None,
                };
                if let Some(id) = known {
                    return abort_upload(&client, &bucket, &key, &id).await.is_ok();
                }
                let Ok(page) = uploads_page(&client, &bucket, &key, (None, None)).await else {
                    return false;
                };
                let mut undone = false;
                for u in page.uploads() {
                    let started = u.initiated().map(|t| t.secs()).unwrap_or(0);
                    if let (Some(k), Some(id)) = (u.key(), u.upload_id()) {
                        if k == key && started >= since {
                            undone |= abort_upload(&client, &bucket, &key, id).await.is_ok();
                        }
                    }
                }
                undone
            })
        })
    }

    /// What a stop does for a known upload.
    fn abort_action(&self, full: &str, id: &str) -> cleanup::Abort {
        let (client, bucket) = (self.client.clone(), self.bucket.clone());
        let (key, id) = (full.to_string(), id.to_string());
        Box::new(move || {
            Box::pin(async move {
                let ok = abort_upload(&client, &bucket, &key, &id).await.is_ok();
                if !ok {
                    tracing::warn!(key = %key, "could not abort an upload; the next run (or the bucket lifecycle rule) removes it");
                }
                ok
            })
        })
    }
}

/// AbortMultipartUpload: the one place it is sent.
async fn abort_upload(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    full: &str,
    id: &str,
) -> Result<(), SdkError<AbortMultipartUploadError, HttpResponse>> {
    client
        .abort_multipart_upload()
        .bucket(bucket)
        .key(full)
        .upload_id(id)
        .send()
        .await
        .map(|_| ())
}

/// One page of ListMultipartUploads under `prefix`, from the (key, upload id) markers.
async fn uploads_page(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
    markers: (Option<String>, Option<String>),
) -> Result<ListMultipartUploadsOutput, SdkError<ListMultipartUploadsError, HttpResponse>> {
    client
        .list_multipart_uploads()
        .bucket(bucket)
        .prefix(prefix)
        .set_key_marker(markers.0)
        .set_upload_id_marker(markers.1)
        .send()
        .await
}

/// The id a CreateMultipartUpload returned (`Some(None)`: it returned none), once it did.
type Creation = tokio::sync::watch::Receiver<Option<Option<String>>>;

/// Seconds since the epoch when this process started (a little before, to allow for clock
/// steps between us and the store).
fn process_start() -> i64 {
    static START: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *START.get_or_init(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64 - 5)
            .unwrap_or(0)
    })
}

/// What a listing needs, owned, so its pages can be fetched lazily.
struct ListCtx {
    client: aws_sdk_s3::Client,
    bucket: String,
    root: String,
    list_prefix: String,
    what: String,
    endpoint: String,
    hint: &'static str,
}

impl ListCtx {
    /// One page. Keys are listed raw; a page whose XML cannot be read (a key holding a
    /// character XML cannot carry, such as U+0001) is asked again with `encoding-type=url`
    /// and its keys decoded, as minio-go does. Asking for encoding only then keeps us safe
    /// from servers that echo `EncodingType` without encoding (s3s-fs 0.14 does: measured).
    async fn page(
        &self,
        token: Option<String>,
    ) -> Result<(Vec<ObjectInfo>, Option<String>), StoreError> {
        let page = match self.request(token.clone(), false).await {
            Err(e) if unreadable_xml(&e) => self.request(token, true).await,
            other => other,
        };
        let page = page.map_err(|e| {
            let ctx = S3Context {
                bucket: &self.bucket,
                endpoint: &self.endpoint,
                credentials_hint: self.hint,
            };
            from_sdk(&e, &self.what, Target::Bucket, ctx)
        })?;
        Ok(self.objects(page))
    }

    async fn request(
        &self,
        token: Option<String>,
        encode: bool,
    ) -> Result<ListObjectsV2Output, SdkError<ListObjectsV2Error, HttpResponse>> {
        let request = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&self.list_prefix)
            .max_keys(1000)
            .set_continuation_token(token);
        match encode {
            true => request.encoding_type(EncodingType::Url).send().await,
            false => request.send().await,
        }
    }

    fn objects(&self, page: ListObjectsV2Output) -> (Vec<ObjectInfo>, Option<String>) {
        let encoded = page.encoding_type() == Some(&EncodingType::Url);
        let mut objects = Vec::with_capacity(page.contents().len());
        for o in page.contents() {
            let Some(raw) = o.key() else { continue };
            let full = if encoded {
                decode_key(raw)
            } else {
                raw.to_string()
            };
            let Some(key) = full.strip_prefix(&self.root) else {
                continue;
            };
            // Zero-byte "folder" markers have no file behind them.
            if key.is_empty() || (key.ends_with('/') && o.size().unwrap_or(0) == 0) {
                continue;
            }
            objects.push(ObjectInfo {
                key: key.to_string(),
                size: o.size().unwrap_or(0).max(0) as u64,
                etag: clean_etag(o.e_tag()),
                modified: o.last_modified().map(|t| t.secs()).unwrap_or(0),
                modified_nanos: o.last_modified().map(|t| t.subsec_nanos()).unwrap_or(0),
            });
        }
        let next = if page.is_truncated().unwrap_or(false) {
            page.next_continuation_token().map(str::to_string)
        } else {
            None
        };
        (objects, next)
    }
}

/// `bytes 0-99/1000` -> (0, 1000).
fn parse_content_range(range: &str) -> Option<(u64, u64)> {
    let rest = range.trim().strip_prefix("bytes ")?;
    let (span, total) = rest.split_once('/')?;
    let (start, _) = span.split_once('-')?;
    Some((start.parse().ok()?, total.parse().ok()?))
}

/// A GET's body as our stream, failing when no byte arrives for `timeout`: a store that
/// goes silent mid-body must not hang a run.
fn stall_guarded(
    body: aws_sdk_s3::primitives::ByteStream,
    timeout: Duration,
    what: String,
) -> super::ByteStream {
    futures::stream::unfold(Some(body), move |state| {
        let what = what.clone();
        async move {
            let mut body = state?;
            match tokio::time::timeout(timeout, body.next()).await {
                Ok(Some(Ok(chunk))) => Some((Ok::<Bytes, StoreError>(chunk), Some(body))),
                Ok(None) => None,
                Ok(Some(Err(e))) => Some((
                    Err(StoreError::new(
                        ErrorKind::Unreachable,
                        format!("{what}: the connection broke: {}", crate::error::chain(&e)),
                    )),
                    None,
                )),
                Err(_) => Some((
                    Err(StoreError::new(
                        ErrorKind::Unreachable,
                        format!("{what}: no data for {}s", timeout.as_secs()),
                    )),
                    None,
                )),
            }
        }
    })
    .boxed()
}

/// Build an SDK client for `settings`.
///
/// With path-style addressing (custom endpoints) we send or validate flexible checksums
/// only when an operation requires them: Ceph RGW 16 and older MinIO reject the
/// aws-chunked trailers the newest SDK defaults produce.
async fn client(
    settings: &S3Settings,
    clock: Arc<StoreClock>,
) -> anyhow::Result<aws_sdk_s3::Client> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(path) = &settings.ca_bundle {
        loader = loader.http_client(https_client_trusting(path)?);
    }
    if let Some(region) = &settings.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let (Some(key), Some(secret)) = (&settings.access_key_id, &settings.secret_access_key) {
        loader = loader.credentials_provider(Credentials::new(
            key.clone(),
            secret.expose().to_string(),
            None,
            None,
            PROVIDER_NAME,
        ));
    }
    let shared = loader.load().await;
    let mut builder = aws_sdk_s3::config::Builder::from(&shared)
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(settings.max_attempts.max(1))
                .with_initial_backoff(Duration::from_millis(200)),
        )
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(settings.timeout)
                .read_timeout(settings.timeout)
                .build(),
        )
        .interceptor(ClockWatch(clock));
    if shared.region().is_none() {
        builder = builder.region(Region::new("us-east-1"));
    }
    if let Some(endpoint) = &settings.endpoint_url {
        builder = builder.endpoint_url(endpoint.clone());
    }
    if settings.path_style {
        builder = builder
            .force_path_style(true)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
    }
    Ok(aws_sdk_s3::Client::from_conf(builder.build()))
}

/// An HTTPS client that trusts the system roots plus the PEM certificates in `path`.
fn https_client_trusting(
    path: &std::path::Path,
) -> anyhow::Result<aws_smithy_runtime_api::client::http::SharedHttpClient> {
    use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};
    let pem = std::fs::read(path).map_err(|e| {
        ConfigError::new(format!(
            "cannot read AWS_CA_BUNDLE file '{}': {e}; give a readable PEM bundle or unset AWS_CA_BUNDLE",
            path.display()
        ))
    })?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(ConfigError::new(format!(
            "AWS_CA_BUNDLE file '{}' holds no PEM certificate",
            path.display()
        ))
        .into());
    }
    let context = TlsContext::builder()
        .with_trust_store(TrustStore::default().with_pem_certificate(pem))
        .build()
        .map_err(|e| {
            ConfigError::new(format!(
                "AWS_CA_BUNDLE '{}' is unusable: {e}",
                path.display()
            ))
        })?;
    Ok(aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
        .tls_context(context)
        .build_https())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_keys_are_url_decoded() {
        assert_eq!(decode_key("with+space%2Bplus%01"), "with space+plus\u{1}");
        assert_eq!(decode_key("%C5%BC%C3%B3%C5%82%C4%87"), "żółć");
    }

    #[test]
    fn aws_endpoints_are_recognised() {
        assert!(is_aws_host("https://s3.amazonaws.com"));
        assert!(is_aws_host(
            "https://bucket.vpce-0a1b.s3.us-east-1.vpce.amazonaws.com/"
        ));
        assert!(is_aws_host("https://s3-fips.us-east-1.amazonaws.com"));
        assert!(!is_aws_host("http://127.0.0.1:9000"));
        assert!(!is_aws_host("https://amazonaws.com.evil.example"));
    }

    #[test]
    fn content_ranges_parse() {
        assert_eq!(parse_content_range("bytes 5-9/100"), Some((5, 100)));
        assert_eq!(parse_content_range("bytes */100"), None);
    }
}
