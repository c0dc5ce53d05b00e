"""The benchmark harness's results: one JSON line per figure while the
benches run (`record`), then one table and one JSON document (`report`).

  python3 tests/lib/bench_report.py record FIGURE VALUE UNIT [BASELINE BASELINE_VALUE TARGET]
  python3 tests/lib/bench_report.py report RESULTS_JSONL OUT_JSON

Every figure carries `figure`, `value`, `unit`; a compared one also
`baseline` (what it is compared with), `baseline_value`, `ratio`
(value / baseline_value, ours over theirs) and `target` with `met`.
"""

import datetime
import json
import os
import platform
import subprocess
import sys


def number(text):
    value = float(text)
    return int(value) if value.is_integer() and abs(value) < 2**53 else value


def record(args):
    if len(args) not in (3, 6):
        sys.exit("record FIGURE VALUE UNIT [BASELINE BASELINE_VALUE TARGET]")
    row = {"figure": args[0], "value": number(args[1]), "unit": args[2]}
    if len(args) == 6:
        baseline_value = number(args[4])
        row["baseline"] = args[3]
        row["baseline_value"] = baseline_value
        # Four significant digits: a ratio far below 1 stays above 0.
        row["ratio"] = float(f"{row['value'] / baseline_value:.4g}") if baseline_value else None
        row["target"] = args[5]
        row["met"] = met(row["ratio"], args[5])
    line = json.dumps(row)
    path = os.environ.get("BENCH_RESULTS")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")
    print("  " + describe(row))


def met(ratio, target):
    """Whether `ratio` meets a target written as '>= 0.9' or '<= 1.0';
    None when there is no target ('-')."""
    if ratio is None or target in ("", "-"):
        return None
    op, _, bound = target.partition(" ")
    bound = float(bound)
    if op == ">=":
        return ratio >= bound
    if op == "<=":
        return ratio <= bound
    sys.exit(f"target {target!r}: write it as '>= X' or '<= X'")


def fmt(value):
    if isinstance(value, float) and abs(value) < 100:
        return f"{value:,.2f}"
    return f"{value:,.0f}"


def describe(row):
    text = f"{row['figure']}: {fmt(row['value'])} {row['unit']}"
    if "baseline" in row:
        text += f" vs {row['baseline']} {fmt(row['baseline_value'])}"
        if row["ratio"] is not None:
            text += f" = {row['ratio']:.3g}"
        if row.get("target") not in (None, "-"):
            text += f" (target {row['target']}: {'met' if row['met'] else 'MISSED'})"
    return text


def machine():
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    def version(cmd):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return None
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem_kib / 1048576, 1),
        "os": platform.platform(),
        "rustc": version(["rustc", "--version"]),
        "mosquitto": version(["mosquitto", "-h"]),
        "clickhouse": version(["clickhouse-client", "--version"]),
    }


def report(args):
    results_path, out_path = args
    rows = []
    with open(results_path) as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    document = {
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": os.environ.get("BENCH_COMMAND", "tests/bench"),
        "machine": machine(),
        "results": rows,
    }
    with open(out_path, "w") as f:
        json.dump(document, f, indent=2)
        f.write("\n")
    headers = ["figure", "value", "unit", "baseline", "baseline value", "ratio", "target"]
    table = [headers]
    for r in rows:
        target = r.get("target") or ""
        if r.get("met") is not None:
            target += " ok" if r["met"] else " MISSED"
        table.append([
            r["figure"], fmt(r["value"]), r["unit"], r.get("baseline", ""),
            fmt(r["baseline_value"]) if "baseline_value" in r else "",
            f"{r['ratio']:.3g}" if r.get("ratio") is not None else "", target,
        ])
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    print()
    for n, row in enumerate(table):
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
    print(f"\n{len(rows)} figures; JSON document: {out_path}")


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("record", "report"):
        sys.exit(__doc__)
    {"record": record, "report": report}[sys.argv[1]](sys.argv[2:])
