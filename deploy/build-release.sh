#!/usr/bin/env bash
# Builds the tokenproxy binary that deploy/install.sh installs and bench/ measures, and prints
# its path. One place for the production build settings:
#   --static-swift-stdlib              no Swift runtime to install on the host
#   -enforce-exclusivity=unchecked     no run-time exclusivity checks in any module: on the data
#                                      path they were a fifth of the proxy's instructions
#                                      (callgrind, docs/BENCHMARKS.md). `swift test` builds keep
#                                      them, so a violation still fails the tests.
# The build has its own folder (.build-release), so that it and `swift build` do not rebuild
# each other's dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
flags=(-c release --static-swift-stdlib --product tokenproxy --scratch-path .build-release -Xswiftc -enforce-exclusivity=unchecked)
swift build "${flags[@]}" >&2
echo "$(swift build "${flags[@]}" --show-bin-path)/tokenproxy"
