#!/usr/bin/env bash
# How far tokenproxy is from the floor that SwiftNIO itself sets, and from nginx, in one run.
#
#   bench/floor.sh [SECONDS] [ROUNDS] [CONNECTIONS] [OTHER_TOKENPROXY_BINARY]
#
# Side by side, in front of the same nginx backend, alternating, ROUNDS times: nginx as a proxy
# (2 workers, 256 keep-alive upstream connections, the bench token attached), the NIO floor
# (bench/nio-floor: a byte relay on 2 event loops, one upstream connection per client, no
# parsing and no token: what any NIO proxy costs at least), and tokenproxy (deploy/build-release.sh),
# optionally a second tokenproxy binary (an earlier build, say) as "other". For each: requests
# per second (wrk -t2) and the CPU time the proxy's processes spent per request (user + system,
# /proc/PID/task/*/stat), whose ratios tell what the throughput ratios mean on a shared 2-core
# machine. Needs nginx, wrk, curl, python3; builds both binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-6}; rounds=${2:-3}; connections=${3:-64}; other=${4:-}
source bench/common.sh
(cd bench/nio-floor && swift build -c release --static-swift-stdlib -Xswiftc -enforce-exclusivity=unchecked >&2)
floor_binary=bench/nio-floor/.build/release/NIOFloor
backend=$(free_port); nginx_port=$(free_port); floor_port=$(free_port)
start_nginx_backend "$work/backend" "$backend"
start_nginx_proxy "$work/nginx" "$nginx_port" "$backend"
"$floor_binary" "$floor_port" "$backend" & floor_pid=$!; pids+=($floor_pid)
python3 bench/token_endpoint.py "$work/token.port" 3600 & pids+=($!)
wait_file "$work/token.port"
start_tokenproxy() { # name binary -> sets port_<name>, pid_<name>
  local port; port=$(free_port)
  write_tokenproxy_config "$work/$1" "$port" "$backend" "$work/token.port"
  "$2" run --config "$work/$1/config.json" 2>"$work/$1.log" & pids+=($!)
  printf -v "port_$1" '%s' "$port"; printf -v "pid_$1" '%s' "$!"
}
start_tokenproxy tokenproxy "$binary"
names=(nginx floor tokenproxy)
[ -n "$other" ] && { start_tokenproxy other "$other"; names+=(other); }
sleep 1.5
nginx_pids=$(pgrep -P "$(cat "$work/nginx/pid")" | tr '\n' ' ')
port_of() { case $1 in nginx) echo "$nginx_port";; floor) echo "$floor_port";; tokenproxy) echo "$port_tokenproxy";; other) echo "$port_other";; esac; }
pids_of() { case $1 in nginx) echo "$nginx_pids";; floor) echo "$floor_pid";; tokenproxy) echo "$pid_tokenproxy";; other) echo "$pid_other";; esac; }
for name in "${names[@]}"; do
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$(port_of "$name")/")
  [ "$code" = 200 ] || { echo "$name answered $code, not 200" >&2; exit 1; }
done
ticks() { local total=0; for pid in "$@"; do for f in /proc/"$pid"/task/*/stat; do total=$((total + $(awk '{print $14+$15}' "$f"))); done; done; echo "$total"; }
measure() { # name -> "requests/s microseconds-per-request p99-ms"
  local before after out
  before=$(ticks $(pids_of "$1"))
  out=$(wrk -t2 -c"$connections" -d"${seconds}s" --latency "http://127.0.0.1:$(port_of "$1")/")
  after=$(ticks $(pids_of "$1"))
  echo "$out" | awk -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" '
    /Requests\/sec/ {rps=$2} / requests in / {n=$1}
    /^ +99%/ {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v=v*1000}; p99=v}
    END {printf "%s %.2f %s\n", rps, t * 1e6 / hz / n, p99}'
}
for round in $(seq "$rounds"); do
  order=("${names[@]}"); (( round % 2 )) || order=($(printf '%s\n' "${names[@]}" | tac))
  for name in "${order[@]}"; do measure "$name" >> "$work/$name.txt"; done
done
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
n_rps=$(cut -d' ' -f1 "$work/nginx.txt" | median); n_cpu=$(cut -d' ' -f2 "$work/nginx.txt" | median); n_p99=$(cut -d' ' -f3 "$work/nginx.txt" | median)
echo "$connections connections, ${seconds}s × $rounds rounds (medians)"
echo "| proxy | req/s | × nginx | CPU µs/request | × nginx | p99 | × nginx |"
echo "|---|---|---|---|---|---|---|"
for name in "${names[@]}"; do
  rps=$(cut -d' ' -f1 "$work/$name.txt" | median); cpu=$(cut -d' ' -f2 "$work/$name.txt" | median); p99=$(cut -d' ' -f3 "$work/$name.txt" | median)
  awk -v n="$name" -v r="$rps" -v c="$cpu" -v p="$p99" -v nr="$n_rps" -v nc="$n_cpu" -v np="$n_p99" \
    'BEGIN {printf "| %s | %.0f | %.2f | %.2f | %.2f | %.2f ms | %.2f |\n", n, r, r/nr, c, c/nc, p, p/np}'
done
