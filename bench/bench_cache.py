"""Repeated-tile throughput: iipy's caches against iipsrv 1.1's, one process on one core.

    .venv/bin/python bench/bench_cache.py [--size 4096] [--hot 300] [--duration 8]
                                          [--repeat 3] [--connections 4] [--cache-mb 10]

A hot set of ``--hot`` distinct VisiOmatic 2 tile URLs (every level, the default view
and the MINMAX, CMP and INV/CNT variants, shuffled) is replayed over and over with wrk,
through one nginx, against one server process pinned to CPU 0 (nginx, wrk and
memcached run on the last CPU).  The image is the same seeded float32 sky as in
the tile benchmark, as FITS for iipy and as a pyramidal TIFF for iipsrv.  Two setups:

memory
    iipy: one worker, MAX_IMAGE_CACHE_SIZE=``--cache-mb``, no memcached; iipsrv 1.1:
    its own tile cache with MAX_IMAGE_CACHE_SIZE at its default, memcached pointed at a
    closed port.
memcached
    One real memcached.  iipy: MAX_IMAGE_CACHE_SIZE=0 (every answer from memcached);
    iipsrv 1.1: MEMCACHED_SERVERS pointing at it (it looks memcached up before parsing).

Every URL is requested once before the measured runs (that fills the caches), then the
servers alternate, ``--repeat`` runs each.  memcached's get_hits/get_misses are read
after each setup to show both servers really used it.  Prints tiles/s, mean and p99
latency per run, the server's CPU time per request (its processes' user and system
time during the run over the requests answered: what a hit costs the server, whether
or not nginx, wrk and memcached, sharing the last CPU, are what limits the tiles/s),
medians, and the ratios iipy/iipsrv.  Figures go in notes, not in assertions.

Needs: nginx, wrk, memcached, iipimage-server (apt), tifffile (pip install -e .[test]).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "bench"))

from bench_tiles import WRK_LUA, free_port, run_main, run_wrk, stop_groups, wait_port  # noqa: E402
from tests.e2e._tiff import write_pyramid_tiff  # noqa: E402

IIPSRV = "/usr/lib/iipimage-server/iipsrv.fcgi"

NGINX_CONF = """
daemon off;
worker_processes 1;
pid "{work}/nginx-{port}.pid";
error_log "{work}/nginx-error.log" warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path "{work}/t1"; fastcgi_temp_path "{work}/t2";
    proxy_temp_path "{work}/t3"; uwsgi_temp_path "{work}/t4"; scgi_temp_path "{work}/t5";
    upstream iipy {{ server 127.0.0.1:{iipy_port}; keepalive 16; }}
    upstream iipsrv {{ server 127.0.0.1:{iipsrv_port}; }}
    server {{
        listen 127.0.0.1:{port};
        location /iipy {{
            fastcgi_pass iipy; fastcgi_keep_conn on;
            fastcgi_param QUERY_STRING $query_string;
            fastcgi_param REQUEST_METHOD $request_method;
            fastcgi_param REQUEST_URI $request_uri;
        }}
        location /iipsrv {{
            # iipsrv serves one connection at a time until it is closed: kept-alive
            # connections would make requests queue behind idle ones
            fastcgi_pass iipsrv; fastcgi_keep_conn off;
            fastcgi_param QUERY_STRING $query_string;
            fastcgi_param REQUEST_METHOD $request_method;
            fastcgi_param REQUEST_URI $request_uri;
        }}
    }}
}}
"""

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
        img[y - 6: y + 7, x - 6: x + 7] += f * psf
    return img


def tile_paths(size: int, tile: int, fif: str, seed: int = 2) -> list[str]:
    """Distinct VisiOmatic 2 tile queries over every level and four views, shuffled."""
    widths = []
    w = size
    while True:
        widths.append(w)
        if w <= tile:
            break
        w //= 2
    nres = len(widths)
    variants = ["GAM=0.4545&CTW=1;1;1", "MINMAX=1:90,400&GAM=0.4545&CTW=1;1;1",
                "CMP=jet&GAM=0.4545&CTW=1;1;1", "INV&CNT=1.5&GAM=0.4545&CTW=1;1;1"]
    paths = []
    for variant in variants:
        for r in range(nres):
            n = -(-widths[nres - 1 - r] // tile)
            for t in range(n * n):
                paths.append("?FIF=%s&%s&JTL=%d,%d" % (fif, variant, r, t))
    random.Random(seed).shuffle(paths)
    return paths


Result = tuple[float, float, float, int, float]  # tiles/s, mean ms, p99 ms, errors, CPU us/tile


def cpu_seconds(pid: int) -> float:
    """User and system seconds of a process and its children (the workers), so far."""
    hz = os.sysconf("SC_CLK_TCK")
    ticks = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == pid or int(fields[1]) == pid:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / hz


def mc_stats(port: int) -> dict[str, int]:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(b"stats\r\n")
        data = b""
        while not data.endswith(b"END\r\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    out = {}
    for line in data.decode().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2].isdigit():
            out[parts[1]] = int(parts[2])
    return out


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path):
        self.args = args
        self.work = work
        self.procs: list[subprocess.Popen] = []
        self.servers: dict[str, int] = {}  # name -> pid (taskset execs the server)
        ncpu = os.cpu_count() or 1
        self.server_pin = ["taskset", "-c", "0"]
        self.other_cpu = [ncpu - 1] if ncpu > 1 else None
        self.other_pin = ["taskset", "-c", str(ncpu - 1)] if ncpu > 1 else []
        # PYTHONPATH: the server runs this checkout's iipy, whatever the venv's
        # (editable) install points to
        self.env = dict(os.environ, FILESYSTEM_PREFIX=str(work) + "/", VERBOSITY="0",
                        LOGFILE=str(work / "server.log"), JPEG_QUALITY="90",
                        PYTHONPATH=os.pathsep.join(
                            filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        self.lua = work / "replay.lua"
        self.lua.write_text(WRK_LUA)

    def spawn(self, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(p)
        return p

    def stop_all(self) -> None:
        stop_groups(self.procs, timeout=5)
        self.procs.clear()

    def prepare_images(self) -> None:
        from astropy.io import fits

        from iipy.protocols.router import Application
        from iipy.settings import Settings

        size = self.args.size
        print("bench: writing %dx%d float32 FITS and TIFF in %s" % (size, size, self.work))
        data = make_image(size)
        fits.PrimaryHDU(data).writeto(self.work / "img.fits")
        app = Application(Settings.from_environ(dict(self.env, MEMCACHED_SERVERS="",
                                                     IIPY_CACHE_DIR=str(self.work / "c"))))
        line = app.handle({"QUERY_STRING": "FIF=img.fits&obj=min-max-sample-values"}).body
        lo, hi = (float(v) for v in line.decode().split(":")[1].split())
        write_pyramid_tiff(self.work / "img.tif", data[::-1], tile=256, smin=lo, smax=hi)

    def start(self, iipy_env: dict[str, str], iipsrv_env: dict[str, str]) -> int:
        """Start iipy, iipsrv and nginx; return nginx's port."""
        iipy_port, iipsrv_port, http_port = free_port(), free_port(), free_port()
        exe = str(Path(sys.executable).with_name("iipsrv.fcgi"))
        self.servers["iipy"] = self.spawn(
            self.server_pin + [exe, "--bind", "127.0.0.1:%d" % iipy_port],
            dict(self.env, IIPY_WORKERS="1", IIPY_CACHE_DIR=str(self.work / "c"),
                 **iipy_env)).pid
        self.servers["iipsrv"] = self.spawn(
            self.server_pin + [IIPSRV, "--bind", "127.0.0.1:%d" % iipsrv_port],
            dict(self.env, OMP_NUM_THREADS="1", **iipsrv_env)).pid
        conf = self.work / ("nginx-%d.conf" % http_port)
        conf.write_text(NGINX_CONF.format(work=self.work, port=http_port, iipy_port=iipy_port,
                                          iipsrv_port=iipsrv_port))
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.spawn(self.other_pin + [nginx, "-c", str(conf), "-p", str(self.work)])
        for port in (iipy_port, iipsrv_port, http_port):
            wait_port(port)
        return http_port

    def start_memcached(self) -> int:
        port = free_port()
        cmd = ["memcached", "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "256", "-t", "1"]
        if os.geteuid() == 0:
            cmd += ["-u", "root"]
        self.spawn(self.other_pin + cmd)
        wait_port(port)
        return port

    def paths(self, name: str) -> tuple[Path, list[str]]:
        fif = "img.fits" if name == "iipy" else "img.tif"
        hot = tile_paths(self.args.size, 256, fif)[: self.args.hot]
        pf = self.work / ("hot-%s.txt" % name)
        pf.write_text("".join("/%s%s\n" % (name, p) for p in hot))
        return pf, hot

    def warm(self, http_port: int) -> dict[str, int]:
        """Request every hot URL once per server (fills the caches); bytes of the set."""
        sizes = {}
        for name in ("iipy", "iipsrv"):
            _, hot = self.paths(name)
            total = 0
            for p in hot:
                with urllib.request.urlopen("http://127.0.0.1:%d/%s%s" % (http_port, name, p),
                                            timeout=60) as resp:
                    if resp.status != 200:
                        raise SystemExit("bench: %s answered %d to %s" % (name, resp.status, p))
                    total += len(resp.read())
            sizes[name] = total
        return sizes

    def measure(self, http_port: int, label: str) -> dict[str, list[Result]]:
        results: dict[str, list[Result]] = {"iipy": [], "iipsrv": []}
        for i in range(self.args.repeat):
            for name in ("iipy", "iipsrv"):
                pf, _ = self.paths(name)
                cpu0 = cpu_seconds(self.servers[name])
                w = run_wrk("http://127.0.0.1:%d/%s" % (http_port, name), pf, self.lua,
                            self.args.duration, self.args.connections, self.other_cpu)
                cpu = cpu_seconds(self.servers[name]) - cpu0
                r = w + (1e6 * cpu / max(1.0, w[0] * self.args.duration),)
                results[name].append(r)
                print("  %-9s run %d %-7s %8.1f tiles/s  mean %6.2f ms  p99 %6.2f ms  errors %d"
                      "  server CPU %6.1f us/tile" % (label, i + 1, name, *r))
        return results


def medians(results: dict[str, list[Result]]) -> dict[str, list[float]]:
    return {n: [statistics.median(v[j] for v in rs) for j in (0, 1, 2, 4)]
            for n, rs in results.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, default=4096, help="image width and height")
    ap.add_argument("--hot", type=int, default=300, help="distinct tile URLs replayed")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run")
    ap.add_argument("--repeat", type=int, default=3, help="runs per server and setup (medians)")
    ap.add_argument("--connections", type=int, default=4, help="concurrent connections")
    ap.add_argument("--cache-mb", type=float, default=10.0,
                    help="iipy's MAX_IMAGE_CACHE_SIZE in the memory setup (iipsrv keeps its default)")
    ap.add_argument("--only", choices=["memory", "memcached"], help="run one setup only")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    for exe in ("nginx", "wrk", "memcached", "taskset"):
        if not shutil.which(exe) and not os.path.exists("/usr/sbin/" + exe):
            raise SystemExit("bench: %s is not installed" % exe)
    if not os.path.exists(IIPSRV):
        raise SystemExit("bench: %s missing (apt-get install iipimage-server)" % IIPSRV)

    work = Path(tempfile.mkdtemp(prefix="iipy-bench-cache-"))
    bench = Bench(args, work)
    summary: dict[str, dict[str, list[float]]] = {}
    try:
        bench.prepare_images()
        print("bench: %d hot tile URLs, %d connection(s), one server process on CPU 0, "
              "nginx/wrk/memcached on CPU %s" % (args.hot, args.connections, bench.other_cpu))
        if args.only in (None, "memory"):
            port = bench.start({"MAX_IMAGE_CACHE_SIZE": str(args.cache_mb), "MEMCACHED_SERVERS": ""},
                               {"MEMCACHED_SERVERS": "127.0.0.1:1"})
            sizes = bench.warm(port)
            print("\nsetup memory: hot set %.1f MB (iipy), %.1f MB (iipsrv); iipy "
                  "MAX_IMAGE_CACHE_SIZE=%g, iipsrv default" % (sizes["iipy"] / 1e6,
                                                              sizes["iipsrv"] / 1e6, args.cache_mb))
            summary["memory"] = medians(bench.measure(port, "memory"))
            bench.stop_all()
        if args.only in (None, "memcached"):
            mc = bench.start_memcached()
            servers = "127.0.0.1:%d" % mc
            port = bench.start({"MAX_IMAGE_CACHE_SIZE": "0", "MEMCACHED_SERVERS": servers},
                               {"MEMCACHED_SERVERS": servers})
            bench.warm(port)
            before = mc_stats(mc)
            print("\nsetup memcached: %s, %d items after warming" % (servers, before["curr_items"]))
            results = bench.measure(port, "memcached")
            after = mc_stats(mc)
            print("  memcached: %d gets, %d hits, %d misses during the runs"
                  % (after["cmd_get"] - before["cmd_get"], after["get_hits"] - before["get_hits"],
                     after["get_misses"] - before["get_misses"]))
            summary["memcached"] = medians(results)
            bench.stop_all()
        print("\nmedians over %d runs:" % args.repeat)
        for setup, med in summary.items():
            for n in ("iipy", "iipsrv"):
                print("  %-9s %-7s %8.1f tiles/s  mean %6.2f ms  p99 %6.2f ms  server CPU "
                      "%6.1f us/tile" % (setup, n, *med[n]))
        for setup, med in summary.items():
            print("  ratio iipy/iipsrv, %-9s %.2f (server CPU per tile: iipsrv/iipy %.2f)"
                  % (setup, med["iipy"][0] / med["iipsrv"][0], med["iipsrv"][3] / med["iipy"][3]))
        if "memory" in summary and "memcached" in summary:
            print("  iipy with memcached only / iipsrv with its in-process cache: %.2f"
                  % (summary["memcached"]["iipy"][0] / summary["memory"]["iipsrv"][0]))
        return 0
    finally:
        bench.stop_all()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    run_main(main)
