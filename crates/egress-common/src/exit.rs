//! Exit codes shared by both binaries, and an error type that carries one.

use std::fmt;

/// The documented process exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// Everything asked for was done.
    Success = 0,
    /// A runtime failure: connection lost, upload failed, a transfer failed.
    Runtime = 1,
    /// Usage, configuration or credentials problem: fix the input and run again.
    Usage = 2,
    /// Interrupted by SIGINT (128 + 2).
    Interrupted = 130,
    /// Terminated by SIGTERM (128 + 15).
    Terminated = 143,
}

impl ExitCode {
    /// The numeric process exit status.
    pub fn code(self) -> i32 {
        self as i32
    }
}

/// An error that knows which exit code it should end the process with.
#[derive(Debug)]
pub struct Failure {
    /// Exit code the binary should return.
    pub code: ExitCode,
    /// The underlying error, with context.
    pub error: anyhow::Error,
}

impl Failure {
    /// A usage / configuration failure (exit 2).
    pub fn usage(error: impl Into<anyhow::Error>) -> Self {
        Failure {
            code: ExitCode::Usage,
            error: error.into(),
        }
    }

    /// A runtime failure (exit 1).
    pub fn runtime(error: impl Into<anyhow::Error>) -> Self {
        Failure {
            code: ExitCode::Runtime,
            error: error.into(),
        }
    }

    /// Render the error chain as one line (`outer: inner: cause`).
    pub fn one_line(&self) -> String {
        one_line(&self.error)
    }
}

/// Render an error chain as a single line, dropping repeated messages.
pub fn one_line(error: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in error.chain() {
        let text = cause.to_string().replace('\n', " ");
        let text = text.trim().to_string();
        if text.is_empty() || parts.iter().any(|p| p.contains(&text)) {
            continue;
        }
        parts.push(text);
    }
    parts.join(": ")
}

/// Render a standard error and its sources as one line (without Debug dumps).
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        let text = e.to_string().replace('\n', " ");
        let text = text.trim().to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = e.source();
    }
    parts.join(": ")
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.one_line())
    }
}

impl std::error::Error for Failure {}

/// Attach an exit code to any error convertible to `anyhow::Error`.
pub trait ResultExt<T> {
    /// Mark the error as a usage / configuration error (exit 2).
    fn usage_err(self) -> Result<T, Failure>;
    /// Mark the error as a runtime error (exit 1).
    fn runtime_err(self) -> Result<T, Failure>;
}

impl<T, E: Into<anyhow::Error>> ResultExt<T> for Result<T, E> {
    fn usage_err(self) -> Result<T, Failure> {
        self.map_err(Failure::usage)
    }
    fn runtime_err(self) -> Result<T, Failure> {
        self.map_err(Failure::runtime)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn one_line_joins_chain_and_drops_duplicates() {
        let err: anyhow::Result<()> = Err(anyhow::anyhow!("connection refused\n(os error 111)"));
        let err = err.context("cannot reach the database").unwrap_err();
        assert_eq!(
            one_line(&err),
            "cannot reach the database: connection refused (os error 111)"
        );
    }

    #[test]
    fn codes_are_documented_values() {
        assert_eq!(ExitCode::Usage.code(), 2);
        assert_eq!(ExitCode::Terminated.code(), 143);
    }
}
