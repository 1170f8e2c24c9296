//! End-to-end tests of the `egress-dump` binary against a real PostgreSQL and real
//! S3-compatible servers (s3s-fs checks signatures; moto lists pending multipart uploads).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use egress_testkit::{assert_exit, assert_one_line, assert_stderr_has, assert_stdout_has};
use egress_testkit::{gunzip, run_ok, stderr, stdout, text, PgServer, S3Kind, S3Server};

use super::{
    dump_while_writing, local_env, pg_and_bucket, pg_and_bucket_with, pg_with, run as dump, s3_env,
    sql, Env,
};

const BUCKET: &str = "egress-test";
const DATE: &str = "2024-03-01";

/// The environment of a dump of `tables` from `pg` for [`DATE`] into `output` on `s3`.
fn env_for(pg: &PgServer, s3: &S3Server, tables: &str, output: &str) -> Env {
    s3_env(pg, &s3.s3(), tables, output, DATE)
}

const TRICKY: &str = r#"
CREATE TABLE tricky (
  id int, t text, b bytea, arr text[], j jsonb, ts timestamptz, n numeric, f float8, u uuid
);
INSERT INTO tricky VALUES
 (1, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (2, '', '\x', '{}', '{}', '2024-01-01 00:00:00+00', 0, 0, '00000000-0000-0000-0000-000000000000'),
 (3, 'say "hi", ok', '\xdeadbeef00', '{"a,b","c\"d",NULL}', '{"k": "v, \"q\"", "n": [1, 2.5]}',
     '2024-06-30 23:59:59.123456+02', 12345678901234567890.0123456789, 1e308, gen_random_uuid()),
 (4, E'line1\nline2\r\nline3', E'\\x0a0d', '{"x\ny"}', '"just a string"', 'infinity', 'NaN', '-Infinity', NULL),
 (5, 'unicode: żółć 日本語 🎉 é', '\x00', '{"ü"}', '{"emoji": "🎉"}', '1970-01-01 00:00:00+00', -0.5, -0.0, NULL),
 (6, ',', NULL, '{","}', 'null', NULL, 1, 1.5, NULL),
 (7, '"', NULL, NULL, '[]', NULL, NULL, NULL, NULL),
 (8, '\N', NULL, NULL, NULL, NULL, NULL, NULL, NULL);
"#;

/// [`TRICKY`]'s rows repeated, with new ids, up to id 30000 (~6 MB of CSV).
const TRICKY_GROWN: &str =
    "INSERT INTO tricky SELECT i, t, b, arr, j, ts, n, f, u FROM tricky, generate_series(9, 30000) i;";

/// Two tables to list beside missing ones: `y` (one row) and `real_one` (empty).
const Y_AND_REAL_ONE: &str =
    "CREATE TABLE y (v int); INSERT INTO y VALUES (1); CREATE TABLE real_one (v int);";

/// A table `t` of 1000 rows, analyzed (its row estimate known).
const THOUSAND_ROWS: &str =
    "CREATE TABLE t AS SELECT i FROM generate_series(1, 1000) i; ANALYZE t;";

/// A table `t` of one row.
const ONE_ROW: &str = "CREATE TABLE t (v int); INSERT INTO t VALUES (1);";

fn assert_valid_gzip_everywhere(path: &Path) {
    run_ok(Command::new("gzip").arg("-t").arg(path), "gzip -t");
    let zcat = run_ok(Command::new("zcat").arg(path), "zcat");
    let py = run_ok(
        Command::new("python3")
            .args([
                "-c",
                "import gzip,sys; sys.stdout.buffer.write(gzip.open(sys.argv[1]).read())",
            ])
            .arg(path),
        "python gzip",
    );
    assert_eq!(py, zcat);
    let java_src = path.with_file_name("Gunzip.java");
    std::fs::write(
        &java_src,
        "import java.io.*; import java.util.zip.*;\n\
         public class Gunzip { public static void main(String[] a) throws Exception {\n\
           try (InputStream in = new GZIPInputStream(new FileInputStream(a[0]))) { in.transferTo(System.out); } } }\n",
    )
    .expect("write java source");
    let java = run_ok(
        Command::new("java").arg(&java_src).arg(path),
        "java GZIPInputStream (install default-jre-headless)",
    );
    assert_eq!(java, zcat, "Java's GZIPInputStream reads the same bytes");
    let mut multi = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::MultiGzDecoder::new(std::fs::File::open(path).unwrap()),
        &mut multi,
    )
    .expect("flate2's MultiGzDecoder");
    assert_eq!(multi, zcat, "flate2's MultiGzDecoder reads the same bytes");
}

/// The whole CSV of a local dump, as every reader sees it; returns what each of gzip,
/// zcat, Python, Java and flate2 read (all equal).
fn read_everywhere(path: &Path) -> Vec<u8> {
    assert_valid_gzip_everywhere(path);
    gunzip(&std::fs::read(path).unwrap())
}

#[tokio::test]
async fn multi_member_and_single_member_objects_read_the_same_everywhere() {
    // ~6 MB of CSV with every awkward value: a dozen 512 KiB blocks.
    let pg = pg_with(&[TRICKY, TRICKY_GROWN]).await;
    let expected = pg.psql("COPY tricky TO STDOUT (FORMAT csv)");
    assert!(expected.len() > 5_000_000, "{} bytes", expected.len());
    let dir = tempfile::tempdir().unwrap();
    let env = local_env(&pg, DATE);
    for (flag, level) in [
        (None, "6"),
        (None, "1"),
        (None, "9"),
        (Some("--single-gzip-member"), "6"),
    ] {
        let out_dir = dir
            .path()
            .join(format!("{}-{level}", flag.unwrap_or("default")));
        let mut args = vec![
            "--tables",
            "tricky",
            "--compression-level",
            level,
            "--output",
            out_dir.to_str().unwrap(),
        ];
        args.extend(flag);
        let out = dump(&env, &args);
        assert_exit(&out, 0);
        let day = out_dir.join(DATE);
        let object = day.join("tricky.csv.gz");
        assert!(
            read_everywhere(&object) == expected,
            "{flag:?} level {level}: identical to psql's COPY"
        );
        let manifest = read_manifest(&std::fs::read(day.join("_manifest.json")).unwrap());
        let members = manifest["tables"][0]["gzip_members"].as_u64().unwrap();
        let bytes = std::fs::read(&object).unwrap();
        let mut first = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(bytes.as_slice()),
            &mut first,
        )
        .unwrap();
        match flag {
            None => {
                assert_eq!(
                    members,
                    expected.len().div_ceil(512 * 1024) as u64,
                    "one member per 512 KiB"
                );
                // What a reader that stops after the first member would see: the README warns.
                assert_eq!(first.len(), 512 * 1024);
            }
            Some(_) => {
                assert_eq!(members, 1);
                assert!(first == expected, "a first-member reader reads it all");
            }
        }
    }
}

#[tokio::test]
async fn object_is_byte_identical_to_psql_copy_and_valid_gzip() {
    let (pg, s3) = pg_and_bucket_with(S3Kind::S3sFs, BUCKET, TRICKY).await;

    let out = dump(
        &env_for(&pg, &s3, "tricky", &format!("s3://{BUCKET}/nightly")),
        &[],
    );
    assert_exit(&out, 0);
    let log = stdout(&out);
    assert!(
        log.contains("Table 'tricky': Data collection started."),
        "{log}"
    );
    assert!(
        log.contains("Table 'tricky': Dump uploaded to intermediate storage."),
        "{log}"
    );
    assert!(
        log.lines().last().unwrap_or("").contains("Success."),
        "{log}"
    );
    assert!(log.contains("rows=8"), "{log}");

    let key = format!("nightly/{DATE}/tricky.csv.gz");
    assert_eq!(
        s3.keys(BUCKET, "").await,
        vec![
            format!("nightly/{DATE}/_manifest.json"),
            format!("nightly/{DATE}/datapackage.json"),
            key.clone()
        ]
    );
    read_manifest(
        &s3.get(BUCKET, &format!("nightly/{DATE}/_manifest.json"))
            .await,
    );
    let object = s3.get(BUCKET, &key).await;
    let expected = pg.psql("COPY tricky TO STDOUT (FORMAT csv)");
    assert!(expected.len() > 300);
    assert_eq!(
        gunzip(&object),
        expected,
        "gunzipped object equals psql's COPY output byte for byte"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tricky.csv.gz");
    std::fs::write(&file, &object).unwrap();
    assert_valid_gzip_everywhere(&file);
}

#[tokio::test]
async fn large_table_uses_several_parts_and_leaves_no_pending_upload() {
    let (pg, s3) = pg_and_bucket(S3Kind::Moto, BUCKET).await;
    // ~40 MB of poorly compressible CSV: at level 1 it is several 5 MiB parts.
    sql(
        &pg,
        "CREATE TABLE big AS SELECT i, md5(i::text) AS a, md5((i * 7)::text) AS b, \
         md5((i * 13)::text) || ',' || md5((i * 17)::text) AS c, now() AS ts \
         FROM generate_series(1, 250000) i;",
    )
    .await;
    let out = dump(
        &env_for(&pg, &s3, "big", &format!("s3://{BUCKET}")),
        &["--compression-level", "1", "--part-size-mib", "5"],
    );
    assert_exit(&out, 0);
    let key = format!("{DATE}/big.csv.gz");
    let object = s3.get(BUCKET, &key).await;
    assert!(
        object.len() > 15 * 1024 * 1024,
        "object spans several parts: {} bytes",
        object.len()
    );
    let head = s3
        .client()
        .head_object()
        .bucket(BUCKET)
        .key(&key)
        .send()
        .await
        .unwrap();
    assert!(
        head.e_tag().unwrap_or("").contains('-'),
        "a multipart ETag (md5-N), got {:?}",
        head.e_tag()
    );
    assert_eq!(gunzip(&object), pg.psql("COPY big TO STDOUT (FORMAT csv)"));
    assert!(stdout(&out).contains("rows=250000"));
    assert!(s3.pending_uploads(BUCKET).await.is_empty());
}

#[tokio::test]
async fn failure_mid_stream_aborts_the_upload_and_keep_going_dumps_the_rest() {
    let (pg, s3) = pg_and_bucket(S3Kind::Moto, BUCKET).await;
    // A view that fails after ~20 MB: the upload is well under way when it does.
    sql(
        &pg,
        "CREATE TABLE good AS SELECT i FROM generate_series(1, 10) i; \
         CREATE TABLE good2 AS SELECT i FROM generate_series(1, 5) i; \
         CREATE VIEW boom AS SELECT i, md5(i::text) || md5((i+1)::text) || md5((i+2)::text) AS pad, \
           CASE WHEN i = 180000 THEN 1 / (i - i) ELSE i END AS x FROM generate_series(1, 200000) i;",
    )
    .await;
    let env = env_for(&pg, &s3, "good boom good2", &format!("s3://{BUCKET}/p"));

    // Default: stop at the first failure.
    let out = dump(&env, &["--compression-level", "1", "--part-size-mib", "5"]);
    assert_exit(&out, 1);
    let printed = stdout(&out);
    let last = printed.lines().last().unwrap_or("");
    assert!(
        last.contains("Failed. 1 of 3 tables dumped."),
        "{}",
        text(&out)
    );
    assert!(
        last.contains("not_attempted=good2") || last.contains("not_attempted=\"good2\""),
        "{last}"
    );
    assert_stderr_has(&out, "division by zero");
    assert_eq!(
        s3.keys(BUCKET, "").await,
        vec![format!("p/{DATE}/good.csv.gz")]
    );
    assert!(
        s3.pending_uploads(BUCKET).await.is_empty(),
        "the failed table's upload was aborted"
    );

    // --keep-going: the other tables are dumped, the run still fails.
    let out = dump(
        &env,
        &[
            "--keep-going",
            "--compression-level",
            "1",
            "--part-size-mib",
            "5",
        ],
    );
    assert_exit(&out, 1);
    assert_eq!(
        s3.keys(BUCKET, "").await,
        vec![
            format!("p/{DATE}/good.csv.gz"),
            format!("p/{DATE}/good2.csv.gz")
        ]
    );
    assert_eq!(
        gunzip(&s3.get(BUCKET, &format!("p/{DATE}/good2.csv.gz")).await),
        b"1\n2\n3\n4\n5\n"
    );
    assert!(s3.pending_uploads(BUCKET).await.is_empty());
}

#[tokio::test]
async fn schema_qualified_mixed_case_empty_tables_to_a_local_folder() {
    let pg = PgServer::start();
    sql(
        &pg,
        r#"CREATE SCHEMA "Sales";
           CREATE TABLE "Sales"."Orders" (id int, "Amount" numeric);
           INSERT INTO "Sales"."Orders" VALUES (1, 9.99), (2, NULL);
           CREATE TABLE "MixedCase" (v text); INSERT INTO "MixedCase" VALUES ('x');
           CREATE TABLE lower_one (v text); INSERT INTO lower_one VALUES ('y');
           CREATE TABLE empty_one (v text);
           CREATE VIEW a_view AS SELECT 42 AS answer;"#,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let env = local_env(&pg, DATE);
    let out = dump(
        &env,
        &[
            "--tables",
            "Sales.Orders, MixedCase LOWER_ONE empty_one a_view",
            "--output",
            &format!("file://{}", out_dir.display()),
            "--header",
        ],
    );
    assert_exit(&out, 0);
    let day = out_dir.join(DATE);
    let mut names: Vec<String> = std::fs::read_dir(&day)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "LOWER_ONE.csv.gz",
            "MixedCase.csv.gz",
            "Sales.Orders.csv.gz",
            "_manifest.json",
            "a_view.csv.gz",
            "datapackage.json",
            "empty_one.csv.gz"
        ],
        "no temporary files are left behind"
    );
    read_manifest(&std::fs::read(day.join("_manifest.json")).unwrap());
    let read = |n: &str| gunzip(&std::fs::read(day.join(n)).unwrap());
    assert_eq!(read("Sales.Orders.csv.gz"), b"id,Amount\n1,9.99\n2,\n");
    assert_eq!(read("MixedCase.csv.gz"), b"v\nx\n");
    assert_eq!(read("LOWER_ONE.csv.gz"), b"v\ny\n");
    assert_eq!(read("a_view.csv.gz"), b"answer\n42\n");
    assert_eq!(read("empty_one.csv.gz"), b"v\n");

    // Without --header an empty table is a valid, empty gzip stream.
    let out = dump(
        &env,
        &[
            "--tables",
            "empty_one",
            "--output",
            out_dir.to_str().unwrap(),
        ],
    );
    assert_exit(&out, 0);
    assert_eq!(read("empty_one.csv.gz"), b"");
    assert_valid_gzip_everywhere(&day.join("empty_one.csv.gz"));
}

/// libpq's `PGDATESTYLE` and `PGTZ` set the session's DateStyle and TimeZone, so `psql`
/// prints other dates with them; egress-dump ignored them (found by an adversarial run:
/// `2024-07-01 13:00:00+00` where psql printed `01/07/2024 18:30:00 IST`).
#[tokio::test]
async fn a_csv_day_follows_the_session_defaults_libpq_reads_from_the_environment() {
    let pg = pg_with(&["CREATE TABLE tz (ts timestamptz, d date, i interval);
         INSERT INTO tz VALUES ('2024-07-01 13:00+00', '2024-07-01', '1 day 2 hours');"])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = local_env(&pg, DATE);
    env.push(("PGDATESTYLE".into(), "SQL, DMY".into()));
    env.push(("PGTZ".into(), "Asia/Kolkata".into()));
    env.push((
        "PGOPTIONS".into(),
        "-c TimeZone=UTC -c IntervalStyle=iso_8601".into(),
    ));
    let out = dump(
        &env,
        &["--tables", "tz", "--output", dir.path().to_str().unwrap()],
    );
    assert_exit(&out, 0);
    let got = gunzip(&std::fs::read(dir.path().join(DATE).join("tz.csv.gz")).unwrap());
    // What psql prints with the same environment: PGTZ wins over PGOPTIONS' TimeZone.
    let want = pg.psql(
        "SET IntervalStyle = iso_8601; SET DateStyle = 'SQL, DMY'; SET TimeZone = 'Asia/Kolkata'; \
         COPY tz TO STDOUT (FORMAT csv)",
    );
    let got = String::from_utf8_lossy(&got);
    assert_eq!(got, String::from_utf8_lossy(&want));
    assert_eq!(got, "01/07/2024 18:30:00 IST,01/07/2024,P1DT2H\n");
}

#[tokio::test]
async fn missing_tables_are_all_reported_and_injection_is_just_a_missing_name() {
    let (pg, s3) = pg_and_bucket_with(S3Kind::S3sFs, BUCKET, Y_AND_REAL_ONE).await;
    let out = dump(
        &env_for(
            &pg,
            &s3,
            r#"real_one nope "x; drop table y" also_missing"#,
            &format!("s3://{BUCKET}"),
        ),
        &[],
    );
    let err = assert_one_line(&out, 2, "3 of 4 tables cannot be dumped");
    for missing in ["'nope'", "'x; drop table y'", "'also_missing'"] {
        assert!(err.contains(&format!("{missing} does not exist")), "{err}");
    }
    assert!(s3.keys(BUCKET, "").await.is_empty(), "nothing written");
    let still_there = pg
        .client()
        .await
        .query_one("SELECT count(*) FROM y", &[])
        .await
        .unwrap();
    assert_eq!(still_there.get::<_, i64>(0), 1, "table y was not dropped");
}

#[tokio::test]
async fn dry_run_prints_the_plan_and_writes_nothing() {
    let (pg, s3) = pg_and_bucket_with(S3Kind::S3sFs, BUCKET, THOUSAND_ROWS).await;
    let out = dump(
        &env_for(&pg, &s3, "t", &format!("s3://{BUCKET}/x")),
        &["--dry-run"],
    );
    assert_exit(&out, 0);
    assert_stdout_has(&out, &format!("s3://{BUCKET}/x/{DATE}/t.csv.gz"));
    let printed = stdout(&out);
    assert!(printed.contains("1000"), "row estimate shown: {printed}");
    assert!(s3.keys(BUCKET, "").await.is_empty());
}

/// Every bad input: its exit code, a one-line message naming the problem, nothing written,
/// and no secret in any output.
#[tokio::test]
async fn bad_inputs_fail_cleanly_with_their_exit_codes() {
    let (pg, s3) = pg_and_bucket_with(S3Kind::S3sFs, BUCKET, ONE_ROW).await;
    let good = env_for(&pg, &s3, "t", &format!("s3://{BUCKET}/p"));
    let with = |key: &str, value: &str| -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> =
            good.iter().filter(|(k, _)| k != key).cloned().collect();
        env.push((key.into(), value.into()));
        env
    };
    let closed_port = egress_testkit::free_port().to_string();
    let wrong_secret = "WRONG-secret-sentinel-9f3k";
    let wrong_password = "WRONG-password-sentinel-7x2q";
    // (name, the variable set wrong, its value, exit code, what stderr names)
    let wrong_env = [
        ("no tables", "TABLES", " ", 2, "no tables given"),
        (
            "duplicate table",
            "TABLES",
            "t t",
            2,
            "listed more than once",
        ),
        (
            "malformed S3_OUTPUT",
            "S3_OUTPUT",
            "s3:/egress-test",
            2,
            "unsupported location",
        ),
        (
            "S3_OUTPUT without bucket",
            "S3_OUTPUT",
            "s3://",
            2,
            "names no bucket",
        ),
        (
            "invalid date",
            "DUMP_DATE",
            "2024-13-01",
            2,
            "not a valid date",
        ),
        (
            "missing bucket",
            "S3_OUTPUT",
            "s3://no-such-bucket/p",
            2,
            "does not exist",
        ),
        (
            "wrong S3 secret",
            "AWS_SECRET_ACCESS_KEY",
            wrong_secret,
            2,
            "rejected the credentials",
        ),
        (
            "wrong password",
            "PGPASSWORD",
            wrong_password,
            2,
            "PGPASSWORD",
        ),
        (
            "unreachable database",
            "PGPORT",
            &closed_port,
            1,
            "cannot connect to PostgreSQL",
        ),
        ("bad PGSSLMODE", "PGSSLMODE", "sometimes", 2, "PGSSLMODE"),
        (
            "bad endpoint",
            "AWS_ENDPOINT_URL",
            "ftp://x",
            2,
            "AWS_ENDPOINT_URL",
        ),
    ];
    // (name, the flags, what stderr names): exit 2
    let wrong_flags: [(&str, &[&str], &str); 2] = [
        (
            "compression level",
            &["--compression-level", "10"],
            "compression-level",
        ),
        ("unknown flag", &["--frobnicate"], "--frobnicate"),
    ];
    let cases = wrong_env
        .into_iter()
        .map(|(name, key, value, code, needle)| (name, with(key, value), &[][..], code, needle))
        .chain(
            wrong_flags
                .into_iter()
                .map(|(name, args, needle)| (name, good.clone(), args, 2, needle)),
        );
    for (name, env, args, code, needle) in cases {
        let out = dump(&env, args);
        let all = text(&out);
        assert_eq!(out.status.code(), Some(code), "{name}: {all}");
        let stderr = stderr(&out);
        assert!(
            stderr.contains(needle),
            "{name}: expected '{needle}' in stderr: {all}"
        );
        for secret in [
            wrong_secret,
            wrong_password,
            egress_testkit::postgres::PASSWORD,
            s3.secret_key.as_str(),
        ] {
            assert!(!all.contains(secret), "{name}: a secret leaked: {all}");
        }
        assert!(
            s3.keys(BUCKET, "").await.is_empty(),
            "{name}: nothing may be written"
        );
    }
}

// ---------------------------------------------------------------------------------------
// One snapshot, parallel workers, and the manifest.

fn read_manifest(bytes: &[u8]) -> serde_json::Value {
    egress_testkit::checked_manifest(bytes)
}

fn sum_column(csv_bytes: &[u8], column: usize) -> i64 {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(csv_bytes);
    reader
        .records()
        .map(|r| {
            r.expect("valid CSV")[column]
                .parse::<i64>()
                .expect("integer")
        })
        .sum()
}

#[tokio::test]
async fn parallel_workers_share_one_snapshot_under_concurrent_transfers() {
    let pg = PgServer::start();
    sql(
        &pg,
        "CREATE TABLE acct_a AS SELECT i AS id, 1000::bigint AS amount, md5(i::text) AS pad FROM generate_series(1, 400000) i; \
         CREATE TABLE acct_b AS SELECT i AS id, 1000::bigint AS amount, md5(i::text) AS pad FROM generate_series(1, 400000) i; \
         CREATE UNIQUE INDEX ON acct_a (id); CREATE UNIQUE INDEX ON acct_b (id);",
    )
    .await;
    let invariant: i64 = 2 * 400000 * 1000;
    // A writer on its own thread keeps moving amounts from one table to the other, one
    // transaction each, for the whole of the dump.
    let writer = pg.writer(|i| {
        let i = i as i64;
        let id = (i * 7919) % 400000 + 1;
        let (from, to) = if i % 2 == 0 {
            ("acct_a", "acct_b")
        } else {
            ("acct_b", "acct_a")
        };
        format!(
            "BEGIN; UPDATE {from} SET amount = amount - 7 WHERE id = {id}; \
             UPDATE {to} SET amount = amount + 7 WHERE id = {}; COMMIT;",
            (id * 31) % 400000 + 1
        )
    });
    let dir = tempfile::tempdir().unwrap();
    let env = local_env(&pg, DATE);
    let flags = ["--jobs", "2", "--compression-level", "1"];
    dump_while_writing(&env, "acct_a acct_b", dir.path(), &flags, writer);
    let day = dir.path().join(DATE);
    let a = gunzip(&std::fs::read(day.join("acct_a.csv.gz")).unwrap());
    let b = gunzip(&std::fs::read(day.join("acct_b.csv.gz")).unwrap());
    assert_eq!(
        sum_column(&a, 1) + sum_column(&b, 1),
        invariant,
        "both tables come from one snapshot"
    );
    let manifest = read_manifest(&std::fs::read(day.join("_manifest.json")).unwrap());
    assert!(manifest["snapshot"]["txid_snapshot"]
        .as_str()
        .unwrap()
        .contains(':'));
}

#[tokio::test]
async fn manifest_numbers_match_an_independent_count_and_hash() {
    let (pg, s3) = pg_and_bucket_with(S3Kind::S3sFs, BUCKET, TRICKY).await;
    sql(
        &pg,
        "CREATE TABLE nums (id bigint, v numeric(10,2), note text); \
         INSERT INTO nums SELECT i, i / 3.0, CASE WHEN i % 10 = 0 THEN E'multi\\nline, \"q\"' END FROM generate_series(1, 5000) i;",
    )
    .await;
    let out = dump(
        &env_for(&pg, &s3, "tricky nums", &format!("s3://{BUCKET}/m")),
        &["--jobs", "2"],
    );
    assert_exit(&out, 0);
    let keys = s3.keys(BUCKET, "").await;
    assert_eq!(
        keys,
        [
            format!("m/{DATE}/_manifest.json"),
            format!("m/{DATE}/datapackage.json"),
            format!("m/{DATE}/nums.csv.gz"),
            format!("m/{DATE}/tricky.csv.gz")
        ]
    );
    let manifest = read_manifest(&s3.get(BUCKET, &format!("m/{DATE}/_manifest.json")).await);
    assert_eq!(manifest["format_version"], 1);
    assert_eq!(manifest["date"], DATE);
    assert_eq!(manifest["compression_level"], 6);
    assert!(manifest["snapshot"]["server_version"]
        .as_str()
        .unwrap()
        .starts_with("15"));
    assert!(manifest["snapshot"]["wal_lsn"]
        .as_str()
        .unwrap()
        .contains('/'));
    assert!(
        manifest["run_started"].as_str().unwrap() <= manifest["run_finished"].as_str().unwrap()
    );
    let tables = manifest["tables"].as_array().unwrap();
    assert_eq!(tables.len(), 2);
    for entry in tables {
        let key = entry["key"].as_str().unwrap();
        assert_eq!(key, format!("m/{DATE}/{}", entry["file"].as_str().unwrap()));
        let object = s3.get(BUCKET, key).await;
        let csv_bytes = gunzip(&object);
        let records = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(csv_bytes.as_slice())
            .records()
            .count() as u64;
        assert_eq!(entry["rows"].as_u64(), Some(records), "{key}: rows");
        assert_eq!(
            entry["compressed_bytes"].as_u64(),
            Some(object.len() as u64)
        );
        assert_eq!(
            entry["uncompressed_bytes"].as_u64(),
            Some(csv_bytes.len() as u64)
        );
        assert_eq!(
            entry["sha256"].as_str(),
            Some(egress_testkit::sha256_hex(&object).as_str())
        );
        assert_eq!(
            entry["uncompressed_sha256"].as_str(),
            Some(egress_testkit::sha256_hex(&csv_bytes).as_str())
        );
    }
    let nums = tables.iter().find(|t| t["table"] == "nums").unwrap();
    assert_eq!(nums["rows"], 5000);
    assert_eq!(
        nums["columns"],
        serde_json::json!([
            {"name": "id", "type": "bigint", "not_null": false, "written_as": "text"},
            {"name": "v", "type": "numeric(10,2)", "not_null": false, "written_as": "text"},
            {"name": "note", "type": "text", "not_null": false, "written_as": "text"}
        ])
    );
}

#[tokio::test]
async fn a_failed_table_means_no_manifest_and_a_rerun_completes_the_day() {
    let (pg, s3) = pg_and_bucket_with(
        S3Kind::S3sFs,
        BUCKET,
        "CREATE TABLE t1 AS SELECT i FROM generate_series(1, 100) i; \
         CREATE TABLE flaky_src AS SELECT i FROM generate_series(1, 100) i;",
    )
    .await;
    let env = env_for(&pg, &s3, "t1 flaky", &format!("s3://{BUCKET}"));
    let manifest_key = format!("{DATE}/_manifest.json");

    // The day dumped once the view `flaky` reads `select` of flaky_src.
    let dump_with_view = |select: &'static str| {
        let (pg, env) = (&pg, &env);
        async move {
            let view = format!("CREATE OR REPLACE VIEW flaky AS SELECT {select} FROM flaky_src;");
            sql(pg, &view).await;
            dump(env, &["--jobs", "2"])
        }
    };

    // A good day first, then a re-run of the same day in which one table fails.
    let out = dump_with_view("i").await;
    assert_exit(&out, 0);
    assert!(s3.keys(BUCKET, "").await.contains(&manifest_key));
    let out = dump_with_view("1 / (i - i) AS i").await;
    assert_exit(&out, 1);
    assert!(
        !s3.keys(BUCKET, "").await.contains(&manifest_key),
        "the re-run withdrew the old manifest and wrote none"
    );

    // Fixed: the re-run completes the folder and writes the manifest.
    let out = dump_with_view("i").await;
    assert_exit(&out, 0);
    assert_eq!(
        s3.keys(BUCKET, "").await,
        [
            manifest_key.clone(),
            format!("{DATE}/datapackage.json"),
            format!("{DATE}/flaky.csv.gz"),
            format!("{DATE}/t1.csv.gz")
        ]
    );
    let manifest = read_manifest(&s3.get(BUCKET, &manifest_key).await);
    assert_eq!(manifest["tables"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn parallel_dump_gives_the_same_bytes_as_a_serial_one() {
    let pg = PgServer::start();
    sql(
        &pg,
        "CREATE TABLE p1 AS SELECT i, md5(i::text) FROM generate_series(1, 60000) i; \
         CREATE TABLE p2 AS SELECT i, now() AS ts FROM generate_series(1, 20000) i; \
         CREATE TABLE p3 (v text); \
         CREATE TABLE p4 AS SELECT i, jsonb_build_object('k', i) AS j FROM generate_series(1, 30000) i; ANALYZE;",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let env = local_env(&pg, DATE);
    for (jobs, sub) in [("1", "serial"), ("4", "parallel")] {
        let out_dir = dir.path().join(sub);
        let out = dump(
            &env,
            &[
                "--tables",
                "p1 p2 p3 p4",
                "--jobs",
                jobs,
                "--output",
                out_dir.to_str().unwrap(),
            ],
        );
        assert_exit(&out, 0);
    }
    for table in ["p1", "p2", "p3", "p4"] {
        let file = format!("{DATE}/{table}.csv.gz");
        let serial = std::fs::read(dir.path().join("serial").join(&file)).unwrap();
        let parallel = std::fs::read(dir.path().join("parallel").join(&file)).unwrap();
        assert!(
            serial == parallel,
            "{table}: parallel and serial dumps differ"
        );
    }
}

/// Workers see exactly the coordinator's snapshot, not one of their own: a row committed
/// between the export and the import is invisible to them.
#[tokio::test]
async fn imported_snapshot_hides_commits_made_after_the_export() {
    use egress_dump::{pg, snapshot};
    let pg = PgServer::start();
    sql(&pg, "CREATE TABLE marks (v int);").await;
    let params = egress_dump::pg::Params::resolve(None, &pg.env()).unwrap();
    let target = pg::resolve(&params, Duration::from_secs(10)).unwrap();
    let coordinator = target.connect().await.unwrap();
    snapshot::open(&coordinator).await.unwrap();
    let info = snapshot::take(&coordinator, true).await.unwrap();
    let id = info.exported_id.clone().expect("exported");
    pg.client()
        .await
        .batch_execute("INSERT INTO marks VALUES (1)")
        .await
        .unwrap();
    let worker = target.connect().await.unwrap();
    snapshot::import(&worker, &id).await.unwrap();
    let seen: i64 = worker
        .query_one("SELECT count(*) FROM marks", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(seen, 0, "the worker reads the exported snapshot");
    let worker_snapshot: String = worker
        .query_one("SELECT txid_current_snapshot()::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(worker_snapshot, info.txid_snapshot);
    // Once the exporter is gone, importing fails with a clear message.
    drop(coordinator);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let late = target.connect().await.unwrap();
    let err = snapshot::import(&late, &id).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("could not import the run's snapshot"),
        "{err}"
    );
}

/// The README's first command (`cargo run -p egress-dump --example demo`) keeps working.
#[test]
fn the_readme_demo_dumps_its_sample_tables() {
    let bin = Path::new(env!("CARGO_BIN_EXE_egress-dump"));
    let demo = bin.parent().expect("target dir").join("examples/demo");
    assert!(
        demo.exists(),
        "{} is missing: the whole suite builds it (scripts/test.sh), or run `cargo build -p egress-dump --example demo`",
        demo.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let out = egress_testkit::clean_command(demo.to_str().unwrap())
        .current_dir(dir.path())
        .output()
        .expect("run the demo");
    assert_exit(&out, 0);
    let printed = stdout(&out);
    assert!(
        printed.contains("tally_snapshots.csv.gz") && printed.contains("_manifest.json"),
        "{printed}"
    );
    let dump = dir.path().join("egress-demo-out/dump");
    let days: Vec<_> = std::fs::read_dir(&dump)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(days.len(), 1, "one day: {days:?}");
    read_manifest(&std::fs::read(days[0].join("_manifest.json")).unwrap());
}
