"""Tiles rendered for nobody: a fast pan through nginx, before and after a change.

    .venv/bin/python bench/bench_abort.py [--tree DIR ...] [--size 8192] [--workers 1]
                                          [--pans 30] [--view 24] [--pan-ms 20]
                                          [--keepalive on|off] [--dir DIR]

A user panning fast over a large image makes the viewer ask for the tiles of each view
it passes and give up on them when it moves on: the browser closes the connections of
the tiles still pending, nginx (``fastcgi_ignore_client_abort off``, the default) then
closes its upstream connections, and every such request still waiting for a worker is
work for nobody.  This script plays that pan against iipy behind the real nginx
(``conf/nginx.conf.in``, ``fastcgi_keep_conn`` as ``--keepalive``):

* writes a seeded float32 FITS image (``--size`` square) and lets iipy build its pyramid
  first, so each tile costs a read, a render and a JPEG encoding (no tile cache);
* ``--pans`` times: opens ``--view`` HTTP connections at once, one distinct full-resolution
  tile each, reads whatever is answered within ``--pan-ms`` milliseconds and closes the
  others (the pan moved on); the last view is read to the end;
* reads iipy's log (VERBOSITY 3): the request lines (each with its end time and
  duration, so its start), and the skipped requests.

For each ``--tree`` (a checkout of iipy, run with ``PYTHONPATH=TREE python -m iipy``;
default: this one; give the old one first, e.g. ``--tree ../main --tree .``) it prints:
requests sent, answered, abandoned by the client; renders started; renders of abandoned
requests, and how many of those started after the client had closed (work for nobody);
requests iipy skipped; and the worker time spent on abandoned requests.
Figures, not assertions (the end-to-end test is tests/e2e/test_operations.py).

Needs: nginx (apt).
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import re
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_tiles import free_port, level_sizes, run_main, wait_port  # noqa: E402

NGINX_TEMPLATE = ROOT / "conf" / "nginx.conf.in"
IIP_PATH = "/fcgi-bin/iipsrv.fcgi"
#: VisiOmatic 2's parameters for a float image.
VIEW_PARAMS = "GAM=0.4545&CTW=1;1;1"


@dataclass
class Request:
    query: str
    sock: socket.socket
    sent: float
    answered: float | None = None
    closed: float | None = None  # when the client gave up on it
    data: bytearray = field(default_factory=bytearray)


def render_template(text: str, values: dict[str, object]) -> str:
    for name, value in values.items():
        text = text.replace("@%s@" % name, str(value))
    return text


def _complete(data: bytes) -> bool:
    """Whether ``data`` holds a whole HTTP response with a Content-Length."""
    head, sep, body = bytes(data).partition(b"\r\n\r\n")
    if not sep:
        return False
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    return m is not None and len(body) >= int(m.group(1))


def pan(port: int, queries: list[str], pans: int, view: int, pan_ms: float) -> list[Request]:
    """Play the pan; return every request with its times."""
    done: list[Request] = []
    todo = iter(queries)
    sel = selectors.DefaultSelector()
    for step in range(pans):
        last = step == pans - 1
        batch = []
        for _ in range(view):
            query = next(todo)
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(("GET %s?%s HTTP/1.1\r\nHost: localhost\r\n\r\n"
                          % (IIP_PATH, query)).encode())
            req = Request(query, sock, time.time())
            sel.register(sock, selectors.EVENT_READ, req)
            batch.append(req)
        deadline = time.monotonic() + (60.0 if last else pan_ms / 1000.0)
        pending = set(id(r) for r in batch)
        while pending and (remaining := deadline - time.monotonic()) > 0:
            for key, _ in sel.select(remaining):
                req = key.data
                chunk = req.sock.recv(65536)
                req.data += chunk
                if not chunk or _complete(req.data):
                    req.answered = time.time() if chunk else None
                    sel.unregister(req.sock)
                    req.sock.close()
                    pending.discard(id(req))
        for req in batch:
            if id(req) in pending:  # the pan moved on
                sel.unregister(req.sock)
                req.sock.close()
                req.closed = time.time()
        done.extend(batch)
    sel.close()
    return done


_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) iipy\[\d+\] INFO "
                   r"iipy\.protocols\.router: \d+ (\S+) ([\d.]+) ms ")


def renders(log_text: str) -> dict[str, float]:
    """Query -> start time (epoch seconds) of each request line of the log."""
    out = {}
    for line in log_text.splitlines():
        m = _LINE.match(line)
        if m:
            end = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").timestamp()
            end += int(m.group(2)) / 1000.0
            out[m.group(3)] = end - float(m.group(4)) / 1000.0
    return out


def run_tree(tree: Path, work: Path, fits_name: str, size: int, args) -> dict[str, float]:
    """Start iipy from ``tree`` behind nginx, play the pan, count."""
    run = Path(tempfile.mkdtemp(prefix="run-", dir=work))
    log = run / "iipy.log"
    port, nport = free_port(), free_port()
    env = dict(os.environ, PYTHONPATH=str(tree), FILESYSTEM_PREFIX=str(work) + "/",
               LOGFILE=str(log), VERBOSITY="3", IIPY_WORKERS=str(args.workers),
               IIPY_CACHE_DIR=str(work / "pyramid"), MEMCACHED_SERVERS="",
               MAX_IMAGE_CACHE_SIZE="0", JPEG_QUALITY="90")
    procs = [subprocess.Popen([sys.executable, "-m", "iipy", "--bind", "127.0.0.1:%d" % port],
                              env=env, cwd=run, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)]
    conf = run / "nginx.conf"
    conf.write_text(render_template(NGINX_TEMPLATE.read_text(), {
        "PORT": nport, "FCGI_PASS": "127.0.0.1:%d" % port, "KEEPALIVE": args.keepalive,
        "PREFIX": run, "STATIC": run}))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    cmd = [nginx, "-c", str(conf), "-p", "%s/" % run]
    if os.geteuid() == 0:
        cmd += ["-g", "user root;"]
    procs.append(subprocess.Popen(cmd, start_new_session=True))
    try:
        wait_port(port)
        wait_port(nport)
        # build the pyramid and open the image in every worker before the pan
        warm = pan(nport, ["FIF=%s&%s&JTL=0,0" % (fits_name, VIEW_PARAMS)] * 4 * args.workers,
                   1, 4 * args.workers, 0)
        assert all(r.answered for r in warm), "warm-up failed"
        nres = len(level_sizes(size, 256))
        n = -(-size // 256)
        tiles = list(range(n * n))
        random.Random(5).shuffle(tiles)
        queries = ["FIF=%s&%s&JTL=%d,%d" % (fits_name, VIEW_PARAMS, nres - 1, t)
                   for t in tiles[:args.pans * args.view]]
        t0 = time.monotonic()
        requests = pan(nport, queries, args.pans, args.view, args.pan_ms)
        wall = time.monotonic() - t0
        # let the workers go through what is left: until the log is quiet for 2 s
        quiet_since, size_seen = time.monotonic(), -1
        while time.monotonic() - quiet_since < 2.0 and time.monotonic() - t0 < wall + 120:
            size_now = log.stat().st_size
            if size_now != size_seen:
                quiet_since, size_seen = time.monotonic(), size_now
            time.sleep(0.2)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
    text = log.read_text(errors="replace")
    started = renders(text)
    durations = {m.group(3): float(m.group(4)) for m in map(_LINE.match, text.splitlines()) if m}
    abandoned = [r for r in requests if r.closed is not None]
    rendered_abandoned = [r for r in abandoned if r.query in started]
    late = [r for r in rendered_abandoned if started[r.query] > r.closed]
    return {
        "sent": len(requests),
        "answered": sum(r.answered is not None for r in requests),
        "abandoned": len(abandoned),
        "renders": sum(q in started for q in queries),
        "rendered_abandoned": len(rendered_abandoned),
        "late": len(late),
        "skipped": len(re.findall(r"skipped a request abandoned", text)),
        "wasted_ms": sum(durations[r.query] for r in rendered_abandoned),
        "late_ms": sum(durations[r.query] for r in late),
        "wall_s": wall,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", action="append", type=Path,
                    help="iipy checkout to run (repeatable; default: this one)")
    ap.add_argument("--size", type=int, default=8192, help="image width and height")
    ap.add_argument("--workers", type=int, default=1, help="IIPY_WORKERS")
    ap.add_argument("--pans", type=int, default=30, help="views passed during the pan")
    ap.add_argument("--view", type=int, default=24, help="tiles asked for per view")
    ap.add_argument("--pan-ms", type=float, default=20.0,
                    help="time spent on each view before moving on, in ms")
    ap.add_argument("--keepalive", choices=("on", "off"), default="on",
                    help="nginx fastcgi_keep_conn")
    ap.add_argument("--dir", help="work directory, kept (the image is reused)")
    args = ap.parse_args()
    n = -(-args.size // 256)
    if args.pans * args.view > n * n:
        raise SystemExit("bench: %d tiles asked for, the image has %d at full resolution"
                         % (args.pans * args.view, n * n))
    trees = [t.resolve() for t in (args.tree or [ROOT])]
    for tree in trees:
        if not (tree / "iipy" / "__main__.py").exists():
            raise SystemExit("bench: %s is not an iipy checkout" % tree)
        if not list((tree / "iipy").glob("_kernels*.so")):
            print("bench: %s has no compiled kernels: NumPy twins are used" % tree)
    work = Path(args.dir or tempfile.mkdtemp(prefix="iipy-abort-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        from bench_stages import write_image

        fits_name = "pan%d.fits" % args.size
        if not (work / fits_name).exists():
            t = time.perf_counter()
            write_image(work / fits_name, args.size, 1)
            print("bench: wrote %s in %.0f s" % (fits_name, time.perf_counter() - t))
        print("bench: %d pans of %d tiles, %g ms per view, %d worker(s), keep-conn %s, "
              "%dx%d float32" % (args.pans, args.view, args.pan_ms, args.workers,
                                 args.keepalive, args.size, args.size))
        header = ("%-28s %5s %8s %9s %7s %18s %14s %7s %10s"
                  % ("tree", "sent", "answered", "abandoned", "renders", "of abandoned",
                     "started after", "skipped", "wasted ms"))
        print(header, flush=True)
        for tree in trees:
            r = run_tree(tree, work, fits_name, args.size, args)
            print("%-28s %5d %8d %9d %7d %18d %14d %7d %10.0f"
                  % (str(tree)[-28:], r["sent"], r["answered"], r["abandoned"], r["renders"],
                     r["rendered_abandoned"], r["late"], r["skipped"], r["wasted_ms"]),
                  flush=True)
        print("\n(renders 'of abandoned': tiles rendered although the client closed their "
              "request; 'started after': of those, rendered after the close; 'wasted ms': "
              "worker time spent on abandoned requests)")
        return 0
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    run_main(main)
