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

# The gateway under test, as a child process: `start_gateway` runs
# "$tillwatch" gateway against $broker with data in $work/data (and
# ClickHouse when ch_args holds --clickhouse-url); sets gateway (its pid,
# also added to pids) and http (its metrics address).
gateway=""
http=""
ch_args=()
start_gateway() {
  : > "$work/gateway.out"
  "$tillwatch" gateway "${ch_args[@]}" --broker "$broker" --data-dir "$work/data" \
    --http-listen 127.0.0.1:0 > "$work/gateway.out" 2> "$work/gateway.err" &
  gateway=$!; pids+=("$gateway")
  for _ in $(seq 400); do grep -q 'http listening on' "$work/gateway.out" && break; sleep 0.025; done
  http=$(sed -n 's/^http listening on //p' "$work/gateway.out")
  [ -n "$http" ] || { cat "$work/gateway.err" >&2; exit 1; }
}

# Waits (at most 30 s) until the gateway says it is connected and subscribed.
wait_ready() {
  local deadline=$(($(date +%s) + 30))
  until curl -sf "http://$http/readyz" >/dev/null; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "the gateway never got ready; see $work/gateway.err" >&2; exit 1; }
    sleep 0.02
  done
}

# Readings the gateway has made durable in the lake.
stored() {
  curl -sf "http://$http/metrics" | awk '/^tillwatch_gateway_readings_stored_total/ { s += $2 } END { print s + 0 }'
}

in_clickhouse() {
  curl -sf "$ch_url" --data-binary "SELECT (SELECT count() FROM tillwatch.connectivity) + (SELECT count() FROM tillwatch.battery) + (SELECT count() FROM tillwatch.app_performance) + (SELECT count() FROM tillwatch.payment_health)"
}

# Waits until $1 readings are durable in the lake, and in ClickHouse when
# ch_args is set (at most 15 minutes).
wait_durable() {
  local deadline=$(($(date +%s) + 900))
  until [ "$(stored)" -ge "$1" ]; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "only $(stored) of $1 readings stored; see $work/gateway.err" >&2; exit 1; }
    sleep 0.02
  done
  if ((${#ch_args[@]})); then
    until [ "$(in_clickhouse)" -ge "$1" ]; do
      [ "$(date +%s)" -lt "$deadline" ] || { echo "only $(in_clickhouse) of $1 readings in ClickHouse" >&2; exit 1; }
      sleep 0.02
    done
  fi
}

# JSON field $2 of the JSON text $1.
field() { python3 -c "import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }
