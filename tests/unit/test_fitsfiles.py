"""Kinds of FITS files: tile-compressed HDUs, gzip-compressed files, damaged files."""

from __future__ import annotations

import gzip

import numpy as np
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
