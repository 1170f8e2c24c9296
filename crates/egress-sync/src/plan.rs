//! Deciding what to do, purely from the two listings and the copy records: no I/O here.

use std::collections::{HashMap, HashSet};
use std::fmt;

use crate::object::{ObjectInfo, Record};

/// Why an object is copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyReason {
    /// Not at the destination.
    New,
    /// The source's ETag or size differs from what the last copy recorded.
    SourceChanged,
    /// No record; sizes differ.
    SizeDiffers,
    /// No record; same size but the source is newer.
    SourceNewer,
}

/// Why an object is left alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// The source still has the ETag and size recorded at the last copy.
    Unchanged,
    /// No record (copied by another tool); same size and the destination is not older.
    SameSizeNotNewer,
}

/// One decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Copy the source object.
    Copy(ObjectInfo, CopyReason),
    /// Leave it; the record to keep for it, if known.
    Skip(ObjectInfo, SkipReason, Option<Record>),
    /// Delete this destination object (only with `--remove`).
    Delete(ObjectInfo),
}

/// The whole plan, in key order within each kind.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Every decision.
    pub actions: Vec<Action>,
}

/// Options that change the plan.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlanOptions {
    /// Delete destination objects absent from the source.
    pub remove: bool,
    /// Most deletions allowed; `None` means 10% of the destination's objects.
    pub max_delete: Option<u64>,
}

/// Plans that must not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// `--remove` with an empty source would wipe the destination.
    #[error("the input listing is empty; refusing to delete {0} output object(s) with --remove: check INPUT_URL and INPUT_PATH")]
    EmptySource(usize),
    /// More deletions than allowed.
    #[error("--remove would delete {count} of {total} output objects, more than the limit of {limit}: check the paths, or pass --max-delete {count} if this is intended")]
    TooManyDeletes {
        /// Deletions the plan needs.
        count: usize,
        /// Objects at the destination.
        total: usize,
        /// The limit in force.
        limit: u64,
    },
}

impl fmt::Display for CopyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CopyReason::New => "new",
            CopyReason::SourceChanged => "changed: source ETag or size differs from the last copy",
            CopyReason::SizeDiffers => "changed: size differs",
            CopyReason::SourceNewer => "changed: source is newer",
        })
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SkipReason::Unchanged => "same: unchanged since the last copy",
            SkipReason::SameSizeNotNewer => "same: same size, destination not older",
        })
    }
}

/// The record for `dest` if it still describes the object at the destination: same ETag
/// (or same size, on stores whose listings carry no ETag).
fn usable<'a>(records: &'a HashMap<String, Record>, dest: &ObjectInfo) -> Option<&'a Record> {
    records.get(&dest.key).filter(|r| {
        if dest.etag.is_empty() || r.dest_etag.is_empty() {
            r.dest_size == dest.size
        } else {
            r.dest_etag == dest.etag
        }
    })
}

/// Keys present on both sides for which no usable record is known: only these need the
/// destination's metadata (one HEAD each) before planning.
pub fn keys_needing_metadata(
    source: &[ObjectInfo],
    dest: &[ObjectInfo],
    records: &HashMap<String, Record>,
) -> Vec<String> {
    let source_keys: HashSet<&str> = source.iter().map(|o| o.key.as_str()).collect();
    dest.iter()
        .filter(|d| source_keys.contains(d.key.as_str()) && usable(records, d).is_none())
        .map(|d| d.key.clone())
        .collect()
}

/// Decide, for every key, copy / skip / delete and why.
pub fn build(
    source: &[ObjectInfo],
    dest: &[ObjectInfo],
    records: &HashMap<String, Record>,
    options: PlanOptions,
) -> Result<Plan, PlanError> {
    let dest_by_key: HashMap<&str, &ObjectInfo> =
        dest.iter().map(|o| (o.key.as_str(), o)).collect();
    let mut actions = Vec::with_capacity(source.len());
    for s in source {
        let action = match dest_by_key.get(s.key.as_str()) {
            None => Action::Copy(s.clone(), CopyReason::New),
            Some(d) => match usable(records, d) {
                Some(r) if r.source_etag == s.identity() && r.source_size == s.size => {
                    Action::Skip(
                        s.clone(),
                        SkipReason::Unchanged,
                        Some(Record {
                            dest_etag: d.etag.clone(),
                            dest_size: d.size,
                            ..r.clone()
                        }),
                    )
                }
                Some(_) => Action::Copy(s.clone(), CopyReason::SourceChanged),
                None if s.size != d.size => Action::Copy(s.clone(), CopyReason::SizeDiffers),
                None if s.modified > d.modified => Action::Copy(s.clone(), CopyReason::SourceNewer),
                None => Action::Skip(
                    s.clone(),
                    SkipReason::SameSizeNotNewer,
                    // Remember the pairing so the next run decides from listings alone.
                    Some(Record::of(s, &d.etag, d.size)),
                ),
            },
        };
        actions.push(action);
    }
    if options.remove {
        let source_keys: HashSet<&str> = source.iter().map(|o| o.key.as_str()).collect();
        let deletes: Vec<&ObjectInfo> = dest
            .iter()
            .filter(|d| !source_keys.contains(d.key.as_str()))
            .collect();
        if !deletes.is_empty() {
            if source.is_empty() {
                return Err(PlanError::EmptySource(deletes.len()));
            }
            let limit = options.max_delete.unwrap_or(dest.len() as u64 / 10);
            if deletes.len() as u64 > limit {
                return Err(PlanError::TooManyDeletes {
                    count: deletes.len(),
                    total: dest.len(),
                    limit,
                });
            }
        }
        actions.extend(deletes.into_iter().map(|d| Action::Delete(d.clone())));
    }
    Ok(Plan { actions })
}

impl Plan {
    /// Objects to copy.
    pub fn copies(&self) -> impl Iterator<Item = (&ObjectInfo, CopyReason)> {
        self.actions.iter().filter_map(|a| match a {
            Action::Copy(o, r) => Some((o, *r)),
            _ => None,
        })
    }

    /// Objects to delete.
    pub fn deletes(&self) -> impl Iterator<Item = &ObjectInfo> {
        self.actions.iter().filter_map(|a| match a {
            Action::Delete(o) => Some(o),
            _ => None,
        })
    }

    /// Number of skipped objects.
    pub fn skip_count(&self) -> usize {
        self.actions
            .iter()
            .filter(|a| matches!(a, Action::Skip(..)))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(key: &str, size: u64, etag: &str, modified: i64) -> ObjectInfo {
        ObjectInfo {
            key: key.into(),
            size,
            etag: etag.into(),
            modified,
        }
    }

    fn kinds(plan: &Plan) -> Vec<String> {
        plan.actions
            .iter()
            .map(|a| match a {
                Action::Copy(o, r) => format!("copy {} ({r:?})", o.key),
                Action::Skip(o, r, _) => format!("skip {} ({r:?})", o.key),
                Action::Delete(o) => format!("delete {}", o.key),
            })
            .collect()
    }

    #[test]
    fn new_objects_are_copied() {
        let plan = build(
            &[obj("a", 1, "e1", 10)],
            &[],
            &HashMap::new(),
            PlanOptions::default(),
        )
        .unwrap();
        assert_eq!(kinds(&plan), ["copy a (New)"]);
    }

    #[test]
    fn records_decide_even_for_same_size_changes() {
        let src = [obj("same", 5, "s1", 10), obj("changed", 5, "s2-new", 10)];
        let dst = [obj("same", 5, "d1", 20), obj("changed", 5, "d2", 20)];
        let records: HashMap<String, Record> = [
            ("same".to_string(), Record::of(&src[0], "d1", 5)),
            (
                "changed".to_string(),
                Record::of(&obj("changed", 5, "s2-old", 9), "d2", 5),
            ),
        ]
        .into();
        let plan = build(&src, &dst, &records, PlanOptions::default()).unwrap();
        assert_eq!(
            kinds(&plan),
            ["skip same (Unchanged)", "copy changed (SourceChanged)"]
        );
    }

    #[test]
    fn a_record_for_an_overwritten_destination_is_ignored() {
        let src = [obj("k", 5, "s1", 10)];
        let dst = [obj("k", 6, "someone-else", 30)];
        let records: HashMap<String, Record> =
            [("k".to_string(), Record::of(&src[0], "d-old", 5))].into();
        let plan = build(&src, &dst, &records, PlanOptions::default()).unwrap();
        assert_eq!(kinds(&plan), ["copy k (SizeDiffers)"]);
        assert_eq!(keys_needing_metadata(&src, &dst, &records), ["k"]);
    }

    #[test]
    fn without_records_size_and_age_decide() {
        let src = [
            obj("a", 1, "x", 10),
            obj("b", 1, "x", 50),
            obj("c", 1, "x", 10),
        ];
        let dst = [
            obj("a", 2, "y", 20),
            obj("b", 1, "y", 20),
            obj("c", 1, "y", 20),
        ];
        let plan = build(&src, &dst, &HashMap::new(), PlanOptions::default()).unwrap();
        assert_eq!(
            kinds(&plan),
            [
                "copy a (SizeDiffers)",
                "copy b (SourceNewer)",
                "skip c (SameSizeNotNewer)"
            ]
        );
        assert_eq!(
            keys_needing_metadata(&src, &dst, &HashMap::new()),
            ["a", "b", "c"]
        );
    }

    #[test]
    fn stores_without_listing_etags_use_size_and_time() {
        let src = [obj("k", 5, "", 10)];
        let dst = [obj("k", 5, "", 20)];
        let records: HashMap<String, Record> =
            [("k".to_string(), Record::of(&src[0], "put-etag", 5))].into();
        let plan = build(&src, &dst, &records, PlanOptions::default()).unwrap();
        assert_eq!(kinds(&plan), ["skip k (Unchanged)"]);
        let touched = [obj("k", 5, "", 11)];
        let plan = build(&touched, &dst, &records, PlanOptions::default()).unwrap();
        assert_eq!(kinds(&plan), ["copy k (SourceChanged)"]);
    }

    #[test]
    fn deletes_only_with_remove_and_within_limits() {
        let src: Vec<ObjectInfo> = (0..20)
            .map(|i| obj(&format!("k{i:02}"), 1, "e", 1))
            .collect();
        let mut dst = src.clone();
        dst.push(obj("extra1", 1, "e", 1));
        dst.push(obj("extra2", 1, "e", 1));
        let records: HashMap<String, Record> = src
            .iter()
            .map(|o| (o.key.clone(), Record::of(o, "e", 1)))
            .collect();
        let plan = build(&src, &dst, &records, PlanOptions::default()).unwrap();
        assert_eq!(plan.deletes().count(), 0);
        let remove = PlanOptions {
            remove: true,
            max_delete: None,
        };
        let plan = build(&src, &dst, &records, remove).unwrap();
        assert_eq!(
            plan.deletes().map(|o| o.key.as_str()).collect::<Vec<_>>(),
            ["extra1", "extra2"]
        );
        let strict = PlanOptions {
            remove: true,
            max_delete: Some(1),
        };
        assert_eq!(
            build(&src, &dst, &records, strict),
            Err(PlanError::TooManyDeletes {
                count: 2,
                total: 22,
                limit: 1
            })
        );
    }

    #[test]
    fn default_limit_is_ten_percent_and_empty_source_never_deletes() {
        let dst: Vec<ObjectInfo> = (0..10).map(|i| obj(&format!("k{i}"), 1, "e", 1)).collect();
        let remove = PlanOptions {
            remove: true,
            max_delete: Some(1000),
        };
        assert_eq!(
            build(&[], &dst, &HashMap::new(), remove),
            Err(PlanError::EmptySource(10))
        );
        let src = dst[..8].to_vec();
        let default = PlanOptions {
            remove: true,
            max_delete: None,
        };
        assert!(matches!(
            build(&src, &dst, &HashMap::new(), default),
            Err(PlanError::TooManyDeletes {
                count: 2,
                limit: 1,
                ..
            })
        ));
    }
}
