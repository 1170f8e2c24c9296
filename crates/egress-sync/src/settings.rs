//! A run's settings, built once from the flags and checked (as egress-dump's are): every
//! stage takes these, never the flags.

use std::time::Duration;

use egress_common::cli::Slice;
use egress_common::day::lease;
use egress_common::ConfigError;
use egress_store::{LocalOptions, S3Settings};

use crate::config::{Args, VerifySide};
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
    /// This process's share of the mirror (`--shards`).
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
}

impl Settings {
    /// The settings `args` ask for; a wrong one is a [`ConfigError`] naming the fix.
    pub fn from_args(args: &Args) -> Result<Settings, ConfigError> {
        let slice = args.shards.slice()?;
        let mode = match args.verify {
            None => Mode::Mirror,
            Some(VerifySide::Input) => Mode::Verify(Side::Input),
            Some(VerifySide::Output) => Mode::Verify(Side::Output),
        };
        Ok(Settings {
            mode,
            input: sides::side_settings(Side::Input, args)?,
            output: sides::side_settings(Side::Output, args)?,
            local: args.common.local(),
            filter: Filter::new(&args.include, &args.exclude, slice)?,
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
