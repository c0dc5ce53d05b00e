//! Support for Tillwatch's end-to-end tests: a private Mosquitto and
//! ClickHouse per test, the gateway as a child process, waiting on
//! conditions with deadlines, and reading the lake back.

mod alertmanager;
pub mod browser;
mod clickhouse_server;
mod gateway_process;
pub mod grafana;
mod prometheus;
pub mod s3;
pub mod tls;

pub use alertmanager::Alertmanager;
pub use clickhouse_server::{ClickHouseServer, TEST_PASSWORD, TEST_USER};
pub use gateway_process::{GatewayProcess, RoleProcess, tillwatch_bin};
pub use prometheus::Prometheus;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray};
use arrow::datatypes::{TimestampMillisecondType, UInt64Type};
use chrono::{DateTime, Datelike, Timelike};
use tillwatch_storage::{Table, read_file};

/// Polls `condition` until it holds or `deadline` passes.
pub async fn wait_for(what: &str, deadline: Duration, mut condition: impl FnMut() -> bool) {
    let until = Instant::now() + deadline;
    while !condition() {
        assert!(
            Instant::now() < until,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `condition` until it holds (true) or `deadline` passes (false),
/// for tests that then assert on what they saw, to show it on failure.
pub async fn eventually(deadline: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + deadline;
    while !condition() {
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

/// A port the OS says is free now. Only for child processes that cannot
/// be handed a bound socket (Mosquitto); everything in-process binds port 0.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind port 0")
        .port()
}

/// Path of the workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A private Mosquitto started with the project's loss-free config
/// (`deploy/mosquitto/mosquitto.conf`) on a free port; killed on drop.
pub struct Mosquitto {
    child: Child,
    pub port: u16,
    tls: bool,
    _dir: tempfile::TempDir,
    conf: PathBuf,
}

impl Mosquitto {
    pub fn start() -> Mosquitto {
        Mosquitto::launch(false, |port| {
            format!("listener {port} 127.0.0.1\nallow_anonymous true\n")
        })
    }

    /// With the production settings for terminals: MQTT over TLS with a
    /// certificate from `ca`, logins from the password file `passwd`, and
    /// the project's ACL (`deploy/mosquitto/acl`: a terminal writes only
    /// under its own id).
    pub fn start_secured(ca: &tls::TestCa, passwd: &Path) -> Mosquitto {
        let acl = workspace_root().join("deploy/mosquitto/acl");
        Mosquitto::launch(true, |port| {
            format!(
                "allow_anonymous false\npassword_file {}\nacl_file {}\n\
                 listener {port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n",
                passwd.display(),
                acl.display(),
                ca.ca_cert.display(),
                ca.broker_cert.display(),
                ca.broker_key.display()
            )
        })
    }

    fn launch(tls: bool, listener: impl Fn(u16) -> String) -> Mosquitto {
        let dir = tempfile::tempdir().expect("tempdir");
        let base =
            std::fs::read_to_string(workspace_root().join("deploy/mosquitto/mosquitto.conf"))
                .expect("deploy/mosquitto/mosquitto.conf is readable");
        for _attempt in 0..5 {
            let port = free_port();
            let conf = dir.path().join("mosquitto.conf");
            let config = format!(
                "{base}\n{}persistence_location {}/\nlog_dest file {}/mosquitto.log\nuser root\n",
                listener(port),
                dir.path().display(),
                dir.path().display()
            );
            std::fs::write(&conf, config).expect("write mosquitto.conf");
            let mut child = Command::new("mosquitto")
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("mosquitto is installed (tests/run installs it)");
            let until = Instant::now() + Duration::from_secs(10);
            loop {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Mosquitto {
                        child,
                        port,
                        tls,
                        _dir: dir,
                        conf,
                    };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // lost the port race (or a bad config: see its log)
                }
                assert!(Instant::now() < until, "mosquitto did not listen on {port}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let log = std::fs::read_to_string(dir.path().join("mosquitto.log")).unwrap_or_default();
        panic!("mosquitto would not start; its log:\n{log}");
    }

    /// Stops it as an operator or a rolling update does (SIGTERM: it
    /// writes its persistence file and exits) and waits for the exit.
    pub fn stop(&mut self) {
        let rc = gateway_process::send_signal(self.child.id() as i32, libc::SIGTERM);
        assert_eq!(rc, 0, "SIGTERM to mosquitto");
        let _ = self.child.wait();
    }

    /// What it logged (connections, disconnects, wills).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// Kills it (SIGKILL): what it held only in memory since its last
    /// autosave is gone.
    pub fn crash(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again, stopped by [`Mosquitto::stop`] or
    /// [`Mosquitto::crash`], on the same port
    /// with the same configuration and persistence directory.
    pub fn start_again(&mut self) {
        self.child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is installed");
        let until = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < until,
                "mosquitto did not listen on {} again",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A viewer token named "support" and an operator token named "ops",
/// for `[[http.tokens]]` in tests.
pub fn test_tokens(viewer: &str, operator: &str) -> Vec<tillwatch_config::ApiToken> {
    use tillwatch_config::{ApiToken, Role};
    [
        ("support", Role::Viewer, viewer),
        ("ops", Role::Operator, operator),
    ]
    .into_iter()
    .map(|(name, role, token)| ApiToken {
        name: name.into(),
        role,
        token: Some(token.into()),
        token_file: None,
    })
    .collect()
}

/// Lets one scheduler round start up to four stale hours of raw
/// compaction and of hourly device health at once, so that a test's
/// backlog of hours clears in a few rounds.
pub fn widen_hourly_rounds(config: &mut tillwatch_config::Config) {
    use tillwatch_rollups::jobs;
    for job in [jobs::RAW_COMPACTION, jobs::DEVICE_HEALTH_HOURLY] {
        config.scheduler.jobs.insert(
            job.into(),
            tillwatch_config::JobSettings {
                concurrency: Some(4),
                ..tillwatch_config::JobSettings::default()
            },
        );
    }
}

/// A minimal HTTP/1.0 GET; returns (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_request(addr, "GET", path, None)
}

/// A minimal HTTP/1.0 request with an optional JSON body; returns
/// (status, body).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    json: Option<&str>,
) -> std::io::Result<(u16, String)> {
    http_call(addr, method, path, json, None)
}

/// [`http_call`] for the JSON API: (status, JSON body). Panics, naming
/// the path, when the call fails or the body is not JSON.
pub fn api_call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    json: Option<&str>,
    token: Option<&str>,
) -> (u16, serde_json::Value) {
    let (status, body) = http_call(addr, method, path, json, token)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let answer = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {body}"));
    (status, answer)
}

/// Every GET of `prefix` + case, with `token`, answers the case's status
/// with a JSON error that names what was wrong (its needle).
pub fn assert_refused(addr: SocketAddr, token: &str, prefix: &str, cases: &[(&str, u16, &str)]) {
    for &(case, want, needle) in cases {
        let path = format!("{prefix}{case}");
        let (status, answer) = api_call(addr, "GET", &path, None, Some(token));
        assert_eq!(status, want, "{path}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains(needle), "{path}: {answer}");
    }
}

/// A GET of the JSON API that must answer 200: its JSON body.
pub fn api_get(addr: SocketAddr, path: &str, token: &str) -> serde_json::Value {
    let (status, answer) = api_call(addr, "GET", path, None, Some(token));
    assert_eq!(status, 200, "GET {path}: {answer}");
    answer
}

/// [`http_request`] with an optional bearer token.
pub fn http_call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    json: Option<&str>,
    token: Option<&str>,
) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    match json {
        Some(body) => write!(
            stream,
            "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?,
        None => write!(
            stream,
            "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}\r\n"
        )?,
    }
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// One stored reading, as read back from the lake.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct StoredKey {
    pub device_id: String,
    pub boot_id: u64,
    pub seq: u64,
}

/// What the lake holds.
#[derive(Debug, Default)]
pub struct LakeContents {
    pub readings: Vec<StoredKey>,
    /// Rows whose partition directory is not the hour of their sample time.
    pub misplaced: Vec<String>,
    pub dead_letter_reasons: BTreeMap<String, u64>,
    /// Files that are not complete `.parquet` files (temp files left over).
    pub stray_files: Vec<PathBuf>,
}

/// Every file below `dir`.
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    files(dir, &mut out);
    out
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files(&path, out);
        } else {
            out.push(path);
        }
    }
}

impl LakeContents {
    /// Everything in the lake's files. A compaction (the standalone
    /// scheduler's `raw_compaction`) that is swapping an hour's files while
    /// they are listed and read shows as a manifest or a vanished file:
    /// then the lake is read again, until it holds still (at most 30 s).
    pub fn read(lake: &Path) -> LakeContents {
        let until = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match LakeContents::read_once(lake) {
                Some(contents) => return contents,
                None if std::time::Instant::now() < until => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                None => panic!("the lake at {} never held still", lake.display()),
            }
        }
    }

    fn read_once(lake: &Path) -> Option<LakeContents> {
        let mut contents = LakeContents::default();
        for table in Table::ALL {
            let mut paths = Vec::new();
            files(&lake.join(table.name()), &mut paths);
            for path in paths {
                if path.file_name().is_some_and(|n| n == "_compaction.json") {
                    return None;
                }
                if path.extension().is_none_or(|e| e != "parquet") {
                    contents.stray_files.push(path);
                    continue;
                }
                let partition = path
                    .parent()
                    .and_then(|hour| Some((hour.parent()?.file_name()?, hour.file_name()?)))
                    .map(|(d, h)| format!("{}/{}", d.to_string_lossy(), h.to_string_lossy()))
                    .unwrap_or_default();
                let batches = match read_file(&path) {
                    Ok(b) => b,
                    Err(tillwatch_storage::LakeError::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound =>
                    {
                        return None;
                    }
                    Err(e) => panic!("lake files are readable Parquet: {e}"),
                };
                for batch in batches {
                    if table == Table::DeadLetter {
                        let reasons = batch
                            .column_by_name("reason_code")
                            .expect("reason_code")
                            .as_string::<i32>();
                        for i in 0..batch.num_rows() {
                            *contents
                                .dead_letter_reasons
                                .entry(reasons.value(i).to_string())
                                .or_default() += 1;
                        }
                        continue;
                    }
                    let devices = batch
                        .column_by_name("device_id")
                        .expect("device_id")
                        .as_string::<i32>();
                    let boots = batch
                        .column_by_name("boot_id")
                        .expect("boot_id")
                        .as_primitive::<UInt64Type>();
                    let seqs = batch
                        .column_by_name("seq")
                        .expect("seq")
                        .as_primitive::<UInt64Type>();
                    let sampled = batch
                        .column_by_name("sampled_at")
                        .expect("sampled_at")
                        .as_primitive::<TimestampMillisecondType>();
                    for i in 0..batch.num_rows() {
                        assert!(devices.is_valid(i));
                        let t =
                            DateTime::from_timestamp_millis(sampled.value(i)).expect("valid time");
                        let expected = format!(
                            "date={:04}-{:02}-{:02}/hour={:02}",
                            t.year(),
                            t.month(),
                            t.day(),
                            t.hour()
                        );
                        if expected != partition {
                            contents
                                .misplaced
                                .push(format!("{} in {partition}", path.display()));
                        }
                        contents.readings.push(StoredKey {
                            device_id: devices.value(i).to_string(),
                            boot_id: boots.value(i),
                            seq: seqs.value(i),
                        });
                    }
                }
            }
        }
        Some(contents)
    }

    pub fn dead_letters(&self) -> u64 {
        self.dead_letter_reasons.values().sum()
    }

    /// Keys stored more than once.
    pub fn duplicates(&self) -> Vec<StoredKey> {
        let mut seen = BTreeSet::new();
        self.readings
            .iter()
            .filter(|k| !seen.insert((*k).clone()))
            .cloned()
            .collect()
    }

    /// (device, boot) pairs whose sequence numbers are not exactly 0..n:
    /// a reading in the middle went missing.
    pub fn gaps(&self) -> Vec<String> {
        let mut by_boot: BTreeMap<(&str, u64), BTreeSet<u64>> = BTreeMap::new();
        for k in &self.readings {
            by_boot
                .entry((&k.device_id, k.boot_id))
                .or_default()
                .insert(k.seq);
        }
        by_boot
            .into_iter()
            .filter(|(_, seqs)| seqs.iter().copied().ne(0..seqs.len() as u64))
            .map(|((d, b), seqs)| {
                format!(
                    "{d}/{b:x}: {} readings, max seq {:?}",
                    seqs.len(),
                    seqs.last()
                )
            })
            .collect()
    }

    /// Number of reading rows; cheap enough to poll while a test runs.
    pub fn count_readings(lake: &Path) -> usize {
        LakeContents::read(lake).readings.len()
    }

    /// Waits until the lake holds at least `n` readings.
    pub async fn wait_for_readings(lake: &Path, n: u64, deadline: Duration) {
        wait_for("every acked reading to reach the lake", deadline, || {
            LakeContents::count_readings(lake) as u64 >= n
        })
        .await;
    }

    /// Asserts the lake holds exactly `expected` readings, each once, none
    /// missing within a boot, each in its sample hour's partition, and no
    /// partial files.
    pub fn assert_exactly(&self, expected: u64) {
        assert!(
            self.stray_files.is_empty(),
            "partial files left in the lake: {:?}",
            self.stray_files
        );
        let dups = self.duplicates();
        assert!(
            dups.is_empty(),
            "{} readings stored twice, e.g. {:?}",
            dups.len(),
            &dups[..dups.len().min(5)]
        );
        let gaps = self.gaps();
        assert!(
            gaps.is_empty(),
            "readings missing: {:?}",
            &gaps[..gaps.len().min(5)]
        );
        assert!(
            self.misplaced.is_empty(),
            "rows outside their hour: {:?}",
            &self.misplaced[..self.misplaced.len().min(5)]
        );
        assert_eq!(
            self.readings.len() as u64,
            expected,
            "stored readings vs readings the broker acked"
        );
    }
}

/// Runs the Python `script` of the test venv (`TILLWATCH_PYTHON`, set by
/// tests/run) with `input` on its stdin: (whether it succeeded, its stdout
/// and stderr together).
pub fn venv_python(script: &str, input: &str) -> (bool, String) {
    use std::io::Write;
    let python = std::env::var("TILLWATCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut child = Command::new(&python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {python}: {e}; run the tests through tests/run"));
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(input.as_bytes())
        .expect("the script reads its input");
    let out = child.wait_with_output().expect("the script ends");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Runs `sql` with DuckDB from the test venv (`TILLWATCH_PYTHON`, set by
/// tests/run) and returns its single integer result.
pub fn duckdb_scalar(sql: &str) -> i64 {
    let python = std::env::var("TILLWATCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let output = Command::new(&python)
        .args([
            "-c",
            "import sys, duckdb; print(duckdb.sql(sys.argv[1]).fetchone()[0])",
            sql,
        ])
        .output()
        .unwrap_or_else(|e| panic!("running {python}: {e}; run the tests through tests/run"));
    assert!(
        output.status.success(),
        "duckdb failed (run the tests through tests/run, which installs it): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("an integer")
}

/// The first minute of the current UTC hour minus `hours_back` hours, less
/// three minutes: a virtual-clock start whose readings cross an hour.
pub fn start_across_hour(hours_back: i64) -> i64 {
    let now = chrono::Utc::now().timestamp_millis();
    let hour = now - now.rem_euclid(3_600_000);
    hour - hours_back * 3_600_000 - 3 * 60_000
}

/// Per (table, device): rows, sum of seq, sum and max of the sample time in
/// milliseconds. Computed the same way from the lake and from ClickHouse,
/// so the two can be compared row for row without listing every row.
pub type Checksums = BTreeMap<(String, String), (u64, u64, u64, u64)>;

/// [`Checksums`] of the lake's reading tables.
pub fn lake_checksums(lake: &Path) -> Checksums {
    let mut out = Checksums::new();
    for table in Table::ALL {
        if table == Table::DeadLetter {
            continue;
        }
        let mut paths = Vec::new();
        files(&lake.join(table.name()), &mut paths);
        for path in paths
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        {
            for batch in read_file(path).expect("lake files are readable") {
                let devices = batch
                    .column_by_name("device_id")
                    .unwrap()
                    .as_string::<i32>();
                let seqs = batch
                    .column_by_name("seq")
                    .unwrap()
                    .as_primitive::<UInt64Type>();
                let sampled = batch
                    .column_by_name("sampled_at")
                    .unwrap()
                    .as_primitive::<TimestampMillisecondType>();
                for i in 0..batch.num_rows() {
                    let e = out
                        .entry((table.name().to_string(), devices.value(i).to_string()))
                        .or_default();
                    let ms = sampled.value(i) as u64;
                    e.0 += 1;
                    e.1 += seqs.value(i);
                    e.2 += ms;
                    e.3 = e.3.max(ms);
                }
            }
        }
    }
    out
}

/// [`Checksums`] of ClickHouse's reading tables in `database`, read through
/// the `*_final` views (what users query: each reading once).
pub fn clickhouse_checksums(ch: &ClickHouseServer, database: &str) -> Checksums {
    let mut out = Checksums::new();
    for table in Table::ALL {
        if table == Table::DeadLetter {
            continue;
        }
        let tsv = ch.q(&format!(
            "SELECT device_id, count(), sum(seq), sum(sampled_at_ms), max(sampled_at_ms) \
             FROM {database}.{}_final GROUP BY device_id FORMAT TSV",
            table.name()
        ));
        for line in tsv.lines() {
            let f: Vec<&str> = line.split('\t').collect();
            let n = |i: usize| f[i].parse::<u64>().expect("a number");
            out.insert(
                (table.name().to_string(), f[0].to_string()),
                (n(1), n(2), n(3), n(4)),
            );
        }
    }
    out
}

/// Readings in ClickHouse as users see them (each once).
pub fn clickhouse_readings(ch: &ClickHouseServer, database: &str) -> u64 {
    [
        "connectivity",
        "battery",
        "app_performance",
        "payment_health",
    ]
    .iter()
    .map(|t| {
        ch.query(&format!("SELECT count() FROM {database}.{t}_final"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0)
    })
    .sum()
}

/// Writes a small fleet's battery readings (20 terminals, one a minute)
/// for the `hours` whole hours before `now_ms` into the lake at `lake`, and
/// the ingest watermark at `watermark_ms`, as a gateway would have.
pub fn write_fleet_hours(lake: &Path, now_ms: i64, hours: i64, watermark_ms: i64) {
    use tillwatch_domain::{
        Battery, BootId, DeviceId, MerchantId, Reading, Signal, StoreId, UtcMillis,
    };
    use tillwatch_storage::{Lake, Staging, StoredReading};
    const HOUR: i64 = 3_600_000;
    let lake = Lake::new(lake);
    let last = now_ms - now_ms.rem_euclid(HOUR);
    let mut staging = Staging::new();
    let merchant = MerchantId::new("m-scale").expect("a valid id");
    let store = StoreId::new("s-scale").expect("a valid id");
    for d in 0..20u32 {
        let device = DeviceId::new(&format!("scale-{d:02}")).expect("a valid id");
        for (seq, m) in (0..hours * 60).enumerate() {
            let at = last - hours * HOUR + m * 60_000 + i64::from(d) * 500;
            let reading = Reading {
                device_id: device.clone(),
                boot_id: BootId(1),
                seq: seq as u64 + 1,
                sampled_at: UtcMillis(at),
                signal: Signal::Battery(Battery {
                    level_pct: 100 - (m as u32 / 30).min(90),
                    charging: false,
                    temperature_celsius: 25.0,
                    voltage_mv: 4000,
                    health_pct: 95,
                    cycle_count: 10,
                }),
            };
            staging.push_reading(StoredReading {
                reading: &reading,
                merchant_id: &merchant,
                store_id: Some(&store),
                received_at: UtcMillis(at + 200),
            });
        }
    }
    for part in staging.finish() {
        let path = lake.file_path(part.table, part.hour, "fixture.parquet");
        lake.write_part(&part, &path).expect("write the lake");
    }
    lake.write_watermark("fixture", watermark_ms)
        .expect("write the watermark");
}

/// A terminal's MQTT connection (client id `id`) whose last will is `will`,
/// published retained on `<topic>/status`; the returned task polls it, and
/// aborting that task breaks the socket without a DISCONNECT, so the broker
/// sends the will.
pub fn terminal_with_will(
    port: u16,
    id: &str,
    topic: &str,
    will: Vec<u8>,
) -> (rumqttc::AsyncClient, tokio::task::JoinHandle<()>) {
    use rumqttc::{AsyncClient, LastWill, MqttOptions, QoS};
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_last_will(LastWill::new(
            format!("{topic}/status"),
            will,
            QoS::AtLeastOnce,
            true,
        ));
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let name = id.to_string();
    let task = tokio::spawn(async move {
        loop {
            if let Err(e) = eventloop.poll().await {
                eprintln!("terminal {name}: {e}; reconnecting");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    (client, task)
}

/// `run_standalone` in this process, its HTTP API on a free port.
pub struct InProcess {
    pub http: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl InProcess {
    /// Starts standalone with `config` on `broker` (the embedded one, or
    /// `config.mqtt.broker` when `None`) and waits until its gateway has
    /// subscribed.
    pub async fn start(
        config: tillwatch_config::Config,
        broker: Option<tillwatch_serve::EmbeddedBroker>,
    ) -> InProcess {
        let http = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a free port");
        let addr = http.local_addr().expect("its address");
        let (stop, mut stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            tillwatch_serve::run_standalone(config, http, None, broker.as_ref(), async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            })
            .await
        });
        let ready = eventually(Duration::from_secs(30), || {
            matches!(http_get(addr, "/readyz"), Ok((200, _)))
        })
        .await;
        if !ready {
            // Say what the gateway saw of the broker.
            let metrics = http_get(addr, "/metrics")
                .map(|(_, body)| body)
                .unwrap_or_default();
            let broker: Vec<&str> = metrics
                .lines()
                .filter(|l| l.starts_with("tillwatch_gateway_broker"))
                .collect();
            let finished = task.is_finished();
            panic!(
                "standalone's gateway did not subscribe within 30 s (standalone task ended: {finished}); {broker:?}"
            );
        }
        InProcess {
            http: addr,
            stop,
            task,
        }
    }

    /// Stops it and waits (at most a minute) for a clean exit.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("standalone stops within a minute")
            .expect("the standalone task does not panic")
            .expect("standalone exits cleanly");
    }
}
