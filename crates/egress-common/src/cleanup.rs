//! What must be undone if a run is interrupted (SIGTERM, SIGINT): multipart uploads in
//! flight and temporary files. Work registers them when it starts them and unregisters
//! them when it completes or aborts them; whatever is still registered when the process
//! is told to stop is aborted by [`abort_all`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Something unfinished.
#[derive(Debug, Clone)]
pub enum Unfinished {
    /// A multipart upload that has not been completed.
    Upload {
        /// Client for its endpoint.
        client: aws_sdk_s3::Client,
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
        /// Upload id.
        upload_id: String,
    },
    /// A temporary file that has not been renamed into place.
    File(PathBuf),
    /// Every multipart upload under a prefix this run writes to: catches an upload whose
    /// creation was under way when the run was stopped, before its id came back.
    UploadsUnder {
        /// Client for its endpoint.
        client: aws_sdk_s3::Client,
        /// Bucket.
        bucket: String,
        /// Key prefix (without trailing slash).
        prefix: String,
    },
}

/// A registration; pass it to [`done`] once the work is completed or aborted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

fn registry() -> &'static Mutex<HashMap<u64, Unfinished>> {
    static REGISTRY: OnceLock<Mutex<HashMap<u64, Unfinished>>> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Remember `work` until [`done`] is called.
pub fn register(work: Unfinished) -> Ticket {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut map) = registry().lock() {
        map.insert(id, work);
    }
    Ticket(id)
}

/// The work is finished (completed or already aborted).
pub fn done(ticket: Ticket) {
    if let Ok(mut map) = registry().lock() {
        map.remove(&ticket.0);
    }
}

/// Abort every registered upload and delete every registered file; returns how many.
/// Each abort gets a few seconds: a stopping pod has little time left.
pub async fn abort_all() -> usize {
    let pending: Vec<Unfinished> = match registry().lock() {
        Ok(mut map) => map.drain().map(|(_, w)| w).collect(),
        Err(_) => return 0,
    };
    let (sweeps, pending): (Vec<Unfinished>, Vec<Unfinished>) = pending
        .into_iter()
        .partition(|w| matches!(w, Unfinished::UploadsUnder { .. }));
    let mut count = pending.len();
    let aborts = pending.into_iter().map(|work| async move {
        match work {
            Unfinished::Upload { client, bucket, key, upload_id } => {
                let abort = client.abort_multipart_upload().bucket(bucket).key(&key).upload_id(upload_id).send();
                if !matches!(tokio::time::timeout(Duration::from_secs(5), abort).await, Ok(Ok(_))) {
                    tracing::warn!(key = %key, "could not abort an upload; the next run (or the bucket lifecycle rule) removes it");
                }
            }
            Unfinished::File(path) => {
                let _ = tokio::fs::remove_file(path).await;
            }
            Unfinished::UploadsUnder { .. } => {}
        }
    });
    futures::future::join_all(aborts).await;
    if !sweeps.is_empty() {
        // Let a creation request that was already sent reach the server first.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for sweep in sweeps {
        if let Unfinished::UploadsUnder {
            client,
            bucket,
            prefix,
        } = sweep
        {
            let everything = aws_sdk_s3::primitives::DateTime::from(
                std::time::SystemTime::now() + Duration::from_secs(3600),
            );
            let sweep = crate::s3::abort_stale_uploads(&client, &bucket, &prefix, everything);
            if let Ok(n) = tokio::time::timeout(Duration::from_secs(10), sweep).await {
                count += n;
            }
        }
    }
    count
}

/// Which stop signal arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGTERM: Kubernetes stopping the pod.
    Term,
    /// SIGINT: Ctrl-C.
    Int,
}

impl StopSignal {
    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            StopSignal::Term => "SIGTERM",
            StopSignal::Int => "SIGINT",
        }
    }

    /// The conventional exit code (128 + signal number).
    pub fn exit_code(self) -> crate::ExitCode {
        match self {
            StopSignal::Term => crate::ExitCode::Terminated,
            StopSignal::Int => crate::ExitCode::Interrupted,
        }
    }
}

/// Wait for SIGTERM or SIGINT. If the handlers cannot be installed, never returns.
pub async fn stop_signal() -> StopSignal {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => StopSignal::Term,
        _ = int.recv() => StopSignal::Int,
    }
}
