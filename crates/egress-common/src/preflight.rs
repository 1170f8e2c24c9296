//! `--check`: a preflight of every configured endpoint that prints one line per
//! capability and what it found, so that a missing permission or feature shows up before
//! the night it matters. It writes only under a temporary key (`.egress-check-<random>/`)
//! and removes what it wrote.
//!
//! Each finding is `ok` (works), `absent` (the store lacks it and the programs adapt, as
//! the line says) or `FAIL` (a run would fail: the line names the fix).

use std::fmt;

use bytes::Bytes;

use crate::ExitCode;
use egress_store::{
    Attributes, Body, CompletedPart, ErrorKind, GetOptions, ObjectStore, PartData, PartSlot,
    PutOptions, StoreError,
};

/// What a check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// It works.
    Ok,
    /// The store lacks it; the programs adapt.
    Absent,
    /// A run would fail.
    Fail,
}

/// One line of the preflight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What was checked (`output`, `database`).
    pub side: String,
    /// The capability (`multipart upload`).
    pub capability: &'static str,
    /// The verdict.
    pub status: Status,
    /// What was found, and for a failure the fix.
    pub detail: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = match self.status {
            Status::Ok => "ok",
            Status::Absent => "absent",
            Status::Fail => "FAIL",
        };
        write!(
            f,
            "{status:<6} {:<8} {:<26} {}",
            self.side, self.capability, self.detail
        )
    }
}

/// The findings of one side, gathered as the checks run.
pub struct Findings {
    side: String,
    /// Every line so far.
    pub lines: Vec<Finding>,
}

impl Findings {
    /// An empty list for `side`.
    pub fn new(side: &str) -> Findings {
        Findings {
            side: side.to_string(),
            lines: Vec::new(),
        }
    }

    /// Record a finding.
    pub fn add(&mut self, capability: &'static str, status: Status, detail: impl Into<String>) {
        self.lines.push(Finding {
            side: self.side.clone(),
            capability,
            status,
            detail: detail.into(),
        });
    }

    /// Record what a probe's answer says (`Ok((status, detail))`), or its error as a
    /// failure.
    pub fn judge(
        &mut self,
        capability: &'static str,
        judged: Result<(Status, String), StoreError>,
    ) {
        match judged {
            Ok((status, detail)) => self.add(capability, status, detail),
            Err(e) => self.add(capability, Status::Fail, e.to_string()),
        }
    }

    /// Record `Ok(detail)` as ok and an error as a failure; true when it worked.
    pub fn expect(
        &mut self,
        capability: &'static str,
        outcome: Result<String, StoreError>,
    ) -> bool {
        let worked = outcome.is_ok();
        self.judge(capability, outcome.map(|detail| (Status::Ok, detail)));
        worked
    }
}

/// Print every finding, one per line, and the exit code: 0 when a run would work, 2 when
/// anything failed (the configuration must change).
pub fn report(findings: &[Finding]) -> ExitCode {
    for finding in findings {
        println!("{finding}");
    }
    let failed = findings.iter().filter(|f| f.status == Status::Fail).count();
    if failed == 0 {
        println!("check passed: a run would work");
        ExitCode::Success
    } else {
        eprintln!("check failed: {failed} capability(ies) missing; see the FAIL lines");
        ExitCode::Usage
    }
}

/// What a side is used for, and so what must work there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// Read from (the sync's input): listing and reading.
    Read,
    /// Written to (the dump's output, the sync's output): everything.
    Write,
}

const SMALL: usize = 1024;
/// S3's smallest part that is not the last one.
const PART: usize = 5 * 1024 * 1024;

/// Check `store`, used as `usage`, and return what was found.
pub async fn check_store(store: &dyn ObjectStore, side: &str, usage: Use) -> Vec<Finding> {
    let mut found = Findings::new(side);
    let probed = store.probe(usage == Use::Write).await.map(|()| {
        format!(
            "{} answers and the credentials are accepted",
            store.describe("")
        )
    });
    if !found.expect("credentials and bucket", probed) {
        return found.lines;
    }
    if !found.expect("list", first_page(store).await) {
        return found.lines;
    }
    match usage {
        Use::Read => check_reads(store, &mut found).await,
        Use::Write => {
            let scratch = format!(".egress-check-{:016x}/", rand::random::<u64>());
            check_writes(store, &scratch, &mut found).await;
            check_multipart(store, &scratch, &mut found).await;
            check_pending_uploads(store, &scratch, &mut found).await;
            clean_up(store, &scratch).await;
        }
    }
    found.lines
}

async fn first_page(store: &dyn ObjectStore) -> Result<String, StoreError> {
    use futures::StreamExt;
    let mut pages = store.list("");
    let page = pages.next().await.transpose()?.unwrap_or_default();
    Ok(format!("{} object(s) on the first page", page.len()))
}

/// A reader's checks on objects already there: HEAD, a ranged GET and a part's size.
async fn check_reads(store: &dyn ObjectStore, found: &mut Findings) {
    use futures::StreamExt;
    let page = match store.list("").next().await {
        Some(Ok(page)) => page,
        _ => Vec::new(),
    };
    let Some(object) = page.iter().find(|o| o.size >= 16) else {
        found.add(
            "ranged GET",
            Status::Absent,
            "no object of 16 bytes or more to read: not checked",
        );
        return;
    };
    let ranged = read(store, &object.key, Some((4, 8)))
        .await
        .map(|b| format!("{} bytes of {} read", b.len(), store.describe(&object.key)));
    found.expect("ranged GET", ranged);
    match page
        .iter()
        .find(|o| o.etag.as_deref().is_some_and(|e| e.contains('-')))
    {
        Some(multipart) => part_number(store, &multipart.key, None, found).await,
        None => found.add(
            "HEAD ?partNumber",
            Status::Absent,
            "no multipart object on the first page: not checked",
        ),
    }
}

async fn read(
    store: &dyn ObjectStore,
    key: &str,
    range: Option<(u64, u64)>,
) -> Result<Bytes, StoreError> {
    let options = GetOptions {
        range,
        ..Default::default()
    };
    store.get(key, options).await?.body.collect().await
}

/// PUT with Content-MD5 and metadata, GET, a ranged GET, the metadata's round trip, a
/// conditional PUT, DELETE, and the listing's Last-Modified precision.
async fn check_writes(store: &dyn ObjectStore, scratch: &str, found: &mut Findings) {
    let key = format!("{scratch}small");
    let data = Bytes::from((0..SMALL).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let mut attributes = Attributes::default();
    attributes
        .metadata
        .insert("egress-check".into(), "round-trip".into());
    let options = PutOptions {
        attributes,
        content_md5: Some(md5(&data)),
        ..Default::default()
    };
    let written = store
        .put(&key, Body::from_bytes(data.clone()), &options)
        .await;
    let round_trip = match written {
        Ok(_) => read(store, &key, None)
            .await
            .and_then(|back| match back == data {
                true => Ok(format!(
                    "{SMALL} bytes written with Content-MD5 and read back"
                )),
                false => Err(StoreError::new(
                    ErrorKind::ChecksumMismatch,
                    "the bytes read back differ",
                )),
            }),
        Err(e) => Err(e),
    };
    if !found.expect("PUT + GET + DELETE", round_trip) {
        return;
    }
    let ranged = read(store, &key, Some((100, 10)))
        .await
        .map(|b| match b[..] == data[100..110] {
            true => "bytes 100-109 read exactly".to_string(),
            false => format!("asked for 10 bytes, got {}", b.len()),
        });
    found.expect("ranged GET", ranged);
    metadata_round_trip(store, &key, found).await;
    conditional_put(store, &key, found).await;
    modified_precision(store, scratch, found).await;
    let deleted = match store.delete(&key).await {
        Ok(()) => match store.head(&key).await {
            Err(e) if e.kind() == ErrorKind::NotFound => {
                Ok("deleted; HEAD then finds nothing".into())
            }
            Ok(_) => Err(StoreError::new(
                ErrorKind::Other,
                "the object is still there after DELETE",
            )),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    found.expect("DELETE", deleted);
}

async fn metadata_round_trip(store: &dyn ObjectStore, key: &str, found: &mut Findings) {
    let judged = store.head(key).await.map(|meta| {
        let kept = meta.attributes.metadata.get("egress-check");
        match kept.map(String::as_str) == Some("round-trip") {
            true => (Status::Ok, "x-amz-meta-* kept".into()),
            false => (
                Status::Absent,
                "not kept: the sync then decides by size and ETag alone".into(),
            ),
        }
    });
    found.judge("user metadata", judged);
}

async fn conditional_put(store: &dyn ObjectStore, key: &str, found: &mut Findings) {
    let options = PutOptions {
        condition: egress_store::Condition::IfAbsent,
        ..Default::default()
    };
    let body = Body::from_bytes(Bytes::from_static(b"x"));
    let judged = match store.put(key, body, &options).await {
        Err(e) if e.kind() == ErrorKind::PreconditionFailed => Ok((
            Status::Ok,
            "If-None-Match honoured: leases are taken atomically".into(),
        )),
        Ok(_) => Ok((
            Status::Absent,
            "If-None-Match ignored: leases are read back after half a second instead".into(),
        )),
        Err(e) => Err(e),
    };
    found.judge("conditional PUT", judged);
}

async fn modified_precision(store: &dyn ObjectStore, scratch: &str, found: &mut Findings) {
    use futures::StreamExt;
    let listed = store.list(scratch).next().await.transpose();
    let first = listed.map(|page| page.unwrap_or_default().into_iter().next());
    let judged = first.map(|object| match object {
        Some(o) if o.modified_nanos > 0 => (Status::Ok, "listings carry sub-second times"),
        Some(_) => (
            Status::Ok,
            "whole seconds: a same-size rewrite within a second is told apart by its ETag",
        ),
        None => (Status::Fail, "the object just written is not listed"),
    });
    found.judge(
        "Last-Modified precision",
        judged.map(|(s, d)| (s, d.into())),
    );
}

/// Create, upload two parts, complete; then whether `HEAD ?partNumber=1` tells the part.
async fn check_multipart(store: &dyn ObjectStore, scratch: &str, found: &mut Findings) {
    let key = format!("{scratch}multipart");
    let parts = [vec![7u8; PART], vec![9u8; SMALL]];
    match multipart_upload(store, &key, &parts).await {
        Ok(size) => {
            found.add(
                "multipart upload",
                Status::Ok,
                format!("create, 2 parts, complete: {size} bytes"),
            );
            part_number(store, &key, Some(PART as u64), found).await;
        }
        Err(e) => found.add("multipart upload", Status::Fail, e.to_string()),
    }
    let _ = store.delete(&key).await;
}

async fn multipart_upload(
    store: &dyn ObjectStore,
    key: &str,
    parts: &[Vec<u8>],
) -> Result<u64, StoreError> {
    let upload = store.create_multipart(key, &PutOptions::default()).await?;
    let mut done = Vec::new();
    let mut offset = 0u64;
    for (i, part) in parts.iter().enumerate() {
        let slot = PartSlot {
            number: i as u32 + 1,
            offset,
        };
        let body = Body::from_bytes(Bytes::from(part.clone()));
        match store
            .upload_part(
                &upload,
                PartData {
                    slot,
                    body,
                    content_md5: Some(md5(part)),
                },
            )
            .await
        {
            Ok(etag) => done.push(CompletedPart {
                number: slot.number,
                etag,
            }),
            Err(e) => {
                store.abort(upload).await;
                return Err(e);
            }
        }
        offset += part.len() as u64;
    }
    store.complete(upload, &done, offset).await?;
    Ok(store.head(key).await?.size)
}

/// Whether the store answers `HEAD ?partNumber=1` with the part's size (`expected`, when
/// known) or the whole object's.
async fn part_number(
    store: &dyn ObjectStore,
    key: &str,
    expected: Option<u64>,
    found: &mut Findings,
) {
    const CAP: &str = "HEAD ?partNumber";
    let whole = store.head(key).await.map(|m| m.size).ok();
    let judged = store.part_size(key, 1).await.map(|size| match size {
        Some(n) if Some(n) != whole && expected.is_none_or(|e| e == n) => (
            Status::Ok,
            format!("part 1 is {n} bytes: copies keep the source's parts"),
        ),
        _ => (
            Status::Absent,
            "answered for the whole object: copies take part sizes from the manifest, else guess"
                .into(),
        ),
    });
    found.judge(CAP, judged);
}

/// Whether uploads nobody finished can be listed (and so cleaned up after a killed run).
async fn check_pending_uploads(store: &dyn ObjectStore, scratch: &str, found: &mut Findings) {
    const CAP: &str = "ListMultipartUploads";
    let key = format!("{scratch}pending");
    let upload = match store.create_multipart(&key, &PutOptions::default()).await {
        Ok(u) => u,
        Err(e) => return found.add(CAP, Status::Fail, e.to_string()),
    };
    match store.pending_uploads(scratch).await {
        Ok(list) if list.iter().any(|p| p.id == upload.id) => found.add(
            CAP,
            Status::Ok,
            "an unfinished upload is listed: a killed run's uploads are aborted by the next run",
        ),
        Ok(_) => found.add(
            CAP,
            Status::Absent,
            "an unfinished upload is not listed: the bucket's lifecycle rule removes killed runs' uploads",
        ),
        Err(e) if e.kind() == ErrorKind::Unsupported => found.add(
            CAP,
            Status::Absent,
            "not implemented: the bucket's lifecycle rule removes killed runs' uploads",
        ),
        Err(e) => found.add(CAP, Status::Fail, e.to_string()),
    }
    store.abort(upload).await;
}

/// Remove whatever the checks left under `scratch`.
async fn clean_up(store: &dyn ObjectStore, scratch: &str) {
    use futures::StreamExt;
    let mut pages = store.list(scratch);
    while let Some(Ok(page)) = pages.next().await {
        for object in page {
            let _ = store.delete(&object.key).await;
        }
    }
    if let Ok(pending) = store.pending_uploads(scratch).await {
        for upload in pending {
            let _ = store.abort_pending(&upload).await;
        }
    }
}

fn md5(data: &[u8]) -> [u8; 16] {
    use md5::{Digest, Md5};
    Md5::digest(data).into()
}
