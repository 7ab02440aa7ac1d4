#!/usr/bin/env bash
# The chaos run of issue 5: 100,000 requests over 64 connections (half GET, half POST, half of
# the POSTs with an Idempotency-Key) through tokenproxy with upstream401Percent = 10, tokens that
# live 20 s, a token endpoint that fails one call in five with 503, and an upstream that resets
# 1 % of connections after reading the request. Checks and prints:
#   - client-visible failures on GETs and keyed POSTs (must be 0),
#   - POSTs without Idempotency-Key that the upstream saw twice (must be 0),
#   - token-endpoint calls against expiries + run seconds / minRefreshInterval.
#
#   bench/chaos.sh [REQUESTS] [CONNECTIONS]
# Needs python3 and curl; builds tokenproxy -c release.
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${1:-100000}
connections=${2:-64}
source bench/common.sh

python3 bench/token_endpoint.py "$work/token.port" 20 5 & pids+=($!)
python3 bench/chaos_upstream.py "$work/upstream.port" 1 & pids+=($!)
wait_file "$work/token.port"; wait_file "$work/upstream.port"
printf '{"version": 1, "refresh_token": "rt-chaos"}\n' > "$work/token.json"; chmod 600 "$work/token.json"
cat > "$work/config.json" <<CONF
{
  "listen": "127.0.0.1:0",
  "upstream": { "url": "http://127.0.0.1:$(cat "$work/upstream.port")", "readTimeout": "30s" },
  "token": { "endpoint": "http://127.0.0.1:$(cat "$work/token.port")/token", "clientAuth": "none", "clientId": "chaos",
             "store": "token.json", "minRefreshInterval": "1s" },
  "retry": { "attempts": 3, "backoff": "20ms", "maxBackoff": "500ms" },
  "admin": { "listen": "127.0.0.1:0" },
  "faults": { "enabled": true, "upstream401Percent": 10 },
  "log": { "level": "info" }
}
CONF
"$binary" run --config "$work/config.json" 2>"$work/proxy.log" & pids+=($!)
for _ in $(seq 100); do grep -q '"message":"listening"' "$work/proxy.log" 2>/dev/null && break; sleep 0.1; done
port=$(grep -o '"port":"[0-9]*"' "$work/proxy.log" | head -1 | grep -o '[0-9]*' || true)
if [ -z "$port" ]; then echo "tokenproxy did not start:" >&2; cat "$work/proxy.log" >&2; exit 1; fi
admin=$(grep -o '"adminPort":"[0-9]*"' "$work/proxy.log" | head -1 | grep -o '[0-9]*')

start=$(date +%s.%N)
python3 bench/chaos_client.py "$port" "$requests" "$connections" 900 > "$work/client.json"
seconds=$(python3 -c "import time; print(round(time.time() - $start, 1))")
curl -s "http://127.0.0.1:$(cat "$work/upstream.port")/__stats" > "$work/upstream.json"
curl -s "http://127.0.0.1:$admin/metrics" > "$work/metrics.txt"
token_calls=$(cat "$work/token.port.calls")

python3 - "$work" "$seconds" "$token_calls" <<'PY'
import json, math, re, sys
work, seconds, token_calls = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
client = json.load(open(work + "/client.json"))
upstream = json.load(open(work + "/upstream.json"))
metrics = open(work + "/metrics.txt").read()
seen = client["seen"]
total = sum(sum(kind.values()) for kind in seen.values())
def failures(kind):
    return sum(count for outcome, count in seen[kind].items() if outcome != "200")
injected = int(re.search(r"^tokenproxy_faults_injected_total (\d+)", metrics, re.M).group(1))
refreshes = {m.group(1): int(m.group(2)) for m in re.finditer(r'tokenproxy_token_refreshes_total\{result="(\w+)"\} (\d+)', metrics)}
retries = {m.group(1): int(m.group(2)) for m in re.finditer(r'tokenproxy_retries_total\{reason="(\w+)"\} (\d+)', metrics)}
# 20 s tokens are refreshed ahead of time when 10 s are left: one expiry per 10 s of run.
expiries = math.ceil(seconds / 10) + 1
bound = expiries + math.ceil(seconds / 1.0)
print(f"requests: {total} in {seconds:.1f} s over 64 connections ({total / seconds:.0f}/s)")
for kind in ("GET", "POST keyed", "POST unkeyed"):
    print(f"  {kind:13} {sum(seen[kind].values()):6}  outcomes {dict(sorted(seen[kind].items()))}")
print(f"client-visible failures on GETs and keyed POSTs: {failures('GET') + failures('POST keyed')} (must be 0)")
print(f"POSTs without Idempotency-Key seen twice by the upstream: {upstream['unkeyed_posts_seen_twice']} of {upstream['unkeyed_posts']} (must be 0)")
print(f"upstream: {upstream['requests']} requests, {upstream['resets']} connections reset")
print(f"faults injected (401): {injected}; retries by reason: {retries}")
print(f"token endpoint: {token_calls} calls (results seen by the proxy: {refreshes}); bound expiries + seconds / minRefreshInterval = {expiries} + {math.ceil(seconds)} = {bound}")
sys.exit(0 if failures("GET") + failures("POST keyed") == 0 and upstream["unkeyed_posts_seen_twice"] == 0 and token_calls <= bound else 1)
PY
