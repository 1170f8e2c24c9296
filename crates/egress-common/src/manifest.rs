//! `_manifest.json`: written last into a date folder, it marks the day complete and lets
//! anyone check every object (size, SHA-256) and every table (rows, columns).
//! Its schema is `schema/manifest.schema.json`. egress-dump writes it; egress-sync reads it.

use serde::{Deserialize, Serialize};

/// File name of the manifest inside a date folder.
pub const FILE_NAME: &str = "_manifest.json";
/// Version of this format; bumped on incompatible changes.
pub const FORMAT_VERSION: u32 = 1;

/// The whole manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// Format version (1).
    pub format_version: u32,
    /// `egress-dump`.
    pub tool: String,
    /// The tool's version.
    pub tool_version: String,
    /// The date folder (`YYYY-MM-DD`).
    pub date: String,
    /// When the run started, RFC 3339 UTC.
    pub run_started: String,
    /// When the last table was uploaded, RFC 3339 UTC.
    pub run_finished: String,
    /// The database snapshot every table was read from.
    pub snapshot: SnapshotInfo,
    /// gzip level used.
    pub compression_level: u32,
    /// Whether each CSV starts with a header line.
    pub header: bool,
    /// One entry per table, in the order listed.
    pub tables: Vec<TableEntry>,
    /// The day's Frictionless Data Package descriptor (`datapackage.json`), written before
    /// the manifest (absent in manifests of earlier versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub descriptor: Option<FileEntry>,
    /// The session settings that shaped the text of values a typed day keeps as PostgreSQL
    /// text (ranges, composites, money, ...): `DateStyle`, `IntervalStyle`, `TimeZone`, ...,
    /// so a reader can parse them back (typed days only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_settings: Option<std::collections::BTreeMap<String, String>>,
}

/// A file of the day besides the tables'.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileEntry {
    /// Its name inside the date folder.
    pub file: String,
    /// Its size.
    pub bytes: u64,
    /// SHA-256 of it, hex.
    pub sha256: String,
}

/// One dumped table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TableEntry {
    /// The table as listed in TABLES.
    pub table: String,
    /// Schema it was found in.
    pub schema: String,
    /// Exact table name.
    pub name: String,
    /// Object name inside the date folder (`<table>.csv.gz`, `<table>.parquet`).
    pub file: String,
    /// `csv` (gzip CSV) or `parquet` (absent in manifests of earlier versions: csv).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Full object key (or path) as written.
    pub key: String,
    /// Data rows (header not counted).
    pub rows: u64,
    /// CSV bytes before compression; for Parquet, the bytes of PostgreSQL's binary `COPY`.
    pub uncompressed_bytes: u64,
    /// Object size.
    pub compressed_bytes: u64,
    /// SHA-256 of the object as stored, hex.
    pub sha256: String,
    /// SHA-256 of the CSV, hex; for Parquet, which has no uncompressed form, the file's own.
    pub uncompressed_sha256: String,
    /// Columns in field order.
    pub columns: Vec<Column>,
    /// The primary key's columns in key order (absent without one, and in manifests of
    /// earlier versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_key: Option<Vec<String>>,
    /// How many ctid ranges the table was read in, in parallel (1: one `COPY`; absent in
    /// manifests of earlier versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks: Option<u64>,
    /// gzip members in the object: one per 512 KiB block of CSV by default, 1 with
    /// `--single-gzip-member` (absent in manifests of earlier versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gzip_members: Option<u64>,
    /// Sizes of the object's multipart parts, in order (absent for a single-part object):
    /// a mirror can copy it with the same boundaries, so its copy gets the same ETag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part_sizes: Option<Vec<u64>>,
    /// For a table written as several objects by the pods of a shared day (`--shards` with
    /// `--split-larger-than`): which **piece** this entry is. The table's rows are its
    /// entries' objects in `index` order. Absent for a table written as one object. The
    /// JSON field is `part`, as the object names say `part-NNNNN`: the format's words since
    /// its first version (in the code a part is an upload part only).
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "part")]
    pub piece: Option<PieceOf>,
}

/// Which piece of a table's objects an entry is.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct PieceOf {
    /// Its position, from 0.
    pub index: u64,
    /// How many objects the table was written as.
    pub of: u64,
}

impl PieceOf {
    /// The object name of piece `self` of a table whose whole object would be
    /// `<stem>.<extension>`: `<stem>.part-00001.<extension>`.
    pub fn file(&self, stem: &str, extension: &str) -> String {
        format!("{stem}.part-{:05}.{extension}", self.index)
    }
}

/// The extensions egress-dump writes (gzip CSV, Parquet).
pub const EXTENSIONS: [&str; 2] = ["csv.gz", "parquet"];

/// True when `file` is an object egress-dump writes for the table `stem`, in any format
/// and layout: `<stem>.csv.gz`, `<stem>.parquet`, or a part `<stem>.part-NNNNN.<ext>`.
pub fn is_object_of(file: &str, stem: &str) -> bool {
    let Some(rest) = file.strip_prefix(stem).and_then(|r| r.strip_prefix('.')) else {
        return false;
    };
    let rest = match rest.strip_prefix("part-") {
        Some(part) => match part.split_once('.') {
            Some((digits, ext))
                if digits.len() == 5 && digits.bytes().all(|b| b.is_ascii_digit()) =>
            {
                ext
            }
            _ => return false,
        },
        None => rest,
    };
    EXTENSIONS.contains(&rest)
}

/// What the manifest records about the snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The transaction's start time on the server (`now()`), RFC 3339.
    pub taken_at: String,
    /// `txid_current_snapshot()`: which transactions the dump sees.
    pub txid_snapshot: String,
    /// WAL position when the snapshot was taken (`pg_current_wal_lsn()`, or the replay
    /// position on a standby); absent when the server does not say.
    pub wal_lsn: Option<String>,
    /// `server_version`.
    pub server_version: String,
    /// The exported snapshot's id when workers share it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exported_id: Option<String>,
}

/// One column of a dumped table, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    /// Column name.
    pub name: String,
    /// Type as `format_type` prints it (`numeric(10,2)`, `timestamp with time zone`).
    #[serde(rename = "type")]
    pub type_name: String,
    /// Declared `NOT NULL` (absent in manifests of earlier versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_null: Option<bool>,
    /// The type written: `text` in a CSV; the Arrow type in Parquet (`decimal128(10,2)`,
    /// `string (PostgreSQL's text form)`). Absent in manifests of earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written_as: Option<String>,
}

/// One object a manifest vouches for: a table's, or the descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed<'a> {
    /// Its name inside the date folder.
    pub file: &'a str,
    /// Its size.
    pub bytes: u64,
    /// SHA-256 of it, hex.
    pub sha256: &'a str,
    /// Its multipart part sizes, when the manifest records them.
    pub part_sizes: Option<&'a [u64]>,
}

impl Manifest {
    /// Every object of the day the manifest vouches for: the tables', then the descriptor.
    pub fn objects(&self) -> Vec<Listed<'_>> {
        let tables = self.tables.iter().map(|t| Listed {
            file: &t.file,
            bytes: t.compressed_bytes,
            sha256: &t.sha256,
            part_sizes: t.part_sizes.as_deref(),
        });
        let descriptor = self.descriptor.iter().map(|d| Listed {
            file: &d.file,
            bytes: d.bytes,
            sha256: &d.sha256,
            part_sizes: None,
        });
        tables.chain(descriptor).collect()
    }

    /// Parse a manifest, checking its format version.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, String> {
        if bytes.len() as u64 > MAX_BYTES {
            return Err(too_large(bytes.len() as u64));
        }
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|e| format!("not a valid manifest: {e}"))?;
        if manifest.format_version != FORMAT_VERSION {
            return Err(format!(
                "manifest format_version {} is not supported",
                manifest.format_version
            ));
        }
        // Read last-wins, a second entry would decide what the first one's object must be.
        let mut files: Vec<&str> = manifest.objects().iter().map(|o| o.file).collect();
        files.sort_unstable();
        let twice = files.windows(2).find(|w| w[0] == w[1]).map(|w| w[0]);
        match twice {
            Some(file) if !egress_store::mutant::active("duplicates-last-wins") => {
                Err(format!("it lists '{file}' more than once"))
            }
            _ => Ok(manifest),
        }
    }
}

/// The largest manifest read (16 MiB): a day of about 10,000 objects of narrow tables, or
/// 150 tables of 1,600 columns. What holds a manifest (the sync's check of a day, `--verify`)
/// is bounded by it.
pub const MAX_BYTES: u64 = 16 * 1024 * 1024;

/// Why a manifest of `bytes` bytes is refused.
pub fn too_large(bytes: u64) -> String {
    format!(
        "it is {bytes} bytes, more than the {} MiB a manifest may have",
        MAX_BYTES >> 20
    )
}

/// The manifest's key in `folder` (`2024-01-01/_manifest.json`, or `_manifest.json`).
pub fn key_in(folder: &str) -> String {
    egress_store::key::join(folder, FILE_NAME)
}

/// True for a manifest's key.
pub fn is_manifest(key: &str) -> bool {
    folder_of(key).len() + FILE_NAME.len() + usize::from(key.contains('/')) == key.len()
        && key.ends_with(FILE_NAME)
}

/// The folder of a key (`2024-01-01` for `2024-01-01/t.csv.gz`, empty at the top).
pub fn folder_of(key: &str) -> &str {
    key.rsplit_once('/').map(|(dir, _)| dir).unwrap_or("")
}

/// Current UTC time as RFC 3339 with milliseconds.
pub fn now_rfc3339() -> String {
    let now = chrono::DateTime::from_timestamp_millis(egress_store::task::unix_millis())
        .unwrap_or_default();
    now.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

#[cfg(test)]
mod layout_tests {
    use super::*;

    #[test]
    fn a_tables_objects_in_every_format_and_layout_are_recognised() {
        for file in [
            "t.csv.gz",
            "t.parquet",
            "t.part-00000.csv.gz",
            "t.part-00012.parquet",
        ] {
            assert!(is_object_of(file, "t"), "{file}");
        }
        for file in [
            "tt.csv.gz",
            "t.csv",
            "t.part-1.csv.gz",
            "t.part-00001.txt",
            "t.x.csv.gz",
            "_manifest.json",
        ] {
            assert!(!is_object_of(file, "t"), "{file}");
        }
        assert!(is_object_of("s.t.part-00001.csv.gz", "s.t"));
        assert_eq!(
            PieceOf { index: 3, of: 4 }.file("t", "parquet"),
            "t.part-00003.parquet"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses() {
        let example = include_bytes!("../../../schema/manifest.example.json");
        let manifest = Manifest::parse(example).unwrap();
        assert_eq!(manifest.tables.len(), 2);
        assert_eq!(
            manifest.tables[0].columns[0],
            Column {
                name: "id".into(),
                type_name: "integer".into(),
                not_null: Some(true),
                written_as: Some("text".into()),
            }
        );
        assert!(Manifest::parse(br#"{"format_version": 2}"#).is_err());
    }

    #[test]
    fn manifest_keys_and_folders() {
        assert_eq!(key_in("d"), "d/_manifest.json");
        assert_eq!(key_in(""), "_manifest.json");
        assert!(is_manifest("x/_manifest.json"));
        assert!(is_manifest("_manifest.json"));
        assert!(!is_manifest("x/a_manifest.json"));
        assert_eq!(folder_of("a/b/c"), "a/b");
        assert_eq!(folder_of("c"), "");
    }
}
