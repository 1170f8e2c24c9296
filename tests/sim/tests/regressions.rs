//! Each class of defect the protocol issue named, as a scripted schedule that reproduced
//! it (with the mutant that restores the old behaviour, `SIM_MUTANTS`) and that the
//! protocol as written must pass: no invariant broken, and each run ending as it should.

use egress_sim::schedule::{Event, Kind, Schedule, Spec};
use egress_sim::world::{Faults, Side};
use egress_sim::{run, Outcome};

const DAY: &str = "2024-06-01";

fn spec(kind: Kind, host: &str) -> Spec {
    Spec {
        kind,
        date: DAY.into(),
        host: host.into(),
        ..Spec::default()
    }
}

fn shard(index: u64, count: u64, host: &str) -> Spec {
    spec(Kind::Shard { index, count }, host)
}

/// A run of `kind` on `host` whose first write to a key containing `key` loses its reply.
fn losing_first(kind: Kind, host: &str, key: &'static str) -> Spec {
    let faults = Faults {
        lose_first: Some(key),
        ..Faults::default()
    };
    Spec {
        faults,
        ..spec(kind, host)
    }
}

/// The runs started at their times (ms), and the events, on the one day.
fn scripted(runs: Vec<(u64, Spec)>, events: Vec<(u64, Event)>) -> Schedule {
    Schedule::scripted(&[DAY], runs, events)
}

fn clean(outcome: &Outcome) {
    assert!(
        outcome.violations.is_empty(),
        "{:#?}\n{}",
        outcome.violations,
        outcome.trace.join("\n")
    );
}

/// `schedule` run as written, every invariant held.
fn run_clean(schedule: &Schedule) -> Outcome {
    let outcome = run(schedule, false, None);
    clean(&outcome);
    outcome
}

/// `schedule` run as written, every invariant held, and both processes that are `what`
/// ending with exit 0.
fn run_both_exit_0(schedule: &Schedule, what: &str) -> Outcome {
    let outcome = run_clean(schedule);
    assert_eq!(exits(&outcome, what), [Some(0), Some(0)]);
    outcome
}

/// Exit codes of the processes that are `what`.
fn exits(outcome: &Outcome, what: &str) -> Vec<Option<i32>> {
    outcome
        .exits
        .iter()
        .filter(|(w, _)| w == what)
        .map(|(_, code)| *code)
        .collect()
}

/// Index 1 runs twice at once (an Indexed Job may).
fn two_pods() -> Schedule {
    scripted(
        vec![
            (0, shard(0, 2, "pod-0")),
            (100, shard(1, 2, "pod-1a")),
            (150, shard(1, 2, "pod-1b")),
            (30_000, spec(Kind::Mirror, "mirror")),
        ],
        Vec::new(),
    )
}

/// The day done by its Job, then a lone index 0 long after (a duplicate, a manual retry).
fn late_index_0() -> Schedule {
    let late = shard(0, 2, "pod-0-late");
    scripted(
        vec![
            (0, shard(0, 2, "pod-0")),
            (100, shard(1, 2, "pod-1")),
            (40_000, late),
        ],
        Vec::new(),
    )
}

/// A dump whose lease write's reply is lost, then a mirror whose lease write's is.
fn lost_lease_replies() -> Schedule {
    let dump = losing_first(Kind::Dump, "pod-0", ".egress-lease.json");
    let mirror = losing_first(Kind::Mirror, "mirror", ".egress-sync-lease.json");
    scripted(vec![(0, dump), (20_000, mirror)], Vec::new())
}

/// Mirrored, dumped again, then another tool changes an output object of the same size
/// before the next mirror: the mirror skips it by size and time.
fn changed_output() -> Schedule {
    scripted(
        vec![
            (0, spec(Kind::Dump, "pod-0")),
            (20_000, spec(Kind::Mirror, "mirror-1")),
            (40_000, spec(Kind::Dump, "pod-1")),
            (70_000, spec(Kind::Mirror, "mirror-2")),
        ],
        vec![(60_000, Event::Tamper(Side::Output))],
    )
}

/// A manifest rewritten by another tool to list an object twice, then a mirror.
fn listed_twice() -> Schedule {
    let (dump, mirror) = (spec(Kind::Dump, "pod-0"), spec(Kind::Mirror, "mirror"));
    scripted(
        vec![(0, dump), (40_000, mirror)],
        vec![(30_000, Event::Duplicate)],
    )
}

/// The processes that made a change whose trace line contains `change`, before the runs
/// repeated at the end.
fn writers(outcome: &Outcome, change: &str) -> Vec<String> {
    let mut names: Vec<String> = outcome
        .trace
        .iter()
        .take_while(|l| !l.contains("SIM ") || !l.contains("every run ended"))
        .filter(|l| l.contains(change))
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .collect();
    names.dedup();
    names
}

#[test]
fn two_pods_of_one_index_leave_one_objects_bytes_and_a_true_manifest() {
    // The second pod finds the claim and writes nothing; the manifest is the store's bytes.
    let outcome = run_both_exit_0(&two_pods(), "shard 1/2 2024-06-01");
    let writers = writers(&outcome, "COMPLETE in:2024-06-01/big.part-00001.parquet");
    assert_eq!(
        writers.len(),
        1,
        "one pod wrote index 1's piece: {writers:?}"
    );
}

#[test]
fn a_late_index_0_leaves_a_complete_day_alone_and_succeeds() {
    // The late index 0 cannot gather its shards: it withdraws nothing and exits 0.
    let outcome = run_both_exit_0(&late_index_0(), "shard 0/2 2024-06-01");
    let withdrew = writers(&outcome, "DELETE in:2024-06-01/_manifest.json");
    assert_eq!(
        withdrew,
        Vec::<String>::new(),
        "nobody withdrew the complete day"
    );
}

#[test]
fn a_replacement_of_a_finished_shard_exits_0() {
    // A pod of index 1 started after the day is complete (its status said done, then the
    // pod was killed): no plan comes; the day is complete for its tables: exit 0.
    let again = shard(1, 2, "pod-1-again");
    let runs = vec![
        (0, shard(0, 2, "pod-0")),
        (100, shard(1, 2, "pod-1")),
        (40_000, again),
    ];
    run_both_exit_0(&scripted(runs, Vec::new()), "shard 1/2 2024-06-01");
}

#[test]
fn a_lost_reply_to_the_lease_write_is_settled_as_ours() {
    // The lease's creation reaches the store but its reply is lost (the SDK's retry meets
    // 412): the run reads the lease back, finds its own run id, and dumps the day.
    let outcome = run_both_exit_0(&lost_lease_replies(), "dump 2024-06-01");
    assert_eq!(exits(&outcome, "mirror"), [Some(0), Some(0)]);
    assert!(outcome.trace.iter().any(|l| l.contains("reply lost")));
}

#[test]
fn a_lost_reply_to_a_completion_is_settled_by_reading_the_object_back() {
    let dump = losing_first(Kind::Dump, "pod-0", "big.parquet");
    let outcome = run_clean(&scripted(vec![(0, dump)], Vec::new()));
    let trace = outcome.trace.join("\n");
    assert!(
        outcome
            .trace
            .windows(2)
            .any(|w| w[0].contains("COMPLETE in:2024-06-01/big.parquet")
                && w[1].contains("reply lost")),
        "the completion's reply was lost: {trace}"
    );
    assert_eq!(exits(&outcome, "dump 2024-06-01")[0], Some(0), "{trace}");
}

#[test]
fn a_skipped_object_another_tool_changed_is_never_published() {
    // The mirror must read the skipped object back before the new manifest can vouch for
    // it: it does not match, the day is not published.
    let outcome = run_clean(&changed_output());
    assert!(outcome
        .trace
        .iter()
        .any(|l| l.contains("another tool replaced out:")));
}

#[test]
fn a_manifest_listing_an_object_twice_is_refused() {
    let outcome = run_clean(&listed_twice());
    let trace = outcome.trace.join("\n");
    assert_eq!(
        exits(&outcome, "mirror")[0],
        Some(1),
        "the day is refused: {trace}"
    );
}

#[test]
fn the_same_seed_replays_the_same_trace() {
    let schedule = Schedule::draw(42);
    let (a, b) = (run(&schedule, false, None), run(&schedule, false, None));
    assert_eq!(a.trace, b.trace);
    assert!(a.trace.len() > 20, "a schedule of some length");
}

#[test]
fn a_hundred_schedules_hold_every_invariant() {
    for seed in 1..=100 {
        clean(&run(&Schedule::draw(seed), false, None));
    }
}

/// The same cases with the mutant that restores the old behaviour: each must break an
/// invariant (or end as the old code did), or the case proves nothing. Built and run by
/// `SIM_MUTANTS=all scripts/simulate.sh` (`--features mutants`; nextest runs each test
/// in a process of its own, so the process-wide mutant is this test's alone).
#[cfg(feature = "mutants")]
mod with_the_old_behaviour {
    use super::*;

    fn broken(mutant: &'static str, schedule: Schedule) -> Outcome {
        egress_store::mutant::set(Some(mutant));
        let outcome = run(&schedule, false, Some(mutant));
        egress_store::mutant::set(None);
        outcome
    }

    /// `schedule` under `mutant`, which must break the invariant whose violations start
    /// with `invariant`.
    fn breaks(mutant: &'static str, schedule: Schedule, invariant: &str) -> Outcome {
        let outcome = broken(mutant, schedule);
        let violations = &outcome.violations;
        let found = violations.iter().any(|v| v.starts_with(invariant));
        assert!(found, "{violations:?}");
        outcome
    }

    #[test]
    fn mutant_two_pods_of_one_index_overwrite_each_other() {
        let outcome = broken("pieces-overwrite", two_pods());
        let writers = writers(&outcome, "COMPLETE in:2024-06-01/big.part-00001.parquet");
        assert_eq!(
            writers.len(),
            2,
            "both pods wrote index 1's piece: {writers:?}"
        );
    }

    #[test]
    fn mutant_a_late_index_0_withdraws_the_day() {
        breaks("late-coordinator-withdraws", late_index_0(), "I3");
    }

    #[test]
    fn mutant_a_lost_lease_reply_makes_the_run_exit_3_naming_itself() {
        let outcome = breaks("lost-reply-fails", lost_lease_replies(), "I4");
        assert_eq!(exits(&outcome, "dump 2024-06-01")[0], Some(3));
    }

    #[test]
    fn mutant_a_skipped_object_is_trusted() {
        breaks("trust-unchanged", changed_output(), "I1: out");
    }

    #[test]
    fn mutant_a_manifest_listing_an_object_twice_is_read_last_wins() {
        breaks("duplicates-last-wins", listed_twice(), "I1: out");
    }
}
