#!/usr/bin/env bash
# Set up everything, write the example FITS files and serve them with iipy behind a real
# nginx on 127.0.0.1; prints the URLs to try.  Ctrl-C stops everything.
#   bash examples/demo.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../conf/bootstrap.sh"
cd "$IIPY_ROOT"
exec "$VENV/bin/python" examples/demo.py "$@"
