#!/usr/bin/env python3
"""Write small, realistic FITS example images for the iipy demo and tests.

Usage::

    python examples/make_examples.py [OUTDIR] [--seed N]

OUTDIR defaults to ``examples/data/`` next to this script.  The output depends only
on the seed (no time stamps), so the same seed always gives byte-identical files.
All three images show the same synthetic sky field (one star catalogue in world
coordinates, projected through each image's WCS):

``sky.fits``
    2048×1536 float32 (BITPIX −32): sky background ~100 ADU with a gentle gradient,
    Gaussian read noise σ≈5 plus photon noise, ~400 stars (Gaussian core + Moffat
    wings, power-law fluxes), one elliptical galaxy (Sérsic n=4), a small NaN block,
    TAN WCS as a CD matrix with a small rotation.
``cube.fits``
    1200×900×3 float32 cube (NAXIS3=3) of the same field in the g, r and i bands
    (named by FILTER1..FILTER3, stars of different colours, seeing per band), CD
    matrix WCS with CD3_3 = 1 for the band axis.
``int16.fits``
    983×1061 BITPIX=16 with the unsigned convention (BZERO=32768, BSCALE=1),
    values clipped to 1..65535 and a few BLANK (-32768, physical 0) pixels; WCS as CDELT + PC
    written by astropy (with LONPOLE/LATPOLE), CDELT1 with a Fortran ``D``
    exponent, to exercise header conversion for clients that need a CD matrix.

``make_all(outdir)`` is importable and returns ``{"sky": path, "cube": path,
"int16": path}``.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

DEFAULT_SEED = 20240315
DEFAULT_OUTDIR = Path(__file__).resolve().parent / "data"

#: Centre of the synthetic field (degrees, ICRS).
FIELD_RA, FIELD_DEC = 150.1, 2.2
#: Half-size of the sky box holding the star catalogue (degrees; covers every image).
FIELD_HALF_SIZE = 0.066
#: Rotation of every image with respect to north-up, east-left (degrees).
ROTATION_DEG = 1.5
#: Bands of the cube and the stars' default colour offsets.
BANDS = ("g", "r", "i")

COMMON_CARDS = [
    ("OBJECT", "iipy example field", "Target name"),
    ("TELESCOP", "SIMULATED", "Synthetic data written by make_examples.py"),
    ("INSTRUME", "IIPY-SIM", "Instrument name"),
    ("DATE-OBS", "2024-03-15T03:21:45.000", "Start of the exposure (UTC)"),
    ("MJD-OBS", 60384.14010417, "Modified Julian date at start of exposure"),
    ("EXPTIME", 300.0, "[s] Exposure time"),
    ("AIRMASS", 1.184, "Airmass at start of exposure"),
    ("GAIN", 4.0, "[e-/ADU] Detector gain"),
    ("RADESYS", "ICRS", "Celestial reference frame"),
    ("EQUINOX", 2000.0, "[yr] Equinox of the coordinates"),
]


# --------------------------------------------------------------------------- catalogue


@dataclass(frozen=True)
class Catalogue:
    """Stars in world coordinates with their r-band flux and two colours (magnitudes)."""

    ra: np.ndarray
    dec: np.ndarray
    flux_r: np.ndarray  # total flux in ADU for a 1×1 normalised PSF at the r zero point
    g_r: np.ndarray
    r_i: np.ndarray


#: The galaxy: world position, Sérsic parameters in arcseconds, colours.
GALAXY = {
    "ra": FIELD_RA + 0.012,
    "dec": FIELD_DEC - 0.006,
    "r_eff_arcsec": 14.0,
    "axis_ratio": 0.6,
    "pa_deg": 35.0,
    "mu_eff_r": 4.0,  # r-band surface brightness at r_eff, ADU per (0.2")² pixel
    "g_r": 0.8,
    "r_i": 0.4,
}


def make_catalogue(rng: np.random.Generator, nstars: int = 740) -> Catalogue:
    """Draw *nstars* stars uniformly over the field with power-law fluxes.

    Fluxes follow N(>F) ∝ F^-1 between 300 ADU and 3·10^6 ADU; colours are Gaussian
    around a main-sequence-like locus.  About 400 of them fall inside ``sky.fits``.
    """
    cos_dec = math.cos(math.radians(FIELD_DEC))
    ra = FIELD_RA + rng.uniform(-FIELD_HALF_SIZE, FIELD_HALF_SIZE, nstars) / cos_dec
    dec = FIELD_DEC + rng.uniform(-FIELD_HALF_SIZE, FIELD_HALF_SIZE, nstars)
    fmin, fmax, slope = 300.0, 3.0e6, 1.0
    u = rng.uniform(0.0, 1.0, nstars)
    flux = fmin * (1.0 - u * (1.0 - (fmin / fmax) ** slope)) ** (-1.0 / slope)
    g_r = rng.normal(0.65, 0.35, nstars)
    r_i = np.clip(0.4 * g_r + rng.normal(0.0, 0.08, nstars), -0.3, 1.5)
    return Catalogue(ra, dec, flux, g_r, r_i)


def band_flux(cat: Catalogue, band: str) -> np.ndarray:
    """Return the catalogue fluxes in *band* (g, r or i)."""
    if band == "g":
        return cat.flux_r * 10 ** (-0.4 * cat.g_r)
    if band == "i":
        return cat.flux_r * 10 ** (0.4 * cat.r_i)
    return cat.flux_r


# --------------------------------------------------------------------------- WCS


def rotation_matrix(deg: float) -> np.ndarray:
    """2×2 rotation used as PC matrix (or scaled into a CD matrix)."""
    t = math.radians(deg)
    return np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])


def cd_wcs_cards(width: int, height: int, scale_deg: float) -> list[tuple[str, object, str]]:
    """TAN WCS cards with a CD matrix (RA increasing to the left), centred on the field."""
    cd = np.diag([-scale_deg, scale_deg]) @ rotation_matrix(ROTATION_DEG)
    return [
        ("CTYPE1", "RA---TAN", "Gnomonic projection"),
        ("CTYPE2", "DEC--TAN", "Gnomonic projection"),
        ("CUNIT1", "deg", ""),
        ("CUNIT2", "deg", ""),
        ("CRPIX1", (width + 1) / 2.0, "Reference pixel on axis 1"),
        ("CRPIX2", (height + 1) / 2.0, "Reference pixel on axis 2"),
        ("CRVAL1", FIELD_RA, "[deg] RA at the reference pixel"),
        ("CRVAL2", FIELD_DEC, "[deg] Dec at the reference pixel"),
        ("CD1_1", float(cd[0, 0]), "Linear projection matrix"),
        ("CD1_2", float(cd[0, 1]), "Linear projection matrix"),
        ("CD2_1", float(cd[1, 0]), "Linear projection matrix"),
        ("CD2_2", float(cd[1, 1]), "Linear projection matrix"),
    ]


def pc_wcs_header(width: int, height: int, scale_deg: float) -> fits.Header:
    """TAN WCS as astropy writes it: CDELT + PC, LONPOLE, LATPOLE, MJDREF, RADESYS."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.cunit = ["deg", "deg"]
    w.wcs.crpix = [(width + 1) / 2.0, (height + 1) / 2.0]
    w.wcs.crval = [FIELD_RA, FIELD_DEC]
    w.wcs.cdelt = [-scale_deg, scale_deg]
    w.wcs.pc = rotation_matrix(ROTATION_DEG)
    w.wcs.radesys = "ICRS"
    return w.to_header()


def fortran_card(key: str, value: float, comment: str) -> fits.Card:
    """A fixed-format real card written with a ``D`` exponent (e.g. ``-1.15D-04``)."""
    number = f"{value:.2E}".replace("E", "D")
    return fits.Card.fromstring(f"{key:<8}= {number:>20} / {comment}")


def header_with(cards: list[tuple[str, object, str]]) -> fits.Header:
    """Build a header from ``(keyword, value, comment)`` triples."""
    hdr = fits.Header()
    for key, value, comment in cards:
        hdr[key] = (value, comment)
    return hdr


def pixel_positions(cat: Catalogue, hdr: fits.Header) -> tuple[np.ndarray, np.ndarray]:
    """0-based (x, y) array positions of the catalogue stars in the image of *hdr*."""
    w = WCS(hdr, naxis=2)
    x, y = w.all_world2pix(cat.ra, cat.dec, 0)
    return x, y


# --------------------------------------------------------------------------- rendering


def psf_stamp(dx: np.ndarray, dy: np.ndarray, fwhm: float) -> np.ndarray:
    """Unit-flux PSF at offsets (dx, dy): 85 % Gaussian core + 15 % Moffat (β=2.5) wings."""
    r2 = dx * dx + dy * dy
    sigma = fwhm / 2.3548
    gauss = np.exp(-0.5 * r2 / sigma**2) / (2 * math.pi * sigma**2)
    beta = 2.5
    alpha = 1.6 * fwhm / (2 * math.sqrt(2 ** (1 / beta) - 1))
    moffat = (beta - 1) / (math.pi * alpha**2) * (1 + r2 / alpha**2) ** (-beta)
    return 0.85 * gauss + 0.15 * moffat


def add_stars(image: np.ndarray, x: np.ndarray, y: np.ndarray, flux: np.ndarray, fwhm: float) -> int:
    """Add point sources to *image* in place; returns how many fall inside it.

    Each star is rendered in a square stamp whose size grows with its flux.
    """
    height, width = image.shape
    inside = 0
    for xc, yc, f in zip(x, y, flux):
        half = int(min(60, 3 * fwhm + 4 * math.log10(max(f, 10.0))))
        x0, x1 = max(int(xc) - half, 0), min(int(xc) + half + 1, width)
        y0, y1 = max(int(yc) - half, 0), min(int(yc) + half + 1, height)
        if x0 >= x1 or y0 >= y1:
            continue
        inside += 0 <= xc < width and 0 <= yc < height
        yy, xx = np.mgrid[y0:y1, x0:x1]
        image[y0:y1, x0:x1] += f * psf_stamp(xx - xc, yy - yc, fwhm)
    return inside


def add_galaxy(image: np.ndarray, hdr: fits.Header, scale_deg: float, band: str) -> None:
    """Add the elliptical Sérsic (n=4) galaxy to *image* in place."""
    g = GALAXY
    w = WCS(hdr, naxis=2)
    xc, yc = (float(v) for v in w.all_world2pix(g["ra"], g["dec"], 0))
    pixel_arcsec = scale_deg * 3600.0
    r_eff = g["r_eff_arcsec"] / pixel_arcsec
    mu = g["mu_eff_r"] * (pixel_arcsec / 0.2) ** 2
    mu *= {"g": 10 ** (-0.4 * g["g_r"]), "i": 10 ** (0.4 * g["r_i"])}.get(band, 1.0)
    half = int(12 * r_eff)
    height, width = image.shape
    x0, x1 = max(int(xc) - half, 0), min(int(xc) + half + 1, width)
    y0, y1 = max(int(yc) - half, 0), min(int(yc) + half + 1, height)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    t = math.radians(g["pa_deg"] + ROTATION_DEG)
    u = (xx - xc) * math.cos(t) + (yy - yc) * math.sin(t)
    v = -(xx - xc) * math.sin(t) + (yy - yc) * math.cos(t)
    r = np.sqrt(u**2 + (v / g["axis_ratio"]) ** 2)
    b_n = 7.669  # Sérsic b_n for n = 4
    image[y0:y1, x0:x1] += mu * np.exp(-b_n * (np.power(r / r_eff + 1e-3, 0.25) - 1.0))


def sky_background(shape: tuple[int, int], level: float, gradient: tuple[float, float]) -> np.ndarray:
    """A plane ``level + gx·(x/width − ½) + gy·(y/height − ½)`` (total change gx, gy ADU)."""
    height, width = shape
    y, x = np.ogrid[0:height, 0:width]
    return level + gradient[0] * (x / width - 0.5) + gradient[1] * (y / height - 0.5)


def add_noise(image: np.ndarray, rng: np.random.Generator, read_noise: float, gain: float) -> np.ndarray:
    """Return *image* with Gaussian read noise and (Gaussian-approximated) photon noise."""
    sigma = np.sqrt(read_noise**2 + np.maximum(image, 0.0) / gain)
    return image + sigma * rng.standard_normal(image.shape)


def render_band(
    shape: tuple[int, int], hdr: fits.Header, cat: Catalogue, band: str, scale_deg: float,
    fwhm: float, sky: float, rng: np.random.Generator,
) -> np.ndarray:
    """Render one band of the field as float64 (background, stars, galaxy, noise)."""
    image = sky_background(shape, sky, (0.06 * sky, -0.03 * sky))
    x, y = pixel_positions(cat, hdr)
    add_stars(image, x, y, band_flux(cat, band), fwhm)
    add_galaxy(image, hdr, scale_deg, band)
    return add_noise(image, rng, read_noise=5.0, gain=4.0)


# --------------------------------------------------------------------------- files


def make_sky(path: Path, cat: Catalogue, rng: np.random.Generator) -> Path:
    """Write ``sky.fits``: 2048×1536 float32 r-band image with a NaN block."""
    width, height, scale = 2048, 1536, 5.5e-5
    hdr = header_with(cd_wcs_cards(width, height, scale))
    data = render_band((height, width), hdr, cat, "r", scale, fwhm=3.2, sky=100.0, rng=rng).astype(np.float32)
    data[1100:1112, 300:320] = np.nan  # bad pixels
    out = header_with(COMMON_CARDS + [("FILTER", "r", "Filter name"), ("BUNIT", "ADU", "Pixel unit")])
    out.update(hdr)
    out["SATURATE"] = (60000.0, "[ADU] Saturation level")
    out.add_comment("Synthetic image: stars, a galaxy and a NaN block of bad pixels.")
    fits.PrimaryHDU(data, header=out).writeto(path, overwrite=True)
    return path


def make_cube(path: Path, cat: Catalogue, rng: np.random.Generator) -> Path:
    """Write ``cube.fits``: the same field in g, r, i as a 3-plane float32 cube."""
    width, height = 1200, 900
    scale = 5.5e-5 * 2048 / width  # same field of view as sky.fits
    wcs_cards = cd_wcs_cards(width, height, scale)
    hdr = header_with(wcs_cards)
    seeing = {"g": 3.0, "r": 2.6, "i": 2.3}
    sky = {"g": 60.0, "r": 100.0, "i": 150.0}
    planes = [
        render_band((height, width), hdr, cat, band, scale, seeing[band], sky[band], rng) for band in BANDS
    ]
    data = np.stack(planes).astype(np.float32)
    out = header_with(COMMON_CARDS)
    for i, band in enumerate(BANDS, start=1):
        out[f"FILTER{i}"] = (band, f"Filter of plane {i}")
    out["BUNIT"] = ("ADU", "Pixel unit")
    out.update(hdr)
    out["CD3_3"] = (1.0, "Axis 3 is the band (plane index)")  # keeps the CD matrix regular
    out.add_comment("Synthetic g, r, i cube of the field of sky.fits.")
    fits.PrimaryHDU(data, header=out).writeto(path, overwrite=True)
    return path


def make_int16(path: Path, cat: Catalogue, rng: np.random.Generator) -> Path:
    """Write ``int16.fits``: 983×1061 unsigned 16-bit data (BZERO=32768) with BLANK pixels."""
    width, height, scale = 983, 1061, 1.15e-4
    wcs_hdr = pc_wcs_header(width, height, scale)
    phys = render_band((height, width), wcs_hdr, cat, "i", scale, fwhm=2.4, sky=1000.0, rng=rng)
    data = np.clip(np.rint(phys), 1, 65535).astype(np.uint16)  # 0 is reserved for BLANK
    ys = rng.integers(0, height, 12)
    xs = rng.integers(0, width, 12)
    data[ys, xs] = 0  # stored as -32768 = BLANK
    data[700:706, 411] = 0  # a short bad column
    hdr = header_with(COMMON_CARDS + [("FILTER", "i", "Filter name"), ("BUNIT", "ADU", "Pixel unit")])
    hdr.update(wcs_hdr)
    hdr["EQUINOX"] = (2000.0, "[yr] Equinox of the coordinates")
    hdr["SATURATE"] = (65535, "[ADU] Saturation level")
    # A Fortran-style exponent, legal in FITS but misread by some JavaScript clients.
    idx = hdr.index("CDELT1")
    comment = hdr.comments["CDELT1"]
    del hdr["CDELT1"]
    hdr.insert(idx, fortran_card("CDELT1", -scale, comment))
    hdu = fits.PrimaryHDU(data, header=hdr)  # uint16 → BITPIX=16, BZERO=32768, BSCALE=1
    hdu.header["BLANK"] = (-32768, "Stored value of undefined pixels")
    hdu.writeto(path, overwrite=True)
    return path


def make_all(outdir: str | Path = DEFAULT_OUTDIR, seed: int = DEFAULT_SEED) -> dict[str, Path]:
    """Write every example into *outdir* (created if needed) and return ``{name: path}``.

    Names are the file stems: ``sky``, ``cube`` and ``int16``.  Each file draws
    from its own child of ``numpy.random.SeedSequence(seed)``.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    cat_seq, sky_seq, cube_seq, int16_seq = np.random.SeedSequence(seed).spawn(4)
    cat = make_catalogue(np.random.default_rng(cat_seq))
    return {
        "sky": make_sky(outdir / "sky.fits", cat, np.random.default_rng(sky_seq)),
        "cube": make_cube(outdir / "cube.fits", cat, np.random.default_rng(cube_seq)),
        "int16": make_int16(outdir / "int16.fits", cat, np.random.default_rng(int16_seq)),
    }


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("outdir", nargs="?", default=str(DEFAULT_OUTDIR), help="output directory")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed (default %(default)s)")
    args = parser.parse_args(argv)
    for name, path in make_all(args.outdir, args.seed).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
