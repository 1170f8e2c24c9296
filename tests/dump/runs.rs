//! egress-dump when runs meet: two runs writing the same day, a run killed and re-run at
//! once, rows of 50 MB, libpq connection strings, and a server that asks for the password
//! in clear text. Through the binary, against real servers.

use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use egress_testkit::assert_exit_why;
use egress_testkit::assert_none;
use egress_testkit::fixtures::{gated_proxy, upload_id, Gate};
use egress_testkit::overlap::first_run;
use egress_testkit::proxy::{Proxy, Seen};
use egress_testkit::{
    assert_exit, assert_one_line, assert_stderr_has, assert_stdout_has, gunzip, stderr, stdout,
    text, PgServer, S3Kind, S3Server,
};

use super::{
    dump_to_dir, local_env, pg_and_bucket, pg_and_bucket_with, run, spawn, sql, through,
    wait_for_exit, with_var, Env, SMALL_PARTS,
};

const BUCKET: &str = "runs";
const DATE: &str = "2024-06-02";

fn env_for(pg: &PgServer, s3: &S3Server, tables: &str) -> Env {
    super::s3_env(pg, s3, tables, &format!("s3://{BUCKET}/conc"), DATE)
}

/// The day's folder checked against its manifest (itself checked against the schema), as
/// `egress-sync --verify input` does: `Some(problems)` when it has a manifest, `None` when
/// it has none.
async fn verify_day(s3: &S3Server) -> Option<Vec<String>> {
    let manifest_key = format!("conc/{DATE}/_manifest.json");
    if s3.keys(BUCKET, "").await.contains(&manifest_key) {
        egress_testkit::checked_manifest(&s3.get(BUCKET, &manifest_key).await);
    }
    super::verify_day(s3, BUCKET, "conc", DATE).await
}

/// Two dumps of one day at once: the second finds the first's lease (and stops, or waits
/// for it), never aborts the first's uploads, and no manifest disagrees with the day. The
/// second starts only once the first has an upload pending, held at a proxy until the
/// second has stopped (or is seen waiting): the upload is still pending then.
#[tokio::test]
async fn two_dumps_of_one_day_never_leave_a_manifest_that_lies() {
    let (pg, s3) = pg_and_bucket_with(S3Kind::Moto, BUCKET, "CREATE TABLE c1 AS SELECT i AS id, 0 AS v, md5(i::text) || md5((i*3)::text) AS pad FROM generate_series(1, 300000) i; \
              CREATE TABLE c2 AS SELECT i AS id, md5(i::text) AS pad FROM generate_series(1, 50000) i;").await;
    let env = env_for(&pg, &s3, "c1 c2");
    // A writer that keeps changing the tables on its own thread while the dumps run.
    let writer = pg.writer(|_| "UPDATE c1 SET v = v + 1 WHERE id % 1000 = 7".into());
    let (one_job, four_jobs) = (
        [&["--jobs", "1"], &SMALL_PARTS[..]].concat(),
        ["--jobs", "4", "--part-size-mib", "5"],
    );
    // Without waiting: the second run finds the first one's lease and stops with exit 3.
    let first = first_run(&s3, BUCKET, |s3| {
        spawn(&through(&env, &s3.endpoint), &one_job)
    })
    .await;
    let held = "another run holds the lease on s3://runs/conc/2024-06-02/.egress-lease.json";
    first.kept_out(&run(&env, &four_jobs), held).await;
    assert_eq!(
        verify_day(&s3).await,
        Some(vec![]),
        "the day matches its manifest"
    );

    // Waiting for the lease: the second run dumps the day again after the first. It reads
    // the lease through a proxy of its own: two reads of it mean it found the lease live
    // and is waiting.
    let first = first_run(&s3, BUCKET, |s3| {
        spawn(&through(&env, &s3.endpoint), &four_jobs)
    })
    .await;
    let waiting = [&one_job[..], &["--wait-for-lease", "2m"]].concat();
    first
        .waited_for(".egress-lease.json", |s3| {
            spawn(&through(&env, &s3.endpoint), &waiting)
        })
        .await;
    let commits = writer.stop();
    assert!(commits > 10, "the writer kept committing ({commits})");
    assert_eq!(
        verify_day(&s3).await,
        Some(vec![]),
        "the day matches its manifest"
    );
    assert!(s3.pending_uploads(BUCKET).await.is_empty());
    let keys = s3.keys(BUCKET, "").await;
    assert_none(&keys, "leases are released", |k| k.contains("egress-lease"));
}

#[tokio::test]
async fn rows_of_50_mb_stay_within_the_documented_memory_bound() {
    let (pg, s3) = pg_and_bucket(S3Kind::S3sFs, BUCKET).await;
    // Four rows of 50 MB each (poorly compressible, so the gzip side carries weight too).
    sql(&pg, "CREATE TABLE wide (id int, blob text); \
              INSERT INTO wide SELECT i, (SELECT string_agg(md5((i * 100000 + j)::text), '') FROM generate_series(1, 1638400) j) FROM generate_series(1, 4) i;").await;
    let out = run(&env_for(&pg, &s3, "wide"), &[]);
    assert_exit(&out, 0);
    let object = s3.get(BUCKET, &format!("conc/{DATE}/wide.csv.gz")).await;
    assert!(
        gunzip(&object) == pg.psql("COPY wide TO STDOUT (FORMAT csv)"),
        "byte-identical"
    );
    let peak = egress_testkit::peak_rss_mib(&out);
    // The README's bound: 64 MiB plus twice the largest row.
    assert!(
        peak <= 64.0 + 2.0 * 50.0,
        "peak RSS {peak} MiB for rows of 50 MB"
    );
    println!("peak RSS {peak} MiB for four rows of 50 MB");
}

#[tokio::test]
async fn libpq_connection_strings_work_as_in_libpq() {
    let pg = PgServer::start();
    sql(&pg, "CREATE TABLE t AS SELECT 1 AS v").await;
    let dir = tempfile::tempdir().unwrap();
    let pw = egress_testkit::postgres::PASSWORD;
    let with_url = |url: String, extra: &[(&str, &str)]| {
        let mut env: Env = vec![
            ("DATABASE_URL".into(), url),
            ("DUMP_DATE".into(), DATE.into()),
        ];
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        dump_to_dir(&env, "t", dir.path(), &[])
    };
    // Keyword form, options, application_name, connect_timeout.
    let out = with_url(
        format!("host=127.0.0.1 port={} user=postgres password={pw} dbname=postgres application_name=nightly connect_timeout=5 options='-c statement_timeout=0'", pg.port),
        &[],
    );
    assert_exit(&out, 0);
    // A Unix socket, given as a percent-encoded URL host.
    let socket = pg.socket_dir().display().to_string().replace('/', "%2F");
    let url = format!("postgresql://postgres@{socket}:{}/postgres", pg.port);
    let out = with_url(url, &[]);
    assert_exit_why(&out, 0, "Unix socket");
    // Unsupported and unknown parameters are refused by name, the URL never echoed.
    let url = format!("postgresql://postgres:{pw}@127.0.0.1:{}/postgres", pg.port);
    let out = with_url(format!("{url}?sslcert=/c.pem"), &[]);
    assert_exit(&out, 2);
    assert_stderr_has(&out, "'sslcert' (client certificates) is not supported");
    assert!(!text(&out).contains(pw));
    // sslmode=disable in the URL wins over PGSSLMODE: a server that requires TLS refuses it.
    pg.set_hba(
        "hostssl all all 127.0.0.1/32 scram-sha-256
host all all 127.0.0.1/32 reject",
    );
    let out = with_url(
        format!("{url}?sslmode=disable"),
        &[("PGSSLMODE", "require")],
    );
    let said = text(&out);
    assert_eq!(
        out.status.code(),
        Some(2),
        "sslmode=disable honoured: {said}"
    );
    assert!(
        stderr(&out).contains("no encryption") || stderr(&out).contains("rejects connection"),
        "{said}"
    );
}

#[tokio::test]
async fn a_cleartext_password_request_is_refused_unless_chosen() {
    let pg = PgServer::start();
    sql(&pg, "CREATE TABLE t AS SELECT 1 AS v").await;
    pg.set_hba("host all all 127.0.0.1/32 password");
    let dir = tempfile::tempdir().unwrap();
    let env = local_env(&pg, DATE);
    let started = Instant::now();
    let out = dump_to_dir(&env, "t", dir.path(), &[]);
    assert_exit(&out, 2);
    assert_stderr_has(&out, "asked for the password in clear text");
    assert_stderr_has(&out, "it was not sent");
    let err = stderr(&out);
    assert!(
        err.contains("PGSSLMODE=disable explicitly"),
        "names the fix: {err}"
    );
    assert!(started.elapsed() < Duration::from_secs(10), "not retried");
    println!("refused: {}", err.trim());
    let out = dump_to_dir(
        &with_var(&env, "PGSSLMODE", "disable"),
        "t",
        dir.path(),
        &[],
    );
    assert_exit_why(&out, 0, "chosen explicitly");
}

/// Wait until every one of `apps` is waiting for a lock, while `dump` still runs.
fn wait_until_blocked(pg: &PgServer, dump: &mut Child, apps: &[&str]) {
    let start = Instant::now();
    loop {
        let waiting = pg.waiting_for_locks(apps);
        if waiting.len() == apps.len() {
            return;
        }
        assert!(
            dump.try_wait().unwrap().is_none(),
            "the dump ended while {apps:?} were not all waiting (only {waiting:?}): a session changed a listed table during the dump"
        );
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "only {waiting:?} of {apps:?} wait for the dump's locks"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn listed_tables_are_locked_with_the_snapshot_so_ddl_waits_for_the_day() {
    let (pg, s3) = pg_and_bucket(S3Kind::Moto, BUCKET).await;
    let (proxy, open) = gated_proxy(&s3);
    for jobs in ["1", "2"] {
        sql(&pg, "DROP TABLE IF EXISTS first, second, later, later_old, later_new, parted CASCADE; \
                  CREATE TABLE first AS SELECT i, md5(i::text) a, md5((i*3)::text) b FROM generate_series(1, 150000) i; \
                  CREATE TABLE second AS SELECT * FROM first; \
                  CREATE TABLE later AS SELECT i AS id, 'original ' || i AS note FROM generate_series(1, 1000) i; \
                  CREATE TABLE later_new AS SELECT 0 AS id, 'swapped in' AS note; \
                  CREATE MATERIALIZED VIEW mv AS SELECT id FROM later WHERE id % 2 = 0; \
                  CREATE TABLE parted (id int, v text) PARTITION BY RANGE (id); \
                  CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (500); \
                  CREATE TABLE parted_2 PARTITION OF parted FOR VALUES FROM (500) TO (1001); \
                  INSERT INTO parted SELECT i, 'p' || i FROM generate_series(0, 1000) i;").await;
        let before = |table: &str| {
            pg.psql(&format!(
                "COPY (SELECT * FROM {table}) TO STDOUT (FORMAT csv)"
            ))
        };
        let expected = [
            ("later", before("later")),
            ("mv", before("mv")),
            ("parted", before("parted")),
        ];
        open.set(false);
        proxy.clear();
        let env = env_for(&pg, &s3, "first second later mv parted");
        let args = [&["--jobs", jobs], &SMALL_PARTS[..]].concat();
        let mut dump = spawn(&through(&env, &proxy.endpoint), &args);
        proxy.wait_for("an UploadPart", |s| s.is_upload_part());
        // While the first table is being uploaded: empty and refill a table not read yet,
        // add a column to another, refresh the materialized view, swap a table by renaming.
        let sessions = [
            ("truncater", "BEGIN; TRUNCATE later CASCADE; INSERT INTO later SELECT i, 'new' FROM generate_series(1, 5) i; COMMIT"),
            ("alterer", "ALTER TABLE parted ADD COLUMN extra int DEFAULT 7"),
            ("refresher", "REFRESH MATERIALIZED VIEW mv"),
            ("swapper", "BEGIN; ALTER TABLE second RENAME TO second_old; ALTER TABLE later_new RENAME TO second; COMMIT"),
        ];
        let mut children: Vec<(&str, Child)> = sessions
            .iter()
            .map(|(app, q)| (*app, pg.psql_session(app, q)))
            .collect();
        let apps: Vec<&str> = sessions.iter().map(|(a, _)| *a).collect();
        wait_until_blocked(&pg, &mut dump, &apps);
        open.set(true);
        let out = dump.wait_with_output().unwrap();
        assert_exit_why(&out, 0, &format!("jobs {jobs}"));
        for (app, child) in children.iter_mut() {
            assert!(
                child.wait().unwrap().success(),
                "{app} went through after the dump"
            );
        }
        for (table, rows) in &expected {
            let object = s3.get(BUCKET, &format!("conc/{DATE}/{table}.csv.gz")).await;
            assert!(
                gunzip(&object) == *rows,
                "jobs {jobs}: {table} is the snapshot's, not the DDL's"
            );
        }
        let second = s3.get(BUCKET, &format!("conc/{DATE}/second.csv.gz")).await;
        assert!(
            gunzip(&second) == pg.psql("COPY second_old TO STDOUT (FORMAT csv)"),
            "the table read is the one locked"
        );
        let manifest = egress_testkit::checked_manifest(
            &s3.get(BUCKET, &format!("conc/{DATE}/_manifest.json")).await,
        );
        let parted = manifest["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["table"] == "parted")
            .unwrap();
        let names: Vec<&str> = parted["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["id", "v"],
            "the manifest's columns are the ones read"
        );
        assert_eq!(
            pg.value("SELECT count(*) FROM later"),
            "5",
            "the DDL ran after the day"
        );
        sql(&pg, "DROP TABLE second_old").await;
    }
}

/// Two tables of one row: `free`, and `held` (another session locks it).
const FREE_AND_HELD: &str =
    "CREATE TABLE free AS SELECT 1 AS v; CREATE TABLE held AS SELECT 1 AS v";

#[tokio::test]
async fn a_table_another_session_holds_fails_the_run_naming_that_session() {
    let (pg, s3) = pg_and_bucket_with(S3Kind::Moto, BUCKET, FREE_AND_HELD).await;
    let mut migration = pg.psql_session(
        "migration",
        "BEGIN; LOCK TABLE held IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(60)",
    );
    let start = Instant::now();
    while pg.pid_of("migration") == 0 || pg.value("SELECT count(*) FROM pg_locks WHERE mode = 'AccessExclusiveLock' AND relation = 'held'::regclass") != "1" {
        assert!(start.elapsed() < Duration::from_secs(20), "the migration session holds its lock");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = pg.pid_of("migration");
    for jobs in ["1", "2"] {
        let started = Instant::now();
        let out = run(
            &env_for(&pg, &s3, "free held"),
            &["--lock-timeout", "2s", "--jobs", jobs],
        );
        println!("{}", stderr(&out));
        let line = assert_one_line(&out, 1, "cannot lock table 'held'");
        for wanted in [
            "cannot lock table 'held' (\"public\".\"held\") for reading within 2s".to_string(),
            format!("session {pid} (user 'postgres', application 'migration', active"),
            "holds an ACCESS EXCLUSIVE lock on held".to_string(),
            "--lock-timeout".to_string(),
        ] {
            assert!(line.contains(&wanted), "{wanted}: {line}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "it waited about 2s"
        );
        let keys = s3.keys(BUCKET, "").await;
        assert!(keys.is_empty(), "nothing of the day was written: {keys:?}");
        assert!(s3.pending_uploads(BUCKET).await.is_empty());
    }
    migration.kill().unwrap();
    let _ = migration.wait();
}

/// A `REINDEX` of a table's TOAST index (which the table's own lock does not keep out)
/// while the dump measures the table: the measure keeps the estimate instead of waiting
/// (a dry run answers at once) and never breaks the run's transaction (the dump waits for
/// the REINDEX only where it reads the values, and completes).
#[tokio::test]
async fn a_reindex_of_the_toast_index_never_stalls_or_breaks_the_measure() {
    let (pg, s3) = pg_and_bucket_with(
        S3Kind::Moto,
        BUCKET,
        "CREATE TABLE toasty AS SELECT i, (SELECT string_agg(md5((i * 1000 + j)::text), '') \
         FROM generate_series(1, 200) j) AS long FROM generate_series(1, 300) i",
    )
    .await;
    let index = pg.value(
        "SELECT indexrelid::regclass FROM pg_index WHERE indrelid = \
         (SELECT reltoastrelid FROM pg_class WHERE oid = 'toasty'::regclass)",
    );
    let hold = |seconds: u32| {
        let session = pg.psql_session(
            "reindex",
            &format!("BEGIN; REINDEX INDEX {index}; SELECT pg_sleep({seconds})"),
        );
        let start = Instant::now();
        while pg.value(&format!("SELECT count(*) FROM pg_locks WHERE mode = 'AccessExclusiveLock' AND relation = '{index}'::regclass")) != "1" {
            assert!(start.elapsed() < Duration::from_secs(20), "the REINDEX holds its lock");
            std::thread::sleep(Duration::from_millis(50));
        }
        session
    };
    let env = env_for(&pg, &s3, "toasty");
    let mut reindex = hold(60);
    let started = Instant::now();
    let out = run(&env, &["--dry-run"]);
    assert_exit(&out, 0);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the dry run waited for the REINDEX: {:?}",
        started.elapsed()
    );
    // Its backend, not only its psql: a killed client leaves pg_sleep holding the lock.
    pg.value(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'reindex'",
    );
    let _ = reindex.wait();

    let mut reindex = hold(3);
    let out = run(&env, &["--lock-timeout", "60s"]);
    let _ = reindex.wait();
    assert_exit(&out, 0);
    let csv = gunzip(&s3.get(BUCKET, &format!("conc/{DATE}/toasty.csv.gz")).await);
    assert_eq!(String::from_utf8_lossy(&csv).lines().count(), 300);
}

const BIG: &str = "CREATE TABLE big AS SELECT i, md5(i::text) a, md5((i*3)::text) b, md5((i*7)::text) c FROM generate_series(1, 200000) i";
/// A lease of 4 s over a dump of `big` in small parts.
const SHORT_LEASE: [&str; 8] = [
    "--lease-ttl",
    "4s",
    "--part-size-mib",
    "5",
    "--compression-level",
    "1",
    "--tables",
    "big",
];

fn signal(child: &Child, signal: i32) {
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, signal) };
}

/// The day's lease object as JSON, if there is one.
async fn day_lease(s3: &S3Server) -> Option<serde_json::Value> {
    let key = format!("conc/{DATE}/.egress-lease.json");
    if !s3.keys(BUCKET, "").await.contains(&key) {
        return None;
    }
    serde_json::from_slice(&s3.get(BUCKET, &key).await).ok()
}

/// Every object of the day with its bytes.
async fn day_objects(s3: &S3Server) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for key in s3.keys(BUCKET, &format!("conc/{DATE}/")).await {
        if !key.ends_with(".egress-lease.json") {
            out.push((key.clone(), s3.get(BUCKET, &key).await));
        }
    }
    out
}

/// A dump of `big` under way: PostgreSQL holding `big`, moto, the dump's environment
/// through a gated proxy, and the first run, seen sending its first part (held there).
struct BigDay {
    _pg: PgServer,
    s3: S3Server,
    env: Env,
    proxy: Proxy,
    gate: Arc<Gate>,
    first: Child,
    first_part: Seen,
}

/// [`BigDay`], its first run started by `start` with the environment through the proxy.
async fn big_day_under_way(start: impl FnOnce(&Env) -> Child) -> BigDay {
    let (pg, s3) = pg_and_bucket_with(S3Kind::Moto, BUCKET, BIG).await;
    let (proxy, gate) = gated_proxy(&s3);
    let env = through(&env_for(&pg, &s3, "big"), &proxy.endpoint);
    let first = start(&env);
    let first_part = proxy.wait_for("an UploadPart", |s| s.is_upload_part());
    BigDay {
        _pg: pg,
        s3,
        env,
        proxy,
        gate,
        first,
        first_part,
    }
}

#[tokio::test]
async fn a_run_paused_past_its_lease_writes_nothing_when_it_resumes() {
    let day = big_day_under_way(|env| spawn(env, &SHORT_LEASE)).await;
    let (s3, paused) = (&day.s3, day.first);
    // A frozen node: the run stops renewing its lease while its first part is on its way.
    signal(&paused, libc::SIGSTOP);
    day.gate.set(true);
    std::thread::sleep(Duration::from_secs(6));
    let second = run(&day.env, &SHORT_LEASE);
    assert_exit(&second, 0);
    assert_stdout_has(&second, "took over the lease of a run that is gone");
    let objects = day_objects(s3).await;
    assert_eq!(
        verify_day(s3).await,
        Some(vec![]),
        "the second run's day is complete"
    );
    signal(&paused, libc::SIGCONT);
    let resumed = wait_for_exit(paused, Duration::from_secs(60));
    println!("the resumed run: {}", stderr(&resumed));
    let lost = "no longer holds the lease on s3://runs/conc/2024-06-02/.egress-lease.json";
    assert_one_line(&resumed, 3, lost);
    assert!(
        objects == day_objects(s3).await,
        "the resumed run changed nothing of the day"
    );
    assert_eq!(verify_day(s3).await, Some(vec![]));
    assert!(
        s3.pending_uploads(BUCKET).await.is_empty(),
        "no upload left behind"
    );
    assert!(day_lease(s3).await.is_none(), "no lease left behind");
}

/// SIGTERM reaches a run after another run took its lease over: its stop releases only a
/// lease that is still its own, so the new holder's is left alone. The first run is kept
/// stopped (SIGSTOP) through the takeover and gets SIGTERM before SIGCONT; its part is held
/// meanwhile, so nothing but the signal can end it (not the lost lease's exit 3). Each run
/// has a proxy of its own, so the first one's requests can be told apart.
#[tokio::test]
async fn a_run_whose_lease_was_taken_leaves_the_new_holders_lease_on_sigterm() {
    // Held parts must not time out (and fail the run) while the test arranges the rest.
    let args = [&SHORT_LEASE[..], &["--timeout", "300"]].concat();
    let day = big_day_under_way(|env| spawn(env, &args)).await;
    let (s3, proxy, first) = (&day.s3, &day.proxy, day.first);
    // A frozen node: the first run stops renewing its lease; the second waits for the lease
    // to lapse and takes it over.
    egress_testkit::process::pause(first.id());
    let waiting = [&args[..], &["--wait-for-lease", "2m"]].concat();
    let (other_proxy, other_gate) = gated_proxy(s3);
    let second = spawn(&through(&day.env, &other_proxy.endpoint), &waiting);
    other_proxy.wait_for("the second run's UploadPart", |s| s.is_upload_part());
    let holder = day_lease(s3).await.expect("the second run holds the lease");
    assert_eq!(holder["pid"], second.id(), "{holder}");
    proxy.clear();
    signal(&first, libc::SIGTERM);
    signal(&first, libc::SIGCONT);
    let first = wait_for_exit(first, Duration::from_secs(60));
    assert_exit(&first, 143);
    assert_stderr_has(&first, "stopped by SIGTERM");
    // The stop's work ran (it aborted the run's upload) and, in the same round, its
    // release of the lease, which found another run's lease and left it.
    let stopped: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.method == "DELETE")
        .collect();
    assert!(
        stopped.iter().any(|r| upload_id(&r.target).is_some()),
        "the SIGTERM aborted the stopped run's upload: {stopped:?}"
    );
    assert!(
        !stopped
            .iter()
            .any(|r| r.target.contains(".egress-lease.json")),
        "the stopped run never deleted the lease: {stopped:?}"
    );
    let after = day_lease(s3).await.expect("the lease is still there");
    assert_eq!(
        after["pid"],
        second.id(),
        "the stopped run left the new holder's lease alone: {after}"
    );
    day.gate.set(true);
    other_gate.set(true);
    let second = wait_for_exit(second, Duration::from_secs(120));
    assert_exit(&second, 0);
    assert_stdout_has(&second, "took over the lease of a run that is gone");
    assert_eq!(verify_day(s3).await, Some(vec![]));
    assert!(day_lease(s3).await.is_none(), "released at the end");
}

#[tokio::test]
async fn a_lease_taken_after_waiting_lasts_its_whole_time_to_live() {
    let day = big_day_under_way(|env| spawn(env, &SHORT_LEASE)).await;
    let (proxy, first_part) = (&day.proxy, &day.first_part);
    let waiting = [&SHORT_LEASE[..], &["--wait-for-lease", "2m"]].concat();
    let second = spawn(&day.env, &waiting);
    // Longer than a lease lasts: an expiry computed before the wait would be past already.
    std::thread::sleep(Duration::from_secs(6));
    day.gate.let_through(&first_part.target);
    let first = wait_for_exit(day.first, Duration::from_secs(120));
    assert_exit(&first, 0);
    proxy.wait_for("the waiting run's UploadPart", |s| {
        s.is_upload_part() && upload_id(&s.target) != upload_id(&first_part.target)
    });
    std::thread::sleep(Duration::from_secs(2));
    let third = run(&day.env, &SHORT_LEASE);
    assert_exit_why(&third, 3, "the waiting run's lease is live");
    assert_stderr_has(&third, &format!("pid {}", second.id()));
    day.gate.set(true);
    let second = wait_for_exit(second, Duration::from_secs(120));
    assert_exit(&second, 0);
    assert_eq!(verify_day(&day.s3).await, Some(vec![]));
}

/// A pod whose clock is five minutes slow holds its lease all the same: the lease is
/// stamped and judged on the store's clock. The skew is shown to have taken effect (the
/// manifest's `run_started` and the log's times come from the process's own clock, five
/// minutes behind), while the lease it wrote carries the store's time and binds.
#[tokio::test]
async fn a_run_with_a_slow_clock_still_holds_its_lease() {
    let faketime = egress_testkit::process::find_binary(
        "faketime",
        "EGRESS_FAKETIME",
        &[],
        "apt-get install faketime",
    );
    // A pod whose clock is five minutes behind: its own idea of "expires" is long past.
    let mut started = 0;
    let day = big_day_under_way(|env| {
        let mut slow = egress_testkit::clean_command(faketime.to_str().unwrap());
        slow.env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .args(["-f", "-5m", env!("CARGO_BIN_EXE_egress-dump")])
            .args(["--part-size-mib", "5", "--compression-level", "1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        started = chrono::Utc::now().timestamp();
        slow.spawn().expect("spawn egress-dump under faketime")
    })
    .await;
    let s3 = &day.s3;
    // The lease it wrote: taken and expiring on the store's time, not five minutes back.
    let lease = day_lease(s3).await.expect("the slow run's lease");
    let since = lease["since"].as_i64().expect("since");
    let expires = lease["expires"].as_i64().expect("expires");
    let now = chrono::Utc::now().timestamp();
    assert!(
        (started - 5..=now + 5).contains(&since) && expires > now,
        "the lease is stamped on the store's clock (now {now}): {lease}"
    );
    let second = run(&day.env, &["--part-size-mib", "5"]);
    assert_exit_why(
        &second,
        3,
        "the slow run's lease is live on the store's clock",
    );
    day.gate.set(true);
    let slow = wait_for_exit(day.first, Duration::from_secs(120));
    let finished = chrono::Utc::now().timestamp();
    assert_exit(&slow, 0);
    assert_eq!(verify_day(s3).await, Some(vec![]));
    // Its own clock was five minutes slow the whole time: when the manifest says it
    // started, and when its log lines say they were written.
    let manifest = egress_testkit::checked_manifest(
        &s3.get(BUCKET, &format!("conc/{DATE}/_manifest.json")).await,
    );
    let own_clock = |stamp: &str| {
        chrono::DateTime::parse_from_rfc3339(stamp)
            .unwrap_or_else(|e| panic!("{stamp}: {e}"))
            .timestamp()
    };
    let run_started = own_clock(manifest["run_started"].as_str().expect("run_started"));
    let logged = stdout(&slow);
    let first_line = logged.lines().next().expect("a log line");
    let log_time = own_clock(first_line.split_whitespace().next().unwrap_or(""));
    for (what, stamp) in [
        ("run_started", run_started),
        ("the first log line", log_time),
    ] {
        assert!(
            (started - 300 - 5..=finished - 300 + 5).contains(&stamp),
            "{what} is five minutes behind the run's real time ({started}..{finished}): {stamp}\n{}",
            text(&slow)
        );
    }
}

#[tokio::test]
async fn an_unreadable_lease_is_one_line_and_is_taken_over_once_it_is_old() {
    let (pg, s3) =
        pg_and_bucket_with(S3Kind::Moto, BUCKET, "CREATE TABLE small AS SELECT 1 AS v").await;
    let proxy = Proxy::start(&s3.endpoint, None, None);
    let env = through(&env_for(&pg, &s3, "small"), &proxy.endpoint);
    let key = format!("conc/{DATE}/.egress-lease.json");
    for body in [
        &b"{}"[..],
        b"{\"run_id\": \"ab",
        b"{\"version\": 2, \"owner\": \"x\"}",
    ] {
        s3.put(BUCKET, &key, body.to_vec()).await;
        let out = wait_for_exit(spawn(&env, &["--lease-ttl", "4s"]), Duration::from_secs(30));
        assert_one_line(&out, 3, "a lease object this version cannot read");
    }
    proxy.clear();
    let out = wait_for_exit(
        spawn(&env, &["--lease-ttl", "4s", "--wait-for-lease", "30s"]),
        Duration::from_secs(60),
    );
    assert_exit(&out, 0);
    assert_stdout_has(&out, "cannot be read");
    assert_stdout_has(
        &out,
        "took over the lease of a run that is gone: a lease object this version cannot read",
    );
    let writes = proxy.count("PUT", "egress-lease");
    assert!(writes <= 3, "the lease was written {writes} times");
    assert_eq!(verify_day(&s3).await, Some(vec![]));
}

#[tokio::test]
async fn a_host_list_refuses_cleartext_on_every_tcp_host_and_stops_at_a_refused_login() {
    let pg = PgServer::start();
    sql(&pg, "CREATE TABLE t AS SELECT 1 AS v").await;
    let dir = tempfile::tempdir().unwrap();
    let no_socket = dir.path().join("no-socket-here");
    let dump_with = |hosts: String, password: &str| {
        let env = with_var(&local_env(&pg, DATE), "PGHOST", &hosts);
        dump_to_dir(
            &with_var(&env, "PGPASSWORD", password),
            "t",
            dir.path(),
            &[],
        )
    };
    // A socket directory first, then a TCP host that asks for the password in clear text.
    pg.set_hba("host all all 127.0.0.1/32 password");
    let hosts = format!("{},127.0.0.1", no_socket.display());
    let out = dump_with(hosts, egress_testkit::postgres::PASSWORD);
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("asked for the password in clear text")
            && stderr(&out).contains("it was not sent"),
        "{}",
        text(&out)
    );
    // A wrong password on the first host of a list: one failed login, reported as such.
    pg.set_hba("host all all 127.0.0.1/32 scram-sha-256");
    let before = pg.log().matches("password authentication failed").count();
    let hosts = format!("127.0.0.1,{}", no_socket.display());
    let started = Instant::now();
    let out = dump_with(hosts, "wrong-password");
    assert_exit(&out, 2);
    let line = stderr(&out);
    assert!(
        line.contains("cannot log in to PostgreSQL at 127.0.0.1:")
            && line.contains("password authentication failed"),
        "{line}"
    );
    assert!(
        !stdout(&out).contains("retrying"),
        "not retried: {}",
        text(&out)
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    let failed = pg.log().matches("password authentication failed").count() - before;
    assert_eq!(failed, 1, "one failed login on the server");
}
