//! Command-line flags, each with the environment variable the original deployment used.

use clap::Parser;
use egress_common::cli::CommonArgs;
use egress_store::Secret;

/// The mirror shared by several processes (`--shares`): each mirrors the days of its
/// share, a hash of the day folder's name.
#[derive(Debug, Clone, clap::Args)]
pub struct ShareArgs {
    /// Processes (pods of an Indexed Job) that share the mirror, each the days of its share
    /// (1 = this process alone).
    #[arg(long, env = "SHARES", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..=64))]
    pub shares: u64,

    /// This process's share among `--shares`; an Indexed Job sets it.
    #[arg(long, env = "JOB_COMPLETION_INDEX")]
    pub share_index: Option<u64>,
}

impl ShareArgs {
    /// The share the flags ask for, checked.
    pub fn slice(&self) -> Result<egress_common::cli::Slice, egress_common::ConfigError> {
        egress_common::cli::Slice::checked(
            self.shares,
            self.share_index,
            ["--shares", "SHARES", "--share-index"],
        )
    }
}

/// Mirror new and changed objects from an input S3 endpoint/path to an output one
/// (AWS S3, Ceph RGW, MinIO, or a local directory), verified.
///
/// A side is a local directory when its URL is empty or file://.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "egress-sync",
    version,
    about,
    max_term_width = 100,
    args_conflicts_with_subcommands = true
)]
pub struct Args {
    /// Input S3 endpoint, e.g. https://s3.amazonaws.com (empty: INPUT_PATH is a local directory).
    #[arg(long, env = "INPUT_URL", default_value = "")]
    pub input_url: String,
    /// Input bucket or bucket/sub/path (or a directory).
    #[arg(long, env = "INPUT_PATH", default_value = "")]
    pub input_path: String,
    /// Input access key (default: the AWS credential chain).
    #[arg(long, env = "INPUT_ACCESS_KEY_ID", hide_env_values = true)]
    pub input_access_key_id: Option<String>,
    /// Input secret key.
    #[arg(long, env = "INPUT_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub input_secret_access_key: Option<Secret>,
    /// Input region.
    #[arg(long, env = "INPUT_REGION", default_value = "us-east-1")]
    pub input_region: String,

    /// Output S3 endpoint, e.g. a Ceph RGW URL (empty: OUTPUT_PATH is a local directory).
    #[arg(long, env = "OUTPUT_URL", default_value = "")]
    pub output_url: String,
    /// Output bucket or bucket/sub/path (or a directory).
    #[arg(long, env = "OUTPUT_PATH", default_value = "")]
    pub output_path: String,
    /// Output access key (default: the AWS credential chain).
    #[arg(long, env = "OUTPUT_ACCESS_KEY_ID", hide_env_values = true)]
    pub output_access_key_id: Option<String>,
    /// Output secret key.
    #[arg(long, env = "OUTPUT_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub output_secret_access_key: Option<Secret>,
    /// Output region.
    #[arg(long, env = "OUTPUT_REGION", default_value = "us-east-1")]
    pub output_region: String,

    /// Objects transferred concurrently.
    /// (64 measured best here: small objects are latency-bound, 4x faster than at 16.)
    #[arg(long, env = "SYNC_JOBS", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..=256))]
    pub jobs: u64,

    /// Listing requests in flight per side: folders are listed at once and merged in key
    /// order (1: one listing stream).
    #[arg(long, env = "LIST_JOBS", default_value_t = 8,
          value_parser = clap::value_parser!(u64).range(1..=64))]
    pub list_jobs: u64,

    /// Print the plan and change nothing.
    #[arg(long, env = "DRY_RUN")]
    pub dry_run: bool,

    /// Delete output objects that are absent from the input (after every copy succeeded).
    #[arg(long, env = "REMOVE")]
    pub remove: bool,

    /// Most objects --remove may delete (default: 10% of the output's objects).
    #[arg(long, env = "MAX_DELETE")]
    pub max_delete: Option<u64>,

    /// Only keys matching one of these globs (relative to the input path); repeatable or comma-separated.
    #[arg(long, env = "INCLUDE", value_delimiter = ',')]
    pub include: Vec<String>,

    /// Skip keys matching these globs; repeatable or comma-separated.
    #[arg(long, env = "EXCLUDE", value_delimiter = ',')]
    pub exclude: Vec<String>,

    /// Copy a folder only once its `_manifest.json` exists at the input; copy its objects
    /// first (each checked against the manifest) and the manifest last.
    #[arg(long, env = "REQUIRE_MANIFEST")]
    pub require_manifest: bool,

    /// Check the output (or the input) against its manifests instead of copying; exit 1 on
    /// any mismatch.
    #[arg(long, env = "VERIFY", num_args = 0..=1, default_missing_value = "output", value_enum)]
    pub verify: Option<VerifySide>,

    /// Objects without a known MD5 (a local file) up to this size (MiB) are read into memory
    /// and sent with their Content-MD5; larger ones are copied in verified parts.
    #[arg(long, env = "MULTIPART_THRESHOLD_MIB", default_value_t = 8,
          value_parser = clap::value_parser!(u64).range(5..=512))]
    pub multipart_threshold_mib: u64,

    /// Part size (MiB) for objects copied in parts when the input's own layout is not reused.
    #[arg(long, env = "PART_SIZE_MIB", default_value_t = 8,
          value_parser = clap::value_parser!(u64).range(5..=512))]
    pub part_size_mib: u64,

    /// Memory for object data across all transfers (MiB): objects held whole, and how many
    /// streams (a GET feeding a PUT, about 512 KiB each) run at once.
    #[arg(long, env = "MEMORY_BUDGET_MIB", default_value_t = 40,
          value_parser = clap::value_parser!(u64).range(16..=4096))]
    pub memory_budget_mib: u64,

    /// Commit each mirrored Parquet day to Apache Iceberg tables beside the output: one
    /// table per source table, partitioned by day, the mirrored files its data files.
    #[arg(long, env = "ICEBERG")]
    pub iceberg: bool,

    /// Where the Iceberg tables are: s3://bucket/path on the output's endpoint, or a
    /// directory (default: `_iceberg` in the output, which the mirror then leaves alone).
    #[arg(long, env = "ICEBERG_WAREHOUSE", default_value = "")]
    pub iceberg_warehouse: String,

    /// The Iceberg tables' namespace: a table is `<warehouse>/<namespace>/<table>`.
    #[arg(long, env = "ICEBERG_NAMESPACE", default_value = "egress")]
    pub iceberg_namespace: String,

    /// An Iceberg SQL catalog in PostgreSQL (postgresql://user:password@host/db); empty:
    /// no catalog server, each table's folder records its versions.
    #[arg(long, env = "ICEBERG_CATALOG", hide_env_values = true)]
    pub iceberg_catalog: Option<Secret>,

    /// The catalog's name in the SQL catalog (the name readers give their catalog).
    #[arg(long, env = "ICEBERG_CATALOG_NAME", default_value = "egress")]
    pub iceberg_catalog_name: String,

    /// The mirror shared by several processes, each a disjoint set of day folders.
    #[command(flatten)]
    pub shares: ShareArgs,

    /// Logging, timeouts, TLS and the termination log.
    #[command(flatten)]
    pub common: CommonArgs,

    /// Shell completions or the man page instead of a run.
    #[command(subcommand)]
    pub tool: Option<egress_common::cli::Tool>,
}

egress_common::binary_args!(Args, [EXTRA_ENV, REQUIRED_ENV]);

/// Which side `--verify` checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VerifySide {
    /// The input.
    Input,
    /// The output.
    Output,
}

/// Variables read outside clap (the AWS chain, used when no static keys are given).
pub const EXTRA_ENV: &[&str] = &[
    "AWS_PROFILE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
];

/// Variables a CronJob must set.
pub const REQUIRED_ENV: &[&str] = &[
    "INPUT_URL",
    "INPUT_PATH",
    "INPUT_ACCESS_KEY_ID",
    "INPUT_SECRET_ACCESS_KEY",
    "OUTPUT_URL",
    "OUTPUT_PATH",
    "OUTPUT_ACCESS_KEY_ID",
    "OUTPUT_SECRET_ACCESS_KEY",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsed_arguments_never_print_a_secret() {
        let args = Args::parse_from([
            "egress-sync",
            "--input-secret-access-key",
            "SENTINEL-in-7f3k",
            "--output-secret-access-key",
            "SENTINEL-out-2m9q",
            "--input-access-key-id",
            "AKIN",
            "--output-access-key-id",
            "AKOUT",
        ]);
        let shown = format!("{args:?} {args:#?}");
        assert!(!shown.contains("SENTINEL"), "{shown}");
        assert!(shown.contains("AKIN"), "key ids are not secret");
    }
}
