//! A watch on the server's messages, where they travel in plain (on the socket, or above
//! TLS), for two jobs tokio-postgres cannot do:
//!
//! - **Never give the password away.** A server that asks for the password in clear text
//!   (AuthenticationCleartextPassword) where that is not safe fails the connection before
//!   the driver could answer; tokio-postgres would otherwise send `PGPASSWORD` to whoever
//!   declines TLS and asks for it.
//! - **Bound memory by bytes.** tokio-postgres reads up to four messages ahead of its
//!   reader; with 50 MB rows that is 200 MB. The watch stops reading at a message boundary
//!   while the rows already read but not yet taken by the dump ([`Flow`]) reach 1 MiB, so a
//!   dump holds at most the row it works on and the next one.
//!
//! One guard sits on the socket (it sees the plain protocol when the connection stays
//! unencrypted, and steps aside when TLS starts); one sits above TLS.

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::task::AtomicWaker;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `SSLRequest`: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
/// Authentication request codes.
const AUTH_OK: u32 = 0;
const AUTH_CLEARTEXT: u32 = 3;
/// Rows read ahead of the dump, in bytes, before reading pauses.
const READ_AHEAD: u64 = 1024 * 1024;

/// The server asked for the password in clear text where it would travel readable.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the server asked for the password in clear text (password authentication) over {0}, where anyone on the path could read it; it was not sent")]
pub(super) struct CleartextRefused(pub &'static str);

/// How far reading is ahead of the dump: COPY rows read from the server, rows taken.
///
/// Lock-free, and with hysteresis: reading pauses once it is [`READ_AHEAD`] ahead and is
/// woken only when the dump has brought that under half, not for every row taken. With a
/// mutex, `Flow::read` and `Flow::took` (once per row each) were 4% of the Parquet run's
/// samples on the bench table (1.8M rows, `perf record`); lock-free they no longer show.
#[derive(Debug, Default)]
pub struct Flow {
    /// A COPY is being read: only then may reading pause (a COPY abandoned half-way must
    /// still be drained by the driver).
    active: AtomicBool,
    read: AtomicU64,
    taken: AtomicU64,
    /// The reader is paused (its waker registered).
    waiting: AtomicBool,
    waker: AtomicWaker,
    /// Which COPY is metered (a row taken after its COPY ended counts for nothing).
    generation: AtomicU64,
}

/// A row handed on whole, taken (its bytes counted off the read-ahead) when dropped.
#[derive(Debug)]
pub struct TakenOnDrop {
    flow: Arc<Flow>,
    generation: u64,
    len: usize,
}

impl Drop for TakenOnDrop {
    fn drop(&mut self) {
        if self.flow.generation.load(SeqCst) == self.generation {
            self.flow.took(self.len);
        }
    }
}

/// Metering for one COPY; reading never pauses once it is dropped.
pub struct Metered<'a>(&'a Flow);

impl Drop for Metered<'_> {
    fn drop(&mut self) {
        self.0.active.store(false, SeqCst);
        self.0.waker.wake();
    }
}

impl Flow {
    /// Start metering a COPY (until the returned value is dropped).
    pub fn meter(&self) -> Metered<'_> {
        self.generation.fetch_add(1, SeqCst);
        self.read.store(0, SeqCst);
        self.taken.store(0, SeqCst);
        self.active.store(true, SeqCst);
        Metered(self)
    }

    /// A row of `len` bytes handed on whole: taken when the returned value is dropped (by
    /// whoever finishes with the row), if this COPY is still the one metered.
    pub fn taken_on_drop(self: &Arc<Self>, len: usize) -> TakenOnDrop {
        TakenOnDrop {
            flow: self.clone(),
            generation: self.generation.load(SeqCst),
            len,
        }
    }

    /// The dump took a row whose CopyData body was `len` bytes.
    pub fn took(&self, len: usize) {
        self.taken.fetch_add(len as u64 + 5, SeqCst);
        if self.waiting.load(SeqCst) && self.behind() < READ_AHEAD / 2 {
            self.waiting.store(false, SeqCst);
            self.waker.wake();
        }
    }

    fn read(&self, message_len: u64) {
        if self.active.load(SeqCst) {
            self.read.fetch_add(message_len, SeqCst);
        }
    }

    /// Bytes read and not yet taken.
    fn behind(&self) -> u64 {
        self.read
            .load(SeqCst)
            .saturating_sub(self.taken.load(SeqCst))
    }

    /// True when reading has run `READ_AHEAD` ahead: reads then stop at the end of the
    /// message being read, and pause there.
    fn ahead(&self) -> bool {
        self.active.load(SeqCst) && self.behind() >= READ_AHEAD
    }

    /// True (and `cx` registered) when reading must pause. The waker is registered and
    /// `waiting` set before the check, so a row taken meanwhile is never missed.
    fn must_wait(&self, cx: &Context<'_>) -> bool {
        if !self.ahead() {
            return false;
        }
        self.waker.register(cx.waker());
        self.waiting.store(true, SeqCst);
        if self.ahead() {
            return true;
        }
        self.waiting.store(false, SeqCst);
        false
    }
}

/// Where the guard sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Layer {
    /// On the socket: the first thing written may be an SSLRequest.
    Socket,
    /// Above TLS: the protocol starts with the server's messages.
    AboveTls,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting to see whether the client asks for TLS.
    FirstWrite,
    /// The client asked for TLS; the server answers `S` or `N`.
    SslReply,
    /// Reading a message header (type and length).
    Header { len: usize },
    /// Reading an authentication request's code.
    Code { len: usize, left: usize },
    /// Reading the rest of a message.
    Body { left: usize },
    /// Nothing more to watch here (TLS took the stream, or there is nothing to watch).
    Done,
}

/// A stream watched as the module says.
pub(super) struct Guard<S> {
    inner: S,
    state: State,
    header: [u8; 5],
    code: [u8; 4],
    /// `Some(where)` while a cleartext request must be refused (it names the connection).
    refuse: Option<&'static str>,
    flow: Option<Arc<Flow>>,
}

impl<S> Guard<S> {
    /// Watch `inner` at `layer`: refuse cleartext requests naming `refuse` (`None`: allow
    /// them), and meter COPY rows into `flow` (`None`: do not).
    pub(super) fn new(
        inner: S,
        layer: Layer,
        refuse: Option<&'static str>,
        flow: Option<Arc<Flow>>,
    ) -> Guard<S> {
        let state = match (refuse.is_some() || flow.is_some(), layer) {
            (false, _) => State::Done,
            (true, Layer::Socket) => State::FirstWrite,
            (true, Layer::AboveTls) => State::Header { len: 0 },
        };
        Guard {
            inner,
            state,
            header: [0; 5],
            code: [0; 4],
            refuse,
            flow,
        }
    }

    /// Watch bytes the server sent; an error when they ask for the password in clear.
    fn observe(&mut self, mut data: &[u8]) -> Result<(), CleartextRefused> {
        while !data.is_empty() {
            let (next, used) = self.step(data)?;
            self.state = next;
            data = &data[used..];
        }
        Ok(())
    }

    /// One step of the watch over `data`: the next state and how many bytes it took.
    fn step(&mut self, data: &[u8]) -> Result<(State, usize), CleartextRefused> {
        Ok(match self.state {
            State::FirstWrite | State::Done => (self.state, data.len()),
            // `S`: TLS starts and the guard above TLS takes over.
            State::SslReply if data[0] == b'S' => (State::Done, 1),
            State::SslReply => (State::Header { len: 0 }, 1),
            State::Header { len } => {
                self.header[len] = data[0];
                if len + 1 < 5 {
                    return Ok((State::Header { len: len + 1 }, 1));
                }
                let size = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]) as usize;
                let left = size.saturating_sub(4);
                if self.header[0] == b'd' {
                    if let Some(flow) = &self.flow {
                        flow.read(size as u64 + 1);
                    }
                }
                match self.header[0] {
                    b'R' if left >= 4 && self.refuse.is_some() => (State::Code { len: 0, left }, 1),
                    _ => (self.body(left), 1),
                }
            }
            State::Code { len, left } => {
                self.code[len] = data[0];
                if len + 1 < 4 {
                    return Ok((State::Code { len: len + 1, left }, 1));
                }
                match u32::from_be_bytes(self.code) {
                    AUTH_CLEARTEXT => return Err(CleartextRefused(self.refuse.unwrap_or(""))),
                    AUTH_OK => self.refuse = None,
                    _ => {}
                }
                (self.body(left - 4), 1)
            }
            State::Body { left } => {
                let used = left.min(data.len());
                (self.body(left - used), used)
            }
        })
    }

    /// The rest of a message, `left` bytes; then the next header, unless nothing is left
    /// to watch.
    fn body(&self, left: usize) -> State {
        match (left, self.refuse.is_some() || self.flow.is_some()) {
            (_, false) => State::Done,
            (0, true) => State::Header { len: 0 },
            (left, true) => State::Body { left },
        }
    }
}

impl<S> Guard<S> {
    /// How many bytes the next read may take: up to the end of the current message when
    /// reading has run far enough ahead that the next boundary is a pause.
    fn read_limit(&self) -> usize {
        match (self.state, &self.flow) {
            (State::Body { left }, Some(flow)) if flow.ahead() => left,
            _ => usize::MAX,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        // Pause between messages while the dump has not taken the rows read so far.
        if this.state == (State::Header { len: 0 })
            && this.flow.as_ref().is_some_and(|f| f.must_wait(cx))
        {
            return Poll::Pending;
        }
        let mut limited = buf.take(this.read_limit());
        let start = limited.filled().as_ptr();
        let polled = Pin::new(&mut this.inner).poll_read(cx, &mut limited);
        if !matches!(polled, Poll::Ready(Ok(()))) {
            return polled;
        }
        debug_assert_eq!(start, limited.filled().as_ptr());
        let n = limited.filled().len();
        if this.state != State::Done {
            if let Err(refused) = this.observe(limited.filled()) {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    refused,
                )));
            }
        }
        // SAFETY: the inner reader initialised these `n` bytes of `buf`'s unfilled part
        // (the same memory `limited` wraps), as tokio's own `Take` relies on.
        unsafe { buf.assume_init(n) };
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.state == State::FirstWrite {
            self.state = if buf.starts_with(&SSL_REQUEST) {
                State::SslReply
            } else {
                State::Header { len: 0 }
            };
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: tokio_postgres::tls::TlsStream + Unpin> tokio_postgres::tls::TlsStream for Guard<S> {
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        self.inner.channel_binding()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&((4 + body.len()) as u32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn auth(code: u32, extra: &[u8]) -> Vec<u8> {
        let mut body = code.to_be_bytes().to_vec();
        body.extend_from_slice(extra);
        message(b'R', &body)
    }

    fn guard(layer: Layer) -> Guard<()> {
        Guard::new((), layer, Some("an unencrypted connection"), None)
    }

    #[test]
    fn a_cleartext_request_is_refused_even_split_across_reads() {
        let mut g = guard(Layer::AboveTls);
        let msg = auth(3, b"");
        assert!(g.observe(&msg[..3]).is_ok());
        assert!(g.observe(&msg[3..]).is_err());
    }

    #[test]
    fn scram_and_md5_pass_and_authentication_ok_ends_the_watch() {
        let mut g = guard(Layer::AboveTls);
        assert!(g.observe(&auth(10, b"SCRAM-SHA-256\0\0")).is_ok());
        assert!(g.observe(&auth(12, b"v=abc")).is_ok());
        assert!(g.observe(&auth(0, b"")).is_ok());
        assert_eq!(g.state, State::Done);
        let mut g = guard(Layer::AboveTls);
        assert!(g.observe(&auth(5, b"salt")).is_ok());
        // A message without a body, then the cleartext request right after it.
        let mut g = guard(Layer::AboveTls);
        let mut bytes = message(b'v', b"");
        bytes.extend(auth(3, b""));
        assert!(g.observe(&bytes).is_err());
    }

    #[test]
    fn on_the_socket_tls_hands_over_and_a_refused_tls_keeps_watching() {
        let mut g = guard(Layer::Socket);
        g.state = State::SslReply;
        assert!(g.observe(b"S").is_ok());
        assert_eq!(g.state, State::Done);
        let mut g = guard(Layer::Socket);
        g.state = State::SslReply;
        let mut bytes = b"N".to_vec();
        bytes.extend(auth(3, b""));
        assert!(
            g.observe(&bytes).is_err(),
            "declined TLS, then asked for the password"
        );
        let mut allowed = Guard::new((), Layer::Socket, None, None);
        assert!(allowed.observe(&auth(3, b"")).is_ok());
    }

    #[test]
    fn copy_rows_are_metered_and_reading_pauses_until_the_dump_takes_them() {
        let flow = Arc::new(Flow::default());
        let metered = flow.meter();
        let mut g = Guard::new((), Layer::AboveTls, None, Some(flow.clone()));
        let big = message(b'd', &vec![b'x'; 2 * 1024 * 1024]);
        g.observe(&auth(0, b"")).unwrap();
        g.observe(&big[..1000]).unwrap();
        g.observe(&big[1000..]).unwrap();
        assert_eq!(g.state, State::Header { len: 0 });
        let waker = futures::task::noop_waker();
        let cx = Context::from_waker(&waker);
        assert!(flow.must_wait(&cx), "a 2 MiB row read and not taken: pause");
        flow.took(2 * 1024 * 1024);
        assert!(!flow.must_wait(&cx), "taken: read on");
        g.observe(&big).unwrap();
        assert!(flow.must_wait(&cx));
        drop(metered);
        assert!(
            !flow.must_wait(&cx),
            "an abandoned COPY never blocks the connection"
        );
    }
}
