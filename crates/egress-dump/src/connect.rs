//! Opening the connection ourselves (TCP with keepalives, or a Unix socket), so that the
//! password guard ([`crate::guard`]) sits below and above TLS, then handing the stream to
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

use crate::guard::{Flow, Guard, Layer};

/// Where one server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A host name or address, and a port.
    Tcp(String, u16),
    /// A Unix socket directory (`/var/run/postgresql`), and the port naming the socket.
    Unix(PathBuf, u16),
}

impl Address {
    /// `host:port`, or the socket's path, for messages.
    pub fn display(&self) -> String {
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
pub struct Keepalive {
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
pub enum Socket {
    /// TCP.
    Tcp(TcpStream),
    /// A Unix socket.
    Unix(UnixStream),
}

/// Connect to `address`.
pub async fn open(address: &Address, keepalive: Keepalive) -> io::Result<Socket> {
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
pub type Guarded = Guard<Socket>;

/// A TLS connector whose stream is guarded above TLS as well.
pub struct GuardedTls<T> {
    inner: T,
    refuse: Option<&'static str>,
    flow: Arc<Flow>,
}

impl<T> GuardedTls<T> {
    /// Wrap `make`'s connector for `domain`; `refuse` and `flow` as for [`Guard::new`].
    pub fn new<M>(
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
