//! Log set-up: plain text or JSON lines on stdout, as a CronJob's log collector expects.

use tracing_subscriber::EnvFilter;

/// Output format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `2026-01-01T00:00:00Z INFO message key=value`
    Text,
    /// One JSON object per line.
    Json,
}

/// Install the global subscriber. `verbosity` counts `-v` flags: 0 info, 1 debug, 2+ trace
/// for our own crates. Third-party crates (the AWS SDK, hyper) stay at `warn` so that
/// request details never reach the log.
pub fn init(format: LogFormat, verbosity: u8, quiet: bool) {
    let ours = match (quiet, verbosity) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        _ => "trace",
    };
    let directives = format!(
        "warn,egress_store={ours},egress_common={ours},egress_dump={ours},egress_sync={ours}"
    );
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .with_target(false)
        .with_timer(tracing_subscriber::fmt::time::ChronoUtc::new(
            "%Y-%m-%dT%H:%M:%S%.3fZ".to_string(),
        ));
    // A second init (tests calling the library twice) is harmless; ignore it.
    let _ = match format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}
