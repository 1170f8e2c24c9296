//! Where data lives: an S3 bucket and key prefix, or a local directory.

use std::fmt;
use std::path::PathBuf;

/// A place objects are read from or written to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A bucket and a key prefix (no leading or trailing `/`; may be empty).
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key prefix inside the bucket, without surrounding slashes.
        prefix: String,
    },
    /// A directory on the local file system.
    Local(PathBuf),
}

/// Why a location string was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LocationError {
    /// The string was empty.
    #[error("the location is empty: give s3://bucket/path or a local directory")]
    Empty,
    /// An `s3://` URL without a bucket.
    #[error("'{0}' names no bucket: write it as s3://bucket/optional/path")]
    NoBucket(String),
    /// A bucket name with characters S3 does not allow.
    #[error("'{0}' is not a valid bucket name: use letters, digits, '.', '-' or '_'")]
    BadBucket(String),
    /// A URL scheme we do not write to.
    #[error("unsupported location '{0}': use s3://bucket/path, file:///absolute/path or a local directory")]
    Scheme(String),
}

impl Location {
    /// The store this location names: a bucket and prefix reached with `settings`, or a
    /// directory written as `local` says. Nothing is contacted yet.
    pub async fn open(
        &self,
        settings: &egress_store::S3Settings,
        local: egress_store::LocalOptions,
    ) -> Result<egress_store::Store, egress_store::StoreError> {
        Ok(match self {
            Location::S3 { bucket, prefix } => {
                std::sync::Arc::new(egress_store::S3Store::new(settings, bucket, prefix).await?)
            }
            Location::Local(dir) => {
                std::sync::Arc::new(egress_store::LocalStore::with_options(dir, local))
            }
        })
    }

    /// Parse `s3://bucket/prefix`, `file:///abs/dir`, or a plain local path.
    pub fn parse(text: &str) -> Result<Location, LocationError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(LocationError::Empty);
        }
        if let Some(rest) = strip_prefix_ci(text, "s3://") {
            if rest.is_empty() || rest.starts_with('/') {
                return Err(LocationError::NoBucket(text.to_string()));
            }
            return Self::parse_bucket_path(rest).map_err(|e| match e {
                LocationError::NoBucket(_) => LocationError::NoBucket(text.to_string()),
                other => other,
            });
        }
        if let Some(rest) = strip_prefix_ci(text, "file://") {
            if !rest.starts_with('/') {
                return Err(LocationError::Scheme(text.to_string()));
            }
            return Ok(Location::Local(PathBuf::from(rest)));
        }
        // Anything else that looks like a URL (s3:/x, http://..., s3:bucket) is a typo, not a directory.
        if text.contains("://") || text.to_ascii_lowercase().starts_with("s3:") {
            return Err(LocationError::Scheme(text.to_string()));
        }
        Ok(Location::Local(PathBuf::from(text)))
    }

    /// Parse `bucket` or `bucket/sub/path` (the sync side's `*_PATH` form).
    pub fn parse_bucket_path(text: &str) -> Result<Location, LocationError> {
        let text = text.trim().trim_start_matches('/');
        let (bucket, prefix) = match text.split_once('/') {
            Some((b, p)) => (b, p),
            None => (text, ""),
        };
        if bucket.is_empty() {
            return Err(LocationError::NoBucket(text.to_string()));
        }
        let valid = bucket.len() <= 255
            && bucket
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        if !valid {
            return Err(LocationError::BadBucket(bucket.to_string()));
        }
        Ok(Location::S3 {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        })
    }

    /// The key (or relative path) of `name` under this location's prefix.
    pub fn key_for(&self, name: &str) -> String {
        match self {
            Location::S3 { prefix, .. } => egress_store::key::join(prefix, name),
            Location::Local(_) => name.to_string(),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            Location::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            Location::Local(path) => write!(f, "{}", path.display()),
        }
    }
}

fn strip_prefix_ci<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    if text.len() >= prefix.len() && text[..prefix.len()].eq_ignore_ascii_case(prefix) {
        Some(&text[prefix.len()..])
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(bucket: &str, prefix: &str) -> Location {
        Location::S3 {
            bucket: bucket.into(),
            prefix: prefix.into(),
        }
    }

    #[test]
    fn parses_s3_urls() {
        assert_eq!(Location::parse("s3://b").unwrap(), s3("b", ""));
        assert_eq!(Location::parse("s3://b/").unwrap(), s3("b", ""));
        assert_eq!(Location::parse("s3://b/x/y/").unwrap(), s3("b", "x/y"));
        assert_eq!(
            Location::parse("S3://my_bucket/p").unwrap(),
            s3("my_bucket", "p")
        );
    }

    #[test]
    fn parses_local_paths() {
        assert_eq!(
            Location::parse("./out").unwrap(),
            Location::Local(PathBuf::from("./out"))
        );
        assert_eq!(
            Location::parse("file:///tmp/x").unwrap(),
            Location::Local(PathBuf::from("/tmp/x"))
        );
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(Location::parse(""), Err(LocationError::Empty));
        let no_bucket = LocationError::NoBucket(String::new());
        let scheme = LocationError::Scheme(String::new());
        let cases = [
            ("s3://", &no_bucket),
            ("s3:///x", &no_bucket),
            ("s3:/bucket", &scheme),
            ("s3:bucket", &scheme),
            ("http://x/y", &scheme),
            ("file://rel", &scheme),
            (
                "s3://bad bucket/x",
                &LocationError::BadBucket(String::new()),
            ),
        ];
        for (text, kind) in cases {
            let err = Location::parse(text).unwrap_err();
            let same = std::mem::discriminant(&err) == std::mem::discriminant(kind);
            assert!(same, "{text}: {err:?}");
        }
    }

    #[test]
    fn bucket_path_form() {
        assert_eq!(Location::parse_bucket_path("b").unwrap(), s3("b", ""));
        assert_eq!(
            Location::parse_bucket_path("b/f/t").unwrap(),
            s3("b", "f/t")
        );
        assert!(Location::parse_bucket_path("").is_err());
    }

    #[test]
    fn keys_join_prefix() {
        assert_eq!(
            s3("b", "p").key_for("2024-01-01/t.csv.gz"),
            "p/2024-01-01/t.csv.gz"
        );
        assert_eq!(s3("b", "").key_for("k"), "k");
    }
}
