#!/usr/bin/env bash
# What traces and an open /events stream cost the data path (issue 21, SPEC §2.6, §7).
#
#   bench/traces.sh [SECONDS] [ROUNDS] [CONNECTIONS]
#
# Three tokenproxy processes of the same release binary sit in front of the same nginx backend,
# each with the bench token in its store and an admin listener:
#   off     no telemetry (the default);
#   on      telemetry.otlp at sampleRatio 1.0, posting to an OTLP sink (the backend nginx answers
#           POST /v1/traces with 200 and an empty ExportTraceServiceResponse), so every request
#           makes a server span and a client span that are exported;
#   tenth   the same at sampleRatio 0.1;
#   events  no telemetry, with a client following GET /events the whole time.
# wrk (2 threads) loads each in turn, alternating, ROUNDS times. For each run: req/s, and the
# proxy's CPU time (utime+stime from /proc) divided by the requests it served. The table gives
# medians and each one's ratio to "off" measured in the same rounds.
# Needs: nginx (nginx-light), wrk, curl, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-5}; rounds=${2:-5}; connections=${3:-64}
for tool in nginx wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing (apt-get install nginx-light wrk curl)" >&2; exit 2; }
done
source bench/common.sh
backend=$(free_port)
start_nginx_backend "$work/backend" "$backend" \
  "location = /v1/traces { default_type application/x-protobuf; return 200 ''; }"
python3 bench/token_endpoint.py "$work/token.port" 3600 & pids+=($!)
wait_file "$work/token.port"

declare -A port admin pid
start() { # name telemetry-json
  local dir="$work/$1"
  port[$1]=$(free_port); admin[$1]=$(free_port)
  write_tokenproxy_config "$dir" "${port[$1]}" "$backend" "$work/token.port"
  python3 - "$dir/config.json" "${admin[$1]}" "$2" <<'PY'
import json, sys
path, admin, telemetry = sys.argv[1], sys.argv[2], sys.argv[3]
config = json.load(open(path))
config["admin"] = {"listen": f"127.0.0.1:{admin}"}
if telemetry:
    config["telemetry"] = json.loads(telemetry)
json.dump(config, open(path, "w"))
PY
  (cd "$dir" && exec "$binary" run --config config.json 2>"$dir/log") & pid[$1]=$!; pids+=(${pid[$1]})
  for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:${port[$1]}/" && return 0; sleep 0.1; done
  echo "$1 never answered: $(tail -3 "$dir/log")" >&2; exit 1
}
start off ""
start on "{\"otlp\": {\"endpoint\": \"http://127.0.0.1:$backend\", \"sampleRatio\": 1.0, \"serviceName\": \"bench\"}}"
start tenth "{\"otlp\": {\"endpoint\": \"http://127.0.0.1:$backend\", \"sampleRatio\": 0.1, \"serviceName\": \"bench\"}}"
start events ""
curl -sN "http://127.0.0.1:${admin[events]}/events" > "$work/events.out" & pids+=($!)

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ticks_per_second=$(getconf CLK_TCK)
declare -A rps cpu
for round in $(seq "$rounds"); do
  for name in off on tenth events; do
    before=$(cpu_ticks "${pid[$name]}")
    out=$(wrk -t2 -c"$connections" -d"${seconds}s" "http://127.0.0.1:${port[$name]}/")
    after=$(cpu_ticks "${pid[$name]}")
    requests=$(awk '/ requests in / {print $1}' <<<"$out")
    errors=$(awk '/Non-2xx|Socket errors/' <<<"$out")
    [ -z "$errors" ] || { echo "$name: $errors" >&2; exit 1; }
    rps[$name]+="$(awk '/^Requests\/sec/ {print $2}' <<<"$out") "
    cpu[$name]+="$(awk -v t=$((after - before)) -v r="$requests" -v hz="$ticks_per_second" 'BEGIN {printf "%.2f", t / hz * 1e6 / r}') "
  done
  echo "round $round: off ${rps[off]##* } …" >&2
done
median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
echo "traces and /events, $connections connections, $rounds rounds of ${seconds}s each (medians)"
echo "| proxy | req/s | vs off | CPU µs / request | vs off | per round (req/s) |"
echo "|---|---|---|---|---|---|"
for name in off on tenth events; do
  r=$(median "${rps[$name]}"); c=$(median "${cpu[$name]}")
  r0=$(median "${rps[off]}"); c0=$(median "${cpu[off]}")
  awk -v n="$name" -v r="$r" -v c="$c" -v r0="$r0" -v c0="$c0" -v all="${rps[$name]}" \
    'BEGIN {printf "| %s | %.0f | %.3f× | %.1f | %+.1f %% | %s|\n", n, r, r / r0, c, (c / c0 - 1) * 100, all}'
done
echo "events received by the /events reader: $(grep -c '^event:' "$work/events.out" || true)"
echo "spans exporter errors logged by \"on\": $(grep -c -i 'export' "$work/on/log" || true)"
