"""Broken TIFF files served by a real server: iipy started by spawn-fcgi (the socket
on fd 0) behind nginx.  Every file is made at test time from a valid pyramid: truncated,
with offsets pointing elsewhere, not tiled, with huge declared sizes, with compressions
nobody decodes.  Each is answered with a file error (404, docs/protocol.md §8.5.2) and
nothing else: no 500, no traceback in the log, the same worker processes, and a valid
request afterwards is answered normally.  Damage to the structure fails every request;
damage to the tiles, or a compression nobody decodes, fails the requests that read
pixels (OBJ still describes the file, as iipsrv 1.1 does).
"""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tests.e2e.conftest import ServerProcess, http_get
from tests.unit._tiff_files import patch, patch_tag, random_levels, tag_entry, write_levels

pytestmark = pytest.mark.e2e

#: Every command that reads pixels, on each level of the 3-level corpus files.
PIXEL_QUERIES = ("JTL=2,0", "JTL=2,3", "JTL=1,0", "JTL=0,0", "QLT=90&JTL=2,5",
                 "WID=64&CVT=jpeg", "CVT=png", "PFL=2:0,0-50,0", "SPECTRA=2,4,1,1", "TIL=2,0-5")


def good_file(path: Path, **options) -> None:
    """A valid 3-level pyramid: 200 x 150 uint16, 64 x 64 tiles (4 x 3 at full size)."""
    write_levels(path, random_levels((150, 200), "u2", 3, seed=5), tile=(64, 64),
                 compression="zlib", **options)


def corpus(directory: Path) -> dict[str, bool]:
    """Write the broken files; name -> whether the damage is seen on opening (every
    request fails) rather than when a tile is read (OBJ answers, pixels fail)."""
    base = directory / "base.tif"
    good_file(base)
    data = base.read_bytes()
    size = len(data)
    with tifffile.TiffFile(base) as tif:
        p0 = tif.pages[0]
        next0 = p0.offset + 2 + 12 * len(p0.tags)  # where page 0 points to page 1
        offsets_value = p0.tags[324].valueoffset
        tiles = [(o, c) for page in tif.pages for o, c in zip(page.dataoffsets,
                                                                 page.databytecounts)]
    order, big = tag_entry(base, 256)[1:]
    entry = {code: tag_entry(base, code)[0] for code in (256, 322, 324, 325)}
    opened: dict[str, bool] = {}

    def write(name: str, raw: bytes | bytearray, at_open: bool) -> None:
        (directory / (name + ".tif")).write_bytes(bytes(raw))
        opened[name] = at_open

    def edited(change) -> bytearray:
        raw = bytearray(data)
        change(raw)
        return raw

    # truncated
    write("truncated-header", data[:9], True)
    write("truncated-first-ifd", data[: p0.offset + 20], True)
    write("truncated-half", data[: size // 2], True)
    write("truncated-last-byte", data[:-1], True)
    # wrong offsets
    write("first-ifd-beyond-end", edited(lambda d: patch(d, 4, "<I", size + 100)), True)
    write("next-ifd-loop", edited(lambda d: patch(d, next0, "<I", p0.offset)), True)
    write("next-ifd-into-garbage", edited(lambda d: patch(d, next0, "<I", size - 3)), True)
    write("tile-offset-beyond-end", edited(lambda d: patch(d, offsets_value, "<I", size + 9)), True)
    # not tiled
    tifffile.imwrite(directory / "strips.tif", np.zeros((150, 200), np.uint16), metadata=None)
    opened["strips"] = True
    with tifffile.TiffWriter(directory / "strips-level.tif") as tif:
        tif.write(np.zeros((150, 200), np.uint8), tile=(64, 64), metadata=None)
        tif.write(np.zeros((75, 100), np.uint8), subfiletype=1, metadata=None)
    opened["strips-level"] = True
    # huge declared sizes
    write("width-huge", edited(lambda d: patch_tag(d, entry[256], order, big, value=2**31,
                                                    dtype=4)), True)
    write("tile-width-huge", edited(lambda d: patch_tag(d, entry[322], order, big, value=2**20,
                                                         dtype=4)), True)
    write("tile-offsets-count-huge", edited(lambda d: patch_tag(d, entry[324], order, big,
                                                                count=2**30)), True)
    write("tile-bytecount-huge", edited(
        lambda d: patch(d, tifffile.TiffFile(base).pages[0].tags[325].valueoffset, "<I",
                        2**31)), True)
    # compressions nobody decodes, on every level: described (as iipsrv does), tiles refused
    def recompress(code: int):
        def change(d: bytearray) -> None:
            for page in range(3):
                patch_tag(d, tag_entry(base, 259, page)[0], order, big, value=code)
        return change

    write("compression-unknown", edited(recompress(12345)), False)
    write("compression-jpeg2000", edited(recompress(34712)), False)
    # damage only seen when a tile is read: every tile's bytes garbled
    def garble(d: bytearray) -> None:
        for offset, count in tiles:
            d[offset : offset + count] = b"\x55" * count

    write("tiles-garbage", edited(garble), False)
    # a TIFF signature and nothing sensible after it
    write("signature-only", b"II*\x00" + struct.pack("<I", 8) + os.urandom(64), True)
    write("old-signature", b"I I" + bytes(200), True)
    return opened


@pytest.fixture(scope="module")
def broken_dir(tmp_path_factory) -> tuple[Path, dict[str, bool]]:
    directory = tmp_path_factory.mktemp("broken-tiffs")
    good_file(directory / "good.tif")
    return directory, corpus(directory)


def worker_pids(server: ServerProcess) -> set[int]:
    """Live children of the iipy master process."""
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == server.proc.pid and fields[0] != "Z":
                pids.add(int(entry))
    return pids


def test_broken_tiffs_are_file_errors_and_workers_survive(spawn_fcgi, nginx, broken_dir):
    directory, opened = broken_dir
    server = spawn_fcgi(FILESYSTEM_PREFIX=f"{directory}/", IIPY_WORKERS=2,
                        MEMCACHED_SERVERS="", VERBOSITY=1)
    url = nginx(server)

    def get(query: str):
        return http_get(f"{url.iip}?{query}")

    status, headers, body = get("FIF=good.tif&obj=max-size")
    assert (status, body) == (200, b"\r\nMax-size:200 150\r\n")
    deadline = time.monotonic() + 20  # the master forks its workers one after the other
    while len(workers := worker_pids(server)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(workers) == 2
    problems = []
    for name, at_open in sorted(opened.items()):
        fif = "FIF=%s.tif&" % name
        status, _, body = get(fif + "obj=IIP,1.0&obj=max-size")
        expected = 404 if at_open else 200
        if status != expected:
            problems.append("%s: OBJ %d %r" % (name, status, body[:120]))
        for query in PIXEL_QUERIES:
            status, headers, body = get(fif + query)
            if status != 404 or headers.get("Content-Type") is not None:
                problems.append("%s %s: %d %r" % (name, query, status, body[:120]))
            elif name.encode() not in body or str(directory).encode() in body:
                problems.append("%s %s: the text must name the image as requested: %r"
                                % (name, query, body))
        # the next valid request is served, by the same workers
        status, _, body = get("FIF=good.tif&QLT=90&JTL=2,0")
        if status != 200 or body[:2] != b"\xff\xd8":
            problems.append("after %s: good tile %d" % (name, status))
    assert not problems, "\n".join(problems)
    assert worker_pids(server) == workers
    for query in ("FIF=good.tif&JTL=0,0", "FIF=good.tif&PFL=2:0,0-3,0", "FIF=good.tif&CVT=png"):
        assert get(query)[0] == 200, query
    log = server.log_text() + server.output_text()
    assert "Traceback" not in log and "unhandled error" not in log
