"""A full file system under IIPY_CACHE_DIR (docs/protocol.md §4.3): iipy under spawn-fcgi,
behind nginx, with its pyramid directory on a 2 MB tmpfs.

sky.fits (2048x1536 float32, 3.9 MB of reduced levels) and cube.fits (1200x900x3, 4.2 MB)
cannot have their pyramid there; int16.fits (1.4 MB) can.  Every tile of every level of
the three is a 200 with a JPEG whose pixels match the model (§6, §7), no worker dies, the
move to memory is logged once per image and worker, and the directory never holds a
half-written pyramid.  With IIPY_PYRAMID_MEMORY_MB=1 the largest level of sky and cube is
not kept in memory but computed per request from full resolution.
"""

from __future__ import annotations

import json
import os
import re
import time

import pytest

from tests.e2e import _model as model
from tests.e2e.conftest import http_get
from tests.e2e._proc import child_pids
from tests.tmpfs import small_tmpfs

pytestmark = pytest.mark.e2e

#: (image, modifiers, (width, height), tiles checked at full resolution: None for all)
CASES = [
    ("sky", "MINMAX=1:80.0,600.0&CTW=1;1;1&QLT=100", (2048, 1536), None),
    ("int16", "MINMAX=1:900,9000&CTW=1;1;1&QLT=100", (983, 1061), [0, 7, 19]),
    ("cube", "MINMAX=1:40.0,500.0&MINMAX=2:80.0,700.0&MINMAX=3:120.0,900.0&"
             "CTW=1,0,0;0,1,0;0,0,1&QLT=100", (1200, 900), [0, 6, 19]),
]


def tiles(width: int, height: int, full: list[int] | None) -> list[tuple[int, int]]:
    """(resolution, tile) of every tile of the reduced levels, and ``full`` at full
    resolution (every tile when None)."""
    out = []
    n = 1
    while (width >> (n - 1)) > 256 or (height >> (n - 1)) > 256:
        n += 1
    for res in range(n):
        w, h = width >> (n - 1 - res), height >> (n - 1 - res)
        count = -(-w // 256) * -(-h // 256)
        chosen = range(count) if res < n - 1 or full is None else full
        out.extend((res, t) for t in chosen)
    return out


def test_full_cache_file_system_serves_every_level(spawn_fcgi, nginx, example_data, tmp_path):
    with small_tmpfs(tmp_path / "fs", "2m") as fs:
        cache = fs / "cache"
        server = spawn_fcgi(IIPY_CACHE_DIR=cache, IIPY_CACHE_DIR_MAX_MB=100,
                            IIPY_PYRAMID_MEMORY_MB=1, IIPY_WORKERS=2)
        try:
            url = nginx(server, keepalive=False)  # connections spread over both workers
            deadline = time.monotonic() + 20
            while len(workers := child_pids(server.proc.pid)) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(workers) == 2
            failures = []
            for name, modifiers, (width, height), full in CASES:
                levels = model.iip_levels(model.fits_planes(example_data[name]))
                for res, tile in tiles(width, height, full):
                    query = f"FIF={name}.fits&{modifiers}&JTL={res},{tile}"
                    status, headers, body = http_get(f"{url.iip}?{query}")
                    if status != 200:
                        failures.append(f"{query}: {status} {body[:100]!r}")
                        continue
                    assert headers["Content-Type"] == "image/jpeg", query
                    got, components = model.decode_jpeg(body)
                    k, x, y, w, h = model.tile_window(width, height, res, tile)
                    view = model.parse_view(query, levels[0].shape[0])
                    want = model.render(levels[k][:, y : y + h, x : x + w], view, [(0.0, 1.0)] * 3)
                    if want.ndim == 3:
                        want = model.jpeg_roundtrip(want)
                    if got.shape != want.shape:
                        failures.append(f"{query}: shape {got.shape} != {want.shape}")
                        continue
                    mean, p99 = model.diff_stats(got, want)
                    if not (mean <= 1.0 and p99 <= 2.0):
                        failures.append(f"{query}: mean |diff| {mean:.2f}, p99 {p99:.1f}")
            assert not failures, "\n".join(failures[:20])
            assert child_pids(server.proc.pid) == workers  # no worker died and was replaced
            log = server.log_text()
            assert not re.search(r"died|killed|Traceback", log), log[-3000:]
            for name in ("sky", "cube"):
                moved = re.findall(rf"pyramid of \S*/{name}\.fits not on disk: (.*)", log)
                assert 1 <= len(moved) <= 2, moved  # once per image and worker
                assert all("No space left on device" in m for m in moved), moved
            assert "int16.fits not on disk" not in log
            # only complete pyramids in the directory, and int16's is one of them
            images = []
            for entry in sorted(os.listdir(cache)):
                if entry.endswith(".lock"):
                    continue
                files = sorted(os.listdir(cache / entry))
                meta = json.loads((cache / entry / "meta.json").read_text())
                assert files == ["level%d.f32" % (k + 1) for k in range(len(meta["shapes"]))] + [
                    "meta.json"]
                for k, (c, h, w) in enumerate(meta["shapes"], start=1):
                    assert (cache / entry / f"level{k}.f32").stat().st_size == 4 * c * h * w
                images.append(os.path.basename(meta["path"]))
            assert images == ["int16.fits"]
        finally:
            problems = server.stop()  # before the unmount: the workers map its files
        assert not problems, problems
