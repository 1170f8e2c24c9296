//! egress-dump when runs meet: two runs writing the same day, a run killed and re-run at
//! once, rows of 50 MB, libpq connection strings, and a server that asks for the password
//! in clear text. Through the binary, against real servers.

use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use egress_common::store::{S3Settings, S3Store};
use egress_testkit::{gunzip, stderr, stdout, text, PgServer, S3Kind, S3Server};

const BUCKET: &str = "runs";
const DATE: &str = "2024-06-02";

fn command(env: &[(String, String)], args: &[&str]) -> Command {
    let mut cmd = egress_testkit::clean_command(env!("CARGO_BIN_EXE_egress-dump"));
    cmd.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .args(args);
    cmd
}

fn run(env: &[(String, String)], args: &[&str]) -> Output {
    egress_testkit::run(&mut command(env, args))
}

fn env_for(pg: &PgServer, s3: &S3Server, tables: &str) -> Vec<(String, String)> {
    let mut env = pg.env();
    env.extend(s3.env());
    env.push(("TABLES".into(), tables.into()));
    env.push(("S3_OUTPUT".into(), format!("s3://{BUCKET}/conc")));
    env.push(("DUMP_DATE".into(), DATE.into()));
    env
}

async fn sql(pg: &PgServer, text: &str) {
    pg.client().await.batch_execute(text).await.expect("SQL");
}

fn spawn(env: &[(String, String)], args: &[&str]) -> Child {
    command(env, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn egress-dump")
}

/// The day's folder checked against its manifest, as `egress-sync --verify input` does:
/// `Some(problems)` when it has a manifest, `None` when it has none.
async fn verify_day(s3: &S3Server) -> Option<Vec<String>> {
    let settings = S3Settings {
        endpoint_url: Some(s3.endpoint.clone()),
        path_style: true,
        region: Some("us-east-1".into()),
        access_key_id: Some(s3.access_key.clone()),
        secret_access_key: Some(egress_common::Secret::new(s3.secret_key.clone())),
        timeout: Duration::from_secs(10),
        max_attempts: 3,
        credentials_hint: "test",
        ..Default::default()
    };
    let store: egress_common::Store =
        Arc::new(S3Store::new(&settings, BUCKET, "conc").await.unwrap());
    let manifest_key = format!("conc/{DATE}/_manifest.json");
    if s3.keys(BUCKET, "").await.contains(&manifest_key) {
        egress_testkit::checked_manifest(&s3.get(BUCKET, &manifest_key).await);
    }
    let checked = egress_sync::verify::verify(&store, "input").await.unwrap();
    checked
        .folders
        .into_iter()
        .find(|(f, _)| f == DATE)
        .map(|(_, problems)| problems)
}

/// A writer that keeps changing the tables on its own thread while the dumps run.
struct Writer {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Writer {
    fn start(pg: &PgServer) -> Writer {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let conn = format!(
            "host=127.0.0.1 port={} user=postgres password={} dbname=postgres",
            pg.port,
            egress_testkit::postgres::PASSWORD
        );
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(connection);
                let mut commits = 0;
                while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                    client
                        .batch_execute("UPDATE c1 SET v = v + 1 WHERE id % 1000 = 7")
                        .await
                        .unwrap();
                    commits += 1;
                }
                commits
            })
        });
        Writer {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.take().map(|t| t.join().unwrap()).unwrap_or(0)
    }
}

#[tokio::test]
async fn two_dumps_of_one_day_never_leave_a_manifest_that_lies() {
    let pg = PgServer::start();
    let s3 = S3Server::start(S3Kind::Moto);
    s3.create_bucket(BUCKET).await;
    sql(&pg, "CREATE TABLE c1 AS SELECT i AS id, 0 AS v, md5(i::text) || md5((i*3)::text) AS pad FROM generate_series(1, 300000) i; \
              CREATE TABLE c2 AS SELECT i AS id, md5(i::text) AS pad FROM generate_series(1, 50000) i;").await;
    let env = env_for(&pg, &s3, "c1 c2");
    let writer = Writer::start(&pg);
    // Without waiting: the second run finds the first one's lease and stops with exit 3.
    let first = spawn(
        &env,
        &[
            "--jobs",
            "1",
            "--compression-level",
            "1",
            "--part-size-mib",
            "5",
        ],
    );
    std::thread::sleep(Duration::from_millis(500));
    let second = run(&env, &["--jobs", "4", "--part-size-mib", "5"]);
    let first = first.wait_with_output().unwrap();
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    assert_eq!(second.status.code(), Some(3), "{}", text(&second));
    assert!(
        stderr(&second).contains(
            "another run holds the lease on s3://runs/conc/2024-06-02/.egress-lease.json"
        ),
        "{}",
        text(&second)
    );
    assert!(
        !stdout(&first).contains("aborted"),
        "nobody aborted the first run's uploads: {}",
        text(&first)
    );
    assert_eq!(
        verify_day(&s3).await,
        Some(vec![]),
        "the day matches its manifest"
    );

    // Waiting for the lease: the second run dumps the day again after the first.
    let first = spawn(&env, &["--jobs", "4", "--part-size-mib", "5"]);
    std::thread::sleep(Duration::from_millis(500));
    let second = run(
        &env,
        &[
            "--jobs",
            "1",
            "--compression-level",
            "1",
            "--part-size-mib",
            "5",
            "--wait-for-lease",
            "2m",
        ],
    );
    let first = first.wait_with_output().unwrap();
    let commits = writer.stop();
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    assert_eq!(second.status.code(), Some(0), "{}", text(&second));
    assert!(
        stdout(&second).contains("waiting for another run's lease"),
        "{}",
        text(&second)
    );
    assert!(commits > 10, "the writer kept committing ({commits})");
    assert_eq!(
        verify_day(&s3).await,
        Some(vec![]),
        "the day matches its manifest"
    );
    assert!(s3.pending_uploads(BUCKET).await.is_empty());
    let keys = s3.keys(BUCKET, "").await;
    assert!(
        !keys.iter().any(|k| k.contains("egress-lease")),
        "leases are released: {keys:?}"
    );
}

#[tokio::test]
async fn rows_of_50_mb_stay_within_the_documented_memory_bound() {
    let pg = PgServer::start();
    let s3 = S3Server::start(S3Kind::S3sFs);
    s3.create_bucket(BUCKET).await;
    // Four rows of 50 MB each (poorly compressible, so the gzip side carries weight too).
    sql(&pg, "CREATE TABLE wide (id int, blob text); \
              INSERT INTO wide SELECT i, (SELECT string_agg(md5((i * 100000 + j)::text), '') FROM generate_series(1, 1638400) j) FROM generate_series(1, 4) i;").await;
    let out = run(&env_for(&pg, &s3, "wide"), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let object = s3.get(BUCKET, &format!("conc/{DATE}/wide.csv.gz")).await;
    assert!(
        gunzip(&object) == pg.psql("COPY wide TO STDOUT (FORMAT csv)"),
        "byte-identical"
    );
    let line = stdout(&out).lines().last().unwrap_or("").to_string();
    let peak: f64 = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("peak_rss_mib="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no peak_rss_mib: {line}"));
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
    let out_dir = dir.path().to_str().unwrap().to_string();
    let pw = egress_testkit::postgres::PASSWORD;
    let with_url = |url: String, extra: &[(&str, &str)]| {
        let mut env: Vec<(String, String)> = vec![
            ("DATABASE_URL".into(), url),
            ("DUMP_DATE".into(), DATE.into()),
        ];
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        run(&env, &["--tables", "t", "--output", &out_dir])
    };
    // Keyword form, options, application_name, connect_timeout.
    let out = with_url(
        format!("host=127.0.0.1 port={} user=postgres password={pw} dbname=postgres application_name=nightly connect_timeout=5 options='-c statement_timeout=0'", pg.port),
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // A Unix socket, given as a percent-encoded URL host.
    let socket = pg.socket_dir().display().to_string().replace('/', "%2F");
    let out = with_url(
        format!("postgresql://postgres@{socket}:{}/postgres", pg.port),
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "Unix socket: {}", text(&out));
    // Unsupported and unknown parameters are refused by name, the URL never echoed.
    let out = with_url(
        format!(
            "postgresql://postgres:{pw}@127.0.0.1:{}/postgres?sslcert=/c.pem",
            pg.port
        ),
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        stderr(&out).contains("'sslcert' (client certificates) is not supported"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains(pw));
    // sslmode=disable in the URL wins over PGSSLMODE: a server that requires TLS refuses it.
    pg.set_hba(
        "hostssl all all 127.0.0.1/32 scram-sha-256
host all all 127.0.0.1/32 reject",
    );
    let out = with_url(
        format!(
            "postgresql://postgres:{pw}@127.0.0.1:{}/postgres?sslmode=disable",
            pg.port
        ),
        &[("PGSSLMODE", "require")],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "sslmode=disable honoured: {}",
        text(&out)
    );
    assert!(
        stderr(&out).contains("no encryption") || stderr(&out).contains("rejects connection"),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn a_cleartext_password_request_is_refused_unless_chosen() {
    let pg = PgServer::start();
    sql(&pg, "CREATE TABLE t AS SELECT 1 AS v").await;
    pg.set_hba("host all all 127.0.0.1/32 password");
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().to_str().unwrap().to_string();
    let mut env = pg.env();
    env.push(("DUMP_DATE".into(), DATE.into()));
    let started = Instant::now();
    let out = run(&env, &["--tables", "t", "--output", &out_dir]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = stderr(&out);
    assert!(
        err.contains("asked for the password in clear text") && err.contains("it was not sent"),
        "{err}"
    );
    assert!(
        err.contains("PGSSLMODE=disable explicitly"),
        "names the fix: {err}"
    );
    assert!(started.elapsed() < Duration::from_secs(10), "not retried");
    println!("refused: {}", err.trim());
    env.push(("PGSSLMODE".into(), "disable".into()));
    let out = run(&env, &["--tables", "t", "--output", &out_dir]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "chosen explicitly: {}",
        text(&out)
    );
}
