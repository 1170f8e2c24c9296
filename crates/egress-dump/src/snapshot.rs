//! One consistent view of the database for a whole run: a `REPEATABLE READ READ ONLY`
//! transaction whose snapshot parallel workers import (`pg_export_snapshot()` /
//! `SET TRANSACTION SNAPSHOT`), and a description of it for the manifest.

use anyhow::anyhow;
pub use egress_common::manifest::SnapshotInfo;
use egress_common::Failure;
use tokio_postgres::Client;

/// Open the run's transaction on `client` and describe its snapshot; export it for
/// workers when `export` is set.
pub async fn begin(client: &Client, export: bool) -> Result<SnapshotInfo, Failure> {
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(|e| Failure::runtime(anyhow!("cannot start a read-only transaction: {e}")))?;
    // The first query fixes the snapshot; everything below sees the same one.
    let row = client
        .query_one(
            "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
                    txid_current_snapshot()::text, current_setting('server_version'), \
                    CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()::text \
                         ELSE pg_current_wal_lsn()::text END",
            &[],
        )
        .await
        .map_err(|e| Failure::runtime(anyhow!("cannot read the snapshot's position: {e}")))?;
    let exported_id = if export {
        let row = client
            .query_one("SELECT pg_export_snapshot()", &[])
            .await
            .map_err(|e| {
                Failure::runtime(anyhow!(
                    "cannot export the snapshot for parallel workers: {e}"
                ))
            })?;
        Some(row.get::<_, String>(0))
    } else {
        None
    };
    Ok(SnapshotInfo {
        taken_at: row.get(0),
        txid_snapshot: row.get(1),
        server_version: row.get(2),
        wal_lsn: row.get(3),
        exported_id,
    })
}

/// Make `worker` read from the exported snapshot `id`. The exporting transaction must
/// still be open; if it is gone PostgreSQL refuses, and so do we.
pub async fn import(worker: &Client, id: &str) -> Result<(), Failure> {
    // The id comes from pg_export_snapshot(): hex digits and dashes only; check anyway.
    if !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(Failure::runtime(anyhow!(
            "unexpected snapshot id from the server"
        )));
    }
    worker
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{id}'"
        ))
        .await
        .map_err(|e| {
            Failure::runtime(anyhow!(
                "a parallel worker could not import the run's snapshot ({}); the exporting connection was probably lost: run again",
                crate::run::describe_db_error(&e)
            ))
        })
}
