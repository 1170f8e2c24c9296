//! Typed days: a type-torture table dumped as Parquet and read back by pyarrow and by
//! DuckDB, compared cell by cell with PostgreSQL's own values; the values Parquet cannot
//! hold refused with one line each; the CSV day's descriptor checked by `frictionless`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use egress_testkit::assert_exit;
use egress_testkit::assert_exit_why;
use egress_testkit::{sha256_hex, text, PgServer};
use serde_json::Value;

use super::{local_env, run as dump};

const DATE: &str = "2024-05-01";

/// The type-torture table (shared with `bench/exactness.py`).
const TORTURE: &str = include_str!("torture.sql");

/// Each column's expected cell, as JSON, in the canonical form `read_parquet.py` prints.
fn expected_sql(column: &str, kind: &str) -> String {
    let c = format!("\"{column}\"");
    let scalar = |e: &str| format!("to_json(({e})::text)");
    let cell = match kind {
        "text" => scalar(&format!("format('%s', {c})")),
        "bool" => scalar(&format!("{c}::text")),
        "hex" => scalar(&format!("encode({c}, 'hex')")),
        "uuid" => scalar(&format!("replace({c}::text, '-', '')")),
        "days" => scalar(&format!("{c} - date '1970-01-01'")),
        "micros" => scalar(&format!("(extract(epoch from {c}) * 1000000)::numeric(40,0)")),
        "timetz" => format!(
            "json_build_object('time', ((extract(epoch from {c}::time) * 1000000)::bigint)::text, \
             'offset_seconds', (extract(timezone from {c})::int)::text)"
        ),
        "interval" => format!(
            "json_build_object('months', ((extract(year from {c}) * 12 + extract(month from {c}))::int)::text, \
             'days', (extract(day from {c})::int)::text, \
             'microseconds', ((extract(hour from {c}) * 3600000000 + extract(minute from {c}) * 60000000 \
                               + extract(microseconds from {c}))::bigint)::text)"
        ),
        "list" | "list-days" => {
            let element = match kind {
                "list" => "x::text".to_string(),
                _ => "(x - date '1970-01-01')::text".to_string(),
            };
            format!(
                "coalesce((SELECT json_agg({element} ORDER BY o) FROM unnest({c}) WITH ORDINALITY u(x, o)), '[]')"
            )
        }
        other => panic!("no expected form {other}"),
    };
    format!("(CASE WHEN num_nulls({c}) = 1 THEN 'null'::json ELSE {cell} END)::text")
}

/// The torture table's columns: name, expected form, and the type written.
fn columns() -> Vec<(&'static str, &'static str, &'static str)> {
    fields().into_iter().map(|f| (f[0], f[1], f[2])).collect()
}

/// Each column's Arrow type as `reader` (pyarrow or duckdb) reads it, by name.
fn reader_types(reader: &str) -> BTreeMap<&'static str, &'static str> {
    let at = match reader {
        "pyarrow" => 3,
        _ => 4,
    };
    fields().into_iter().map(|f| (f[0], f[at])).collect()
}

/// The rows of `torture_columns.tsv`, five fields each.
fn fields() -> Vec<Vec<&'static str>> {
    include_str!("torture_columns.tsv")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split('\t').collect::<Vec<_>>())
        .inspect(|f| assert_eq!(f.len(), 5, "{f:?}"))
        .collect()
}

/// PostgreSQL's own values of `table`, keyed by id, in the canonical form.
async fn expected(pg: &PgServer, table: &str) -> BTreeMap<String, BTreeMap<String, Value>> {
    let all = columns();
    let list: Vec<String> = all.iter().map(|(c, k, _)| expected_sql(c, k)).collect();
    let sql = format!("SELECT id::text, {} FROM {table}", list.join(", "));
    let client = pg.client().await;
    // PostgreSQL's exact text, whatever the database's default (see the torture test).
    client
        .batch_execute("SET extra_float_digits = 3")
        .await
        .expect("SET");
    let rows = client.query(&sql, &[]).await.expect("expected values");
    rows.iter()
        .map(|row| {
            let cells = all
                .iter()
                .enumerate()
                .map(|(i, (c, _, _))| {
                    let cell: String = row.get(i + 1);
                    (c.to_string(), serde_json::from_str(&cell).unwrap())
                })
                .collect();
            (row.get::<_, String>(0), cells)
        })
        .collect()
}

/// What `reader` (pyarrow or duckdb) reads from `file`: the schema, then the rows by id.
fn read_back(reader: &str, file: &Path) -> (Value, BTreeMap<String, BTreeMap<String, Value>>) {
    let out = Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/dump/read_parquet.py"
        ))
        .args([reader, &file.display().to_string()])
        .output()
        .expect("run read_parquet.py");
    assert!(out.status.success(), "{reader}: {}", text(&out));
    let mut lines = std::str::from_utf8(&out.stdout).unwrap().lines();
    let schema: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    let rows = lines
        .map(|l| {
            let row: BTreeMap<String, Value> = serde_json::from_str(l).unwrap();
            (row["id"].as_str().unwrap().to_string(), row)
        })
        .collect();
    (schema, rows)
}

/// What `script` prints about `file` (as `sys.argv[1]`, with `sys` and `pyarrow.parquet as pq`
/// imported), trimmed; the test fails if the script does.
fn pyarrow_prints(file: &Path, script: &str) -> String {
    let out = Command::new(python())
        .args([
            "-c",
            &format!("import sys, pyarrow.parquet as pq; {script}"),
        ])
        .arg(file)
        .output()
        .expect("pyarrow");
    assert_exit(&out, 0);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The test venv's python, with pyarrow, duckdb, frictionless.
fn python() -> PathBuf {
    egress_testkit::process::venv_python("pyarrow, duckdb, frictionless")
}

/// Floats compare by value: PostgreSQL prints `Infinity`, `-0`, Python `inf`, `-0.0`.
/// DuckDB reads a UUID as its text, and a decimal wider than 38 digits as a double (its own
/// limit; pyarrow reads that column exactly), so `n76` is compared with pyarrow alone.
fn same_cell(reader: &str, column: &str, want: &Value, got: &Value) -> bool {
    let float = |v: &Value| -> Option<u64> {
        let text = v.as_str()?.replace("Infinity", "inf");
        let f: f64 = match column {
            "f4" => f64::from(text.parse::<f32>().ok()?),
            _ => text.parse().ok()?,
        };
        Some(if f.is_nan() { u64::MAX } else { f.to_bits() })
    };
    match column {
        "f4" | "f8" => float(want) == float(got),
        "u" => want.as_str() == got.as_str().map(|u| u.replace('-', "")).as_deref(),
        "n76" if reader == "duckdb" => got.is_null() == want.is_null(),
        _ => want == got,
    }
}

fn dump_parquet(
    pg: &PgServer,
    out_dir: &Path,
    tables: &str,
    extra: &[&str],
) -> std::process::Output {
    let env = local_env(pg, DATE);
    let output = format!("file://{}", out_dir.display());
    let mut args = vec![
        "--tables", tables, "--output", &output, "--format", "parquet",
    ];
    args.extend_from_slice(extra);
    dump(&env, &args)
}

fn assert_read_back_exactly(file: &Path, want: &BTreeMap<String, BTreeMap<String, Value>>) {
    let mut wrong = Vec::new();
    for reader in ["pyarrow", "duckdb"] {
        let (schema, got) = read_back(reader, file);
        // The types themselves, as each reader sees them: a decimal stored as a string, or
        // an int16 widened to int64, would read back equal values but fail here.
        for (column, expected) in reader_types(reader) {
            let read = schema["schema"][column].as_str().unwrap_or("(absent)");
            if read != expected {
                wrong.push(format!(
                    "{reader}: column {column} reads as {read}, expected {expected}"
                ));
            }
        }
        assert_eq!(got.len(), want.len(), "{reader}: rows");
        for (id, row) in want {
            for (column, cell) in row {
                let read = &got[id][column];
                if !same_cell(reader, column, cell, read) {
                    wrong.push(format!(
                        "{reader}: row {id}, column {column}: PostgreSQL {cell}, Parquet {read}"
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn every_type_is_read_back_exactly_by_pyarrow_and_duckdb() {
    let pg = PgServer::start();
    super::sql(&pg, TORTURE).await;
    // A database that prints floats with 15 digits: the dump still writes them exactly.
    super::sql(&pg, "ALTER DATABASE postgres SET extra_float_digits = 0").await;
    let dir = tempfile::tempdir().unwrap();
    let out = dump_parquet(&pg, dir.path(), "torture", &[]);
    assert_exit(&out, 0);
    let day = dir.path().join(DATE);
    let want = expected(&pg, "torture").await;
    assert_eq!(want.len(), 5);
    assert_eq!(want["1"]["pt"], "(1.2345678901234567,-2)");
    assert_read_back_exactly(&day.join("torture.parquet"), &want);

    // UUID and JSON carry their Parquet logical types, which Spark, Trino and DuckDB read.
    let file = day.join("torture.parquet");
    assert_eq!(
        pyarrow_prints(
            &file,
            "s = pq.ParquetFile(sys.argv[1]).schema; \
             print(*[f'{c.name}={c.logical_type}' for c in s if c.name in ('u', 'j', 'jb')])"
        ),
        "u=UUID j=JSON jb=JSON"
    );
    // The key's values all differ (its unique index says so): no dictionary for it; the
    // other columns keep theirs.
    assert_eq!(
        pyarrow_prints(
            &file,
            "g = pq.ParquetFile(sys.argv[1]).metadata.row_group(0); \
             print(*[f'{g.column(i).path_in_schema}={g.column(i).has_dictionary_page}' \
                     for i in range(g.num_columns) if g.column(i).path_in_schema in ('id', 't')])"
        ),
        "id=False t=True"
    );

    // The manifest records each column's type, nullability and the type written.
    let manifest: Value =
        egress_testkit::checked_manifest(&std::fs::read(day.join("_manifest.json")).unwrap());
    let table = &manifest["tables"][0];
    assert_eq!(table["format"], "parquet");
    assert_eq!(table["file"], "torture.parquet");
    assert_eq!(table["rows"], 5);
    assert_eq!(table["primary_key"], serde_json::json!(["id"]));
    let declared = columns();
    let columns = table["columns"].as_array().unwrap();
    assert_eq!(columns.len(), declared.len());
    for (column, (name, _, written)) in columns.iter().zip(declared) {
        assert_eq!(column["name"], name);
        assert_eq!(column["written_as"], written, "{name}");
    }
    assert_eq!(columns[3]["not_null"], true);
    assert_eq!(columns[4]["not_null"], false);
    assert_eq!(columns[27]["type"], "posint");

    // The descriptor is part of the day: listed with its hash, and it describes the table.
    let descriptor = std::fs::read(day.join("datapackage.json")).unwrap();
    assert_eq!(manifest["descriptor"]["sha256"], sha256_hex(&descriptor));
    let package: Value = serde_json::from_slice(&descriptor).unwrap();
    let resource = &package["resources"][0];
    assert_eq!(resource["path"], "torture.parquet");
    assert_eq!(resource["format"], "parquet");
    assert_eq!(resource["schema"]["primaryKey"], serde_json::json!(["id"]));
    // In Parquet an empty string is a value, not a missing one.
    assert_eq!(resource["schema"]["missingValues"], serde_json::json!([]));
    assert_eq!(
        resource["schema"]["fields"][3]["constraints"]["required"],
        true
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_split_table_is_one_file_in_order() {
    let pg = PgServer::start();
    super::sql(&pg, TORTURE).await;
    // Enough rows for several chunks: copies of the torture rows under new ids.
    super::sql(
        &pg,
        "INSERT INTO torture SELECT g * 10 + t.id, b, i2, i4, i8, f4, f8, n10, n38, n76, nfree, nneg, \
           t, vc, c5, nm, by, u, j, jb, d, ts, tstz, tm, ttz, iv, e, dom, dnum, ai, at, an, ad, \
           ainet, ae, ip, cidr_, mac, mon, bits, rng, pt, comp \
         FROM torture t, generate_series(1, 6000) g",
    )
    .await;
    super::sql(&pg, "VACUUM ANALYZE torture").await;
    let dir = tempfile::tempdir().unwrap();
    let args = ["--jobs", "3", "--split-larger-than", "1"];
    let out = dump_parquet(&pg, dir.path(), "torture", &args);
    assert_exit(&out, 0);
    let day = dir.path().join(DATE);
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(day.join("_manifest.json")).unwrap()).unwrap();
    assert!(
        manifest["tables"][0]["chunks"].as_u64().unwrap() > 1,
        "{manifest}"
    );
    let want = expected(&pg, "torture").await;
    assert_eq!(want.len(), 30_005);
    assert_read_back_exactly(&day.join("torture.parquet"), &want);
}

/// Each value Parquet cannot hold fails its table with one line naming the table, the
/// column and the row; nothing of the table is left.
#[tokio::test(flavor = "multi_thread")]
async fn values_parquet_cannot_hold_are_refused_with_one_line() {
    let pg = PgServer::start();
    let cases = [
        (
            "ts_inf",
            "timestamp",
            "'2024-01-01', 'infinity'",
            "timestamp 'infinity' has no Parquet value",
        ),
        (
            "d_inf",
            "date",
            "'-infinity'",
            "date '-infinity' has no Parquet value",
        ),
        (
            "ts_far",
            "timestamptz",
            "'294276-12-31 23:59:59.999999+00'",
            "a timestamp after 294247-01-10 04:00:54.775807",
        ),
        (
            "n_nan",
            "numeric(10,2)",
            "1, 'NaN'",
            "numeric 'NaN' has no decimal value",
        ),
        (
            "a_2d",
            "int[]",
            "'{1}', '{{1,2},{3,4}}'",
            "a 2-dimensional array value has no exact list form",
        ),
        (
            "a_lb",
            "int[]",
            "'[0:1]={1,2}'",
            "starting at index 0 (not 1)",
        ),
    ];
    let mut setup = String::new();
    for (table, kind, values, _) in &cases {
        let rows: Vec<String> = values.split(", ").map(|v| format!("({v})")).collect();
        setup += &format!(
            "CREATE TABLE {table} (v {kind}); INSERT INTO {table} VALUES {};",
            rows.join(", ")
        );
    }
    super::sql(&pg, &setup).await;
    for (table, _, values, why) in &cases {
        let dir = tempfile::tempdir().unwrap();
        let out = dump_parquet(&pg, dir.path(), table, &[]);
        assert_exit_why(&out, 1, table);
        let row = values.split(", ").count();
        let line = format!("table '{table}': column 'v', row {row}: ");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let said = stderr
            .lines()
            .find(|l| l.contains(&line))
            .unwrap_or_else(|| panic!("{table}: no line with {line:?}: {}", text(&out)));
        assert!(said.contains(why), "{table}: {said}");
        eprintln!("{table}: {said}");
        let day = dir.path().join(DATE);
        let left: Vec<_> = std::fs::read_dir(&day)
            .map(|d| d.map(|e| e.unwrap().file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{table}: {left:?} left behind");
    }
}

/// A CSV day's descriptor lets `frictionless` read and validate it with its types.
#[tokio::test(flavor = "multi_thread")]
async fn a_csv_day_validates_against_its_descriptor() {
    let pg = PgServer::start();
    super::sql(
        &pg,
        r#"CREATE TABLE orders (id int PRIMARY KEY, paid bool NOT NULL, amount numeric(10,2),
             ratio float8, note text, placed date, at timestamptz, ref uuid, tags text[]);
           INSERT INTO orders VALUES
             (1, true, 9.99, 0.5, 'say "hi", ok', '2024-01-31', '2024-01-31 12:00:00.5+00',
              'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{a,b}'),
             (2, false, NULL, 'NaN', E'two\nlines', NULL, NULL, NULL, NULL),
             (3, true, -0.01, '-Infinity', '', '1999-12-31', '2000-01-01 00:00:00+02', NULL, '{}');"#,
    )
    .await;
    for header in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let env = local_env(&pg, DATE);
        let output = format!("file://{}", dir.path().display());
        let mut args = vec!["--tables", "orders", "--output", &output];
        if header {
            args.push("--header");
        }
        let out = dump(&env, &args);
        assert_exit(&out, 0);
        let package = dir.path().join(DATE).join("datapackage.json");
        let check = Command::new(python())
            .args(["-c", FRICTIONLESS])
            .arg(&package)
            .output()
            .expect("run frictionless");
        assert!(check.status.success(), "header {header}: {}", text(&check));
        let rows = String::from_utf8_lossy(&check.stdout);
        assert!(rows.contains("[1, True, Decimal('9.99'), Decimal('0.5'), 'say \"hi\", ok', datetime.date(2024, 1, 31),"), "{rows}");
        assert!(
            rows.contains("[2, False, None, Decimal('NaN'), 'two\\nlines', None,"),
            "{rows}"
        );
    }
}

/// Validate the package, then print its rows as frictionless typed them.
const FRICTIONLESS: &str = r#"
import sys
from frictionless import Package
package = Package(sys.argv[1])
report = package.validate()
if not report.valid:
    print(report.flatten(["rowNumber", "fieldName", "type", "note"]))
    sys.exit(1)
for row in package.resources[0].read_rows():
    print(list(row.values()))
"#;

/// A table of more than 1 GB of wide text rows, written as Parquet, stays under the
/// README's bound for Parquet: memory does not grow with the table.
#[tokio::test(flavor = "multi_thread")]
async fn a_gigabyte_of_wide_rows_as_parquet_stays_within_the_memory_bound() {
    // A table created and filled in one transaction under wal_level=minimal writes no WAL:
    // the test needs 1.1 GB of disk, not twice that (a CI machine with 1.4 GB free, stop 30).
    // 1,100,000 rows of 1,000 characters of hex: 1.1 GB of text, poorly compressible.
    let (pg, bytes) = big_table(
        "CREATE TABLE wide (id bigint PRIMARY KEY, note text NOT NULL); \
         INSERT INTO wide SELECT g, (SELECT string_agg(md5((g * 40 + j)::text), '') \
                                    FROM generate_series(1, 31) j) || left(md5(g::text), 8) \
         FROM generate_series(1, 1100000) g;",
        "SELECT sum(octet_length(note))::bigint FROM wide",
    )
    .await;
    assert!(bytes > 1_000_000_000, "{bytes} bytes of text");
    let (dir, peak) = parquet_peak(&pg, "wide");
    println!("peak RSS {peak} MiB for {bytes} bytes of text as Parquet");
    // The README's bound for Parquet at the defaults.
    assert!(peak <= PARQUET_BOUND_MIB, "peak RSS {peak} MiB");
    let file = dir.path().join(DATE).join("wide.parquet");
    let check = Command::new(python())
        .args([
            "-c",
            "import sys, pyarrow.parquet as pq; f = pq.ParquetFile(sys.argv[1]); \
             print(f.metadata.num_rows, f.metadata.num_row_groups)",
        ])
        .arg(&file)
        .output()
        .expect("pyarrow");
    assert!(check.status.success(), "{}", text(&check));
    let said = String::from_utf8_lossy(&check.stdout);
    let mut numbers = said.split_whitespace();
    assert_eq!(numbers.next(), Some("1100000"), "{said}");
    let groups: u64 = numbers.next().unwrap().parse().unwrap();
    assert!(groups > 1, "row groups are bounded: {said}");
}

/// A server where `fill` made a big table (under wal_level=minimal a table created and
/// filled in one transaction writes no WAL: half the disk), and the number `measure` reads.
async fn big_table(fill: &str, measure: &str) -> (PgServer, i64) {
    let pg = PgServer::start_with(&["wal_level = minimal", "max_wal_senders = 0"]);
    super::sql(&pg, fill).await;
    let measured = pg.value(measure).parse().unwrap();
    (pg, measured)
}

/// A Parquet dump of `table` into a new folder, ended with exit 0: the folder, its peak RSS.
fn parquet_peak(pg: &PgServer, table: &str) -> (tempfile::TempDir, f64) {
    let dir = tempfile::tempdir().unwrap();
    let out = dump_parquet(pg, dir.path(), table, &[]);
    assert_exit(&out, 0);
    (dir, egress_testkit::peak_rss_mib(&out))
}

/// The README's memory bound for a Parquet dump at the defaults.
const PARQUET_BOUND_MIB: f64 = 160.0;

/// A Parquet day goes to S3 like a CSV day, and egress-sync mirrors it with its
/// descriptor, each object checked against the manifest, then verifies the mirror.
#[tokio::test(flavor = "multi_thread")]
async fn a_parquet_day_in_s3_is_mirrored_and_verified_with_its_descriptor() {
    use egress_testkit::{S3Kind, S3Server};
    let pg = PgServer::start();
    super::sql(&pg, TORTURE).await;
    let (input, output) = (
        S3Server::start(S3Kind::S3sFs),
        S3Server::start(S3Kind::Moto),
    );
    input.create_bucket("days").await;
    output.create_bucket("mirror").await;
    let mut env = pg.env();
    env.extend(input.env());
    env.push(("DUMP_DATE".into(), DATE.into()));
    let args = [
        "--tables",
        "torture",
        "--output",
        "s3://days/pg",
        "--format",
        "parquet",
    ];
    let out = dump(&env, &args);
    assert_exit(&out, 0);
    let mut keys = input.keys("days", "").await;
    keys.sort();
    let day = |f: &str| format!("pg/{DATE}/{f}");
    assert_eq!(
        keys,
        [
            day("_manifest.json"),
            day("datapackage.json"),
            day("torture.parquet")
        ]
    );

    let bin = Path::new(env!("CARGO_BIN_EXE_egress-dump")).with_file_name("egress-sync");
    let sync = |extra: &[&str]| {
        let mut cmd = egress_testkit::fixtures::sync_command(
            bin.to_str().unwrap(),
            &input,
            "days/pg",
            &output,
            "mirror",
            extra,
        );
        egress_testkit::run(&mut cmd)
    };
    let out = sync(&["--require-manifest"]);
    assert_exit(&out, 0);
    for file in ["torture.parquet", "datapackage.json", "_manifest.json"] {
        let key = format!("{DATE}/{file}");
        assert_eq!(
            output.get("mirror", &key).await,
            input.get("days", &day(file)).await,
            "{key}"
        );
    }
    let out = sync(&["--verify"]);
    assert_exit(&out, 0);
    assert!(
        egress_testkit::stdout(&out).contains(&format!("{DATE}: OK (2 objects")),
        "{}",
        text(&out)
    );
}

/// A table without columns has rows Parquet cannot count: refused in one line naming it
/// (nothing of it left); as CSV it is exact (one empty line per row); with no rows it is an
/// honest empty file.
#[tokio::test(flavor = "multi_thread")]
async fn a_table_without_columns_is_refused_as_parquet_and_exact_as_csv() {
    let pg = PgServer::start();
    super::sql(
        &pg,
        "CREATE TABLE hollow (); INSERT INTO hollow DEFAULT VALUES; INSERT INTO hollow DEFAULT VALUES; \
         INSERT INTO hollow DEFAULT VALUES; CREATE TABLE nothing ();",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let out = dump_parquet(&pg, dir.path(), "hollow", &[]);
    assert_exit(&out, 1);
    let line = egress_testkit::stderr(&out);
    assert!(
        line.contains("table 'hollow'") && line.contains("has no columns but has rows"),
        "{line}"
    );
    assert!(line.contains("--format csv"), "{line}");
    let day = dir.path().join(DATE);
    assert!(!day.join("hollow.parquet").exists() && !day.join("_manifest.json").exists());
    let out = dump_parquet(&pg, dir.path(), "nothing", &[]);
    assert_exit(&out, 0);
    assert_eq!(
        pyarrow_prints(
            &day.join("nothing.parquet"),
            "print(pq.ParquetFile(sys.argv[1]).metadata.num_rows)"
        ),
        "0"
    );
    let env = local_env(&pg, DATE);
    let output = format!("file://{}", dir.path().display());
    let out = dump(&env, &["--tables", "hollow", "--output", &output]);
    assert_exit(&out, 0);
    let csv = egress_testkit::gunzip(&std::fs::read(day.join("hollow.csv.gz")).unwrap());
    assert_eq!(csv, b"\n\n\n");
    let manifest: Value =
        egress_testkit::checked_manifest(&std::fs::read(day.join("_manifest.json")).unwrap());
    assert_eq!(manifest["tables"][0]["rows"], 3);
}

/// Values kept as PostgreSQL text (ranges, composites) are written under pinned settings,
/// whatever the database's: PostgreSQL itself, under the database's own settings, reads
/// each back as the same value; the manifest records what they were written with. The CSV
/// day keeps the database's settings, as `psql` does.
#[tokio::test(flavor = "multi_thread")]
async fn text_forms_are_written_under_pinned_settings_and_read_back_as_the_same_values() {
    let pg = PgServer::start();
    super::sql(
        &pg,
        "ALTER DATABASE postgres SET DateStyle = 'SQL, DMY'; \
         ALTER DATABASE postgres SET TimeZone = 'Asia/Kolkata'; \
         ALTER DATABASE postgres SET IntervalStyle = 'sql_standard'; \
         ALTER DATABASE postgres SET bytea_output = 'escape'; \
         CREATE TYPE moment AS (at timestamptz, span interval, raw bytea, ratio float8); \
         CREATE TABLE stamped (id int PRIMARY KEY, r tstzrange, d daterange, m moment); \
         INSERT INTO stamped VALUES \
           (1, tstzrange('2024-07-01 13:00:00+01', '2024-07-02 08:30:00.25+05:30'), \
               daterange('2024-01-02', '2024-02-01'), \
               ROW('2024-07-01 13:00:00+01', interval '-1 day +2 hours 3 months', '\\x00ff41', 0.1 + 0.2)), \
           (2, tstzrange('1900-01-01 00:00:00+00', NULL), daterange('0100-03-04 BC', '0100-03-05 BC'), \
               ROW('infinity', interval '1 year -1 second', '', -0.0));",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let out = dump_parquet(&pg, dir.path(), "stamped", &[]);
    assert_exit(&out, 0);
    let day = dir.path().join(DATE);
    let texts = pyarrow_prints(
        &day.join("stamped.parquet"),
        "import json; t = pq.read_table(sys.argv[1]).to_pydict(); \
         print(json.dumps([t['id'], t['r'], t['d'], t['m']]))",
    );
    let texts: Value = serde_json::from_str(&texts).unwrap();
    let client = pg.client().await; // the database's own settings: SQL, DMY; Asia/Kolkata
    for (i, id) in texts[0].as_array().unwrap().iter().enumerate() {
        for (column, cast) in [(1, "tstzrange"), (2, "daterange"), (3, "moment")] {
            let written = texts[column][i].as_str().unwrap();
            let name = ["", "r", "d", "m"][column];
            let same: bool = client
                .query_one(
                    &format!("SELECT $1::text::{cast} IS NOT DISTINCT FROM {name} FROM stamped WHERE id = $2"),
                    &[&written, &(id.as_i64().unwrap() as i32)],
                )
                .await
                .unwrap()
                .get(0);
            assert!(
                same,
                "row {id}, {name}: {written:?} is read back as another value"
            );
        }
    }
    // ISO dates with a numeric offset: an instant, whatever the reader's TimeZone.
    assert!(
        texts[1][0]
            .as_str()
            .unwrap()
            .starts_with("[\"2024-07-01 17:30:00+05:30\""),
        "{texts}"
    );
    let manifest: Value =
        egress_testkit::checked_manifest(&std::fs::read(day.join("_manifest.json")).unwrap());
    let settings = &manifest["text_settings"];
    assert_eq!(settings["DateStyle"], "ISO, DMY", "{settings}");
    assert_eq!(settings["IntervalStyle"], "postgres");
    assert_eq!(settings["bytea_output"], "hex");
    assert_eq!(settings["TimeZone"], "Asia/Kolkata");
    assert_eq!(settings["extra_float_digits"], "3");
    // CSV: the database's own settings, as psql prints them.
    let env = local_env(&pg, DATE);
    let output = format!("file://{}", dir.path().display());
    let out = dump(&env, &["--tables", "stamped", "--output", &output]);
    assert_exit(&out, 0);
    let csv = String::from_utf8(egress_testkit::gunzip(
        &std::fs::read(day.join("stamped.csv.gz")).unwrap(),
    ))
    .unwrap();
    assert!(csv.contains("01/07/2024 17:30:00 IST"), "{csv}");
    let manifest: Value =
        egress_testkit::checked_manifest(&std::fs::read(day.join("_manifest.json")).unwrap());
    assert!(
        manifest.get("text_settings").is_none(),
        "a CSV day's settings are the database's"
    );
}

/// Rows of 48 MiB (24 MiB of text and 24 MiB of random bytes each) as Parquet stay within
/// the documented bound for large rows.
#[tokio::test(flavor = "multi_thread")]
async fn rows_of_48_mib_as_parquet_stay_within_the_documented_memory_bound() {
    let (pg, row) = big_table(
        "CREATE TABLE heavy (id int PRIMARY KEY, t text, b bytea); \
         INSERT INTO heavy SELECT r, \
           (SELECT string_agg(md5((r * 1000000 + i)::text), '') FROM generate_series(1, 786432) i), \
           (SELECT decode(string_agg(md5((r * 2000000 + i)::text || random()::text), ''), 'hex') \
              FROM generate_series(1, 1572864) i) \
         FROM generate_series(1, 3) r;",
        "SELECT max(octet_length(t) + octet_length(b))::bigint FROM heavy",
    )
    .await;
    assert_eq!(row, 48 << 20, "rows of 48 MiB");
    let (dir, peak) = parquet_peak(&pg, "heavy");
    let bound = PARQUET_BOUND_MIB + LARGE_ROW_FACTOR * 48.0;
    println!("peak RSS {peak} MiB for rows of 48 MiB as Parquet (bound {bound} MiB)");
    assert!(
        peak <= bound,
        "peak RSS {peak} MiB, the documented bound {bound} MiB"
    );
    assert_eq!(
        pyarrow_prints(
            &dir.path().join(DATE).join("heavy.parquet"),
            "t = pq.read_table(sys.argv[1]); print(t.num_rows, sum(len(v) for v in t['t'].to_pylist()), sum(len(v) for v in t['b'].to_pylist()))"
        ),
        format!("3 {} {}", 3 * (24 << 20), 3 * (24 << 20))
    );
}

/// How many times its largest row a Parquet dump holds at most, beyond
/// [`PARQUET_BOUND_MIB`] (the README's bound).
const LARGE_ROW_FACTOR: f64 = 4.0;
