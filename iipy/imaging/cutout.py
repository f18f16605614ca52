"""Science cut-outs (``CVT=fits``, docs/protocol.md §5.6): the stored values of a region
at a resolution level, averaged in integer blocks, never interpolated.

The values are those PFL reports: at full resolution the calibrated samples (BSCALE and
BZERO applied, BLANK as NaN), at reduced levels the pyramid's means of finite values.
A block of b x b level pixels becomes the mean of its finite values (NaN when none is),
the rule the pyramid itself follows, so a cut-out binned by 2^k from full resolution
equals level k's pixels.  Rows are read in strips, so memory beyond the output stays
under ``STRIP_BYTES``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from iipy.imaging.region import Cutout

#: Bytes of source data handled at once (bounds the memory used besides the output).
STRIP_BYTES = 32 << 20


def block_mean(a: np.ndarray, b: int) -> np.ndarray:
    """The mean of the finite values of each b x b block of ``a`` (C, h b, w b), as
    float64 (C, h, w); NaN where a block holds no finite value."""
    if b == 1:
        return np.asarray(a, np.float64)
    c, hb, wb = a.shape
    blocks = np.asarray(a, np.float64).reshape(c, hb // b, b, wb // b, b)
    finite = np.isfinite(blocks)
    sums = np.where(finite, blocks, 0.0).sum(axis=(2, 4))
    counts = finite.sum(axis=(2, 4))
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts


def values(read: Callable[[int, int, int, int], np.ndarray], cut: Cutout, channels: int,
           budget: int = STRIP_BYTES) -> np.ndarray:
    """float32 (C, out_h, out_w) in IIP orientation (row 0 at the top).

    ``read(x, y, w, h)`` returns float32 (C, h, w) of level ``cut.level``."""
    b = cut.factor
    out = np.empty((channels, cut.out_h, cut.out_w), np.float32)
    # float64 bytes per output row while a strip is averaged, temporaries included
    per_row = 32 * channels * b * b * cut.out_w
    rows = max(1, min(cut.out_h, budget // per_row))
    for oy0 in range(0, cut.out_h, rows):
        oy1 = min(cut.out_h, oy0 + rows)
        src = read(cut.x, cut.y + oy0 * b, cut.out_w * b, (oy1 - oy0) * b)
        out[:, oy0:oy1] = block_mean(src, b)
    return out
