//! What a commit changes in a table for one day, decided from what the table holds for the
//! day and what the day's manifest at the output lists. Pure.

/// One data file as the table and the manifest both describe it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FileFacts {
    /// Its URI.
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its rows.
    pub rows: u64,
}

/// What a day's commit does to its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The table already holds exactly the day's files.
    Nothing,
    /// The day is new to the table: its files are added (an `append` snapshot).
    Add,
    /// The table holds other files for the day (re-dumped, or copied anew): they are
    /// replaced by the day's in one `overwrite` snapshot.
    Replace,
    /// The day is gone from the output: its files leave the table (a `delete` snapshot).
    Remove,
}

impl Change {
    /// What the change did, for the log line ("added to", ...).
    pub fn verb(self) -> &'static str {
        match self {
            Change::Nothing => "already in",
            Change::Add => "added to",
            Change::Replace => "replaced in",
            Change::Remove => "removed from",
        }
    }

    /// The snapshot's operation, as Iceberg names it.
    pub fn operation(self) -> iceberg::spec::Operation {
        use iceberg::spec::Operation;
        match self {
            Change::Nothing | Change::Add => Operation::Append,
            Change::Replace => Operation::Overwrite,
            Change::Remove => Operation::Delete,
        }
    }
}

/// The change that makes the table's files for a day (`live`) exactly `wanted` (empty:
/// the day is to leave the table).
pub fn decide(live: &[FileFacts], wanted: &[FileFacts]) -> Change {
    let mut live = live.to_vec();
    let mut wanted = wanted.to_vec();
    live.sort();
    wanted.sort();
    match (live.is_empty(), wanted.is_empty()) {
        _ if live == wanted => Change::Nothing,
        (true, false) => Change::Add,
        (false, true) => Change::Remove,
        _ => Change::Replace,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, size: u64) -> FileFacts {
        FileFacts {
            path: path.into(),
            size,
            rows: size / 10,
        }
    }

    #[test]
    fn each_change_is_decided_from_the_two_sets_of_files() {
        let a = file("s3://b/d/a.parquet", 100);
        let b = file("s3://b/d/b.parquet", 200);
        assert_eq!(decide(&[], &[]), Change::Nothing);
        assert_eq!(
            decide(&[a.clone(), b.clone()], &[b.clone(), a.clone()]),
            Change::Nothing
        );
        assert_eq!(decide(&[], std::slice::from_ref(&a)), Change::Add);
        assert_eq!(decide(std::slice::from_ref(&a), &[]), Change::Remove);
        assert_eq!(
            decide(std::slice::from_ref(&a), &[file("s3://b/d/a.parquet", 101)]),
            Change::Replace
        );
        assert_eq!(
            decide(std::slice::from_ref(&a), &[a.clone(), b]),
            Change::Replace
        );
    }
}
