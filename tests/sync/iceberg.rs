//! `--iceberg`: mirrored Parquet days committed to Iceberg tables, read back by two readers
//! that share no code with egress (pyiceberg 0.12 and DuckDB 1.4.4's iceberg extension):
//! per-day row counts equal the manifests, values equal the day's Parquet file, snapshots
//! travel in time, schemas evolve, and a change Iceberg cannot express is refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use egress_testkit::assert_exit;
use egress_testkit::assert_exit_why;
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
        let pg = pg_with(schema).await;
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
        assert_exit_why(&out, 0, &format!("dump {date}"));
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

/// Assert that both readers (pyiceberg and duckdb) count the rows of each day as `counts`
/// in `got` (what [`Days::read`] returned).
#[track_caller]
fn assert_counts(got: &Value, counts: &Value) {
    for reader in ["pyiceberg", "duckdb"] {
        assert_eq!(&got[reader]["counts"], counts, "{reader}: {got}");
    }
}

/// PostgreSQL holding the tables `schema` (SQL) makes.
async fn pg_with(schema: &str) -> PgServer {
    let pg = PgServer::start();
    pg.client()
        .await
        .batch_execute(schema)
        .await
        .expect("schema");
    pg
}

/// The test venv's python, with pyiceberg, duckdb and its iceberg extension.
fn python() -> PathBuf {
    egress_testkit::process::venv_python("pyiceberg, duckdb and its iceberg extension")
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
        assert_exit(&out, 0);
        assert!(
            text(&out).contains(&format!("day {date} added to Iceberg table egress.orders")),
            "{}",
            text(&out)
        );
    }
    let want = days.manifest_rows("orders");
    assert_eq!(want.len(), 7);
    let got = days.read("orders", Some("2024-03-04"), None);
    assert_counts(&got, &counts(&want));
    for reader in ["pyiceberg", "duckdb"] {
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
    assert_exit(&out, 0);
    assert!(
        !text(&out).contains("Iceberg table egress.orders"),
        "{}",
        text(&out)
    );

    // Time travel: as of the third day's snapshot, three days.
    let third = py["snapshots"][2][0].as_i64().expect("id");
    let then = days.read("orders", None, Some(third));
    let first_three: BTreeMap<String, u64> = want.into_iter().take(3).collect();
    assert_counts(&then, &counts(&first_three));
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
    assert_exit(&out, 0);
    // Each snapshot names the schema it was written with: time travel reads it so.
    let metadata = days.metadata("items");
    let file = metadata.strip_prefix("file://").expect("a local file");
    let metadata: Value = serde_json::from_slice(&std::fs::read(file).expect("metadata")).unwrap();
    // In commit order (the metadata lists snapshots in no particular order).
    let mut snapshots: Vec<&Value> = metadata["snapshots"]
        .as_array()
        .expect("snapshots")
        .iter()
        .collect();
    snapshots.sort_by_key(|s| s["sequence-number"].as_i64());
    let snapshot_schemas: Vec<&Value> = snapshots.iter().map(|s| &s["schema-id"]).collect();
    assert_eq!(snapshot_schemas, [&json!(0), &json!(1)], "{metadata}");
    assert_eq!(metadata["current-schema-id"], json!(1), "{metadata}");

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
    assert_counts(&got, &json!({"2024-04-01": 5, "2024-04-02": 10}));
    for reader in ["pyiceberg", "duckdb"] {
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
    assert_exit(&out, 1);
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
    assert_exit(&out, 0);

    days.sql("DELETE FROM orders WHERE id % 2 = 0;").await;
    days.dump("2024-03-02", "orders", "parquet");
    let out = days.sync(&[]);
    assert_exit(&out, 0);
    let got = days.read("orders", Some("2024-03-02"), None);
    assert_counts(
        &got,
        &json!({"2024-03-01": 10, "2024-03-02": 15, "2024-03-03": 30}),
    );
    for reader in ["pyiceberg", "duckdb"] {
        assert_eq!(
            got[reader]["rows"],
            days.parquet_rows("2024-03-02", "orders"),
            "{reader}"
        );
    }

    // A run without --iceberg would change days under the tables: refused, nothing changed.
    let before = days.metadata("orders");
    let mut plain = egress_testkit::clean_command(env!("CARGO_BIN_EXE_egress-sync"));
    plain
        .env("INPUT_PATH", days.input.path())
        .env("OUTPUT_PATH", days.output.path());
    let out = egress_testkit::run(&mut plain);
    egress_testkit::assert_one_line(
        &out,
        2,
        "holds Iceberg tables in _iceberg/ but this run has no --iceberg",
    );
    assert_eq!(days.metadata("orders"), before);

    std::fs::remove_dir_all(days.input.path().join("2024-03-01")).expect("remove a day");
    let out = days.sync(&["--remove", "--max-delete", "10"]);
    assert_exit(&out, 0);
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
    assert_counts(&got, &json!({"2024-03-02": 15, "2024-03-03": 30}));
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
    assert_exit(&out, 0);
    assert!(days.output.path().join("2024-03-04/orders.csv.gz").exists());
    assert!(
        text(&out).contains(
            "1 CSV day(s) (2024-03-04 to 2024-03-04) mirrored, not committed to Iceberg tables"
        ),
        "{}",
        text(&out)
    );
}

/// Days dumped into S3 (s3s-fs) for [`S3Days`]: `count` days of `orders`.
struct S3Days {
    pg: PgServer,
    input: egress_testkit::S3Server,
    output: egress_testkit::S3Server,
}

impl S3Days {
    async fn new(count: u32) -> S3Days {
        use egress_testkit::{S3Kind, S3Server};
        let pg = pg_with(ORDERS).await;
        let (input, output) = (
            S3Server::start(S3Kind::S3sFs),
            S3Server::start(S3Kind::S3sFs),
        );
        input.create_bucket("days").await;
        output.create_bucket("mirror").await;
        let days = S3Days { pg, input, output };
        for n in 1..=count {
            days.pg
                .client()
                .await
                .batch_execute(&orders_of_day(n))
                .await
                .expect("rows");
            let bin = Path::new(env!("CARGO_BIN_EXE_egress-sync")).with_file_name("egress-dump");
            let mut cmd = egress_testkit::clean_command(bin.to_str().expect("utf-8"));
            cmd.envs(days.pg.env())
                .envs(days.input.env())
                .env("DUMP_DATE", format!("2024-03-{n:02}"))
                .args([
                    "--tables",
                    "orders",
                    "--format",
                    "parquet",
                    "--output",
                    "s3://days/pg",
                ]);
            let out = egress_testkit::run(&mut cmd);
            assert_exit(&out, 0);
        }
        days
    }

    /// egress-sync into the output (reached at `endpoint`), committing to Iceberg tables.
    fn sync_command(&self, endpoint: &str, extra: &[&str]) -> Command {
        let output = self.output.s3().via(endpoint);
        let mut cmd = egress_testkit::clean_command(env!("CARGO_BIN_EXE_egress-sync"));
        let input = self.input.s3();
        cmd.env("INPUT_URL", &input.endpoint)
            .env("INPUT_PATH", "days/pg")
            .env("INPUT_ACCESS_KEY_ID", &input.access_key)
            .env("INPUT_SECRET_ACCESS_KEY", &input.secret_key)
            .env("OUTPUT_URL", &output.endpoint)
            .env("OUTPUT_PATH", "mirror")
            .env("OUTPUT_ACCESS_KEY_ID", &output.access_key)
            .env("OUTPUT_SECRET_ACCESS_KEY", &output.secret_key)
            .args(["--require-manifest", "--iceberg"])
            .args(extra);
        cmd
    }

    /// The readers' S3 settings for the output.
    fn s3_spec(&self) -> Value {
        let s3 = self.output.s3();
        json!({"endpoint": s3.endpoint, "key": s3.access_key, "secret": s3.secret_key})
    }

    /// Read the table whose current metadata file is `metadata`.
    fn read(&self, metadata: &str, date: Option<&str>) -> Value {
        let mut spec = json!({"metadata": metadata, "duckdb": metadata, "s3": self.s3_spec()});
        if let Some(date) = date {
            spec["date"] = json!(date);
        }
        read(&spec)
    }

    /// The newest metadata file of a file-system table in the output.
    async fn metadata(&self, table: &str) -> String {
        let dir = format!("_iceberg/egress/{table}/metadata");
        let hint = self
            .output
            .get("mirror", &format!("{dir}/version-hint.text"))
            .await;
        let n = String::from_utf8(hint).expect("utf-8");
        format!("s3://mirror/{dir}/v{n}.metadata.json")
    }
}

/// S3 on both sides, the tables' versions in a PostgreSQL SQL catalog, and the mirror
/// shared by two processes running at once, each committing its own days to the same
/// table: every day is there once, and pyiceberg's SqlCatalog and DuckDB read it alike.
#[tokio::test(flavor = "multi_thread")]
async fn two_shares_commit_s3_days_through_a_sql_catalog_at_once() {
    let days = S3Days::new(6).await;
    let url = format!(
        "postgresql://{}:{}@127.0.0.1:{}/postgres",
        egress_testkit::postgres::USER,
        egress_testkit::postgres::PASSWORD,
        days.pg.port
    );
    let endpoint = days.output.s3().endpoint.clone();
    let shares: Vec<std::process::Child> = (0..2)
        .map(|i| {
            let index = i.to_string();
            days.sync_command(
                &endpoint,
                &[
                    "--shares",
                    "2",
                    "--share-index",
                    &index,
                    "--iceberg-catalog",
                    &url,
                ],
            )
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn")
        })
        .collect();
    for share in shares {
        let out = share.wait_with_output().expect("share");
        assert_exit(&out, 0);
        assert!(
            !text(&out).contains(&url),
            "the catalog's URL (its password) is never printed"
        );
    }
    let location = days
        .pg
        .value("SELECT metadata_location FROM iceberg_tables WHERE catalog_name = 'egress' AND table_namespace = 'egress' AND table_name = 'orders'");
    let location = location.trim().to_string();
    assert!(
        location.starts_with("s3://mirror/_iceberg/egress/orders/metadata/"),
        "{location}"
    );
    let spec = json!({
        "sql": {
            "uri": url.replace("postgresql://", "postgresql+psycopg2://"),
            "name": "egress",
            "table": "egress.orders",
        },
        "duckdb": location,
        "s3": days.s3_spec(),
        "date": "2024-03-05",
    });
    let got = read(&spec);
    let want = json!({"2024-03-01": 10, "2024-03-02": 20, "2024-03-03": 30, "2024-03-04": 40, "2024-03-05": 50, "2024-03-06": 60});
    assert_counts(&got, &want);
    for reader in ["pyiceberg", "duckdb"] {
        assert_eq!(
            got[reader]["rows"].as_array().map(Vec::len),
            Some(50),
            "{reader}"
        );
    }
    assert_eq!(
        got["pyiceberg"]["snapshots"].as_array().map(Vec::len),
        Some(6),
        "one snapshot per day: {got}"
    );
    assert_eq!(got["pyiceberg"]["rows"], got["duckdb"]["rows"]);
}

/// A sync killed in the middle of a commit (before its version is published, then after
/// but before the hint names it) leaves the previous version readable; the next run
/// completes the commit, and the day is in the table once.
#[tokio::test(flavor = "multi_thread")]
async fn a_sync_killed_mid_commit_leaves_the_last_version_and_the_next_run_finishes() {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    let days = S3Days::new(2).await;
    let upstream = days.output.s3().endpoint.clone();
    // A first run commits the first day only.
    let out =
        egress_testkit::run(&mut days.sync_command(&upstream, &["--include", "2024-03-01/*"]));
    assert_exit(&out, 0);
    let first = days.metadata("orders").await;

    for (moment, kill_at) in [
        (
            "before its version is published",
            "/metadata/v2.metadata.json",
        ),
        (
            "after its version, before the hint",
            "/metadata/version-hint.text",
        ),
    ] {
        let pid = Arc::new(AtomicU32::new(0));
        let armed = pid.clone();
        let at = kill_at.to_string();
        let hook: egress_testkit::proxy::Hook = Arc::new(move |seen| {
            let hit = seen.method == "PUT" && seen.target.contains(&at);
            let pid = armed.load(Ordering::SeqCst);
            Box::pin(async move {
                if hit && pid != 0 {
                    egress_testkit::process::signal(pid, libc::SIGKILL);
                    tokio::time::sleep(std::time::Duration::from_secs(30)).await;
                }
            })
        });
        let proxy = egress_testkit::proxy::Proxy::start(&upstream, Some(hook), None);
        let child = days
            .sync_command(&proxy.endpoint, &["--lease-ttl", "5s"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        pid.store(child.id(), Ordering::SeqCst);
        let out = child.wait_with_output().expect("killed run");
        assert_eq!(out.status.code(), None, "killed {moment}: {}", text(&out));
        // The hint still names the first version: readers see it, whole.
        assert_eq!(days.metadata("orders").await, first, "{moment}");
        let got = days.read(&first, None);
        for reader in ["pyiceberg", "duckdb"] {
            assert_eq!(
                got[reader]["counts"],
                json!({"2024-03-01": 10}),
                "{moment}: {reader}: {got}"
            );
        }
        drop(proxy);
        std::thread::sleep(std::time::Duration::from_secs(6));
    }
    let out = egress_testkit::run(&mut days.sync_command(&upstream, &[]));
    assert_exit(&out, 0);
    let now = days.metadata("orders").await;
    assert!(
        now.ends_with("/v2.metadata.json"),
        "the published version is found and named: {now}"
    );
    let got = days.read(&now, None);
    assert_counts(&got, &json!({"2024-03-01": 10, "2024-03-02": 20}));
    assert_eq!(
        got["pyiceberg"]["snapshots"].as_array().map(Vec::len),
        Some(2),
        "{got}"
    );
}

/// Lay a local day out again as `date` (its manifest's date and keys rewritten; the
/// objects the same bytes).
fn copy_day(input: &Path, from: &str, date: &str) {
    let (src, dst) = (input.join(from), input.join(date));
    std::fs::create_dir_all(&dst).expect("day folder");
    for entry in std::fs::read_dir(&src).expect("day") {
        let path = entry.expect("entry").path();
        let name = path.file_name().expect("name").to_owned();
        let bytes = std::fs::read(&path).expect("read");
        let bytes = match name == "_manifest.json" {
            true => String::from_utf8(bytes)
                .expect("utf-8")
                .replace(from, date)
                .into_bytes(),
            false => bytes,
        };
        std::fs::write(dst.join(name), bytes).expect("write");
    }
}

/// The cost of the commit that brings a table to 365 days, on S3: its requests, and the
/// bytes of metadata it reads and writes. It is bounded: a constant number of requests,
/// the metadata file bounded by the snapshots kept, and the manifest list growing by one
/// entry a day.
#[tokio::test(flavor = "multi_thread")]
async fn a_commit_at_365_days_reads_and_writes_a_bounded_amount_of_metadata() {
    use egress_testkit::{S3Kind, S3Server};
    let days = Days::new(ORDERS).await;
    days.sql(&orders_of_day(1)).await;
    days.dump("2024-01-01", "orders", "parquet");
    let date = |n: i64| {
        let first = 19723; // 2024-01-01 as days since 1970-01-01
        iceberg_date(first + n)
    };
    for n in 1..364 {
        copy_day(days.input.path(), "2024-01-01", &date(n));
    }
    let output = S3Server::with_bucket(S3Kind::S3sFs, "mirror").await;
    let sync = |endpoint: &str| {
        let s3 = output.s3().via(endpoint);
        let mut cmd = egress_testkit::clean_command(env!("CARGO_BIN_EXE_egress-sync"));
        cmd.env("INPUT_PATH", days.input.path())
            .env("OUTPUT_URL", &s3.endpoint)
            .env("OUTPUT_PATH", "mirror")
            .env("OUTPUT_ACCESS_KEY_ID", &s3.access_key)
            .env("OUTPUT_SECRET_ACCESS_KEY", &s3.secret_key)
            .args(["--require-manifest", "--iceberg"]);
        egress_testkit::run(&mut cmd)
    };
    let out = sync(&output.s3().endpoint);
    assert_exit(&out, 0);

    copy_day(days.input.path(), "2024-01-01", &date(364));
    let proxy = egress_testkit::proxy::Proxy::start(&output.s3().endpoint, None, None);
    let started = std::time::Instant::now();
    let out = sync(&proxy.endpoint);
    let seconds = started.elapsed().as_secs_f64();
    assert_exit(&out, 0);
    let mut count: BTreeMap<String, u64> = BTreeMap::new();
    let (mut read, mut written) = (0usize, 0usize);
    for seen in proxy
        .requests()
        .iter()
        .filter(|s| s.target.contains("/_iceberg/"))
    {
        *count.entry(seen.method.clone()).or_default() += 1;
        let key = seen
            .target
            .trim_start_matches("/mirror/")
            .split('?')
            .next()
            .unwrap_or_default();
        // A HEAD may probe a version that does not exist: only reads and writes are sized.
        match seen.method.as_str() {
            "GET" => read += output.get("mirror", key).await.len(),
            "PUT" => written += output.get("mirror", key).await.len(),
            _ => {}
        }
    }
    let metadata = output
        .keys("mirror", "_iceberg/egress/orders/metadata/")
        .await;
    let got = days_read_s3(&output, &metadata);
    eprintln!(
        "ICEBERG COST at 365 days: requests {count:?}, metadata read {read} bytes, written {written} bytes, run {seconds:.2} s; snapshots kept {}",
        got["pyiceberg"]["snapshots"].as_array().map_or(0, Vec::len)
    );
    assert_eq!(
        got["pyiceberg"]["counts"].as_object().map(|c| c.len()),
        Some(365),
        "{got}"
    );
    assert_eq!(
        got["duckdb"]["counts"].as_object().map(|c| c.len()),
        Some(365)
    );
    assert!(count.get("GET").copied().unwrap_or(0) <= 3, "{count:?}");
    assert!(count.get("PUT").copied().unwrap_or(0) <= 4, "{count:?}");
    assert!(count.get("HEAD").copied().unwrap_or(0) <= 2, "{count:?}");
    assert!(
        read < 256 * 1024,
        "a commit at 365 days read {read} bytes of metadata"
    );
}

/// `YYYY-MM-DD` of a day number.
fn iceberg_date(days: i64) -> String {
    let secs = days * 86_400;
    let out = Command::new("date")
        .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%d"])
        .output()
        .expect("date");
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}

/// Both readers on the newest version of the output's table.
fn days_read_s3(output: &egress_testkit::S3Server, metadata: &[String]) -> Value {
    let newest = metadata
        .iter()
        .filter_map(|k| {
            k.rsplit('/')
                .next()?
                .strip_prefix('v')?
                .strip_suffix(".metadata.json")?
                .parse::<u64>()
                .ok()
        })
        .max()
        .expect("a version");
    let file = format!("s3://mirror/_iceberg/egress/orders/metadata/v{newest}.metadata.json");
    let s3 = output.s3();
    read(&json!({
        "metadata": file,
        "duckdb": file,
        "s3": {"endpoint": s3.endpoint, "key": s3.access_key, "secret": s3.secret_key},
    }))
}
