"""Soak: iipy at saturation for a set time, reported interval by interval.

    .venv/bin/python bench/soak.py [--minutes 30] [--interval 60] [--size 8192]
                                   [--procs N] [--connections 8] [--max-requests 0]
                                   [--json FILE] [--dir DIR]

Writes a seeded float32 FITS image (``--size`` square), starts iipy (``--procs``
workers, default one per CPU; no tile cache, VERBOSITY 1) behind nginx exactly as
``bench/bench_tiles.py`` does, and replays its browsing mix (the distinct VisiOmatic 2
tile URLs of every level: default view, MINMAX, CMP=jet, INV+CNT, all with
``GAM=0.4545&CTW=...``, shuffled) with wrk over ``--connections`` kept-alive
connections, without pause, for ``--minutes``.  After a 5 s warm-up (the pyramid is
built), every ``--interval`` seconds it prints:

* tiles answered and tiles/s;
* errors: answers other than 200, of which 5xx, socket errors (connect, read, write,
  timeout), and worker deaths (the master's log: killed, crashed, timed out, exited
  with an error), beside workers recycled on purpose (``--max-requests``);
* the workers' memory from /proc: the largest resident set (VmRSS, which includes the
  pages of the memory-mapped image and pyramid) and the largest and total anonymous
  resident memory (RssAnon: what a leak would grow).

The summary gives the totals and the growth of the largest anonymous memory from the
first interval to the last.  ``--json`` writes the rows and the summary (the test
tests/e2e/test_soak.py runs one minute and checks errors and memory growth).
Figures, not assertions.

Needs: nginx, wrk (apt).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_tiles import Servers, run_main, tile_paths  # noqa: E402

WRK_LUA = """
local paths = {}
for line in io.lines(os.getenv("SOAK_PATHS")) do paths[#paths + 1] = line end
local threads = {}
local counter = 0
local offset = os.getenv("SOAK_OFFSET") + 0
function setup(thread)
    thread:set("offset", offset)
    offset = offset + 7919
    table.insert(threads, thread)
end
function init(args)
    non200 = 0
    s5xx = 0
end
function request()
    counter = counter + 1
    return wrk.format("GET", paths[(counter + offset) % #paths + 1])
end
function response(status, headers, body)
    if status ~= 200 then non200 = non200 + 1 end
    if status >= 500 then s5xx = s5xx + 1 end
end
done = function(summary, latency, requests)
    local n, f = 0, 0
    for _, t in ipairs(threads) do
        n = n + t:get("non200")
        f = f + t:get("s5xx")
    end
    local e = summary.errors
    io.write(string.format("SOAK %d %d %d %d %d\\n", summary.requests, summary.duration, n, f,
        e.connect + e.read + e.write + e.timeout))
end
"""

#: Lines of the master's log that mean a worker died (recycling is not a death).
DEATH = re.compile(r"was killed by|crashed|was stopped after its timeout|exited with status"
                   r"|failed to boot|Traceback")


def worker_pids(master: int) -> list[int]:
    """Live children of ``master``, from /proc."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == master and fields[0] != "Z":
                out.append(int(entry))
    return sorted(out)


def memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, RssAnon) of ``pid`` in MB; zeros if it is gone."""
    rss = anon = 0.0
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) / 1024
                elif line.startswith("RssAnon:"):
                    anon = int(line.split()[1]) / 1024
    except OSError:
        pass
    return rss, anon


def run_wrk(url: str, seconds: float, connections: int, lua: Path, paths: Path,
            offset: int) -> tuple[int, float, int, int, int]:
    """(requests, seconds, non-200, 5xx, socket errors) of one wrk run."""
    cmd = ["wrk", "-t1", "-c%d" % connections, "-d%ds" % max(1, round(seconds)),
           "--timeout", "10s", "-s", str(lua), url]
    proc = subprocess.run(cmd, env=dict(os.environ, SOAK_PATHS=str(paths),
                                        SOAK_OFFSET=str(offset)),
                          capture_output=True, text=True)
    m = re.search(r"SOAK (\d+) (\d+) (\d+) (\d+) (\d+)", proc.stdout)
    if proc.returncode != 0 or not m:
        raise SystemExit("soak: wrk failed:\n" + proc.stdout + proc.stderr)
    return (int(m.group(1)), int(m.group(2)) / 1e6, int(m.group(3)), int(m.group(4)),
            int(m.group(5)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0, help="length of the soak")
    ap.add_argument("--interval", type=float, default=60.0, help="seconds per report line")
    ap.add_argument("--size", type=int, default=8192, help="image width and height")
    ap.add_argument("--procs", type=int, default=os.cpu_count() or 1, help="IIPY_WORKERS")
    ap.add_argument("--connections", type=int, default=8, help="concurrent connections")
    ap.add_argument("--max-requests", type=int, default=0, help="IIPY_MAX_REQUESTS")
    ap.add_argument("--json", help="write the rows and the summary to this file")
    ap.add_argument("--dir", help="work directory, kept (the image is reused)")
    args = ap.parse_args()
    for exe in ("nginx", "wrk"):
        if not shutil.which(exe) and not os.path.exists("/usr/sbin/" + exe):
            raise SystemExit("soak: %s is not installed (apt-get install %s)" % (exe, exe))
    from bench_stages import write_image
    from iipy.imaging.kernels import ACCELERATED

    work = Path(args.dir or tempfile.mkdtemp(prefix="iipy-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    servers = None
    try:
        name = "soak%d.fits" % args.size
        if not (work / name).exists():
            write_image(work / name, args.size, 1)
        lua = work / "soak.lua"
        lua.write_text(WRK_LUA)
        servers = Servers(work, args.procs, "soak-%d" % time.monotonic_ns(), iipsrv=False,
                          iipy_env={"VERBOSITY": "1",
                                    "IIPY_MAX_REQUESTS": str(args.max_requests),
                                    # this checkout's iipy, whatever the venv has installed
                                    "PYTHONPATH": os.pathsep.join(
                                        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))})
        paths = servers.run / "paths.txt"
        paths.write_text("".join("/iipy%s\n" % p for p in tile_paths(args.size, 256, name, 1)))
        url = "http://127.0.0.1:%d/iipy" % servers.port
        log = servers.run / "server.log"
        print("soak: %s kernels, %d CPU(s), %d worker(s), %d connection(s), %dx%d float32, "
              "%d distinct URLs, %g min in %g s intervals"
              % ("Cython" if ACCELERATED else "NumPy", os.cpu_count() or 1, args.procs,
                 args.connections, args.size, args.size, len(paths.read_text().splitlines()),
                 args.minutes, args.interval), flush=True)
        run_wrk(url, 5, args.connections, lua, paths, 0)  # warm-up: builds the pyramid
        print("%8s %8s %8s %7s %5s %7s %6s %8s %7s %8s %9s %9s"
              % ("t (s)", "tiles", "tiles/s", "non200", "5xx", "sockerr", "deaths",
                 "recycled", "workers", "rss max", "anon max", "anon sum"), flush=True)
        rows = []
        seen = len(log.read_text(errors="replace")) if log.exists() else 0
        start = time.monotonic()
        total = args.minutes * 60.0
        offset = 1
        while (elapsed := time.monotonic() - start) < total - 0.5:
            seconds = min(args.interval, total - elapsed)
            requests, took, non200, s5xx, sockerr = run_wrk(url, seconds, args.connections,
                                                             lua, paths, offset)
            offset += 104729
            text = log.read_text(errors="replace") if log.exists() else ""
            new, seen = text[seen:], len(text)
            pids = worker_pids(servers.iipy_pid)
            mem = [memory_mb(pid) for pid in pids]
            row = {
                "t": round(time.monotonic() - start, 1), "tiles": requests,
                "tiles_per_s": requests / took if took else 0.0, "non200": non200,
                "5xx": s5xx, "socket_errors": sockerr,
                "deaths": sum(1 for line in new.splitlines() if DEATH.search(line)),
                "recycled": new.count(") recycled"), "workers": len(pids),
                "rss_max_mb": max((m[0] for m in mem), default=0.0),
                "anon_max_mb": max((m[1] for m in mem), default=0.0),
                "anon_sum_mb": sum(m[1] for m in mem),
            }
            rows.append(row)
            print("%8.0f %8d %8.1f %7d %5d %7d %6d %8d %7d %8.1f %9.1f %9.1f"
                  % (row["t"], row["tiles"], row["tiles_per_s"], row["non200"], row["5xx"],
                     row["socket_errors"], row["deaths"], row["recycled"], row["workers"],
                     row["rss_max_mb"], row["anon_max_mb"], row["anon_sum_mb"]), flush=True)
        summary = {
            "tiles": sum(r["tiles"] for r in rows),
            "errors": sum(r["non200"] + r["socket_errors"] + r["deaths"] for r in rows),
            "non200": sum(r["non200"] for r in rows), "5xx": sum(r["5xx"] for r in rows),
            "socket_errors": sum(r["socket_errors"] for r in rows),
            "deaths": sum(r["deaths"] for r in rows),
            "recycled": sum(r["recycled"] for r in rows),
            "anon_growth_mb": rows[-1]["anon_max_mb"] - rows[0]["anon_max_mb"] if rows else 0.0,
            "rss_growth_mb": rows[-1]["rss_max_mb"] - rows[0]["rss_max_mb"] if rows else 0.0,
        }
        print("summary: %d tiles, errors %d (non-200 %d, 5xx %d, socket %d, worker deaths %d), "
              "recycled %d; largest anonymous memory %+.1f MB from the first interval to the "
              "last (resident set %+.1f MB)"
              % (summary["tiles"], summary["errors"], summary["non200"], summary["5xx"],
                 summary["socket_errors"], summary["deaths"], summary["recycled"],
                 summary["anon_growth_mb"], summary["rss_growth_mb"]), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps({"rows": rows, "summary": summary}, indent=1))
        return 0
    finally:
        if servers is not None:
            servers.close()
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    run_main(main)
