"""Time the compiled pixel kernels against their NumPy twins on 256x256 tiles.

Usage: python bench/bench_kernels.py [--repeat N] [--number M] [--timer wall|cpu]

Each case prints the best time per call (best of N repeats of M calls), in milliseconds, for the
compiled kernel (iipy.imaging.kernels.<name>) and the twin (iipy.imaging.kernels.reference.<name>), and the
target from the kernel specification. ``--timer cpu`` measures the thread's CPU time instead of
wall time, which is steadier on a loaded machine (time spent descheduled is not counted).
"""

from __future__ import annotations

import argparse
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

try:
    from iipy.imaging import kernels
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from iipy.imaging import kernels


def _best_ms(fn: Callable[[], Any], repeat: int, number: int,
             timer: Callable[[], float] = time.perf_counter) -> float:
    fn()  # warm-up (tables, caches)
    return min(timeit.repeat(fn, repeat=repeat, number=number, timer=timer)) / number * 1e3


def _cases() -> list[tuple[str, float | None, Callable[[Any], Callable[[], Any]]]]:
    rng = np.random.default_rng(12345)
    # A smooth sky with noise and a few NaNs, in physical units: min -2, max 12.
    yy, xx = np.mgrid[0:256, 0:256].astype(np.float32)
    sky = (5.0 + 4.0 * np.sin(xx / 23.0) * np.cos(yy / 31.0)
           + rng.normal(0.0, 1.0, (256, 256))).astype(np.float32)
    sky[rng.integers(0, 256, 300), rng.integers(0, 256, 300)] = np.nan
    one = np.ascontiguousarray(sky[np.newaxis])
    three = np.ascontiguousarray(np.stack([sky, sky[::-1], sky[:, ::-1]]))
    ctw3 = [[0.8, 0.2, 0.0], [0.1, 0.8, 0.1], [0.0, 0.3, 0.7]]
    big = np.ascontiguousarray(rng.normal(0.0, 1.0, (512, 512)).astype(np.float32))
    be_f4 = sky.astype(">f4")
    be_i2 = rng.integers(-32768, 32767, (256, 256)).astype(">i2")
    # A 256x256 window of a bigger big-endian image (rows with a stride).
    be_f4_win = np.tile(sky, (2, 2)).astype(">f4")[100:356, 37:293]
    be_big = big.astype(">f4")
    # STIFF's chunk of a sky: noise, 3 % of stars, 1 % of NaN
    chunk = rng.normal(1000.0, 10.0, 1 << 21)
    stars = rng.random(chunk.size) < 0.03
    chunk[stars] += rng.pareto(1.5, int(stars.sum())) * 500.0
    chunk[rng.random(chunk.size) < 0.01] = np.nan
    chunk = chunk.astype(">f4")
    return [
        ("render grey default (gamma 1)", 0.1,
         lambda k: lambda: k.render(one, [-2.0], [12.0])),
        ("render full 1-ch (CTW 1x1, GAM .4545, INV, jet, CNT 1.5)", 0.3,
         lambda k: lambda: k.render(one, [-2.0], [12.0], ctw=[[1.0]], gamma=0.4545, invert=True,
                                    cmap=kernels.CMAP_JET, contrast=1.5)),
        ("render 1-ch GAM .4545 (grey)", None,
         lambda k: lambda: k.render(one, [-2.0], [12.0], gamma=0.4545)),
        ("render 3-ch CTW colour", 0.6,
         lambda k: lambda: k.render(three, [-2.0] * 3, [12.0] * 3, ctw=ctw3)),
        ("render 3-ch CTW colour + GAM .4545", None,
         lambda k: lambda: k.render(three, [-2.0] * 3, [12.0] * 3, ctw=ctw3, gamma=0.4545)),
        ("to_float32 >f4 256x256", 0.15,
         lambda k: lambda: k.to_float32(be_f4)),
        ("to_float32 >f4 256x256 strided window, flip", None,
         lambda k: lambda: k.to_float32(be_f4_win, flip=True)),
        ("to_float32 >i2 BZERO=32768 BLANK", None,
         lambda k: lambda: k.to_float32(be_i2, 1.0, 32768.0, blank=-32768)),
        ("bin2x2 512x512 -> 256x256", 0.3,
         lambda k: lambda: k.bin2x2(big)),
        ("bin_raw >f4 512x512 -> 256x256, flip", None,
         lambda k: lambda: k.bin_raw(be_big, flip=True)),
        ("render_raw >f4 256x256 strided window, flip, GAM .4545", None,
         lambda k: lambda: k.render_raw(be_f4_win, flip=True, mins=-2.0, maxs=12.0,
                                        gamma=0.4545)),
        ("stiff_chunk of 2**21 >f4 samples (STIFF's chunk)", 4.2,  # >= 500 M values/s
         lambda k: lambda: k.stiff_chunk(chunk)),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--number", type=int, default=50)
    ap.add_argument("--timer", choices=["wall", "cpu"], default="wall")
    args = ap.parse_args()
    timer = time.thread_time if args.timer == "cpu" else time.perf_counter
    print(f"compiled kernels: {kernels.ACCELERATED}; timer: {args.timer}")
    print(f"{'case':60s} {'kernel ms':>10s} {'numpy ms':>10s} {'speed-up':>9s} {'target':>7s}")
    for name, target, make in _cases():
        fast = _best_ms(make(kernels), args.repeat, args.number, timer)
        ref = _best_ms(make(kernels.reference), max(3, args.repeat // 5),
                       max(1, args.number // 5), timer)
        tgt = f"<{target:g}" if target is not None else ""
        flag = "" if target is None or fast < target else "  MISSED"
        print(f"{name:60s} {fast:10.4f} {ref:10.4f} {ref / fast:8.1f}x {tgt:>7s}{flag}")


if __name__ == "__main__":
    main()
