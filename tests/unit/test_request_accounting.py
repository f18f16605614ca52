"""What the Application reports about each request: the calls it makes on a metrics
recorder, the iipsrv-style text line (the default) and the JSON line of
IIPY_LOG_FORMAT=json, written through iipy.server.logsetup's formatter."""

from __future__ import annotations

import io
import json
import logging
import os
import re

import pytest

from iipy.protocols.router import Application
from iipy.server import logsetup

TILE = "FIF=grey.fits&JTL=1,0"


class ListRecorder:
    """Keeps every call (what ``iipy.server.metrics.SlotRecorder`` would count)."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.builds: list[float] = []

    def request(self, protocol, command, status, nbytes, stages, lookups,
                memcached_errors=0) -> None:
        self.requests.append(dict(protocol=protocol, command=command, status=status,
                                  nbytes=nbytes, stages=dict(stages),
                                  lookups={k: tuple(v) for k, v in lookups.items()},
                                  memcached_errors=memcached_errors))

    def pyramid_built(self, seconds: float) -> None:
        self.builds.append(seconds)


@pytest.fixture
def recorded(settings):
    app = Application(settings)
    app.metrics = ListRecorder()
    return app


def test_each_request_is_recorded_with_its_labels_stages_and_cache_lookups(recorded):
    app = recorded
    sizes = []
    for params in (
        {"QUERY_STRING": TILE},                                  # miss: renders
        {"QUERY_STRING": TILE},                                  # memory hit
        {"QUERY_STRING": TILE, "REQUEST_METHOD": "HEAD"},        # memory hit, no body
        {"QUERY_STRING": "FIF=grey.fits&obj=IIP,1.0"},
        {"QUERY_STRING": "FIF=nothere.fits&JTL=0,0"},
        {"QUERY_STRING": "FIF=grey.fits&JTL=1,999"},             # no such tile
        {"QUERY_STRING": "FIF=grey.fits&XYZ=1"},
        {"QUERY_STRING": ""},
        {"QUERY_STRING": TILE, "REQUEST_METHOD": "OPTIONS"},
        {"QUERY_STRING": TILE, "REQUEST_METHOD": "DELETE"},
        {"QUERY_STRING": "IIIF=grey.fits/info.json"},
        {"QUERY_STRING": "GAM=0.5&DeepZoom=grey.fits.dzi"},      # after a modifier
        {"QUERY_STRING": "QLT=9&IIIF=missing.fits/info.json"},   # its image opened first
    ):
        sizes.append(len(app.handle(params).body))
    got = [(r["protocol"], r["command"], r["status"], r["nbytes"]) for r in app.metrics.requests]
    assert got == [
        ("iip", "jtl", 200, sizes[0]),
        ("iip", "jtl", 200, sizes[0]),
        ("iip", "jtl", 200, 0),
        ("iip", "obj", 200, len(b"IIP:1.0\r\n")),
        ("iip", "fif", 404, sizes[4]),
        ("iip", "jtl", 404, sizes[5]),
        ("iip", "other", 400, sizes[6]),
        ("iip", "none", 400, sizes[7]),
        ("http", "options", 204, 0),
        ("http", "method", 405, sizes[9]),
        ("iiif", "iiif", 200, sizes[10]),
        ("deepzoom", "deepzoom", 200, sizes[11]),
        ("iiif", "iiif", 404, sizes[12]),
    ]
    assert sizes[0] > 0
    stages = [sorted(r["stages"]) for r in app.metrics.requests]
    assert stages[0] == ["cache", "encode", "parse", "read", "render", "total"]
    # the hits are answered before parsing: no parse stage
    assert stages[1] == stages[2] == ["cache", "total"]
    assert stages[3] == stages[4] == ["parse", "total"]
    assert stages[7] == stages[8] == stages[9] == ["total"]
    lookups = [r["lookups"]["memory"] for r in app.metrics.requests[:4]]
    assert lookups == [(0, 1), (1, 0), (1, 0), (0, 0)]
    assert all(r["lookups"].get("memcached", (0, 0)) == (0, 0) for r in app.metrics.requests)
    first = app.metrics.requests[0]["stages"]
    assert first["total"] >= first["read"] + first["render"] + first["encode"]
    # grey.fits (1001 x 701) has reduced levels: level 1 of JTL=1 comes from a build
    assert len(app.metrics.builds) == 1 and app.metrics.builds[0] > 0


def test_a_pyramid_loaded_from_disk_is_not_a_build(settings):
    first, second = Application(settings), Application(settings)
    first.metrics, second.metrics = ListRecorder(), ListRecorder()
    first.handle({"QUERY_STRING": TILE})
    second.handle({"QUERY_STRING": TILE})
    assert len(first.metrics.builds) == 1 and second.metrics.builds == []


def _capture(settings, log_format: str, verbosity: int = 2):
    """Configure logging as the server does, into a StringIO."""
    settings = settings.replace(logfile="-", verbosity=verbosity, log_format=log_format)
    logsetup.configure(settings)
    stream = io.StringIO()
    handler = logging.getLogger("iipy").handlers[0]
    handler.setStream(stream)  # type: ignore[attr-defined]
    return settings, stream


@pytest.fixture
def restore_logging():
    root = logging.getLogger("iipy")
    saved = (root.handlers[:], root.level, root.propagate)
    yield
    root.handlers[:], root.level, root.propagate = saved[0], saved[1], saved[2]
    logging.getLogger(logsetup.STARTUP).setLevel(logging.NOTSET)


def test_json_log_has_one_object_per_request(settings, restore_logging):
    settings, stream = _capture(settings, "json")
    app = Application(settings)
    app.handle({"QUERY_STRING": TILE})
    app.handle({"QUERY_STRING": TILE})
    app.handle({"QUERY_STRING": "FIF=nothere.fits&JTL=0,0"})
    app.handle({"QUERY_STRING": "FIF=a%ff.fits&obj=IIP,1.0", "REQUEST_METHOD": "HEAD"})
    app.handle({"REQUEST_METHOD": "OPTIONS"})
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    requests = [r for r in lines if r.get("event") == "request"]
    others = [r for r in lines if r.get("event") != "request"]
    assert [(r["method"], r["command"], r["status"], r["cache"]) for r in requests] == [
        ("GET", "jtl", 200, "miss"),
        ("GET", "jtl", 200, "memory"),
        ("GET", "fif", 404, None),
        ("HEAD", "fif", 404, None),
        ("OPTIONS", "options", 204, None),
    ]
    first = requests[0]
    assert first["query"] == TILE and first["protocol"] == "iip"
    assert first["pid"] == os.getpid() and first["level"] == "INFO"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])
    assert first["bytes"] > 0 and requests[3]["bytes"] == 0
    assert set(first["ms"]) == {"parse", "cache", "read", "render", "encode", "total"}
    assert set(requests[1]["ms"]) == {"cache", "total"}  # a hit before parsing
    assert all(isinstance(v, float) and v >= 0 for v in first["ms"].values())
    assert first["ms"]["total"] >= first["ms"]["read"]
    # undecodable bytes of a query stay valid JSON
    assert requests[3]["query"] == "FIF=a%ff.fits&obj=IIP,1.0"
    # other records are JSON too: the 404 warnings
    assert others and all(set(r) >= {"time", "level", "pid", "logger", "message"} for r in others)
    assert any("404" in r["message"] for r in others)


def test_json_log_follows_verbosity(settings, restore_logging):
    settings, stream = _capture(settings, "json", verbosity=1)
    Application(settings).handle({"QUERY_STRING": "FIF=grey.fits&obj=IIP,1.0"})
    assert stream.getvalue() == ""


def test_text_log_stays_the_default_line(settings, restore_logging):
    assert settings.log_format == "text"
    settings, stream = _capture(settings, "text")
    app = Application(settings)
    app.handle({"QUERY_STRING": TILE})
    app.handle({"QUERY_STRING": TILE, "REQUEST_METHOD": "PUT"})
    lines = stream.getvalue().splitlines()
    assert re.fullmatch(
        r"\S+ \S+ iipy\[\d+\] INFO iipy\.protocols\.router: 200 FIF=grey\.fits&JTL=1,0 "
        r"[\d.]+ ms \(read [\d.]+, render [\d.]+, encode [\d.]+, cache [\d.]+\) "
        r"\d+ bytes, cache hit: miss", lines[0]), lines[0]
    assert lines[1].endswith("iipy.protocols.router: 405 PUT [FIF=grey.fits&JTL=1,0]")
    assert not any(line.lstrip().startswith("{") for line in lines)
