"""The FITS header served as ``subject`` (docs/protocol.md §12.3)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from astropy.io import fits

from iipy.imaging.sources.fits import cd_matrix, robust_range, subject_header


def cards(text: str) -> dict[str, str]:
    assert len(text) % 80 == 0
    out = {}
    for i in range(0, len(text), 80):
        card = text[i : i + 80]
        out.setdefault(card[:8].strip(), card)
    return out


def value(card: str) -> str:
    return card[10:].split("/")[0].strip()


def visiomatic_read(text: str, key: str) -> str | None:
    """VisiOmatic 2's card reader (its regular expression, re-written in Python)."""
    m = re.search(key.ljust(8) + r"=\s*(?:'((?:[^']*?))\s*'|([-+]?[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?))",
                  text)
    if not m:
        return None
    return m.group(1) if m.group(1) is not None else m.group(2)


def test_cdelt_pc_becomes_cd_without_latpole():
    h = fits.Header()
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h["CRPIX1"], h["CRPIX2"], h["CRVAL1"], h["CRVAL2"] = 10.5, 20.5, 150.0, 2.0
    h["CDELT1"], h["CDELT2"] = -2e-4, 2e-4
    h["PC1_1"], h["PC1_2"], h["PC2_1"], h["PC2_2"] = 0.8, -0.6, 0.6, 0.8
    h["LATPOLE"] = 2.0
    h["LONPOLE"] = 180.0
    text = subject_header(h, 983, 1061, 1, [""])
    c = cards(text)
    assert "LATPOLE" not in c and "CDELT1" not in c and "PC1_1" not in c
    assert "LONPOLE" in c
    assert text.endswith("END" + " " * 77)
    assert float(visiomatic_read(text, "CD1_1")) == pytest.approx(-2e-4 * 0.8)
    assert float(visiomatic_read(text, "CD1_2")) == pytest.approx(-2e-4 * -0.6)
    assert float(visiomatic_read(text, "CD2_1")) == pytest.approx(2e-4 * 0.6)
    assert float(visiomatic_read(text, "CD2_2")) == pytest.approx(2e-4 * 0.8)
    assert visiomatic_read(text, "NAXIS1") == "983"
    assert visiomatic_read(text, "NAXIS2") == "1061"
    assert visiomatic_read(text, "CTYPE1") == "RA---TAN"
    # CD cards follow CRVAL2, as a human would write them
    keys = [text[i : i + 8].strip() for i in range(0, len(text), 80)]
    assert keys.index("CD1_1") == keys.index("CRVAL2") + 1


def test_crota2_conversion():
    h = fits.Header({"CTYPE1": "RA---TAN", "CDELT1": -1e-4, "CDELT2": 1e-4, "CROTA2": 30.0})
    cd = cd_matrix(h)
    r = math.radians(30)
    assert cd[0] == pytest.approx([-1e-4 * math.cos(r), -1e-4 * math.sin(r)])
    assert cd[1] == pytest.approx([-1e-4 * math.sin(r), 1e-4 * math.cos(r)])


def test_fortran_d_exponent_is_reserialised(tmp_path):
    raw = "".join(c.ljust(80) for c in [
        "SIMPLE  =                    T", "BITPIX  =                  -32",
        "NAXIS   =                    2", "NAXIS1  =                    4",
        "NAXIS2  =                    3", "CTYPE1  = 'RA---TAN'",
        "CDELT1  =             -1.0D-04", "CDELT2  =              1.0D-04", "END"])
    raw = raw.ljust(2880)
    path = tmp_path / "d.fits"
    path.write_bytes(raw.encode() + np.zeros(12, ">f4").tobytes().ljust(2880, b"\0"))
    with fits.open(path) as hdul:
        text = subject_header(hdul[0].header, 4, 3, 1, [""])
    assert "D-04" not in text
    assert float(visiomatic_read(text, "CD1_1")) == pytest.approx(-1e-4)
    assert float(visiomatic_read(text, "CD2_2")) == pytest.approx(1e-4)


def test_cube_gets_naxis3_and_channel_labels():
    h = fits.Header({"NAXIS": 3, "NAXIS1": 5, "NAXIS2": 4, "NAXIS3": 3})
    text = subject_header(h, 5, 4, 3, ["g", "r", "i"])
    assert visiomatic_read(text, "NAXIS3") == "3"
    assert visiomatic_read(text, "CHAN0001") == "g"
    assert visiomatic_read(text, "CHAN0003") == "i"
    assert "CD1_1" not in cards(text)  # no WCS in, none invented


def test_robust_range_ignores_stars_and_nan():
    rng = np.random.default_rng(3)
    sky = rng.normal(100.0, 5.0, 200_000)
    sky[:500] = 60000.0  # saturated stars
    sky[500:600] = np.nan
    r = robust_range(sky.astype(np.float32))
    assert 80 < r.lo < 100 < r.hi
    assert r.hi < 60000.0  # never the raw maximum
    mad = 5.0 * 0.6745
    assert r.lo == pytest.approx(100 - 2 * mad, abs=1.0)
    assert r.hi == pytest.approx(100 + 400 * mad, rel=0.05)


def test_robust_range_constant_and_empty():
    assert robust_range(np.full(100, 7.0, np.float32)) == robust_range(np.full(10, 7.0))
    r = robust_range(np.full(100, 7.0, np.float32))
    assert r.lo == 7.0 and r.hi == 8.0
    r = robust_range(np.array([np.nan, np.inf], np.float32))
    assert (r.lo, r.hi) == (0.0, 1.0)
