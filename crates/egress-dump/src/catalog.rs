//! Finding each listed table in the catalog before anything is streamed.

use std::sync::Arc;

use tokio_postgres::Client;

use crate::parquet::types::Read;
use crate::parquet::TablePlan;
use crate::table_list::{quote_ident, Ident, TableRef};

/// A table that exists and can be read.
#[derive(Debug, Clone)]
pub struct ResolvedTable {
    /// As the user listed it.
    pub requested: TableRef,
    /// Schema it was found in.
    pub schema: String,
    /// Its exact name.
    pub name: String,
    /// `pg_class.relkind`: `r` table, `p` partitioned, `v` view, `m` materialized view, `f` foreign.
    pub kind: char,
    /// Row estimate from `pg_class.reltuples` (-1 when never analysed).
    pub estimated_rows: i64,
    /// On-disk size: estimated from the statistics' page counts when looked up, measured
    /// (heap, TOAST and indexes) by [`measure`].
    pub estimated_bytes: i64,
    /// `pg_class.oid`, for looking up columns.
    pub oid: i64,
    /// Set when this process writes one of the table's objects in a shared day.
    pub piece: Option<Piece>,
}

pub use egress_common::day::shared::Piece;
pub use egress_common::manifest::Column;

/// Replace each table's size estimate with its size on disk (heap and TOAST,
/// `pg_table_size`), which the parallel dump orders its tables by. Call it inside a
/// transaction, once the tables are locked (or in a dry run). Indexes are left out:
/// measuring them would wait for a `REINDEX` the table's own lock does not keep out. A
/// measure that would wait (a `REINDEX` of the TOAST index) keeps the estimate: each runs
/// in a savepoint with a short lock timeout, rolled back after, so a timed-out measure
/// neither aborts the transaction nor leaves its timeout behind.
pub async fn measure(
    client: &Client,
    tables: &mut [ResolvedTable],
) -> Result<(), tokio_postgres::Error> {
    for table in tables.iter_mut() {
        client
            .batch_execute("SAVEPOINT egress_measure; SET LOCAL lock_timeout = '100ms'")
            .await?;
        let row = client
            .query_one("SELECT pg_table_size($1::bigint::oid)", &[&table.oid])
            .await;
        client
            .batch_execute("ROLLBACK TO SAVEPOINT egress_measure; RELEASE SAVEPOINT egress_measure")
            .await?;
        match row {
            Ok(row) => table.estimated_bytes = row.get(0),
            Err(e)
                if e.as_db_error()
                    .is_some_and(|d| d.code().code() == LOCK_NOT_AVAILABLE) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// SQLSTATE `lock_not_available`.
const LOCK_NOT_AVAILABLE: &str = "55P03";

/// `tables` looked up again by the exact names found before (once locked, the names
/// cannot change hands), inside the run's transaction: each as it is now, or `None` where
/// that name is gone. One exact name each, so no lookup can fail and abort the transaction.
pub async fn again(
    client: &Client,
    tables: &[ResolvedTable],
) -> Result<Vec<Option<ResolvedTable>>, tokio_postgres::Error> {
    let mut out = Vec::with_capacity(tables.len());
    for table in tables {
        let exact = format!(
            "{}.{}",
            quote_ident(&table.schema),
            quote_ident(&table.name)
        );
        let rows = client.query(LOOKUP, &[&exact]).await?;
        out.push(rows.first().map(|row| from_row(row, &table.requested)));
    }
    Ok(out)
}

/// What the database says about a table's size: what `--split-larger-than` weighs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableSize {
    /// Heap plus TOAST (`pg_table_size`).
    pub bytes: u64,
    /// Heap pages (`pg_relation_size / block_size`), counted inside the run's snapshot.
    pub pages: u64,
    /// `block_size`.
    pub block_size: u64,
}

/// Heap plus TOAST, and heap pages, of a table: what `--split-larger-than` weighs.
pub async fn table_size(client: &Client, oid: i64) -> Result<TableSize, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT pg_table_size($1::bigint::oid), pg_relation_size($1::bigint::oid), \
                    current_setting('block_size')::bigint",
            &[&oid],
        )
        .await?;
    let (bytes, heap, block): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    let block_size = block.max(1) as u64;
    Ok(TableSize {
        bytes: bytes.max(0) as u64,
        pages: heap.max(0) as u64 / block_size,
        block_size,
    })
}

/// Why a listed table cannot be dumped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// No such table or view (also what an injection attempt looks like).
    Missing,
    /// It exists but the user may not SELECT from it.
    NotReadable,
    /// It is not something COPY can read (a sequence, an index...).
    NotATable(char),
}

impl ResolvedTable {
    /// A plain table `schema.name` (listed as `x`) as unit tests need one: no statistics,
    /// no oid.
    #[cfg(test)]
    pub(crate) fn plain(schema: &str, name: &str) -> ResolvedTable {
        ResolvedTable {
            requested: crate::table_list::parse_list("x").unwrap().remove(0),
            schema: schema.into(),
            name: name.into(),
            kind: 'r',
            estimated_rows: 0,
            estimated_bytes: 0,
            oid: 0,
            piece: None,
        }
    }

    /// The COPY statement for `select`, the manifest's columns named one by one, so the
    /// rows read have exactly the fields the manifest lists (a column added since would
    /// not be read; one dropped would fail the COPY). Identifiers are always quoted. Plain
    /// tables are copied directly unless a column is cast, views and partitioned tables
    /// through a query (COPY refuses them otherwise).
    pub fn copy_sql(&self, select: &Select) -> String {
        let name = self.quoted();
        let options = select.options(true);
        let list = select.items.join(", ");
        let from = self.rows_of();
        match (self.kind == 'r' && !select.cast, list.is_empty()) {
            (true, true) => format!("COPY {name} TO STDOUT {options}"),
            (true, false) => format!("COPY {name} ({list}) TO STDOUT {options}"),
            (false, true) => format!("COPY (SELECT * FROM {from}) TO STDOUT {options}"),
            (false, false) => format!("COPY (SELECT {list} FROM {from}) TO STDOUT {options}"),
        }
    }

    /// `"schema"."name"`.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    /// What a query reads for this table's rows: a table's (or foreign table's) own rows
    /// only, as `COPY table TO` prints them: without `ONLY` a query also reads the rows of
    /// tables that inherit from it (a parent with a child of as many rows was written
    /// twice over, manifest and all). A partitioned table's rows are its partitions'.
    pub fn rows_of(&self) -> String {
        match self.kind {
            'r' | 'f' => format!("ONLY {}", self.quoted()),
            _ => self.quoted(),
        }
    }
}

/// How a table is read: its select list and the `COPY`'s format.
#[derive(Debug, Clone)]
pub struct Select {
    /// The select list: each column's quoted name, cast where it is read as its text.
    pub items: Vec<String>,
    /// True when an item is more than a column's name.
    pub cast: bool,
    /// How the rows are sent.
    pub wire: Wire,
}

/// The `COPY`'s format.
#[derive(Debug, Clone)]
pub enum Wire {
    /// CSV, with a header line or not.
    Csv {
        /// A header line first.
        header: bool,
    },
    /// PostgreSQL's binary format, decoded by the table's typed plan.
    Binary(Arc<TablePlan>),
}

impl Select {
    /// The columns `names` as CSV.
    pub fn csv(names: &[String], header: bool) -> Select {
        Select {
            items: names.iter().map(|c| quote_ident(c)).collect(),
            cast: false,
            wire: Wire::Csv { header },
        }
    }

    /// The columns of `plan` in binary, each cast as the plan reads it.
    pub fn binary(plan: Arc<TablePlan>) -> Select {
        Select {
            items: plan
                .columns
                .iter()
                .map(|c| c.select(&quote_ident(&c.name)))
                .collect(),
            cast: plan.columns.iter().any(|c| c.read != Read::Binary),
            wire: Wire::Binary(plan),
        }
    }

    /// The `COPY` options; a CSV header only in the `first` chunk.
    pub fn options(&self, first: bool) -> &'static str {
        match self.wire {
            Wire::Csv { header: true } if first => "(FORMAT csv, HEADER)",
            Wire::Csv { .. } => "(FORMAT csv)",
            Wire::Binary(_) => "(FORMAT binary)",
        }
    }

    /// True for a binary COPY (a typed day).
    pub fn is_binary(&self) -> bool {
        !matches!(self.wire, Wire::Csv { .. })
    }

    /// True when the `first` chunk's first line is a header, not a row.
    pub fn header(&self, first: bool) -> bool {
        matches!(self.wire, Wire::Csv { header: true }) && first
    }
}

/// The lookup takes no lock on the table (`pg_total_relation_size` would, and wait behind
/// a migration's before the dump's own lock could say so): its size is estimated from the
/// statistics' page counts, heap plus TOAST.
const LOOKUP: &str = "SELECT n.nspname::text, c.relname::text, c.relkind::text, \
       has_table_privilege(c.oid, 'SELECT'), c.reltuples::bigint, \
       ((c.relpages::bigint + coalesce(t.relpages, 0)) * current_setting('block_size')::bigint), \
       c.oid::bigint \
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     LEFT JOIN pg_class t ON t.oid = c.reltoastrelid \
     WHERE c.oid = to_regclass($1)";

/// SQLSTATEs `to_regclass` raises for a name that cannot be ours to read: a schema we
/// may not use, an invalid name, a reference to another database. Anything else (a lock
/// timeout, a lost connection) is an error, never "does not exist".
const NOT_FOUND_STATES: &[&str] = &["42501", "3F000", "42601", "42602", "0A000"];

/// Look `table` up. Unquoted names match exactly first, then folded to lower case as
/// PostgreSQL folds unquoted SQL identifiers (so `TABLES=Users` still finds `users`).
pub async fn resolve(
    client: &Client,
    table: &TableRef,
) -> Result<Result<ResolvedTable, Problem>, tokio_postgres::Error> {
    for candidate in candidates(table) {
        // to_regclass raises for a schema we may not use; treat that like "not found".
        let rows = match client.query(LOOKUP, &[&candidate]).await {
            Ok(rows) => rows,
            Err(e)
                if e.as_db_error()
                    .is_some_and(|d| NOT_FOUND_STATES.contains(&d.code().code())) =>
            {
                continue
            }
            Err(e) => return Err(e),
        };
        let Some(row) = rows.first() else { continue };
        let kind: String = row.get(2);
        let kind = kind.chars().next().unwrap_or('?');
        let readable: bool = row.get(3);
        if !matches!(kind, 'r' | 'p' | 'v' | 'm' | 'f') {
            return Ok(Err(Problem::NotATable(kind)));
        }
        if !readable {
            return Ok(Err(Problem::NotReadable));
        }
        return Ok(Ok(from_row(row, table)));
    }
    Ok(Err(Problem::Missing))
}

/// The table a lookup's row describes, as `requested`.
fn from_row(row: &tokio_postgres::Row, requested: &TableRef) -> ResolvedTable {
    let kind: String = row.get(2);
    ResolvedTable {
        requested: requested.clone(),
        schema: row.get(0),
        name: row.get(1),
        kind: kind.chars().next().unwrap_or('?'),
        estimated_rows: row.get(4),
        estimated_bytes: row.get(5),
        oid: row.get(6),
        piece: None,
    }
}

/// The quoted, qualified names to try, most exact first.
fn candidates(table: &TableRef) -> Vec<String> {
    let variants = |ident: &Ident| -> Vec<String> {
        let lower = ident.text.to_lowercase();
        if ident.quoted || lower == ident.text {
            vec![ident.text.clone()]
        } else {
            vec![ident.text.clone(), lower]
        }
    };
    let names = variants(&table.name);
    let mut out = Vec::new();
    match &table.schema {
        None => out.extend(names.iter().map(|n| quote_ident(n))),
        Some(schema) => {
            for s in variants(schema) {
                for n in &names {
                    out.push(format!("{}.{}", quote_ident(&s), quote_ident(n)));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table_list::parse_list;

    #[test]
    fn candidates_try_exact_then_folded() {
        let t = &parse_list("Public.Users").unwrap()[0];
        assert_eq!(
            candidates(t),
            [
                r#""Public"."Users""#,
                r#""Public"."users""#,
                r#""public"."Users""#,
                r#""public"."users""#
            ]
        );
        let t = &parse_list(r#""Mixed""#).unwrap()[0];
        assert_eq!(candidates(t), [r#""Mixed""#]);
    }

    #[test]
    fn copy_sql_quotes_everything_and_casts_what_is_read_as_text() {
        use crate::parquet::types::{plan, PgType};
        let t = ResolvedTable::plain("s", "a\"b");
        let columns = ["id".to_string(), "x\"y".to_string()];
        assert_eq!(
            t.copy_sql(&Select::csv(&columns, false)),
            r#"COPY "s"."a""b" ("id", "x""y") TO STDOUT (FORMAT csv)"#
        );
        assert_eq!(
            t.copy_sql(&Select::csv(&[], false)),
            r#"COPY "s"."a""b" TO STDOUT (FORMAT csv)"#
        );
        let v = ResolvedTable {
            kind: 'v',
            ..t.clone()
        };
        assert_eq!(
            v.copy_sql(&Select::csv(&columns, true)),
            r#"COPY (SELECT "id", "x""y" FROM "s"."a""b") TO STDOUT (FORMAT csv, HEADER)"#
        );
        let inet = PgType {
            oid: 869,
            typmod: -1,
            is_enum: false,
            element: None,
        };
        let int = PgType {
            oid: 23,
            ..inet.clone()
        };
        let plan = TablePlan {
            columns: vec![plan("id", &int, true), plan("ip", &inet, false)],
            primary_key: vec![],
        };
        assert_eq!(
            t.copy_sql(&Select::binary(Arc::new(plan))),
            r#"COPY (SELECT "id", CASE WHEN pg_catalog.num_nulls("ip") = 0 THEN pg_catalog.format('%s', "ip") END FROM ONLY "s"."a""b") TO STDOUT (FORMAT binary)"#
        );
        // A partitioned table's rows are its partitions': no ONLY.
        let p = ResolvedTable {
            kind: 'p',
            ..t.clone()
        };
        assert_eq!(
            p.copy_sql(&Select::csv(&[], false)),
            r#"COPY (SELECT * FROM "s"."a""b") TO STDOUT (FORMAT csv)"#
        );
    }
}
