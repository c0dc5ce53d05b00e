# Sourced by the benchmark scripts: start a private clickhouse-server (Debian's)
# in "$1" on free ports; sets ch_url, ch_tcp_port, ch_pid_file. The caller
# kills "$(cat "$ch_pid_file")" when done.
start_clickhouse() {
  local work=$1 free http tcp
  free() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
  http=$(free); tcp=$(free)
  mkdir -p "$work"
  cp /etc/clickhouse-server/users.xml "$work/users.xml"
  cat > "$work/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>$work/server.log</log><errorlog>$work/error.log</errorlog><console>0</console></logger>
  <listen_host>127.0.0.1</listen_host><http_port>$http</http_port><tcp_port>$tcp</tcp_port>
  <path>$work/data/</path><tmp_path>$work/tmp/</tmp_path><user_files_path>$work/user_files/</user_files_path>
  <format_schema_path>$work/format_schemas/</format_schema_path><users_config>$work/users.xml</users_config>
  <default_profile>default</default_profile><default_database>default</default_database><timezone>UTC</timezone>
  <mark_cache_size>536870912</mark_cache_size>
</yandex>
XML
  ch_pid_file="$work/pid"
  clickhouse-server --config-file="$work/config.xml" --pid-file="$ch_pid_file" --daemon
  ch_url="http://127.0.0.1:$http"
  ch_tcp_port=$tcp
  for _ in $(seq 100); do curl -sf "$ch_url/?query=SELECT%201" >/dev/null && return 0; sleep 0.1; done
  echo "clickhouse-server did not start; see $work/error.log" >&2
  return 1
}
