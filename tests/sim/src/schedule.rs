//! A schedule: which processes start when, with which faults, and what happens to them
//! (killed, paused past their lease), drawn from a seed. The same seed draws the same
//! schedule, and the runner replays it exactly.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::world::{Faults, Side};

/// What a process is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Kind {
    /// egress-dump of one day, alone.
    #[default]
    Dump,
    /// A pod of a day shared by `count` (index 0 coordinates).
    Shard {
        /// Its index.
        index: u64,
        /// How many share the day.
        count: u64,
    },
    /// egress-sync mirroring the input into the output, complete days only.
    Mirror,
}

/// One process to start.
#[derive(Debug, Clone, Default)]
pub struct Spec {
    /// What it is.
    pub kind: Kind,
    /// Its day (a mirror's is the first day; it mirrors all).
    pub date: String,
    /// Its host: a shared one (a laptop's reruns) or its own pod.
    pub host: String,
    /// Its store clock's error (s) and its wall clock's (ms).
    pub skew: (i64, i64),
    /// Its store requests' faults.
    pub faults: Faults,
    /// Its database reads' failures, per thousand objects' parts.
    pub db_fails: u32,
    /// `--wait-for-lease`, seconds.
    pub wait_for_lease: u64,
}

/// Something that happens at a moment (milliseconds after the start).
#[derive(Debug, Clone)]
pub enum Event {
    /// Start process `usize` (its index in [`Schedule::procs`]).
    Start(usize),
    /// Kill it (SIGKILL: nothing undone).
    Kill(usize),
    /// Freeze it for so many milliseconds (a stopped node).
    Pause(usize, u64),
    /// A writer changes a table.
    Write(&'static str),
    /// Another tool replaces an object of a day with other bytes of the same size.
    Tamper(Side),
    /// Another tool rewrites an input manifest, listing an object twice (first with a
    /// wrong hash).
    Duplicate,
}

/// A whole schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Its seed.
    pub seed: u64,
    /// The days dumped.
    pub dates: Vec<String>,
    /// The processes.
    pub procs: Vec<Spec>,
    /// What happens when, in time order.
    pub events: Vec<(u64, Event)>,
    /// The leases' time to live (s).
    pub lease_ttl: u64,
    /// `--shard-wait` (s).
    pub shard_wait: u64,
}

/// Draws a schedule.
struct Draw {
    rng: StdRng,
    schedule: Schedule,
    pods: u64,
}

impl Draw {
    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    fn between(&mut self, a: u64, b: u64) -> u64 {
        self.rng.random_range(a..=b)
    }

    fn faults(&mut self) -> (Faults, u32) {
        if self.chance(0.5) {
            return (
                Faults {
                    max_delay_ms: self.between(0, 40),
                    ..Faults::default()
                },
                0,
            );
        }
        let faults = Faults {
            refused: self.between(0, 40) as u32,
            lost_reply: self.between(0, 60) as u32,
            max_delay_ms: self.between(10, 400),
            lose_first: None,
        };
        (faults, self.between(0, 15) as u32)
    }

    /// A process of `kind` for `date` starting at `at`, perhaps killed or paused later.
    fn start(&mut self, kind: Kind, date: &str, at: u64) -> usize {
        self.pods += 1;
        let host = match self.chance(0.15) {
            true => "laptop".to_string(),
            false => format!("pod-{}", self.pods),
        };
        let (faults, db_fails) = self.faults();
        let skew = (
            self.between(0, 4) as i64 - 2,
            self.between(0, 600_000) as i64 - 300_000,
        );
        let id = self.schedule.procs.len();
        let wait_for_lease = match self.chance(0.3) {
            true => self.between(5, 40),
            false => 0,
        };
        self.schedule.procs.push(Spec {
            kind,
            date: date.to_string(),
            host,
            skew,
            faults,
            db_fails,
            wait_for_lease,
        });
        self.schedule.events.push((at, Event::Start(id)));
        let ttl_ms = self.schedule.lease_ttl * 1000;
        if self.chance(0.12) {
            let when = at + self.between(100, 20_000);
            self.schedule.events.push((when, Event::Kill(id)));
        } else if self.chance(0.2) {
            // Mostly while it works: a day takes a few seconds.
            let when = at + self.between(300, 8_000);
            let length = self.between(ttl_ms, 3 * ttl_ms);
            self.schedule.events.push((when, Event::Pause(id, length)));
        }
        id
    }

    /// One day dumped by single runs (overlapping, some killed, a rerun).
    fn single_day(&mut self, date: &str, t0: u64) {
        for _ in 0..self.between(1, 4) {
            let at = t0 + self.between(0, 15_000);
            let id = self.start(Kind::Dump, date, at);
            if self.killed(id) && self.chance(0.7) {
                let again = self.kill_time(id) + self.between(500, 5_000);
                self.start(Kind::Dump, date, again);
            }
        }
    }

    /// One day shared by the pods of an Indexed Job: duplicates of an index, replacements of
    /// killed pods, a late index 0 or a late shard after the day is done.
    fn shared_day(&mut self, date: &str, t0: u64) {
        let count = self.between(2, 3);
        for index in 0..count {
            let at = t0 + self.between(0, 3_000);
            let id = self.start(Kind::Shard { index, count }, date, at);
            if self.killed(id) {
                let again = self.kill_time(id) + self.between(500, 5_000);
                self.start(Kind::Shard { index, count }, date, again);
            }
            if self.chance(0.4) {
                let twin = at + self.between(0, 8_000);
                self.start(Kind::Shard { index, count }, date, twin);
            }
        }
        let wait = self.schedule.shard_wait * 1000;
        if self.chance(0.3) {
            let late = t0 + self.between(3 * wait, 6 * wait);
            self.start(Kind::Shard { index: 0, count }, date, late);
        }
        if self.chance(0.3) {
            let index = self.between(1, count - 1);
            let late = t0 + self.between(3 * wait, 6 * wait);
            self.start(Kind::Shard { index, count }, date, late);
        }
    }

    fn killed(&self, id: usize) -> bool {
        self.schedule
            .events
            .iter()
            .any(|(_, e)| matches!(e, Event::Kill(k) if *k == id))
    }

    fn kill_time(&self, id: usize) -> u64 {
        self.schedule
            .events
            .iter()
            .find_map(|(t, e)| matches!(e, Event::Kill(k) if *k == id).then_some(*t))
            .unwrap_or(0)
    }
}

impl Schedule {
    /// A scripted schedule: `procs` started at their times, with `events` besides (a
    /// regression case written out by hand).
    pub fn scripted(
        dates: &[&str],
        procs: Vec<(u64, Spec)>,
        mut events: Vec<(u64, Event)>,
    ) -> Schedule {
        let mut schedule = Schedule {
            seed: 0,
            dates: dates.iter().map(|d| d.to_string()).collect(),
            procs: Vec::new(),
            events: Vec::new(),
            lease_ttl: 6,
            shard_wait: 8,
        };
        for (at, spec) in procs {
            events.push((at, Event::Start(schedule.procs.len())));
            schedule.procs.push(spec);
        }
        events.sort_by_key(|(t, _)| *t);
        schedule.events = events;
        schedule
    }

    /// The schedule of `seed`.
    pub fn draw(seed: u64) -> Schedule {
        let mut rng = StdRng::seed_from_u64(seed);
        let lease_ttl = rng.random_range(4..=8);
        let shard_wait = rng.random_range(6..=12);
        let days = rng.random_range(1..=2);
        let mut draw = Draw {
            rng,
            schedule: Schedule {
                seed,
                dates: (1..=days).map(|d| format!("2024-06-0{d}")).collect(),
                procs: Vec::new(),
                events: Vec::new(),
                lease_ttl,
                shard_wait,
            },
            pods: 0,
        };
        for date in draw.schedule.dates.clone() {
            let t0 = draw.between(0, 20_000);
            match draw.chance(0.5) {
                true => draw.shared_day(&date, t0),
                false => draw.single_day(&date, t0),
            }
        }
        let first = draw.schedule.dates[0].clone();
        for _ in 0..draw.between(1, 4) {
            let at = draw.between(5_000, 150_000);
            draw.start(Kind::Mirror, &first, at);
            // Another tool changing the output just before a mirror: an object it may skip.
            if draw.chance(0.2) {
                let before = at.saturating_sub(draw.between(100, 3_000));
                draw.schedule
                    .events
                    .push((before, Event::Tamper(Side::Output)));
            }
        }
        for _ in 0..draw.between(0, 3) {
            let at = draw.between(0, 120_000);
            let table = crate::source::TABLES[draw.between(0, 2) as usize];
            draw.schedule.events.push((at, Event::Write(table)));
        }
        if draw.chance(0.15) {
            let at = draw.between(20_000, 150_000);
            let side = if draw.chance(0.5) {
                Side::Input
            } else {
                Side::Output
            };
            draw.schedule.events.push((at, Event::Tamper(side)));
        }
        if draw.chance(0.1) {
            let at = draw.between(20_000, 150_000);
            draw.schedule.events.push((at, Event::Duplicate));
        }
        // Stable: events at one moment keep the order they were drawn in.
        draw.schedule.events.sort_by_key(|(t, _)| *t);
        draw.schedule
    }

    /// When the last thing is scheduled to happen (ms).
    pub fn last(&self) -> u64 {
        self.events
            .iter()
            .map(|(t, e)| match e {
                Event::Pause(_, length) => t + length,
                _ => *t,
            })
            .max()
            .unwrap_or(0)
    }
}
