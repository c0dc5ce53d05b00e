//! The ClickHouse sink against a real ClickHouse server (Debian's 18.16 here):
//! the schema, the credentials check, the fleet landing row for row as in
//! the lake, and loss-free behaviour through a ClickHouse outage and a
//! gateway crash with rows still spooled.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tillwatch_clickhouse::rowbinary;
use tillwatch_integration_tests::{
    ClickHouseServer, GatewayProcess, LakeContents, Mosquitto, TEST_PASSWORD, TEST_USER,
    clickhouse_checksums, clickhouse_readings, lake_checksums, start_across_hour, tillwatch_bin,
    wait_for,
};
use tillwatch_sim::{Faults, SimConfig};
use tillwatch_storage::Table;
use tillwatch_storage::clickhouse_ddl::{MIGRATIONS, ServerVersion};
use tokio::sync::watch;

/// Runs the CLI to completion (at most two minutes); (success, stdout, stderr).
fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut command = Command::new(tillwatch_bin());
    command
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("run tillwatch");
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        if child.try_wait().expect("poll the child").is_some() {
            break;
        }
        if Instant::now() > until {
            let _ = child.kill();
            panic!("tillwatch {args:?} did not finish within two minutes");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("collect output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn migrate(ch: &ClickHouseServer, database: &str) -> String {
    let (ok, stdout, stderr) = run_cli(
        &[
            "migrate",
            "--clickhouse-url",
            &ch.url(),
            "--clickhouse-database",
            database,
        ],
        &[],
    );
    assert!(ok, "migrate failed: {stderr}");
    stdout
}

fn gateway_env<'a>(url: &'a str, database: &'a str, client: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("TILLWATCH__CLICKHOUSE__URL", url),
        ("TILLWATCH__CLICKHOUSE__DATABASE", database),
        ("TILLWATCH__MQTT__CLIENT_ID", client),
    ]
}

/// A Mosquitto, a ClickHouse with `database` migrated, and a gateway
/// process (client `gw-{database}`) writing to it and to the lake in `dir`,
/// ready.
struct Rig {
    mosquitto: Mosquitto,
    ch: ClickHouseServer,
    dir: tempfile::TempDir,
    gateway: GatewayProcess,
}

impl Rig {
    async fn start(database: &str) -> Rig {
        let mosquitto = Mosquitto::start();
        let ch = ClickHouseServer::start();
        migrate(&ch, database);
        let dir = tempfile::tempdir().unwrap();
        let (url, client) = (ch.url(), format!("gw-{database}"));
        let gateway = GatewayProcess::start(
            &mosquitto.url(),
            dir.path(),
            &gateway_env(&url, database, &client),
        );
        gateway.ready().await;
        Rig {
            mosquitto,
            ch,
            dir,
            gateway,
        }
    }
}

fn fleet(broker: String, devices: usize, readings: u64, seed: u64, faults: Faults) -> SimConfig {
    SimConfig {
        broker,
        devices,
        merchants: 4,
        stores_per_merchant: 2,
        interval: Duration::from_secs(30),
        readings_per_device: Some(readings),
        seed,
        start_ms: Some(start_across_hour(3)),
        faults,
        connect_concurrency: 32,
        security: Default::default(),
        durability: Default::default(),
    }
}

async fn wait_for_clickhouse(ch: &ClickHouseServer, database: &str, n: u64) {
    wait_for(
        "every reading to reach ClickHouse",
        Duration::from_secs(180),
        || clickhouse_readings(ch, database) >= n,
    )
    .await;
}

/// Same readings per table and device in ClickHouse (as users query it)
/// as in the lake: counts, sums of seq and of sample times, newest sample.
fn assert_same_rows(ch: &ClickHouseServer, database: &str, lake: &Path) {
    let in_lake = lake_checksums(lake);
    let in_ch = clickhouse_checksums(ch, database);
    let differing: Vec<_> = in_lake
        .iter()
        .filter(|(k, v)| in_ch.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), *v, in_ch.get(k).copied()))
        .take(5)
        .collect();
    assert!(
        differing.is_empty(),
        "ClickHouse differs from the lake (table, device, lake, clickhouse): {differing:?}"
    );
    assert_eq!(
        in_lake.len(),
        in_ch.len(),
        "ClickHouse has devices the lake lacks"
    );
}

#[test]
fn migrate_twice_changes_nothing_and_the_schema_matches_the_encoder() {
    let ch = ClickHouseServer::start();
    let first = migrate(&ch, "mig");
    assert!(
        first.contains("created the database") && first.contains("applied 001_connectivity"),
        "{first}"
    );
    let snapshot = || {
        ch.q(
            "SELECT name, engine, create_table_query FROM system.tables \
              WHERE database = 'mig' AND name != 'schema_migrations' ORDER BY name FORMAT TSV",
        )
    };
    let before = snapshot();
    let second = migrate(&ch, "mig");
    assert!(
        second.contains(&format!(
            "schema up to date ({} migrations)",
            MIGRATIONS.len()
        )),
        "{second}"
    );
    assert_eq!(before, snapshot(), "a second migrate changed the schema");
    assert_eq!(
        ch.scalar("SELECT count() FROM mig.schema_migrations"),
        MIGRATIONS.len() as u64,
        "each migration recorded once"
    );

    // Every column the encoder sends exists with the type it encodes for.
    for table in Table::ALL {
        let tsv = ch.q(&format!(
            "SELECT name, type FROM system.columns WHERE database = 'mig' AND table = '{}' FORMAT TSV",
            table.name()
        ));
        let declared: Vec<(String, String)> = tsv
            .lines()
            .map(|l| {
                let (n, t) = l.split_once('\t').expect("two columns");
                // TSV escapes quotes: DateTime(\'UTC\').
                let t = t.replace("\\'", "'");
                let t = t
                    .strip_prefix("LowCardinality(")
                    .and_then(|t| t.strip_suffix(')'))
                    .unwrap_or(&t);
                (n.to_string(), t.to_string())
            })
            .collect();
        let encoded: Vec<(String, String)> = rowbinary::columns(table)
            .into_iter()
            .map(|c| (c.name, c.ch_type))
            .collect();
        assert_eq!(
            declared,
            encoded,
            "{} in ClickHouse vs the encoder",
            table.name()
        );
    }

    // The device_latest view answers (empty for now).
    assert_eq!(ch.scalar("SELECT count() FROM mig.device_latest"), 0);
}

/// `clickhouse.retention` on a current ClickHouse: chdb (a current server
/// in-process, from the test venv), since Debian's 18.16 has no TTL. The
/// schema as `tillwatch migrate` lays it out for that version, then the
/// TTL statements it runs: rows older than the retention (readings by
/// sample time, dead letters by arrival) go at the next merge, newer ones
/// stay.
#[test]
fn retention_ttl_drops_old_raw_rows_on_a_current_clickhouse() {
    let features = ServerVersion::parse("26.9").unwrap().features();
    let mut statements = vec!["CREATE DATABASE IF NOT EXISTS `tw`".to_string()];
    for m in MIGRATIONS {
        statements.extend(m.render("tw", features));
    }
    let ttl = tillwatch_clickhouse::ttl_statements("tw", None, Duration::from_secs(90 * 86_400));
    assert!(ttl.iter().all(|s| s.contains("INTERVAL 90 DAY")), "{ttl:?}");
    statements.extend(ttl);
    let script = r#"
import json, sys, tempfile
from chdb import session
s = session.Session(tempfile.mkdtemp())
for q in json.load(sys.stdin):
    s.query(q)
s.query("INSERT INTO tw.battery (device_id, sampled_at) VALUES "
        "('t-old', now() - INTERVAL 100 DAY), ('t-new', now() - INTERVAL 80 DAY)")
s.query("INSERT INTO tw.dead_letter (topic, received_at) VALUES "
        "('old', now() - INTERVAL 91 DAY), ('new', now())")
for t in ("battery", "dead_letter"):
    s.query(f"OPTIMIZE TABLE tw.{t} FINAL")
print(str(s.query("SELECT device_id FROM tw.battery ORDER BY device_id", "CSV")), end="")
print(str(s.query("SELECT topic FROM tw.dead_letter ORDER BY topic", "CSV")), end="")
"#;
    let (ok, out) = tillwatch_integration_tests::venv_python(
        script,
        &serde_json::to_string(&statements).unwrap(),
    );
    assert!(
        ok,
        "chdb (tests/run installs it in the venv) failed:\n{out}"
    );
    assert_eq!(out.trim(), "\"t-new\"\n\"new\"");
}

/// The cluster layout (`clickhouse.cluster`) is generated from the same
/// DDL files; the local server has no cluster or ZooKeeper to run it on,
/// but it parses every statement: any refusal must come after parsing
/// (no distributed DDL here), never a syntax error.
#[test]
fn the_cluster_ddl_parses_on_the_local_server() {
    let ch = ClickHouseServer::start();
    let version = ServerVersion::parse(&ch.q("SELECT version()")).unwrap();
    let mut checked = 0;
    for m in MIGRATIONS {
        for statement in m
            .render_for_cluster("clu", version.features(), "fleet")
            .unwrap()
        {
            assert!(statement.contains(" ON CLUSTER `fleet`"), "{statement}");
            if let Err(e) = ch.query(&statement) {
                assert!(
                    !e.contains("Code: 62") && !e.contains("Syntax error"),
                    "{statement}\n{e}"
                );
                assert!(
                    e.contains("DistributedDDL")
                        || e.contains("cluster")
                        || e.contains("ZooKeeper"),
                    "refused for another reason than the missing cluster: {statement}\n{e}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 30, "{checked} statements");
    // The command prints the same layout.
    let (ok, out, err) = run_cli(
        &[
            "migrate",
            "--print-sql",
            "--server-version",
            "24.8",
            "--cluster",
            "fleet",
        ],
        &[],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains(
            "ENGINE = Distributed('fleet', 'tillwatch', 'battery_local', cityHash64(device_id))"
        ),
        "{out}"
    );
}

#[test]
fn bad_credentials_and_a_missing_database_are_clear_errors_at_start() {
    let ch = ClickHouseServer::start();
    let url = ch.url();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let args = [
        "gateway",
        "--broker",
        "mqtt://127.0.0.1:1",
        "--http-listen",
        "127.0.0.1:0",
        "--data-dir",
        data,
        "--clickhouse-url",
        &url,
    ];

    // Each must stop the command at start, saying why.
    let refused = |args: &[&str], env: &[(&str, &str)], says: &[&str]| {
        let (ok, _, stderr) = run_cli(args, env);
        assert!(!ok, "{args:?} with {env:?} must fail");
        for needle in says {
            assert!(
                stderr.contains(needle),
                "the error must say {needle:?}: {stderr}"
            );
        }
    };
    // The user and the setting to fix.
    refused(
        &args,
        &[
            ("TILLWATCH__CLICKHOUSE__USER", TEST_USER),
            ("TILLWATCH__CLICKHOUSE__PASSWORD", "not-the-password"),
        ],
        &["user \"tillwatch\" was refused", "clickhouse.password"],
    );
    // The database and the fix.
    refused(
        &args,
        &[
            ("TILLWATCH__CLICKHOUSE__USER", TEST_USER),
            ("TILLWATCH__CLICKHOUSE__PASSWORD", TEST_PASSWORD),
            ("TILLWATCH__CLICKHOUSE__DATABASE", "nope"),
        ],
        &["database \"nope\" does not exist", "tillwatch migrate"],
    );
    // The same for migrate itself.
    refused(
        &["migrate", "--clickhouse-url", &url],
        &[("TILLWATCH__CLICKHOUSE__USER", "nobody")],
        &["user \"nobody\" was refused"],
    );
}

/// `https://` URLs use TLS, verified against the system's roots (which
/// `SSL_CERT_FILE` points at here): a server whose CA is trusted works, one
/// whose CA is not is refused with the reason.
#[test]
fn https_urls_are_verified_tls() {
    let ch = ClickHouseServer::start_tls();
    let url = ch.https_url();
    let ca = ch.ca_file();
    let ca = ca.to_str().unwrap();
    let args = [
        "migrate",
        "--clickhouse-url",
        &url,
        "--clickhouse-database",
        "tls",
    ];
    let (ok, stdout, stderr) = run_cli(&args, &[("SSL_CERT_FILE", ca)]);
    assert!(ok, "migrate over TLS: {stderr}");
    assert!(stdout.contains("applied 001_connectivity"), "{stdout}");
    assert_eq!(
        ch.scalar("SELECT count() FROM tls.schema_migrations"),
        MIGRATIONS.len() as u64
    );

    let empty = tempfile::NamedTempFile::new().unwrap();
    let (ok, _, stderr) = run_cli(&args, &[("SSL_CERT_FILE", empty.path().to_str().unwrap())]);
    assert!(!ok, "an untrusted certificate must be refused");
    assert!(
        stderr.contains("certificate"),
        "the error says why: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_fleet_lands_in_clickhouse_with_the_same_rows_as_the_lake() {
    let Rig {
        mosquitto,
        ch,
        dir,
        gateway,
    } = Rig::start("fleet").await;
    let lake = dir.path().join("lake");
    let url = ch.url();

    // Retries send readings twice; malformed messages become dead letters.
    let faults = Faults::parse("retry,malformed").unwrap();
    let report = tillwatch_sim::run(
        fleet(mosquitto.url(), 60, 40, 5, faults),
        watch::channel(false).1,
    )
    .await
    .unwrap();
    assert_eq!(report.unacked_readings, 0);
    assert!(report.duplicates_sent > 0 && report.malformed_sent > 0);
    LakeContents::wait_for_readings(&lake, report.readings, Duration::from_secs(120)).await;
    wait_for_clickhouse(&ch, "fleet", report.readings).await;

    assert_same_rows(&ch, "fleet", &lake);
    assert_eq!(clickhouse_readings(&ch, "fleet"), report.readings);
    let dead = LakeContents::read(&lake).dead_letters();
    wait_for(
        "dead letters in ClickHouse",
        Duration::from_secs(60),
        || ch.scalar("SELECT count() FROM fleet.dead_letter FINAL") == dead,
    )
    .await;

    // device_latest: every device, its newest battery sample, its merchant.
    let latest = ch.q(
        "SELECT device_id, battery_at_ms, merchant_id != '' FROM fleet.device_latest \
         ORDER BY device_id FORMAT TSV",
    );
    let sums = lake_checksums(&lake);
    let mut devices = 0;
    for line in latest.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let newest = sums[&("battery".to_string(), f[0].to_string())].3;
        assert_eq!(
            f[1].parse::<u64>().unwrap(),
            newest,
            "newest battery of {}",
            f[0]
        );
        assert_eq!(f[2], "1", "merchant of {}", f[0]);
        devices += 1;
    }
    assert_eq!(devices, 60);
    // The rows are in ClickHouse; the shipper moves its cursor (and the
    // gauge) just after the INSERT returns.
    wait_for("the spool to drain", Duration::from_secs(30), || {
        gateway.metric("tillwatch_clickhouse_spool_records") == Some(0.0)
    })
    .await;

    // Backfill the same lake into a new database, twice: the same rows, and
    // after the second run still each reading once, even without FINAL.
    migrate(&ch, "refill");
    let today = chrono::Utc::now().date_naive();
    let from = (today - chrono::Days::new(1)).to_string();
    let to = today.to_string();
    let data = dir.path().to_str().unwrap();
    let backfill = |from: &str, to: &str| {
        run_cli(
            &[
                "clickhouse",
                "backfill",
                "--from",
                from,
                "--to",
                to,
                "--data-dir",
                data,
                "--clickhouse-url",
                &url,
                "--clickhouse-database",
                "refill",
            ],
            &[],
        )
    };
    for round in 0..2 {
        let (ok, stdout, stderr) = backfill(&from, &to);
        assert!(ok, "backfill round {round}: {stderr}");
        assert!(
            stdout.contains(&format!("backfilled {} rows", report.readings + dead)),
            "{stdout}"
        );
        assert!(stderr.contains("100%"), "progress is shown: {stderr}");
    }
    assert_same_rows(&ch, "refill", &lake);
    let raw: u64 = [
        "connectivity",
        "battery",
        "app_performance",
        "payment_health",
    ]
    .iter()
    .map(|t| ch.scalar(&format!("SELECT count() FROM refill.{t}")))
    .sum();
    assert_eq!(
        raw, report.readings,
        "merged after backfill: each reading once"
    );
    let (ok, _, stderr) = backfill(&to, &from);
    assert!(!ok && stderr.contains("is after --to"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_clickhouse_outage_under_load_loses_nothing_and_doubles_nothing() {
    let Rig {
        mosquitto,
        mut ch,
        dir,
        gateway,
    } = Rig::start("outage").await;
    let lake = dir.path().join("lake");

    // Paced in real time (a reading every 50 ms per terminal, about 20 s in
    // all), so the outage falls mid-stream however fast the machine is.
    const DEVICES: usize = 150;
    const READINGS: u64 = 400;
    let mut paced = fleet(mosquitto.url(), DEVICES, READINGS, 9, Faults::none());
    paced.start_ms = None;
    paced.interval = Duration::from_millis(50);
    let sim = tokio::spawn(tillwatch_sim::run(paced, watch::channel(false).1));
    wait_for_clickhouse(&ch, "outage", 2_000).await;
    ch.kill();
    let at_kill = LakeContents::count_readings(&lake) as u64;

    // ClickHouse is gone: readings keep landing in the lake (so messages are
    // acked), and pile up in the spool.
    wait_for(
        "ingest to go on without ClickHouse",
        Duration::from_secs(120),
        || {
            LakeContents::count_readings(&lake) as u64 >= at_kill + 3_000
                && gateway
                    .metric("tillwatch_clickhouse_spool_records")
                    .is_some_and(|n| n > 0.0)
        },
    )
    .await;
    assert!(
        (LakeContents::count_readings(&lake) as u64) < DEVICES as u64 * READINGS,
        "the outage must fall mid-stream"
    );
    ch.restart();

    let report = sim.await.unwrap().unwrap();
    assert_eq!(report.unacked_readings, 0);
    assert_eq!(report.readings, DEVICES as u64 * READINGS);
    LakeContents::wait_for_readings(&lake, report.readings, Duration::from_secs(120)).await;
    wait_for_clickhouse(&ch, "outage", report.readings).await;
    wait_for("the spool to drain", Duration::from_secs(60), || {
        gateway.metric("tillwatch_clickhouse_spool_records") == Some(0.0)
    })
    .await;
    assert!(
        gateway
            .metric("tillwatch_clickhouse_errors_total{class=\"network\"}")
            .is_some_and(|n| n > 0.0),
        "the outage was seen as network errors"
    );

    LakeContents::read(&lake).assert_exactly(report.readings);
    assert_eq!(clickhouse_readings(&ch, "outage"), report.readings);
    assert_same_rows(&ch, "outage", &lake);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_killed_with_rows_in_its_spool_ships_them_after_restart() {
    let mosquitto = Mosquitto::start();
    let mut ch = ClickHouseServer::start();
    migrate(&ch, "spooled");
    // ClickHouse is down before the gateway starts: it must start anyway.
    ch.kill();
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let url = ch.url();
    let env = gateway_env(&url, "spooled", "gw-spooled");
    let gateway = GatewayProcess::start(&mosquitto.url(), dir.path(), &env);
    gateway.ready().await;

    let report = tillwatch_sim::run(
        fleet(mosquitto.url(), 80, 50, 13, Faults::none()),
        watch::channel(false).1,
    )
    .await
    .unwrap();
    assert_eq!(
        report.unacked_readings, 0,
        "acked once spooled, without ClickHouse"
    );
    LakeContents::wait_for_readings(&lake, report.readings, Duration::from_secs(120)).await;
    let spooled = gateway
        .metric("tillwatch_clickhouse_spool_records")
        .unwrap_or(0.0);
    assert!(spooled > 0.0, "rows wait in the spool");
    gateway.kill();

    ch.restart();
    assert_eq!(clickhouse_readings(&ch, "spooled"), 0);
    let gateway = GatewayProcess::start(&mosquitto.url(), dir.path(), &env);
    gateway.ready().await;
    wait_for_clickhouse(&ch, "spooled", report.readings).await;
    wait_for("the spool to drain", Duration::from_secs(60), || {
        gateway.metric("tillwatch_clickhouse_spool_records") == Some(0.0)
    })
    .await;
    assert_eq!(clickhouse_readings(&ch, "spooled"), report.readings);
    assert_same_rows(&ch, "spooled", &lake);
}

/// `tillwatch standalone --clickhouse-url …`: the embedded broker, the
/// schema created on start, and the faulty demo fleet in ClickHouse as in
/// the lake; a graceful stop leaves the spool empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn standalone_creates_the_schema_and_fills_clickhouse() {
    use tillwatch_config::Config;
    use tillwatch_serve::EmbeddedBroker;

    let ch = ClickHouseServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    config.clickhouse.url = Some(ch.url());
    config.clickhouse.database = "standalone".into();
    let broker = EmbeddedBroker::start("127.0.0.1:0".parse().unwrap(), 1000).unwrap();
    let broker_url = broker.url();
    let standalone = tillwatch_integration_tests::InProcess::start(config, Some(broker)).await;

    let report = tillwatch_sim::run(
        fleet(broker_url, 40, 20, 21, Faults::all()),
        watch::channel(false).1,
    )
    .await
    .unwrap();
    assert_eq!(report.unacked_readings, 0);
    let lake = dir.path().join("lake");
    LakeContents::wait_for_readings(&lake, report.readings, Duration::from_secs(120)).await;
    wait_for_clickhouse(&ch, "standalone", report.readings).await;
    standalone.stop().await;

    assert_eq!(clickhouse_readings(&ch, "standalone"), report.readings);
    assert_same_rows(&ch, "standalone", &lake);
    // Every kind of bad message: each dead letter once, none merged away.
    let dead = LakeContents::read(&lake).dead_letters();
    assert!(dead > 0);
    wait_for(
        "dead letters in ClickHouse",
        Duration::from_secs(60),
        || ch.scalar("SELECT count() FROM standalone.dead_letter FINAL") == dead,
    )
    .await;
    assert_eq!(
        ch.scalar("SELECT count() FROM standalone.schema_migrations"),
        MIGRATIONS.len() as u64
    );
}

/// Rows ClickHouse cannot read (a corrupt batch) must not hold back the
/// rows behind them: they are set aside on disk, counted, and shipping goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_clickhouse_cannot_read_are_set_aside_and_shipping_goes_on() {
    use std::sync::atomic::AtomicBool;
    use tillwatch_clickhouse::{ClickHouse, Settings, ShipperConfig, Spool, run_shipper};
    use tillwatch_domain::{
        Battery, BootId, DeviceId, Kind, MerchantId, Reading, Signal, UtcMillis,
    };
    use tillwatch_storage::{Staging, StoredReading};

    let ch = ClickHouseServer::start();
    migrate(&ch, "poison");
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), 1 << 30).unwrap();

    let battery_rows = |seqs: std::ops::Range<u64>| {
        let merchant = MerchantId::new("m-1").unwrap();
        let mut staging = Staging::new();
        for seq in seqs.clone() {
            let reading = Reading {
                device_id: DeviceId::new("dev-1").unwrap(),
                boot_id: BootId(1),
                seq,
                sampled_at: UtcMillis(UtcMillis::now().0 - 60_000 + seq as i64),
                signal: Signal::Battery(Battery::healthy(50, false)),
            };
            staging.push_reading(StoredReading {
                reading: &reading,
                merchant_id: &merchant,
                store_id: None,
                received_at: UtcMillis::now(),
            });
        }
        let encoded = tillwatch_clickhouse::encode_parts(&staging.finish());
        assert_eq!(encoded.len(), 1);
        encoded.into_iter().next().unwrap()
    };
    let never = AtomicBool::new(false);
    // A corrupt connectivity batch first, good battery rows behind it.
    spool
        .append(
            &[
                (Table::Reading(Kind::Connectivity), 3, vec![0xff; 7]),
                battery_rows(0..10),
            ],
            &never,
        )
        .unwrap();
    spool.append(&[battery_rows(10..25)], &never).unwrap();

    let client = ClickHouse::new(Settings {
        url: ch.url(),
        database: "poison".into(),
        user: "default".into(),
        password: None,
        insert_timeout: Duration::from_secs(30),
        cluster: None,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let shipper = tokio::spawn(run_shipper(
        client,
        spool.clone(),
        ShipperConfig {
            max_rows: 1000,
            drain_grace: Duration::from_secs(5),
        },
        stop_rx,
    ));
    wait_for("the good rows to land", Duration::from_secs(60), || {
        ch.scalar("SELECT count() FROM poison.battery") == 25
    })
    .await;
    wait_for("the spool to empty", Duration::from_secs(60), || {
        spool.depth().0 == 0
    })
    .await;
    let _ = stop_tx.send(true);
    shipper.await.unwrap();

    let rejected: Vec<_> = std::fs::read_dir(dir.path().join("rejected"))
        .expect("a rejected/ folder")
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert!(
        rejected[0].ends_with("-connectivity.rowbinary"),
        "{rejected:?}"
    );
    assert_eq!(ch.scalar("SELECT count() FROM poison.connectivity"), 0);
}
