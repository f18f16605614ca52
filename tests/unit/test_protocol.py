"""The request corpus: one case per file under corpus/.

corpus/parse/*.json: a query and the commands it parses to.
corpus/answer/*.json: a query and the exact answer (status and body, or its start).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from iipy.protocols.iip import parser
from iipy.settings import atof, atoi

CORPUS = Path(__file__).parent / "corpus"
PARSE = sorted((CORPUS / "parse").glob("*.json"))
ANSWER = sorted((CORPUS / "answer").glob("*.json"))


@pytest.mark.parametrize("case", PARSE, ids=[p.stem for p in PARSE])
def test_parse_corpus(case):
    spec = json.loads(case.read_text())
    request = parser.parse(spec["query"])
    got = [[c.name, c.raw_name, c.arg] for c in request.commands]
    assert got == spec["commands"]


@pytest.mark.parametrize("case", ANSWER, ids=[p.stem for p in ANSWER])
def test_answer_corpus(case, app):
    spec = json.loads(case.read_text())
    response = app.handle({"QUERY_STRING": spec["query"]})
    assert response.status == spec["status"]
    if "body" in spec:
        assert response.body == spec["body"].encode()
    if "body_startswith" in spec:
        assert response.body.startswith(spec["body_startswith"].encode())
    if "content_type" in spec:
        assert response.header("Content-Type") == spec["content_type"]


LONG_MAX = (1 << 63) - 1


@pytest.mark.parametrize("text,value", [
    ("12abc", 12), ("abc", 0), ("  -7", -7), ("+3", 3), ("", 0), ("0x10", 0), ("1e3", 1),
    ("\t\n\v\f\r 5", 5), ("\xa05", 0), ("\u20035", 0), ("\u0663", 0), ("1\u0663", 1),
    ("0" * 40 + "12", 12), ("9223372036854775807", LONG_MAX),
    ("9223372036854775808", LONG_MAX), ("-9223372036854775809", -LONG_MAX - 1),
    ("9" * 5000, LONG_MAX), ("-" + "9" * 5000 + "x", -LONG_MAX - 1)])
def test_atoi(text, value):
    """glibc: ASCII blanks and digits, saturated at the 64-bit limits; thousands of digits
    used to raise ValueError (Python's int conversion limit), a 500 for JTL=9999...9."""
    assert atoi(text) == value


@pytest.mark.parametrize("text,value", [
    ("1e-3", 0.001), ("abc", 0.0), (" -2.5x", -2.5), (".5", 0.5), ("1.", 1.0),
    ("1e", 1.0), ("-1.2e+2", -120.0), ("0.3333333333333333", 0.3333333333333333),
    ("0x10", 16.0), ("0x1.8p3", 12.0), ("-0X.8", -0.5), ("0x1p", 1.0), ("0x", 0.0),
    ("0x1p99999", float("inf")), ("-0x1p99999", float("-inf")), ("0x1p-99999", 0.0),
    ("INFINITY", float("inf")), ("-inf", float("-inf")), ("1e99999", float("inf")),
    ("\xa01", 0.0), ("\u0663.5", 0.0), ("9" * 5000, float("inf"))])
def test_atof(text, value):
    """glibc strtod: hexadecimal floats, infinities, ASCII blanks and digits only."""
    assert atof(text) == value


def test_nan_and_negative_zero():
    assert math.isnan(atof("nan(12)")) and math.isnan(atof(" -NaN"))
    assert math.copysign(1.0, atof("-0")) == -1.0


@pytest.mark.parametrize("query,status", [
    ("FIF=grey.fits&JTL=%s,0" % ("9" * 5000), 404),
    ("FIF=grey.fits&QLT=%s&JTL=0,0" % ("9" * 5000), 200),
    ("FIF=grey.fits&WID=%s&CVT=jpeg" % ("9" * 5000), 200),
    ("FIF=grey.fits&PFL=%s:0,0-1,0" % ("9" * 5000), 400),
    ("FIF=grey.fits&TIL=%s,0" % ("9" * 5000), 404)])
def test_numbers_of_thousands_of_digits(app, query, status):
    assert app.handle({"QUERY_STRING": query}).status == status


def test_int_pair_without_comma_uses_whole_text_twice():
    assert parser.int_pair("1") == (1, 1)
    assert parser.int_pair("2,5") == (2, 5)


def test_minmax_is_one_based_and_lenient():
    assert parser.minmax("1:-2.5e-3,1.2e+2") == (0, -0.0025, 120.0)
    assert parser.minmax("3:0,5,junk") == (2, 0.0, 5.0)
    assert parser.minmax("1:0") is None
    assert parser.minmax("nocolon") is None


def test_ctw_rows_brackets_optional():
    assert parser.ctw("1;1;1") == [[1.0], [1.0], [1.0]]
    assert parser.ctw("[0.5,7;1;1]") == [[0.5, 7.0], [1.0], [1.0]]
    assert parser.ctw("0,0,1;0,0,1;0,0,1") == [[0, 0, 1]] * 3


def test_rgn_clamping_as_iipsrv():
    assert parser.rgn("-0.1,-0.1,1.2,1.2") == (0.0, 0.0, 1.0, 1.0)
    assert parser.rgn("0.8,0.5,0.5,0.7") == pytest.approx((0.8, 0.5, 0.2, 0.7))
    assert parser.rgn("0.1,0.2,0.3") is None
    assert parser.rgn("0.1,0.2,0,0.5") is None
    assert parser.rgn("1e-1,0,0.5,0.5") == (0.1, 0.0, 0.5, 0.5)


def test_rot_forms():
    assert parser.rot("90") == (90, False)
    assert parser.rot("!180") == (180, True)
    assert parser.rot("45") == (0, False)
    assert parser.rot("-90") == (270, False)


def test_pfl_forms():
    assert parser.pfl("2:8,10-12,10") == (2, 8, 10, 12, 10)
    assert parser.pfl("3:5,6") == (3, 5, 6, 5, 6)
    assert parser.pfl("nocolon") is None


def test_uri_map():
    assert parser.map_uri("/iiif/image.fits/info.json?x=1", "iiif=>IIIF") == \
        "iiif=image.fits/info.json"
    assert parser.map_uri("/other/x", "iiif=>IIIF") is None
    assert parser.map_uri("/x", "broken") is None
    # a path segment, not any string prefix; the slashes around it go
    assert parser.map_uri("/iiifx/a.fits/info.json", "iiif=>IIIF") is None
    assert parser.map_uri("/iiif", "/iiif/=>IIIF") == "iiif="
    assert parser.map_uri("//iiif//a.fits", "iiif=>iiif") is None
    assert parser.map_uri("/a/b/iiif/x.fits/info.json", "a/b/iiif=>IIIF") == \
        "iiif=x.fits/info.json"
    # an empty prefix maps every path; IIP gives a FIF
    assert parser.map_uri("/x.fits", "=>IIP") == "fif=x.fits"
    # several mappings (an iipy extension), first match wins; bad entries are skipped
    many = "iiif=>IIIF, deepzoom=>DeepZoom,zoomify=>Zoomify,junk,x=>Foo"
    assert parser.map_uri("/deepzoom/a.fits.dzi", many) == "deepzoom=a.fits.dzi"
    assert parser.map_uri("/zoomify/a.fits/ImageProperties.xml", many) == \
        "zoomify=a.fits/ImageProperties.xml"
    assert parser.map_uri("/iiif/a%2Fb.fits/info.json?q", many) == "iiif=a%2Fb.fits/info.json"
    assert parser.map_uri("/x/a.fits", many) is None
    assert parser.uri_mappings(many) == [("iiif", "iiif"), ("deepzoom", "deepzoom"),
                                         ("zoomify", "zoomify")]
