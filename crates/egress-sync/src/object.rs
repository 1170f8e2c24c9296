//! What a listing says about one object, and the record we keep of each copy.

use std::collections::HashMap;

/// One object as listed, its key relative to the side's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Key relative to the side's prefix (`2024-01-01/t.csv.gz`).
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// ETag without quotes (a local file gets `local-<mtime_ns>-<size>`).
    pub etag: String,
    /// Last-Modified, whole seconds since the epoch (stores differ below a second).
    pub modified: i64,
}

impl ObjectInfo {
    /// What identifies this version of the object in a listing: its ETag, or size and
    /// modification time on stores whose listings carry no ETag.
    pub fn identity(&self) -> String {
        if self.etag.is_empty() {
            format!("size{}-mtime{}", self.size, self.modified)
        } else {
            self.etag.clone()
        }
    }
}

/// What the source looked like when we copied it, and what the copy looked like.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    /// Source identity at copy time (its listed ETag; see [`ObjectInfo::identity`]).
    pub source_etag: String,
    /// Source size at copy time.
    pub source_size: u64,
    /// Source Last-Modified at copy time (whole seconds).
    pub source_modified: i64,
    /// Destination ETag right after the copy (to notice changes made by others); may be empty.
    #[serde(default)]
    pub dest_etag: String,
    /// Destination size right after the copy.
    #[serde(default)]
    pub dest_size: u64,
}

/// User-metadata keys holding the record on each copied object (compared case-insensitively).
pub mod meta_keys {
    /// Source ETag.
    pub const SOURCE_ETAG: &str = "egress-source-etag";
    /// Source size.
    pub const SOURCE_SIZE: &str = "egress-source-size";
    /// Source Last-Modified (seconds since the epoch).
    pub const SOURCE_MODIFIED: &str = "egress-source-mtime";
}

impl Record {
    /// The record for a copy of `source` whose result has ETag `dest_etag`.
    pub fn of(source: &ObjectInfo, dest_etag: &str, dest_size: u64) -> Record {
        Record {
            source_etag: source.identity(),
            source_size: source.size,
            source_modified: source.modified,
            dest_etag: dest_etag.to_string(),
            dest_size,
        }
    }

    /// The metadata entries that carry this record on the destination object.
    pub fn to_metadata(&self) -> Vec<(String, String)> {
        vec![
            (meta_keys::SOURCE_ETAG.into(), self.source_etag.clone()),
            (meta_keys::SOURCE_SIZE.into(), self.source_size.to_string()),
            (
                meta_keys::SOURCE_MODIFIED.into(),
                self.source_modified.to_string(),
            ),
        ]
    }

    /// Read a record back from user metadata (any key case); `None` if it is not there.
    pub fn from_metadata(
        metadata: &HashMap<String, String>,
        dest_etag: &str,
        dest_size: u64,
    ) -> Option<Record> {
        let get = |name: &str| {
            metadata
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_string())
        };
        Some(Record {
            source_etag: get(meta_keys::SOURCE_ETAG)?,
            source_size: get(meta_keys::SOURCE_SIZE)?.parse().ok()?,
            source_modified: get(meta_keys::SOURCE_MODIFIED)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            dest_etag: dest_etag.to_string(),
            dest_size,
        })
    }
}

/// Strip the quotes S3 puts around ETags.
pub fn clean_etag(etag: &str) -> String {
    etag.trim().trim_matches('"').to_string()
}

/// A multipart ETag's part count (`md5-N`), or `None` for a plain MD5 ETag.
pub fn multipart_parts(etag: &str) -> Option<u32> {
    let (hash, parts) = etag.split_once('-')?;
    if hash.len() == 32 && hash.chars().all(|c| c.is_ascii_hexdigit()) {
        parts.parse().ok()
    } else {
        None
    }
}

/// True when the ETag is a plain MD5 of the content (single-part upload).
pub fn is_plain_md5(etag: &str) -> bool {
    etag.len() == 32 && etag.chars().all(|c| c.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_through_metadata_in_any_case() {
        let src = ObjectInfo {
            key: "k".into(),
            size: 7,
            etag: "abc-2".into(),
            modified: 1700000000,
        };
        let record = Record::of(&src, "d1", 7);
        let meta: HashMap<String, String> = record
            .to_metadata()
            .into_iter()
            .map(|(k, v)| (k.to_uppercase(), v))
            .collect();
        assert_eq!(Record::from_metadata(&meta, "d1", 7), Some(record));
        assert_eq!(Record::from_metadata(&HashMap::new(), "d1", 7), None);
    }

    #[test]
    fn identity_falls_back_to_size_and_time() {
        let o = ObjectInfo {
            key: "k".into(),
            size: 3,
            etag: String::new(),
            modified: 9,
        };
        assert_eq!(o.identity(), "size3-mtime9");
        assert_eq!(
            ObjectInfo {
                etag: "e".into(),
                ..o
            }
            .identity(),
            "e"
        );
    }

    #[test]
    fn etag_shapes() {
        assert_eq!(clean_etag("\"abc\""), "abc");
        assert_eq!(
            multipart_parts("0123456789abcdef0123456789abcdef-16"),
            Some(16)
        );
        assert_eq!(multipart_parts("0123456789abcdef0123456789abcdef"), None);
        assert!(is_plain_md5("0123456789abcdef0123456789abcdef"));
        assert!(!is_plain_md5("local-1-2"));
    }
}
