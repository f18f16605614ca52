"""Tile throughput of iipy against the reference iipsrv 1.1, behind the same nginx.

    .venv/bin/python bench/bench_tiles.py [--size 4096] [--procs 1] [--duration 8]
                                          [--repeat 3] [--connections 4] [--mix v2]

Writes a seeded float32 FITS image (sky, noise, stars) and the same pixels as a tiled
pyramidal float32 TIFF (floor levels, 2x2 means, SMin/SMax = iipy's display range), so
both servers compute the same tiles.  Starts iipy (``--procs`` workers) and iipsrv 1.1
(``--procs`` processes, OMP_NUM_THREADS=1, no memcached, no tile cache) on loopback, one
nginx in front of both (kept-alive FastCGI connections for iipy; new connections
for iipsrv, which serves one connection at a time until it is closed), and replays the same shuffled list of distinct
VisiOmatic 2 tile URLs against each with wrk, alternating servers, ``--repeat`` times.
Servers are pinned to the first ``--procs`` CPUs and wrk to the last one when the machine
has more CPUs than that.  Prints tiles/s, mean and p99 latency per run, the medians, and
the ratio iipy/iipsrv.  Nothing here is a test: figures go in notes, not assertions.

Needs: nginx, wrk, iipimage-server (apt), tifffile (pip install -e .[test]).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e._tiff import write_pyramid_tiff  # noqa: E402

IIPSRV = "/usr/lib/iipimage-server/iipsrv.fcgi"

NGINX_CONF = """
daemon off;
worker_processes 1;
pid "{work}/nginx.pid";
error_log "{work}/nginx-error.log" warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path "{work}/t1"; fastcgi_temp_path "{work}/t2";
    proxy_temp_path "{work}/t3"; uwsgi_temp_path "{work}/t4"; scgi_temp_path "{work}/t5";
    upstream iipy {{ {iipy_servers} keepalive 16; }}
    upstream iipsrv {{ {iipsrv_servers} }}
    server {{
        listen 127.0.0.1:{port};
        location /iipy {{
            fastcgi_pass iipy; fastcgi_keep_conn on;
            fastcgi_param QUERY_STRING $query_string;
            fastcgi_param REQUEST_METHOD $request_method;
            fastcgi_param REQUEST_URI $request_uri;
            fastcgi_param SERVER_PROTOCOL $server_protocol;
        }}
        location /iipsrv {{
            # iipsrv serves one connection at a time until it is closed: kept-alive
            # connections would make requests queue behind idle ones
            fastcgi_pass iipsrv; fastcgi_keep_conn off;
            fastcgi_param QUERY_STRING $query_string;
            fastcgi_param REQUEST_METHOD $request_method;
            fastcgi_param REQUEST_URI $request_uri;
            fastcgi_param SERVER_PROTOCOL $server_protocol;
        }}
    }}
}}
"""

WRK_LUA = """
local paths = {}
for line in io.lines(os.getenv("BENCH_PATHS")) do paths[#paths + 1] = line end
local counter = 0
local offset = 0
function setup(thread)
    thread:set("offset", offset)
    offset = offset + 7919
end
function request()
    counter = counter + 1
    return wrk.format("GET", paths[(counter + offset) % #paths + 1])
end
done = function(summary, latency, requests)
    io.write(string.format("BENCH %d %d %.1f %.1f %d\\n", summary.requests,
        summary.duration, latency.mean, latency:percentile(99),
        summary.errors.status + summary.errors.connect + summary.errors.read
        + summary.errors.timeout))
end
"""


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 60.0) -> None:
    import socket
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("bench: nothing listens on port %d" % port)


def make_image(size: int, seed: int = 1) -> np.ndarray:
    """FITS-order float32 sky: background, noise, a few hundred stars."""
    rng = np.random.default_rng(seed)
    img = rng.normal(100.0, 5.0, (size, size)).astype(np.float32)
    n = max(50, size * size // 40000)
    xs, ys = rng.integers(8, size - 8, n), rng.integers(8, size - 8, n)
    flux = (rng.pareto(1.5, n) + 1) * 200
    yy, xx = np.mgrid[-6:7, -6:7]
    psf = np.exp(-(xx ** 2 + yy ** 2) / (2 * 1.6 ** 2)).astype(np.float32)
    for x, y, f in zip(xs, ys, flux):
        img[y - 6 : y + 7, x - 6 : x + 7] += f * psf
    return img


def tile_paths(size: int, tile: int, fif: str, mix: str, seed: int = 2) -> list[str]:
    """Distinct VisiOmatic 2 tile queries over every level, shuffled."""
    levels = []
    k = 0
    while True:
        w = h = size >> k
        levels.append((w, h))
        if w <= tile and h <= tile:
            break
        k += 1
    nres = len(levels)
    paths = []
    variants = ["GAM=0.4545&CTW=1;1;1"]
    if mix == "v2":
        variants += ["MINMAX=1:90,400&GAM=0.4545&CTW=1;1;1", "CMP=jet&GAM=0.4545&CTW=1;1;1",
                     "INV&CNT=1.5&GAM=0.4545&CTW=1;1;1"]
    for variant in variants:
        for r in range(nres):
            w, h = levels[nres - 1 - r]
            ntiles = -(-w // tile) * -(-h // tile)
            for n in range(ntiles):
                paths.append("?FIF=%s&%s&JTL=%d,%d" % (fif, variant, r, n))
    random.Random(seed).shuffle(paths)
    return paths


def run_wrk(url: str, paths_file: Path, lua: Path, duration: float, connections: int,
            cpu: list[int] | None) -> tuple[float, float, float, int]:
    cmd = ["wrk", "-t1", "-c%d" % connections, "-d%ds" % duration, "--timeout", "10s",
           "-s", str(lua), url]
    if cpu:
        cmd = ["taskset", "-c", ",".join(map(str, cpu))] + cmd
    proc = subprocess.run(cmd, env=dict(os.environ, BENCH_PATHS=str(paths_file)),
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit("bench: wrk failed:\n" + proc.stdout + proc.stderr)
    out = proc.stdout
    m = re.search(r"BENCH (\d+) (\d+) ([\d.]+) ([\d.]+) (\d+)", out)
    if not m:
        raise SystemExit("bench: cannot read wrk output:\n" + out)
    requests, micros = int(m.group(1)), int(m.group(2))
    return requests / (micros / 1e6), float(m.group(3)) / 1e3, float(m.group(4)) / 1e3, \
        int(m.group(5))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, default=4096, help="image width and height")
    ap.add_argument("--procs", type=int, default=1, help="worker processes of each server")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run")
    ap.add_argument("--repeat", type=int, default=3, help="runs per server (medians)")
    ap.add_argument("--connections", type=int, default=4, help="concurrent connections")
    ap.add_argument("--mix", choices=["default", "v2"], default="v2",
                    help="default view only, or VisiOmatic 2 variants (MINMAX, CMP, INV/CNT)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    for exe in ("nginx", "wrk"):
        if not shutil.which(exe) and not os.path.exists("/usr/sbin/" + exe):
            raise SystemExit("bench: %s is not installed (apt-get install %s)" % (exe, exe))
    if not os.path.exists(IIPSRV):
        raise SystemExit("bench: %s missing (apt-get install iipimage-server)" % IIPSRV)

    work = Path(tempfile.mkdtemp(prefix="iipy-bench-"))
    procs: list[subprocess.Popen] = []
    try:
        from astropy.io import fits
        print("bench: writing %dx%d float32 FITS and TIFF in %s" % (args.size, args.size, work))
        data = make_image(args.size)
        fits.PrimaryHDU(data).writeto(work / "img.fits")
        env_common = dict(os.environ, FILESYSTEM_PREFIX=str(work) + "/", VERBOSITY="0",
                          LOGFILE=str(work / "server.log"), JPEG_QUALITY="90")
        # iipy's display range goes into the TIFF, so both servers render the same tiles
        sys.path.insert(0, str(ROOT))
        from iipy.app import Application
        from iipy.settings import Settings
        app = Application(Settings.from_environ(dict(env_common, IIPY_CACHE_DIR=str(work / "c"))))
        line = app.handle({"QUERY_STRING": "FIF=img.fits&obj=min-max-sample-values"}).body
        lo, hi = (float(v) for v in line.decode().split(":")[1].split())
        write_pyramid_tiff(work / "img.tif", data[::-1], tile=256, smin=lo, smax=hi)

        ncpu = os.cpu_count() or 1
        server_cpus = list(range(min(args.procs, ncpu)))
        client_cpus = [ncpu - 1] if ncpu > args.procs else None
        pin = ["taskset", "-c", ",".join(map(str, server_cpus))]

        iipy_port = free_port()
        exe = str(Path(sys.executable).with_name("iipsrv.fcgi"))
        procs.append(subprocess.Popen(pin + [exe, "--bind", "127.0.0.1:%d" % iipy_port],
                                      env=dict(env_common, IIPY_WORKERS=str(args.procs),
                                               IIPY_CACHE_DIR=str(work / "c"),
                                               MAX_IMAGE_CACHE_SIZE="0",
                                               MEMCACHED_SERVERS=""),
                                      start_new_session=True))
        iipsrv_ports = [free_port() for _ in range(args.procs)]
        for port in iipsrv_ports:
            procs.append(subprocess.Popen(
                pin + [IIPSRV, "--bind", "127.0.0.1:%d" % port],
                env=dict(env_common, OMP_NUM_THREADS="1", MAX_IMAGE_CACHE_SIZE="0",
                         MEMCACHED_SERVERS="127.0.0.1:1"), stdout=subprocess.DEVNULL,
                start_new_session=True))
        http_port = free_port()
        (work / "nginx.conf").write_text(NGINX_CONF.format(
            work=work, port=http_port,
            iipy_servers="server 127.0.0.1:%d;" % iipy_port,
            iipsrv_servers=" ".join("server 127.0.0.1:%d;" % p for p in iipsrv_ports)))
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        procs.append(subprocess.Popen([nginx, "-c", str(work / "nginx.conf"), "-p", str(work)],
                                      start_new_session=True))
        for port in [iipy_port, http_port] + iipsrv_ports:
            wait_port(port)

        lua = work / "replay.lua"
        lua.write_text(WRK_LUA)
        results: dict[str, list[tuple[float, float, float, int]]] = {"iipy": [], "iipsrv": []}
        for name, fif in (("iipy", "img.fits"), ("iipsrv", "img.tif")):
            pf = work / ("paths-%s.txt" % name)
            pf.write_text("".join("/%s%s\n" % (name, p)
                                  for p in tile_paths(args.size, 256, fif, args.mix)))
            # warm the pyramid (iipy) and the page cache (both), outside the measurement
            run_wrk("http://127.0.0.1:%d/%s" % (http_port, name), pf, lua, 2,
                    args.connections, client_cpus)
        npaths = len(tile_paths(args.size, 256, "x", args.mix))
        print("bench: %d distinct tile URLs, %d connection(s), %d process(es) per server, "
              "server CPUs %s" % (npaths, args.connections, args.procs, server_cpus))
        for i in range(args.repeat):
            for name in ("iipy", "iipsrv"):
                url = "http://127.0.0.1:%d/%s" % (http_port, name)
                r = run_wrk(url, work / ("paths-%s.txt" % name), lua, args.duration,
                            args.connections, client_cpus)
                results[name].append(r)
                print("  run %d %-7s %8.1f tiles/s  mean %6.2f ms  p99 %6.2f ms  errors %d"
                      % (i + 1, name, r[0], r[1], r[2], r[3]))
        med = {n: [statistics.median(v[j] for v in results[n]) for j in range(3)]
               for n in results}
        print("\nmedians over %d runs:" % args.repeat)
        for n in ("iipy", "iipsrv"):
            print("  %-7s %8.1f tiles/s  mean %6.2f ms  p99 %6.2f ms" % (n, *med[n]))
        print("  ratio iipy/iipsrv (tiles/s): %.2f" % (med["iipy"][0] / med["iipsrv"][0]))
        return 0
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
