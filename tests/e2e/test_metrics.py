"""``IIPY_METRICS_BIND``, ``/metrics`` and ``/healthz`` of a real iipy (``iipsrv.fcgi --bind``),
with a private memcached, FastCGI requests sent by tests/fcgiclient.py and the JSON
request log (``IIPY_LOG_FORMAT=json``):

* after a known sequence of requests (hits and misses in both cache layers, errors,
  HEAD, OPTIONS, a refused method, a SIGHUP, a killed worker) every counter has its
  exact value, and the JSON log has one parsable object per request saying the same;
* ``/healthz`` fails while a worker is stopped (SIGSTOP) and recovers when it goes on;
  requests served by each worker alone add up on one page; no worker holds the
  metrics socket;
* a worker killed for its timeout is counted;
* an address that cannot be bound stops the server at start-up.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests import fcgiclient as fc
from tests.e2e.conftest import HOST, free_port, http_get, iipy_command, server_env, wait_for_port

pytestmark = pytest.mark.e2e

TILE = "FIF=sky.fits&JTL=0,0"
TILE_JET = "FIF=sky.fits&CMP=jet&JTL=0,0"
META = "FIF=sky.fits&obj=IIP,1.0"


# ---- helpers -------------------------------------------------------------------------------


def scrape(port: int) -> dict[str, float]:
    """``/metrics`` as ``{"name{labels}": value}``."""
    status, headers, body = http_get(f"http://{HOST}:{port}/metrics", timeout=5.0)
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    values = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    return values


def healthz(port: int) -> tuple[int, str]:
    status, _, body = http_get(f"http://{HOST}:{port}/healthz", timeout=5.0)
    return status, body.decode()


def wait_for(check, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout:g} s")
        time.sleep(0.05)


def fcgi(server, query: str, method: str = "GET") -> tuple[int, bytes]:
    """(status, body) of one request on its own connection."""
    with fc.FCGIClient(server.address) as client:
        raw = client.request({"QUERY_STRING": query, "REQUEST_METHOD": method})
    headers, body = fc.split_cgi(raw)
    status = next((int(v.split()[0]) for k, v in headers if k == "Status"), 200)
    return status, body


def workers_of(master: int) -> list[int]:
    """Live children of ``master``, oldest first."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == master and fields[0] != "Z":
            found.append((int(fields[19]), int(entry)))  # start time, pid
    return [pid for _, pid in sorted(found)]


def request_lines(server) -> list[dict]:
    """The JSON log's request objects; every line of the log must be JSON."""
    lines = [json.loads(line) for line in server.log_text().splitlines() if line.strip()]
    return [line for line in lines if line.get("event") == "request"]


def start(iipy_server, **env):
    port = free_port()
    server = iipy_server(IIPY_METRICS_BIND=f"{HOST}:{port}", IIPY_LOG_FORMAT="json", **env)
    wait_for_port(HOST, port)
    wait_for(lambda: healthz(port)[0] == 200, "all workers ready")
    return server, port


# ---- tests ---------------------------------------------------------------------------------


def test_counters_after_a_known_sequence_of_requests(iipy_server, memcached):
    mc = memcached()
    server, port = start(iipy_server, IIPY_WORKERS=1, MEMCACHED_SERVERS=mc.fcgi_pass)
    first_worker = workers_of(server.proc.pid)
    assert len(first_worker) == 1

    sent = []
    for query, method in [
        (TILE, "GET"),           # memory miss, memcached miss: rendered (pyramid built)
        (TILE, "GET"),           # memory hit
        (TILE, "HEAD"),          # memory hit, no body
        (META, "GET"),           # no cache lookup
        ("FIF=missing.fits&JTL=0,0", "GET"),  # 404
        (TILE, "OPTIONS"),       # 204
        (TILE, "DELETE"),        # 405
        (TILE_JET, "GET"),       # memory miss, memcached miss: rendered
    ]:
        sent.append((method, *fcgi(server, query, method)))
    assert [s[:2] for s in sent] == [("GET", 200), ("GET", 200), ("HEAD", 200), ("GET", 200),
                                     ("GET", 404), ("OPTIONS", 204), ("DELETE", 405),
                                     ("GET", 200)]
    # a new worker: empty memory, so the tile comes from memcached
    os.kill(server.proc.pid, signal.SIGHUP)
    wait_for(lambda: scrape(port).get("iipy_worker_recycles_total") == 1, "the recycle")
    sent.append(("GET", *fcgi(server, TILE)))
    assert sent[-1][1] == 200 and sent[-1][2] == sent[0][2]
    second_worker = workers_of(server.proc.pid)
    assert len(second_worker) == 1 and second_worker != first_worker

    m = scrape(port)
    requests = {k: v for k, v in m.items() if k.startswith("iipy_requests_total")}
    assert requests == {
        'iipy_requests_total{protocol="iip",command="jtl",status="200"}': 5,
        'iipy_requests_total{protocol="iip",command="obj",status="200"}': 1,
        'iipy_requests_total{protocol="iip",command="fif",status="404"}': 1,
        'iipy_requests_total{protocol="http",command="options",status="204"}': 1,
        'iipy_requests_total{protocol="http",command="method",status="405"}': 1,
    }
    assert m['iipy_cache_hits_total{layer="memory"}'] == 2
    assert m['iipy_cache_misses_total{layer="memory"}'] == 3
    assert m['iipy_cache_hits_total{layer="memcached"}'] == 1
    assert m['iipy_cache_misses_total{layer="memcached"}'] == 2
    assert m["iipy_memcached_errors_total"] == 0
    assert m["iipy_response_bytes_total"] == sum(len(body) for _, _, body in sent)
    assert m["iipy_requests_abandoned_total"] == 0
    stage = 'iipy_request_stage_seconds_count{stage="%s"}'
    # the three hits (two in memory, one in memcached) are answered before parsing
    assert [m[stage % s] for s in ("parse", "cache", "read", "render", "encode", "total")] == \
        [4, 5, 2, 2, 2, 9]
    assert m['iipy_request_stage_seconds_bucket{stage="total",le="+Inf"}'] == 9
    assert m['iipy_request_stage_seconds_sum{stage="read"}'] > 0
    assert m["iipy_pyramid_build_seconds_count"] == 1
    assert m["iipy_pyramid_build_seconds_sum"] > 0
    assert (m["iipy_worker_starts_total"], m["iipy_worker_recycles_total"],
            m["iipy_worker_deaths_total"], m["iipy_worker_timeouts_total"]) == (2, 1, 0, 0)
    assert m['iipy_workers{state="active"}'] == 1 and m["iipy_workers_expected"] == 1
    assert m["iipy_healthy"] == 1

    # a worker killed from outside is a death, and is replaced
    os.kill(second_worker[0], signal.SIGKILL)
    wait_for(lambda: scrape(port).get("iipy_worker_deaths_total") == 1, "the death")
    wait_for(lambda: healthz(port)[0] == 200, "the replacement")
    m = scrape(port)
    assert (m["iipy_worker_starts_total"], m["iipy_worker_recycles_total"]) == (3, 1)
    assert sum(v for k, v in m.items() if k.startswith("iipy_requests_total")) == 9

    # the JSON log says the same, one object per request
    lines = request_lines(server)
    assert [(r["method"], r["command"], r["status"], r["cache"], r["bytes"]) for r in lines] == [
        ("GET", "jtl", 200, "miss", len(sent[0][2])),
        ("GET", "jtl", 200, "memory", len(sent[0][2])),
        ("HEAD", "jtl", 200, "memory", 0),
        ("GET", "obj", 200, None, len(sent[3][2])),
        ("GET", "fif", 404, None, len(sent[4][2])),
        ("OPTIONS", "options", 204, None, 0),
        ("DELETE", "method", 405, None, len(sent[6][2])),
        ("GET", "jtl", 200, "miss", len(sent[7][2])),
        ("GET", "jtl", 200, "memcached", len(sent[0][2])),
    ]
    assert [r["pid"] for r in lines] == first_worker * 8 + second_worker
    assert lines[0]["query"] == TILE and lines[0]["protocol"] == "iip"
    assert set(lines[0]["ms"]) == {"parse", "cache", "read", "render", "encode", "total"}
    assert set(lines[8]["ms"]) == {"cache", "total"}  # answered before parsing


def test_memcached_hit_in_another_process_is_answered_before_parsing(iipy_server, memcached):
    """A tile kept in memcached by one worker is sent by its replacement (another
    process, an empty memory layer) from the request string alone: no parse stage in
    the metrics or the JSON log line, the labels and bytes of the first answer."""
    mc = memcached()
    server, port = start(iipy_server, IIPY_WORKERS=1, MEMCACHED_SERVERS=mc.fcgi_pass)
    query = "IIIF=sky.fits/full/max/0/default.jpg"
    first = fcgi(server, query)
    assert first[0] == 200 and first[1][:2] == b"\xff\xd8"
    os.kill(server.proc.pid, signal.SIGHUP)
    wait_for(lambda: scrape(port).get("iipy_worker_recycles_total") == 1, "the recycle")
    assert fcgi(server, query) == first
    assert fcgi(server, query, "HEAD") == (200, b"")

    lines = [line for line in request_lines(server) if line["query"] == query]
    assert [(line["method"], line["protocol"], line["command"], line["status"], line["cache"],
             line["bytes"]) for line in lines] == [
        ("GET", "iiif", "iiif", 200, "miss", len(first[1])),
        ("GET", "iiif", "iiif", 200, "memcached", len(first[1])),
        ("HEAD", "iiif", "iiif", 200, "memory", 0),
    ]
    assert lines[0]["pid"] != lines[1]["pid"] == lines[2]["pid"]
    assert "parse" in lines[0]["ms"] and "render" in lines[0]["ms"]
    assert sorted(lines[1]["ms"]) == sorted(lines[2]["ms"]) == ["cache", "total"]

    m = scrape(port)
    stage = 'iipy_request_stage_seconds_count{stage="%s"}'
    assert (m[stage % "parse"], m[stage % "cache"], m[stage % "total"]) == (1, 3, 3)
    assert m['iipy_requests_total{protocol="iiif",command="iiif",status="200"}'] == 3
    assert m['iipy_cache_hits_total{layer="memcached"}'] == 1
    assert m['iipy_cache_hits_total{layer="memory"}'] == 1
    assert m["iipy_response_bytes_total"] == 2 * len(first[1])


def test_health_fails_while_a_worker_is_stopped_and_counts_add_up(iipy_server):
    server, port = start(iipy_server, IIPY_WORKERS=2)
    workers = workers_of(server.proc.pid)
    assert len(workers) == 2
    # the workers did not keep the exporter's socket
    inode = _listening_inode(port)
    for pid in workers:
        links = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        assert f"socket:[{inode}]" not in links
    assert f"socket:[{inode}]" in {os.readlink(f"/proc/{server.proc.pid}/fd/{fd}")
                                   for fd in os.listdir(f"/proc/{server.proc.pid}/fd")}

    served = {}
    try:
        for stopped, other, count in ((workers[0], workers[1], 5), (workers[1], workers[0], 7)):
            os.kill(stopped, signal.SIGSTOP)
            status, text = wait_for(lambda: (lambda h: h if h[0] == 503 else None)(healthz(port)),
                                    "/healthz failing", timeout=6.0)
            assert text.startswith("unhealthy: 1 of 2 workers ready: worker ")
            assert f"(pid {stopped}) silent for " in text
            assert scrape(port)['iipy_workers{state="ready"}'] == 1
            # the other worker answers alone
            for _ in range(count):
                assert fcgi(server, META)[0] == 200
            served[other] = count
            os.kill(stopped, signal.SIGCONT)
            wait_for(lambda: healthz(port)[0] == 200, "/healthz back to 200", timeout=6.0)
    finally:
        for pid in workers:
            os.kill(pid, signal.SIGCONT)
    m = scrape(port)
    assert m['iipy_requests_total{protocol="iip",command="obj",status="200"}'] == 12
    by_pid: dict[int, int] = {}
    for line in request_lines(server):
        by_pid[line["pid"]] = by_pid.get(line["pid"], 0) + 1
    assert by_pid == served  # 5 counted in one worker's slot, 7 in the other's
    assert m["iipy_worker_starts_total"] == 2 and m["iipy_worker_deaths_total"] == 0


def test_a_worker_killed_for_its_timeout_is_counted(iipy_server):
    server, port = start(iipy_server, IIPY_WORKERS=1, IIPY_TIMEOUT=1)
    (worker,) = workers_of(server.proc.pid)
    os.kill(worker, signal.SIGSTOP)  # silent: SIGABRT, then SIGKILL after the grace
    wait_for(lambda: scrape(port).get("iipy_worker_timeouts_total") == 1, "the timeout kill")
    wait_for(lambda: healthz(port)[0] == 200, "the replacement")
    m = scrape(port)
    assert (m["iipy_worker_starts_total"], m["iipy_worker_deaths_total"]) == (2, 0)
    assert fcgi(server, META)[0] == 200


def test_an_address_that_cannot_be_bound_stops_the_server(example_prefix, tmp_path):
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        env = server_env({"FILESYSTEM_PREFIX": example_prefix, "LOGFILE": tmp_path / "log",
                          "IIPY_CACHE_DIR": tmp_path / "cache", "IIPY_WORKERS": 1,
                          "IIPY_METRICS_BIND": f"{HOST}:{taken.getsockname()[1]}"}, {})
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parents[2]),
                                                          os.environ.get("PYTHONPATH")]))
        done = subprocess.run([*iipy_command(), "--bind", f"{HOST}:{free_port()}"], env=env,
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    assert done.returncode == 1
    assert done.stderr.decode().strip().splitlines()[-1] == "metrics: Address already in use"


def _listening_inode(port: int) -> int:
    """The inode of the socket listening on 127.0.0.1:port (/proc/net/tcp)."""
    want = "0100007F:%04X" % port
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == want and fields[3] == "0A":  # LISTEN
            return int(fields[9])
    raise AssertionError(f"nothing listens on port {port}")
