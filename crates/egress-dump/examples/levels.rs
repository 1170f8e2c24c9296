//! How each `--compression-level` compresses a CSV file with each engine, on one thread:
//! output bytes, ratio to a reference size, and CPU seconds. `bench/run.sh` runs it on two
//! different tables to choose and document the level mapping.
//!
//! `cargo run --release -p egress-dump --example levels -- FILE.csv [REFERENCE_BYTES]`

use std::io::Read;

use bytes::Bytes;
use egress_dump::gzip::{self, Engine, Settings};
use egress_dump::progress::Counters;
use tokio::sync::mpsc;

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct we pass; RUSAGE_SELF is always valid.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// Compress `data` once; returns (output bytes, members, CPU seconds).
fn measure(data: &Bytes, engine: Engine, level: u32) -> (u64, u64, f64) {
    let (in_tx, in_rx) = mpsc::channel(16);
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(16);
    let feeder = {
        let data = data.clone();
        std::thread::spawn(move || {
            for offset in (0..data.len()).step_by(1 << 20) {
                let end = (offset + (1 << 20)).min(data.len());
                if in_tx.blocking_send(data.slice(offset..end)).is_err() {
                    return;
                }
            }
        })
    };
    let drain = std::thread::spawn(move || while out_rx.blocking_recv().is_some() {});
    let before = cpu_seconds();
    let settings = Settings {
        level,
        engine,
        threads: 1,
        part_size: |_| 8 << 20,
    };
    let stats = gzip::compress(
        gzip::Stage::new(in_rx, out_tx, &Counters::default()),
        settings,
    );
    let cpu = cpu_seconds() - before;
    let _ = feeder.join();
    let _ = drain.join();
    match stats {
        Ok(s) => (s.compressed_bytes, s.gzip_members, cpu),
        Err(e) => {
            eprintln!("compression failed: {e}");
            std::process::exit(1);
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: levels FILE.csv [REFERENCE_BYTES]");
        std::process::exit(2);
    };
    let mut data = Vec::new();
    if let Err(e) = std::fs::File::open(&path).and_then(|mut f| f.read_to_end(&mut data)) {
        eprintln!("cannot read {path}: {e}");
        std::process::exit(2);
    }
    let reference: Option<f64> = args.next().and_then(|r| r.parse().ok());
    let data = Bytes::from(data);
    println!("engine\tlevel\tbytes\tmembers\tratio\tcpu_s");
    for (engine, name) in [
        (Engine::Libdeflate, "libdeflate"),
        (Engine::Zlib, "zlib-rs"),
    ] {
        for level in 1..=9 {
            let (bytes, members, cpu) = measure(&data, engine, level);
            let ratio = reference.map_or(String::new(), |r| format!("{:.3}", bytes as f64 / r));
            println!("{name}\t{level}\t{bytes}\t{members}\t{ratio}\t{cpu:.2}");
        }
    }
}
