#!/usr/bin/env bash
# Set up everything and run the whole test suite (unit, contract, end-to-end, parity).
#   bash tests/run.sh [pytest arguments]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../conf/bootstrap.sh"
cd "$IIPY_ROOT"
# Without a path, pytest runs its testpaths (pyproject.toml): every tier under tests/.
exec "$VENV/bin/python" -m pytest -q -rs "$@"
