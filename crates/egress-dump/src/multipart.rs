//! S3 multipart upload with a bounded number of parts in flight.
//!
//! Parts arrive on a channel; nothing becomes visible until [`complete`] is called, and
//! [`abort`] removes every uploaded part. A stream that fits in one part is sent as one PUT.

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use egress_common::s3::failure;
use egress_common::{cleanup, Failure};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// Credentials hint printed when S3 rejects the dump's keys.
const CREDENTIALS_HINT: &str = "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the AWS profile)";

/// Smallest part S3 accepts (except the last one) is 5 MiB; we start above it.
pub const DEFAULT_BASE_PART_SIZE: usize = 8 * 1024 * 1024;
/// S3's limit on parts per upload.
pub const MAX_PARTS: u32 = 10_000;
/// S3's limit on one part's size.
const MAX_PART_SIZE: usize = 5 * 1024 * 1024 * 1024;

/// Target size of part `number` (1-based): `base`, doubling every 1,000 parts.
///
/// With an 8 MiB base, 10,000 parts hold about 8 TiB, while small tables use small parts.
pub fn part_size(number: u32, base: usize) -> usize {
    let doublings = (number.saturating_sub(1) / 1000).min(20);
    base.saturating_mul(1usize << doublings).min(MAX_PART_SIZE)
}

/// Where an object goes.
#[derive(Clone, Debug)]
pub struct S3Object {
    /// Client for the bucket's endpoint.
    pub client: aws_sdk_s3::Client,
    /// Bucket name.
    pub bucket: String,
    /// Full object key.
    pub key: String,
}

/// An upload whose data has been sent but which is not yet visible.
#[derive(Debug)]
pub enum Pending {
    /// Small object, held until [`complete`] PUTs it.
    Single(Bytes),
    /// Multipart upload with all parts uploaded.
    Multipart {
        /// The upload's id.
        upload_id: String,
        /// Its entry in the interruption clean-up registry.
        ticket: cleanup::Ticket,
        /// Uploaded parts in order.
        parts: Vec<CompletedPart>,
    },
}

/// Receive parts and upload them, keeping at most `in_flight` part uploads running.
///
/// On failure the multipart upload is aborted before returning.
pub async fn upload(
    target: &S3Object,
    mut parts: mpsc::Receiver<Bytes>,
    in_flight: usize,
) -> Result<Pending, Failure> {
    let Some(first) = parts.recv().await else {
        return Ok(Pending::Single(Bytes::new()));
    };
    let Some(second) = parts.recv().await else {
        return Ok(Pending::Single(first));
    };
    let created = target
        .client
        .create_multipart_upload()
        .bucket(&target.bucket)
        .key(&target.key)
        .content_type("application/gzip")
        .send()
        .await
        .map_err(|e| {
            failure(
                &e,
                &format!("starting the upload of {}", target.key),
                &target.bucket,
                CREDENTIALS_HINT,
            )
        })?;
    let upload_id = created.upload_id().unwrap_or_default().to_string();
    if upload_id.is_empty() {
        return Err(Failure::runtime(anyhow::anyhow!(
            "the S3 server returned no upload id for {}",
            target.key
        )));
    }
    // If the process is told to stop, this upload is aborted (see egress_common::cleanup).
    let ticket = cleanup::register(cleanup::Unfinished::Upload {
        client: target.client.clone(),
        bucket: target.bucket.clone(),
        key: target.key.clone(),
        upload_id: upload_id.clone(),
    });
    match upload_parts(target, &upload_id, first, second, &mut parts, in_flight).await {
        Ok(completed) => Ok(Pending::Multipart {
            upload_id,
            ticket,
            parts: completed,
        }),
        Err(e) => {
            abort_upload(target, &upload_id).await;
            cleanup::done(ticket);
            Err(e)
        }
    }
}

async fn upload_parts(
    target: &S3Object,
    upload_id: &str,
    first: Bytes,
    second: Bytes,
    parts: &mut mpsc::Receiver<Bytes>,
    in_flight: usize,
) -> Result<Vec<CompletedPart>, Failure> {
    let mut running: JoinSet<Result<CompletedPart, Failure>> = JoinSet::new();
    let mut done: Vec<CompletedPart> = Vec::new();
    let mut number: u32 = 0;
    let mut queue = vec![second, first];
    loop {
        let body = match queue.pop() {
            Some(body) => body,
            None => match parts.recv().await {
                Some(body) => body,
                None => break,
            },
        };
        number += 1;
        if number > MAX_PARTS {
            return Err(Failure::runtime(anyhow::anyhow!(
                "{} needs more than {MAX_PARTS} parts; raise the base part size",
                target.key
            )));
        }
        while running.len() >= in_flight.max(1) {
            done.push(join_one(&mut running).await?);
        }
        running.spawn(upload_part(
            target.clone(),
            upload_id.to_string(),
            number,
            body,
        ));
    }
    while !running.is_empty() {
        done.push(join_one(&mut running).await?);
    }
    done.sort_by_key(|p| p.part_number());
    Ok(done)
}

async fn join_one(
    running: &mut JoinSet<Result<CompletedPart, Failure>>,
) -> Result<CompletedPart, Failure> {
    match running.join_next().await {
        Some(Ok(result)) => result,
        Some(Err(join)) => Err(Failure::runtime(anyhow::anyhow!(
            "part upload task failed: {join}"
        ))),
        None => Err(Failure::runtime(anyhow::anyhow!(
            "no part upload was running"
        ))),
    }
}

async fn upload_part(
    target: S3Object,
    upload_id: String,
    number: u32,
    body: Bytes,
) -> Result<CompletedPart, Failure> {
    let out = target
        .client
        .upload_part()
        .bucket(&target.bucket)
        .key(&target.key)
        .upload_id(&upload_id)
        .part_number(number as i32)
        .body(ByteStream::from(body))
        .send()
        .await
        .map_err(|e| {
            failure(
                &e,
                &format!("uploading part {number} of {}", target.key),
                &target.bucket,
                CREDENTIALS_HINT,
            )
        })?;
    Ok(CompletedPart::builder()
        .part_number(number as i32)
        .set_e_tag(out.e_tag().map(str::to_string))
        .build())
}

/// Make the object visible; `size` is what the object must measure afterwards.
pub async fn complete(target: &S3Object, pending: Pending, size: u64) -> Result<(), Failure> {
    match pending {
        Pending::Single(body) => {
            target
                .client
                .put_object()
                .bucket(&target.bucket)
                .key(&target.key)
                .content_type("application/gzip")
                .body(ByteStream::from(body))
                .send()
                .await
                .map_err(|e| {
                    failure(
                        &e,
                        &format!("uploading {}", target.key),
                        &target.bucket,
                        CREDENTIALS_HINT,
                    )
                })?;
        }
        Pending::Multipart {
            upload_id,
            ticket,
            parts,
        } => {
            let result = target
                .client
                .complete_multipart_upload()
                .bucket(&target.bucket)
                .key(&target.key)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await;
            // Completed or (below) aborted: nothing left to clean up either way.
            cleanup::done(ticket);
            if let Err(e) = result {
                // A 200 whose body the SDK cannot parse (some S3 clones use another XML
                // root) may still have completed the upload: believe the object, not the body.
                let ok_status = e.raw_response().is_some_and(|r| r.status().is_success());
                if ok_status && object_has_size(target, size).await {
                    tracing::debug!(key = %target.key, "completion reply unparseable, object verified by HEAD");
                    return Ok(());
                }
                abort_upload(target, &upload_id).await;
                return Err(failure(
                    &e,
                    &format!("completing the upload of {}", target.key),
                    &target.bucket,
                    CREDENTIALS_HINT,
                ));
            }
        }
    }
    Ok(())
}

async fn object_has_size(target: &S3Object, size: u64) -> bool {
    let head = target
        .client
        .head_object()
        .bucket(&target.bucket)
        .key(&target.key)
        .send()
        .await;
    matches!(head, Ok(h) if h.content_length() == Some(size as i64))
}

/// Throw away an upload that must not become visible.
pub async fn abort(target: &S3Object, pending: Pending) {
    if let Pending::Multipart {
        upload_id, ticket, ..
    } = pending
    {
        abort_upload(target, &upload_id).await;
        cleanup::done(ticket);
    }
}

async fn abort_upload(target: &S3Object, upload_id: &str) {
    let result = target
        .client
        .abort_multipart_upload()
        .bucket(&target.bucket)
        .key(&target.key)
        .upload_id(upload_id)
        .send()
        .await;
    match result {
        Ok(_) => tracing::debug!(key = %target.key, "multipart upload aborted"),
        Err(e) => tracing::warn!(
            key = %target.key,
            error = %aws_sdk_s3::error::DisplayErrorContext(&e),
            "could not abort the multipart upload; the next run (or the bucket's lifecycle rule) removes it"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_size_grows_to_fit_any_table_in_10000_parts() {
        let base = DEFAULT_BASE_PART_SIZE;
        assert_eq!(part_size(1, base), base);
        assert_eq!(part_size(1000, base), base);
        assert_eq!(part_size(1001, base), 2 * base);
        assert_eq!(part_size(10_000, base), 512 * base);
        let total: u128 = (1..=MAX_PARTS).map(|n| part_size(n, base) as u128).sum();
        // Almost 8 TiB fits: far beyond any table we expect, with 5 MiB <= part <= 5 GiB.
        assert!(total > 7 * (1u128 << 40));
        assert!((1..=MAX_PARTS).all(|n| part_size(n, base) >= 5 * 1024 * 1024));
        assert!((1..=MAX_PARTS).all(|n| part_size(n, base) <= MAX_PART_SIZE));
    }
}
