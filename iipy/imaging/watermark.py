"""The WATERMARK image, blended into tiles and exports before they are encoded and
cached, as iipsrv does (docs/protocol.md §9.1)."""

from __future__ import annotations

import logging
import random
from typing import Callable

import numpy as np

from iipy.cache import LRU
from iipy.imaging import encode
from iipy.settings import Settings

log = logging.getLogger(__name__)


class Watermark:
    """A watermark added to 8-bit output, as iipsrv adds it: each time with probability
    ``probability``, at a random position, value x ``opacity`` added to the pixels
    (clipped at 255), so black parts of the watermark leave the image unchanged.  An
    alpha channel scales the watermark.  A watermark larger than the tile is scaled down
    to fit in it, keeping its aspect (iipsrv leaves such tiles without a watermark)."""

    def __init__(self, rgba: np.ndarray, opacity: float, probability: float,
                 resize: Callable[[np.ndarray, int, int], np.ndarray]):
        rgba = np.asarray(rgba, np.uint8)
        alpha = rgba[..., 3:4].astype(np.float32) / np.float32(255)
        self.rgb = rgba[..., :3].astype(np.float32) * alpha  # premultiplied
        self.opacity = float(opacity)
        self.probability = float(probability)
        self._resize = resize
        self._rgba = rgba
        self._fitted: LRU[tuple[int, int, int], np.ndarray] = LRU(64)

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.shape[1], self.rgb.shape[0]

    def fitted(self, max_w: int, max_h: int, channels: int) -> np.ndarray:
        """The watermark, scaled down if needed to fit ``max_w`` x ``max_h``, times the
        opacity: float32 (h, w) for grey output, (h, w, 3) for colour."""
        w, h = self.size
        scale = min(1.0, max_w / w, max_h / h)
        fw, fh = max(1, int(w * scale)), max(1, int(h * scale))
        key = (fw, fh, channels)
        wm = self._fitted.get(key)
        if wm is None:
            if (fw, fh) == (w, h):
                rgb = self.rgb
            else:
                small = self._resize(self._rgba, fw, fh)
                alpha = small[..., 3:4].astype(np.float32) / np.float32(255)
                rgb = small[..., :3].astype(np.float32) * alpha
            if channels == 1:
                rgb = rgb[..., 0] * np.float32(0.299) + rgb[..., 1] * np.float32(0.587) + \
                    rgb[..., 2] * np.float32(0.114)
            wm = (rgb * np.float32(self.opacity)).astype(np.float32)
            self._fitted.put(key, wm)
        return wm

    def apply(self, pixels: np.ndarray, cell: tuple[int, int] | None = None,
              rng: random.Random | None = None) -> np.ndarray:
        """Add the watermark to uint8 (h, w) or (h, w, 3) ``pixels`` (in place), once
        per ``cell``-sized block of a grid from the top-left corner (a whole tile when
        ``cell`` is None), each with its own draw of the probability and position.
        16-bit grey output (uint16) gets the same watermark scaled to 16 bits."""
        if self.opacity <= 0 or self.probability <= 0:
            return pixels
        wide = pixels.dtype == np.uint16
        scale, top = (np.float32(257), np.float32(65535)) if wide else (None, np.float32(255))
        rng = rng or random
        h, w = pixels.shape[:2]
        cw, ch = cell if cell is not None else (w, h)
        channels = 1 if pixels.ndim == 2 else 3
        for y0 in range(0, h, ch):
            for x0 in range(0, w, cw):
                if self.probability < 1.0 and rng.random() >= self.probability:
                    continue
                bw, bh = min(cw, w - x0), min(ch, h - y0)
                wm = self.fitted(bw, bh, channels)
                ww, wh = wm.shape[1], wm.shape[0]
                ox = x0 + rng.randrange(bw - ww + 1)
                oy = y0 + rng.randrange(bh - wh + 1)
                block = pixels[oy : oy + wh, ox : ox + ww]
                if scale is not None:
                    wm = wm * scale
                block[...] = np.minimum(block + wm, top).astype(pixels.dtype)
        return pixels


#: One Watermark (or None: unusable) per (file, opacity, probability).
_watermarks: LRU[tuple[str, float, float], tuple[Watermark | None]] = LRU(4)


def watermark_for(settings: Settings) -> Watermark | None:
    """The WATERMARK image of this worker, read on first use (None if unset, unreadable
    or without effect)."""
    if not settings.watermark or settings.watermark_opacity <= 0 or \
            settings.watermark_probability <= 0:
        return None
    key = (settings.watermark, settings.watermark_opacity, settings.watermark_probability)
    known = _watermarks.get(key)
    if known is None:
        watermark: Watermark | None = None
        try:
            rgba = encode.load_rgba(settings.watermark)
            watermark = Watermark(rgba, settings.watermark_opacity,
                                  settings.watermark_probability, encode.resize_rgba)
            log.info("watermark %s loaded (%dx%d)", settings.watermark, rgba.shape[1],
                     rgba.shape[0])
        except Exception as exc:  # any file Pillow cannot read: no watermark, said once
            log.warning("watermark %s not usable: %s", settings.watermark, exc)
        known = (watermark,)
        _watermarks.put(key, known)
    return known[0]
