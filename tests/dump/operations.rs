//! What operators see of egress-dump: metrics pushed to a real Pushgateway and written to a
//! file (checked by `promtool`), the `--check` preflight against s3s-fs, moto, Ceph RGW and
//! PostgreSQL, and the shell completions and man page.

use std::collections::BTreeMap;
use std::process::Command;

use egress_testkit::assert_check_ok;
use egress_testkit::assert_exit;
use egress_testkit::assert_exit_why;
use egress_testkit::pushgateway::{assert_last_run, Pushgateway, Sample};
use egress_testkit::{stderr, stdout, text, CephRgw, Endpoint, PgServer, S3Kind, S3Server};

use super::{pg_and_bucket, run as dump, s3_env, Env};

const BUCKET: &str = "ops-bucket";
const DATE: &str = "2024-07-01";

/// The environment of a dump of `tables` from `pg` for [`DATE`] into `s3://{BUCKET}/ops`.
fn env_for(pg: &PgServer, s3: &dyn Endpoint, tables: &str) -> Env {
    s3_env(pg, &s3.s3(), tables, &format!("s3://{BUCKET}/ops"), DATE)
}

async fn tables(pg: &PgServer) {
    pg.client()
        .await
        .batch_execute(
            "CREATE TABLE small AS SELECT i, md5(i::text) AS m FROM generate_series(1, 100) i; \
             CREATE TABLE wide AS SELECT i, repeat('x', i % 300) AS pad FROM generate_series(1, 2500) i;",
        )
        .await
        .expect("create tables");
}

/// `name{labels}` of `samples` as a map from the `label` value to the sample's value.
fn by_label(samples: &[Sample], name: &str, label: &str) -> BTreeMap<String, f64> {
    samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| (s.labels.get(label).cloned().unwrap_or_default(), s.value))
        .collect()
}

fn value(samples: &[Sample], name: &str) -> f64 {
    let found: Vec<&Sample> = samples.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one {name}: {samples:?}");
    assert_eq!(
        found[0].labels.get("instance").map(String::as_str),
        Some(""),
        "instance=\"\" by default"
    );
    found[0].value
}

#[tokio::test]
async fn metrics_reach_the_pushgateway_and_a_failure_keeps_the_last_success() {
    let (pg, s3) = pg_and_bucket(S3Kind::S3sFs, BUCKET).await;
    tables(&pg).await;
    let gateway = Pushgateway::start();
    let file = gateway.file("egress.prom");
    let metrics_args = gateway.flags(&file);
    let out = dump(&env_for(&pg, &s3, "small wide"), &metrics_args);
    assert_exit(&out, 0);

    // Per-table figures equal the manifest's.
    let manifest = egress_testkit::checked_manifest(
        &s3.get(BUCKET, &format!("ops/{DATE}/_manifest.json")).await,
    );
    let pushed = gateway.samples_shown("egress-dump");
    for (metric, field) in [
        ("egress_dump_rows", "rows"),
        ("egress_dump_csv_bytes", "uncompressed_bytes"),
        ("egress_dump_object_bytes", "compressed_bytes"),
    ] {
        let expected: BTreeMap<String, f64> = manifest["tables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["table"].as_str().unwrap().to_string(),
                    t[field].as_f64().unwrap(),
                )
            })
            .collect();
        assert_eq!(by_label(&pushed, metric, "table"), expected, "{metric}");
    }
    assert!(by_label(&pushed, "egress_dump_table_seconds", "table")
        .values()
        .all(|s| *s > 0.0));
    assert_eq!(value(&pushed, "egress_last_run_exit_code"), 0.0);
    let success = value(&pushed, "egress_last_success_timestamp_seconds");
    assert_eq!(success, value(&pushed, "egress_last_run_timestamp_seconds"));
    assert!(value(&pushed, "egress_run_duration_seconds") > 0.0);
    egress_testkit::pushgateway::assert_promtool_accepts(&file);

    // A failed run: its exit code is visible, the last success and its figures stay.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let out = dump(&env_for(&pg, &s3, "small nope"), &metrics_args);
    assert_exit(&out, 2);
    let after = gateway.samples("egress-dump");
    assert_last_run(&after, value, 2.0, success);
    assert!(value(&after, "egress_last_run_timestamp_seconds") > success);
    assert_eq!(
        by_label(&after, "egress_dump_rows", "table"),
        by_label(&pushed, "egress_dump_rows", "table"),
        "the last good day's figures stay"
    );
    let written = std::fs::read_to_string(&file).unwrap();
    // DATE is not today: a backfill's series carry its date.
    assert!(
        written.contains(&format!("egress_last_run_exit_code{{date=\"{DATE}\"}} 2")),
        "{written}"
    );
    assert!(
        !written.contains("egress_last_success_timestamp_seconds"),
        "{written}"
    );
}

/// The samples of the nightly group (no `date` label), or of one backfill's.
fn group(samples: Vec<Sample>, date: Option<&str>) -> Vec<Sample> {
    samples
        .into_iter()
        .filter(|s| s.labels.get("date").map(String::as_str) == date)
        .collect()
}

#[tokio::test]
async fn dry_runs_and_checks_push_nothing_and_a_backfill_has_its_own_group() {
    let (pg, s3) = pg_and_bucket(S3Kind::S3sFs, BUCKET).await;
    tables(&pg).await;
    let gateway = Pushgateway::start();
    let nightly = |tables: &str| {
        let mut env = env_for(&pg, &s3, tables);
        env.retain(|(k, _)| k != "DUMP_DATE");
        env.push(("PUSHGATEWAY_URL".into(), gateway.url.clone()));
        env
    };
    // Last night's run succeeded; tonight's failed.
    let out = dump(&nightly("small wide"), &[]);
    assert_exit(&out, 0);
    let good = group(gateway.samples("egress-dump"), None);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let out = dump(&nightly("small nope"), &[]);
    assert_exit(&out, 2);
    let failed = group(gateway.samples("egress-dump"), None);
    assert_eq!(value(&failed, "egress_last_run_exit_code"), 2.0);
    // A dry run and a check succeed, and push nothing.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let out = dump(&nightly("small wide"), &["--dry-run"]);
    assert_exit(&out, 0);
    let out = dump(&nightly("small wide"), &["--check"]);
    assert_exit(&out, 0);
    // Nor does a dry run whose settings are wrong.
    let out = dump(
        &nightly("small wide"),
        &["--dry-run", "--date", "2024-13-01"],
    );
    assert_exit(&out, 2);
    assert!(
        group(gateway.samples("egress-dump"), None) == failed,
        "the nightly group is as the failed run left it"
    );
    // A backfill of another day succeeds under its own group.
    let mut backfill = nightly("small wide");
    backfill.push(("DUMP_DATE".into(), DATE.into()));
    let out = dump(&backfill, &[]);
    assert_exit(&out, 0);
    let all = gateway.samples("egress-dump");
    assert!(
        group(all.clone(), None) == failed,
        "the nightly group did not move"
    );
    let day = group(all, Some(DATE));
    assert_eq!(value(&day, "egress_last_run_exit_code"), 0.0);
    assert!(
        value(&day, "egress_last_success_timestamp_seconds")
            > value(&good, "egress_last_success_timestamp_seconds")
    );
    assert_eq!(by_label(&day, "egress_dump_rows", "table").len(), 2);
    for line in gateway
        .scrape()
        .lines()
        .filter(|l| l.contains("egress_last_run_exit_code{"))
    {
        println!("{line}");
    }
}

#[tokio::test]
async fn a_failed_push_is_a_warning_that_names_no_secret() {
    let (pg, s3) = pg_and_bucket(S3Kind::S3sFs, BUCKET).await;
    tables(&pg).await;
    let closed = egress_testkit::free_port();
    let url = format!("http://pusher:PUSH-SENTINEL-pw@127.0.0.1:{closed}");
    let out = dump(&env_for(&pg, &s3, "small"), &["--pushgateway", &url]);
    assert_exit_why(&out, 0, "the run's outcome is unchanged");
    let all = text(&out);
    assert!(all.contains("could not push the metrics"), "{all}");
    assert!(
        !all.contains("PUSH-SENTINEL-pw"),
        "the URL's password leaked: {all}"
    );
}

fn status_of(lines: &[(String, String)], capability: &str) -> String {
    lines
        .iter()
        .find(|(_, c)| c == capability)
        .map(|(s, _)| s.clone())
        .unwrap_or_else(|| panic!("no line for {capability}: {lines:?}"))
}

#[tokio::test]
async fn check_reports_what_each_store_can_do_and_fails_on_bad_configuration() {
    let pg = PgServer::start();
    tables(&pg).await;
    let s3s = S3Server::start(S3Kind::S3sFs);
    let moto = S3Server::start(S3Kind::Moto);
    let ceph = CephRgw::start();
    let stores: [(&str, &dyn Endpoint); 3] = [("s3s-fs", &s3s), ("moto", &moto), ("ceph", &ceph)];
    let mut seen = BTreeMap::new();
    for (name, store) in stores {
        store.s3().create_bucket(BUCKET).await;
        let out = dump(&env_for(&pg, store, "small wide"), &["--check"]);
        let capabilities = [
            "output credentials and bucket",
            "output list",
            "output PUT + GET + DELETE",
            "output ranged GET",
            "output multipart upload",
            "output DELETE",
            "database login",
            "database server",
        ];
        let lines = assert_check_ok(&out, name, &capabilities);
        assert!(stdout(&out).contains("primary"), "{}", stdout(&out));
        assert_eq!(
            lines
                .iter()
                .filter(|(s, c)| s == "ok" && c == "database table")
                .count(),
            2
        );
        assert!(
            store.s3().keys(BUCKET, "").await.is_empty(),
            "{name}: the check removed what it wrote"
        );
        seen.insert(name, lines);
    }
    // The stores really differ, and the check says how.
    let partnumber = |n: &str| status_of(&seen[n], "output HEAD ?partNumber");
    let uploads = |n: &str| status_of(&seen[n], "output ListMultipartUploads");
    assert_eq!(partnumber("moto"), "ok");
    assert_eq!(
        partnumber("ceph"),
        "absent",
        "Ceph RGW 16 ignores ?partNumber"
    );
    assert_eq!(partnumber("s3s-fs"), "absent");
    assert_eq!(uploads("moto"), "ok");
    assert_eq!(uploads("ceph"), "ok");
    assert_eq!(uploads("s3s-fs"), "absent");

    // Wrong credentials, a missing bucket, a missing table: exit 2 naming the problem.
    let mut wrong = env_for(&pg, &s3s, "small");
    wrong.retain(|(k, _)| k != "AWS_SECRET_ACCESS_KEY");
    wrong.push(("AWS_SECRET_ACCESS_KEY".into(), "wrong".into()));
    let mut no_bucket = env_for(&pg, &s3s, "small");
    no_bucket.retain(|(k, _)| k != "S3_OUTPUT");
    no_bucket.push(("S3_OUTPUT".into(), "s3://no-such-bucket/x".into()));
    for (case, env, needle) in [
        ("wrong credentials", wrong, "rejected the credentials"),
        ("missing bucket", no_bucket, "does not exist"),
        (
            "missing table",
            env_for(&pg, &s3s, "small nope"),
            "'nope' does not exist",
        ),
    ] {
        let out = dump(&env, &["--check"]);
        assert_exit_why(&out, 2, case);
        assert!(stdout(&out).contains(needle), "{case}: {}", text(&out));
        assert!(
            stderr(&out).contains("check failed"),
            "{case}: {}",
            text(&out)
        );
    }
}

#[test]
fn completions_and_man_pages_generate_and_parse() {
    let bin = env!("CARGO_BIN_EXE_egress-dump");
    let sync = std::path::Path::new(bin)
        .parent()
        .expect("target dir")
        .join("egress-sync");
    for (program, option) in [
        (bin.to_string(), "tables"),
        (sync.display().to_string(), "input-path"),
    ] {
        for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
            let out = Command::new(&program)
                .args(["completions", shell])
                .output()
                .expect("run");
            assert_exit_why(&out, 0, &format!("{program} {shell}"));
            // fish spells options `-l tables`, the others `--tables`.
            assert!(stdout(&out).contains(option), "{program} {shell}");
            if shell == "bash" {
                let dir = tempfile::tempdir().unwrap();
                let script = dir.path().join("completion.bash");
                std::fs::write(&script, &out.stdout).unwrap();
                let parsed = Command::new("bash")
                    .arg("-n")
                    .arg(&script)
                    .output()
                    .unwrap();
                assert!(parsed.status.success(), "bash -n: {}", text(&parsed));
            }
        }
        let man = Command::new(&program).arg("man").output().expect("run");
        assert_eq!(man.status.code(), Some(0));
        let page = stdout(&man);
        assert!(
            page.contains(".TH egress-") && page.contains("\\-\\-timeout"),
            "{page}"
        );
    }
}
