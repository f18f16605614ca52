"""Cold start: a fresh FITS image served by a real iipy, from the first request on.

    .venv/bin/python bench/bench_cold.py --dir /var/tmp/iipy-cold [--sizes 1,4]
                                         [--workers 1,2] [--repeat 3] [--nginx]

Writes seeded float32 FITS images (sky, noise, stars) of 1 GiB (16384 x 16384) and 4 GiB
(32768 x 32768) into ``--dir`` once and reuses them.  For each image, each number of
workers and each repeat it reads the file into the page cache, starts ``iipsrv.fcgi
--bind`` (``python -m iipy``, this checkout) with an empty ``IIPY_CACHE_DIR``, waits until
every worker answers, then times, from one client over FastCGI (``tests/fcgiclient.py``;
through nginx with ``--nginx``):

* metadata: VisiOmatic 2's first request (``obj=IIP,1.0&obj=max-size&obj=tile-size
  &obj=resolution-number&obj=bits-per-channel&obj=min-max-sample-values&obj=subject``),
  which needs the default display range and so the pyramid;
* first tile: then ``JTL=0,0`` of the lowest level as VisiOmatic 2 asks for it;
* whole pyramid on disk: until level 1, which follows the others in the background for
  an uncompressed image, is there;

the CPU time the workers used meanwhile (less sensitive than the wall time to other
work on a shared machine), and samples every worker's ``/proc/PID/smaps_rollup`` every few milliseconds until the
tile is served: the peak of its private memory (``Private_Clean + Private_Dirty``: pages
mapped by this process alone, anonymous or of files, such as level files written through
a shared memory map) and of its anonymous memory (``Anonymous``: what it allocated).  At
the end, the pyramid's size on disk (allocated blocks) against the float32 image.

Prints, per case, the median of the repeats with their min and max.  Nothing here is a
test: figures go in notes, not assertions.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_tiles import free_port, run_main, stop_groups, wait_port  # noqa: E402
from tests.fcgiclient import FCGIClient  # noqa: E402

#: VisiOmatic 2's metadata request.
METADATA = ("obj=IIP,1.0&obj=max-size&obj=tile-size&obj=resolution-number"
            "&obj=bits-per-channel&obj=min-max-sample-values&obj=subject")
#: Image sizes by --sizes entry (GiB of float32 samples).
SIZES = {1: 16384, 4: 32768}

NGINX_CONF = """
daemon off;
worker_processes 1;
pid "{work}/nginx.pid";
error_log "{work}/nginx-error.log" warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path "{work}/t1"; fastcgi_temp_path "{work}/t2";
    proxy_temp_path "{work}/t3"; uwsgi_temp_path "{work}/t4"; scgi_temp_path "{work}/t5";
    upstream iipy {{ server 127.0.0.1:{fcgi_port}; keepalive 4; }}
    server {{
        listen 127.0.0.1:{port};
        location /iipy {{
            fastcgi_pass iipy; fastcgi_keep_conn on; fastcgi_read_timeout 300s;
            fastcgi_param QUERY_STRING $query_string;
            fastcgi_param REQUEST_METHOD $request_method;
            fastcgi_param REQUEST_URI $request_uri;
            fastcgi_param SERVER_PROTOCOL $server_protocol;
        }}
    }}
}}
"""


def write_fits(path: Path, size: int) -> None:
    """A float32 FITS image, written under a temporary name then renamed."""
    from bench_stages import write_image

    tmp = path.with_suffix(".tmp")
    t = time.perf_counter()
    write_image(tmp, size, 1)
    os.replace(tmp, path)
    print("bench: wrote %s (%.2f GB) in %.0f s" % (path.name, path.stat().st_size / 1e9,
                                                    time.perf_counter() - t), flush=True)


def into_page_cache(path: Path) -> float:
    """Read the whole file (so that it is in the page cache); seconds taken."""
    t = time.perf_counter()
    buf = bytearray(16 << 20)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass
    return time.perf_counter() - t


def children(pid: int) -> list[int]:
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def private_kb(pid: int) -> tuple[int, int]:
    """(Private_Clean + Private_Dirty, Anonymous) of a process, in kB."""
    priv = anon = 0
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    priv += int(line.split()[1])
                elif line.startswith("Anonymous:"):
                    anon = int(line.split()[1])
    except OSError:
        pass
    return priv, anon


class Sampler(threading.Thread):
    """Peaks of the private and anonymous memory of the given processes, polled."""

    def __init__(self, pids: list[int], interval: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.pids, self.interval = pids, interval
        self.peak_private = {p: 0 for p in pids}
        self.peak_anon = {p: 0 for p in pids}
        self.baseline = {p: private_kb(p) for p in pids}
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.sample()
            self._done.wait(self.interval)

    def sample(self) -> None:
        for p in self.pids:
            priv, anon = private_kb(p)
            self.peak_private[p] = max(self.peak_private[p], priv)
            self.peak_anon[p] = max(self.peak_anon[p], anon)

    def stop(self) -> None:
        self._done.set()
        self.join()
        self.sample()


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def disk_bytes(directory: Path) -> int:
    """Bytes allocated to the files under ``directory``."""
    total = 0
    for dirpath, _, files in os.walk(directory):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                pass
    return total


class Server:
    """``python -m iipy --bind`` with ``workers`` workers (and nginx in front if asked)."""

    def __init__(self, work: Path, run: Path, workers: int, use_nginx: bool) -> None:
        self.procs: list[subprocess.Popen] = []
        self.fcgi_port = free_port()
        env = dict(os.environ, PYTHONPATH=str(ROOT), FILESYSTEM_PREFIX=str(work) + "/",
                   VERBOSITY="0", LOGFILE=str(run / "server.log"), IIPY_WORKERS=str(workers),
                   IIPY_CACHE_DIR=str(run / "pyramids"), MEMCACHED_SERVERS="",
                   MAX_IMAGE_CACHE_SIZE="0")
        self.master = self._spawn([sys.executable, "-m", "iipy", "--bind",
                                   "127.0.0.1:%d" % self.fcgi_port], env)
        wait_port(self.fcgi_port)
        self.http_port = None
        if use_nginx:
            self.http_port = free_port()
            (run / "nginx.conf").write_text(NGINX_CONF.format(
                work=run, port=self.http_port, fcgi_port=self.fcgi_port))
            nginx = shutil.which("nginx") or "/usr/sbin/nginx"
            cmd = [nginx, "-c", str(run / "nginx.conf"), "-p", str(run)]
            if os.geteuid() == 0:
                cmd += ["-g", "user root;"]
            self._spawn(cmd, None)
            wait_port(self.http_port)
        # every worker forked and answering (the socket listens before they exist)
        deadline = time.monotonic() + 60
        while len(children(self.master.pid)) < workers:
            if time.monotonic() > deadline:
                raise SystemExit("bench: the workers did not start")
            time.sleep(0.02)
        self.workers = children(self.master.pid)
        for _ in range(4 * workers):
            self.get("obj=IIP,1.0")

    def _spawn(self, cmd: list[str], env: dict | None) -> subprocess.Popen:
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(p)
        return p

    def get(self, query: str) -> bytes:
        """The body of one GET (headers checked for a 200 / no Status line)."""
        if self.http_port is not None:
            import http.client
            conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=300)
            try:
                conn.request("GET", "/iipy?" + query)
                r = conn.getresponse()
                body = r.read()
                if r.status != 200:
                    raise SystemExit("bench: %s answered %d" % (query, r.status))
                return body
            finally:
                conn.close()
        with FCGIClient(("127.0.0.1", self.fcgi_port), timeout=300) as client:
            out = client.request({"QUERY_STRING": query, "REQUEST_METHOD": "GET",
                                  "SERVER_PROTOCOL": "HTTP/1.1", "REQUEST_URI": "/iipy?" + query})
        head, _, body = out.partition(b"\r\n\r\n")
        if b"Status:" in head and b"Status: 200" not in head:
            raise SystemExit("bench: %s answered %r" % (query, head))
        return body

    def close(self) -> None:
        stop_groups(self.procs, timeout=20)


def one_run(work: Path, image: Path, workers: int, use_nginx: bool, label: str) -> dict:
    run = work / ("run-%s-%d" % (label, time.monotonic_ns()))
    run.mkdir()
    into_page_cache(image)
    server = Server(work, run, workers, use_nginx)
    try:
        sampler = Sampler(server.workers)
        sampler.start()
        cpu0 = sum(cpu_seconds(p) for p in server.workers)
        t0 = time.perf_counter()
        meta = server.get("FIF=%s&%s" % (image.name, METADATA))
        t1 = time.perf_counter()
        tile = server.get("FIF=%s&GAM=0.4545&CTW=1;1;1&JTL=0,0" % image.name)
        t2 = time.perf_counter()
        cpu = sum(cpu_seconds(p) for p in server.workers) - cpu0
        sampler.stop()
        if b"Min-Max-sample-values:" not in meta or not tile.startswith(b"\xff\xd8"):
            raise SystemExit("bench: unexpected answers %r / %r" % (meta[:200], tile[:20]))
        # level 1 of an uncompressed image is written in the background: until it is
        # there the pyramid is not complete (its tiles are binned per request)
        deadline = time.monotonic() + 300
        while not any((run / "pyramids").glob("*/level1.f32")):
            if time.monotonic() > deadline:
                raise SystemExit("bench: level 1 never came")
            time.sleep(0.005)
        t3 = time.perf_counter()
        pyramid = disk_bytes(run / "pyramids")
        rng = [line for line in meta.decode("latin-1").split("\r\n")
               if line.startswith("Min-Max")][0]
        return {"metadata": t1 - t0, "tile": t2 - t0, "complete": t3 - t0, "cpu": cpu,
                "private": max(sampler.peak_private.values()) / 1024,
                "anon": max(sampler.peak_anon.values()) / 1024,
                "idle": max(v[0] for v in sampler.baseline.values()) / 1024,
                "pyramid": pyramid, "range": rng}
    finally:
        server.close()
        shutil.rmtree(run, ignore_errors=True)


def spread(values: list[float], fmt: str) -> str:
    return (fmt + " (" + fmt + "-" + fmt + ")") % (statistics.median(values), min(values),
                                                   max(values))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", required=True, help="work directory; the images are kept there")
    ap.add_argument("--sizes", default="1,4", help="GiB of float32 samples: 1, 4 (comma list)")
    ap.add_argument("--workers", default="1,2", help="workers of the server (comma list)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per case (medians)")
    ap.add_argument("--nginx", action="store_true", help="send the requests through nginx")
    args = ap.parse_args()
    work = Path(args.dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    for s in sizes:
        if s not in SIZES:
            raise SystemExit("bench: --sizes takes %s" % ", ".join(map(str, SIZES)))
    from iipy.imaging.kernels import ACCELERATED

    print("bench: kernels %s, %d CPU(s), load %.1f, %s, medians of %d (min-max)"
          % ("Cython" if ACCELERATED else "NumPy", os.cpu_count() or 1, os.getloadavg()[0],
             "through nginx" if args.nginx else "direct FastCGI", args.repeat), flush=True)
    results = []
    for s in sizes:
        n = SIZES[s]
        image = work / ("cold%dx%d.fits" % (n, n))
        if not image.exists():
            write_fits(image, n)
        float_bytes = 4 * n * n
        for workers in (int(w) for w in args.workers.split(",")):
            runs = [one_run(work, image, workers, args.nginx, "%d-%d" % (s, workers))
                    for _ in range(args.repeat)]
            title = "%d GiB (%dx%d), %d worker%s" % (s, n, n, workers, "s" * (workers > 1))
            line = ("%-30s metadata %s s, first tile %s s (worker CPU %s s), whole pyramid "
                    "on disk %s s, peak private %s MB (anonymous %s MB; %s MB idle), pyramid "
                    "%.3fx the float32 image"
                    % (title, spread([r["metadata"] for r in runs], "%.3f"),
                       spread([r["tile"] for r in runs], "%.3f"),
                       spread([r["cpu"] for r in runs], "%.2f"),
                       spread([r["complete"] for r in runs], "%.3f"),
                       spread([r["private"] for r in runs], "%.0f"),
                       spread([r["anon"] for r in runs], "%.0f"),
                       spread([r["idle"] for r in runs], "%.0f"),
                       statistics.median(r["pyramid"] for r in runs) / float_bytes))
            print(line, "  [%s]" % runs[0]["range"], flush=True)
            results.append(line)
    print("\nsummary:")
    for line in results:
        print(line)
    return 0


if __name__ == "__main__":
    run_main(main)
