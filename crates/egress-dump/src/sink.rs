//! Where a dump's bytes go: an S3 object (multipart) or a local file (temp name, then
//! rename). Either way the result appears only when [`Sink::commit`] is called.

use std::path::{Path, PathBuf};

use anyhow::Context;
use bytes::Bytes;
use egress_common::{cleanup, Failure, Location, ResultExt};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::multipart::{self, S3Object};

/// Credentials hint printed when S3 rejects the dump's keys.
pub const CREDENTIALS_HINT: &str = "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the AWS profile)";

/// The destination of a whole run (bucket and prefix, or a directory).
#[derive(Clone, Debug)]
pub enum Destination {
    /// An S3 bucket and prefix.
    S3 {
        /// Client for the endpoint.
        client: aws_sdk_s3::Client,
        /// Bucket.
        bucket: String,
        /// Prefix without trailing slash (may be empty).
        prefix: String,
    },
    /// A local directory.
    Local(PathBuf),
}

/// One object being written.
#[derive(Debug)]
pub enum Sink {
    /// An S3 object.
    S3(S3Object),
    /// A local file.
    Local {
        /// Final path.
        path: PathBuf,
        /// Where data is written until complete.
        temp: PathBuf,
        /// Its entry in the interruption clean-up registry.
        ticket: cleanup::Ticket,
    },
}

/// Data received, not yet visible.
#[derive(Debug)]
pub enum Pending {
    /// S3 upload awaiting completion.
    S3(multipart::Pending),
    /// Local temp file awaiting rename.
    Local,
}

impl Destination {
    /// Build from a parsed location.
    pub fn new(location: &Location, client: Option<aws_sdk_s3::Client>) -> Option<Destination> {
        match location {
            Location::S3 { bucket, prefix } => Some(Destination::S3 {
                client: client?,
                bucket: bucket.clone(),
                prefix: prefix.clone(),
            }),
            Location::Local(path) => Some(Destination::Local(path.clone())),
        }
    }

    /// Human-readable address of `relative` (e.g. `s3://b/p/2024-01-01/t.csv.gz`).
    pub fn describe(&self, relative: &str) -> String {
        match self {
            Destination::S3 { bucket, .. } => format!("s3://{bucket}/{}", self.key(relative)),
            Destination::Local(dir) => dir.join(relative).display().to_string(),
        }
    }

    /// The object key of `relative` under the prefix.
    pub fn key(&self, relative: &str) -> String {
        match self {
            Destination::S3 { prefix, .. } if !prefix.is_empty() => format!("{prefix}/{relative}"),
            _ => relative.to_string(),
        }
    }

    /// Write a small object (the manifest) in one request; visible atomically.
    pub async fn put_small(
        &self,
        relative: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> Result<(), Failure> {
        match self {
            Destination::S3 { client, bucket, .. } => {
                let key = self.key(relative);
                client
                    .put_object()
                    .bucket(bucket)
                    .key(&key)
                    .content_type(content_type)
                    .body(body.into())
                    .send()
                    .await
                    .map_err(|e| {
                        egress_common::s3::failure(
                            &e,
                            &format!("writing {key}"),
                            bucket,
                            CREDENTIALS_HINT,
                        )
                    })?;
                Ok(())
            }
            Destination::Local(_) => {
                let sink = self.open(relative).await?;
                let (tx, rx) = mpsc::channel(1);
                let size = body.len() as u64;
                tx.send(Bytes::from(body)).await.ok();
                drop(tx);
                let pending = sink.receive(rx, 1).await?;
                sink.commit(pending, size).await
            }
        }
    }

    /// Delete `relative` if it exists.
    pub async fn delete(&self, relative: &str) -> Result<(), Failure> {
        match self {
            Destination::S3 { client, bucket, .. } => {
                let key = self.key(relative);
                client
                    .delete_object()
                    .bucket(bucket)
                    .key(&key)
                    .send()
                    .await
                    .map_err(|e| {
                        egress_common::s3::failure(
                            &e,
                            &format!("deleting {key}"),
                            bucket,
                            CREDENTIALS_HINT,
                        )
                    })?;
                Ok(())
            }
            Destination::Local(dir) => match tokio::fs::remove_file(dir.join(relative)).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Failure::runtime(
                    anyhow::anyhow!("cannot delete {}: {e}", dir.join(relative).display()),
                )),
                _ => Ok(()),
            },
        }
    }

    /// Open a sink for `relative` (`<date>/<table>.csv.gz`).
    pub async fn open(&self, relative: &str) -> Result<Sink, Failure> {
        match self {
            Destination::S3 { client, bucket, .. } => Ok(Sink::S3(S3Object {
                client: client.clone(),
                bucket: bucket.clone(),
                key: self.key(relative),
            })),
            Destination::Local(dir) => {
                let path = dir.join(relative);
                if let Some(parent) = path.parent() {
                    tokio::fs::create_dir_all(parent)
                        .await
                        .with_context(|| format!("cannot create directory {}", parent.display()))
                        .usage_err()?;
                }
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default();
                let temp = path.with_file_name(format!(".{name}.partial-{}", std::process::id()));
                let ticket = cleanup::register(cleanup::Unfinished::File(temp.clone()));
                Ok(Sink::Local { path, temp, ticket })
            }
        }
    }
}

impl Sink {
    /// Consume every part from `parts`; keep it invisible.
    pub async fn receive(
        &self,
        parts: mpsc::Receiver<Bytes>,
        in_flight: usize,
    ) -> Result<Pending, Failure> {
        match self {
            Sink::S3(object) => Ok(Pending::S3(
                multipart::upload(object, parts, in_flight).await?,
            )),
            Sink::Local { temp, .. } => {
                let result = write_file(temp, parts).await;
                if result.is_err() {
                    let _ = tokio::fs::remove_file(temp).await;
                }
                result.runtime_err()?;
                Ok(Pending::Local)
            }
        }
    }

    /// Make the object (of `size` bytes) visible.
    pub async fn commit(&self, pending: Pending, size: u64) -> Result<(), Failure> {
        match (self, pending) {
            (Sink::S3(object), Pending::S3(p)) => multipart::complete(object, p, size).await,
            (Sink::Local { path, temp, ticket }, _) => {
                cleanup::done(*ticket);
                let result = tokio::fs::rename(temp, path).await.with_context(|| {
                    format!(
                        "cannot move the finished file into place at {}",
                        path.display()
                    )
                });
                if result.is_err() {
                    let _ = tokio::fs::remove_file(temp).await;
                }
                result.runtime_err()?;
                if let Some(parent) = path.parent() {
                    sync_dir(parent).await;
                }
                Ok(())
            }
            (Sink::S3(_), Pending::Local) => {
                Err(Failure::runtime(anyhow::anyhow!("internal: sink mismatch")))
            }
        }
    }

    /// Discard what was received.
    pub async fn abort(&self, pending: Option<Pending>) {
        match (self, pending) {
            (Sink::S3(object), Some(Pending::S3(p))) => multipart::abort(object, p).await,
            (Sink::Local { temp, ticket, .. }, _) => {
                let _ = tokio::fs::remove_file(temp).await;
                cleanup::done(*ticket);
            }
            _ => {}
        }
    }
}

async fn write_file(temp: &Path, mut parts: mpsc::Receiver<Bytes>) -> anyhow::Result<()> {
    let mut file = tokio::fs::File::create(temp)
        .await
        .with_context(|| format!("cannot create {}", temp.display()))?;
    while let Some(part) = parts.recv().await {
        file.write_all(&part)
            .await
            .with_context(|| format!("cannot write {}", temp.display()))?;
    }
    file.flush().await?;
    file.sync_all()
        .await
        .with_context(|| format!("cannot flush {} to disk", temp.display()))?;
    Ok(())
}

async fn sync_dir(dir: &Path) {
    if let Ok(d) = tokio::fs::File::open(dir).await {
        let _ = d.sync_all().await;
    }
}
