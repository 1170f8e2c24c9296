//! egress-sync end to end, through the binary against real servers (s3s-fs, moto, Ceph RGW
//! 16, local directories, a Pushgateway), one module per concern.

mod basics;
mod edges;
mod iceberg;
mod mirror;
mod operations;
mod protocol;
mod shares;

use std::process::{Command, Output};

use egress_testkit::Endpoint;

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
