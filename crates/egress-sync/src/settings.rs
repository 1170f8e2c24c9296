//! A run's settings, built once from the flags and checked (as egress-dump's are): every
//! stage takes these, never the flags.

use std::time::Duration;

use egress_common::cli::Slice;
use egress_common::day::lease;
use egress_common::ConfigError;
use egress_store::{LocalOptions, S3Settings};

use crate::config::{Args, VerifySide};
use crate::iceberg::IcebergSettings;
use crate::sides::{self, Filter, Side};

const MIB: u64 = 1024 * 1024;

/// What the run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Mirror the input into the output.
    Mirror,
    /// Check one side against its manifests (`--verify`), changing nothing.
    Verify(Side),
}

/// Where one side is, and how to reach it.
#[derive(Debug, Clone)]
pub struct SideSettings {
    /// Which side.
    pub side: Side,
    /// A bucket and path, or a directory.
    pub location: egress_common::Location,
    /// How to reach an S3 side.
    pub s3: S3Settings,
    /// How log lines name it: `input/<bucket/path>` (then `/<key>`), or a local path.
    pub name: String,
}

/// How objects are moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transfer {
    /// Objects without a known MD5 up to this size are read whole (bytes).
    pub buffer_threshold: u64,
    /// Part size where the source's own layout is unknown (bytes).
    pub part_size: u64,
    /// Memory for object data across all transfers (bytes).
    pub memory_budget: u64,
}

/// Everything a run needs to know.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Mirror, or verify a side.
    pub mode: Mode,
    /// The input.
    pub input: SideSettings,
    /// The output.
    pub output: SideSettings,
    /// How a local side is written.
    pub local: LocalOptions,
    /// Which keys the run considers.
    pub filter: Filter,
    /// This process's share of the mirror (`--shares`).
    pub slice: Slice,
    /// Objects transferred at once.
    pub jobs: usize,
    /// Listing requests in flight per side.
    pub list_jobs: usize,
    /// Print the plan, change nothing.
    pub dry_run: bool,
    /// Delete output objects the input lacks.
    pub remove: bool,
    /// The most `--remove` may delete (`None`: a tenth of the output).
    pub max_delete: Option<u64>,
    /// Copy a day only once its manifest exists, each object checked against it.
    pub require_manifest: bool,
    /// How objects are moved.
    pub transfer: Transfer,
    /// How the mirror's lease is taken.
    pub lease: lease::Options,
    /// A live progress line on a terminal.
    pub progress: bool,
    /// Days committed to Iceberg tables (`--iceberg`).
    pub iceberg: Option<IcebergSettings>,
}

impl Settings {
    /// The settings `args` ask for; a wrong one is a [`ConfigError`] naming the fix.
    pub fn from_args(args: &Args) -> Result<Settings, ConfigError> {
        let slice = args.shares.slice()?;
        let output = sides::side_settings(Side::Output, args)?;
        let iceberg = iceberg_settings(args, &output.location)?;
        let mut filter = Filter::new(&args.include, &args.exclude, slice)?;
        if let Some(inside) = iceberg.as_ref().and_then(|i| i.inside_output.as_deref()) {
            filter = filter.without(inside);
        }
        let mode = match args.verify {
            None => Mode::Mirror,
            Some(VerifySide::Input) => Mode::Verify(Side::Input),
            Some(VerifySide::Output) => Mode::Verify(Side::Output),
        };
        Ok(Settings {
            mode,
            input: sides::side_settings(Side::Input, args)?,
            output,
            local: args.common.local(),
            filter,
            slice,
            jobs: args.jobs as usize,
            list_jobs: args.list_jobs as usize,
            dry_run: args.dry_run,
            remove: args.remove,
            max_delete: args.max_delete,
            require_manifest: args.require_manifest,
            transfer: Transfer {
                buffer_threshold: args.multipart_threshold_mib * MIB,
                part_size: args.part_size_mib * MIB,
                memory_budget: args.memory_budget_mib * MIB,
            },
            lease: args.common.lease(),
            progress: args.common.progress(),
            iceberg,
        })
    }

    /// The settings of a mirror between two stores a caller opened itself (the
    /// simulation's), with the defaults the flags have.
    pub fn for_stores(require_manifest: bool, lease_ttl: Duration) -> Settings {
        let side = |side: Side, name: &str| SideSettings {
            side,
            location: egress_common::Location::Local(name.into()),
            s3: S3Settings::default(),
            name: name.to_string(),
        };
        Settings {
            mode: Mode::Mirror,
            input: side(Side::Input, "in"),
            output: side(Side::Output, "out"),
            local: LocalOptions::default(),
            filter: Filter::default(),
            slice: Slice { index: 0, count: 1 },
            jobs: 4,
            list_jobs: 2,
            dry_run: false,
            remove: false,
            max_delete: None,
            require_manifest,
            transfer: Transfer {
                buffer_threshold: 8 * MIB,
                part_size: 8 * MIB,
                memory_budget: 40 * MIB,
            },
            lease: lease::Options {
                wait: Duration::ZERO,
                ttl: lease_ttl,
            },
            progress: false,
            iceberg: None,
        }
    }

    /// The settings of `side`.
    pub fn side(&self, side: Side) -> &SideSettings {
        match side {
            Side::Input => &self.input,
            Side::Output => &self.output,
        }
    }
}

/// The Iceberg settings `args` ask for (`None` without `--iceberg`).
fn iceberg_settings(
    args: &Args,
    output: &egress_common::Location,
) -> Result<Option<IcebergSettings>, ConfigError> {
    let catalog = args.iceberg_catalog.clone().filter(|c| !c.is_empty());
    if !args.iceberg {
        if catalog.is_some() || !args.iceberg_warehouse.trim().is_empty() {
            return Err(ConfigError::new(
                "ICEBERG_WAREHOUSE or ICEBERG_CATALOG is set but --iceberg is not: set ICEBERG=true to commit days to Iceberg tables, or unset them",
            ));
        }
        return Ok(None);
    }
    if !args.require_manifest {
        return Err(ConfigError::new(
            "--iceberg needs --require-manifest (REQUIRE_MANIFEST=true): a table takes only days the mirror checked whole",
        ));
    }
    let namespace = args.iceberg_namespace.trim();
    if namespace.is_empty()
        || !namespace
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(ConfigError::new(format!(
            "ICEBERG_NAMESPACE '{namespace}' is not a namespace: use letters, digits and '_'"
        )));
    }
    if let Some(url) = &catalog {
        let text = url.expose();
        if text.starts_with("http://") || text.starts_with("https://") {
            return Err(ConfigError::new(
                "ICEBERG_CATALOG is an http(s) URL: Iceberg REST catalogs are not supported; use a postgresql:// SQL catalog, or leave it empty for the file-system layout",
            ));
        }
        if !(text.starts_with("postgresql://") || text.starts_with("postgres://")) {
            return Err(ConfigError::new(
                "ICEBERG_CATALOG is not a postgresql:// URL: write postgresql://user:password@host:5432/database, or leave it empty",
            ));
        }
    }
    let (warehouse, inside_output) = warehouse(args.iceberg_warehouse.trim(), output)?;
    Ok(Some(IcebergSettings {
        warehouse,
        inside_output,
        namespace: namespace.to_string(),
        catalog,
        catalog_name: args.iceberg_catalog_name.trim().to_string(),
        given_columns: None,
    }))
}

/// The warehouse's folder in the output unless `--iceberg-warehouse` says otherwise.
pub const DEFAULT_WAREHOUSE: &str = "_iceberg";

/// The warehouse's location, and its key prefix in the output when it lies inside it.
fn warehouse(
    text: &str,
    output: &egress_common::Location,
) -> Result<(egress_common::Location, Option<String>), ConfigError> {
    use egress_common::Location;
    if text.is_empty() {
        let location = match output {
            Location::S3 { bucket, prefix } => Location::S3 {
                bucket: bucket.clone(),
                prefix: egress_store::key::join(prefix, DEFAULT_WAREHOUSE),
            },
            Location::Local(dir) => Location::Local(dir.join(DEFAULT_WAREHOUSE)),
        };
        return Ok((location, Some(DEFAULT_WAREHOUSE.to_string())));
    }
    let location = Location::parse(text)
        .map_err(|e| ConfigError::new(format!("ICEBERG_WAREHOUSE is invalid: {e}")))?;
    let inside = match (&location, output) {
        (Location::S3 { bucket, prefix }, Location::S3 { bucket: ob, prefix: op }) if bucket == ob => {
            match op.is_empty() {
                true => Some(prefix.clone()),
                false => prefix.strip_prefix(&format!("{op}/")).map(str::to_string),
            }
        }
        (Location::S3 { .. }, Location::S3 { .. }) => None,
        (Location::Local(dir), Location::Local(out)) => {
            let abs = |p: &std::path::Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
            abs(dir)
                .strip_prefix(abs(out))
                .ok()
                .map(|rest| rest.display().to_string())
        }
        _ => {
            return Err(ConfigError::new(
                "ICEBERG_WAREHOUSE must be where the output is: s3://bucket/path on the output's endpoint for an S3 output, a directory for a local one",
            ))
        }
    };
    if inside.as_deref() == Some("") {
        return Err(ConfigError::new(
            "ICEBERG_WAREHOUSE is the output itself: give a folder inside it (the default is _iceberg) or elsewhere",
        ));
    }
    Ok((location, inside))
}
