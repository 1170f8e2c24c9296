//! Ephemeral S3-compatible servers: `s3s-fs` (checks signatures, fast) and `moto` (has
//! ListMultipartUploads), each on a free loopback port with its own credentials.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aws_sdk_s3::config::{
    Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::types::Object;

use crate::process::{find_binary, wait_for_port};

/// Which server implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3Kind {
    /// `s3s-fs`: verifies SigV4 and checksums; no ListMultipartUploads.
    S3sFs,
    /// `moto_server`: implements ListMultipartUploads; accepts any credentials.
    Moto,
}

/// A running server; killed on drop.
pub struct S3Server {
    /// Which implementation.
    pub kind: S3Kind,
    /// Its address and credentials; the server derefs to it for the client helpers.
    pub api: S3Endpoint,
    /// Data directory (s3s-fs stores objects as files here).
    pub root: PathBuf,
    port: u16,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl S3Server {
    /// Start a server of `kind` with credentials unique to this instance.
    pub fn start(kind: S3Kind) -> S3Server {
        Self::start_with_secret(kind, None)
    }

    /// Start a server of `kind` holding an empty `bucket`.
    pub async fn with_bucket(kind: S3Kind, bucket: &str) -> S3Server {
        let server = Self::start(kind);
        server.create_bucket(bucket).await;
        server
    }

    /// Start a server whose secret key is `secret` (e.g. a sentinel value for leak tests).
    pub fn start_with_secret(kind: S3Kind, secret: Option<&str>) -> S3Server {
        let dir = tempfile::Builder::new()
            .prefix("egress-s3-")
            .tempdir()
            .expect("temp dir");
        let root = dir.path().join("data");
        std::fs::create_dir_all(&root).expect("create data dir");
        let port = crate::free_port();
        let access_key = format!("AKTEST{port}");
        let secret_key = secret
            .map(str::to_string)
            .unwrap_or_else(|| format!("secret-{port}-{}", std::process::id()));
        let mut server = S3Server {
            kind,
            api: S3Endpoint {
                endpoint: format!("http://127.0.0.1:{port}"),
                access_key,
                secret_key,
            },
            root,
            port,
            child: None,
            _dir: dir,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let log_path = self._dir.path().join("server.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("open log");
        let port = self.port.to_string();
        let mut cmd = match self.kind {
            S3Kind::S3sFs => {
                let home = std::env::var_os("HOME")
                    .map(PathBuf::from)
                    .unwrap_or_default();
                let bin = find_binary(
                    "s3s-fs",
                    "S3S_FS",
                    &[home.join(".cargo/bin")],
                    "cargo install s3s-fs@0.14.1 --locked --features binary",
                );
                let mut cmd = Command::new(bin);
                cmd.args(["--host", "127.0.0.1", "--port", &port])
                    .args([
                        "--access-key",
                        &self.access_key,
                        "--secret-key",
                        &self.secret_key,
                    ])
                    .arg(&self.root);
                cmd
            }
            S3Kind::Moto => {
                let bin = find_binary(
                    "moto_server",
                    "MOTO_SERVER",
                    &[PathBuf::from("/opt/egress-moto/bin")],
                    "python3 -m venv /opt/egress-moto && /opt/egress-moto/bin/pip install 'moto[server]'",
                );
                let mut cmd = Command::new(bin);
                cmd.args(["-H", "127.0.0.1", "-p", &port]);
                cmd
            }
        };
        cmd.stdout(Stdio::from(log.try_clone().expect("clone log")))
            .stderr(Stdio::from(log))
            .stdin(Stdio::null());
        self.child = Some(cmd.spawn().expect("spawn S3 server"));
        wait_for_port(
            self.port,
            Duration::from_secs(30),
            "S3 test server",
            &log_path,
        );
    }

    /// Start the server again on the same port, with the same data directory (s3s-fs keeps
    /// its objects; moto starts empty).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Address and credentials, with the client helpers.
    pub fn s3(&self) -> S3Endpoint {
        self.api.clone()
    }

    /// Multipart uploads not yet completed or aborted (server must implement the call: moto).
    pub async fn pending_uploads(&self, bucket: &str) -> Vec<String> {
        assert_eq!(
            self.kind,
            S3Kind::Moto,
            "s3s-fs has no ListMultipartUploads; use S3Kind::Moto"
        );
        self.api.pending_uploads(bucket).await
    }

    /// Stop the server now (fault injection).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl std::ops::Deref for S3Server {
    type Target = S3Endpoint;
    fn deref(&self) -> &S3Endpoint {
        &self.api
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Anything an S3 client can talk to: a test server, a Ceph RGW, a proxy in front of one.
pub trait Endpoint {
    /// Its address and credentials.
    fn s3(&self) -> S3Endpoint;
}

impl Endpoint for S3Server {
    fn s3(&self) -> S3Endpoint {
        S3Server::s3(self)
    }
}

impl Endpoint for crate::CephRgw {
    fn s3(&self) -> S3Endpoint {
        crate::CephRgw::s3(self)
    }
}

impl Endpoint for S3Endpoint {
    fn s3(&self) -> S3Endpoint {
        self.clone()
    }
}

/// Where an S3-compatible server listens and the credentials it accepts, with the helpers
/// tests use (shared by [`S3Server`] and [`crate::CephRgw`]).
#[derive(Debug, Clone)]
pub struct S3Endpoint {
    /// `http://127.0.0.1:<port>`
    pub endpoint: String,
    /// Access key the server accepts.
    pub access_key: String,
    /// Secret key the server accepts.
    pub secret_key: String,
}

impl S3Endpoint {
    /// The same credentials, reached through `endpoint` (a proxy in front of this server).
    pub fn via(&self, endpoint: &str) -> S3Endpoint {
        S3Endpoint {
            endpoint: endpoint.to_string(),
            ..self.clone()
        }
    }

    /// Environment for egress-dump: the standard AWS variables pointing here.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".into(), self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID".into(), self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.secret_key.clone()),
            ("AWS_REGION".into(), "us-east-1".into()),
        ]
    }

    /// A client with these credentials: path-style, and checksums only where required
    /// (Ceph RGW 16 rejects the SDK's default aws-chunked checksum trailers).
    pub fn client(&self) -> aws_sdk_s3::Client {
        let config = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .credentials_provider(Credentials::new(
                &self.access_key,
                &self.secret_key,
                None,
                None,
                "test",
            ))
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    /// This server's `bucket`/`prefix` as the programs open it (egress-store's S3Store).
    pub async fn store(&self, bucket: &str, prefix: &str) -> egress_store::Store {
        let settings = egress_store::S3Settings {
            endpoint_url: Some(self.endpoint.clone()),
            path_style: true,
            region: Some("us-east-1".into()),
            access_key_id: Some(self.access_key.clone()),
            secret_access_key: Some(egress_store::Secret::new(self.secret_key.clone())),
            timeout: std::time::Duration::from_secs(10),
            max_attempts: 3,
            credentials_hint: "the test's keys",
            ..Default::default()
        };
        let store = egress_store::S3Store::new(&settings, bucket, prefix)
            .await
            .expect("open the store");
        std::sync::Arc::new(store)
    }

    /// Create a bucket.
    pub async fn create_bucket(&self, bucket: &str) {
        let call = self.client().create_bucket().bucket(bucket).send().await;
        sent(call, || format!("create bucket {bucket}"));
    }

    /// Every object under `prefix`, as listed, in key order.
    pub async fn list(&self, bucket: &str, prefix: &str) -> Vec<Object> {
        let request = self.client().list_objects_v2().bucket(bucket);
        let mut pages = request.prefix(prefix).into_paginator().send();
        let mut objects = Vec::new();
        while let Some(page) = pages.next().await {
            objects.extend_from_slice(sent(page, || format!("list {bucket}")).contents());
        }
        objects.sort_by(|a, b| a.key().cmp(&b.key()));
        objects
    }

    /// Every key under `prefix`, sorted.
    pub async fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let objects = self.list(bucket, prefix).await;
        objects
            .iter()
            .filter_map(|o| o.key().map(str::to_string))
            .collect()
    }

    /// An object's bytes.
    pub async fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        let request = self.client().get_object().bucket(bucket).key(key);
        let got = sent(request.send().await, || format!("get {bucket}/{key}"));
        let body = got.body.collect().await.expect("read body");
        body.into_bytes().to_vec()
    }

    /// Put an object.
    pub async fn put(&self, bucket: &str, key: &str, body: Vec<u8>) {
        let request = self.client().put_object().bucket(bucket).key(key);
        sent(request.body(body.into()).send().await, || {
            format!("put {bucket}/{key}")
        });
    }

    /// Delete an object.
    pub async fn delete(&self, bucket: &str, key: &str) {
        let request = self.client().delete_object().bucket(bucket).key(key);
        sent(request.send().await, || format!("delete {bucket}/{key}"));
    }

    /// Start a multipart upload and leave it pending (another writer's upload).
    pub async fn start_upload(&self, bucket: &str, key: &str) -> String {
        let request = self.client().create_multipart_upload().bucket(bucket);
        let started = sent(request.key(key).send().await, || {
            format!("start upload {bucket}/{key}")
        });
        started.upload_id().expect("an upload id").to_string()
    }

    /// Wait until a multipart upload is pending in `bucket` while `run` is still running
    /// (60 s at most), and return the uploads pending then as (key, upload id): the moment
    /// another run must meet an upload in flight (the server must implement
    /// ListMultipartUploads).
    pub async fn wait_for_pending_upload(
        &self,
        bucket: &str,
        run: &mut Child,
    ) -> Vec<(String, String)> {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let pending = self.pending_upload_ids(bucket).await;
            if !pending.is_empty() {
                return pending;
            }
            if let Ok(Some(status)) = run.try_wait() {
                panic!("the run ended ({status}) before an upload was pending in {bucket}");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no upload was pending in {bucket} within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Multipart uploads not yet completed or aborted, as (key, upload id) (the server must
    /// implement ListMultipartUploads).
    pub async fn pending_upload_ids(&self, bucket: &str) -> Vec<(String, String)> {
        let call = self.client().list_multipart_uploads().bucket(bucket);
        let listed = sent(call.send().await, || format!("list uploads {bucket}"));
        let pending = listed.uploads().iter();
        pending
            .filter_map(|u| Some((u.key()?.to_string(), u.upload_id()?.to_string())))
            .collect()
    }

    /// Keys of multipart uploads not yet completed or aborted (the server must implement
    /// ListMultipartUploads).
    pub async fn pending_uploads(&self, bucket: &str) -> Vec<String> {
        let pending = self.pending_upload_ids(bucket).await;
        pending.into_iter().map(|(key, _)| key).collect()
    }

    /// Assert that every one of `uploads` (key, upload id) is still pending in `bucket`:
    /// nobody aborted them meanwhile.
    pub async fn assert_still_pending(&self, bucket: &str, uploads: &[(String, String)]) {
        let now = self.pending_upload_ids(bucket).await;
        for upload in uploads {
            assert!(
                now.contains(upload),
                "the first run's upload {upload:?} is no longer pending: {now:?}"
            );
        }
    }
}

/// The output of an S3 call; the test fails with the error's whole chain, naming the call
/// (`what`).
fn sent<T, E: std::error::Error>(result: Result<T, E>, what: impl FnOnce() -> String) -> T {
    result.unwrap_or_else(|e| {
        let chain = aws_sdk_s3::error::DisplayErrorContext(e);
        panic!("{}: {chain}", what())
    })
}
