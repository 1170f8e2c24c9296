//! One dump run: validate everything, then stream each table to its object.

use std::sync::Arc;
use std::time::Instant;

use anyhow::anyhow;
use chrono::NaiveDate;
use egress_common::s3::{self, S3Settings};
use egress_common::units::mib_per_sec;
use egress_common::{cleanup, Failure, Location, ResultExt};
use tokio::sync::mpsc;
use tokio_postgres::Client;
use tracing::{error, info};

use crate::catalog::{self, Problem, ResolvedTable};
use crate::config::Args;
use crate::copy_stream::{self, CopyError};
use crate::database::{self, PgEnv};
use crate::gzip;
use crate::manifest::{self, Manifest, TableEntry};
use crate::multipart;
use crate::progress::{self, Counters};
use crate::sink::Destination;
use crate::snapshot;
use crate::tables::{self, TableRef};

const MIB: usize = 1024 * 1024;
use crate::sink::CREDENTIALS_HINT;

/// What one table's dump produced.
#[derive(Debug, Clone)]
pub struct TableReport {
    /// Table as listed.
    pub table: String,
    /// Where it went (URL or path, for logs).
    pub target: String,
    /// Data rows.
    pub rows: u64,
    /// Compression statistics and checksums.
    pub stats: gzip::CompressStats,
    /// Wall time.
    pub seconds: f64,
}

/// Run a whole dump as configured by `args`.
pub async fn run(args: &Args) -> Result<Vec<TableReport>, Failure> {
    let run_started = manifest::now_rfc3339();
    let tables = tables::parse_list(&args.tables).usage_err()?;
    let date = run_date(args.date.as_deref())?;
    let location = Location::parse(&args.output).usage_err()?;
    let destination = open_destination(args, &location).await?;

    let target = database::resolve(
        args.database_url.as_deref(),
        &PgEnv::from_process(),
        args.common.timeout(),
    )?;
    let coordinator = target.connect_with_retry(5).await?;
    database::prepare_session(&coordinator)
        .await
        .runtime_err()?;
    let parallel = args.jobs > 1 && tables.len() > 1;
    // One snapshot for every table of the run: the day's files agree with each other.
    let snapshot = snapshot::begin(&coordinator, parallel).await?;

    let resolved = resolve_all(&coordinator, &tables).await?;
    if args.dry_run {
        print_plan(&resolved, &destination, &date);
        return Ok(Vec::new());
    }
    let mut columns = Vec::with_capacity(resolved.len());
    for table in &resolved {
        columns.push(
            catalog::columns(&coordinator, table.oid)
                .await
                .map_err(|e| {
                    Failure::runtime(anyhow!(
                        "cannot read the columns of '{}': {e}",
                        table.requested
                    ))
                })?,
        );
    }
    // A re-run replaces the day: first withdraw the completion marker, so the folder never
    // looks complete while its objects are being replaced.
    destination
        .delete(&format!("{date}/{}", manifest::FILE_NAME))
        .await?;

    let counters = Arc::new(Counters::default());
    let display = progress::display("dump".to_string(), counters.clone(), args.common.progress());
    let workers = if parallel {
        (args.jobs as usize).min(resolved.len())
    } else {
        1
    };
    let job = Job {
        args,
        compress_threads: (gzip::default_threads() / workers).max(1),
        destination: &destination,
        date: &date,
        counters: &counters,
    };
    let outcomes = if parallel {
        let mut clients = Vec::with_capacity(workers);
        let id = snapshot.exported_id.clone().unwrap_or_default();
        for _ in 0..workers {
            let client = target.connect_with_retry(5).await?;
            database::prepare_session(&client).await.runtime_err()?;
            snapshot::import(&client, &id).await?;
            clients.push(client);
        }
        let outcomes = dump_parallel(&clients, &resolved, &job).await;
        for client in &clients {
            let _ = client.batch_execute("COMMIT").await;
        }
        outcomes
    } else {
        dump_serial(&coordinator, &resolved, &job).await
    };
    display.finish().await;
    let _ = coordinator.batch_execute("COMMIT").await;

    let mut reports = Vec::new();
    let mut failed: Vec<(String, String)> = Vec::new();
    let mut skipped: Vec<String> = Vec::new();
    for (table, outcome) in resolved.iter().zip(outcomes) {
        match outcome {
            Outcome::Done(report) => reports.push(*report),
            Outcome::Failed(message) => failed.push((table.requested.file_stem(), message)),
            Outcome::NotAttempted => skipped.push(table.requested.file_stem()),
        }
    }
    if !failed.is_empty() {
        // No manifest: the day stays visibly incomplete.
        return Err(summarise_failure(&reports, &failed, &skipped));
    }
    let manifest = build_manifest(
        args,
        &date,
        run_started,
        snapshot,
        &resolved,
        &reports,
        columns,
        &destination,
    );
    let body = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| Failure::runtime(anyhow!("cannot encode the manifest: {e}")))?;
    destination
        .put_small(
            &format!("{date}/{}", manifest::FILE_NAME),
            body,
            "application/json",
        )
        .await?;
    let names: Vec<&str> = reports.iter().map(|r| r.table.as_str()).collect();
    info!(tables = reports.len(), succeeded = %names.join(" "), "Success.");
    Ok(reports)
}

#[allow(clippy::too_many_arguments)]
fn build_manifest(
    args: &Args,
    date: &str,
    run_started: String,
    snapshot: snapshot::SnapshotInfo,
    resolved: &[ResolvedTable],
    reports: &[TableReport],
    columns: Vec<Vec<catalog::Column>>,
    destination: &Destination,
) -> Manifest {
    let tables = resolved
        .iter()
        .zip(reports)
        .zip(columns)
        .map(|((table, report), columns)| {
            let file = format!("{}.csv.gz", table.requested.file_stem());
            TableEntry {
                table: report.table.clone(),
                schema: table.schema.clone(),
                name: table.name.clone(),
                key: destination.key(&format!("{date}/{file}")),
                file,
                rows: report.rows,
                uncompressed_bytes: report.stats.uncompressed_bytes,
                compressed_bytes: report.stats.compressed_bytes,
                sha256: report.stats.compressed_sha256.clone(),
                uncompressed_sha256: report.stats.uncompressed_sha256.clone(),
                columns,
            }
        })
        .collect();
    Manifest {
        format_version: manifest::FORMAT_VERSION,
        tool: "egress-dump".into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        date: date.to_string(),
        run_started,
        run_finished: manifest::now_rfc3339(),
        snapshot: snapshot::SnapshotInfo {
            exported_id: None,
            ..snapshot
        },
        compression_level: args.compression_level,
        header: args.header,
        tables,
    }
}

/// Everything a table's dump needs besides its connection.
struct Job<'a> {
    args: &'a Args,
    /// Compression threads per table (the machine's CPUs shared among the workers).
    compress_threads: usize,
    destination: &'a Destination,
    date: &'a str,
    counters: &'a Arc<Counters>,
}

/// How one table ended.
enum Outcome {
    Done(Box<TableReport>),
    Failed(String),
    NotAttempted,
}

/// Dump one table inside a savepoint, so that with `--keep-going` a failed COPY does not
/// poison the transaction for the tables after it.
async fn dump_in_savepoint(client: &Client, table: &ResolvedTable, job: &Job<'_>) -> Outcome {
    let name = table.requested.file_stem();
    let _ = client.batch_execute("SAVEPOINT egress_table").await;
    match dump_table(client, table, job).await {
        Ok(report) => {
            let _ = client.batch_execute("RELEASE SAVEPOINT egress_table").await;
            Outcome::Done(Box::new(report))
        }
        Err(failure) => {
            let _ = client
                .batch_execute("ROLLBACK TO SAVEPOINT egress_table")
                .await;
            error!(table = %name, error = %failure, "Table '{name}': Dump failed.");
            Outcome::Failed(failure.one_line())
        }
    }
}

async fn dump_serial(client: &Client, tables: &[ResolvedTable], job: &Job<'_>) -> Vec<Outcome> {
    let mut outcomes = Vec::with_capacity(tables.len());
    let mut stop = false;
    for table in tables {
        if stop {
            outcomes.push(Outcome::NotAttempted);
            continue;
        }
        let outcome = dump_in_savepoint(client, table, job).await;
        stop = matches!(outcome, Outcome::Failed(_)) && !job.args.keep_going;
        outcomes.push(outcome);
    }
    outcomes
}

/// Workers take tables largest first from a shared queue; after a failure (without
/// `--keep-going`) no new table is started.
async fn dump_parallel(
    clients: &[Client],
    tables: &[ResolvedTable],
    job: &Job<'_>,
) -> Vec<Outcome> {
    let mut order: Vec<usize> = (0..tables.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(tables[i].estimated_bytes));
    let queue = std::sync::Mutex::new(std::collections::VecDeque::from(order));
    let stop = std::sync::atomic::AtomicBool::new(false);
    let results = std::sync::Mutex::new(Vec::new());
    let workers = clients.iter().map(|client| async {
        loop {
            if stop.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
            let next = queue.lock().ok().and_then(|mut q| q.pop_front());
            let Some(index) = next else { break };
            let outcome = dump_in_savepoint(client, &tables[index], job).await;
            if matches!(outcome, Outcome::Failed(_)) && !job.args.keep_going {
                stop.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            if let Ok(mut r) = results.lock() {
                r.push((index, outcome));
            }
        }
    });
    futures::future::join_all(workers).await;
    let mut outcomes: Vec<Outcome> = (0..tables.len()).map(|_| Outcome::NotAttempted).collect();
    for (index, outcome) in results.into_inner().unwrap_or_default() {
        outcomes[index] = outcome;
    }
    outcomes
}

fn summarise_failure(
    done: &[TableReport],
    failed: &[(String, String)],
    skipped: &[String],
) -> Failure {
    let ok: Vec<&str> = done.iter().map(|r| r.table.as_str()).collect();
    let bad: Vec<&str> = failed.iter().map(|(t, _)| t.as_str()).collect();
    error!(
        succeeded = %ok.join(" "),
        failed = %bad.join(" "),
        not_attempted = %skipped.join(" "),
        "Failed. {} of {} tables dumped.",
        ok.len(),
        ok.len() + bad.len() + skipped.len()
    );
    let first = failed
        .first()
        .map(|(t, e)| format!("table '{t}': {e}"))
        .unwrap_or_default();
    Failure::runtime(anyhow!(
        "{} table(s) failed ({}); first failure: {first}",
        bad.len(),
        bad.join(", ")
    ))
}

/// `--date`, or today in UTC; fixed once so a run across midnight stays in one folder.
pub fn run_date(arg: Option<&str>) -> Result<String, Failure> {
    match arg {
        None => Ok(chrono::Utc::now()
            .date_naive()
            .format("%Y-%m-%d")
            .to_string()),
        Some(text) => NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
            .ok()
            .filter(|d| d.format("%Y-%m-%d").to_string() == text.trim())
            .map(|d| d.format("%Y-%m-%d").to_string())
            .ok_or_else(|| {
                Failure::usage(anyhow!(
                    "--date '{text}' is not a valid date: use YYYY-MM-DD, e.g. 2024-01-31"
                ))
            }),
    }
}

async fn open_destination(args: &Args, location: &Location) -> Result<Destination, Failure> {
    match location {
        Location::S3 { bucket, prefix } => {
            if let Some(url) = &args.endpoint_url {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(Failure::usage(anyhow!(
                        "AWS_ENDPOINT_URL '{url}' is not an http(s) URL: use e.g. https://rgw.example.com"
                    )));
                }
            }
            let settings = S3Settings {
                endpoint_url: args.endpoint_url.clone(),
                region: args.region.clone(),
                timeout: args.common.timeout(),
                max_attempts: 5,
                ca_bundle: args.common.ca_bundle.clone(),
                ..Default::default()
            };
            let started = aws_sdk_s3::primitives::DateTime::from(std::time::SystemTime::now());
            let client = s3::client(&settings).await?;
            // Fail on credentials or bucket before touching the database.
            client
                .list_objects_v2()
                .bucket(bucket)
                .prefix(if prefix.is_empty() {
                    String::new()
                } else {
                    format!("{prefix}/")
                })
                .max_keys(1)
                .send()
                .await
                .map_err(|e| {
                    s3::failure(
                        &e,
                        &format!("checking {location}"),
                        bucket,
                        CREDENTIALS_HINT,
                    )
                })?;
            if !args.dry_run {
                cleanup::register(cleanup::Unfinished::UploadsUnder {
                    client: client.clone(),
                    bucket: bucket.clone(),
                    prefix: prefix.clone(),
                });
                // Uploads a killed run (SIGKILL, node loss) left under our prefix.
                let aborted = s3::abort_stale_uploads(&client, bucket, prefix, started).await;
                if aborted > 0 {
                    info!(aborted, "aborted multipart uploads left by an earlier run");
                }
            }
            Destination::new(location, Some(client))
                .ok_or_else(|| Failure::runtime(anyhow!("internal: no S3 client")))
        }
        Location::Local(dir) => {
            if !args.dry_run {
                std::fs::create_dir_all(dir).map_err(|e| {
                    Failure::usage(anyhow!(
                        "cannot create output directory {}: {e}; choose a writable --output",
                        dir.display()
                    ))
                })?;
            }
            Ok(Destination::Local(dir.clone()))
        }
    }
}

async fn resolve_all(client: &Client, tables: &[TableRef]) -> Result<Vec<ResolvedTable>, Failure> {
    let mut resolved = Vec::new();
    let mut problems = Vec::new();
    for table in tables {
        match catalog::resolve(client, table).await {
            Ok(Ok(found)) => resolved.push(found),
            Ok(Err(problem)) => problems.push(match problem {
                Problem::Missing => {
                    format!("'{table}' does not exist (or is not visible to this user)")
                }
                Problem::NotReadable => {
                    format!("'{table}' is not readable (GRANT SELECT to the dump user)")
                }
                Problem::NotATable(kind) => {
                    format!("'{table}' is not a table or view (relkind '{kind}')")
                }
            }),
            Err(e) => {
                return Err(Failure::runtime(anyhow!(
                    "cannot look up table '{table}': {e}"
                )))
            }
        }
    }
    if !problems.is_empty() {
        return Err(Failure::usage(anyhow!(
            "{} of {} tables cannot be dumped: {}; fix TABLES or the database grants",
            problems.len(),
            tables.len(),
            problems.join(", ")
        )));
    }
    Ok(resolved)
}

fn print_plan(tables: &[ResolvedTable], destination: &Destination, date: &str) {
    println!(
        "{:<32} {:>14} {:>12}  target",
        "table", "est. rows", "est. size"
    );
    for t in tables {
        let target = destination.describe(&format!("{date}/{}.csv.gz", t.requested.file_stem()));
        let rows = if t.estimated_rows < 0 {
            "unknown".to_string()
        } else {
            t.estimated_rows.to_string()
        };
        println!(
            "{:<32} {:>14} {:>12}  {target}",
            t.requested.file_stem(),
            rows,
            egress_common::units::human_bytes(t.estimated_bytes.max(0) as u64)
        );
    }
    info!(tables = tables.len(), "Dry run: nothing was written.");
}

async fn dump_table(
    client: &Client,
    table: &ResolvedTable,
    job: &Job<'_>,
) -> Result<TableReport, Failure> {
    let (args, destination, date) = (job.args, job.destination, job.date);
    let name = table.requested.file_stem();
    let relative = format!("{date}/{name}.csv.gz");
    let target = destination.describe(&relative);
    info!(table = %name, target = %target, "Table '{name}': Data collection started.");
    let started = Instant::now();
    let sink = destination.open(&relative).await?;
    let counters = job.counters.clone();

    let (raw_tx, raw_rx) = mpsc::channel(8);
    let (part_tx, part_rx) = mpsc::channel(1);
    let base = args.part_size_mib as usize * MIB;
    let level = args.compression_level;
    let threads = job.compress_threads;
    let compress_counters = counters.clone();
    let compressor = tokio::task::spawn_blocking(move || {
        gzip::compress(
            raw_rx,
            part_tx,
            level,
            |n| multipart::part_size(n, base),
            &compress_counters,
            threads,
        )
    });
    let sql = table.copy_sql(args.header);
    let copy = copy_stream::copy_out(client, &sql, args.header, raw_tx, &counters);
    let receive = sink.receive(part_rx, args.upload_concurrency as usize);
    let (copied, compressed, received) = tokio::join!(copy, compressor, receive);

    // Only when all three stages succeeded may the object become visible.
    let (copy, stats, pending) = match (copied, compressed, received) {
        (Ok(copy), Ok(Ok(stats)), Ok(pending)) => (copy, stats, pending),
        // The upload stage failed: it has already aborted its upload; this removes a temp file.
        (_, _, Err(upload_failure)) => {
            sink.abort(None).await;
            return Err(upload_failure);
        }
        (copied, compressed, Ok(pending)) => {
            sink.abort(Some(pending)).await;
            return Err(match (copied, compressed) {
                (Err(CopyError::Database(e)), _) => Failure::runtime(anyhow!(
                    "reading table '{name}' failed: {}",
                    describe_db_error(&e)
                )),
                (_, Err(join)) => {
                    Failure::runtime(anyhow!("compressing table '{name}' failed: {join}"))
                }
                _ => Failure::runtime(anyhow!("dumping table '{name}' stopped unexpectedly")),
            });
        }
    };
    sink.commit(pending, stats.compressed_bytes).await?;
    let seconds = started.elapsed().as_secs_f64();
    info!(
        table = %name,
        target = %target,
        rows = copy.rows,
        uncompressed_bytes = stats.uncompressed_bytes,
        compressed_bytes = stats.compressed_bytes,
        seconds = (seconds * 1000.0).round() / 1000.0,
        mib_per_s = mib_per_sec(stats.uncompressed_bytes, seconds),
        "Table '{name}': Dump uploaded to intermediate storage."
    );
    Ok(TableReport {
        table: name,
        target,
        rows: copy.rows,
        stats,
        seconds,
    })
}

/// A database error as one line: the server's message and SQLSTATE, or the transport error.
pub fn describe_db_error(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} ({})", db.message(), db.code().code());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_strict() {
        assert_eq!(run_date(Some("2024-02-29")).unwrap(), "2024-02-29");
        assert!(run_date(Some("2023-02-29")).is_err());
        assert!(run_date(Some("2024-1-5")).is_err());
        assert!(run_date(Some("yesterday")).is_err());
        assert_eq!(run_date(None).unwrap().len(), 10);
    }
}
