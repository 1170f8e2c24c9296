//! The `egress-dump` binary: parse flags, set up logging, run, map the outcome to an exit code.

use clap::{CommandFactory, Parser};
use egress_common::{cli, logging, ExitCode};
use egress_dump::config::{Args, EXTRA_ENV, REQUIRED_ENV};

fn main() {
    cli::run_main("egress-dump", run)
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
        "egress-dump",
        &args.common,
        egress_dump::run(&args),
        "no manifest written; the next run starts clean",
        |reports| {
            let tables: Vec<&str> = reports.iter().map(|r| r.table.as_str()).collect();
            format!("{} table(s) dumped: {}", tables.len(), tables.join(" "))
        },
    )
    .await
}
