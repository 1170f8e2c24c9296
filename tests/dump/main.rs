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

use std::process::{Child, Command, Output, Stdio};

pub(crate) use egress_testkit::wait_for_exit;
use egress_testkit::PgServer;

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
