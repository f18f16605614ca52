"""GAM and CNT arguments: the numbers of the IIP protocol, iipsrv 1.2's words and iipy's.

``GAM`` (protocol §5.14) takes a number, the exponent of a power law, or a word:

- ``log`` or ``logarithm`` (iipsrv 1.2): log(1 + 255 v) / log(256);
- ``asinh`` or ``asinh:BETA`` (iipy): Lupton's arcsinh, asinh(v / BETA) / asinh(1 / BETA), BETA
  0.1 by default, clamped to [1e-6, 1e6] (NaN gives the default);
- ``sqrt`` (iipy): the square root (the same curve as ``GAM=0.5``, computed exactly).

``CNT`` (§5.13) takes a number, the contrast factor, or ``eq``/``equalization`` (histogram
equalisation) or ``st``/``stretch`` (linear stretch between the first and last non-empty levels
of the histogram), as in iipsrv 1.2. Words are case-insensitive; anything else is read as a
number with C's ``atof`` (``GAM=abc`` is a power of 0). iipsrv 1.2 also treats the numbers -1
(``GAM=-1``, ``CNT=-1``) as its reserved codes for ``log`` and ``st``; iipy gives them their
numeric meaning, as iipsrv 1.1 and the astronomy fork do.

The stretches work on the normalised value v after CTW and band flattening, before INV, CMP and
quantisation (``iipy.imaging.kernels``' docstring lists the whole pipeline), and all start from
max(v, 0) as the power law does: iipsrv 1.2 takes the logarithm of v itself, which turns values
below -1/255 into NaN and those pixels white.
"""

from __future__ import annotations

from typing import Literal

from iipy.imaging.kernels import (
    ASINH_BETA,
    STRETCH_ASINH,
    STRETCH_LOG,
    STRETCH_POWER,
    STRETCH_SQRT,
    asinh_beta,
)
from iipy.settings import atof

__all__ = ["parse_contrast", "parse_stretch"]

_WORDS = {
    "log": STRETCH_LOG,
    "logarithm": STRETCH_LOG,
    "sqrt": STRETCH_SQRT,
}


def parse_stretch(gam_arg: str) -> tuple[int, float] | None:
    """The stretch of a GAM argument: (code, parameter) for ``iipy.kernels.render``'s
    ``stretch`` and ``gamma``, or None for the identity (a power of exactly 1).

    >>> parse_stretch("0.4545")
    (0, 0.4545)
    >>> parse_stretch("LOG"), parse_stretch("asinh"), parse_stretch("asinh:0.02")
    ((1, 0.0), (2, 0.1), (2, 0.02))
    """
    word = gam_arg.lower()
    code = _WORDS.get(word)
    if code is not None:
        return code, 0.0
    if word == "asinh" or word.startswith("asinh:"):
        rest = word[len("asinh:"):]
        beta = ASINH_BETA if not rest else asinh_beta(atof(rest))
        return STRETCH_ASINH, beta
    gamma = atof(gam_arg)
    if gamma == 1.0:
        return None
    return STRETCH_POWER, gamma


def parse_contrast(cnt_arg: str) -> float | Literal["eq", "st"]:
    """The contrast of a CNT argument: a factor, ``"eq"`` or ``"st"``.

    As in iipsrv 1.2, ``"eq"`` turns equalisation on and leaves the factor as it was, and
    ``"st"`` sets the factor to 1 and narrows the range; a later number replaces ``"st"`` (not
    ``"eq"``).

    >>> parse_contrast("1.5"), parse_contrast("Equalization"), parse_contrast("st")
    (1.5, 'eq', 'st')
    """
    word = cnt_arg.lower()
    if word in ("eq", "equalization"):
        return "eq"
    if word in ("st", "stretch"):
        return "st"
    return atof(cnt_arg)
