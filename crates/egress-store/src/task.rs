//! The process a piece of work belongs to: who it is (host, pid), its randomness and its
//! wall clock, and the tasks it spawns. By default the real process. The simulation
//! (`tests/sim`) runs many simulated processes inside one: it gives each a [`Context`],
//! whose identity, randomness and clock it chooses (so that a run replays exactly from its
//! seed), and whose tasks, spawned through [`spawn`] or [`scoped`], it pauses and kills
//! together, as a frozen node or SIGKILL would.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

use tokio::task::JoinHandle;

/// What a simulated process answers for itself.
pub trait Process: Send + Sync {
    /// Its host (pod) name.
    fn host(&self) -> String;
    /// Its process id on that host.
    fn pid(&self) -> u32;
    /// Whether the process `pid` on this process's host still exists.
    fn is_alive(&self, pid: u32) -> bool;
    /// A random number from the process's own generator.
    fn random(&self) -> u64;
    /// Its wall clock, milliseconds since the epoch.
    fn unix_millis(&self) -> i64;
}

/// Whether a simulated process's tasks may run.
#[derive(Debug, Default)]
pub struct Gate {
    state: Mutex<GateState>,
}

#[derive(Debug, Default)]
struct GateState {
    paused: bool,
    killed: bool,
    waiting: Vec<Waker>,
}

impl Gate {
    /// Stop running the process's tasks until [`Gate::resume`].
    pub fn pause(&self) {
        self.with(|s| s.paused = true);
    }

    /// Run them again.
    pub fn resume(&self) {
        let wakers = self.with(|s| {
            s.paused = false;
            std::mem::take(&mut s.waiting)
        });
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Never run them again (nothing is undone: a SIGKILL).
    pub fn kill(&self) {
        self.with(|s| {
            s.killed = true;
            s.waiting.clear();
        });
    }

    /// True once killed.
    pub fn killed(&self) -> bool {
        self.with(|s| s.killed)
    }

    fn with<T>(&self, f: impl FnOnce(&mut GateState) -> T) -> T {
        match self.state.lock() {
            Ok(mut s) => f(&mut s),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// True when a task may be polled now; otherwise `waker` is woken on resume.
    fn open(&self, waker: &Waker) -> bool {
        self.with(|s| {
            if s.killed {
                return false;
            }
            if s.paused {
                s.waiting.push(waker.clone());
                return false;
            }
            true
        })
    }
}

/// A simulated process: what it answers, and the gate its tasks pass.
#[derive(Clone)]
pub struct Context {
    process: Arc<dyn Process>,
    gate: Arc<Gate>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Context({}:{})", self.process.host(), self.process.pid())
    }
}

impl Context {
    /// The context of `process`, whose tasks pass `gate`.
    pub fn new(process: Arc<dyn Process>, gate: Arc<Gate>) -> Context {
        Context { process, gate }
    }

    /// Run `future` as this process's main task (on the caller's task).
    pub fn run<F: Future>(&self, future: F) -> impl Future<Output = F::Output> {
        CURRENT.scope(self.clone(), Gated::new(self.gate.clone(), future))
    }
}

tokio::task_local! {
    static CURRENT: Context;
}

fn current() -> Option<Context> {
    CURRENT.try_with(Context::clone).ok()
}

/// True inside a simulated process.
pub fn simulated() -> bool {
    current().is_some()
}

/// `future`, made a task of the current process: paused and killed with it.
pub fn scoped<F>(future: F) -> futures::future::Either<impl Future<Output = F::Output>, F>
where
    F: Future,
{
    match current() {
        Some(ctx) => futures::future::Either::Left(ctx.run(future)),
        None => futures::future::Either::Right(future),
    }
}

/// `tokio::spawn`, the task belonging to the current process.
pub fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(scoped(future))
}

/// This process's host name (the pod's, in Kubernetes).
pub fn host() -> String {
    match current() {
        Some(ctx) => ctx.process.host(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default(),
    }
}

/// This process's id.
pub fn pid() -> u32 {
    match current() {
        Some(ctx) => ctx.process.pid(),
        None => std::process::id(),
    }
}

/// Whether process `pid` of this host still exists.
pub fn is_alive(pid: u32) -> bool {
    if let Some(ctx) = current() {
        return ctx.process.is_alive(pid);
    }
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks whether the process exists.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    alive || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// A random number: the process's own generator in a simulation, else the system's.
pub fn random() -> u64 {
    match current() {
        Some(ctx) => ctx.process.random(),
        None => rand::random(),
    }
}

/// The wall clock, milliseconds since the epoch.
pub fn unix_millis() -> i64 {
    match current() {
        Some(ctx) => ctx.process.unix_millis(),
        None => chrono::Utc::now().timestamp_millis(),
    }
}

/// A future polled only while its process's gate is open.
struct Gated<F> {
    gate: Arc<Gate>,
    inner: Pin<Box<F>>,
}

impl<F: Future> Gated<F> {
    fn new(gate: Arc<Gate>, inner: F) -> Gated<F> {
        Gated {
            gate,
            inner: Box::pin(inner),
        }
    }
}

impl<F: Future> Future for Gated<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<F::Output> {
        if !self.gate.open(cx.waker()) {
            return Poll::Pending;
        }
        self.inner.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    struct Fake;

    impl Process for Fake {
        fn host(&self) -> String {
            "sim-host".into()
        }
        fn pid(&self) -> u32 {
            7
        }
        fn is_alive(&self, pid: u32) -> bool {
            pid == 7
        }
        fn random(&self) -> u64 {
            42
        }
        fn unix_millis(&self) -> i64 {
            1_000
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_simulated_process_answers_for_itself_and_its_tasks_stop_with_it() {
        let gate = Arc::new(Gate::default());
        let ctx = Context::new(Arc::new(Fake), gate.clone());
        let ticks = Arc::new(AtomicU64::new(0));
        let counted = ticks.clone();
        let main = ctx.run(async move {
            assert_eq!(
                (host(), pid(), random(), unix_millis()),
                ("sim-host".into(), 7, 42, 1_000)
            );
            assert!(is_alive(7) && !is_alive(8));
            // A spawned task belongs to the process too.
            spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    counted.fetch_add(1, Ordering::SeqCst);
                }
            });
        });
        main.await;
        tokio::time::sleep(Duration::from_millis(3_500)).await;
        assert_eq!(ticks.load(Ordering::SeqCst), 3);
        gate.pause();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(ticks.load(Ordering::SeqCst), 3, "paused");
        gate.resume();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(
            ticks.load(Ordering::SeqCst) >= 4,
            "resumed, its late timers fire"
        );
        gate.kill();
        let now = ticks.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(ticks.load(Ordering::SeqCst), now, "killed");
        assert!(!simulated(), "outside the process");
        assert_eq!(pid(), std::process::id());
    }
}
