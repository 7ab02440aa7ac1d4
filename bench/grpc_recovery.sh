#!/usr/bin/env bash
# gRPC unary calls recovered from UNAUTHENTICATED (issue 22): a grpcio upstream refuses each
# marked call's first attempt, tokenproxy refreshes against bench/token_endpoint.py and replays;
# bench/grpc_recovery.py compares the extra latency with the token and upstream round trips.
#
#   bench/grpc_recovery.sh [ROUNDS]
#
# Needs python3 with grpcio (pip install grpcio).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-300}
source bench/common.sh
python3 bench/grpc_recovery.py upstream "$work/upstream.port" & pids+=($!)
python3 bench/token_endpoint.py "$work/token.port" 3600 & pids+=($!)
wait_file "$work/upstream.port"; wait_file "$work/token.port"
tp=$(free_port)
write_tokenproxy_config "$work/tokenproxy" "$tp" "$(cat "$work/upstream.port")" "$work/token.port"
# The upstream speaks HTTP/2 (gRPC) in plain text: prior knowledge. Every measured call is a 401
# recovery, one after another: no throttle between their refreshes.
merge_tokenproxy_config "$work/tokenproxy/config.json" '{"upstream": {"protocol": "http2"}, "token": {"minRefreshInterval": "0ms"}}'
(cd "$work/tokenproxy" && exec "$binary" run --config config.json 2>"$work/tokenproxy/log") & pids+=($!)
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$tp") 2>/dev/null && break; sleep 0.1; done
python3 bench/grpc_recovery.py measure "$tp" "$(cat "$work/upstream.port")" "$(cat "$work/token.port")" "$rounds"
echo "token endpoint calls: $(cat "$work/token.port.calls")"
