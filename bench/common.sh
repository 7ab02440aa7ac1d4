# Shared by the bench scripts: build the deployed binary, a work folder cleaned up on exit with
# every background process, and small waits. Source it; it sets $binary and $work.
binary=$(deploy/build-release.sh 2>/dev/null)  # the binary deploy/ installs
work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
ulimit -n 65536 2>/dev/null || true
wait_file() { for _ in $(seq 100); do [ -s "$1" ] && return 0; sleep 0.1; done; echo "$1 never appeared" >&2; exit 1; }
