//! One day's commit to one table, prepared: the new manifest (the day's files added, the
//! files it replaces deleted), the manifest list (the parent's manifests but those of the
//! day, and the new one) and the table's next metadata. Nothing is visible until the
//! catalog publishes the metadata ([`super::catalog`]); what is written before that is
//! unreferenced if the commit loses.
//!
//! Each manifest egress writes holds one day, so a commit reads the parent's manifest list
//! and only the manifests of its own day: its cost does not grow with the days the table
//! holds, but for the list's one entry per day.

use std::collections::HashMap;
use std::sync::Arc;

use iceberg::io::{OutputFile, Storage as _};
use iceberg::spec::{
    DataContentType, DataFile, DataFileBuilder, DataFileFormat, FormatVersion, Literal, Manifest,
    ManifestFile, ManifestList, ManifestListWriter, ManifestWriterBuilder, Operation,
    PartitionSpec, Schema, Snapshot, SortOrder, Struct, Summary, TableMetadata,
    TableMetadataBuilder, Transform, UnboundPartitionSpec,
};

use super::plan::{self, Change, FileFacts};
use super::schema::{self, Refusal, DATE_COLUMN};
use super::storage::TableStorage;

/// Snapshots a table keeps (time travel's reach, in commits): one per table per day, so a
/// season of days; older ones leave the metadata (their files stay: egress owns them).
pub const KEPT_SNAPSHOTS: usize = 100;

/// A table of the warehouse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRef {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The URI of its folder (`<warehouse>/<namespace>/<name>`).
    pub location: String,
}

impl std::fmt::Display for TableRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.namespace, self.name)
    }
}

/// What one day asks of one table.
#[derive(Debug, Clone)]
pub struct DayUpdate {
    /// The day, `YYYY-MM-DD`.
    pub date: String,
    /// Its files for the table (none: the day leaves the table).
    pub files: Vec<FileFacts>,
    /// The columns of its files (`None` when it leaves).
    pub columns: Option<arrow_schema::Schema>,
    /// The table's primary key, by column name.
    pub primary_key: Vec<String>,
}

/// A table's current version.
#[derive(Debug, Clone)]
pub struct Current {
    /// Its metadata.
    pub metadata: TableMetadata,
    /// The URI of the metadata file it was read from.
    pub file: String,
    /// Its snapshot's manifests, once read (or written).
    pub manifests: Option<Vec<ManifestFile>>,
}

impl Current {
    /// The current snapshot's manifests, read once.
    pub async fn manifests(&mut self, io: &TableStorage) -> iceberg::Result<&[ManifestFile]> {
        if self.manifests.is_none() {
            self.manifests = Some(read_parent(io, &self.metadata).await?);
        }
        Ok(self.manifests.as_deref().unwrap_or_default())
    }
}

/// What preparing a commit came to.
#[derive(Debug)]
pub enum Prepared {
    /// The table already says what the day says.
    Unchanged,
    /// The next version, to be published, with its snapshot's manifests.
    Next(Box<TableMetadata>, Change, Vec<ManifestFile>),
}

/// Why a day cannot be committed to a table.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The day's columns cannot become the table's schema.
    #[error("Iceberg table {table}: {refusal}")]
    Refused {
        /// The table.
        table: String,
        /// Why.
        refusal: Refusal,
    },
    /// Reading or writing the table's metadata failed.
    #[error("Iceberg table {table}: {}", describe(source))]
    Metadata {
        /// The table.
        table: String,
        /// What failed.
        source: Box<iceberg::Error>,
    },
}

impl CommitError {
    /// Reading or writing `table`'s metadata failed with `source`.
    pub fn metadata(table: &TableRef, source: iceberg::Error) -> CommitError {
        CommitError::Metadata {
            table: table.to_string(),
            source: Box::new(source),
        }
    }
}

/// An iceberg error as one line: its message, then its causes.
pub fn describe(e: &iceberg::Error) -> String {
    let mut line = e.message().to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        line.push_str(": ");
        line.push_str(&c.to_string());
        cause = c.source();
    }
    line
}

/// The next snapshot's id and file names: random, from the task's source.
pub(crate) struct Names {
    snapshot_id: i64,
    unique: String,
}

impl Names {
    pub(crate) fn draw() -> Names {
        let id = egress_store::task::random() >> 1;
        let unique = format!(
            "{:016x}{:016x}",
            egress_store::task::random(),
            egress_store::task::random()
        );
        Names {
            snapshot_id: i64::try_from(id).unwrap_or(1).max(1),
            unique: format!(
                "{}-{}-{}-{}-{}",
                &unique[0..8],
                &unique[8..12],
                &unique[12..16],
                &unique[16..20],
                &unique[20..32]
            ),
        }
    }
}

/// Prepare `day`'s commit to `table`, whose current version is `current` (`None`: the
/// table does not exist yet): writes the new manifest and manifest list through `io`.
pub async fn prepare(
    io: &TableStorage,
    table: &TableRef,
    current: Option<&Current>,
    day: &DayUpdate,
    now_ms: i64,
) -> Result<Prepared, CommitError> {
    let failed = |source| CommitError::metadata(table, source);
    let base = match (current, &day.columns) {
        (Some(c), _) => c.metadata.clone(),
        (None, None) => return Ok(Prepared::Unchanged),
        (None, Some(columns)) => new_table(table, columns, &day.primary_key)?,
    };
    let date = date_days(&day.date).map_err(failed)?;
    let parent = match current.and_then(|c| c.manifests.clone()) {
        Some(manifests) => manifests,
        None => read_parent(io, &base).await.map_err(failed)?,
    };
    let found = day_files(io, &parent, date).await.map_err(failed)?;
    let change = plan::decide(&found.live_facts(), &day.files);
    if change == Change::Nothing {
        return Ok(Prepared::Unchanged);
    }
    let evolved = match &day.columns {
        Some(columns) if !day.files.is_empty() => Some(
            schema::evolve(
                Some(base.current_schema()),
                base.last_column_id(),
                columns,
                &day.primary_key,
            )
            .map_err(|refusal| CommitError::Refused {
                table: table.to_string(),
                refusal,
            })?,
        ),
        _ => None,
    };
    let step = Step {
        io,
        table,
        base: &base,
        previous: current.map(|c| c.file.clone()),
        names: Names::draw(),
        date,
    };
    let new_schema = match evolved.filter(|e| e.changed) {
        Some(e) => Some(schema::with_final_id(&base, e.schema).map_err(failed)?),
        None => None,
    };
    let (next, manifests) = step
        .write(&parent, found, day, change, new_schema, now_ms)
        .await
        .map_err(failed)?;
    Ok(Prepared::Next(Box::new(next), change, manifests))
}

/// A new table's metadata, without a snapshot: the day's schema, partitioned by the day.
fn new_table(
    table: &TableRef,
    columns: &arrow_schema::Schema,
    primary_key: &[String],
) -> Result<TableMetadata, CommitError> {
    let refused = |refusal| CommitError::Refused {
        table: table.to_string(),
        refusal,
    };
    let evolved = schema::evolve(None, 0, columns, primary_key).map_err(refused)?;
    let date_id = evolved
        .schema
        .field_id_by_name(DATE_COLUMN)
        .unwrap_or_default();
    let failed = |source| CommitError::metadata(table, source);
    let spec = UnboundPartitionSpec::builder()
        .add_partition_field(date_id, DATE_COLUMN, Transform::Identity)
        .map_err(failed)?
        .build();
    let uuid = uuid_from(egress_store::task::random(), egress_store::task::random());
    let built = TableMetadataBuilder::new(
        evolved.schema,
        spec,
        SortOrder::unsorted_order(),
        table.location.clone(),
        FormatVersion::V2,
        HashMap::new(),
    )
    .map_err(failed)?
    .assign_uuid(uuid)
    .build()
    .map_err(failed)?;
    Ok(built.metadata)
}

fn uuid_from(a: u64, b: u64) -> uuid::Uuid {
    uuid::Uuid::from_u64_pair(a, b)
}

/// The day as days since 1970-01-01.
pub fn date_days(date: &str) -> iceberg::Result<i32> {
    match Literal::date_from_str(date)? {
        Literal::Primitive(iceberg::spec::PrimitiveLiteral::Int(days)) => Ok(days),
        other => Err(iceberg::Error::new(
            iceberg::ErrorKind::DataInvalid,
            format!("{date} is not a date: {other:?}"),
        )),
    }
}

/// The days a table's current snapshot holds, by its manifests' partition bounds (a
/// manifest spanning several days, written by another engine, is not counted).
pub fn dates_held(manifests: &[ManifestFile]) -> std::collections::BTreeSet<i32> {
    manifests
        .iter()
        .filter(|m| m.has_added_files() || m.has_existing_files())
        .filter_map(|m| match bounds(m) {
            Some((lo, hi)) if lo == hi => Some(lo),
            _ => None,
        })
        .collect()
}

/// The manifests of the table's current snapshot.
async fn read_parent(
    io: &TableStorage,
    base: &TableMetadata,
) -> iceberg::Result<Vec<ManifestFile>> {
    let Some(snapshot) = base.current_snapshot() else {
        return Ok(Vec::new());
    };
    let bytes = io.new_input(snapshot.manifest_list())?.read().await?;
    let list = ManifestList::parse_with_version(&bytes, base.format_version())?;
    Ok(list.entries().to_vec())
}

/// What the parent's manifests hold for the day: the day's live files, and the other
/// days' live files that share a manifest with them (written by another engine).
#[derive(Default)]
struct Found {
    /// Manifests holding some of the day's files.
    touched: Vec<String>,
    /// The day's live entries.
    day: Vec<Live>,
    /// Other days' live entries in those manifests.
    others: Vec<Live>,
}

/// A live manifest entry, with what a later manifest must repeat about it.
struct Live {
    file: DataFile,
    snapshot_id: i64,
    sequence: i64,
    file_sequence: Option<i64>,
}

impl Found {
    fn live_facts(&self) -> Vec<FileFacts> {
        self.day
            .iter()
            .map(|l| FileFacts {
                path: l.file.file_path().to_string(),
                size: l.file.file_size_in_bytes(),
                rows: l.file.record_count(),
            })
            .collect()
    }
}

/// The day's live files in `manifests`: only manifests whose partition bounds admit the
/// day are read.
async fn day_files(
    io: &TableStorage,
    manifests: &[ManifestFile],
    date: i32,
) -> iceberg::Result<Found> {
    let mut found = Found::default();
    for manifest in manifests.iter().filter(|m| may_hold(m, date)) {
        let bytes = io.new_input(&manifest.manifest_path)?.read().await?;
        let parsed = Manifest::parse_avro(&bytes)?;
        let mut holds_day = false;
        let mut others = Vec::new();
        for entry in parsed.entries().iter().filter(|e| e.is_alive()) {
            let live = Live {
                file: entry.data_file().clone(),
                snapshot_id: entry.snapshot_id().unwrap_or(manifest.added_snapshot_id),
                sequence: entry.sequence_number().unwrap_or(manifest.sequence_number),
                file_sequence: entry
                    .file_sequence_number
                    .or(Some(manifest.sequence_number)),
            };
            match partition_date(entry.data_file()) == Some(date) {
                true => {
                    holds_day = true;
                    found.day.push(live);
                }
                false => others.push(live),
            }
        }
        if holds_day {
            found.touched.push(manifest.manifest_path.clone());
            found.others.extend(others);
        }
    }
    Ok(found)
}

/// The date a data file's partition holds.
fn partition_date(file: &DataFile) -> Option<i32> {
    match file.partition().fields().first() {
        Some(Some(Literal::Primitive(iceberg::spec::PrimitiveLiteral::Int(d)))) => Some(*d),
        _ => None,
    }
}

/// Whether `manifest` may hold files of `date` (its partition summary's bounds, encoded
/// as Iceberg's single values: a date is 4 bytes, little-endian).
fn may_hold(manifest: &ManifestFile, date: i32) -> bool {
    bounds(manifest).is_none_or(|(lo, hi)| lo <= date && date <= hi)
}

/// The first and last day of `manifest`'s files, when its summary says.
fn bounds(manifest: &ManifestFile) -> Option<(i32, i32)> {
    let bound = |b: &Option<iceberg::spec::ByteBuf>| {
        b.as_ref()
            .and_then(|b| <[u8; 4]>::try_from(b.as_slice()).ok())
            .map(i32::from_le_bytes)
    };
    let summary = manifest.partitions.as_ref()?.first()?;
    Some((bound(&summary.lower_bound)?, bound(&summary.upper_bound)?))
}

/// The writing half of a commit.
struct Step<'a> {
    io: &'a TableStorage,
    table: &'a TableRef,
    base: &'a TableMetadata,
    /// The base's own file, for the metadata log (none for a new table).
    previous: Option<String>,
    names: Names,
    date: i32,
}

impl Step<'_> {
    /// Write the manifest and the list, and build the next metadata.
    async fn write(
        &self,
        parent: &[ManifestFile],
        found: Found,
        day: &DayUpdate,
        change: Change,
        new_schema: Option<Schema>,
        now_ms: i64,
    ) -> iceberg::Result<(TableMetadata, Vec<ManifestFile>)> {
        let schema = Arc::new(match &new_schema {
            Some(s) => s.clone(),
            None => (**self.base.current_schema()).clone(),
        });
        let spec = (**self.base.default_partition_spec()).clone();
        let sequence = self.base.next_sequence_number();
        let manifest = match day.files.is_empty() && found.others.is_empty() {
            true => None,
            false => Some(self.manifest(schema.clone(), spec, &found, day).await?),
        };
        let mut manifests: Vec<ManifestFile> = parent
            .iter()
            .filter(|m| !found.touched.contains(&m.manifest_path))
            // A manifest of deletions only holds nothing live: it stays in its snapshot.
            .filter(|m| m.has_added_files() || m.has_existing_files())
            .cloned()
            .collect();
        manifests.extend(manifest);
        let list = self.list(manifests.clone(), sequence).await?;
        let summary = summary(self.base, &found, day, change);
        let snapshot = Snapshot::builder()
            .with_snapshot_id(self.names.snapshot_id)
            .with_parent_snapshot_id(self.base.current_snapshot_id())
            .with_sequence_number(sequence)
            .with_timestamp_ms(now_ms.max(self.base.last_updated_ms()))
            .with_manifest_list(list)
            .with_summary(summary)
            .with_schema_id(schema.schema_id())
            .build();
        let next = self.next_metadata(new_schema, snapshot)?;
        // The list writer gave the new manifest its sequence number: as written, then.
        let written = manifests
            .into_iter()
            .map(|mut m| {
                if m.sequence_number < 0 {
                    m.sequence_number = sequence;
                    m.min_sequence_number = sequence;
                }
                m
            })
            .collect();
        Ok((next, written))
    }

    /// The new manifest: the day's files added, and any other day's files that shared a
    /// manifest with the ones replaced kept as existing. The replaced files are left out,
    /// not written as DELETED entries: DuckDB 1.4.4 reads a DELETED entry of the current
    /// snapshot as a live file (measured: a removed day's file was opened); the snapshot's
    /// summary counts them.
    async fn manifest(
        &self,
        schema: Arc<Schema>,
        spec: PartitionSpec,
        found: &Found,
        day: &DayUpdate,
    ) -> iceberg::Result<ManifestFile> {
        let path = format!(
            "{}/metadata/{}-m0.avro",
            self.table.location, self.names.unique
        );
        let output: OutputFile = self.io.new_output(&path)?;
        let mut writer =
            ManifestWriterBuilder::new(output, Some(self.names.snapshot_id), schema, spec.clone())
                .build_v2_data();
        for file in &day.files {
            writer.add_file(self.data_file(file, spec.spec_id())?, -1)?;
        }
        for kept in &found.others {
            writer.add_existing_file(
                kept.file.clone(),
                kept.snapshot_id,
                kept.sequence,
                kept.file_sequence,
            )?;
        }
        writer.write_manifest_file().await
    }

    fn data_file(&self, file: &FileFacts, spec_id: i32) -> iceberg::Result<DataFile> {
        DataFileBuilder::default()
            .content(DataContentType::Data)
            .file_path(file.path.clone())
            .file_format(DataFileFormat::Parquet)
            .partition(Struct::from_iter([Some(Literal::date(self.date))]))
            .record_count(file.rows)
            .file_size_in_bytes(file.size)
            .partition_spec_id(spec_id)
            .build()
            .map_err(|e| iceberg::Error::new(iceberg::ErrorKind::DataInvalid, e.to_string()))
    }

    /// Write the snapshot's manifest list; its URI.
    async fn list(&self, manifests: Vec<ManifestFile>, sequence: i64) -> iceberg::Result<String> {
        let path = format!(
            "{}/metadata/snap-{}-1-{}.avro",
            self.table.location, self.names.snapshot_id, self.names.unique
        );
        let writer = self.io.new_output(&path)?.writer().await?;
        let mut list = ManifestListWriter::v2(
            writer,
            self.names.snapshot_id,
            self.base.current_snapshot_id(),
            sequence,
        );
        list.add_manifests(manifests.into_iter())?;
        list.close().await?;
        Ok(path)
    }

    /// The next metadata: the new schema (if any), the snapshot as `main`, and the
    /// properties readers need.
    fn next_metadata(
        &self,
        new_schema: Option<Schema>,
        snapshot: Snapshot,
    ) -> iceberg::Result<TableMetadata> {
        let mut schemas: Vec<Schema> = self.base.schemas_iter().map(|s| (**s).clone()).collect();
        let mut builder =
            TableMetadataBuilder::new_from_metadata(self.base.clone(), self.previous.clone());
        if let Some(schema) = new_schema {
            schemas.push(schema.clone());
            builder = builder.add_current_schema(schema)?;
        }
        let mapping = serde_json::to_string(&schema::name_mapping(schemas.iter()))
            .map_err(|e| iceberg::Error::new(iceberg::ErrorKind::Unexpected, e.to_string()))?;
        let properties = HashMap::from([
            ("schema.name-mapping.default".to_string(), mapping),
            // egress owns the data files (the mirrored days): an engine's snapshot expiry or
            // orphan clean-up must never delete them.
            ("gc.enabled".to_string(), "false".to_string()),
            (
                "egress.partition-column-in-files".to_string(),
                "false".to_string(),
            ),
        ]);
        let builder = builder
            .set_properties(properties)?
            .set_branch_snapshot(snapshot, iceberg::spec::MAIN_BRANCH)?;
        Ok(builder.remove_snapshots(&self.expired()).build()?.metadata)
    }

    /// The snapshots the next version no longer keeps: all but the newest
    /// [`KEPT_SNAPSHOTS`] (with the new one). The metadata file then stays bounded whatever
    /// the days the table holds; time travel reaches that many commits back.
    fn expired(&self) -> Vec<i64> {
        let mut snapshots: Vec<(i64, i64)> = self
            .base
            .snapshots()
            .map(|s| (s.sequence_number(), s.snapshot_id()))
            .collect();
        snapshots.sort_unstable();
        let excess = (snapshots.len() + 1).saturating_sub(KEPT_SNAPSHOTS);
        snapshots
            .into_iter()
            .take(excess)
            .map(|(_, id)| id)
            .collect()
    }
}

/// The snapshot's summary: what it added and removed, the table's totals after it, and
/// the day it is about.
fn summary(base: &TableMetadata, found: &Found, day: &DayUpdate, change: Change) -> Summary {
    let added_rows: u64 = day.files.iter().map(|f| f.rows).sum();
    let added_size: u64 = day.files.iter().map(|f| f.size).sum();
    let gone_rows: u64 = found.day.iter().map(|l| l.file.record_count()).sum();
    let gone_size: u64 = found.day.iter().map(|l| l.file.file_size_in_bytes()).sum();
    let total = |key: &str| -> u64 {
        base.current_snapshot()
            .and_then(|s| s.summary().additional_properties.get(key))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let after =
        |key: &str, plus: u64, minus: u64| (total(key) + plus).saturating_sub(minus).to_string();
    let mut props = HashMap::from([
        ("egress.date".to_string(), day.date.clone()),
        ("changed-partition-count".to_string(), "1".to_string()),
        (
            "total-data-files".to_string(),
            after(
                "total-data-files",
                day.files.len() as u64,
                found.day.len() as u64,
            ),
        ),
        (
            "total-records".to_string(),
            after("total-records", added_rows, gone_rows),
        ),
        (
            "total-files-size".to_string(),
            after("total-files-size", added_size, gone_size),
        ),
        ("total-delete-files".to_string(), "0".to_string()),
        ("total-position-deletes".to_string(), "0".to_string()),
        ("total-equality-deletes".to_string(), "0".to_string()),
    ]);
    if !day.files.is_empty() {
        props.insert("added-data-files".into(), day.files.len().to_string());
        props.insert("added-records".into(), added_rows.to_string());
        props.insert("added-files-size".into(), added_size.to_string());
    }
    if !found.day.is_empty() {
        props.insert("deleted-data-files".into(), found.day.len().to_string());
        props.insert("deleted-records".into(), gone_rows.to_string());
        props.insert("removed-files-size".into(), gone_size.to_string());
    }
    Summary {
        operation: match change {
            Change::Nothing => Operation::Append,
            c => c.operation(),
        },
        additional_properties: props,
    }
}
