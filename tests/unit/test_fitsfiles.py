"""Kinds of FITS files: tile-compressed HDUs, gzip-compressed files, damaged files."""

from __future__ import annotations

import gzip
import io
import json
import logging
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from astropy.io import fits

from iipy.protocols.router import Application
from iipy.settings import Settings


def make_app(tmp_path) -> Application:
    return Application(Settings.from_environ({
        "FILESYSTEM_PREFIX": str(tmp_path) + "/", "IIPY_CACHE_DIR": str(tmp_path / "c"),
        "VERBOSITY": "0", "MEMCACHED_SERVERS": ""}))


def test_tile_compressed_hdus_are_served_with_their_values(tmp_path):
    rng = np.random.default_rng(0)
    i16 = rng.normal(1000, 50, (300, 400)).astype(np.int16)
    f32 = rng.normal(100, 5, (300, 400)).astype(np.float32)
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(i16)]).writeto(tmp_path / "i.fits")
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(f32, quantize_level=64)]).writeto(
        tmp_path / "f.fits")
    app = make_app(tmp_path)
    r = app.handle({"QUERY_STRING": "FIF=i.fits&obj=max-size&obj=bits-per-channel"})
    assert r.body == b"\r\nMax-size:400 300\r\nBits-per-channel:16\r\n"
    r = app.handle({"QUERY_STRING": "FIF=i.fits&PFL=1:0,0-3,0"})  # IIP row 0 = last FITS row
    assert r.body == b'{\n\t"profile": [%d,%d,%d]\n}' % tuple(i16[-1, :3])
    with fits.open(tmp_path / "f.fits") as hdul:
        decoded = hdul[1].data[-1, :2]
    r = app.handle({"QUERY_STRING": "FIF=f.fits&PFL=1:0,0-2,0"})
    assert r.body == b'{\n\t"profile": [%.9f,%.9f]\n}' % tuple(decoded)
    assert abs(decoded[0] - f32[-1, 0]) < 0.1  # really dequantised floats
    r = app.handle({"QUERY_STRING": "FIF=f.fits&MINMAX=1:80,120&JTL=0,0"})
    assert r.status == 200 and r.header("Content-Type") == "image/jpeg"


def test_gzip_file_is_refused_with_a_clear_message(tmp_path):
    fits.PrimaryHDU(np.zeros((10, 10), np.float32)).writeto(tmp_path / "a.fits")
    (tmp_path / "a.fits.gz").write_bytes(gzip.compress((tmp_path / "a.fits").read_bytes()))
    r = make_app(tmp_path).handle({"QUERY_STRING": "FIF=a.fits.gz&obj=max-size"})
    assert r.status == 400
    assert b"gzip-compressed: decompress it" in r.body


def test_truncated_fits_is_a_file_error(tmp_path):
    fits.PrimaryHDU(np.zeros((100, 100), np.float32)).writeto(tmp_path / "a.fits")
    raw = (tmp_path / "a.fits").read_bytes()
    (tmp_path / "cut.fits").write_bytes(raw[:2880 + 1000])
    (tmp_path / "nohdr.fits").write_bytes(raw[:400])
    app = make_app(tmp_path)
    for name in ("cut.fits", "nohdr.fits"):
        r = app.handle({"QUERY_STRING": "FIF=%s&JTL=0,0" % name})
        assert r.status in (404, 400), (name, r.status)
        assert r.status != 500
    # the worker keeps serving
    assert app.handle({"QUERY_STRING": "FIF=a.fits&obj=max-size"}).status == 200


def _set_card(raw: bytes, key: str, value: str, hdu_start: int = 0) -> bytes:
    """``raw`` with the card ``key`` of the header starting at ``hdu_start`` rewritten."""
    for off in range(hdu_start, len(raw), 80):
        if raw[off : off + 8].decode("ascii").strip() == key:
            card = ("%-8s= %20s" % (key, value)).ljust(80).encode("ascii")
            return raw[:off] + card + raw[off + 80 :]
    raise KeyError(key)


def _answers_in_child(prefix, queries: list[str], timeout: float = 30.0) -> list[tuple]:
    """``(status, body)`` of each query, answered by an Application in a child process with
    2 GB of address space: a request that loops or allocates without end fails there."""
    script = textwrap.dedent("""
        import json, resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
        from iipy.protocols.router import Application
        from iipy.settings import Settings
        app = Application(Settings.from_environ({
            "FILESYSTEM_PREFIX": sys.argv[1], "IIPY_CACHE_DIR": sys.argv[1] + "c",
            "VERBOSITY": "0", "MEMCACHED_SERVERS": ""}))
        for q in sys.argv[2:]:
            r = app.handle({"QUERY_STRING": q})
            print(json.dumps([r.status, r.body[:60].decode("latin-1")]), flush=True)
    """)
    done = subprocess.run([sys.executable, "-c", script, str(prefix) + "/", *queries],
                          capture_output=True, text=True, timeout=timeout)
    return [tuple(json.loads(line)) for line in done.stdout.splitlines()]


def test_negative_axis_length_is_a_file_error_not_an_endless_loop(tmp_path):
    """A negative NAXISn gives a negative data size: astropy then finds the "next" HDU
    before the current one and reads the file round and round (a worker stuck for ever,
    its memory growing).  Every way of choosing an HDU is a 404 file error instead."""
    data = np.arange(20 * 16, dtype=np.int32).reshape(20, 16)
    fits.PrimaryHDU(data).writeto(tmp_path / "ok.fits")
    # data sizes of -5120 and -2880 bytes: one block back, to the header itself
    fits.PrimaryHDU(np.zeros((2, 2, 20, 16), np.int32)).writeto(tmp_path / "cube.fits")
    raw = (tmp_path / "cube.fits").read_bytes()
    (tmp_path / "neg.fits").write_bytes(_set_card(raw, "NAXIS1", "-16"))
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data, name="SCI"),
                  fits.ImageHDU(data, name="ERR")]).writeto(tmp_path / "mef.fits")
    raw = (tmp_path / "mef.fits").read_bytes()
    (tmp_path / "negext.fits").write_bytes(_set_card(raw, "NAXIS2", "-45", hdu_start=2880))
    queries = ["FIF=neg.fits&obj=max-size", "FIF=neg.fits[3]&JTL=0,0",
               "FIF=negext.fits&obj=max-size", "FIF=negext.fits[ERR]&obj=max-size",
               "FIF=negext.fits[9]&obj=max-size", "FIF=negext.fits[*]&JTL=0,0",
               "FIF=ok.fits&obj=max-size"]
    answers = _answers_in_child(tmp_path, queries)
    assert answers == [(404, "Invalid HDU sizes in file")] * 6 + [(200, "\r\nMax-size:16 20\r\n")]


@pytest.mark.parametrize("compression", ["RICE_1", "GZIP_1", "HCOMPRESS_1"])
def test_damaged_compressed_tiles_are_a_file_error(tmp_path, caplog, compression):
    """Tile bytes overwritten in the heap of a tile-compressed HDU: the decompressor
    fails (astropy raises its own exception types) while the pyramid is built or a tile
    is read; every request is a 404 file error, nothing is logged as an error, and the
    worker goes on serving."""
    data = (np.arange(500 * 600).reshape(500, 600) % 1000).astype(np.int32)
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(
        data, compression_type=compression, tile_shape=(50, 600))]).writeto(tmp_path / "c.fits")
    raw = bytearray((tmp_path / "c.fits").read_bytes())
    with fits.open(tmp_path / "c.fits", disable_image_compression=True) as hdul:
        table = hdul[1]
        heap = table.fileinfo()["datLoc"] + table.header["NAXIS1"] * table.header["NAXIS2"]
    for i in range(heap + 100, heap + 2000):  # the first tiles' compressed bytes
        raw[i] ^= 0x5A
    (tmp_path / "bad.fits").write_bytes(bytes(raw))
    app = make_app(tmp_path)
    caplog.set_level(logging.WARNING)
    for query in ("obj=IIP,1.0&obj=max-size&obj=min-max-sample-values",
                  "GAM=0.4545&CTW=1;1;1&JTL=0,0", "JTL=2,0", "WID=200&CVT=jpeg"):
        r = app.handle({"QUERY_STRING": "FIF=bad.fits&" + query})
        assert (r.status, r.body) == (404, b"Unable to read data of 'bad.fits'"), query
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
    r = app.handle({"QUERY_STRING": "FIF=c.fits&PFL=2:0,0-3,0"})
    assert r.body == b'{\n\t"profile": [%d,%d,%d]\n}' % tuple(data[-1, :3])


def test_unparsable_cards_are_left_out(tmp_path, caplog):
    """A card astropy cannot parse raises a VerifyError on every read of it: the
    metadata, the header sent as subject and the FITS cut-out leave it out."""
    hdr = fits.Header([("CTYPE1", "RA---TAN"), ("CTYPE2", "DEC--TAN"), ("CRVAL1", 10.0),
                       ("CRVAL2", 20.0), ("CDELT1", -1e-4), ("CDELT2", 1e-4),
                       ("OBJECT", "M31"), ("FILTER", "r")])
    fits.PrimaryHDU(np.ones((40, 50), np.float32), header=hdr).writeto(tmp_path / "a.fits")
    raw = (tmp_path / "a.fits").read_bytes()
    raw = _set_card(raw, "CDELT1", "NAN")
    raw = _set_card(raw, "OBJECT", "'M31")  # no closing quote
    raw = _set_card(raw, "FILTER", "1.2.3")
    (tmp_path / "b.fits").write_bytes(raw)
    app = make_app(tmp_path)
    caplog.set_level(logging.WARNING)
    r = app.handle({"QUERY_STRING": "FIF=b.fits&obj=IIP,1.0&obj=max-size&obj=subject"})
    assert r.status == 200
    subject = r.body.split(b"subject/", 1)[1].split(b":", 1)[1]
    cards = [subject[i : i + 8].strip() for i in range(0, len(subject) - 2, 80)]
    assert b"CDELT1" not in cards and b"OBJECT" not in cards and b"FILTER" not in cards
    assert b"CRVAL2" in cards and b"CD2_2" in cards
    for query in ("obj=title", "CVT=fits", "JTL=0,0"):
        r = app.handle({"QUERY_STRING": "FIF=b.fits&" + query})
        assert r.status in (200, 400), query  # obj=title: nothing to say, error 2 1
    r = app.handle({"QUERY_STRING": "FIF=b.fits&CVT=fits"})
    with fits.open(io.BytesIO(r.body)) as cut:
        assert cut[0].header["CTYPE1"] == "RA---TAN" and "OBJECT" not in cut[0].header
        assert cut[0].data.shape == (40, 50)
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]


def test_axes_of_length_zero_hold_no_image(tmp_path):
    """NAXIS3 = 0 (a cube without planes) is no image: the next image HDU is served,
    or, without one, a 404 file error (it used to be a 500 on every request)."""
    fits.PrimaryHDU(np.ones((2, 30, 40), np.float32)).writeto(tmp_path / "cube.fits")
    empty = _set_card((tmp_path / "cube.fits").read_bytes()[:2880], "NAXIS3", "0")
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.full((20, 10), 7, np.int16))]).writeto(
        tmp_path / "ext.fits")
    (tmp_path / "zero.fits").write_bytes(empty + (tmp_path / "ext.fits").read_bytes()[2880:])
    (tmp_path / "only.fits").write_bytes(empty)
    app = make_app(tmp_path)
    for fif in ("zero.fits", "zero.fits[*]"):
        r = app.handle({"QUERY_STRING": "FIF=%s&obj=max-size" % fif})
        assert r.body == b"\r\nMax-size:10 20\r\n"
    for query in ("FIF=zero.fits[0]&obj=max-size", "FIF=only.fits&JTL=0,0",
                  "FIF=only.fits&CVT=jpeg", "FIF=only.fits[*]&JTL=0,0"):
        r = app.handle({"QUERY_STRING": query})
        assert r.status == 404, query
