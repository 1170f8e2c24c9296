//! A self-contained demo of both programs: start a throwaway PostgreSQL, create two sample
//! tables, dump them with egress-dump into `./egress-demo-out/dump`, mirror that day into
//! `./egress-demo-out/mirror` with egress-sync (complete days only), verify the mirror
//! against the day's manifest, and show what was written.
//!
//! Run it with `cargo run -p egress-dump --example demo`.

use std::path::Path;

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
    let out = std::env::current_dir()?.join("egress-demo-out");
    let (dump_dir, mirror_dir) = (out.join("dump"), out.join("mirror"));
    let url = format!(
        "postgresql://{}:{}@127.0.0.1:{}/postgres",
        egress_testkit::postgres::USER,
        egress_testkit::postgres::PASSWORD,
        pg.port
    );
    let dump = egress_dump::Args::parse_from([
        "egress-dump",
        "--tables",
        "tally_snapshots subscription_capacity",
        "--output",
        &dump_dir.display().to_string(),
        "--database-url",
        &url,
    ]);
    logging::init(dump.common.log_format, 0, false);
    println!("\n== egress-dump: two tables into {}", dump_dir.display());
    let settings = egress_dump::settings::Settings::from_args(&dump).map_err(anyhow::Error::from);
    exit_on_error(match settings {
        Ok(settings) => egress_dump::run(&settings).await,
        Err(e) => Err(e),
    });

    let sync = |extra: &[&str]| {
        let mut argv = vec![
            "egress-sync".to_string(),
            "--input-path".into(),
            dump_dir.display().to_string(),
            "--output-path".into(),
            mirror_dir.display().to_string(),
            "--require-manifest".into(),
        ];
        argv.extend(extra.iter().map(|s| s.to_string()));
        egress_sync::Args::parse_from(argv)
    };
    println!(
        "\n== egress-sync: complete days of {} into {}",
        dump_dir.display(),
        mirror_dir.display()
    );
    let mirror = async {
        let settings = egress_sync::Settings::from_args(&sync(&[]))?;
        let sides = egress_sync::sides::Sides::open(&settings).await?;
        egress_sync::mirror::run(&settings, sides).await
    };
    exit_on_error(mirror.await);
    println!("\n== egress-sync --verify output: the mirror against the day's manifest");
    let verify = async {
        let settings = egress_sync::Settings::from_args(&sync(&["--verify", "output"]))?;
        egress_sync::verify::run(&settings, egress_sync::sides::Side::Output).await
    };
    exit_on_error(verify.await);

    println!("\nWritten under {}:", out.display());
    show(&out, &mirror_dir)?;
    Ok(())
}

fn exit_on_error<T>(outcome: anyhow::Result<T>) {
    if let Err(e) = outcome {
        eprintln!("demo: error: {}", egress_common::error::one_line(&e));
        std::process::exit(1);
    }
}

/// Each dumped day, its files, and the first lines of each CSV.
fn show(out: &Path, mirror: &Path) -> Result<(), Box<dyn std::error::Error>> {
    for day in std::fs::read_dir(mirror)? {
        let day = day?.path();
        let mut files: Vec<_> = std::fs::read_dir(&day)?.collect::<Result<Vec<_>, _>>()?;
        files.sort_by_key(|f| f.file_name());
        for file in files {
            let file = file.path();
            let shown = file.strip_prefix(out)?.display();
            let name = file.file_name().map(|n| n.to_string_lossy().to_string());
            let what = match name.as_deref() {
                Some("_manifest.json") => Some("the day's manifest: every object of the day with its size and SHA-256, written last, so its presence means the day is complete"),
                Some("datapackage.json") => Some("the day's Frictionless descriptor: each table's fields, types, NOT NULLs and primary key, for generic readers"),
                _ => None,
            };
            if let Some(what) = what {
                println!("  {shown} ({what})");
                continue;
            }
            let bytes = std::fs::read(&file)?;
            let csv = gunzip(&bytes);
            println!(
                "  {shown} ({} bytes gzip, {} bytes CSV); first lines:",
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
