#!/usr/bin/env bash
# Creates .venv with what the app needs (with `dev`: also the tests' and the Ray backend's packages), and fetches +
# caches real MNIST once.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
wanted=(requirements.txt)
if [ "${1:-}" = dev ]; then
  wanted=(requirements-dev.txt)
elif [ "${DRILL_BACKEND:-}" = ray ]; then
  wanted+=(requirements-ray.txt)
fi
# Installing is skipped when the requirements have not changed since the last successful install of the same set.
stamp=.venv/.requirements.sha256
want=$(cat requirements*.txt | sha256sum | cut -d' ' -f1)-${wanted[*]}
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/pip install --quiet --disable-pip-version-check "${wanted[@]/#/-r}"
  echo "$want" > "$stamp"
fi
.venv/bin/python -m drill data
