"""IIIF Image API 3.0 and 2.1: the request corpus, the info.json bytes, the service
identifier, and property-based tests of the parser, the resolver and the tile test.

corpus/iiif/*.json: one request per file: the path after the identifier (``request``)
or the whole argument (``argument``), the image size, the settings (maxWidth,
maxHeight, maxArea, ALLOW_UPSCALING; MAX_CVT = 5000 by default) and the version (3 by
default), and the expected status with the region and output size (or the info or
redirect identifier, or the JTL tile for a 256x256 grid).  ``feature`` names the row of
the specification's compliance table the case exercises.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from iipy.imaging.geometry import Grid
from iipy.protocols import iiif
from iipy.protocols.iiif import (IIIFError, IIIFImageRequest, IIIFInfoRequest, IIIFRedirect, Region,
                                 Rotation, Size)

CORPUS = sorted((Path(__file__).parent / "corpus" / "iiif").glob("*.json"))
MAX_CVT = 5000


def run_case(spec: dict) -> tuple[object, object]:
    """(request, plan or None) for a corpus case; raises what parse/resolve raise."""
    version = spec.get("version", 3)
    argument = spec.get("argument")
    if argument is None:
        argument = "img.fits/" + spec["request"]
    request = iiif.parse(argument, version)
    if not isinstance(request, IIIFImageRequest):
        return request, None
    limits = spec.get("settings", {})
    max_width = limits.get("max_width", MAX_CVT)
    plan = iiif.resolve(request, *spec["image"], max_width, limits.get("max_height", max_width),
                        limits.get("max_area"), limits.get("allow_upscaling", True))
    return request, plan


@pytest.mark.parametrize("case", CORPUS, ids=[p.stem for p in CORPUS])
def test_iiif_corpus(case):
    spec = json.loads(case.read_text())
    version = spec.get("version", 3)
    if spec["status"] >= 400:
        with pytest.raises(IIIFError) as exc:
            run_case(spec)
        assert exc.value.status_code == spec["status"], str(exc.value)
        assert exc.value.status.startswith(str(spec["status"]) + " ")
        assert 0 < len(exc.value.message) <= 200
        return
    request, plan = run_case(spec)
    if "info" in spec:
        assert request == IIIFInfoRequest(spec["info"], version)
        return
    if "redirect" in spec:
        assert request == IIIFRedirect(spec["redirect"])
        return
    assert isinstance(request, IIIFImageRequest)
    assert plan is not None
    assert list(plan.region) == spec["region"]
    assert list(plan.size) == spec["size"]
    for field in ("rotation", "mirror", "quality", "format"):
        if field in spec:
            assert getattr(plan, field) == spec[field], field
    if "identifier" in spec:
        assert request.identifier == spec["identifier"]
    if "tiles" in spec:
        grid = Grid(*spec["image"], *spec["tiles"])
        expected = tuple(spec["tile"]) if spec["tile"] is not None else None
        assert iiif.tile_of(plan, grid) == expected


#: Every row of the IIIF Image API 3.0 compliance tables (region, size, rotation,
#: quality, format) and the level 2 HTTP feature answered by this layer.
COMPLIANCE_ROWS = {
    "full", "regionByPx", "regionByPct", "regionSquare",
    "max", "sizeByW", "sizeByH", "sizeByPct", "sizeByConfinedWh", "sizeByWh", "sizeUpscaling",
    "rotation 0", "rotationBy90s", "rotationArbitrary", "mirroring",
    "default quality", "color", "gray", "bitonal",
    "jpg", "png", "webp", "baseUriRedirect", "info.json",
    "maxWidth", "maxHeight", "maxArea",
}


def test_corpus_covers_the_compliance_table():
    features: dict[str, set[int]] = {}
    for case in CORPUS:
        spec = json.loads(case.read_text())
        if spec.get("version", 3) == 3:
            features.setdefault(spec["feature"], set()).add(spec["status"])
    assert COMPLIANCE_ROWS <= set(features), sorted(COMPLIANCE_ROWS - set(features))
    # each supported feature has an accepted case; invalid forms have their own cases
    for row in COMPLIANCE_ROWS - {"rotationArbitrary", "maxWidth", "maxHeight", "maxArea"}:
        assert 200 in features[row] or 303 in features[row], row
    for invalid in ("invalid region", "invalid size", "invalid rotation", "invalid quality",
                    "unsupported format", "invalid request"):
        assert features[invalid] == {400}, invalid
    # upscaling: 501 when switched off, 400 without ^ (3.0)
    assert 501 in features["sizeUpscaling"]
    for row in ("sizeByW", "sizeByH", "sizeByPct", "sizeByWh"):
        assert 400 in features[row], row


# --- parser values ----------------------------------------------------------------------------


def test_parse_values():
    req = iiif.parse("dir/m31.fits/pct:1.5,2,30,40/^!300,200/!90/gray.png")
    assert req == IIIFImageRequest(
        "dir/m31.fits", 3, Region("percent", iiif.Fraction(3, 2), 2, 30, 40),
        Size("confined", True, 300, 200), Rotation(90, True), "gray", "png")
    assert iiif.parse("m31.fits/full/max/0/native", 2) == IIIFImageRequest(
        "m31.fits", 2, Region("full"), Size("max"), Rotation(0, False), "default", "jpg")
    assert iiif.parse("m31.fits") == IIIFRedirect("m31.fits")
    assert iiif.parse("a/b/info.json", 2) == IIIFInfoRequest("a/b", 2)


def test_formats_can_be_restricted_to_what_the_encoder_has():
    with pytest.raises(iiif.IIIFBadRequest):
        iiif.parse("a/full/max/0/default.avif", formats=("jpg", "png", "webp"))
    assert iiif.parse("a/full/max/0/default.webp", formats=("jpg", "webp")).format == "webp"


def test_plan_helpers():
    plan = iiif.resolve(iiif.parse("a/full/150,/90/bitonal.webp"), 300, 200, 5000)
    assert plan.size == (100, 150) and (plan.out_w, plan.out_h) == (150, 100)
    assert plan.colour == "binary" and plan.media_type == "image/webp"
    assert iiif.resolve(iiif.parse("a/full/max/0/gray.jpg"), 3, 2, 64).colour == "grey"
    assert iiif.resolve(iiif.parse("a/full/max/0/color.jpg"), 3, 2, 64).colour is None


@pytest.mark.parametrize("request_path,level,window", [
    ("full/250,175", 2, (0, 0, 250, 175)),
    ("full/251,176", 1, (0, 0, 500, 350)),
    ("full/max", 0, (0, 0, 1001, 701)),
    ("0,0,512,512/256,256", 1, (0, 0, 256, 256)),
    ("512,0,489,512/244,256", 1, (256, 0, 244, 256)),
    ("100,100,400,400/100,100", 2, (25, 25, 100, 100)),
    ("101,101,400,400/100,100", 2, (25, 25, 101, 101)),
    ("101,101,400,400/102,102", 1, (50, 50, 201, 201)),
    ("1000,700,1,1/max", 0, (1000, 700, 1, 1)),
])
def test_source_window(request_path, level, window):
    plan = iiif.resolve(iiif.parse("a/%s/0/default.jpg" % request_path), 1001, 701, 5000)
    assert iiif.source_window(plan, Grid(1001, 701, 256, 256)) == (level, window)


def test_small_image_is_one_tile():
    plan = iiif.resolve(iiif.parse("a/full/max/0/default.jpg"), 200, 100, 5000)
    assert iiif.tile_of(plan, Grid(200, 100, 256, 256)) == (0, 0)


def test_messages_do_not_echo_long_input():
    with pytest.raises(IIIFError) as exc:
        iiif.parse("a/" + "x" * 10000 + "/max/0/default.jpg")
    assert len(exc.value.message) < 150


def test_messages_are_printable_ascii():
    with pytest.raises(IIIFError) as exc:
        iiif.parse("a/\ud800\r\n\u00e9\udcff/max/0/default.jpg")
    assert exc.value.message == "IIIF: incorrect region format: \\ud800\\r\\n\\xe9\\udcff"


# --- info.json --------------------------------------------------------------------------------

GRID = Grid(1001, 701, 256, 256)
R11_ID = "http://localhost:9180/fcgi-bin/iipsrv.fcgi?IIIF=grey8.tif"

#: iipsrv 1.1's info.json for a 1001x701 image, 256x256 tiles, MAX_CVT 5000.
R11_INFO = (
    b'{\n'
    b'  "@context" : "http://iiif.io/api/image/2/context.json",\n'
    b'  "@id" : "http://localhost:9180/fcgi-bin/iipsrv.fcgi?IIIF=grey8.tif",\n'
    b'  "protocol" : "http://iiif.io/api/image",\n'
    b'  "width" : 1001,\n'
    b'  "height" : 701,\n'
    b'  "sizes" : [\n'
    b'     { "width" : 250, "height" : 175 },\n'
    b'     { "width" : 500, "height" : 350 }\n'
    b'  ],\n'
    b'  "tiles" : [\n'
    b'     { "width" : 256, "height" : 256, "scaleFactors" : [ 1, 2, 4 ] }\n'
    b'  ],\n'
    b'  "profile" : [\n'
    b'     "http://iiif.io/api/image/2/level1.json",\n'
    b'     { "formats" : [ "jpg" ],\n'
    b'       "qualities" : [ "native","color","gray","bitonal" ],\n'
    b'       "supports" : ["regionByPct","regionSquare","sizeByForcedWh","sizeByWh",'
    b'"sizeAboveFull","rotationBy90s","mirroring"],\n'
    b'       "maxWidth" : 5000,\n'
    b'       "maxHeight" : 5000\n'
    b'     }\n'
    b'  ]\n'
    b'}'
)


def test_info_v2_reproduces_iipsrv_11_bytes():
    assert iiif.info_json_v2(R11_ID, GRID, 5000, **iiif.V2_LEVEL1_PROFILE) == R11_INFO


def test_info_v2_level2_bytes():
    body = iiif.info_json_v2(R11_ID, GRID, 5000, 5000, 25000000,
                             copyright="Copyright the observatory",
                             extra={"preferredFormats": ["png"], "width": 1})
    assert body == R11_INFO.replace(b"level1", b"level2").replace(
        b'[ "jpg" ]', b'[ "jpg","png","webp","avif" ]').replace(
        b'[ "native","color","gray","bitonal" ]',
        b'[ "default","color","gray","bitonal" ]').replace(
        b'["regionByPct","regionSquare","sizeByForcedWh","sizeByWh","sizeAboveFull",'
        b'"rotationBy90s","mirroring"]', b'["regionSquare","mirroring","sizeAboveFull"]').replace(
        b'"maxHeight" : 5000\n', b'"maxHeight" : 5000,\n       "maxArea" : 25000000\n').replace(
        b'  ]\n}', b'  ],\n  "attribution" : "Copyright the observatory",\n'
                   b'  "preferredFormats" : ["png"]\n}')
    doc = json.loads(body)
    assert doc["width"] == 1001  # IIIF_EXTRA_INFO never replaces a computed field
    assert doc["profile"][0] == "http://iiif.io/api/image/2/level2.json"


def test_info_v2_license_and_upscaling_off():
    doc = json.loads(iiif.info_json_v2("http://h/a", GRID, 5000, upscaling=False,
                                       copyright="https://creativecommons.org/licenses/by/4.0/"))
    assert doc["license"] == "https://creativecommons.org/licenses/by/4.0/"
    assert "attribution" not in doc
    assert "sizeAboveFull" not in doc["profile"][1]["supports"]


def test_info_v2_escapes_the_identifier():
    body = iiif.info_json_v2('http://h/a"b\\c', GRID, 5000)
    assert b'"@id" : "http://h/a\\"b\\\\c",' in body
    assert json.loads(body)["@id"] == 'http://h/a"b\\c'


def test_info_v2_sizes_within_limits_only():
    doc = json.loads(iiif.info_json_v2("http://h/a", Grid(20000, 10000, 256, 256), 5000))
    assert [s["width"] for s in doc["sizes"]] == [156, 312, 625, 1250, 2500, 5000]
    assert doc["tiles"][0]["scaleFactors"] == [1, 2, 4, 8, 16, 32, 64, 128]
    doc = json.loads(iiif.info_json_v2("http://h/a", Grid(200, 100, 256, 256), 5000))
    assert doc["sizes"] == [] and doc["tiles"][0]["scaleFactors"] == [1]


def test_info_v3_bytes():
    body = iiif.info_json_v3("http://h/iiif/m31.fits", GRID, 5000, 5000, 25000000,
                             copyright="http://creativecommons.org/licenses/by/4.0/",
                             extra=iiif.extra_info('"preferredFormats": ["webp"], "id": "x"'))
    assert body == (
        b'{\n'
        b'  "@context": "http://iiif.io/api/image/3/context.json",\n'
        b'  "id": "http://h/iiif/m31.fits",\n'
        b'  "type": "ImageService3",\n'
        b'  "protocol": "http://iiif.io/api/image",\n'
        b'  "profile": "level2",\n'
        b'  "width": 1001,\n'
        b'  "height": 701,\n'
        b'  "maxWidth": 5000,\n'
        b'  "maxHeight": 5000,\n'
        b'  "maxArea": 25000000,\n'
        b'  "sizes": [{"width": 250, "height": 175}, {"width": 500, "height": 350}],\n'
        b'  "tiles": [{"width": 256, "height": 256, "scaleFactors": [1, 2, 4]}],\n'
        b'  "extraFormats": ["webp", "avif"],\n'
        b'  "extraQualities": ["color", "gray", "bitonal"],\n'
        b'  "extraFeatures": ["mirroring", "sizeUpscaling"],\n'
        b'  "rights": "http://creativecommons.org/licenses/by/4.0/",\n'
        b'  "preferredFormats": ["webp"]\n'
        b'}')


def test_info_v3_rights_only_for_a_uri_and_no_upscaling_feature_when_off():
    doc = json.loads(iiif.info_json_v3("http://h/a", GRID, 3000, formats=("jpg", "png"),
                                       qualities=("gray",), upscaling=False,
                                       copyright="All rights reserved"))
    assert "rights" not in doc and "extraFormats" not in doc
    assert doc["extraQualities"] == ["gray"]
    assert doc["extraFeatures"] == ["mirroring"]
    assert doc["maxWidth"] == doc["maxHeight"] == 3000 and "maxArea" not in doc
    assert list(doc)[:5] == ["@context", "id", "type", "protocol", "profile"]


@pytest.mark.parametrize("text,value", [
    ('"preferredFormats": ["webp"]', {"preferredFormats": ["webp"]}),
    ('"a": 1, "b": {"c": [2]}', {"a": 1, "b": {"c": [2]}}),
    ('{"a": 1}', {"a": 1}),
    ("", None), ("   ", None), ("[1, 2]", None), ('"a": ', None), ("nonsense", None),
    ('"a": 1,', None)])
def test_extra_info(text, value):
    assert iiif.extra_info(text) == value


# --- identifiers, version, media type ---------------------------------------------------------

ENV = {"HTTP_HOST": "localhost:9180",
       "REQUEST_URI": "/fcgi-bin/iipsrv.fcgi?IIIF=grey8.tif/info.json"}


def test_service_id_as_iipsrv_11():
    assert iiif.service_id(ENV, "grey8.tif/info.json") == R11_ID
    redirect = dict(ENV, REQUEST_URI="/fcgi-bin/iipsrv.fcgi?IIIF=grey8.tif")
    # the verified Location of iipsrv 1.1's 303
    assert iiif.redirect_location(iiif.service_id(redirect, "grey8.tif")) == \
        "http://localhost:9180/fcgi-bin/iipsrv.fcgi?IIIF=grey8.tif/info.json"


@pytest.mark.parametrize("extra,expected", [
    ({"HTTPS": "on"}, "https://localhost:9180/fcgi-bin/iipsrv.fcgi?IIIF=grey8.tif"),
    ({"HTTPS": "off"}, "http://localhost:9180/fcgi-bin/iipsrv.fcgi?IIIF=grey8.tif"),
    ({"HTTP_X_FORWARDED_PROTO": "https", "HTTP_X_FORWARDED_HOST": "example.org, proxy:8080"},
     "https://example.org/fcgi-bin/iipsrv.fcgi?IIIF=grey8.tif"),
    ({"HTTP_X_FORWARDED_PROTO": "gopher"},
     "http://localhost:9180/fcgi-bin/iipsrv.fcgi?IIIF=grey8.tif"),
    ({"HTTP_X_IIIF_ID": "https://iiif.example.org/images/grey8/"},
     "https://iiif.example.org/images/grey8"),
    ({"HTTP_HOST": "", "SERVER_NAME": "iip.local", "SERVER_PORT": "8080"},
     "http://iip.local:8080/fcgi-bin/iipsrv.fcgi?IIIF=grey8.tif"),
    ({"HTTP_HOST": "", "SERVER_NAME": "iip.local", "SERVER_PORT": "80"},
     "http://iip.local/fcgi-bin/iipsrv.fcgi?IIIF=grey8.tif"),
    ({"REQUEST_URI": "", "SCRIPT_NAME": "/iip", "QUERY_STRING": "IIIF=grey8.tif/info.json"},
     "http://localhost:9180/iip?IIIF=grey8.tif"),
    ({"REQUEST_URI": "/iip?CMP=jet&IIIF=grey8.tif/info.json&x=1"},
     "http://localhost:9180/iip?CMP=jet&IIIF=grey8.tif"),
])
def test_service_id_from_the_request(extra, expected):
    assert iiif.service_id(dict(ENV, **extra), "grey8.tif/info.json") == expected


def test_service_id_with_base_url_and_uri_map():
    assert iiif.service_id(ENV, "grey8.tif/info.json", "https://example.org/iiif/") == \
        "https://example.org/iiif/grey8.tif"
    assert iiif.service_id(ENV, "grey8.tif", "https://example.org/iiif/") == \
        "https://example.org/iiif/grey8.tif"
    mapped = {"HTTP_HOST": "h", "REQUEST_URI": "/iiif/dir%2Fa.fits/info.json?x=1"}
    assert iiif.service_id(mapped, "dir%2Fa.fits/info.json", mapped=True) == \
        "http://h/iiif/dir%2Fa.fits"
    mapped = {"HTTP_HOST": "h", "REQUEST_URI": "/iiif/a.fits?x=1"}
    assert iiif.service_id(mapped, "a.fits", mapped=True) == "http://h/iiif/a.fits"


def test_service_id_is_safe_in_a_header():
    env = {"HTTP_HOST": "h", "REQUEST_URI": "/iip?IIIF=a b\r\né\udcff/info.json"}
    assert iiif.service_id(env, "x") == "http://h/iip?IIIF=a%20b%0D%0A%C3%A9%FF"


def test_raw_argument():
    assert iiif.raw_argument("CMP=jet&iiif=a%2Fb.fits/info.json&x=1") == "a%2Fb.fits/info.json"
    assert iiif.raw_argument("IIIF=&IIIF=a") == "a"
    assert iiif.raw_argument("FIF=a&JTL=0,0") is None


@pytest.mark.parametrize("default,accept,version", [
    (3, "", 3), (2, "", 2),
    (3, 'application/ld+json;profile="http://iiif.io/api/image/2/context.json"', 2),
    (2, 'application/ld+json;profile="http://iiif.io/api/image/3/context.json"', 3),
    (3, 'application/ld+json;profile="http://iiif.io/api/image/4/context.json"', 3),
])
def test_negotiate_version(default, accept, version):
    assert iiif.negotiate_version(default, accept) == version


@pytest.mark.parametrize("version,accept,content_type", [
    (3, "", 'application/ld+json;profile="http://iiif.io/api/image/3/context.json"'),
    (3, "*/*", 'application/ld+json;profile="http://iiif.io/api/image/3/context.json"'),
    (3, "application/json", "application/json"),
    (2, "", "application/json"),
    (2, "application/ld+json",
     'application/ld+json;profile="http://iiif.io/api/image/2/context.json"'),
])
def test_info_content_type(version, accept, content_type):
    assert iiif.info_content_type(version, accept) == content_type


# --- properties -------------------------------------------------------------------------------

NUMBER = st.one_of(st.integers(0, 3000).map(str),
                   st.sampled_from(["0", "00", "1.5", ".5", "1.", "", "-1", "+1", "1e3", "x",
                                    "9" * 30]))
SEGMENT = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["full", "square", "max", "^max", "pct:", "!", "^", "^!", "0", "90", "!180",
                     "default.jpg", "gray.png", "native", "info.json", ""]),
    st.builds(lambda p, a, b, c, d: p + ",".join([a, b, c, d]),
              st.sampled_from(["", "pct:"]), NUMBER, NUMBER, NUMBER, NUMBER),
    st.builds(lambda p, a, b: p + a + "," + b,
              st.sampled_from(["", "^", "!", "^!"]), NUMBER, NUMBER),
)
ARGUMENT = st.one_of(
    st.text(max_size=80),
    st.lists(SEGMENT, min_size=1, max_size=7).map("/".join),
)
LIMITS = st.tuples(st.integers(1, 6000), st.integers(1, 6000),
                   st.one_of(st.none(), st.integers(1, 36_000_000)), st.booleans())


@settings(max_examples=600, deadline=None)
@given(ARGUMENT, st.sampled_from([2, 3]), st.integers(1, 20000), st.integers(1, 20000), LIMITS)
def test_parse_and_resolve_raise_only_iiif_errors(argument, version, width, height, limits):
    """Whatever the argument: a value or a IIIFError (400, 404 or 501); a plan always
    has its region inside the image and its output within the limits."""
    max_width, max_height, max_area, upscaling = limits
    try:
        request = iiif.parse(argument, version)
        if not isinstance(request, IIIFImageRequest):
            return
        plan = iiif.resolve(request, width, height, max_width, max_height, max_area, upscaling)
    except IIIFError as exc:
        assert exc.status_code in (400, 404, 501)
        assert exc.status_code != 404 or version == 2
        return
    x, y, w, h = plan.region
    assert 0 <= x < width and 0 <= y < height and w >= 1 and h >= 1
    assert x + w <= width and y + h <= height
    assert 1 <= plan.out_w <= max_width and 1 <= plan.out_h <= max_height
    assert max_area is None or plan.out_w * plan.out_h <= max_area


REGIONS = st.one_of(
    st.just("full"), st.just("square"),
    st.tuples(st.integers(0, 25000), st.integers(0, 25000), st.integers(1, 30000),
              st.integers(1, 30000)).map(lambda t: "%d,%d,%d,%d" % t),
    st.tuples(*[st.decimals(0, 120, places=3, allow_nan=False)] * 4).map(
        lambda t: "pct:" + ",".join(format(v, "f") for v in t)),
)
SIZES = st.one_of(
    st.sampled_from(["max", "^max"]),
    st.integers(1, 9000).map("{},".format), st.integers(1, 9000).map(",{}".format),
    st.decimals("0.01", 400, places=2, allow_nan=False).map(lambda v: "pct:" + format(v, "f")),
    st.tuples(st.integers(1, 9000), st.integers(1, 9000)).map("{0[0]},{0[1]}".format),
    st.tuples(st.integers(1, 9000), st.integers(1, 9000)).map("!{0[0]},{0[1]}".format),
)


@settings(max_examples=600, deadline=None)
@given(REGIONS, SIZES, st.booleans(), st.sampled_from(["0", "90", "!180", "270"]),
       st.integers(1, 20000), st.integers(1, 20000), LIMITS)
def test_resolve_valid_requests(region, size, caret, rotation, width, height, limits):
    """Well-formed 3.0 requests: a plan within the limits and the image, never larger
    than the region without ^, or an error with the specification's status."""
    max_width, max_height, max_area, upscaling = limits
    if caret and not size.startswith("^"):
        size = "^" + size
    request = iiif.parse("id/%s/%s/%s/default.jpg" % (region, size, rotation))
    assert isinstance(request, IIIFImageRequest)
    try:
        plan = iiif.resolve(request, width, height, max_width, max_height, max_area, upscaling)
    except IIIFError as exc:
        assert exc.status_code in (400, 501)
        assert exc.status_code == 400 or (request.size.upscale and not upscaling)
        return
    x, y, w, h = plan.region
    assert x + w <= width and y + h <= height and w >= 1 and h >= 1
    assert 1 <= plan.out_w <= max_width and 1 <= plan.out_h <= max_height
    assert max_area is None or plan.out_w * plan.out_h <= max_area
    if not (request.size.upscale and upscaling):
        assert plan.out_w <= w and plan.out_h <= h
    if request.size.kind in ("w", "wh"):
        assert plan.out_w == request.size.w
    if request.size.kind in ("h", "wh"):
        assert plan.out_h == request.size.h
    if request.size.kind == "confined":
        assert plan.out_w <= request.size.w and plan.out_h <= request.size.h
    if request.region.kind == "square":
        assert w == h == min(width, height)


GRIDS = st.builds(Grid, st.integers(1, 5000), st.integers(1, 5000), st.sampled_from([16, 64, 256]),
                  st.sampled_from([16, 64, 256]))


@settings(max_examples=500, deadline=None)
@given(GRIDS, st.data())
def test_each_tile_requested_as_a_client_does_is_found(grid, data):
    """The region and size a IIIF client computes from info.json's tiles and
    scaleFactors name exactly the JTL tile of the grid."""
    r = data.draw(st.integers(0, grid.num_resolutions - 1))
    k = grid.num_resolutions - 1 - r
    ntx, nty = grid.tiles_across(k)
    n = data.draw(st.integers(0, ntx * nty - 1))
    _, window = grid.tile_window(r, n)
    s = 1 << k
    x, y = window.x * s, window.y * s
    w, h = min(grid.tile_w * s, grid.width - x), min(grid.tile_h * s, grid.height - y)
    request = iiif.parse("id/%d,%d,%d,%d/%d,%d/0/default.jpg" % (x, y, w, h, window.w, window.h))
    plan = iiif.resolve(request, grid.width, grid.height, MAX_CVT)
    assert iiif.tile_of(plan, grid) == (r, n)


@settings(max_examples=400, deadline=None)
@given(GRIDS, REGIONS, SIZES)
def test_tile_of_agrees_with_the_grid(grid, region, size):
    request = iiif.parse("id/%s/%s/0/default.jpg" % (region, size))
    try:
        plan = iiif.resolve(request, grid.width, grid.height, MAX_CVT, MAX_CVT, None, True)
    except IIIFError:
        return
    found = iiif.tile_of(plan, grid)
    k, (kx, ky, kw, kh) = iiif.source_window(plan, grid)
    lw, lh = grid.level_size(k)
    assert 0 <= kx < lw and 0 <= ky < lh and kx + kw <= lw and ky + kh <= lh
    assert k == 0 or (kw >= plan.out_w and kh >= plan.out_h)
    if found is None:
        return
    r, n = found
    level, window = grid.tile_window(r, n)
    s = 1 << level
    x, y, w, h = plan.region
    assert (window.x * s, window.y * s) == (x, y)
    assert (window.w, window.h) == (plan.out_w, plan.out_h)
    assert max(1, w // s) == window.w and max(1, h // s) == window.h


ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=60)  # lone surrogates too


@settings(max_examples=500, deadline=None)
@given(ANY_TEXT, st.sampled_from([2, 3]))
def test_error_messages_are_printable_ascii(text, version):
    for argument in (text, "x/%s/max/0/default.jpg" % text, "x/full/%s/0/default.jpg" % text,
                     "x/full/max/%s/default.jpg" % text, "x/full/max/0/" + text):
        try:
            request = iiif.parse(argument, version)
            if isinstance(request, IIIFImageRequest):
                iiif.resolve(request, 100, 50, 64, 64, 1000, False)
        except IIIFError as exc:
            assert all(" " <= c <= "~" for c in exc.message)


@settings(max_examples=300, deadline=None)
@given(ANY_TEXT, ANY_TEXT, ANY_TEXT, ANY_TEXT)
def test_service_id_is_always_printable_ascii(host, proto, uri, argument):
    env = {"HTTP_X_FORWARDED_HOST": host, "HTTP_X_FORWARDED_PROTO": proto, "REQUEST_URI": uri}
    ident = iiif.service_id(env, argument)
    assume(ident)
    assert all("!" <= c <= "~" for c in ident)
    assert ident.startswith(("http://", "https://"))


def test_the_error_table_gives_each_iiif_error_its_specified_status():
    from iipy.protocols import deepzoom, zoomify
    from iipy.protocols.http import Responder, error_response
    from iipy.settings import Settings

    responder = Responder(Settings.from_environ({}))
    classes = [iiif.IIIFBadRequest, iiif.IIIFNotFound, iiif.IIIFNotImplemented,
               deepzoom.DeepZoomError, deepzoom.DeepZoomTileNotFound,
               zoomify.ZoomifyError, zoomify.ZoomifyTileNotFound]
    for cls in classes:
        response = error_response(responder, cls("x"), "q")
        assert response.status == int(cls.status.split()[0]), cls
        assert response.body == b"x"
