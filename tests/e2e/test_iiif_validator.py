"""The IIIF Image API validator (PyPI ``iiif-validator``) against a running iipy behind
nginx: every test of version 2.0 (2.1 servers are validated as 2.0) up to level 2
passes, with path-style URLs (conf/nginx.conf.in's location, URI_MAP) and CORS='*'
(one of the level 1 tests).  For 3.0 the request corpus covers the compliance table
(tests/unit/test_iiif.py, tests/unit/test_pathlike.py).

The validator checks colours in its test image, a 1000 x 1000 grid of 10 x 10 coloured
squares.  Here it is a three-plane FITS cube holding the squares' colours as values
0-255 in the lower right 87 x 87 pixels of each square (the validator samples there,
at every scale it asks for), zeros in the other pixels and one row of 255s: iipy's
default display range is then exactly 0-255 in each plane (checked first), so its
default rendering is the test image.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from tests.e2e.conftest import http_get, missing

pytestmark = pytest.mark.e2e

IDENTIFIER = "iiif-squares.fits"  # with a '-': the validator escapes it in one test


def validator_script() -> Path:
    script = Path(sys.executable).parent / "iiif-validate.py"
    if not script.exists():
        missing(f"{script} not found (pip install iiif-validator; it is in the test extras)")
    return script


def squares() -> np.ndarray:
    """The validator's test image as (3, 1000, 1000) in display orientation."""
    from iiif_validator.validator import ValidationInfo

    colours = np.array(ValidationInfo().colorInfo, dtype=np.float32)  # [column][row] -> RGB
    image = np.zeros((3, 1000, 1000), np.float32)
    for col in range(10):
        for row in range(10):
            image[:, row * 100 + 13 : (row + 1) * 100, col * 100 + 13 : (col + 1) * 100] = \
                colours[col, row][:, None, None]
    image[:, 0, :] = 255.0
    return image


def test_validator_level2_version_2(iipy_server, nginx, tmp_path: Path) -> None:
    script = validator_script()
    data_dir = tmp_path / "images"
    data_dir.mkdir()
    data_dir.chmod(0o755)
    # FITS rows go up: the first row of the file is the bottom of the image
    fits.PrimaryHDU(squares()[:, ::-1, :]).writeto(data_dir / IDENTIFIER)
    # the validator checks the exact colours of its squares: the data's whole range
    server = iipy_server(FILESYSTEM_PREFIX=f"{data_dir}/", URI_MAP="iiif=>IIIF", IIIF_VERSION=2,
                         CORS="*", IIPY_DISPLAY_RANGE="minmax")
    web = nginx(server, keepalive=True)
    status, _, body = http_get(f"{web.iip}?FIF={IDENTIFIER}&obj=min-max-sample-values")
    assert status == 200
    assert body == b"\r\nMin-Max-sample-values: 0  255  0  255  0  255\r\n", body
    host = web.removeprefix("http://")
    base = [sys.executable, str(script), "-s", host, "-p", "iiif", "-i", IDENTIFIER,
            "--version", "2.0"]
    # level 2 (30 tests), then the level 3 features iipy also has (not format_webp,
    # whose test calls a Python 2 urllib function)
    for args, count in ((["--level", "2"], 30),
                        (["--test", "rot_mirror", "--test", "rot_mirror_180", "--test", "size_up"],
                         3)):
        done = subprocess.run(base + args, capture_output=True, text=True, timeout=300)
        output = done.stdout + done.stderr
        assert done.returncode == 0, output
        assert output.count(" PASS") == count and " FAIL" not in output, output
        assert "Done (%d tests, 0 failures)" % count in output, output
