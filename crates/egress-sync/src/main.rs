//! The `egress-sync` binary: parse flags, set up logging, run, map the outcome to an exit code.

use clap::{CommandFactory, Parser};
use egress_common::{logging, ExitCode};
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
    let code = match egress_sync::run(&args).await {
        Ok(_) => ExitCode::Success,
        Err(failure) => {
            eprintln!("egress-sync: error: {failure}");
            failure.code
        }
    };
    std::process::exit(code.code());
}
