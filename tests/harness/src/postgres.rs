//! An ephemeral PostgreSQL cluster: `initdb` into a temp dir, `pg_ctl start` on a free port.

use std::path::PathBuf;
use std::process::Command;

use crate::process::{find_binary, RunAs};

/// Superuser password of every test cluster.
pub const PASSWORD: &str = "egress-test-pw";
/// Superuser name of every test cluster.
pub const USER: &str = "postgres";

/// A running test cluster; stopped (immediate mode) and deleted on drop.
pub struct PgServer {
    /// TCP port on 127.0.0.1.
    pub port: u16,
    bin: PathBuf,
    data: PathBuf,
    run_as: RunAs,
    _dir: tempfile::TempDir,
}

fn bindir() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            dirs.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
        }
    }
    for v in ["17", "16", "15", "14"] {
        dirs.push(PathBuf::from(format!("/usr/lib/postgresql/{v}/bin")));
    }
    dirs
}

impl PgServer {
    /// Start a cluster with password (scram) authentication over TCP.
    pub fn start() -> PgServer {
        Self::start_with(&[])
    }

    /// Start a cluster with extra `postgresql.conf` lines.
    pub fn start_with(extra_conf: &[&str]) -> PgServer {
        let install = "apt-get install postgresql-15 (or set PG_BINDIR)";
        let dirs = match std::env::var_os("PG_BINDIR") {
            Some(d) => vec![PathBuf::from(d)],
            None => bindir(),
        };
        let initdb = find_binary("initdb", "PG_INITDB", &dirs, install);
        let bin = initdb.parent().map(PathBuf::from).unwrap_or_default();
        let run_as = RunAs::unprivileged();
        let dir = tempfile::Builder::new()
            .prefix("egress-pg-")
            .tempdir()
            .expect("temp dir");
        run_as.own(dir.path());
        let data = dir.path().join("data");
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD).expect("write password file");
        run_as.own(&pwfile);
        let mut cmd = Command::new(&initdb);
        cmd.args(["-D"]).arg(&data).args([
            "-U",
            USER,
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        cmd.arg(format!("--pwfile={}", pwfile.display()));
        run_as.apply(&mut cmd);
        crate::run_ok(&mut cmd, "initdb failed");
        launch(bin, data, run_as, dir, extra_conf)
    }

    /// A hot standby of this cluster (`pg_basebackup -R`, with a fast checkpoint: the default
    /// spread one waits up to 4.5 minutes), streaming from it, on a port of its own, with extra `postgresql.conf` lines (e.g. `max_standby_streaming_delay = 0`).
    pub fn start_standby(&self, extra_conf: &[&str]) -> PgServer {
        let dir = tempfile::Builder::new()
            .prefix("egress-pg-standby-")
            .tempdir()
            .expect("temp dir");
        self.run_as.own(dir.path());
        let data = dir.path().join("data");
        let mut cmd = Command::new(self.bin.join("pg_basebackup"));
        cmd.arg("-D")
            .arg(&data)
            .args([
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "-h",
                "127.0.0.1",
                "-U",
                USER,
            ])
            .arg("-p")
            .arg(self.port.to_string())
            .env("PGPASSWORD", PASSWORD);
        self.run_as.apply(&mut cmd);
        crate::run_ok(&mut cmd, "pg_basebackup failed");
        let mut conf = vec!["hot_standby = on"];
        conf.extend_from_slice(extra_conf);
        launch(self.bin.clone(), data, self.run_as, dir, &conf)
    }

    /// Block until the standby has replayed everything the primary (`self`) has written.
    pub fn wait_for_replay(&self, standby: &PgServer) {
        let lsn = self.value("SELECT pg_current_wal_lsn()");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let sql = format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn");
            if standby.value(&sql) == "t" {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the standby did not replay up to {lsn} in 60 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    fn pg_ctl(&self, args: &[&str]) {
        let log = self
            .data
            .parent()
            .map(|d| d.join("server.log"))
            .unwrap_or_default();
        let mut cmd = Command::new(self.bin.join("pg_ctl"));
        cmd.arg("-D").arg(&self.data).arg("-l").arg(&log).args(args);
        self.run_as.apply(&mut cmd);
        let out = cmd.output().expect("run pg_ctl");
        if !out.status.success() && args.first() != Some(&"stop") {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            panic!(
                "pg_ctl {args:?} failed: {}\n{tail}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// Put a file into the data directory, owned by the server's user, with `mode`.
    pub fn install_file(&self, name: &str, contents: &[u8], mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.data.join(name);
        std::fs::write(&path, contents).expect("write file into the data directory");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        self.run_as.own(&path);
        path
    }

    /// Directory holding the cluster (for TLS files).
    pub fn data_dir(&self) -> &std::path::Path {
        &self.data
    }

    /// Replace pg_hba.conf with `lines` (after a line that keeps the local socket trusted,
    /// for the harness itself) and reload.
    pub fn set_hba(&self, lines: &str) {
        let text = format!("local all all trust\n{lines}\n");
        self.install_file("pg_hba.conf", text.as_bytes(), 0o600);
        self.pg_ctl(&["reload"]);
        std::thread::sleep(std::time::Duration::from_millis(300));
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        let log = self.data.parent().map(|d| d.join("server.log"));
        log.and_then(|l| std::fs::read_to_string(l).ok())
            .unwrap_or_default()
    }

    /// The directory of the cluster's Unix socket.
    pub fn socket_dir(&self) -> PathBuf {
        self.data.parent().map(PathBuf::from).unwrap_or_default()
    }

    /// Restart, e.g. after changing configuration.
    pub fn restart(&self) {
        self.pg_ctl(&["restart", "-w", "-m", "fast", "-t", "60"]);
    }

    /// Environment for a client: the libpq variables.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("PGHOST".into(), "127.0.0.1".into()),
            ("PGPORT".into(), self.port.to_string()),
            ("PGUSER".into(), USER.into()),
            ("PGPASSWORD".into(), PASSWORD.into()),
            ("PGDATABASE".into(), "postgres".into()),
        ]
    }

    /// A connected client (superuser).
    pub async fn client(&self) -> tokio_postgres::Client {
        connect(self.port).await
    }

    /// Run SQL through `psql` and return its stdout bytes (the reference for byte identity).
    pub fn psql(&self, sql: &str) -> Vec<u8> {
        self.psql_with(&[], sql)
    }

    /// The single value `sql` returns, as text (`psql -At`).
    pub fn value(&self, sql: &str) -> String {
        String::from_utf8_lossy(&self.psql_with(&["-At"], sql))
            .trim()
            .to_string()
    }

    /// Start `sql` in a `psql` of its own, named `app` (its `application_name`), and
    /// return at once: for a session that waits for a lock, or holds one, while a test
    /// runs the dump. Kill or wait for the child.
    pub fn psql_session(&self, app: &str, sql: &str) -> std::process::Child {
        self.psql_command(sql)
            .env("PGAPPNAME", app)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run psql")
    }

    /// The sessions named in `apps` that are waiting for a lock now.
    pub fn waiting_for_locks(&self, apps: &[&str]) -> Vec<String> {
        let list: Vec<String> = apps.iter().map(|a| format!("'{a}'")).collect();
        let sql = format!(
            "SELECT string_agg(application_name, ',' ORDER BY application_name) FROM pg_stat_activity \
             WHERE wait_event_type = 'Lock' AND application_name IN ({})",
            list.join(",")
        );
        let found = self.value(&sql);
        found
            .split(',')
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// The backend pid of the session named `app` (0 when there is none).
    pub fn pid_of(&self, app: &str) -> i32 {
        self.value(&format!(
            "SELECT coalesce(max(pid), 0) FROM pg_stat_activity WHERE application_name = '{app}'"
        ))
        .parse()
        .unwrap_or(0)
    }

    /// `psql` as the superuser over TCP, stopping at the first error, running `sql`.
    fn psql_command(&self, sql: &str) -> Command {
        let mut cmd = Command::new(self.bin.join("psql"));
        cmd.args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-U",
            USER,
        ])
        .args(["-d", "postgres", "-p", &self.port.to_string(), "-c", sql])
        .env("PGPASSWORD", PASSWORD);
        cmd
    }

    fn psql_with(&self, extra: &[&str], sql: &str) -> Vec<u8> {
        let mut cmd = self.psql_command(sql);
        crate::run_ok(
            cmd.args(extra).env("PGCLIENTENCODING", "UTF8"),
            "psql failed",
        )
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.pg_ctl(&["stop", "-m", "immediate", "-w", "-t", "30"]);
    }
}

/// Configure the cluster in `data` (port, sockets, speed over durability, `extra_conf`)
/// and start it.
fn launch(
    bin: PathBuf,
    data: PathBuf,
    run_as: RunAs,
    dir: tempfile::TempDir,
    extra_conf: &[&str],
) -> PgServer {
    let port = crate::free_port();
    let mut conf = format!(
        "\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\nshared_buffers = 128MB\nmax_connections = 50\n",
        dir.path().display()
    );
    for line in extra_conf {
        conf.push_str(line);
        conf.push('\n');
    }
    let conf_path = data.join("postgresql.conf");
    let mut existing = std::fs::read_to_string(&conf_path).expect("read postgresql.conf");
    existing.push_str(&conf);
    std::fs::write(&conf_path, existing).expect("write postgresql.conf");
    let server = PgServer {
        port,
        bin,
        data,
        run_as,
        _dir: dir,
    };
    server.pg_ctl(&["start", "-w", "-t", "60"]);
    server
}

/// A client that commits one transaction after another on its own thread, so that it keeps
/// running while a test blocks on a child process (a writer on the test's runtime would freeze).
pub struct Writer {
    commits: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PgServer {
    /// Start a [`Writer`] committing `transaction(i)` for i = 0, 1, 2, … until stopped.
    pub fn writer(&self, transaction: impl Fn(u64) -> String + Send + 'static) -> Writer {
        use std::sync::atomic::Ordering;
        let commits = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let port = self.port;
        let (count, halt) = (commits.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("writer runtime");
            runtime.block_on(async move {
                let client = connect(port).await;
                while !halt.load(Ordering::SeqCst) {
                    let sql = transaction(count.load(Ordering::SeqCst));
                    client.batch_execute(&sql).await.expect("writer commit");
                    count.fetch_add(1, Ordering::SeqCst);
                }
            });
        });
        let writer = Writer {
            commits,
            stop,
            thread: Some(thread),
        };
        writer.wait_for(1);
        writer
    }
}

impl Writer {
    /// Transactions committed so far.
    pub fn commits(&self) -> u64 {
        self.commits.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Block until at least `n` transactions have committed (30 s at most).
    pub fn wait_for(&self, n: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.commits() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "the writer committed {} of {n} transactions in 30 s",
                self.commits()
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Stop, and return how many transactions committed in all.
    pub fn stop(mut self) -> u64 {
        self.halt();
        self.commits()
    }

    fn halt(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() && !std::thread::panicking() {
                panic!("the writer thread failed");
            }
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.halt();
    }
}

async fn connect(port: u16) -> tokio_postgres::Client {
    let conn =
        format!("host=127.0.0.1 port={port} user={USER} password={PASSWORD} dbname=postgres");
    let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .expect("connect to test PostgreSQL");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}
