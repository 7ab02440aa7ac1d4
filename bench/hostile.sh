#!/usr/bin/env bash
# Memory under hostile clients (issue 10): 300 slowloris connections closed by
# limits.headerTimeout, and 300 MiB sent after an upgrade request to an upstream that never
# answers. RSS is sampled every 50 ms; results are ratios to the limits.
#   bench/hostile.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
anon_kib() { awk '/^RssAnon:/ {print $2}' "/proc/$1/status"; }
wait_port() { for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

python3 bench/silent_upstream.py "$work/upstream.port" & pids+=($!)
wait_file "$work/upstream.port"
python3 bench/token_endpoint.py "$work/token.port" 3600 & pids+=($!)
wait_file "$work/token.port"
proxy=$(free_port)
expires=$(python3 -c 'import datetime; print((datetime.datetime.now(datetime.timezone.utc)+datetime.timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ"))')
printf '{"version": 1, "access_token": "bench-token", "refresh_token": "rt-0", "token_type": "Bearer", "expires_at": "%s"}\n' "$expires" > "$work/token.json"
chmod 600 "$work/token.json"
cat > "$work/config.json" <<CONF
{
  "listen": "127.0.0.1:$proxy",
  "upstream": { "url": "http://127.0.0.1:$(cat "$work/upstream.port")", "readTimeout": "60s" },
  "token": { "endpoint": "http://127.0.0.1:$(cat "$work/token.port")/token", "grant": "refresh_token", "clientAuth": "none",
             "clientId": "bench", "store": "token.json" },
  "limits": { "headerTimeout": "3s" },
  "admin": null,
  "log": { "level": "error" }
}
CONF
"$binary" run --config "$work/config.json" 2>"$work/tp.log" & tp=$!; pids+=($tp)
wait_port "$proxy"
sleep 1
idle=$(rss_kib "$tp"); idle_anon=$(anon_kib "$tp")

sample() { # command... ; prints the peak RSS (KiB) while it runs, and its output
  local peak; peak=$(rss_kib "$tp")
  "$@" > "$work/out.txt" & local pid=$!
  while kill -0 "$pid" 2>/dev/null; do local now; now=$(rss_kib "$tp"); (( now > peak )) && peak=$now; sleep 0.05; done
  wait "$pid"
  echo "$peak"
}
slow_peak=$(sample python3 bench/hostile_clients.py slowloris "$proxy" 300 20)
slow_result=$(cat "$work/out.txt")
after_slow=$(rss_kib "$tp"); after_slow_anon=$(anon_kib "$tp")
flood_before=$(rss_kib "$tp")
flood_peak=$(sample python3 bench/hostile_clients.py flood "$proxy" 300 10)
flood_result=$(cat "$work/out.txt")

mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k/1024}'; }
echo "| memory under hostile clients | measured | limit | × limit |"
echo "|---|---|---|---|"
echo "| idle RSS | $(mib "$idle") MiB | 20 MiB | $(awk -v k="$idle" 'BEGIN {printf "%.2f", k/1024/20}') |"
echo "| 300 slowloris connections: peak RSS | $(mib "$slow_peak") MiB | — | — |"
echo "| after headerTimeout closed them ($slow_result): RSS above idle | $(mib $((after_slow - idle))) MiB | 2 MiB | $(awk -v k=$((after_slow - idle)) 'BEGIN {printf "%.2f", k/1024/2}') |"
echo "| of which heap and stacks (RssAnon; the rest is code paged in by the first 408s and closes) | $(mib $((after_slow_anon - idle_anon))) MiB | — | — |"
echo "| upgrade request then filler ($flood_result): RSS growth | $(mib $((flood_peak - flood_before))) MiB | 8 MiB | $(awk -v k=$((flood_peak - flood_before)) 'BEGIN {printf "%.2f", k/1024/8}') |"
