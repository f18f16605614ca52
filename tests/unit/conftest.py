"""Fixtures for the unit tier: small FITS files written in tmp_path, settings, an
Application called directly (no process, no socket).

Hypothesis profiles: ``default`` (100 examples a test, no deadline: the machine may be
busy) and ``thorough`` (5000 examples), chosen with ``HYPOTHESIS_PROFILE``; tests that
set their own ``max_examples`` keep it.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from astropy.io import fits
from hypothesis import settings as hypothesis_settings

hypothesis_settings.register_profile("default", deadline=None, max_examples=100)
hypothesis_settings.register_profile("thorough", deadline=None, max_examples=5000)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

from iipy.protocols.router import Application
from iipy.settings import Settings


def gradient_uint8(width: int, height: int) -> np.ndarray:
    """FITS-order (bottom row first) uint8 data whose value encodes the position."""
    y, x = np.mgrid[0:height, 0:width]
    return ((x * 7 + y * 3) % 256).astype(np.uint8)


@pytest.fixture(scope="session")
def image_root(tmp_path_factory):
    """A FILESYSTEM_PREFIX with the corpus images, and files outside it."""
    base = tmp_path_factory.mktemp("images")
    root = base / "root"
    root.mkdir()
    (root / "sub").mkdir()
    fits.PrimaryHDU(gradient_uint8(1001, 701)).writeto(root / "grey.fits")
    fits.PrimaryHDU(gradient_uint8(300, 200)).writeto(root / "small.fits")
    fits.PrimaryHDU(gradient_uint8(1001, 701)).writeto(root / "outside.fits")
    fits.PrimaryHDU(gradient_uint8(64, 64)).writeto(base / "secret.fits")
    fits.PrimaryHDU(gradient_uint8(64, 64)).writeto(base / "outside.fits")
    os.symlink(base / "secret.fits", root / "link-out.fits")
    (root / "notfits.txt").write_text("this is not a FITS file at all\n" * 4)
    (root / "short.fits").write_bytes(b"SIMPL")
    return root


@pytest.fixture
def settings(image_root, tmp_path) -> Settings:
    return Settings.from_environ({
        "FILESYSTEM_PREFIX": str(image_root) + "/",
        "IIPY_CACHE_DIR": str(tmp_path / "cache"),
        "IIPY_SERVER": "iipsrv/1.1",
        "VERBOSITY": "0",
        "MEMCACHED_SERVERS": "",
    })


@pytest.fixture
def app(settings) -> Application:
    return Application(settings)
