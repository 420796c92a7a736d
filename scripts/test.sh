#!/usr/bin/env bash
# Runs the test suite against the real PostgreSQL (TEST_DATABASE_URL, default
# postgresql+psycopg://postgres@127.0.0.1:5432/postgres) and SQLite, with the
# API simulator on loopback. Installs what it needs into .venv first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-venv.sh
scripts/ensure-postgres.sh
exec .venv/bin/pytest -n 2 "$@"
