//! Deciding, per key, what to do: purely from the two listings, and for the few keys the
//! listings cannot decide, from the copy's metadata (one HEAD). No I/O here.
//!
//! Copies keep the source's form (see `transfer`), so a copy carries the source's ETag
//! and equal ETags in the two listings mean "same". Where the copy's ETag could not be
//! the source's (a multipart source whose part sizes the store hides), or a listing has
//! no ETag, the copy's user metadata records the source's ETag, size and time; a local
//! output keeps the source's modification time instead.

use std::collections::BTreeMap;
use std::fmt;

use egress_store::{ObjectInfo, ObjectMeta, StoreTraits};

use crate::march::Pair;

/// Why an object is copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyReason {
    /// Not at the output.
    New,
    /// The sizes differ.
    SizeDiffers,
    /// The output file's modification time is not the input's.
    TimeDiffers,
    /// The copy's record names another version of the source.
    SourceChanged,
    /// No record (copied by another tool); same size, but the source is newer.
    SourceNewer,
    /// No record; same size, but both ETags are MD5s of the content, and they differ.
    Md5Differs,
    /// It looked unchanged, but its bytes are not what its day's manifest lists (read
    /// back before the manifest could vouch for it).
    ContentDiffers,
}

/// Why an object is left alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// Same size and ETag in both listings.
    SameEtag,
    /// A local output file with the input's size and modification time.
    SameTime,
    /// The copy's record names this version of the source.
    Recorded,
    /// No record (copied by another tool); same size and the output is not older.
    SameSizeNotNewer,
}

/// What to do with one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Copy the input object.
    Copy(CopyReason),
    /// Leave it.
    Skip(SkipReason),
    /// The listings cannot tell: read the output object's metadata (HEAD), then
    /// [`after_head`].
    Check,
    /// Only the output has it (deleted with `--remove`).
    Delete,
}

/// Decide from the listings alone; `dest` says what the output keeps of what we write.
pub fn decide(pair: &Pair, dest: StoreTraits) -> Decision {
    let (s, d) = match pair {
        Pair::SourceOnly(_) => return Decision::Copy(CopyReason::New),
        Pair::DestOnly(_) => return Decision::Delete,
        Pair::Both(s, d) => (s, d),
    };
    if s.size != d.size {
        return Decision::Copy(CopyReason::SizeDiffers);
    }
    if s.etag.is_some() && s.etag == d.etag {
        return Decision::Skip(SkipReason::SameEtag);
    }
    if dest.keeps_modified {
        return if s.modified == d.modified {
            Decision::Skip(SkipReason::SameTime)
        } else {
            Decision::Copy(CopyReason::TimeDiffers)
        };
    }
    Decision::Check
}

/// Decide from the output object's metadata, for a key [`decide`] could not.
///
/// Without a record, two single-part ETags that differ mean other bytes (an object
/// overwritten at the output with as many bytes was kept, found by an adversarial run),
/// unless the output's is not an MD5 (encrypted). A source's ETag that is not an MD5 for
/// the same reason costs one copy, which then carries its record.
pub fn after_head(source: &ObjectInfo, dest: &ObjectMeta) -> Decision {
    let md5s_differ = match (&source.etag, &dest.etag) {
        (Some(s), Some(d)) => is_md5(s) && is_md5(d) && !dest.etag_not_md5 && s != d,
        _ => false,
    };
    match Record::from_metadata(&dest.attributes.metadata) {
        Some(r) if r.describes(source) => Decision::Skip(SkipReason::Recorded),
        Some(_) => Decision::Copy(CopyReason::SourceChanged),
        None if md5s_differ => Decision::Copy(CopyReason::Md5Differs),
        None if dest.modified >= source.modified => Decision::Skip(SkipReason::SameSizeNotNewer),
        None => Decision::Copy(CopyReason::SourceNewer),
    }
}

/// A single-part ETag: 32 hex digits (a multipart one ends in `-<parts>`).
fn is_md5(etag: &str) -> bool {
    etag.len() == 32 && etag.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What a copy records about its source, in the copy's user metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The source's identity ([`identity`]).
    pub source_etag: String,
    /// The source's size.
    pub source_size: u64,
    /// The source's Last-Modified (whole seconds).
    pub source_modified: i64,
}

/// User-metadata names holding the record (compared case-insensitively; the same names
/// earlier versions wrote).
pub mod meta_keys {
    /// Source identity.
    pub const SOURCE_ETAG: &str = "egress-source-etag";
    /// Source size.
    pub const SOURCE_SIZE: &str = "egress-source-size";
    /// Source Last-Modified (seconds since the epoch).
    pub const SOURCE_MODIFIED: &str = "egress-source-mtime";
}

/// What identifies a version of an object: its ETag, or its size and time where the
/// listing carries no ETag.
pub fn identity(o: &ObjectInfo) -> String {
    match &o.etag {
        Some(etag) => etag.clone(),
        None => format!("size{}-mtime{}", o.size, o.modified),
    }
}

impl Record {
    /// The record of a copy of `source`.
    pub fn of(source: &ObjectInfo) -> Record {
        Record {
            source_etag: identity(source),
            source_size: source.size,
            source_modified: source.modified,
        }
    }

    /// True when this record was made from this version of `source`.
    pub fn describes(&self, source: &ObjectInfo) -> bool {
        self.source_etag == identity(source) && self.source_size == source.size
    }

    /// Write the record into `metadata`, replacing any earlier one.
    pub fn write_into(&self, metadata: &mut BTreeMap<String, String>) {
        metadata.retain(|k, _| {
            ![
                meta_keys::SOURCE_ETAG,
                meta_keys::SOURCE_SIZE,
                meta_keys::SOURCE_MODIFIED,
            ]
            .iter()
            .any(|m| k.eq_ignore_ascii_case(m))
        });
        metadata.insert(meta_keys::SOURCE_ETAG.into(), self.source_etag.clone());
        metadata.insert(meta_keys::SOURCE_SIZE.into(), self.source_size.to_string());
        metadata.insert(
            meta_keys::SOURCE_MODIFIED.into(),
            self.source_modified.to_string(),
        );
    }

    /// Read a record back from user metadata (any name case); `None` if absent.
    pub fn from_metadata(metadata: &BTreeMap<String, String>) -> Option<Record> {
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
        })
    }
}

impl fmt::Display for CopyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CopyReason::New => "new",
            CopyReason::SizeDiffers => "changed: size differs",
            CopyReason::TimeDiffers => "changed: modification time differs",
            CopyReason::SourceChanged => "changed: source ETag or size differs from the last copy",
            CopyReason::SourceNewer => "changed: source is newer",
            CopyReason::Md5Differs => "changed: same size, but its MD5 differs",
            CopyReason::ContentDiffers => "changed: its bytes are not its day's manifest's",
        })
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SkipReason::SameEtag => "same: same size and ETag",
            SkipReason::SameTime => "same: same size and modification time",
            SkipReason::Recorded => "same: unchanged since the last copy",
            SkipReason::SameSizeNotNewer => "same: same size, destination not older",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(key: &str, size: u64, etag: Option<&str>, modified: i64) -> ObjectInfo {
        ObjectInfo {
            key: key.into(),
            size,
            etag: etag.map(str::to_string),
            modified,
            modified_nanos: 0,
        }
    }

    const S3: StoreTraits = StoreTraits {
        keeps_modified: false,
        keeps_metadata: true,
    };
    const LOCAL: StoreTraits = StoreTraits {
        keeps_modified: true,
        keeps_metadata: false,
    };

    #[test]
    fn listings_decide_when_they_can() {
        let s = obj("k", 5, Some("e1"), 10);
        let cases = [
            (
                Pair::SourceOnly(s.clone()),
                S3,
                Decision::Copy(CopyReason::New),
            ),
            (Pair::DestOnly(s.clone()), S3, Decision::Delete),
            (
                Pair::Both(s.clone(), obj("k", 6, Some("e1"), 10)),
                S3,
                Decision::Copy(CopyReason::SizeDiffers),
            ),
            (
                Pair::Both(s.clone(), obj("k", 5, Some("e1"), 99)),
                S3,
                Decision::Skip(SkipReason::SameEtag),
            ),
            (
                Pair::Both(s.clone(), obj("k", 5, Some("e2"), 10)),
                S3,
                Decision::Check,
            ),
            (
                Pair::Both(s.clone(), obj("k", 5, None, 10)),
                S3,
                Decision::Check,
            ),
            (
                Pair::Both(obj("k", 5, None, 10), obj("k", 5, None, 10)),
                S3,
                Decision::Check,
            ),
            (
                Pair::Both(s.clone(), obj("k", 5, None, 10)),
                LOCAL,
                Decision::Skip(SkipReason::SameTime),
            ),
            (
                Pair::Both(s.clone(), obj("k", 5, None, 11)),
                LOCAL,
                Decision::Copy(CopyReason::TimeDiffers),
            ),
        ];
        for (pair, traits, expected) in cases {
            assert_eq!(decide(&pair, traits), expected, "{pair:?}");
        }
    }

    #[test]
    fn metadata_decides_the_rest() {
        let source = obj("k", 5, Some("e-new"), 50);
        let meta = |record: Option<Record>, modified: i64| {
            let mut m = ObjectMeta {
                size: 5,
                modified,
                ..Default::default()
            };
            if let Some(r) = record {
                r.write_into(&mut m.attributes.metadata);
            }
            m
        };
        assert_eq!(
            after_head(&source, &meta(Some(Record::of(&source)), 1)),
            Decision::Skip(SkipReason::Recorded)
        );
        let old = obj("k", 5, Some("e-old"), 40);
        assert_eq!(
            after_head(&source, &meta(Some(Record::of(&old)), 60)),
            Decision::Copy(CopyReason::SourceChanged)
        );
        assert_eq!(
            after_head(&source, &meta(None, 60)),
            Decision::Skip(SkipReason::SameSizeNotNewer)
        );
        assert_eq!(
            after_head(&source, &meta(None, 49)),
            Decision::Copy(CopyReason::SourceNewer)
        );
        // Without a record, two MD5s that differ: other bytes, whatever the times say.
        let md5 = |c: char| c.to_string().repeat(32);
        let plain = obj("k", 5, Some(&md5('a')), 50);
        let tampered = ObjectMeta {
            etag: Some(md5('b')),
            ..meta(None, 60)
        };
        assert_eq!(
            after_head(&plain, &tampered),
            Decision::Copy(CopyReason::Md5Differs)
        );
        let encrypted = ObjectMeta {
            etag_not_md5: true,
            ..tampered.clone()
        };
        assert_eq!(
            after_head(&plain, &encrypted),
            Decision::Skip(SkipReason::SameSizeNotNewer)
        );
        let multipart = obj("k", 5, Some(&format!("{}-2", md5('a'))), 50);
        assert_eq!(
            after_head(&multipart, &tampered),
            Decision::Skip(SkipReason::SameSizeNotNewer),
            "a multipart ETag is no MD5 of the bytes"
        );
    }

    #[test]
    fn records_round_trip_in_any_case_and_read_earlier_versions() {
        let source = obj("k", 7, None, 1_700_000_000);
        let mut metadata = BTreeMap::new();
        Record::of(&source).write_into(&mut metadata);
        let upper: BTreeMap<String, String> = metadata
            .into_iter()
            .map(|(k, v)| (k.to_uppercase(), v))
            .collect();
        let back = Record::from_metadata(&upper).unwrap();
        assert_eq!(
            back.source_etag, "size7-mtime1700000000",
            "the identity earlier versions wrote"
        );
        assert!(back.describes(&source));
        assert_eq!(Record::from_metadata(&BTreeMap::new()), None);
    }
}
