"""The two commands of README.rst "Quick start", run the way a new user runs them: in
a fresh ``git clone`` of the committed HEAD, in a fresh directory.

``bash examples/demo.sh`` (set up, write the example images, ``iipy serve
examples/data``): the test waits for the viewer's URL on its output, asks the page,
the image list, the metadata and a tile, sees the progress of the pyramid build on the
terminal, then presses Ctrl-C (SIGINT to the process group) and expects a clean exit.

``bash tests/run.sh``: run with a small selection of the unit tier (settings with the
README's table, geometry, the request syntax: ``bash tests/run.sh
tests/unit/test_settings.py tests/unit/test_geometry.py tests/unit/test_protocol.py -q
-x``), in the same clone, whose set-up the first command already did; the whole suite
is what is running this test.

The set-up of a fresh clone creates its own ``.venv`` and builds the Cython extension,
which takes a minute or two.  ``IIPY_README_REPO`` names another repository to clone
(e.g. a scratch commit of work in progress); the default is this checkout.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e._serve import URL_LINE
from tests.e2e.conftest import REPO_ROOT, _live_group_members, http_get, require_executable

pytestmark = pytest.mark.e2e

#: Longest set-up (virtual environment, Cython build, npm ci) of a fresh clone, seconds.
SETUP_TIMEOUT = 600.0
#: The unit tests run by the test command in the clone (quick, no processes).
UNIT_SELECTION = ("test_settings.py", "test_geometry.py", "test_protocol.py")


def readme_commands() -> list[str]:
    """The literal command lines of README.rst's "Quick start" section, in order."""
    text = (REPO_ROOT / "README.rst").read_text("utf-8")
    match = re.search(r"^Quick start\n=+\n(.*?)^\S[^\n]*\n=+\n", text, re.S | re.M)
    assert match, "README.rst has no Quick start section"
    commands = []
    lines = match.group(1).splitlines()
    for i, line in enumerate(lines):
        if line.rstrip().endswith("::"):
            for block in lines[i + 1:]:
                if block.strip() and not block.startswith("    "):
                    break
                if block.strip():
                    commands.append(block.strip())
    return commands


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    git = require_executable("/usr/bin/git", "git")
    source = os.environ.get("IIPY_README_REPO") or str(REPO_ROOT)
    target = tmp_path_factory.mktemp("fresh") / "iipy"
    subprocess.run([git, "clone", "--quiet", source, str(target)], check=True, timeout=120)
    return target


def _user_env() -> dict[str, str]:
    """The environment of a user's shell: no display, no settings of the test run."""
    drop = ("DISPLAY", "WAYLAND_DISPLAY", "PYTHONPATH", "VIRTUAL_ENV", "PYTEST_ADDOPTS")
    return {k: v for k, v in os.environ.items()
            if k not in drop and not k.startswith(("IIPY_", "PYTEST_"))}


def test_quick_start_lists_the_two_commands() -> None:
    assert readme_commands()[0] == "bash examples/demo.sh"
    assert "bash tests/run.sh" in readme_commands()


def test_demo_command_in_a_fresh_clone(clone: Path, tmp_path: Path) -> None:
    command = readme_commands()[0]
    output = tmp_path / "demo.out"
    with open(output, "wb") as out:
        proc = subprocess.Popen(["bash", "-c", command], cwd=clone, env=_user_env(),
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + SETUP_TIMEOUT
        url = None
        while url is None:
            text = output.read_text("utf-8", "replace")
            if (match := URL_LINE.search(text)) is not None:
                url = match.group(1)
            elif proc.poll() is not None:
                pytest.fail(f"`{command}` exited with {proc.returncode}:\n{text[-4000:]}")
            elif time.monotonic() > deadline:
                pytest.fail(f"`{command}` printed no URL in {SETUP_TIMEOUT:g} s:\n{text[-4000:]}")
            else:
                time.sleep(0.2)
        status, _, page = http_get(url)
        assert status == 200 and b"<title>iipy viewer</title>" in page
        # Leaflet from the package installed with iipy, served by iipy itself: no network
        assert b'src="static/leaflet/leaflet.js"' in page and b"unpkg.com" not in page
        status, _, leaflet = http_get(url + "static/leaflet/leaflet.js")
        assert status == 200 and b"Leaflet" in leaflet[:2000]
        status, _, listing = http_get(url + "images.json")
        assert status == 200
        for name in (b'"cube.fits"', b'"int16.fits"', b'"sky.fits"'):
            assert name in listing
        status, _, meta = http_get(url + "iip?FIF=sky.fits&obj=IIP,1.0&obj=max-size"
                                   "&obj=tile-size&obj=resolution-number&obj=bits-per-channel"
                                   "&obj=min-max-sample-values&obj=subject")
        assert status == 200 and b"Max-size:2048 1536\r\n" in meta
        status, headers, tile = http_get(url + "iip?FIF=sky.fits&GAM=0.4545&CTW=1;1;1&JTL=3,5")
        assert status == 200 and headers["Content-Type"] == "image/jpeg" and tile[:2] == b"\xff\xd8"
        text = output.read_text("utf-8", "replace")
        assert "building the reduced resolution levels of sky.fits" in text, text[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the terminal
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                pytest.fail("the demo did not stop within 15 s of Ctrl-C")
    assert proc.returncode == 0, output.read_text("utf-8", "replace")[-3000:]
    deadline = time.monotonic() + 5
    while _live_group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = _live_group_members(proc.pid)
    if left:
        os.killpg(proc.pid, signal.SIGKILL)
    assert not left, f"processes {left} outlived the demo"
    assert "Traceback" not in output.read_text("utf-8", "replace")


def test_test_command_in_the_clone(clone: Path) -> None:
    command = next(c for c in readme_commands() if c.startswith("bash tests/run.sh"))
    selection = " ".join(f"tests/unit/{name}" for name in UNIT_SELECTION)
    done = subprocess.run(["bash", "-c", f"{command} {selection} -x -p no:cacheprovider"],
                          cwd=clone, env=_user_env(), stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=SETUP_TIMEOUT, start_new_session=True)
    text = done.stdout.decode("utf-8", "replace")
    assert done.returncode == 0, text[-4000:]
    assert re.search(r"\b\d+ passed\b", text), text[-2000:]
