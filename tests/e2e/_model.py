"""An independent NumPy model of what an IIP server must send for a FITS image.

Written from ``docs/protocol.md`` only (no iipy code is imported), so that end-to-end
tests can compare decoded JPEG tiles with what the specification says:

* the data, read with astropy (BSCALE/BZERO applied, BLANK as NaN), are flipped
  vertically (§7.6: IIP row 0 is the last FITS row);
* level k has the floor size ``W >> k``, ``H >> k``; each reduced pixel is the mean
  of the finite values of its 2×2 block (§7.2, §7.6; ``_tiff.reduce_2x2``);
* the tile grid is row-major with partial edge tiles (§7.3);
* the pixel pipeline is the ASTRO order of §6.2 in float32: normalise (non-finite
  samples give 0), CTW with the channel rules of §6.4 (missing rows are 0), band
  flattening, GAM, INV, CMP (§6.3 formulas), quantise with CNT (truncation).

The request modifiers are parsed from the query string with the syntax of §3.2 (split
on ``&``, key and argument at the first ``=``, a bare token is its own argument) and
C ``atof``/``atoi`` for numbers (docs/protocol.md §3.2).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from PIL import Image

from ._tiff import level_sizes, reduce_2x2

__all__ = [
    "View",
    "assert_close",
    "block_means",
    "decode_jpeg",
    "diff_stats",
    "encoder_diff_stats",
    "fits_planes",
    "iip_levels",
    "jpeg_roundtrip",
    "parse_min_max",
    "parse_view",
    "render",
    "tile_window",
]

_F32 = np.float32

_FLOAT_RE = re.compile(
    r"\s*([+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf(?:inity)?|nan))", re.IGNORECASE
)
_INT_RE = re.compile(r"\s*([+-]?\d+)")


def c_atof(text: str) -> float:
    """C ``atof``: the longest numeric prefix after blanks, 0.0 if there is none."""
    m = _FLOAT_RE.match(text)
    return float(m.group(1)) if m else 0.0


def c_atoi(text: str) -> int:
    """C ``atoi``: the longest integer prefix after blanks, 0 if there is none."""
    m = _INT_RE.match(text)
    return int(m.group(1)) if m else 0


# --------------------------------------------------------------------------- data


def fits_planes(path: str | Path) -> np.ndarray:
    """Physical values of the first image HDU as float32 ``(channels, height, width)``,
    FITS row order (row 0 = FITS row 1, the bottom of the displayed image)."""
    with fits.open(path, memmap=False) as hdul:
        hdu = next(h for h in hdul if h.data is not None and h.data.ndim >= 2)
        data = np.asarray(hdu.data, dtype=np.float64)
    if data.ndim == 2:
        data = data[np.newaxis]
    return data.astype(_F32)


def iip_levels(planes: np.ndarray, tile: int = 256) -> list[np.ndarray]:
    """Every level in IIP orientation (flipped, top row first), full resolution first."""
    flipped = np.ascontiguousarray(planes[:, ::-1, :])
    sizes = level_sizes(flipped.shape[2], flipped.shape[1], tile)
    levels = [flipped]
    for _ in sizes[1:]:
        levels.append(reduce_2x2(levels[-1]))
    return levels


def tile_window(width: int, height: int, resolution: int, tile: int,
                tile_size: int = 256) -> tuple[int, int, int, int, int]:
    """``(k, x, y, w, h)`` of tile ``tile`` at IIP resolution ``resolution`` (§7.1, §7.3)."""
    sizes = level_sizes(width, height, tile_size)
    k = len(sizes) - 1 - resolution
    if not 0 <= k < len(sizes):
        raise ValueError(f"resolution {resolution} outside 0..{len(sizes) - 1}")
    lw, lh = sizes[k]
    ntx = -(-lw // tile_size)
    nty = -(-lh // tile_size)
    if not 0 <= tile < ntx * nty:
        raise ValueError(f"tile {tile} outside 0..{ntx * nty - 1}")
    col, row = tile % ntx, tile // ntx
    x, y = col * tile_size, row * tile_size
    return k, x, y, min(tile_size, lw - x), min(tile_size, lh - y)


def parse_min_max(line: str) -> list[tuple[float, float]]:
    """``Min-Max-sample-values: a  b  c  d`` -> ``[(a, b), (c, d)]``."""
    fields = line.split(":", 1)[1].split()
    return [(float(fields[i]), float(fields[i + 1])) for i in range(0, len(fields), 2)]


# --------------------------------------------------------------------------- view


@dataclass
class View:
    """The display modifiers of one request (§5.12–5.17)."""

    minmax: dict[int, tuple[float, float]] = field(default_factory=dict)  # 0-based channel
    contrast: float = 1.0
    gamma: float = 1.0
    cmap: str | None = None
    invert: bool = False
    ctw: list[list[float]] = field(default_factory=list)


def parse_view(query: str, channels: int) -> View:
    """The View of the modifiers in ``query`` (left to right, up to the first output command)."""
    view = View()
    for token in query.split("&"):
        if not token:
            continue
        key, sep, arg = token.partition("=")
        if not sep:
            arg = token
        if not key or not arg:
            continue
        name = key.lower()
        if name in ("jtl", "jtls", "cvt", "pfl"):
            break
        if name == "minmax":
            chan, _, rest = arg.partition(":")
            lo, _, hi = rest.partition(",")
            c = c_atoi(chan) - 1
            if 0 <= c < channels:
                view.minmax[c] = (c_atof(lo), c_atof(hi))
        elif name == "cnt":
            view.contrast = c_atof(arg)
        elif name == "gam":
            view.gamma = c_atof(arg)
        elif name == "cmp":
            low = arg.lower()
            view.cmap = low if low in ("hot", "cold", "jet", "red", "green", "blue") else None
        elif name == "inv":
            view.invert = True
        elif name == "ctw":
            if "[" in arg and "]" in arg:
                arg = arg[arg.find("[") + 1 : arg.rfind("]")]
            view.ctw.extend([c_atof(v) for v in row.split(",")] for row in arg.split(";"))
    return view


# --------------------------------------------------------------------------- pipeline


def _colormap(v: np.ndarray, name: str) -> np.ndarray:
    """§6.3: channel-0 values to (3, h, w) RGB floats, evaluated top to bottom."""
    zero = np.zeros_like(v)
    one = np.ones_like(v)
    third, two_thirds = _F32(1.0 / 3.0), _F32(2.0 / 3.0)
    if name in ("hot", "cold"):
        conds = [v > 1, v <= 0, v < third, v < two_thirds, v < 1]
        a = np.select(conds, [one, zero, 3 * v, one, one], one)
        b = np.select(conds, [one, zero, zero, 3 * v - 1, one], one)
        c = np.select(conds, [one, zero, zero, zero, 3 * v - 2], one)
        return np.stack([a, b, c] if name == "hot" else [c, b, a])  # COLD is HOT reversed
    if name == "jet":
        conds = [v < 0, v < 0.125, v < 0.375, v < 0.625, v < 0.875, v < 1]
        r = np.select(conds, [zero, zero, zero, 4 * v - 1.5, one, 4.5 - 4 * v], 0.5 * one)
        g = np.select(conds, [zero, zero, 4 * v - 0.5, one, 3.5 - 4 * v, zero], zero)
        b = np.select(conds, [zero, 4 * v + 0.5, one, 2.5 - 4 * v, zero, zero], zero)
        return np.stack([r, g, b]).astype(_F32)
    index = {"red": 0, "green": 1, "blue": 2}[name]
    out = np.zeros((3,) + v.shape, _F32)
    out[index] = v
    return out


def render(src: np.ndarray, view: View, defaults: list[tuple[float, float]]) -> np.ndarray:
    """float32 ``(C, h, w)`` samples to uint8 ``(h, w)`` grey or ``(h, w, 3)`` colour."""
    src = np.asarray(src, _F32)
    channels = src.shape[0]
    ranges = [view.minmax.get(c, defaults[c]) for c in range(channels)]
    norm = np.empty_like(src)
    with np.errstate(all="ignore"):
        for c, (lo, hi) in enumerate(ranges):
            d = _F32(hi) - _F32(lo)
            factor = _F32(1.0) / d if abs(d) > 1e-30 else _F32(1e30)
            v = (src[c] - _F32(lo)) * factor
            norm[c] = np.where(np.isfinite(src[c]), v, _F32(0))
        if view.ctw:
            mixed = np.zeros_like(norm)
            for k in range(min(len(view.ctw), channels)):
                row = view.ctw[k]
                for j in range(min(len(row), channels)):
                    if row[j] != 0:
                        mixed[k] += _F32(row[j]) * norm[j]
            norm = mixed
        planes = norm[:1] if channels < 3 else norm[:3]
        if view.gamma != 1.0:
            planes = np.maximum(planes, 0) ** _F32(view.gamma)
        if view.invert:
            planes = 1 - planes
        if view.cmap is not None:
            planes = _colormap(planes[0], view.cmap)
        scaled = planes * _F32(255) * _F32(view.contrast)
        q = np.where(np.isnan(scaled), 255, np.trunc(np.clip(scaled, 0, 255)))
    out = q.astype(np.uint8)
    return out[0] if out.shape[0] == 1 else np.moveaxis(out, 0, -1)


# --------------------------------------------------------------------------- JPEG


def decode_jpeg(data: bytes) -> tuple[np.ndarray, int]:
    """Pixels of a JPEG and its number of components (1 grey, 3 colour)."""
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "JPEG", im.format
        components = len(im.getbands())
        return np.asarray(im), components


def jpeg_roundtrip(pixels: np.ndarray, quality: int = 100) -> np.ndarray:
    """``pixels`` through a baseline JPEG with 4:2:0 chroma (libjpeg's defaults, §6.5):
    a colour model compared with a served colour tile then differs only by encoder noise."""
    image = Image.fromarray(pixels, "L" if pixels.ndim == 2 else "RGB")
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality, subsampling="4:2:0")
    return decode_jpeg(out.getvalue())[0]


def diff_stats(got: np.ndarray, want: np.ndarray) -> tuple[float, float]:
    """Mean and 99th percentile of the absolute difference, in DN."""
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    return float(diff.mean()), float(np.percentile(diff, 99))


def block_means(pixels: np.ndarray) -> np.ndarray:
    """Means of the 2×2 blocks of an image (odd edges dropped): the resolution at which
    a 4:2:0 JPEG carries colour."""
    a = pixels.astype(np.float64)
    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    a = a[:h, :w].reshape(h // 2, 2, w // 2, 2, *a.shape[2:])
    return a.mean(axis=(1, 3))


def encoder_diff_stats(got: np.ndarray, want: np.ndarray) -> tuple[float, float]:
    """Mean |diff| over the pixels, and its 99th percentile: over the pixels for grey
    images, over 2×2 block means for colour ones.  Two different JPEG encoders (iipsrv's
    libjpeg uses the fast integer DCT) disagree by several DN on single pixels of
    saturated colour tiles at 4:2:0, but not at the resolution the chroma is stored."""
    mean, p99 = diff_stats(got, want)
    if got.ndim == 3:
        p99 = diff_stats(block_means(got), block_means(want))[1]
    return mean, p99


def assert_close(got: np.ndarray, want: np.ndarray, mean: float, p99: float, what: str = "") -> None:
    """Same shape, mean |diff| <= ``mean`` and 99th percentile <= ``p99``."""
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    m, p = diff_stats(got, want)
    assert m <= mean and p <= p99, f"{what}: mean |diff| {m:.3f} (max {mean}), p99 {p:.1f} (max {p99})"

