//! What can go wrong with PostgreSQL, typed for callers to branch on (a recovery conflict
//! is retried, a refused login is not) and for `main` to choose an exit code, each with a
//! one-line message naming the cause and the fix.

/// What kind of database failure happened, for callers to branch on and `main` to choose
/// an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbErrorKind {
    /// The TLS handshake failed (certificate, CA, host name, or no TLS at the server).
    Tls,
    /// The login was refused (user, password, database name).
    Authentication,
    /// The connection could not be made or broke (network, server gone, backend killed).
    ConnectionLost,
    /// A statement failed (a server error with its SQLSTATE).
    QueryFailed,
    /// A standby cancelled the read because replaying the primary's changes conflicted
    /// with the snapshot (SQLSTATE 40001 "conflict with recovery"): worth a fresh snapshot.
    RecoveryConflict,
}

/// A database failure with a one-line message naming the cause and the fix.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct DbError {
    /// Its kind.
    pub kind: DbErrorKind,
    pub(super) message: String,
}

impl DbError {
    /// This error, as the failure of `what` (e.g. "reading table 't' failed").
    pub fn context(self, what: &str) -> DbError {
        DbError {
            kind: self.kind,
            message: format!("{what}: {}", self.message),
        }
    }

    /// An error of `kind` with this message (one line naming the cause and the fix).
    pub fn with_kind(kind: DbErrorKind, message: String) -> DbError {
        DbError { kind, message }
    }

    /// Classify `e`, which happened while `what` (e.g. "reading table 't'").
    pub fn new(what: &str, e: &tokio_postgres::Error) -> DbError {
        let (kind, detail) = classify(e);
        DbError {
            kind,
            message: format!("{what}: {detail}"),
        }
    }
}

/// SQLSTATE classes that mean the session is gone: connection exceptions (08), operator
/// intervention (57: terminated, shut down).
pub(super) fn classify(e: &tokio_postgres::Error) -> (DbErrorKind, String) {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        let kind = match &code[..2] {
            "40" if db.message().contains("conflict with recovery") => {
                DbErrorKind::RecoveryConflict
            }
            "28" => DbErrorKind::Authentication,
            "08" | "57" => DbErrorKind::ConnectionLost,
            _ if code == "3D000" => DbErrorKind::Authentication,
            _ => DbErrorKind::QueryFailed,
        };
        return (kind, format!("{} ({code})", clipped(db.message())));
    }
    let text = egress_common::error::chain(e);
    (
        if is_tls_failure(e) {
            DbErrorKind::Tls
        } else {
            DbErrorKind::ConnectionLost
        },
        text,
    )
}

/// The server's words are kept up to this many bytes: a function may raise an error of
/// megabytes (a 2 MB message made a 4 MB log, found by an adversarial run).
const MESSAGE_BYTES: usize = 2048;

/// `message`, cut at [`MESSAGE_BYTES`] (on a character boundary) with what was left out.
fn clipped(message: &str) -> std::borrow::Cow<'_, str> {
    if message.len() <= MESSAGE_BYTES {
        return message.into();
    }
    let mut end = MESSAGE_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let left = message.len() - end;
    format!("{}... ({left} more bytes)", &message[..end]).into()
}

/// True when the TLS handshake failed: rustls reported a problem, or tokio-postgres says
/// so itself (its "error performing TLS handshake", e.g. a server without TLS).
fn is_tls_failure(e: &tokio_postgres::Error) -> bool {
    find_source::<rustls::Error>(e).is_some()
        || e.to_string().starts_with("error performing TLS handshake")
}

/// The first error of type `E` among `e`'s sources (inside an I/O error too).
pub(super) fn find_source<'a, E: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(cause) = source {
        if let Some(found) = cause.downcast_ref::<E>() {
            return Some(found);
        }
        if let Some(inner) = cause
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if let Some(found) = inner.downcast_ref::<E>() {
                return Some(found);
            }
        }
        source = cause.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_server_messages_are_clipped_on_a_character_boundary() {
        assert_eq!(clipped("short"), "short");
        let long = "é".repeat(MESSAGE_BYTES);
        let cut = clipped(&long);
        assert!(cut.len() < MESSAGE_BYTES + 40, "{}", cut.len());
        assert!(cut.ends_with(&format!("... ({} more bytes)", long.len() - MESSAGE_BYTES)));
    }
}
