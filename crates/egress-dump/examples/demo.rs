//! A self-contained demo: start a throwaway PostgreSQL, create two sample tables, dump them
//! with egress-dump into `./egress-demo-out`, and show what was written.
//!
//! Run it with `cargo run -p egress-dump --example demo`.

use clap::Parser;
use egress_common::logging;
use egress_testkit::{gunzip, PgServer};

const SAMPLE: &str = "
CREATE TABLE tally_snapshots AS
  SELECT i AS id, 'org-' || (i % 7) AS org_id, now() - i * interval '1 hour' AS snapshot_date,
         jsonb_build_object('cores', i % 16, 'sockets', i % 4) AS tally, (i * 1.5)::numeric AS value
  FROM generate_series(1, 5000) i;
CREATE TABLE subscription_capacity AS
  SELECT i AS id, 'sku, \"premium\"' AS sku, i % 3 = 0 AS has_unlimited, NULL::text AS note
  FROM generate_series(1, 100) i;
";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("Starting a throwaway PostgreSQL ...");
    let pg = PgServer::start();
    pg.client().await.batch_execute(SAMPLE).await?;
    let out_dir = std::env::current_dir()?.join("egress-demo-out");
    let url = format!(
        "postgresql://{}:{}@127.0.0.1:{}/postgres",
        egress_testkit::postgres::USER,
        egress_testkit::postgres::PASSWORD,
        pg.port
    );
    let args = egress_dump::Args::parse_from([
        "egress-dump",
        "--tables",
        "tally_snapshots subscription_capacity",
        "--output",
        out_dir.to_str().unwrap_or("egress-demo-out"),
        "--database-url",
        &url,
    ]);
    logging::init(args.common.log_format, 0, false);
    if let Err(failure) = egress_dump::run(&args).await {
        eprintln!("egress-dump: error: {failure}");
        std::process::exit(failure.code.code());
    }
    println!("\nWritten under {}:", out_dir.display());
    for day in std::fs::read_dir(&out_dir)? {
        let day = day?.path();
        let mut files: Vec<_> = std::fs::read_dir(&day)?.collect::<Result<Vec<_>, _>>()?;
        files.sort_by_key(|f| f.file_name());
        for file in files {
            let file = file.path();
            if !file.to_string_lossy().ends_with(".csv.gz") {
                // The day's completion marker: tables, rows, sizes and checksums.
                println!(
                    "  {} (the manifest: written last, marks the day complete)",
                    file.strip_prefix(&out_dir)?.display()
                );
                continue;
            }
            let bytes = std::fs::read(&file)?;
            let csv = gunzip(&bytes);
            println!(
                "  {} ({} bytes gzip, {} bytes CSV); first lines:",
                file.strip_prefix(&out_dir)?.display(),
                bytes.len(),
                csv.len()
            );
            for line in String::from_utf8_lossy(&csv).lines().take(3) {
                println!("    {line}");
            }
        }
    }
    Ok(())
}
