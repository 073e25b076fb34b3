#!/usr/bin/env bash
# Sets up what the project needs on a fresh machine, idempotently: the Debian packages it uses,
# a venv in .venv with the project and its test extra. Sourced by scripts/test.sh and
# scripts/demo.sh; safe to run again (it does nothing when all is in place).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# libharfbuzz-subset0: without it WeasyPrint falls back to fontTools and runs ~2.4x slower.
# chromium: the browser the UI's end-to-end test drives through Playwright (executable_path);
# Playwright never downloads a browser of its own.
DEBIAN_PACKAGES=(chromium libharfbuzz-subset0)
missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing ${missing[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "setup: please install these Debian packages: ${missing[*]}" >&2
  fi
fi

# The Playwright package would otherwise offer to fetch its own browsers; we use Debian's.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.billing_pipeline_installed
want="$(cat setup.py pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing the project and its test tools into .venv (a few minutes the first time)"
  # The venv's own pip (23.2 with Python 3.11) installs this project as it is: upgrading it
  # first cost a round trip to the index on every fresh clone. No byte-compiling of every
  # installed module (15 of the install's 40 s): Python compiles the third of them that are
  # ever imported on their first import, and keeps them.
  .venv/bin/pip install -q --no-compile -e '.[test]'
  echo "$want" > "$stamp"
fi

# Migrations are a deploy step: Dagster's resources refuse a billing database that is behind
# the code (they never migrate from inside a run). Bring the configured one up to date here
# (BILLING_DATABASE_URL, else the embedded SQLite file); BILLING_SKIP_DB_UPGRADE=1 skips it
# where that database is not reachable from this machine.
if [ -z "${BILLING_SKIP_DB_UPGRADE:-}" ]; then
  .venv/bin/billing-pipeline db upgrade
fi
