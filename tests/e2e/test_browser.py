"""Real headless Chromium (Debian ``chromium``, driven by playwright-core from npm).

``test_viewer_*``: the viewer page of ``iipy serve`` on the example images, as a user
works it (tests/e2e/browser/viewer-test.js): it loads, every tile is a 200, there is
no console error, changing the colormap, min/max and gamma changes the tiles' pixels,
a cube is shown as a colour mix, one channel, and another mix, edge tiles have their
real size, and the screenshots are not blank.

``test_visiomatic2_request_forms``: tests/e2e/browser/v2forms.html, served by nginx
(conf/nginx.conf.in) in front of a standalone iipy, sends the exact requests of
VisiOmatic 2 (docs/protocol.md §12.1) and parses the metadata with its regular
expressions (§12.2); the test checks each request's form and status and that CMP and
MINMAX change the pixels.

Leaflet and playwright-core come from tests/e2e/browser/node_modules (``npm ci``,
done by conf/bootstrap.sh); the page of ``iipy serve`` uses that Leaflet through
``--assets local`` (there is no internet access in the tests).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from tests.e2e._serve import (BROWSER_DIR, LEAFLET_DIST, image_stats, iipy_cli_command,
                              require_browser, run_node)
from tests.e2e.conftest import HOST, Launcher, free_port, http_get

pytestmark = pytest.mark.e2e


def _tile_size(meta: dict, key: str) -> tuple[int, int]:
    """The real size of tile ``"z,n"`` (floor level sizes, row-major index)."""
    z, n = (int(v) for v in key.split(","))
    scale = 2 ** (meta["levels"] - 1 - z)
    width, height = meta["width"] // scale, meta["height"] // scale
    tw, th = meta["tileWidth"], meta["tileHeight"]
    columns = -(-width // tw)
    x, y = n % columns, n // columns
    return min(tw, width - x * tw), min(th, height - y * th)


def _difference(a: dict, b: dict) -> float:
    """Largest change of a tile's mean R, G or B between two steps (common tiles)."""
    common = set(a) & set(b)
    assert common, "the two steps show no tile in common"
    return max(abs(a[k][c] - b[k][c]) for k in common for c in "rgb")


def _max_chroma(tiles: dict) -> float:
    return max(t["chroma"] for t in tiles.values())


@pytest.fixture
def serve(tmp_path_factory: pytest.TempPathFactory, example_data):
    """Start ``iipy serve PATH... --assets local --no-browser`` on a free port; returns
    its base URL.  Stopped (SIGTERM) at teardown, failing on leftovers or tracebacks."""
    launcher = Launcher(tmp_path_factory, "iipy-serve")

    def start(*paths: Path, workers: int = 3) -> str:
        require_browser()
        port = free_port()
        workdir = launcher.workdir()
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("IIPY_") and k not in ("DISPLAY", "WAYLAND_DISPLAY")}
        env.update(IIPY_VIEWER_ASSETS=str(LEAFLET_DIST), IIPY_CACHE_DIR=str(workdir / "cache"))
        cmd = [*iipy_cli_command(), "serve", *map(str, paths), "--port", str(port),
               "--workers", str(workers), "--assets", "local", "--no-browser"]
        launcher.start(cmd, env, f"{HOST}:{port}", workdir, None)
        return f"http://{HOST}:{port}/"

    yield start
    launcher.close()


def test_viewer_in_chromium(serve, example_data, tmp_path: Path) -> None:
    chromium, _ = require_browser()
    url = serve(example_data.dir)
    out = tmp_path / "out"
    out.mkdir()
    profile = tmp_path / "profile"
    profile.mkdir()
    run_node("viewer-test.js", ["--url", url, "--out", str(out), "--chromium", chromium], profile)
    result = json.loads((out / "result.json").read_text())
    assert result["ok"], result["error"]
    log = result["log"]
    assert log["console"] == [], log["console"]
    assert log["pageErrors"] == [], log["pageErrors"]
    assert result["title"] == "iipy viewer"
    assert result["images"] == ["cube.fits", "int16.fits", "sky.fits"]

    tiles = [r for r in log["responses"] if "JTL=" in r["url"]]
    assert len(tiles) >= 20
    bad = [r for r in log["responses"] if r["status"] != 200]
    assert bad == [], bad
    # Leaflet cancels the tiles of a view it redraws (net::ERR_ABORTED); nothing else fails.
    failed = [f for f in log["failed"] if not ("JTL=" in f["url"] and "ABORTED" in f["error"])]
    assert failed == [], failed
    metadata = [r["url"] for r in log["responses"] if "obj=" in r["url"]]
    assert any(u.endswith("iip?FIF=sky.fits&obj=IIP,1.0&obj=max-size&obj=tile-size"
                          "&obj=resolution-number&obj=bits-per-channel"
                          "&obj=min-max-sample-values&obj=subject") for u in metadata), metadata

    steps = result["steps"]
    lo, hi = result["minmax"]
    assert steps["default"]["query"] == "&GAM=0.4545&CTW=1;1;1"  # 32-bit data: gamma 2.2
    assert steps["jet"]["query"] == "&CMP=jet&GAM=0.4545&CTW=1;1;1"
    assert f"&MINMAX=1:{_js(lo)},{_js(hi)}&" in steps["minmax"]["query"]
    assert "GAM=" not in steps["gamma"]["query"]
    # Pixels: grey, then coloured by the colormap; min/max and gamma change them again.
    assert _max_chroma(steps["default"]["tiles"]) < 2
    assert _max_chroma(steps["jet"]["tiles"]) > 20
    assert _difference(steps["default"]["tiles"], steps["jet"]["tiles"]) > 10
    assert _difference(steps["jet"]["tiles"], steps["minmax"]["tiles"]) > 5
    assert _difference(steps["minmax"]["tiles"], steps["gamma"]["tiles"]) > 5
    # The cube: a colour mix, one channel (grey), another channel, another mix.
    assert steps["cube-mix"]["query"].endswith("&CTW=0,0,1;0,1,0;1,0,0")
    assert steps["cube-mono"]["query"].endswith("&CTW=1;1;1")
    assert steps["cube-channel3"]["query"].endswith("&CTW=0,0,1;0,0,1;0,0,1")
    assert steps["cube-mix2"]["query"].endswith("&CTW=0,0,1;0,1,0;0,0,0")
    assert _max_chroma(steps["cube-mix"]["tiles"]) > 2
    assert _max_chroma(steps["cube-mono"]["tiles"]) < 2
    assert _difference(steps["cube-mono"]["tiles"], steps["cube-channel3"]["tiles"]) > 0.5
    assert _difference(steps["cube-mix"]["tiles"], steps["cube-mix2"]["tiles"]) > 5
    assert all(t["b"] < 3 for t in steps["cube-mix2"]["tiles"].values())  # channel 1 left out
    # Every tile has its real size: the cube's edge tiles are smaller than 256.
    cube_meta = {"width": 1200, "height": 900, "tileWidth": 256, "tileHeight": 256,
                 "levels": 4}
    sizes = {k: (t["width"], t["height"]) for k, t in steps["cube-mix"]["tiles"].items()}
    assert sizes == {k: _tile_size(cube_meta, k) for k in sizes}
    assert any(w < 256 or h < 256 for w, h in sizes.values())
    for name in ("page", "page-cube", "default", "jet", "cube-mix"):
        std, distinct = image_stats(out / f"{name}.png")
        assert std > 5 and distinct > 20, f"{name}.png looks blank ({std=:.1f}, {distinct=})"


def test_viewer_serves_only_the_given_paths(serve, example_data, tmp_path: Path) -> None:
    """Files named on the command line: only those; nothing else of their folder."""
    url = serve(example_data["sky"], example_data["cube"], workers=2)
    status, _, body = http_get(url + "images.json")
    assert status == 200
    assert [i["fif"] for i in json.loads(body)["images"]] == ["cube.fits", "sky.fits"]
    status, headers, body = http_get(url + "iip?FIF=sky.fits&obj=IIP,1.0&obj=max-size")
    assert status == 200 and b"Max-size:2048 1536" in body
    assert headers["Content-Type"] == "application/vnd.netfpx"
    status, _, body = http_get(url + "fcgi-bin/iipsrv.fcgi?FIF=cube.fits&CTW=1;1;1&JTL=0,0")
    assert status == 200 and body[:2] == b"\xff\xd8"
    for fif in ("int16.fits", "../examples/int16.fits", "./int16.fits", "%69nt16.fits"):
        status, _, _ = http_get(url + "iip?FIF=" + fif + "&obj=max-size")
        assert status == 404, fif
    status, _, body = http_get(url + "iip?FIF=nothing.fits&obj=max-size")
    assert status == 404
    status, _, _ = http_get(url + "static/../../setup.py")
    assert status == 404
    status, _, _ = http_get(url + "static/leaflet/../../../../package.json")
    assert status == 404
    status, headers, body = http_get(url + "static/leaflet/leaflet.js")
    assert status == 200 and headers["Content-Type"] == "application/javascript"


def test_visiomatic2_request_forms(iipy_server, nginx, example_data, tmp_path: Path) -> None:
    chromium, _ = require_browser()
    static = tmp_path / "html"
    static.mkdir()
    for name in ("v2forms.html", "v2forms.js"):
        shutil.copy(BROWSER_DIR / name, static / name)
    shutil.copytree(LEAFLET_DIST, static / "leaflet")
    static.chmod(0o755)
    server = iipy_server(JPEG_QUALITY=90, IIPY_WORKERS=3)
    web = nginx(server, keepalive=True, static_dir=static)
    out = tmp_path / "out"
    out.mkdir()
    profile = tmp_path / "profile"
    profile.mkdir()
    run_node("v2forms-test.js", ["--url", web + "/v2forms.html", "--out", str(out),
                                 "--chromium", chromium], profile)
    result = json.loads((out / "result.json").read_text())
    assert result["ok"], result["error"]
    log = result["log"]
    assert log["console"] == [] and log["pageErrors"] == [], (log["console"], log["pageErrors"])
    lo, hi = result["minmax"]
    number = r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?"
    tile_form = re.compile(
        r"/fcgi-bin/iipsrv\.fcgi\?FIF=sky\.fits(&CMP=(?:jet|cold|hot))?(&INV)?"
        rf"(&GAM=\d\.\d{{4}})?(&MINMAX=1:{number},{number})?&CTW=1;1;1(&QLT=\d+)?&JTL=\d+,\d+")
    expected = {
        "default": "&GAM=0.4545&CTW=1;1;1",
        "jet": "&CMP=jet&GAM=0.4545&CTW=1;1;1",
        "minmax": f"&GAM=0.4545&MINMAX=1:{_js(lo)},{_js(hi)}&CTW=1;1;1",
        "gamma1": "&CTW=1;1;1",
        "all": f"&CMP=jet&INV&GAM=0.4545&MINMAX=1:{_js(lo)},{_js(hi)}&CTW=1;1;1&QLT=80",
    }
    metadata_form = ("/fcgi-bin/iipsrv.fcgi?FIF=sky.fits&obj=IIP,1.0&obj=max-size&obj=tile-size"
                     "&obj=resolution-number&obj=bits-per-channel&obj=min-max-sample-values"
                     "&obj=subject")
    for name, display in expected.items():
        step = result["steps"][name]
        assert step["errors"] == [], (name, step["errors"])
        iip = [r for r in step["responses"] if "/fcgi-bin/" in r["url"]]
        assert all(r["status"] == 200 for r in iip), (name, iip)
        paths = [r["url"][len(web):] for r in iip]
        assert paths[0] == metadata_form, paths[0]
        tiles = [p for p in paths if "&JTL=" in p]
        assert tiles, name
        for path in tiles:
            assert tile_form.fullmatch(path), path
            assert path.startswith("/fcgi-bin/iipsrv.fcgi?FIF=sky.fits" + display + "&JTL="), path
        assert any("&PFL=3:0,768-2047,768" in p for p in paths), paths
        # x2 is exclusive (iipsrv): 2047 values from x = 0 to 2046.
        assert step["profileLength"] == 2047 and step["profileFinite"] > 1900
        meta = step["meta"]
        assert meta["iip"] == "1.0" and meta["channels"] == 1
        assert (meta["width"], meta["height"], meta["levels"], meta["bits"]) == (2048, 1536, 4, 32)
        assert meta["ranges"][0][0] < meta["ranges"][0][1]
        header = step["header"]
        assert header["NAXIS1"] == "2048" and header["NAXIS2"] == "1536"
        assert header["CTYPE1"] == "RA---TAN" and header["CD1_1"] is not None
        assert header["LATPOLE"] is None
    steps = result["steps"]
    assert _max_chroma(steps["default"]["tiles"]) < 2
    assert _max_chroma(steps["jet"]["tiles"]) > 20
    assert _difference(steps["default"]["tiles"], steps["jet"]["tiles"]) > 10
    assert _difference(steps["default"]["tiles"], steps["minmax"]["tiles"]) > 5
    assert _difference(steps["default"]["tiles"], steps["gamma1"]["tiles"]) > 5
    assert _difference(steps["jet"]["tiles"], steps["all"]["tiles"]) > 10
    std, distinct = image_stats(out / "default.png")
    assert std > 5 and distinct > 20


def _js(value: float) -> str:
    """JavaScript's ``Number.prototype.toString`` for the values the drivers use."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text
