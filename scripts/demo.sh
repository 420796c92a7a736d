#!/usr/bin/env bash
# The newcomer's first command: installs devin-etl into .venv, then syncs
# from a local API simulator into the embedded SQLite warehouse
# (./devin_sessions.db). No API key, no database server.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-venv.sh
exec .venv/bin/devin-etl demo "$@"
