//! What a dump was asked to do, built once from the flags (in `main`) and checked before
//! anything is contacted; every stage takes these settings, never the flags.

use std::time::Duration;

use chrono::NaiveDate;
use egress_common::day::lease;
use egress_common::{ConfigError, Location};
use egress_store::{S3Settings, Secret};

use crate::config::{Args, Format};
use crate::table_list::{self, TableRef};
use egress_common::day::shared::Shards;

/// The variables that hold the dump's S3 keys, named when S3 rejects them.
const CREDENTIALS_HINT: &str = "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the AWS profile)";

/// A dump's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The tables, as listed.
    pub tables: Vec<TableRef>,
    /// The date folder (`YYYY-MM-DD`), fixed once.
    pub date: String,
    /// True when `--date` chose it (else it is today, UTC, at start).
    pub date_given: bool,
    /// Where the day goes.
    pub output: Location,
    /// How to reach an S3 output.
    pub s3: S3Settings,
    /// How a local output is written (permission bits, durability).
    pub local: egress_store::LocalOptions,
    /// The connection string, if one was given (the `PG*` variables fill the rest).
    pub database_url: Option<Secret>,
    /// Connect and read timeout.
    pub timeout: Duration,
    /// Tables read at once (and connections reading one split table).
    pub jobs: usize,
    /// Tables larger than this are read in ctid chunks.
    pub split_larger_than: Option<u64>,
    /// How long a table's lock is waited for.
    pub lock_timeout: Duration,
    /// Fresh snapshots after recovery conflicts on a standby.
    pub conflict_retries: u32,
    /// Dump the other tables after one fails.
    pub keep_going: bool,
    /// A CSV header line first.
    pub header: bool,
    /// What each table is written as.
    pub format: Format,
    /// gzip level.
    pub compression_level: u32,
    /// One gzip member per object.
    pub single_gzip_member: bool,
    /// First part size, bytes.
    pub part_size: usize,
    /// Parts in flight per table.
    pub upload_concurrency: usize,
    /// How the day's lease is taken.
    pub lease: lease::Options,
    /// Validate and print the plan; write nothing.
    pub dry_run: bool,
    /// A live progress line on a terminal.
    pub progress: bool,
    /// Which share of the day this process dumps (`--shards`).
    pub shards: Shards,
}

impl Settings {
    /// The settings `args` ask for; a wrong one is a [`ConfigError`] naming the fix.
    pub fn from_args(args: &Args) -> Result<Settings, ConfigError> {
        let fix = |e: &dyn std::fmt::Display| ConfigError::new(e.to_string());
        Ok(Settings {
            tables: table_list::parse_list(&args.tables).map_err(|e| fix(&e))?,
            date: run_date(args.date.as_deref())?,
            date_given: args.date.is_some(),
            output: Location::parse(&args.output).map_err(|e| fix(&e))?,
            s3: s3_settings(args)?,
            local: args.common.local(),
            database_url: args.database_url.clone(),
            timeout: args.common.timeout(),
            jobs: args.jobs as usize,
            split_larger_than: args.split_larger_than,
            lock_timeout: args.lock_timeout,
            conflict_retries: args.conflict_retries,
            keep_going: args.keep_going,
            header: header(args)?,
            format: args.format,
            compression_level: args.compression_level,
            single_gzip_member: args.single_gzip_member,
            part_size: args.part_size_mib as usize * 1024 * 1024,
            upload_concurrency: args.upload_concurrency as usize,
            lease: args.common.lease(),
            dry_run: args.dry_run,
            progress: args.common.progress(),
            shards: Shards::new(args.shards.slice()?, args.shard_wait)?,
        })
    }

    /// True when the day is not today's (UTC): a backfill.
    pub fn is_backfill(&self) -> bool {
        run_date(None).is_ok_and(|today| today != self.date)
    }
}

/// `--header`, which only a CSV has.
fn header(args: &Args) -> Result<bool, ConfigError> {
    if args.header && args.format == Format::Parquet {
        return Err(ConfigError::new(
            "DUMP_HEADER (--header) applies to CSV only: a Parquet file names its columns \
             itself; unset it or use --format csv"
                .to_string(),
        ));
    }
    Ok(args.header)
}

/// How to reach an S3 output: a custom endpoint (Ceph RGW, MinIO) path-style; AWS's own
/// hosts (VPC or FIPS endpoints) keep virtual-host addressing.
fn s3_settings(args: &Args) -> Result<S3Settings, ConfigError> {
    if let Some(url) = &args.endpoint_url {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ConfigError::new(format!(
                "AWS_ENDPOINT_URL '{url}' is not an http(s) URL: use e.g. https://rgw.example.com"
            )));
        }
    }
    Ok(S3Settings {
        endpoint_url: args.endpoint_url.clone(),
        path_style: args
            .endpoint_url
            .as_deref()
            .is_some_and(|u| !egress_store::is_aws_host(u)),
        region: args.region.clone(),
        timeout: args.common.timeout(),
        max_attempts: 5,
        ca_bundle: args.common.ca_bundle.clone(),
        credentials_hint: CREDENTIALS_HINT,
        ..Default::default()
    })
}

/// `--date`, or today in UTC; fixed once so a run across midnight stays in one folder.
fn run_date(arg: Option<&str>) -> Result<String, ConfigError> {
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
