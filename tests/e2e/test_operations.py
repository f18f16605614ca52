"""Operations on a running iipy (README.rst "Operations"), with real processes:

* the logrotate snippet conf/iipy.logrotate run by the real ``logrotate`` on the log of
  a running server: SIGUSR1 makes the master and every worker reopen LOGFILE, request
  lines go to the new file, the old one keeps the earlier lines, none is lost and no
  request fails meanwhile;
* ``IIPY_MAX_RSS_MB``: a worker above the limit after a request is recycled (here every
  request, with a limit below any worker's size) and requests keep succeeding;
* abandoned requests through nginx: tile requests whose client went away while they
  waited (behind a busy worker, in the backlog or on the kept connections nginx holds)
  are skipped, never rendered.
"""

from __future__ import annotations

import http.client
import io
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.e2e._proc import child_pids
from tests.e2e.conftest import (HOST, REPO_ROOT, ServerProcess, free_port, http_get,
                                require_executable)
from tests.fcgiclient import FCGIClient, split_cgi

pytestmark = pytest.mark.e2e

LOGROTATE_BIN = "/usr/sbin/logrotate"
SNIPPET = REPO_ROOT / "conf" / "iipy.logrotate"
#: Tiles of the example sky image (2048x1536, 256-pixel tiles): resolution 3 has 8x6.
TILE = "FIF=sky.fits&JTL=3,%d"


def _wait(predicate, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


def _tile(client: FCGIClient, query: str) -> None:
    """Ask for a tile over FastCGI; it must be a 200 JPEG."""
    headers, body = split_cgi(client.request({"QUERY_STRING": query, "REQUEST_METHOD": "GET"}))
    assert ("Content-Type", "image/jpeg") in headers, (query, headers)
    assert Image.open(io.BytesIO(body)).size == (256, 256)


def _request_lines(text: str) -> list[str]:
    """The queries of the request lines (VERBOSITY 2) of a log."""
    return re.findall(r" INFO iipy\.protocols\.router: 200 (\S+) ", text)


def _workers(server: ServerProcess) -> set[int]:
    return child_pids(server.proc.pid)


def _metrics(port: int) -> dict[str, float]:
    """The master's ``/metrics`` (IIPY_METRICS_BIND) as ``{"name{labels}": value}``."""
    status, _, body = http_get(f"http://{HOST}:{port}/metrics", timeout=5.0)
    assert status == 200
    pairs = (line.rpartition(" ") for line in body.decode().splitlines()
             if line and not line.startswith("#"))
    return {key: float(value) for key, _, value in pairs}


# --------------------------------------------------------------------------- logrotate


def test_logrotate_snippet_rotates_the_log_of_a_running_server(iipy_server, tmp_path):
    logrotate = require_executable(LOGROTATE_BIN, "logrotate")
    server = iipy_server(IIPY_WORKERS=2, MAX_IMAGE_CACHE_SIZE=0)
    log = server.logfile
    assert log is not None
    _wait(lambda: len(_workers(server)) == 2, "2 workers")
    client = FCGIClient(server.address)
    before = [TILE % i for i in range(8)]
    for query in before:
        _tile(client, query)

    # requests keep coming while the log is rotated
    stop, busy, failures = threading.Event(), [], []

    def hammer() -> None:
        own = FCGIClient(server.address)
        i = 0
        while not stop.is_set():
            query = TILE % (16 + i % 32) + "&QLT=%d" % (50 + i % 40)
            try:
                _tile(own, query)
                busy.append(query)
            except Exception as exc:  # noqa: BLE001 - reported below
                failures.append(exc)
            i += 1

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        _wait(lambda: len(busy) >= 5, "requests in flight")
        text = SNIPPET.read_text()
        assert text.count("/var/log/iipy/iipy.log {") == 1
        command = "systemctl kill --signal=USR1 iipy.service >/dev/null 2>&1 || true"
        assert text.count(command) == 1
        config = tmp_path / "iipy.logrotate"
        config.write_text(text.replace("/var/log/iipy/iipy.log {", f"{log} {{")
                          .replace(command, f"kill -USR1 {server.proc.pid}"))
        config.chmod(0o644)
        done = subprocess.run([logrotate, "--force", "--state", str(tmp_path / "state"),
                               str(config)], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stdout + done.stderr
        rotated = log.with_name(log.name + ".1")  # delaycompress: not compressed yet
        assert rotated.exists()
        reopened = _wait(lambda: log.exists() and log.read_text().count("log files reopened") >= 3
                         and log.read_text(), "the master and 2 workers to reopen the log")
        assert "SIGUSR1 received: log files reopened" in reopened
        time.sleep(0.2)
    finally:
        stop.set()
        thread.join(30)
    after = [TILE % i for i in range(8, 16)]
    for query in after:
        _tile(client, query)

    assert failures == []
    old, new = _request_lines(rotated.read_text()), _request_lines(log.read_text())
    assert set(before) <= set(old) and not set(after) & set(old)
    assert set(after) <= set(new) and not set(before) & set(new)
    # every request of the hammer is in exactly one of the two files
    assert sorted(q for q in old + new if "QLT" in q) == sorted(busy)
    # the new file was created by iipy (nocreate), after the old one was moved
    assert os.stat(log).st_ino != os.stat(rotated).st_ino


# --------------------------------------------------------------------------- IIPY_MAX_RSS_MB


def test_max_rss_recycles_workers_and_requests_keep_succeeding(iipy_server):
    """IIPY_MAX_RSS_MB=1 is below any worker: each one is recycled after its first
    request, answered in full, and a fresh worker takes the next one."""
    port = free_port()
    server = iipy_server(IIPY_WORKERS=1, IIPY_MAX_RSS_MB=1, IIPY_METRICS_BIND=f"{HOST}:{port}")
    client = FCGIClient(server.address)
    for i in range(4):
        _tile(client, TILE % i)
    text = _wait(lambda: server.log_text().count(") recycled") >= 4 and server.log_text(),
                 "4 recycled workers")
    pids = re.findall(r"iipy\[(\d+)\] INFO iipy\.protocols\.router: 200 ", text)
    assert len(pids) == 4 and len(set(pids)) == 4
    assert "below the master's own resident memory" in text
    assert len(re.findall(r"is above the limit of 1 MB, recycling", text)) >= 4
    assert not re.search(r"exited with status|was killed|crashed", text)
    m = _metrics(port)
    assert (m["iipy_worker_recycles_total"], m["iipy_worker_deaths_total"]) == (4, 0)


# --------------------------------------------------------------------------- abandoned requests


def _waiting_requests(port: int) -> int:
    """Connections to ``port`` whose request bytes wait unread (accepted or not)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        rx_queue = int(fields[4].split(":")[1], 16)
        if fields[1] == f"0100007F:{port:04X}" and fields[3] == "01" and rx_queue:
            count += 1
    return count


def _open_get(port: int, query: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(f"GET /fcgi-bin/iipsrv.fcgi?{query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return sock


@pytest.mark.parametrize("keepalive", [True, False], ids=["keep-conn", "close"])
def test_requests_abandoned_by_clients_are_not_rendered(iipy_server, nginx, keepalive):
    """A pan burst through nginx while the only worker is busy (held by SIGSTOP, so that
    nothing depends on timing): 16 tile requests reach iipy, 12 clients go away, nginx
    closes their upstream connections (499), and the worker renders only the 4 kept."""
    port = free_port()
    server = iipy_server(IIPY_WORKERS=1, VERBOSITY=3, MAX_IMAGE_CACHE_SIZE=0,
                         IIPY_METRICS_BIND=f"{HOST}:{port}")
    url = nginx(server, keepalive=keepalive)
    (worker,) = _wait(lambda: _workers(server), "the worker")
    warm = [threading.Thread(target=lambda i=i: _http_ok(url.port, TILE % (40 + i)))
            for i in range(4)]  # nginx then keeps 4 connections, all held by the worker
    for thread in warm:
        thread.start()
    for thread in warm:
        thread.join(30)
    burst = [TILE % i + "&GAM=0.5" for i in range(16)]
    os.kill(worker, signal.SIGSTOP)
    try:
        socks = [_open_get(url.port, query) for query in burst]
        _wait(lambda: _waiting_requests(server.port) == 16, "16 requests waiting at iipy")
        kept = {i: socks[i] for i in range(0, 16, 4)}
        for i, sock in enumerate(socks):
            if i not in kept:
                sock.close()
        _wait(lambda: url.access_log.read_text().count('" 499 ') == 12, "nginx's 499s")
    finally:
        os.kill(worker, signal.SIGCONT)
    for i, sock in kept.items():
        response = http.client.HTTPResponse(sock)
        response.begin()
        body = response.read()
        assert response.status == 200 and Image.open(io.BytesIO(body)).size == (256, 256)
        sock.close()

    def settled() -> str | None:  # every request of the burst rendered or skipped
        text = server.log_text()
        done = len([q for q in _request_lines(text) if q in burst])
        return text if done + text.count("skipped a request abandoned") >= 16 else None

    text = _wait(settled, "the 16 requests to be rendered or skipped")
    rendered = [q for q in _request_lines(text) if q in burst]
    skipped = re.findall(r"skipped a request abandoned by the web server \(connection closed; "
                         r"\d+ so far\): '([^']*)'", text)
    assert sorted(rendered) == sorted(burst[i] for i in kept)
    assert sorted(skipped) == sorted(q for i, q in enumerate(burst) if i not in kept)
    assert _metrics(port)["iipy_requests_abandoned_total"] == 12


def _http_ok(port: int, query: str) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", f"/fcgi-bin/iipsrv.fcgi?{query}")
        response = conn.getresponse()
        assert response.status == 200 and response.read()
    finally:
        conn.close()
