"""iipy.server.fcgi in real processes: start-up modes, exact bytes, keep-alive, signals.

Each test starts ``python -c SERVER_CODE`` (see ``_proc.py``), which goes through
``listener_from_argv`` and ``serve`` like ``python -m iipy``, talks FastCGI to it
with tests/fcgiclient.py on 127.0.0.1 or a unix socket in tmp_path, and kills
every process it started at the end.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time

import pytest

from iipy.server.fcgi import INTERNAL_ERROR
from tests import fcgiclient as fc
from tests.e2e._proc import (
    SERVER_CODE,
    Server,
    can_connect,
    expected_output,
    free_port,
    require_binary,
    server_env,
    short_tmpdir,
    wait_until,
)

pytestmark = pytest.mark.e2e

END_REQUEST_COMPLETE = b"\x01\x03\x00\x01\x00\x08\x00\x00" + b"\x00" * 8


@pytest.fixture
def start(tmp_path):
    """start(args, wait_for=address, command=..., stdin=..., **env) -> Server."""
    started: list[Server] = []

    def starter(args, wait_for=None, stdin=None, command=None, **env):
        server = Server(args, server_env(**env), stdin=stdin, command=command,
                        log_path=tmp_path / ("server%d.log" % len(started)))
        started.append(server)
        if wait_for is not None:
            wait_until(lambda: can_connect(wait_for), what="the socket", proc=server.proc)
        return server

    yield starter
    for server in started:
        server.stop()


def tcp(start, **env):
    port = free_port()
    address = ("127.0.0.1", port)
    return start(["--bind", "127.0.0.1:%d" % port], wait_for=address, **env), address


# ---- start-up modes and exact bytes ------------------------------------------------------


def test_tcp_bind_exact_bytes_and_end_request(start):
    server, address = tcp(start)
    client = fc.FCGIClient(address)
    query = "FIF=image.fits&obj=IIP,1.0&obj=max-size"
    out = client.request({"QUERY_STRING": query, "REQUEST_METHOD": "GET"})
    assert out == expected_output(query)
    assert (client.app_status, client.protocol_status) == (0, fc.REQUEST_COMPLETE)
    assert client.last.raw.endswith(END_REQUEST_COMPLETE)
    assert [r.type for r in client.last.records] == [fc.STDOUT, fc.STDOUT, fc.END_REQUEST]
    headers, body = fc.split_cgi(out)
    assert headers[1] == ("Content-Type", "text/plain") and body == b"FIXED " + query.encode()
    assert ("Running in standalone mode on socket: 127.0.0.1:%d with backlog: 2048" % address[1]
            in server.log())


@pytest.mark.parametrize("form", [":%d", "*:%d", "localhost:%d"])
def test_bind_address_forms_and_backlog(start, form):
    port = free_port()
    address = ("127.0.0.1", port)
    server = start(["--bind", form % port, "--backlog", "16"], wait_for=address)
    assert fc.FCGIClient(address).request({"QUERY_STRING": "any"}) == expected_output("any")
    assert "on socket: %s with backlog: 16" % (form % port) in server.log()


def test_handler_error_is_generic_500_logged_once(start):
    server, address = tcp(start)
    client = fc.FCGIClient(address)
    assert client.request({"QUERY_STRING": "boom"}) == INTERNAL_ERROR
    assert all(r.type != fc.STDERR for r in client.last.records)
    assert client.last.raw.endswith(END_REQUEST_COMPLETE)
    wait_until(lambda: "handler failed" in server.log(), what="the traceback in the log")
    assert server.log().count("Traceback") == 1


def test_stdin_ignored_long_params_and_large_body(start):
    _, address = tcp(start)
    client = fc.FCGIClient(address)
    long_query = "x=" + "é" * 300
    params = {"QUERY_STRING": long_query, "HTTP_X_" + "N" * 200: "v" * 70000}
    out = client.request(params, stdin=b"posted body " * 20000)
    assert out == expected_output(long_query)  # UTF-8 bytes in, the same bytes out

    big = client.request({"QUERY_STRING": "big=200000"})
    _, body = fc.split_cgi(big)
    assert body == bytes(i % 251 for i in range(200000))
    stdout_sizes = [len(r.content) for r in client.last.records if r.type == fc.STDOUT]
    assert all(n <= 65535 for n in stdout_sizes) and stdout_sizes[-1] == 0
    assert len(stdout_sizes) <= 5  # few records, not flup's 8 KiB pieces


def test_get_values(start):
    _, address = tcp(start)
    with fc.FCGIClient(address) as client:
        values = client.get_values(["FCGI_MAX_CONNS", "FCGI_MAX_REQS", "FCGI_MPXS_CONNS"])
    assert values == {"FCGI_MAX_CONNS": "1", "FCGI_MAX_REQS": "1", "FCGI_MPXS_CONNS": "0"}


@pytest.fixture
def sock_dir():
    path = short_tmpdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_unix_socket_replaces_stale_socket_and_sets_mode(start, sock_dir):
    path = os.path.join(sock_dir, "iipy.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)  # left behind by a previous run
    stale.close()
    start(["--bind", path], wait_for=path, IIPY_SOCKET_MODE="0660")
    mode = os.stat(path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o660
    assert fc.FCGIClient(path).request({"QUERY_STRING": "unix"}) == expected_output("unix")


def test_unix_path_holding_a_regular_file_is_not_deleted(start, tmp_path):
    path = tmp_path / "not-a-socket"
    path.write_text("precious")
    server = start(["--bind", str(path)])
    assert server.wait(10) != 0
    assert "bind/listen: Address already in use" in server.log()
    assert path.read_text() == "precious"


def test_listening_socket_inherited_on_fd0(start):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    address = listener.getsockname()
    try:
        server = start([], stdin=listener.fileno())
    finally:
        listener.close()  # the server holds the only copy now
    client = fc.FCGIClient(address)
    assert client.request({"QUERY_STRING": "fd0"}) == expected_output("fd0")
    assert "inherited on file descriptor 0 (127.0.0.1:%d)" % address[1] in server.log()


def test_spawn_fcgi_no_fork(start):
    spawn_fcgi = require_binary("spawn-fcgi")
    port = free_port()
    command = [spawn_fcgi, "-n", "-a", "127.0.0.1", "-p", str(port), "--",
               sys.executable, "-c", SERVER_CODE]
    server = start([], command=command, wait_for=("127.0.0.1", port))
    client = fc.FCGIClient(("127.0.0.1", port))
    assert client.request({"QUERY_STRING": "spawned"}) == expected_output("spawned")
    server.wait_workers(2)
    server.signal(signal.SIGTERM)
    assert server.wait(5) == 0


@pytest.mark.parametrize("stdin", [subprocess.DEVNULL, subprocess.PIPE], ids=["devnull", "pipe"])
def test_cgi_only_mode_exits_1(start, stdin):
    server = start([], stdin=stdin)
    assert server.wait(10) == 1
    assert "CGI-only mode detected" in server.log()


def test_port_in_use_reports_bind_listen(start):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        server = start(["--bind", "127.0.0.1:%d" % holder.getsockname()[1]])
        status = server.wait(10)
    finally:
        holder.close()
    assert status != 0
    assert "bind/listen: Address already in use" in server.log()


def test_boot_failure_exits_3_without_fork_loop(start):
    server = start(["--bind", "127.0.0.1:%d" % free_port()], BOOT_FAIL="1")
    assert server.wait(10) == 3
    assert 1 <= server.log().count("failed to boot: stopping") <= 2


def test_fcgi_web_server_addrs(start):
    _, address = tcp(start, FCGI_WEB_SERVER_ADDRS="10.9.8.7")
    with pytest.raises((EOFError, ConnectionError)):
        fc.FCGIClient(address).request({"QUERY_STRING": "refused"})
    _, address = tcp(start, FCGI_WEB_SERVER_ADDRS="10.9.8.7, 127.0.0.1")
    assert fc.FCGIClient(address).request({"QUERY_STRING": "ok"}) == expected_output("ok")


# ---- keep-alive ------------------------------------------------------------------------------


def test_keep_conn_200_requests_on_one_connection_fast(start):
    _, address = tcp(start)
    with fc.FCGIClient(address) as client:
        client.request({"QUERY_STRING": "warm-up"}, keep_conn=True)
        t0 = time.monotonic()
        for i in range(200):
            query = "n=%d" % i
            assert client.request({"QUERY_STRING": query}, keep_conn=True) == expected_output(query)
        took = time.monotonic() - t0
        assert client.connections == 1
    assert took < 2.0, "200 kept-alive requests took %.2f s" % took


def test_more_kept_connections_than_workers(start):
    """nginx may keep more idle connections than there are workers: none may starve."""
    _, address = tcp(start, IIPY_WORKERS="1")
    clients = [fc.FCGIClient(address, timeout=5) for _ in range(4)]
    for round_ in range(3):
        for i, client in enumerate(clients):
            query = "c=%d&r=%d" % (i, round_)
            assert client.request({"QUERY_STRING": query}, keep_conn=True) == expected_output(query)
    assert all(c.connections == 1 for c in clients)
    for c in clients:
        c.close()


def test_connections_opened_together_are_spread_over_idle_workers(start):
    """A worker holding a connection that has not sent its request yet accepts no
    other: two slow requests on two such connections run in parallel."""
    server, address = tcp(start, IIPY_WORKERS="2")
    server.wait_workers(2)
    clients = [fc.FCGIClient(address, timeout=10) for _ in range(2)]
    for client in clients:
        client.connect()
    time.sleep(0.3)  # both connections accepted before any request is sent
    results: dict[int, object] = {}
    t0 = time.monotonic()
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(
        i, clients[i].request({"QUERY_STRING": "sleep=0.6"}))) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    took = time.monotonic() - t0
    assert all(fc.split_cgi(results[i])[1] == b"slept 0.6" for i in range(2))
    assert took < 1.1, "the two requests were served one after the other (%.2f s)" % took


def test_silent_connection_is_closed_after_io_timeout(start):
    _, address = tcp(start, IIPY_WORKERS="1", IIPY_TIMEOUT="2")  # I/O timeout: 1 s
    with socket.create_connection(address, timeout=5) as silent:
        t0 = time.monotonic()
        assert silent.recv(1) == b""  # closed by the server
        assert 0.8 < time.monotonic() - t0 < 3.5
    assert fc.FCGIClient(address).request({"QUERY_STRING": "next"}) == expected_output("next")


# ---- signals and worker life cycle -------------------------------------------------------


def _request_in_thread(address, query, results, key):
    try:
        results[key] = fc.FCGIClient(address, timeout=15).request({"QUERY_STRING": query})
    except Exception as exc:  # reported by the assertion in the test
        results[key] = exc


def test_sigterm_lets_requests_in_flight_complete(start, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    server, address = tcp(start, IIPY_WORKERS="3", MARK_DIR=str(marks))
    server.wait_workers(3)
    results: dict[int, object] = {}
    threads = [threading.Thread(target=_request_in_thread, args=(address, "sleep=1.0", results, i))
               for i in range(3)]
    for t in threads:
        t.start()
    wait_until(lambda: len(os.listdir(marks)) == 3, what="3 requests in progress", proc=server.proc)
    server.signal(signal.SIGTERM)
    for t in threads:
        t.join(15)
    assert server.wait(10) == 0
    for i in range(3):
        assert isinstance(results[i], bytes), results[i]
        assert fc.split_cgi(results[i])[1] == b"slept 1.0"


def test_idle_sigterm_exits_fast_even_with_a_kept_connection(start):
    server, address = tcp(start)
    server.wait_workers(2)
    client = fc.FCGIClient(address)
    client.request({"QUERY_STRING": "hello"}, keep_conn=True)  # stays open, idle
    t0 = time.monotonic()
    server.signal(signal.SIGTERM)
    status = server.wait(5)
    took = time.monotonic() - t0
    client.close()
    assert status == 0
    assert took < 1.5, "idle SIGTERM took %.2f s" % took


def _hammer(address, stop: threading.Event, failures: list, count: list) -> None:
    """Send requests on fresh connections until ``stop``; record any failure."""
    client = fc.FCGIClient(address, timeout=10)
    while not stop.is_set():
        try:
            out = client.request({"QUERY_STRING": "steady"})
            if out != expected_output("steady"):
                failures.append(out)
        except Exception as exc:
            failures.append(exc)
        count[0] += 1


def test_killed_worker_is_replaced_while_requests_succeed(start):
    server, address = tcp(start)
    before = server.wait_workers(2)
    stop, failures, count = threading.Event(), [], [0]
    hammer = threading.Thread(target=_hammer, args=(address, stop, failures, count))
    hammer.start()
    try:
        time.sleep(0.2)
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        after = server.wait_workers(2, exclude={victim})
        time.sleep(0.3)
    finally:
        stop.set()
        hammer.join(15)
    assert victim not in after and len(after - before) == 1
    assert "killed by SIGKILL" in server.log()
    # a request in progress in the killed worker may fail; nothing else may
    assert len(failures) <= 1, failures
    assert count[0] > 10
    assert fc.FCGIClient(address).request({"QUERY_STRING": "after"}) == expected_output("after")


def test_sighup_replaces_workers_while_requests_succeed(start):
    server, address = tcp(start)
    before = server.wait_workers(2)
    stop, failures, count = threading.Event(), [], [0]
    hammer = threading.Thread(target=_hammer, args=(address, stop, failures, count))
    hammer.start()
    try:
        time.sleep(0.2)
        server.signal(signal.SIGHUP)
        server.wait_workers(2, exclude=before)
        time.sleep(0.3)
    finally:
        stop.set()
        hammer.join(15)
    assert failures == []
    assert count[0] > 10
    assert server.proc.poll() is None


def test_max_requests_recycles_workers_without_failures(start):
    _, address = tcp(start, IIPY_WORKERS="1", IIPY_MAX_REQUESTS="5")
    client = fc.FCGIClient(address)
    pids = [fc.split_cgi(client.request({"QUERY_STRING": "pid"}))[1] for _ in range(16)]
    assert len(set(pids)) >= 3  # 5 requests each (jitter is 0 below 10)
    assert all(pids.count(p) <= 5 for p in set(pids))


def test_max_requests_recycling_is_logged_as_such(start):
    server, address = tcp(start, IIPY_WORKERS="1", IIPY_MAX_REQUESTS="3")
    client = fc.FCGIClient(address)
    pids = [fc.split_cgi(client.request({"QUERY_STRING": "pid"}))[1] for _ in range(4)]
    assert pids[0] == pids[1] == pids[2] != pids[3]
    wait_until(lambda: "recycled" in server.log(), what="the recycled line", proc=server.proc)
    log = server.log()
    assert "served 3 requests, recycling" in log
    assert "worker 1 (pid %s) recycled" % pids[0].decode() in log
    assert "exited with status" not in log and "killed" not in log


def test_max_rss_recycles_a_grown_worker_after_answering(start):
    """A request that leaves the worker above IIPY_MAX_RSS_MB is answered in full; the
    worker then exits by itself and a fresh one takes the next request."""
    server, address = tcp(start, IIPY_WORKERS="1", IIPY_MAX_RSS_MB="80")
    client = fc.FCGIClient(address)
    first = fc.split_cgi(client.request({"QUERY_STRING": "pid"}))[1]
    assert fc.split_cgi(client.request({"QUERY_STRING": "grow=30"}))[1] == b"grew 30"
    assert fc.split_cgi(client.request({"QUERY_STRING": "pid"}))[1] == first  # below
    assert fc.split_cgi(client.request({"QUERY_STRING": "grow=60"}))[1] == b"grew 60"
    second = fc.split_cgi(client.request({"QUERY_STRING": "pid"}))[1]
    assert second != first
    assert fc.split_cgi(client.request({"QUERY_STRING": "pid"}))[1] == second
    wait_until(lambda: "recycled" in server.log(), what="the recycled line", proc=server.proc)
    log = server.log()
    assert "is above the limit of 80 MB, recycling" in log
    assert "worker 1 (pid %s) recycled" % first.decode() in log
    assert "exited with status" not in log and "killed" not in log
    assert server.workers() == {int(second)}


def _send_and_hang_up(sock: socket.socket, query: str, *, reset: bool = False,
                      keep_conn: bool = False) -> None:
    sock.sendall(fc.request_bytes({"QUERY_STRING": query}, keep_conn=keep_conn))
    if reset:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_requests_abandoned_while_waiting_are_not_run(start, tmp_path):
    """Requests whose web server hung up (FIN or reset) while they waited, in the backlog
    or on a connection the busy worker holds, never reach the handler; the others do.

    The worker is held still with SIGSTOP (as if busy on a long request), so what waits
    where does not depend on timing."""
    marks = tmp_path / "marks"
    marks.mkdir()
    server, address = tcp(start, IIPY_WORKERS="1", MARK_DIR=str(marks), LOG_LEVEL="DEBUG")
    (worker,) = server.wait_workers(1)
    held = [fc.FCGIClient(address) for _ in range(3)]  # connections the worker holds
    for client in held:
        client.request({"QUERY_STRING": "warm"}, keep_conn=True)
    os.kill(worker, signal.SIGSTOP)
    try:
        _send_and_hang_up(held[0].sock, "mark=held-fin", keep_conn=True)
        _send_and_hang_up(held[1].sock, "mark=held-reset", keep_conn=True, reset=True)
        held[2].sock.sendall(fc.request_bytes({"QUERY_STRING": "mark=held-kept"}, keep_conn=True))
        for name, reset in (("new-fin-1", False), ("new-fin-2", False), ("new-reset", True)):
            _send_and_hang_up(socket.create_connection(address), "mark=" + name, reset=reset)
        kept = fc.FCGIClient(address)
        kept.connect().sendall(fc.request_bytes({"QUERY_STRING": "mark=new-kept"}))
    finally:
        os.kill(worker, signal.SIGCONT)
    assert fc.split_cgi(held[2].read_response().stdout)[1] == b"FIXED mark=held-kept"
    assert fc.split_cgi(kept.read_response().stdout)[1] == b"FIXED mark=new-kept"
    wait_until(lambda: server.log().count("skipped a request abandoned") >= 5,
               what="the skipped requests", proc=server.proc)
    assert sorted(os.listdir(marks)) == ["held-kept", "new-kept"]
    skipped = [line for line in server.log().splitlines() if "skipped a request" in line]
    assert sorted(line.rsplit(": ", 1)[1] for line in skipped) == [
        "'mark=held-fin'", "'mark=held-reset'", "'mark=new-fin-1'", "'mark=new-fin-2'",
        "'mark=new-reset'"]
    assert all("(connection closed;" in line for line in skipped)
    assert "Traceback" not in server.log()
    held[2].close()
    kept.close()
