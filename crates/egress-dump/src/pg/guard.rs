//! A watch on the server's messages, where they travel in plain (on the socket, or above
//! TLS), for three jobs tokio-postgres cannot do:
//!
//! - **Never give the password away.** A server that asks for the password in clear text
//!   (AuthenticationCleartextPassword) where that is not safe fails the connection before
//!   the driver could answer; tokio-postgres would otherwise send `PGPASSWORD` to whoever
//!   declines TLS and asks for it.
//! - **Read COPY rows in bulk.** tokio-postgres reads 8 KB at a time and parses, queues and
//!   hands over every CopyData message on its own: one per row, 1.8 M on the bench table,
//!   and the largest share of the typed dump's client CPU (`perf record`). While a COPY is
//!   tapped ([`Flow::tap`]) the watch reads [`SCRATCH`] bytes at a time and hands the rows'
//!   bytes straight to the dump's [`Tap`]; the driver sees the COPY start and end, no rows.
//! - **Bound memory by bytes.** Large rows the tap sent whole count against a read-ahead of
//!   1 MiB ([`Flow`]) until the dump drops them; reading pauses at that, so a dump holds at
//!   most the row it works on and the next one.
//!
//! One guard sits on the socket (it sees the plain protocol when the connection stays
//! unencrypted, and steps aside when TLS starts); one sits above TLS.

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use futures::task::AtomicWaker;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `SSLRequest`: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
/// Authentication request codes.
const AUTH_OK: u32 = 0;
const AUTH_CLEARTEXT: u32 = 3;
/// Bytes sent whole and not yet dropped by the dump, before reading pauses.
const READ_AHEAD: u64 = 1024 * 1024;
/// Bytes read from the server at a time (tokio-postgres reads 8 KB). PostgreSQL writes 8 KB
/// at a time, and a read found 18-29 KB waiting on average on the bench table; 16
/// connections hold 512 KiB.
pub(super) const SCRATCH: usize = 32 * 1024;

/// The server asked for the password in clear text where it would travel readable.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the server asked for the password in clear text (password authentication) over {0}, where anyone on the path could read it; it was not sent")]
pub(super) struct CleartextRefused(pub &'static str);

/// Where the rows of a tapped COPY go (the dump's reader batches them into chunks).
///
/// The guard calls `row`, `data` and `end` only while no chunk is waiting to be sent.
pub trait Tap: Send {
    /// A row (one CopyData message) of `len` bytes starts.
    fn row(&mut self, len: usize);
    /// Bytes of the current row; how many were taken (fewer when a chunk filled up).
    fn data(&mut self, bytes: &[u8]) -> usize;
    /// The COPY ended (or failed): what is batched is sent.
    fn end(&mut self);
    /// True while a chunk waits to be sent.
    fn waiting(&self) -> bool;
    /// Send the waiting chunk: ready once it is sent, or once nobody reads any more.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<()>;
}

/// The COPY a connection's dump is reading: the tap its rows go to, and how far reading is
/// ahead of the dump (bytes of large rows sent, bytes dropped).
///
/// Lock-free on the row path, and with hysteresis: reading pauses once it is
/// [`READ_AHEAD`] ahead and is woken only when the dump has brought that under half.
#[derive(Default)]
pub struct Flow {
    /// A COPY is tapped: only then may reading pause (a COPY abandoned half-way must
    /// still be drained by the driver).
    active: AtomicBool,
    /// The tap for the next COPY, until the guard sees that COPY start.
    armed: Mutex<Option<Tapping>>,
    read: AtomicU64,
    taken: AtomicU64,
    /// The reader is paused (its waker registered).
    waiting: AtomicBool,
    waker: AtomicWaker,
    /// Which COPY is metered (a row dropped after its COPY ended counts for nothing).
    generation: AtomicU64,
}

impl std::fmt::Debug for Flow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flow")
            .field("active", &self.active.load(SeqCst))
            .field("behind", &self.behind())
            .finish_non_exhaustive()
    }
}

/// Bytes sent whole, counted off the read-ahead when dropped.
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

/// A COPY tapped: while this lives its rows go to the tap; once it is dropped they are
/// read and dropped, and reading never pauses.
pub struct Tapped<'a>(&'a Flow);

impl Drop for Tapped<'_> {
    fn drop(&mut self) {
        self.0.active.store(false, SeqCst);
        drop(self.0.take_armed());
        self.0.waker.wake();
    }
}

impl Flow {
    /// Send the rows of the next COPY on this connection to `tap` (until the returned value
    /// is dropped). Arm it before the COPY is sent.
    pub fn tap(&self, tap: Box<dyn Tap>) -> Tapped<'_> {
        let generation = self.generation.fetch_add(1, SeqCst) + 1;
        self.read.store(0, SeqCst);
        self.taken.store(0, SeqCst);
        let armed = Tapping {
            tap,
            generation,
            ended: false,
        };
        *self.armed.lock().unwrap_or_else(PoisonError::into_inner) = Some(armed);
        self.active.store(true, SeqCst);
        Tapped(self)
    }

    /// `len` bytes sent whole: counted as read now, as taken when the returned value is
    /// dropped (by whoever finishes with them), if this COPY is still the one metered.
    pub fn sent_whole(self: &Arc<Self>, len: usize) -> TakenOnDrop {
        if self.active.load(SeqCst) {
            self.read.fetch_add(len as u64, SeqCst);
        }
        TakenOnDrop {
            flow: self.clone(),
            generation: self.generation.load(SeqCst),
            len,
        }
    }

    fn took(&self, len: usize) {
        self.taken.fetch_add(len as u64, SeqCst);
        if self.waiting.load(SeqCst) && self.behind() < READ_AHEAD / 2 {
            self.waiting.store(false, SeqCst);
            self.waker.wake();
        }
    }

    fn take_armed(&self) -> Option<Tapping> {
        self.armed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// The tapped COPY, if one is: its generation.
    fn tapping(&self) -> Option<u64> {
        self.active
            .load(SeqCst)
            .then(|| self.generation.load(SeqCst))
    }

    /// Bytes read and not yet taken.
    fn behind(&self) -> u64 {
        self.read
            .load(SeqCst)
            .saturating_sub(self.taken.load(SeqCst))
    }

    /// True when reading has run `READ_AHEAD` ahead of the dump.
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
    /// Reading the rest of a message (for the driver).
    Body { left: usize },
    /// Reading the rest of a row of a tapped COPY (for the tap, or for nobody).
    Row { left: usize },
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
    /// Bytes read from the server and not yet routed: `scratch[pos..filled]`.
    scratch: Vec<u8>,
    pos: usize,
    filled: usize,
    /// Bytes routed to the driver and not yet handed over.
    pending: BytesMut,
    /// A COPY's rows are being read: they go to `tap`, or nowhere once it was abandoned.
    copying: bool,
    tap: Option<Tapping>,
}

/// A tap, and the COPY it was armed for (taken together, dropped together).
struct Tapping {
    tap: Box<dyn Tap>,
    generation: u64,
    /// The COPY ended: the tap goes once its last chunk is sent.
    ended: bool,
}

impl<S> Guard<S> {
    /// Watch `inner` at `layer`: refuse cleartext requests naming `refuse` (`None`: allow
    /// them), and tap the COPYs armed on `flow` (`None`: none).
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
            scratch: Vec::new(),
            pos: 0,
            filled: 0,
            pending: BytesMut::new(),
            copying: false,
            tap: None,
        }
    }

    /// Route the bytes read and not yet routed, until they are all routed or a chunk of
    /// the tap waits to be sent; an error when the server asks for the password in clear.
    fn route(&mut self) -> Result<(), CleartextRefused> {
        let scratch = std::mem::take(&mut self.scratch);
        let mut result = Ok(());
        while self.pos < self.filled && !self.tap.as_ref().is_some_and(|t| t.tap.waiting()) {
            match self.step(&scratch[self.pos..self.filled]) {
                Ok((next, used)) => {
                    self.state = next;
                    self.pos += used;
                }
                Err(refused) => {
                    result = Err(refused);
                    break;
                }
            }
        }
        self.scratch = scratch;
        result
    }

    /// One step over `data`: the next state and how many bytes it took, routed to the
    /// driver (`pending`), to the tap, or nowhere.
    fn step(&mut self, data: &[u8]) -> Result<(State, usize), CleartextRefused> {
        Ok(match self.state {
            State::FirstWrite | State::Done => {
                self.pending.extend_from_slice(data);
                (self.state, data.len())
            }
            State::SslReply => {
                self.pending.extend_from_slice(&data[..1]);
                // `S`: TLS starts and the guard above TLS takes over.
                match data[0] {
                    b'S' => (State::Done, 1),
                    _ => (State::Header { len: 0 }, 1),
                }
            }
            // A whole header at hand (the usual case, once per row): take it at once.
            State::Header { len: 0 } if data.len() >= 5 => {
                self.header.copy_from_slice(&data[..5]);
                (self.message(), 5)
            }
            State::Header { len } => {
                self.header[len] = data[0];
                if len + 1 < 5 {
                    return Ok((State::Header { len: len + 1 }, 1));
                }
                (self.message(), 1)
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
                self.pending.extend_from_slice(&self.code);
                (self.body(left - 4), 1)
            }
            State::Body { left } => {
                let used = left.min(data.len());
                self.pending.extend_from_slice(&data[..used]);
                (self.body(left - used), used)
            }
            State::Row { left } => {
                let at_most = left.min(data.len());
                let used = match &mut self.tap {
                    Some(t) => t.tap.data(&data[..at_most]),
                    None => at_most,
                };
                match left - used {
                    0 => (State::Header { len: 0 }, used),
                    left => (State::Row { left }, used),
                }
            }
        })
    }

    /// A message's header is complete: where its body goes, and what it starts or ends.
    fn message(&mut self) -> State {
        let [tag, size @ ..] = self.header;
        let left = (u32::from_be_bytes(size) as usize).saturating_sub(4);
        match (self.copying, tag) {
            (true, b'd') => {
                if let Some(t) = &mut self.tap {
                    t.tap.row(left);
                }
                return match left {
                    0 => State::Header { len: 0 },
                    left => State::Row { left },
                };
            }
            // Notices, parameter changes and notifications may come between rows: for the
            // driver; the COPY goes on.
            (true, b'N' | b'S' | b'A') => {}
            // CopyDone, or an error: the rows ended.
            (true, _) => {
                self.copying = false;
                if let Some(t) = &mut self.tap {
                    t.tap.end();
                    t.ended = true;
                }
            }
            // CopyOutResponse: the rows that follow go to the tap armed for them, if any.
            (false, b'H') => {
                if let Some(armed) = self.flow.as_ref().and_then(|f| f.take_armed()) {
                    self.tap = Some(armed);
                    self.copying = true;
                }
            }
            (false, _) => {}
        }
        if tag == b'R' && left >= 4 && self.refuse.is_some() {
            self.pending.extend_from_slice(&self.header);
            return State::Code { len: 0, left };
        }
        self.pending.extend_from_slice(&self.header);
        self.body(left)
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

impl<S: AsyncRead + Unpin> Guard<S> {
    /// Read what the server sent next into the scratch buffer (nothing read: the end).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.scratch.is_empty() {
            self.scratch = vec![0; SCRATCH];
        }
        let mut buf = ReadBuf::new(&mut self.scratch);
        ready!(Pin::new(&mut self.inner).poll_read(cx, &mut buf))?;
        self.filled = buf.filled().len();
        self.pos = 0;
        Poll::Ready(Ok(()))
    }

    /// Send the tap's waiting chunk; let the tap go once the COPY ended and all is sent, or
    /// once the dump abandoned the COPY (and perhaps armed the next one already).
    fn poll_tap(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(t) = &mut self.tap else {
            return Poll::Ready(());
        };
        let Some(flow) = self.flow.as_ref() else {
            return Poll::Ready(());
        };
        if flow.tapping() != Some(t.generation) {
            self.tap = None;
            return Poll::Ready(());
        }
        if t.tap.waiting() && t.tap.poll_send(cx).is_pending() {
            // Giving the COPY up wakes this too ([`Tapped`]'s drop), checked once more after
            // registering so that a drop in between is not missed.
            flow.waker.register(cx.waker());
            if flow.tapping() != Some(t.generation) {
                self.tap = None;
                return Poll::Ready(());
            }
            return Poll::Pending;
        }
        if t.ended {
            self.tap = None;
        }
        Poll::Ready(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            ready!(this.poll_tap(cx));
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.pos < this.filled {
                this.route()
                    .map_err(|refused| io::Error::new(io::ErrorKind::PermissionDenied, refused))?;
                continue;
            }
            if this.state == State::Done {
                // TLS took the stream (this guard is on the socket): nothing more to read here.
                this.scratch = Vec::new();
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            // Pause while the dump holds the large rows sent so far.
            if this.tap.is_some() && this.flow.as_ref().is_some_and(|f| f.must_wait(cx)) {
                return Poll::Pending;
            }
            ready!(this.poll_fill(cx))?;
            if this.filled == 0 {
                return Poll::Ready(Ok(()));
            }
        }
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
    use tokio::io::AsyncReadExt;

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

    fn guard(layer: Layer) -> Guard<&'static [u8]> {
        Guard::new(&[][..], layer, Some("an unencrypted connection"), None)
    }

    /// Route `bytes` as if just read, sending the tap's chunks as they wait.
    fn feed<S>(g: &mut Guard<S>, bytes: &[u8]) -> Result<(), CleartextRefused> {
        (g.scratch, g.pos, g.filled) = (bytes.to_vec(), 0, bytes.len());
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        while g.pos < g.filled {
            g.route()?;
            if let Some(t) = &mut g.tap {
                assert!(t.tap.poll_send(&mut cx).is_ready());
            }
        }
        Ok(())
    }

    #[test]
    fn a_cleartext_request_is_refused_even_split_across_reads() {
        let mut g = guard(Layer::AboveTls);
        let msg = auth(3, b"");
        assert!(feed(&mut g, &msg[..3]).is_ok());
        assert!(feed(&mut g, &msg[3..]).is_err());
    }

    #[test]
    fn scram_and_md5_pass_and_authentication_ok_ends_the_watch() {
        let mut g = guard(Layer::AboveTls);
        assert!(feed(&mut g, &auth(10, b"SCRAM-SHA-256\0\0")).is_ok());
        assert!(feed(&mut g, &auth(12, b"v=abc")).is_ok());
        assert!(feed(&mut g, &auth(0, b"")).is_ok());
        assert_eq!(g.state, State::Done);
        let mut g = guard(Layer::AboveTls);
        assert!(feed(&mut g, &auth(5, b"salt")).is_ok());
        // A message without a body, then the cleartext request right after it.
        let mut g = guard(Layer::AboveTls);
        let mut bytes = message(b'v', b"");
        bytes.extend(auth(3, b""));
        assert!(feed(&mut g, &bytes).is_err());
    }

    #[test]
    fn on_the_socket_tls_hands_over_and_a_refused_tls_keeps_watching() {
        let mut g = guard(Layer::Socket);
        g.state = State::SslReply;
        assert!(feed(&mut g, b"S").is_ok());
        assert_eq!(g.state, State::Done);
        let mut g = guard(Layer::Socket);
        g.state = State::SslReply;
        let mut bytes = b"N".to_vec();
        bytes.extend(auth(3, b""));
        assert!(
            feed(&mut g, &bytes).is_err(),
            "declined TLS, then asked for the password"
        );
        let mut allowed: Guard<&[u8]> = Guard::new(&[][..], Layer::Socket, None, None);
        assert!(feed(&mut allowed, &auth(3, b"")).is_ok());
    }

    /// A tap that keeps the rows it is given, taking at most `step` bytes at a time and
    /// making the guard wait after each.
    struct Keep {
        rows: Arc<Mutex<Vec<Vec<u8>>>>,
        step: usize,
        waiting: bool,
        /// While set, nothing is sent (the reader is slow).
        blocked: Arc<AtomicBool>,
    }

    impl Keep {
        fn new(rows: Arc<Mutex<Vec<Vec<u8>>>>, step: usize) -> Keep {
            Keep {
                rows,
                step,
                waiting: false,
                blocked: Arc::default(),
            }
        }
    }

    impl Tap for Keep {
        fn row(&mut self, _len: usize) {
            assert!(!self.waiting);
            self.rows.lock().unwrap().push(Vec::new());
        }
        fn data(&mut self, bytes: &[u8]) -> usize {
            assert!(!self.waiting);
            let n = bytes.len().min(self.step);
            let mut rows = self.rows.lock().unwrap();
            rows.last_mut().unwrap().extend_from_slice(&bytes[..n]);
            self.waiting = true;
            n
        }
        fn end(&mut self) {
            self.waiting = true;
        }
        fn waiting(&self) -> bool {
            self.waiting
        }
        fn poll_send(&mut self, _cx: &mut Context<'_>) -> Poll<()> {
            if self.blocked.load(SeqCst) {
                return Poll::Pending;
            }
            self.waiting = false;
            Poll::Ready(())
        }
    }

    /// What the server sends for a COPY of `rows`, between two other requests.
    fn copy_reply(rows: &[&[u8]]) -> (Vec<u8>, Vec<u8>) {
        let mut driver = message(b'Z', b"I");
        driver.extend(message(b'2', b""));
        driver.extend(message(b'H', &[0, 0, 1, 0, 0]));
        let mut all = driver.clone();
        for row in rows {
            all.extend(message(b'd', row));
        }
        let end = [
            message(b'c', b""),
            message(b'C', b"COPY 3\0"),
            message(b'Z', b"I"),
        ]
        .concat();
        driver.extend(&end);
        all.extend(end);
        (all, driver)
    }

    /// Read everything through a guard on `flow`, `chunk` bytes at a time at most.
    async fn read_through(bytes: &[u8], flow: &Arc<Flow>, chunk: usize) -> Vec<u8> {
        let mut g = Guard::new(bytes, Layer::AboveTls, None, Some(flow.clone()));
        let mut driver = Vec::new();
        let mut buf = vec![0; chunk];
        loop {
            let n = g.read(&mut buf).await.unwrap();
            if n == 0 {
                return driver;
            }
            driver.extend_from_slice(&buf[..n]);
        }
    }

    #[tokio::test]
    async fn a_tapped_copy_gives_its_rows_to_the_tap_and_the_rest_to_the_driver() {
        let big = vec![7u8; 3 * SCRATCH + 11];
        let rows: [&[u8]; 4] = [b"1,a\n", b"", &big, b"2,b\n"];
        let (all, driver_part) = copy_reply(&rows);
        for (step, chunk) in [(1, 1), (3, 5), (usize::MAX, 8192)] {
            let flow = Arc::new(Flow::default());
            let kept = Arc::new(Mutex::new(Vec::new()));
            let tap = Keep::new(kept.clone(), step);
            let tapped = flow.tap(Box::new(tap));
            let driver = read_through(&all, &flow, chunk).await;
            assert_eq!(driver, driver_part, "the driver sees all but the rows");
            assert_eq!(*kept.lock().unwrap(), rows.map(<[u8]>::to_vec));
            drop(tapped);
        }
    }

    #[tokio::test]
    async fn rows_reach_the_driver_when_no_tap_is_armed_or_after_it_was_dropped() {
        let (all, _) = copy_reply(&[b"1,a\n", b"2,b\n"]);
        let flow = Arc::new(Flow::default());
        assert_eq!(read_through(&all, &flow, 8192).await, all);
        let kept = Arc::new(Mutex::new(Vec::new()));
        let tap = Keep::new(kept.clone(), usize::MAX);
        drop(flow.tap(Box::new(tap)));
        assert_eq!(read_through(&all, &flow, 8192).await, all);
        assert!(kept.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_rows_of_an_abandoned_copy_are_read_and_dropped() {
        let (all, driver_part) = copy_reply(&[b"1,a\n", b"2,b\n"]);
        let flow = Arc::new(Flow::default());
        let kept = Arc::new(Mutex::new(Vec::new()));
        let tap = Keep::new(kept.clone(), usize::MAX);
        let tapped = flow.tap(Box::new(tap));
        let mut g = Guard::new(&all[..], Layer::AboveTls, None, Some(flow.clone()));
        let mut buf = vec![0; 5];
        g.read_exact(&mut buf).await.unwrap();
        // The first row went to the tap; the dump gives up on the COPY.
        assert_eq!(kept.lock().unwrap().len(), 1);
        drop(tapped);
        let mut rest = Vec::new();
        g.read_to_end(&mut rest).await.unwrap();
        buf.extend(rest);
        assert_eq!(buf, driver_part, "the driver sees the COPY end");
        assert_eq!(kept.lock().unwrap().len(), 1, "the second row is dropped");
    }

    #[tokio::test]
    async fn the_next_copy_armed_before_the_last_one_drained_gets_only_its_own_rows() {
        let (first, first_driver) = copy_reply(&[b"a1\n", b"a2\n"]);
        let (second, second_driver) = copy_reply(&[b"b1\n"]);
        let all = [first, second].concat();
        let flow = Arc::new(Flow::default());
        let keep = |rows: &Arc<Mutex<Vec<Vec<u8>>>>| Box::new(Keep::new(rows.clone(), usize::MAX));
        let (kept_a, kept_b) = (Arc::default(), Arc::default());
        let tapped = flow.tap(keep(&kept_a));
        let mut g = Guard::new(&all[..], Layer::AboveTls, None, Some(flow.clone()));
        let mut driver = vec![0; 5];
        g.read_exact(&mut driver).await.unwrap();
        assert_eq!(kept_a.lock().unwrap().len(), 1);
        // The first COPY is given up, the next one armed, before its rows were read.
        drop(tapped);
        let _tapped = flow.tap(keep(&kept_b));
        g.read_to_end(&mut driver).await.unwrap();
        assert_eq!(driver, [first_driver, second_driver].concat());
        assert_eq!(*kept_a.lock().unwrap(), [b"a1\n".to_vec()]);
        assert_eq!(*kept_b.lock().unwrap(), [b"b1\n".to_vec()]);
    }

    #[tokio::test]
    async fn notices_between_rows_go_to_the_driver_and_the_copy_goes_on() {
        let (all, driver_part) = copy_reply(&[b"1,a\n", b"2,b\n"]);
        let notice = message(b'N', b"SNOTICE\0Mhello\0\0");
        // The first row ends 9 bytes after the CopyOutResponse: the notice goes there.
        let h_end = [
            message(b'Z', b"I"),
            message(b'2', b""),
            message(b'H', &[0, 0, 1, 0, 0]),
        ]
        .concat()
        .len();
        let at = h_end + 9;
        let with_notice = [&all[..at], &notice, &all[at..]].concat();
        let expected_driver = [&driver_part[..h_end], &notice, &driver_part[h_end..]].concat();
        let flow = Arc::new(Flow::default());
        let kept = Arc::new(Mutex::new(Vec::new()));
        let _tapped = flow.tap(Box::new(Keep::new(kept.clone(), usize::MAX)));
        assert_eq!(
            read_through(&with_notice, &flow, 8192).await,
            expected_driver
        );
        assert_eq!(
            *kept.lock().unwrap(),
            [b"1,a\n".to_vec(), b"2,b\n".to_vec()]
        );
    }

    #[tokio::test]
    async fn a_copy_given_up_while_its_last_chunk_waits_leaves_the_next_tap_alone() {
        let (first, first_driver) = copy_reply(&[b"a1\n"]);
        let (second, second_driver) = copy_reply(&[b"b1\n", b"b2\n"]);
        let all = [first, second].concat();
        let flow = Arc::new(Flow::default());
        let (kept_a, kept_b) = (Arc::default(), Arc::default());
        let tap_a = Keep::new(Arc::clone(&kept_a), usize::MAX);
        let blocked = tap_a.blocked.clone();
        let tapped = flow.tap(Box::new(tap_a));
        let mut g = Guard::new(&all[..], Layer::AboveTls, None, Some(flow.clone()));
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut space = vec![0; 8192];
        let mut buf = ReadBuf::new(&mut space);
        // The COPY's start and its row; then its end, whose last chunk cannot be sent.
        assert!(Pin::new(&mut g).poll_read(&mut cx, &mut buf).is_ready());
        blocked.store(true, SeqCst);
        assert!(Pin::new(&mut g).poll_read(&mut cx, &mut buf).is_pending());
        // The dump gives up on it and arms the next COPY.
        drop(tapped);
        let _tapped = flow.tap(Box::new(Keep::new(Arc::clone(&kept_b), usize::MAX)));
        let mut driver = buf.filled().to_vec();
        g.read_to_end(&mut driver).await.unwrap();
        assert_eq!(driver, [first_driver, second_driver].concat());
        assert_eq!(*kept_a.lock().unwrap(), [b"a1\n".to_vec()]);
        assert_eq!(
            *kept_b.lock().unwrap(),
            [b"b1\n".to_vec(), b"b2\n".to_vec()]
        );
    }

    #[test]
    fn whole_rows_count_against_the_read_ahead_until_dropped() {
        let flow = Arc::new(Flow::default());
        let tapped = flow.tap(Box::new(Keep::new(Arc::default(), 1)));
        let waker = futures::task::noop_waker();
        let cx = Context::from_waker(&waker);
        let row = flow.sent_whole(2 * 1024 * 1024);
        assert!(flow.must_wait(&cx), "a 2 MiB row sent and not taken: pause");
        drop(row);
        assert!(!flow.must_wait(&cx), "taken: read on");
        let _row = flow.sent_whole(2 * 1024 * 1024);
        assert!(flow.must_wait(&cx));
        drop(tapped);
        assert!(
            !flow.must_wait(&cx),
            "an abandoned COPY never blocks the connection"
        );
    }
}
