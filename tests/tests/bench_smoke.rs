//! A smoke run of the benchmark harness (`tests/bench`, SMOKE=1): every part
//! with tiny inputs against real Mosquitto, ClickHouse, pyarrow and DuckDB,
//! on this build's debug programs. It asserts that the harness runs from
//! its one command and that its JSON document carries every figure with
//! its baseline; it never judges the figures (benchmarks, not timed tests).

use std::process::Command;

use tillwatch_integration_tests::{tillwatch_bin, workspace_root};

#[test]
fn the_benchmark_harness_runs_every_part_and_reports_each_figure_against_its_baseline() {
    let bin = tillwatch_bin();
    let dir = tempfile::tempdir().expect("a temp dir");
    let out = dir.path().join("bench-results.json");
    let run = Command::new(workspace_root().join("tests/bench"))
        .env("SMOKE", "1")
        .env("BENCH_BIN", bin.parent().expect("the build directory"))
        .env("TILLWATCH", &bin)
        .env("BENCH_OUT", &out)
        .output()
        .expect("run tests/bench");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "tests/bench failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out).expect("the JSON document")).expect("JSON");
    assert!(doc["machine"]["cpus"].as_u64().unwrap_or(0) > 0, "{doc}");
    let results = doc["results"].as_array().expect("results");
    let find = |prefix: &str| {
        results
            .iter()
            .find(|r| r["figure"].as_str().is_some_and(|f| f.starts_with(prefix)))
            .unwrap_or_else(|| panic!("no figure {prefix:?} in {doc:#}"))
    };
    for r in results {
        let value = r["value"].as_f64().unwrap_or(f64::NAN);
        assert!(
            value.is_finite() && value >= 0.0,
            "a figure without a value: {r}"
        );
        assert!(r["unit"].as_str().is_some_and(|u| !u.is_empty()), "{r}");
    }
    // Each of the comparisons, with a baseline measured in the run.
    for (figure, baseline) in [
        ("gateway drain to durable", "mosquitto_sub"),
        ("gateway drain to durable", "rumqttc"),
        ("publish -> durable p99", "the 2 s bound"),
        ("Parquet encode", "pyarrow"),
        ("ClickHouse insert", "clickhouse-client"),
        ("rollups hourly+daily, embedded", "DuckDB"),
        ("rollups hourly+daily, ClickHouse engine", "the same INSERT"),
        ("terminals connected at once", "the 100,000 target"),
        ("publish -> durable p99, 20 terminals", "the 2 s bound"),
        ("embedded broker: publish -> durable p99", "the 2 s bound"),
        ("gateway peak RSS, 3 s", "the 300 MB bound"),
    ] {
        let r = results
            .iter()
            .find(|r| {
                r["figure"].as_str().is_some_and(|f| f.starts_with(figure))
                    && r["baseline"]
                        .as_str()
                        .is_some_and(|b| b.starts_with(baseline))
            })
            .unwrap_or_else(|| panic!("no {figure:?} against {baseline:?} in {doc:#}"));
        let ratio = r["ratio"].as_f64().expect("a ratio");
        assert!(ratio.is_finite() && ratio > 0.0, "{figure}: {r}");
        assert!(r["met"].is_boolean(), "{figure}: {r}");
    }
    for figure in [
        "gateway CPU while draining",
        "sustained ingest, publisher and gateway at once",
        "sustained ingest through the embedded broker",
        "standalone peak RSS",
        "gateway peak RSS",
        "publish -> durable p50",
        "API device card p50",
        "gateway RSS trend",
        "Mosquitto peak RSS",
    ] {
        find(figure);
    }
    // The table is printed too.
    assert!(stdout.contains("figures; JSON document:"), "{stdout}");
}
