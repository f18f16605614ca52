"""Entry points into single steps of the compiled render kernel, for its tests: the
stretch (GAM) step with its lookup table, and CMP plus quantisation on raw values."""

from __future__ import annotations

import numpy as np

from iipy.imaging import kernels


def stretch_with_table(v: np.ndarray, stretch: int, gamma: float, e_hi: int) -> np.ndarray:
    """f(max(v, 0)) computed as render's GAM step with the table up to 2**e_hi."""
    if kernels._ck is None:
        raise RuntimeError("iipy._kernels is not built")
    code, g32, p0, p1 = kernels._stretch_params(stretch, gamma)
    out = np.array(v, dtype=np.float32, order="C").reshape(-1)
    kernels._ck.stretch_inplace(out, code, g32, p0, p1, kernels._stretch_lut(code, g32, p0, p1),
                                kernels._LUT_LO, float(2.0**e_hi))
    return out.reshape(np.shape(v))


def gamma_with_table(v: np.ndarray, gamma: float, e_hi: int) -> np.ndarray:
    """max(v, 0)**gamma computed as render's GAM step with the table up to 2**e_hi."""
    return stretch_with_table(v, kernels.STRETCH_POWER, gamma, e_hi)


def finish(v: np.ndarray, cmap: int, contrast: float, scalar: bool = False) -> np.ndarray:
    """Render's CMP and quantisation applied to raw float32 values.

    With scalar=True each value goes through the kernel alone (the one-pixel code path)."""
    if kernels._ck is None:
        raise RuntimeError("iipy._kernels is not built")
    a = np.ascontiguousarray(v, dtype=np.float32).reshape(-1)
    nb = 3 if cmap != kernels.CMAP_NONE else 1
    out = np.empty(a.size * nb, dtype=np.uint8)
    c32 = float(np.float32(contrast))
    if scalar:
        for i in range(a.size):
            kernels._ck.finish_row(a[i : i + 1], cmap, c32, out[i * nb : (i + 1) * nb])
    else:
        kernels._ck.finish_row(a, cmap, c32, out)
    return out.reshape(a.size, nb) if nb == 3 else out
