//! The simulated world of one schedule: the input and output stores (in memory, on the
//! virtual clock), the simulated processes, the stand-in database, the trace, and what the
//! invariants need to remember.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use egress_store::task::{Gate, Process};
use egress_store::MemoryStore;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

/// The store's clock at the start of every schedule: 2024-06-01T00:00:00Z.
pub const EPOCH: i64 = 1_717_200_000;

/// Which store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Side {
    /// egress-dump's output, the mirror's input.
    Input,
    /// The mirror's output.
    Output,
}

impl Side {
    /// `in` or `out`, for the trace.
    pub fn label(self) -> &'static str {
        match self {
            Side::Input => "in",
            Side::Output => "out",
        }
    }
}

/// How often a process's store requests fail, and how slow they are.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// A request refused before it took effect (503), per thousand.
    pub refused: u32,
    /// A write that took effect but whose reply was lost (the caller sees an error), per
    /// thousand.
    pub lost_reply: u32,
    /// The longest a request takes, in milliseconds (each takes a random share).
    pub max_delay_ms: u64,
    /// Lose the reply of the first write to a key ending so (a scripted schedule's fault).
    pub lose_first: Option<&'static str>,
}

/// What the world knows of one simulated process.
#[derive(Debug)]
pub struct Proc {
    /// Its index in the schedule.
    pub id: usize,
    /// Its name in the trace (`pod-3`).
    pub name: String,
    /// What it is (`dump 2024-06-01`, `shard 1/3`, `mirror`).
    pub what: String,
    /// Its host.
    pub host: String,
    /// Its pid.
    pub pid: u32,
    /// Its store clock's error, in seconds.
    pub skew: i64,
    /// Its wall clock's error, in milliseconds.
    pub wall_skew_ms: i64,
    /// Its store requests' faults.
    pub faults: Faults,
    /// Its pause/kill gate.
    pub gate: Arc<Gate>,
    /// Still running (not ended, not killed).
    pub alive: bool,
    /// How it ended: exit code and one line.
    pub ended: Option<(i32, String)>,
    /// The run ids it wrote into leases.
    pub lease_runs: BTreeSet<String>,
    /// The days it published (input or output), and when (ms).
    pub published: Vec<(Side, String, u64)>,
    /// Complete days it withdrew: side, date, when (ms).
    pub withdrew: Vec<(Side, String, u64)>,
    /// Its day.
    pub date: String,
}

/// A fault the schedule injected, for judging withdrawals.
#[derive(Debug, Clone)]
pub struct FaultEvent {
    /// When (ms since the start).
    pub at: u64,
    /// The process it was injected into (none: another tool's change).
    pub proc: Option<usize>,
}

/// Everything of one schedule's world.
pub struct World {
    /// The input store.
    pub input: MemoryStore,
    /// The output store.
    pub output: MemoryStore,
    start: Instant,
    /// The processes.
    pub procs: Mutex<Vec<Proc>>,
    /// The trace.
    pub trace: Mutex<Vec<String>>,
    /// Invariant violations found.
    pub violations: Mutex<Vec<String>>,
    /// Every version of an input manifest seen: date -> bodies.
    pub input_versions: Mutex<BTreeMap<String, BTreeSet<Vec<u8>>>>,
    /// Faults injected so far.
    pub faults: Mutex<Vec<FaultEvent>>,
    /// When an input manifest last changed, per date (ms).
    pub input_changed: Mutex<BTreeMap<String, u64>>,
    /// The stand-in database.
    pub db: Mutex<crate::source::Db>,
    /// Days another tool changed, with the manifest they had then: not judged on that
    /// side until their manifest changes.
    pub tampered: Mutex<BTreeSet<(Side, String, Vec<u8>)>>,
    /// The Iceberg tables' versions read so far (a version's files never change), by the
    /// bytes of its metadata file.
    pub table_versions: Mutex<std::collections::HashMap<Vec<u8>, crate::tables::Days>>,
    /// Whether to print the trace as it goes (a replay).
    pub echo: bool,
    /// The mutant this world runs, if any (for the trace's first line).
    pub mutant: Option<&'static str>,
}

impl World {
    /// A fresh world; its clock starts now (a paused runtime's virtual time).
    pub fn new(echo: bool, seed: u64, mutant: Option<&'static str>) -> Arc<World> {
        let start = Instant::now();
        let clock = move || EPOCH + start.elapsed().as_secs() as i64;
        // Parts of at least 64 bytes: small objects still go in several parts.
        let store = || {
            MemoryStore::new()
                .with_clock(Arc::new(clock))
                .with_min_part(64)
        };
        Arc::new(World {
            input: store(),
            output: store(),
            start,
            procs: Mutex::new(Vec::new()),
            trace: Mutex::new(Vec::new()),
            violations: Mutex::new(Vec::new()),
            input_versions: Mutex::new(BTreeMap::new()),
            faults: Mutex::new(Vec::new()),
            input_changed: Mutex::new(BTreeMap::new()),
            db: Mutex::new(crate::source::Db::new(seed)),
            tampered: Mutex::new(BTreeSet::new()),
            table_versions: Mutex::new(std::collections::HashMap::new()),
            echo,
            mutant,
        })
    }

    /// Milliseconds since the schedule started (virtual).
    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// The store of `side`.
    pub fn store(&self, side: Side) -> &MemoryStore {
        match side {
            Side::Input => &self.input,
            Side::Output => &self.output,
        }
    }

    /// Add a line to the trace (and print it in a replay).
    pub fn note(&self, who: &str, line: impl AsRef<str>) {
        let ms = self.now_ms();
        let text = format!(
            "{:>4}.{:03}s {who:<7} {}",
            ms / 1000,
            ms % 1000,
            line.as_ref()
        );
        if self.echo {
            println!("{text}");
        }
        lock(&self.trace).push(text);
    }

    /// Record an invariant violation.
    pub fn violate(&self, what: String) {
        self.note("CHECK", format!("VIOLATION {what}"));
        lock(&self.violations).push(what);
    }

    /// Record a fault injected now.
    pub fn fault(&self, proc: Option<usize>) {
        let at = self.now_ms();
        lock(&self.faults).push(FaultEvent { at, proc });
    }

    /// A fault that bears on the day `date` at `side`, injected after `ms` or shortly
    /// before (its effect may take a moment to be seen): into a dump of that day (input),
    /// a mirror (output), or another tool's.
    pub fn faulted_since(&self, ms: u64, side: Side, date: &str) -> bool {
        let since = ms.saturating_sub(2_000);
        let procs = lock(&self.procs);
        let bears = |proc: Option<usize>| match proc {
            None => true,
            Some(id) => {
                let p = &procs[id];
                let mirror = p.what == "mirror";
                match side {
                    Side::Input => !mirror && p.date == date,
                    Side::Output => mirror,
                }
            }
        };
        lock(&self.faults)
            .iter()
            .any(|f| f.at >= since && bears(f.proc))
    }

    /// With the process `id`'s record.
    pub fn with_proc<T>(&self, id: usize, f: impl FnOnce(&mut Proc) -> T) -> T {
        let mut procs = lock(&self.procs);
        f(&mut procs[id])
    }

    /// The process `id`'s name.
    pub fn name(&self, id: usize) -> String {
        self.with_proc(id, |p| p.name.clone())
    }
}

/// A lock that survives a panicked holder (the simulation reports, it does not crash).
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// A simulated process as the code under test sees it ([`Process`]).
pub struct SimProcess {
    world: Arc<World>,
    id: usize,
    host: String,
    pid: u32,
    wall_skew_ms: i64,
    rng: Mutex<StdRng>,
}

impl SimProcess {
    /// The process `id` of `world`, its randomness drawn from `seed`.
    pub fn new(world: Arc<World>, id: usize, seed: u64) -> SimProcess {
        let (host, pid, wall_skew_ms) =
            world.with_proc(id, |p| (p.host.clone(), p.pid, p.wall_skew_ms));
        SimProcess {
            world,
            id,
            host,
            pid,
            wall_skew_ms,
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
        }
    }

    /// Its id.
    pub fn id(&self) -> usize {
        self.id
    }
}

impl Process for SimProcess {
    fn host(&self) -> String {
        self.host.clone()
    }

    fn pid(&self) -> u32 {
        self.pid
    }

    fn is_alive(&self, pid: u32) -> bool {
        lock(&self.world.procs)
            .iter()
            .any(|p| p.host == self.host && p.pid == pid && p.alive)
    }

    fn random(&self) -> u64 {
        lock(&self.rng).random()
    }

    fn unix_millis(&self) -> i64 {
        EPOCH * 1000 + self.world.now_ms() as i64 + self.wall_skew_ms
    }
}

/// A process's fault dice: its own generator, so that one process's requests do not
/// change another's faults.
pub struct Dice(Mutex<StdRng>);

impl Dice {
    /// Dice seeded with `seed`.
    pub fn new(seed: u64) -> Dice {
        Dice(Mutex::new(StdRng::seed_from_u64(seed)))
    }

    /// True `per_mille` times in a thousand.
    pub fn chance(&self, per_mille: u32) -> bool {
        per_mille > 0 && lock(&self.0).random_range(0..1000) < per_mille
    }

    /// A delay up to `max_ms`.
    pub fn delay(&self, max_ms: u64) -> Duration {
        match max_ms {
            0 => Duration::ZERO,
            max => Duration::from_millis(lock(&self.0).random_range(0..=max)),
        }
    }
}
