#!/usr/bin/env bash
# Installs tokenproxy as a systemd service. Idempotent: running it again updates the binary and
# the units and leaves an existing configuration and token store alone.
#
#   deploy/install.sh [--dry-run] [--no-build] [--no-enable] [--instance NAME]
#
#   --dry-run     print what would be done, change nothing
#   --no-build    install the already built .build-release/release/tokenproxy
#   --no-enable   install, but do not enable or start the unit
#   --instance N  enable tokenproxy@N (config /etc/tokenproxy/N.json) instead of tokenproxy
set -euo pipefail
cd "$(dirname "$0")/.."

dry_run=false build=true enable=true instance=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=true ;;
    --no-build) build=false ;;
    --no-enable) enable=false ;;
    --instance) instance=${2:?--instance needs a name}; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

run() {
  if $dry_run; then printf '+ %s\n' "$*"; else "$@"; fi
}

if [ "$(id -u)" != 0 ] && ! $dry_run; then
  echo "install.sh: run as root (or with --dry-run to see the steps)" >&2
  exit 2
fi

if $build; then
  run deploy/build-release.sh
fi
binary=.build-release/release/tokenproxy
if ! $dry_run && [ ! -x "$binary" ]; then
  echo "install.sh: $binary is missing; build it or drop --no-build" >&2
  exit 2
fi

run install -m 0755 "$binary" /usr/local/bin/tokenproxy

# A system user with no shell and no home; the state folder is its only writable place.
if ! getent passwd tokenproxy >/dev/null; then
  run useradd --system --no-create-home --home-dir /var/lib/tokenproxy --shell /usr/sbin/nologin tokenproxy
fi
run install -d -m 0700 -o tokenproxy -g tokenproxy /var/lib/tokenproxy
run install -d -m 0750 -o root -g tokenproxy /etc/tokenproxy

config=/etc/tokenproxy/${instance:-config}.json
if [ ! -e "$config" ]; then
  run install -m 0640 -o root -g tokenproxy config.example.json "$config"
  echo "install.sh: installed the example configuration as $config; edit it, then put the client secret in /etc/tokenproxy/client-secret (mode 0640, group tokenproxy)"
else
  echo "install.sh: keeping the existing $config"
fi
run install -d -m 0755 /usr/local/share/doc/tokenproxy
run install -m 0644 README.md /usr/local/share/doc/tokenproxy/README.md
run install -m 0644 deploy/tokenproxy.service /etc/systemd/system/tokenproxy.service
run install -m 0644 deploy/tokenproxy@.service /etc/systemd/system/tokenproxy@.service
run /usr/local/bin/tokenproxy check-config --config "$config" || echo "install.sh: fix $config before starting the service" >&2

if command -v systemctl >/dev/null && [ -d /run/systemd/system ] || $dry_run; then
  run systemctl daemon-reload
  if $enable; then
    unit=tokenproxy.service
    [ -n "$instance" ] && unit="tokenproxy@$instance.service"
    run systemctl enable "$unit"
    echo "install.sh: enabled $unit; start it with: systemctl start $unit"
  fi
else
  echo "install.sh: systemd is not running here; the units are installed but not enabled"
fi
