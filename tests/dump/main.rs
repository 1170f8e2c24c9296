//! egress-dump end to end, through the binary against real servers (PostgreSQL 15 clusters,
//! a hot standby, s3s-fs, moto, Ceph RGW 16, a Pushgateway), one module per concern.

mod basics;
mod faults;
mod operations;
mod protocol;
mod runs;
mod shards;
mod split;
mod typed;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

pub(crate) use egress_testkit::wait_for_exit;
use egress_testkit::{PgServer, S3Endpoint, S3Kind, S3Server};

/// The environment a run is given: (name, value).
type Env = Vec<(String, String)>;

/// Five-MiB parts at compression level 1: a table of tens of MB is several parts.
const SMALL_PARTS: [&str; 4] = ["--part-size-mib", "5", "--compression-level", "1"];

/// egress-dump with `env` (nothing of this process's environment) and `args`.
fn command(env: &[(String, String)], args: &[&str]) -> Command {
    let mut cmd = egress_testkit::clean_command(env!("CARGO_BIN_EXE_egress-dump"));
    cmd.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .args(args);
    cmd
}

/// [`command`], run to its end.
fn run(env: &[(String, String)], args: &[&str]) -> Output {
    egress_testkit::run(&mut command(env, args))
}

/// [`command`], started, its output piped.
fn spawn(env: &[(String, String)], args: &[&str]) -> Child {
    command(env, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn egress-dump")
}

/// Run `text` on `pg` as its superuser.
async fn sql(pg: &PgServer, text: &str) {
    pg.client().await.batch_execute(text).await.expect("SQL");
}

/// PostgreSQL on which each script of `setup` has run, in order.
async fn pg_with(setup: &[&str]) -> PgServer {
    let pg = PgServer::start();
    for script in setup {
        sql(&pg, script).await;
    }
    pg
}

/// PostgreSQL, and an S3 server of `kind` holding an empty `bucket`.
async fn pg_and_bucket(kind: S3Kind, bucket: &str) -> (PgServer, S3Server) {
    (PgServer::start(), S3Server::with_bucket(kind, bucket).await)
}

/// [`pg_and_bucket`], PostgreSQL holding the tables `setup` (SQL) makes.
async fn pg_and_bucket_with(kind: S3Kind, bucket: &str, setup: &str) -> (PgServer, S3Server) {
    let (pg, s3) = pg_and_bucket(kind, bucket).await;
    sql(&pg, setup).await;
    (pg, s3)
}

/// `pg`'s environment (its superuser) for a dump of the day `date`.
fn local_env(pg: &PgServer, date: &str) -> Env {
    let mut env = pg.env();
    env.push(("DUMP_DATE".into(), date.into()));
    env
}

/// The environment of a dump of `tables` from `pg` for the day `date` into `output`
/// (`s3://bucket/prefix`) on `s3`.
fn s3_env(pg: &PgServer, s3: &S3Endpoint, tables: &str, output: &str, date: &str) -> Env {
    let mut env = local_env(pg, date);
    env.extend(s3.env());
    env.push(("TABLES".into(), tables.into()));
    env.push(("S3_OUTPUT".into(), output.into()));
    env
}

/// `env` with `key` set to `value`, in place of any value it had.
fn with_var(env: &[(String, String)], key: &str, value: &str) -> Env {
    let mut env: Env = env.iter().filter(|(k, _)| k != key).cloned().collect();
    env.push((key.into(), value.into()));
    env
}

/// `env` with S3 reached at `endpoint` (a proxy in front of the server).
fn through(env: &[(String, String)], endpoint: &str) -> Env {
    with_var(env, "AWS_ENDPOINT_URL", endpoint)
}

/// A dump with `env` of `tables` into the local folder `dir`, with `extra` flags.
fn dump_to_dir(env: &[(String, String)], tables: &str, dir: &Path, extra: &[&str]) -> Output {
    let output = dir.display().to_string();
    let mut args = vec!["--tables", tables, "--output", &output];
    args.extend_from_slice(extra);
    run(env, &args)
}

/// [`dump_to_dir`] while `writer` keeps committing, ended with exit 0; more than 50 of the
/// writer's transactions committed while it ran (the writer is stopped then).
fn dump_while_writing(
    env: &[(String, String)],
    tables: &str,
    dir: &Path,
    extra: &[&str],
    writer: egress_testkit::postgres::Writer,
) -> Output {
    let before = writer.commits();
    let out = dump_to_dir(env, tables, dir, extra);
    let during = writer.commits() - before;
    writer.stop();
    egress_testkit::assert_exit(&out, 0);
    assert!(
        during > 50,
        "only {during} transfers committed while the dump ran"
    );
    out
}

/// Index `index` of `count` (a pod of an Indexed Job), started now with `extra` flags.
fn shard(env: &[(String, String)], count: u64, index: u64, extra: &[&str]) -> Child {
    let mut env = env.to_vec();
    env.push(("SHARDS".into(), count.to_string()));
    env.push(("JOB_COMPLETION_INDEX".into(), index.to_string()));
    spawn(&env, extra)
}

/// The day `date` under `bucket`/`prefix` checked against its manifest, as
/// `egress-sync --verify input` does: its problems (`None` when it has no manifest).
async fn verify_day(
    s3: &S3Endpoint,
    bucket: &str,
    prefix: &str,
    date: &str,
) -> Option<Vec<String>> {
    let store = s3.store(bucket, prefix).await;
    let checked = egress_sync::verify::verify(&store, "input").await.unwrap();
    let mut folders = checked.folders.into_iter();
    folders
        .find(|(f, _)| f == date)
        .map(|(_, problems)| problems)
}
