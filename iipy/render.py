"""Display settings of one request (MINMAX, CNT, GAM, CMP, INV, CTW) and their
application to float32 data, in the order of iip-protocol.md §6.2 (ASTRO)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import kernels
from .fitsimage import DisplayRange


@dataclass(slots=True)
class View:
    """Mutable while the request's modifiers are applied left to right."""

    minmax: dict[int, tuple[float, float]] = field(default_factory=dict)  # 0-based channel
    contrast: float = 1.0
    gamma: float = 1.0
    cmap: int = kernels.CMAP_NONE
    invert: bool = False
    ctw: list[list[float]] = field(default_factory=list)
    quality: int | None = None

    def key(self) -> tuple:
        """Everything that changes rendered pixels, normalised (for cache keys)."""
        return (tuple(sorted(self.minmax.items())), self.contrast, self.gamma, self.cmap,
                self.invert, tuple(tuple(r) for r in self.ctw))


def ranges_for(view: View, defaults: list[DisplayRange]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (mins, maxs): the image defaults overridden by MINMAX."""
    mins = np.array([r.lo for r in defaults], np.float64)
    maxs = np.array([r.hi for r in defaults], np.float64)
    for c, (lo, hi) in view.minmax.items():
        if 0 <= c < len(defaults):
            mins[c], maxs[c] = lo, hi
    return mins, maxs


def render(src: np.ndarray, view: View, defaults: list[DisplayRange]) -> np.ndarray:
    """float32 (C, h, w) to uint8 (h, w) grey or (h, w, 3) colour."""
    mins, maxs = ranges_for(view, defaults)
    ctw = np.array(_rectangular(view.ctw), np.float32) if view.ctw else None
    return kernels.render(src, mins, maxs, ctw=ctw, gamma=view.gamma, invert=view.invert,
                          cmap=view.cmap, contrast=view.contrast)


def _rectangular(rows: list[list[float]]) -> list[list[float]]:
    """Pad ragged CTW rows with zeros (a missing coefficient contributes nothing)."""
    width = max(len(r) for r in rows)
    return [list(r) + [0.0] * (width - len(r)) for r in rows]
