"""Where the time of one tile goes, in-process (no sockets), and the cold start.

    .venv/bin/python bench/bench_stages.py [--size 16384] [--channels 1] [--tiles 2000]

Writes a seeded float32 FITS image (``--channels`` > 1 makes a cube) into a temporary
directory, then:

1. cold start: time to the first tile of the smallest resolution in a fresh pyramid
   cache (this builds the pyramid), then until its level 1, written in the background,
   is on disk, and the worker's memory (peak RSS, and the anonymous memory after the
   build);
2. warm: replays ``--tiles`` distinct VisiOmatic 2 tile requests (every resolution, the
   default view and MINMAX/CMP/INV/CNT variants, ``GAM=0.4545&CTW=...`` as V2 sends)
   through ``Application.handle`` and prints the mean cost per tile of each stage:
   parse, read (window of the level), render (kernel), encode (JPEG), and the rest.

The FastCGI and web-server share is what ``bench/bench_tiles.py`` measures on top of
this (its per-tile time minus the total here).  Figures, not assertions.
"""

from __future__ import annotations

import argparse
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def memory_mb() -> dict[str, float]:
    """This process's memory from /proc/self/smaps_rollup, in MB: ``rss`` (all resident
    pages, including the file pages of memory maps, which the kernel can drop at any
    time) and ``anon`` (anonymous memory: what the process really allocated)."""
    out = {"rss": 0.0, "anon": 0.0}
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("Rss:"):
                out["rss"] = int(line.split()[1]) / 1024
            elif line.startswith("Anonymous:"):
                out["anon"] = int(line.split()[1]) / 1024
    return out


def write_image(path: Path, size: int, channels: int) -> None:
    """A float32 FITS written row band by row band (bounded memory for 16k x 16k)."""
    from astropy.io import fits

    shape = (channels, size, size) if channels > 1 else (size, size)
    header = fits.Header()
    header["SIMPLE"], header["BITPIX"] = True, -32
    header["NAXIS"] = len(shape)
    for i, n in enumerate(reversed(shape), start=1):
        header["NAXIS%d" % i] = n
    header.tofile(path, overwrite=True)
    rng = np.random.default_rng(7)
    band = 512
    with open(path, "ab") as f:
        for _ in range(channels):
            for y in range(0, size, band):
                rows = min(band, size - y)
                block = rng.normal(100.0, 5.0, (rows, size)).astype(">f4")
                stars = rng.integers(0, size, (max(1, rows * size // 20000), 2))
                block[stars[:, 0] % rows, stars[:, 1]] += rng.pareto(1.5, len(stars)) * 500
                f.write(block.tobytes())
        pad = (-f.tell()) % 2880
        f.write(b"\0" * pad)


def queries(fif: str, size: int, channels: int, count: int) -> list[str]:
    from iipy.imaging.geometry import Grid

    grid = Grid(size, size, 256, 256)
    nres = grid.num_resolutions
    ctw = "1;1;1"
    if channels > 1:  # colour mode: the first three channels as R, G, B
        ctw = ";".join(",".join("1" if j == i else "0" for j in range(channels))
                       for i in range(3))
    variants = ["GAM=0.4545&CTW=%s" % ctw, "MINMAX=1:90,400&GAM=0.4545&CTW=%s" % ctw,
                "CMP=jet&GAM=0.4545&CTW=%s" % ctw, "INV&CNT=1.5&GAM=0.4545&CTW=%s" % ctw]
    all_tiles = [(r, n) for r in range(nres)
                 for n in range(np.prod(grid.tiles_across(nres - 1 - r)))]
    rng = random.Random(3)
    out = []
    while len(out) < count:
        r, n = rng.choice(all_tiles)
        out.append("FIF=%s&%s&JTL=%d,%d" % (fif, rng.choice(variants), r, n))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=16384)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--tiles", type=int, default=2000)
    ap.add_argument("--dir", help="work directory (default: a new temporary one)")
    args = ap.parse_args()

    from iipy.protocols.iip import commands
    from iipy.protocols.iip import parser
    from iipy.protocols.router import Application
    from iipy.protocols.iip.commands import Context
    from iipy.imaging.kernels import ACCELERATED
    from iipy.imaging.paths import resolve
    from iipy.settings import Settings

    work = Path(args.dir or tempfile.mkdtemp(prefix="iipy-stages-"))
    work.mkdir(parents=True, exist_ok=True)
    fits_path = work / "big.fits"
    if not fits_path.exists():
        t = time.perf_counter()
        write_image(fits_path, args.size, args.channels)
        print("wrote %s (%.2f GB) in %.1f s" % (fits_path, fits_path.stat().st_size / 1e9,
                                                time.perf_counter() - t))
    cache = work / "pyramids"
    shutil.rmtree(cache, ignore_errors=True)
    settings = Settings.from_environ({"FILESYSTEM_PREFIX": str(work) + "/",
                                      "IIPY_CACHE_DIR": str(cache), "VERBOSITY": "0",
                                      "JPEG_QUALITY": "90", "MAX_IMAGE_CACHE_SIZE": "0",
                                      "MEMCACHED_SERVERS": ""})
    app = Application(settings)
    print("kernels: %s" % ("Cython" if ACCELERATED else "NumPy reference"))
    before = memory_mb()
    t = time.perf_counter()
    r = app.handle({"QUERY_STRING": "FIF=big.fits&GAM=0.4545&JTL=0,0"})
    cold = time.perf_counter() - t
    assert r.status == 200, r.body
    t = time.perf_counter()
    r = app.handle({"QUERY_STRING": "FIF=big.fits&GAM=0.4545&JTL=%d,0" % 3})
    print("cold start: first tile (smallest level, whole pyramid built) %.2f s; "
          "next tile %.2f ms" % (cold, 1e3 * (time.perf_counter() - t)))
    # level 1 follows in the background: "warm" is the pyramid complete
    t = time.perf_counter()
    app.store.open(resolve("big.fits", settings)).pyramid.complete()
    print("level 1 on disk %.2f s later" % (time.perf_counter() - t + cold))
    after = memory_mb()
    print("memory: anonymous %.0f MB after the build (%.0f MB before); resident %.0f MB "
          "(file pages of the memory maps included), peak resident %.0f MB"
          % (after["anon"], before["anon"], after["rss"],
             resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))

    qs = queries("big.fits", args.size, args.channels, args.tiles)
    sums = dict(parse=0.0, read=0.0, render=0.0, encode=0.0, total=0.0)
    for q in qs[:50]:  # warm the page cache a little for the chosen tiles
        app.handle({"QUERY_STRING": q})
    for q in qs:
        t0 = time.perf_counter()
        request = parser.parse(q)
        t1 = time.perf_counter()
        ctx = Context(settings, app.responder, app.store)
        response = commands.run(request, ctx)
        t2 = time.perf_counter()
        assert response.status == 200
        sums["parse"] += t1 - t0
        sums["read"] += ctx.timings.read
        sums["render"] += ctx.timings.render
        sums["encode"] += ctx.timings.encode
        sums["total"] += t2 - t0
    n = len(qs)
    other = sums["total"] - sums["parse"] - sums["read"] - sums["render"] - sums["encode"]
    print("\nper tile over %d distinct requests (mean, microseconds):" % n)
    for k in ("parse", "read", "render", "encode"):
        print("  %-8s %7.1f" % (k, 1e6 * sums[k] / n))
    print("  %-8s %7.1f   (resolve, stat, cache lookup, response)" % ("other", 1e6 * other / n))
    print("  %-8s %7.1f   -> %.0f tiles/s on one core, before FastCGI"
          % ("total", 1e6 * sums["total"] / n, n / sums["total"]))
    if not args.dir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
