//! What can go wrong talking to a store, typed so that callers can branch on it (retry,
//! count a vanished object, stop the run) and `main` can choose an exit code.

use std::sync::Arc;

/// The kinds of store failure callers tell apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The object does not exist (it may have been deleted since it was listed).
    NotFound,
    /// The bucket does not exist.
    BucketNotFound,
    /// Unknown access key or bad signature.
    Credentials,
    /// Valid credentials lacking a permission.
    AccessDenied,
    /// The bucket lives in another region than the one configured.
    WrongRegion,
    /// The endpoint could not be reached, timed out, or failed (5xx): worth retrying.
    Unreachable,
    /// A conditional request lost (`If-Match` / `If-None-Match`).
    PreconditionFailed,
    /// The bytes that arrived are not the bytes that were sent (`BadDigest`, a part ETag
    /// or a composite ETag that does not match).
    ChecksumMismatch,
    /// A key that cannot be stored here (it would leave a local directory, say).
    InvalidKey,
    /// A local output that cannot be written (permission denied, a file in the way).
    NotWritable,
    /// The local disk, or its quota, is full: every later write fails too, but nothing in
    /// the configuration is wrong (freeing space and running again is the fix).
    StorageFull,
    /// The endpoint answers, but not as an S3 server does.
    NotS3,
    /// The endpoint's TLS certificate is not trusted (a private CA not given, a wrong host).
    Untrusted,
    /// The store does not implement the operation.
    Unsupported,
    /// The store's settings cannot be used (an unreadable CA bundle, say).
    BadSettings,
    /// This run no longer holds the lease on what it writes (another run took it over):
    /// nothing more may be written.
    LeaseLost,
    /// Anything else.
    Other,
}

impl ErrorKind {
    /// True when the configuration is wrong: retrying cannot help and the run should stop.
    pub fn is_configuration(self) -> bool {
        matches!(
            self,
            ErrorKind::BucketNotFound
                | ErrorKind::Credentials
                | ErrorKind::AccessDenied
                | ErrorKind::WrongRegion
                | ErrorKind::NotWritable
                | ErrorKind::NotS3
                | ErrorKind::Untrusted
                | ErrorKind::BadSettings
        )
    }
}

impl ErrorKind {
    /// True when the run must stop at once: its configuration is wrong, or it lost its
    /// lease.
    pub fn stops_the_run(self) -> bool {
        self.is_configuration() || matches!(self, ErrorKind::LeaseLost | ErrorKind::StorageFull)
    }
}

/// A failed store operation: its kind, a one-line message that names what was being done,
/// the cause and (for configuration problems) the fix, and the error it came from.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl StoreError {
    /// An error of `kind` with a ready message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> StoreError {
        StoreError {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// The same error, keeping `source` as its cause (its text is already in the message).
    pub(crate) fn caused_by(
        mut self,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// Its kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The same error, its message prefixed with more context.
    pub fn context(self, what: impl std::fmt::Display) -> StoreError {
        StoreError {
            message: format!("{what}: {}", self.message),
            ..self
        }
    }

    /// A local I/O error while `what` at `path`.
    pub fn io(what: &str, path: &std::path::Path, e: &std::io::Error) -> StoreError {
        use std::io::ErrorKind as Io;
        let path = path.display();
        let error = match e.kind() {
            Io::NotFound => StoreError::new(ErrorKind::NotFound, format!("{what} {path}: {e}")),
            Io::PermissionDenied
            | Io::ReadOnlyFilesystem
            | Io::NotADirectory
            | Io::IsADirectory
            | Io::AlreadyExists => StoreError::new(
                ErrorKind::NotWritable,
                format!("{what} {path}: {e}; choose a directory this user can write"),
            ),
            // Not a wrong directory (the hint was, and exit 2): the disk must be freed.
            Io::StorageFull | Io::QuotaExceeded | Io::FileTooLarge => StoreError::new(
                ErrorKind::StorageFull,
                format!("{what} {path}: {e}; free space on that disk (or raise its quota) and run again"),
            ),
            _ => StoreError::new(ErrorKind::Other, format!("{what} {path}: {e}")),
        };
        error.caused_by(std::io::Error::new(e.kind(), e.to_string()))
    }
}

/// Render an error and its sources as one line (`outer: inner: cause`), dropping messages
/// that repeat what an outer one already said, and line breaks.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        let text = e.to_string().replace(['\n', '\r'], " ");
        let text = text.trim().to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_prefixes_the_message_and_keeps_the_kind_and_source() {
        let io = std::io::Error::other("disk on fire");
        let e = StoreError::new(ErrorKind::NotFound, "gone")
            .caused_by(io)
            .context("copying k");
        assert_eq!(e.to_string(), "copying k: gone");
        assert_eq!(e.kind(), ErrorKind::NotFound);
        let source = std::error::Error::source(&e).expect("the cause is kept");
        assert_eq!(source.to_string(), "disk on fire");
        assert_eq!(chain(&e), "copying k: gone: disk on fire");
        assert!(ErrorKind::Credentials.is_configuration());
        assert!(!ErrorKind::Unreachable.is_configuration());
        assert!(ErrorKind::LeaseLost.stops_the_run());
    }

    #[test]
    fn a_full_disk_stops_the_run_without_blaming_the_configuration() {
        let path = std::path::Path::new("/out/2024-01-01/t.csv.gz");
        for kind in [
            std::io::ErrorKind::StorageFull,
            std::io::ErrorKind::QuotaExceeded,
        ] {
            let e = StoreError::io("writing", path, &std::io::Error::from(kind));
            assert_eq!(e.kind(), ErrorKind::StorageFull, "{e}");
            assert!(!e.kind().is_configuration() && e.kind().stops_the_run());
            assert!(e.to_string().contains("free space on that disk"), "{e}");
            assert!(!e.to_string().contains("choose a directory"), "{e}");
        }
    }
}
