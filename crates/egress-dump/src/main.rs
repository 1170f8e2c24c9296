//! The `egress-dump` binary: parse flags, set up logging, run, map the outcome to an exit code.

use clap::{CommandFactory, Parser};
use egress_common::{cleanup, logging, termination, ExitCode};
use egress_dump::config::{Args, EXTRA_ENV, REQUIRED_ENV};

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if args.list_env {
        print!(
            "{}",
            egress_common::envlist::listing(&Args::command(), EXTRA_ENV, REQUIRED_ENV)
        );
        return;
    }
    logging::init(args.log_format, args.verbose, false);
    let (code, summary) = tokio::select! {
        outcome = egress_dump::run(&args) => match outcome {
            Ok(reports) => {
                let tables: Vec<&str> = reports.iter().map(|r| r.table.as_str()).collect();
                (ExitCode::Success, format!("egress-dump succeeded: {} table(s) dumped: {}", tables.len(), tables.join(" ")))
            }
            Err(failure) => {
                eprintln!("egress-dump: error: {failure}");
                (failure.code, format!("egress-dump failed (exit {}): {failure}", failure.code.code()))
            }
        },
        // Dropping the run stops all work; what it left unfinished is aborted here.
        signal = cleanup::stop_signal() => {
            let aborted = cleanup::abort_all().await;
            let message = format!(
                "stopped by {}: aborted {aborted} unfinished upload(s), no manifest written; the next run starts clean",
                signal.name()
            );
            tracing::error!("{message}");
            eprintln!("egress-dump: {message}");
            (signal.exit_code(), format!("egress-dump {message}"))
        }
    };
    termination::write(&args.termination_log, &summary);
    std::process::exit(code.code());
}
