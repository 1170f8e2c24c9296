//! PostgreSQL as the day's [`TableSource`]: connect, find the listed tables, lock them
//! and take (or import) one snapshot, and dump them through the workers; also the dry
//! run, which only looks.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use egress_common::day::shared::{Piece, Plan};
use egress_common::manifest::{PieceOf, SnapshotInfo};
use egress_common::{ConfigError, Location};
use egress_store::Store;
use tokio_postgres::Client;
use tracing::info;

use crate::catalog::{self, Problem, ResolvedTable, Select};
use crate::config::Format;
use crate::failure::{all_succeeded, AttemptError};
use crate::locks;
use crate::parquet::{self, TablePlan};
use crate::pg::{self, DbError, DbErrorKind, Params, Session, Target};
use crate::progress::Counters;
use crate::report::TableReport;
use crate::settings::Settings;
use crate::snapshot;
use crate::source::{OpenSnapshot, Opened, TableSource};
use crate::split::{self, Chunk};
use crate::table_list::TableRef;
use crate::workers;

/// The database a run reads, as its settings say.
pub struct Postgres {
    settings: Arc<Settings>,
    /// Set on a standby: where to reach it, and the conflicts it had counted at the start.
    standby: OnceLock<(Target, i64)>,
}

impl Postgres {
    /// The database `settings` name.
    pub fn new(settings: &Settings) -> Postgres {
        Postgres {
            settings: Arc::new(settings.clone()),
            standby: OnceLock::new(),
        }
    }
}

/// A connection holding the day's snapshot, and how to open more.
pub(crate) struct Database {
    pub(crate) target: Target,
    /// The session holding the snapshot (index 0's exports it; another index's imports it).
    pub(crate) holder: Session,
    /// `server_version_num` (e.g. 150010).
    server_version_num: i32,
}

#[async_trait]
impl TableSource for Postgres {
    async fn open(&self, export: bool) -> Result<Box<dyn OpenSnapshot>, AttemptError> {
        let settings = &*self.settings;
        let db = connect(settings, &self.standby).await?;
        let found = find_tables(&db.holder, &settings.tables).await?;
        // One snapshot for every table of the run, taken with the tables locked (as
        // pg_dump does): the day's files agree with each other and with the manifest.
        snapshot::open(&db.holder).await?;
        locks::before_snapshot(&db.holder, &found, settings.lock_timeout).await?;
        let info = snapshot::take(&db.holder, export || settings.jobs > 1).await?;
        let mut tables = look_again(&db.holder, &found).await?;
        locks::confirm(&db.holder, &tables).await?;
        measure(&db.holder, &mut tables).await?;
        self.held(db, info, tables).await
    }

    async fn join(&self, plan: &Plan, index: u64) -> anyhow::Result<Box<dyn OpenSnapshot>> {
        let settings = &*self.settings;
        let db = connect(settings, &self.standby).await?;
        snapshot::import(&db.holder, plan.snapshot_id()).await?;
        let tables = tables_of(settings, &db, plan, index).await?;
        // One connection reads on the session that imported the snapshot; more import it
        // again, which needs the coordinator's transaction still open.
        let info = SnapshotInfo {
            exported_id: plan
                .snapshot
                .exported_id
                .clone()
                .filter(|_| settings.jobs > 1),
            ..plan.snapshot.clone()
        };
        Ok(self.held(db, info, tables).await?)
    }

    async fn conflicted(&self, error: &AttemptError) -> bool {
        error.db_kind() == Some(DbErrorKind::RecoveryConflict)
            || lost_to_a_conflict(error, &self.standby).await
    }
}

impl Postgres {
    /// The snapshot `db` holds, with `tables` in it and their columns.
    async fn held(
        &self,
        db: Database,
        info: SnapshotInfo,
        tables: Vec<ResolvedTable>,
    ) -> Result<Box<dyn OpenSnapshot>, AttemptError> {
        let plans = read_plans(&db.holder, &tables).await?;
        let text_settings = match self.settings.format {
            Format::Parquet => Some(pg::text_settings(&db.holder).await?),
            Format::Csv => None,
        };
        Ok(Box::new(Held {
            settings: self.settings.clone(),
            db,
            opened: Opened {
                info,
                tables,
                plans,
                text_settings,
            },
        }))
    }
}

/// A snapshot held in PostgreSQL.
struct Held {
    settings: Arc<Settings>,
    db: Database,
    opened: Opened,
}

#[async_trait]
impl OpenSnapshot for Held {
    fn opened(&self) -> &Opened {
        &self.opened
    }

    async fn pieces(
        &self,
        table: &ResolvedTable,
        of: u64,
    ) -> Result<Option<Vec<Piece>>, AttemptError> {
        split_between_pods(&self.settings, &self.db, table, of).await
    }

    async fn dump(
        &self,
        store: &Store,
        tables: &[ResolvedTable],
    ) -> Result<Vec<TableReport>, AttemptError> {
        let settings = &*self.settings;
        let plans = read_plans(&self.db.holder, tables).await?;
        let chunks = plan_splits(settings, &self.db, tables).await?;
        let selects = selects(settings, &plans);
        let which = workers::Tables {
            tables,
            chunks: &chunks,
            selects: &selects,
        };
        let counters = Arc::new(Counters::default());
        let concurrent = workers::worker_count(settings.jobs, &which, self.info()).max(1);
        let context = workers::context_for(settings, store, &settings.date, &counters, concurrent);
        let outcomes = workers::dump_tables(
            &context,
            &self.db.target,
            &self.db.holder,
            self.info(),
            &which,
        )
        .await?;
        Ok(all_succeeded(tables, outcomes)?)
    }

    async fn close(self: Box<Self>) {
        let _ = self.db.holder.batch_execute("COMMIT").await;
    }
}

/// A session lost during an attempt on a standby that has since counted more recovery
/// conflicts: the backend was terminated for one, but its closing message was lost (the
/// server resets a connection that has unread input, e.g. the next chunk's query).
async fn lost_to_a_conflict(error: &AttemptError, standby: &OnceLock<(Target, i64)>) -> bool {
    let lost = error.db_kind() == Some(DbErrorKind::ConnectionLost);
    let Some((target, before)) = standby.get().filter(|_| lost) else {
        return false;
    };
    // A terminated backend's statistics reach the server as it exits: allow a moment.
    for _ in 0..5 {
        if pg::conflicts_counted(target)
            .await
            .is_some_and(|now| now > *before)
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    false
}

/// Connect, and say whether the server is a standby (its conflicts counted so far go to
/// `standby`).
pub(crate) async fn connect(
    settings: &Settings,
    standby: &OnceLock<(Target, i64)>,
) -> Result<Database, AttemptError> {
    let conninfo = settings.database_url.as_ref().map(|u| u.expose());
    let params = Params::resolve(conninfo, &pg::env_from_process())?;
    let target = pg::resolve(&params, settings.timeout)?;
    let holder = target.connect_with_retry(5).await?;
    let typed = settings.format == Format::Parquet;
    pg::prepare_session(&holder, settings.lock_timeout, typed).await?;
    let server = pg::server_facts(&holder).await?;
    if server.standby {
        let _ = standby.set((target.clone(), server.conflicts));
        info!(
            max_standby_streaming_delay = %server.max_standby_streaming_delay,
            hot_standby_feedback = %server.hot_standby_feedback,
            "Reading from a standby: a long read may be cancelled by a recovery conflict (then retried from a fresh snapshot, --conflict-retries {})",
            settings.conflict_retries
        );
    }
    Ok(Database {
        target,
        holder,
        server_version_num: server.version_num,
    })
}

/// Look every table up; all problems are reported at once.
pub(crate) async fn find_tables(
    client: &Client,
    tables: &[TableRef],
) -> Result<Vec<ResolvedTable>, AttemptError> {
    let mut resolved = Vec::new();
    let mut problems = Vec::new();
    for table in tables {
        let found = catalog::resolve(client, table)
            .await
            .map_err(|e| DbError::new(&format!("cannot look up table '{table}'"), &e))?;
        match found {
            Ok(found) => resolved.push(found),
            Err(Problem::Missing) => problems.push(format!(
                "'{table}' does not exist (or is not visible to this user)"
            )),
            Err(Problem::NotReadable) => problems.push(format!(
                "'{table}' is not readable (GRANT SELECT to the dump user)"
            )),
            Err(Problem::NotATable(kind)) => problems.push(format!(
                "'{table}' is not a table or view (relkind '{kind}')"
            )),
        }
    }
    if !problems.is_empty() {
        return Err(ConfigError::new(format!(
            "{} of {} tables cannot be dumped: {}; fix TABLES or the database grants",
            problems.len(),
            tables.len(),
            problems.join(", ")
        ))
        .into());
    }
    for (i, table) in resolved.iter().enumerate() {
        if let Some(twin) = resolved[..i].iter().find(|t| t.oid == table.oid) {
            return Err(ConfigError::new(format!(
                "'{}' and '{}' are the same table ({}.{}): list it once in TABLES",
                twin.requested.spelled(),
                table.requested.spelled(),
                table.schema,
                table.name
            ))
            .into());
        }
    }
    Ok(resolved)
}

/// The tables found before the locks, as they are inside the snapshot; a name gone
/// meanwhile (dropped, or renamed away before its lock) fails the run.
async fn look_again(
    client: &Client,
    found: &[ResolvedTable],
) -> Result<Vec<ResolvedTable>, AttemptError> {
    let again = catalog::again(client, found)
        .await
        .map_err(|e| DbError::new("cannot look the tables up again", &e))?;
    found
        .iter()
        .zip(again)
        .map(|(before, now)| {
            now.ok_or_else(|| {
                AttemptError::Other(anyhow::anyhow!(
                    "table '{}' ({}.{}) was dropped or renamed while it was being locked: run again",
                    before.requested,
                    before.schema,
                    before.name
                ))
            })
        })
        .collect()
}

/// Index `index`'s tables of `plan`, looked up inside the imported snapshot and locked;
/// the same tables the coordinator planned (by oid), or the run fails.
async fn tables_of(
    settings: &Settings,
    db: &Database,
    plan: &Plan,
    index: u64,
) -> anyhow::Result<Vec<ResolvedTable>> {
    let found = find_tables(&db.holder, &settings.tables)
        .await
        .map_err(AttemptError::into_anyhow)?;
    for assigned in &plan.tables {
        let here = found
            .iter()
            .find(|t| t.requested.file_stem() == assigned.table);
        if let Some(table) = here.filter(|t| t.oid != assigned.oid) {
            anyhow::bail!(
                "table '{}' is not the one the coordinator planned (oid {} here, {} in the plan): it was replaced meanwhile; run the Job again",
                assigned.table,
                table.oid,
                assigned.oid
            );
        }
    }
    let mut mine = share(plan, index, &found);
    measure(&db.holder, &mut mine).await?;
    locks::in_worker(&db.holder, &mine, settings.lock_timeout).await?;
    Ok(mine)
}

/// What index `index` dumps of `tables` (the day's, as listed): whole tables, and pieces
/// of shared ones.
pub fn share(plan: &Plan, index: u64, tables: &[ResolvedTable]) -> Vec<ResolvedTable> {
    plan.tables
        .iter()
        .filter(|a| a.shard == index)
        .filter_map(|a| {
            let table = tables.iter().find(|t| t.requested.file_stem() == a.table)?;
            Some(ResolvedTable {
                piece: a.piece,
                ..table.clone()
            })
        })
        .collect()
}

pub(crate) async fn measure(client: &Client, tables: &mut [ResolvedTable]) -> Result<(), DbError> {
    catalog::measure(client, tables)
        .await
        .map_err(|e| DbError::new("cannot measure the tables", &e))
}

/// Each table's columns with their types, and its primary key.
async fn read_plans(client: &Client, tables: &[ResolvedTable]) -> Result<Vec<TablePlan>, DbError> {
    let mut plans = Vec::with_capacity(tables.len());
    for table in tables {
        let plan = parquet::columns::table_plan(client, table.oid)
            .await
            .map_err(|e| {
                DbError::new(
                    &format!("cannot read the columns of '{}'", table.requested),
                    &e,
                )
            })?;
        plans.push(plan);
    }
    Ok(plans)
}

/// What each table's `COPY` selects, in the run's format.
fn selects(settings: &Settings, plans: &[TablePlan]) -> Vec<Select> {
    plans
        .iter()
        .map(|plan| match settings.format {
            Format::Csv => {
                let names: Vec<String> = plan.columns.iter().map(|c| c.name.clone()).collect();
                Select::csv(&names, settings.header)
            }
            Format::Parquet => Select::binary(Arc::new(plan.clone())),
        })
        .collect()
}

/// A table the pods share, one page range each (over `--split-larger-than`, a plain
/// table, PostgreSQL 14 or later); `None` for a table one pod dumps whole.
async fn split_between_pods(
    settings: &Settings,
    db: &Database,
    table: &ResolvedTable,
    of: u64,
) -> Result<Option<Vec<Piece>>, AttemptError> {
    let Some(threshold) = settings.split_larger_than else {
        return Ok(None);
    };
    let size = catalog::table_size(&db.holder, table.oid)
        .await
        .map_err(|e| DbError::new(&format!("cannot measure '{}'", table.requested), &e))?;
    let version = db.server_version_num;
    let Ok(ranges) = split::pieces(table.kind, size, Some(threshold), of, version) else {
        return Ok(None);
    };
    let name = table.requested.file_stem();
    info!(table = %name, pieces = of, pages = size.pages, "Table '{name}': shared by the {of} pods, one page range and one object each.");
    Ok(Some(
        ranges
            .into_iter()
            .map(|c| Piece {
                of: PieceOf {
                    index: c.index as u64,
                    of,
                },
                first: c.first,
                end: c.end,
            })
            .collect(),
    ))
}

/// Which tables are read in chunks (`--split-larger-than`), each decision logged.
async fn plan_splits(
    settings: &Settings,
    db: &Database,
    tables: &[ResolvedTable],
) -> Result<Vec<Option<Vec<Chunk>>>, AttemptError> {
    let mut plans = Vec::with_capacity(tables.len());
    for table in tables {
        // A shared day's piece is its page range, read in one stream (a header, if any,
        // on the first piece only, so the pieces in order are the whole table), whatever
        // this pod's own --split-larger-than says.
        if let Some(piece) = table.piece {
            let (first, end) = (piece.first, piece.end);
            let index = piece.of.index as usize;
            plans.push(Some(vec![Chunk { index, first, end }]));
            continue;
        }
        let Some(threshold) = settings.split_larger_than else {
            plans.push(None);
            continue;
        };
        let size = catalog::table_size(&db.holder, table.oid)
            .await
            .map_err(|e| DbError::new(&format!("cannot measure '{}'", table.requested), &e))?;
        let name = table.requested.file_stem();
        let decision = split::decide(
            table.kind,
            size,
            Some(threshold),
            settings.jobs,
            db.server_version_num,
        );
        match &decision {
            Ok(chunks) => {
                info!(table = %name, chunks = chunks.len(), pages = size.pages, "Table '{name}': read in {} chunks by {} workers.", chunks.len(), settings.jobs)
            }
            Err(split::Whole::Small) => {}
            Err(why) => {
                info!(table = %name, reason = ?why, "Table '{name}' is larger than --split-larger-than but is read in one stream: {}", why.explain())
            }
        }
        plans.push(decision.ok());
    }
    Ok(plans)
}

/// A dry run: connect, find and measure the tables, print the plan; write nothing.
pub async fn dry_run(settings: &Settings, store: &Store) -> anyhow::Result<Vec<TableReport>> {
    let run = async {
        let db = connect(settings, &OnceLock::new()).await?;
        let mut tables = find_tables(&db.holder, &settings.tables).await?;
        // In a transaction of its own: measuring takes savepoints.
        snapshot::open(&db.holder).await?;
        measure(&db.holder, &mut tables).await?;
        Ok::<_, AttemptError>(tables)
    };
    let tables = run.await.map_err(AttemptError::into_anyhow)?;
    print_plan(&tables, store, settings);
    Ok(Vec::new())
}

fn print_plan(tables: &[ResolvedTable], store: &Store, settings: &Settings) {
    let (date, extension) = (&settings.date, settings.format.extension());
    println!(
        "{:<32} {:>14} {:>12}  target",
        "table", "est. rows", "est. size"
    );
    for t in tables {
        let target = store.describe(&format!("{date}/{}.{extension}", t.requested.file_stem()));
        let rows = if t.estimated_rows < 0 {
            "unknown".to_string()
        } else {
            t.estimated_rows.to_string()
        };
        println!(
            "{:<32} {:>14} {:>12}  {target}",
            t.requested.file_stem(),
            rows,
            egress_common::units::human_bytes(t.estimated_bytes.max(0) as u64)
        );
    }
    info!(tables = tables.len(), "Dry run: nothing was written.");
}

/// Open the output and check it before touching the database: credentials, bucket, a
/// writable directory.
pub async fn open_output(settings: &Settings) -> anyhow::Result<Store> {
    let store = settings.output.open(&settings.s3, settings.local).await?;
    // A dry run writes nothing, so a local output that does not exist yet is fine.
    let local = matches!(settings.output, Location::Local(_));
    if !(settings.dry_run && local) {
        store.probe(!settings.dry_run).await?;
    }
    Ok(store)
}
