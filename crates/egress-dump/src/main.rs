//! The `egress-dump` binary: parse flags, set up logging, run, choose the exit code.

use egress_common::cli::{self, Ending};
use egress_common::error::find;
use egress_common::ExitCode;
use egress_dump::config::Args;
use egress_dump::pg::{DbError, DbErrorKind};
use egress_dump::settings::Settings;

fn main() {
    // Part buffers (MiBs each) get mappings of their own. At 4 MiB, not the Parquet writer's
    // ~1 MiB pages, a typed dump's page faults fell from 89,000 to 35,000 (5% of its CPU),
    // but a 1.1 GB typed table peaked at 162.6 MiB, over the README's 160 MiB bound.
    // Several connections: the run is a task on the runtime's workers (see the function).
    cli::start_on_workers("egress-dump", 1024 * 1024, |args: &Args| args.jobs > 1, run)
}

async fn run(args: Args) -> ExitCode {
    if args.common.check {
        let findings = match Settings::from_args(&args) {
            Ok(settings) => egress_dump::preflight::run(&settings).await,
            Err(e) => egress_dump::preflight::unusable(&e),
        };
        return egress_common::preflight::report(&findings);
    }
    let ending = Ending {
        program: "egress-dump",
        on_stop: "no manifest written; the next run starts clean",
        summarise: |reports: &Vec<egress_dump::report::TableReport>| {
            let mut tables: Vec<&str> = reports.iter().map(|r| r.table.as_str()).collect();
            tables.dedup();
            format!("{} table(s) dumped: {}", tables.len(), tables.join(" "))
        },
        exit_code,
        metrics: egress_dump::report::metrics,
    };
    // The settings are built once, here; a wrong one ends the run like any other error.
    let settings = Settings::from_args(&args);
    let mut common = args.common.clone();
    match &settings {
        // A dry run is no run the alerts watch (also one whose settings are wrong).
        _ if args.dry_run => common.metrics.off(),
        // Another day than today's: its own group, so the nightly alerts move only with
        // the nightly run.
        Ok(s) if s.is_backfill() => common.metrics.grouping.push(("date", s.date.clone())),
        _ => {}
    }
    // Each index of a shared day pushes its own tables' metrics.
    if let Some(s) = settings
        .as_ref()
        .ok()
        .map(|s| s.shards)
        .filter(|s| s.sharded())
    {
        common.metrics.grouping.push(("shard", s.index.to_string()));
    }
    let work = async move { egress_dump::run(&settings?).await };
    cli::run_to_exit(&common, work, ending).await
}

/// The one place errors become exit codes: 2 when the input (flags, variables, names,
/// credentials, certificates) must change, 1 for anything a later run may not meet.
fn exit_code(error: &anyhow::Error) -> ExitCode {
    if let Some(code) = cli::shared_exit_code(error) {
        return code;
    }
    match find::<DbError>(error).map(|e| e.kind) {
        Some(DbErrorKind::Tls | DbErrorKind::Authentication) => ExitCode::Usage,
        _ => ExitCode::Runtime,
    }
}
