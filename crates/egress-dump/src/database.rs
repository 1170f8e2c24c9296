//! Connecting to PostgreSQL the way libpq would: `DATABASE_URL` or the `PG*` variables,
//! `PGSSLMODE` / `PGSSLROOTCERT` for TLS, and a session fit for long read-only dumps.

use std::path::PathBuf;
use std::time::Duration;

use egress_common::ConfigError;
use tokio_postgres::config::{Host, SslMode as PgSslMode};
use tokio_postgres::Client;

use crate::tls::{self, SslMode};

/// The environment variables we read, named as libpq names them.
#[derive(Debug, Clone, Default)]
pub struct PgEnv {
    /// `PGHOST`
    pub host: Option<String>,
    /// `PGPORT`
    pub port: Option<String>,
    /// `PGUSER`
    pub user: Option<String>,
    /// `PGPASSWORD`
    pub password: Option<egress_common::Secret>,
    /// `PGDATABASE`
    pub dbname: Option<String>,
    /// `PGSSLMODE`
    pub sslmode: Option<String>,
    /// `PGSSLROOTCERT`
    pub sslrootcert: Option<String>,
    /// `PGAPPNAME`
    pub appname: Option<String>,
}

impl PgEnv {
    /// Read the `PG*` variables from the process environment (empty values count as unset).
    pub fn from_process() -> Self {
        let get = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        PgEnv {
            host: get("PGHOST"),
            port: get("PGPORT"),
            user: get("PGUSER"),
            password: get("PGPASSWORD").map(egress_common::Secret::new),
            dbname: get("PGDATABASE"),
            sslmode: get("PGSSLMODE"),
            sslrootcert: get("PGSSLROOTCERT"),
            appname: get("PGAPPNAME"),
        }
    }
}

/// A resolved connection target: driver config plus TLS settings.
#[derive(Clone)]
pub struct Target {
    config: tokio_postgres::Config,
    ssl_mode: SslMode,
    root_cert: Option<PathBuf>,
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
    /// Classify `e`, which happened while `what` (e.g. "reading table 't'").
    pub fn new(what: &str, e: &tokio_postgres::Error) -> DbError {
        let (kind, detail) = classify(e);
        DbError {
            kind,
            message: format!("{what}: {detail}"),
        }
    }
}

/// SQLSTATE classes that mean the session is gone: connection exceptions (08), operator
/// intervention (57: terminated, shut down).
fn classify(e: &tokio_postgres::Error) -> (DbErrorKind, String) {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        let kind = match &code[..2] {
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

/// Build the connection target. A URL's settings win; the `PG*` variables fill the rest,
/// as in libpq. Errors never echo the URL (it may hold a password).
pub fn resolve(
    url: Option<&str>,
    env: &PgEnv,
    connect_timeout: Duration,
) -> Result<Target, ConfigError> {
    let mut config: tokio_postgres::Config = match url {
        Some(url) => url.parse().map_err(|_| {
            ConfigError::new(
                "DATABASE_URL is not a valid PostgreSQL connection string: use postgresql://user@host:port/dbname (the value is not shown because it may contain a password)",
            )
        })?,
        None => tokio_postgres::Config::new(),
    };
    if config.get_hosts().is_empty() {
        config.host(env.host.as_deref().unwrap_or("localhost"));
    }
    if config.get_ports().is_empty() {
        if let Some(port) = &env.port {
            let port: u16 = port.parse().map_err(|_| {
                ConfigError::new(format!(
                    "PGPORT '{port}' is not a port number: set it to e.g. 5432"
                ))
            })?;
            config.port(port);
        }
    }
    if config.get_user().is_none() {
        let user = env
            .user
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "postgres".to_string());
        config.user(user);
    }
    if config.get_password().is_none() {
        if let Some(password) = &env.password {
            config.password(password.expose());
        }
    }
    if config.get_dbname().is_none() {
        if let Some(db) = &env.dbname {
            config.dbname(db);
        }
    }
    let app = config
        .get_application_name()
        .map(str::to_string)
        .or_else(|| env.appname.clone())
        .unwrap_or_else(|| "egress-dump".to_string());
    config.application_name(&app);
    config.connect_timeout(connect_timeout);
    // A database that vanishes mid-COPY (node loss, a dropped route) sends nothing more:
    // keepalives and TCP_USER_TIMEOUT turn that silence into an error within about a minute
    // instead of a CronJob that hangs until its deadline.
    config.keepalives(true);
    config.keepalives_idle(Duration::from_secs(30));
    config.keepalives_interval(Duration::from_secs(10));
    config.keepalives_retries(3);
    config.tcp_user_timeout(connect_timeout.max(Duration::from_secs(30)));

    let ssl_mode = match &env.sslmode {
        Some(mode) => mode.parse::<SslMode>()?,
        None if url.is_some_and(|u| u.contains("sslmode=require")) => SslMode::Require,
        None => SslMode::Prefer,
    };
    config.ssl_mode(match ssl_mode {
        SslMode::Disable => PgSslMode::Disable,
        SslMode::Allow | SslMode::Prefer => PgSslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
    });
    let root_cert = tls::root_cert_path(env.sslrootcert.as_deref());
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let display = format!(
        "{host}:{port}/{}",
        config.get_dbname().or(config.get_user()).unwrap_or("")
    );
    Ok(Target {
        config,
        ssl_mode,
        root_cert,
        display,
    })
}

impl Target {
    /// Connect once, and spawn the connection's I/O task.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        let connector = tls::connector(self.ssl_mode, self.root_cert.as_deref())?;
        let (client, connection) = self
            .config
            .connect(connector)
            .await
            .map_err(|e| self.connect_failure(&e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "database connection closed");
            }
        });
        Ok(client)
    }

    /// Connect, retrying briefly: a pod's network is often not ready when it starts.
    pub async fn connect_with_retry(&self, attempts: u32) -> anyhow::Result<Client> {
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

    fn connect_failure(&self, e: &tokio_postgres::Error) -> DbError {
        let target = &self.display;
        let (kind, detail) = classify(e);
        let message = match kind {
            DbErrorKind::Authentication => {
                let hint = if e.as_db_error().is_some_and(|d| d.code().code() == "3D000") {
                    "check PGDATABASE (or the database in DATABASE_URL)"
                } else {
                    "check PGUSER / PGPASSWORD (or DATABASE_URL)"
                };
                format!("cannot log in to PostgreSQL at {target}: {detail}; {hint}")
            }
            DbErrorKind::Tls => format!(
                "TLS to PostgreSQL at {target} failed: {detail}; check PGSSLMODE and PGSSLROOTCERT"
            ),
            _ => format!(
                "cannot connect to PostgreSQL at {target}: {detail}; check PGHOST / PGPORT and that the server is running"
            ),
        };
        DbError { kind, message }
    }
}

fn is_connection_lost(e: &anyhow::Error) -> bool {
    egress_common::error::find::<DbError>(e).is_some_and(|d| d.kind == DbErrorKind::ConnectionLost)
}

/// Settings every dump session gets: no server-side timeouts may cut a long COPY short.
pub async fn prepare_session(client: &Client) -> Result<(), DbError> {
    client
        .batch_execute(
            "SET statement_timeout = 0; SET lock_timeout = 0; \
             SET idle_in_transaction_session_timeout = 0; SET client_encoding = 'UTF8'",
        )
        .await
        .map_err(|e| DbError::new("cannot prepare the database session", &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_fills_what_the_url_leaves_out() {
        let env = PgEnv {
            host: Some("db".into()),
            port: Some("6543".into()),
            user: Some("u".into()),
            dbname: Some("d".into()),
            ..Default::default()
        };
        let t = resolve(None, &env, Duration::from_secs(1)).unwrap();
        assert_eq!(t.display, "db:6543/d");
        let t = resolve(Some("postgresql://x@h:1/y"), &env, Duration::from_secs(1)).unwrap();
        assert_eq!(t.display, "h:1/y");
    }

    #[test]
    fn bad_url_does_not_echo_it() {
        let err = resolve(
            Some("postgresql://u:s3cretpw@h:notaport/d"),
            &PgEnv::default(),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(!err.to_string().contains("s3cretpw"));
    }

    #[test]
    fn bad_port_and_sslmode_are_usage_errors() {
        let env = PgEnv {
            port: Some("x".into()),
            ..Default::default()
        };
        assert!(resolve(None, &env, Duration::from_secs(1)).is_err());
        let env = PgEnv {
            sslmode: Some("sometimes".into()),
            ..Default::default()
        };
        assert!(resolve(None, &env, Duration::from_secs(1)).is_err());
    }
}
