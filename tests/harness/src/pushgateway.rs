//! A real Prometheus Pushgateway (Debian's `prometheus-pushgateway`) on a free loopback
//! port, scraped the way Prometheus does (`GET /metrics`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::process::{find_binary, wait_for_port};

/// A running Pushgateway; stopped when dropped.
pub struct Pushgateway {
    /// `http://127.0.0.1:<port>`
    pub url: String,
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

/// One scraped sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

impl Pushgateway {
    /// Start one.
    pub fn start() -> Pushgateway {
        let bin = find_binary(
            "prometheus-pushgateway",
            "PUSHGATEWAY",
            &[PathBuf::from("/usr/bin")],
            "apt-get install prometheus-pushgateway",
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let port = crate::free_port();
        let log_path = dir.path().join("pushgateway.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let child = Command::new(bin)
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("clone log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start prometheus-pushgateway");
        wait_for_port(port, Duration::from_secs(30), "the Pushgateway", &log_path);
        Pushgateway {
            url: format!("http://127.0.0.1:{port}"),
            port,
            child,
            _dir: dir,
        }
    }

    /// The exposition text of `GET /metrics`.
    pub fn scrape(&self) -> String {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port))
            .expect("connect to the Pushgateway");
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .expect("send the scrape");
        let mut reply = String::new();
        stream.read_to_string(&mut reply).expect("read the scrape");
        match reply.split_once("\r\n\r\n") {
            Some((head, body))
                if head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200") =>
            {
                body.to_string()
            }
            _ => panic!("the Pushgateway answered: {reply}"),
        }
    }

    /// A path for a metrics file named `name`, in this Pushgateway's own temporary folder.
    pub fn file(&self, name: &str) -> PathBuf {
        self._dir.path().join(name)
    }

    /// The flags that push a run's metrics here and write them to `file` too.
    pub fn flags<'a>(&'a self, file: &'a Path) -> [&'a str; 4] {
        let file = file.to_str().expect("a UTF-8 path");
        ["--pushgateway", &self.url, "--metrics-file", file]
    }

    /// [`Pushgateway::samples`] of `job`, once the lines Prometheus scrapes for it are
    /// printed (shown with --no-capture).
    pub fn samples_shown(&self, job: &str) -> Vec<Sample> {
        let wanted = format!("job=\"{job}\"");
        for line in self.scrape().lines().filter(|l| l.contains(&wanted)) {
            println!("{line}");
        }
        self.samples(job)
    }

    /// The scraped samples pushed under `job`.
    pub fn samples(&self, job: &str) -> Vec<Sample> {
        parse(&self.scrape())
            .into_iter()
            .filter(|s| s.labels.get("job").map(String::as_str) == Some(job))
            .collect()
    }
}

impl Drop for Pushgateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Assert that `samples` (each metric's value read by `read`) show a last run that exited
/// with `code`, and the last success still at `success`.
#[track_caller]
pub fn assert_last_run(
    samples: &[Sample],
    read: impl Fn(&[Sample], &str) -> f64,
    code: f64,
    success: f64,
) {
    assert_eq!(read(samples, "egress_last_run_exit_code"), code);
    let last_success = read(samples, "egress_last_success_timestamp_seconds");
    assert_eq!(last_success, success, "the last success stays");
}

/// The samples of an exposition text (comments skipped; label values unescaped).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let (series, value) = line.rsplit_once(' ')?;
    let value = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        None => (series.to_string(), BTreeMap::new()),
        Some((name, rest)) => (name.to_string(), parse_labels(rest.strip_suffix('}')?)),
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => value.push(other),
                    None => {}
                },
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').to_string(), value);
        rest = &after[end..];
    }
    labels
}

/// Assert that `promtool check metrics` accepts the metrics file at `path` (Debian package
/// `prometheus`; a missing promtool fails with the command that installs it).
pub fn assert_promtool_accepts(path: &std::path::Path) {
    let promtool = crate::process::find_binary(
        "promtool",
        "PROMTOOL",
        &[std::path::PathBuf::from("/usr/bin")],
        "apt-get install prometheus",
    );
    let check = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(path).expect("open the metrics file"))
        .output()
        .expect("run promtool");
    assert!(
        check.status.success(),
        "promtool check metrics: {}",
        crate::text(&check)
    );
}
