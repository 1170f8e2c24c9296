//! Connecting to PostgreSQL the way libpq would: `DATABASE_URL` (a URL or `key=value`
//! string) and the `PG*` variables ([`crate::conninfo`]), TLS as `sslmode` says
//! ([`crate::tls`]), the password never sent in clear where it could be read
//! ([`crate::guard`]), and a session fit for long read-only dumps.

use std::path::PathBuf;
use std::time::Duration;

use egress_common::ConfigError;
use tokio_postgres::config::{ChannelBinding, SslMode as PgSslMode, TargetSessionAttrs};
use tokio_postgres::Client;

use crate::connect::{self, Address, GuardedTls, Keepalive};
use crate::conninfo::{Origin, Params};
use std::sync::{Arc, OnceLock};

use crate::guard::{CleartextRefused, Flow, Guard, Layer};
use crate::tls::{self, SslMode};

/// The `PG*` variables of this process, for [`Params::resolve`].
pub fn env_from_process() -> Vec<(String, String)> {
    crate::conninfo::ENV
        .iter()
        .filter_map(|(var, _)| std::env::var(var).ok().map(|v| (var.to_string(), v)))
        .collect()
}

/// A connection, and how far its reading may run ahead of the dump ([`Flow`]).
pub struct Session {
    client: Client,
    /// Rows read from the server and taken by the dump.
    pub flow: Arc<Flow>,
    /// Why the server ended the session, when it said so: a backend terminated while
    /// idle (e.g. for a recovery conflict) sends its error outside any request, and the
    /// next request only sees "connection closed".
    ended: Arc<OnceLock<DbError>>,
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

/// A resolved connection target: where, as whom, with which TLS.
#[derive(Clone)]
pub struct Target {
    config: tokio_postgres::Config,
    addresses: Vec<Address>,
    ssl_mode: SslMode,
    root_cert: Option<PathBuf>,
    /// `sslmode=disable` was chosen: a cleartext password may then go over TCP (as the
    /// user asked); otherwise it is refused below TLS on every TCP host.
    plain_chosen: bool,
    refuse_tls: Option<&'static str>,
    connect_timeout: Duration,
    keepalive: Option<Keepalive>,
    /// `host:port/dbname`, safe to print.
    pub display: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("display", &self.display)
            .finish()
    }
}

/// What kind of database failure happened, for callers to branch on and `main` to choose
/// an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbErrorKind {
    /// The TLS handshake failed (certificate, CA, host name, or no TLS at the server).
    Tls,
    /// The login was refused (user, password, database name).
    Authentication,
    /// The connection could not be made or broke (network, server gone, backend killed).
    ConnectionLost,
    /// A statement failed (a server error with its SQLSTATE).
    QueryFailed,
    /// A standby cancelled the read because replaying the primary's changes conflicted
    /// with the snapshot (SQLSTATE 40001 "conflict with recovery"): worth a fresh snapshot.
    RecoveryConflict,
}

/// A database failure with a one-line message naming the cause and the fix.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct DbError {
    /// Its kind.
    pub kind: DbErrorKind,
    message: String,
}

impl DbError {
    /// This error, as the failure of `what` (e.g. "reading table 't' failed").
    pub fn context(self, what: &str) -> DbError {
        DbError {
            kind: self.kind,
            message: format!("{what}: {}", self.message),
        }
    }

    /// An error of `kind` with this message (one line naming the cause and the fix).
    pub fn with_kind(kind: DbErrorKind, message: String) -> DbError {
        DbError { kind, message }
    }

    /// Classify `e`, which happened while `what` (e.g. "reading table 't'").
    pub fn new(what: &str, e: &tokio_postgres::Error) -> DbError {
        let (kind, detail) = classify(e);
        DbError {
            kind,
            message: format!("{what}: {detail}"),
        }
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

/// SQLSTATE classes that mean the session is gone: connection exceptions (08), operator
/// intervention (57: terminated, shut down).
fn classify(e: &tokio_postgres::Error) -> (DbErrorKind, String) {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        let kind = match &code[..2] {
            "40" if db.message().contains("conflict with recovery") => {
                DbErrorKind::RecoveryConflict
            }
            "28" => DbErrorKind::Authentication,
            "08" | "57" => DbErrorKind::ConnectionLost,
            _ if code == "3D000" => DbErrorKind::Authentication,
            _ => DbErrorKind::QueryFailed,
        };
        return (kind, format!("{} ({code})", db.message()));
    }
    let text = egress_common::error::chain(e);
    (
        if is_tls_failure(e) {
            DbErrorKind::Tls
        } else {
            DbErrorKind::ConnectionLost
        },
        text,
    )
}

/// True when the TLS handshake failed: rustls reported a problem, or tokio-postgres says
/// so itself (its "error performing TLS handshake", e.g. a server without TLS).
fn is_tls_failure(e: &tokio_postgres::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(cause) = source {
        let rustls = cause.downcast_ref::<rustls::Error>().is_some()
            || cause
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some());
        if rustls {
            return true;
        }
        source = cause.source();
    }
    e.to_string().starts_with("error performing TLS handshake")
}

/// Build the connection target from libpq parameters. Errors name the variable or URL
/// parameter at fault and never echo the connection string (it may hold a password).
pub fn resolve(params: &Params, timeout: Duration) -> Result<Target, ConfigError> {
    let addresses = addresses(params)?;
    let (ssl_mode, root_cert) = tls_settings(params)?;
    let mut config = tokio_postgres::Config::new();
    let user = params
        .get("user")
        .map(str::to_string)
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "postgres".to_string());
    config.user(&user);
    if let Some(password) = params.get("password") {
        config.password(password);
    }
    if let Some(db) = params.get("dbname") {
        config.dbname(db);
    }
    let app = params
        .get("application_name")
        .or(params.get("fallback_application_name"));
    config.application_name(app.unwrap_or("egress-dump"));
    if let Some(options) = params.get("options") {
        config.options(options);
    }
    session_settings(params, &mut config)?;
    let connect_timeout = match seconds(params, "connect_timeout")? {
        Some(0) | None => timeout,
        Some(n) => Duration::from_secs(n.max(2)),
    };
    let keepalive = keepalive(params, timeout)?;
    let plain_chosen = params.get("sslmode") == Some("disable");
    let verified = root_cert.is_some()
        && matches!(
            ssl_mode,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        );
    let refuse_tls = (!verified).then_some("TLS whose certificate is not verified");
    let display = format!(
        "{}/{}",
        addresses[0].display(),
        params.get("dbname").unwrap_or(&user)
    );
    Ok(Target {
        config,
        addresses,
        ssl_mode,
        root_cert,
        plain_chosen,
        refuse_tls,
        connect_timeout,
        keepalive,
        display,
    })
}

/// The servers to try, in order: `host` (a name, an address, or a socket directory), else
/// `hostaddr`, else the local socket directory when there is one, else localhost.
fn addresses(params: &Params) -> Result<Vec<Address>, ConfigError> {
    let hosts: Vec<String> = match params.get("host").or(params.get("hostaddr")) {
        Some(list) => list.split(',').map(|h| h.trim().to_string()).collect(),
        None if std::path::Path::new("/var/run/postgresql").is_dir() => {
            vec!["/var/run/postgresql".into()]
        }
        None => vec!["localhost".into()],
    };
    let ports: Vec<u16> = match params.get("port") {
        None => vec![5432],
        Some(list) => list
            .split(',')
            .map(|p| match p.trim() {
                "" => Ok(5432),
                p => p.parse::<u16>().map_err(|_| {
                    // A URL's port may be a misplaced password's first part: not echoed.
                    let shown = match params.origin("port") {
                        Some(Origin::Env) => format!(" '{p}'"),
                        _ => String::new(),
                    };
                    ConfigError::new(format!(
                        "{}{shown} is not a port number: set it to e.g. 5432",
                        params.source("port")
                    ))
                }),
            })
            .collect::<Result<_, _>>()?,
    };
    if ports.len() != 1 && ports.len() != hosts.len() {
        return Err(ConfigError::new(format!(
            "{} lists {} ports for {} hosts: give one port, or one per host",
            params.source("port"),
            ports.len(),
            hosts.len()
        )));
    }
    let mut out: Vec<Address> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = ports[if ports.len() == 1 { 0 } else { i }];
            match h.as_str() {
                "" => Address::Tcp("localhost".into(), port),
                h if h.starts_with('/') => Address::Unix(PathBuf::from(h), port),
                h => Address::Tcp(h.to_string(), port),
            }
        })
        .collect();
    if params.get("load_balance_hosts") == Some("random") {
        use rand::seq::SliceRandom;
        out.shuffle(&mut rand::rng());
    }
    Ok(out)
}

/// `sslmode` and `sslrootcert`, as libpq 16 reads them: `sslrootcert=system` means the
/// system's roots and implies `verify-full` (a weaker mode with it is refused). Stricter
/// than libpq: with no `sslmode`, a CA file given means `verify-full` (libpq's default is
/// `prefer`, which checks nothing).
fn tls_settings(params: &Params) -> Result<(SslMode, Option<PathBuf>), ConfigError> {
    let mode = match params.get("sslmode") {
        Some(m) => Some(m.parse::<SslMode>().map_err(|_| {
            ConfigError::new(format!(
                "{} '{m}' is not valid: use disable, allow, prefer, require, verify-ca or verify-full",
                params.source("sslmode")
            ))
        })?),
        None => None,
    };
    let system = params.get("sslrootcert") == Some("system");
    let ca_file = params
        .get("sslrootcert")
        .filter(|p| !system && std::path::Path::new(p).is_file());
    if let (None, Some(missing)) = (
        mode,
        params
            .get("sslrootcert")
            .filter(|_| !system && ca_file.is_none()),
    ) {
        // A deployment that mounts an optional CA bundle and was given none.
        tracing::warn!(
            "{} names {missing}, which does not exist: connecting with sslmode prefer",
            params.source("sslrootcert")
        );
        return Ok((SslMode::Prefer, None));
    }
    let mode = match (mode, system) {
        // Secure by default: a CA given without a mode means the server must prove itself.
        (None, true) => SslMode::VerifyFull,
        (None, false) if ca_file.is_some() => SslMode::VerifyFull,
        (Some(m), true) if m != SslMode::VerifyFull => {
            return Err(ConfigError::new(format!(
                "{} 'system' trusts every public certificate authority, so it needs sslmode verify-full (not {}): set PGSSLMODE=verify-full, or give the CA bundle's file",
                params.source("sslrootcert"),
                params.get("sslmode").unwrap_or("")
            )))
        }
        (Some(m), _) => m,
        (None, false) => SslMode::Prefer,
    };
    Ok((mode, tls::root_cert_path(params.get("sslrootcert"))))
}

/// Parameters tokio-postgres takes as they are, or that are refused by value.
fn session_settings(
    params: &Params,
    config: &mut tokio_postgres::Config,
) -> Result<(), ConfigError> {
    let refuse = |name: &str, value: &str, why: &str| {
        ConfigError::new(format!(
            "{} '{value}' is not supported by egress-dump: {why}",
            params.source(name)
        ))
    };
    match params.get("target_session_attrs") {
        None | Some("any") => {}
        Some("read-write") => {
            config.target_session_attrs(TargetSessionAttrs::ReadWrite);
        }
        Some(v) => return Err(refuse("target_session_attrs", v, "use any or read-write")),
    }
    match params.get("channel_binding") {
        None | Some("prefer") => config.channel_binding(ChannelBinding::Prefer),
        Some("require") => config.channel_binding(ChannelBinding::Require),
        Some("disable") => config.channel_binding(ChannelBinding::Disable),
        Some(v) => {
            return Err(refuse(
                "channel_binding",
                v,
                "use disable, prefer or require",
            ))
        }
    };
    if let Some(v) = params.get("client_encoding") {
        if !matches!(v.to_ascii_uppercase().as_str(), "UTF8" | "UTF-8") {
            return Err(refuse(
                "client_encoding",
                v,
                "the CSV is always written in UTF8",
            ));
        }
    }
    if let Some(v) = params
        .get("gssencmode")
        .filter(|v| !matches!(*v, "disable" | "prefer"))
    {
        return Err(refuse(
            "gssencmode",
            v,
            "GSSAPI encryption is not implemented; use disable or prefer",
        ));
    }
    if let Some(v) = params
        .get("load_balance_hosts")
        .filter(|v| !matches!(*v, "disable" | "random"))
    {
        return Err(refuse("load_balance_hosts", v, "use disable or random"));
    }
    Ok(())
}

fn seconds(params: &Params, name: &str) -> Result<Option<u64>, ConfigError> {
    params
        .get(name)
        .map(|v| {
            v.trim().parse::<u64>().map_err(|_| {
                ConfigError::new(format!(
                    "{} '{v}' is not a whole number",
                    params.source(name)
                ))
            })
        })
        .transpose()
}

/// Keepalive probes from `keepalives*` and `tcp_user_timeout` (milliseconds, as in
/// libpq), with defaults that notice a vanished database within about a minute.
fn keepalive(params: &Params, timeout: Duration) -> Result<Option<Keepalive>, ConfigError> {
    if params.get("keepalives") == Some("0") {
        return Ok(None);
    }
    let idle = seconds(params, "keepalives_idle")?.unwrap_or(30);
    let interval = seconds(params, "keepalives_interval")?.unwrap_or(10);
    let retries = seconds(params, "keepalives_count")?.unwrap_or(3);
    let user_timeout = match seconds(params, "tcp_user_timeout")? {
        Some(ms) if ms > 0 => Duration::from_millis(ms),
        _ => timeout.max(Duration::from_secs(30)),
    };
    Ok(Some(Keepalive {
        idle: Duration::from_secs(idle),
        interval: Duration::from_secs(interval),
        retries: retries as u32,
        user_timeout,
    }))
}

impl Target {
    /// Connect to the first server that answers, and spawn the connection's I/O task.
    pub async fn connect(&self) -> anyhow::Result<Session> {
        let mut last = None;
        for address in &self.addresses {
            let attempt =
                tokio::time::timeout(self.connect_timeout, self.connect_to(address)).await;
            match attempt {
                Ok(Ok(client)) => return Ok(client),
                // A refused login ends the attempt, as in libpq: the next host would only
                // hide it behind its own failure (and count one more failed login).
                Ok(Err(e)) if e.kind == DbErrorKind::Authentication => return Err(e.into()),
                Ok(Err(e)) => last = Some(e),
                Err(_) => {
                    last = Some(DbError {
                        kind: DbErrorKind::ConnectionLost,
                        message: format!(
                            "cannot connect to PostgreSQL at {}: timed out after {}s; check PGHOST / PGPORT and that the server is running",
                            address.display(),
                            self.connect_timeout.as_secs()
                        ),
                    })
                }
            }
        }
        Err(last
            .map(anyhow::Error::new)
            .unwrap_or_else(|| anyhow::anyhow!("no database host to connect to")))
    }

    async fn connect_to(&self, address: &Address) -> Result<Session, DbError> {
        let keepalive = self.keepalive.unwrap_or(Keepalive {
            idle: Duration::from_secs(7200),
            interval: Duration::from_secs(75),
            retries: 9,
            user_timeout: Duration::ZERO,
        });
        let socket = connect::open(address, keepalive)
            .await
            .map_err(|e| self.unreachable(address, &e))?;
        let mut config = self.config.clone();
        // As libpq: no TLS on a Unix socket. Whether a cleartext password may go is decided
        // for the host actually connected to: never over TCP unless chosen.
        let (mode, refuse_plain) = match address {
            Address::Unix(..) => (SslMode::Disable, None),
            Address::Tcp(..) if self.plain_chosen => (self.ssl_mode, None),
            Address::Tcp(..) => (self.ssl_mode, Some("an unencrypted connection")),
        };
        config.ssl_mode(match mode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Allow | SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
        });
        let flow = Arc::new(Flow::default());
        let guarded = Guard::new(socket, Layer::Socket, refuse_plain, Some(flow.clone()));
        let mut make = tls::connector(mode, self.root_cert.as_deref()).map_err(|e| DbError {
            kind: DbErrorKind::Tls,
            message: e.to_string(),
        })?;
        let host = match address {
            Address::Tcp(h, _) => h.clone(),
            Address::Unix(..) => "localhost".into(),
        };
        let tls =
            GuardedTls::new(&mut make, &host, self.refuse_tls, flow.clone()).map_err(|e| {
                DbError {
                    kind: DbErrorKind::Tls,
                    message: format!(
                        "TLS to PostgreSQL at {} failed: {e}; check PGSSLMODE and PGSSLROOTCERT",
                        address.display()
                    ),
                }
            })?;
        let (client, connection) = config
            .connect_raw(guarded, tls)
            .await
            .map_err(|e| self.connect_failure(address, &e))?;
        let ended = Arc::new(OnceLock::new());
        let record = ended.clone();
        tokio::spawn(async move {
            // The cause is recorded before the connection is dropped: dropping it is what
            // wakes a pending request with "connection closed".
            let mut connection = Box::pin(connection);
            if let Err(e) = (&mut connection).await {
                tracing::debug!(error = %e, "database connection closed");
                let (kind, message) = classify(&e);
                let _ = record.set(DbError { kind, message });
            }
        });
        Ok(Session {
            client,
            flow,
            ended,
        })
    }

    fn unreachable(&self, address: &Address, e: &std::io::Error) -> DbError {
        DbError {
            kind: DbErrorKind::ConnectionLost,
            message: format!(
                "cannot connect to PostgreSQL at {}: {e}; check PGHOST / PGPORT and that the server is running",
                address.display()
            ),
        }
    }

    /// Connect, retrying briefly: a pod's network is often not ready when it starts.
    pub async fn connect_with_retry(&self, attempts: u32) -> anyhow::Result<Session> {
        let mut delay = Duration::from_millis(250);
        let mut attempt = 1;
        loop {
            match self.connect().await {
                Ok(client) => return Ok(client),
                // Wrong credentials or names will not fix themselves; only retry the network.
                Err(e) if attempt < attempts && is_connection_lost(&e) => {
                    tracing::warn!(attempt, error = %egress_common::error::one_line(&e), "cannot connect to the database yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn connect_failure(&self, address: &Address, e: &tokio_postgres::Error) -> DbError {
        let at = format!(
            "{}/{}",
            address.display(),
            self.display.rsplit('/').next().unwrap_or("")
        );
        if let Some(refused) = find_source::<CleartextRefused>(e) {
            return DbError {
                kind: DbErrorKind::Authentication,
                message: format!(
                    "cannot log in to PostgreSQL at {at}: {refused}; have the server use scram-sha-256, or verify its certificate (PGSSLMODE=verify-full with PGSSLROOTCERT), or set PGSSLMODE=disable explicitly to send it anyway"
                ),
            };
        }
        let (kind, detail) = classify(e);
        let message = match kind {
            DbErrorKind::Authentication => {
                let hint = if e.as_db_error().is_some_and(|d| d.code().code() == "3D000") {
                    "check PGDATABASE (or the database in DATABASE_URL)"
                } else {
                    "check PGUSER / PGPASSWORD (or DATABASE_URL)"
                };
                format!("cannot log in to PostgreSQL at {at}: {detail}; {hint}")
            }
            DbErrorKind::Tls => format!("TLS to PostgreSQL at {at} failed: {detail}; check PGSSLMODE and PGSSLROOTCERT"),
            _ => format!(
                "cannot connect to PostgreSQL at {at}: {detail}; check PGHOST / PGPORT and that the server is running"
            ),
        };
        DbError { kind, message }
    }
}

/// The first error of type `E` among `e`'s sources (inside an I/O error too).
fn find_source<'a, E: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(cause) = source {
        if let Some(found) = cause.downcast_ref::<E>() {
            return Some(found);
        }
        if let Some(inner) = cause
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if let Some(found) = inner.downcast_ref::<E>() {
                return Some(found);
            }
        }
        source = cause.source();
    }
    None
}

fn is_connection_lost(e: &anyhow::Error) -> bool {
    egress_common::error::find::<DbError>(e).is_some_and(|d| d.kind == DbErrorKind::ConnectionLost)
}

/// Settings every dump session gets: no server-side timeout may cut a long COPY short,
/// and no lock is waited for longer than `lock_timeout` (the tables are locked up front,
/// so a later wait can only be one queued behind this dump's own locks, which never ends).
pub async fn prepare_session(client: &Client, lock_timeout: Duration) -> Result<(), DbError> {
    let millis = lock_timeout.as_millis();
    client
        .batch_execute(&format!(
            "SET statement_timeout = 0; SET lock_timeout = '{millis}ms'; \
             SET idle_in_transaction_session_timeout = 0; SET client_encoding = 'UTF8'"
        ))
        .await
        .map_err(|e| DbError::new("cannot prepare the database session", &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(url: Option<&str>, env: &[(&str, &str)]) -> Params {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Params::resolve(url, &env).unwrap()
    }

    #[test]
    fn env_fills_what_the_url_leaves_out() {
        let env = [
            ("PGHOST", "db"),
            ("PGPORT", "6543"),
            ("PGUSER", "u"),
            ("PGDATABASE", "d"),
        ];
        let t = resolve(&params(None, &env), Duration::from_secs(1)).unwrap();
        assert_eq!(t.display, "db:6543/d");
        let t = resolve(
            &params(Some("postgresql://x@h:1/y"), &env),
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(t.display, "h:1/y");
        let t = resolve(
            &params(Some("host=/tmp/sock port=7"), &env),
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(t.addresses, [Address::Unix("/tmp/sock".into(), 7)]);
        assert!(!t.plain_chosen);
    }

    #[test]
    fn bad_values_are_named_by_their_source() {
        let err = resolve(&params(None, &[("PGPORT", "x")]), Duration::from_secs(1)).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("PGPORT 'x' is not a port number"),
            "{err}"
        );
        let err = resolve(
            &params(None, &[("PGSSLMODE", "sometimes")]),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("PGSSLMODE 'sometimes' is not valid"),
            "{err}"
        );
        let err = resolve(
            &params(Some("postgresql://h/d?sslmode=maybe"), &[]),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("sslmode in DATABASE_URL 'maybe'"),
            "{err}"
        );
        let err = resolve(
            &params(Some("postgresql://h/d?target_session_attrs=standby"), &[]),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(err.to_string().contains("not supported"), "{err}");
    }

    #[test]
    fn system_roots_mean_verify_full_and_disable_is_honoured() {
        let t = resolve(
            &params(None, &[("PGSSLROOTCERT", "system"), ("PGHOST", "h")]),
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(t.ssl_mode, SslMode::VerifyFull);
        let weak = params(
            None,
            &[("PGSSLROOTCERT", "system"), ("PGSSLMODE", "require")],
        );
        assert!(resolve(&weak, Duration::from_secs(1))
            .unwrap_err()
            .to_string()
            .contains("verify-full"));
        let t = resolve(
            &params(
                Some("postgresql://h/d?sslmode=disable"),
                &[("PGSSLMODE", "require")],
            ),
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(t.ssl_mode, SslMode::Disable);
        assert!(
            t.plain_chosen,
            "sslmode=disable chosen explicitly allows a cleartext password"
        );
        let t = resolve(
            &params(Some("postgresql://h/d"), &[]),
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(
            (t.ssl_mode, t.plain_chosen, t.refuse_tls.is_some()),
            (SslMode::Prefer, false, true)
        );
    }
}
