//! Invariant 5, on the output's Iceberg tables (the mirror commits every day with
//! `--iceberg`): in a table's current version, as a reader finds it by the hint or by
//! probing for the newest version, every day the table holds is a complete day at the
//! output, and the table's files for it are exactly the day's objects of that table, with
//! their sizes (no file that is gone or other bytes, no day twice, no piece missing).
//! Once every run ended, every complete day is in each of its tables.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use egress_common::manifest::Manifest;
use egress_sync::iceberg::{self as tables_of, storage::Root};
use iceberg::spec::{FormatVersion, Manifest as AvroManifest, ManifestList, TableMetadata};

use crate::world::World;

/// The tables' namespace folder in the output.
const TABLES: &str = "_iceberg/egress/";

/// The output's root as the tables name it.
pub fn root() -> Root {
    Root::of(&egress_common::Location::Local("out".into()))
}

/// One table's files, by day: (object key, size).
pub type Days = BTreeMap<i32, BTreeSet<(String, u64)>>;

/// The output's objects as they are now: key -> bytes.
fn output_objects(world: &World) -> BTreeMap<String, Bytes> {
    let objects = world.output.objects().into_iter();
    objects.map(|(key, bytes, _)| (key, bytes)).collect()
}

/// Invariant 5's problems in the output as it is now.
pub fn problems(world: &World) -> Vec<String> {
    let objects = output_objects(world);
    let mut problems = Vec::new();
    for (table, versions) in versions(&objects) {
        for version in versions {
            let at = format!("table {table} v{version}");
            match files(world, &objects, &table, version) {
                Ok(days) => problems.extend(check_days(&objects, &table, &days, &at)),
                Err(e) => problems.push(format!("I5: {at} cannot be read: {e}")),
            }
        }
    }
    problems
}

/// Each table's versions a reader may start from: the newest file, and the hint's.
fn versions(objects: &BTreeMap<String, Bytes>) -> BTreeMap<String, BTreeSet<u64>> {
    let mut found: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    let mut newest: BTreeMap<String, u64> = BTreeMap::new();
    for (key, body) in objects.iter().filter(|(k, _)| k.starts_with(TABLES)) {
        let Some((table, file)) = key[TABLES.len()..].split_once("/metadata/") else {
            continue;
        };
        if file == "version-hint.text" {
            if let Some(n) = std::str::from_utf8(body).ok().and_then(|t| t.parse().ok()) {
                found.entry(table.to_string()).or_default().insert(n);
            }
        }
        let version = file
            .strip_prefix('v')
            .and_then(|f| f.strip_suffix(".metadata.json"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(n) = version {
            let max = newest.entry(table.to_string()).or_default();
            *max = (*max).max(n);
        }
    }
    for (table, n) in newest {
        found.entry(table).or_default().insert(n);
    }
    found
}

/// The live files of `table`'s version `n`, by day (read once per version).
fn files(
    world: &World,
    objects: &BTreeMap<String, Bytes>,
    table: &str,
    n: u64,
) -> Result<Days, String> {
    let key = format!("{TABLES}{table}/metadata/v{n}.metadata.json");
    let Some(bytes) = objects.get(&key) else {
        return Err(format!("{key} is missing (the hint names it)"));
    };
    if let Some(days) = crate::world::lock(&world.table_versions).get(bytes.as_ref()) {
        return Ok(days.clone());
    }
    let days = read_files(objects, bytes)?;
    crate::world::lock(&world.table_versions).insert(bytes.to_vec(), days.clone());
    Ok(days)
}

/// The live files of the table whose metadata file is `bytes`, by day.
fn read_files(objects: &BTreeMap<String, Bytes>, bytes: &Bytes) -> Result<Days, String> {
    let root = root();
    let get = |uri: &str| -> Result<&Bytes, String> {
        let key = root
            .key(uri)
            .ok_or_else(|| format!("{uri} is outside the output"))?;
        objects.get(key).ok_or_else(|| format!("{uri} is missing"))
    };
    let metadata: TableMetadata = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let mut days = Days::new();
    let Some(snapshot) = metadata.current_snapshot() else {
        return Ok(days);
    };
    let list = ManifestList::parse_with_version(get(snapshot.manifest_list())?, FormatVersion::V2)
        .map_err(|e| e.to_string())?;
    for manifest in list.entries() {
        let parsed =
            AvroManifest::parse_avro(get(&manifest.manifest_path)?).map_err(|e| e.to_string())?;
        for entry in parsed.entries().iter().filter(|e| e.is_alive()) {
            let file = entry.data_file();
            let day = match file.partition().fields().first() {
                Some(Some(iceberg::spec::Literal::Primitive(
                    iceberg::spec::PrimitiveLiteral::Int(d),
                ))) => *d,
                _ => return Err(format!("{} has no day", file.file_path())),
            };
            let key = root
                .key(file.file_path())
                .ok_or_else(|| format!("{} is outside the output", file.file_path()))?;
            days.entry(day)
                .or_default()
                .insert((key.to_string(), file.file_size_in_bytes()));
        }
    }
    Ok(days)
}

/// Each day a table holds is complete at the output, its files exactly the day's objects.
fn check_days(
    objects: &BTreeMap<String, Bytes>,
    table: &str,
    days: &Days,
    at: &str,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (day, files) in days {
        let date = date_of(*day);
        let Some(manifest) = output_manifest(objects, &date) else {
            problems.push(format!(
                "I5: {at} holds day {date}, which is not complete at the output"
            ));
            continue;
        };
        let want = day_files(&manifest, table);
        if &want != files {
            problems.push(format!(
                "I5: {at} holds {files:?} for day {date}; its manifest lists {want:?}"
            ));
        }
        for (key, size) in files {
            if objects.get(key).map(|b| b.len() as u64) != Some(*size) {
                problems.push(format!(
                    "I5: {at} refers to {key} ({size} bytes), which the output does not hold so"
                ));
            }
        }
    }
    problems
}

/// The day's manifest at the output, if it is there and readable.
fn output_manifest(objects: &BTreeMap<String, Bytes>, date: &str) -> Option<Manifest> {
    let bytes = objects.get(&egress_common::manifest::key_in(date))?;
    Manifest::parse(bytes).ok()
}

/// What a day's manifest lists for `table`: (key, size) of each of its objects.
fn day_files(manifest: &Manifest, table: &str) -> BTreeSet<(String, u64)> {
    manifest
        .tables
        .iter()
        .filter(|t| tables_of::table_name(t) == table)
        .map(|t| (format!("{}/{}", manifest.date, t.file), t.compressed_bytes))
        .collect()
}

/// `YYYY-MM-DD` of a day number.
fn date_of(day: i32) -> String {
    iceberg::spec::Datum::date(day).to_string()
}

/// Liveness: once every run ended, every complete day at the output is in each of its
/// tables, exactly.
pub fn at_rest(world: &World, dates: &[String]) -> Vec<String> {
    let objects = output_objects(world);
    let tables = versions(&objects);
    let mut problems = Vec::new();
    for date in dates {
        let Some(manifest) = output_manifest(&objects, date) else {
            continue;
        };
        let names: BTreeSet<String> = manifest.tables.iter().map(tables_of::table_name).collect();
        for table in names {
            let newest = tables.get(&table).and_then(|v| v.last().copied());
            let held = newest
                .and_then(|n| files(world, &objects, &table, n).ok())
                .and_then(|days| days.into_iter().find(|(d, _)| date_of(*d) == *date))
                .map(|(_, files)| files);
            if held != Some(day_files(&manifest, &table)) {
                problems.push(format!(
                    "liveness: day {date} is complete at the output but not in Iceberg table {table} after the last mirror"
                ));
            }
        }
    }
    problems
}
