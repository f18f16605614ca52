"""TIFF files for the tests of ``iipy.imaging.sources.tiff``, written at test time.

* ``write_levels``: a pyramid written by tifffile, each level given as an array, with
  the reduced levels as further pages or as SubIFDs of the first page;
* ``vips`` and ``stiff``: the command-line tools sites convert their images with
  (Debian ``libvips-tools`` and ``stiff``); a missing tool skips the test, or fails
  it when the environment variable CI is ``true``;
* ``tag_entry`` and ``patch``: what the corpus of broken files is made with.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import tifffile


def write_levels(path: str | os.PathLike[str], levels: Sequence[np.ndarray], *,
                 tile: tuple[int, int] = (256, 256), subifds: bool = False,
                 compression: str | None = None, predictor: bool | int | None = None,
                 photometric: str | None = None, planarconfig: str | None = None,
                 byteorder: str = "<", bigtiff: bool = False,
                 extratags: Sequence[tuple[Any, ...]] = (), colormap: np.ndarray | None = None,
                 compressionargs: dict[str, Any] | None = None, **first: Any) -> None:
    """Write ``levels`` (each ``(h, w)`` or ``(h, w, samples)``, or ``(samples, h, w)``
    with ``planarconfig="separate"``) as one tiled TIFF; ``tile`` is (width, height).

    ``first`` goes to the first page only (description, software, datetime, ...).
    """
    if photometric is None:
        photometric = "rgb" if levels[0].ndim == 3 and levels[0].shape[-1] == 3 \
            and planarconfig is None else "minisblack"
    common = dict(tile=(tile[1], tile[0]), compression=compression, predictor=predictor,
                  photometric=photometric, planarconfig=planarconfig, metadata=None,
                  compressionargs=compressionargs, colormap=colormap)
    first.setdefault("software", False)  # no Software tag unless asked for
    with tifffile.TiffWriter(path, byteorder=byteorder, bigtiff=bigtiff) as tif:
        tif.write(levels[0], subifds=len(levels) - 1 if subifds else None,
                  extratags=list(extratags), **common, **first)
        for level in levels[1:]:
            tif.write(level, subfiletype=1, **common)


def random_levels(shape: tuple[int, ...], dtype: str, count: int, seed: int) -> list[np.ndarray]:
    """``count`` levels of random samples, each half the size of the one before; the
    content of each level is independent, so a level read from the wrong page shows."""
    rng = np.random.default_rng(seed)
    out = []
    h, w = shape[0], shape[1]
    for _ in range(count):
        s = (h, w) + tuple(shape[2:])
        if np.dtype(dtype).kind == "f":
            out.append((rng.standard_normal(s) * 1000).astype(dtype))
        else:
            info = np.iinfo(dtype)
            out.append(rng.integers(info.min, info.max, s, endpoint=True, dtype=dtype))
        h, w = h // 2, w // 2
    return out


def smooth_rgb(width: int, height: int) -> np.ndarray:
    """An 8-bit RGB image smooth enough for JPEG to keep it within a few DN."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    r = 128 + 100 * np.sin(x / 53.0) * np.cos(y / 71.0)
    g = 20 + 200 * x / width
    b = 30 + 180 * (0.5 + 0.5 * np.sin((x + y) / 97.0))
    return np.rint(np.stack([r, g, b], axis=-1)).astype(np.uint8)


def mean_2x2(a: np.ndarray) -> np.ndarray:
    """Floor-size 2x2 means (float64) of an ``(h, w[, c])`` array."""
    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    b = a[:h, :w].astype(np.float64)
    return b.reshape(h // 2, 2, w // 2, 2, *a.shape[2:]).mean(axis=(1, 3))


def as_planes(a: np.ndarray) -> np.ndarray:
    """``(h, w)`` or ``(h, w, c)`` as ``(c, h, w)``."""
    return a[np.newaxis] if a.ndim == 2 else np.moveaxis(a, -1, 0)


# --- external tools ----------------------------------------------------------------


def require_tool(name: str, package: str) -> str:
    """The path of ``name``; a missing tool skips the test, and fails it under CI=true."""
    path = shutil.which(name)
    if path is None:
        message = "%s not found (install the Debian package %s)" % (name, package)
        if os.environ.get("CI", "").strip().lower() in {"true", "1"}:
            pytest.fail(message + "; CI=true requires it", pytrace=False)
        pytest.skip(message)
    return path


def run(*argv: str, cwd: str | os.PathLike[str] | None = None) -> None:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise AssertionError("%s failed (%d): %s" % (argv[0], proc.returncode, proc.stderr))


def vips_from_array(tmp: str, name: str, pixels: np.ndarray) -> str:
    """A vips image file (``.v``) holding ``pixels`` (``(h, w)`` or ``(h, w, 3)``)."""
    vips = require_tool("vips", "libvips-tools")
    h, w = pixels.shape[:2]
    bands = 1 if pixels.ndim == 2 else pixels.shape[2]
    raw = os.path.join(tmp, name + ".raw")
    np.ascontiguousarray(pixels).astype(pixels.dtype.newbyteorder("<")).tofile(raw)
    fmt = {"u1": "uchar", "u2": "ushort"}[pixels.dtype.str[1:]]
    interp = {("u1", 3): "srgb", ("u1", 1): "b-w", ("u2", 1): "grey16", ("u2", 3): "rgb16"}[
        (pixels.dtype.str[1:], bands)]
    out = os.path.join(tmp, name + ".v")
    run(vips, "rawload", raw, out, str(w), str(h), str(bands), "--format", fmt,
        "--interpretation", interp)
    return out


def vips_pyramid(tmp: str, name: str, pixels: np.ndarray, *options: str) -> str:
    """``vips tiffsave <image> <name>.tif --tile --pyramid <options>``."""
    vips = require_tool("vips", "libvips-tools")
    src = vips_from_array(tmp, name, pixels)
    out = os.path.join(tmp, name + ".tif")
    run(vips, "tiffsave", src, out, "--tile", "--pyramid", *options)
    return out


def stiff_pyramid(tmp: str, name: str, fits_paths: Sequence[str], *options: str) -> str:
    """A STIFF float pyramid of ``fits_paths`` (one file per channel), with the options
    VisiOmatic 2's documentation recommends."""
    stiff = require_tool("stiff", "stiff")
    out = os.path.join(tmp, name + ".tif")
    run(stiff, *fits_paths, "-OUTFILE_NAME", out, "-IMAGE_TYPE", "TIFF-PYRAMID",
        "-BITS_PER_CHANNEL", "-32", "-BINNING", "1", "-COMPRESSION_TYPE", "NONE",
        "-TILE_SIZE", "256", "-COPY_HEADER", "Y", "-WRITE_XML", "N",
        "-VERBOSE_TYPE", "QUIET", "-NTHREADS", "1", *options, cwd=tmp)
    return out


# --- breaking files ------------------------------------------------------------------


def tag_entry(path: str | os.PathLike[str], code: int, page: int = 0) -> tuple[int, str, bool]:
    """(file offset of the IFD entry of tag ``code`` on top-level page ``page``, byte
    order, BigTIFF) of a classic or BigTIFF file."""
    with tifffile.TiffFile(path) as tif:
        return tif.pages[page].tags[code].offset, tif.byteorder, tif.is_bigtiff


def patch(data: bytearray, offset: int, fmt: str, *values: Any) -> None:
    """Overwrite ``data`` at ``offset`` with ``values`` packed by ``fmt``."""
    struct.pack_into(fmt, data, offset, *values)


def patch_tag(data: bytearray, entry: int, order: str, big: bool, *,
              count: int | None = None, value: int | None = None, dtype: int | None = None) -> None:
    """Change an IFD entry: its type, its count, or its (inline) value or value offset.
    A SHORT or LONG inline value is written as the entry's type requires."""
    if dtype is not None:
        patch(data, entry + 2, order + "H", dtype)
    if count is not None:
        patch(data, entry + 4, order + ("Q" if big else "I"), count)
    if value is not None:
        kind = struct.unpack_from(order + "H", data, entry + 2)[0]
        at = entry + (12 if big else 8)
        fmt = {3: "H", 4: "I", 16: "Q"}.get(kind, "Q" if big else "I")
        patch(data, at, order + fmt, value)
