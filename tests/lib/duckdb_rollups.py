"""The rollup benchmark's DuckDB baseline: the hourly and daily device
rollups of one UTC day of the lake, in DuckDB SQL equivalent to the
embedded engine's (services/tillwatch-rollups/jobs/health/*.datafusion.sql),
each partition written as one Snappy Parquet file as the engine writes its
own. Prints one JSON line like rollup_bench's.

    python duckdb_rollups.py LAKE_DIR OUT_DIR YYYY-MM-DD DEVICES READINGS

Differences from the embedded jobs, which keep the work comparable but not
identical: no side inputs (the benchmark gives the engine none either:
minutes online and readings expected are NULL, every terminal's day is the
UTC day), and DuckDB has no weighted approximate quantile, so the
transaction-weighted and reading-weighted quantiles are DuckDB's
unweighted `approx_quantile` over the same values.
"""

import calendar
import json
import os
import sys
import time

import duckdb

TABLES = ["battery", "connectivity", "app_performance", "payment_health"]

HOURLY = """
WITH seen AS (
    SELECT device_id, merchant_id, store_id FROM battery
    UNION ALL SELECT device_id, merchant_id, store_id FROM connectivity
    UNION ALL SELECT device_id, merchant_id, store_id FROM app_performance
    UNION ALL SELECT device_id, merchant_id, store_id FROM payment_health
), d AS (
    SELECT device_id, max(merchant_id) AS merchant_id, max(store_id) AS store_id
    FROM seen GROUP BY device_id
), b AS (
    SELECT device_id,
        count(*) AS battery_readings,
        min(level_pct) AS battery_min_pct,
        avg(CAST(level_pct AS DOUBLE)) AS battery_avg_pct,
        last(level_pct ORDER BY sampled_at, seq) AS battery_last_pct,
        CASE WHEN bool_or(charging) THEN NULL ELSE
            CAST(first(level_pct ORDER BY sampled_at, seq) AS DOUBLE)
            - CAST(last(level_pct ORDER BY sampled_at, seq) AS DOUBLE) END AS battery_drain_pct,
        60.0 * avg(CASE WHEN charging THEN 1.0 ELSE 0.0 END) AS charging_minutes,
        max(temperature_celsius) AS temperature_max_celsius,
        min(health_pct) AS battery_health_min_pct
    FROM battery GROUP BY device_id
), c AS (
    SELECT device_id,
        count(*) AS connectivity_readings,
        min(rssi_dbm) AS rssi_min_dbm,
        approx_quantile(CAST(rssi_dbm AS DOUBLE), 0.5) AS rssi_median_dbm,
        approx_quantile(CAST(payment_host_latency_ms AS DOUBLE), 0.5) AS host_latency_p50_ms,
        approx_quantile(CAST(payment_host_latency_ms AS DOUBLE), 0.95) AS host_latency_p95_ms,
        sum(CAST(disconnects AS BIGINT)) AS disconnects
    FROM connectivity GROUP BY device_id
), a AS (
    SELECT device_id,
        count(*) AS app_readings,
        sum(CAST(transactions AS BIGINT)) AS transactions,
        approx_quantile(CAST(transaction_latency_avg_ms AS DOUBLE), 0.5) AS txn_latency_p50_ms,
        approx_quantile(CAST(transaction_latency_avg_ms AS DOUBLE), 0.95) AS txn_latency_p95_ms,
        approx_quantile(CAST(transaction_latency_avg_ms AS DOUBLE), 0.99) AS txn_latency_p99_ms,
        sum(CAST(crashes AS BIGINT)) AS crashes,
        sum(CAST(hangs AS BIGINT)) AS hangs,
        last(firmware_version ORDER BY sampled_at, seq) AS firmware_version,
        last(app_version ORDER BY sampled_at, seq) AS app_version
    FROM app_performance GROUP BY device_id
), p AS (
    SELECT device_id,
        count(*) AS payment_readings,
        max(offline_queue_len) AS offline_queue_max,
        max(offline_queue_oldest_age_s) AS offline_queue_oldest_max_s
    FROM payment_health GROUP BY device_id
)
SELECT
    epoch_ms(CAST({start_ms} AS BIGINT)) AS hour,
    d.device_id, d.merchant_id, d.store_id, a.firmware_version, a.app_version,
    b.battery_min_pct, b.battery_avg_pct, b.battery_last_pct, b.battery_drain_pct, b.charging_minutes,
    b.temperature_max_celsius,
    c.rssi_min_dbm, c.rssi_median_dbm, c.host_latency_p50_ms, c.host_latency_p95_ms,
    coalesce(c.disconnects, 0) AS disconnects,
    coalesce(a.transactions, 0) AS transactions,
    a.txn_latency_p50_ms, a.txn_latency_p95_ms, a.txn_latency_p99_ms,
    coalesce(a.crashes, 0) AS crashes, coalesce(a.hangs, 0) AS hangs,
    p.offline_queue_max, p.offline_queue_oldest_max_s,
    coalesce(b.battery_readings, 0) AS battery_readings,
    coalesce(c.connectivity_readings, 0) AS connectivity_readings,
    coalesce(a.app_readings, 0) AS app_readings,
    coalesce(p.payment_readings, 0) AS payment_readings,
    b.battery_health_min_pct,
    CAST(NULL AS DOUBLE) AS minutes_online,
    CAST(NULL AS DOUBLE) AS readings_expected
FROM d
LEFT JOIN b ON b.device_id = d.device_id
LEFT JOIN c ON c.device_id = d.device_id
LEFT JOIN a ON a.device_id = d.device_id
LEFT JOIN p ON p.device_id = d.device_id
ORDER BY d.device_id
"""

DAILY = """
SELECT
    epoch_ms(CAST({start_ms} AS BIGINT)) AS day,
    device_id,
    max(merchant_id) AS merchant_id,
    max(store_id) AS store_id,
    last(firmware_version ORDER BY CASE WHEN firmware_version IS NULL THEN 0 ELSE 1 END, hour) AS firmware_version,
    last(app_version ORDER BY CASE WHEN app_version IS NULL THEN 0 ELSE 1 END, hour) AS app_version,
    min(battery_min_pct) AS battery_min_pct,
    sum(battery_avg_pct * battery_readings) / sum(CASE WHEN battery_avg_pct IS NULL THEN NULL ELSE battery_readings END) AS battery_avg_pct,
    last(battery_last_pct ORDER BY CASE WHEN battery_last_pct IS NULL THEN 0 ELSE 1 END, hour) AS battery_last_pct,
    avg(battery_drain_pct) AS battery_drain_pct_per_hour,
    sum(charging_minutes) AS charging_minutes,
    max(temperature_max_celsius) AS temperature_max_celsius,
    min(rssi_min_dbm) AS rssi_min_dbm,
    approx_quantile(rssi_median_dbm, 0.5) AS rssi_median_dbm,
    approx_quantile(host_latency_p50_ms, 0.5) AS host_latency_p50_ms,
    approx_quantile(host_latency_p95_ms, 0.95) AS host_latency_p95_ms,
    sum(disconnects) AS disconnects,
    sum(transactions) AS transactions,
    approx_quantile(txn_latency_p50_ms, 0.5) AS txn_latency_p50_ms,
    approx_quantile(txn_latency_p95_ms, 0.95) AS txn_latency_p95_ms,
    approx_quantile(txn_latency_p99_ms, 0.99) AS txn_latency_p99_ms,
    sum(crashes) AS crashes,
    sum(hangs) AS hangs,
    max(offline_queue_max) AS offline_queue_max,
    max(offline_queue_oldest_max_s) AS offline_queue_oldest_max_s,
    sum(battery_readings) AS battery_readings,
    sum(connectivity_readings) AS connectivity_readings,
    sum(app_readings) AS app_readings,
    sum(payment_readings) AS payment_readings,
    count(*) AS hours_reported,
    min(battery_health_min_pct) AS battery_health_min_pct,
    sum(minutes_online) AS minutes_online,
    sum(readings_expected) AS readings_expected
FROM read_parquet({files})
GROUP BY device_id
ORDER BY device_id
"""


def quoted(paths):
    return "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"


def main():
    lake, out, day, devices, readings = sys.argv[1:6]
    start_ms = calendar.timegm(time.strptime(day, "%Y-%m-%d")) * 1000
    os.makedirs(os.path.join(out, "hourly"), exist_ok=True)
    con = duckdb.connect()
    # The engines use the machine's cores the same way: all of them.
    con.execute("SET threads TO {}".format(os.cpu_count() or 1))
    hourly_files = []
    started = time.perf_counter()
    for hour in range(24):
        hour_dir = "date={}/hour={:02d}".format(day, hour)
        for table in TABLES:
            directory = os.path.join(lake, table, hour_dir)
            files = sorted(
                os.path.join(directory, f)
                for f in os.listdir(directory)
                if f.endswith(".parquet") and not f.startswith(".")
            )
            con.execute(
                "CREATE OR REPLACE VIEW {} AS SELECT * FROM read_parquet({})".format(
                    table, quoted(files)
                )
            )
        target = os.path.join(out, "hourly", "{:02d}.parquet".format(hour))
        sql = HOURLY.replace("{start_ms}", str(start_ms + hour * 3_600_000))
        con.execute(
            "COPY ({}) TO '{}' (FORMAT parquet, COMPRESSION snappy)".format(sql, target)
        )
        hourly_files.append(target)
    hourly_s = time.perf_counter() - started
    started = time.perf_counter()
    sql = DAILY.replace("{start_ms}", str(start_ms)).replace("{files}", quoted(hourly_files))
    target = os.path.join(out, "daily.parquet")
    con.execute("COPY ({}) TO '{}' (FORMAT parquet, COMPRESSION snappy)".format(sql, target))
    daily_s = time.perf_counter() - started
    rows = con.execute("SELECT count(*) FROM read_parquet('{}')".format(target)).fetchone()[0]
    if rows != int(devices):
        sys.exit("DuckDB's daily rollup has {} terminals, not {}".format(rows, devices))
    print(
        json.dumps(
            {
                "engine": "duckdb " + duckdb.__version__,
                "devices": int(devices),
                "readings": int(readings),
                "hourly_s": round(hourly_s, 2),
                "daily_s": round(daily_s, 2),
                "total_s": round(hourly_s + daily_s, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
