//! What both binaries share on the command line (logging, timeouts, TLS, the termination
//! log) and how they end: run the work until it finishes or a stop signal arrives, report,
//! and exit with the code `main` chose.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use crate::logging::LogFormat;
use crate::signals;
use crate::termination;
use crate::ExitCode;

/// Which share of the work this process does: one of `--shards` processes (the pods of a
/// Kubernetes Indexed Job, which sets `JOB_COMPLETION_INDEX`).
#[derive(Debug, Clone, clap::Args)]
pub struct ShardArgs {
    /// Processes (pods of an Indexed Job) that share the work (1 = this process alone).
    #[arg(long, env = "SHARDS", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..=64))]
    pub shards: u64,

    /// This process's index among `--shards`; an Indexed Job sets it.
    #[arg(long, env = "JOB_COMPLETION_INDEX")]
    pub shard_index: Option<u64>,
}

/// This process's share: index `index` of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slice {
    /// This process's index (0-based).
    pub index: u64,
    /// How many processes share the work.
    pub count: u64,
}

impl ShardArgs {
    /// The share the flags ask for, checked.
    pub fn slice(&self) -> Result<Slice, crate::ConfigError> {
        Slice::checked(
            self.shards,
            self.shard_index,
            ["--shards", "SHARDS", "--shard-index"],
        )
    }
}

impl Slice {
    /// Index `index` of `count`, checked; `flags` names the count's flag, its variable and
    /// the index's flag in the lines that refuse it.
    pub fn checked(
        count: u64,
        index: Option<u64>,
        [flag, var, index_flag]: [&str; 3],
    ) -> Result<Slice, crate::ConfigError> {
        let index = match index {
            Some(i) if i >= count => {
                return Err(crate::ConfigError::new(format!(
                    "{index_flag} (JOB_COMPLETION_INDEX) {i} is not below {flag} ({var}) {count}: set {var} to the Job's completions"
                )))
            }
            Some(i) => i,
            None if count > 1 => {
                return Err(crate::ConfigError::new(format!(
                    "{flag} {count} needs this process's index: run it in an Indexed Job (JOB_COMPLETION_INDEX) or pass {index_flag}"
                )))
            }
            None => 0,
        };
        Ok(Slice { index, count })
    }
}

/// When a live progress line is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Progress {
    /// When stderr is a terminal.
    Auto,
    /// Never.
    Never,
}

/// Flags common to egress-dump and egress-sync.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// More log detail (-v debug, -vv trace).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Show a live progress line on a terminal: auto (when stderr is a TTY) or never.
    #[arg(long, env = "PROGRESS", value_enum, default_value = "auto")]
    pub progress: Progress,

    /// Connect and read timeout for the database and S3, in seconds.
    #[arg(long, env = "EGRESS_TIMEOUT", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,

    /// Extra CA certificates (PEM) to trust for HTTPS to S3, e.g. an internal Ceph's CA.
    #[arg(long, env = "AWS_CA_BUNDLE")]
    pub ca_bundle: Option<PathBuf>,

    /// Write a one-paragraph run summary here when the file is writable (Kubernetes shows it).
    #[arg(long, env = "TERMINATION_LOG", default_value = termination::DEFAULT_PATH)]
    pub termination_log: String,

    /// Permission bits (octal) of files written to a local output; directories get the same
    /// bits plus search where reading is allowed (default 600: dumps of customer tables are
    /// private).
    #[arg(long, env = "FILE_MODE", default_value = "600", value_parser = parse_mode)]
    pub file_mode: u32,

    /// How a local output keeps objects whole: machine (each object's bytes reach the disk
    /// before its name appears, so a power loss leaves it whole or absent) or process (named
    /// as soon as written, as rclone does: whole or absent if the run is killed or fails; a
    /// machine crash mid-run may leave the newest ones short, which the next run copies
    /// again). Either way a run that succeeds has flushed everything to disk.
    #[arg(long, env = "DURABILITY", default_value = "machine", value_parser = parse_durability)]
    pub durability: egress_store::Durability,

    /// When another run holds the lease on this run's output, wait up to this long for it
    /// to finish (e.g. 30m) instead of exiting 3 at once.
    #[arg(long, env = "WAIT_FOR_LEASE", default_value = "0",
          value_parser = crate::units::parse_duration)]
    pub wait_for_lease: Duration,

    /// How long this run's lease on its output lasts without renewal (it is renewed every
    /// quarter of that): a run that stops renewing (killed, frozen, cut off) holds its
    /// output at most this long, and a run paused longer than two thirds of it confirms
    /// its lease before writing again.
    #[arg(long, env = "LEASE_TTL", default_value = "60s",
          value_parser = parse_ttl)]
    pub lease_ttl: Duration,

    /// Check every configured endpoint (one line per capability) and exit: 0 when a run
    /// would work, 2 otherwise. Writes only under a temporary key, and removes it.
    #[arg(long)]
    pub check: bool,

    /// Where the run's metrics go.
    #[command(flatten)]
    pub metrics: crate::metrics::MetricsArgs,

    /// Print the environment variables this binary reads (for deployment checks) and exit.
    #[arg(long, hide = true)]
    pub list_env: bool,
}

impl CommonArgs {
    /// How this run takes its lease.
    pub fn lease(&self) -> crate::day::lease::Options {
        crate::day::lease::Options {
            wait: self.wait_for_lease,
            ttl: self.lease_ttl,
        }
    }

    /// How a local output is written.
    pub fn local(&self) -> egress_store::LocalOptions {
        egress_store::LocalOptions {
            file_mode: self.file_mode,
            durability: self.durability,
        }
    }

    /// The timeout as a `Duration`.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout)
    }

    /// Whether to draw a progress line (only ever on a terminal).
    pub fn progress(&self) -> bool {
        self.progress == Progress::Auto
    }
}

/// A lease's time to live: a duration of at least [`crate::day::lease::MIN_TTL`].
fn parse_ttl(text: &str) -> Result<Duration, String> {
    let ttl = crate::units::parse_duration(text)?;
    if ttl < crate::day::lease::MIN_TTL {
        return Err(format!(
            "'{text}' is too short for a lease: use at least {}s",
            crate::day::lease::MIN_TTL.as_secs()
        ));
    }
    Ok(ttl)
}

/// An octal permission mode such as `600` or `0640`.
fn parse_durability(text: &str) -> Result<egress_store::Durability, String> {
    match text.trim() {
        "machine" => Ok(egress_store::Durability::Machine),
        "process" => Ok(egress_store::Durability::Process),
        _ => Err(format!(
            "'{text}' is not a durability: use machine or process"
        )),
    }
}

fn parse_mode(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text.trim(), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("'{text}' is not an octal file mode: use e.g. 600 or 640"))
}

/// What the binaries offer besides a run.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Tool {
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `egress-dump man > egress-dump.1`.
    Man,
    /// Print the flags as a Markdown table (what docs/configuration.md holds).
    Flags,
}

/// Run `tool` for the command `cmd` (the binary's clap definition), printing to stdout.
fn run_tool(tool: &Tool, mut cmd: clap::Command) -> ExitCode {
    let name = cmd.get_name().to_string();
    // Rendered into memory first: clap_complete panics when its writer fails (a closed
    // pipe, as in `egress-dump completions bash | head`).
    let mut text = Vec::new();
    let written = match tool {
        Tool::Completions { shell } => {
            clap_complete::generate(*shell, &mut cmd, name.clone(), &mut text);
            Ok(())
        }
        Tool::Man => clap_mangen::Man::new(cmd).render(&mut text),
        Tool::Flags => std::io::Write::write_all(&mut text, flags_markdown(&cmd).as_bytes()),
    }
    .and_then(|()| std::io::Write::write_all(&mut std::io::stdout().lock(), &text));
    match written {
        Ok(()) => ExitCode::Success,
        Err(e) => {
            eprintln!("{name}: error: cannot write to stdout: {e}");
            ExitCode::Runtime
        }
    }
}

/// The flags of `cmd` as a Markdown table: flag, environment variable, default, and the
/// first sentence of its help (hidden flags left out). docs/configuration.md holds each
/// binary's, checked against this by the deployment tests, so the two cannot drift.
pub fn flags_markdown(cmd: &clap::Command) -> String {
    let mut out =
        String::from("| Flag | Environment | Default | Meaning |\n| --- | --- | --- | --- |\n");
    for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
        let id = arg.get_id().as_str();
        if matches!(id, "help" | "version") {
            continue;
        }
        let flag = match (arg.get_long(), arg.get_short()) {
            (Some(long), Some(short)) => format!("`-{short}`, `--{long}`"),
            (Some(long), None) => format!("`--{long}`"),
            (None, Some(short)) => format!("`-{short}`"),
            (None, None) => continue,
        };
        let env = arg
            .get_env()
            .map(|e| format!("`{}`", e.to_string_lossy()))
            .unwrap_or_default();
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().to_string())
            .filter(|v| !v.is_empty())
            .collect();
        let default = match defaults.is_empty() {
            true => String::new(),
            false => format!("`{}`", defaults.join(",")),
        };
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        let meaning = help.replace('\n', " ").replace('|', "\\|");
        out.push_str(&format!("| {flag} | {env} | {default} | {meaning} |\n"));
    }
    out
}

/// With the hidden `--list-env`, print the variables `cmd` reads (see
/// [`crate::envlist::listing`]) and return true: the binary then exits.
fn list_env(common: &CommonArgs, cmd: &clap::Command, extra: &[&str], required: &[&str]) -> bool {
    if common.list_env {
        print!("{}", crate::envlist::listing(cmd, extra, required));
    }
    common.list_env
}

/// What the steps every binary takes first read of its flags.
pub trait BinaryArgs: clap::Parser {
    /// The variables read beyond the flags: [extra, required] (for `--list-env`).
    const ENV: [&'static [&'static str]; 2];
    /// The flags both binaries share.
    fn common(&self) -> &CommonArgs;
    /// What was asked for instead of a run (completions, man page), if anything.
    fn tool(&self) -> Option<&Tool>;
}

/// Implements [`BinaryArgs`] for a binary's flags `$args`, whose fields `common` and `tool`
/// hold what it reads (the same two fields in both binaries), and which reads the
/// variables `$env` beyond its flags.
#[macro_export]
macro_rules! binary_args {
    ($args:ty, $env:expr) => {
        impl $crate::cli::BinaryArgs for $args {
            const ENV: [&'static [&'static str]; 2] = $env;

            fn common(&self) -> &$crate::cli::CommonArgs {
                &self.common
            }

            fn tool(&self) -> Option<&$crate::cli::Tool> {
                self.tool.as_ref()
            }
        }
    };
}

/// A binary's `main`: buffers of at least `map_buffers_from` bytes mapped on their own
/// (see [`crate::memory::map_buffers_from`]; before the runtime starts its threads), the
/// runtime started, the flags parsed, and the steps before a run taken; then `run` with
/// the flags, polled on this thread. The process exits with the code that returns.
pub fn start<A: BinaryArgs, F: Future<Output = ExitCode>>(
    program: &str,
    map_buffers_from: usize,
    run: impl FnOnce(A) -> F,
) -> ! {
    crate::memory::map_buffers_from(map_buffers_from);
    run_main(program, |runtime| runtime.block_on(entry(A::parse(), run)))
}

/// As [`start`], but when `on_workers` says so for the flags, `run` is a task on the
/// runtime's workers rather than polled on this thread.
///
/// Polled here, this thread is a stage of its own beside the workers, but every wake-up
/// from a worker crosses threads: one typed dump stream was woken 37,000 times (35% of
/// its context switches, `perf record -e sched:sched_switch`), which pays with one
/// connection (3.26 s vs 3.72 s median on workers, the bench table) and costs with several
/// (3.71 s vs 3.07 s, and 3.29 vs 2.35 client CPU-s, `--jobs 2 --split-larger-than 64MiB`).
pub fn start_on_workers<A, F>(
    program: &str,
    map_buffers_from: usize,
    on_workers: fn(&A) -> bool,
    run: impl FnOnce(A) -> F + Send + 'static,
) -> !
where
    A: BinaryArgs + Send + 'static,
    F: Future<Output = ExitCode> + Send + 'static,
{
    crate::memory::map_buffers_from(map_buffers_from);
    run_main(program, |runtime| {
        let args = A::parse();
        if !on_workers(&args) {
            return runtime.block_on(entry(args, run));
        }
        runtime.block_on(async {
            match tokio::spawn(entry(args, run)).await {
                Ok(code) => code,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => ExitCode::Runtime,
            }
        })
    })
}

/// The steps before a run taken; then `run` with the flags.
async fn entry<A: BinaryArgs, F: Future<Output = ExitCode>>(
    args: A,
    run: impl FnOnce(A) -> F,
) -> ExitCode {
    if let Some(code) = before_run(args.common(), args.tool(), A::command(), A::ENV) {
        return code;
    }
    run(args).await
}

/// The exit code an error of the store, the lease or the configuration means, the same
/// in both binaries: 3 when another run holds the output (or this one lost it), 2 when
/// the configuration must change. `None` for an error of none of these.
pub fn shared_exit_code(error: &anyhow::Error) -> Option<ExitCode> {
    use crate::error::find;
    use egress_store::{ErrorKind, StoreError};
    let lost = find::<StoreError>(error).is_some_and(|e| e.kind() == ErrorKind::LeaseLost);
    if lost || find::<crate::day::lease::Busy>(error).is_some() {
        return Some(ExitCode::Busy);
    }
    if find::<crate::ConfigError>(error).is_some() {
        return Some(ExitCode::Usage);
    }
    find::<StoreError>(error).map(|e| match e.kind().is_configuration() {
        true => ExitCode::Usage,
        false => ExitCode::Runtime,
    })
}

/// The steps before a binary's run, the same in both: `--list-env` (with the variables
/// `env` = [extra, required] names beyond the flags), a `tool` (completions, man page),
/// then logging. Returns the exit code when the binary ends there.
fn before_run(
    common: &CommonArgs,
    tool: Option<&Tool>,
    cmd: clap::Command,
    env: [&[&str]; 2],
) -> Option<ExitCode> {
    if list_env(common, &cmd, env[0], env[1]) {
        return Some(ExitCode::Success);
    }
    if let Some(tool) = tool {
        return Some(run_tool(tool, cmd));
    }
    crate::logging::init(common.log_format, common.verbose, false);
    None
}

/// How a binary ends a run: its name, what a stop leaves behind, how to describe success,
/// and which exit code an error means (chosen in `main`).
pub struct Ending<T> {
    /// The binary's name, for messages.
    pub program: &'static str,
    /// What a stop by signal leaves behind, for the message.
    pub on_stop: &'static str,
    /// One line about a successful outcome.
    pub summarise: fn(&T) -> String,
    /// The exit code for a failed run.
    pub exit_code: fn(&anyhow::Error) -> ExitCode,
    /// The program's own metrics of an outcome (per table, per action), besides the run's.
    pub metrics: fn(Result<&T, &anyhow::Error>) -> Vec<crate::metrics::Family>,
}

/// Run `work` until it finishes or SIGTERM/SIGINT arrives. On a signal the work is
/// dropped (so nothing new starts) and whatever it left unfinished is aborted. Prints the
/// one-line error, writes the termination log, and returns the exit code.
pub async fn run_to_exit<T>(
    args: &CommonArgs,
    work: impl Future<Output = anyhow::Result<T>>,
    ending: Ending<T>,
) -> ExitCode {
    let program = ending.program;
    let started = std::time::SystemTime::now();
    let mut details = Vec::new();
    let (code, summary) = tokio::select! {
        outcome = work => match outcome {
            Ok(done) => {
                details = (ending.metrics)(Ok(&done));
                (ExitCode::Success, format!("{program} succeeded: {}", (ending.summarise)(&done)))
            }
            Err(error) => {
                let line = crate::error::one_line(&error);
                eprintln!("{program}: error: {line}");
                let code = (ending.exit_code)(&error);
                details = (ending.metrics)(Err(&error));
                (code, format!("{program} failed (exit {}): {line}", code.code()))
            }
        },
        signal = signals::stop_signal() => {
            let aborted = egress_store::stop::abort_all().await;
            let message = format!(
                "stopped by {}: aborted {aborted} unfinished upload(s); {}",
                signal.name(), ending.on_stop
            );
            tracing::error!("{message}");
            eprintln!("{program}: {message}");
            (signal.exit_code(), format!("{program} {message}"))
        }
    };
    termination::write(&args.termination_log, &summary);
    let outcome = crate::metrics::RunOutcome {
        started,
        ended: std::time::SystemTime::now(),
        exit_code: code.code(),
    };
    // Blocking I/O (a file, one HTTP request with a 10 s timeout) after the work is done.
    let metrics = args.metrics.clone();
    let _ = tokio::task::spawn_blocking(move || {
        crate::metrics::publish(&metrics, program, &outcome, details)
    })
    .await;
    code
}

/// Start the runtime and run `main` on it; the process's exit code is what `main` returns.
fn run_main(program: &str, main: impl FnOnce(&tokio::runtime::Runtime) -> ExitCode) -> ! {
    let code = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => main(&runtime),
        Err(e) => {
            eprintln!("{program}: error: cannot start the async runtime: {e}");
            ExitCode::Runtime
        }
    };
    std::process::exit(code.code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durability_and_mode_parse_or_say_what_to_write() {
        assert_eq!(
            parse_durability("process"),
            Ok(egress_store::Durability::Process)
        );
        assert_eq!(
            parse_durability(" machine"),
            Ok(egress_store::Durability::Machine)
        );
        let refused = parse_durability("fast").unwrap_err();
        assert!(refused.contains("use machine or process"), "{refused}");
        assert_eq!(parse_mode("640"), Ok(0o640));
        assert!(parse_mode("999").is_err());
    }
}
