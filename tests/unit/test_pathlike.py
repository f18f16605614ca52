"""IIIF, DeepZoom and Zoomify answered through the Application (no process, no socket):
the IIIF corpus end to end (status and decoded output size on FITS images of the
corpus's sizes), the tile path shared with JTL (same bytes, same cache entry), the
export path with the IIP modifiers written before the command, info.json and the
redirect's identifiers, If-Modified-Since, FILESYSTEM_PREFIX confinement, URI_MAP, and
bad input (never a 500)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from hypothesis import HealthCheck, given, settings as hsettings
from hypothesis import strategies as st
from PIL import Image

from iipy.imaging import render
from iipy.imaging.geometry import Grid
from iipy.protocols import deepzoom, iiif, zoomify
from iipy.protocols.http import http_date
from iipy.protocols.iip import tiles
from iipy.protocols.router import Application
from iipy.settings import Settings
from tests.unit.test_commands_extra import model_grey, model_level, smooth

CORPUS = sorted((Path(__file__).parent / "corpus" / "iiif").glob("*.json"))
HOST = {"HTTP_HOST": "iiif.example:8080", "SCRIPT_NAME": "/fcgi-bin/iipsrv.fcgi"}


def decode(body: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(body))
    image.load()
    return image


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """The served directory: g.fits (1001 x 701, smooth), c.fits (a 3-plane cube),
    one img.fits per corpus image size, and files outside or linked out."""
    base = tmp_path_factory.mktemp("pathlike")
    root = base / "root"
    root.mkdir()
    fits.PrimaryHDU(smooth(1001, 701)).writeto(root / "g.fits")
    data = smooth(600, 400)
    fits.PrimaryHDU(np.stack([data, data * 0.5, 130 - data])).writeto(root / "c.fits")
    for w, h in ((300, 200), (1001, 701), (1000, 1000), (200, 300), (301, 200)):
        (root / ("%dx%d" % (w, h))).mkdir()
        y, x = np.mgrid[0:h, 0:w]
        fits.PrimaryHDU(((x * 7 + y * 3) % 256).astype(np.uint8)).writeto(
            root / ("%dx%d" % (w, h)) / "img.fits")
    fits.PrimaryHDU(smooth(64, 64)).writeto(base / "secret.fits")
    (root / "link-out.fits").symlink_to(base / "secret.fits")
    (root / "dir").mkdir()
    (root / "dir" / "in dir.fits").symlink_to(root / "g.fits")
    return root


def make_app(root: Path, tmp_path: Path, **env) -> Application:
    values = {"FILESYSTEM_PREFIX": str(root) + "/", "IIPY_CACHE_DIR": str(tmp_path / "cache"),
              "VERBOSITY": "0", "MEMCACHED_SERVERS": "", "IIPY_SERVER": "iipsrv/1.1"}
    values.update({k: str(v) for k, v in env.items()})
    return Application(Settings.from_environ(values))


@pytest.fixture
def app(root, tmp_path) -> Application:
    return make_app(root, tmp_path)


def get(app: Application, query: str, status: int = 200, **params):
    request = {"QUERY_STRING": query, "REQUEST_URI": "/fcgi-bin/iipsrv.fcgi?" + query, **HOST}
    request.update(params)
    r = app.handle(request)
    assert r.status == status, (query, r.status, r.body[:300])
    return r


class RenderCount:
    """Counts tile renders (a cache hit renders nothing)."""

    def __init__(self, monkeypatch):
        self.n = 0
        original = tiles.tile_pixels

        def spy(*args, **kwargs):
            self.n += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(tiles, "tile_pixels", spy)


# --- the corpus, end to end -------------------------------------------------------------------


def corpus_cases() -> list[Path]:
    """The corpus cases the Application can run: a request on one of the images above,
    with MAX_CVT's limits (the limits of other servers are the pure layer's business)."""
    out = []
    for path in CORPUS:
        spec = json.loads(path.read_text())
        limits = set(spec.get("settings", {})) - {"allow_upscaling"}
        if "request" in spec and not limits and tuple(spec["image"]) != (6000, 4000):
            out.append(path)
    return out


@pytest.mark.parametrize("case", corpus_cases(), ids=lambda p: p.stem)
def test_iiif_corpus_through_the_server(root, tmp_path_factory, case):
    spec = json.loads(case.read_text())
    upscaling = spec.get("settings", {}).get("allow_upscaling", True)
    app = make_app(root, tmp_path_factory.mktemp("c"), IIIF_VERSION=spec.get("version", 3),
                   ALLOW_UPSCALING=int(upscaling))
    w, h = spec["image"]
    r = get(app, "IIIF=%dx%d/img.fits/%s" % (w, h, spec["request"]), spec["status"])
    if spec["status"] != 200:
        assert r.header("Content-Type") is None and 0 < len(r.body) <= 200
        return
    image = decode(r.body)
    assert list(image.size) == spec["size"]
    last = spec["request"].rsplit("/", 1)[-1].partition("?")[0].lower()
    fmt = last.rpartition(".")[2] if "." in last else "jpg"
    assert image.format == {"jpg": "JPEG", "png": "PNG", "webp": "WEBP", "avif": "AVIF"}[fmt]
    if spec.get("quality") in ("gray", "bitonal") and fmt != "webp":
        assert image.mode == "L"
    if spec.get("quality") == "bitonal":
        allowed = {0, 255} if fmt == "png" else set(range(0, 40)) | set(range(215, 256))
        assert set(np.unique(np.asarray(image.convert("L")))) <= allowed
    if "tiles" in spec:  # JTL's headers exactly when the request is one tile
        assert (r.header("Content-Disposition") is None) == (spec["tile"] is not None)


# --- tiles: the JTL path --------------------------------------------------------------------


def test_deepzoom_zoomify_and_iiif_tiles_are_jtl_tiles(app, monkeypatch):
    counter = RenderCount(monkeypatch)
    jtl = get(app, "FIF=g.fits&JTL=2,5")
    assert counter.n == 1
    grid = Grid(1001, 701, 256, 256)
    same = [
        "DeepZoom=g.fits_files/10/1_1.jpg",                 # D = 10, R = 3: level 10 is JTL 2
        "Zoomify=g.fits/TileGroup0/2-1-1.jpg",
        "IIIF=g.fits/256,256,256,256/256,/0/default.jpg",
        "IIIF=g.fits/256,256,256,256/max/0/color.jpg",
    ]
    for query in same:
        r = get(app, query)
        assert r.to_bytes() == jtl.to_bytes(), query
    # each answer is kept under its own request string: rendered once, then a hit
    assert counter.n == 1 + len(same)
    for query in same:
        assert get(app, query).to_bytes() == jtl.to_bytes(), query
    assert counter.n == 1 + len(same)
    assert deepzoom.tile(deepzoom.parse("g.fits_files/10/1_1.jpg"), grid) == (2, 5)
    # a smaller level, the corner tile (partial), and DeepZoom levels below the pyramid
    assert get(app, "DeepZoom=g.fits_files/9/1_1.jpg").body == get(app, "FIF=g.fits&JTL=1,3").body
    assert get(app, "IIIF=g.fits/512,512,489,189/244,/0/default.jpg").body == \
        get(app, "FIF=g.fits&JTL=1,3").body
    assert get(app, "DeepZoom=g.fits_files/3/0_0.jpg").body == get(app, "FIF=g.fits&JTL=0,0").body
    assert get(app, "Zoomify=g.fits/TileGroup7/0-0-0.jpg").body == \
        get(app, "FIF=g.fits&JTL=0,0").body


def test_tile_modifiers_and_rotation(app):
    """Modifiers before DeepZoom/Zoomify apply as before JTL, ROT included (iipsrv's
    JTL path); IIIF rotations are its own."""
    for mods in ("CMP=jet&MINMAX=1:0,60", "INV&GAM=0.5", "ROT=180&QLT=40"):
        want = get(app, "FIF=g.fits&%s&JTL=2,0" % mods).body
        assert get(app, "%s&DeepZoom=g.fits_files/10/0_0.jpg" % mods).body == want, mods
        assert get(app, "%s&Zoomify=g.fits/TileGroup0/2-0-0.jpg" % mods).body == want, mods
    coloured = decode(get(app, "MINMAX=1:0,60&CMP=jet&IIIF=g.fits/0,0,256,256/256,/0/default.jpg")
                      .body)
    assert coloured.mode == "RGB"
    # ROT does not turn IIIF tiles; IIIF's rotation turns them (through the export path)
    plain = get(app, "IIIF=g.fits/0,0,256,256/256,/0/default.jpg").body
    assert get(app, "ROT=90&IIIF=g.fits/0,0,256,256/256,/0/default.jpg").body == plain
    turned = get(app, "IIIF=g.fits/0,0,512,256/256,/90/default.png")
    assert decode(turned.body).size == (128, 256)


def test_tiles_out_of_range_are_404(app):
    for query in ("DeepZoom=g.fits_files/10/4_0.jpg", "DeepZoom=g.fits_files/10/0_3.jpg",
                  "Zoomify=g.fits/TileGroup0/3-0-0.jpg", "Zoomify=g.fits/TileGroup0/2-9-0.jpg",
                  "DeepZoom=g.fits_files/10/-1_0.jpg"):
        r = get(app, query, 404)
        assert r.header("Content-Type") is None and r.body


def test_descriptors_as_iipsrv(app):
    r = get(app, "DeepZoom=g.fits.dzi")
    grid = Grid(1001, 701, 256, 256)
    assert r.body == deepzoom.descriptor(grid)
    mtime = (Path(app.settings.filesystem_prefix) / "g.fits").stat().st_mtime
    assert r.headers == (("Server", "iipsrv/1.1"), ("Content-Type", "application/xml"),
                         ("Last-Modified", http_date(mtime)),
                         ("Cache-Control", "max-age=86400"), ("Content-Length", "180"))
    r = get(app, "Zoomify=g.fits/ImageProperties.xml")
    assert r.body == zoomify.descriptor(grid) == (
        b'<IMAGE_PROPERTIES WIDTH="1001" HEIGHT="701" NUMTILES="12" NUMIMAGES="1" '
        b'VERSION="1.8" TILESIZE="256" />')
    assert r.header("Content-Type") == "application/xml"
    assert get(app, "Zoomify=dir/in%20dir.fits/ImageProperties.xml").body == r.body


# --- the export path ------------------------------------------------------------------------


def test_iiif_export_pixels_and_modifiers(app):
    data = smooth(1001, 701)
    # a region at a size: the level-1 copy of the region, resampled (bilinear)
    r = get(app, "MINMAX=1:0,130&IIIF=g.fits/100,50,400,300/200,/0/default.png")
    assert r.header("Content-Disposition") == 'inline;filename="g.png"'
    got = np.asarray(decode(r.body)).astype(float)
    want = model_grey(model_level(data, 1)[25:175, 50:250], 0, 130)
    assert got.shape == (150, 200) and np.abs(got - want).max() <= 1
    # MINMAX and CMP before the command colour it (the example of the issue)
    jet = decode(get(app, "MINMAX=1:0,500&CMP=jet&IIIF=g.fits/full/512,/0/default.jpg").body)
    assert jet.mode == "RGB" and jet.size == (512, 359)
    rgb = np.asarray(jet).astype(int)
    assert np.abs(rgb[..., 0] - rgb[..., 2]).mean() > 30
    # gray of a colour mix, mirror + 180 (a vertical flip), bitonal
    cube = "MINMAX=1:0,130&MINMAX=2:0,130&MINMAX=3:0,130&IIIF=c.fits/full/300,/%s/%s.png"
    colour = np.asarray(decode(get(app, cube % ("0", "color")).body)).astype(int)
    grey = np.asarray(decode(get(app, cube % ("0", "gray")).body)).astype(int)
    assert colour.shape == (200, 300, 3) and grey.shape == (200, 300)
    lum = (colour[..., 0] * 19595 + colour[..., 1] * 38470 + colour[..., 2] * 7471) >> 16
    assert np.abs(grey - lum).max() <= 1
    flipped = np.asarray(decode(get(app, cube % ("!180", "color")).body)).astype(int)
    assert np.array_equal(flipped, colour[::-1])
    bitonal = np.asarray(decode(get(app, cube % ("90", "bitonal")).body))
    assert bitonal.shape == (300, 200) and set(np.unique(bitonal)) == {0, 255}
    # COL before the command is kept; ROT, WID, HEI and RGN are IIIF's own
    assert decode(get(app, "COL=grey&" + cube % ("0", "default")).body).mode == "L"
    same = get(app, "ROT=90&WID=10&HEI=20&RGN=0,0,0.1,0.1&" + cube % ("0", "default")).body
    assert np.array_equal(np.asarray(decode(same)), colour)


@pytest.mark.parametrize("fmt,pil", [("webp", "WEBP"), ("avif", "AVIF"), ("png", "PNG")])
def test_iiif_formats(app, fmt, pil):
    r = get(app, "IIIF=g.fits/full/200,/0/default.%s" % fmt)
    assert r.header("Content-Type") == "image/" + fmt
    assert r.header("Content-Disposition") == 'inline;filename="g.%s"' % fmt
    image = decode(r.body)
    assert image.format == pil and image.size == (200, 140)


def test_iiif_exports_are_cached(app, monkeypatch):
    calls = []
    original = render.export
    monkeypatch.setattr(render, "export", lambda *a, **k: calls.append(1) or original(*a, **k))
    query = "MINMAX=1:0,90&IIIF=g.fits/pct:10,10,50,50/!300,300/270/gray.jpg"
    first = get(app, query)
    assert get(app, query).to_bytes() == first.to_bytes()
    assert len(calls) == 1
    get(app, query.replace("270", "90"))
    get(app, query.replace("1:0,90", "1:0,91"))
    assert len(calls) == 3


# --- info.json and the redirect -------------------------------------------------------------


def test_info_json_v3_and_v2(root, tmp_path):
    grid = Grid(1001, 701, 256, 256)
    ident = "http://iiif.example:8080/fcgi-bin/iipsrv.fcgi?IIIF=g.fits"
    app = make_app(root, tmp_path, MAX_CVT=3000, CORS="*")
    r = get(app, "IIIF=g.fits/info.json")
    assert r.body == iiif.info_json_v3(ident, grid, 3000, 3000, 3000 * 3000,
                                       formats=("jpg", "png", "webp", "avif"))
    assert r.header("Content-Type") == \
        'application/ld+json;profile="http://iiif.io/api/image/3/context.json"'
    assert r.header("Access-Control-Allow-Origin") == "*"
    assert r.header("Cache-Control") == "max-age=86400"
    doc = json.loads(r.body)
    assert doc["tiles"] == [{"width": 256, "height": 256, "scaleFactors": [1, 2, 4]}]
    assert doc["sizes"] == [{"width": 250, "height": 175}, {"width": 500, "height": 350}]
    assert (doc["maxWidth"], doc["maxHeight"], doc["maxArea"]) == (3000, 3000, 9000000)
    assert doc["extraFormats"] == ["webp", "avif"]
    # the Accept header asks for 2.1: that document, not for shared caches
    v2 = get(app, "IIIF=g.fits/info.json",
             HTTP_ACCEPT='application/ld+json;profile="http://iiif.io/api/image/2/context.json"')
    assert v2.body == iiif.info_json_v2(ident, grid, 3000, 3000, 3000 * 3000,
                                        formats=("jpg", "png", "webp", "avif"))
    assert v2.header("Cache-Control") == "private"
    assert v2.header("Content-Type").startswith("application/ld+json")
    # IIIF_VERSION=2: 2.1 by default, plain JSON unless JSON-LD is asked for (its §5.1)
    app2 = make_app(root, tmp_path, IIIF_VERSION=2, ALLOW_UPSCALING=0)
    r = get(app2, "IIIF=g.fits/info.json")
    assert json.loads(r.body)["@context"] == "http://iiif.io/api/image/2/context.json"
    assert r.header("Content-Type") == "application/json"
    assert "sizeAboveFull" not in json.loads(r.body)["profile"][1]["supports"]
    assert get(app2, "IIIF=g.fits/info.json", HTTP_ACCEPT="application/ld+json").header(
        "Content-Type") == 'application/ld+json;profile="http://iiif.io/api/image/2/context.json"'


def test_info_json_rights_and_extra_info(root, tmp_path):
    app = make_app(root, tmp_path, COPYRIGHT="https://creativecommons.org/licenses/by/4.0/",
                   IIIF_EXTRA_INFO='"preferredFormats": ["webp"], "id": "ignored"')
    doc = json.loads(get(app, "IIIF=g.fits/info.json").body)
    assert doc["rights"] == "https://creativecommons.org/licenses/by/4.0/"
    assert doc["preferredFormats"] == ["webp"] and doc["id"].startswith("http://iiif.example")
    app = make_app(root, tmp_path, IIIF_VERSION=2, COPYRIGHT="Observatory of Nowhere",
                   IIIF_EXTRA_INFO='{"logo": "http://example.org/logo.png"}')
    doc = json.loads(get(app, "IIIF=g.fits/info.json").body)
    assert doc["attribution"] == "Observatory of Nowhere"
    assert doc["logo"] == "http://example.org/logo.png"
    app = make_app(root, tmp_path, IIIF_EXTRA_INFO="not json at all")
    assert set(json.loads(get(app, "IIIF=g.fits/info.json").body)) >= {"id", "tiles"}


@pytest.mark.parametrize("params,env,location", [
    ({}, {}, "http://iiif.example:8080/fcgi-bin/iipsrv.fcgi?IIIF=g.fits/info.json"),
    ({"HTTPS": "on"}, {}, "https://iiif.example:8080/fcgi-bin/iipsrv.fcgi?IIIF=g.fits/info.json"),
    ({"HTTP_X_FORWARDED_PROTO": "https", "HTTP_X_FORWARDED_HOST": "images.example"}, {},
     "https://images.example/fcgi-bin/iipsrv.fcgi?IIIF=g.fits/info.json"),
    ({"HTTP_X_IIIF_ID": "https://id.example/m31"}, {}, "https://id.example/m31/info.json"),
    ({}, {"BASE_URL": "https://base.example/iiif/"}, "https://base.example/iiif/g.fits/info.json"),
])
def test_redirect_and_identifiers(root, tmp_path, params, env, location):
    app = make_app(root, tmp_path, **env)
    r = get(app, "IIIF=g.fits", 303, **params)
    assert r.headers == (("Status", "303 See Other"), ("Location", location),
                         ("Server", "iipsrv/1.1"), ("Content-Length", "0"))
    doc = json.loads(get(app, "IIIF=g.fits/info.json", **params).body)
    assert doc["id"] + "/info.json" == location


@pytest.mark.parametrize("query,params", [
    ("IIIF=" + "9" * 5000, {}),
    ("IIIF=g.fits&JUNK=" + "9" * 3000, {}),  # the identifier holds the whole REQUEST_URI
    ("IIIF=g.fits", {"HTTP_X_IIIF_ID": "https://id.example/" + "m" * 3000}),
])
def test_redirect_too_long_for_a_header_is_a_400(app, query, params):
    """A Location of kilobytes made a header block larger than nginx's buffer for it
    (fastcgi_buffer_size, 4 kB by default): nginx answered 502 Bad Gateway.  Beyond 2 kB
    the redirect is refused with a 400; a long request with a short identifier is not."""
    r = get(app, query, 400, **params)
    assert b"too long" in r.body and r.header("Location") is None
    assert len(r.to_bytes()) < 1024
    r = get(app, "IIIF=g.fits&JUNK=" + "9" * 1500, 303)
    assert len(r.header("Location")) < 2048


def test_uri_map_path_style(root, tmp_path):
    app = make_app(root, tmp_path, URI_MAP="iiif=>IIIF,deepzoom=>DeepZoom,zoomify=>Zoomify")

    def path(uri: str, status: int = 200):
        r = app.handle({"REQUEST_URI": uri, "QUERY_STRING": "", **HOST})
        assert r.status == status, (uri, r.status, r.body[:200])
        return r

    doc = json.loads(path("/iiif/g.fits/info.json").body)
    assert doc["id"] == "http://iiif.example:8080/iiif/g.fits"
    assert path("/iiif/g.fits", 303).header("Location") == \
        "http://iiif.example:8080/iiif/g.fits/info.json"
    tile = path("/iiif/g.fits/0,0,256,256/256,/0/default.jpg")
    assert tile.body == get(app, "FIF=g.fits&JTL=2,0").body
    assert decode(path("/iiif/dir%2Fin%20dir.fits/full/max/0/default.jpg?x=1").body).size == \
        (1001, 701)
    assert path("/deepzoom/g.fits.dzi").body == deepzoom.descriptor(Grid(1001, 701, 256, 256))
    assert path("/zoomify/g.fits/TileGroup0/0-0-0.jpg").body == get(app, "FIF=g.fits&JTL=0,0").body
    # the query-string endpoint still answers
    assert get(app, "FIF=g.fits&JTL=0,0").status == 200


# --- If-Modified-Since ------------------------------------------------------------------------


@pytest.mark.parametrize("query", [
    "IIIF=g.fits/info.json", "IIIF=g.fits/0,0,256,256/256,/0/default.jpg",
    "IIIF=g.fits/full/100,/0/default.png", "DeepZoom=g.fits.dzi",
    "DeepZoom=g.fits_files/8/0_0.jpg", "Zoomify=g.fits/ImageProperties.xml",
    "Zoomify=g.fits/TileGroup0/1-0-0.jpg", "CMP=jet&MINMAX=1:0,3&IIIF=g.fits/full/9,/0/default.jpg",
])
def test_if_modified_since(app, root, query):
    mtime = (root / "g.fits").stat().st_mtime
    r = get(app, query, 304, HTTP_IF_MODIFIED_SINCE=http_date(mtime))
    assert r.to_bytes() == b"Status: 304 Not Modified\r\nServer: iipsrv/1.1\r\n\r\n"
    assert get(app, query, HTTP_IF_MODIFIED_SINCE=http_date(mtime - 1)).body


# --- confinement and bad input ---------------------------------------------------------------


@pytest.mark.parametrize("ident", [
    "link-out.fits",                        # a symbolic link out of the prefix
    "..%2Fsecret.fits", "%2E%2E/secret.fits", "%2e%2e%2fsecret.fits",
    "....//secret.fits", "/etc/passwd", "%2Fetc%2Fpasswd", "../../../../etc/passwd",
    "dir/../../secret.fits", "missing.fits", "dir", "..", "%00secret.fits",
])
def test_identifiers_are_confined(app, ident):
    for query in ("IIIF=%s/info.json", "IIIF=%s/full/max/0/default.jpg", "DeepZoom=%s.dzi",
                  "DeepZoom=%s_files/10/0_0.jpg", "Zoomify=%s/ImageProperties.xml",
                  "Zoomify=%s/TileGroup0/0-0-0.jpg"):
        r = get(app, query % ident, 404)
        assert b"secret" not in r.body or ident.endswith("secret.fits")
        assert str(app.settings.filesystem_prefix).encode() not in r.body


@pytest.mark.parametrize("query,status", [
    ("IIIF=g.fits/full/max/0/default.tif", 400),
    ("IIIF=g.fits/full/max/0/colour.jpg", 400),
    ("IIIF=g.fits/full/max/33/default.jpg", 400),
    ("IIIF=g.fits/full/max/-90/default.jpg", 400),
    ("IIIF=g.fits/0,0,0,10/max/0/default.jpg", 400),
    ("IIIF=g.fits/2000,0,10,10/max/0/default.jpg", 400),
    ("IIIF=g.fits/full/0,/0/default.jpg", 400),
    ("IIIF=g.fits/full/2000,/0/default.jpg", 400),        # 3.0: larger than the region, no ^
    ("IIIF=g.fits/full/^99999999999999999999,/0/default.jpg", 400),   # beyond maxWidth
    ("IIIF=g.fits/full/^5000,5001/0/default.jpg", 400),   # beyond maxHeight
    ("IIIF=g.fits/full/max/0", 400),
    ("IIIF=g.fits/full", 400),
    ("IIIF=/info.json", 400),
    ("IIIF=%2Finfo.json", 400),
    ("DeepZoom=.dzi", 400),
    ("DeepZoom=g.fits", 400),
    ("Zoomify=g.fits", 400),
    ("Zoomify=g.fits/Tiles/0-0-0.jpg", 400),
])
def test_malformed_requests(app, query, status):
    r = get(app, query, status)
    assert r.header("Content-Type") is None and 0 < len(r.body) <= 200


def test_sizes_are_bounded_by_max_cvt(root, tmp_path):
    app = make_app(root, tmp_path, MAX_CVT=300)
    assert decode(get(app, "IIIF=g.fits/full/max/0/default.jpg").body).size == (300, 210)
    assert decode(get(app, "IIIF=g.fits/full/^max/0/default.jpg").body).size == (300, 210)
    assert decode(get(app, "IIIF=g.fits/full/!9999,9999/0/default.jpg").body).size == (300, 210)
    get(app, "IIIF=g.fits/full/301,/0/default.jpg", 400)
    app2 = make_app(root, tmp_path, MAX_CVT=300, IIIF_VERSION=2)
    assert decode(get(app2, "IIIF=g.fits/full/full/0/default.jpg").body).size == (300, 210)
    get(app2, "IIIF=g.fits/full/301,/0/default.jpg", 404)       # 2.1: 404 (its §7.2)
    app3 = make_app(root, tmp_path, ALLOW_UPSCALING=0)
    get(app3, "IIIF=g.fits/full/^2000,/0/default.jpg", 501)
    app4 = make_app(root, tmp_path, ALLOW_UPSCALING=0, IIIF_VERSION=2)
    get(app4, "IIIF=g.fits/full/2000,/0/default.jpg", 501)


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command=st.sampled_from(["IIIF", "DeepZoom", "Zoomify", "iiif"]),
       parts=st.lists(st.one_of(
           st.sampled_from(["g.fits", "c.fits", "full", "max", "^max", "square", "0", "!90",
                            "default.jpg", "gray.png", "info.json", "pct:50,50,50,50", "1,2,3,4",
                            "!10,10", "^10,", ",10", "pct:200", "..", "", "%2F", "%00",
                            "TileGroup0", "g.fits_files", "1_1.jpg", "0-0-0.jpg", "g.fits.dzi",
                            "ImageProperties.xml"]),
           st.text(max_size=8)), max_size=7),
       prefix=st.sampled_from(["", "MINMAX=1:0,9&", "CMP=jet&ROT=90&", "FIF=c.fits&QLT=5&"]))
def test_no_request_gets_a_500(app, command, parts, prefix):
    query = "%s%s=%s" % (prefix, command, "/".join(parts))
    r = app.handle({"QUERY_STRING": query, **HOST})
    assert r.status in (200, 303, 400, 404, 501), (query, r.status, r.body[:200])


# --- TIFF: the same protocols behind the ImageSource interface ----------------------------


def test_tiff_images_answer_every_protocol(tmp_path):
    """An 8-bit RGB pyramidal TIFF (600 x 400, a stored 300 x 200 level) through IIIF,
    DeepZoom and Zoomify: its sizes, its tiles as JTL's, its stored level exported as
    it is (8-bit samples without float processing), and modifiers that change it."""
    from tests.unit._tiff_files import mean_2x2, smooth_rgb, write_levels

    full = smooth_rgb(600, 400)
    half = np.rint(mean_2x2(full)).astype(np.uint8)
    root = tmp_path / "tiff"
    root.mkdir()
    write_levels(root / "rgb.tif", [full, half])
    app = make_app(root, tmp_path)
    doc = json.loads(get(app, "IIIF=rgb.tif/info.json").body)
    assert (doc["width"], doc["height"]) == (600, 400)
    assert doc["tiles"] == [{"width": 256, "height": 256, "scaleFactors": [1, 2]}]
    assert doc["sizes"] == [{"width": 300, "height": 200}]
    assert get(app, "DeepZoom=rgb.tif.dzi").body == deepzoom.descriptor(Grid(600, 400, 256, 256))
    jtl = get(app, "FIF=rgb.tif&JTL=1,1").body
    assert get(app, "IIIF=rgb.tif/256,0,256,256/256,/0/default.jpg").body == jtl
    assert get(app, "DeepZoom=rgb.tif_files/10/1_0.jpg").body == jtl
    assert get(app, "Zoomify=rgb.tif/TileGroup0/1-1-0.jpg").body == jtl
    stored = np.asarray(decode(get(app, "IIIF=rgb.tif/full/300,/0/default.png").body))
    assert np.array_equal(stored, half)
    inverted = np.asarray(decode(get(app, "INV&IIIF=rgb.tif/full/300,/0/default.png").body))
    assert np.abs(inverted.astype(int) - (255 - half.astype(int))).max() <= 1
