//! Running one schedule: the real day steps of egress-dump ([`egress_dump::run::day`],
//! [`egress_dump::shard::run`]) and the real mirror ([`egress_sync::mirror::run`]), each
//! as a simulated process on one paused (virtual-time) runtime, against the world's
//! stores; then the runs repeated without faults, and the checks at rest.

use std::sync::Arc;
use std::time::Duration;

use egress_common::day::shared::Shards;
use egress_store::task::{Context, Gate};
use egress_store::Store;

use crate::check;
use crate::schedule::{Event, Kind, Schedule, Spec};
use crate::source::SimSource;
use crate::store::View;
use crate::world::{lock, Dice, Proc, Side, SimProcess, World};

/// What a schedule came to.
#[derive(Debug)]
pub struct Outcome {
    /// Its seed.
    pub seed: u64,
    /// The invariants it broke.
    pub violations: Vec<String>,
    /// What happened, line by line.
    pub trace: Vec<String>,
    /// Each process: what it was, and its exit code (`-9` killed, `None` never ended).
    pub exits: Vec<(String, Option<i32>)>,
}

/// Run `schedule` on a fresh paused runtime; `echo` prints the trace as it goes.
pub fn run(schedule: &Schedule, echo: bool, mutant: Option<&'static str>) -> Outcome {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build();
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            return Outcome {
                seed: schedule.seed,
                violations: vec![format!("cannot start a runtime: {e}")],
                trace: Vec::new(),
                exits: Vec::new(),
            }
        }
    };
    let world = runtime.block_on(async { World::new(echo, schedule.seed, mutant) });
    // The mirror's future is not Send (its pool borrows across awaits): every process
    // runs as a local task of this one thread.
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, play(schedule, world.clone()));
    let violations = lock(&world.violations).clone();
    let trace = lock(&world.trace).clone();
    let exits = lock(&world.procs)
        .iter()
        .map(|p| (p.what.clone(), p.ended.as_ref().map(|(code, _)| *code)))
        .collect();
    Outcome {
        seed: schedule.seed,
        violations,
        trace,
        exits,
    }
}

async fn play(schedule: &Schedule, world: Arc<World>) {
    if let Some(m) = world.mutant {
        world.note("SIM", format!("mutant {m}"));
    }
    for spec in &schedule.procs {
        register(&world, spec);
    }
    for (at, event) in &schedule.events {
        tokio::time::sleep_until(start(&world) + Duration::from_millis(*at)).await;
        match event {
            Event::Start(id) => {
                launch(&world, schedule, *id);
            }
            Event::Kill(id) => kill(&world, *id),
            Event::Pause(id, ms) => pause(&world, *id, *ms),
            Event::Write(table) => {
                lock(&world.db).write(table);
                world.note("DB", format!("a writer changes table {table}"));
            }
            Event::Tamper(side) => tamper(&world, *side),
            Event::Duplicate => duplicate(&world),
        }
    }
    let deadline =
        start(&world) + Duration::from_millis(schedule.last()) + Duration::from_secs(600);
    // A killed process's task never ends: it is done when it is no longer alive.
    let running = || lock(&world.procs).iter().any(|p| p.alive);
    while running() {
        if tokio::time::Instant::now() >= deadline {
            let running: Vec<String> = lock(&world.procs)
                .iter()
                .filter(|p| p.alive)
                .map(|p| format!("{} ({})", p.name, p.what))
                .collect();
            world.violate(format!(
                "I4: still running 10 minutes after the last event: {}",
                running.join(", ")
            ));
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    heal(schedule, &world).await;
}

fn start(world: &World) -> tokio::time::Instant {
    tokio::time::Instant::now() - Duration::from_millis(world.now_ms())
}

/// Every run again without faults, once the leases of the killed ones lapsed: the days
/// must end complete at both sides, with nothing pending.
async fn heal(schedule: &Schedule, world: &Arc<World>) {
    tokio::time::sleep(Duration::from_secs(3 * schedule.lease_ttl + 2)).await;
    world.note(
        "SIM",
        "every run ended; the days are dumped and mirrored again without faults",
    );
    let clean = |kind: Kind, date: &str| Spec {
        kind,
        date: date.to_string(),
        host: "healer".into(),
        skew: (0, 0),
        faults: Default::default(),
        db_fails: 0,
        wait_for_lease: 60,
    };
    let mut specs: Vec<Spec> = schedule
        .dates
        .iter()
        .map(|d| clean(Kind::Dump, d))
        .collect();
    specs.push(clean(Kind::Mirror, &schedule.dates[0]));
    let mut all = schedule.clone();
    for spec in specs {
        let id = register(world, &spec);
        all.procs.push(spec);
        let root = launch(world, &all, id);
        let _ = root.await;
    }
    check::at_rest(world, &schedule.dates).await;
}

fn register(world: &World, spec: &Spec) -> usize {
    let mut procs = lock(&world.procs);
    let id = procs.len();
    let what = match &spec.kind {
        Kind::Dump => format!("dump {}", spec.date),
        Kind::Shard { index, count } => format!("shard {index}/{count} {}", spec.date),
        Kind::Mirror => "mirror".into(),
    };
    procs.push(Proc {
        id,
        name: format!("p{id}"),
        what,
        host: spec.host.clone(),
        pid: 100 + id as u32,
        skew: spec.skew.0,
        wall_skew_ms: spec.skew.1,
        faults: spec.faults,
        gate: Arc::new(Gate::default()),
        alive: false,
        ended: None,
        lease_runs: Default::default(),
        published: Vec::new(),
        withdrew: Vec::new(),
        date: spec.date.clone(),
    });
    id
}

/// Start process `id`: its body runs in its own context, on views of the stores.
fn launch(world: &Arc<World>, schedule: &Schedule, id: usize) -> tokio::task::JoinHandle<()> {
    let spec = schedule.procs[id].clone();
    let seed = schedule
        .seed
        .wrapping_mul(1_000_003)
        .wrapping_add(id as u64);
    let gate = world.with_proc(id, |p| {
        p.alive = true;
        p.gate.clone()
    });
    let name = world.name(id);
    world.note(
        &name,
        format!(
            "starts: {} on {}",
            world.with_proc(id, |p| p.what.clone()),
            spec.host
        ),
    );
    let process = Arc::new(SimProcess::new(world.clone(), id, seed));
    let context = Context::new(process, gate);
    let (world, settings) = (world.clone(), (schedule.lease_ttl, schedule.shard_wait));
    tokio::task::spawn_local(async move {
        let dice = Arc::new(Dice::new(seed ^ 0x5eed));
        let body = body(&world, &spec, id, dice, settings);
        let span = tracing::info_span!("pod", p = %name);
        let ended = context
            .run(tracing::Instrument::instrument(body, span))
            .await;
        let (code, line) = match &ended {
            Ok(()) => (0, "ok".to_string()),
            Err(e) => (exit_code(e), egress_common::error::one_line(e)),
        };
        world.note(&name, format!("ends: exit {code}: {line}"));
        world.with_proc(id, |p| {
            p.alive = false;
            p.ended = Some((code, line));
        });
        lock(&world.db).gone(id);
        check::at_end(&world, id, code, ended.as_ref().err());
    })
}

/// The process's work: the real steps of the program it is.
async fn body(
    world: &Arc<World>,
    spec: &Spec,
    id: usize,
    dice: Arc<Dice>,
    (ttl, wait): (u64, u64),
) -> anyhow::Result<()> {
    let view = |side| -> Store { Arc::new(View::new(world.clone(), side, id, dice.clone())) };
    match spec.kind {
        Kind::Dump | Kind::Shard { .. } => {
            let (index, count) = match spec.kind {
                Kind::Shard { index, count } => (index, count),
                _ => (0, 1),
            };
            let shards = Shards {
                count,
                index,
                wait: Duration::from_secs(wait),
            };
            let mut settings = dump_settings(&spec.date, ttl, shards)?;
            settings.lease.wait = Duration::from_secs(spec.wait_for_lease);
            let source = SimSource::new(world.clone(), id, spec.db_fails);
            let store = view(Side::Input);
            match index {
                0 => egress_dump::run::day(&settings, store, &source)
                    .await
                    .map(|_| ()),
                _ => egress_dump::shard::run(&settings, store, &source)
                    .await
                    .map(|_| ()),
            }
        }
        Kind::Mirror => {
            let mut settings = egress_sync::Settings::for_stores(true, Duration::from_secs(ttl));
            settings.lease.wait = Duration::from_secs(spec.wait_for_lease);
            settings.iceberg = Some(iceberg_settings());
            settings.filter = settings.filter.without("_iceberg");
            let sides = egress_sync::sides::Sides {
                source: view(Side::Input),
                dest: view(Side::Output),
                input_name: "in".into(),
                output_name: "out".into(),
            };
            egress_sync::mirror::run(&settings, sides).await.map(|_| ())
        }
    }
}

/// The mirror commits every day to Iceberg tables in `_iceberg` of the output, each day's
/// columns given (the simulation's objects are not Parquet files).
fn iceberg_settings() -> egress_sync::iceberg::IcebergSettings {
    let columns = arrow_schema::Schema::new(vec![arrow_schema::Field::new(
        "row",
        arrow_schema::DataType::Utf8,
        false,
    )]);
    egress_sync::iceberg::IcebergSettings {
        warehouse: egress_common::Location::Local("out/_iceberg".into()),
        inside_output: Some("_iceberg".into()),
        namespace: "egress".into(),
        catalog: None,
        catalog_name: "egress".into(),
        given_columns: Some(columns),
    }
}

/// egress-dump's settings for a simulated day.
fn dump_settings(
    date: &str,
    ttl: u64,
    shards: Shards,
) -> anyhow::Result<egress_dump::settings::Settings> {
    Ok(egress_dump::settings::Settings {
        tables: egress_dump::table_list::parse_list(&crate::source::TABLES.join(" "))?,
        date: date.to_string(),
        date_given: true,
        output: egress_common::Location::Local("/sim".into()),
        s3: Default::default(),
        local: Default::default(),
        database_url: None,
        timeout: Duration::from_secs(30),
        jobs: 1,
        split_larger_than: None,
        lock_timeout: Duration::from_secs(60),
        conflict_retries: 0,
        keep_going: false,
        header: false,
        // Parquet days, so that the mirror commits them to its Iceberg tables.
        format: egress_dump::config::Format::Parquet,
        compression_level: 6,
        single_gzip_member: false,
        part_size: 8 << 20,
        upload_concurrency: 2,
        lease: egress_common::day::lease::Options {
            wait: Duration::ZERO,
            ttl: Duration::from_secs(ttl),
        },
        dry_run: false,
        progress: false,
        shards,
    })
}

/// The exit code the programs' `main`s give `error`: 3 for a lease held by another run or
/// lost, 2 for configuration, 1 for anything else.
fn exit_code(error: &anyhow::Error) -> i32 {
    use egress_common::error::find;
    let lost = find::<egress_store::StoreError>(error)
        .is_some_and(|e| e.kind() == egress_store::ErrorKind::LeaseLost);
    if lost || find::<egress_common::day::lease::Busy>(error).is_some() {
        3
    } else if find::<egress_common::ConfigError>(error).is_some() {
        2
    } else {
        1
    }
}

fn kill(world: &World, id: usize) {
    let alive = world.with_proc(id, |p| {
        let alive = p.alive;
        if alive {
            p.gate.kill();
            p.alive = false;
            p.ended = Some((-9, "killed".into()));
        }
        alive
    });
    if alive {
        world.fault(Some(id));
        world.note(&world.name(id), "KILLED (SIGKILL)");
        lock(&world.db).gone(id);
        check::withdrawals_justified(world, id, -9);
    }
}

fn pause(world: &Arc<World>, id: usize, ms: u64) {
    let gate = world.with_proc(id, |p| p.alive.then(|| p.gate.clone()));
    let Some(gate) = gate else { return };
    world.fault(Some(id));
    world.note(
        &world.name(id),
        format!("PAUSED for {}.{:03}s", ms / 1000, ms % 1000),
    );
    gate.pause();
    let world = world.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        world.note(&world.name(id), "resumed");
        gate.resume();
    });
}

/// Another tool replaces a table object of a day on `side` with other bytes of the same
/// size. Until that day's manifest changes, the day is not ours to judge.
fn tamper(world: &World, side: Side) {
    // While no run writes: a tool racing a run's publication is beyond any protocol (no
    // condition spans two objects).
    if lock(&world.procs).iter().any(|p| p.alive) {
        return;
    }
    let store = world.store(side);
    let objects = store.objects();
    let Some((key, bytes, _)) = objects.iter().find(|(k, _, _)| k.ends_with(".parquet")) else {
        return;
    };
    let date = egress_common::manifest::folder_of(key).to_string();
    let manifest = objects
        .iter()
        .find(|(k, _, _)| *k == egress_common::manifest::key_in(&date))
        .map(|(_, b, _)| b.to_vec())
        .unwrap_or_default();
    lock(&world.tampered).insert((side, date, manifest));
    let mut other = bytes.to_vec();
    for b in other.iter_mut().skip(5) {
        *b = b.wrapping_add(1);
    }
    let body = egress_store::Body::from_bytes(other);
    let _ = futures::executor::block_on(egress_store::ObjectStore::put(
        store,
        key,
        body,
        &Default::default(),
    ));
    world.fault(None);
    world.note(
        "TOOL",
        format!(
            "another tool replaced {}:{key} with other bytes of the same size",
            side.label()
        ),
    );
}

/// Another tool rewrites the manifest of an input day so that it lists one object twice:
/// first with a wrong hash, then as it is. Until that manifest changes, the input day is
/// not ours to judge; the mirror must never publish it.
fn duplicate(world: &World) {
    if lock(&world.procs).iter().any(|p| p.alive) {
        return;
    }
    let objects = world.input.objects();
    let Some((key, body, _)) = objects
        .iter()
        .find(|(k, _, _)| egress_common::manifest::is_manifest(k))
    else {
        return;
    };
    let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return;
    };
    let Some(tables) = value.get_mut("tables").and_then(|t| t.as_array_mut()) else {
        return;
    };
    let Some(first) = tables.first().cloned() else {
        return;
    };
    let mut wrong = first;
    wrong["sha256"] = serde_json::Value::String("0".repeat(64));
    tables.insert(0, wrong);
    let Ok(text) = serde_json::to_vec_pretty(&value) else {
        return;
    };
    let date = egress_common::manifest::folder_of(key).to_string();
    lock(&world.tampered).insert((Side::Input, date, text.clone()));
    let body = egress_store::Body::from_bytes(text);
    let options = egress_store::PutOptions::default();
    let put = egress_store::ObjectStore::put(&world.input, key, body, &options);
    let _ = futures::executor::block_on(put);
    world.fault(None);
    world.note(
        "TOOL",
        format!("another tool rewrote in:{key}, listing an object twice"),
    );
}
