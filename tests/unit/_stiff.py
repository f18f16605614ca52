"""STIFF 2.4 as a reference: running Debian's ``stiff`` on a FITS file and reading the display
range it writes, and the seeded sky images the display-range tests feed it.

Without the binary the tests that need it are skipped, and fail under CI=true.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

F32 = np.float32


def stiff_binary() -> str:
    path = shutil.which("stiff")
    if path is None:
        message = "STIFF is not installed (apt-get install stiff)"
        if os.environ.get("CI", "").strip().lower() in {"true", "1"}:
            pytest.fail(message + "; CI=true needs it")
        pytest.skip(message)
    return path


def run_stiff(path: Path, workdir: Path) -> tuple[float, float]:
    """STIFF's default display range of a 2-D FITS file: the SMinSampleValue and
    SMaxSampleValue of the float TIFF it writes."""
    tifffile = pytest.importorskip("tifffile")
    out = workdir / (path.stem + ".tif")
    subprocess.run([stiff_binary(), str(path), "-OUTFILE_NAME", str(out),
                    "-BITS_PER_CHANNEL", "-32", "-COMPRESSION_TYPE", "NONE", "-WRITE_XML", "N",
                    "-VERBOSE_TYPE", "QUIET", "-NTHREADS", "1"],
                   cwd=workdir, check=True, capture_output=True, timeout=300)
    with tifffile.TiffFile(out) as tif:
        tags = tif.pages[0].tags
        return float(tags["SMinSampleValue"].value), float(tags["SMaxSampleValue"].value)


def sky_image(width: int, height: int, seed: int, nstars: int = 400, galaxy: bool = False,
              sky: float = 1000.0, noise: float = 10.0) -> np.ndarray:
    """Seeded float32 sky in FITS order: background with a gradient, Gaussian noise, stars
    (Gaussian cores with Moffat wings, power-law fluxes) and, optionally, a bright extended
    galaxy in the upper part of the image."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = sky + 0.01 * sky * (x / width - 0.5) + 0.005 * sky * (y / height)
    img = img + rng.normal(0.0, noise, (height, width))
    r = 12
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    rr2 = (xx ** 2 + yy ** 2).astype(np.float64)
    for _ in range(nstars):
        cx, cy = rng.integers(r, width - r), rng.integers(r, height - r)
        flux = 200.0 * (1.0 - rng.uniform()) ** (-1.0)  # N(>F) ~ 1/F
        fwhm = rng.uniform(2.5, 4.0)
        s2 = (fwhm / 2.355) ** 2
        psf = 0.8 * np.exp(-rr2 / (2 * s2)) / (2 * np.pi * s2) + \
            0.2 * 1.5 / (np.pi * 9.0) * (1 + rr2 / 9.0) ** -2.5
        img[cy - r : cy + r + 1, cx - r : cx + r + 1] += flux * psf
    if galaxy:  # de Vaucouleurs profile, effective radius 300 pixels, axis ratio 0.6
        gx, gy = 0.6 * width, 0.8 * height
        rg = np.hypot(x - gx, (y - gy) / 0.6)
        img = img + 20.0 * noise * np.exp(-7.67 * ((rg / 300.0) ** 0.25 - 1.0))
    return img.astype(F32)
