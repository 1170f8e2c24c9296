//! What must be undone if the process is stopped (SIGTERM, SIGINT): uploads in flight and
//! temporary files. A store registers an abort action when it starts such work and
//! unregisters it when the work is completed or aborted; whatever is still registered
//! when the process is told to stop is run by [`abort_all`] (the caller watches for the
//! signals).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;

/// Undo one piece of unfinished work; resolves to true when something was undone.
pub type Abort = Box<dyn FnOnce() -> BoxFuture<'static, bool> + Send>;

/// When an abort action runs: first every known upload and file, then the sweeps that
/// look for uploads whose creation was under way when the stop came (their ids unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// A known upload or file.
    Known,
    /// A search for uploads not yet known.
    Sweep,
}

/// A registration; pass it to [`done`] once the work is completed or aborted.
#[derive(Debug, PartialEq, Eq)]
pub struct Ticket(u64);

impl Ticket {
    /// A ticket for work that leaves nothing to undo (an upload in memory).
    pub fn none() -> Ticket {
        Ticket(0)
    }
}

type Registry = Mutex<HashMap<u64, (Phase, Abort)>>;

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Set once a stop began: no new upload may start (it could be created after the
/// registry was emptied, and be left behind).
static STOPPING: AtomicBool = AtomicBool::new(false);

/// True once the process has begun stopping ([`abort_all`]).
pub fn stopping() -> bool {
    STOPPING.load(Ordering::SeqCst)
}

fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Remember `abort` until [`done`] is called.
pub fn register(phase: Phase, abort: Abort) -> Ticket {
    // A simulated process receives no signal: nothing to remember.
    if crate::task::simulated() {
        return Ticket::none();
    }
    let id = next_id();
    if let Ok(mut map) = registry().lock() {
        map.insert(id, (phase, abort));
    }
    Ticket(id)
}

/// Swap the work `ticket` stands for (a sweep for an upload being created) for `abort`
/// (the upload, now known), in one step: a stop never sees neither. If a stop already
/// took the old work, that work covers it and nothing new is registered.
pub fn replace(ticket: Ticket, phase: Phase, abort: Abort) -> Ticket {
    let id = next_id();
    if let Ok(mut map) = registry().lock() {
        if map.remove(&ticket.0).is_some() {
            map.insert(id, (phase, abort));
        }
    }
    Ticket(id)
}

/// The work is finished (completed or already aborted).
pub fn done(ticket: Ticket) {
    if let Ok(mut map) = registry().lock() {
        map.remove(&ticket.0);
    }
}

/// Run every registered abort (each gets a few seconds: a stopping pod has little time
/// left); returns how many undid something.
pub async fn abort_all() -> usize {
    STOPPING.store(true, Ordering::SeqCst);
    let mut count = 0;
    // Work registered while the first round ran (a creation that had passed its check
    // just before the stop) is taken by the next round.
    for _ in 0..3 {
        let pending: Vec<(Phase, Abort)> = match registry().lock() {
            Ok(mut map) => map.drain().map(|(_, w)| w).collect(),
            Err(_) => return count,
        };
        if pending.is_empty() {
            break;
        }
        let (known, sweeps): (Vec<_>, Vec<_>) =
            pending.into_iter().partition(|(p, _)| *p == Phase::Known);
        count += run_all(known).await;
        if !sweeps.is_empty() {
            // Let a creation request that was already sent reach the server first.
            tokio::time::sleep(Duration::from_millis(300)).await;
            count += run_all(sweeps).await;
        }
    }
    count
}

async fn run_all(work: Vec<(Phase, Abort)>) -> usize {
    let runs = work.into_iter().map(|(_, abort)| async move {
        tokio::time::timeout(Duration::from_secs(10), abort())
            .await
            .unwrap_or(false)
    });
    futures::future::join_all(runs)
        .await
        .into_iter()
        .filter(|undone| *undone)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_unfinished_work_is_undone() {
        let finished = register(Phase::Known, Box::new(|| Box::pin(async { true })));
        let _open = register(Phase::Known, Box::new(|| Box::pin(async { true })));
        let _sweep = register(Phase::Sweep, Box::new(|| Box::pin(async { false })));
        done(finished);
        assert_eq!(abort_all().await, 1);
        assert_eq!(abort_all().await, 0, "each abort runs once");
    }
}
