//! The `egress-dump` binary: parse flags, set up logging, run, map the outcome to an exit code.

use clap::Parser;
use egress_common::{logging, ExitCode};
use egress_dump::Args;

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if args.list_env {
        use clap::CommandFactory;
        let cmd = Args::command();
        print!(
            "{}",
            egress_common::envlist::listing(
                &cmd,
                egress_dump::config::EXTRA_ENV,
                egress_dump::config::REQUIRED_ENV
            )
        );
        return;
    }
    logging::init(args.log_format, args.verbose, false);
    let code = match egress_dump::run(&args).await {
        Ok(_) => ExitCode::Success,
        Err(failure) => {
            eprintln!("egress-dump: error: {failure}");
            failure.code
        }
    };
    std::process::exit(code.code());
}
