"""Tiled pyramidal TIFF files that the reference iipsrv 1.1 can serve.

Parity tests compare iipy (serving FITS) with iipsrv 1.1 (serving TIFF).  For the
comparison to be meaningful, the TIFF must hold exactly the pyramid iipy computes
(docs/protocol.md §7.2, §7.6):

* level sizes halve with **floor**: ``W_k = W >> k``, ``H_k = H >> k``;
* the pyramid stops at the first level whose both dimensions fit in one tile;
* each reduced pixel is the mean of the finite values of the 2×2 block of the level
  above (NaN if none is finite), anchored at the top-left corner;
* every level is a **top-level IFD**, full resolution first, every level tiled
  (iipsrv 1.1 counts resolutions along the main IFD chain: a SubIFD pyramid is
  reported as ``Resolution-number:1``);
* SMinSampleValue/SMaxSampleValue (one double per sample) give the default display
  range; iipsrv keeps them as C floats, so ``obj=min-max-sample-values`` shows
  float32 values with ``%.9g`` (0.1 is reported as ``0.100000001``);
* ImageDescription carries the FITS header (``obj=subject``), on the first IFD only;
  no tifffile JSON description is added.

Rows are written in array order (row 0 is the top of the image as served).  FITS
data must therefore be flipped vertically by the caller (``data[..., ::-1, :]``) to
match what iipy serves for the same file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import tifffile

__all__ = ["level_sizes", "pyramid_levels", "reduce_2x2", "write_pyramid_tiff"]

#: TIFF tag numbers (TIFF 6.0) of the per-sample display range.
TAG_SMIN_SAMPLE_VALUE = 340
TAG_SMAX_SAMPLE_VALUE = 341


def _tile_shape(tile: int | Sequence[int]) -> tuple[int, int]:
    """Return ``(tile_width, tile_height)`` from an int or a ``(width, height)`` pair."""
    tw, th = (tile, tile) if isinstance(tile, int) else tuple(tile)
    if tw <= 0 or th <= 0 or tw % 16 or th % 16:
        raise ValueError(f"TIFF tile sizes must be positive multiples of 16, not {tw}x{th}")
    return int(tw), int(th)


def level_sizes(width: int, height: int, tile: int | Sequence[int] = 256) -> list[tuple[int, int]]:
    """Return the ``(width, height)`` of every pyramid level, full resolution first.

    Sizes halve with floor division; the list ends with the first level whose both
    dimensions are at most the tile size (a single level if the image fits in one
    tile).  ``len(result)`` is the IIP ``Resolution-number``.
    """
    tw, th = _tile_shape(tile)
    sizes = [(width, height)]
    while sizes[-1][0] > tw or sizes[-1][1] > th:
        w, h = sizes[-1]
        if w < 2 or h < 2:
            raise ValueError(f"a {width}x{height} image has an empty level under floor halving")
        sizes.append((w // 2, h // 2))
    return sizes


def reduce_2x2(level: np.ndarray) -> np.ndarray:
    """Halve a ``(channels, height, width)`` level with floor sizes.

    Each output pixel is the mean of the finite values of its 2×2 block (NaN when
    none is finite); an odd last row or column is dropped.  Integer data are rounded
    to the nearest value; the dtype is preserved.
    """
    c, h, w = level.shape
    blocks = level[:, : h // 2 * 2, : w // 2 * 2].astype(np.float64)
    blocks = blocks.reshape(c, h // 2, 2, w // 2, 2)
    finite = np.isfinite(blocks)
    total = np.where(finite, blocks, 0.0).sum(axis=(2, 4))
    count = finite.sum(axis=(2, 4))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    if np.issubdtype(level.dtype, np.integer):
        mean = np.floor(mean + 0.5)
    return mean.astype(level.dtype)


def _as_planes(data: np.ndarray) -> np.ndarray:
    """Return *data* as ``(channels, height, width)``; a 2-D image gets one channel."""
    data = np.asarray(data)
    if data.ndim == 2:
        return data[np.newaxis]
    if data.ndim == 3:
        return data
    raise ValueError(f"expected a 2-D image or a (channels, height, width) cube, got shape {data.shape}")


def pyramid_levels(data: np.ndarray, tile: int | Sequence[int] = 256) -> list[np.ndarray]:
    """Return every level of the pyramid of *data*, full resolution first.

    *data* is ``(height, width)`` or ``(channels, height, width)`` (FITS axis
    order); the levels have the same layout as *data*.
    """
    planes = _as_planes(data)
    sizes = level_sizes(planes.shape[2], planes.shape[1], tile)
    levels = [planes]
    for _ in sizes[1:]:
        levels.append(reduce_2x2(levels[-1]))
    return [lv[0] for lv in levels] if np.ndim(data) == 2 else levels


def _per_sample(values: float | Sequence[float] | None, nsamples: int, name: str) -> tuple[float, ...] | None:
    """Broadcast a scalar (or check a sequence) to one value per sample."""
    if values is None:
        return None
    seq = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if seq.size == 1:
        seq = np.repeat(seq, nsamples)
    if seq.size != nsamples:
        raise ValueError(f"{name}: {seq.size} values for {nsamples} channels")
    return tuple(float(v) for v in seq)


def write_pyramid_tiff(
    path: str | os.PathLike[str],
    data: np.ndarray,
    tile: int | Sequence[int] = 256,
    smin: float | Sequence[float] | None = None,
    smax: float | Sequence[float] | None = None,
    description: str | None = None,
) -> list[tuple[int, int]]:
    """Write *data* as an uncompressed, tiled, pyramidal TIFF that iipsrv 1.1 reads.

    *data* is a 2-D image ``(height, width)`` or a cube ``(channels, height, width)``
    (stored as interleaved MinIsBlack samples); float32 gives ``Bits-per-channel:32``.
    *smin*/*smax* (a scalar for all channels or one value per channel) are written
    as SMinSampleValue/SMaxSampleValue doubles; omitted when None.  *description*
    becomes the ImageDescription of the first IFD (7-bit ASCII).

    Returns the ``(width, height)`` of each level, full resolution first.
    """
    planes = _as_planes(data)
    nsamples = planes.shape[0]
    tw, th = _tile_shape(tile)
    extratags = []
    for tag, values, name in ((TAG_SMIN_SAMPLE_VALUE, smin, "smin"), (TAG_SMAX_SAMPLE_VALUE, smax, "smax")):
        per_sample = _per_sample(values, nsamples, name)
        if per_sample is not None:
            extratags.append((tag, "d", nsamples, per_sample, True))
    levels = pyramid_levels(planes, (tw, th))
    with tifffile.TiffWriter(path) as tif:
        for k, level in enumerate(levels):
            pixels = level[0] if nsamples == 1 else np.moveaxis(level, 0, -1)
            tif.write(
                np.ascontiguousarray(pixels),
                tile=(th, tw),  # tifffile takes (length, width)
                photometric="minisblack",
                planarconfig="contig" if nsamples > 1 else None,
                description=description if k == 0 else None,
                metadata=None,  # no tifffile JSON description: ImageDescription is ours alone
                extratags=extratags,
            )
    return [(lv.shape[2], lv.shape[1]) for lv in levels]
