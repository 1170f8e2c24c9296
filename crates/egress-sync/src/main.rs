//! The `egress-sync` binary (not implemented yet).

fn main() {
    eprintln!("egress-sync: not implemented yet");
    std::process::exit(2);
}
