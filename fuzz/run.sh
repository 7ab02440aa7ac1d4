#!/usr/bin/env bash
# Builds the libFuzzer binary (once) and fuzzes one target for N seconds:
#   fuzz/run.sh request 600        # request | response | configuration | store | credential | http2
# New inputs go to fuzz/corpus/TARGET (minimise with -merge=1 before committing); crashes to
# fuzz/crashes/. `swift test` replays fuzz/corpus and fuzz/regressions on every run.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:?usage: fuzz/run.sh request|response|configuration|store|credential|http2 [seconds]}
seconds=${2:-600}
export TOKENPROXY_FUZZ=1
# libFuzzer reports crashes itself; Swift's backtracer would run under ASan and trip it.
export SWIFT_BACKTRACE=enable=no
swift build -c release --build-path .build-fuzz --product tokenproxy-fuzz \
  -Xswiftc -sanitize=fuzzer,address >&2
mkdir -p fuzz/crashes "fuzz/corpus/$target"
work=$(mktemp -d)
TOKENPROXY_FUZZ_TARGET=$target .build-fuzz/release/tokenproxy-fuzz \
  -max_total_time="$seconds" -max_len=16384 -timeout=10 -rss_limit_mb=2048 \
  -artifact_prefix=fuzz/crashes/"$target"- -print_final_stats=1 \
  "$work" "fuzz/corpus/$target"
# Keep only the inputs that add coverage.
TOKENPROXY_FUZZ_TARGET=$target .build-fuzz/release/tokenproxy-fuzz -merge=1 "fuzz/corpus/$target" "$work" >/dev/null 2>&1 || true
rm -rf "$work"
