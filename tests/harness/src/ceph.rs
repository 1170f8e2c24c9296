//! An ephemeral Ceph cluster (one monitor, one memstore OSD) with a RADOS Gateway serving
//! S3 on a free loopback port, built by `ceph-rgw.sh` from Debian's packages. Everything
//! lives in a temp dir; the daemons are killed on drop (and by the script's watchdog when
//! the test process dies without running destructors).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::s3::S3Endpoint;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/ceph-rgw.sh");
const INSTALL: &str = "apt-get install ceph-mon ceph-osd radosgw ceph-common";
const BINARIES: &[&str] = &[
    "ceph-mon",
    "ceph-osd",
    "radosgw",
    "radosgw-admin",
    "ceph",
    "monmaptool",
    "ceph-authtool",
];

/// A running Ceph RGW; stopped and deleted on drop.
pub struct CephRgw {
    /// Its address and the credentials of the S3 user created for this instance; the
    /// gateway derefs to it for the client helpers.
    pub api: S3Endpoint,
    /// The cluster directory (`ceph.conf`, `log/`, `run/`).
    pub dir: PathBuf,
    stopped: bool,
    _dir: tempfile::TempDir,
}

fn missing_binaries() -> Vec<&'static str> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/bin", "/usr/sbin"].map(PathBuf::from));
    BINARIES
        .iter()
        .copied()
        .filter(|name| !dirs.iter().any(|d| d.join(name).is_file()))
        .collect()
}

fn log_tail(dir: &Path) -> String {
    let mut out = String::new();
    for name in ["rgw.log", "osd.0.log", "mon.a.log"] {
        let text = std::fs::read_to_string(dir.join("log").join(name)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        if !tail.is_empty() {
            out.push_str(&format!("---- {name} ----\n{tail}\n"));
        }
    }
    out
}

impl CephRgw {
    /// [`CephRgw::start`], holding an empty `bucket`.
    pub async fn with_bucket(bucket: &str) -> CephRgw {
        let ceph = Self::start();
        ceph.create_bucket(bucket).await;
        ceph
    }

    /// Start a cluster and gateway (a few seconds) with a fresh S3 user.
    pub fn start() -> CephRgw {
        let missing = missing_binaries();
        assert!(
            missing.is_empty(),
            "Ceph binaries not found: {}; install them with: {INSTALL}",
            missing.join(", ")
        );
        let tmp = tempfile::Builder::new()
            .prefix("egress-ceph-")
            .tempdir()
            .expect("temp dir");
        let dir = tmp.path().join("cluster");
        let rgw_port = crate::free_port();
        let mon_port = loop {
            let p = crate::free_port();
            if p != rgw_port {
                break p;
            }
        };
        let out = Command::new("bash")
            .arg(SCRIPT)
            .arg("start")
            .arg(&dir)
            .arg(rgw_port.to_string())
            .arg(mon_port.to_string())
            .env("CEPH_RGW_WATCH_PID", std::process::id().to_string())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {SCRIPT}: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let value = |key: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
                .map(str::to_string)
        };
        match (
            out.status.success(),
            value("ACCESS_KEY"),
            value("SECRET_KEY"),
        ) {
            (true, Some(access_key), Some(secret_key)) => CephRgw {
                api: S3Endpoint {
                    endpoint: format!("http://127.0.0.1:{rgw_port}"),
                    access_key,
                    secret_key,
                },
                dir,
                stopped: false,
                _dir: tmp,
            },
            _ => {
                // The script stops what it started on failure; make sure anyway.
                let _ = Command::new("bash")
                    .arg(SCRIPT)
                    .arg("stop")
                    .arg(&dir)
                    .output();
                panic!(
                    "Ceph RGW failed to start ({}); needs: {INSTALL}\nscript stdout:\n{stdout}\nscript stderr:\n{stderr}\n{}",
                    out.status,
                    if stderr.contains("---- tail of") { String::new() } else { log_tail(&dir) }
                );
            }
        }
    }

    /// Address and credentials, with the client helpers.
    pub fn s3(&self) -> S3Endpoint {
        self.api.clone()
    }

    /// The tail of the gateway, OSD and monitor logs (for assertion messages).
    pub fn log_tail(&self) -> String {
        log_tail(&self.dir)
    }

    /// Kill the daemons now (fault injection); idempotent.
    pub fn kill(&mut self) {
        if !self.stopped {
            self.stopped = true;
            let _ = Command::new("bash")
                .arg(SCRIPT)
                .arg("stop")
                .arg(&self.dir)
                .stdin(Stdio::null())
                .output();
        }
    }
}

impl Drop for CephRgw {
    fn drop(&mut self) {
        self.kill();
    }
}

impl std::ops::Deref for CephRgw {
    type Target = S3Endpoint;
    fn deref(&self) -> &S3Endpoint {
        &self.api
    }
}
