//! A stand-in database for the day's steps ([`TableSource`]): tables whose rows change
//! between snapshots (a version per table), snapshots exported while the session that took
//! them lives, and another row order per session (as PostgreSQL's synchronized scans give
//! two sessions of one snapshot other orders, so other bytes). Each object starts with a
//! line naming its table, version and snapshot, so the checks can tell where it came from.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use egress_common::day::shared::{Piece, Plan};
use egress_common::manifest::{PieceOf, SnapshotInfo};
use egress_dump::catalog::ResolvedTable;
use egress_dump::failure::AttemptError;
use egress_dump::gzip::CompressStats;
use egress_dump::parquet::TablePlan;
use egress_dump::report::TableReport;
use egress_dump::source::{OpenSnapshot, Opened, TableSource};
use egress_store::Store;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

use crate::world::{lock, World};

/// A table's pieces for the pods (`None`: it is not split), or why not.
type Pieces = Result<Option<Vec<Piece>>, AttemptError>;

/// The tables of every simulated day; `big` is shared between the pods of a sharded day.
pub const TABLES: &[&str] = &["a", "b", "big"];

/// Bytes per part of an object (the simulation's stores take parts of 64 bytes and up).
const PART: usize = 96;

/// The database's state.
pub struct Db {
    versions: BTreeMap<String, u64>,
    next: u64,
    /// Snapshots exported, by id: the versions they see, and the process holding them.
    exports: BTreeMap<String, (BTreeMap<String, u64>, usize)>,
    rng: StdRng,
}

impl Db {
    /// The database at version 1 of every table.
    pub fn new(seed: u64) -> Db {
        Db {
            versions: TABLES.iter().map(|t| (t.to_string(), 1)).collect(),
            next: 1,
            exports: BTreeMap::new(),
            rng: StdRng::seed_from_u64(seed ^ 0xdb),
        }
    }

    /// A writer commits: `table` changes.
    pub fn write(&mut self, table: &str) {
        *self.versions.entry(table.to_string()).or_default() += 1;
    }

    /// Forget the snapshots process `proc` exported (it ended or was killed).
    pub fn gone(&mut self, proc: usize) {
        self.exports.retain(|_, (_, owner)| *owner != proc);
    }
}

/// The snapshot id in a manifest's `txid_snapshot` (`snap-3:a=1,b=2,big=1`).
pub fn snapshot_id(txid: &str) -> String {
    txid.split(':').next().unwrap_or("").to_string()
}

/// The snapshot an object says it came from (its first line), if it is one of ours.
pub fn header_snapshot(bytes: &[u8]) -> Option<String> {
    let line = bytes.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let rest = line.strip_prefix("egress-sim ")?;
    rest.split(' ')
        .find_map(|f| f.strip_prefix("snapshot="))
        .map(str::to_string)
}

/// The database as process `proc` sees it; its reads fail `fails` times in a thousand.
pub struct SimSource {
    world: Arc<World>,
    proc: usize,
    fails: u32,
}

impl SimSource {
    /// Process `proc`'s connection.
    pub fn new(world: Arc<World>, proc: usize, fails: u32) -> SimSource {
        SimSource { world, proc, fails }
    }

    fn tables() -> Vec<ResolvedTable> {
        let refs = egress_dump::table_list::parse_list(&TABLES.join(" ")).unwrap_or_default();
        refs.into_iter()
            .enumerate()
            .map(|(i, requested)| ResolvedTable {
                name: requested.file_stem(),
                requested,
                schema: "public".into(),
                kind: 'r',
                estimated_rows: 10,
                estimated_bytes: 1000 * (i as i64 + 1),
                oid: 16384 + i as i64,
                piece: None,
            })
            .collect()
    }

    fn open_snapshot(
        &self,
        id: String,
        versions: BTreeMap<String, u64>,
        tables: Vec<ResolvedTable>,
        exported: bool,
    ) -> Box<dyn OpenSnapshot> {
        let seed = lock(&self.world.db).rng.random();
        let txid = format!(
            "{id}:{}",
            versions
                .iter()
                .map(|(t, v)| format!("{t}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let plans = tables
            .iter()
            .map(|_| TablePlan {
                columns: Vec::new(),
                primary_key: Vec::new(),
            })
            .collect();
        let info = SnapshotInfo {
            taken_at: String::new(),
            txid_snapshot: txid,
            wal_lsn: None,
            server_version: "sim".into(),
            exported_id: exported.then(|| id.clone()),
        };
        Box::new(SimSnapshot {
            world: self.world.clone(),
            proc: self.proc,
            opened: Opened {
                info,
                tables,
                plans,
                text_settings: None,
            },
            id,
            versions,
            session: seed,
            fails: self.fails,
        })
    }
}

#[async_trait]
impl TableSource for SimSource {
    async fn open(&self, export: bool) -> Result<Box<dyn OpenSnapshot>, AttemptError> {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let (id, versions) = {
            let mut db = lock(&self.world.db);
            db.next += 1;
            let id = format!("snap-{}", db.next);
            let versions = db.versions.clone();
            if export {
                db.exports.insert(id.clone(), (versions.clone(), self.proc));
            }
            (id, versions)
        };
        let name = self.world.name(self.proc);
        self.world
            .note(&name, format!("DB snapshot {id} (exported: {export})"));
        Ok(self.open_snapshot(id, versions, Self::tables(), export))
    }

    async fn join(&self, plan: &Plan, index: u64) -> anyhow::Result<Box<dyn OpenSnapshot>> {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let id = plan.snapshot_id().to_string();
        let found = lock(&self.world.db).exports.get(&id).cloned();
        let name = self.world.name(self.proc);
        let Some((versions, _)) = found else {
            self.world.note(&name, format!("DB import {id}: gone"));
            anyhow::bail!("invalid snapshot identifier: \"{id}\" (its session ended)");
        };
        self.world.note(&name, format!("DB import {id}"));
        let tables = egress_dump::database::share(plan, index, &Self::tables());
        Ok(self.open_snapshot(id, versions, tables, false))
    }

    async fn conflicted(&self, _error: &AttemptError) -> bool {
        false
    }
}

/// A snapshot a simulated session holds.
struct SimSnapshot {
    world: Arc<World>,
    proc: usize,
    id: String,
    opened: Opened,
    versions: BTreeMap<String, u64>,
    session: u64,
    fails: u32,
}

#[async_trait]
impl OpenSnapshot for SimSnapshot {
    fn opened(&self) -> &Opened {
        &self.opened
    }

    async fn pieces(&self, table: &ResolvedTable, of: u64) -> Pieces {
        if table.name != "big" {
            return Ok(None);
        }
        Ok(Some(
            (0..of)
                .map(|index| Piece {
                    of: PieceOf { index, of },
                    first: index * 10,
                    end: (index + 1 < of).then_some((index + 1) * 10),
                })
                .collect(),
        ))
    }

    async fn dump(
        &self,
        store: &Store,
        tables: &[ResolvedTable],
    ) -> Result<Vec<TableReport>, AttemptError> {
        let mut reports = Vec::new();
        for table in tables {
            reports.push(self.dump_one(store, table).await?);
        }
        Ok(reports)
    }

    async fn close(self: Box<Self>) {
        let mut db = lock(&self.world.db);
        if db
            .exports
            .get(&self.id)
            .is_some_and(|(_, owner)| *owner == self.proc)
        {
            db.exports.remove(&self.id);
        }
    }
}

impl SimSnapshot {
    /// The object's bytes: its header line, then its rows in this session's order.
    fn content(&self, table: &ResolvedTable) -> Vec<u8> {
        let version = self.versions.get(&table.name).copied().unwrap_or(0);
        let piece = table
            .piece
            .map(|p| format!("{}/{}", p.of.index, p.of.of))
            .unwrap_or_else(|| "whole".into());
        let rows = 6 + (version % 3) as usize;
        let mut order: Vec<usize> = (0..rows).collect();
        order.shuffle(&mut StdRng::seed_from_u64(self.session ^ table.oid as u64));
        let mut out = format!(
            "egress-sim table={} version={version} snapshot={} piece={piece}\n",
            table.name, self.id
        )
        .into_bytes();
        for row in order {
            out.extend(format!("row {row} of {} v{version} {piece}\n", table.name).bytes());
        }
        out
    }

    async fn dump_one(
        &self,
        store: &Store,
        table: &ResolvedTable,
    ) -> Result<TableReport, AttemptError> {
        let stem = table.requested.file_stem();
        let file = match table.piece {
            Some(p) => p.of.file(&stem, "parquet"),
            None => format!("{stem}.parquet"),
        };
        let date = self.date();
        let key = format!("{date}/{file}");
        let bytes = self.content(table);
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let (store2, key2) = (store.clone(), key.clone());
        let receive = egress_store::task::spawn(async move {
            egress_dump::upload::receive(&store2, &key2, rx, 2).await
        });
        // Reading a table takes its time: a day takes seconds, time for pauses to land mid-day.
        let pace = lock(&self.world.db).rng.random_range(30..300);
        for part in bytes.chunks(PART) {
            tokio::time::sleep(std::time::Duration::from_millis(pace)).await;
            if self.fail() {
                drop(tx);
                if let Ok(Ok(pending)) = receive.await {
                    egress_dump::upload::abort(pending).await;
                }
                return Err(anyhow::anyhow!(
                    "reading table '{stem}' failed: the connection was lost (injected)"
                )
                .into());
            }
            if tx.send(Bytes::copy_from_slice(part)).await.is_err() {
                break;
            }
        }
        drop(tx);
        let pending = receive
            .await
            .map_err(|e| anyhow::anyhow!("the upload task failed: {e}"))?
            .map_err(anyhow::Error::from)?;
        let committed = egress_dump::upload::commit(store, &key, pending)
            .await
            .map_err(anyhow::Error::from)?;
        let sha = hex::encode(Sha256::digest(&bytes));
        Ok(TableReport {
            table: stem,
            target: key,
            rows: 6,
            stats: CompressStats {
                uncompressed_bytes: bytes.len() as u64,
                compressed_bytes: bytes.len() as u64,
                uncompressed_sha256: sha.clone(),
                compressed_sha256: sha,
                gzip_members: 1,
            },
            committed,
            seconds: 0.0,
            chunks: 1,
            piece: table.piece.map(|p| p.of),
        })
    }

    fn fail(&self) -> bool {
        let fails = self.fails > 0 && lock(&self.world.db).rng.random_range(0..1000) < self.fails;
        if fails {
            self.world.fault(Some(self.proc));
        }
        fails
    }

    fn date(&self) -> String {
        self.world.with_proc(self.proc, |p| p.date.clone())
    }
}
