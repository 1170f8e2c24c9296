//! Multipart uploads beyond the object operations: aborting one (the one place
//! AbortMultipartUpload is sent), listing pending ones, and what a stopped process does
//! for the uploads it has in flight (or is creating).

use std::time::Duration;

use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::operation::abort_multipart_upload::AbortMultipartUploadError;
use aws_sdk_s3::operation::list_multipart_uploads::{
    ListMultipartUploadsError, ListMultipartUploadsOutput,
};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;

use super::S3Store;
use crate::stop;

impl S3Store {
    /// What a stop does for an upload being created: take its id if the reply came (the
    /// run's work is no longer polled once a stop began, so it may never come), else
    /// abort every pending upload at its key. Only one writer writes a key (the lease), and
    /// start times cannot tell this process's uploads apart (moto reports 2010 for all:
    /// measured).
    pub(super) fn sweep_for(&self, full: &str, mut creation: Creation) -> stop::Abort {
        let (client, bucket, key) = (self.client.clone(), self.bucket.clone(), full.to_string());
        Box::new(move || {
            Box::pin(async move {
                let known = match tokio::time::timeout(
                    Duration::from_secs(1),
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
                    if let (Some(k), Some(id)) = (u.key(), u.upload_id()) {
                        if k == key {
                            undone |= abort_upload(&client, &bucket, &key, id).await.is_ok();
                        }
                    }
                }
                undone
            })
        })
    }

    /// What a stop does for a known upload.
    pub(super) fn abort_action(&self, full: &str, id: &str) -> stop::Abort {
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
pub(super) async fn abort_upload(
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
pub(super) async fn uploads_page(
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
pub(super) type Creation = tokio::sync::watch::Receiver<Option<Option<String>>>;
