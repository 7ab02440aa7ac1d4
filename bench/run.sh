#!/usr/bin/env bash
# tokenproxy vs nginx, side by side in one run, on loopback (issue 4's benchmark).
#
#   bench/run.sh [SECONDS_PER_RUN] [ROUNDS]
#
# Both proxies sit in front of the same backend (an nginx answering a small JSON body) and set
# the same Authorization header; nginx keeps 256 upstream connections alive, tokenproxy its
# per-EventLoop pool. wrk drives each at 64 and 256 connections, alternating, ROUNDS times;
# the table gives medians and ratios to nginx. Then memory: idle RSS, growth during a 1 GiB
# download and a 1 GiB upload, 1,000 idle keep-alive clients; and the cost of a 401 recovery.
# Needs: nginx (nginx-light), wrk, curl, python3 (Debian packages); builds tokenproxy with
# deploy/build-release.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-8}
rounds=${2:-3}
for tool in nginx wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing (apt-get install nginx-light wrk curl)" >&2; exit 2; }
done
source bench/common.sh
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
wait_port() { for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0; sleep 0.1; done; echo "port $1 never answered" >&2; exit 1; }

backend=$(free_port); nginx_proxy=$(free_port); tp=$(free_port); tp_faults=$(free_port)
truncate -s 1G "$work/big.bin"
chmod 755 "$work"; chmod 644 "$work/big.bin"  # nginx workers run as nobody
start_nginx_backend "$work/nginx-backend" "$backend" "location = /big { alias $work/big.bin; default_type application/octet-stream; }"
start_nginx_proxy "$work/nginx-proxy" "$nginx_proxy" "$backend"

python3 bench/token_endpoint.py "$work/token.port" 3600 & pids+=($!)
wait_file "$work/token.port"
token_port=$(cat "$work/token.port")
expires=$(python3 -c 'import datetime; print((datetime.datetime.now(datetime.timezone.utc)+datetime.timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ"))')
write_config() { # name port faults [upstream-port]
  mkdir -p "$work/$1"
  printf '{"version": 1, "access_token": "bench-token-0123456789abcdef", "refresh_token": "rt-0", "token_type": "Bearer", "expires_at": "%s"}\n' "$expires" > "$work/$1/token.json"
  chmod 600 "$work/$1/token.json"
  cat > "$work/$1/config.json" <<CONF
{
  "listen": "127.0.0.1:$2",
  "upstream": { "url": "http://127.0.0.1:${4:-$backend}" },
  "token": { "endpoint": "http://127.0.0.1:$token_port/token", "grant": "refresh_token", "clientAuth": "none",
             "clientId": "bench", "store": "token.json", "minRefreshInterval": "0s" },
  "admin": null,
  "faults": { "enabled": $3 },
  "log": { "level": "warning" }
}
CONF
}
write_config tp "$tp" false
write_config tp-faults "$tp_faults" true
"$binary" run --config "$work/tp/config.json" 2>"$work/tp.log" & tp_pid=$!; pids+=($tp_pid)
wait_port "$backend"; wait_port "$nginx_proxy"; wait_port "$tp"
# Idle means start-up is over: once it has its first token the proxy gives back the pages only
# start-up touched (ExecutableResidency), a moment after its port first answers.
sleep 2
idle_rss=$(rss_kib "$tp_pid")

run_wrk() { # port connections -> "requests/s p99_ms"
  wrk -t2 -c"$2" -d"${seconds}s" --latency "http://127.0.0.1:$1/" | awk '
    /Requests\/sec:/ {rps=$2}
    /^ +99%/ {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v=v*1000}; p99=v}
    /Non-2xx/ {bad=$NF}
    END {printf "%s %s %s\n", rps, p99, (bad==""?0:bad)}'
}
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "| connections | nginx req/s | tokenproxy req/s | × nginx | nginx p99 | tokenproxy p99 | p99 × nginx |"
echo "|---|---|---|---|---|---|---|"
for connections in 64 256; do
  : > "$work/n.txt"; : > "$work/t.txt"
  for round in $(seq "$rounds"); do
    if (( round % 2 )); then
      run_wrk "$nginx_proxy" "$connections" >> "$work/n.txt"; run_wrk "$tp" "$connections" >> "$work/t.txt"
    else
      run_wrk "$tp" "$connections" >> "$work/t.txt"; run_wrk "$nginx_proxy" "$connections" >> "$work/n.txt"
    fi
  done
  if awk '$3 != 0 {bad=1} END {exit !bad}' "$work/t.txt"; then echo "tokenproxy answered non-2xx under load" >&2; cat "$work/t.txt" >&2; exit 1; fi
  n_rps=$(cut -d' ' -f1 "$work/n.txt" | median); t_rps=$(cut -d' ' -f1 "$work/t.txt" | median)
  n_p99=$(cut -d' ' -f2 "$work/n.txt" | median); t_p99=$(cut -d' ' -f2 "$work/t.txt" | median)
  awk -v c="$connections" -v nr="$n_rps" -v tr="$t_rps" -v np="$n_p99" -v tpp="$t_p99" \
    'BEGIN {printf "| %d | %.0f | %.0f | %.2f | %.2f ms | %.2f ms | %.2f |\n", c, nr, tr, tr/nr, np, tpp, tpp/np}'
done
after_load_rss=$(rss_kib "$tp_pid")

# Memory: a 1 GiB download through the proxy, sampled every 50 ms.
before=$(rss_kib "$tp_pid"); peak=$before
curl -s -o /dev/null -w '%{size_download}' "http://127.0.0.1:$tp/big" > "$work/size.txt" & curl_pid=$!
while kill -0 "$curl_pid" 2>/dev/null; do now=$(rss_kib "$tp_pid"); (( now > peak )) && peak=$now; sleep 0.05; done
wait "$curl_pid"
download_growth=$(( peak - before ))
[ "$(cat "$work/size.txt")" = 1073741824 ] || { echo "the 1 GiB download through tokenproxy delivered $(cat "$work/size.txt") bytes" >&2; exit 1; }

# Memory: a 1 GiB upload through the proxy to an upstream that reads all of it.
python3 bench/upload_sink.py "$work/sink.port" & pids+=($!)
wait_file "$work/sink.port"
tp_upload=$(free_port)
write_config tp-upload "$tp_upload" false "$(cat "$work/sink.port")"
"$binary" run --config "$work/tp-upload/config.json" 2>"$work/tp-upload.log" & upload_pid=$!; pids+=($upload_pid)
wait_port "$tp_upload"
before=$(rss_kib "$upload_pid"); peak=$before
curl -s -o "$work/uploaded.txt" -X POST -T "$work/big.bin" "http://127.0.0.1:$tp_upload/upload" & curl_pid=$!
while kill -0 "$curl_pid" 2>/dev/null; do now=$(rss_kib "$upload_pid"); (( now > peak )) && peak=$now; sleep 0.05; done
wait "$curl_pid"
upload_growth=$(( peak - before ))
[ "$(cat "$work/uploaded.txt")" = 1073741824 ] || { echo "the 1 GiB upload through tokenproxy delivered $(cat "$work/uploaded.txt") bytes" >&2; exit 1; }

# Memory: 1,000 idle keep-alive clients.
python3 bench/idle_connections.py "$tp" 1000 3 > "$work/idle.txt" & idle_pid=$!
sleep 2; idle_conn_rss=$(rss_kib "$tp_pid"); wait "$idle_pid"

echo
echo "| memory | measured | limit | × limit |"
echo "|---|---|---|---|"
awk -v v="$idle_rss" 'BEGIN {printf "| idle RSS after start | %.1f MiB | 20 MiB | %.2f |\n", v/1024, v/1024/20}'
awk -v v="$after_load_rss" 'BEGIN {printf "| RSS after the load runs | %.1f MiB | — | — |\n", v/1024}'
awk -v v="$download_growth" 'BEGIN {printf "| growth during a 1 GiB download | %.1f MiB | 8 MiB | %.2f |\n", v/1024, v/1024/8}'
awk -v v="$upload_growth" 'BEGIN {printf "| growth during a 1 GiB upload | %.1f MiB | 8 MiB | %.2f |\n", v/1024, v/1024/8}'
awk -v v="$idle_conn_rss" -v t="$(cat "$work/idle.txt")" 'BEGIN {printf "| RSS with 1,000 idle keep-alive clients (%s) | %.1f MiB | 100 MiB | %.2f |\n", t, v/1024, v/1024/100}'

"$binary" run --config "$work/tp-faults/config.json" 2>"$work/tp-faults.log" & pids+=($!)
wait_port "$tp_faults"
echo
python3 bench/recovery.py "$tp_faults" "$token_port" 200
echo
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r); nginx $(nginx -v 2>&1 | sed 's/.*nginx\///'); wrk $(wrk -v 2>&1 | head -1 | awk '{print $2}'); $(swift --version 2>/dev/null | head -1)"
