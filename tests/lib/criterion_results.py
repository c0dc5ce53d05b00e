"""criterion's estimates as harness figures: readings/s per bench and
input (median time per iteration over the elements it processes).

  python3 tests/lib/criterion_results.py CRITERION_DIR
"""

import glob
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import bench_report  # noqa: E402

# The bound for the whole per-reading path on one core.
TARGET_GROUP = "decode_validate_batch_parquet"
TARGET = 1_000_000


def main():
    found = 0
    for path in sorted(glob.glob(f"{sys.argv[1]}/**/new/benchmark.json", recursive=True)):
        bench = json.load(open(path))
        estimates = json.load(open(os.path.join(os.path.dirname(path), "estimates.json")))
        elements = (bench.get("throughput") or {}).get("Elements")
        if not elements:
            continue
        ns = estimates["median"]["point_estimate"]
        rate = round(elements / (ns / 1e9))
        figure = f"criterion {bench['group_id']}/{bench.get('value_str') or bench.get('function_id')}"
        args = [figure, str(rate), "readings/s"]
        if bench["group_id"] == TARGET_GROUP:
            args += ["the 1 M readings/s bound", str(TARGET), ">= 1.0"]
        bench_report.record(args)
        found += 1
    if not found:
        sys.exit(f"no criterion results under {sys.argv[1]}")


if __name__ == "__main__":
    main()
