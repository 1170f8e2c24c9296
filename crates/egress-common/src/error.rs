//! Errors shared by both binaries, the documented exit codes, and the one helper that
//! renders any error chain as a single line.

/// The documented process exit codes; each binary's `main` chooses one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// Everything asked for was done.
    Success = 0,
    /// A runtime failure: connection lost, upload failed, a transfer failed.
    Runtime = 1,
    /// Usage, configuration or credentials problem: fix the input and run again.
    Usage = 2,
    /// Another run holds the lease on the same output (see the README): try later.
    Busy = 3,
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

/// Wrong input (a flag, a variable, a name): running again unchanged cannot help.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl ConfigError {
    /// A configuration error with this message (say what is wrong and how to fix it).
    pub fn new(message: impl Into<String>) -> ConfigError {
        ConfigError(message.into())
    }
}

/// Shorthand for `Err(ConfigError::new(message).into())`.
pub fn config<T>(message: impl Into<String>) -> anyhow::Result<T> {
    Err(ConfigError::new(message).into())
}

pub use egress_store::chain;

/// [`chain`] for an `anyhow::Error`.
pub fn one_line(error: &anyhow::Error) -> String {
    chain(error.as_ref())
}

/// The first error of type `E` in `error`'s chain.
pub fn find<E: std::error::Error + 'static>(error: &anyhow::Error) -> Option<&E> {
    error.chain().find_map(|cause| cause.downcast_ref::<E>())
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
    fn typed_errors_are_found_under_context() {
        let err = anyhow::Error::new(ConfigError::new("bad flag")).context("starting");
        assert_eq!(
            find::<ConfigError>(&err).map(|e| e.0.as_str()),
            Some("bad flag")
        );
        assert_eq!(ExitCode::Usage.code(), 2);
        assert_eq!(ExitCode::Terminated.code(), 143);
    }
}
