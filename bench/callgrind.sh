#!/usr/bin/env bash
# Instructions per request under valgrind's callgrind: a steady figure on a noisy shared machine
# (the same binary and load give the same count, whatever else runs).
#
#   bench/callgrind.sh [SECONDS] [CONNECTIONS] [OTHER_TOKENPROXY_BINARY | --traces]
#
# The release binary (deploy/build-release.sh, its debug sections stripped: valgrind cannot read
# them) proxies to an nginx backend with a token from the store; after one warm-up request the
# counters are zeroed, wrk sends keep-alive GETs for SECONDS, and the proxy's instructions are
# divided by the requests served. With OTHER, a second binary is measured the same way. The
# profiles are left as callgrind.out.tokenproxy (and callgrind.out.other) for callgrind_annotate.
# With --traces, the same binary is measured again with telemetry.otlp at sampleRatio 1.0 and 0.1,
# exporting to the backend nginx (which answers POST /v1/traces with an empty 200), and with an
# admin listener and a client following GET /events.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}; connections=${2:-4}; other=${3:-}
source bench/common.sh
backend=$(free_port)
start_nginx_backend "$work/backend" "$backend" "location = /v1/traces { default_type application/x-protobuf; return 200 ''; }"
python3 bench/token_endpoint.py "$work/token.port" 3600 & pids+=($!)
wait_file "$work/token.port"

measure() { # name binary [config-json-merged [admin-port-for-an-/events-reader]] -> "name instructions-per-request requests"
  local dir="$work/$1" port; port=$(free_port)
  write_tokenproxy_config "$dir" "$port" "$backend" "$work/token.port"
  if [ -n "${3:-}" ]; then
    python3 -c 'import json,sys; c=json.load(open(sys.argv[1])); c.update(json.loads(sys.argv[2])); json.dump(c, open(sys.argv[1],"w"))' "$dir/config.json" "$3"
  fi
  objcopy --strip-debug "$2" "$dir/tokenproxy"
  valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out" "$dir/tokenproxy" run --config "$dir/config.json" 2>"$dir/log" &
  local pid=$!; pids+=($pid)
  for _ in $(seq 600); do curl -sf -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
  curl -sf -o /dev/null "http://127.0.0.1:$port/" || { echo "$1 never answered: $(tail -3 "$dir/log")" >&2; exit 1; }
  if [ -n "${4:-}" ]; then curl -sN "http://127.0.0.1:$4/events" > "$dir/events.out" & pids+=($!); sleep 0.5; fi
  callgrind_control -z "$pid" >/dev/null
  local requests
  requests=$(wrk -t1 -c"$connections" -d"${seconds}s" "http://127.0.0.1:$port/" | awk '/ requests in / {print $1}')
  callgrind_control -d "$pid" >/dev/null
  sleep 1
  kill -INT "$pid"; wait "$pid" 2>/dev/null || true
  # The dump after the zeroing holds the load alone (the last file written before exit).
  local dump; dump=$(ls -t "$dir"/callgrind.out* | grep -v '\.out$' | head -1)
  local instructions; instructions=$(awk '/^summary:/ {print $2}' "$dump")
  cp "$dump" "callgrind.out.$1"
  awk -v n="$1" -v i="$instructions" -v r="$requests" 'BEGIN {printf "| %s | %d | %.0f |\n", n, r, i / r}'
}
echo "callgrind, $connections keep-alive connections, ${seconds}s"
echo "| build | requests | instructions / request |"
echo "|---|---|---|"
if [ "$other" = "--traces" ]; then
  otlp="\"otlp\": {\"endpoint\": \"http://127.0.0.1:$backend\""
  admin=$(free_port)
  measure tokenproxy "$binary"
  measure traces-1.0 "$binary" "{\"telemetry\": {$otlp, \"sampleRatio\": 1.0}}}"
  measure traces-0.1 "$binary" "{\"telemetry\": {$otlp, \"sampleRatio\": 0.1}}}"
  measure events-reader "$binary" "{\"admin\": {\"listen\": \"127.0.0.1:$admin\"}}" "$admin"
  exit 0
fi
[ -n "$other" ] && measure other "$other"
measure tokenproxy "$binary"
