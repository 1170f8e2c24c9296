//! The Iceberg SQL catalog in PostgreSQL: the tables pyiceberg's `SqlCatalog`, Spark's
//! `JdbcCatalog` and Trino's `iceberg.catalog.type=jdbc` share. A table's row holds the
//! URI of its current metadata file; a commit swaps it only while it still holds the one
//! the commit started from.

use tokio_postgres::Client;

use super::commit::TableRef;

/// The catalog's tables, as pyiceberg creates them (Java's JDBC catalog adds
/// `iceberg_type`, NULL meaning a table: created here too, so both read the same rows).
/// Under a transaction-scoped advisory lock: two committers starting together would
/// otherwise race in `CREATE TABLE IF NOT EXISTS` (measured: one failed on
/// `pg_type_typname_nsp_index`).
const SCHEMA: &str = "
BEGIN;
SELECT pg_advisory_xact_lock(7361620155);
CREATE TABLE IF NOT EXISTS iceberg_tables (
    catalog_name VARCHAR(255) NOT NULL,
    table_namespace VARCHAR(255) NOT NULL,
    table_name VARCHAR(255) NOT NULL,
    metadata_location VARCHAR(1000),
    previous_metadata_location VARCHAR(1000),
    iceberg_type VARCHAR(5),
    PRIMARY KEY (catalog_name, table_namespace, table_name)
);
-- A catalog pyiceberg (or Java's JDBC catalog, schema V0) created has no iceberg_type:
-- added as Java's own V0 to V1 upgrade adds it.
ALTER TABLE iceberg_tables ADD COLUMN IF NOT EXISTS iceberg_type VARCHAR(5);
CREATE TABLE IF NOT EXISTS iceberg_namespace_properties (
    catalog_name VARCHAR(255) NOT NULL,
    namespace VARCHAR(255) NOT NULL,
    property_key VARCHAR(255) NOT NULL,
    property_value VARCHAR(1000),
    PRIMARY KEY (catalog_name, namespace, property_key)
);
COMMIT;";

/// A connection to the catalog's database, and the catalog's name in it.
pub struct SqlCatalog {
    client: Client,
    name: String,
}

impl std::fmt::Debug for SqlCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SqlCatalog({})", self.name)
    }
}

/// A catalog error, its connection string never in it.
fn sql_error(what: &str, e: tokio_postgres::Error) -> iceberg::Error {
    let detail = match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => e.to_string(),
    };
    iceberg::Error::new(
        iceberg::ErrorKind::Unexpected,
        format!("the Iceberg SQL catalog: {what}: {detail}"),
    )
}

impl SqlCatalog {
    /// Connect to the catalog at `url` (a `postgresql://` connection string) and open
    /// catalog `name` there. The connection is not encrypted: `sslmode=require` is
    /// refused in one line, and a catalog reached otherwise is warned of.
    pub async fn connect(
        url: &egress_store::Secret,
        name: &str,
        namespace: &str,
    ) -> anyhow::Result<SqlCatalog> {
        let config: tokio_postgres::Config = url.expose().parse().map_err(|e| {
            anyhow::anyhow!("--iceberg-catalog is not a PostgreSQL connection string ({e}): write postgresql://user:password@host:5432/database")
        })?;
        if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
            anyhow::bail!(egress_common::ConfigError::new(
                "--iceberg-catalog asks for sslmode=require, but egress-sync talks to its catalog without TLS: reach the catalog inside the cluster with sslmode=disable"
            ));
        }
        tracing::warn!(
            "the Iceberg SQL catalog's connection is not encrypted (no TLS): keep the catalog's database inside a trusted network"
        );
        let (client, connection) = config.connect(tokio_postgres::NoTls).await.map_err(|e| {
            anyhow::anyhow!(
                "cannot connect to the Iceberg SQL catalog: {}",
                e.as_db_error()
                    .map_or_else(|| e.to_string(), |d| d.message().to_string())
            )
        })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!("the Iceberg SQL catalog's connection ended: {e}");
            }
        });
        Ok(Self::open(client, name, namespace).await?)
    }

    /// The catalog `name` in the database `client` is connected to: its tables created if
    /// missing, and `namespace` recorded (pyiceberg lists a namespace by its properties).
    pub async fn open(client: Client, name: &str, namespace: &str) -> iceberg::Result<SqlCatalog> {
        client
            .batch_execute(SCHEMA)
            .await
            .map_err(|e| sql_error("creating its tables", e))?;
        client
            .execute(
                "INSERT INTO iceberg_namespace_properties VALUES ($1, $2, 'exists', 'true') ON CONFLICT DO NOTHING",
                &[&name, &namespace],
            )
            .await
            .map_err(|e| sql_error("recording the namespace", e))?;
        Ok(SqlCatalog {
            client,
            name: name.to_string(),
        })
    }

    /// The table's current metadata file, if it has one.
    pub async fn location(&self, table: &TableRef) -> iceberg::Result<Option<String>> {
        let row = self
            .client
            .query_opt(
                "SELECT metadata_location FROM iceberg_tables WHERE catalog_name = $1 AND table_namespace = $2 AND table_name = $3",
                &[&self.name, &table.namespace, &table.name],
            )
            .await
            .map_err(|e| sql_error("reading a table's row", e))?;
        Ok(row.and_then(|r| r.get::<_, Option<String>>(0)))
    }

    /// Point the table at `new` if it still points at `old` (`None`: the table is new);
    /// false when another committer moved it first.
    pub async fn swap(
        &self,
        table: &TableRef,
        old: Option<&str>,
        new: &str,
    ) -> iceberg::Result<bool> {
        let changed = match old {
            None => self
                .client
                .execute(
                    "INSERT INTO iceberg_tables (catalog_name, table_namespace, table_name, metadata_location, previous_metadata_location, iceberg_type) VALUES ($1, $2, $3, $4, NULL, 'TABLE') ON CONFLICT DO NOTHING",
                    &[&self.name, &table.namespace, &table.name, &new],
                )
                .await
                .map_err(|e| sql_error("creating a table's row", e))?,
            Some(old) => self
                .client
                .execute(
                    "UPDATE iceberg_tables SET metadata_location = $4, previous_metadata_location = $5 WHERE catalog_name = $1 AND table_namespace = $2 AND table_name = $3 AND metadata_location = $5",
                    &[&self.name, &table.namespace, &table.name, &new, &old],
                )
                .await
                .map_err(|e| sql_error("swapping a table's metadata location", e))?,
        };
        Ok(changed == 1)
    }
}
