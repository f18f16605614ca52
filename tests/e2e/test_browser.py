"""Real headless Chromium (Debian ``chromium``, driven by playwright-core from npm),
with the network cut off: every request to anything but the server under test is
aborted and recorded, and the tests assert that there was none.

``test_viewer_*``: the viewer page of ``iipy serve`` on the example images, as a user
works it (tests/e2e/browser/viewer-test.js), in one browser session: it loads with
Leaflet served by iipy itself (the XStatic-Leaflet package), every tile is a 200, there
is no console error, changing the colormap, min/max and gamma changes the tiles'
pixels, a cube is shown as a colour mix, one channel, and another mix, edge tiles have
their real size, the screenshots are not blank; each stretch sends its IIP form
(pixels compared for the numeric GAM only), a range preset equals the percentiles of
the values it reads (computed here with NumPy), the page's address opened in a second
page restores the view, the readout under the cursor shows a known pixel's value and
RA/Dec as astropy computes them, the download button gives a FITS file of the view
that astropy opens, and a link giving the centre as RA, Dec centres that position.

``test_visiomatic2_request_forms``: tests/e2e/browser/v2forms.html, served by nginx
(conf/nginx.conf.in) in front of a standalone iipy, sends the exact requests of
VisiOmatic 2 (docs/protocol.md §12.1) and parses the metadata with its regular
expressions (§12.2); the test checks each request's form and status, that CMP and
MINMAX change the pixels, and that the world coordinates the page computes from the
``subject`` header are astropy's.  ``test_visiomatic2_on_a_stiff_tiff`` does the same on
the TIFF STIFF makes of the same file; ``test_leaflet_tilelayer_iip_on_a_vips_rgb_pyramid``
sends Leaflet.TileLayer.IIP's requests (the same page, ``form=tilelayer``) for an 8-bit
RGB JPEG pyramid made by vips.

``test_openseadragon_*``: tests/e2e/browser/osd.html, served by nginx in front of iipy,
opens OpenSeadragon on sky.fits through DeepZoom, Zoomify and IIIF (query-string URLs,
and path-style ones through conf/nginx.conf.in's location and URI_MAP), zooms to three
levels and waits for every tile; the test checks that the tiles of at least three
pyramid levels were loaded, all with status 200, and that the screenshots are not
uniform (and coloured when CMP=jet comes before IIIF).

playwright-core comes from tests/e2e/browser/node_modules (``npm ci``, done by
conf/bootstrap.sh), as do the Leaflet of the VisiOmatic 2 page and OpenSeadragon.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from astropy.io import fits
from astropy.wcs import WCS
from PIL import Image

from tests.e2e._serve import (BROWSER_DIR, LEAFLET_DIST, image_stats, iipy_cli_command,
                              require_browser, run_node)
from tests.e2e.conftest import HOST, Launcher, free_port, http_get, missing
from tests.unit._tiff_files import smooth_rgb, stiff_pyramid, vips_pyramid

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
    """Start ``iipy serve PATH... --no-browser`` on a free port; returns
    its base URL.  Stopped (SIGTERM) at teardown, failing on leftovers or tracebacks."""
    launcher = Launcher(tmp_path_factory, "iipy-serve")

    def start(*paths: Path, workers: int = 3, **settings: str) -> str:
        require_browser()
        port = free_port()
        workdir = launcher.workdir()
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("IIPY_") and k not in ("DISPLAY", "WAYLAND_DISPLAY")}
        env.update(IIPY_CACHE_DIR=str(workdir / "cache"), **settings)
        cmd = [*iipy_cli_command(), "serve", *map(str, paths), "--port", str(port),
               "--workers", str(workers), "--no-browser"]
        launcher.start(cmd, env, f"{HOST}:{port}", workdir, None)
        return f"http://{HOST}:{port}/"

    yield start
    launcher.close()


#: The pixel the readout test points at (FITS, 1-based) and the one a RA, Dec link names.
READOUT_PIXEL = (1000, 700)
RADEC_PIXEL = (321.25, 1234.5)


def test_viewer_in_chromium(serve, example_data, tmp_path: Path) -> None:
    chromium, _ = require_browser()
    # The colour checks below (a channel left out of the mix stays below 3 DN after JPEG's
    # chroma subsampling) hold for the wide `mad` range; the narrower default range
    # saturates the cube's colours enough to bleed a few DN into the empty channel.
    url = serve(example_data.dir, IIPY_DISPLAY_RANGE="mad")
    out = tmp_path / "out"
    out.mkdir()
    profile = tmp_path / "profile"
    profile.mkdir()
    with fits.open(example_data["sky"]) as hdul:
        sky, header = hdul[0].data.astype(np.float64), hdul[0].header
    wcs = WCS(header)
    ra, dec = wcs.all_pix2world([RADEC_PIXEL], 1)[0]
    run_node("viewer-test.js", ["--url", url, "--out", str(out), "--chromium", chromium,
                                "--pixel", "%d,%d" % READOUT_PIXEL, "--radec",
                                "%.12f,%.12f" % (ra, dec)], profile, timeout=180.0)
    result = json.loads((out / "result.json").read_text())
    assert result["ok"], result["error"]
    log = result["log"]
    assert log["console"] == [], log["console"]
    assert log["pageErrors"] == [], log["pageErrors"]
    # No network: nothing was asked of another host (and Leaflet came from iipy).
    assert log["blocked"] == [], log["blocked"]
    assert all(r["url"].startswith(url) for r in log["responses"])
    assert any(r["url"] == url + "static/leaflet/leaflet.js" and r["status"] == 200
               for r in log["responses"])
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

    _check_stretches(steps, log)
    _check_preset(result, url)
    _check_shared_view(result)
    _check_readout(result, sky, wcs)
    _check_download(result, out / "view.fits", sky, wcs)
    # A link with the centre in RA, Dec: the page centres that pixel (server-side WCS).
    radec = result["radec"]
    assert radec["stretch"] == "log" and radec["centre"]["zoom"] == 2
    assert abs(radec["centre"]["x"] - RADEC_PIXEL[0]) < 0.01
    assert abs(radec["centre"]["y"] - RADEC_PIXEL[1]) < 0.01


def _check_stretches(steps: dict, log: dict) -> None:
    """Each stretch sends its IIP form (docs/protocol.md §5.13, §5.14); the tiles of the
    numeric forms (power laws) differ from the linear ones."""
    expected = {"linear": "&CTW=1;1;1", "sqrt": "&GAM=sqrt&CTW=1;1;1",
                "log": "&GAM=log&CTW=1;1;1", "asinh": "&GAM=asinh&CTW=1;1;1",
                "equalise": "&CNT=eq&CTW=1;1;1", "power": "&GAM=0.4545&CTW=1;1;1",
                "power2": "&GAM=0.5000&CTW=1;1;1", "asinh05": "&GAM=asinh:0.5&CTW=1;1;1"}
    tile_urls = [r["url"] for r in log["responses"] if "JTL=" in r["url"]]
    for name, query in expected.items():
        step = steps["stretch-" + name]
        assert step["image"] == "sky.fits" and step["query"] == query, (name, step["query"])
        assert any(u.split("?", 1)[1].startswith("FIF=sky.fits" + query + "&JTL=")
                   for u in tile_urls), name
    assert _difference(steps["stretch-linear"]["tiles"], steps["stretch-power"]["tiles"]) > 5
    assert _difference(steps["stretch-power"]["tiles"], steps["stretch-power2"]["tiles"]) > 1


def _check_preset(result: dict, url: str) -> None:
    """The 99.5 % preset: the 0.25 % and 99.75 % quantiles of the finite values of the
    reduced copy it reads (CVT=fits), computed here from the same bytes with NumPy."""
    preset = result["preset"]
    assert "&CVT=fits" in preset["url"]
    status, headers, body = http_get(url + preset["url"])
    assert status == 200 and headers["Content-Type"] == "application/fits"
    with fits.open(io.BytesIO(body)) as hdul:
        values = hdul[0].data.astype(np.float64)
    values = values[np.isfinite(values)]
    want = np.quantile(values, [0.0025, 0.9975])
    (lo, hi), = preset["ranges"]
    assert lo == pytest.approx(want[0], rel=1e-9) and hi == pytest.approx(want[1], rel=1e-9)
    query = result["steps"]["preset"]["query"]
    assert query == f"&GAM=asinh:0.5&MINMAX=1:{_js(lo)},{_js(hi)}&CTW=1;1;1", query


def _check_shared_view(result: dict) -> None:
    """The address of the first page, opened in a second one, restores the image, the
    centre, the zoom, the stretch, the colormap and the range: same tiles, same pixels."""
    shared = result["shared"]
    first, second = shared["first"], shared["second"]
    assert "#fif=sky.fits&x=1000.00&y=700.00&zoom=4&stretch=asinh&beta=0.5&cmap=hot&min=" \
        in shared["url"], shared["url"]
    for key in ("image", "query", "stretch", "colormap", "beta", "ranges", "hash"):
        assert second[key] == first[key], key
    for key in ("x", "y"):
        assert abs(second["centre"][key] - first["centre"][key]) < 1e-6
    assert second["centre"]["zoom"] == first["centre"]["zoom"] == 4
    a, b = shared["firstTiles"], shared["secondTiles"]
    assert set(a) == set(b) and a
    assert max(abs(a[k][c] - b[k][c]) for k in a for c in "rgb") < 0.01


def _check_readout(result: dict, sky: np.ndarray, wcs: WCS) -> None:
    """The readout of READOUT_PIXEL: its value (PFL) and RA/Dec (the header's WCS), as
    astropy reads them."""
    x, y = READOUT_PIXEL
    readout = result["readout"]["values"]
    assert (readout["x"], readout["y"]) == (x, y)
    assert readout["values"] == [pytest.approx(float(sky[y - 1, x - 1]), rel=1e-8)]
    ra, dec = wcs.all_pix2world([[x, y]], 1)[0]
    assert readout["lon"] == pytest.approx(ra, abs=1e-9)
    assert readout["lat"] == pytest.approx(dec, abs=1e-9)
    assert (readout["lonName"], readout["latName"]) == ("RA", "Dec")
    pixel, value, lon, lat, lon_name, lat_name, _ = result["readout"]["text"]
    assert pixel == f"x {x}, y {y}"
    assert float(value) == pytest.approx(float(sky[y - 1, x - 1]), rel=1e-7)
    assert lon.endswith(f"{ra:.6f}°") and lat.endswith(f"{dec:.6f}°")
    hours = ra / 15
    assert lon.startswith("%02d:%02d:" % (int(hours), int(hours * 60) % 60))
    assert (lon_name, lat_name) == ("RA", "Dec")


def _check_download(result: dict, path: Path, sky: np.ndarray, wcs: WCS) -> None:
    """The FITS file of the view: float32 values of the region in view, with a WCS that
    puts READOUT_PIXEL where its value is."""
    assert result["download"]["name"] == "sky.fits"
    assert "&RGN=" in result["download"]["url"] and result["download"]["url"].endswith(
        "&CVT=fits")
    with fits.open(path) as hdul:
        hdul.verify("exception")
        cut = hdul[0]
        data = cut.data
        assert data.dtype == np.dtype(">f4") and data.ndim == 2
        assert 100 < data.shape[1] < 2048 and 100 < data.shape[0] < 1536
        cutwcs = WCS(cut.header)
    x, y = READOUT_PIXEL
    i, j = cutwcs.all_world2pix([wcs.all_pix2world([[x, y]], 1)[0]], 1)[0]
    assert abs(i - round(i)) < 0.01 and abs(j - round(j)) < 0.01
    assert data[round(j) - 1, round(i) - 1] == np.float32(sky[y - 1, x - 1])


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


def _v2forms(iipy_server, nginx, tmp_path: Path, *args: str, **env) -> tuple[dict, str, Path]:
    """Serve tests/e2e/browser/v2forms.* with nginx in front of iipy (``env`` for the
    server), run v2forms-test.js with ``args``; (result, nginx URL, output directory)."""
    chromium, _ = require_browser()
    static = tmp_path / "html"
    static.mkdir()
    for name in ("v2forms.html", "v2forms.js"):
        shutil.copy(BROWSER_DIR / name, static / name)
    shutil.copytree(LEAFLET_DIST, static / "leaflet")
    static.chmod(0o755)
    server = iipy_server(IIPY_WORKERS=3, **env)
    web = nginx(server, keepalive=True, static_dir=static)
    out = tmp_path / "out"
    out.mkdir()
    profile = tmp_path / "profile"
    profile.mkdir()
    run_node("v2forms-test.js", ["--url", web + "/v2forms.html", "--out", str(out),
                                 "--chromium", chromium, *args], profile)
    result = json.loads((out / "result.json").read_text())
    assert result["ok"], result["error"]
    log = result["log"]
    assert log["console"] == [] and log["pageErrors"] == [], (log["console"], log["pageErrors"])
    return result, web, out


def _check_world(step: dict, fits_path: Path) -> None:
    """The coordinates the page computes from the ``subject`` header, as VisiOmatic 2
    shows them, equal astropy's for the FITS file at the same pixels (§7.6, §12.3)."""
    with fits.open(fits_path) as hdul:
        wcs, height = WCS(hdul[0].header), hdul[0].header["NAXIS2"]
    assert len(step["world"]) == 3
    for point in step["world"]:
        ra, dec = wcs.all_pix2world(point["x"] + 0.5, height + 0.5 - point["y"], 1)
        assert abs((point["ra"] - float(ra)) * math.cos(math.radians(float(dec)))) < 1e-8, point
        assert abs(point["dec"] - float(dec)) < 1e-8, point


def test_visiomatic2_request_forms(iipy_server, nginx, example_data, tmp_path: Path) -> None:
    result, web, out = _v2forms(iipy_server, nginx, tmp_path, JPEG_QUALITY=90)
    _check_v2_steps(result, web, out, "sky.fits", example_data["sky"])


def test_visiomatic2_on_a_stiff_tiff(iipy_server, nginx, example_data, tmp_path: Path) -> None:
    """The same page on the TIFF STIFF makes from the same FITS file, served as iipsrv
    serves it (docs/protocol.md §4): the metadata, the FITS header STIFF copied into
    ImageDescription (so the world coordinates are right), tiles and profiles."""
    images = tmp_path / "images"
    images.mkdir()
    stiff_pyramid(str(images), "sky", [str(example_data["sky"])])
    result, web, out = _v2forms(iipy_server, nginx, tmp_path, "--fif", "sky.tif",
                                JPEG_QUALITY=90, FILESYSTEM_PREFIX=f"{images}/")
    _check_v2_steps(result, web, out, "sky.tif", example_data["sky"])


def test_leaflet_tilelayer_iip_on_a_vips_rgb_pyramid(iipy_server, nginx, tmp_path: Path) -> None:
    """Leaflet.TileLayer.IIP's requests on an 8-bit RGB JPEG pyramid made by vips: plain
    ``FIF=...&JTL=z,n`` tiles, sent as the file stores them (CODEC_PASSTHROUGH), each
    of its real size and with the colours of its place in the image; CMP and INV
    change them as the pipeline says (§6)."""
    images = tmp_path / "images"
    images.mkdir()
    rgb = smooth_rgb(1500, 1100)
    work = tmp_path / "work"
    work.mkdir()
    Path(vips_pyramid(str(work), "rgb", rgb, "--compression", "jpeg", "--Q", "90",
                      "--tile-width", "256", "--tile-height", "256")).rename(images / "rgb.tif")
    result, web, out = _v2forms(iipy_server, nginx, tmp_path, "--fif", "rgb.tif",
                                "--form", "tilelayer", FILESYSTEM_PREFIX=f"{images}/")
    steps = result["steps"]
    meta = steps["default"]["meta"]
    assert (meta["width"], meta["height"], meta["levels"], meta["bits"], meta["channels"]) == \
        (1500, 1100, 4, 8, 3)
    assert meta["ranges"] == [[0, 255]] * 3
    with tifffile.TiffFile(images / "rgb.tif") as tif:
        levels = [page.asarray() for page in tif.pages]
        tables = [page.jpegtables for page in tif.pages]
        places = [(page.dataoffsets, page.databytecounts) for page in tif.pages]
    raw = (images / "rgb.tif").read_bytes()
    for name, extra in (("default", ""), ("jet", "&CMP=jet"), ("inv", "&INV")):
        step = steps[name]
        assert step["errors"] == [], (name, step["errors"])
        iip = [r for r in step["responses"] if "/fcgi-bin/" in r["url"]]
        assert iip and all(r["status"] == 200 for r in iip), (name, iip)
        tiles = [r["url"][len(web):] for r in iip if "&JTL=" in r["url"]]
        assert tiles, name
        for path in tiles:
            assert re.fullmatch(r"/fcgi-bin/iipsrv\.fcgi\?FIF=rgb\.tif" + re.escape(extra)
                                + r"&JTL=\d+,\d+", path), path
    shown = steps["default"]["tiles"]
    assert len(shown) >= 4
    for key, tile in shown.items():
        z, n = (int(v) for v in key.split(","))
        k = meta["levels"] - 1 - z
        level = levels[k]
        columns = -(-level.shape[1] // 256)
        x, y = (n % columns) * 256, (n // columns) * 256
        assert (tile["width"], tile["height"]) == _tile_size(meta, key)
        want = level[y : y + tile["height"], x : x + tile["width"]].reshape(-1, 3).mean(axis=0)
        assert max(abs(tile[c] - want[i]) for i, c in enumerate("rgb")) < 1.5, (key, tile, want)
        status, _, body = http_get(tile["src"])
        assert status == 200
        if (tile["width"], tile["height"]) == (256, 256):  # full tiles: the stored JPEG
            offset, count = places[k][0][n], places[k][1][n]
            assert body == tables[k][:-2] + raw[offset + 2 : offset + count], key
    assert _max_chroma(steps["jet"]["tiles"]) > 20
    inverted = steps["inv"]["tiles"]
    common = set(shown) & set(inverted)
    assert common
    for key in common:
        assert all(abs(inverted[key][c] + shown[key][c] - 255) < 2 for c in "rgb"), key
    std, distinct = image_stats(out / "default.png")
    assert std > 5 and distinct > 20


def _check_v2_steps(result: dict, web: str, out: Path, fif: str, fits_path: Path) -> None:
    """What VisiOmatic 2 needs of the answers for ``fif``, the example sky image (or
    STIFF's TIFF of it): the request forms, the metadata, header and coordinates,
    profiles, and pixels that follow the display settings."""
    lo, hi = result["minmax"]
    number = r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?"
    tile_form = re.compile(
        r"/fcgi-bin/iipsrv\.fcgi\?FIF=" + re.escape(fif) + r"(&CMP=(?:jet|cold|hot))?(&INV)?"
        rf"(&GAM=\d\.\d{{4}})?(&MINMAX=1:{number},{number})?&CTW=1;1;1(&QLT=\d+)?&JTL=\d+,\d+")
    expected = {
        "default": "&GAM=0.4545&CTW=1;1;1",
        "jet": "&CMP=jet&GAM=0.4545&CTW=1;1;1",
        "minmax": f"&GAM=0.4545&MINMAX=1:{_js(lo)},{_js(hi)}&CTW=1;1;1",
        "gamma1": "&CTW=1;1;1",
        "all": f"&CMP=jet&INV&GAM=0.4545&MINMAX=1:{_js(lo)},{_js(hi)}&CTW=1;1;1&QLT=80",
    }
    metadata_form = ("/fcgi-bin/iipsrv.fcgi?FIF=" + fif + "&obj=IIP,1.0&obj=max-size"
                     "&obj=tile-size&obj=resolution-number&obj=bits-per-channel"
                     "&obj=min-max-sample-values&obj=subject")
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
            assert path.startswith("/fcgi-bin/iipsrv.fcgi?FIF=" + fif + display + "&JTL="), path
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
        _check_world(step, fits_path)
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


# --- OpenSeadragon: DeepZoom, Zoomify, IIIF ------------------------------------------------

OSD_DIST = BROWSER_DIR / "node_modules" / "openseadragon" / "build" / "openseadragon"
OSD_CASES = [
    # GAM=0.4545 before the command: the display VisiOmatic gives 32-bit data
    ("deepzoom", "deepzoom", "/fcgi-bin/iipsrv.fcgi?GAM=0.4545&DeepZoom=sky.fits.dzi"),
    ("zoomify", "zoomify",
     "/fcgi-bin/iipsrv.fcgi?GAM=0.4545&Zoomify=sky.fits/ImageProperties.xml"),
    ("iiif", "iiif", "/fcgi-bin/iipsrv.fcgi?GAM=0.4545&IIIF=sky.fits/info.json"),
    ("iiif-jet", "iiif", "/fcgi-bin/iipsrv.fcgi?GAM=0.4545&CMP=jet&IIIF=sky.fits/info.json"),
    # path-style, through conf/nginx.conf.in's location and URI_MAP: the default display
    ("iiif-path", "iiif", "/iiif/sky.fits/info.json"),
]
#: The scale of a tile URL's level, from its path: DeepZoom's level, Zoomify's z, and
#: IIIF's region width over its output width.
_LEVEL_RE = {
    "deepzoom": re.compile(r"_files/(\d+)/\d+_\d+\.jpg$"),
    "zoomify": re.compile(r"/TileGroup\d+/(\d+)-\d+-\d+\.jpg$"),
    "iiif": re.compile(r"/(?:\d+,\d+,(\d+),\d+|full)/(\d+),(?:\d+)?/0/default\.jpg$"),
}


def _osd_level(proto: str, url: str) -> str | None:
    match = _LEVEL_RE[proto].search(url)
    if match is None:
        return None
    if proto != "iiif":
        return match.group(1)
    region_w = int(match.group(1) or 2048)
    return "%.0f" % (region_w / int(match.group(2)))


def test_openseadragon_deepzoom_zoomify_iiif(iipy_server, nginx, tmp_path: Path) -> None:
    chromium, _ = require_browser()
    if not (OSD_DIST / "openseadragon.min.js").is_file():
        missing(f"{OSD_DIST} is missing: run `npm ci` in {BROWSER_DIR}")
    static = tmp_path / "html"
    static.mkdir()
    for name in ("osd.html", "osd.js"):
        shutil.copy(BROWSER_DIR / name, static / name)
    shutil.copytree(OSD_DIST, static / "openseadragon")
    static.chmod(0o755)
    # The three protocols must give the same pixels: compared on the wide `mad` range, where
    # JPEG noise stays below the threshold (the default range puts the sky at the bottom of
    # GAM's steep curve, where a tile and a resampled export differ by a few DN).
    server = iipy_server(URI_MAP="iiif=>IIIF", IIPY_WORKERS=3, IIPY_DISPLAY_RANGE="mad")
    web = nginx(server, keepalive=True, static_dir=static)
    out = tmp_path / "out"
    out.mkdir()
    profile = tmp_path / "profile"
    profile.mkdir()
    run_node("osd-test.js", ["--url", web + "/osd.html", "--out", str(out), "--chromium",
                             chromium, "--cases", json.dumps(OSD_CASES)], profile, timeout=240)
    result = json.loads((out / "result.json").read_text())
    assert result["ok"], result["error"]
    log = result["log"]
    assert log["console"] == [] and log["pageErrors"] == [], (log["console"], log["pageErrors"])
    assert log["blocked"] == [], log["blocked"]  # nothing but the server under test
    for name, proto, source in OSD_CASES:
        step = result["steps"][name]
        # this case's requests: its tile source's URL up to the image
        own = web + source[: source.index("sky.fits") + len("sky.fits")]
        served = [r for r in step["responses"] if r["url"].startswith(own)]
        assert all(r["status"] == 200 for r in served), (name, [r for r in served
                                                              if r["status"] != 200])
        assert served[0]["url"] == web + source, (name, served[0])
        levels = {_osd_level(proto, r["url"]) for r in served} - {None}
        assert len(levels) >= 3, (name, levels, [r["url"] for r in served][:20])
        tiles = [r for r in served if _osd_level(proto, r["url"]) is not None]
        assert len(tiles) >= 12, (name, len(tiles))
        if name == "iiif-path":
            assert all("/iiif/sky.fits/" in r["url"] for r in tiles)
        else:  # the modifiers travel in the tile URLs (in the IIIF service's id)
            query = source.split("?", 1)[1].split("=sky.fits")[0].rsplit("&", 1)[0]
            assert all(f"?{query}&" in r["url"] for r in tiles), (name, query)
        for shot in step["steps"]:
            std, distinct = image_stats(Path(shot["screenshot"]))
            assert distinct > 10 and std > (3 if "GAM" in source and shot["zoom"] >= 0.5
                                            else 0.1), (name, shot["zoom"], std, distinct)
        chroma = _chroma(Path(step["steps"][-1]["screenshot"]))
        assert (chroma > 20) if name == "iiif-jet" else (chroma < 2), (name, chroma)
    # the same pixels through the three protocols, at every zoom
    for zoom in range(len(result["steps"]["iiif"]["steps"])):
        shots = [_pixels(Path(result["steps"][name]["steps"][zoom]["screenshot"]))
                 for name in ("deepzoom", "zoomify", "iiif")]
        for other in shots[1:]:
            assert np.abs(other - shots[0]).mean() < 0.5, zoom


def _pixels(png: Path) -> np.ndarray:
    with Image.open(png) as im:
        return np.asarray(im.convert("RGB")).astype(np.int32)


def _chroma(png: Path) -> float:
    """Mean |R - G| + |G - B| of a screenshot."""
    rgb = _pixels(png)
    return float((np.abs(rgb[..., 0] - rgb[..., 1]) + np.abs(rgb[..., 1] - rgb[..., 2])).mean())
