//! A live status line on stderr while a run works, redrawn a few times a second; only on a
//! terminal (a pod's log gets the log lines, never this).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// A status line being redrawn; [`Line::finish`] clears it.
pub struct Line {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Line {
    /// Redraw `render(elapsed)` every 200 ms if `enabled` and stderr is a terminal.
    pub fn start(enabled: bool, render: impl Fn(Duration) -> String + Send + 'static) -> Line {
        if !enabled || !std::io::stderr().is_terminal() {
            return Line {
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
                        let line = format!("\r\x1b[K{}", render(started.elapsed()));
                        let mut err = std::io::stderr();
                        let _ = err.write_all(line.as_bytes());
                        let _ = err.flush();
                    }
                }
            }
            let _ = std::io::stderr().write_all(b"\r\x1b[K");
        });
        Line {
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
