"""Tile throughput of iipy against the reference iipsrv 1.1, behind the same nginx.

    .venv/bin/python bench/bench_tiles.py [--size 4096] [--channels 1] [--procs 1]
                                          [--duration 8] [--repeat 3] [--connections 4]
    .venv/bin/python bench/bench_tiles.py --suite     # the whole matrix, several minutes

Writes a seeded float32 FITS image (sky, noise, stars; ``--channels`` > 1 gives a cube)
and the same pixels as a tiled pyramidal float32 TIFF (floor levels, 2x2 means,
SMin/SMax = iipy's display range), so both servers compute the same tiles.  Starts iipy
(``--procs`` workers) and iipsrv 1.1 (``--procs`` processes, OMP_NUM_THREADS=1, no
memcached, no tile cache) on loopback, and one nginx in front of both (kept-alive FastCGI
connections for iipy; new connections for iipsrv, which serves one connection at a time
until it is closed).  Servers are pinned to the first ``--procs`` CPUs and the load
generator to the last one when the machine has more CPUs than that.

* cold: both servers freshly started and answering (iipy with an empty pyramid
  directory, so the first low-resolution tile builds the pyramid), the first 400 requests of a browsing
  session (zooming in from the smallest level) sent once each over ``--connections``
  kept-alive HTTP connections; iipsrv's session starts once iipy's pyramid is whole
  (its level 1 follows the other levels in the background), so that it runs alone;
* warm: on whole pyramids, the same shuffled list of distinct VisiOmatic 2 tile URLs (default view,
  MINMAX, CMP=jet, INV+CNT variants, all with ``GAM=0.4545&CTW=...``) replayed with wrk
  against each server, alternating, ``--repeat`` times (medians).

Prints tiles/s, mean and p99 latency and the ratio iipy/iipsrv per case, then, for the
warm single-process case, the in-process cost of each stage per tile (parse, read,
render, encode, other) and what remains for FastCGI and nginx.  ``--suite`` runs
{16384x16384 image, 4096x4096x5 cube} x {1 process, one per CPU} x {cold, warm}.

``--protocols`` instead compares the URL forms of the same tiles, warm, in the default
display (iipsrv 1.1 ignores modifiers before IIIF, and fails on MINMAX there): JTL,
DeepZoom (``<image>_files/<L>/<x>_<y>.jpg``) and IIIF
(``<image>/<x>,<y>,<w>,<h>/<tile width>,/0/default.jpg``) for every tile of every level,
each replayed ``--repeat`` times per server; prints the median tiles/s with the
spread (min-max) and the ratio of the medians.
Nothing here is a test: figures go in notes, not assertions.

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
from typing import Callable

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


def stop_groups(procs: list[subprocess.Popen], timeout: float = 10.0) -> None:
    """Stop processes started in sessions of their own (``start_new_session=True``):
    SIGTERM to each group, in reverse order of start, then SIGKILL to a group that has
    not exited within ``timeout`` seconds."""
    for p in reversed(procs):
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def run_main(main: Callable[[], int]) -> None:
    """Exit with ``main()``; stopped with SIGTERM, the finally blocks still stop the
    servers the script started."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sys.exit(main())


def ctw_for(channels: int) -> str:
    """The CTW VisiOmatic 2 sends: ``1;1;1`` for one channel, else colour rows R, G, B
    taking the first three channels."""
    if channels == 1:
        return "1;1;1"
    return ";".join(",".join("1" if j == i else "0" for j in range(channels)) for i in range(3))


def level_sizes(size: int, tile: int) -> list[int]:
    """Level sizes, full resolution first (floor halving, down to one tile)."""
    sizes = [size]
    while sizes[-1] > tile:
        sizes.append(sizes[-1] // 2)
    return sizes


def tile_paths(size: int, tile: int, fif: str, channels: int, seed: int = 2) -> list[str]:
    """Distinct VisiOmatic 2 tile queries over every level and variant, shuffled."""
    ctw = ctw_for(channels)
    variants = ["GAM=0.4545&CTW=%s" % ctw, "MINMAX=1:90,400&GAM=0.4545&CTW=%s" % ctw,
                "CMP=jet&GAM=0.4545&CTW=%s" % ctw, "INV&CNT=1.5&GAM=0.4545&CTW=%s" % ctw]
    sizes = level_sizes(size, tile)
    nres = len(sizes)
    paths = []
    for variant in variants:
        for r in range(nres):
            n = -(-sizes[nres - 1 - r] // tile)
            paths += ["?FIF=%s&%s&JTL=%d,%d" % (fif, variant, r, i) for i in range(n * n)]
    random.Random(seed).shuffle(paths)
    return paths


def protocol_paths(size: int, tile: int, fif: str, protocol: str) -> list[str]:
    """Every tile of every level once, in the URL form of ``protocol`` (``jtl``,
    ``deepzoom`` or ``iiif``), default display, shuffled: the same JTL tiles."""
    sizes = level_sizes(size, tile)
    nres = len(sizes)
    deepest = (max(size, 1) - 1).bit_length()  # DeepZoom's level of the full image
    paths = []
    for r in range(nres):
        k = nres - 1 - r
        n = -(-sizes[k] // tile)
        for y in range(n):
            for x in range(n):
                if protocol == "jtl":
                    paths.append("?FIF=%s&JTL=%d,%d" % (fif, r, y * n + x))
                elif protocol == "deepzoom":
                    level = r + deepest - nres + 1
                    paths.append("?DeepZoom=%s_files/%d/%d_%d.jpg" % (fif, level, x, y))
                else:
                    s = 1 << k
                    w = min(tile, sizes[k] - x * tile)
                    h = min(tile, sizes[k] - y * tile)
                    paths.append("?IIIF=%s/%d,%d,%d,%d/%d,/0/default.jpg"
                                 % (fif, x * tile * s, y * tile * s, w * s, h * s, w))
    random.Random(3).shuffle(paths)
    return paths


def browsing_paths(size: int, tile: int, fif: str, channels: int, count: int = 400,
                   seed: int = 4) -> list[str]:
    """A browsing session: the whole smallest level, then zooming in on random spots,
    each view a 4x3 block of tiles, default view with VisiOmatic 2's parameters."""
    rng = random.Random(seed)
    sizes = level_sizes(size, tile)
    nres = len(sizes)
    prefix = "?FIF=%s&GAM=0.4545&CTW=%s" % (fif, ctw_for(channels))
    count = min(count, sum((-(-s // tile)) ** 2 for s in sizes))  # distinct tiles only
    paths, seen = [], set()
    while len(paths) < count:
        cx, cy = rng.random(), rng.random()
        for r in range(nres):
            n = -(-sizes[nres - 1 - r] // tile)
            x0 = max(0, min(n - 4, int(cx * n) - 2))
            y0 = max(0, min(n - 3, int(cy * n) - 1))
            for y in range(y0, min(n, y0 + 3)):
                for x in range(x0, min(n, x0 + 4)):
                    q = "%s&JTL=%d,%d" % (prefix, r, x + n * y)
                    if q not in seen:
                        seen.add(q)
                        paths.append(q)
    return paths[:count]


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
    m = re.search(r"BENCH (\d+) (\d+) ([\d.]+) ([\d.]+) (\d+)", proc.stdout)
    if not m:
        raise SystemExit("bench: cannot read wrk output:\n" + proc.stdout)
    requests, micros = int(m.group(1)), int(m.group(2))
    return requests / (micros / 1e6), float(m.group(3)) / 1e3, float(m.group(4)) / 1e3, \
        int(m.group(5))


def replay_once(port: int, location: str, paths: list[str], connections: int
                ) -> tuple[float, float, float, int]:
    """Each path once, over ``connections`` kept-alive HTTP connections."""
    import http.client
    import threading

    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    todo = iter(paths)

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while True:
            with lock:
                path = next(todo, None)
            if path is None:
                break
            t = time.perf_counter()
            conn.request("GET", "/%s%s" % (location, path))
            response = conn.getresponse()
            response.read()
            dt = time.perf_counter() - t
            with lock:
                latencies.append(dt)
                errors[0] += response.status != 200
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(connections)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    latencies.sort()
    return (len(latencies) / wall, 1e3 * statistics.fmean(latencies),
            1e3 * latencies[int(0.99 * (len(latencies) - 1))], errors[0])


class Servers:
    """iipy and iipsrv 1.1 (``procs`` processes each) behind one nginx.

    ``iipy_env`` adds to or overrides iipy's environment (e.g. CODEC_PASSTHROUGH,
    VERBOSITY); ``iipsrv=False`` starts iipy alone (its location only).  ``iipy_pid``
    is iipy's master.
    """

    def __init__(self, work: Path, procs: int, run: str,
                 iipy_env: dict[str, str] | None = None, iipsrv: bool = True):
        self.work, self.procs = work, procs
        self.run = work / run
        self.run.mkdir()
        self.children: list[subprocess.Popen] = []
        ncpu = os.cpu_count() or 1
        self.server_cpus = list(range(min(procs, ncpu)))
        self.client_cpus = [ncpu - 1] if ncpu > procs else None
        pin = ["taskset", "-c", ",".join(map(str, self.server_cpus))]
        # PYTHONPATH: the server runs this checkout's iipy, whatever the venv points at
        env = dict(os.environ, PYTHONPATH=str(ROOT), FILESYSTEM_PREFIX=str(work) + "/",
                   VERBOSITY="0",
                   LOGFILE=str(self.run / "server.log"), JPEG_QUALITY="90",
                   MAX_IMAGE_CACHE_SIZE="0")
        iipy_port = free_port()
        exe = str(Path(sys.executable).with_name("iipsrv.fcgi"))
        self._spawn(pin + [exe, "--bind", "127.0.0.1:%d" % iipy_port],
                    dict(env, IIPY_WORKERS=str(procs), IIPY_CACHE_DIR=str(self.run / "pyr"),
                         MEMCACHED_SERVERS="", **(iipy_env or {})))
        self.iipy_pid = self.children[-1].pid
        iipsrv_ports = [free_port() for _ in range(procs)] if iipsrv else []
        for port in iipsrv_ports:
            self._spawn(pin + [IIPSRV, "--bind", "127.0.0.1:%d" % port],
                        dict(env, OMP_NUM_THREADS="1", MEMCACHED_SERVERS="127.0.0.1:1"))
        self.port = free_port()
        conf = self.run / "nginx.conf"
        conf.write_text(NGINX_CONF.format(
            work=self.run, port=self.port, iipy_servers="server 127.0.0.1:%d;" % iipy_port,
            iipsrv_servers=" ".join("server 127.0.0.1:%d;" % p for p in iipsrv_ports)
            or "server 127.0.0.1:1 down;"))
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        cmd = [nginx, "-c", str(conf), "-p", str(self.run)]
        if os.geteuid() == 0:
            cmd += ["-g", "user root;"]
        self._spawn(cmd, None)
        for port in [iipy_port, self.port] + iipsrv_ports:
            wait_port(port)
        # "cold" means a fresh image, not processes still starting: wait until every
        # worker answers (the listening socket is open before the workers are forked)
        for location in ("iipy", "iipsrv") if iipsrv else ("iipy",):
            replay_once(self.port, location, ["?obj=IIP,1.0"] * (8 * procs), 2 * procs)

    def _spawn(self, cmd: list[str], env: dict | None) -> None:
        self.children.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                              start_new_session=True))

    def close(self) -> None:
        stop_groups(self.children)


def prepare(work: Path, size: int, channels: int) -> tuple[str, str]:
    """Write the FITS image and the equivalent TIFF; return their names."""
    from iipy.protocols.router import Application
    from iipy.settings import Settings
    from bench_stages import write_image

    name = "img%d_%d" % (size, channels)
    fits_path, tif_path = work / (name + ".fits"), work / (name + ".tif")
    if not tif_path.exists():
        t = time.perf_counter()
        write_image(fits_path, size, channels)
        app = Application(Settings.from_environ({
            "FILESYSTEM_PREFIX": str(work) + "/", "IIPY_CACHE_DIR": str(work / "prep"),
            "VERBOSITY": "0", "MEMCACHED_SERVERS": ""}))
        body = app.handle({"QUERY_STRING": "FIF=%s&obj=min-max-sample-values"
                           % fits_path.name}).body.decode()
        values = [float(v) for v in body.split(":")[1].split()]
        from astropy.io import fits
        with fits.open(fits_path, memmap=True) as hdul:
            data = hdul[0].data
            write_pyramid_tiff(tif_path, np.ascontiguousarray(data[..., ::-1, :]), tile=256,
                               smin=values[0::2], smax=values[1::2])
        shutil.rmtree(work / "prep", ignore_errors=True)
        print("bench: wrote %s and %s in %.0f s" % (fits_path.name, tif_path.name,
                                                     time.perf_counter() - t))
    return fits_path.name, tif_path.name


def run_case(work: Path, size: int, channels: int, procs: int, args, lua: Path,
             label: str) -> dict[str, dict[str, tuple[float, float, float, int]]]:
    fits_name, tif_name = prepare(work, size, channels)
    out: dict[str, dict[str, tuple[float, float, float, int]]] = {}
    names = {"iipy": fits_name, "iipsrv": tif_name}
    # cold: fresh servers, fresh pyramid directory, one browsing session each
    servers = Servers(work, procs, "%s-cold-%d" % (label, time.monotonic_ns()))
    try:
        out["cold"] = {}
        for name in ("iipy", "iipsrv"):
            paths = browsing_paths(size, 256, names[name], channels)
            out["cold"][name] = replay_once(servers.port, name, paths, args.connections)
            if name == "iipy":  # iipsrv's session on a quiet machine, not beside level 1
                wait_for_whole_pyramids(servers.run / "pyr")
    finally:
        servers.close()
    # warm: distinct URLs replayed with wrk after a warm-up
    servers = Servers(work, procs, "%s-warm-%d" % (label, time.monotonic_ns()))
    try:
        files = {}
        for name in ("iipy", "iipsrv"):
            pf = servers.run / ("paths-%s.txt" % name)
            pf.write_text("".join("/%s%s\n" % (name, p)
                                  for p in tile_paths(size, 256, names[name], channels)))
            files[name] = pf
            run_wrk("http://127.0.0.1:%d/%s" % (servers.port, name), pf, lua, 2,
                    args.connections, servers.client_cpus)
        wait_for_whole_pyramids(servers.run / "pyr")
        runs: dict[str, list] = {"iipy": [], "iipsrv": []}
        for _ in range(args.repeat):
            for name in ("iipy", "iipsrv"):
                runs[name].append(run_wrk("http://127.0.0.1:%d/%s" % (servers.port, name),
                                          files[name], lua, args.duration, args.connections,
                                          servers.client_cpus))
        out["warm"] = {n: tuple(statistics.median(r[j] for r in runs[n]) for j in range(4))
                       for n in runs}
    finally:
        servers.close()
    return out


def wait_for_whole_pyramids(cache: Path, timeout: float = 300.0) -> None:
    """Wait until every pyramid in ``cache`` is whole: level 1 of an uncompressed FITS
    file follows the other levels in the background (``level1.f32.part`` until then)."""
    deadline = time.monotonic() + timeout
    while any(cache.glob("*/level1.f32.part")) or any(
            not (d / "level1.f32").exists() for d in cache.glob("*") if (d / "meta.json").exists()):
        if time.monotonic() > deadline:
            raise SystemExit("bench: the pyramid in %s stays incomplete" % cache)
        time.sleep(0.01)


def run_protocols(work: Path, size: int, channels: int, procs: int, args, lua: Path
                  ) -> dict[str, dict[str, list[tuple[float, float, float, int]]]]:
    """Warm throughput of the JTL, DeepZoom and IIIF forms of the same tiles: every run
    of every protocol and server (alternating), after a warm-up each."""
    fits_name, tif_name = prepare(work, size, channels)
    names = {"iipy": fits_name, "iipsrv": tif_name}
    servers = Servers(work, procs, "protocols-%d" % time.monotonic_ns())
    runs: dict[str, dict[str, list]] = {}
    try:
        files = {}
        for protocol in PROTOCOLS:
            for name in ("iipy", "iipsrv"):
                pf = servers.run / ("paths-%s-%s.txt" % (protocol, name))
                pf.write_text("".join("/%s%s\n" % (name, p)
                                      for p in protocol_paths(size, 256, names[name], protocol)))
                files[protocol, name] = pf
                run_wrk("http://127.0.0.1:%d/%s" % (servers.port, name), pf, lua, 2,
                        args.connections, servers.client_cpus)
        for _ in range(args.repeat):
            for protocol in PROTOCOLS:
                for name in ("iipy", "iipsrv"):
                    runs.setdefault(protocol, {}).setdefault(name, []).append(
                        run_wrk("http://127.0.0.1:%d/%s" % (servers.port, name),
                                files[protocol, name], lua, args.duration, args.connections,
                                servers.client_cpus))
    finally:
        servers.close()
    return runs


PROTOCOLS = ("jtl", "deepzoom", "iiif")


def print_protocols(title: str, runs) -> None:
    for protocol in PROTOCOLS:
        a = [r[0] for r in runs[protocol]["iipy"]]
        b = [r[0] for r in runs[protocol]["iipsrv"]]
        errors = sum(r[3] for side in runs[protocol].values() for r in side)
        print("%-26s %-8s iipy %7.1f t/s (%.1f-%.1f)  iipsrv %7.1f t/s (%.1f-%.1f)  "
              "ratio %.2f%s" % (title, protocol, statistics.median(a), min(a), max(a),
                                statistics.median(b), min(b), max(b),
                                statistics.median(a) / statistics.median(b),
                                "  ERRORS %d" % errors if errors else ""))


def print_case(title: str, result) -> None:
    for temp in ("cold", "warm"):
        a, b = result[temp]["iipy"], result[temp]["iipsrv"]
        print("%-34s %-4s iipy %7.1f t/s (mean %6.2f, p99 %6.2f ms)  iipsrv %7.1f t/s "
              "(mean %6.2f, p99 %6.2f ms)  ratio %.2f%s"
              % (title, temp, a[0], a[1], a[2], b[0], b[1], b[2], a[0] / b[0],
                 "  ERRORS %d/%d" % (a[3], b[3]) if a[3] or b[3] else ""))


def stage_costs(work: Path, size: int, channels: int) -> dict[str, float]:
    """Mean in-process cost per tile of each stage (microseconds), warm pyramid."""
    from iipy.protocols.iip import commands
    from iipy.protocols.iip import parser
    from iipy.imaging.paths import resolve
    from iipy.protocols.router import Application
    from iipy.protocols.iip.commands import Context
    from iipy.settings import Settings

    fits_name, _ = prepare(work, size, channels)
    settings = Settings.from_environ({"FILESYSTEM_PREFIX": str(work) + "/",
                                      "IIPY_CACHE_DIR": str(work / "stages"), "VERBOSITY": "0",
                                      "JPEG_QUALITY": "90", "MAX_IMAGE_CACHE_SIZE": "0",
                                      "MEMCACHED_SERVERS": ""})
    app = Application(settings)
    qs = [p[1:] for p in tile_paths(size, 256, fits_name, channels)[:2000]]
    for q in qs[:20]:
        app.handle({"QUERY_STRING": q})
    # warm: the whole pyramid on disk (level 1 follows the others in the background)
    app.store.open(resolve(fits_name, settings)).pyramid.complete()
    sums = dict(parse=0.0, read=0.0, render=0.0, encode=0.0, total=0.0)
    for q in qs:
        t0 = time.perf_counter()
        request = parser.parse(q)
        t1 = time.perf_counter()
        ctx = Context(settings, app.responder, app.store)
        commands.run(request, ctx)
        sums["total"] += time.perf_counter() - t0
        sums["parse"] += t1 - t0
        sums["read"] += ctx.timings.read
        sums["render"] += ctx.timings.render
        sums["encode"] += ctx.timings.encode
    out = {k: 1e6 * v / len(qs) for k, v in sums.items()}
    out["other"] = out["total"] - out["parse"] - out["read"] - out["render"] - out["encode"]
    shutil.rmtree(work / "stages", ignore_errors=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096, help="image width and height")
    ap.add_argument("--channels", type=int, default=1, help="planes (a cube if > 1)")
    ap.add_argument("--procs", type=int, default=1, help="worker processes of each server")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run")
    ap.add_argument("--repeat", type=int, default=3, help="runs per server (medians)")
    ap.add_argument("--connections", type=int, default=4, help="concurrent connections")
    ap.add_argument("--suite", action="store_true", help="the whole matrix (see above)")
    ap.add_argument("--protocols", action="store_true",
                    help="JTL, DeepZoom and IIIF URLs of the same tiles (see above)")
    ap.add_argument("--dir", help="work directory, kept (images are reused)")
    args = ap.parse_args()
    for exe in ("nginx", "wrk"):
        if not shutil.which(exe) and not os.path.exists("/usr/sbin/" + exe):
            raise SystemExit("bench: %s is not installed (apt-get install %s)" % (exe, exe))
    if not os.path.exists(IIPSRV):
        raise SystemExit("bench: %s missing (apt-get install iipimage-server)" % IIPSRV)
    sys.path.insert(0, str(ROOT / "bench"))
    from iipy.imaging.kernels import ACCELERATED

    work = Path(args.dir or tempfile.mkdtemp(prefix="iipy-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    lua = work / "replay.lua"
    lua.write_text(WRK_LUA)
    ncpu = os.cpu_count() or 1
    if args.suite:
        cases = [(16384, 1, 1), (16384, 1, ncpu), (4096, 5, 1), (4096, 5, ncpu)]
    else:
        cases = [(args.size, args.channels, args.procs)]
    print("bench: kernels %s, %d CPU(s), %d connection(s), wrk runs of %g s, medians of %d"
          % ("Cython" if ACCELERATED else "NumPy", ncpu, args.connections, args.duration,
             args.repeat))
    try:
        if args.protocols:
            title = "%dx%d%s, %d proc" % (args.size, args.size,
                                         "x%d" % args.channels if args.channels > 1 else "",
                                         args.procs)
            runs = run_protocols(work, args.size, args.channels, args.procs, args, lua)
            print("\nwarm, default display (tiles/s: median (min-max) of %d runs; ratio of "
                  "the medians iipy/iipsrv):" % args.repeat)
            print_protocols(title, runs)
            return 0
        results = []
        for size, channels, procs in cases:
            title = "%dx%d%s, %d proc" % (size, size, "x%d" % channels if channels > 1 else "",
                                         procs)
            result = run_case(work, size, channels, procs, args, lua, "c%d" % len(results))
            results.append((title, result))
            print_case(title, result)
        print("\nsummary (tiles/s; ratio iipy/iipsrv):")
        for title, result in results:
            print_case(title, result)
        size, channels, _ = cases[0]
        st = stage_costs(work, size, channels)
        one = [r for (s, c, p), (_, r) in zip(cases, results) if p == 1][0]
        per_tile = 1e6 / one["warm"]["iipy"][0]
        print("\nstages per tile, %dx%d%s, in-process (microseconds): parse %.0f, read %.0f, "
              "render %.0f, encode %.0f, other %.0f; total %.0f; FastCGI and nginx (1 proc, "
              "from the warm throughput) %.0f"
              % (size, size, "x%d" % channels if channels > 1 else "", st["parse"], st["read"],
                 st["render"], st["encode"], st["other"], st["total"],
                 max(0.0, per_tile - st["total"])))
        return 0
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    run_main(main)
