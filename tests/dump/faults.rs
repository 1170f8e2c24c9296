//! egress-dump under faults and hostile conditions, through the binary against real servers:
//! servers dying mid-upload, the backend killed mid-COPY, SIGTERM/SIGINT/SIGKILL, TLS to
//! PostgreSQL and S3, and secrets that must never be printed.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use egress_testkit::assert_none;
use egress_testkit::proxy::{Hook, Proxy};
use egress_testkit::{assert_exit, assert_exit_why, assert_one_line, assert_stderr_has};
use egress_testkit::{
    assert_secrets_kept, gunzip, stderr, text, PgServer, S3Kind, S3Server, SecretCase,
};

use super::{command, pg_and_bucket, pg_and_bucket_with, run, s3_env, through, Env};

const BUCKET: &str = "faults";
const DATE: &str = "2024-05-01";

/// The environment of a dump of `tables` from `pg` for [`DATE`] into `s3://{BUCKET}/out`.
fn env_for(pg: &PgServer, s3: &S3Server, tables: &str) -> Env {
    s3_env(pg, &s3.s3(), tables, &format!("s3://{BUCKET}/out"), DATE)
}

/// A table of ~`mb` MB of poorly compressible CSV.
async fn big_table(pg: &PgServer, name: &str, mb: u32) {
    let rows = mb * 1_000_000 / 140;
    pg.client()
        .await
        .batch_execute(&format!(
            "CREATE TABLE {name} AS SELECT i, md5(i::text) a, md5((i*3)::text) b, md5((i*7)::text) c, md5((i*11)::text) d \
             FROM generate_series(1, {rows}) i"
        ))
        .await
        .expect("create table");
}

/// Start the dump and wait until it logs that `table` is being read.
fn spawn_until_started(
    env: &[(String, String)],
    args: &[&str],
    table: &str,
) -> (Child, Vec<String>) {
    let mut child = command(env, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn egress-dump");
    let stdout = child.stdout.take().expect("stdout");
    let mut reader = BufReader::new(stdout);
    let mut lines = Vec::new();
    let needle = format!("Table '{table}': Data collection started.");
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).expect("read stdout") == 0 {
            panic!("egress-dump ended before starting {table}: {lines:?}");
        }
        let started = line.contains(&needle);
        lines.push(line);
        if started {
            break;
        }
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in reader.lines() {});
    (child, lines)
}

fn wait_with_timeout(child: &mut Child, limit: Duration) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        assert!(
            start.elapsed() < limit,
            "egress-dump did not stop within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    let status = child.wait().expect("wait");
    Output {
        status,
        stdout: Vec::new(),
        stderr: stderr.into_bytes(),
    }
}

/// The objects of the day, without a lease a run that could not finish left behind.
async fn data_keys(s3: &S3Server) -> Vec<String> {
    let keys = s3.keys(BUCKET, "").await;
    keys.into_iter()
        .filter(|k| !k.ends_with(egress_common::day::lease::FILE_NAME))
        .collect()
}

/// PostgreSQL with a table `big` of ~60 MB, a server of `kind` with an empty bucket, and
/// the environment of a dump of `big` into it.
async fn big_day(kind: S3Kind) -> (PgServer, S3Server, Env) {
    let (pg, s3) = pg_and_bucket(kind, BUCKET).await;
    big_table(&pg, "big", 60).await;
    let env = env_for(&pg, &s3, "big");
    (pg, s3, env)
}

/// A dump with `env` of `big` in 5 MiB parts at level 1 (and `extra` flags), returned once
/// it has started the table.
fn start_big(env: &[(String, String)], extra: &[&str]) -> Child {
    let mut args = vec!["--part-size-mib", "5", "--compression-level", "1"];
    args.extend_from_slice(extra);
    spawn_until_started(env, &args, "big").0
}

/// [`start_big`], returned once it has an upload pending on `s3` (moto).
async fn big_upload_pending(env: &[(String, String)], s3: &S3Server) -> Child {
    let child = start_big(env, &[]);
    wait_for_pending_upload(s3).await;
    child
}

/// Assert that `s3` holds no object and no pending upload after `what` ended a run.
async fn assert_nothing_left(s3: &S3Server, what: &str) {
    let keys = s3.keys(BUCKET, "").await;
    assert!(keys.is_empty(), "{what}: no object, no manifest: {keys:?}");
    assert!(
        s3.pending_uploads(BUCKET).await.is_empty(),
        "{what}: the in-flight upload was aborted"
    );
}

/// Wait (at most a minute) until `s3` lists a pending multipart upload.
async fn wait_for_pending_upload(s3: &S3Server) {
    let start = Instant::now();
    while s3.pending_uploads(BUCKET).await.is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no multipart upload started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn assert_clean_rerun(pg: &PgServer, s3: &S3Server, env: &[(String, String)], table: &str) {
    let out = run(env, &["--part-size-mib", "5"]);
    assert_exit_why(&out, 0, "re-run");
    let object = s3.get(BUCKET, &format!("out/{DATE}/{table}.csv.gz")).await;
    assert!(
        gunzip(&object) == pg.psql(&format!("COPY {table} TO STDOUT (FORMAT csv)")),
        "re-run is byte-identical"
    );
    egress_testkit::checked_manifest(&s3.get(BUCKET, &format!("out/{DATE}/_manifest.json")).await);
}

#[tokio::test]
async fn sigterm_and_sigint_abort_uploads_write_no_manifest_and_exit_143_130() {
    let (pg, s3, env) = big_day(S3Kind::Moto).await;
    for (signal, code, name) in [
        (libc::SIGTERM, 143, "SIGTERM"),
        (libc::SIGINT, 130, "SIGINT"),
    ] {
        let mut child = big_upload_pending(&env, &s3).await;
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(child.id() as i32, signal) };
        let out = wait_with_timeout(&mut child, Duration::from_secs(30));
        assert_exit_why(&out, code, name);
        let stderr = stderr(&out);
        assert!(stderr.contains(&format!("stopped by {name}")), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert_nothing_left(&s3, name).await;
    }
    assert_clean_rerun(&pg, &s3, &env, "big").await;
}

#[tokio::test]
async fn sigkill_leaves_an_upload_that_the_next_run_aborts() {
    let (pg, s3, env) = big_day(S3Kind::Moto).await;
    let mut child = big_upload_pending(&env, &s3).await;
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    assert!(
        !s3.pending_uploads(BUCKET).await.is_empty(),
        "a killed run leaves its upload behind"
    );
    assert!(
        data_keys(&s3).await.is_empty(),
        "but no visible object (only its lease, which the next run takes over)"
    );
    assert_clean_rerun(&pg, &s3, &env, "big").await;
    assert!(
        s3.pending_uploads(BUCKET).await.is_empty(),
        "the next run aborted the stale upload"
    );
}

#[tokio::test]
async fn backend_terminated_mid_copy_fails_cleanly() {
    let (pg, s3, env) = big_day(S3Kind::Moto).await;
    let mut child = big_upload_pending(&env, &s3).await;
    let killed: i64 = pg
        .client()
        .await
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'egress-dump'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(killed >= 1);
    let out = wait_with_timeout(&mut child, Duration::from_secs(60));
    assert_exit(&out, 1);
    assert_stderr_has(&out, "reading table 'big' failed");
    assert_nothing_left(&s3, "the backend terminated").await;
    assert_clean_rerun(&pg, &s3, &env, "big").await;
}

#[tokio::test]
async fn s3_server_killed_mid_upload_fails_then_rerun_succeeds() {
    let (pg, mut s3, env) = big_day(S3Kind::S3sFs).await;
    // Through a recording proxy, to know when a part is on its way (s3s-fs cannot list
    // pending uploads).
    let proxy = Proxy::start(&s3.endpoint, None, None);
    let mut child = start_big(&through(&env, &proxy.endpoint), &["--timeout", "5"]);
    proxy.wait_for("UploadPart", |r| r.is_upload_part());
    s3.kill();
    let out = wait_with_timeout(&mut child, Duration::from_secs(120));
    assert_exit(&out, 1);
    assert_stderr_has(&out, "unreachable");
    s3.restart();
    assert!(
        data_keys(&s3).await.is_empty(),
        "no visible object after the failure (its lease may stay: it could not be deleted)"
    );
    assert_clean_rerun(&pg, &s3, &env, "big").await;
}

/// The dump's last check before its manifest: an object of the day that another writer
/// replaced after the dump wrote it (here with as many bytes, one changed: only its ETag
/// tells) fails the run, exit 1, naming it, and no manifest vouches for the day. The
/// replacement lands while the descriptor, written just before the objects are confirmed,
/// is on its way: after every object was uploaded, before the check.
#[tokio::test]
async fn an_object_replaced_before_the_manifest_fails_the_run_without_a_manifest() {
    let (pg, s3) = pg_and_bucket_with(
        S3Kind::S3sFs,
        BUCKET,
        "CREATE TABLE first AS SELECT i, md5(i::text) a FROM generate_series(1, 5000) i; \
         CREATE TABLE second AS SELECT i, md5((i*3)::text) b FROM generate_series(1, 5000) i;",
    )
    .await;
    let victim = format!("out/{DATE}/first.csv.gz");
    let replaced = Arc::new(Mutex::new(None::<Vec<u8>>));
    let (server, key, done) = (s3.s3(), victim.clone(), replaced.clone());
    let hook: Hook = Arc::new(move |seen| {
        let due = seen.method == "PUT" && seen.target.contains("/datapackage.json");
        let (server, key, done) = (server.clone(), key.clone(), done.clone());
        Box::pin(async move {
            if !due || done.lock().unwrap().is_some() {
                return;
            }
            let mut other = server.get(BUCKET, &key).await;
            other[0] ^= 0x01;
            server.put(BUCKET, &key, other.clone()).await;
            *done.lock().unwrap() = Some(other);
        })
    });
    let proxy = Proxy::start(&s3.endpoint, Some(hook), None);
    let env = through(&env_for(&pg, &s3, "first second"), &proxy.endpoint);
    let out = run(&env, &[]);
    let other = replaced
        .lock()
        .unwrap()
        .clone()
        .unwrap_or_else(|| panic!("the descriptor was never written: {}", text(&out)));
    let no_longer = format!("{victim} is no longer the object this run wrote");
    let line = assert_one_line(&out, 1, &no_longer);
    assert!(line.contains("no manifest written"), "{line}");
    let keys = s3.keys(BUCKET, "").await;
    assert_none(&keys, "no manifest vouches for the replaced object", |k| {
        k.ends_with("_manifest.json")
    });
    assert!(
        s3.get(BUCKET, &victim).await == other,
        "the other writer's object is left as it is"
    );
    assert_clean_rerun(&pg, &s3, &env_for(&pg, &s3, "first second"), "first").await;
}

// ---------------------------------------------------------------------------------------
// TLS.

/// A CA and a server certificate for `localhost` only, made with the openssl CLI.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let sh = |args: &str| {
            let out = Command::new("sh")
                .arg("-c")
                .arg(args)
                .current_dir(dir.path())
                .output()
                .expect("run openssl");
            assert!(out.status.success(), "{args}: {}", stderr(&out));
        };
        for ca in ["ca", "other-ca"] {
            sh(&format!(
                "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN={ca} -keyout {ca}.key -out {ca}.pem \
                 -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null"
            ));
        }
        sh("openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key -out server.csr 2>/dev/null");
        sh("printf 'subjectAltName=DNS:localhost\\nextendedKeyUsage=serverAuth\\n' > ext.cnf && \
            openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile ext.cnf -out server.pem 2>/dev/null");
        Pki { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.dir.path().join(name)).unwrap()
    }
}

#[tokio::test]
async fn tls_to_postgresql_follows_libpq_sslmode() {
    let pki = Pki::new();
    let pg = PgServer::start();
    pg.install_file("server.pem", &pki.read("server.pem"), 0o644);
    pg.install_file("server.key", &pki.read("server.key"), 0o600);
    let admin = pg.client().await;
    for sql in [
        "ALTER SYSTEM SET ssl = on",
        "ALTER SYSTEM SET ssl_cert_file = 'server.pem'",
        "ALTER SYSTEM SET ssl_key_file = 'server.key'",
        "SELECT pg_reload_conf()",
        "CREATE TABLE t AS SELECT 1 AS v",
        // Rows over many TLS records and reads: the guard above TLS taps the COPY.
        "CREATE TABLE wide AS SELECT i, repeat(md5(i::text), 7) AS s FROM generate_series(1, 40000) i",
    ] {
        admin.batch_execute(sql).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().to_str().unwrap().to_string();
    let case = |host: &str, mode: &str, ca: Option<&str>| -> Output {
        let mut env: Vec<(String, String)> = pg
            .env()
            .into_iter()
            .filter(|(k, _)| k != "PGHOST")
            .collect();
        env.push(("PGHOST".into(), host.into()));
        env.push(("PGSSLMODE".into(), mode.into()));
        if let Some(ca) = ca {
            env.push(("PGSSLROOTCERT".into(), ca.into()));
        }
        run(&env, &["--tables", "t", "--output", &out_dir])
    };
    let ca = pki.path("ca.pem");
    let other = pki.path("other-ca.pem");
    let ok = case("localhost", "verify-full", Some(&ca));
    assert_exit_why(&ok, 0, "verify-full with the right CA");
    let ok = case("127.0.0.1", "verify-ca", Some(&ca));
    assert_exit_why(&ok, 0, "verify-ca ignores the host name");
    let ok = case("127.0.0.1", "require", None);
    assert_exit_why(&ok, 0, "require without a CA");
    let wide = |format: &str| {
        let out = tempfile::tempdir().unwrap();
        let mut env = pg.env();
        env.retain(|(k, _)| k != "PGHOST");
        env.push(("PGHOST".into(), "localhost".into()));
        env.push(("PGSSLMODE".into(), "verify-full".into()));
        env.push(("PGSSLROOTCERT".into(), ca.clone()));
        let dir = out.path().to_str().unwrap();
        let args = ["--tables", "wide", "--output", dir, "--date", "2024-01-01"];
        let done = run(&env, &[&args[..], &["--format", format]].concat());
        assert_exit_why(&done, 0, &format!("{format} over TLS"));
        (out, done)
    };
    let (out, _) = wide("csv");
    let csv =
        egress_testkit::gunzip(&std::fs::read(out.path().join("2024-01-01/wide.csv.gz")).unwrap());
    let expected: String = (1..=40000)
        .map(|i| {
            format!(
                "{i},{}\n",
                hex::encode(<md5::Md5 as md5::Digest>::digest(i.to_string())).repeat(7)
            )
        })
        .collect();
    assert!(
        csv == expected.as_bytes(),
        "a tapped COPY over TLS is the table, byte for byte ({} bytes, {} expected)",
        csv.len(),
        expected.len()
    );
    let (_, done) = wide("parquet");
    let log = String::from_utf8_lossy(&done.stdout);
    assert!(log.contains("rows=40000"), "{log}");
    let bad = case("localhost", "verify-full", Some(&other));
    assert_exit_why(&bad, 2, "wrong CA");
    let err = stderr(&bad);
    assert!(
        err.contains("TLS to PostgreSQL") && err.contains("PGSSLROOTCERT"),
        "{err}"
    );
    // A root certificate makes verify-ca and require check the chain (as libpq): a server
    // whose certificate another CA signed is refused.
    for mode in ["verify-ca", "require"] {
        let bad = case("127.0.0.1", mode, Some(&other));
        assert_exit_why(&bad, 2, &format!("{mode}, wrong CA"));
        let err = stderr(&bad);
        assert!(
            err.contains("TLS to PostgreSQL") && err.contains("PGSSLROOTCERT"),
            "{mode}: {err}"
        );
    }
    let bad = case("127.0.0.1", "verify-full", Some(&ca));
    assert_exit_why(&bad, 2, "wrong host name");
    assert_stderr_has(&bad, "TLS to PostgreSQL");
    let bad = case("localhost", "verify-full", None);
    assert_exit(&bad, 2);
    assert_stderr_has(&bad, "needs a CA certificate");
    let bad = case("localhost", "verify-full", Some("/nonexistent/ca.pem"));
    assert_exit(&bad, 2);
    assert_stderr_has(&bad, "cannot read PGSSLROOTCERT file");

    // The same as a connection URL: its sslmode and sslrootcert win over PG* variables.
    let url = |ca: &str| -> Output {
        let pw = egress_testkit::postgres::PASSWORD;
        let env = vec![
            (
                "DATABASE_URL".to_string(),
                format!(
                    "postgresql://postgres:{pw}@localhost:{}/postgres?sslmode=verify-full&sslrootcert={ca}",
                    pg.port
                ),
            ),
            ("PGSSLMODE".to_string(), "disable".to_string()),
        ];
        run(&env, &["--tables", "t", "--output", &out_dir])
    };
    let ok = url(&ca);
    assert_exit_why(&ok, 0, "URL verify-full");
    let bad = url(&other);
    assert_exit_why(&bad, 2, "URL, wrong CA");
    assert!(
        !text(&bad).contains(egress_testkit::postgres::PASSWORD),
        "{}",
        text(&bad)
    );

    // And the session really is encrypted.
    use egress_dump::pg;
    let mut env = pg.env();
    env.push(("PGSSLMODE".into(), "require".into()));
    let params = egress_dump::pg::Params::resolve(None, &env).unwrap();
    let client = pg::resolve(&params, Duration::from_secs(10))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let ssl: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl);
}

#[tokio::test]
async fn https_to_s3_with_a_custom_ca_bundle() {
    let pki = Pki::new();
    let (pg, s3) = pg_and_bucket(S3Kind::S3sFs, BUCKET).await;
    pg.client()
        .await
        .batch_execute("CREATE TABLE t AS SELECT 1 AS v")
        .await
        .unwrap();
    // socat terminates TLS in front of the S3 server, as an ingress would.
    let port = egress_testkit::free_port();
    let target = s3.endpoint.trim_start_matches("http://").to_string();
    let proxy = Command::new("socat")
        .arg(format!(
            "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},verify=0",
            pki.path("server.pem"),
            pki.path("server.key")
        ))
        .arg(format!("TCP:{target}"))
        .stderr(Stdio::null())
        .spawn()
        .expect("run socat (apt-get install socat)");
    let _proxy = KillOnDrop(proxy);
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "socat did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut env = env_for(&pg, &s3, "t");
    env.retain(|(k, _)| k != "AWS_ENDPOINT_URL");
    env.push((
        "AWS_ENDPOINT_URL".into(),
        format!("https://localhost:{port}"),
    ));
    let without = run(&env, &[]);
    assert_exit_why(&without, 2, "an unknown CA is refused");
    let err = stderr(&without);
    assert!(
        err.contains("is not trusted")
            && err.contains("UnknownIssuer")
            && err.contains("AWS_CA_BUNDLE"),
        "the certificate is named as the cause: {err}"
    );
    env.push(("AWS_CA_BUNDLE".into(), pki.path("ca.pem")));
    let with = run(&env, &[]);
    assert_exit(&with, 0);
    assert_eq!(
        gunzip(&s3.get(BUCKET, &format!("out/{DATE}/t.csv.gz")).await),
        b"1\n"
    );
    let mut env = env_for(&pg, &s3, "t");
    env.push(("AWS_CA_BUNDLE".into(), "/nonexistent/bundle.pem".into()));
    let bad = run(&env, &[]);
    assert_exit(&bad, 2);
    assert_stderr_has(&bad, "AWS_CA_BUNDLE");
}

// ---------------------------------------------------------------------------------------
// Secrets.

#[tokio::test]
async fn secrets_never_appear_in_any_output() {
    const PASSWORD: &str = "SENTINEL-pg-password-93kd7";
    const SECRET: &str = "SENTINEL-aws-secret-x81mq2";
    let pg = PgServer::start();
    let s3 = S3Server::start_with_secret(S3Kind::S3sFs, Some(SECRET));
    s3.create_bucket(BUCKET).await;
    pg.client()
        .await
        .batch_execute(&format!(
            "CREATE TABLE t AS SELECT 1 AS v; ALTER USER postgres PASSWORD '{PASSWORD}'"
        ))
        .await
        .unwrap();
    let mut good = env_for(&pg, &s3, "t");
    good.retain(|(k, _)| k != "PGPASSWORD");
    good.push(("PGPASSWORD".into(), PASSWORD.into()));
    let with = |key: &str, value: &str| -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> =
            good.iter().filter(|(k, _)| k != key).cloned().collect();
        env.push((key.into(), value.into()));
        env
    };
    let url = format!(
        "postgresql://postgres:{PASSWORD}@127.0.0.1:{}/postgres",
        pg.port
    );
    let bad_url = format!("postgresql://postgres:{PASSWORD}@127.0.0.1:notaport/postgres");
    // A password holding '/' and '?' unencoded: the URL cannot be read, and no part of it
    // may be echoed (it once came back as "port '<password>' is not a port number").
    let raw_url = format!(
        "postgresql://postgres:{PASSWORD}/a?b@127.0.0.1:{}/postgres",
        pg.port
    );
    let gateway = "http://metrics:SENTINEL-gw-pw/9?z@127.0.0.1:1/";
    let closed = egress_testkit::free_port().to_string();
    // Each case: its name, environment, arguments, the exit code it must end with and a
    // line it must print (so a case that silently did something else fails).
    type Case<'a> = (&'a str, Vec<(String, String)>, Vec<&'a str>, i32, &'a str);
    let cases: Vec<Case> = vec![
        ("success text", good.clone(), vec![], 0, "Success."),
        (
            "success json debug",
            good.clone(),
            vec!["--log-format", "json", "-v"],
            0,
            "\"Success.\"",
        ),
        ("success trace", good.clone(), vec!["-vv"], 0, "Success."),
        (
            "dry run",
            good.clone(),
            vec!["--dry-run", "-v"],
            0,
            "Dry run: nothing was written.",
        ),
        (
            "database url",
            with("DATABASE_URL", &url),
            vec!["-v"],
            0,
            "Success.",
        ),
        (
            "malformed database url",
            with("DATABASE_URL", &bad_url),
            vec!["-v"],
            2,
            "port",
        ),
        (
            "wrong password",
            with("PGPASSWORD", &format!("{PASSWORD}-wrong")),
            vec!["-v", "--log-format", "json"],
            2,
            "password authentication failed",
        ),
        (
            "wrong S3 secret",
            with("AWS_SECRET_ACCESS_KEY", &format!("{SECRET}-wrong")),
            vec!["-vv"],
            2,
            "rejected the credentials",
        ),
        (
            "missing table",
            with("TABLES", "nope"),
            vec!["-v"],
            2,
            "'nope'",
        ),
        (
            "missing bucket",
            with("S3_OUTPUT", "s3://nope/x"),
            vec!["-v"],
            2,
            "bucket 'nope' does not exist",
        ),
        (
            "unreachable database",
            with("PGPORT", &closed),
            vec!["-v"],
            1,
            "cannot connect to PostgreSQL",
        ),
        (
            "database url with unencoded / and ?",
            with("DATABASE_URL", &raw_url),
            vec!["-v"],
            2,
            "percent-encode",
        ),
        (
            "pushgateway url with a password, unreachable",
            with("PUSHGATEWAY_URL", gateway),
            vec!["-v"],
            0,
            "could not push the metrics",
        ),
        ("help", good.clone(), vec!["--help"], 0, "Usage:"),
        (
            "help with a pushgateway password",
            with("PUSHGATEWAY_URL", gateway),
            vec!["--help"],
            0,
            "PUSHGATEWAY_URL",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (i, (name, env, args, code, marker)) in cases.into_iter().enumerate() {
        let log = dir.path().join(format!("termination-{i}"));
        let mut args = args;
        let log_arg = log.display().to_string();
        if !name.starts_with("help") {
            args.extend(["--termination-log", log_arg.as_str()]);
        }
        let out = run(&env, &args);
        let case = SecretCase {
            name,
            program: "egress-dump",
            code,
            marker,
            log: &log,
            secrets: &[PASSWORD, SECRET],
        };
        assert_secrets_kept(&case, &out);
    }
}

#[test]
fn termination_log_gets_a_one_paragraph_summary() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("termination-log");
    let out = run(
        &[("TABLES".into(), "t".into()), ("PGPORT".into(), "1".into())],
        &["--termination-log", log.to_str().unwrap()],
    );
    assert_exit(&out, 1);
    let summary = std::fs::read_to_string(&log).unwrap();
    assert!(
        summary.starts_with("egress-dump failed (exit 1): cannot connect to PostgreSQL"),
        "{summary}"
    );
    assert_eq!(summary.lines().count(), 1);
    let _ = Path::new(&log);
}

/// A helper process stopped when the test ends, even by a panic.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn notices_raised_while_a_table_is_read_leave_its_rows_whole() {
    // PostgreSQL sends a NoticeResponse between the rows of a COPY when the query raises one;
    // the connection's guard, which reads the rows below the driver, passes it on and goes on.
    let pg = PgServer::start();
    pg.client()
        .await
        .batch_execute(
            "CREATE FUNCTION noisy(i int) RETURNS int LANGUAGE plpgsql AS \
             $$ BEGIN IF i % 1000 = 0 THEN RAISE NOTICE 'row %', i; END IF; RETURN i; END $$; \
             CREATE VIEW loud AS SELECT noisy(i) AS i, repeat(md5(i::text), 3) AS s \
             FROM generate_series(1, 20000) i",
        )
        .await
        .unwrap();
    let expected: String = (1..=20000)
        .map(|i| {
            let md5 = hex::encode(<md5::Md5 as md5::Digest>::digest(i.to_string()));
            format!("{i},{}\n", md5.repeat(3))
        })
        .collect();
    for format in ["csv", "parquet"] {
        let out = tempfile::tempdir().unwrap();
        let dir = out.path().to_str().unwrap();
        let args = [
            "--tables", "loud", "--output", dir, "--date", DATE, "--format", format,
        ];
        let done = run(&pg.env(), &args);
        assert_exit_why(&done, 0, &format!("{format} with notices between the rows"));
        let log = String::from_utf8_lossy(&done.stdout);
        assert!(log.contains("rows=20000"), "{log}");
        if format == "csv" {
            let object = out.path().join(DATE).join("loud.csv.gz");
            let csv = gunzip(&std::fs::read(object).unwrap());
            assert!(csv == expected.as_bytes(), "the rows, byte for byte");
        }
    }
}

#[tokio::test]
async fn a_table_whose_reading_changes_a_setting_that_shapes_values_fails_and_the_next_is_whole() {
    // A view calling set_config('client_encoding', ...) left the session in LATIN9: the
    // next table on the connection was written in LATIN9, exit 0 (an adversarial run).
    let pg = PgServer::start();
    pg.client()
        .await
        .batch_execute(
            "CREATE TABLE utf (id int, t text); INSERT INTO utf VALUES (1, 'café'), (2, 'naïve €'); \
             CREATE FUNCTION latin9() RETURNS int LANGUAGE sql AS \
             $$ SELECT 1 FROM (SELECT set_config('client_encoding', 'LATIN9', false)) s $$; \
             CREATE VIEW a_latin9 AS SELECT latin9() AS x; \
             CREATE FUNCTION dmy() RETURNS int LANGUAGE sql AS \
             $$ SELECT 1 FROM (SELECT set_config('DateStyle', 'SQL, DMY', false)) s $$; \
             CREATE VIEW b_dmy AS SELECT dmy() AS x",
        )
        .await
        .unwrap();
    let want = pg.psql("COPY utf TO STDOUT (FORMAT csv)");
    for (view, setting) in [("a_latin9", "client_encoding"), ("b_dmy", "DateStyle")] {
        for format in ["csv", "parquet"] {
            let out = tempfile::tempdir().unwrap();
            let dir = out.path().to_str().unwrap();
            let tables = format!("{view},utf");
            let args = [
                "--tables",
                &tables,
                "--output",
                dir,
                "--date",
                DATE,
                "--format",
                format,
                "--jobs",
                "1",
                "--keep-going",
            ];
            let done = run(&pg.env(), &args);
            assert_exit_why(&done, 1, &format!("{format}: {view} changes {setting}"));
            let log = String::from_utf8_lossy(&done.stdout);
            assert!(
                log.contains(&format!("changed the session's {setting}")) && log.contains(view),
                "{log}"
            );
            let day = out.path().join(DATE);
            let ext = if format == "csv" { "csv.gz" } else { "parquet" };
            assert!(
                !day.join(format!("{view}.{ext}")).exists(),
                "{view}: no object"
            );
            assert!(!day.join("_manifest.json").exists(), "no manifest");
            if format == "csv" {
                let csv = gunzip(&std::fs::read(day.join("utf.csv.gz")).unwrap());
                assert_eq!(
                    String::from_utf8_lossy(&csv),
                    String::from_utf8_lossy(&want)
                );
            }
        }
    }
}
