//! The two sides of a mirror, opened from the flags: an S3 endpoint and bucket/path, or a
//! local directory; and which keys a run considers.

use globset::{Glob, GlobSet, GlobSetBuilder};

use egress_common::cli::Slice;
use egress_common::{ConfigError, Location};
use egress_store::Secret;
use egress_store::{LocalOptions, S3Settings, Store};
use sha2::Digest;

use crate::config::Args;
use crate::settings::{Mode, Settings, SideSettings};

/// Copy records kept at the output root by earlier versions; never mirrored, removed by
/// the first run that no longer needs them.
pub const OLD_RECORDS_KEY: &str = ".egress-sync-state.json";

/// Which side, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The input.
    Input,
    /// The output.
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

    /// `input` or `output`.
    pub fn label(self) -> &'static str {
        match self {
            Side::Input => "input",
            Side::Output => "output",
        }
    }
}

/// Both stores, and how log lines name them ([`crate::pool::Names`]).
pub struct Sides {
    /// Where objects are read.
    pub source: Store,
    /// Where they are written.
    pub dest: Store,
    /// The input's name in log lines.
    pub input_name: String,
    /// The output's.
    pub output_name: String,
}

impl Sides {
    /// Open both sides and check that each is there: the input readable, the output
    /// writable (a local output directory is created) unless the run changes nothing.
    pub async fn open(settings: &Settings) -> anyhow::Result<Sides> {
        let writes = settings.mode == Mode::Mirror && !settings.dry_run;
        let source = open(&settings.input, settings.local, false).await?;
        let dest = open(&settings.output, settings.local, writes).await?;
        Ok(Sides {
            source,
            dest,
            input_name: settings.input.name.clone(),
            output_name: settings.output.name.clone(),
        })
    }

    /// The store of `side`.
    pub fn store(&self, side: Side) -> &Store {
        match side {
            Side::Input => &self.source,
            Side::Output => &self.dest,
        }
    }
}

async fn open(side: &SideSettings, local: LocalOptions, write: bool) -> anyhow::Result<Store> {
    let store = open_unchecked(side, local).await?;
    store.probe(write).await?;
    Ok(store)
}

/// The store of `side`, not yet contacted (for `--check`).
pub async fn open_unchecked(side: &SideSettings, local: LocalOptions) -> anyhow::Result<Store> {
    Ok(side.location.open(&side.s3, local).await?)
}

struct SideArgs<'a> {
    url: &'a str,
    path: &'a str,
    access_key: &'a Option<String>,
    secret_key: &'a Option<Secret>,
    region: &'a str,
}

fn side_args(side: Side, args: &Args) -> SideArgs<'_> {
    match side {
        Side::Input => SideArgs {
            url: &args.input_url,
            path: &args.input_path,
            access_key: &args.input_access_key_id,
            secret_key: &args.input_secret_access_key,
            region: &args.input_region,
        },
        Side::Output => SideArgs {
            url: &args.output_url,
            path: &args.output_path,
            access_key: &args.output_access_key_id,
            secret_key: &args.output_secret_access_key,
            region: &args.output_region,
        },
    }
}

/// Where a side is and how to reach it, from its flags.
pub(crate) fn side_settings(side: Side, args: &Args) -> Result<SideSettings, ConfigError> {
    let cfg = side_args(side, args);
    let path = cfg.path.trim();
    // How log lines name the side's objects: `input/<bucket/path>/<key>` as the original
    // jobs printed them, or a local directory's own path.
    let name = match cfg.url.trim() {
        url if url.is_empty() || url.starts_with("file://") => {
            let base = url.trim_start_matches("file://");
            std::path::Path::new(base).join(path).display().to_string()
        }
        _ => format!("{}/{}", side.label(), path.trim_matches('/')),
    };
    let local = |location| SideSettings {
        side,
        location,
        s3: S3Settings::default(),
        name: name.clone(),
    };
    if path.is_empty() {
        return Err(ConfigError::new(format!(
            "{} is empty: set it to a bucket or bucket/sub/path (or a directory when {} is empty)",
            side.var("PATH"),
            side.var("URL")
        )));
    }
    let url = cfg.url.trim();
    if url.is_empty() || url.starts_with("file://") {
        let base = url.trim_start_matches("file://");
        let root = if base.is_empty() {
            std::path::PathBuf::from(path)
        } else {
            std::path::PathBuf::from(base).join(path)
        };
        return Ok(local(Location::Local(root)));
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() <= "https://".len()
    {
        return Err(ConfigError::new(format!(
            "{} '{url}' is not an http(s) URL: use e.g. https://s3.amazonaws.com or http://rgw.example:8080",
            side.var("URL")
        )));
    }
    let location = Location::parse_bucket_path(path)
        .map_err(|e| ConfigError::new(format!("{} is invalid: {e}", side.var("PATH"))))?;
    let (access_key_id, secret_access_key) = match (cfg.access_key, cfg.secret_key) {
        (Some(k), Some(s)) if !k.is_empty() && !s.is_empty() => (Some(k.clone()), Some(s.clone())),
        (None, None) => (None, None),
        _ => {
            return Err(ConfigError::new(format!(
                "set both {} and {} (or neither, to use the AWS credential chain)",
                side.var("ACCESS_KEY_ID"),
                side.var("SECRET_ACCESS_KEY")
            )))
        }
    };
    let s3 = S3Settings {
        endpoint_url: Some(url.to_string()),
        // AWS's own hosts (VPC, FIPS and regional endpoints alike) keep virtual-host
        // addressing; the URL given is always the URL used.
        path_style: !egress_store::is_aws_host(url),
        region: Some(cfg.region.to_string()),
        access_key_id,
        secret_access_key,
        timeout: args.common.timeout(),
        max_attempts: 5,
        ca_bundle: args.common.ca_bundle.clone(),
        credentials_hint: side.credentials_hint(),
    };
    Ok(SideSettings {
        side,
        location,
        s3,
        name,
    })
}

/// Which keys a run considers: matching `--include` (when given), not `--exclude`, in
/// this process's share (`--shares`), and never our own files.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
    /// This process's share, when the mirror is shared.
    slice: Option<Slice>,
    /// A key prefix (ending in `/`) no side's listing includes: the Iceberg warehouse
    /// inside the output.
    outside: Option<String>,
}

impl Filter {
    /// `--include` and `--exclude` globs, and this process's share.
    pub fn new(
        include: &[String],
        exclude: &[String],
        slice: Slice,
    ) -> Result<Filter, ConfigError> {
        Ok(Filter {
            include: globs(include, "--include")?,
            exclude: globs(exclude, "--exclude")?,
            slice: (slice.count > 1).then_some(slice),
            outside: None,
        })
    }

    /// The same filter, keeping every key under `prefix` out of the run.
    pub fn without(self, prefix: &str) -> Filter {
        Filter {
            outside: Some(format!("{}/", prefix.trim_end_matches('/'))),
            ..self
        }
    }

    /// True when `key` takes part in the run.
    pub fn accepts(&self, key: &str) -> bool {
        self.in_this_share(key) && self.accepts_in_any_share(key)
    }

    /// True when `key` is in this process's share (always when the mirror is not shared).
    pub fn in_this_share(&self, key: &str) -> bool {
        self.slice.is_none_or(|s| slice_of(key, s.count) == s.index)
    }

    /// True when `key` takes part in the run of some share (`--include`, `--exclude`,
    /// never our own files).
    pub fn accepts_in_any_share(&self, key: &str) -> bool {
        key != OLD_RECORDS_KEY
            && !egress_common::day::lease::is_coordination(key)
            && self
                .outside
                .as_ref()
                .is_none_or(|p| !key.starts_with(p.as_str()))
            && self.include.as_ref().is_none_or(|g| g.is_match(key))
            && self.exclude.as_ref().is_none_or(|g| !g.is_match(key))
    }
}

/// `YYYY-MM-DD`, as egress-dump names its date folders.
fn looks_like_a_day(folder: &str) -> bool {
    let b = folder.as_bytes();
    b.len() == 10
        && b.iter().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        })
}

/// Which of `count` shares `key` belongs to: its day folder's (the key up to its first
/// `YYYY-MM-DD` folder, else its first folder) hashed, so a day and its manifest stay in
/// one share whatever the other days are, and the shares never change between runs.
pub fn slice_of(key: &str, count: u64) -> u64 {
    if count <= 1 {
        return 0;
    }
    let folders: Vec<&str> = key.split('/').collect();
    let dirs = &folders[..folders.len().saturating_sub(1)];
    let depth = dirs
        .iter()
        .position(|d| looks_like_a_day(d))
        .map_or(1, |at| at + 1);
    // Objects at the top (no folder) share one slice.
    let day = dirs[..depth.min(dirs.len())].join("/");
    let digest = sha2::Sha256::digest(day.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first) % count
}

fn globs(patterns: &[String], flag: &str) -> Result<Option<GlobSet>, ConfigError> {
    let patterns: Vec<&String> = patterns.iter().filter(|p| !p.trim().is_empty()).collect();
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut builder = GlobSetBuilder::new();
    for p in patterns {
        let glob = Glob::new(p.trim()).map_err(|e| {
            ConfigError::new(format!("{flag} pattern '{p}' is not a valid glob: {e}"))
        })?;
        builder.add(glob);
    }
    Ok(Some(builder.build().map_err(|e| {
        ConfigError::new(format!("{flag} patterns are invalid: {e}"))
    })?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_day_and_everything_in_it_share_one_slice() {
        let day = slice_of("2024-01-01/_manifest.json", 4);
        for key in [
            "2024-01-01/a.csv.gz",
            "2024-01-01/t/part-0.parquet",
            "2024-01-01/x",
        ] {
            assert_eq!(slice_of(key, 4), day, "{key}");
        }
        assert_eq!(
            slice_of("app/2024-01-02/a.csv.gz", 4),
            slice_of("app/2024-01-02/_manifest.json", 4)
        );
        // Days spread over the shares; each key in exactly one; stable.
        let mut seen = [0; 4];
        for d in 1..=28 {
            seen[slice_of(&format!("2024-02-{d:02}/a"), 4) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 0), "{seen:?}");
        assert_eq!(slice_of("2024-02-01/a", 4), slice_of("2024-02-01/a", 4));
        assert_eq!(slice_of("top-level-object", 1), 0);
        // A day at the top of the mirror (no folder) stays whole in one share.
        assert_eq!(slice_of("a.csv.gz", 4), slice_of("_manifest.json", 4));
    }

    #[test]
    fn filters_globs_and_our_own_files() {
        let filter = Filter {
            include: globs(&["2024-*/**".into()], "--include").unwrap(),
            exclude: globs(&["*.tmp".into()], "--exclude").unwrap(),
            slice: None,
            outside: None,
        };
        assert!(filter.accepts("2024-01-01/a.csv.gz"));
        let filter = filter.without("2024-01-01/_iceberg");
        assert!(!filter.accepts("2024-01-01/_iceberg/egress/t/metadata/v1.metadata.json"));
        assert!(filter.accepts("2024-01-01/a.csv.gz"));
        assert!(!filter.accepts("2024-01-01/b.tmp"));
        assert!(!filter.accepts("x/y"));
        assert!(!Filter::default().accepts(OLD_RECORDS_KEY));
        assert!(globs(&["[".into()], "--include").is_err());
    }
}
