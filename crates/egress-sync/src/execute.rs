//! Carrying out a plan: a bounded pool of verified, retried transfers, then deletions.

use std::sync::Arc;
use std::time::{Duration, Instant};

use egress_common::units::human_bytes;
use egress_common::Failure;
use futures::StreamExt;
use rand::Rng;
use tracing::{error, info};

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::gate::{self, Expected};
use crate::object::ObjectInfo;
use crate::plan::Plan;
use crate::store::Store;
use crate::transfer::{self, Copied, Settings};

/// Attempts per object (first try included).
const ATTEMPTS: u32 = 3;

/// How the two sides are named in log lines (`input/<path>/<key>`).
#[derive(Debug, Clone)]
pub struct Names {
    /// INPUT_PATH as configured.
    pub input: String,
    /// OUTPUT_PATH as configured.
    pub output: String,
}

/// What happened.
#[derive(Debug, Default)]
pub struct Report {
    /// Objects copied.
    pub copied: Vec<(String, Copied)>,
    /// Objects that failed every attempt, with the last cause.
    pub failed: Vec<(String, String)>,
    /// Objects deleted.
    pub deleted: Vec<String>,
    /// Bytes the plan meant to copy.
    pub planned_bytes: u64,
    /// Wall time of the transfers.
    pub seconds: f64,
}

impl Report {
    /// Bytes actually copied.
    pub fn transferred(&self) -> u64 {
        self.copied.iter().map(|(_, c)| c.bytes).sum()
    }
}

/// `--require-manifest`: what each object must match, and folders already known bad.
#[derive(Debug, Default)]
pub struct Gating {
    /// Size and SHA-256 per object key, from the manifests.
    pub expected: HashMap<String, Expected>,
    /// Folders whose manifest could not be used, with the reason.
    pub bad_folders: HashMap<String, String>,
}

/// Copy everything the plan says, `jobs` at a time; delete only when every copy succeeded.
/// With `gating`, each folder's manifest is copied last, and only when all of its objects
/// were copied and matched it.
#[allow(clippy::too_many_arguments)]
pub async fn execute(
    plan: &Plan,
    source: Arc<Store>,
    dest: Arc<Store>,
    settings: &Settings,
    jobs: usize,
    names: &Names,
    gating: Option<&Gating>,
    show_progress: bool,
) -> Report {
    let started = Instant::now();
    let (manifests, data): (Vec<ObjectInfo>, Vec<ObjectInfo>) = plan
        .copies()
        .map(|(o, _)| o.clone())
        .partition(|o| gating.is_some() && gate::is_manifest(&o.key));
    let mut report = Report {
        planned_bytes: data.iter().chain(&manifests).map(|o| o.size).sum(),
        ..Default::default()
    };
    let done = Arc::new(Progress::default());
    let line = progress_line(
        show_progress,
        done.clone(),
        data.len() + manifests.len(),
        report.planned_bytes,
    );
    let pool = Pool {
        source: &source,
        dest: &dest,
        settings,
        jobs,
        names,
        done: &done,
    };
    pool.copy_all(data, gating, &mut report).await;
    if let Some(gating) = gating {
        let mut ready = Vec::new();
        for manifest in manifests {
            let folder = gate::folder(&manifest.key);
            let failed_here = report.failed.iter().any(|(k, _)| gate::folder(k) == folder);
            let reason = gating.bad_folders.get(folder).cloned().or_else(|| {
                failed_here
                    .then(|| "some of its objects failed to copy or did not match it".to_string())
            });
            match reason {
                Some(reason) => {
                    error!(key = %manifest.key, "manifest not copied: {reason}");
                    report
                        .failed
                        .push((manifest.key, format!("manifest not copied: {reason}")));
                }
                None => ready.push(manifest),
            }
        }
        pool.copy_all(ready, None, &mut report).await;
    }
    line.finish().await;
    report.seconds = started.elapsed().as_secs_f64();
    let deletes: Vec<&ObjectInfo> = plan.deletes().collect();
    if !deletes.is_empty() {
        if report.failed.is_empty() {
            for object in deletes {
                match dest.delete(&object.key).await {
                    Ok(()) => {
                        info!(key = %object.key, "deleted `output/{}/{}`", names.output, object.key);
                        report.deleted.push(object.key.clone());
                    }
                    Err(failure) => {
                        error!(key = %object.key, error = %failure, "delete failed");
                        report.failed.push((object.key.clone(), failure.one_line()));
                    }
                }
            }
        } else {
            error!(
                pending = deletes.len(),
                "not deleting {} object(s) because some copies failed",
                deletes.len()
            );
        }
    }
    report
}

/// Objects and bytes copied so far, for the status line.
#[derive(Debug, Default)]
struct Progress {
    objects: AtomicU64,
    bytes: AtomicU64,
}

fn progress_line(
    enabled: bool,
    done: Arc<Progress>,
    total: usize,
    planned: u64,
) -> egress_common::progress::Line {
    egress_common::progress::Line::start(enabled, move |elapsed| {
        let bytes = done.bytes.load(Ordering::Relaxed);
        format!(
            "sync: {}/{total} objects, {} of {}, {}",
            done.objects.load(Ordering::Relaxed),
            human_bytes(bytes),
            human_bytes(planned),
            egress_common::units::human_rate(bytes, elapsed.as_secs_f64())
        )
    })
}

/// What every transfer of a run shares.
struct Pool<'a> {
    source: &'a Arc<Store>,
    dest: &'a Arc<Store>,
    settings: &'a Settings,
    jobs: usize,
    names: &'a Names,
    done: &'a Progress,
}

impl Pool<'_> {
    /// Copy `objects`, `jobs` at a time, recording each outcome in `report`.
    async fn copy_all(
        &self,
        objects: Vec<ObjectInfo>,
        gating: Option<&Gating>,
        report: &mut Report,
    ) {
        let (source, dest, settings, names) = (self.source, self.dest, self.settings, self.names);
        let mut results = futures::stream::iter(objects.into_iter().map(|object| {
            let (source, dest) = (source.clone(), dest.clone());
            let expected = gating.and_then(|g| g.expected.get(&object.key)).cloned();
            async move {
                let result =
                    copy_with_retry(&source, &dest, &object, settings, expected.as_ref()).await;
                (object, result)
            }
        }))
        .buffer_unordered(self.jobs.max(1));
        while let Some((object, result)) = results.next().await {
            match result {
                Ok(copied) => {
                    info!(
                        size = copied.bytes,
                        verified = copied.verified,
                        "`input/{}/{}` -> `output/{}/{}`",
                        names.input,
                        object.key,
                        names.output,
                        object.key
                    );
                    self.done.objects.fetch_add(1, Ordering::Relaxed);
                    self.done.bytes.fetch_add(copied.bytes, Ordering::Relaxed);
                    report.copied.push((object.key, copied));
                }
                Err(failure) => {
                    error!(key = %object.key, error = %failure, "copy failed");
                    report.failed.push((object.key, failure.one_line()));
                }
            }
        }
    }
}

async fn copy_with_retry(
    source: &Arc<Store>,
    dest: &Arc<Store>,
    object: &ObjectInfo,
    settings: &Settings,
    expected: Option<&Expected>,
) -> Result<Copied, Failure> {
    let mut attempt = 1;
    loop {
        match transfer::copy(source, dest, object, settings, expected).await {
            Ok(copied) => return Ok(copied),
            Err(failure) if attempt < ATTEMPTS && !transfer::is_permanent(&failure) => {
                let backoff = Duration::from_millis(500 * (1 << (attempt - 1)))
                    + Duration::from_millis(rand::rng().random_range(0..250));
                tracing::warn!(key = %object.key, attempt, error = %failure, "copy failed; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                attempt += 1;
            }
            Err(failure) => return Err(failure),
        }
    }
}

/// The original tool's closing line: `Total: 17.38 MiB, Transferred: 17.38 MiB, Speed: 18.77 MiB/s`.
pub fn total_line(report: &Report) -> String {
    format!(
        "Total: {}, Transferred: {}, Speed: {}",
        human_bytes(report.planned_bytes),
        human_bytes(report.transferred()),
        egress_common::units::human_rate(report.transferred(), report.seconds)
    )
}
