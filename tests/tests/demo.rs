//! `tillwatch demo` as a newcomer runs it: a process on a fresh data dir,
//! attached to a terminal (a pseudo-terminal, from util-linux's `script`).
//! Within 90 seconds it must be worth looking at: a week of history rolled
//! up (cohorts, hourly series, job runs), alerts that fired and resolved
//! and one still firing, the hour in progress on the charts; and the
//! terminal must stay calm: the banner, then a status line, with the logs
//! in a file.

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tillwatch_domain::UtcMillis;
use tillwatch_integration_tests::browser::{Browser, artifact_dir};
use tillwatch_integration_tests::{http_call, tillwatch_bin};

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

/// The demo under `script`, its terminal's output collected as it comes.
struct Demo {
    child: Child,
    output: Arc<Mutex<String>>,
}

impl Demo {
    fn start(data_dir: &std::path::Path) -> Demo {
        let command = format!(
            "exec '{}' demo --data-dir '{}' --http-listen 127.0.0.1:0 --mqtt-listen 127.0.0.1:0",
            tillwatch_bin().display(),
            data_dir.display()
        );
        let mut child = Command::new("script")
            .args([
                "--quiet",
                "--flush",
                "--return",
                "--command",
                &command,
                "/dev/null",
            ])
            .env_remove("RUST_LOG")
            .env("TERM", "xterm")
            // Its gRPC port too is the system's choice, not the default.
            .env("TILLWATCH__GRPC__LISTEN", "127.0.0.1:0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the demo under script (util-linux)");
        let mut stdout = child.stdout.take().expect("piped stdout");
        let output = Arc::new(Mutex::new(String::new()));
        let sink = output.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Demo { child, output }
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// The dashboards' address and the viewer token, once printed.
    fn address_and_token(&self) -> Option<(SocketAddr, String)> {
        let out = self.output();
        let http = out
            .lines()
            .find_map(|l| l.trim().strip_prefix("dashboards    http://"))?
            .split('/')
            .next()?
            .parse()
            .ok()?;
        let token = out
            .lines()
            .find_map(|l| l.trim().strip_prefix("viewer   "))?
            .trim()
            .to_string();
        Some((http, token))
    }
}

impl Demo {
    /// Ctrl-C on its terminal, as a person stops it; whether it ended by
    /// itself, successfully, within 30 seconds.
    fn interrupt(&mut self) -> bool {
        use std::io::Write;
        if let Some(stdin) = self.child.stdin.as_mut() {
            let _ = stdin.write_all(b"\x03");
            let _ = stdin.flush();
        }
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

/// The processes whose parent is `pid` (from /proc).
fn children_of(pid: u32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // pid (comm) state ppid …: comm may hold spaces, so after ')'.
            let ppid: u32 = stat
                .rsplit(')')
                .next()?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == pid).then(|| e.file_name().to_str()?.parse().ok())?
        })
        .collect()
}

impl Drop for Demo {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) && !self.interrupt() {
            // Still running: the demo under `script` first, then script.
            for child in children_of(self.child.id()) {
                let _ = Command::new("kill")
                    .args(["-KILL", &child.to_string()])
                    .status();
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn get(http: SocketAddr, token: &str, path: &str) -> Result<Value, String> {
    let (status, body) =
        http_call(http, "GET", path, None, Some(token)).map_err(|e| format!("{path}: {e}"))?;
    if status != 200 {
        return Err(format!("{path}: {status} {body}"));
    }
    serde_json::from_str(&body).map_err(|e| format!("{path}: {e}: {body}"))
}

/// What a newcomer should find; `Err` names the first thing missing.
fn worth_looking_at(http: SocketAddr, token: &str) -> Result<(), String> {
    let now = UtcMillis::now().0;
    // Yesterday (the day before in the first hour after midnight UTC,
    // while yesterday's last hour is within its lateness).
    let yesterday = jiff::Timestamp::from_millisecond(now - DAY - HOUR)
        .unwrap()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date();
    // Yesterday's cohorts: several firmware or app versions side by side.
    let cohorts = get(
        http,
        token,
        &format!("/api/v1/fleet/cohorts?day={yesterday}"),
    )?;
    let versions = |key: &str| {
        cohorts["cohorts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c[key].as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    };
    if versions("firmware_version") < 3 && versions("app_version") < 3 {
        return Err(format!(
            "yesterday's cohorts show fewer than 3 versions: {cohorts}"
        ));
    }
    // A terminal's week, hour by hour.
    let week = get(
        http,
        token,
        &format!(
            "/api/v1/devices/term-00003/series?from={}&to={now}&resolution=hour",
            now - 7 * DAY
        ),
    )?;
    let points = week["series"]["battery_level_pct"]
        .as_array()
        .map_or(0, Vec::len);
    if points < 100 {
        return Err(format!("term-00003's week has {points} hourly points"));
    }
    // Its last 24 hours (the default view) reach into the hour in progress.
    let day = get(http, token, "/api/v1/devices/term-00003/series")?;
    let newest = day["series"]["battery_level_pct"]
        .as_array()
        .and_then(|p| p.last())
        .and_then(|p| p[0].as_i64())
        .unwrap_or(0);
    if newest < now - now.rem_euclid(HOUR) {
        return Err(format!(
            "term-00003's day ends at {newest}, before the hour in progress"
        ));
    }
    // Alerts that came and went, and one that is on now.
    for state in ["resolved", "firing"] {
        let alerts = get(
            http,
            token,
            &format!("/api/v1/alerts?state={state}&limit=5"),
        )?;
        if alerts["alerts"].as_array().is_none_or(Vec::is_empty) {
            return Err(format!("no {state} alert"));
        }
    }
    // A day of each hourly job's runs that wrote rows, each taking the
    // time it took (the history's runs are not all "0 ms" on the page).
    for job in ["raw_compaction", "device_health_hourly"] {
        let runs = get(http, token, &format!("/api/v1/jobs/{job}/runs?limit=1000"))?;
        let done: Vec<&Value> = runs["runs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["status"] == "succeeded" && r["rows"].as_i64() > Some(0))
            .collect();
        if done.len() < 24 {
            return Err(format!("{job} has {} succeeded runs with rows", done.len()));
        }
        let timed = done
            .iter()
            .filter(|r| r["finished_ms"].as_i64() > r["started_ms"].as_i64())
            .count();
        if timed * 2 < done.len() {
            return Err(format!(
                "{job}: {timed} of {} runs took any time by their records",
                done.len()
            ));
        }
    }
    Ok(())
}

/// The three pages of the README's tour, in headless Chromium, each with
/// what makes it worth a look drawn from the demo's data: the fleet with
/// its cohorts, a terminal's charts, the jobs with their lineage and runs.
fn look_at_the_pages(http: SocketAddr, token: &str) -> Vec<(&'static str, Vec<u8>)> {
    let base = format!("http://{http}");
    let browser = Browser::start();
    browser.goto(&format!("{base}/ui/style.css"));
    browser.execute(
        "localStorage.setItem('tillwatch.token', arguments[0]); return true;",
        serde_json::json!([token]),
    );
    let mut shots = Vec::new();
    browser.goto(&format!("{base}/ui/"));
    browser.wait_until(
        "the fleet page with its merchants and a day's cohorts",
        "return document.querySelectorAll('#merchants tbody tr.store').length >= 3 \
         && document.querySelectorAll('#cohorts tbody tr:not(.empty)').length >= 3 \
         && document.getElementById('cohorts-title').innerText.startsWith('Cohorts on');",
        Duration::from_secs(30),
    );
    shots.push(("tour-fleet.png", browser.screenshot()));
    browser.goto(&format!("{base}/ui/device?id=term-00003"));
    browser.wait_until(
        "the terminal's charts drawn from its day",
        "const charts = [...document.querySelectorAll('.chart[data-series]')]; \
         return charts.filter(c => Number(c.dataset.points) > 0 && c.querySelector('canvas')).length >= 3;",
        Duration::from_secs(30),
    );
    shots.push(("tour-terminal.png", browser.screenshot()));
    browser.goto(&format!("{base}/ui/jobs"));
    browser.wait_until(
        "the jobs page with the lineage and runs",
        "return document.querySelectorAll('#lineage .node[data-job]').length >= 4 \
         && document.querySelectorAll('#runs tbody tr:not(.empty)').length >= 10;",
        Duration::from_secs(30),
    );
    shots.push(("tour-jobs.png", browser.screenshot()));
    shots
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_demo_has_a_week_of_history_and_a_calm_terminal_within_90_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo");
    let started = Instant::now();
    let mut demo = Demo::start(&data);
    let deadline = Duration::from_secs(90);
    let mut missing = String::from("the demo's address and token were never printed");
    loop {
        if let Some((http, token)) = demo.address_and_token() {
            match worth_looking_at(http, &token) {
                Ok(()) => break,
                Err(what) => missing = what,
            }
        }
        assert!(
            started.elapsed() < deadline,
            "after {deadline:?}: {missing}\nthe terminal showed:\n{}",
            demo.output()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "the demo was worth looking at after {:?}",
        started.elapsed()
    );
    let (http, token) = demo.address_and_token().unwrap();
    let shots = tokio::task::spawn_blocking(move || look_at_the_pages(http, &token))
        .await
        .unwrap();
    for (name, png) in shots {
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG screenshot");
        let path = artifact_dir().join(name);
        std::fs::write(&path, &png).unwrap();
        eprintln!("screenshot: {}", path.display());
    }

    // The terminal's first minute: the banner and the status line redrawn
    // in place, no log lines; the logs are in the data dir.
    tillwatch_integration_tests::wait_for(
        "the status line, a minute after the start",
        Duration::from_secs(90),
        || {
            started.elapsed() >= Duration::from_secs(60)
                && demo.output().contains("terminals online")
        },
    )
    .await;
    let out = demo.output();
    let lines: Vec<&str> = out
        .split('\n')
        .filter(|l| !l.contains("\x1b[2K") && !l.trim().is_empty())
        .collect();
    let logged: Vec<&&str> = lines
        .iter()
        .filter(|l| {
            [" INFO ", " WARN ", " ERROR ", " DEBUG "]
                .iter()
                .any(|level| l.contains(level))
        })
        .collect();
    assert!(logged.is_empty(), "log lines on the terminal: {logged:#?}");
    assert!(
        lines.len() <= 30,
        "{} lines besides the status line:\n{out}",
        lines.len()
    );
    let log = std::fs::read_to_string(data.join("tillwatch.log")).expect("the log file");
    assert!(log.contains(" INFO "), "{log}");

    // Ctrl-C stops it cleanly, and it says what the live fleet sent.

    assert!(
        demo.interrupt(),
        "the demo did not stop on Ctrl-C:\n{}",
        demo.output()
    );
    assert!(
        demo.output().contains("readings acked"),
        "{}",
        demo.output()
    );
}
