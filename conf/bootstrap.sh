# Set up everything iipy needs on a Debian 12 machine; sourced by tests/run.sh and
# examples/demo.sh.  Idempotent: a second run only checks.
#
#  - system packages (apt-get, as root or through sudo): the web servers and tools the
#    end-to-end tests and the demo run for real, the reference iipsrv 1.1, Chromium for
#    the browser tests, vips and STIFF (the TIFF tests convert their images with them;
#    STIFF is also the reference of the default display range), logrotate (the test
#    of conf/iipy.logrotate), and Node.js with npm (if no node 18 or later is
#    installed);
#  - a virtual environment in .venv with iipy installed in editable mode (this builds
#    the Cython extension) and the test requirements;
#  - the npm packages of the browser tests (playwright-core, Leaflet) in
#    tests/e2e/browser/node_modules, from its package-lock.json (npm ci).
set -euo pipefail

IIPY_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export IIPY_ROOT
VENV="$IIPY_ROOT/.venv"

APT_PACKAGES=(python3-venv python3-dev gcc nginx spawn-fcgi memcached apache2
              libapache2-mod-fcgid lighttpd iipimage-server wrk chromium
              libvips-tools stiff logrotate)
#: Installed only when no Node.js 18 or later with npm is found (it may come from elsewhere).
NODE_PACKAGES=(nodejs npm)
BROWSER_DIR="$IIPY_ROOT/tests/e2e/browser"

node_ok() {
    command -v npm >/dev/null 2>&1 || return 1
    local major
    major=$(node -e 'process.stdout.write(process.versions.node.split(".")[0])' 2>/dev/null) \
        || return 1
    [ "${major:-0}" -ge 18 ]
}

missing_packages() {
    local p
    for p in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
            || echo "$p"
    done
    node_ok || echo "${NODE_PACKAGES[@]}"
}

install_system_packages() {
    local missing
    missing=$(missing_packages)
    [ -z "$missing" ] && return 0
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "bootstrap: installing system packages:" $missing
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
    # shellcheck disable=SC2086
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        $missing </dev/null
    # Debian starts some of these services on installation where it can; the tests and
    # the demo start their own instances on free loopback ports.
    $sudo service nginx stop >/dev/null 2>&1 || true
    $sudo service apache2 stop >/dev/null 2>&1 || true
    $sudo service lighttpd stop >/dev/null 2>&1 || true
    $sudo service memcached stop >/dev/null 2>&1 || true
}

install_python() {
    if [ ! -x "$VENV/bin/python" ]; then
        echo "bootstrap: creating $VENV"
        python3 -m venv "$VENV"
    fi
    local stamp="$VENV/.iipy-installed"
    if [ ! -f "$stamp" ] || [ "$IIPY_ROOT/setup.py" -nt "$stamp" ] \
        || [ "$IIPY_ROOT/pyproject.toml" -nt "$stamp" ] \
        || [ -n "$(find "$IIPY_ROOT/ext" -newer "$stamp" -name '*.pyx' 2>/dev/null)" ]; then
        echo "bootstrap: installing iipy into $VENV (builds the Cython extension)"
        "$VENV/bin/pip" install -q --upgrade pip </dev/null
        "$VENV/bin/pip" install -q -e "$IIPY_ROOT[test]" </dev/null
        touch "$stamp"
    fi
}

install_browser_packages() {
    local stamp="$BROWSER_DIR/node_modules/.iipy-installed"
    if [ ! -f "$stamp" ] || [ "$BROWSER_DIR/package-lock.json" -nt "$stamp" ]; then
        echo "bootstrap: installing the browser-test packages (npm ci in $BROWSER_DIR)"
        (cd "$BROWSER_DIR" && npm ci --no-audit --no-fund --loglevel=error) </dev/null
        touch "$stamp"
    fi
}

install_system_packages
install_python
install_browser_packages
