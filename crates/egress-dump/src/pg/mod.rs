//! PostgreSQL as the dump reaches it, behind one face: the connection parameters libpq
//! reads (`DATABASE_URL` and the `PG*` variables, [`Params`]) resolved into a [`Target`],
//! connecting to it (each host of a list in turn, TLS as `sslmode` says, the password never
//! sent in clear where it could be read), the [`Session`] a dump reads through, what the
//! run asks of the server, and the [`DbError`]s that come of it.
//!
//! - `conninfo`: a `postgresql://` URL or `key=value` string, and the `PG*` variables.
//! - `target`: parameters to a target (hosts, TLS, timeouts, keepalives).
//! - `connect`: sockets, and connecting to a target's hosts.
//! - `tls`, `guard`: the TLS connector, and the guard on the protocol that refuses a
//!   request for a cleartext password, reads COPY rows in bulk for the dump ([`Tap`]) and
//!   bounds the connection's read-ahead.
//! - `session`: the connection in use and the server's facts.
//! - `error`: what went wrong, typed.

mod connect;
mod conninfo;
mod error;
mod guard;
mod session;
mod target;
mod tls;

pub use conninfo::Params;
pub use error::{DbError, DbErrorKind};
pub use guard::{Flow, TakenOnDrop, Tap, Tapped};
pub use session::{
    conflicts_counted, prepare_session, server_facts, text_settings, ServerFacts, Session,
};
pub use target::{env_from_process, resolve, Target};
