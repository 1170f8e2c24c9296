//! `egress-dump`: stream PostgreSQL tables as gzip CSV into S3 or a local folder.
//!
//! The pipeline per table is three stages joined by bounded channels, so memory stays
//! fixed whatever the table's size: [`copy_stream`] (COPY out of PostgreSQL) ->
//! [`gzip`] (compress and hash, on a blocking thread) -> [`sink`] ([`multipart`] upload
//! or a local temp file). Nothing becomes visible until all three stages succeeded.

pub mod catalog;
pub mod config;
pub mod copy_stream;
pub mod database;
pub mod gzip;
pub mod manifest;
pub mod multipart;
pub mod progress;
pub mod run;
pub mod sink;
pub mod snapshot;
pub mod tables;
pub mod tls;

pub use config::Args;
pub use run::run;
