#!/usr/bin/env bash
# HTTP/2 clients (issue 22): h2load through tokenproxy against the same load through nghttpx,
# both taking h2c (prior knowledge) and attaching the bench token, in one run, alternating, in
# two shapes: in front of nginx over HTTP/2 (h2c; tokenproxy's `upstream.protocol` "http2",
# nghttpx's `proto=h2`), the shape issue 22 names, and in front of nginx over HTTP/1.1.
#
#   bench/h2.sh [SECONDS] [ROUNDS]
#
# Each round runs h2load at 1 connection × 100 streams and at 10 connections × 100 streams
# against each proxy in turn (`-D SECONDS`, 2 threads): tokenproxy, nghttpx, and nginx as an h2c
# front (proxy_pass to HTTP/1.1, grpc_pass to HTTP/2, 2 workers); and against the HTTP/2 floor
# (bench/nio-floor `h2`: a swift-nio-http2 server on 2 event loops that answers every stream
# itself, proxying nothing: what any server on swift-nio-http2's stream channels costs at least).
# The table gives, per shape and proxy, the median req/s over the rounds with its spread
# (min–max), the ratios to nghttpx and to nginx of the same shape measured in the same rounds
# (the median of the rounds' ratios), and the p99 of the request times of the last round
# (h2load's per-request log). nghttpx runs with as many workers as tokenproxy has event loops.
# Then a client that reads nothing on 100 streams of a 1 GiB download (bench/h2_slow_reader.py):
# the proxy's resident size before and at its highest over 10 s, against issue 22's 16 MiB.
# Needs: nginx (nginx-light), h2load (nghttp2-client), nghttpx (nghttp2-proxy), curl, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-5}; rounds=${2:-3}
for tool in nginx h2load nghttpx curl python3; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing (apt-get install nginx-light nghttp2-client nghttp2-proxy curl)" >&2; exit 2; }
done
source bench/common.sh
(cd bench/nio-floor && swift build -c release --static-swift-stdlib -Xswiftc -enforce-exclusivity=unchecked >&2)
floor=$(free_port)
bench/nio-floor/.build/release/NIOFloor h2 "$floor" & pids+=($!)
backend=$(free_port); backend_h2=$(free_port)
start_nginx_backend "$work/backend" "$backend"
# As many streams per upstream connection as the clients open, for both proxies.
start_nginx_backend "$work/backend-h2" "$backend_h2" "http2_max_concurrent_streams 1000;" http2
python3 bench/token_endpoint.py "$work/token.port" 3600 & pids+=($!)
wait_file "$work/token.port"

start_tokenproxy() { # name backend-port protocol -> sets port_<name>, pid_<name>
  local port; port=$(free_port)
  write_tokenproxy_config "$work/$1" "$port" "$2" "$work/token.port"
  merge_tokenproxy_config "$work/$1/config.json" "{\"upstream\": {\"protocol\": \"$3\"}}"
  (cd "$work/$1" && exec "$binary" run --config config.json 2>"$work/$1/log") & pids+=($!)
  printf -v "port_$1" '%s' "$port"; printf -v "pid_$1" '%s' "$!"
}
start_nghttpx() { # name backend -> sets port_<name>
  local port; port=$(free_port)
  nghttpx --conf=/dev/null --frontend="127.0.0.1,$port;no-tls" --backend="$2" --workers="$(nproc)" \
    --add-request-header="Authorization: Bearer bench-token-0123456789abcdef" \
    --no-via --no-server-rewrite --backend-keep-alive-timeout=60s --accesslog-file=/dev/null \
    --errorlog-file="$work/$1.log" --pid-file="$work/$1.pid" & pids+=($!)
  printf -v "port_$1" '%s' "$port"
}
# nginx as the same HTTP/2 front (2 workers): proxy_pass to the HTTP/1.1 backend (256 keep-alive
# connections), grpc_pass (its HTTP/2 upstream module) to the HTTP/2 one.
start_nginx_h2() { # name backend-location-lines -> sets port_<name>
  local port; port=$(free_port)
  mkdir -p "$work/$1"
  { nginx_conf_start "$work/$1" 2; cat <<CONF
  upstream backend { server 127.0.0.1:$backend; keepalive 256; }
  server {
    listen 127.0.0.1:$port http2 backlog=4096;
    location / { $2 }
  }
}
CONF
  } > "$work/$1/nginx.conf"
  nginx -c "$work/$1/nginx.conf" -p "$work/$1" & pids+=($!)
  printf -v "port_$1" '%s' "$port"
}
start_nginx_h2 nginx 'proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header Authorization "Bearer bench-token-0123456789abcdef";'
start_nginx_h2 nginx_h2 "grpc_pass grpc://127.0.0.1:$backend_h2; grpc_set_header Authorization \"Bearer bench-token-0123456789abcdef\";"
start_tokenproxy tokenproxy "$backend" http1
start_tokenproxy tokenproxy_h2 "$backend_h2" http2
start_nghttpx nghttpx "127.0.0.1,$backend"
start_nghttpx nghttpx_h2 "127.0.0.1,$backend_h2;;proto=h2"
tp=$port_tokenproxy; tp_pid=$pid_tokenproxy

for port in "$port_tokenproxy" "$port_tokenproxy_h2" "$port_nghttpx" "$port_nghttpx_h2" "$port_nginx" "$port_nginx_h2" "$floor"; do
  for _ in $(seq 100); do curl -sf --http2-prior-knowledge -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
  curl -sf --http2-prior-knowledge -o /dev/null "http://127.0.0.1:$port/" || { echo "nothing answers h2c on $port" >&2; exit 1; }
done

declare -A rates p99
run() { # name port clients -> appends req/s to rates[name/clients], sets p99[name/clients]
  local log="$work/h2load-$1-$3.log" out
  out=$(h2load -D "$seconds" -c "$3" -m 100 -t "$(( $3 < 2 ? $3 : 2 ))" --log-file="$log" "http://127.0.0.1:$2/")
  local rate; rate=$(awk '/^finished in/ {for (i=1;i<=NF;i++) if ($i ~ /req\/s,?$/) {print $(i-1); exit}}' <<<"$out")
  local failed; failed=$(awk '/^requests:/ {for (i=1;i<=NF;i++) if ($(i+1) ~ /^failed/) {print $i; exit}}' <<<"$out")
  [ "${failed:-0}" = 0 ] || echo "$1 at $3 connections: $failed requests failed" >&2
  rates[$1/$3]+="$rate "
  p99[$1/$3]=$(python3 -c 'import sys; t=sorted(int(l.split()[2]) for l in open(sys.argv[1]) if l.strip()); print(round(t[int(len(t)*0.99)-1]/1000, 2) if t else "-")' "$log")
}
for round in $(seq "$rounds"); do
  for clients in 1 10; do
    run tokenproxy_h2 "$port_tokenproxy_h2" "$clients"
    run nghttpx_h2 "$port_nghttpx_h2" "$clients"
    run tokenproxy "$port_tokenproxy" "$clients"
    run nghttpx "$port_nghttpx" "$clients"
    run nginx_h2 "$port_nginx_h2" "$clients"
    run nginx "$port_nginx" "$clients"
    run floor "$floor" "$clients"
  done
done

python3 - "$rounds" <<PY
import statistics
rates = {
$(for key in "${!rates[@]}"; do echo "  '$key': [float(x) for x in '${rates[$key]}'.split()],"; done)
}
p99 = {
$(for key in "${!p99[@]}"; do echo "  '$key': '${p99[$key]}',"; done)
}
print("| upstream | shape | proxy | req/s median (min–max) | vs nghttpx | vs nginx | p99 ms (last round) |")
print("|---|---|---|---|---|---|---|")
for upstream, suffix in (("HTTP/2", "_h2"), ("HTTP/1.1", "")):
    for clients in (1, 10):
        def ratio(name, peer):
            return statistics.median([a / b for a, b in zip(rates[f"{name}/{clients}"], rates[f"{peer}{suffix}/{clients}"])])
        names = [f"tokenproxy{suffix}", f"nghttpx{suffix}", f"nginx{suffix}"] + (["floor"] if suffix == "_h2" else [])
        for name in names:
            values = rates[f"{name}/{clients}"]
            label = "NIO floor (answers itself)" if name == "floor" else name.replace("_h2", "")
            print(f"| {upstream if name != 'floor' else 'none'} | {clients} conn × 100 streams | {label} | {statistics.median(values):,.0f} ({min(values):,.0f}–{max(values):,.0f}) | {ratio(name, 'nghttpx'):.2f}× | {ratio(name, 'nginx'):.2f}× | {p99[f'{name}/{clients}']} |")
PY

# A client that reads nothing on 100 streams of 1 GiB downloads: the proxy's resident size may
# grow by at most 16 MiB (flow control stops the upstream reads, nothing piles up).
truncate -s 1G "$work/backend/big"
# nginx's workers run as another user: the folder and the file must be readable to them.
chmod 755 "$work" "$work/backend"; chmod 644 "$work/backend/big"
python3 - "$work/backend/nginx.conf" <<'PY'
import sys
path = sys.argv[1]
conf = open(path).read()
conf = conf.replace("location / {", "location = /big { root %s; default_type application/octet-stream; }\n    location / {" % path.rsplit("/", 1)[0], 1)
open(path, "w").write(conf)
PY
nginx -c "$work/backend/nginx.conf" -p "$work/backend" -s reload
sleep 0.5
read -r before highest received < <(python3 bench/h2_slow_reader.py "$tp" "$tp_pid" 100 10 /big)
growth=$(( (highest - before) / 1024 ))
echo
echo "slow reader, 100 streams of 1 GiB, 10 s: RSS $((before / 1024)) → $((highest / 1024)) MiB (+${growth} MiB, limit 16 MiB); the client took $((received / 1024)) KiB"
