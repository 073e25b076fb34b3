#!/usr/bin/env bash
# The test command: sets up what it needs, then lint and the whole suite (SQLite and PostgreSQL,
# localstripe, real Dagster runs). PostgreSQL must answer at 127.0.0.1:5432; its tests fail,
# never skip, when it does not.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
# Lint and types run beside the tests (a third of the suite waits on daemons, subprocesses and
# Stripe latency: mypy's cold start fits in those waits); their output is shown at the end and
# either failing fails the command.
lint_log="$(mktemp)"
(
  set -e
  .venv/bin/ruff check billing_pipeline tests bench
  .venv/bin/ruff format --check billing_pipeline tests bench
  .venv/bin/mypy
  .venv/bin/lint-imports
) >"$lint_log" 2>&1 &
lint_pid=$!
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
set +e
.venv/bin/pytest -n "${TEST_WORKERS:-3}" --dist worksteal "$@"
tests=$?
wait "$lint_pid"
lint=$?
set -e
echo "--- lint (ruff, ruff format, mypy, lint-imports) ---"
cat "$lint_log"
rm -f "$lint_log"
if [ "$lint" -ne 0 ]; then
  echo "lint failed (exit $lint)" >&2
  exit "$lint"
fi
exit "$tests"
