//! End-to-end tests of big tables read in ctid chunks (`--split-larger-than`) and of dumps
//! from a hot standby that the standby cancels for a recovery conflict, against real
//! PostgreSQL clusters (a primary and a `pg_basebackup -R` standby) and a real S3 server.

use std::process::{Child, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use egress_testkit::assert_exit_why;
use egress_testkit::proxy::{Hook, Proxy};
use egress_testkit::{assert_exit, assert_stdout_has};
use egress_testkit::{gunzip, stdout, PgServer, S3Kind, S3Server};

use super::{command, dump_while_writing, local_env, pg_with, run as dump, sql};
use egress_testkit::peak_rss_mib;

const DATE: &str = "2024-05-01";
const BUCKET: &str = "split-test";

/// Every awkward value type, a generated column (COPY leaves it out) and a dropped one,
/// grown to ~8 MB so that a 1 MiB threshold splits it into many chunks.
const AWKWARD: &str = r#"
CREATE TABLE awkward (
  id int, t text, b bytea, arr text[], j jsonb, ts timestamptz, n numeric, f float8, u uuid,
  gone text, twice int GENERATED ALWAYS AS (id * 2) STORED
);
INSERT INTO awkward (id, t, b, arr, j, ts, n, f, u, gone) VALUES
 (1, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 'x'),
 (2, '', '\x', '{}', '{}', '2024-01-01 00:00:00+00', 0, 0, '00000000-0000-0000-0000-000000000000', 'x'),
 (3, 'say "hi", ok', '\xdeadbeef00', '{"a,b","c\"d",NULL}', '{"k": "v, \"q\"", "n": [1, 2.5]}',
     '2024-06-30 23:59:59.123456+02', 12345678901234567890.0123456789, 1e308, gen_random_uuid(), 'x'),
 (4, E'line1\nline2\r\nline3', E'\\x0a0d', '{"x\ny"}', '"just a string"', 'infinity', 'NaN', '-Infinity', NULL, 'x'),
 (5, 'unicode: żółć 日本語 🎉 é', '\x00', '{"ü"}', '{"emoji": "🎉"}', '1970-01-01 00:00:00+00', -0.5, -0.0, NULL, 'x'),
 (6, ',', NULL, '{","}', 'null', NULL, 1, 1.5, NULL, 'x'),
 (7, '"', NULL, NULL, '[]', NULL, NULL, NULL, NULL, 'x'),
 (8, '\N', NULL, NULL, NULL, NULL, NULL, NULL, NULL, 'x');
INSERT INTO awkward (id, t, b, arr, j, ts, n, f, u, gone)
  SELECT i, t || i, b, arr, j, ts, n, f, u, gone FROM awkward, generate_series(9, 40000) i;
ALTER TABLE awkward DROP COLUMN gone;
-- Updates leave gaps and move rows to later pages: chunks see holes and moved tuples.
UPDATE awkward SET t = t || '!' WHERE id % 97 = 0;
DELETE FROM awkward WHERE id % 89 = 0;
"#;

/// A table `small` of 100 rows: too small to be split.
const SMALL: &str = "CREATE TABLE small AS SELECT i FROM generate_series(1, 100) i;";

/// The serial reference: one COPY that starts at block 0.
fn serial_copy(pg: &PgServer, table: &str, header: bool) -> Vec<u8> {
    let options = if header {
        "(FORMAT csv, HEADER)"
    } else {
        "(FORMAT csv)"
    };
    pg.psql(&format!(
        "SET synchronize_seqscans = off; COPY {table} TO STDOUT {options}"
    ))
}

fn manifest_entry(manifest: &serde_json::Value, file: &str) -> serde_json::Value {
    manifest["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .find(|t| t["file"] == file)
        .unwrap_or_else(|| panic!("{file} in {manifest}"))
        .clone()
}

#[tokio::test]
async fn split_tables_equal_a_serial_copy_byte_for_byte() {
    let pg = pg_with(&[AWKWARD, SMALL]).await;
    let expected = serial_copy(&pg, "awkward", false);
    assert!(expected.len() > 6_000_000, "{} bytes", expected.len());
    let env = local_env(&pg, DATE);
    for (jobs, header) in [("2", false), ("3", false), ("3", true)] {
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec![
            "--tables",
            "awkward small",
            "--split-larger-than",
            "1MiB",
            "--jobs",
            jobs,
            "--output",
            dir.path().to_str().unwrap(),
        ];
        if header {
            args.push("--header");
        }
        let out = dump(&env, &args);
        assert_exit_why(&out, 0, &format!("--jobs {jobs}"));
        let day = dir.path().join(DATE);
        let got = gunzip(&std::fs::read(day.join("awkward.csv.gz")).unwrap());
        let want = if header {
            serial_copy(&pg, "awkward", true)
        } else {
            expected.clone()
        };
        assert!(got == want, "--jobs {jobs} --header {header}: the chunks differ from a serial COPY ({} vs {} bytes)", got.len(), want.len());
        let manifest =
            egress_testkit::checked_manifest(&std::fs::read(day.join("_manifest.json")).unwrap());
        let big = manifest_entry(&manifest, "awkward.csv.gz");
        let chunks = big["chunks"].as_u64().expect("chunks");
        assert!(chunks > 2, "--jobs {jobs}: read in {chunks} chunk(s)");
        assert_eq!(
            big["rows"].as_u64(),
            Some(pg.value("SELECT count(*) FROM awkward").parse().unwrap())
        );
        assert_eq!(
            manifest_entry(&manifest, "small.csv.gz")["chunks"].as_u64(),
            Some(1)
        );
        assert!(
            stdout(&out).contains("chunks"),
            "the split is logged: {}",
            stdout(&out)
        );
    }
}

/// A parent whose child (table inheritance) holds as many rows again, with a column a
/// typed day reads as text (`inet`, through a query rather than `COPY table`).
const INHERITED: &str = r#"
CREATE TABLE parent (id int, ip inet, note text);
CREATE TABLE child () INHERITS (parent);
INSERT INTO parent SELECT i, '10.0.0.1', md5(i::text) FROM generate_series(1, 40000) i;
INSERT INTO child SELECT * FROM parent;
"#;

/// `COPY parent TO` prints the parent's own rows; a query without `ONLY` read the child's
/// too (found by an adversarial run: 400,000 rows written for a table of 200,000, exit 0),
/// in ctid chunks and in a typed day's query alike.
#[tokio::test]
async fn a_parent_is_written_without_the_rows_of_the_tables_inheriting_from_it() {
    let pg = pg_with(&[INHERITED]).await;
    let want = serial_copy(&pg, "parent", false);
    let env = local_env(&pg, DATE);
    let cases: [(&str, &[&str]); 3] = [
        (
            "parent.csv.gz",
            &["--split-larger-than", "1MiB", "--jobs", "2"],
        ),
        ("parent.parquet", &["--format", "parquet"]),
        (
            "parent.parquet",
            &[
                "--format",
                "parquet",
                "--split-larger-than",
                "1MiB",
                "--jobs",
                "2",
            ],
        ),
    ];
    for (file, flags) in cases {
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec![
            "--tables",
            "parent",
            "--output",
            dir.path().to_str().unwrap(),
        ];
        args.extend_from_slice(flags);
        let out = dump(&env, &args);
        assert_exit_why(&out, 0, &format!("{flags:?}"));
        let day = dir.path().join(DATE);
        let manifest =
            egress_testkit::checked_manifest(&std::fs::read(day.join("_manifest.json")).unwrap());
        assert_eq!(
            manifest_entry(&manifest, file)["rows"].as_u64(),
            Some(40_000),
            "{flags:?}"
        );
        if file.ends_with(".csv.gz") {
            let got = gunzip(&std::fs::read(day.join(file)).unwrap());
            assert!(
                got == want,
                "{flags:?}: {} bytes, `COPY parent TO` prints {}",
                got.len(),
                want.len()
            );
            let chunks = manifest_entry(&manifest, file)["chunks"].as_u64();
            assert!(chunks > Some(1), "{flags:?}: read in {chunks:?} chunk(s)");
        }
    }
}

#[tokio::test]
async fn a_concurrent_writer_does_not_show_in_any_chunk() {
    let pg = PgServer::start();
    // Transfers between accounts: every committed transaction keeps the sum, and an
    // UPDATE writes a new row version, often on a later page (another chunk).
    sql(
        &pg,
        "CREATE TABLE accounts AS SELECT i AS id, 1000::bigint AS amount, md5(i::text) AS pad \
         FROM generate_series(1, 300000) i; CREATE UNIQUE INDEX ON accounts (id);",
    )
    .await;
    let writer = pg.writer(|i| {
        let from = (i as i64 * 7919) % 300000 + 1;
        let to = (from * 31) % 300000 + 1;
        format!(
            "BEGIN; UPDATE accounts SET amount = amount - 7 WHERE id = {from}; \
             UPDATE accounts SET amount = amount + 7 WHERE id = {to}; COMMIT;"
        )
    });
    writer.wait_for(20);
    let dir = tempfile::tempdir().unwrap();
    let env = local_env(&pg, DATE);
    let flags = [
        "--split-larger-than",
        "1MiB",
        "--jobs",
        "2",
        "--compression-level",
        "9",
    ];
    dump_while_writing(&env, "accounts", dir.path(), &flags, writer);
    let csv = gunzip(&std::fs::read(dir.path().join(DATE).join("accounts.csv.gz")).unwrap());
    let mut ids = std::collections::BTreeSet::new();
    let mut sum = 0i64;
    for record in csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(&csv[..])
        .records()
    {
        let record = record.expect("valid CSV");
        assert!(
            ids.insert(record[0].to_string()),
            "id {} twice: a row seen in two versions",
            &record[0]
        );
        sum += record[1].parse::<i64>().expect("amount");
    }
    assert_eq!(ids.len(), 300000, "every account once");
    assert_eq!(sum, 300000 * 1000, "the dump saw half a transfer");
}

/// A dump running from the standby, slowed down by a proxy in front of S3 that holds each
/// UploadPart while `slow` is set.
struct SlowDump {
    child: Child,
    proxy: Proxy,
    slow: Arc<AtomicBool>,
}

fn start_slow_dump(standby: &PgServer, s3: &S3Server, extra: &[&str]) -> SlowDump {
    let slow = Arc::new(AtomicBool::new(true));
    let flag = slow.clone();
    let hook: Hook = Arc::new(move |seen| {
        let wait = flag.load(Ordering::SeqCst) && seen.is_upload_part();
        Box::pin(async move {
            if wait {
                tokio::time::sleep(Duration::from_millis(2500)).await;
            }
        })
    });
    let proxy = Proxy::start(&s3.endpoint, Some(hook), None);
    let mut env = standby.env();
    env.extend(s3.env());
    env.retain(|(k, _)| k != "AWS_ENDPOINT_URL");
    env.push(("AWS_ENDPOINT_URL".into(), proxy.endpoint.clone()));
    env.push(("DUMP_DATE".into(), DATE.into()));
    env.push(("S3_OUTPUT".into(), format!("s3://{BUCKET}/replica")));
    let mut args = vec![
        "--tables",
        "readings",
        "--split-larger-than",
        "8MiB",
        "--jobs",
        "2",
        "--compression-level",
        "1",
        "--part-size-mib",
        "5",
        "--upload-concurrency",
        "1",
    ];
    args.extend_from_slice(extra);
    let child = command(&env, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn egress-dump");
    SlowDump { child, proxy, slow }
}

/// Remove rows on the primary (round 0: even ids, round 1: half the odd ones) and VACUUM them away while the standby's dump still
/// reads them: the standby (`max_standby_streaming_delay = 0`, no feedback) must cancel it.
fn force_conflict(primary: &PgServer, standby: &PgServer, dump: &SlowDump, round: u32) {
    dump.proxy
        .wait_for("an UploadPart from the standby's dump", |s| {
            s.is_upload_part()
        });
    primary.psql(&format!(
        "DELETE FROM readings WHERE id % {} = {}",
        2 << round,
        round
    ));
    primary.psql("VACUUM readings");
    // Replay passes the VACUUM only once the conflicting reads are gone.
    primary.wait_for_replay(standby);
    dump.slow.store(false, Ordering::SeqCst);
}

fn finish(mut dump: SlowDump) -> Output {
    let deadline = Instant::now() + Duration::from_secs(300);
    while dump.child.try_wait().expect("wait").is_none() {
        assert!(
            Instant::now() < deadline,
            "egress-dump did not end in 300 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    dump.child.wait_with_output().expect("output")
}

#[tokio::test]
async fn a_recovery_conflict_on_a_standby_restarts_the_day_from_a_fresh_snapshot() {
    let primary = PgServer::start();
    sql(
        &primary,
        "CREATE TABLE readings AS SELECT i AS id, md5(i::text) AS a, md5((i * 7)::text) AS b, \
         i * 0.25 AS v FROM generate_series(1, 1500000) i; \
         ALTER TABLE readings SET (autovacuum_enabled = off);",
    )
    .await;
    let standby = primary.start_standby(&[
        "max_standby_streaming_delay = 0",
        "hot_standby_feedback = off",
    ]);
    primary.wait_for_replay(&standby);
    assert_eq!(standby.value("SELECT pg_is_in_recovery()"), "t");
    let s3 = S3Server::with_bucket(S3Kind::S3sFs, BUCKET).await;

    // A Parquet day goes through the same retry: the typed encoder's threads end with the
    // abandoned attempt, and the day is the final snapshot's. Rows added for it and deleted
    // while it reads (the table is left as it was for the CSV days below); the table is
    // larger than a row group (64 MiB), so parts are uploaded while the COPY still reads.
    primary.psql(
        "INSERT INTO readings SELECT i, md5(i::text), md5((i * 7)::text), i * 0.25 \
         FROM generate_series(1500001, 1600000) i",
    );
    primary.wait_for_replay(&standby);
    let dump = start_slow_dump(
        &standby,
        &s3,
        &["--format", "parquet", "--date", "2024-05-03"],
    );
    dump.proxy
        .wait_for("an UploadPart of the Parquet day", |s| s.is_upload_part());
    primary.psql("DELETE FROM readings WHERE id > 1500000");
    primary.psql("VACUUM readings");
    primary.wait_for_replay(&standby);
    dump.slow.store(false, Ordering::SeqCst);
    let out = finish(dump);
    let log = stdout(&out);
    assert_exit(&out, 0);
    assert!(log.contains("(retry 1 of 3)"), "the retry is logged: {log}");
    assert!(!log.contains("Failed."), "{log}");
    let manifest = s3.get(BUCKET, "replica/2024-05-03/_manifest.json").await;
    let manifest = egress_testkit::checked_manifest(&manifest);
    let entry = manifest_entry(&manifest, "readings.parquet");
    assert_eq!(entry["format"], "parquet");
    assert_eq!(entry["rows"].as_u64(), Some(1_500_000));
    let object = s3.get(BUCKET, "replica/2024-05-03/readings.parquet").await;
    assert_eq!(
        entry["sha256"],
        egress_testkit::sha256_hex(&object).as_str()
    );

    let dump = start_slow_dump(&standby, &s3, &[]);
    force_conflict(&primary, &standby, &dump, 0);
    let out = finish(dump);
    let log = stdout(&out);
    assert_exit(&out, 0);
    assert!(log.contains("Reading from a standby"), "{log}");
    assert!(log.contains("max_standby_streaming_delay"), "{log}");
    // The server's own words, or (when the terminated session's message was lost to a
    // connection reset) the conflict the standby counted meanwhile.
    assert!(
        log.contains("cancelled a read for a recovery conflict"),
        "the conflict is logged: {log}"
    );
    assert!(log.contains("(retry 1 of 3)"), "the retry is logged: {log}");
    assert!(
        !log.contains("Failed."),
        "an attempt that is retried is not a failed run: {log}"
    );
    let last = log.lines().last().unwrap_or_default().to_string();
    assert!(
        last.contains("Success.") && !last.contains("conflict_retries=0"),
        "the last line counts the retries: {last}"
    );
    println!("{log}");
    // The data is the primary's after the DELETE: the snapshot the day finally used.
    let object = s3
        .get(BUCKET, &format!("replica/{DATE}/readings.csv.gz"))
        .await;
    let got = gunzip(&object);
    let want = {
        let copy = "SET synchronize_seqscans = off; COPY readings TO STDOUT (FORMAT csv)";
        primary.psql(copy)
    };
    assert!(
        got == want,
        "{} bytes dumped, the primary has {}",
        got.len(),
        want.len()
    );
    assert_eq!(primary.value("SELECT count(*) FROM readings"), "750000");
    let manifest = s3
        .get(BUCKET, &format!("replica/{DATE}/_manifest.json"))
        .await;
    let manifest = egress_testkit::checked_manifest(&manifest);
    assert_eq!(
        manifest_entry(&manifest, "readings.csv.gz")["rows"].as_u64(),
        Some(750000)
    );

    // With no retries left the night fails (exit 1) with one line naming the fixes, and
    // leaves no manifest for a day that is not one snapshot.
    let dump = start_slow_dump(
        &standby,
        &s3,
        &["--conflict-retries", "0", "--date", "2024-05-02"],
    );
    force_conflict(&primary, &standby, &dump, 1);
    let out = finish(dump);
    assert_exit(&out, 1);
    let error = egress_testkit::stderr(&out);
    assert!(error.contains("recovery conflict"), "{error}");
    assert!(error.contains("hot_standby_feedback"), "{error}");
    assert_stdout_has(&out, "Failed. 0 of 1 tables dumped.");
    assert!(
        s3.keys(BUCKET, "replica/2024-05-02/").await.is_empty(),
        "nothing of a failed day is visible"
    );
}

#[tokio::test]
async fn memory_does_not_grow_with_the_connections_reading_one_table() {
    let pg = PgServer::start();
    sql(
        &pg,
        "CREATE TABLE wide AS SELECT i AS id, md5(i::text) || md5((i * 3)::text) AS a, \
         md5((i * 7)::text) AS b FROM generate_series(1, 600000) i;",
    )
    .await;
    let expected = serial_copy(&pg, "wide", false);
    let env = local_env(&pg, DATE);
    let mut peaks = Vec::new();
    for jobs in ["2", "16"] {
        let dir = tempfile::tempdir().unwrap();
        let out = dump(
            &env,
            &[
                "--tables",
                "wide",
                "--split-larger-than",
                "1MiB",
                "--jobs",
                jobs,
                "--compression-level",
                "1",
                "--output",
                dir.path().to_str().unwrap(),
            ],
        );
        assert_exit_why(&out, 0, &format!("--jobs {jobs}"));
        let got = gunzip(&std::fs::read(dir.path().join(DATE).join("wide.csv.gz")).unwrap());
        assert!(got == expected, "--jobs {jobs}: bytes differ");
        peaks.push(peak_rss_mib(&out));
    }
    println!(
        "peak RSS: {} MiB at --jobs 2, {} MiB at --jobs 16",
        peaks[0], peaks[1]
    );
    // The reason for the README's bound: sixteen connections share the same 16 MiB window
    // as two; each adds only its 1 MiB of read-ahead and its session. The bound itself is a
    // release build's (measured by bench/run.sh); this debug build is larger before it
    // reads a row (15.6 MiB for `--help` against 7.8), so what a one-row dump already takes
    // is set aside, and the rest held to the window, the read-ahead and 10 MiB of slack
    // for the allocator's sixteen threads: since the rows are read below the driver the
    // window fills (37.7-40.8 MiB over a one-row dump in five runs here, 35.0 before).
    // A release build at --jobs 16: 51-56 MiB in all (`/usr/bin/time`, 600,000 rows).
    sql(&pg, "CREATE TABLE one_row AS SELECT 1 AS id;").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    let idle = peak_rss_mib(&dump(&env, &["--tables", "one_row", "--output", path]));
    println!("peak RSS of a one-row dump: {idle} MiB");
    assert!(
        peaks[1] - idle <= 16.0 + 16.0 + 10.0,
        "--jobs 16 took {} MiB, {idle} MiB of it a one-row dump's",
        peaks[1]
    );
    assert!(
        peaks[1] <= peaks[0] + 16.0,
        "--jobs 16 took {} MiB against {} MiB at --jobs 2",
        peaks[1],
        peaks[0]
    );
}
