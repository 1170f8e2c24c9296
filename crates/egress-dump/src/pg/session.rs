//! A connection in use: its errors read with the server's own reason, the facts the run
//! needs about the server (version, standby, recovery conflicts), and the settings every
//! dump session gets.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio_postgres::Client;

use super::error::{classify, DbError, DbErrorKind};
use super::guard::Flow;
use super::target::Target;

/// A connection, and how far its reading may run ahead of the dump ([`Flow`]).
pub struct Session {
    pub(super) client: Client,
    /// Rows read from the server and taken by the dump.
    pub flow: Arc<Flow>,
    /// Why the server ended the session, when it said so: a backend terminated while
    /// idle (e.g. for a recovery conflict) sends its error outside any request, and the
    /// next request only sees "connection closed".
    pub(super) ended: Arc<OnceLock<DbError>>,
    /// The settings that shape values' text ([`SHAPING`]) as the session was prepared.
    pub(super) shaping: OnceLock<Vec<(String, String)>>,
}

impl Session {
    /// Classify `e`, a failure of a request on this session: a closed connection is
    /// reported with the server's own reason for ending it, when it gave one.
    pub fn error(&self, e: &tokio_postgres::Error) -> DbError {
        match self.ended.get() {
            Some(ended) if e.is_closed() => DbError {
                kind: ended.kind,
                message: format!("the server ended the session: {}", ended.message),
            },
            _ => {
                let (kind, message) = classify(e);
                DbError { kind, message }
            }
        }
    }
}

impl std::ops::Deref for Session {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

/// What the run needs to know about the server.
#[derive(Debug, Clone)]
pub struct ServerFacts {
    /// `server_version_num`.
    pub version_num: i32,
    /// `pg_is_in_recovery()`: a standby.
    pub standby: bool,
    /// How long the standby lets a conflicting query run before cancelling it.
    pub max_standby_streaming_delay: String,
    /// Whether the standby tells the primary which rows its queries still need.
    pub hot_standby_feedback: String,
    /// Queries in this database the standby has cancelled for recovery conflicts so far
    /// (`pg_stat_database_conflicts`).
    pub conflicts: i64,
}

/// Recovery conflicts the server has counted in this database so far, on a new session.
pub async fn conflicts_counted(target: &Target) -> Option<i64> {
    let session = target.connect().await.ok()?;
    server_facts(&session)
        .await
        .ok()
        .map(|facts| facts.conflicts)
}

/// Ask the server for its version and role.
pub async fn server_facts(client: &tokio_postgres::Client) -> Result<ServerFacts, DbError> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int, pg_is_in_recovery(), \
                    current_setting('max_standby_streaming_delay'), current_setting('hot_standby_feedback'), \
                    (SELECT coalesce(sum(confl_tablespace + confl_lock + confl_snapshot + confl_bufferpin + confl_deadlock), 0)::bigint \
                     FROM pg_stat_database_conflicts WHERE datname = current_database())",
            &[],
        )
        .await
        .map_err(|e| DbError::new("cannot read the server's version and role", &e))?;
    Ok(ServerFacts {
        version_num: row.get(0),
        standby: row.get(1),
        max_standby_streaming_delay: row.get(2),
        hot_standby_feedback: row.get(3),
        conflicts: row.get(4),
    })
}

/// Settings every dump session gets: no server-side timeout may cut a long COPY short,
/// and no lock is waited for longer than `lock_timeout` (the tables are locked up front,
/// so a later wait can only be one queued behind this dump's own locks, which never ends).
///
/// `extra_float_digits = 3`: floats print exactly (the shortest text that reads back the
/// same, PostgreSQL's default since 12) even where a role or database lowered it; it
/// reaches the CSV and the text of points, composites and arrays in a typed day.
///
/// A typed day (`typed`) also pins what shapes the text PostgreSQL prints of the values it
/// keeps as text (ranges, composites, arrays of those): dates in ISO (`2024-07-01
/// 13:00:00+01`, an instant under any TimeZone, read back the same under any DateStyle:
/// `SQL, DMY` printed `01/07/2024 13:00:00 IST`, which PostgreSQL read back 3 h 30 off),
/// intervals in the `postgres` style (`sql_standard` text reads back otherwise under
/// another style), bytea in hex, identifiers quoted only where needed. Only the style of
/// DateStyle is set: the day/month order for reading stays the database's. TimeZone,
/// lc_monetary and search_path are left as they are (pinning them would change what views
/// compute, or what a money amount means) and recorded in the manifest
/// ([`text_settings`]). A CSV day keeps the database's other settings, as `psql` does.
pub async fn prepare_session(
    session: &Session,
    lock_timeout: Duration,
    typed: bool,
) -> Result<(), DbError> {
    set_session(session, lock_timeout, typed).await?;
    let _ = session.shaping.set(shaping(session).await?);
    Ok(())
}

async fn set_session(client: &Client, lock_timeout: Duration, typed: bool) -> Result<(), DbError> {
    let millis = lock_timeout.as_millis();
    let pins = match typed {
        true => {
            "; SET DateStyle = 'ISO'; SET IntervalStyle = 'postgres'; \
                 SET bytea_output = 'hex'; SET quote_all_identifiers = off"
        }
        false => "",
    };
    client
        .batch_execute(&format!(
            "SET statement_timeout = 0; SET lock_timeout = '{millis}ms'; \
             SET idle_in_transaction_session_timeout = 0; SET client_encoding = 'UTF8'; \
             SET extra_float_digits = 3{pins}"
        ))
        .await
        .map_err(|e| DbError::new("cannot prepare the database session", &e))
}

/// The settings that shape the text of values: a typed day's manifest records them, and
/// a table whose reading changed one fails ([`Session::check_settings`]).
const SHAPING: &[&str] = &[
    "DateStyle",
    "IntervalStyle",
    "TimeZone",
    "bytea_output",
    "extra_float_digits",
    "lc_monetary",
    "search_path",
    "quote_all_identifiers",
    "client_encoding",
];

/// [`SHAPING`]'s settings as the session has them now, in one round trip.
async fn shaping(client: &Client) -> Result<Vec<(String, String)>, DbError> {
    let names: Vec<&str> = SHAPING.to_vec();
    let rows = client
        .query(
            "SELECT n, current_setting(n) FROM unnest($1::text[]) WITH ORDINALITY AS s(n, i) ORDER BY i",
            &[&names],
        )
        .await
        .map_err(|e| DbError::new("cannot read the session's settings", &e))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// The settings that shape the text of values a typed day keeps as PostgreSQL text, as
/// this session has them (the manifest records them, so a reader can parse them back).
pub async fn text_settings(
    client: &Client,
) -> Result<std::collections::BTreeMap<String, String>, DbError> {
    Ok(shaping(client).await?.into_iter().collect())
}

impl Session {
    /// Fails when a setting that shapes values' text is not what it was when the session
    /// was prepared: a function the table's query calls changed it (`set_config`, found
    /// by an adversarial run: a view that set `client_encoding` to LATIN9 had the next
    /// table written in LATIN9, exit 0). The table's savepoint, rolled back, undoes it.
    pub async fn check_settings(&self) -> Result<(), DbError> {
        let Some(prepared) = self.shaping.get() else {
            return Ok(());
        };
        let now = shaping(&self.client)
            .await
            .map_err(|e| e.context("after reading"))?;
        match prepared.iter().zip(&now).find(|(a, b)| a != b) {
            None => Ok(()),
            Some(((name, was), (_, is))) => Err(DbError {
                kind: DbErrorKind::QueryFailed,
                message: format!(
                    "reading it changed the session's {name} from '{was}' to '{is}' (a function its query calls sets it, e.g. with set_config), so its rows may not be written as the day says; make the function leave {name} as it found it (ALTER FUNCTION ... SET {name} FROM CURRENT)"
                ),
            }),
        }
    }
}
