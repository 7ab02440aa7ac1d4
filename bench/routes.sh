#!/usr/bin/env bash
# What routes and identities (SPEC §2.4) cost, in one run on loopback (issue 19's figures).
#
#   bench/routes.sh [SECONDS] [ROUNDS] [CONNECTIONS]
#
# All proxies sit in front of the same nginx backend; every identity is a client_credentials
# client of bench/token_endpoint.py (tokens valid 2 h, so no refresh during a run).
#  1. Throughput: "one" (one identity, one route on `/`) against "many" (5 identities, 20 routes:
#     10 path prefixes on the first listener, 5 host routes beside them, 5 more routes on 4 other
#     listeners). wrk sends the same request to both (Host h3.localhost, /api/v1/orders/123), which
#     in "many" is the most specific route (host and the longest prefix), with the same upstream
#     URL and no prefix stripping, so the backend sees the same request. Alternating, ROUNDS
#     times; the median of the per-round ratios many / one.
#  2. Idle RSS: both started fresh, 2 s for the start-up pages to be released, then 3 requests on
#     each route (so on each identity), 1 s, VmRSS; ROUNDS pairs, the median difference.
#  3. An identity whose issuer is down: two proxies, each with identities `healthy` and `other`
#     on one listener (routes /h and /o). In "up" both issuers answer; in "down" `other`'s token
#     endpoint is a closed port. wrk loads /h while 10 requests a second arrive on /o (each its
#     own connection, 2 s timeout); alternating, ROUNDS times; p99 of /h, down against up.
# Needs nginx, wrk, curl, python3; builds tokenproxy with deploy/build-release.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-5}; rounds=${2:-5}; connections=${3:-64}
for tool in nginx wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing (apt-get install nginx-light wrk curl)" >&2; exit 2; }
done
source bench/common.sh
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
code() { curl -s -o /dev/null -m 5 -w '%{http_code}' "$@"; }
wait_ok() { # url [curl args]: until it answers 200
  for _ in $(seq 100); do [ "$(code "$@")" = 200 ] && return 0; sleep 0.1; done
  echo "$1 never answered 200 (last: $(code "$@"))" >&2; exit 1
}

backend=$(free_port)
# /whoami tells which upstream path a route sent: every route but the measured one has an
# upstream URL with a path of its own (/via-NAME).
start_nginx_backend "$work/backend" "$backend" 'location ~ /whoami$ { return 200 "$request_uri\n"; }'
python3 bench/token_endpoint.py "$work/token.port" 7200 & pids+=($!)
wait_file "$work/token.port"
token_url="http://127.0.0.1:$(cat "$work/token.port")/token"
closed_url="http://127.0.0.1:$(free_port)/token"  # bound once by free_port, then nobody listens
printf 'bench-secret\n' > "$work/secret"; chmod 600 "$work/secret"

identity() { # name endpoint
  printf '"%s": { "endpoint": "%s", "grant": "client_credentials", "clientId": "bench-%s", "clientSecretFile": "%s", "store": "%s.json" }' \
    "$1" "$2" "$1" "$work/secret" "$1"
}
route() { # name listen-port host-or-empty prefix strip upstream-path identity
  local host=""; [ -n "$3" ] && host="\"host\": \"$3\", "
  printf '{ "name": "%s", "listen": "127.0.0.1:%s", %s"pathPrefix": "%s", "stripPrefix": %s, "upstream": { "url": "http://127.0.0.1:%s%s" }, "identity": "%s" }' \
    "$1" "$2" "$host" "$4" "$5" "$backend" "$6" "$7"
}
config() { # dir listen-port identities routes
  mkdir -p "$1"
  printf '{ "listen": "127.0.0.1:%s",\n  "identities": { %s },\n  "routes": [\n    %s ],\n  "admin": null, "log": { "level": "warning" } }\n' \
    "$2" "$3" "$4" > "$1/config.json"
}
join() { local IFS=$'\n'; local out; out=$(printf '%s,\n    ' "$@"); echo "${out%,*}"; }

# "one": one identity, one route.
one_port=$(free_port)
config "$work/one" "$one_port" "$(identity id1 "$token_url")" "$(route only "$one_port" "" / false "" id1)"

# "many": 5 identities, 20 routes on 5 listeners.
many_ports=($(for _ in 1 2 3 4 5; do free_port; done)); p=${many_ports[0]}
ids=(); for i in 1 2 3 4 5; do ids+=("$(identity "id$i" "$token_url")"); done
routes=(); many_checks=()  # many_checks: "port host path" for one request per route
n=0
for prefix in / /api /api/v1 /api/v1/orders /api/v2 /api/v2/orders /static /admin/metrics /v3/users /health; do
  n=$((n + 1)); strip=false; [ $((n % 2)) = 0 ] && strip=true
  routes+=("$(route "prefix-$n" "$p" "" "$prefix" "$strip" "/via-prefix-$n" "id$(( (n - 1) % 5 + 1 ))")")
  many_checks+=("$p - ${prefix%/}/x")
done
hosts=("h1.localhost /" "h2.localhost /api" "h3.localhost /api/v1/orders" "h4.localhost /api/v1" "h5.localhost /static")
for i in 1 2 3 4 5; do
  set -- ${hosts[$((i - 1))]}
  if [ "$1" = h3.localhost ]; then path=""; else path="/via-host-$i"; fi  # the measured route
  routes+=("$(route "host-$i" "$p" "$1" "$2" false "$path" "id$i")")
  many_checks+=("$p $1 ${2%/}/x")
done
for i in 1 2 3 4 5; do
  port=${many_ports[$(( (i - 1) % 4 + 1 ))]}
  routes+=("$(route "other-$i" "$port" "" "/svc$i" true "/via-other-$i" "id$i")")
  many_checks+=("$port - /svc$i/x")
done
config "$work/many" "$p" "$(join "${ids[@]}")" "$(join "${routes[@]}")"

# "up" and "down": two identities on one listener; in "down" `other`'s issuer is a closed port.
for case in up down; do
  port=$(free_port); printf -v "port_$case" '%s' "$port"
  endpoint=$token_url; [ "$case" = down ] && endpoint=$closed_url
  config "$work/$case" "$port" "$(join "$(identity healthy "$token_url")" "$(identity other "$endpoint")")" \
    "$(join "$(route h "$port" "" /h false "" healthy)" "$(route o "$port" "" /o false "" other)")"
done

start_proxy() { # name -> pid_<name>
  "$binary" run --config "$work/$1/config.json" 2>>"$work/$1.log" & pids+=($!)
  printf -v "pid_$1" '%s' "$!"
}
stop_proxy() { kill "$1"; wait "$1" 2>/dev/null || true; }
url_of() { case $1 in one) echo "http://127.0.0.1:$one_port";; many) echo "http://127.0.0.1:$p";; esac; }

# 2. Idle RSS (fresh processes each round; the last pair stays for the throughput runs).
for round in $(seq "$rounds"); do
  start_proxy one; start_proxy many
  wait_ok "$(url_of one)/x" -H 'Host: h3.localhost'; wait_ok "$(url_of many)/x"
  sleep 2
  for _ in 1 2 3; do
    code -H 'Host: h3.localhost' "$(url_of one)/api/v1/orders/123" >/dev/null
    for check in "${many_checks[@]}"; do
      set -- $check; args=(); [ "$2" != - ] && args=(-H "Host: $2")
      c=$(code "${args[@]}" "http://127.0.0.1:$1$3"); [ "$c" = 200 ] || { echo "many: $check answered $c" >&2; exit 1; }
    done
  done
  sleep 1
  echo "$(rss_kib "$pid_one") $(rss_kib "$pid_many")" >> "$work/rss.txt"
  if [ "$round" -lt "$rounds" ]; then stop_proxy "$pid_one"; stop_proxy "$pid_many"; fi
done

# 1. Throughput on the most specific route. First, that it is the route matched.
seen=$(curl -s -H 'Host: h3.localhost' "$(url_of many)/api/v1/orders/whoami")
[ "$seen" = /api/v1/orders/whoami ] || { echo "many: the measured request went to $seen, not the h3 route" >&2; exit 1; }
seen=$(curl -s -H 'Host: h1.localhost' "$(url_of many)/api/v1/orders/whoami")
[ "$seen" = /via-host-1/api/v1/orders/whoami ] || { echo "many: h1 went to $seen" >&2; exit 1; }
rps() { wrk -t2 -c"$connections" -d"${seconds}s" -H 'Host: h3.localhost' "$(url_of "$1")/api/v1/orders/123" | awk '/Requests\/sec/ {print $2}'; }
for round in $(seq "$rounds"); do
  order=(one many); (( round % 2 )) || order=(many one)
  for name in "${order[@]}"; do printf -v "r_$name" '%s' "$(rps "$name")"; done
  echo "$r_one $r_many" >> "$work/rps.txt"
done
stop_proxy "$pid_one"; stop_proxy "$pid_many"

# 3. The healthy identity's p99 with the other identity's issuer up, and down.
cat > "$work/trickle.py" <<'PY'
import sys, threading, time, http.client, collections
port, seconds, rate = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
codes = collections.Counter(); lock = threading.Lock()
def one():
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=2); c.request("GET", "/o/x"); s = str(c.getresponse().status); c.close()
    except Exception as e: s = type(e).__name__
    with lock: codes[s] += 1
start = time.monotonic(); n = 0
while time.monotonic() - start < seconds:
    threading.Thread(target=one, daemon=True).start(); n += 1
    time.sleep(max(0, start + n / rate - time.monotonic()))
time.sleep(2.2)
print(" ".join(f"{k}:{v}" for k, v in sorted(codes.items())))
PY
start_proxy up; start_proxy down
wait_ok "http://127.0.0.1:$port_up/h/x"; wait_ok "http://127.0.0.1:$port_down/h/x"; wait_ok "http://127.0.0.1:$port_up/o/x"
sleep 2
p99() { # case -> "p99-ms req/s o-codes"
  local port_var="port_$1" out codes
  python3 "$work/trickle.py" "${!port_var}" "$seconds" 10 > "$work/trickle.out" & local trickle=$!
  out=$(wrk -t2 -c"$connections" -d"${seconds}s" --latency "http://127.0.0.1:${!port_var}/h/x")
  wait "$trickle"; codes=$(tr ' ' ',' < "$work/trickle.out")
  echo "$out" | awk -v codes="$codes" '
    /Requests\/sec/ {rps=$2}
    /^ +99%/ {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v=v*1000}; p=v}
    END {printf "%s %s %s\n", p, rps, codes}'
}
for round in $(seq "$rounds"); do
  order=(up down); (( round % 2 )) || order=(down up)
  for case in "${order[@]}"; do printf -v "l_$case" '%s' "$(p99 "$case")"; done
  echo "$l_up $l_down" >> "$work/p99.txt"
done

echo "bench/routes.sh $seconds $rounds $connections — $(date -u +%FT%TZ)"
echo
echo "1. Throughput on the most specific route, $connections connections, ${seconds}s runs:"
echo "| round | one route req/s | 20 routes req/s | × one |"; echo "|---|---|---|---|"
awk '{printf "| %d | %.0f | %.0f | %.3f |\n", NR, $1, $2, $2/$1}' "$work/rps.txt"
echo "median: one $(cut -d' ' -f1 "$work/rps.txt" | median), many $(cut -d' ' -f2 "$work/rps.txt" | median), ratio $(awk '{printf "%.4f\n", $2/$1}' "$work/rps.txt" | median) (goal ≥ 0.97)"
echo
echo "2. Idle RSS after start and 3 requests on every route:"
echo "| round | one route MiB | 20 routes, 5 identities MiB | difference MiB |"; echo "|---|---|---|---|"
awk '{printf "| %d | %.1f | %.1f | %+.2f |\n", NR, $1/1024, $2/1024, ($2-$1)/1024}' "$work/rss.txt"
echo "median difference: $(awk '{printf "%.2f\n", ($2-$1)/1024}' "$work/rss.txt" | median) MiB (goal ≤ 1)"
echo
echo "3. p99 of the healthy identity's requests ($connections connections on /h; 10/s on /o):"
echo "| round | up p99 ms | up req/s | /o answers (up) | down p99 ms | down req/s | /o answers (down) | p99 down × up |"
echo "|---|---|---|---|---|---|---|---|"
awk '{printf "| %d | %.2f | %.0f | %s | %.2f | %.0f | %s | %.3f |\n", NR, $1, $2, $3, $4, $5, $6, $4/$1}' "$work/p99.txt"
echo "median p99: up $(cut -d' ' -f1 "$work/p99.txt" | median) ms, down $(cut -d' ' -f4 "$work/p99.txt" | median) ms; median of per-round ratios $(awk '{printf "%.4f\n", $4/$1}' "$work/p99.txt" | median) (goal within 1 ± 0.10)"
