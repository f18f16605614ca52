"""Every FITS file astropy ships with its own tests, served by a real iipy (spawn-fcgi
behind nginx): the VisiOmatic 2 metadata request, a tile of the smallest and of the full
resolution, a profile and a CVT for each file.

The files are found when the test runs (``*.fits``, ``*.fit``, ``*.fts`` and their
``.gz``/``.fz`` forms under the installed astropy package), copied under a temporary
FILESYSTEM_PREFIX (copies: symbolic links would resolve outside it).  Every answer is a
200 whose body decodes (Pillow for images, JSON for profiles) or a clean 4xx; a file
that astropy reads an image from must be served (200s); a gzip-compressed file gets its
400.  No 5xx, no traceback in any log, and the same two workers serve from the first
request to the last.
"""

from __future__ import annotations

import io
import json
import math
import re
import shutil
import time
import warnings
from pathlib import Path

import pytest
from PIL import Image

from tests.e2e._proc import child_pids
from tests.e2e.conftest import http_get

pytestmark = pytest.mark.e2e

V2_METADATA = ("obj=IIP,1.0&obj=max-size&obj=tile-size&obj=resolution-number"
               "&obj=bits-per-channel&obj=min-max-sample-values&obj=subject")
SUFFIX = re.compile(r"\.(fits|fit|fts)(\.gz|\.fz)?$", re.IGNORECASE)
#: Master log lines of a worker that did not end by itself (server/prefork.py).
DEATH = re.compile(r"worker \d+ \(pid \d+\) (was killed by|exited with status|was stopped after"
                   r"|silent for|crashed|failed to boot)")


def astropy_files() -> dict[str, Path]:
    """``{served name: path}`` of astropy's FITS test files (the name flattens the path)."""
    import astropy

    root = Path(astropy.__file__).parent
    found = sorted(p for p in root.rglob("*") if SUFFIX.search(p.name) and p.is_file())
    return {str(p.relative_to(root)).replace("/", "__"): p for p in found}


def astropy_reads_an_image(path: Path) -> bool:
    """True when astropy opens the file and finds an image HDU of two or more axes, none
    of length 0, whose data it can read: iipy must serve such a file."""
    from astropy.io import fits

    if path.name.lower().endswith(".gz"):
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(path) as hdul:
                for hdu in hdul:
                    if not isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)) \
                            or isinstance(hdu, fits.GroupsHDU):
                        continue
                    shape = hdu.shape
                    if len(shape) >= 2 and all(n > 0 for n in shape) and hdu.data is not None:
                        return True
    except Exception:
        return False
    return False


def check_image(status: int, headers, body: bytes, what: str) -> None:
    assert status == 200, (what, status, body[:200])
    assert headers["Content-Type"] in ("image/jpeg", "image/png"), what
    Image.open(io.BytesIO(body)).load()


def test_every_astropy_fits_file(spawn_fcgi, nginx, tmp_path):
    files = astropy_files()
    assert len(files) >= 20, "astropy's test files not found: %s" % sorted(files)
    prefix = tmp_path / "astropy"
    prefix.mkdir()
    for name, path in files.items():
        shutil.copyfile(path, prefix / name)
    server = spawn_fcgi(FILESYSTEM_PREFIX=f"{prefix}/", IIPY_WORKERS=2, MEMCACHED_SERVERS="")
    url = nginx(server)
    deadline = time.monotonic() + 20
    while len(child_pids(server.proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = child_pids(server.proc.pid)
    assert len(workers) == 2

    start = time.monotonic()
    served, refused = [], []
    for name, path in files.items():
        must_serve = astropy_reads_an_image(path)
        answers = []

        def get(query: str) -> tuple[int, object, bytes]:
            status, headers, body = http_get(f"{url.iip}?FIF={name}&{query}")
            assert status < 500, (name, query, status, body[:300])
            if status >= 400:
                assert b"Traceback" not in body and b"Internal Server Error" not in body
            answers.append(status)
            return status, headers, body

        status, _, body = get(V2_METADATA)
        if name.lower().endswith(".gz"):
            assert status == 400 and b"gzip-compressed" in body, name
        if status == 200:
            text = body.decode("latin-1")
            width, height = map(int, re.search(r"Max-size:(\d+) (\d+)", text).groups())
            nres = int(re.search(r"Resolution-number:(\d+)", text).group(1))
            minmax = re.search(r"Min-Max-sample-values: (\S+(?:  \S+)*)\r\n", text)
            values = [float(v) for v in minmax.group(1).split("  ")]  # VisiOmatic 2 (§12.2)
            assert len(values) % 2 == 0 and all(
                math.isfinite(lo) and lo < hi for lo, hi in zip(values[::2], values[1::2])), name
            assert re.search(r"subject/\d+:", text), name
            for res in (0, nres - 1):
                check_image(*get(f"GAM=0.4545&CTW=1;1;1&JTL={res},0"), f"{name} JTL={res},0")
            status, headers, body = get(f"PFL={nres - 1}:0,{height // 2}-{width - 1},{height // 2}")
            assert status == 200, (name, body[:200])
            profile = json.loads(body)["profile"]
            assert len(profile) >= width - 1 and all(v is None or isinstance(v, (int, float))
                                                     for v in profile)
            check_image(*get("RGN=0.25,0.25,0.5,0.5&WID=200&CVT=jpeg"), f"{name} CVT")
            served.append(name)
        else:
            assert not must_serve, (name, status, body[:300])
            assert 400 <= status < 500, (name, status)
            for query in ("JTL=0,0", "PFL=0:0,0-1,0", "WID=100&CVT=jpeg"):
                status, _, _ = get(query)
                assert 400 <= status < 500, (name, query, status)
            refused.append(name)
        if must_serve:
            assert answers[0] == 200, name
    elapsed = time.monotonic() - start

    assert len(served) >= 15 and refused, (served, refused)
    assert child_pids(server.proc.pid) == workers, "a worker died and was replaced"
    log = server.log_text()
    assert "Traceback" not in log and not DEATH.search(log), log[-3000:]
    assert " 500 " not in log
    assert "Traceback" not in server.output_text()
    assert elapsed < 60, elapsed
