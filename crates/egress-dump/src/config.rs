//! Command-line flags, each with the environment variable the original deployment used.

use clap::Parser;
use egress_common::cli::CommonArgs;
use egress_store::Secret;

/// Stream PostgreSQL tables as gzip CSV or typed Parquet into S3 (or a local folder), one
/// folder per day.
///
/// The database is configured like libpq: PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE,
/// PGSSLMODE, PGSSLROOTCERT, PGAPPNAME (or --database-url). S3 credentials and region come
/// from the standard AWS chain (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION,
/// AWS_PROFILE, web identity).
#[derive(Debug, Clone, Parser)]
#[command(
    name = "egress-dump",
    version,
    about,
    max_term_width = 100,
    args_conflicts_with_subcommands = true
)]
pub struct Args {
    /// Tables to dump, space- or comma-separated; `schema.table` and `"Quoted"` names allowed.
    #[arg(long, env = "TABLES", default_value = "", hide_default_value = true)]
    pub tables: String,

    /// Where to write: s3://bucket/path, file:///abs/dir or a local directory.
    #[arg(long, env = "S3_OUTPUT", default_value = "./egress-out")]
    pub output: String,

    /// PostgreSQL connection string: a postgresql:// URL or libpq key=value pairs; the PG*
    /// variables fill in whatever it leaves out.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<Secret>,

    /// S3 endpoint for non-AWS stores (Ceph RGW, MinIO); enables path-style requests.
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub endpoint_url: Option<String>,

    /// S3 region (default: the AWS chain's, else us-east-1).
    #[arg(long, env = "AWS_REGION")]
    pub region: Option<String>,

    /// Date folder to write, YYYY-MM-DD (default: today in UTC, fixed at start).
    #[arg(long, env = "DUMP_DATE")]
    pub date: Option<String>,

    /// gzip level, 1 (fastest) to 9 (smallest).
    #[arg(long, env = "COMPRESSION_LEVEL", default_value_t = 6,
          value_parser = clap::value_parser!(u32).range(1..=9))]
    pub compression_level: u32,

    /// Read a table larger than this (heap plus TOAST, e.g. 1GiB) in ctid ranges on up to
    /// --jobs connections, all in the run's snapshot, into the same single object.
    #[arg(long, env = "SPLIT_LARGER_THAN", value_parser = egress_common::units::parse_size)]
    pub split_larger_than: Option<u64>,

    /// Times to start again from a fresh snapshot when a standby cancels a read for a
    /// recovery conflict (SQLSTATE 40001); the day stays one snapshot.
    #[arg(long, env = "CONFLICT_RETRIES", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(0..=100))]
    pub conflict_retries: u32,

    /// How long to wait for each table's lock (taken with the snapshot, as pg_dump does)
    /// when another session holds a conflicting one, e.g. a migration's ALTER TABLE
    /// (0: as long as it takes).
    #[arg(long, env = "LOCK_TIMEOUT", default_value = "5m",
          value_parser = egress_common::units::parse_duration)]
    pub lock_timeout: std::time::Duration,

    /// Write each object as one gzip member (zlib-rs, slower and larger) instead of one
    /// member per 512 KiB block (libdeflate), for readers that stop after the first member.
    #[arg(long, env = "SINGLE_GZIP_MEMBER")]
    pub single_gzip_member: bool,

    /// Write a CSV header line first.
    #[arg(long, env = "DUMP_HEADER")]
    pub header: bool,

    /// What each table becomes: gzip CSV (`<table>.csv.gz`), or Parquet with each
    /// PostgreSQL type written exactly or refused (`<table>.parquet`).
    #[arg(long, env = "DUMP_FORMAT", value_enum, default_value_t = Format::Csv)]
    pub format: Format,

    /// Dump the remaining tables after one fails (the run still exits 1).
    #[arg(long, env = "KEEP_GOING")]
    pub keep_going: bool,

    /// Connect, check every table and print the plan; write nothing.
    #[arg(long, env = "DRY_RUN")]
    pub dry_run: bool,

    /// Tables dumped in parallel from one exported snapshot (1 = one connection).
    #[arg(long, env = "DUMP_JOBS", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..=16))]
    pub jobs: u64,

    /// Parts uploaded concurrently per table (memory use is about this times the part size).
    #[arg(long, env = "UPLOAD_CONCURRENCY", default_value_t = 2,
          value_parser = clap::value_parser!(u64).range(1..=16))]
    pub upload_concurrency: u64,

    /// First part size in MiB (grows past 1,000 parts so any table fits S3's 10,000 parts).
    #[arg(long, env = "PART_SIZE_MIB", default_value_t = 8,
          value_parser = clap::value_parser!(u64).range(5..=512))]
    pub part_size_mib: u64,

    /// The day shared by several processes, all from one snapshot (index 0 coordinates).
    #[command(flatten)]
    pub shards: egress_common::cli::ShardArgs,

    /// How long a shard waits for the coordinator's plan, and the coordinator for a
    /// shard that has not joined or stopped reporting (e.g. 10m).
    #[arg(long, env = "SHARD_WAIT", default_value = "10m",
          value_parser = egress_common::units::parse_duration)]
    pub shard_wait: std::time::Duration,

    /// Logging, timeouts, TLS and the termination log.
    #[command(flatten)]
    pub common: CommonArgs,

    /// Shell completions or the man page instead of a run.
    #[command(subcommand)]
    pub tool: Option<egress_common::cli::Tool>,
}

egress_common::binary_args!(Args, [EXTRA_ENV, REQUIRED_ENV]);

/// Variables read outside clap: libpq's (see `pg::conninfo::ENV`) and the AWS SDK's.
pub const EXTRA_ENV: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGPASSWORD",
    "PGDATABASE",
    "PGSSLMODE",
    "PGSSLROOTCERT",
    "PGAPPNAME",
    "PGCONNECT_TIMEOUT",
    "PGOPTIONS",
    "PGTARGETSESSIONATTRS",
    "PGCHANNELBINDING",
    "PGCLIENTENCODING",
    "PGLOADBALANCEHOSTS",
    "PGGSSENCMODE",
    "PGDATESTYLE",
    "PGTZ",
    "PGGEQO",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
];

/// Variables a CronJob must set (the rest have defaults or are alternatives).
pub const REQUIRED_ENV: &[&str] = &[
    "TABLES",
    "S3_OUTPUT",
    "PGHOST",
    "PGUSER",
    "PGPASSWORD",
    "PGDATABASE",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsed_arguments_never_print_a_secret() {
        let args = Args::parse_from([
            "egress-dump",
            "--database-url",
            "postgresql://u:SENTINEL-pw-4k2j@db/app",
        ]);
        let shown = format!("{args:?} {args:#?}");
        assert!(!shown.contains("SENTINEL"), "{shown}");
    }
}

/// What each table is written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// gzip CSV, as `COPY` prints it.
    Csv,
    /// Parquet (zstd), typed from PostgreSQL's binary values.
    Parquet,
}

impl Format {
    /// The object's name after the table's.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Csv => "csv.gz",
            Format::Parquet => "parquet",
        }
    }

    /// Its name, as the manifest records it.
    pub fn name(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Parquet => "parquet",
        }
    }
}
