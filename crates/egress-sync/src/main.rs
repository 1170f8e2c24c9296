//! The `egress-sync` binary: parse flags, set up logging, run the chosen mode (mirror, or
//! `--verify`), choose the exit code.

use egress_common::cli::{self, Ending};
use egress_common::ExitCode;
use egress_sync::config::Args;
use egress_sync::settings::{Mode, Settings};
use egress_sync::sides::Sides;

fn main() {
    // Part buffers come and go all the time here.
    cli::start("egress-sync", 128 * 1024, run)
}

async fn run(args: Args) -> ExitCode {
    if args.common.check {
        return egress_common::preflight::report(&egress_sync::preflight::run(&args).await);
    }
    // The settings are built once, here; a wrong one ends the run like any other error.
    let settings = Settings::from_args(&args);
    let mode = settings.as_ref().map_or(Mode::Mirror, |s| s.mode);
    let mut common = args.common.clone();
    match mode {
        Mode::Verify(side) => {
            let ending = Ending {
                program: "egress-sync",
                on_stop: "nothing was changed",
                summarise: |v: &egress_sync::verify::Verification| {
                    format!("{} folder(s) verified", v.folders.len())
                },
                exit_code,
                metrics: |_| Vec::new(),
            };
            // A check is not a mirror run: it must not replace the mirror's metrics.
            common.metrics.off();
            let work = async move { egress_sync::verify::run(&settings?, side).await };
            cli::run_to_exit(&common, work, ending).await
        }
        Mode::Mirror => {
            let ending = Ending {
                program: "egress-sync",
                on_stop: "the next run continues where this one stopped",
                summarise: |r: &egress_sync::report::Report| {
                    format!(
                        "{} copied, {} deleted, {} vanished; {}",
                        r.copied,
                        r.deleted,
                        r.vanished,
                        r.total_line()
                    )
                },
                exit_code,
                metrics: egress_sync::report::metrics,
            };
            if args.dry_run {
                // A dry run is no run the alerts watch.
                common.metrics.off();
            }
            let work = async move {
                let settings = settings?;
                let sides = Sides::open(&settings).await?;
                egress_sync::mirror::run(&settings, sides).await
            };
            cli::run_to_exit(&common, work, ending).await
        }
    }
}

/// The one place errors become exit codes: 2 when the configuration (paths, credentials,
/// buckets, guards) must change, 1 for anything a later run may not meet.
fn exit_code(error: &anyhow::Error) -> ExitCode {
    cli::shared_exit_code(error).unwrap_or(ExitCode::Runtime)
}
