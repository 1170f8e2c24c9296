//! Where a table's current version is recorded, and how a new one wins: the file-system
//! layout (`metadata/v<N>.metadata.json`, created only if absent, then
//! `metadata/version-hint.text`), or a SQL catalog's row (compare-and-swap on the metadata
//! location, [`super::sql`]). Two committers never both win a version: the loser reloads
//! and prepares its commit again.

use bytes::Bytes;
use egress_store::{Body, Condition, ErrorKind, PutOptions};
use iceberg::spec::TableMetadata;

use super::commit::{Current, TableRef};
use super::sql::SqlCatalog;
use iceberg::io::Storage as _;

use super::storage::{to_iceberg, TableStorage};

/// The file readers without a catalog start from: the current version's number.
pub const VERSION_HINT: &str = "version-hint.text";

/// How the tables' versions are recorded.
#[derive(Debug)]
pub enum Catalog {
    /// No catalog server: the table's own folder says (DuckDB's `iceberg_scan`, Spark's
    /// Hadoop catalog).
    Files,
    /// A SQL catalog in PostgreSQL (pyiceberg's `SqlCatalog`, Spark's and Trino's JDBC).
    Sql(SqlCatalog),
}

/// Whether a published version won.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// It is the table's current version now: the URI of its metadata file.
    Won(String),
    /// Another committer's version came first.
    Lost,
}

impl Catalog {
    /// The table's current version; `None` when it has none yet.
    pub async fn load(
        &self,
        io: &TableStorage,
        table: &TableRef,
    ) -> iceberg::Result<Option<Current>> {
        let file = match self {
            Catalog::Files => latest_version(io, table)
                .await?
                .map(|n| version_file(table, n)),
            Catalog::Sql(sql) => sql.location(table).await?,
        };
        let Some(file) = file else {
            return Ok(None);
        };
        let bytes = io.new_input(&file)?.read().await?;
        let metadata: TableMetadata = serde_json::from_slice(&bytes).map_err(|e| {
            iceberg::Error::new(iceberg::ErrorKind::DataInvalid, format!("{file}: {e}"))
        })?;
        Ok(Some(Current {
            metadata,
            file,
            manifests: None,
        }))
    }

    /// Make `next` the table's version after `current`, unless another committer's came
    /// first.
    pub async fn publish(
        &self,
        io: &TableStorage,
        table: &TableRef,
        current: Option<&Current>,
        next: &TableMetadata,
    ) -> iceberg::Result<Published> {
        let json = serde_json::to_vec(next)
            .map_err(|e| iceberg::Error::new(iceberg::ErrorKind::Unexpected, e.to_string()))?;
        let number = current.map_or(0, |c| version_of(&c.file).unwrap_or(0)) + 1;
        match self {
            Catalog::Files => {
                let file = version_file(table, number);
                if !create_only(io, &file, Bytes::from(json)).await? {
                    return Ok(Published::Lost);
                }
                write_hint(io, table, number).await?;
                Ok(Published::Won(file))
            }
            Catalog::Sql(sql) => {
                let file = format!(
                    "{}/metadata/{number:05}-{:016x}{:016x}.metadata.json",
                    table.location,
                    egress_store::task::random(),
                    egress_store::task::random()
                );
                io.write_bytes(&file, Bytes::from(json)).await?;
                match sql
                    .swap(table, current.map(|c| c.file.as_str()), &file)
                    .await?
                {
                    true => Ok(Published::Won(file)),
                    false => Ok(Published::Lost),
                }
            }
        }
    }
}

/// `metadata/v<n>.metadata.json` of `table`.
fn version_file(table: &TableRef, n: u64) -> String {
    format!("{}/metadata/v{n}.metadata.json", table.location)
}

/// The version number a metadata file's name carries (`v3.metadata.json`,
/// `00003-<uuid>.metadata.json`).
pub fn version_of(file: &str) -> Option<u64> {
    let name = file.rsplit('/').next()?;
    let digits: String = name
        .trim_start_matches('v')
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// The newest version of a file-system table: from its hint, then forward while a newer
/// file exists (a committer that died before writing the hint leaves it behind). The
/// hint is brought up to date on the way.
async fn latest_version(io: &TableStorage, table: &TableRef) -> iceberg::Result<Option<u64>> {
    let hint_file = format!("{}/metadata/{VERSION_HINT}", table.location);
    let hint = match io.new_input(&hint_file)?.read().await {
        Ok(bytes) => std::str::from_utf8(&bytes)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok()),
        Err(_) if !io.new_input(&hint_file)?.exists().await? => None,
        Err(e) => return Err(e),
    };
    let mut n = hint.unwrap_or(0);
    let trusted = egress_store::mutant::active("iceberg-hint-trusted") && n > 0;
    while !trusted && io.new_input(&version_file(table, n + 1))?.exists().await? {
        n += 1;
    }
    if n == 0 {
        return Ok(None);
    }
    if hint != Some(n) {
        write_hint(io, table, n).await?;
    }
    Ok(Some(n))
}

/// Write the hint: the bare number, no newline (DuckDB 1.4 and pyiceberg read it so).
/// Not best effort: a reader of the hint (DuckDB) sees the version it names, so a day may
/// leave the output only once the hint no longer names a version holding it. A commit
/// whose hint was not written fails; the next load (which probes past the hint) writes it.
///
/// The hint only goes forward: a write of an older number that lands after a newer one
/// (another share's commit, another day's commit of this run) is followed by a look for
/// the next version, and the newest is written again. Whoever writes last looks last.
async fn write_hint(io: &TableStorage, table: &TableRef, n: u64) -> iceberg::Result<()> {
    let file = format!("{}/metadata/{VERSION_HINT}", table.location);
    let mut n = n;
    loop {
        io.write_bytes(&file, Bytes::from(n.to_string())).await?;
        let mut newest = n;
        while io
            .new_input(&version_file(table, newest + 1))?
            .exists()
            .await?
        {
            newest += 1;
        }
        if newest == n {
            return Ok(());
        }
        n = newest;
    }
}

/// Create `file` only if it is absent; false when it was there. A reply lost after the
/// write took effect is settled by reading the file back: our own bytes are a win.
async fn create_only(io: &TableStorage, file: &str, bytes: Bytes) -> iceberg::Result<bool> {
    let (store, key) = io.locate_store(file)?;
    let options = PutOptions {
        condition: Condition::IfAbsent,
        ..PutOptions::default()
    };
    match store
        .put(key, Body::from_bytes(bytes.clone()), &options)
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ErrorKind::PreconditionFailed => {
            let there = io.new_input(file)?.read().await?;
            Ok(there == bytes)
        }
        Err(e) => Err(to_iceberg(e)),
    }
}
