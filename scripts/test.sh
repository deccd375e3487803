#!/usr/bin/env bash
# Sets everything up, then runs the linters and the whole test suite: browser tests and the Ray cluster's included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  if [ ! -x /usr/bin/chromium ] || ! command -v ip >/dev/null; then
    echo "Installing Debian's chromium and an emoji font (browser tests) and iproute2 (the tests' network namespace)..."
    apt-get update -qq && apt-get install -y -qq chromium fonts-noto-color-emoji iproute2 >/dev/null
  fi
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# The tests run in a network namespace of their own with only loopback up, so the servers and the Ray cluster they
# start can reach nothing else: Ray binds every interface it finds and probes a public DNS address to pick one.
if [ "$(id -u)" = 0 ] && unshare -n true 2>/dev/null; then
  exec unshare -n sh -c 'ip link set lo up && exec "$@"' sh .venv/bin/python -m pytest "$@"
elif unshare -rn true 2>/dev/null; then
  exec unshare -rn sh -c 'ip link set lo up && exec "$@"' sh .venv/bin/python -m pytest "$@"
fi
echo "No network namespace can be made here (unshare): the Ray tests will not run."
exec .venv/bin/python -m pytest "$@"
