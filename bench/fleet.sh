#!/usr/bin/env bash
# Fleet mode vs file mode, side by side in one run (issue 11's benchmark), with nginx as the
# reference of the same run.
#
#   bench/fleet.sh [SECONDS_PER_RUN] [ROUNDS] [REFRESHES]
#
# 1. The request path: wrk at 64 connections through nginx, tokenproxy with the file store, and
#    tokenproxy in fleet mode (a throwaway PostgreSQL cluster on loopback), alternating, ROUNDS
#    times; medians and ratios. The database is never on the request path, so fleet ≈ file.
# 2. A refresh: REFRESHES forced refreshes (`POST /token/refresh`, answered when the new token
#    is stored) in each mode, against the same local token endpoint; medians, and the extra time
#    a fleet refresh takes (advisory lock on its own connection, sealed row, fenced write, NOTIFY).
# Needs: nginx, wrk, curl, python3 and PostgreSQL (Debian packages); runs the server as the
# postgres user when run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-8}
rounds=${2:-3}
refreshes=${3:-200}
for tool in nginx wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing (apt-get install nginx-light wrk curl)" >&2; exit 2; }
done
pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$pgbin/pg_ctl" ] || { echo "bench: PostgreSQL is missing (apt-get install postgresql)" >&2; exit 2; }
source bench/common.sh
wait_port() { for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0; sleep 0.1; done; echo "port $1 never answered" >&2; exit 1; }
as_postgres() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- env -C "$work/pg" "$@"; else "$@"; fi; }

# PostgreSQL: a cluster of this run's own, password authentication, on a loopback port.
pg_port=$(free_port)
chmod 755 "$work"
mkdir "$work/pg"; echo "superuser-pw" > "$work/pg/pw"
[ "$(id -u)" -eq 0 ] && chown -R postgres "$work/pg"
as_postgres "$pgbin/initdb" -D "$work/pg/data" -U postgres --auth=scram-sha-256 --pwfile="$work/pg/pw" -N >/dev/null
as_postgres "$pgbin/pg_ctl" start -w -D "$work/pg/data" -l "$work/pg/log" -o "-p $pg_port -k $work/pg -c listen_addresses=127.0.0.1" >/dev/null
stop_pg() { as_postgres "$pgbin/pg_ctl" stop -m fast -D "$work/pg/data" >/dev/null 2>&1 || true; }
trap 'stop_pg; cleanup' EXIT
PGPASSWORD=superuser-pw "$pgbin/psql" -q -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres \
  -c "CREATE ROLE tokenproxy LOGIN PASSWORD 'bench-db-pw'" -c "CREATE DATABASE tokenproxy OWNER tokenproxy"

backend=$(free_port); nginx_proxy=$(free_port)
start_nginx_backend "$work/nginx-backend" "$backend"
start_nginx_proxy "$work/nginx-proxy" "$nginx_proxy" "$backend"
python3 bench/token_endpoint.py "$work/token.port" 3600 & pids+=($!)
wait_file "$work/token.port"
token_port=$(cat "$work/token.port")

write_config() { # name port admin-port fleet-json
  mkdir -p "$work/$1"
  echo "bench-db-pw" > "$work/$1/db-password"
  openssl rand -base64 32 > "$work/$1/fleet.key" 2>/dev/null || python3 -c 'import os,base64; print(base64.b64encode(os.urandom(32)).decode())' > "$work/$1/fleet.key"
  chmod 600 "$work/$1/db-password" "$work/$1/fleet.key"
  cat > "$work/$1/config.json" <<CONF
{
  "listen": "127.0.0.1:$2",
  "upstream": { "url": "http://127.0.0.1:$backend" },
  "token": { "endpoint": "http://127.0.0.1:$token_port/token", "grant": "refresh_token", "clientAuth": "none",
             "clientId": "bench", "store": "token.json", "minRefreshInterval": "0s" },
  "admin": { "listen": "127.0.0.1:$3" },
  "log": { "level": "warning" }$4
}
CONF
  echo "rt-0" | "$binary" login --config "$work/$1/config.json" --refresh-token-file - >/dev/null
}
file_port=$(free_port); file_admin=$(free_port); fleet_port=$(free_port); fleet_admin=$(free_port)
write_config file "$file_port" "$file_admin" ""
write_config fleet "$fleet_port" "$fleet_admin" ",
  \"fleet\": { \"postgres\": \"postgres://tokenproxy@127.0.0.1:$pg_port/tokenproxy\", \"passwordFile\": \"db-password\",
             \"name\": \"bench\", \"encryptionKeyFile\": \"fleet.key\" }"
# Started in the order that FLEET_FIRST=1 reverses, to tell a real difference from a place in line.
if [ "${FLEET_FIRST:-0}" = 1 ]; then
  "$binary" run --config "$work/fleet/config.json" 2>"$work/fleet.log" & pids+=($!)
  "$binary" run --config "$work/file/config.json" 2>"$work/file.log" & pids+=($!)
else
  "$binary" run --config "$work/file/config.json" 2>"$work/file.log" & pids+=($!)
  "$binary" run --config "$work/fleet/config.json" 2>"$work/fleet.log" & pids+=($!)
fi
wait_port "$backend"; wait_port "$nginx_proxy"; wait_port "$file_port"; wait_port "$fleet_port"

run_wrk() { # port -> "requests/s non2xx"
  wrk -t2 -c64 -d"${seconds}s" "http://127.0.0.1:$1/" | awk '/Requests\/sec:/ {rps=$2} /Non-2xx/ {bad=$NF} END {printf "%s %s\n", rps, (bad==""?0:bad)}'
}
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
: > "$work/n.txt"; : > "$work/f.txt"; : > "$work/q.txt"
for round in $(seq "$rounds"); do
  order=("$nginx_proxy:n" "$file_port:f" "$fleet_port:q")
  (( round % 2 )) || order=("$fleet_port:q" "$file_port:f" "$nginx_proxy:n")
  for entry in "${order[@]}"; do run_wrk "${entry%%:*}" >> "$work/${entry##*:}.txt"; done
done
for mode in f q; do
  if awk '$2 != 0 {bad=1} END {exit !bad}' "$work/$mode.txt"; then echo "tokenproxy answered non-2xx under load" >&2; exit 1; fi
done
n=$(cut -d' ' -f1 "$work/n.txt" | median); f=$(cut -d' ' -f1 "$work/f.txt" | median); q=$(cut -d' ' -f1 "$work/q.txt" | median)
echo "| 64 connections | nginx | tokenproxy, file store | tokenproxy, fleet | fleet × file |"
echo "|---|---|---|---|---|"
awk -v n="$n" -v f="$f" -v q="$q" 'BEGIN {printf "| req/s (median of %d) | %.0f | %.0f (%.2f× nginx) | %.0f (%.2f× nginx) | %.3f |\n", '"$rounds"', n, f, f/n, q, q/n, q/f}'

refresh_times() { # admin-port -> one time per line, ms
  for _ in $(seq "$refreshes"); do
    curl -s -o /dev/null -w '%{http_code} %{time_total}\n' -X POST "http://127.0.0.1:$1/token/refresh"
  done | awk '$1 != 200 {print "refresh answered " $1 > "/dev/stderr"; exit 1} {printf "%.3f\n", $2 * 1000}'
}
refresh_times "$file_admin" > "$work/rf.txt"
refresh_times "$fleet_admin" > "$work/rq.txt"
rf=$(median < "$work/rf.txt"); rq=$(median < "$work/rq.txt")
p90() { sort -g | awk '{a[NR]=$1} END {print a[int(NR*0.9)]}'; }
echo
echo "| forced refresh ($refreshes each) | median | p90 |"
echo "|---|---|---|"
printf '| file store | %.2f ms | %.2f ms |\n' "$rf" "$(p90 < "$work/rf.txt")"
printf '| fleet (PostgreSQL) | %.2f ms | %.2f ms |\n' "$rq" "$(p90 < "$work/rq.txt")"
awk -v f="$rf" -v q="$rq" 'BEGIN {printf "| fleet − file | %+.2f ms | |\n", q - f}'
