//! A day shared by several processes (`--shards`, the pods of an Indexed Job): N processes
//! with `JOB_COMPLETION_INDEX` 0..N, started in any order, all from one snapshot, while a
//! writer keeps moving money between tables; then the failures: a shard killed and re-run,
//! the coordinator killed, settings that disagree, a shard that never comes.

use std::process::{Child, Output};
use std::time::{Duration, Instant};

use egress_testkit::{assert_exit, assert_stderr_has};
use egress_testkit::{gunzip, text, PgServer, S3Kind, S3Server};

use super::{pg_and_bucket, pg_and_bucket_with, run, s3_env, shard, sql, with_var, Env};

const BUCKET: &str = "shards";

/// The environment of a dump of `tables` from `pg` for `date` into `s3://{BUCKET}/day`,
/// at compression level 1.
fn env_for(pg: &PgServer, s3: &S3Server, date: &str, tables: &str) -> Env {
    let env = s3_env(pg, &s3.s3(), tables, &format!("s3://{BUCKET}/day"), date);
    with_var(&env, "COMPRESSION_LEVEL", "1")
}

/// Three account tables whose balances always sum to 3,000,000 (a writer moves money
/// between them), and a bigger table.
async fn bank(pg: &PgServer, rows: u32) {
    let mut script = String::new();
    for t in ["acct_a", "acct_b", "acct_c"] {
        script.push_str(&format!(
            "CREATE TABLE {t} (id int PRIMARY KEY, balance bigint NOT NULL, pad text); \
             INSERT INTO {t} SELECT i, 1000000 / {rows}, md5(i::text) FROM generate_series(1, {rows}) i;"
        ));
    }
    script.push_str(
        "CREATE TABLE ledger AS SELECT i AS id, md5(i::text) || md5((i*7)::text) AS note \
         FROM generate_series(1, 150000) i;",
    );
    sql(pg, &script).await;
}

/// A transfer of 1 from one account table to the next, committed as one transaction.
fn transfer(i: u64) -> String {
    let tables = ["acct_a", "acct_b", "acct_c"];
    let (from, to) = (tables[i as usize % 3], tables[(i as usize + 1) % 3]);
    let id = i % 1000 + 1;
    format!(
        "BEGIN; UPDATE {from} SET balance = balance - 1 WHERE id = {id}; \
         UPDATE {to} SET balance = balance + 1 WHERE id = {id}; COMMIT;"
    )
}

/// Sum of the `balance` column (the second) of a gzip CSV.
fn balance_sum(gz: &[u8]) -> i64 {
    String::from_utf8(gunzip(gz))
        .unwrap()
        .lines()
        .map(|l| l.split(',').nth(1).unwrap().parse::<i64>().unwrap())
        .sum()
}

fn wait_all(children: Vec<Child>) -> Vec<Output> {
    children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect()
}

/// The day's keys (coordination objects and leases included).
async fn day_keys(s3: &S3Server, date: &str) -> Vec<String> {
    s3.keys(BUCKET, &format!("day/{date}/")).await
}

async fn object(s3: &S3Server, date: &str, file: &str) -> Vec<u8> {
    s3.get(BUCKET, &format!("day/{date}/{file}")).await
}

/// Checked against its manifest as `egress-sync --verify input` does: the problems.
async fn verify(s3: &S3Server, date: &str) -> Vec<String> {
    let store = s3.s3().store(BUCKET, "day").await;
    let checked = egress_sync::verify::verify(&store, "input").await.unwrap();
    checked
        .folders
        .into_iter()
        .find(|(f, _)| f == date)
        .map(|(_, problems)| problems)
        .expect("the day has a manifest")
}

#[tokio::test]
async fn three_processes_dump_one_day_from_one_snapshot() {
    let (pg, s3) = pg_and_bucket(S3Kind::Moto, BUCKET).await;
    bank(&pg, 60_000).await;
    let tables = "acct_a acct_b acct_c ledger";
    let date = "2024-07-01";
    let env = env_for(&pg, &s3, date, tables);
    let writer = pg.writer(transfer);
    // Started in random order, a moment apart: the later ones import the snapshot the
    // first one exported, while the writer commits on.
    let mut order = [0u64, 1, 2];
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as usize;
    order.rotate_left(seed % 3);
    // The ledger (about 15 MB of heap) is over --split-larger-than: each pod writes a
    // third of its pages as an object of its own.
    let split = ["--split-larger-than", "8MiB"];
    let metrics = tempfile::tempdir().unwrap();
    let metrics_file = |i: u64| metrics.path().join(format!("{i}.prom"));
    let mut children = Vec::new();
    for index in order {
        let mut env = env.clone();
        env.push((
            "METRICS_FILE".into(),
            metrics_file(index).display().to_string(),
        ));
        children.push((index, shard(&env, 3, index, &split)));
        std::thread::sleep(Duration::from_millis(700));
    }
    let commits_before = writer.commits();
    children.sort_by_key(|(i, _)| *i);
    let outs = wait_all(children.into_iter().map(|(_, c)| c).collect());
    let commits = writer.stop();
    assert!(commits > commits_before, "the writer committed throughout");
    for (index, out) in outs.iter().enumerate() {
        assert_eq!(
            out.status.code(),
            Some(0),
            "index {index} (order {order:?}): {}",
            text(out)
        );
    }
    let coordinator = text(&outs[0]);
    // The day as the pods told it (for people reading the test's output).
    let told = [
        "shared by",
        "published",
        "imported",
        "is done",
        "Success.",
        "manifest.",
    ];
    for (index, out) in outs.iter().enumerate() {
        for line in text(out)
            .lines()
            .filter(|l| told.iter().any(|t| l.contains(t)))
        {
            println!("index {index}: {line}");
        }
    }
    assert!(
        coordinator.contains("published for 3 shards"),
        "{coordinator}"
    );
    assert!(
        coordinator
            .contains("Table 'ledger': shared by the 3 pods, one page range and one object each."),
        "{coordinator}"
    );
    assert!(coordinator.contains("Success."), "{coordinator}");
    for (index, out) in outs.iter().enumerate().skip(1) {
        let log = text(out);
        assert!(
            log.contains(&format!("Shard {index} imported snapshot")),
            "{log}"
        );
        assert!(
            log.contains("The coordinator wrote the day's manifest."),
            "{log}"
        );
        assert!(
            coordinator.contains(&format!("Shard {index} is done")),
            "{coordinator}"
        );
    }
    // Each index's metrics carry its index; index 0's the whole day, a shared table's
    // pieces summed into one series.
    for index in 0..3 {
        let text = std::fs::read_to_string(metrics_file(index)).unwrap();
        assert!(text.contains(&format!("shard=\"{index}\"")), "{text}");
    }
    let coordinator_metrics = std::fs::read_to_string(metrics_file(0)).unwrap();
    assert!(
        coordinator_metrics
            .contains("egress_dump_rows{table=\"ledger\",date=\"2024-07-01\",shard=\"0\"} 150000"),
        "{coordinator_metrics}"
    );
    // One snapshot: the money adds up across tables dumped by different processes.
    let mut total = 0;
    for t in ["acct_a", "acct_b", "acct_c"] {
        total += balance_sum(&object(&s3, date, &format!("{t}.csv.gz")).await);
    }
    assert_eq!(total, 3 * 60_000 * (1_000_000 / 60_000));
    assert_eq!(verify(&s3, date).await, Vec::<String>::new());
    let manifest = egress_testkit::checked_manifest(&object(&s3, date, "_manifest.json").await);
    let listed: Vec<(String, String, String)> = manifest["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["table"].to_string(),
                t["file"].to_string(),
                t["part"].to_string(),
            )
        })
        .collect();
    let whole = |t: &str| {
        (
            format!("\"{t}\""),
            format!("\"{t}.csv.gz\""),
            "null".to_string(),
        )
    };
    let part = |i: u64| {
        let file = format!("\"ledger.part-0000{i}.csv.gz\"");
        (
            "\"ledger\"".to_string(),
            file,
            format!("{{\"index\":{i},\"of\":3}}"),
        )
    };
    let expected = [
        whole("acct_a"),
        whole("acct_b"),
        whole("acct_c"),
        part(0),
        part(1),
        part(2),
    ];
    assert_eq!(listed, expected);
    // The descriptor reads the three objects as one table.
    let package = object(&s3, date, "datapackage.json").await;
    let package: serde_json::Value = serde_json::from_slice(&package).unwrap();
    let resources = package["resources"].as_array().unwrap();
    let ledger = resources.iter().find(|r| r["name"] == "ledger").unwrap();
    let paths: Vec<String> = (0..3)
        .map(|i| format!("ledger.part-0000{i}.csv.gz"))
        .collect();
    assert_eq!(ledger["path"], serde_json::json!(paths));
    // Nothing of the coordination is left, nothing pending.
    let left: Vec<String> = day_keys(&s3, date).await;
    assert!(!left.iter().any(|k| k.contains(".egress-")), "{left:?}");
    assert!(s3.pending_uploads(BUCKET).await.is_empty());

    // The same data dumped by one process: the same bytes; the ledger's three objects in
    // order are its rows as one process writes them.
    let single = "2024-07-02";
    let out = run(&env_for(&pg, &s3, single, tables), &[]);
    assert_exit(&out, 0);
    let again = "2024-07-03";
    let env3 = env_for(&pg, &s3, again, tables);
    let outs = wait_all((0..3).map(|i| shard(&env3, 3, i, &split)).collect());
    assert!(
        outs.iter().all(|o| o.status.success()),
        "{}",
        text(&outs[0])
    );
    for t in ["acct_a.csv.gz", "acct_b.csv.gz", "acct_c.csv.gz"] {
        assert!(
            object(&s3, single, t).await == object(&s3, again, t).await,
            "{t}: the sharded day's object differs from the single process's"
        );
    }
    let mut pieces = Vec::new();
    for i in 0..3 {
        let piece = object(&s3, again, &format!("ledger.part-0000{i}.csv.gz")).await;
        pieces.extend(gunzip(&piece));
    }
    let ledger = gunzip(&object(&s3, single, "ledger.csv.gz").await);
    assert!(
        pieces == ledger,
        "the ledger's pieces in order are the table"
    );

    // The sharded day dumped again by one process: the pieces of the earlier run go, so
    // the folder holds each table in one form only.
    let out = run(&env_for(&pg, &s3, again, tables), &[]);
    assert_exit(&out, 0);
    let left = day_keys(&s3, again).await;
    assert!(!left.iter().any(|k| k.contains(".part-")), "{left:?}");
    assert!(
        left.iter().any(|k| k.ends_with("/ledger.csv.gz")),
        "{left:?}"
    );
    assert_eq!(verify(&s3, again).await, Vec::<String>::new());
}

/// Show how a process ended (`--no-capture` prints it: the cases as observed).
fn print_last_line(case: &str, index: usize, out: &std::process::Output) {
    let said = text(out);
    let last = said
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty() && !l.starts_with("---"))
        .unwrap_or("");
    println!(
        "{case}: index {index} exited {:?}: {last}",
        out.status.code()
    );
}

/// Poll until `wanted` holds (60 s at most).
async fn until(what: &str, wanted: impl AsyncFn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !wanted().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wait (at most a minute) until an upload to a key ending with `suffix` is pending at
/// `s3`: `what`, in the failure.
async fn until_uploading(s3: &S3Server, what: &str, suffix: &str) {
    until(what, async || {
        let pending = s3.pending_uploads(BUCKET).await;
        pending.iter().any(|k| k.ends_with(suffix))
    })
    .await;
}

#[tokio::test]
async fn killed_shards_and_coordinators_leave_no_day_and_nothing_pending() {
    let (pg, s3) = pg_and_bucket(S3Kind::Moto, BUCKET).await;
    // Two big tables of one size: index 0 dumps one, index 1 the other; index 2 the small.
    sql(
        &pg,
        "CREATE TABLE big0 AS SELECT i AS id, md5(i::text) || md5((i*3)::text) || md5((i*5)::text) AS pad FROM generate_series(1, 700000) i; \
         CREATE TABLE big1 AS SELECT i AS id, md5(i::text) || md5((i*3)::text) || md5((i*5)::text) AS pad FROM generate_series(1, 700000) i; \
         CREATE TABLE small AS SELECT i AS id FROM generate_series(1, 100) i;",
    )
    .await;
    let date = "2024-07-04";
    let env = env_for(&pg, &s3, date, "big0 big1 small");
    let small_parts = ["--part-size-mib", "5", "--shard-wait", "30s"];

    // A shard killed mid-upload, run again: the day completes from the same snapshot.
    let mut children: Vec<Child> = (0..3).map(|i| shard(&env, 3, i, &small_parts)).collect();
    until_uploading(&s3, "shard 1's upload", "big1.csv.gz").await;
    children[1].kill().unwrap();
    let killed = children.remove(1).wait_with_output().unwrap();
    assert_eq!(killed.status.code(), None, "killed by the signal");
    let rerun = shard(&env, 3, 1, &small_parts);
    children.insert(1, rerun);
    let outs = wait_all(children);
    for (index, out) in outs.iter().enumerate() {
        assert_eq!(out.status.code(), Some(0), "index {index}: {}", text(out));
        print_last_line("shard 1 killed and run again", index, out);
    }
    assert!(text(&outs[0]).contains("Shard 1 imported the snapshot."));
    assert_eq!(verify(&s3, date).await, Vec::<String>::new());
    assert!(
        s3.pending_uploads(BUCKET).await.is_empty(),
        "the killed upload was aborted"
    );
    let left = day_keys(&s3, date).await;
    assert!(!left.iter().any(|k| k.contains(".egress-")), "{left:?}");

    // The coordinator killed: no manifest, nothing pending; a fresh attempt completes.
    let mut children: Vec<Child> = (0..3).map(|i| shard(&env, 3, i, &small_parts)).collect();
    for index in [1, 2] {
        let key = format!("day/{date}/.egress-shards/shard-{index}.json");
        until("the shards to join", async || {
            s3.keys(BUCKET, &key).await.contains(&key)
        })
        .await;
    }
    until_uploading(&s3, "the coordinator's upload", "big0.csv.gz").await;
    children[0].kill().unwrap();
    let outs = wait_all(children);
    for (index, out) in outs.iter().enumerate().skip(1) {
        print_last_line("coordinator killed", index, out);
        assert_ne!(out.status.code(), Some(0), "{}", text(out));
        assert!(
            text(out).contains("this shard's attempt was abandoned")
                || text(out).contains("ended the day without a manifest"),
            "{}",
            text(out)
        );
    }
    let left = day_keys(&s3, date).await;
    assert!(
        !left.iter().any(|k| k.ends_with("_manifest.json")),
        "{left:?}"
    );
    assert!(
        s3.pending_uploads(BUCKET).await.is_empty(),
        "nothing pending"
    );
    let outs = wait_all((0..3).map(|i| shard(&env, 3, i, &small_parts)).collect());
    for (index, out) in outs.iter().enumerate() {
        assert_eq!(out.status.code(), Some(0), "index {index}: {}", text(out));
    }
    assert_eq!(verify(&s3, date).await, Vec::<String>::new());
}

/// Two tables of one row each, `t1` and `t2`.
const TWO_TABLES: &str = "CREATE TABLE t1 AS SELECT 1 AS id; CREATE TABLE t2 AS SELECT 2 AS id;";

#[tokio::test]
async fn shards_that_disagree_or_never_come_fail_in_one_line() {
    let (pg, s3) = pg_and_bucket_with(S3Kind::Moto, BUCKET, TWO_TABLES).await;
    let date = "2024-07-05";
    let env = env_for(&pg, &s3, date, "t1 t2");
    let wait = ["--shard-wait", "3s"];

    // A shard with no coordinator gives up after --shard-wait.
    let out = shard(&env, 2, 1, &wait).wait_with_output().unwrap();
    assert_exit(&out, 1);
    assert_stderr_has(
        &out,
        "no plan from the coordinator (index 0) for 2024-07-05 within --shard-wait 3s",
    );

    // A coordinator whose shard never joins: no manifest, nothing of the coordination left.
    let out = shard(&env, 2, 0, &wait).wait_with_output().unwrap();
    assert_exit(&out, 1);
    assert_stderr_has(
        &out,
        "shard 1 has not joined the day within --shard-wait 3s",
    );
    let left = day_keys(&s3, date).await;
    assert!(
        !left
            .iter()
            .any(|k| k.contains(".egress-") || k.ends_with("_manifest.json")),
        "{left:?}"
    );

    // A shard started with another shard count is refused (exit 2), and so the day fails.
    let coordinator = shard(&env, 2, 0, &wait);
    let odd = shard(&env, 3, 1, &wait).wait_with_output().unwrap();
    assert_exit(&odd, 2);
    assert_stderr_has(
        &odd,
        "this index was started with --shards 3 but the coordinator planned the day for 2",
    );
    let out = coordinator.wait_with_output().unwrap();
    assert_exit(&out, 1);

    // No index without JOB_COMPLETION_INDEX.
    let mut env2 = env.clone();
    env2.push(("SHARDS".into(), "2".into()));
    let out = run(&env2, &[]);
    assert_exit(&out, 2);
    assert_stderr_has(&out, "--shards 2 needs this process's index");
}
