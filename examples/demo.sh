#!/usr/bin/env bash
# Set up everything, write the example FITS files and look at them in a browser:
# `iipy serve examples/data` prints the viewer's URL (127.0.0.1, a free port) and opens
# it when there is a display.  Ctrl-C stops it.
#   bash examples/demo.sh [iipy serve options: --port N, --no-browser, --assets cdn]
#   bash examples/demo.sh --nginx    the same images through iipsrv.fcgi behind a real
#                                    nginx instead (examples/demo.py)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../conf/bootstrap.sh"
cd "$IIPY_ROOT"
if [ "${1:-}" = "--nginx" ]; then
    shift
    exec "$VENV/bin/python" examples/demo.py "$@"
fi
if [ ! -f examples/data/sky.fits ] || [ ! -f examples/data/cube.fits ] \
    || [ ! -f examples/data/int16.fits ]; then
    echo "demo: writing the example FITS files into examples/data"
    "$VENV/bin/python" examples/make_examples.py examples/data
fi
exec "$VENV/bin/iipy" serve examples/data "$@"
