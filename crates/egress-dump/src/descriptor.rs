//! The day's standard descriptor, `datapackage.json`: a Frictionless Data Package (v1)
//! with a Table Schema per table, so generic tools read a day with its types. The
//! manifest remains the record of what was written; this is its view for readers.

use serde_json::{json, Value};

use egress_common::manifest::{Manifest, TableEntry};

use crate::config::Format;
use crate::parquet::types::Kind;
use crate::parquet::TablePlan;

/// The descriptor's file name inside the date folder.
pub const FILE_NAME: &str = "datapackage.json";

/// The descriptor of the day `manifest` describes, the tables' plans in the same order. A
/// table written as several objects (its entries follow each other) is one multipart
/// resource: its `path` lists them in order, as the Data Package spec reads them.
pub fn descriptor(manifest: &Manifest, plans: &[TablePlan], format: Format) -> Value {
    let mut entries = manifest.tables.iter().peekable();
    let mut resources = Vec::new();
    for plan in plans {
        let Some(first) = entries.next() else { break };
        let mut objects = vec![first];
        while let Some(next) = entries.next_if(|e| e.table == first.table) {
            objects.push(next);
        }
        resources.push(resource(&objects, plan, format, manifest.header));
    }
    json!({
        "profile": "tabular-data-package",
        "name": format!("egress-{}", manifest.date),
        "created": manifest.run_finished,
        "x-egress-snapshot": manifest.snapshot.taken_at,
        "resources": resources,
    })
}

fn resource(objects: &[&TableEntry], plan: &TablePlan, format: Format, header: bool) -> Value {
    let fields: Vec<Value> = plan.columns.iter().map(|c| field(c, format)).collect();
    let mut schema = json!({ "fields": fields });
    if !plan.primary_key.is_empty() {
        schema["primaryKey"] = json!(plan.primary_key);
    }
    let table = objects[0];
    let path = match objects {
        [one] => json!(one.file),
        many => json!(many.iter().map(|o| o.file.as_str()).collect::<Vec<_>>()),
    };
    let mut resource = json!({
        "name": resource_name(&table.table),
        "path": path,
        "profile": "tabular-data-resource",
        "title": format!("{}.{}", table.schema, table.name),
        "bytes": objects.iter().map(|o| o.compressed_bytes).sum::<u64>(),
        "schema": schema,
    });
    match format {
        Format::Csv => {
            // COPY's CSV: a NULL is an empty unquoted field, an empty string is `""`; a
            // reader that drops quoting sees both as missing.
            resource["schema"]["missingValues"] = json!([""]);
            resource["format"] = json!("csv");
            resource["mediatype"] = json!("text/csv");
            resource["encoding"] = json!("utf-8");
            resource["compression"] = json!("gz");
            resource["dialect"] = json!({
                "delimiter": ",",
                "quoteChar": "\"",
                "doubleQuote": true,
                "lineTerminator": "\n",
                "header": header,
            });
        }
        Format::Parquet => {
            // NULL is NULL in Parquet: an empty string is a value (the spec's default,
            // `[""]`, would read it as missing).
            resource["schema"]["missingValues"] = json!([]);
            resource["format"] = json!("parquet");
            resource["mediatype"] = json!("application/vnd.apache.parquet");
        }
    }
    resource
}

/// A resource name as the spec allows it: lower case, digits, `-`, `_`, `.`.
fn resource_name(file: &str) -> String {
    let stem = file
        .strip_suffix(".csv.gz")
        .or_else(|| file.strip_suffix(".parquet"))
        .unwrap_or(file);
    stem.chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-' | '_' | '.') => c,
            _ => '_',
        })
        .collect()
}

fn field(column: &crate::parquet::types::ColumnPlan, format: Format) -> Value {
    let (kind, format_hint) = table_schema_type(&column.kind, format);
    let mut field = json!({
        "name": column.name,
        "type": kind,
        "description": format!("PostgreSQL {}", column.type_name),
    });
    if let Some(hint) = format_hint {
        field["format"] = json!(hint);
    }
    if matches!(column.kind, Kind::Bool) && format == Format::Csv {
        field["trueValues"] = json!(["t"]);
        field["falseValues"] = json!(["f"]);
    }
    if column.not_null {
        field["constraints"] = json!({ "required": true });
    }
    field
}

/// The Table Schema type (and format) of a column: what its values are, as written.
fn table_schema_type(kind: &Kind, format: Format) -> (&'static str, Option<&'static str>) {
    let parquet = format == Format::Parquet;
    match kind {
        Kind::Bool => ("boolean", None),
        Kind::Int16 | Kind::Int32 | Kind::Int64 => ("integer", None),
        Kind::Float32 | Kind::Float64 | Kind::Decimal { .. } => ("number", None),
        Kind::Uuid => ("string", Some("uuid")),
        // PostgreSQL's ISO output ("2024-01-31 12:00:00.5+00"), which "any" parses.
        Kind::Date => ("date", Some("any")),
        Kind::Timestamp | Kind::TimestampTz => ("datetime", Some("any")),
        Kind::Time => ("time", Some("any")),
        Kind::TimeTz | Kind::Interval if parquet => ("object", None),
        Kind::List(_) if parquet => ("array", None),
        // Text, bytea's hex, JSON, and PostgreSQL's own text of everything else.
        _ => ("string", None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_names_follow_the_spec() {
        assert_eq!(resource_name("Sales.Orders-2.csv.gz"), "sales.orders-2");
        assert_eq!(resource_name("é t.parquet"), "__t");
    }
}
