# Sourced by the benchmark scripts (tests/bench-*): where the binaries are,
# the Python venv with the baselines' packages, free ports, and `record`,
# which adds one figure to the harness's results.
#
#   BENCH_BIN   directory holding the built programs; when set nothing is
#               built (the test suite's smoke run points it at its debug build)
#   TILLWATCH   the `tillwatch` binary (default: $BENCH_BIN/tillwatch)
#   BENCH_RESULTS  a file collecting one JSON line per figure (tests/bench)

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/tillwatch-target}"
bench_bin="${BENCH_BIN:-$CARGO_TARGET_DIR/release}"
tillwatch="${TILLWATCH:-$bench_bin/tillwatch}"

# Builds release programs unless BENCH_BIN says they are already built.
bench_build() {
  [ -n "${BENCH_BIN:-}" ] || cargo build --release -q --locked "$@"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The venv with DuckDB and pyarrow (what tests/run makes), made here when
# it is missing; sets bench_python.
bench_venv() {
  local venv="${TILLWATCH_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/tillwatch/venv}"
  if ! "$venv/bin/python" -c 'import duckdb, pyarrow' >/dev/null 2>&1; then
    echo "making the Python venv $venv (DuckDB, pyarrow)" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r tests/requirements.txt
  fi
  bench_python="$venv/bin/python"
}

# record FIGURE VALUE UNIT [BASELINE BASELINE_VALUE TARGET]
# One result; the ratio is VALUE / BASELINE_VALUE, TARGET (">= 0.9",
# "<= 1.0") says which way is good. Printed, and added to BENCH_RESULTS.
record() {
  python3 tests/lib/bench_report.py record "$@"
}

# A private Mosquitto with the project's loss-free config on a free port,
# in directory $1; sets mqtt_port and mqtt_pid.
start_mosquitto() {
  local dir=$1
  mkdir -p "$dir"
  mqtt_port=$(free_port)
  {
    cat deploy/mosquitto/mosquitto.conf
    printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence_location %s/\nuser root\n' "$mqtt_port" "$dir"
  } > "$dir/mosquitto.conf"
  mosquitto -c "$dir/mosquitto.conf" 2>"$dir/mosquitto.log" &
  mqtt_pid=$!
  for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$mqtt_port") 2>/dev/null && return 0; sleep 0.05; done
  echo "mosquitto did not start; see $dir/mosquitto.log" >&2
  return 1
}

# CPU seconds (user + system) process $1 has used so far.
cpu_seconds() {
  awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "/proc/$1/stat"
}

# Peak resident memory of process $1, MiB.
peak_rss_mib() {
  awk '/VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"
}
