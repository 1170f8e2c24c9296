//! A fault-injecting HTTP proxy in front of a test server: it records every request
//! (method and path), can run a hook before forwarding one (delete an object, remove a
//! bucket), can flip one byte of one request body in flight, can rewrite replies (a
//! damaged listing page), and can lose replies (the request took effect, the client gets a
//! 500). Each proxied request
//! gets its own upstream connection (`Connection: close`), so requests never need to be
//! told apart inside a connection. It runs on its own thread and runtime, so a test may
//! block on a child process while the proxy serves it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request as the proxy saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// `GET`, `PUT`, ...
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
}

impl Seen {
    /// An UploadPart request: a multipart upload is in flight.
    pub fn is_upload_part(&self) -> bool {
        self.method == "PUT"
            && self.target.contains("uploadId=")
            && self.target.contains("partNumber=")
    }
}

/// Run before a request is forwarded (the request is passed in).
pub type Hook = Arc<dyn Fn(&Seen) -> BoxFuture<'static, ()> + Send + Sync>;

/// What to damage: the byte at `offset` of the body of the first request with this
/// method whose body is at least `min_len` bytes.
#[derive(Debug, Clone)]
pub struct Corrupt {
    /// Method of the request to damage (`PUT`).
    pub method: String,
    /// Smallest body to damage.
    pub min_len: u64,
    /// Which byte of the body.
    pub offset: u64,
}

/// What to damage in replies: in each reply to a request whose target contains `target`
/// (at most `times` replies), the first `find` becomes `replace`. Both have one length, so
/// the reply's framing (`Content-Length`, chunks) still holds.
#[derive(Debug, Clone)]
pub struct EditReply {
    /// Part of the request target that picks the replies (`list-type=2`).
    pub target: String,
    /// The bytes to replace.
    pub find: Vec<u8>,
    /// What replaces them (as long as `find`).
    pub replace: Vec<u8>,
    /// How many replies to rewrite at most.
    pub times: usize,
}

/// Which replies to lose: the request reaches the server and takes effect, but the client
/// gets a 500 instead of the server's reply (the reply lost on the way back), for the first
/// `times` requests with this method whose target contains `target`.
#[derive(Debug, Clone)]
pub struct LoseReply {
    /// Method of the requests (`PUT`, `POST`).
    pub method: String,
    /// Part of the request target that picks them (`.egress-lease.json`, `uploadId=`).
    pub target: String,
    /// How many replies to lose.
    pub times: usize,
}

/// The two replies whose loss a run settles by reading back, each lost once, with what the
/// run then says: the reply to the creation of its lease (a PUT of a key holding `lease`;
/// the lease read back is the run's) and the reply to a multipart completion (the object
/// read back is the one written).
pub fn settled_losses(lease: &str) -> [(LoseReply, &'static str); 2] {
    let once = |method: &str, target: &str| LoseReply {
        method: method.into(),
        target: target.into(),
        times: 1,
    };
    [
        (once("PUT", lease), "the lease read back is this run's"),
        (
            once("POST", "uploadId="),
            "the object in the store is the one written",
        ),
    ]
}

/// A running proxy; stops when dropped.
pub struct Proxy {
    /// `http://127.0.0.1:<port>`
    pub endpoint: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    corrupted: Arc<AtomicBool>,
    edited: Arc<AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

struct Shared {
    upstream: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    hook: Option<Hook>,
    corrupt: Option<Corrupt>,
    corrupted: Arc<AtomicBool>,
    edit: Option<EditReply>,
    edited: Arc<AtomicUsize>,
    lose: Option<LoseReply>,
}

impl Proxy {
    /// Proxy to `upstream` that loses the replies `lose` picks; [`Proxy::edited`] counts
    /// them.
    pub fn losing_replies(upstream: &str, lose: LoseReply) -> Proxy {
        Proxy::launch_with(upstream, None, None, None, Some(lose))
    }

    /// Proxy to `upstream` that rewrites replies as `edit` says; [`Proxy::edited`] counts them.
    pub fn editing_replies(upstream: &str, edit: EditReply) -> Proxy {
        assert_eq!(
            edit.find.len(),
            edit.replace.len(),
            "an edit keeps the length"
        );
        Proxy::launch(upstream, None, None, Some(edit))
    }

    /// Proxy to `upstream` (`http://127.0.0.1:<port>`).
    pub fn start(upstream: &str, hook: Option<Hook>, corrupt: Option<Corrupt>) -> Proxy {
        Proxy::launch(upstream, hook, corrupt, None)
    }

    fn launch(
        upstream: &str,
        hook: Option<Hook>,
        corrupt: Option<Corrupt>,
        edit: Option<EditReply>,
    ) -> Proxy {
        Proxy::launch_with(upstream, hook, corrupt, edit, None)
    }

    fn launch_with(
        upstream: &str,
        hook: Option<Hook>,
        corrupt: Option<Corrupt>,
        edit: Option<EditReply>,
        lose: Option<LoseReply>,
    ) -> Proxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let port = listener.local_addr().expect("proxy address").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let corrupted = Arc::new(AtomicBool::new(false));
        let edited = Arc::new(AtomicUsize::new(0));
        let shared = Arc::new(Shared {
            upstream: upstream
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_string(),
            seen: seen.clone(),
            hook,
            corrupt,
            corrupted: corrupted.clone(),
            edit,
            edited: edited.clone(),
            lose,
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("proxy runtime");
            runtime.block_on(async move {
                let listener = TcpListener::from_std(listener).expect("proxy listener");
                let accept = async {
                    while let Ok((client, _)) = listener.accept().await {
                        let shared = shared.clone();
                        tokio::spawn(async move {
                            let _ = serve(client, shared).await;
                        });
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = stopped => {}
                }
            });
        });
        Proxy {
            endpoint: format!("http://127.0.0.1:{port}"),
            seen,
            corrupted,
            edited,
            stop: Some(stop),
        }
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// How many requests so far had `method` and a target holding `target`.
    pub fn count(&self, method: &str, target: &str) -> usize {
        let matching = |r: &&Seen| r.method == method && r.target.contains(target);
        self.requests().iter().filter(matching).count()
    }

    /// Block until a request matching `wanted` has been seen (60 s at most; `what` names it
    /// in the failure), so a fault is injected only once the condition it needs holds.
    pub fn wait_for(&self, what: &str, wanted: impl Fn(&Seen) -> bool) -> Seen {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if let Some(seen) = self.requests().into_iter().find(|r| wanted(r)) {
                return seen;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {what} reached the server in 60 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Forget the requests seen so far.
    pub fn clear(&self) {
        if let Ok(mut s) = self.seen.lock() {
            s.clear();
        }
    }

    /// How many replies were rewritten.
    pub fn edited(&self) -> usize {
        self.edited.load(Ordering::SeqCst)
    }

    /// True once a body byte was flipped.
    pub fn corrupted(&self) -> bool {
        self.corrupted.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn serve(mut client: TcpStream, shared: Arc<Shared>) -> std::io::Result<()> {
    let (head, rest) = read_head(&mut client).await?;
    let text = String::from_utf8_lossy(&head).to_string();
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let seen = Seen {
        method: parts.next().unwrap_or("").to_string(),
        target: parts.next().unwrap_or("").to_string(),
    };
    let length: u64 = lines
        .clone()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    if let Ok(mut s) = shared.seen.lock() {
        s.push(seen.clone());
    }
    if let Some(hook) = &shared.hook {
        hook(&seen).await;
    }
    let damage = shared.corrupt.as_ref().and_then(|c| {
        let wanted = c.method == seen.method && length >= c.min_len;
        (wanted && !shared.corrupted.swap(true, Ordering::SeqCst)).then_some(c.offset)
    });
    let mut upstream = TcpStream::connect(&shared.upstream).await?;
    upstream.write_all(&rewrite_head(&text)).await?;
    let (mut client_read, mut client_write) = client.into_split();
    let (mut up_read, mut up_write) = upstream.into_split();
    let to_server = async move {
        forward_body(&mut client_read, &mut up_write, rest, damage).await?;
        tokio::io::copy(&mut client_read, &mut up_write)
            .await
            .map(|_| ())
    };
    let edit = shared
        .edit
        .clone()
        .filter(|e| seen.target.contains(&e.target));
    let lose = shared.lose.as_ref().is_some_and(|l| {
        let wanted = l.method == seen.method && seen.target.contains(&l.target);
        let due = |n: usize| (n < l.times).then_some(n + 1);
        wanted
            && shared
                .edited
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, due)
                .is_ok()
    });
    let to_client = async move {
        match edit {
            _ if lose => reply_lost(&mut up_read, &mut client_write).await,
            Some(edit) => reply_edited(&mut up_read, &mut client_write, &edit, &shared).await,
            None => tokio::io::copy(&mut up_read, &mut client_write)
                .await
                .map(|_| ()),
        }
    };
    let (a, b) = tokio::join!(to_server, to_client);
    a.and(b)
}

/// The server's whole reply read (the request took effect), and a 500 sent instead.
async fn reply_lost(
    upstream: &mut tokio::net::tcp::OwnedReadHalf,
    client: &mut tokio::net::tcp::OwnedWriteHalf,
) -> std::io::Result<()> {
    let mut reply = Vec::new();
    upstream.read_to_end(&mut reply).await?;
    let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>InternalError</Code><Message>reply lost (test proxy)</Message></Error>";
    let head = format!(
        "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    client.write_all(head.as_bytes()).await?;
    client.write_all(body.as_bytes()).await
}

/// The whole reply (the server closes after it), with `edit` made if it is still due.
async fn reply_edited(
    upstream: &mut tokio::net::tcp::OwnedReadHalf,
    client: &mut tokio::net::tcp::OwnedWriteHalf,
    edit: &EditReply,
    shared: &Shared,
) -> std::io::Result<()> {
    let mut reply = Vec::new();
    upstream.read_to_end(&mut reply).await?;
    if let Some(at) = reply.windows(edit.find.len()).position(|w| w == edit.find) {
        let due = shared
            .edited
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < edit.times).then_some(n + 1)
            })
            .is_ok();
        if due {
            reply[at..at + edit.find.len()].copy_from_slice(&edit.replace);
        }
    }
    client.write_all(&reply).await
}

/// The request head (up to the blank line) and whatever body bytes came with it.
async fn read_head(client: &mut TcpStream) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((buf, rest));
        }
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The head with `Connection: close`, so the server ends the exchange after its reply.
fn rewrite_head(text: &str) -> Vec<u8> {
    let mut out = String::new();
    for line in text.trim_end_matches("\r\n\r\n").split("\r\n") {
        let name = line.split(':').next().unwrap_or("").trim();
        if name.eq_ignore_ascii_case("connection") {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    out.into_bytes()
}

/// Copy the body, flipping the byte at `damage` if asked.
async fn forward_body(
    client: &mut tokio::net::tcp::OwnedReadHalf,
    upstream: &mut tokio::net::tcp::OwnedWriteHalf,
    first: Vec<u8>,
    damage: Option<u64>,
) -> std::io::Result<()> {
    let mut offset = 0u64;
    let mut chunk = first;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if let Some(at) = damage {
            if at >= offset && at < offset + chunk.len() as u64 {
                chunk[(at - offset) as usize] ^= 0x01;
            }
        }
        upstream.write_all(&chunk).await?;
        offset += chunk.len() as u64;
        if damage.is_none_or(|at| offset > at) {
            return Ok(());
        }
        let n = client.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        chunk = buf[..n].to_vec();
    }
}
