//! egress-sync end to end, through the binary against real servers (s3s-fs, moto, Ceph RGW
//! 16, local directories, a Pushgateway), one module per concern.

mod basics;
mod edges;
mod iceberg;
mod mirror;
mod operations;
mod protocol;
mod shares;

use std::path::Path;
use std::process::{Command, Output};

use egress_testkit::{Endpoint, S3Kind, S3Server};

/// egress-sync mirroring `input`/`in_path` into `output`/`out_path`, with small parts.
fn command(
    input: &dyn Endpoint,
    in_path: &str,
    output: &dyn Endpoint,
    out_path: &str,
    args: &[&str],
) -> Command {
    egress_testkit::fixtures::sync_command(
        env!("CARGO_BIN_EXE_egress-sync"),
        input,
        in_path,
        output,
        out_path,
        args,
    )
}

/// [`command`], run to its end.
fn sync(
    input: &dyn Endpoint,
    in_path: &str,
    output: &dyn Endpoint,
    out_path: &str,
    args: &[&str],
) -> Output {
    egress_testkit::run(&mut command(input, in_path, output, out_path, args))
}

/// [`sync`] of `input`'s bucket `src` into `output`'s bucket `dst`, ended with exit 0.
fn sync_ok(input: &dyn Endpoint, output: &dyn Endpoint, args: &[&str]) -> Output {
    let out = sync(input, "src", output, "dst", args);
    egress_testkit::assert_exit(&out, 0);
    out
}

/// An input server of kind `input` holding an empty bucket `src`, and an output server of
/// kind `output` holding an empty bucket `dst`.
async fn src_and_dst(input: S3Kind, output: S3Kind) -> (S3Server, S3Server) {
    let input = S3Server::with_bucket(input, "src").await;
    (input, S3Server::with_bucket(output, "dst").await)
}

/// egress-sync mirroring `input`/`in_path` into the local folder `out_dir`, run to its end.
fn sync_to_dir(input: &dyn Endpoint, in_path: &str, out_dir: &Path, args: &[&str]) -> Output {
    let mut cmd = command(input, in_path, input, "unused", args);
    egress_testkit::run(cmd.env("OUTPUT_URL", "").env("OUTPUT_PATH", out_dir))
}

/// egress-sync from the local folder `input` into the local folder `output`, with `args`.
fn local_command(input: &Path, output: &Path, args: &[&str]) -> Command {
    let mut cmd = egress_testkit::clean_command(env!("CARGO_BIN_EXE_egress-sync"));
    cmd.env("INPUT_PATH", input)
        .env("OUTPUT_PATH", output)
        .args(args);
    cmd
}
