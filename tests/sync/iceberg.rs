//! `--iceberg`: mirrored Parquet days committed to Iceberg tables, read back by two readers
//! that share no code with egress (pyiceberg 0.12 and DuckDB 1.4.4's iceberg extension):
//! per-day row counts equal the manifests, values equal the day's Parquet file, snapshots
//! travel in time, schemas evolve, and a change Iceberg cannot express is refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use egress_testkit::{text, PgServer};
use serde_json::{json, Value};

/// A source table whose rows grow by day.
const ORDERS: &str = "
CREATE TABLE orders (id bigint PRIMARY KEY, amount numeric(10,2) NOT NULL, note text,
                     placed timestamptz NOT NULL, tags text[], ref uuid);
";

/// Rows for day `n` (1-based): `10 * n` orders in all.
fn orders_of_day(n: u32) -> String {
    format!(
        "INSERT INTO orders SELECT i, i * 1.25, CASE WHEN i % 3 = 0 THEN NULL ELSE 'note ' || i END,
                TIMESTAMPTZ '2024-01-01 00:00+00' + i * interval '1 hour', ARRAY['a', 'b' || i],
                md5(i::text)::uuid
         FROM generate_series({}, {}) i;",
        10 * (n - 1) + 1,
        10 * n
    )
}

/// A source database, the dump's days (a local directory) and the mirror (another).
struct Days {
    pg: PgServer,
    input: tempfile::TempDir,
    output: tempfile::TempDir,
}

impl Days {
    async fn new(schema: &str) -> Days {
        let pg = PgServer::start();
        pg.client()
            .await
            .batch_execute(schema)
            .await
            .expect("schema");
        Days {
            pg,
            input: tempfile::tempdir().expect("tmp"),
            output: tempfile::tempdir().expect("tmp"),
        }
    }

    async fn sql(&self, text: &str) {
        self.pg
            .client()
            .await
            .batch_execute(text)
            .await
            .expect("SQL");
    }

    /// Dump `tables` as the day `date`, in `format`.
    fn dump(&self, date: &str, tables: &str, format: &str) {
        let bin = Path::new(env!("CARGO_BIN_EXE_egress-sync")).with_file_name("egress-dump");
        let mut cmd = egress_testkit::clean_command(bin.to_str().expect("utf-8"));
        cmd.envs(self.pg.env())
            .env("DUMP_DATE", date)
            .args(["--tables", tables, "--format", format])
            .arg("--output")
            .arg(format!("file://{}", self.input.path().display()));
        let out = egress_testkit::run(&mut cmd);
        assert_eq!(out.status.code(), Some(0), "dump {date}: {}", text(&out));
    }

    /// egress-sync from the input into the output, committing to Iceberg tables.
    fn sync(&self, extra: &[&str]) -> Output {
        egress_testkit::run(&mut self.sync_command(extra))
    }

    fn sync_command(&self, extra: &[&str]) -> Command {
        let mut cmd = egress_testkit::clean_command(env!("CARGO_BIN_EXE_egress-sync"));
        cmd.env("INPUT_PATH", self.input.path())
            .env("OUTPUT_PATH", self.output.path())
            .args(["--require-manifest", "--iceberg"])
            .args(extra);
        cmd
    }

    fn table_dir(&self, table: &str) -> PathBuf {
        self.output.path().join("_iceberg/egress").join(table)
    }

    /// The table's newest metadata file (file-system layout).
    fn metadata(&self, table: &str) -> String {
        let dir = self.table_dir(table).join("metadata");
        let hint =
            std::fs::read_to_string(dir.join("version-hint.text")).expect("version-hint.text");
        assert!(
            !hint.ends_with('\n'),
            "the hint is the bare number: {hint:?}"
        );
        format!("file://{}/v{hint}.metadata.json", dir.display())
    }

    /// What both readers see of the table (as of `snapshot`), with `date`'s rows.
    fn read(&self, table: &str, date: Option<&str>, snapshot: Option<i64>) -> Value {
        let mut spec = json!({
            "metadata": self.metadata(table),
            "duckdb": self.table_dir(table).display().to_string(),
        });
        if let Some(date) = date {
            spec["date"] = json!(date);
        }
        if let Some(id) = snapshot {
            spec["snapshot"] = json!(id);
        }
        read(&spec)
    }

    /// The rows of the day's Parquet file, as pyarrow reads them.
    fn parquet_rows(&self, date: &str, table: &str) -> Value {
        let file = self
            .output
            .path()
            .join(date)
            .join(format!("{table}.parquet"));
        let script = "import json,sys,pyarrow.parquet as pq; sys.path.insert(0, sys.argv[2]); \
                      import read_iceberg as r; print(json.dumps(r.rows_of(pq.read_table(sys.argv[1]))))";
        let out = Command::new(python())
            .args(["-c", script])
            .arg(&file)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/sync"))
            .output()
            .expect("python");
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice(&out.stdout).expect("json")
    }

    /// Rows per day by the day's manifest at the output.
    fn manifest_rows(&self, table: &str) -> BTreeMap<String, u64> {
        let mut rows = BTreeMap::new();
        for day in std::fs::read_dir(self.output.path()).expect("output") {
            let day = day.expect("entry").path();
            let Ok(bytes) = std::fs::read(day.join("_manifest.json")) else {
                continue;
            };
            let manifest: Value = serde_json::from_slice(&bytes).expect("manifest");
            for t in manifest["tables"].as_array().expect("tables") {
                if t["table"] == table {
                    let date = manifest["date"].as_str().expect("date").to_string();
                    *rows.entry(date).or_default() += t["rows"].as_u64().expect("rows");
                }
            }
        }
        rows
    }
}

fn python() -> PathBuf {
    egress_testkit::process::find_binary(
        "python",
        "EGRESS_PYTHON",
        &[PathBuf::from("/opt/egress-py/bin")],
        "bash scripts/install-test-deps.sh (a venv at /opt/egress-py with pyiceberg, duckdb and its iceberg extension)",
    )
}

/// Run the readers on `spec` (see read_iceberg.py); each reader's result, checked to hold
/// no error.
fn read(spec: &Value) -> Value {
    let file = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(file.path(), spec.to_string()).expect("spec");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/sync/read_iceberg.py");
    let out = Command::new(python())
        .arg(script)
        .arg(file.path())
        .output()
        .expect("python");
    assert!(out.status.success(), "{}", text(&out));
    let got: Value = serde_json::from_slice(&out.stdout).expect("json");
    for (reader, result) in got.as_object().expect("readers") {
        assert!(result.get("error").is_none(), "{reader}: {result}");
    }
    got
}

/// Per-day counts as JSON numbers.
fn counts(rows: &BTreeMap<String, u64>) -> Value {
    json!(rows)
}

/// A week of days, each committed as it is mirrored: every reader counts each day's rows as
/// its manifest does, reads a day's values as its Parquet file holds them, and sees one
/// snapshot per day, the schema NOT NULL where the source is, the primary key as the
/// identifier field.
#[tokio::test(flavor = "multi_thread")]
async fn a_mirrored_week_is_one_table_read_alike_by_pyiceberg_and_duckdb() {
    let days = Days::new(ORDERS).await;
    let dates: Vec<String> = (1..=7).map(|d| format!("2024-03-{d:02}")).collect();
    for (n, date) in dates.iter().enumerate() {
        days.sql(&orders_of_day(n as u32 + 1)).await;
        days.dump(date, "orders", "parquet");
        let out = days.sync(&[]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(
            text(&out).contains(&format!("day {date} added to Iceberg table egress.orders")),
            "{}",
            text(&out)
        );
    }
    let want = days.manifest_rows("orders");
    assert_eq!(want.len(), 7);
    let got = days.read("orders", Some("2024-03-04"), None);
    for reader in ["pyiceberg", "duckdb"] {
        assert_eq!(got[reader]["counts"], counts(&want), "{reader}: {got}");
        assert_eq!(
            got[reader]["rows"],
            days.parquet_rows("2024-03-04", "orders"),
            "{reader} reads the day as its file holds it"
        );
    }
    let py = &got["pyiceberg"];
    assert_eq!(
        py["snapshots"].as_array().expect("snapshots").len(),
        7,
        "{py}"
    );
    assert_eq!(py["identifier"], json!(["id"]), "{py}");
    let schema: BTreeMap<String, (String, bool)> = py["schema"]
        .as_array()
        .expect("schema")
        .iter()
        .map(|f| {
            (
                f[0].as_str().unwrap().to_string(),
                (f[1].as_str().unwrap().to_string(), f[2].as_bool().unwrap()),
            )
        })
        .collect();
    assert_eq!(schema["id"], ("long".to_string(), true), "{py}");
    assert_eq!(
        schema["amount"],
        ("decimal(10, 2)".to_string(), true),
        "{py}"
    );
    assert_eq!(schema["note"], ("string".to_string(), false), "{py}");
    assert_eq!(schema["placed"], ("timestamptz".to_string(), true), "{py}");
    assert_eq!(schema["ref"], ("uuid".to_string(), false), "{py}");
    assert_eq!(schema["egress_date"], ("date".to_string(), false), "{py}");

    // A run with nothing new commits nothing.
    let out = days.sync(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        !text(&out).contains("Iceberg table egress.orders"),
        "{}",
        text(&out)
    );

    // Time travel: as of the third day's snapshot, three days.
    let third = py["snapshots"][2][0].as_i64().expect("id");
    let then = days.read("orders", None, Some(third));
    let first_three: BTreeMap<String, u64> = want.into_iter().take(3).collect();
    for reader in ["pyiceberg", "duckdb"] {
        assert_eq!(
            then[reader]["counts"],
            counts(&first_three),
            "{reader}: {then}"
        );
    }
}

/// The schema follows the source: a column added upstream is a new optional field that
/// earlier days read as NULL, a widening Iceberg allows is taken, and a change it cannot
/// express fails the run with one line naming the table, the column and both types, the
/// day mirrored all the same and the table left at its last good version.
#[tokio::test(flavor = "multi_thread")]
async fn the_schema_follows_the_source_and_refuses_what_iceberg_cannot_express() {
    let days =
        Days::new("CREATE TABLE items (id int PRIMARY KEY, qty int NOT NULL, label text);").await;
    let add = |from: u32| {
        format!(
            "INSERT INTO items SELECT i, i, 'x' || i FROM generate_series({from}, {}) i;",
            from + 4
        )
    };
    days.sql(&add(1)).await;
    days.dump("2024-04-01", "items", "parquet");
    days.sql(&format!(
        "ALTER TABLE items ADD COLUMN discount numeric(5,2); ALTER TABLE items ALTER COLUMN qty TYPE bigint; {}",
        add(6)
    ))
    .await;
    days.sql("UPDATE items SET discount = 0.5 WHERE id > 5;")
        .await;
    days.dump("2024-04-02", "items", "parquet");
    let out = days.sync(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let got = days.read("items", Some("2024-04-01"), None);
    let py = &got["pyiceberg"];
    let field = |name: &str| {
        py["schema"]
            .as_array()
            .expect("schema")
            .iter()
            .find(|f| f[0] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} in {py}"))
    };
    assert_eq!(
        field("qty"),
        json!(["qty", "long", true]),
        "int widened to long"
    );
    assert_eq!(
        field("discount"),
        json!(["discount", "decimal(5, 2)", false]),
        "an added column is optional"
    );
    let mut first_day = days.parquet_rows("2024-04-01", "items");
    for row in first_day.as_array_mut().expect("rows") {
        row["discount"] = Value::Null;
    }
    for reader in ["pyiceberg", "duckdb"] {
        assert_eq!(
            got[reader]["counts"],
            json!({"2024-04-01": 5, "2024-04-02": 10}),
            "{reader}: {got}"
        );
        assert_eq!(
            got[reader]["rows"], first_day,
            "{reader} reads the earlier day's new column as NULL"
        );
    }

    // A column retyped: refused, named, the day mirrored, the table as it was.
    days.sql("ALTER TABLE items ALTER COLUMN label TYPE int USING length(label);")
        .await;
    days.dump("2024-04-03", "items", "parquet");
    let before = days.metadata("items");
    let out = days.sync(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let line = egress_testkit::stderr(&out);
    assert!(
        text(&out).contains(
            "Iceberg table egress.items: column `label` is string in the table but int in this day"
        ),
        "{}",
        text(&out)
    );
    assert!(line.contains("Iceberg table egress.items"), "{line}");
    assert!(
        days.output
            .path()
            .join("2024-04-03/_manifest.json")
            .exists(),
        "the day is mirrored"
    );
    assert_eq!(
        days.metadata("items"),
        before,
        "the table keeps its last good version"
    );
}

/// A day dumped again at the input replaces its rows in the table (never doubled); a day
/// removed with `--remove` leaves the table in the same run, before its files go (the
/// readers never meet a missing file); a CSV day is mirrored and named once as not
/// committed.
#[tokio::test(flavor = "multi_thread")]
async fn a_redumped_day_replaces_its_rows_and_a_removed_day_leaves_the_table() {
    let days = Days::new(ORDERS).await;
    for n in 1..=3 {
        days.sql(&orders_of_day(n)).await;
        days.dump(&format!("2024-03-0{n}"), "orders", "parquet");
    }
    let out = days.sync(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    days.sql("DELETE FROM orders WHERE id % 2 = 0;").await;
    days.dump("2024-03-02", "orders", "parquet");
    let out = days.sync(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let got = days.read("orders", Some("2024-03-02"), None);
    for reader in ["pyiceberg", "duckdb"] {
        assert_eq!(
            got[reader]["counts"],
            json!({"2024-03-01": 10, "2024-03-02": 15, "2024-03-03": 30}),
            "{reader}: {got}"
        );
        assert_eq!(
            got[reader]["rows"],
            days.parquet_rows("2024-03-02", "orders"),
            "{reader}"
        );
    }

    std::fs::remove_dir_all(days.input.path().join("2024-03-01")).expect("remove a day");
    let out = days.sync(&["--remove", "--max-delete", "10"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        !days.output.path().join("2024-03-01").exists(),
        "{}",
        text(&out)
    );
    assert!(
        days.table_dir("orders").join("metadata").exists(),
        "--remove leaves the warehouse alone"
    );
    let got = days.read("orders", None, None);
    for reader in ["pyiceberg", "duckdb"] {
        assert_eq!(
            got[reader]["counts"],
            json!({"2024-03-02": 15, "2024-03-03": 30}),
            "{reader}: {got}"
        );
    }
    let ops: Vec<Value> = got["pyiceberg"]["snapshots"]
        .as_array()
        .expect("snapshots")
        .iter()
        .map(|s| json!([s[1], s[2]]))
        .collect();
    assert_eq!(
        ops,
        [
            json!(["append", "2024-03-01"]),
            json!(["append", "2024-03-02"]),
            json!(["append", "2024-03-03"]),
            json!(["delete", "2024-03-02"]),
            json!(["append", "2024-03-02"]),
            json!(["delete", "2024-03-01"]),
        ],
        "a day leaves its table before its objects change"
    );

    days.dump("2024-03-04", "orders", "csv");
    let out = days.sync(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(days.output.path().join("2024-03-04/orders.csv.gz").exists());
    assert!(
        text(&out).contains(
            "1 CSV day(s) (2024-03-04 to 2024-03-04) mirrored, not committed to Iceberg tables"
        ),
        "{}",
        text(&out)
    );
}
