#!/usr/bin/env bash
# Checks deploy/observability: the Grafana dashboard and the Prometheus alert rules.
#
#   deploy/observability/check.sh [METRICS_FILE]
#
#   1. grafana-dashboard.json: JSON, importable structure, every panel on ${DS_PROMETHEUS} with
#      a query, every metric and label one that docs/REFERENCE.md §7 documents
#      (check-dashboard.py); each query parsed by promtool as a recording rule;
#   2. alerts.yml: `promtool check rules`;
#   3. alerts.test.yml: `promtool test rules` (each alert firing and not firing);
#   4. with METRICS_FILE (or $TOKENPROXY_METRICS_FILE), a saved answer of a real GET /metrics:
#      `promtool check metrics` parses it, and every metric and label the dashboard and the
#      alerts use is in it.
#
# Exit 0 when every check passed, 1 when one failed. Without promtool (Debian:
# `apt-get install --no-install-recommends prometheus`) it runs the checks that need only
# python3, says SKIP and exits 0 — unless TOKENPROXY_REQUIRE_PROMTOOL is set (to anything),
# then a missing promtool is a failure.
set -uo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
metrics_file="${1:-${TOKENPROXY_METRICS_FILE:-}}"
failed=0
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

say() { printf '%s\n' "$*"; }
run() { # run DESCRIPTION COMMAND…: prints the command's output, records a failure
  local description="$1"; shift
  local output
  if output="$("$@" 2>&1)"; then
    say "ok: $description"
    [ -n "$output" ] && printf '%s\n' "$output" | sed 's/^/    /'
  else
    say "FAIL: $description"
    printf '%s\n' "$output" | sed 's/^/    /'
    failed=1
  fi
}

say "== deploy/observability checks ($here)"

if ! command -v python3 >/dev/null 2>&1; then
  say "FAIL: python3 is needed to check grafana-dashboard.json"
  exit 1
fi
python_args=(--emit-rules "$work/dashboard-queries.yml")
if [ -n "$metrics_file" ]; then
  if [ ! -r "$metrics_file" ]; then
    say "FAIL: metrics file $metrics_file cannot be read"
    exit 1
  fi
  python_args+=(--metrics "$metrics_file")
fi
say "-- dashboard and metric names (check-dashboard.py)"
if ! python3 "$here/check-dashboard.py" "${python_args[@]}" 2>&1 | sed 's/^/  /'; then
  say "FAIL: check-dashboard.py"
  failed=1
fi

if ! command -v promtool >/dev/null 2>&1; then
  if [ -n "${TOKENPROXY_REQUIRE_PROMTOOL+set}" ]; then
    say "FAIL: promtool not found and TOKENPROXY_REQUIRE_PROMTOOL is set (Debian: apt-get install --no-install-recommends prometheus)"
    exit 1
  fi
  if [ "$failed" -ne 0 ]; then
    say "FAILED (and promtool not found: the rule checks did not run)"
    exit 1
  fi
  say "SKIP: promtool not found, so alerts.yml, alerts.test.yml and the dashboard's PromQL were not checked (Debian: apt-get install --no-install-recommends prometheus; set TOKENPROXY_REQUIRE_PROMTOOL=1 to make this a failure)"
  exit 0
fi

say "-- promtool ($(promtool --version 2>&1 | head -n 1))"
run "promtool check rules alerts.yml" promtool check rules "$here/alerts.yml"
if [ -s "$work/dashboard-queries.yml" ]; then
  run "the dashboard's PromQL parses (promtool check rules on its queries as recording rules)" \
    promtool check rules "$work/dashboard-queries.yml"
else
  say "FAIL: check-dashboard.py wrote no queries to parse"
  failed=1
fi
# rule_files in the test file are relative to it.
run "promtool test rules alerts.test.yml" promtool test rules "$here/alerts.test.yml"

if [ -n "$metrics_file" ]; then
  # Lint findings (exit 3) such as missing HELP text are shown but do not fail: only a
  # parse error does.
  output="$(promtool check metrics < "$metrics_file" 2>&1)"; status=$?
  if [ "$status" -eq 0 ]; then
    say "ok: promtool check metrics $metrics_file"
  elif [ "$status" -eq 3 ] && ! printf '%s\n' "$output" | grep -qv 'no help text'; then
    say "ok: promtool check metrics $metrics_file parses (lint: every metric lacks # HELP text)"
  else
    say "FAIL: promtool check metrics $metrics_file (exit $status)"
    printf '%s\n' "$output" | sed 's/^/    /'
    failed=1
  fi
fi

if [ "$failed" -ne 0 ]; then
  say "FAILED"
  exit 1
fi
say "PASSED"
