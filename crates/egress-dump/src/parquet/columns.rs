//! The catalog facts a typed dump needs: each column's type with domains resolved, its
//! `NOT NULL`, whether its values are mostly distinct, and the table's primary key.

use tokio_postgres::Client;

use super::types::{self, ColumnPlan, PgType};

/// A table's typed plan: its columns in `COPY` order and its primary key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablePlan {
    /// The columns in order (a plain table's `COPY` leaves its generated columns out; a
    /// query, for views and partitioned tables, keeps them).
    pub columns: Vec<ColumnPlan>,
    /// The primary key's columns in key order (empty without one).
    pub primary_key: Vec<String>,
}

/// The columns a `COPY` of the table prints, with their types.
const COLUMNS: &str = "SELECT attname::text, attnotnull, atttypid::bigint, atttypmod, \
       format_type(atttypid, atttypmod) \
     FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
     WHERE attrelid = $1::bigint::oid AND attnum > 0 AND NOT attisdropped \
       AND (a.attgenerated = '' OR c.relkind <> 'r') ORDER BY attnum";

const PRIMARY_KEY: &str = "SELECT a.attname::text FROM pg_index i \
     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
     WHERE i.indrelid = $1::bigint::oid AND i.indisprimary \
     ORDER BY array_position(i.indkey::int2[], a.attnum)";

/// Columns whose values nearly all differ: the only column of a unique index (without a
/// predicate), or over half the rows distinct by the planner's statistics (`n_distinct`
/// is a count when positive, minus the fraction of rows when negative).
const MOSTLY_DISTINCT: &str = "SELECT a.attname::text FROM pg_index i \
     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
     WHERE i.indrelid = $1::bigint::oid AND i.indisunique AND i.indnkeyatts = 1 \
       AND i.indpred IS NULL \
     UNION SELECT s.attname::text FROM pg_stats s \
     JOIN pg_class c ON c.relname = s.tablename \
     JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = s.schemaname \
     WHERE c.oid = $1::bigint::oid \
       AND (s.n_distinct < -0.5 OR (c.reltuples > 0 AND s.n_distinct > 0.5 * c.reltuples))";

const TYPE: &str = "SELECT typtype::text, typbasetype::bigint, typtypmod, typelem::bigint, \
     typcategory::text, typlen FROM pg_type WHERE oid = $1::bigint::oid";

/// The plan of the table `oid`.
pub async fn table_plan(client: &Client, oid: i64) -> Result<TablePlan, tokio_postgres::Error> {
    let mut columns = Vec::new();
    for row in client.query(COLUMNS, &[&oid]).await? {
        let (name, not_null): (String, bool) = (row.get(0), row.get(1));
        let pg = resolve(client, row.get(2), row.get(3)).await?;
        let mut plan = types::plan(&name, &pg, not_null);
        plan.type_name = row.get(4);
        columns.push(plan);
    }
    let distinct: Vec<String> = client
        .query(MOSTLY_DISTINCT, &[&oid])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for column in &mut columns {
        column.mostly_distinct = distinct.contains(&column.name);
    }
    let mut primary_key: Vec<String> = client
        .query(PRIMARY_KEY, &[&oid])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    // A key with a column the COPY leaves out (a generated one) is no key of the file.
    if !primary_key
        .iter()
        .all(|k| columns.iter().any(|c| &c.name == k))
    {
        primary_key.clear();
    }
    Ok(TablePlan {
        columns,
        primary_key,
    })
}

/// A type with its domains resolved, and its element type's when it is an array (a
/// column's modifier applies to its elements: `numeric(10,2)[]`).
async fn resolve(client: &Client, oid: i64, typmod: i32) -> Result<PgType, tokio_postgres::Error> {
    let (oid, typmod, is_enum, element) = base(client, oid, typmod).await?;
    let element = match element {
        Some(element) => {
            let (oid, typmod, is_enum, _) = base(client, element, typmod).await?;
            Some(Box::new(PgType {
                oid: oid as u32,
                typmod,
                is_enum,
                element: None,
            }))
        }
        None => None,
    };
    Ok(PgType {
        oid: oid as u32,
        typmod,
        is_enum,
        element,
    })
}

/// The base type a domain stands for: its OID, modifier, whether an enum, and its element
/// type if an array.
type Base = (i64, i32, bool, Option<i64>);

/// Follow domains to the base type.
async fn base(
    client: &Client,
    mut oid: i64,
    mut typmod: i32,
) -> Result<Base, tokio_postgres::Error> {
    // Domains nest at most as deep as someone declared them; 64 is far beyond any schema.
    for _ in 0..64 {
        let row = client.query_one(TYPE, &[&oid]).await?;
        let (typtype, basetype, base_typmod): (String, i64, i32) =
            (row.get(0), row.get(1), row.get(2));
        if typtype == "d" {
            oid = basetype;
            // A domain's own modifier (`CREATE DOMAIN d numeric(10,2)`) is the base's.
            typmod = if base_typmod >= 0 {
                base_typmod
            } else {
                typmod
            };
            continue;
        }
        let (element, category, len): (i64, String, i16) = (row.get(3), row.get(4), row.get(5));
        let array = category == "A" && element != 0 && len == -1;
        return Ok((oid, typmod, typtype == "e", array.then_some(element)));
    }
    Ok((oid, typmod, false, None))
}
