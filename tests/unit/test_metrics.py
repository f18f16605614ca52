"""iipy.server.metrics: the shared counter table, the text it serves, the health rule,
and the exporter's HTTP endpoint on a real socket (with a stand-in supervisor)."""

from __future__ import annotations

import os
import socket
import time

import pytest

from iipy.server import metrics
from iipy.server.metrics import LATENCY_BUCKETS, MetricsBoard, SlotRecorder, exposition, health
from iipy.server.prefork import SupervisorState, WorkerState


def parse(text: str) -> dict[str, float]:
    """Prometheus text to ``{"name{labels}": value}``; every sample line must parse."""
    values = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert line.startswith(("# HELP ", "# TYPE ")), line
            continue
        key, _, value = line.rpartition(" ")
        assert key not in values, "duplicate series " + key
        values[key] = float(value)
    return values


def state(*workers: WorkerState, target: int = 2, stopping: bool = False,
          **events: int) -> SupervisorState:
    return SupervisorState(target, stopping, tuple(workers), dict(events))


def worker(worker_id: int, last_beat: float, retiring: bool = False,
           timed_out: bool = False) -> WorkerState:
    return WorkerState(worker_id, 1000 + worker_id, worker_id - 1, retiring, timed_out, last_beat)


# ---- the board -------------------------------------------------------------------------


def test_slots_are_summed_and_survive_a_new_recorder_in_the_same_slot():
    board = MetricsBoard(8)
    try:
        a, b = SlotRecorder(board, 0), SlotRecorder(board, 5)
        a.request("iip", "jtl", 200, 1000, {"total": 0.002}, {"memory": (0, 1)})
        b.request("iip", "jtl", 200, 500, {"total": 0.2}, {"memory": (1, 0)})
        b.abandoned()
        # a worker that replaces the one in slot 0 goes on from its counts
        SlotRecorder(board, 0).request("iip", "obj", 200, 9, {"total": 0.0001}, {})
        values = parse(exposition(board.totals(), None, 0.0))
    finally:
        board.close()
    assert values['iipy_requests_total{protocol="iip",command="jtl",status="200"}'] == 2
    assert values['iipy_requests_total{protocol="iip",command="obj",status="200"}'] == 1
    assert values["iipy_response_bytes_total"] == 1509
    assert values["iipy_requests_abandoned_total"] == 1
    assert values['iipy_cache_hits_total{layer="memory"}'] == 1
    assert values['iipy_cache_misses_total{layer="memory"}'] == 1
    assert values['iipy_cache_hits_total{layer="memcached"}'] == 0
    assert values['iipy_request_stage_seconds_count{stage="total"}'] == 3
    assert values['iipy_request_stage_seconds_sum{stage="total"}'] == pytest.approx(0.2021)
    # cumulative buckets, le inclusive
    assert values['iipy_request_stage_seconds_bucket{stage="total",le="0.0005"}'] == 1
    assert values['iipy_request_stage_seconds_bucket{stage="total",le="0.0025"}'] == 2
    assert values['iipy_request_stage_seconds_bucket{stage="total",le="0.1"}'] == 2
    assert values['iipy_request_stage_seconds_bucket{stage="total",le="0.25"}'] == 3
    assert values['iipy_request_stage_seconds_bucket{stage="total",le="+Inf"}'] == 3
    # stages a request did not go through are not counted
    assert values['iipy_request_stage_seconds_count{stage="read"}'] == 0


def test_a_value_on_a_bucket_bound_is_in_that_bucket():
    board = MetricsBoard(1)
    try:
        SlotRecorder(board, 0).request("iip", "jtl", 200, 0, {"read": LATENCY_BUCKETS[3]}, {})
        values = parse(exposition(board.totals(), None, 0.0))
    finally:
        board.close()
    below = 'iipy_request_stage_seconds_bucket{stage="read",le="%s"}'
    assert values[below % "0.0025"] == 0 and values[below % "0.005"] == 1


def test_unknown_label_values_are_counted_as_other():
    board = MetricsBoard(1)
    try:
        rec = SlotRecorder(board, 0)
        rec.request("gopher", "xyz", 418, 0, {}, {})
        rec.request("iip", "jtl", 200, 0, {}, {}, memcached_errors=2)
        rec.pyramid_built(3.0)
        values = parse(exposition(board.totals(), None, 0.0))
    finally:
        board.close()
    assert values['iipy_requests_total{protocol="other",command="other",status="other"}'] == 1
    assert values["iipy_memcached_errors_total"] == 2
    assert values["iipy_pyramid_build_seconds_count"] == 1
    assert values['iipy_pyramid_build_seconds_bucket{le="2.5"}'] == 0
    assert values['iipy_pyramid_build_seconds_bucket{le="5"}'] == 1


def test_a_slot_outside_the_board_is_refused():
    board = MetricsBoard(2)
    try:
        with pytest.raises(IndexError):
            SlotRecorder(board, 2)
    finally:
        board.close()


def test_supervisor_counts_and_gauges_are_exposed():
    now = 100.0
    s = state(worker(1, now - 0.5), worker(2, now - 0.1, retiring=True), worker(3, now - 10),
              started=5, recycled=2, timed_out=1, died=1)
    values = parse(exposition([0.0] * metrics.LAYOUT.size, s, now))
    assert values["iipy_worker_starts_total"] == 5
    assert values["iipy_worker_recycles_total"] == 2
    assert values["iipy_worker_timeouts_total"] == 1
    assert values["iipy_worker_deaths_total"] == 1
    assert values['iipy_workers{state="active"}'] == 2
    assert values['iipy_workers{state="retiring"}'] == 1
    assert values['iipy_workers{state="ready"}'] == 1
    assert values["iipy_workers_expected"] == 2
    assert values["iipy_healthy"] == 0


# ---- health ------------------------------------------------------------------------------


def test_healthy_when_every_expected_worker_beats():
    now = 50.0
    ok, text = health(state(worker(1, now - 0.2), worker(2, now - 1.0)), now)
    assert ok and text == "2 of 2 workers ready"


@pytest.mark.parametrize("workers, reason", [
    ((worker(1, 49.8),), "1 of 2 workers ready"),
    ((worker(1, 49.8), worker(2, 50.0 - metrics.HEALTH_STALE - 0.1)),
     "1 of 2 workers ready: worker 2 (pid 1002) silent for 3.1 s"),
    ((worker(1, 49.8), worker(2, 49.9, timed_out=True)),
     "1 of 2 workers ready: worker 2 (pid 1002) timed out"),
    ((worker(1, 49.8), worker(2, 49.9, retiring=True)), "1 of 2 workers ready"),
])
def test_unhealthy_when_a_worker_is_missing_silent_or_timed_out(workers, reason):
    ok, text = health(state(*workers), 50.0)
    assert not ok and text == reason


def test_unhealthy_while_stopping_or_before_running():
    assert health(state(worker(1, 1.0), worker(2, 1.0), stopping=True), 1.0) == (False, "stopping")
    assert health(None, 1.0) == (False, "not running")


# ---- the endpoint --------------------------------------------------------------------------


class FakeSupervisor:
    def __init__(self) -> None:
        self.state: SupervisorState | None = None

    def snapshot(self) -> SupervisorState | None:
        return self.state


def get(address: tuple[str, int], raw: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(address, timeout=5.0) as sock:
        sock.sendall(raw)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


@pytest.fixture
def exporter():
    board = MetricsBoard(4)
    supervisor = FakeSupervisor()
    exp = metrics.Exporter("127.0.0.1:0", board, supervisor)
    exp.start()
    exp.supervisor = supervisor
    exp.board = board
    yield exp
    exp.close()
    board.close()


def test_endpoint_serves_metrics_health_and_nothing_else(exporter):
    SlotRecorder(exporter.board, 1).request("iip", "cvt", 200, 42, {"total": 0.01}, {})
    now = time.monotonic()
    exporter.supervisor.state = state(worker(1, now), target=1, started=1)
    status, headers, body = get(exporter.address, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert int(headers["Content-Length"]) == len(body)
    values = parse(body.decode())
    assert values['iipy_requests_total{protocol="iip",command="cvt",status="200"}'] == 1
    assert values["iipy_worker_starts_total"] == 1

    assert get(exporter.address, b"GET /healthz HTTP/1.0\r\n\r\n")[::2] == \
        (200, b"ok: 1 of 1 workers ready\n")
    exporter.supervisor.state = state(worker(1, now - 10), target=1)
    status, _, body = get(exporter.address, b"GET /healthz?x=1 HTTP/1.1\r\n\r\n")
    assert status == 503 and body.startswith(b"unhealthy: 0 of 1 workers ready: worker 1")
    status, headers, body = get(exporter.address, b"HEAD /healthz HTTP/1.1\r\n\r\n")
    assert status == 503 and body == b"" and int(headers["Content-Length"]) > 0
    assert get(exporter.address, b"GET / HTTP/1.1\r\n\r\n")[0] == 404
    status, headers, _ = get(exporter.address, b"POST /metrics HTTP/1.1\r\n\r\n")
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    assert get(exporter.address, b"nonsense\r\n\r\n")[0] == 400
    assert get(exporter.address, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 9000)[0] == 431


def test_a_silent_client_does_not_hold_up_others(exporter):
    exporter.supervisor.state = state(worker(1, time.monotonic()), target=1)
    with socket.create_connection(exporter.address) as idle:
        idle.sendall(b"GET /metr")  # and nothing more
        for _ in range(3):
            assert get(exporter.address, b"GET /healthz HTTP/1.1\r\n\r\n")[0] == 200


def test_a_forked_child_does_not_keep_the_exporter_socket(exporter):
    fd = exporter._listener.fileno()
    pid = os.fork()
    if pid == 0:  # the child: the descriptor must already be closed
        try:
            os.fstat(fd)
            code = 1
        except OSError:
            code = 0
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    os.fstat(fd)  # still open in this process
    assert get(exporter.address, b"GET /healthz HTTP/1.1\r\n\r\n")[0] == 503


def test_bad_bind_addresses_are_refused():
    board = MetricsBoard(1)
    try:
        with pytest.raises(ValueError):
            metrics.Exporter("/tmp/metrics.sock", board, FakeSupervisor())
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            with pytest.raises(OSError):
                metrics.Exporter("127.0.0.1:%d" % taken.getsockname()[1], board,
                                 FakeSupervisor())
    finally:
        board.close()
