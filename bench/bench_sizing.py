"""The figures behind README.rst "Sizing": what a host needs for a given load.

    .venv/bin/python bench/bench_sizing.py [--size 8192] [--duration 5] [--workers 1,2,3,4]

Writes a seeded float32 FITS image (``--size`` square, sky noise and stars), a 16-bit
integer copy of it and a three-plane cube, then measures, with real processes
(``iipsrv.fcgi --bind`` behind nginx, wrk as the client) and iipy's own ``/metrics``:

1. pyramid disk: the bytes each image's reduced levels take in IIPY_CACHE_DIR, against
   the FITS file's size, and the time of the first tile (which builds them);
2. the slowest requests a worker serves once the pyramid exists (the largest CVT, a TIL
   of many tiles, a long profile, a full-resolution tile): what IIPY_TIMEOUT must allow;
3. tiles per second, mean and p99 latency for 1, 2, 3, ... workers, distinct tiles (no
   cache: every tile read, rendered and encoded) and repeated tiles (a hot set answered
   from the in-process cache), with the mean seconds per stage from ``/metrics``;
4. the JPEG bytes of a tile (mean over every level and four views, at JPEG_QUALITY 75
   and 90): how many tiles a MB of MAX_IMAGE_CACHE_SIZE or of memcached holds, and the
   memory of a worker (resident and anonymous) with its cache full;
5. memcached's own footprint per stored tile (``stats``: bytes and total_malloced over
   curr_items): what memcached's ``-m`` must be for a number of tiles.

Figures, not assertions: the machine may be shared and noisy, so each throughput figure
is the best of ``--repeat`` runs (other tenants only ever slow a run down), and the CPU
time per tile of iipy and nginx is given beside it (what contention changes least).
Needs nginx, wrk and memcached.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_stages import write_image  # noqa: E402
from bench_tiles import (WRK_LUA, free_port, level_sizes, run_main, run_wrk,  # noqa: E402
                         stop_groups, tile_paths, wait_port)

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
    upstream iipy {{ server 127.0.0.1:{fcgi_port}; keepalive 32; }}
    server {{
        listen 127.0.0.1:{port};
        location /iipy {{
            fastcgi_pass iipy; fastcgi_keep_conn on;
            fastcgi_param QUERY_STRING $query_string;
            fastcgi_param REQUEST_METHOD $request_method;
        }}
    }}
}}
"""


class Host:
    """iipy (``workers`` workers) behind nginx, with /metrics; stopped by close()."""

    def __init__(self, work: Path, label: str, workers: int, **env: str) -> None:
        self.run = work / label
        self.run.mkdir()
        self.procs: list[subprocess.Popen] = []
        self.fcgi_port, self.metrics_port, self.port = free_port(), free_port(), free_port()
        self.env = dict(os.environ, FILESYSTEM_PREFIX=str(work / "img") + "/", VERBOSITY="0",
                        LOGFILE=str(self.run / "iipy.log"), IIPY_WORKERS=str(workers),
                        IIPY_CACHE_DIR=str(work / "pyramids"), MEMCACHED_SERVERS="",
                        IIPY_METRICS_BIND="127.0.0.1:%d" % self.metrics_port)
        self.env.update(env)
        exe = str(Path(sys.executable).with_name("iipsrv.fcgi"))
        self.master = self._spawn([exe, "--bind", "127.0.0.1:%d" % self.fcgi_port], self.env)
        conf = self.run / "nginx.conf"
        conf.write_text(NGINX_CONF.format(work=self.run, port=self.port,
                                          fcgi_port=self.fcgi_port))
        cmd = [shutil.which("nginx") or "/usr/sbin/nginx", "-c", str(conf), "-p", str(self.run)]
        if os.geteuid() == 0:
            cmd += ["-g", "user root;"]
        self._spawn(cmd, None)
        for port in (self.fcgi_port, self.metrics_port, self.port):
            wait_port(port)
        deadline = time.monotonic() + 30
        while self.healthz() != 200:
            if time.monotonic() > deadline:
                raise SystemExit("bench: iipy workers not ready")
            time.sleep(0.05)

    def _spawn(self, cmd: list[str], env: dict[str, str] | None) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(proc)
        return proc

    def healthz(self) -> int:
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/healthz" % self.metrics_port,
                                        timeout=5) as resp:
                return resp.status
        except OSError:
            return 0

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.metrics_port,
                                    timeout=5) as resp:
            text = resp.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out

    def get(self, query: str) -> tuple[int, int, float]:
        """(status, body bytes, seconds) of one request through nginx."""
        t = time.perf_counter()
        with urllib.request.urlopen("http://127.0.0.1:%d/iipy?%s" % (self.port, query),
                                    timeout=300) as resp:
            body = resp.read()
            return resp.status, len(body), time.perf_counter() - t

    def cpu_seconds(self) -> tuple[float, float]:
        """CPU seconds (user + system) used so far by iipy (master and workers) and nginx."""
        iipy = [self.master.pid] + _children(self.master.pid)
        nginx = [self.procs[1].pid] + _children(self.procs[1].pid)
        return _cpu(iipy), _cpu(nginx)

    def worker_memory(self) -> list[tuple[float, float]]:
        """(resident MB, anonymous MB) of each worker."""
        out = []
        for pid in _children(self.master.pid):
            rss = anon = 0.0
            with open("/proc/%d/smaps_rollup" % pid) as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss = int(line.split()[1]) / 1024
                    elif line.startswith("Anonymous:"):
                        anon = int(line.split()[1]) / 1024
            out.append((rss, anon))
        return out

    def close(self) -> None:
        stop_groups(self.procs, timeout=15)


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path("/proc/%s/stat" % entry).read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def _cpu(pids: list[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def write_int16(src: Path, dst: Path, size: int) -> None:
    """The float32 image as BITPIX=16 with BSCALE (the same sky in half the bytes)."""
    from astropy.io import fits

    with fits.open(src, memmap=True) as hdul:
        data = np.asarray(hdul[0].data)
        scaled = np.clip((data - 50.0) * 10.0, -32768, 32767).astype(np.int16)
    hdu = fits.PrimaryHDU(scaled)
    hdu.header["BSCALE"], hdu.header["BZERO"] = 0.1, 50.0
    hdu.writeto(dst, overwrite=True)


def du(path: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def mc_stats(port: int, what: str = "stats") -> dict[str, int]:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(what.encode() + b"\r\n")
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


def stage_means(before: dict[str, float], after: dict[str, float]) -> str:
    parts = []
    for stage in ("parse", "cache", "read", "render", "encode", "total"):
        key = 'iipy_request_stage_seconds_%s{stage="' + stage + '"}'
        n = after.get(key % "count", 0) - before.get(key % "count", 0)
        s = after.get(key % "sum", 0) - before.get(key % "sum", 0)
        if n:
            parts.append("%s %.0f us" % (stage, 1e6 * s / n))
    return ", ".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", default="1,2,3,4")
    parser.add_argument("--hot", type=int, default=300, help="URLs of the repeated-tile set")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="iipy-sizing-"))
    lua = work / "replay.lua"
    lua.write_text(WRK_LUA)
    (work / "img").mkdir()
    size = args.size
    print("bench: %d CPUs; work in %s" % (os.cpu_count() or 0, work))
    try:
        t = time.perf_counter()
        write_image(work / "img" / "f32.fits", size, 1)
        write_int16(work / "img" / "f32.fits", work / "img" / "i16.fits", size)
        write_image(work / "img" / "cube.fits", size // 2, 3)
        print("bench: images written in %.0f s" % (time.perf_counter() - t))

        # 1. pyramid disk and build time
        print("\n1. pyramid disk (IIPY_CACHE_DIR) and first tile (builds it)")
        host = Host(work, "pyramid", 1, MAX_IMAGE_CACHE_SIZE="0")
        try:
            for name in ("f32.fits", "i16.fits", "cube.fits"):
                before = du(work / "pyramids") if (work / "pyramids").exists() else 0
                status, _, seconds = host.get("FIF=%s&JTL=0,0" % name)
                pyramid = du(work / "pyramids") - before
                fits_bytes = (work / "img" / name).stat().st_size
                print("  %-10s FITS %7.1f MB  pyramid %7.1f MB (%.2f x the file)  first tile "
                      "%.2f s (status %d)" % (name, fits_bytes / 1e6, pyramid / 1e6,
                                              pyramid / fits_bytes, seconds, status))
            m = host.metrics()
            print("  builds %d, %.2f s in all (iipy_pyramid_build_seconds)"
                  % (m["iipy_pyramid_build_seconds_count"], m["iipy_pyramid_build_seconds_sum"]))

            # 2. the slowest requests, pyramid built
            print("\n2. slow requests (pyramid built; one worker, nothing else running)")
            ntx = size // 256
            full = len(level_sizes(size, 256)) - 1  # the full-resolution level
            for label, query in (
                    ("CVT 5000 px (MAX_CVT)", "FIF=f32.fits&WID=5000&CVT=jpeg"),
                    ("CVT 5000 px, cube", "FIF=cube.fits&WID=5000&CVT=jpeg"),
                    ("CVT full-res region 2048 px",
                     "FIF=f32.fits&RGN=0.25,0.25,0.25,0.25&WID=2048&CVT=jpeg"),
                    ("TIL %d tiles, full res" % min(256, ntx * ntx),
                     "FIF=f32.fits&TIL=%d,0-%d" % (full, min(256, ntx * ntx) - 1)),
                    ("PFL across the image", "FIF=f32.fits&PFL=%d:0,%d-%d,%d"
                     % (full, size // 2, size - 1, size // 2)),
                    ("JTL full res", "FIF=f32.fits&GAM=0.4545&JTL=%d,%d"
                     % (full, ntx * ntx // 2))):
                times = []
                for _ in range(3):
                    status, nbytes, seconds = host.get(query)
                    times.append(seconds)
                print("  %-30s %7.3f s (best of 3), status %d, %d bytes"
                      % (label, min(times), status, nbytes))
        finally:
            host.close()

        # 3 and 4. throughput per worker count; tile bytes; worker memory
        print("\n3. tiles/s by workers (%s s runs, best of %d; wrk, 2 connections per "
              "worker, at least 4)" % (args.duration, args.repeat))
        paths = tile_paths(size, 256, "f32.fits", 1)
        distinct = work / "distinct.txt"
        distinct.write_text("".join("/iipy%s\n" % p for p in paths))
        hot = work / "hot.txt"
        hot.write_text("".join("/iipy%s\n" % p for p in paths[: args.hot]))
        for workers in [int(w) for w in args.workers.split(",")]:
            connections = max(4, 2 * workers)
            for case, file, cache_mb in (("distinct", distinct, "0"), ("repeated", hot, "64")):
                host = Host(work, "w%d-%s" % (workers, case), workers,
                            MAX_IMAGE_CACHE_SIZE=cache_mb, JPEG_QUALITY="75")
                try:
                    url = "http://127.0.0.1:%d/iipy" % host.port
                    run_wrk(url, file, lua, 2, connections, None)  # warm-up
                    before, cpu_before = host.metrics(), host.cpu_seconds()
                    load = os.getloadavg()[0]
                    runs = [run_wrk(url, file, lua, args.duration, connections, None)
                            for _ in range(args.repeat)]
                    after, cpu_after = host.metrics(), host.cpu_seconds()
                    best = max(runs)
                    rate, mean, p99 = best[0], best[1], best[2]
                    errors = sum(r[3] for r in runs)
                    n = sum(v for k, v in after.items() if k.startswith("iipy_requests_total")) \
                        - sum(v for k, v in before.items() if k.startswith("iipy_requests_total"))
                    nbytes = (after["iipy_response_bytes_total"]
                              - before["iipy_response_bytes_total"])
                    memory = host.worker_memory()
                    print("  %d worker(s) %-8s best %7.1f tiles/s (runs: %s)  mean %6.2f ms  "
                          "p99 %7.2f ms  load avg %.1f%s"
                          % (workers, case, rate, ", ".join("%.0f" % r[0] for r in runs), mean,
                             p99, load, "  ERRORS %d" % errors if errors else ""))
                    print("      CPU per tile: iipy %.0f us, nginx %.0f us; in the worker: %s; "
                          "%.0f bytes; worker memory %s MB (resident/anon)"
                          % (1e6 * (cpu_after[0] - cpu_before[0]) / n,
                             1e6 * (cpu_after[1] - cpu_before[1]) / n,
                             stage_means(before, after), nbytes / n,
                             ", ".join("%.0f/%.0f" % m for m in memory)))
                finally:
                    host.close()

        print("\n4. tile bytes by JPEG quality (every level, four views)")
        for quality in ("75", "90"):
            host = Host(work, "q" + quality, 1, MAX_IMAGE_CACHE_SIZE="0", JPEG_QUALITY=quality)
            try:
                sizes = [host.get(p[1:])[1] for p in paths[:600]]
                print("  JPEG_QUALITY=%s: mean %.0f bytes, median %.0f, max %d: %.0f tiles per "
                      "MB of MAX_IMAGE_CACHE_SIZE" % (quality, statistics.fmean(sizes),
                                                      statistics.median(sizes), max(sizes),
                                                      2 ** 20 / statistics.fmean(sizes)))
            finally:
                host.close()

        # 5. memcached per item
        print("\n5. memcached footprint per tile")
        mc_port = free_port()
        cmd = ["memcached", "-l", "127.0.0.1", "-p", str(mc_port), "-U", "0", "-m", "256"]
        if os.geteuid() == 0:
            cmd += ["-u", "root"]
        mc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_port(mc_port)
            host = Host(work, "memcached", 2, MAX_IMAGE_CACHE_SIZE="0", JPEG_QUALITY="75",
                        MEMCACHED_SERVERS="127.0.0.1:%d" % mc_port)
            try:
                body = sum(host.get(p[1:])[1] for p in paths)
                time.sleep(0.5)  # stores are sent without waiting for the answer
                stats = mc_stats(mc_port)
                slabs = mc_stats(mc_port, "stats slabs")
                items = stats["curr_items"]
                print("  %d tiles, %.0f body bytes each; memcached: bytes %.0f per item, "
                      "total_malloced %.0f per item: %.0f tiles per MB of -m"
                      % (items, body / len(paths), stats["bytes"] / items,
                         slabs["total_malloced"] / items,
                         2 ** 20 / (slabs["total_malloced"] / items)))
            finally:
                host.close()
        finally:
            mc.terminate()
            mc.wait(10)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    run_main(main)
