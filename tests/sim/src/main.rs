//! `egress-sim`: run schedules of the day protocol and report what broke.
//!
//! - `SIM_SCHEDULES=N` (default 200): schedules from seed `SIM_START` (default 1) on, on
//!   `SIM_THREADS` threads (default: the machine's cores); a violation prints its seed,
//!   what broke and the trace; the last line is `N schedules, V violations`.
//! - `SIM_SEED=S`: replay one schedule, printing its trace (the same seed prints the same
//!   trace); `SIM_LOG=1` also prints the programs' own log lines.
//! - `SIM_MUTANTS=all` (a build with `--features mutants`): each deliberate fault in turn,
//!   each run against the schedules until one catches it; the last line is `M of M mutants
//!   caught`.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use egress_sim::{run, Outcome, Schedule};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> ExitCode {
    if let Ok(seed) = std::env::var("SIM_SEED") {
        let Ok(seed) = seed.parse::<u64>() else {
            eprintln!("egress-sim: SIM_SEED must be a number");
            return ExitCode::from(2);
        };
        return replay(seed);
    }
    if std::env::var("SIM_MUTANTS").is_ok_and(|m| !m.is_empty()) {
        return mutants();
    }
    let n = env_u64("SIM_SCHEDULES", 200);
    let first = env_u64("SIM_START", 1);
    let started = Instant::now();
    let bad = many(first, n, None, false);
    let seconds = started.elapsed().as_secs_f64();
    for outcome in &bad {
        report(outcome);
    }
    println!(
        "({:.1} s, {:.0} schedules per second)",
        seconds,
        n as f64 / seconds.max(1e-9)
    );
    let violations: usize = bad.iter().map(|o| o.violations.len()).sum();
    println!("{n} schedules, {violations} violations");
    if violations == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// One schedule, traced.
fn replay(seed: u64) -> ExitCode {
    if std::env::var("SIM_LOG").is_ok_and(|v| v == "1") {
        let subscriber = tracing_subscriber::fmt()
            .without_time()
            .with_ansi(false)
            .with_target(false)
            .with_env_filter("info")
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
    }
    let schedule = Schedule::draw(seed);
    println!(
        "seed {seed}: days {}, {} processes, lease ttl {}s, shard wait {}s",
        schedule.dates.join(" "),
        schedule.procs.len(),
        schedule.lease_ttl,
        schedule.shard_wait
    );
    let outcome = run(&schedule, true, None);
    for v in &outcome.violations {
        println!("VIOLATION {v}");
    }
    println!("1 schedules, {} violations", outcome.violations.len());
    match outcome.violations.is_empty() {
        true => ExitCode::SUCCESS,
        false => ExitCode::from(1),
    }
}

/// Schedules `first..first+n` on several threads; those that broke something. With
/// `stop_early`, stop at the first that does.
fn many(first: u64, n: u64, mutant: Option<&'static str>, stop_early: bool) -> Vec<Outcome> {
    let threads = std::thread::available_parallelism().map_or(2, |p| p.get()) as u64;
    let threads = env_u64("SIM_THREADS", threads).max(1);
    let next = Arc::new(AtomicU64::new(first));
    let found = Arc::new(AtomicUsize::new(0));
    let bad = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (next, found, bad) = (next.clone(), found.clone(), bad.clone());
            std::thread::spawn(move || loop {
                let seed = next.fetch_add(1, Ordering::SeqCst);
                if seed >= first + n || (stop_early && found.load(Ordering::SeqCst) > 0) {
                    return;
                }
                let outcome = run(&Schedule::draw(seed), false, mutant);
                if !outcome.violations.is_empty() {
                    found.fetch_add(1, Ordering::SeqCst);
                    if let Ok(mut bad) = bad.lock() {
                        bad.push(outcome);
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.join();
    }
    let mut bad = match Arc::try_unwrap(bad).map(|m| m.into_inner()) {
        Ok(Ok(bad)) => bad,
        _ => Vec::new(),
    };
    bad.sort_by_key(|o| o.seed);
    bad
}

fn report(outcome: &Outcome) {
    println!(
        "== seed {} broke {} invariant check(s):",
        outcome.seed,
        outcome.violations.len()
    );
    for v in outcome.violations.iter().take(5) {
        println!("   {v}");
    }
    println!("   trace (SIM_SEED={} replays it):", outcome.seed);
    let skip = outcome.trace.len().saturating_sub(400);
    for line in outcome.trace.iter().skip(skip) {
        println!("   {line}");
    }
}

#[cfg(feature = "mutants")]
fn mutants() -> ExitCode {
    let n = env_u64("SIM_SCHEDULES", 2000);
    let first = env_u64("SIM_START", 1);
    let mut caught = 0;
    for (name, what) in egress_store::mutant::ALL {
        egress_store::mutant::set(Some(name));
        let started = Instant::now();
        let bad = many(first, n, Some(name), true);
        let seconds = started.elapsed().as_secs_f64();
        match bad.first() {
            Some(outcome) => {
                caught += 1;
                let first = outcome.violations.first().map_or("", String::as_str);
                println!(
                    "caught   {name}: seed {} ({seconds:.1} s): {first}",
                    outcome.seed
                );
            }
            None => println!("SURVIVED {name} ({what}): {n} schedules found nothing"),
        }
    }
    egress_store::mutant::set(None);
    let all = egress_store::mutant::ALL.len();
    println!("{caught} of {all} mutants caught");
    match caught == all {
        true => ExitCode::SUCCESS,
        false => ExitCode::from(1),
    }
}

#[cfg(not(feature = "mutants"))]
fn mutants() -> ExitCode {
    eprintln!("egress-sim: SIM_MUTANTS needs a build with --features mutants (scripts/simulate.sh does it)");
    ExitCode::from(2)
}
