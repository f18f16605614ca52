"""Tile throughput of iipy against iipsrv 1.1 on the same TIFF files, one process each on
one core, every tile computed (no response cache on either side).

    .venv/bin/python bench/bench_tiff.py [--size 16384] [--rgb-size 8192] [--duration 8]
                                         [--repeat 3] [--connections 4] [--dir DIR]

Both servers read the same files (iipsrv reads TIFF only), behind one nginx, with the
set-up of bench_tiles.py (``Servers``: iipy with one worker, iipsrv with
OMP_NUM_THREADS=1, MAX_IMAGE_CACHE_SIZE=0 and no memcached for both, JPEG_QUALITY=90,
the servers on CPU 0 and wrk on the last CPU).  Cases:

float
    bench_tiles.py's seeded 16k x 16k float32 sky, as the pyramidal TIFF it writes for
    iipsrv (floor levels of 2x2 means, SMin/SMaxSampleValue), with VisiOmatic 2's tile
    URLs (the default view, MINMAX, CMP=jet, INV+CNT, all with GAM and CTW).
jpeg
    an 8-bit RGB JPEG pyramid made by ``vips tiffsave --tile --pyramid --compression
    jpeg --Q 90`` from a synthetic photograph, with Leaflet.TileLayer.IIP's plain URLs
    (``FIF=...&JTL=r,n``): iipy sends the stored tiles (CODEC_PASSTHROUGH, its default),
    iipsrv 1.1 decodes and re-encodes them.
jpeg-decoded
    the same with CODEC_PASSTHROUGH=0: iipy decodes and re-encodes too.

Each case: a 2 s warm-up run per server, then ``--repeat`` runs per server, alternating
(the machine may be shared: a run of one server is always next to a run of the other).
Prints every run, then per case the median tiles/s of each server with the range of its
runs, and the ratio iipy/iipsrv of each pair of neighbouring runs (median and range).
Figures go in notes, not in assertions.

Needs: nginx, wrk, iipimage-server, libvips-tools (apt), tifffile (pip install -e .[test]).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_tiles import IIPSRV, WRK_LUA, Servers, prepare, run_main, run_wrk, tile_paths  # noqa: E402


def write_rgb_pyramid(work: Path, size: int) -> str:
    """An 8-bit RGB photograph-like image (smooth shapes, edges, mild noise) written
    band by band, then made a JPEG pyramid by vips; returns its file name."""
    name = "rgb%d.tif" % size
    if (work / name).exists():
        return name
    t = time.perf_counter()
    raw = work / ("rgb%d.raw" % size)
    rng = np.random.default_rng(11)
    x = np.arange(size, dtype=np.float32)
    with open(raw, "wb") as f:
        for y0 in range(0, size, 512):
            y = np.arange(y0, min(size, y0 + 512), dtype=np.float32)[:, None]
            r = 128 + 90 * np.sin(x / 211.0) * np.cos(y / 157.0)
            g = 40 + 170 * ((x + y) % 1024) / 1024
            b = np.where(((x // 97) + (y // 131)) % 2 == 0, 200.0, 60.0)
            planes = [c + rng.normal(0, 4, (len(y), size)) for c in (r, g, b)]
            f.write(np.clip(np.stack(planes, -1), 0, 255).astype(np.uint8).tobytes())
    vips = shutil.which("vips")
    if vips is None:
        raise SystemExit("bench: vips is not installed (apt-get install libvips-tools)")
    v = work / ("rgb%d.v" % size)
    subprocess.run([vips, "rawload", str(raw), str(v), str(size), str(size), "3",
                    "--format", "uchar", "--interpretation", "srgb"], check=True)
    subprocess.run([vips, "tiffsave", str(v), str(work / name), "--tile", "--pyramid",
                    "--compression", "jpeg", "--Q", "90", "--tile-width", "256",
                    "--tile-height", "256"], check=True)
    raw.unlink()
    v.unlink()
    print("bench: wrote %s in %.0f s" % (name, time.perf_counter() - t))
    return name


def plain_paths(work: Path, name: str, seed: int = 3) -> list[str]:
    """Leaflet.TileLayer.IIP's URL of every tile of every level the file holds, shuffled."""
    import tifffile

    with tifffile.TiffFile(work / name) as tif:
        sizes = [(p.imagewidth, p.imagelength) for p in tif.pages]
    paths = []
    for r, (w, h) in enumerate(reversed(sizes)):
        count = -(-w // 256) * -(-h // 256)
        paths += ["?FIF=%s&JTL=%d,%d" % (name, r, n) for n in range(count)]
    random.Random(seed).shuffle(paths)
    return paths


def measure(work: Path, label: str, paths: list[str], args, lua: Path,
            iipy_env: dict | None = None) -> dict[str, list[tuple]]:
    servers = Servers(work, 1, "%s-%d" % (label, time.monotonic_ns()), iipy_env)
    try:
        files = {}
        for name in ("iipy", "iipsrv"):
            pf = servers.run / ("paths-%s.txt" % name)
            pf.write_text("".join("/%s%s\n" % (name, p) for p in paths))
            files[name] = pf
            run_wrk("http://127.0.0.1:%d/%s" % (servers.port, name), pf, lua, 2,
                    args.connections, servers.client_cpus)
        runs: dict[str, list[tuple]] = {"iipy": [], "iipsrv": []}
        for i in range(args.repeat):
            for name in ("iipy", "iipsrv"):
                result = run_wrk("http://127.0.0.1:%d/%s" % (servers.port, name), files[name],
                                 lua, args.duration, args.connections, servers.client_cpus)
                runs[name].append(result)
                print("  %-13s run %d %-6s %7.1f tiles/s (mean %6.2f ms, p99 %6.2f ms)%s"
                      % (label, i + 1, name, result[0], result[1], result[2],
                         "  ERRORS %d" % result[3] if result[3] else ""), flush=True)
        return runs
    finally:
        servers.close()


def summary(label: str, runs: dict[str, list[tuple]]) -> str:
    a = [r[0] for r in runs["iipy"]]
    b = [r[0] for r in runs["iipsrv"]]
    ratios = [x / y for x, y in zip(a, b)]
    return ("%-13s iipy %7.1f t/s (%.1f-%.1f)  iipsrv %7.1f t/s (%.1f-%.1f)  "
            "ratio %.2f (%.2f-%.2f)" % (label, statistics.median(a), min(a), max(a),
                                        statistics.median(b), min(b), max(b),
                                        statistics.median(ratios), min(ratios), max(ratios)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=16384, help="float image width and height")
    ap.add_argument("--rgb-size", type=int, default=8192, help="RGB image width and height")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run")
    ap.add_argument("--repeat", type=int, default=3, help="runs per server and case")
    ap.add_argument("--connections", type=int, default=4, help="concurrent connections")
    ap.add_argument("--cases", default="float,jpeg,jpeg-decoded",
                    help="comma-separated cases to run")
    ap.add_argument("--dir", help="work directory, kept (images are reused)")
    args = ap.parse_args()
    for exe in ("nginx", "wrk"):
        if not shutil.which(exe) and not os.path.exists("/usr/sbin/" + exe):
            raise SystemExit("bench: %s is not installed (apt-get install %s)" % (exe, exe))
    if not os.path.exists(IIPSRV):
        raise SystemExit("bench: %s missing (apt-get install iipimage-server)" % IIPSRV)
    from iipy.imaging.kernels import ACCELERATED

    work = Path(args.dir or tempfile.mkdtemp(prefix="iipy-bench-tiff-"))
    work.mkdir(parents=True, exist_ok=True)
    lua = work / "replay.lua"
    lua.write_text(WRK_LUA)
    cases = args.cases.split(",")
    print("bench: kernels %s, %d CPU(s), 1 process each, %d connection(s), wrk runs of %g s, "
          "%d runs per server" % ("Cython" if ACCELERATED else "NumPy", os.cpu_count() or 1,
                                  args.connections, args.duration, args.repeat))
    try:
        results = []
        if "float" in cases:
            _, tif = prepare(work, args.size, 1)
            paths = tile_paths(args.size, 256, tif, 1)
            results.append(("float", measure(work, "float", paths, args, lua)))
        if "jpeg" in cases or "jpeg-decoded" in cases:
            name = write_rgb_pyramid(work, args.rgb_size)
            paths = plain_paths(work, name)
            if "jpeg" in cases:
                results.append(("jpeg", measure(work, "jpeg", paths, args, lua)))
            if "jpeg-decoded" in cases:
                results.append(("jpeg-decoded", measure(work, "jpeg-decoded", paths, args, lua,
                                                        {"CODEC_PASSTHROUGH": "0"})))
        print("\nsummary (median tiles/s, range of the runs; ratio iipy/iipsrv of neighbouring "
              "runs):")
        for label, runs in results:
            print(summary(label, runs))
        return 0
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    run_main(main)
