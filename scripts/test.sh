#!/usr/bin/env bash
# The test command: sets up what it needs, then lint and the whole suite (SQLite and PostgreSQL,
# localstripe, real Dagster runs). PostgreSQL must answer at 127.0.0.1:5432; its tests fail,
# never skip, when it does not.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
.venv/bin/ruff check billing_pipeline tests bench
.venv/bin/ruff format --check billing_pipeline tests bench
.venv/bin/mypy
.venv/bin/lint-imports
# The tests' SQLite files and Dagster homes go to memory (tmpfs) when there is one: a SQLite
# commit on disk waits for fsync, and a simulation makes thousands of them.
if [ -z "${TMPDIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ]; then
  export TMPDIR=/dev/shm
fi
# Cached bytecode (ignored by git): pytest rewrites every test module's asserts, and without
# their .pyc each worker does it again on every run (~10 s of a 2-core machine).
unset PYTHONDONTWRITEBYTECODE
# Three workers on two cores: a third of the suite waits (on daemons, subprocesses, Stripe
# latency) and a third worker fills those waits (measured: 603 s against 707 s with two).
exec .venv/bin/pytest -n "${TEST_WORKERS:-3}" --dist worksteal "$@"
