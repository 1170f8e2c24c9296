//! `egress-dump`: stream PostgreSQL tables as gzip CSV into S3 or a local folder.
//!
//! [`run`] is the run as named steps; each table goes through [`pipeline`]: three stages
//! joined by bounded channels, so memory stays fixed whatever the table's size —
//! [`copy_stream`] (COPY out of PostgreSQL) -> [`gzip`] (compress and hash, on blocking
//! threads) -> [`upload`] (through the shared object store). Nothing becomes visible until
//! all three stages succeeded.

pub mod catalog;
pub mod chunked;
pub mod config;
pub mod copy_stream;
pub mod database;
pub mod day_manifest;
pub mod descriptor;
pub mod failure;
pub mod gzip;
pub mod locks;
pub mod parquet;
pub mod pg;
pub mod pipeline;
pub mod preflight;
pub mod progress;
pub mod report;
pub mod run;
pub mod settings;
pub mod shard;
pub mod snapshot;
pub mod source;
pub mod split;
pub mod table_list;
pub mod upload;
pub mod workers;

pub use config::Args;
pub use run::run;
