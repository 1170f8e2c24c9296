//! Days as Apache Iceberg tables on the output side (`--iceberg`): once a Parquet day is
//! handed over (its manifest published at the output), each of its tables is committed to
//! the Iceberg table of that name, one snapshot per table per day, the mirrored objects
//! themselves its data files. Before a committed day changes at the output (withdrawn to
//! be copied again, or removed), it leaves its tables first: a table never refers to a
//! file that is gone or different.
//!
//! [`schema`] evolves a table's schema from a day's columns, [`plan`] decides what a day's
//! commit changes, [`commit`] writes it (iceberg-rust's manifests, lists and metadata),
//! [`catalog`] makes it the current version (file-system layout, or [`sql`]), all over
//! egress-store ([`storage`]).

pub mod catalog;
pub mod commit;
pub mod footer;
pub mod plan;
pub mod schema;
pub mod sql;
pub mod storage;

use std::collections::{BTreeMap, HashMap};

use egress_common::manifest::{self, Manifest, TableEntry};
use egress_store::{GetOptions, Store, StoreError};
use tokio::sync::Mutex;

use self::catalog::{Catalog, Published};
use self::commit::{CommitError, Current, DayUpdate, Prepared, TableRef};
use self::plan::FileFacts;
use self::storage::{Root, TableStorage, Warehouse};

/// How often a commit that lost to another committer is prepared again.
const ATTEMPTS: u32 = 20;

/// Where the tables are and how their versions are recorded.
#[derive(Debug, Clone)]
pub struct IcebergSettings {
    /// The warehouse: tables are `<warehouse>/<namespace>/<table>`.
    pub warehouse: egress_common::Location,
    /// The warehouse's key prefix in the output, when it lies inside it (kept out of the
    /// mirror).
    pub inside_output: Option<String>,
    /// The tables' namespace.
    pub namespace: String,
    /// A PostgreSQL SQL catalog's connection string (`None`: the file-system layout).
    pub catalog: Option<egress_store::Secret>,
    /// The catalog's name in it (what readers configure).
    pub catalog_name: String,
    /// Every day's columns, given: the simulation's objects are not Parquet (`None`: read
    /// from each day's first file's footer).
    pub given_columns: Option<arrow_schema::Schema>,
}

/// The tables of a run: where they are, how they are committed, and what the run knows of
/// each.
pub struct Tables {
    io: TableStorage,
    catalog: Catalog,
    namespace: String,
    warehouse: Warehouse,
    /// The columns of every day (the simulation's objects are not Parquet); `None`: read
    /// from each day's first file's footer.
    given_columns: Option<arrow_schema::Schema>,
    /// The output, where the days' manifests and data files are.
    output: Store,
    output_root: Root,
    /// Per table, the days it holds (`None`: not loaded yet this run).
    known: Mutex<HashMap<String, Known>>,
}

/// What the run knows of a table: its version as last loaded or published, and the days
/// that holds.
#[derive(Default)]
struct Known {
    current: Option<Current>,
    dates: std::collections::BTreeSet<i32>,
}

/// What committing one day came to.
#[derive(Debug, Default)]
pub struct DayOutcome {
    /// Tables committed to.
    pub committed: usize,
    /// The day is CSV: not committed (Iceberg has no CSV data files).
    pub csv: bool,
    /// Tables that could not be committed, each with its one line.
    pub failures: Vec<(String, String)>,
}

impl std::fmt::Debug for Tables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tables({})", self.warehouse.root.as_str())
    }
}

impl Tables {
    /// The tables `settings` describe in `warehouse`, beside the output `output` at
    /// `output_location`.
    pub async fn open(
        settings: &IcebergSettings,
        output: Store,
        output_location: &egress_common::Location,
        warehouse: Warehouse,
    ) -> anyhow::Result<Tables> {
        let catalog = match &settings.catalog {
            None => Catalog::Files,
            Some(url) => Catalog::Sql(
                sql::SqlCatalog::connect(url, &settings.catalog_name, &settings.namespace).await?,
            ),
        };
        Ok(Tables {
            io: TableStorage::new(warehouse.store.clone(), warehouse.root.clone()),
            catalog,
            namespace: settings.namespace.clone(),
            warehouse,
            given_columns: settings.given_columns.clone(),
            output,
            output_root: Root::of(output_location),
            known: Mutex::new(HashMap::new()),
        })
    }

    /// The table a manifest's table entry goes to.
    fn table(&self, entry: &TableEntry) -> TableRef {
        let name = table_name(entry);
        TableRef {
            location: self.warehouse.table_uri(&self.namespace, &name),
            namespace: self.namespace.clone(),
            name,
        }
    }

    /// Commit the day in `folder` of the output to its tables, if its manifest is there
    /// and some table does not hold it yet (`published`: the run has just written it).
    pub async fn commit_day(
        &self,
        folder: &str,
        published: bool,
    ) -> Result<DayOutcome, StoreError> {
        let mut outcome = DayOutcome::default();
        let Some(day) = self.manifest_at_output(folder).await? else {
            return Ok(outcome);
        };
        if day.tables.iter().all(|t| !is_parquet(t)) {
            outcome.csv = !day.tables.is_empty();
            return Ok(outcome);
        }
        let date = day.date.clone();
        for (_, (table, entries)) in self.by_table(&day) {
            if let Some(why) = Self::refused(&entries) {
                outcome.failures.push((table.to_string(), why));
                continue;
            }
            match self
                .commit_table(&table, folder, &date, &entries, published)
                .await
            {
                Ok(true) => outcome.committed += 1,
                Ok(false) => {}
                Err(e) => outcome.failures.push((table.to_string(), e.to_string())),
            }
        }
        Ok(outcome)
    }

    /// Take the day in `folder` out of its tables, before its manifest is withdrawn from
    /// the output.
    pub async fn withdraw_day(&self, folder: &str) -> Result<(), StoreError> {
        let Some(day) = self.manifest_at_output(folder).await? else {
            return Ok(());
        };
        for (_, (table, _)) in self.by_table(&day) {
            let update = DayUpdate {
                date: day.date.clone(),
                files: Vec::new(),
                columns: None,
                primary_key: Vec::new(),
            };
            self.commit(&table, &update)
                .await
                .map_err(|e| StoreError::new(egress_store::ErrorKind::Other, e.to_string()))?;
        }
        Ok(())
    }

    /// A day's Parquet tables, each with its entries (a shared table has several pieces).
    fn by_table<'a>(&self, day: &'a Manifest) -> BTreeMap<String, (TableRef, Vec<&'a TableEntry>)> {
        let mut tables: BTreeMap<String, (TableRef, Vec<&TableEntry>)> = BTreeMap::new();
        for entry in day.tables.iter().filter(|t| is_parquet(t)) {
            let table = self.table(entry);
            tables
                .entry(table.name.clone())
                .or_insert_with(|| (table, Vec::new()))
                .1
                .push(entry);
        }
        tables
    }

    /// Why a table's entries cannot be one Iceberg table: two source tables whose names
    /// fold to the same Iceberg name (`"Orders"` and `orders`), or a name a reader cuts at
    /// `#` or `?` when it parses the data file's path as a URI.
    fn refused(entries: &[&TableEntry]) -> Option<String> {
        let sources: std::collections::BTreeSet<&str> =
            entries.iter().map(|e| source_stem(e)).collect();
        if sources.len() > 1 {
            let names: Vec<&str> = sources.into_iter().collect();
            return Some(format!(
                "the source tables {} map to this one Iceberg table: dump one of them under another name",
                names.join(" and ")
            ));
        }
        entries
            .iter()
            .find(|e| e.file.contains(['#', '?']))
            .map(|e| {
                format!(
                    "object `{}` has a `#` or `?` in its name, which readers cut its path at: dump the table under another name",
                    e.file
                )
            })
    }

    /// The day's manifest at the output, if it has one.
    async fn manifest_at_output(&self, folder: &str) -> Result<Option<Manifest>, StoreError> {
        let key = manifest::key_in(folder);
        let got = match self.output.get(&key, GetOptions::default()).await {
            Ok(got) => got,
            Err(e) if e.kind() == egress_store::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let bytes = got.body.collect().await?;
        Manifest::parse(&bytes)
            .map(Some)
            .map_err(|why| StoreError::new(egress_store::ErrorKind::Other, format!("{key}: {why}")))
    }
}

/// The Iceberg table name of a manifest's table: its object name's stem (`schema.table`
/// or `table`), lower case, `.` as `__`, any other character outside `[a-z0-9_]` as `_`
/// (engines such as Trino fold names to lower case and read a `.` as a namespace).
pub fn table_name(entry: &TableEntry) -> String {
    source_stem(entry)
        .to_lowercase()
        .replace('.', "__")
        .chars()
        .map(|c| match c.is_ascii_alphanumeric() || c == '_' {
            true => c,
            false => '_',
        })
        .collect()
}

/// The source table's part of a manifest entry's object name (`schema.table` or `table`;
/// a piece's `.part-NNNNN` left out).
fn source_stem(entry: &TableEntry) -> &str {
    let stem = entry.file.strip_suffix(".parquet").unwrap_or(&entry.file);
    match entry.piece {
        Some(_) => stem.rsplit_once(".part-").map_or(stem, |(s, _)| s),
        None => stem,
    }
}

fn is_parquet(entry: &TableEntry) -> bool {
    entry.format.as_deref() == Some("parquet")
}

impl Tables {
    /// Commit one table's share of a day; true when a new version was published.
    async fn commit_table(
        &self,
        table: &TableRef,
        folder: &str,
        date: &str,
        entries: &[&TableEntry],
        published: bool,
    ) -> Result<bool, CommitError> {
        let failed = |source| CommitError::metadata(table, source);
        let days = commit::date_days(date).map_err(failed)?;
        if !published && self.holds(table, days).await.map_err(failed)? {
            return Ok(false);
        }
        let Some(first) = entries.first() else {
            return Ok(false);
        };
        let files = entries
            .iter()
            .map(|e| FileFacts {
                path: self.output_root.uri(&format!("{folder}/{}", e.file)),
                size: e.compressed_bytes,
                rows: e.rows,
            })
            .collect();
        let key = format!("{folder}/{}", first.file);
        let columns = match &self.given_columns {
            Some(columns) => columns.clone(),
            None => footer::columns(&self.output, &key, first.compressed_bytes)
                .await
                .map_err(failed)?,
        };
        let update = DayUpdate {
            date: date.to_string(),
            files,
            columns: Some(columns),
            primary_key: first.primary_key.clone().unwrap_or_default(),
        };
        self.commit(table, &update).await
    }

    /// Whether the table holds the day, by its manifest list's partition bounds (loaded
    /// once a run per table).
    async fn holds(&self, table: &TableRef, days: i32) -> iceberg::Result<bool> {
        let known = self.known(table).await?;
        Ok(known.dates.contains(&days))
    }

    /// What the run knows of `table`, loaded the first time.
    async fn known(
        &self,
        table: &TableRef,
    ) -> iceberg::Result<tokio::sync::MappedMutexGuard<'_, Known>> {
        let mut known = self.known.lock().await;
        if !known.contains_key(&table.name) {
            let mut current = self.catalog.load(&self.io, table).await?;
            let dates = match current.as_mut() {
                Some(c) => commit::dates_held(c.manifests(&self.io).await?),
                None => Default::default(),
            };
            known.insert(table.name.clone(), Known { current, dates });
        }
        Ok(tokio::sync::MutexGuard::map(known, |k| {
            k.entry(table.name.clone()).or_default()
        }))
    }

    /// Make `update` the table's: prepared on its current version and published, again
    /// on the newer version when another committer came first.
    async fn commit(&self, table: &TableRef, update: &DayUpdate) -> Result<bool, CommitError> {
        let failed = |source| CommitError::metadata(table, source);
        let mut current = self.known(table).await.map_err(failed)?.current.clone();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                current = self.catalog.load(&self.io, table).await.map_err(failed)?;
            }
            let now = egress_store::task::unix_millis();
            let prepared = commit::prepare(&self.io, table, current.as_ref(), update, now).await?;
            let (next, change, manifests) = match prepared {
                Prepared::Unchanged => return Ok(false),
                Prepared::Next(next, change, manifests) => (next, change, manifests),
            };
            let published = self
                .catalog
                .publish(&self.io, table, current.as_ref(), &next)
                .await
                .map_err(failed)?;
            match published {
                Published::Won(file) => {
                    let now = Current {
                        metadata: *next,
                        file: file.clone(),
                        manifests: Some(manifests),
                    };
                    self.remember(table, update, change, now).await;
                    tracing::info!(table = %table, date = %update.date, "day {} {} Iceberg table {table} ({}, {file})", update.date, change.verb(), change.operation().as_str());
                    return Ok(true);
                }
                Published::Lost => {
                    tracing::info!(table = %table, "Iceberg table {table}: another committer published a version first; preparing the commit again on it")
                }
            }
        }
        Err(failed(iceberg::Error::new(
            iceberg::ErrorKind::Unexpected,
            format!("{ATTEMPTS} commits in a row lost to other committers"),
        )))
    }

    /// What the run knows of the table after a commit of `change`: `now` its version.
    async fn remember(
        &self,
        table: &TableRef,
        update: &DayUpdate,
        change: plan::Change,
        now: Current,
    ) {
        let Ok(days) = commit::date_days(&update.date) else {
            return;
        };
        let mut known = self.known.lock().await;
        let entry = known.entry(table.name.clone()).or_default();
        entry.current = Some(now);
        match change {
            plan::Change::Remove => entry.dates.remove(&days),
            _ => entry.dates.insert(days),
        };
    }
}

#[async_trait::async_trait]
impl egress_common::day::handoff::Departure for Tables {
    async fn before_leaving(&self, folder: &str) -> Result<(), StoreError> {
        self.withdraw_day(folder).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(file: &str, piece: Option<u64>) -> TableEntry {
        let json = serde_json::json!({
            "table": "t", "schema": "public", "name": "t", "file": file, "format": "parquet",
            "key": file, "rows": 1, "uncompressed_bytes": 1, "compressed_bytes": 1,
            "sha256": "", "uncompressed_sha256": "", "columns": [],
            "part": piece.map(|index| serde_json::json!({"index": index, "of": 2})),
        });
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn tables_whose_names_fold_together_or_cut_a_path_are_refused() {
        let (pieces, one) = (
            [
                entry("s.t.part-00000.parquet", Some(0)),
                entry("s.t.part-00001.parquet", Some(1)),
            ],
            entry("s.t.parquet", None),
        );
        assert_eq!(table_name(&pieces[1]), "s__t");
        assert_eq!(
            Tables::refused(&[&pieces[0], &pieces[1]]),
            None,
            "pieces are one table"
        );
        let (upper, lower) = (entry("Orders.parquet", None), entry("orders.parquet", None));
        assert_eq!(table_name(&upper), table_name(&lower));
        let why = Tables::refused(&[&upper, &lower]).unwrap();
        assert!(why.contains("Orders and orders map to this one"), "{why}");
        assert_eq!(Tables::refused(&[&one]), None);
        let cut = entry("a#b.parquet", None);
        assert!(Tables::refused(&[&cut]).unwrap().contains("`a#b.parquet`"));
    }
}
