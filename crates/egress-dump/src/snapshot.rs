//! One consistent view of the database for a whole run: a `REPEATABLE READ READ ONLY`
//! transaction whose snapshot parallel workers import (`pg_export_snapshot()` /
//! `SET TRANSACTION SNAPSHOT`), and a description of it for the manifest.

pub use egress_common::manifest::SnapshotInfo;
use tokio_postgres::Client;

use crate::pg::DbError;

/// Open the run's transaction on `client`. Its snapshot is not taken yet: the tables are
/// locked first ([`crate::locks`]), then [`take`] takes it.
pub async fn open(client: &Client) -> Result<(), DbError> {
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(|e| DbError::new("cannot start a read-only transaction", &e))
}

/// Take the snapshot of the transaction [`open`] began, and describe it; export it for
/// workers when `export` is set.
pub async fn take(client: &Client, export: bool) -> Result<SnapshotInfo, DbError> {
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
        .map_err(|e| DbError::new("cannot read the snapshot's position", &e))?;
    let exported_id = if export {
        let row = client
            .query_one("SELECT pg_export_snapshot()", &[])
            .await
            .map_err(|e| DbError::new("cannot export the snapshot for parallel workers", &e))?;
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
/// still be open; if it is gone PostgreSQL refuses, and so do we. The worker then locks
/// the tables itself ([`crate::locks::in_worker`]).
pub async fn import(worker: &Client, id: &str) -> Result<(), DbError> {
    // The id comes from pg_export_snapshot(): hex digits and dashes only; check anyway.
    let id: String = id
        .chars()
        .filter(|c| c.is_ascii_hexdigit() || *c == '-')
        .collect();
    worker
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{id}'"
        ))
        .await
        .map_err(|e| {
            DbError::new(
                "a parallel worker could not import the run's snapshot (the exporting connection was probably lost: run again)",
                &e,
            )
        })
}
