"""Helpers for the tests of ``iipy serve`` and of the browser: the ``iipy`` command,
processes found by a marker in their command line or environment, images' pixels."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO_ROOT, missing, require_executable

BROWSER_DIR = REPO_ROOT / "tests" / "e2e" / "browser"
LEAFLET_DIST = BROWSER_DIR / "node_modules" / "leaflet" / "dist"
CHROMIUM_BIN = "/usr/bin/chromium"
NODE_BIN = "/usr/bin/node"
#: The line ``iipy serve`` prints with the viewer's address.
URL_LINE = re.compile(r"Viewer: (http://127\.0\.0\.1:\d+/)")


def iipy_cli_command() -> list[str]:
    """The ``iipy`` console script of this Python, or ``python -m iipy.cli``."""
    script = Path(sys.executable).parent / "iipy"
    if os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "iipy.cli"]


def require_browser() -> tuple[str, str]:
    """(chromium, node) paths, with playwright-core and Leaflet installed by npm."""
    chromium = require_executable(CHROMIUM_BIN, "chromium")
    node = require_executable(NODE_BIN, "nodejs")
    for package in ("playwright-core", "leaflet"):
        if not (BROWSER_DIR / "node_modules" / package / "package.json").is_file():
            missing(f"{BROWSER_DIR}/node_modules/{package} is missing: run `npm ci` there "
                    "(conf/bootstrap.sh does it)")
    return chromium, node


def pids_with(marker: str) -> list[int]:
    """Live processes whose command line or environment contains ``marker``."""
    found = []
    needle = marker.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X"):
                    continue
            blobs = []
            for name in ("cmdline", "environ"):
                try:
                    with open(f"/proc/{entry}/{name}", "rb") as f:
                        blobs.append(f.read())
                except PermissionError:
                    pass
        except (OSError, IndexError):
            continue
        if any(needle in blob for blob in blobs):
            found.append(int(entry))
    return found


def reap_leftovers(marker: str, timeout: float = 5.0) -> list[int]:
    """Wait up to ``timeout`` s for the processes carrying ``marker`` to exit; SIGKILL
    those still there (by pid) and return their pids (empty when all had exited)."""
    deadline = time.monotonic() + timeout
    while (left := pids_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


def run_node(script: str, args: list[str], profile: Path, timeout: float = 120.0) -> None:
    """Run a browser driver; stop it (and the browser it started) if it hangs.

    Chromium runs in its own process group (playwright-core starts it detached), so
    leftovers are found by their empty profile directory, which only they use.
    """
    node = require_executable(NODE_BIN, "nodejs")
    proc = subprocess.Popen([node, script, *args, "--profile", str(profile)], cwd=BROWSER_DIR,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # playwright closes its browser on SIGTERM
        try:
            output, _ = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
        reap_leftovers(str(profile), 2.0)
        pytest.fail(f"{script} did not finish within {timeout:g} s:\n"
                    f"{output.decode('utf-8', 'replace')[-4000:]}")
    left = reap_leftovers(str(profile))
    assert not left, f"browser processes {left} outlived {script} and were killed"
    if proc.returncode not in (0, 1):  # 1: the driver wrote a failure into result.json
        pytest.fail(f"{script} exited with {proc.returncode}:\n"
                    f"{output.decode('utf-8', 'replace')[-4000:]}")


def image_stats(png: Path) -> tuple[float, int]:
    """(standard deviation of the luminance, number of distinct luminance values)."""
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(png.read_bytes())) as im:
        lum = np.asarray(im.convert("L"), dtype=np.float64)
    return float(lum.std()), int(len(np.unique(lum)))
