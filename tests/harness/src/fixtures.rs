//! Data and objects for tests: deterministic bytes, objects put one by one or in parts of
//! chosen sizes, the egress-sync command line for two endpoints, and a proxy that holds a
//! run's uploads until the test lets them through.

use std::collections::HashMap;
use std::process::Command;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use futures::StreamExt;

use crate::proxy::{Hook, Proxy};
use crate::s3::Endpoint;

/// One MiB.
pub const MIB: usize = 1024 * 1024;

/// Deterministic pseudo-random bytes (poorly compressible, distinct per seed).
pub fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Put every `(key, body)` into `bucket`, 32 at a time.
pub async fn put_many(server: &dyn Endpoint, bucket: &str, objects: Vec<(String, Vec<u8>)>) {
    let client = server.s3().client();
    futures::stream::iter(objects.into_iter().map(|(key, body)| {
        let client = client.clone();
        async move {
            client
                .put_object()
                .bucket(bucket)
                .key(&key)
                .body(ByteStream::from(body))
                .send()
                .await
                .unwrap_or_else(|e| {
                    panic!("put {key}: {}", aws_sdk_s3::error::DisplayErrorContext(e))
                });
        }
    }))
    .buffer_unordered(32)
    .collect::<Vec<()>>()
    .await;
}

/// Upload `body` as a multipart object whose parts have the given sizes (the last takes
/// the rest), with a content type and one metadata entry; returns the ETag the server gave.
pub async fn put_parts(
    server: &dyn Endpoint,
    bucket: &str,
    key: &str,
    body: &[u8],
    sizes: &[usize],
) -> String {
    let client = server.s3().client();
    let created = client
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .content_type("application/gzip")
        .metadata("origin", "multipart-test")
        .send()
        .await
        .expect("create multipart");
    let id = created.upload_id().expect("upload id").to_string();
    let mut parts = Vec::new();
    let mut offset = 0;
    for (i, &size) in sizes.iter().enumerate() {
        let end = if i + 1 == sizes.len() {
            body.len()
        } else {
            offset + size
        };
        let n = i as i32 + 1;
        let out = client
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(&id)
            .part_number(n)
            .body(ByteStream::from(body[offset..end].to_vec()))
            .send()
            .await
            .expect("upload part");
        parts.push(
            CompletedPart::builder()
                .part_number(n)
                .set_e_tag(out.e_tag().map(str::to_string))
                .build(),
        );
        offset = end;
    }
    let done = client
        .complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(&id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await;
    // moto answers with another XML root than the SDK expects: the 200 is what counts.
    let etag = match done {
        Ok(done) => done.e_tag().map(str::to_string),
        Err(e) if e.raw_response().is_some_and(|r| r.status().is_success()) => None,
        Err(e) => panic!(
            "complete multipart {key}: {}",
            aws_sdk_s3::error::DisplayErrorContext(e)
        ),
    };
    let etag = match etag {
        Some(etag) => etag,
        None => {
            let head = client
                .head_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .expect("head");
            head.e_tag().unwrap_or("").to_string()
        }
    };
    etag.trim_matches('"').to_string()
}

/// Upload `body` in parts of `part` bytes.
pub async fn put_multipart(
    server: &dyn Endpoint,
    bucket: &str,
    key: &str,
    body: &[u8],
    part: usize,
) -> String {
    let sizes = vec![part; body.len().div_ceil(part).max(1)];
    put_parts(server, bucket, key, body, &sizes).await
}

/// The ETag of every object under `prefix` (key without the prefix -> ETag).
pub async fn etags(server: &dyn Endpoint, bucket: &str, prefix: &str) -> HashMap<String, String> {
    let objects = server.s3().list(bucket, prefix).await;
    let etag =
        |o: &aws_sdk_s3::types::Object| o.e_tag().unwrap_or("").trim_matches('"').to_string();
    objects
        .iter()
        .map(|o| {
            let key = o.key().unwrap_or("");
            (key.strip_prefix(prefix).unwrap_or(key).to_string(), etag(o))
        })
        .collect()
}

/// Every object under `prefix` as key (without the prefix) -> bytes.
pub async fn contents(
    server: &dyn Endpoint,
    bucket: &str,
    prefix: &str,
) -> HashMap<String, Vec<u8>> {
    let mut out = HashMap::new();
    let server = server.s3();
    for key in server.keys(bucket, prefix).await {
        let rel = key.strip_prefix(prefix).unwrap_or(&key).to_string();
        out.insert(rel, server.get(bucket, &key).await);
    }
    out
}

/// `bin` (egress-sync) mirroring `input`/`input_path` into `output`/`output_path`, with
/// small parts so that test objects span several.
pub fn sync_command(
    bin: &str,
    input: &dyn Endpoint,
    input_path: &str,
    output: &dyn Endpoint,
    output_path: &str,
    args: &[&str],
) -> Command {
    let (input, output) = (input.s3(), output.s3());
    let mut cmd = crate::clean_command(bin);
    cmd.env("INPUT_URL", &input.endpoint)
        .env("INPUT_PATH", input_path)
        .env("INPUT_ACCESS_KEY_ID", &input.access_key)
        .env("INPUT_SECRET_ACCESS_KEY", &input.secret_key)
        .env("OUTPUT_URL", &output.endpoint)
        .env("OUTPUT_PATH", output_path)
        .env("OUTPUT_ACCESS_KEY_ID", &output.access_key)
        .env("OUTPUT_SECRET_ACCESS_KEY", &output.secret_key)
        .args(["--part-size-mib", "5", "--multipart-threshold-mib", "5"])
        .args(args);
    cmd
}

/// A `_manifest.json` for `date` listing `files` (name and bytes), as egress-dump writes it.
pub fn manifest_json(date: &str, files: &[(&str, &[u8])]) -> Vec<u8> {
    let with_parts: Vec<Listed<'_>> = files.iter().map(|(f, b)| (*f, *b, None)).collect();
    manifest_with_parts(date, &with_parts)
}

/// An object a manifest lists: its file name, its bytes, its part sizes (if multipart).
pub type Listed<'a> = (&'a str, &'a [u8], Option<Vec<u64>>);

/// [`manifest_json`], with each object's multipart part sizes where it has them.
pub fn manifest_with_parts(date: &str, files: &[Listed<'_>]) -> Vec<u8> {
    let tables: Vec<serde_json::Value> = files
        .iter()
        .map(|(file, body, parts)| {
            let mut table = serde_json::json!({
                "table": file.trim_end_matches(".csv.gz"), "schema": "public",
                "name": file.trim_end_matches(".csv.gz"), "file": file,
                "key": format!("data/{date}/{file}"), "rows": 1,
                "uncompressed_bytes": 1, "compressed_bytes": body.len(),
                "sha256": crate::sha256_hex(body), "uncompressed_sha256": "x",
                "columns": [{"name": "v", "type": "text"}]
            });
            if let Some(parts) = parts {
                table["part_sizes"] = serde_json::json!(parts);
            }
            table
        })
        .collect();
    serde_json::to_vec_pretty(&serde_json::json!({
        "format_version": 1, "tool": "egress-dump", "tool_version": "test", "date": date,
        "run_started": "2024-01-01T00:00:00.000Z", "run_finished": "2024-01-01T00:00:01.000Z",
        "snapshot": {"taken_at": "2024-01-01T00:00:00.000000Z", "txid_snapshot": "1:1:", "wal_lsn": "0/1", "server_version": "15"},
        "compression_level": 6, "header": false, "tables": tables
    }))
    .expect("manifest JSON")
}

/// Which UploadParts a [`gated_proxy`] lets pass: all of them once opened, else those of
/// the uploads let through one by one.
#[derive(Default)]
pub struct Gate {
    open: std::sync::atomic::AtomicBool,
    let_through: std::sync::Mutex<Vec<String>>,
}

impl Gate {
    /// Open (every held part goes on) or close the gate.
    pub fn set(&self, open: bool) {
        self.open.store(open, std::sync::atomic::Ordering::SeqCst);
    }

    fn passes(&self, target: &str) -> bool {
        self.open.load(std::sync::atomic::Ordering::SeqCst)
            || upload_id(target).is_some_and(|id| {
                self.let_through
                    .lock()
                    .map(|ids| ids.contains(&id))
                    .unwrap_or(true)
            })
    }

    /// Let the parts of the upload `target` belongs to through.
    pub fn let_through(&self, target: &str) {
        let id = upload_id(target).expect("an upload id");
        if let Ok(mut ids) = self.let_through.lock() {
            ids.push(id);
        }
    }
}

/// The upload id in a request target (`...?partNumber=1&uploadId=...`).
pub fn upload_id(target: &str) -> Option<String> {
    let query = target.split_once('?')?.1;
    query
        .split('&')
        .find_map(|p| p.strip_prefix("uploadId="))
        .map(str::to_string)
}

/// A proxy in front of `server` that holds every UploadPart its [`Gate`] does not let
/// pass: a run's multipart uploads stay pending, and the run unfinished, until the test
/// says so (everything else, leases included, goes through).
pub fn gated_proxy(server: &dyn Endpoint) -> (Proxy, std::sync::Arc<Gate>) {
    let gate = std::sync::Arc::new(Gate::default());
    let held = gate.clone();
    let hook: Hook = std::sync::Arc::new(move |seen| {
        let (gate, part, target) = (held.clone(), seen.is_upload_part(), seen.target.clone());
        Box::pin(async move {
            while part && !gate.passes(&target) {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
    });
    (Proxy::start(&server.s3().endpoint, Some(hook), None), gate)
}
