"""memcached as iipy's shared cache, with real processes: iipy (``iipsrv.fcgi --bind``,
two workers), a private memcached and nginx with the shipped configuration.

Hits are proven with memcached's own counters (``stats``: get_hits, get_misses,
curr_items, read over a raw socket) and with iipy's request log, whose lines name the
worker process and the cache layer that answered.  memcached is stopped, frozen and
restarted mid-test: every request must still be answered, quickly.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import http_get, wait_for_port

pytestmark = pytest.mark.e2e

TILES = [f"FIF=int16.fits&GAM=0.4545&CTW=1;1;1&JTL=3,{n}" for n in range(5)]
LOG_LINE = re.compile(r"iipy\[(\d+)\] \w+ iipy\.protocols\.router: (\d{3}) (\S+) .*cache hit: (\S+)$")


# --------------------------------------------------------------------------- helpers


def mc_stats(server) -> dict[str, int]:
    """memcached's ``stats`` as integers (non-numeric values are left out)."""
    with socket.create_connection(server.address, timeout=2.0) as sock:
        sock.sendall(b"stats\r\n")
        data = b""
        while not data.endswith(b"END\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    stats = {}
    for line in data.decode("ascii", "replace").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "STAT" and parts[2].isdigit():
            stats[parts[1]] = int(parts[2])
    return stats


def mc_keys_prefixes(server) -> set[str]:
    """Prefixes (before the first ':') of the keys memcached holds (``lru_crawler
    metadump``, memcached >= 1.4.31).  The crawler can miss items that were just
    touched, so it is asked again until it reports some."""
    for _ in range(40):
        with socket.create_connection(server.address, timeout=2.0) as sock:
            sock.sendall(b"lru_crawler metadump all\r\n")
            data = b""
            while not data.endswith(b"END\r\n") and not data.startswith((b"ERROR", b"BUSY")):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        # keys are URL-encoded in the dump (':' is '%3A')
        prefixes = {m.group(1).decode() for m in re.finditer(rb"key=([^:\s%]+)", data)}
        if prefixes:
            return prefixes
        time.sleep(0.05)
    return set()


def served(server, query: str) -> list[tuple[int, int, str]]:
    """(pid, status, cache outcome) of each logged request for ``query``, in order."""
    out = []
    for line in server.log_text().splitlines():
        m = LOG_LINE.search(line)
        if m and m.group(3) == query:
            out.append((int(m.group(1)), int(m.group(2)), m.group(4)))
    return out


def fetch(base: str, query: str, headers=None):
    status, hdrs, body = http_get(f"{base}?{query}", headers)
    return status, hdrs, body


def pid_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in {"Z", "X"}
    except OSError:
        return True


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout:g} s")
        time.sleep(0.05)


@pytest.fixture
def stack(iipy_server, nginx, memcached):
    """``start(**env) -> (memcached, iipy, nginx iip url)``, iipy using that memcached."""

    def start(**env):
        mc = memcached()
        env = {"MEMCACHED_SERVERS": mc.fcgi_pass, "IIPY_WORKERS": 2, **env}
        server = iipy_server(**env)
        return mc, server, nginx(server).iip

    return start


# --------------------------------------------------------------------------- tests


def test_second_request_is_a_memcached_hit_served_by_another_worker(stack):
    mc, server, url = stack()  # in-process cache on as well (MAX_IMAGE_CACHE_SIZE default)
    q = TILES[0]
    status, _, first = fetch(url, q)
    assert status == 200
    stats = mc_stats(mc)
    # two misses: under the request string, then under the normalised key
    assert stats["curr_items"] == 1 and stats["get_misses"] == 2 and stats["get_hits"] == 0
    [(pid1, _, outcome)] = served(server, q)
    assert outcome == "miss"

    # SIGHUP replaces every worker: their in-process caches go with them, so the next
    # answer can only come from memcached, and from another process.
    os.kill(server.proc.pid, signal.SIGHUP)
    wait_until(lambda: pid_gone(pid1), 10, f"worker {pid1} to exit after SIGHUP")
    status, hdrs, second = fetch(url, q)
    assert status == 200 and second == first
    assert hdrs["Content-Length"] == str(len(first))
    stats = mc_stats(mc)
    assert stats["get_hits"] == 1 and stats["curr_items"] == 1
    pid2, _, outcome = served(server, q)[-1]
    assert outcome == "memcached" and pid2 != pid1


def test_without_memory_cache_every_repeat_is_a_memcached_hit(stack):
    mc, server, url = stack(MAX_IMAGE_CACHE_SIZE=0)
    q = TILES[1]
    bodies = set()
    for _ in range(10):
        status, _, body = fetch(url, q)
        assert status == 200
        bodies.add(body)
    assert len(bodies) == 1
    stats = mc_stats(mc)
    assert stats["get_hits"] == 9 and stats["get_misses"] == 2 and stats["curr_items"] == 1
    outcomes = [o for _, _, o in served(server, q)]
    assert outcomes == ["miss"] + ["memcached"] * 9
    # keys never use iipsrv's namespace
    assert mc_keys_prefixes(mc) == {"iipy"}


def test_errors_are_not_stored_and_304_not_looked_up(stack):
    mc, server, url = stack(MAX_IMAGE_CACHE_SIZE=0)
    for q in ("FIF=int16.fits&JTL=3,999", "FIF=nothere.fits&JTL=0,0", "FIF=int16.fits&obj=bad"):
        for _ in range(2):
            assert fetch(url, q)[0] in (400, 404)
    assert mc_stats(mc)["curr_items"] == 0
    status, hdrs, _ = fetch(url, TILES[2])
    before = mc_stats(mc)
    status, _, body = fetch(url, TILES[2], {"If-Modified-Since": hdrs["Last-Modified"]})
    assert status == 304 and body == b""
    after = mc_stats(mc)
    assert after["cmd_get"] == before["cmd_get"] and after["curr_items"] == 1


def test_touched_file_gets_fresh_tiles(stack, example_data, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    path = root / "int16.fits"
    shutil.copy(example_data["int16"], path)
    mc, server, url = stack(MAX_IMAGE_CACHE_SIZE=0, FILESYSTEM_PREFIX=f"{root}/")
    q = TILES[3]
    status, h1, old = fetch(url, q)
    assert status == 200 and fetch(url, q)[2] == old
    assert mc_stats(mc)["get_hits"] == 1

    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000_000))
    status, h2, touched = fetch(url, q)
    assert status == 200
    assert h2["Last-Modified"] != h1["Last-Modified"]  # not the stale entry
    stats = mc_stats(mc)
    # the stale entry was fetched, refused (its file changed), and replaced
    assert stats["get_hits"] == 2 and stats["curr_items"] == 1

    # new pixels (same size): the tile changes
    from astropy.io import fits
    with fits.open(path, mode="update") as hdul:
        hdul[0].data[:] = hdul[0].data[::-1]
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 20_000_000_000))
    status, h3, changed = fetch(url, q)
    assert status == 200 and changed != old and changed != touched
    assert mc_stats(mc)["get_hits"] == 3 and mc_stats(mc)["curr_items"] == 1
    assert [o for _, _, o in served(server, q)] == ["miss", "memcached", "miss", "miss"]


def _timed_requests(url: str, n: int) -> list[float]:
    latencies = []
    for i in range(n):
        t0 = time.perf_counter()
        status, _, body = fetch(url, TILES[i % len(TILES)])
        latencies.append(time.perf_counter() - t0)
        assert status == 200 and body[:2] == b"\xff\xd8", (i, status)
    return latencies


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def _restart(mc, tmp_path: Path) -> subprocess.Popen:
    """Start memcached again with the same command line (same port)."""
    proc = subprocess.Popen(mc.proc.args, stdin=subprocess.DEVNULL,
                            stdout=open(tmp_path / "memcached-2.log", "ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    wait_for_port(*mc.address, proc=proc)
    return proc


def test_memcached_stopped_then_restarted(stack, tmp_path):
    mc, server, url = stack(MAX_IMAGE_CACHE_SIZE=0)
    _timed_requests(url, 10)
    assert mc_stats(mc)["get_hits"] >= 5

    mc.stop()  # outage: connections reset, new ones refused
    down = _timed_requests(url, 100)
    print(f"memcached stopped: p99 {1e3 * _p99(down):.1f} ms, max {1e3 * max(down):.1f} ms")
    assert _p99(down) < 0.5, down
    assert max(down) < 1.0, down
    warnings = [line for line in server.log_text().splitlines() if "iipy.cache" in line]
    failures = [line for line in warnings if "failed" in line]
    assert 1 <= len(failures) <= 2, warnings  # at most one line per worker

    restarted = _restart(mc, tmp_path)
    try:
        def hits() -> bool:
            _timed_requests(url, 2)
            return mc_stats(mc).get("get_hits", 0) > 0

        wait_until(hits, 20, "memcached hits after the restart")
        assert any("answering again" in line for line in server.log_text().splitlines())
    finally:
        restarted.terminate()
        restarted.wait(5)


def test_frozen_memcached_costs_a_short_timeout_only(stack):
    mc, server, url = stack(MAX_IMAGE_CACHE_SIZE=0)
    _timed_requests(url, 10)
    os.kill(mc.proc.pid, signal.SIGSTOP)  # connections open, no answers: timeouts
    try:
        slow = _timed_requests(url, 60)
    finally:
        os.kill(mc.proc.pid, signal.SIGCONT)
    print(f"memcached frozen: p99 {1e3 * _p99(slow):.1f} ms, max {1e3 * max(slow):.1f} ms")
    assert _p99(slow) < 0.5, slow
    assert max(slow) < 1.0, slow
    assert any("timed out" in line for line in server.log_text().splitlines())


def test_two_instances_behind_one_upstream_share_the_cache(iipy_server, nginx, memcached):
    mc = memcached()
    env = {"MEMCACHED_SERVERS": mc.fcgi_pass, "MAX_IMAGE_CACHE_SIZE": 0, "IIPY_WORKERS": 1}
    a, b = iipy_server(**env), iipy_server(**env)
    # conf/nginx.conf.in has "server @FCGI_PASS@;": two servers in one upstream block
    url = nginx(f"{a.fcgi_pass}; server {b.fcgi_pass}").iip
    first = {q: fetch(url, q) for q in TILES}  # round robin: a, b, a, b, a
    again = {q: fetch(url, q) for q in TILES}  # b, a, b, a, b: each tile on the other host
    for q in TILES:
        assert first[q][0] == again[q][0] == 200 and first[q][2] == again[q][2]
    stats = mc_stats(mc)
    assert stats["curr_items"] == len(TILES) and stats["get_hits"] == len(TILES)
    for server in (a, b):
        outcomes = [o for q in TILES for _, _, o in served(server, q)]
        assert "memcached" in outcomes and "miss" in outcomes, (server.bind, outcomes)


def test_iipy_and_iipsrv_share_one_memcached_without_collisions(stack, iipsrv_ref, nginx):
    mc, server, url = stack(MAX_IMAGE_CACHE_SIZE=0)
    ref = iipsrv_ref(MEMCACHED_SERVERS=mc.fcgi_pass)
    ref_url = nginx(ref, keepalive=False).iip
    # iipsrv 1.1 stores IIP error answers under "iipsrv::" + the query string
    status, _, ref_body = fetch(ref_url, "obj=nonsense")
    assert status == 400 and ref_body.startswith(b"Error/")
    q = TILES[4]
    assert fetch(url, q)[0] == 200 and fetch(url, q)[0] == 200
    assert fetch(url, "obj=nonsense")[0] == 400  # iipy neither reads nor writes iipsrv's keys
    assert fetch(ref_url, "obj=nonsense")[2] == ref_body
    assert mc_stats(mc)["curr_items"] == 2
    deadline = time.monotonic() + 5
    while (prefixes := mc_keys_prefixes(mc)) != {"iipy", "iipsrv"} and time.monotonic() < deadline:
        time.sleep(0.1)
    assert prefixes == {"iipy", "iipsrv"}
    assert [o for _, _, o in served(server, q)] == ["miss", "memcached"]
