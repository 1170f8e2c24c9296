//! Live progress: shared counters, and a one-line display on a terminal (never in a pod).

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Counters the pipeline stages bump as data flows.
#[derive(Debug, Default)]
pub struct Counters {
    rows: AtomicU64,
    raw_bytes: AtomicU64,
    compressed_bytes: AtomicU64,
}

impl Counters {
    /// Count rows and CSV bytes read from the database.
    pub fn add_read(&self, rows: u64, bytes: u64) {
        self.rows.fetch_add(rows, Ordering::Relaxed);
        self.raw_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
    /// Count gzip bytes produced.
    pub fn add_compressed(&self, bytes: u64) {
        self.compressed_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
    fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.rows.load(Ordering::Relaxed),
            self.raw_bytes.load(Ordering::Relaxed),
            self.compressed_bytes.load(Ordering::Relaxed),
        )
    }
}

/// Redraws a status line on stderr while a table is dumped; a no-op without a terminal.
pub struct Display {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Display {
    /// Start drawing for `table` if `enabled` and stderr is a terminal.
    pub fn start(table: String, counters: Arc<Counters>, enabled: bool) -> Display {
        if !enabled || !std::io::stderr().is_terminal() {
            return Display {
                stop: None,
                task: None,
            };
        }
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let started = Instant::now();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tick.tick() => {
                        let (rows, raw, gz) = counters.snapshot();
                        let secs = started.elapsed().as_secs_f64();
                        let line = format!(
                            "\r\x1b[K{table}: {rows} rows, {} CSV -> {} gzip, {}",
                            egress_common::units::human_bytes(raw),
                            egress_common::units::human_bytes(gz),
                            egress_common::units::human_rate(raw, secs),
                        );
                        let mut err = std::io::stderr();
                        let _ = err.write_all(line.as_bytes());
                        let _ = err.flush();
                    }
                }
            }
            let _ = std::io::stderr().write_all(b"\r\x1b[K");
        });
        Display {
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stop drawing and clear the line.
    pub async fn finish(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}
