//! Opening the connection ourselves (TCP with keepalives, or a Unix socket), so that the
//! password guard ([`super::guard`]) sits below and above TLS, then handing the stream to
//! tokio-postgres.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};

use std::sync::Arc;

use std::sync::OnceLock;

use tokio_postgres::config::SslMode as PgSslMode;

use super::error::{classify, find_source, DbError, DbErrorKind};
use super::guard::{CleartextRefused, Flow, Guard, Layer};
use super::session::Session;
use super::target::Target;
use super::tls::{self, SslMode};

/// Where one server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Address {
    /// A host name or address, and a port.
    Tcp(String, u16),
    /// A Unix socket directory (`/var/run/postgresql`), and the port naming the socket.
    Unix(PathBuf, u16),
}

impl Address {
    /// `host:port`, or the socket's path, for messages.
    pub(super) fn display(&self) -> String {
        match self {
            Address::Tcp(h, p) if h.contains(':') => format!("[{h}]:{p}"),
            Address::Tcp(h, p) => format!("{h}:{p}"),
            Address::Unix(dir, p) => dir.join(format!(".s.PGSQL.{p}")).display().to_string(),
        }
    }
}

/// TCP keepalive settings: a database that vanishes mid-COPY sends nothing more, and these
/// turn that silence into an error instead of a job that hangs until its deadline.
#[derive(Debug, Clone, Copy)]
pub(super) struct Keepalive {
    /// Idle time before the first probe.
    pub idle: Duration,
    /// Between probes.
    pub interval: Duration,
    /// Probes before giving up.
    pub retries: u32,
    /// Unacknowledged data may wait this long (`TCP_USER_TIMEOUT`).
    pub user_timeout: Duration,
}

/// A TCP or Unix stream.
pub(super) enum Socket {
    /// TCP.
    Tcp(TcpStream),
    /// A Unix socket.
    Unix(UnixStream),
}

/// Connect to `address`.
pub(super) async fn open(address: &Address, keepalive: Keepalive) -> io::Result<Socket> {
    match address {
        Address::Tcp(host, port) => {
            let stream = TcpStream::connect((host.as_str(), *port)).await?;
            stream.set_nodelay(true)?;
            let sock = socket2::SockRef::from(&stream);
            let probes = socket2::TcpKeepalive::new()
                .with_time(keepalive.idle)
                .with_interval(keepalive.interval)
                .with_retries(keepalive.retries);
            sock.set_tcp_keepalive(&probes)?;
            sock.set_tcp_user_timeout(Some(keepalive.user_timeout))?;
            Ok(Socket::Tcp(stream))
        }
        Address::Unix(dir, port) => Ok(Socket::Unix(
            UnixStream::connect(dir.join(format!(".s.PGSQL.{port}"))).await?,
        )),
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            Socket::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// The guarded socket tokio-postgres talks through.
pub(super) type Guarded = Guard<Socket>;

/// A TLS connector whose stream is guarded above TLS as well.
pub(super) struct GuardedTls<T> {
    inner: T,
    refuse: Option<&'static str>,
    flow: Arc<Flow>,
}

impl<T> GuardedTls<T> {
    /// Wrap `make`'s connector for `domain`; `refuse` and `flow` as for [`Guard::new`].
    pub(super) fn new<M>(
        make: &mut M,
        domain: &str,
        refuse: Option<&'static str>,
        flow: Arc<Flow>,
    ) -> Result<GuardedTls<T>, M::Error>
    where
        M: MakeTlsConnect<Guarded, TlsConnect = T>,
    {
        Ok(GuardedTls {
            inner: make.make_tls_connect(domain)?,
            refuse,
            flow,
        })
    }
}

impl<T> TlsConnect<Guarded> for GuardedTls<T>
where
    T: TlsConnect<Guarded> + Send + 'static,
    T::Future: Send + 'static,
    T::Stream: Send,
{
    type Stream = Guard<T::Stream>;
    type Error = T::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Stream, T::Error>> + Send>>;

    fn connect(self, stream: Guarded) -> Self::Future {
        let (refuse, flow) = (self.refuse, self.flow);
        let handshake = self.inner.connect(stream);
        Box::pin(async move {
            Ok(Guard::new(
                handshake.await?,
                Layer::AboveTls,
                refuse,
                Some(flow),
            ))
        })
    }
}

impl Target {
    /// Connect to the first server that answers, and spawn the connection's I/O task.
    pub async fn connect(&self) -> Result<Session, DbError> {
        let mut last = None;
        for address in &self.addresses {
            let attempt =
                tokio::time::timeout(self.connect_timeout, self.connect_to(address)).await;
            match attempt {
                Ok(Ok(client)) => return Ok(client),
                // A refused login ends the attempt, as in libpq: the next host would only
                // hide it behind its own failure (and count one more failed login).
                Ok(Err(e)) if e.kind == DbErrorKind::Authentication => return Err(e),
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
        // No address at all (the target always lists one): a setting to fix, not a
        // network fault to retry.
        Err(last.unwrap_or_else(|| DbError {
            kind: DbErrorKind::QueryFailed,
            message: "no database host to connect to: set PGHOST".into(),
        }))
    }

    async fn connect_to(&self, address: &Address) -> Result<Session, DbError> {
        let keepalive = self.keepalive.unwrap_or(Keepalive {
            idle: Duration::from_secs(7200),
            interval: Duration::from_secs(75),
            retries: 9,
            user_timeout: Duration::ZERO,
        });
        let socket = open(address, keepalive)
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
            shaping: std::sync::OnceLock::new(),
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
    pub async fn connect_with_retry(&self, attempts: u32) -> Result<Session, DbError> {
        let mut delay = Duration::from_millis(250);
        let mut attempt = 1;
        loop {
            match self.connect().await {
                Ok(client) => return Ok(client),
                // Wrong credentials or names will not fix themselves; only retry the network.
                Err(e) if attempt < attempts && e.kind == DbErrorKind::ConnectionLost => {
                    tracing::warn!(attempt, error = %e, "cannot connect to the database yet; retrying");
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
