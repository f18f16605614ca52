"""Level 1 written in the background (docs/pipeline.md §6): iipy under spawn-fcgi with two
workers, behind nginx, on a fresh pyramid directory.

The first request builds levels 2 and up; level 1 then appears in the directory by
itself (no ``iipy pyramid``), written by a worker while both serve.  Every level-1 tile
matches the model before and after, and is the same bytes from either worker at any
time: binned per request from the raw samples or read from the file, the values are the
same bit for bit.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from tests.e2e import _model as model
from tests.e2e.conftest import http_get

pytestmark = pytest.mark.e2e

MODIFIERS = "MINMAX=1:80.0,600.0&CTW=1;1;1&QLT=100"
SIZE = (2048, 1536)  # sky.fits: resolutions 256x192 ... 2048x1536, level 1 is 1024x768


def level1_tiles(url: str) -> dict[int, bytes]:
    """Every tile of level 1 (resolution 2 of 4), by tile number."""
    out = {}
    for tile in range(4 * 3):
        status, headers, body = http_get(f"{url}?FIF=sky.fits&{MODIFIERS}&JTL=2,{tile}")
        assert status == 200 and headers["Content-Type"] == "image/jpeg", (tile, status, body[:100])
        out[tile] = body
    return out


def test_level1_follows_in_the_background(spawn_fcgi, nginx, example_data, tmp_path):
    cache = tmp_path / "cache"
    server = spawn_fcgi(IIPY_CACHE_DIR=cache, IIPY_WORKERS=2)
    try:
        url = nginx(server, keepalive=False).iip  # connections spread over both workers
        status, _, body = http_get(f"{url}?FIF=sky.fits&obj=IIP,1.0&obj=max-size")
        assert status == 200 and b"Max-size:2048 1536" in body, body
        first = level1_tiles(url)
        (directory,) = [d for d in cache.iterdir() if d.is_dir()]
        meta = json.loads((directory / "meta.json").read_text())
        assert meta["first"] == 2 and len(meta["shapes"]) == 3
        complete = ["level1.f32", "level2.f32", "level3.f32", "meta.json"]
        deadline = time.monotonic() + 30
        while (names := sorted(p.name for p in directory.iterdir())) != complete:
            assert time.monotonic() < deadline, names  # the writer's files gone, level1.f32 in
            time.sleep(0.02)
        assert (directory / "level1.f32").stat().st_size == 4 * 768 * 1024
        time.sleep(0.6)  # every worker looks for the file at most twice a second
        for _ in range(2):  # both workers, the file now mapped
            assert level1_tiles(url) == first
        levels = model.iip_levels(model.fits_planes(example_data["sky"]))
        for tile, body in first.items():
            got, _ = model.decode_jpeg(body)
            k, x, y, w, h = model.tile_window(*SIZE, 2, tile)
            assert k == 1
            view = model.parse_view(f"{MODIFIERS}&JTL=2,{tile}", levels[0].shape[0])
            want = model.render(levels[1][:, y : y + h, x : x + w], view, [(0.0, 1.0)] * 3)
            mean, p99 = model.diff_stats(got, want)
            assert mean <= 1.0 and p99 <= 2.0, (tile, mean, p99)
        log = server.log_text()
        assert not re.search(r"Traceback|died|killed", log), log[-3000:]
    finally:
        problems = server.stop()
    assert not problems, problems
