#!/usr/bin/env bash
# The main job on the embedded default: SQLite in data/demo/, a localstripe the demo starts and
# stops itself, a Dagster home in data/demo/dagster_home. Sets up what it needs first.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
exec .venv/bin/billing-pipeline demo "$@"
