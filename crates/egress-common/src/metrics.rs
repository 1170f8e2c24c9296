//! What a run reports to monitoring, in the Prometheus text format: written to a file
//! (`--metrics-file`, for a node-exporter textfile collector or a sidecar) and/or pushed to
//! a Pushgateway (`--pushgateway`), at the end of every run, success or failure.
//!
//! The Pushgateway's batch-job conventions: the grouping key is `job` (the program) and
//! `instance` (`""` unless `--metrics-instance` says otherwise: never the pod name, whose
//! series would pile up forever). A successful run PUTs, replacing the group, so tables no
//! longer dumped disappear; a failed run POSTs only the run's own figures, so the success
//! timestamp and the last good day's figures stay. A failed push or write is a warning,
//! never a failed run.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;

use egress_store::{redact_urls, Secret};

/// Where the metrics go, from the command line.
#[derive(Debug, Clone, clap::Args)]
pub struct MetricsArgs {
    /// Write the run's metrics (Prometheus text format) to this file at the end of every
    /// run, atomically: for a node-exporter textfile collector or a sidecar.
    #[arg(long, env = "METRICS_FILE")]
    pub metrics_file: Option<PathBuf>,

    /// Push the run's metrics to this Prometheus Pushgateway (`http://host:9091`) at the
    /// end of every run.
    #[arg(long, env = "PUSHGATEWAY_URL", hide_env_values = true)]
    pub pushgateway: Option<Secret>,

    /// The `instance` label of the pushed group (default empty: one group per program).
    #[arg(long, env = "METRICS_INSTANCE", default_value = "")]
    pub metrics_instance: String,

    /// More labels for the run's group and every series, chosen by the program: a
    /// backfill's `date`, so that it never moves the nightly group's alerts.
    #[arg(skip)]
    pub grouping: Vec<(&'static str, String)>,
}

impl MetricsArgs {
    /// No metrics at all (a dry run, a check: they are not runs the alerts watch).
    pub fn off(&mut self) {
        self.metrics_file = None;
        self.pushgateway = None;
    }
}

/// One metric family: a name, its help, and its samples (all gauges: each describes the
/// last run).
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    /// Metric name.
    pub name: &'static str,
    /// HELP text.
    pub help: &'static str,
    /// Label pairs and value of each sample.
    pub samples: Vec<(Vec<(&'static str, String)>, f64)>,
}

impl Family {
    /// A family with one unlabelled sample.
    pub fn single(name: &'static str, help: &'static str, value: f64) -> Family {
        Family {
            name,
            help,
            samples: vec![(Vec::new(), value)],
        }
    }

    /// A family with one sample per `(label value, value)`, all under `label`.
    pub fn by(
        name: &'static str,
        help: &'static str,
        label: &'static str,
        values: impl IntoIterator<Item = (String, f64)>,
    ) -> Family {
        Family {
            name,
            help,
            samples: values
                .into_iter()
                .map(|(v, x)| (vec![(label, v)], x))
                .collect(),
        }
    }
}

/// How a run ended, for the run-level metrics.
#[derive(Debug, Clone, Copy)]
pub struct RunOutcome {
    /// When it started.
    pub started: SystemTime,
    /// When it ended.
    pub ended: SystemTime,
    /// Its exit code.
    pub exit_code: i32,
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}

/// The run-level families every run reports; the success timestamp only on success.
pub fn run_families(outcome: &RunOutcome) -> Vec<Family> {
    let ended = unix_seconds(outcome.ended);
    let duration = outcome
        .ended
        .duration_since(outcome.started)
        .unwrap_or(Duration::ZERO);
    let mut families = vec![
        Family::single(
            "egress_last_run_timestamp_seconds",
            "When the last run ended (Unix time).",
            ended,
        ),
        Family::single(
            "egress_last_run_exit_code",
            "Exit code of the last run (0 success, 1 runtime failure, 2 configuration, 3 busy, 130/143 stopped).",
            f64::from(outcome.exit_code),
        ),
        Family::single(
            "egress_run_duration_seconds",
            "How long the last run took.",
            duration.as_secs_f64(),
        ),
    ];
    if outcome.exit_code == 0 {
        families.push(Family::single(
            "egress_last_success_timestamp_seconds",
            "When the last successful run ended (Unix time).",
            ended,
        ));
    }
    families
}

/// The families in the Prometheus text exposition format (0.0.4).
pub fn render(families: &[Family]) -> String {
    let mut out = String::new();
    for family in families {
        let _ = writeln!(out, "# HELP {} {}", family.name, escape_help(family.help));
        let _ = writeln!(out, "# TYPE {} gauge", family.name);
        for (labels, value) in &family.samples {
            out.push_str(family.name);
            if !labels.is_empty() {
                let pairs: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                    .collect();
                let _ = write!(out, "{{{}}}", pairs.join(","));
            }
            let _ = writeln!(out, " {}", format_value(*value));
        }
    }
    out
}

fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn format_value(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

/// Write and push the metrics of a run of `job` as `args` configure (the run's own, and
/// the program's `details`); problems are logged as warnings and never change the run's
/// outcome.
pub fn publish(args: &MetricsArgs, job: &str, outcome: &RunOutcome, details: Vec<Family>) {
    let success = outcome.exit_code == 0;
    let mut families = run_families(outcome);
    families.extend(details);
    for family in &mut families {
        for (labels, _) in &mut family.samples {
            labels.extend(args.grouping.iter().cloned());
        }
    }
    let text = render(&families);
    if let Some(path) = &args.metrics_file {
        if let Err(e) = write_atomically(path, &text) {
            tracing::warn!(path = %path.display(), "could not write the metrics file: {e}");
        }
    }
    if let Some(url) = &args.pushgateway {
        let group = group_url(url.expose(), job, &args.metrics_instance, &args.grouping);
        match push(&group, &text, success) {
            Ok(()) => tracing::debug!("metrics pushed to the Pushgateway"),
            Err(e) => tracing::warn!(
                pushgateway = %redact_urls(url.expose()),
                "could not push the metrics: {e}; the run's outcome is unchanged"
            ),
        }
    }
}

/// Replace `path` with `text` in one step (a temporary file beside it, then a rename), so
/// a collector never reads half a file.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "metrics".into());
    let temp = dir.join(format!(".{name}.tmp-{}", rand::random::<u64>()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// The group's URL: `<base>/metrics/job/<job>/instance@base64/<instance>`, then each
/// `extra` label the same way (base64url, so any value, the empty one included, is a valid
/// path segment).
pub fn group_url(base: &str, job: &str, instance: &str, extra: &[(&str, String)]) -> String {
    let encode = |value: &str| {
        let encoded = base64::engine::general_purpose::URL_SAFE.encode(value.as_bytes());
        if encoded.is_empty() {
            "=".to_string()
        } else {
            encoded
        }
    };
    let mut url = format!(
        "{}/metrics/job/{job}/instance@base64/{}",
        base.trim_end_matches('/'),
        encode(instance)
    );
    for (label, value) in extra {
        url.push_str(&format!("/{label}@base64/{}", encode(value)));
    }
    url
}

fn push(url: &str, text: &str, success: bool) -> Result<(), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let request = if success {
        agent.put(url)
    } else {
        agent.post(url)
    };
    request
        .header("Content-Type", "text/plain; version=0.0.4")
        .send(text)
        .map(|_| ())
        .map_err(|e| redact_urls(&e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_help_type_labels_and_escapes() {
        let text = render(&[
            Family::single("egress_run_duration_seconds", "How long.", 1.5),
            Family::by(
                "egress_dump_rows",
                "Rows.",
                "table",
                [("a\"b\\c".to_string(), 3.0)],
            ),
        ]);
        assert_eq!(
            text,
            "# HELP egress_run_duration_seconds How long.\n# TYPE egress_run_duration_seconds gauge\n\
             egress_run_duration_seconds 1.5\n# HELP egress_dump_rows Rows.\n# TYPE egress_dump_rows gauge\n\
             egress_dump_rows{table=\"a\\\"b\\\\c\"} 3\n"
        );
    }

    #[test]
    fn a_failed_run_reports_no_success_timestamp() {
        let started = UNIX_EPOCH + Duration::from_secs(1000);
        let ended = started + Duration::from_secs(5);
        let names = |code| -> Vec<&str> {
            run_families(&RunOutcome {
                started,
                ended,
                exit_code: code,
            })
            .iter()
            .map(|f| f.name)
            .collect()
        };
        assert!(names(0).contains(&"egress_last_success_timestamp_seconds"));
        assert!(!names(1).contains(&"egress_last_success_timestamp_seconds"));
        assert!(names(2).contains(&"egress_last_run_exit_code"));
    }

    #[test]
    fn group_urls_encode_any_instance() {
        assert_eq!(
            group_url("http://pg:9091/", "egress-dump", "", &[]),
            "http://pg:9091/metrics/job/egress-dump/instance@base64/="
        );
        assert_eq!(
            group_url("http://pg:9091", "egress-sync", "a/b", &[]),
            "http://pg:9091/metrics/job/egress-sync/instance@base64/YS9i"
        );
        let backfill = [("date", "2024-01-31".to_string())];
        assert_eq!(
            group_url("http://pg:9091", "egress-dump", "", &backfill),
            "http://pg:9091/metrics/job/egress-dump/instance@base64/=/date@base64/MjAyNC0wMS0zMQ=="
        );
    }

    #[test]
    fn the_file_is_replaced_whole() {
        let dir = std::env::temp_dir().join(format!("egress-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("egress.prom");
        write_atomically(&file, "a 1\n").unwrap();
        write_atomically(&file, "b 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "b 2\n");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary left"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
