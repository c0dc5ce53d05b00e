//! A one-line progress bar on stderr for long commands (backfill). Drawn
//! only when stderr is a terminal; otherwise a line every 10%.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use tillwatch_clickhouse::BackfillProgress;

pub struct Bar {
    tty: bool,
    last_decile: Option<u64>,
    drawn: bool,
}

impl Bar {
    pub fn new() -> Bar {
        Bar {
            tty: std::io::stderr().is_terminal(),
            last_decile: None,
            drawn: false,
        }
    }

    pub fn draw(&mut self, p: &BackfillProgress, elapsed: Duration) {
        let fraction = if p.bytes_total > 0 {
            p.bytes_done as f64 / p.bytes_total as f64
        } else if p.files_total > 0 {
            p.files_done as f64 / p.files_total as f64
        } else {
            1.0
        };
        let rate = p.rows as f64 / elapsed.as_secs_f64().max(0.001);
        let line = format!(
            "[{:<30}] {:>3.0}%  {}/{} files  {} rows  {:.0} rows/s",
            "=".repeat((fraction * 30.0) as usize),
            fraction * 100.0,
            p.files_done,
            p.files_total,
            p.rows,
            rate
        );
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r{line}");
            let _ = err.flush();
            self.drawn = true;
        } else {
            let decile = (fraction * 10.0) as u64;
            if self.last_decile != Some(decile) {
                self.last_decile = Some(decile);
                let _ = writeln!(err, "{line}");
            }
        }
    }

    pub fn finish(&mut self) {
        if self.drawn {
            eprintln!();
        }
    }
}
