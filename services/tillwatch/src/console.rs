//! What `tillwatch demo` and `tillwatch standalone` show on a terminal:
//! the banner, then one status line redrawn in place (terminals online,
//! readings per second, alerts firing, jobs done and due), with the logs in
//! a file of the data dir. A service run by a supervisor (stderr not a
//! terminal), a `RUST_LOG` set by the operator, or `--log stderr` keeps the
//! structured logs on stderr and draws no status line.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tillwatch_meta::{AlertFilter, AlertState, MetaStore};

/// Where log lines go: stderr until [`log_to_file`] is called.
static SINK: Mutex<Option<std::fs::File>> = Mutex::new(None);

/// One log line's writer, for `tracing_subscriber`'s `with_writer`.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut sink = SINK
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match sink.as_mut() {
            Some(file) => file.write(buf),
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let mut sink = SINK
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match sink.as_mut() {
            Some(file) => file.flush(),
            None => std::io::stderr().flush(),
        }
    }
}

/// Where a role attached to a terminal logs: `--log`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTo {
    /// A file of the data dir (`tillwatch.log`) when attached to a
    /// terminal and `RUST_LOG` is unset; stderr otherwise.
    Auto,
    Stderr,
    File(PathBuf),
}

impl std::str::FromStr for LogTo {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<LogTo, Self::Err> {
        Ok(match s {
            "auto" => LogTo::Auto,
            "stderr" | "-" => LogTo::Stderr,
            path => LogTo::File(PathBuf::from(path)),
        })
    }
}

/// Whether the process is attached to a terminal as a person runs it.
pub fn attended() -> bool {
    std::io::stdout().is_terminal() && std::io::stderr().is_terminal()
}

/// The file logs go to for `--log` and `data_dir`, if not stderr.
pub fn log_file(log: &LogTo, data_dir: &Path) -> Option<PathBuf> {
    match log {
        LogTo::Stderr => None,
        LogTo::File(path) => Some(path.clone()),
        LogTo::Auto => (attended() && std::env::var_os("RUST_LOG").is_none())
            .then(|| data_dir.join("tillwatch.log")),
    }
}

/// Sends every log line from now on to `path` (appended).
pub fn log_to_file(path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| anyhow::anyhow!("--log: opening {}: {e}", path.display()))?;
    *SINK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(file);
    Ok(())
}

/// The sum of a metric's series in Prometheus text (every label set).
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |a, b| a + b)
}

/// A metric's series with `label="value"`, summed.
fn metric_with(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{') && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |a, b| a + b)
}

/// One status line's numbers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Status {
    pub online: usize,
    pub terminals: usize,
    pub readings_per_s: f64,
    pub firing: usize,
    pub runs_done: u64,
    pub runs_due: u64,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} terminals online · {:.0} readings/s · {} alert{} firing · jobs: {} runs since start, {} due",
            self.online,
            self.terminals,
            self.readings_per_s,
            self.firing,
            if self.firing == 1 { "" } else { "s" },
            self.runs_done,
            self.runs_due
        )
    }
}

async fn read_status(store: &MetaStore, metrics: &str, readings_per_s: f64) -> Status {
    let states = store.load_connectivity().await.unwrap_or_default();
    let online = states
        .iter()
        .filter(|(_, s)| {
            matches!(
                s.state,
                Some(tillwatch_domain::connectivity::ConnState::Online)
            )
        })
        .count();
    let firing = store
        .alerts(AlertFilter::State(AlertState::Firing), 100_000)
        .await
        .map(|a| a.len())
        .unwrap_or(0);
    Status {
        online,
        terminals: states.len(),
        readings_per_s,
        firing,
        runs_done: metric_with(
            metrics,
            "tillwatch_scheduler_runs_total",
            "status=\"succeeded\"",
        ) as u64,
        runs_due: metric_sum(metrics, "tillwatch_scheduler_partitions_due") as u64,
    }
}

/// Redraws the status line on stdout every two seconds until `stop`
/// turns true, then ends it with a newline.
pub async fn status_line(
    store: MetaStore,
    log: Option<PathBuf>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let handle = tillwatch_serve::metrics_handle();
    let mut last = (Instant::now(), 0.0);
    if let Some(log) = &log {
        println!("  logs          {}", log.display());
    }
    println!();
    loop {
        let text = handle.render();
        let stored = metric_sum(&text, "tillwatch_gateway_readings_stored_total");
        let now = Instant::now();
        let secs = now.duration_since(last.0).as_secs_f64();
        let rate = if secs > 0.0 {
            (stored - last.1).max(0.0) / secs
        } else {
            0.0
        };
        last = (now, stored);
        let status = read_status(&store, &text, rate).await;
        {
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "\r\x1b[2K  now           {status}");
            let _ = out.flush();
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    println!();
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE tillwatch_gateway_readings_stored_total counter\n\
        tillwatch_gateway_readings_stored_total{kind=\"battery\"} 10\n\
        tillwatch_gateway_readings_stored_total{kind=\"connectivity\"} 5\n\
        tillwatch_gateway_readings_stored_totally 99\n\
        tillwatch_scheduler_runs_total{job=\"a\",status=\"succeeded\"} 7\n\
        tillwatch_scheduler_runs_total{job=\"a\",status=\"failed\"} 2\n";

    #[test]
    fn metrics_are_summed_over_their_labels_and_no_other_name() {
        assert_eq!(
            metric_sum(TEXT, "tillwatch_gateway_readings_stored_total"),
            15.0
        );
        assert_eq!(
            metric_with(
                TEXT,
                "tillwatch_scheduler_runs_total",
                "status=\"succeeded\""
            ),
            7.0
        );
        assert_eq!(metric_sum(TEXT, "tillwatch_nothing"), 0.0);
    }

    #[test]
    fn the_status_line_reads_as_a_sentence() {
        let s = Status {
            online: 58,
            terminals: 61,
            readings_per_s: 29.6,
            firing: 1,
            runs_done: 412,
            runs_due: 0,
        };
        assert_eq!(
            s.to_string(),
            "58/61 terminals online · 30 readings/s · 1 alert firing · jobs: 412 runs since start, 0 due"
        );
    }

    #[test]
    fn log_goes_where_it_is_told() {
        let dir = Path::new("/tmp/d");
        assert_eq!(log_file(&LogTo::Stderr, dir), None);
        assert_eq!(
            log_file(&"x.log".parse().unwrap(), dir),
            Some(PathBuf::from("x.log"))
        );
    }
}
