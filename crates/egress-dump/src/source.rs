//! Where a day's tables come from: PostgreSQL ([`crate::database`]) in a real run, a
//! stand-in in the simulation of the day protocol (`tests/sim`). The day's steps
//! ([`crate::run`], [`crate::shard`]) see only these two traits.

use async_trait::async_trait;
use egress_common::day::shared::{Piece, Plan};
use egress_common::manifest::SnapshotInfo;
use egress_store::Store;

use crate::catalog::ResolvedTable;
use crate::failure::AttemptError;
use crate::parquet::TablePlan;
use crate::report::TableReport;

/// Opens the day's snapshot.
#[async_trait]
pub trait TableSource: Send + Sync {
    /// Lock the listed tables and take one snapshot of them (`export`: one other sessions
    /// and processes can import).
    async fn open(&self, export: bool) -> Result<Box<dyn OpenSnapshot>, AttemptError>;

    /// Import `plan`'s snapshot and lock the tables index `index` dumps.
    async fn join(&self, plan: &Plan, index: u64) -> anyhow::Result<Box<dyn OpenSnapshot>>;

    /// True when `error` was a recovery conflict on a standby: the day is then started
    /// again from a fresh snapshot.
    async fn conflicted(&self, error: &AttemptError) -> bool;
}

/// What a snapshot holds: the snapshot, its tables (all of the day's; a shard's own share
/// once joined) as listed, and each table's columns and primary key in that order.
#[derive(Debug, Clone)]
pub struct Opened {
    /// The snapshot.
    pub info: SnapshotInfo,
    /// Its tables.
    pub tables: Vec<ResolvedTable>,
    /// Each table's columns and primary key.
    pub plans: Vec<TablePlan>,
    /// The session settings that shape the text of values kept as text (typed days).
    pub text_settings: Option<std::collections::BTreeMap<String, String>>,
}

/// A snapshot held open: what the day holds in it, and the dump of its tables.
#[async_trait]
pub trait OpenSnapshot: Send + Sync {
    /// What it holds.
    fn opened(&self) -> &Opened;

    /// The snapshot.
    fn info(&self) -> &SnapshotInfo {
        &self.opened().info
    }

    /// Its tables, as listed.
    fn tables(&self) -> &[ResolvedTable] {
        &self.opened().tables
    }

    /// Each table's columns and primary key, in the order of [`OpenSnapshot::tables`].
    fn plans(&self) -> &[TablePlan] {
        &self.opened().plans
    }

    /// How a table over `--split-larger-than` is shared between `of` pods, one page
    /// range each; `None` for a table one pod dumps whole.
    async fn pieces(
        &self,
        table: &ResolvedTable,
        of: u64,
    ) -> Result<Option<Vec<Piece>>, AttemptError>;

    /// Dump `tables` into `store` (each object created, never replaced).
    async fn dump(
        &self,
        store: &Store,
        tables: &[ResolvedTable],
    ) -> Result<Vec<TableReport>, AttemptError>;

    /// Let the snapshot go (the transaction ends).
    async fn close(self: Box<Self>);
}
