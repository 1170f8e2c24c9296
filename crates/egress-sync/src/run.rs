//! One sync run: list both sides, decide, then do.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::anyhow;
use egress_common::s3::{self, S3Settings};
use egress_common::{cleanup, Failure, Location, Secret};
use futures::StreamExt;
use globset::{Glob, GlobSet, GlobSetBuilder};
use tracing::info;

use crate::config::Args;
use std::collections::{BTreeSet, HashSet};

use egress_common::manifest::Manifest;

use crate::execute::{self, Gating, Names, Report};
use crate::gate;
use crate::object::{ObjectInfo, Record};
use crate::plan::{self, Action, PlanOptions};
use crate::state;
use crate::store::{Store, STATE_KEY};
use crate::transfer::Settings;
use crate::verify;

const MIB: u64 = 1024 * 1024;

/// Which side, for messages.
#[derive(Debug, Clone, Copy)]
enum Side {
    Input,
    Output,
}

impl Side {
    fn var(self, what: &str) -> String {
        match self {
            Side::Input => format!("INPUT_{what}"),
            Side::Output => format!("OUTPUT_{what}"),
        }
    }
    fn credentials_hint(self) -> &'static str {
        match self {
            Side::Input => "INPUT_ACCESS_KEY_ID / INPUT_SECRET_ACCESS_KEY",
            Side::Output => "OUTPUT_ACCESS_KEY_ID / OUTPUT_SECRET_ACCESS_KEY",
        }
    }
}

/// True for AWS's own endpoints, which get virtual-host addressing and default checksums.
fn is_aws(url: &str) -> bool {
    let host = url
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .split(['/', ':'])
        .next()
        .unwrap_or("");
    host == "amazonaws.com" || host.ends_with(".amazonaws.com")
}

struct SideConfig<'a> {
    url: &'a str,
    path: &'a str,
    access_key: &'a Option<String>,
    secret_key: &'a Option<String>,
    region: &'a str,
}

async fn open_store(side: Side, cfg: SideConfig<'_>, args: &Args) -> Result<Store, Failure> {
    let path = cfg.path.trim();
    if path.is_empty() {
        return Err(Failure::usage(anyhow!(
            "{} is empty: set it to a bucket or bucket/sub/path (or a directory when {} is empty)",
            side.var("PATH"),
            side.var("URL")
        )));
    }
    let url = cfg.url.trim();
    if url.is_empty() || url.starts_with("file://") {
        let base = url.trim_start_matches("file://");
        let root = if base.is_empty() {
            PathBuf::from(path)
        } else {
            PathBuf::from(base).join(path)
        };
        return Ok(Store::Local { root });
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() <= "https://".len()
    {
        return Err(Failure::usage(anyhow!(
            "{} '{url}' is not an http(s) URL: use e.g. https://s3.amazonaws.com or http://rgw.example:8080",
            side.var("URL")
        )));
    }
    let (bucket, prefix) = match Location::parse_bucket_path(path) {
        Ok(Location::S3 { bucket, prefix }) => (bucket, prefix),
        Ok(Location::Local(_)) => unreachable!("parse_bucket_path only returns S3 locations"),
        Err(e) => {
            return Err(Failure::usage(anyhow!(
                "{} is invalid: {e}",
                side.var("PATH")
            )))
        }
    };
    let (access_key_id, secret_access_key) = match (cfg.access_key, cfg.secret_key) {
        (Some(k), Some(s)) if !k.is_empty() && !s.is_empty() => {
            (Some(k.clone()), Some(Secret::new(s.clone())))
        }
        (None, None) => (None, None),
        _ => {
            return Err(Failure::usage(anyhow!(
                "set both {} and {} (or neither, to use the AWS credential chain)",
                side.var("ACCESS_KEY_ID"),
                side.var("SECRET_ACCESS_KEY")
            )))
        }
    };
    let settings = S3Settings {
        endpoint_url: (!is_aws(url)).then(|| url.to_string()),
        region: Some(cfg.region.to_string()),
        access_key_id,
        secret_access_key,
        timeout: args.common.timeout(),
        max_attempts: 5,
        ca_bundle: args.common.ca_bundle.clone(),
    };
    Ok(Store::S3 {
        client: s3::client(&settings).await?,
        bucket,
        prefix,
        credentials_hint: side.credentials_hint(),
    })
}

fn globs(patterns: &[String], flag: &str) -> Result<Option<GlobSet>, Failure> {
    let patterns: Vec<&String> = patterns.iter().filter(|p| !p.trim().is_empty()).collect();
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut builder = GlobSetBuilder::new();
    for p in patterns {
        let glob = Glob::new(p.trim()).map_err(|e| {
            Failure::usage(anyhow!("{flag} pattern '{p}' is not a valid glob: {e}"))
        })?;
        builder.add(glob);
    }
    builder
        .build()
        .map(Some)
        .map_err(|e| Failure::usage(anyhow!("{flag} patterns are invalid: {e}")))
}

/// Keys this run considers: not our own state file, matching the include/exclude globs.
fn filter(
    objects: Vec<ObjectInfo>,
    include: &Option<GlobSet>,
    exclude: &Option<GlobSet>,
) -> Vec<ObjectInfo> {
    objects
        .into_iter()
        .filter(|o| o.key != STATE_KEY)
        .filter(|o| include.as_ref().is_none_or(|g| g.is_match(&o.key)))
        .filter(|o| exclude.as_ref().is_none_or(|g| !g.is_match(&o.key)))
        .collect()
}

/// Run a whole sync as configured by `args`.
pub async fn run(args: &Args) -> Result<Report, Failure> {
    let run_started = aws_smithy_types::DateTime::from(std::time::SystemTime::now());
    let include = globs(&args.include, "--include")?;
    let exclude = globs(&args.exclude, "--exclude")?;
    let source = Arc::new(
        open_store(
            Side::Input,
            SideConfig {
                url: &args.input_url,
                path: &args.input_path,
                access_key: &args.input_access_key_id,
                secret_key: &args.input_secret_access_key,
                region: &args.input_region,
            },
            args,
        )
        .await?,
    );
    let dest = Arc::new(
        open_store(
            Side::Output,
            SideConfig {
                url: &args.output_url,
                path: &args.output_path,
                access_key: &args.output_access_key_id,
                secret_key: &args.output_secret_access_key,
                region: &args.output_region,
            },
            args,
        )
        .await?,
    );
    let names = Names {
        input: args.input_path.trim().trim_matches('/').to_string(),
        output: args.output_path.trim().trim_matches('/').to_string(),
    };

    if let Some(side) = &args.verify {
        let (store, label) = if side == "input" {
            (&source, "input")
        } else {
            (&dest, "output")
        };
        let result = verify::verify(store, label).await?;
        let bad: Vec<&str> = result
            .folders
            .iter()
            .filter(|(_, p)| !p.is_empty())
            .map(|(f, _)| f.as_str())
            .collect();
        info!(
            folders = result.folders.len(),
            mismatched = bad.len(),
            without_manifest = result.without_manifest.len(),
            "Verified {} folder(s) against their manifests.",
            result.folders.len()
        );
        if !bad.is_empty() {
            return Err(Failure::runtime(anyhow!(
                "{} folder(s) do not match their manifest: {}",
                bad.len(),
                bad.join(", ")
            )));
        }
        return Ok(Report::default());
    }

    // Decide: both listings in full, then the plan.
    let source_id = format!("{}|{}", args.input_url.trim(), names.input);
    let started = std::time::Instant::now();
    // The two listings and the records file are independent: fetch them at once.
    let (source_list, dest_list, stored) =
        tokio::join!(source.list(), dest.list(), state::load(&dest, &source_id));
    tracing::debug!(
        ms = started.elapsed().as_millis() as u64,
        "listed both sides"
    );
    let stored = stored?;
    let mut source_list = filter(source_list?, &include, &exclude);
    let mut dest_list = filter(dest_list?, &include, &exclude);
    let gating = if args.require_manifest {
        let gated = gate::split(source_list);
        for folder in &gated.incomplete {
            info!(folder = %folder, "folder `input/{}/{folder}` has no _manifest.json; skipped (it may still be in progress)", names.input);
        }
        // Never delete what belongs to a folder that is being rewritten at the input.
        dest_list.retain(|o| !gated.incomplete.iter().any(|f| f == gate::folder(&o.key)));
        source_list = gated.complete;
        Some(load_gating(&source, &source_list).await?)
    } else {
        None
    };
    let mut records = stored.clone();
    let missing = plan::keys_needing_metadata(&source_list, &dest_list, &records);
    if !missing.is_empty() {
        info!(
            objects = missing.len(),
            "reading copy records from destination metadata"
        );
        records.extend(records_from_metadata(&dest, &dest_list, missing, args.jobs as usize).await);
    }
    let options = PlanOptions {
        remove: args.remove,
        max_delete: args.max_delete,
    };
    let plan = plan::build(&source_list, &dest_list, &records, options).map_err(Failure::usage)?;
    let copies = plan.copies().count();
    info!(
        source_objects = source_list.len(),
        dest_objects = dest_list.len(),
        to_copy = copies,
        to_skip = plan.skip_count(),
        to_delete = plan.deletes().count(),
        "plan ready"
    );
    if args.dry_run {
        print_plan(&plan, &names);
        return Ok(Report::default());
    }

    // Do.
    if let Store::S3 {
        client,
        bucket,
        prefix,
        ..
    } = dest.as_ref()
    {
        cleanup::register(cleanup::Unfinished::UploadsUnder {
            client: client.clone(),
            bucket: bucket.clone(),
            prefix: prefix.clone(),
        });
    }
    let aborted = dest.abort_stale_uploads(run_started).await;
    if aborted > 0 {
        info!(
            aborted,
            "cleaned up multipart uploads left by an earlier run"
        );
    }
    let settings = Settings::new(
        args.multipart_threshold_mib * MIB,
        args.part_size_mib * MIB,
        args.memory_budget_mib * MIB,
    );
    let report = execute::execute(
        &plan,
        source.clone(),
        dest.clone(),
        &settings,
        args.jobs as usize,
        &names,
        gating.as_ref(),
        args.common.progress(),
    )
    .await;

    // Keep records for what is known to match: skipped objects and fresh copies, plus the
    // records of keys this run did not look at (filtered out by --include/--exclude, or in
    // folders --require-manifest skipped), so that a narrower run does not forget them.
    let in_scope: HashSet<&str> = source_list
        .iter()
        .chain(dest_list.iter())
        .map(|o| o.key.as_str())
        .collect();
    let mut kept: HashMap<String, Record> = records
        .iter()
        .filter(|(key, _)| !in_scope.contains(key.as_str()))
        .map(|(k, r)| (k.clone(), r.clone()))
        .collect();
    for action in &plan.actions {
        if let Action::Skip(o, _, Some(record)) = action {
            kept.insert(o.key.clone(), record.clone());
        }
    }
    for (key, copied) in &report.copied {
        kept.insert(key.clone(), copied.record.clone());
    }
    // A run that changed nothing writes nothing, not even the records.
    if kept != stored {
        if let Err(f) = state::save(&dest, &source_id, kept).await {
            tracing::warn!(error = %f, "could not save copy records; the next run reads metadata instead");
        }
    }

    let line = execute::total_line(&report);
    if report.failed.is_empty() {
        info!(
            copied = report.copied.len(),
            skipped = plan.skip_count(),
            deleted = report.deleted.len(),
            failed = 0,
            "{line}"
        );
        Ok(report)
    } else {
        tracing::error!(
            copied = report.copied.len(),
            skipped = plan.skip_count(),
            deleted = report.deleted.len(),
            failed = report.failed.len(),
            "{line}"
        );
        let list: Vec<String> = report
            .failed
            .iter()
            .map(|(k, e)| format!("{k} ({e})"))
            .collect();
        Err(Failure::runtime(anyhow!(
            "{} object(s) failed: {}",
            report.failed.len(),
            list.join("; ")
        )))
    }
}

/// Read every complete folder's manifest: what its objects must match.
async fn load_gating(source: &Store, objects: &[ObjectInfo]) -> Result<Gating, Failure> {
    let keys: BTreeSet<&str> = objects.iter().map(|o| o.key.as_str()).collect();
    let mut gating = Gating::default();
    for manifest in objects.iter().filter(|o| gate::is_manifest(&o.key)) {
        let folder = gate::folder(&manifest.key).to_string();
        let parsed = match source.read_optional(&manifest.key).await? {
            Some(body) => Manifest::parse(&body),
            None => Err("it disappeared while being read".to_string()),
        };
        match parsed.and_then(|m| gate::expectations(&folder, &m, &keys)) {
            Ok(expected) => gating.expected.extend(expected),
            Err(reason) => {
                tracing::error!(folder = %folder, "manifest `input/{}` unusable: {reason}", manifest.key);
                gating.bad_folders.insert(folder, reason);
            }
        }
    }
    Ok(gating)
}

/// Records carried in destination objects' metadata, one HEAD each (only for objects the
/// records file does not cover, e.g. the first run after `mc mirror`).
async fn records_from_metadata(
    dest: &Arc<Store>,
    dest_list: &[ObjectInfo],
    keys: Vec<String>,
    jobs: usize,
) -> HashMap<String, Record> {
    let listed: HashMap<&str, (&str, u64)> = dest_list
        .iter()
        .map(|o| (o.key.as_str(), (o.etag.as_str(), o.size)))
        .collect();
    let found: Vec<(String, Option<Record>)> = futures::stream::iter(keys.into_iter().map(|key| {
        let dest = dest.clone();
        let (etag, size) = listed
            .get(key.as_str())
            .map(|(e, s)| (e.to_string(), *s))
            .unwrap_or_default();
        async move {
            let record = match dest.head(&key).await {
                Ok(meta) => Record::from_metadata(&meta.metadata, &etag, size),
                Err(_) => None,
            };
            (key, record)
        }
    }))
    .buffer_unordered(jobs.max(1))
    .collect()
    .await;
    found
        .into_iter()
        .filter_map(|(k, r)| r.map(|r| (k, r)))
        .collect()
}

fn print_plan(plan: &plan::Plan, names: &Names) {
    let mut bytes = 0;
    for action in &plan.actions {
        match action {
            Action::Copy(o, reason) => {
                bytes += o.size;
                println!(
                    "copy ({reason}) `input/{}/{}` -> `output/{}/{}`",
                    names.input, o.key, names.output, o.key
                );
            }
            Action::Skip(o, reason, _) => println!("skip ({reason}) {}", o.key),
            Action::Delete(o) => {
                println!("delete (not in input) `output/{}/{}`", names.output, o.key)
            }
        }
    }
    println!(
        "Dry run: {} to copy ({}), {} to skip, {} to delete; nothing was changed.",
        plan.copies().count(),
        egress_common::units::human_bytes(bytes),
        plan.skip_count(),
        plan.deletes().count()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_endpoints_are_recognised() {
        assert!(is_aws("https://s3.amazonaws.com"));
        assert!(is_aws("https://s3.eu-west-1.amazonaws.com/"));
        assert!(!is_aws("http://127.0.0.1:9000"));
        assert!(!is_aws("https://amazonaws.com.evil.example"));
    }

    #[test]
    fn filters_globs_and_state_file() {
        let o = |k: &str| ObjectInfo {
            key: k.into(),
            size: 1,
            etag: "e".into(),
            modified: 0,
        };
        let all = vec![
            o("2024-01-01/a.csv.gz"),
            o("2024-01-01/b.tmp"),
            o(STATE_KEY),
            o("x/y"),
        ];
        let inc = globs(&["2024-*/**".into()], "--include").unwrap();
        let exc = globs(&["*.tmp".into()], "--exclude").unwrap();
        let kept: Vec<String> = filter(all, &inc, &exc).into_iter().map(|o| o.key).collect();
        assert_eq!(kept, ["2024-01-01/a.csv.gz"]);
        assert!(globs(&["[".into()], "--include").is_err());
    }
}
