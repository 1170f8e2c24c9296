//! One dump run, as a short sequence of named steps: check the request, open the output,
//! connect, take the snapshot, find the tables, dump them, write the manifest.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use chrono::NaiveDate;
use egress_common::lease::{self, Lease};
use egress_common::manifest::{self, Manifest, TableEntry};
use egress_common::store::{self, Body, PutOptions, S3Settings, Store};
use egress_common::{ConfigError, Location};
use tokio_postgres::Client;
use tracing::{error, info};

use crate::catalog::{self, Problem, ResolvedTable};
use crate::config::Args;
use crate::conninfo::Params;
use crate::database::{self, DbError, Session, Target};
use crate::gzip;
use crate::pipeline::{self, Job, TableReport};
use crate::progress::{self, Counters};
use crate::snapshot::{self, SnapshotInfo};
use crate::tables::{self, TableRef};

/// The variables that hold the dump's S3 keys, named when S3 rejects them.
pub const CREDENTIALS_HINT: &str = "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the AWS profile)";

/// What was asked for, validated before anything is contacted.
struct Request {
    tables: Vec<TableRef>,
    date: String,
    location: Location,
}

/// The database side of a run: how to connect, and the connection holding the snapshot.
struct Database {
    target: Target,
    coordinator: Session,
}

/// Run a whole dump as configured by `args`.
pub async fn run(args: &Args) -> anyhow::Result<Vec<TableReport>> {
    let request = check_request(args)?;
    let store = open_output(args, &request).await?;
    // One writer per date folder: a dry run writes nothing and takes no lease.
    let lease = match args.dry_run {
        true => None,
        false => {
            let key = lease::key_in(&request.date);
            Some(lease::acquire(&store, &key, "egress-dump", args.common.wait_for_lease).await?)
        }
    };
    let outcome = dump_day(args, &request, &store, lease.as_ref()).await;
    if let Some(lease) = lease {
        lease.release().await;
    }
    outcome
}

/// The day's steps, under the lease (none for a dry run).
async fn dump_day(
    args: &Args,
    request: &Request,
    store: &Store,
    lease: Option<&Lease>,
) -> anyhow::Result<Vec<TableReport>> {
    let run_started = manifest::now_rfc3339();
    if let Some(lease) = lease {
        clear_dead_uploads(store, &request.date, lease.since()).await;
    }
    let db = connect(args).await?;
    let parallel = args.jobs > 1 && request.tables.len() > 1;
    // One snapshot for every table of the run: the day's files agree with each other.
    let snapshot = snapshot::begin(&db.coordinator, parallel).await?;
    let tables = find_tables(&db.coordinator, &request.tables).await?;
    let Some(lease) = lease else {
        print_plan(&tables, store, &request.date);
        return Ok(Vec::new());
    };
    let columns = read_columns(&db.coordinator, &tables).await?;
    // A re-run replaces the day: first withdraw the completion marker, so the folder never
    // looks complete while its objects are being replaced.
    store.delete(&manifest::key_in(&request.date)).await?;
    let outcomes = dump_tables(args, &db, &snapshot, &tables, store, &request.date).await?;
    let _ = db.coordinator.batch_execute("COMMIT").await;
    let reports = all_succeeded(&tables, outcomes)?;
    let parts = ManifestParts {
        args,
        request,
        run_started,
        snapshot,
    };
    let manifest = build_manifest(parts, &tables, &reports, columns);
    check_written(store, &manifest, &reports, lease).await?;
    write_manifest(store, &request.date, &manifest).await?;
    let names: Vec<&str> = reports.iter().map(|r| r.table.as_str()).collect();
    let peak_rss_mib = egress_common::memory::peak_rss_mib();
    info!(tables = reports.len(), succeeded = %names.join(" "), peak_rss_mib, "Success.");
    Ok(reports)
}

/// Abort the uploads killed runs left: in this run's date folder (its lease is ours) all
/// older ones; in other folders only where no live run holds the folder's lease.
async fn clear_dead_uploads(store: &Store, date: &str, since: i64) {
    let covering = |key: &str| {
        let folder = key.split('/').next().unwrap_or("");
        (folder != date).then(|| lease::key_in(folder))
    };
    let aborted = lease::abort_dead_uploads(store, "", since, covering).await;
    if aborted > 0 {
        info!(aborted, "aborted multipart uploads left by an earlier run");
    }
}

/// Before the manifest vouches for the day: every object is still the one this run wrote
/// (another run that bypassed the lease may have replaced it), and the lease is still ours.
async fn check_written(
    store: &Store,
    manifest: &Manifest,
    reports: &[TableReport],
    lease: &Lease,
) -> anyhow::Result<()> {
    let date = &manifest.date;
    for (entry, report) in manifest.tables.iter().zip(reports) {
        let key = store::key::join(date, &entry.file);
        let meta = store.head(&key).await?;
        let wrote = (entry.compressed_bytes, report.committed.etag.as_deref());
        let same_etag = match (wrote.1, meta.etag.as_deref()) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        if meta.size != wrote.0 || !same_etag {
            anyhow::bail!(
                "{} is no longer the object this run wrote ({} bytes, ETag {}; this run wrote {} bytes, ETag {}): another run wrote the same day; no manifest written, run again",
                store.describe(&key),
                meta.size,
                meta.etag.as_deref().unwrap_or("-"),
                wrote.0,
                wrote.1.unwrap_or("-")
            );
        }
    }
    if lease.lost() {
        anyhow::bail!("the lease on {date} was taken by another run while this one worked; no manifest written, run again");
    }
    Ok(())
}

/// The flags checked before anything is contacted.
fn check_request(args: &Args) -> anyhow::Result<Request> {
    Ok(Request {
        tables: tables::parse_list(&args.tables).map_err(|e| ConfigError::new(e.to_string()))?,
        date: run_date(args.date.as_deref())?,
        location: Location::parse(&args.output).map_err(|e| ConfigError::new(e.to_string()))?,
    })
}

/// `--date`, or today in UTC; fixed once so a run across midnight stays in one folder.
pub fn run_date(arg: Option<&str>) -> Result<String, ConfigError> {
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
                ConfigError::new(format!(
                    "--date '{text}' is not a valid date: use YYYY-MM-DD, e.g. 2024-01-31"
                ))
            }),
    }
}

/// The output store as the flags say, not yet contacted.
pub async fn open_store(args: &Args, location: &Location) -> anyhow::Result<Store> {
    if let Some(url) = &args.endpoint_url {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return egress_common::error::config(format!(
                "AWS_ENDPOINT_URL '{url}' is not an http(s) URL: use e.g. https://rgw.example.com"
            ));
        }
    }
    let settings = S3Settings {
        endpoint_url: args.endpoint_url.clone(),
        // A custom endpoint (Ceph RGW, MinIO) is addressed path-style; AWS's own hosts
        // (VPC or FIPS endpoints) keep virtual-host addressing.
        path_style: args
            .endpoint_url
            .as_deref()
            .is_some_and(|u| !store::is_aws_host(u)),
        region: args.region.clone(),
        timeout: args.common.timeout(),
        max_attempts: 5,
        ca_bundle: args.common.ca_bundle.clone(),
        credentials_hint: CREDENTIALS_HINT,
        ..Default::default()
    };
    let store = store::open(location, &settings, args.common.file_mode).await?;
    Ok(store)
}

/// Open the output and check it before touching the database: credentials, bucket, a
/// writable directory.
async fn open_output(args: &Args, request: &Request) -> anyhow::Result<Store> {
    let store = open_store(args, &request.location).await?;
    // A dry run writes nothing, so a local output that does not exist yet is fine.
    let local = matches!(request.location, Location::Local(_));
    if !(args.dry_run && local) {
        store.probe(!args.dry_run).await?;
    }
    Ok(store)
}

async fn connect(args: &Args) -> anyhow::Result<Database> {
    let conninfo = args.database_url.as_ref().map(|u| u.expose());
    let params = Params::resolve(conninfo, &database::env_from_process())?;
    let target = database::resolve(&params, args.common.timeout())?;
    let coordinator = target.connect_with_retry(5).await?;
    database::prepare_session(&coordinator).await?;
    Ok(Database {
        target,
        coordinator,
    })
}

/// Look every table up; all problems are reported at once.
async fn find_tables(client: &Client, tables: &[TableRef]) -> anyhow::Result<Vec<ResolvedTable>> {
    let mut resolved = Vec::new();
    let mut problems = Vec::new();
    for table in tables {
        let found = catalog::resolve(client, table)
            .await
            .map_err(|e| DbError::new(&format!("cannot look up table '{table}'"), &e))?;
        match found {
            Ok(found) => resolved.push(found),
            Err(Problem::Missing) => problems.push(format!(
                "'{table}' does not exist (or is not visible to this user)"
            )),
            Err(Problem::NotReadable) => problems.push(format!(
                "'{table}' is not readable (GRANT SELECT to the dump user)"
            )),
            Err(Problem::NotATable(kind)) => problems.push(format!(
                "'{table}' is not a table or view (relkind '{kind}')"
            )),
        }
    }
    if !problems.is_empty() {
        return egress_common::error::config(format!(
            "{} of {} tables cannot be dumped: {}; fix TABLES or the database grants",
            problems.len(),
            tables.len(),
            problems.join(", ")
        ));
    }
    for (i, table) in resolved.iter().enumerate() {
        if let Some(twin) = resolved[..i].iter().find(|t| t.oid == table.oid) {
            return egress_common::error::config(format!(
                "'{}' and '{}' are the same table ({}.{}): list it once in TABLES",
                twin.requested.spelled(),
                table.requested.spelled(),
                table.schema,
                table.name
            ));
        }
    }
    Ok(resolved)
}

async fn read_columns(
    client: &Client,
    tables: &[ResolvedTable],
) -> anyhow::Result<Vec<Vec<catalog::Column>>> {
    let mut columns = Vec::with_capacity(tables.len());
    for table in tables {
        let found = catalog::columns(client, table.oid).await.map_err(|e| {
            DbError::new(
                &format!("cannot read the columns of '{}'", table.requested),
                &e,
            )
        })?;
        columns.push(found);
    }
    Ok(columns)
}

fn print_plan(tables: &[ResolvedTable], store: &Store, date: &str) {
    println!(
        "{:<32} {:>14} {:>12}  target",
        "table", "est. rows", "est. size"
    );
    for t in tables {
        let target = store.describe(&format!("{date}/{}.csv.gz", t.requested.file_stem()));
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

/// How one table ended.
enum Outcome {
    Done(Box<TableReport>),
    Failed(anyhow::Error),
    NotAttempted,
}

/// Dump every table: on the coordinator's connection, or with `--jobs` on worker
/// connections that import its snapshot.
async fn dump_tables(
    args: &Args,
    db: &Database,
    snapshot: &SnapshotInfo,
    tables: &[ResolvedTable],
    store: &Store,
    date: &str,
) -> anyhow::Result<Vec<Outcome>> {
    let parallel = snapshot.exported_id.is_some();
    let workers = if parallel {
        (args.jobs as usize).min(tables.len())
    } else {
        1
    };
    let counters = Arc::new(Counters::default());
    let job = Job {
        args,
        compress_threads: (gzip::default_threads() / workers).max(1),
        store,
        date,
        counters: &counters,
    };
    let display = progress::display("dump".to_string(), counters.clone(), args.common.progress());
    let outcomes = if let Some(id) = &snapshot.exported_id {
        let mut clients = Vec::with_capacity(workers);
        for _ in 0..workers {
            let client = db.target.connect_with_retry(5).await?;
            database::prepare_session(&client).await?;
            snapshot::import(&client, id).await?;
            clients.push(client);
        }
        let outcomes = dump_parallel(&clients, tables, &job).await;
        for client in &clients {
            let _ = client.batch_execute("COMMIT").await;
        }
        outcomes
    } else {
        dump_serial(&db.coordinator, tables, &job).await
    };
    display.finish().await;
    Ok(outcomes)
}

/// Dump one table inside a savepoint, so that with `--keep-going` a failed COPY does not
/// poison the transaction for the tables after it.
async fn dump_in_savepoint(client: &Session, table: &ResolvedTable, job: &Job<'_>) -> Outcome {
    let name = table.requested.file_stem();
    let _ = client.batch_execute("SAVEPOINT egress_table").await;
    match pipeline::dump_table(client, table, job).await {
        Ok(report) => {
            let _ = client.batch_execute("RELEASE SAVEPOINT egress_table").await;
            Outcome::Done(Box::new(report))
        }
        Err(e) => {
            let _ = client
                .batch_execute("ROLLBACK TO SAVEPOINT egress_table")
                .await;
            let line = egress_common::error::one_line(&e);
            error!(table = %name, error = %line, "Table '{name}': Dump failed.");
            Outcome::Failed(e)
        }
    }
}

async fn dump_serial(client: &Session, tables: &[ResolvedTable], job: &Job<'_>) -> Vec<Outcome> {
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
    clients: &[Session],
    tables: &[ResolvedTable],
    job: &Job<'_>,
) -> Vec<Outcome> {
    let mut order: Vec<usize> = (0..tables.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(tables[i].estimated_bytes));
    let queue = Mutex::new(std::collections::VecDeque::from(order));
    let stop = AtomicBool::new(false);
    let results = Mutex::new(Vec::new());
    let workers = clients.iter().map(|client| async {
        while !stop.load(Ordering::SeqCst) {
            let next = queue.lock().ok().and_then(|mut q| q.pop_front());
            let Some(index) = next else { break };
            let outcome = dump_in_savepoint(client, &tables[index], job).await;
            if matches!(outcome, Outcome::Failed(_)) && !job.args.keep_going {
                stop.store(true, Ordering::SeqCst);
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

/// The reports, or (when any table failed) an error naming them all: no manifest then,
/// so the day stays visibly incomplete.
fn all_succeeded(
    tables: &[ResolvedTable],
    outcomes: Vec<Outcome>,
) -> anyhow::Result<Vec<TableReport>> {
    let mut reports = Vec::new();
    let mut failed: Vec<(String, anyhow::Error)> = Vec::new();
    let mut skipped: Vec<String> = Vec::new();
    for (table, outcome) in tables.iter().zip(outcomes) {
        match outcome {
            Outcome::Done(report) => reports.push(*report),
            Outcome::Failed(e) => failed.push((table.requested.file_stem(), e)),
            Outcome::NotAttempted => skipped.push(table.requested.file_stem()),
        }
    }
    let Some((first_table, _)) = failed.first() else {
        return Ok(reports);
    };
    let ok: Vec<&str> = reports.iter().map(|r| r.table.as_str()).collect();
    let bad: Vec<String> = failed.iter().map(|(t, _)| t.clone()).collect();
    error!(
        succeeded = %ok.join(" "),
        failed = %bad.join(" "),
        not_attempted = %skipped.join(" "),
        "Failed. {} of {} tables dumped.",
        ok.len(),
        ok.len() + bad.len() + skipped.len()
    );
    let summary = format!(
        "{} table(s) failed ({}); first failure: table '{first_table}'",
        bad.len(),
        bad.join(", ")
    );
    let (_, first) = failed.swap_remove(0);
    Err(first.context(summary))
}

/// What the manifest records about the run as a whole.
struct ManifestParts<'a> {
    args: &'a Args,
    request: &'a Request,
    run_started: String,
    snapshot: SnapshotInfo,
}

fn build_manifest(
    run: ManifestParts<'_>,
    tables: &[ResolvedTable],
    reports: &[TableReport],
    columns: Vec<Vec<catalog::Column>>,
) -> Manifest {
    let date = &run.request.date;
    let entries = tables
        .iter()
        .zip(reports)
        .zip(columns)
        .map(|((table, report), columns)| {
            let file = format!("{}.csv.gz", table.requested.file_stem());
            TableEntry {
                table: report.table.clone(),
                schema: table.schema.clone(),
                name: table.name.clone(),
                key: run.request.location.key_for(&format!("{date}/{file}")),
                file,
                rows: report.rows,
                uncompressed_bytes: report.stats.uncompressed_bytes,
                compressed_bytes: report.stats.compressed_bytes,
                sha256: report.stats.compressed_sha256.clone(),
                uncompressed_sha256: report.stats.uncompressed_sha256.clone(),
                columns,
                gzip_members: Some(report.stats.gzip_members),
                part_sizes: report.committed.part_sizes.clone(),
            }
        })
        .collect();
    Manifest {
        format_version: manifest::FORMAT_VERSION,
        tool: "egress-dump".into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        date: date.clone(),
        run_started: run.run_started,
        run_finished: manifest::now_rfc3339(),
        snapshot: SnapshotInfo {
            exported_id: None,
            ..run.snapshot
        },
        compression_level: run.args.compression_level,
        header: run.args.header,
        tables: entries,
    }
}

async fn write_manifest(store: &Store, date: &str, manifest: &Manifest) -> anyhow::Result<()> {
    use md5::{Digest, Md5};
    let body = serde_json::to_vec_pretty(manifest).context("cannot encode the manifest")?;
    let options = PutOptions {
        attributes: store::Attributes {
            content_type: Some("application/json".into()),
            ..Default::default()
        },
        content_md5: Some(Md5::digest(&body).into()),
        ..Default::default()
    };
    store
        .put(&manifest::key_in(date), Body::from_bytes(body), &options)
        .await?;
    Ok(())
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
