"""The Parquet baseline: pyarrow writing the very columns Tillwatch wrote.

  python tests/lib/pyarrow_parquet.py DIR READINGS [REPEAT]

Reads every Parquet file tillwatch-bench-parquet left in DIR into memory
(not timed), then writes each table again with pyarrow on one thread, with
the lake's settings (Snappy; dictionary encoding, page statistics and the
page index, as arrow-rs writes by default), REPEAT times (default 5), and
keeps the best time. Prints one JSON line.
"""

import glob
import json
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq


def main():
    directory, readings = sys.argv[1], int(sys.argv[2])
    repeat = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    tables = [pq.read_table(path) for path in sorted(glob.glob(f"{directory}/*.parquet"))]
    rows = sum(t.num_rows for t in tables)
    assert rows == readings, f"{rows} rows in {directory}, expected {readings}"
    best = float("inf")
    size = 0
    for _ in range(max(repeat, 1)):
        started = time.perf_counter()
        sinks = []
        for table in tables:
            sink = pa.BufferOutputStream()
            pq.write_table(
                table,
                sink,
                compression="snappy",
                use_dictionary=True,
                write_statistics=True,
                write_page_index=True,
            )
            sinks.append(sink.getvalue())
        best = min(best, time.perf_counter() - started)
        size = sum(buf.size for buf in sinks)
    print(json.dumps({
        "pyarrow": pa.__version__,
        "readings": rows,
        "bytes": size,
        "best_s": best,
        "readings_per_s": rows / best,
    }))


if __name__ == "__main__":
    main()
