//! The `egress-sync` binary: parse flags, set up logging, run, map the outcome to an exit code.

use clap::{CommandFactory, Parser};
use egress_common::{cleanup, logging, termination, ExitCode};
use egress_sync::config::{Args, EXTRA_ENV, REQUIRED_ENV};

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
        outcome = egress_sync::run(&args) => match outcome {
            Ok(report) => (
                ExitCode::Success,
                format!(
                    "egress-sync succeeded: {} copied, {} deleted; {}",
                    report.copied.len(),
                    report.deleted.len(),
                    egress_sync::execute::total_line(&report)
                ),
            ),
            Err(failure) => {
                eprintln!("egress-sync: error: {failure}");
                (failure.code, format!("egress-sync failed (exit {}): {failure}", failure.code.code()))
            }
        },
        // Dropping the run stops all transfers; what they left unfinished is aborted here.
        signal = cleanup::stop_signal() => {
            let aborted = cleanup::abort_all().await;
            let message = format!(
                "stopped by {}: aborted {aborted} unfinished upload(s); the next run continues where this one stopped",
                signal.name()
            );
            tracing::error!("{message}");
            eprintln!("egress-sync: {message}");
            (signal.exit_code(), format!("egress-sync {message}"))
        }
    };
    termination::write(&args.termination_log, &summary);
    std::process::exit(code.code());
}
