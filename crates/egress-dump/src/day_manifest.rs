//! The day's manifest and its Frictionless descriptor, built from what the run wrote.

use anyhow::Context;
use egress_common::manifest::{self, FileEntry, Manifest, SnapshotInfo, TableEntry};
use egress_store::Store;
use sha2::Digest;

use crate::catalog::{self, ResolvedTable};
use crate::config::Format;
use crate::descriptor;
use crate::failure::AttemptError;
use crate::parquet::TablePlan;
use crate::report::TableReport;
use crate::settings::Settings;

/// What the manifest records about the run as a whole.
pub(crate) struct ManifestParts<'a> {
    pub(crate) settings: &'a Settings,
    pub(crate) run_started: String,
    pub(crate) snapshot: SnapshotInfo,
    /// What shaped the values kept as PostgreSQL text (typed days).
    pub(crate) text_settings: Option<std::collections::BTreeMap<String, String>>,
}

pub(crate) fn build_manifest(
    run: ManifestParts<'_>,
    tables: &[ResolvedTable],
    reports: &[TableReport],
    plans: &[TablePlan],
) -> Manifest {
    let format = run.settings.format;
    let date = &run.settings.date;
    // One entry per object: a table pods shared has one per piece, in order.
    let entries = reports
        .iter()
        .filter_map(|report| {
            let at = tables
                .iter()
                .position(|t| t.requested.file_stem() == report.table)?;
            let (table, plan) = (&tables[at], &plans[at]);
            let stem = table.requested.file_stem();
            let file = match report.piece {
                Some(part) => part.file(&stem, format.extension()),
                None => format!("{stem}.{}", format.extension()),
            };
            Some(TableEntry {
                table: report.table.clone(),
                schema: table.schema.clone(),
                name: table.name.clone(),
                key: run.settings.output.key_for(&format!("{date}/{file}")),
                file,
                format: Some(format.name().to_string()),
                rows: report.rows,
                uncompressed_bytes: report.stats.uncompressed_bytes,
                compressed_bytes: report.stats.compressed_bytes,
                sha256: report.stats.compressed_sha256.clone(),
                uncompressed_sha256: report.stats.uncompressed_sha256.clone(),
                columns: manifest_columns(plan, format),
                primary_key: (!plan.primary_key.is_empty()).then(|| plan.primary_key.clone()),
                gzip_members: (format == Format::Csv).then_some(report.stats.gzip_members),
                chunks: Some(report.chunks as u64),
                part_sizes: report.committed.part_sizes.clone(),
                piece: report.piece,
            })
        })
        .collect();
    Manifest {
        format_version: manifest::FORMAT_VERSION,
        tool: "egress-dump".into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        date: date.clone(),
        run_started: run.run_started,
        run_finished: manifest::now_rfc3339(),
        snapshot: SnapshotInfo {
            exported_id: None,
            ..run.snapshot
        },
        compression_level: run.settings.compression_level,
        header: run.settings.header,
        tables: entries,
        descriptor: None,
        text_settings: run.text_settings,
    }
}

/// The manifest's columns: declared type, `NOT NULL`, and the type written.
fn manifest_columns(plan: &TablePlan, format: Format) -> Vec<catalog::Column> {
    plan.columns
        .iter()
        .map(|c| catalog::Column {
            name: c.name.clone(),
            type_name: c.type_name.clone(),
            not_null: Some(c.not_null),
            written_as: Some(match format {
                Format::Csv => "text".to_string(),
                Format::Parquet => c.kind.to_string(),
            }),
        })
        .collect()
}

/// Write the day's `datapackage.json`; what the manifest records of it.
pub(crate) async fn write_descriptor(
    store: &Store,
    manifest: &Manifest,
    plans: &[TablePlan],
    format: Format,
) -> anyhow::Result<FileEntry> {
    let value = descriptor::descriptor(manifest, plans, format);
    let body = serde_json::to_vec_pretty(&value).context("cannot encode the descriptor")?;
    let entry = FileEntry {
        file: descriptor::FILE_NAME.to_string(),
        bytes: body.len() as u64,
        sha256: hex::encode(sha2::Sha256::digest(&body)),
    };
    let key = egress_store::key::join(&manifest.date, descriptor::FILE_NAME);
    egress_common::day::put_json(store, &key, body).await?;
    Ok(entry)
}

/// The reports of every table, in the order listed (the manifest's order); a table the
/// pods shared has one report per piece, in piece order, and must have all of them.
pub(crate) fn in_listed_order(
    tables: &[ResolvedTable],
    reports: Vec<TableReport>,
) -> Result<Vec<TableReport>, AttemptError> {
    let mut ordered = Vec::with_capacity(reports.len());
    for table in tables {
        let name = table.requested.file_stem();
        let mut mine: Vec<&TableReport> = reports.iter().filter(|r| r.table == name).collect();
        mine.sort_by_key(|r| r.piece.map(|p| p.index));
        let expected = mine.first().and_then(|r| r.piece).map_or(1, |p| p.of) as usize;
        if mine.len() != expected {
            return Err(anyhow::anyhow!(
                "{} of the {expected} object(s) of table '{name}' were reported: run the Job again",
                mine.len()
            )
            .into());
        }
        ordered.extend(mine.into_iter().cloned());
    }
    Ok(ordered)
}
