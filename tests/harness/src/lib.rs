//! Test harness for egress: real servers (PostgreSQL, S3 look-alikes, Ceph RGW) on
//! loopback, torn down when dropped (also when a test panics). A missing server binary
//! fails the test with install instructions; it never skips.

pub mod ceph;
pub mod fixtures;
pub mod overlap;
pub mod postgres;
pub mod process;
pub mod proxy;
pub mod pushgateway;
pub mod s3;

pub use ceph::CephRgw;
pub use postgres::PgServer;
pub use s3::{Endpoint, S3Endpoint, S3Kind, S3Server};

/// A command for one of our binaries with a clean environment: only PATH and HOME are
/// inherited, so nothing from the developer's shell (AWS_*, PG*) leaks into a test.
pub fn clean_command(binary: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(binary);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::var("HOME").unwrap_or_default())
        .env("AWS_EC2_METADATA_DISABLED", "true");
    cmd
}

/// Exit code, stdout and stderr of a finished command, for assertion messages.
pub fn text(out: &std::process::Output) -> String {
    format!(
        "exit={:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Assert that a run printed `needle` on stdout or stderr (its whole output in the message).
#[track_caller]
pub fn assert_text_has(out: &std::process::Output, needle: &str) {
    assert!(text(out).contains(needle), "{}", text(out));
}

/// Run `cmd` to the end, capturing its exit code, stdout and stderr.
pub fn run(cmd: &mut std::process::Command) -> std::process::Output {
    cmd.output().expect("run the command")
}

/// Run `cmd` to the end and return its stdout; the test fails naming `what`, with its
/// stderr, unless it succeeds.
pub fn run_ok(cmd: &mut std::process::Command, what: &str) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Assert that a run ended with exit code `code` (its whole output in the message).
#[track_caller]
pub fn assert_exit(out: &std::process::Output, code: i32) {
    assert_eq!(out.status.code(), Some(code), "{}", text(out));
}

/// Assert that a run ended with exit code `code`: `why` and its whole output in the message.
#[track_caller]
pub fn assert_exit_why(out: &std::process::Output, code: i32, why: &str) {
    assert_eq!(out.status.code(), Some(code), "{why}: {}", text(out));
}

/// Assert that a run ended with `code` and said why in one line of stderr holding
/// `needle`; returns that line.
#[track_caller]
pub fn assert_one_line(out: &std::process::Output, code: i32, needle: &str) -> String {
    assert_exit(out, code);
    let line = stderr(out);
    assert!(line.contains(needle), "{line}");
    assert_eq!(line.trim().lines().count(), 1, "one line: {line}");
    line
}

/// Assert that a run printed `needle` on stderr (its whole output in the message).
#[track_caller]
pub fn assert_stderr_has(out: &std::process::Output, needle: &str) {
    assert!(stderr(out).contains(needle), "{}", text(out));
}

/// A run's stdout.
pub fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Assert that a run printed `needle` on stdout (its whole output in the message).
#[track_caller]
pub fn assert_stdout_has(out: &std::process::Output, needle: &str) {
    assert!(stdout(out).contains(needle), "{}", text(out));
}

/// A run's stderr.
pub fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The last line a run printed on stdout (our binaries' summary line).
pub fn last_line(out: &std::process::Output) -> String {
    stdout(out).lines().last().unwrap_or("").to_string()
}

/// Assert that a run's last line holds `needle` (its whole output in the message).
#[track_caller]
pub fn assert_last_line_has(out: &std::process::Output, needle: &str) {
    assert!(last_line(out).contains(needle), "{}", text(out));
}

/// The capability lines a `--check` run printed, as `(status, "side capability")` pairs
/// (`("ok", "output list")`).
pub fn check_lines(out: &std::process::Output) -> Vec<(String, String)> {
    stdout(out)
        .lines()
        .filter(|l| l.starts_with("ok ") || l.starts_with("absent ") || l.starts_with("FAIL "))
        .map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            let capability = l.get(16..42).map(str::trim).unwrap_or_default();
            (fields[0].to_string(), format!("{} {capability}", fields[1]))
        })
        .collect()
}

/// Assert that a `--check` run named `name` ended with exit 0 and that each of
/// `capabilities` has a line, every one of its lines `ok`; returns its capability lines (its
/// stdout printed: shown with --no-capture).
#[track_caller]
pub fn assert_check_ok(
    out: &std::process::Output,
    name: &str,
    capabilities: &[&str],
) -> Vec<(String, String)> {
    assert_exit_why(out, 0, name);
    println!("--- {name}\n{}", stdout(out));
    let lines = check_lines(out);
    for capability in capabilities {
        let mut statuses = lines
            .iter()
            .filter(|(_, c)| c == capability)
            .map(|(s, _)| s);
        let first = statuses.next();
        assert!(
            first.is_some_and(|s| s == "ok") && statuses.all(|s| s == "ok"),
            "{name}: {capability}: {lines:?}"
        );
    }
    lines
}

/// The peak resident set a run reports on its last line (`peak_rss_mib=`).
pub fn peak_rss_mib(out: &std::process::Output) -> f64 {
    let line = last_line(out);
    line.split_whitespace()
        .find_map(|f| f.strip_prefix("peak_rss_mib="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no peak_rss_mib on the last line: {line}"))
}

/// Wait for `child` to end, at most `limit` (killed then, and the test fails).
pub fn wait_for_exit(
    mut child: std::process::Child,
    limit: std::time::Duration,
) -> std::process::Output {
    let start = std::time::Instant::now();
    while child.try_wait().expect("wait for the child").is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("wait for the child");
            panic!("the run did not end within {limit:?}: {}", text(&out));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().expect("wait for the child")
}

/// Assert that `run` has not ended yet (`why` it must not have, in the message).
#[track_caller]
pub fn assert_running(run: &mut std::process::Child, why: &str) {
    assert!(run.try_wait().expect("poll the child").is_none(), "{why}");
}

/// The end of a wait: the test fails once it is past.
pub struct Deadline(std::time::Instant);

impl Deadline {
    /// `limit` from now.
    pub fn after(limit: std::time::Duration) -> Deadline {
        Deadline(std::time::Instant::now() + limit)
    }

    /// Fail the test with `what` (what did not happen in time) if the deadline is past.
    #[track_caller]
    pub fn check(&self, what: &str) {
        assert!(std::time::Instant::now() < self.0, "{what}");
    }
}

/// Assert that none of `keys` is one `unwanted` picks: `what` (what must not be there)
/// and the keys in the message.
#[track_caller]
pub fn assert_none(keys: &[String], what: &str, unwanted: impl Fn(&str) -> bool) {
    assert!(!keys.iter().any(|k| unwanted(k)), "{what}: {keys:?}");
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> u16 {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port on 127.0.0.1");
    listener.local_addr().expect("local address").port()
}

/// Gunzip `data` fully, panicking on an invalid stream.
pub fn gunzip(data: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(data)
        .read_to_end(&mut out)
        .expect("valid gzip stream");
    out
}

/// Hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// Parse a manifest the programs produced, after validating it against
/// `schema/manifest.schema.json` with Python's `jsonschema` (the reference implementation;
/// the test venv has it), so that every produced manifest is held to the published schema.
pub fn checked_manifest(bytes: &[u8]) -> serde_json::Value {
    use std::io::Write;
    let schema = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../schema/manifest.schema.json"
    );
    let python = process::find_binary(
        "python",
        "EGRESS_PY",
        &[std::path::PathBuf::from("/opt/egress-py/bin")],
        "bash scripts/install-test-deps.sh (a venv at /opt/egress-py with jsonschema)",
    );
    let check = "import json, sys, jsonschema\n\
        schema = json.load(open(sys.argv[1]))\n\
        jsonschema.validators.validator_for(schema)(schema).validate(json.load(sys.stdin))\n";
    let mut child = std::process::Command::new(python)
        .args(["-c", check, schema])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run python jsonschema");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(bytes)
        .expect("send the manifest");
    let out = child.wait_with_output().expect("python jsonschema");
    assert!(
        out.status.success(),
        "the manifest does not follow schema/manifest.schema.json:\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(bytes)
    );
    serde_json::from_slice(bytes).expect("manifest is JSON")
}

/// One case of a secrets test: which program ran, how it must end, what it must print,
/// where its termination log went, and the secrets it was given.
pub struct SecretCase<'a> {
    /// The case's name (`help...` cases write no termination log).
    pub name: &'a str,
    /// The binary's name, as its termination log starts.
    pub program: &'a str,
    /// The exit code the case must end with.
    pub code: i32,
    /// Text the output must contain.
    pub marker: &'a str,
    /// The termination log file.
    pub log: &'a std::path::Path,
    /// Secrets that must appear nowhere (every one starts with `SENTINEL` too).
    pub secrets: &'a [&'a str],
}

/// Assert that `out` ended as `case` says and that no secret, nor any part of one
/// (`SENTINEL`), reached stdout, stderr or the termination log.
pub fn assert_secrets_kept(case: &SecretCase<'_>, out: &std::process::Output) {
    let (name, all) = (case.name, text(out));
    assert_eq!(out.status.code(), Some(case.code), "{name}: {all}");
    assert!(
        all.contains(case.marker),
        "{name}: no '{}' in:\n{all}",
        case.marker
    );
    let summary = std::fs::read_to_string(case.log).unwrap_or_default();
    let expected = match case.code {
        _ if name.starts_with("help") => String::new(),
        0 => format!("{} succeeded", case.program),
        _ => format!("{} failed", case.program),
    };
    assert!(
        summary.starts_with(&expected),
        "{name}: termination log {summary:?}"
    );
    assert!(!all.contains("SENTINEL"), "{name}: a secret leaked:\n{all}");
    for secret in case.secrets {
        assert!(!all.contains(secret), "{name}: a secret leaked:\n{all}");
        assert!(
            !summary.contains(secret),
            "{name}: a secret leaked into the termination log:\n{summary}"
        );
    }
}

/// Run each case, `(name, exit code, marker, how)`: `run` is given its name, `how` and the
/// path of a termination log of its own; then assert of it what [`assert_secrets_kept`]
/// asserts, for `program` and its `secrets`.
pub fn assert_cases_keep_secrets<'a, T>(
    program: &str,
    secrets: &[&str],
    cases: impl IntoIterator<Item = (&'a str, i32, &'a str, T)>,
    mut run: impl FnMut(&str, T, &std::path::Path) -> std::process::Output,
) {
    let dir = tempfile::tempdir().expect("temp dir");
    for (i, (name, code, marker, how)) in cases.into_iter().enumerate() {
        let log = dir.path().join(format!("termination-{i}"));
        let out = run(name, how, &log);
        let case = SecretCase {
            name,
            program,
            code,
            marker,
            log: &log,
            secrets,
        };
        assert_secrets_kept(&case, &out);
    }
}
