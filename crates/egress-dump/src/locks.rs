//! Locking the listed tables with the snapshot, as pg_dump does, so that a day is exactly
//! one snapshot of them: `TRUNCATE`, a table rewrite, `ALTER TABLE` or a rename-swap of a
//! table not yet read would otherwise finish at once and leave the snapshot looking at an
//! empty table, a changed one, or another one.
//!
//! The order matters. `LOCK TABLE` does not take a snapshot (PostgreSQL freezes a
//! repeatable-read snapshot at the first query, and LOCK is not one), so the coordinator
//! locks every table *before* its first query: whatever committed before the locks is in
//! the snapshot, and nothing that conflicts can commit after (measured on PostgreSQL 15: a
//! row committed between the LOCK and the first SELECT is seen). Locking a view locks its
//! base tables, and a partitioned table its partitions, recursively. Materialized views
//! and foreign tables cannot be locked that way; they are locked by a query right after
//! the snapshot, and [`confirm`] then checks that no listed relation was rewritten in
//! between (its `relfilenode` in the snapshot is still the current one).
//!
//! Workers that import the snapshot lock the same tables with `NOWAIT`: the coordinator
//! holds them, so a worker's lock can only wait for a session queued for an exclusive
//! lock, which itself waits for the coordinator: a wait that would never end.

use std::collections::HashSet;
use std::time::Duration;

use tokio_postgres::Client;

use crate::catalog::ResolvedTable;
use crate::pg::{DbError, DbErrorKind, Session};
use crate::table_list::quote_ident;

/// SQLSTATE `lock_not_available`: a lock timeout or a `NOWAIT` lock that would wait.
const LOCK_NOT_AVAILABLE: &str = "55P03";

/// True for relations `LOCK TABLE` accepts: tables, partitioned tables, views.
fn lockable(table: &ResolvedTable) -> bool {
    matches!(table.kind, 'r' | 'p' | 'v')
}

fn qualified(table: &ResolvedTable) -> String {
    format!(
        "{}.{}",
        quote_ident(&table.schema),
        quote_ident(&table.name)
    )
}

/// Lock every lockable table in `ACCESS SHARE` mode, waiting at most `timeout` for each,
/// in the open transaction of `session` before its snapshot is taken. A table that
/// cannot be locked in time fails the run with one line naming the session in the way.
pub async fn before_snapshot(
    session: &Session,
    tables: &[ResolvedTable],
    timeout: Duration,
) -> Result<(), DbError> {
    let millis = timeout.as_millis();
    for table in tables.iter().filter(|t| lockable(t)) {
        let sql = format!(
            "SET LOCAL lock_timeout = '{millis}ms'; LOCK TABLE {} IN ACCESS SHARE MODE",
            qualified(table)
        );
        if let Err(e) = session.batch_execute(&sql).await {
            return Err(refused(session, table, &e, Wait::Timeout(timeout)).await);
        }
    }
    Ok(())
}

/// Lock every listed table in a worker that imported the run's snapshot, without waiting
/// (see the module's doc); `lock_timeout` is the session's setting, restored after.
pub async fn in_worker(
    session: &Session,
    tables: &[ResolvedTable],
    lock_timeout: Duration,
) -> Result<(), DbError> {
    // A lock query on a materialized view cannot say NOWAIT: a 1 ms timeout does (an
    // uncontended lock is granted without waiting at all).
    let no_wait = "SET LOCAL lock_timeout = '1ms'";
    session
        .batch_execute(no_wait)
        .await
        .map_err(|e| session.error(&e).context("cannot prepare a worker's locks"))?;
    for table in tables.iter().filter(|t| lockable(t) || t.kind == 'm') {
        let sql = match table.kind {
            'm' => format!("SELECT FROM {} WHERE false", qualified(table)),
            _ => format!(
                "LOCK TABLE {} IN ACCESS SHARE MODE NOWAIT",
                qualified(table)
            ),
        };
        if let Err(e) = session.batch_execute(&sql).await {
            return Err(refused(session, table, &e, Wait::NoWait).await);
        }
    }
    let restore = format!("SET LOCAL lock_timeout = '{}ms'", lock_timeout.as_millis());
    session
        .batch_execute(&restore)
        .await
        .map_err(|e| session.error(&e).context("cannot prepare a worker's locks"))
}

/// How long a lock was waited for.
#[derive(Clone, Copy)]
enum Wait {
    Timeout(Duration),
    NoWait,
}

/// The error for a lock not granted: one line naming the table and the session holding
/// or queued for a conflicting lock, read after the failed transaction is rolled back.
async fn refused(
    session: &Session,
    table: &ResolvedTable,
    e: &tokio_postgres::Error,
    wait: Wait,
) -> DbError {
    let name = table.requested.file_stem();
    let not_available = e
        .as_db_error()
        .is_some_and(|d| d.code().code() == LOCK_NOT_AVAILABLE);
    if !not_available {
        return session
            .error(e)
            .context(&format!("cannot lock table '{name}'"));
    }
    let _ = session.batch_execute("ROLLBACK").await;
    let blocker = blocker(session, table.oid).await.unwrap_or_else(|| {
        "another session holds or waits for a conflicting lock on it (it has ended since)".into()
    });
    let message = match wait {
        Wait::Timeout(t) => format!(
            "cannot lock table '{name}' ({}) for reading within {}: {blocker}; let it finish or end it (pg_terminate_backend), or raise --lock-timeout",
            qualified(table),
            egress_common::units::human_duration(t)
        ),
        Wait::NoWait => format!(
            "a parallel worker cannot lock table '{name}' ({}) for reading: {blocker}; it is queued behind this dump's own lock, so waiting would never end: run again once it has finished, or with --jobs 1",
            qualified(table)
        ),
    };
    DbError::with_kind(DbErrorKind::QueryFailed, message)
}

/// Who holds or waits for an `ACCESS EXCLUSIVE` lock on `oid` or on a relation it covers
/// (partitions, a view's base tables): pid, user, application, state, transaction age.
/// The session's query text is not shown: it may hold literals nobody should log.
async fn blocker(client: &Client, oid: i64) -> Option<String> {
    let sql = format!(
        "{RELATIONS} \
         SELECT l.pid, l.granted, c.oid::regclass::text, coalesce(a.usename::text, ''), \
                coalesce(a.application_name, ''), coalesce(a.state, ''), \
                coalesce(extract(epoch FROM now() - a.xact_start)::bigint, 0) \
         FROM pg_locks l JOIN rels r ON l.relation = r.oid JOIN pg_class c ON c.oid = l.relation \
         LEFT JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'relation' AND l.mode = 'AccessExclusiveLock' \
           AND l.pid IS DISTINCT FROM pg_backend_pid() ORDER BY l.granted DESC LIMIT 1"
    );
    let row = client.query_opt(&sql, &[&vec![oid]]).await.ok()??;
    let (pid, granted, relation): (Option<i32>, bool, String) =
        (row.get(0), row.get(1), row.get(2));
    // A prepared transaction holds its locks with no session behind it.
    let who = match pid {
        Some(pid) => format!("session {pid}"),
        None => "a prepared transaction (see pg_prepared_xacts)".to_string(),
    };
    let (user, app, state, age): (String, String, String, i64) =
        (row.get(3), row.get(4), row.get(5), row.get(6));
    let what = if granted {
        "holds an ACCESS EXCLUSIVE lock on"
    } else {
        "is waiting for an ACCESS EXCLUSIVE lock on"
    };
    Some(format!(
        "{who} (user '{user}', application '{app}', {state}, in a transaction for {}) {what} {relation}",
        egress_common::units::human_duration(Duration::from_secs(age.max(0) as u64))
    ))
}

/// Every relation a listed table covers: itself, its partitions and a view's base
/// relations, recursively (a CTE over `$1`, the tables' oids, as `rels(oid)`).
const RELATIONS: &str = "WITH RECURSIVE rels(oid) AS ( \
       SELECT unnest($1::bigint[])::oid \
     UNION \
       SELECT x.child FROM rels, LATERAL ( \
           SELECT i.inhrelid FROM pg_inherits i WHERE i.inhparent = rels.oid \
         UNION ALL \
           SELECT d.refobjid FROM pg_rewrite w JOIN pg_depend d \
             ON d.classid = 'pg_rewrite'::regclass AND d.objid = w.oid \
            AND d.refclassid = 'pg_class'::regclass AND d.refobjid <> rels.oid \
           WHERE w.ev_class = rels.oid \
       ) x(child) \
   )";

/// Inside the snapshot: lock what `LOCK TABLE` cannot (materialized views, by a query),
/// then check that every listed table is the relation that was locked and that none was
/// rewritten after the snapshot was taken (TRUNCATE, REFRESH, VACUUM FULL, ALTER ... TYPE
/// between the snapshot and its lock would leave the snapshot looking at rows that are
/// not the ones it should see). Foreign tables are read as the remote server has them.
pub async fn confirm(session: &Session, tables: &[ResolvedTable]) -> Result<(), DbError> {
    for table in tables.iter().filter(|t| t.kind == 'm') {
        let sql = format!("SELECT FROM {} WHERE false", qualified(table));
        session.batch_execute(&sql).await.map_err(|e| {
            session.error(&e).context(&format!(
                "cannot lock materialized view '{}'",
                table.requested.file_stem()
            ))
        })?;
    }
    let held = held_locks(session).await?;
    for table in tables.iter().filter(|t| lockable(t) || t.kind == 'm') {
        if !held.contains(&table.oid) {
            return Err(DbError::with_kind(
                DbErrorKind::QueryFailed,
                format!(
                    "table '{}' was replaced while it was being locked (renamed, or dropped and created again): run again",
                    table.requested.file_stem()
                ),
            ));
        }
    }
    if let Some(rewritten) = rewritten(session, tables).await? {
        return Err(DbError::with_kind(
            DbErrorKind::QueryFailed,
            format!(
                "{rewritten} was rewritten (TRUNCATE, REFRESH, VACUUM FULL or ALTER TABLE) just after the snapshot was taken, before it could be locked: its rows in the snapshot are not the ones the day must hold; run again"
            ),
        ));
    }
    Ok(())
}

/// The relations this session holds an `ACCESS SHARE` (or stronger) lock on.
async fn held_locks(session: &Session) -> Result<HashSet<i64>, DbError> {
    let rows = session
        .query(
            "SELECT relation::bigint FROM pg_locks WHERE pid = pg_backend_pid() \
             AND locktype = 'relation' AND granted AND relation IS NOT NULL",
            &[],
        )
        .await
        .map_err(|e| {
            session
                .error(&e)
                .context("cannot read this session's locks")
        })?;
    Ok(rows.iter().map(|r| r.get::<_, i64>(0)).collect())
}

/// The first relation covered by `tables` whose storage changed since the snapshot: its
/// `relfilenode` as the snapshot sees it is not the current one.
async fn rewritten(session: &Session, tables: &[ResolvedTable]) -> Result<Option<String>, DbError> {
    let oids: Vec<i64> = tables.iter().map(|t| t.oid).collect();
    let sql = format!(
        "{RELATIONS} SELECT c.oid::regclass::text FROM rels JOIN pg_class c ON c.oid = rels.oid \
         WHERE c.relkind IN ('r', 'm') AND c.relfilenode <> 0 \
           AND c.relfilenode IS DISTINCT FROM pg_relation_filenode(c.oid) LIMIT 1"
    );
    let row = session.query_opt(&sql, &[&oids]).await.map_err(|e| {
        session
            .error(&e)
            .context("cannot check the tables against the snapshot")
    })?;
    Ok(row.map(|r| r.get(0)))
}
