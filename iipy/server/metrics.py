"""Prometheus metrics and a health check for the pre-fork server (``IIPY_METRICS_BIND``).

Workers count into shared memory; the master adds the counts up and serves them, with
its own counts of worker starts and exits, as Prometheus text at ``/metrics``, and
answers ``/healthz``.

Where the numbers live.  A :class:`MetricsBoard` is one anonymous ``MAP_SHARED``
mapping that the master creates before it forks: a row of "in use" flags, then one slot
of float64 cells per worker, at the worker's heartbeat slot number
(``WorkerContext.slot``).  A worker adds to its own slot only (:class:`SlotRecorder`),
with plain memory writes: no lock, no system call, no file.  The master sums the slots in
use when it is scraped.  A slot is never cleared: a worker that replaces a dead one in
the same slot goes on adding to what its predecessor counted, so every total only ever
grows, whatever happens to the workers.  An aligned 8-byte store is atomic on the
machines Python runs on, so a reader sees either the old or the new value of a cell;
a worker killed in the middle of a request may leave that one request half counted.

Why not prometheus-client's multiprocess mode: it needs a directory named in the
environment of every process, one file per worker pid that the master must clean up
after each death and recycle (``mark_process_dead``), and a new run-time dependency;
the supervisor already shares memory with its workers (the heartbeat board), and a
fixed table of a few hundred cells per worker is all the series here need.

The label values are fixed (the layout is fixed): a protocol, command or status that
is not in :data:`PROTOCOLS`, :data:`COMMANDS` or :data:`STATUSES` is counted as
``other``.

The exporter is a small thread of the master (:class:`Exporter`) with its own
non-blocking socket, ``poll`` loop and connections: it never blocks the supervisor's
loop, it blocks the master's signals so that they keep waking the main thread, and the
workers forked while it runs close their copies of its descriptors at once.
"""

from __future__ import annotations

import bisect
import errno
import logging
import mmap
import os
import select
import signal
import socket
import threading
import time
from typing import Mapping, Protocol, Sequence

from iipy import __version__
from iipy.server import logsetup, sockets
from iipy.server.prefork import SupervisorState

log = logging.getLogger(__name__)

#: Label values of ``iipy_requests_total``.
PROTOCOLS = ("iip", "iiif", "zoomify", "deepzoom", "http", "other")
COMMANDS = ("none", "fif", "obj", "sds", "jtl", "jtls", "til", "cvt", "pfl", "spectra",
            "iiif", "zoomify", "deepzoom", "options", "method", "other")
STATUSES = ("200", "204", "304", "400", "403", "404", "405", "500", "503", "other")
#: Stages of ``iipy_request_stage_seconds`` (``total`` is the whole request).
STAGES = ("parse", "cache", "read", "render", "encode", "total")
#: Layers of the response cache.
CACHE_LAYERS = ("memory", "memcached")
#: Upper bounds (seconds) of the latency buckets.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0)
#: Upper bounds (seconds) of the pyramid build buckets.
BUILD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
#: A worker whose heartbeat is older than this is not ready (idle workers beat every
#: second at most; see ``prefork.WorkerContext.beat_interval``).
HEALTH_STALE = 3.0
#: Scrape connections served at once; more are closed at once.
MAX_CLIENTS = 16
#: Longest request head, and the time a client has to send it.
MAX_HEAD = 8192
CLIENT_TIMEOUT = 5.0
#: Longest wait of the exporter's loop (how soon it notices ``close``).
POLL_SECONDS = 0.2

_P, _C, _S = len(PROTOCOLS), len(COMMANDS), len(STATUSES)
_PROTOCOL_INDEX = {name: i for i, name in enumerate(PROTOCOLS)}
_COMMAND_INDEX = {name: i for i, name in enumerate(COMMANDS)}
_STATUS_INDEX = {name: i for i, name in enumerate(STATUSES)}


class _Layout:
    """Cell offsets inside one worker's slot."""

    def __init__(self) -> None:
        self.size = 0
        self.requests = self._take(_P * _C * _S)
        #: per stage: one cell per bucket, the overflow (+Inf) cell, sum, count
        self.stage_width = len(LATENCY_BUCKETS) + 3
        self.stages = self._take(len(STAGES) * self.stage_width)
        self.cache = self._take(2 * len(CACHE_LAYERS))  # hits, misses per layer
        self.memcached_errors = self._take(1)
        self.response_bytes = self._take(1)
        self.abandoned = self._take(1)
        self.builds = self._take(len(BUILD_BUCKETS) + 3)

    def _take(self, n: int) -> int:
        start = self.size
        self.size += n
        return start


LAYOUT = _Layout()


class MetricsBoard:
    """The shared table: ``capacity`` "in use" flags, then ``capacity`` slots of
    ``LAYOUT.size`` float64 cells.  Created by the master before it forks; pages are
    allocated by the kernel only when a worker first writes to them."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.slot_size = LAYOUT.size
        self._map = mmap.mmap(-1, 8 * capacity * (1 + self.slot_size))
        self._cells = memoryview(self._map).cast("d")

    def slot(self, slot: int) -> memoryview:
        """The cells of ``slot`` (marked in use)."""
        if not 0 <= slot < self.capacity:
            raise IndexError("metrics slot %d out of range" % slot)
        self._cells[slot] = 1.0
        base = self.capacity + slot * self.slot_size
        return self._cells[base:base + self.slot_size]

    def totals(self) -> list[float]:
        """Every cell summed over the slots in use."""
        totals = [0.0] * self.slot_size
        cells = self._cells
        for slot in range(self.capacity):
            if cells[slot]:
                base = self.capacity + slot * self.slot_size
                totals = [a + b for a, b in zip(totals, cells[base:base + self.slot_size].tolist())]
        return totals

    def close(self) -> None:
        """Unmap the table, unless recorders of this process still use it (then it goes
        with the last of them)."""
        self._cells.release()
        try:
            self._map.close()
        except BufferError:
            pass


# ---- in a worker ----------------------------------------------------------------------


class Recorder(Protocol):
    """What the rest of the server (and, through the handler, the protocols) may record."""

    def request(self, protocol: str, command: str, status: int, nbytes: int,
                stages: Mapping[str, float], lookups: Mapping[str, tuple[int, int]],
                memcached_errors: int = 0) -> None: ...

    def pyramid_built(self, seconds: float) -> None: ...

    def abandoned(self) -> None: ...


class NullRecorder:
    """Records nothing (metrics off)."""

    def request(self, protocol: str, command: str, status: int, nbytes: int,
                stages: Mapping[str, float], lookups: Mapping[str, tuple[int, int]],
                memcached_errors: int = 0) -> None:
        pass

    def pyramid_built(self, seconds: float) -> None:
        pass

    def abandoned(self) -> None:
        pass


class SlotRecorder:
    """Adds one worker's observations to its slot of the board."""

    def __init__(self, board: MetricsBoard, slot: int) -> None:
        self._cells = board.slot(slot)

    def request(self, protocol: str, command: str, status: int, nbytes: int,
                stages: Mapping[str, float], lookups: Mapping[str, tuple[int, int]],
                memcached_errors: int = 0) -> None:
        """One answered request.  ``stages`` holds the seconds of the stages the request
        went through (a stage that did not run is left out); ``lookups`` maps a cache
        layer to (hits, misses) of this request."""
        cells = self._cells
        p = _PROTOCOL_INDEX.get(protocol, _P - 1)
        c = _COMMAND_INDEX.get(command, _C - 1)
        s = _STATUS_INDEX.get(str(status), _S - 1)
        cells[LAYOUT.requests + (p * _C + c) * _S + s] += 1.0
        for i, stage in enumerate(STAGES):
            seconds = stages.get(stage)
            if seconds is not None:
                _observe(cells, LAYOUT.stages + i * LAYOUT.stage_width, LATENCY_BUCKETS,
                         seconds)
        for i, layer in enumerate(CACHE_LAYERS):
            hits, misses = lookups.get(layer, (0, 0))
            if hits:
                cells[LAYOUT.cache + 2 * i] += hits
            if misses:
                cells[LAYOUT.cache + 2 * i + 1] += misses
        if memcached_errors:
            cells[LAYOUT.memcached_errors] += memcached_errors
        cells[LAYOUT.response_bytes] += nbytes

    def pyramid_built(self, seconds: float) -> None:
        _observe(self._cells, LAYOUT.builds, BUILD_BUCKETS, seconds)

    def abandoned(self) -> None:
        """A request whose client went away before the answer was sent."""
        self._cells[LAYOUT.abandoned] += 1.0


def _observe(cells: memoryview, base: int, bounds: Sequence[float], value: float) -> None:
    """Count ``value`` in the histogram at ``base``: buckets (``le`` inclusive, not
    cumulative), overflow, sum, count."""
    value = max(0.0, value)
    cells[base + bisect.bisect_left(bounds, value)] += 1.0
    n = len(bounds) + 1
    cells[base + n] += value
    cells[base + n + 1] += 1.0


def recorder(board: MetricsBoard | None, slot: int) -> Recorder:
    """The recorder of the worker in ``slot``: a :class:`NullRecorder` without a board."""
    return NullRecorder() if board is None else SlotRecorder(board, slot)


# ---- in the master ----------------------------------------------------------------------


class Supervised(Protocol):
    def snapshot(self) -> SupervisorState | None: ...


def health(state: SupervisorState | None, now: float) -> tuple[bool, str]:
    """(healthy, one line): healthy while the master runs and every expected worker is
    alive, not retiring, and has beaten its heart within :data:`HEALTH_STALE` seconds."""
    if state is None:
        return False, "not running"
    if state.stopping:
        return False, "stopping"
    ready = 0
    problems = []
    for w in sorted(state.workers, key=lambda w: w.worker_id):
        if w.retiring:
            continue
        silent = now - w.last_beat
        if w.timed_out:
            problems.append("worker %d (pid %d) timed out" % (w.worker_id, w.pid))
        elif silent > HEALTH_STALE:
            problems.append("worker %d (pid %d) silent for %.1f s"
                            % (w.worker_id, w.pid, silent))
        else:
            ready += 1
    line = "%d of %d workers ready" % (ready, state.target)
    if problems:
        line += ": " + "; ".join(problems)
    return ready >= state.target, line


def _ready_workers(state: SupervisorState | None, now: float) -> int:
    if state is None:
        return 0
    return sum(1 for w in state.workers if not w.retiring and not w.timed_out
               and now - w.last_beat <= HEALTH_STALE)


def _number(value: float) -> str:
    if value == int(value) and abs(value) < 1 << 53:
        return str(int(value))
    return repr(value)


def _labels(**labels: str) -> str:
    return "{" + ",".join('%s="%s"' % (k, v) for k, v in labels.items()) + "}"


class _Text:
    """Prometheus text format 0.0.4."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, doc: str) -> None:
        self.lines.append("# HELP %s %s" % (name, doc))
        self.lines.append("# TYPE %s %s" % (name, kind))

    def sample(self, name: str, value: float, labels: str = "") -> None:
        self.lines.append("%s%s %s" % (name, labels, _number(value)))

    def histogram(self, name: str, cells: Sequence[float], base: int,
                  bounds: Sequence[float], **labels: str) -> None:
        running = 0.0
        for i, bound in enumerate(bounds):
            running += cells[base + i]
            self.sample(name + "_bucket", running, _labels(**labels, le=_number(bound)))
        running += cells[base + len(bounds)]
        self.sample(name + "_bucket", running, _labels(**labels, le="+Inf"))
        tail = _labels(**labels) if labels else ""
        self.sample(name + "_sum", cells[base + len(bounds) + 1], tail)
        self.sample(name + "_count", cells[base + len(bounds) + 2], tail)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def exposition(totals: Sequence[float], state: SupervisorState | None, now: float) -> str:
    """The ``/metrics`` page: ``totals`` of the board, the supervisor's counts."""
    out = _Text()
    out.family("iipy_build_info", "gauge", "iipy's version.")
    out.sample("iipy_build_info", 1, _labels(version=__version__))

    out.family("iipy_requests_total", "counter",
               "Requests answered, by protocol, output command and HTTP status.")
    for p, protocol in enumerate(PROTOCOLS):
        for c, command in enumerate(COMMANDS):
            for s, status in enumerate(STATUSES):
                value = totals[LAYOUT.requests + (p * _C + c) * _S + s]
                if value:
                    out.sample("iipy_requests_total", value,
                               _labels(protocol=protocol, command=command, status=status))

    out.family("iipy_request_stage_seconds", "histogram",
               "Seconds per stage of a request (parse, cache lookups, read, render, encode) "
               "and in all (total); a stage is counted only by the requests that ran it.")
    for i, stage in enumerate(STAGES):
        out.histogram("iipy_request_stage_seconds", totals,
                      LAYOUT.stages + i * LAYOUT.stage_width, LATENCY_BUCKETS, stage=stage)

    out.family("iipy_cache_hits_total", "counter", "Response cache hits, by layer.")
    for i, layer in enumerate(CACHE_LAYERS):
        out.sample("iipy_cache_hits_total", totals[LAYOUT.cache + 2 * i], _labels(layer=layer))
    out.family("iipy_cache_misses_total", "counter",
               "Response cache misses, by layer (memcached is asked after a memory miss).")
    for i, layer in enumerate(CACHE_LAYERS):
        out.sample("iipy_cache_misses_total", totals[LAYOUT.cache + 2 * i + 1],
                   _labels(layer=layer))
    out.family("iipy_memcached_errors_total", "counter",
               "memcached operations that failed (each counted as a miss or a lost store).")
    out.sample("iipy_memcached_errors_total", totals[LAYOUT.memcached_errors])

    out.family("iipy_response_bytes_total", "counter", "Bytes of response bodies sent.")
    out.sample("iipy_response_bytes_total", totals[LAYOUT.response_bytes])
    out.family("iipy_requests_abandoned_total", "counter",
               "Requests whose client went away before the answer was sent.")
    out.sample("iipy_requests_abandoned_total", totals[LAYOUT.abandoned])

    out.family("iipy_pyramid_build_seconds", "histogram",
               "Reduced-resolution pyramids built (count) and the seconds each took.")
    out.histogram("iipy_pyramid_build_seconds", totals, LAYOUT.builds, BUILD_BUCKETS)

    events: Mapping[str, int] = state.events if state is not None else {}
    for name, key, doc in (
            ("iipy_worker_starts_total", "started", "Worker processes started."),
            ("iipy_worker_recycles_total", "recycled",
             "Workers that exited when asked to (SIGHUP, IIPY_MAX_REQUESTS, SIGTTOU)."),
            ("iipy_worker_timeouts_total", "timed_out",
             "Workers killed after IIPY_TIMEOUT seconds on one request."),
            ("iipy_worker_deaths_total", "died",
             "Workers that crashed or were killed by something else than the master.")):
        out.family(name, "counter", doc)
        out.sample(name, events.get(key, 0))
    out.family("iipy_workers", "gauge", "Worker processes, by state.")
    workers = state.workers if state is not None else ()
    out.sample("iipy_workers", sum(1 for w in workers if not w.retiring), _labels(state="active"))
    out.sample("iipy_workers", sum(1 for w in workers if w.retiring), _labels(state="retiring"))
    out.sample("iipy_workers", _ready_workers(state, now), _labels(state="ready"))
    out.family("iipy_workers_expected", "gauge", "Workers the master keeps running.")
    out.sample("iipy_workers_expected", state.target if state is not None else 0)
    healthy, _ = health(state, now)
    out.family("iipy_healthy", "gauge", "1 when /healthz answers 200.")
    out.sample("iipy_healthy", 1 if healthy else 0)
    return out.text()


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``:PORT`` or ``*:PORT``: every interface; port 0: any free port);
    ValueError otherwise."""
    host, colon, port = text.strip().rpartition(":")
    if not colon or not port.isdigit() or int(port) > 65535:
        raise ValueError("IIPY_METRICS_BIND must be HOST:PORT, not %r" % text)
    return ("0.0.0.0" if host in ("", "*") else host), int(port)


class _Client:
    __slots__ = ("sock", "head", "out", "deadline")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.head = b""
        self.out = b""
        self.deadline = deadline


#: Exporters whose descriptors a forked child must close (see ``_close_in_child``).
_LIVE: set["Exporter"] = set()


class Exporter:
    """The master's HTTP endpoint: ``GET /metrics`` and ``GET /healthz`` (HEAD too).

    The socket is bound by the constructor (OSError if it cannot be), in the master
    before it forks; :meth:`start` runs the loop in a daemon thread, :meth:`close`
    stops it and closes every descriptor.
    """

    def __init__(self, address: str, board: MetricsBoard, supervisor: Supervised) -> None:
        host, port = parse_address(address)
        self._board = board
        self._supervisor = supervisor
        self._listener = sockets.bind_tcp(host, port, 64)
        self._listener.setblocking(False)
        self._clients: dict[int, _Client] = {}
        self._running = False
        self._thread: threading.Thread | None = None
        _LIVE.add(self)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._listener.getsockname()[:2]
        return host, port

    def start(self) -> None:
        self._running = True
        self._thread = threading.Thread(target=self._run, name="iipy-metrics", daemon=True)
        self._thread.start()
        logging.getLogger(logsetup.STARTUP).info(
            "metrics on http://%s:%d/metrics and /healthz", *self.address)

    def close(self) -> None:
        self._running = False
        if self._thread is not None:
            self._thread.join(5 * POLL_SECONDS + 1.0)
            self._thread = None
        self._close_descriptors()
        _LIVE.discard(self)

    def _close_descriptors(self) -> None:
        for client in list(self._clients.values()):
            client.sock.close()
        self._clients.clear()
        self._listener.close()

    # ---- the thread ---------------------------------------------------------------

    def _run(self) -> None:
        # the master's signals must wake its main thread, never this one
        signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED_SIGNALS)
        while self._running:
            try:
                self._serve_once()
            except Exception:  # noqa: BLE001 - the exporter must never die of a scrape
                log.exception("metrics endpoint")
                time.sleep(POLL_SECONDS)

    def _serve_once(self) -> None:
        poller = select.poll()
        poller.register(self._listener.fileno(), select.POLLIN)
        for fd, client in self._clients.items():
            poller.register(fd, select.POLLOUT if client.out else select.POLLIN)
        for fd, _ in poller.poll(POLL_SECONDS * 1000.0):
            if fd == self._listener.fileno():
                self._accept()
            elif fd in self._clients:
                client = self._clients[fd]
                if client.out:
                    self._write(fd, client)
                else:
                    self._read(fd, client)
        now = time.monotonic()
        for fd, client in list(self._clients.items()):
            if now > client.deadline:
                self._drop(fd)

    def _accept(self) -> None:
        try:
            sock, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                log.warning("metrics endpoint: cannot accept: %s", exc.strerror)
                time.sleep(POLL_SECONDS)
                return
            raise
        if len(self._clients) >= MAX_CLIENTS:
            sock.close()
            return
        sock.setblocking(False)
        self._clients[sock.fileno()] = _Client(sock, time.monotonic() + CLIENT_TIMEOUT)

    def _read(self, fd: int, client: _Client) -> None:
        try:
            data = client.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(fd)
            return
        if not data:
            self._drop(fd)
            return
        client.head += data
        if b"\r\n\r\n" in client.head or b"\n\n" in client.head:
            client.out = self._respond(client.head)
            self._write(fd, client)
        elif len(client.head) > MAX_HEAD:
            client.out = _http(431, "request header too large\n")
            self._write(fd, client)

    def _write(self, fd: int, client: _Client) -> None:
        try:
            sent = client.sock.send(client.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(fd)
            return
        client.out = client.out[sent:]
        if not client.out:
            self._drop(fd)

    def _drop(self, fd: int) -> None:
        client = self._clients.pop(fd, None)
        if client is not None:
            client.sock.close()

    def _respond(self, head: bytes) -> bytes:
        line = head.split(b"\n", 1)[0].decode("latin-1").strip()
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return _http(400, "bad request\n")
        method, target = parts[0], parts[1].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return _http(405, "only GET and HEAD\n", extra="Allow: GET, HEAD\r\n")
        head_only = method == "HEAD"
        if target == "/metrics":
            now = time.monotonic()
            body = exposition(self._board.totals(), self._state(), now)
            return _http(200, body, "text/plain; version=0.0.4; charset=utf-8", head_only)
        if target == "/healthz":
            ok, text = health(self._state(), time.monotonic())
            return _http(200 if ok else 503, ("ok: " if ok else "unhealthy: ") + text + "\n",
                         head_only=head_only)
        return _http(404, "not found: try /metrics or /healthz\n", head_only=head_only)

    def _state(self) -> SupervisorState | None:
        for _ in range(3):
            try:
                return self._supervisor.snapshot()
            except RuntimeError:  # the worker table changed while it was copied: again
                continue
            except (ValueError, IndexError):  # the supervisor is closing its board
                return None
        return None


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            431: "Request Header Fields Too Large", 503: "Service Unavailable"}
_BLOCKED_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGTTIN,
                    signal.SIGTTOU, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD,
                    signal.SIGALRM, signal.SIGPIPE}


def _http(status: int, body: str, content_type: str = "text/plain; charset=utf-8",
          head_only: bool = False, extra: str = "") -> bytes:
    data = body.encode("utf-8")
    header = ("HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
              "Cache-Control: no-store\r\n%sConnection: close\r\n\r\n"
              % (status, _REASONS.get(status, ""), content_type, len(data), extra))
    return header.encode("latin-1") + (b"" if head_only else data)


def _close_in_child() -> None:
    """After fork, in the child: the exporter's thread does not exist there, so close
    the copies of its descriptors (a worker must not hold the metrics port)."""
    for exporter in list(_LIVE):
        exporter._running = False
        exporter._thread = None
        try:
            exporter._close_descriptors()
        except OSError:  # pragma: no cover
            pass
    _LIVE.clear()


os.register_at_fork(after_in_child=_close_in_child)
