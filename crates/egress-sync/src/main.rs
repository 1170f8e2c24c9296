//! The `egress-sync` binary: parse flags, set up logging, run, map the outcome to an exit code.

use clap::{CommandFactory, Parser};
use egress_common::{cli, logging, ExitCode};
use egress_sync::config::{Args, EXTRA_ENV, REQUIRED_ENV};

fn main() {
    // Part buffers come and go all the time here; before the runtime starts its threads.
    egress_common::memory::return_large_buffers_to_the_system();
    cli::run_main("egress-sync", run)
}

async fn run() -> ExitCode {
    let args = Args::parse();
    if args.common.list_env {
        print!(
            "{}",
            egress_common::envlist::listing(&Args::command(), EXTRA_ENV, REQUIRED_ENV)
        );
        return ExitCode::Success;
    }
    logging::init(args.common.log_format, args.common.verbose, false);
    cli::run_to_exit(
        "egress-sync",
        &args.common,
        egress_sync::run(&args),
        "the next run continues where this one stopped",
        |report| {
            format!(
                "{} copied, {} deleted; {}",
                report.copied.len(),
                report.deleted.len(),
                egress_sync::execute::total_line(report)
            )
        },
    )
    .await
}
