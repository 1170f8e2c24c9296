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
        .with_writer(|| OneLine(std::io::stdout()))
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

/// A writer that keeps each log event on one line: a key or a server's message holding a
/// line break (or another control character) is written escaped (`\\n`, `\\x1b`), so it
/// cannot forge a line of its own (a key `a\\nFAKE ERROR ...` did, in text logs, found by
/// an adversarial run). The fmt layer writes each event whole, ending in one line break.
struct OneLine<W>(W);

impl<W: std::io::Write> std::io::Write for OneLine<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (body, end) = match buf.split_last() {
            Some((b'\n', body)) => (body, &b"\n"[..]),
            _ => (buf, &b""[..]),
        };
        if !body.iter().any(|b| b.is_ascii_control() && *b != b'\t') {
            self.0.write_all(buf)?;
            return Ok(buf.len());
        }
        let mut line = Vec::with_capacity(buf.len() + 16);
        for &b in body {
            match b {
                b'\n' => line.extend_from_slice(b"\\n"),
                b'\r' => line.extend_from_slice(b"\\r"),
                b'\t' => line.push(b),
                b if b.is_ascii_control() => {
                    line.extend_from_slice(format!("\\x{b:02x}").as_bytes())
                }
                b => line.push(b),
            }
        }
        line.extend_from_slice(end);
        self.0.write_all(&line)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    #[test]
    fn an_event_stays_on_one_line_whatever_its_fields_hold() {
        let mut out = super::OneLine(Vec::new());
        out.write_all(b"INFO copied key=a\nFAKE ERROR forged\r\x1b[31m\tok\n")
            .unwrap();
        out.write_all(b"INFO plain\n").unwrap();
        assert_eq!(
            String::from_utf8(out.0).unwrap(),
            "INFO copied key=a\\nFAKE ERROR forged\\r\\x1b[31m\tok\nINFO plain\n"
        );
    }
}
