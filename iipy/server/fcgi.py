"""FastCGI transport: the listening socket, the record layer, the worker loop.

This is the only module that imports flup, and it uses flup 1.0.3 only for the
request bookkeeping of ``Connection`` (BEGIN_REQUEST, PARAMS, STDIN, ABORT_REQUEST,
GET_VALUES, FCGI_KEEP_CONN).  Records are cut out of the input buffer and
FCGI_PARAMS streams decoded by the compiled ``iipy._fcgi`` (ext/_fcgi.pyx; this is
its only caller), which reads exactly what flup's ``Record.read`` and
``decode_pair`` read (tests/contract/test_fcgi_records.py holds them to flup);
without the extension, Python twins of its two functions are used.  flup's pre-fork pool is replaced by
:mod:`iipy.server.prefork`, and its WSGI bridge is not used because it always writes a
``Status:`` line and adds headers of its own, while iipy must send iipsrv's exact
bytes: the handler returns the complete CGI output and this module frames it.

A request is handled like libfcgi (and so iipsrv) does it:

* it runs as soon as its FCGI_PARAMS stream is complete (decoded as a whole: flup
  decodes record by record and fails on a pair that spans two records) and the
  records of the same request already received behind it (FCGI_STDIN, an
  FCGI_ABORT_REQUEST) are handled; FCGI_STDIN is read and discarded (iipsrv never
  reads a request body);
* a request the web server has given up on is skipped, never run: one followed by
  FCGI_ABORT_REQUEST, or one whose connection the web server has already closed
  (nginx closes the upstream connection when its client goes away; a user panning
  fast leaves many such tile requests waiting in the backlog or behind a busy
  worker).  Just before a request runs, the connection is polled for POLLRDHUP
  (the peer's FIN, even with unread data) and POLLHUP/POLLERR (a reset): no system
  call beyond that one ``poll``.  Skipped requests are logged at debug level and
  counted (``WorkerContext.abandoned``);
* the response goes out as FCGI_STDOUT records of at most 65528 bytes, the empty
  FCGI_STDOUT record and FCGI_END_REQUEST (appStatus 0, FCGI_REQUEST_COMPLETE),
  all in one ``sendall``; nothing is ever written to FCGI_STDERR;
* with FCGI_KEEP_CONN the connection stays open for the next request (nginx
  ``fastcgi_keep_conn on``); without it the connection is shut down for writing
  and drained before it is closed, so a request body still in flight cannot turn
  the close into a reset that would destroy the response.

Each worker answers one request at a time but may hold several kept-alive
connections: with one connection per process (libfcgi's model), nginx keeping more
idle connections than there are workers leaves new connections waiting in the
backlog until a read timeout.  Every accepted TCP connection gets TCP_NODELAY
(otherwise a kept-alive request can stall ~40 ms on delayed ACKs), and TCP peers
not listed in FCGI_WEB_SERVER_ADDRS are disconnected at once.

Parameter names and values are decoded as Latin-1 (flup's choice): each byte of
QUERY_STRING is one character of the ``str`` the handler receives.
"""

from __future__ import annotations

import functools
import logging
import select
import socket
import struct
import sys
import time
from typing import Any, Callable, NoReturn

from flup.server import fcgi_base as flup

from iipy.server import logsetup, metrics, sockets
from iipy.server.cgi import INTERNAL_ERROR
from iipy.server.prefork import Supervisor, WorkerContext
from iipy.settings import atoi

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, str]], bytes]
HandlerFactory = Callable[[], Handler]

#: libfcgi's default listen() backlog, used by iipsrv's ``--bind``.
DEFAULT_BACKLOG = 2048
#: iipsrv 1.1 exits with this status when bind() or listen() fails (docs/protocol.md §2.1).
BIND_FAILURE_STATUS = 22
#: Largest FCGI_STDOUT content per record: a multiple of 8 below 65535, so full
#: records need no padding.
MAX_RECORD_CONTENT = 65528
#: Kept-alive connections one worker holds at most before it stops accepting.
MAX_CONNECTIONS_PER_WORKER = 64
#: On a stop signal, how long a just-accepted connection may take to send its request.
FIRST_REQUEST_GRACE = 0.5
#: How long a closing connection waits for the peer to close its side, in seconds.
LINGER_SECONDS = 1.0
#: Longest FCGI_PARAMS stream accepted (nginx sends at most one 64 KiB record).
MAX_PARAMS_BYTES = 1 << 20
#: GET_VALUES answers.  flup looks the requested names up as bytes, so the keys are bytes.
CAPABILITIES = {b"FCGI_MAX_CONNS": 1, b"FCGI_MAX_REQS": 1, b"FCGI_MPXS_CONNS": 0}

_HEADER = struct.Struct(flup.FCGI_Header)
_PADDING = bytes(8)
#: Records of a request that may follow its FCGI_PARAMS stream.
_FOLLOWERS = frozenset((flup.FCGI_STDIN, flup.FCGI_DATA, flup.FCGI_ABORT_REQUEST))
#: poll() events meaning the peer has closed the connection or reset it.
_GONE = select.POLLRDHUP | select.POLLHUP | select.POLLERR


# ---- the listening socket ------------------------------------------------------------


def listener_from_argv(argv: list[str], settings: Any) -> tuple[socket.socket, str]:
    """The listening socket chosen by iipsrv's command line, and a line for the start-up log.

    ``--bind ADDRESS [--backlog N]`` is positional, as in iipsrv: ``argv[1]`` must be
    ``--bind`` and ``argv[3]`` ``--backlog``.  ADDRESS is ``HOST:PORT``, ``:PORT``,
    ``*:PORT`` or a unix socket path (see :func:`parse_bind_address`).  If binding
    fails, ``bind/listen: <reason>`` goes to stderr and the process exits with a
    non-zero status, as libfcgi does.

    Without ``--bind`` the socket must have been inherited on file descriptor 0
    (spawn-fcgi, Apache mod_fcgid); anything else means iipsrv's "CGI-only mode",
    which exits with status 1.
    """
    if len(argv) > 2 and argv[1] == "--bind":
        address = argv[2]
        backlog = _backlog_from_argv(argv)
        try:
            sock = sockets.bind_listener(address, backlog, settings.socket_mode)
        except sockets.UnknownHost as exc:
            _fail(str(exc), 1)
        except (OSError, OverflowError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            _fail("bind/listen: %s" % reason, BIND_FAILURE_STATUS)
        return sock, "Running in standalone mode on socket: %s with backlog: %d" % (
            address, backlog)
    inherited = sockets.inherited_listener()
    if inherited is None:
        log.error("CGI-only mode detected")
        sys.exit(1)
    return inherited, (
        "Running in FastCGI mode on the socket inherited on file descriptor 0 (%s)"
        % sockets.describe_local(inherited))


def _backlog_from_argv(argv: list[str]) -> int:
    if len(argv) > 4 and argv[3] == "--backlog":
        backlog = atoi(argv[4])
        if backlog > 0:
            return backlog
        log.warning("ignoring --backlog %r: using %d", argv[4], DEFAULT_BACKLOG)
    return DEFAULT_BACKLOG


def _fail(message: str, status: int) -> NoReturn:
    """The start-up error contract of libfcgi: one line on stderr, then exit."""
    print(message, file=sys.stderr, flush=True)
    sys.exit(status)


# ---- records ---------------------------------------------------------------------------


def encode_record(rec_type: int, request_id: int, content: bytes = b"") -> bytes:
    """One FastCGI record, padded to a multiple of 8 bytes (the bytes flup's Record.write sends)."""
    padding = -len(content) & 7
    return (_HEADER.pack(flup.FCGI_VERSION_1, rec_type, request_id, len(content), padding)
            + content + _PADDING[:padding])


def stdout_records(request_id: int, body: bytes) -> list[bytes | memoryview]:
    """``body`` as FCGI_STDOUT records of at most :data:`MAX_RECORD_CONTENT` bytes, then the
    empty record that ends the stream; as pieces to join once, without copying the body."""
    view = memoryview(body)
    pieces: list[bytes | memoryview] = []
    for start in range(0, len(view), MAX_RECORD_CONTENT):
        chunk = view[start:start + MAX_RECORD_CONTENT]
        padding = -len(chunk) & 7
        pieces.append(_HEADER.pack(flup.FCGI_VERSION_1, flup.FCGI_STDOUT, request_id,
                                   len(chunk), padding))
        pieces.append(chunk)
        if padding:
            pieces.append(_PADDING[:padding])
    pieces.append(_HEADER.pack(flup.FCGI_VERSION_1, flup.FCGI_STDOUT, request_id, 0, 0))
    return pieces


def _py_next_record(buf: bytes, pos: int) -> tuple[int, int, bytes, int] | None:
    """:func:`iipy._fcgi.next_record` in Python (used when the extension is not built)."""
    if len(buf) - pos < _HEADER.size:
        return None
    _, rec_type, request_id, length, padding = _HEADER.unpack_from(buf, pos)
    start = pos + _HEADER.size
    end = start + length + padding
    if end > len(buf):
        return None
    return rec_type, request_id, buf[start:start + length], end


def _py_decode_params(data: bytes) -> dict[str, str]:
    """:func:`iipy._fcgi.decode_params` in Python (used when the extension is not built)."""
    params: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        try:
            pos, (name, value) = flup.decode_pair(data, pos)
        except (IndexError, struct.error) as exc:
            raise ValueError("truncated name-value pair") from exc
        if pos > len(data):
            raise ValueError("truncated name-value pair")
        params[name.decode("latin-1")] = value.decode("utf-8", "surrogateescape")
    return params


try:
    from iipy._fcgi import decode_params, next_record
except ImportError:  # a source tree without the compiled extension
    decode_params, next_record = _py_decode_params, _py_next_record


class _Record:
    """A record as flup's ``Connection`` handlers read it (``flup.Record``'s fields)."""

    __slots__ = ("type", "requestId", "contentData", "contentLength")

    def __init__(self, rec_type: int, request_id: int, content: bytes) -> None:
        self.type = rec_type
        self.requestId = request_id
        self.contentData = content
        self.contentLength = len(content)


class _RecordReader:
    """Records read from the socket through 64 KiB reads.

    Web servers send a whole request (BEGIN_REQUEST, PARAMS, STDIN) in one write, so
    one system call usually covers every record of a request; the records are cut
    out of the buffer by :func:`iipy._fcgi.next_record`, the same bytes flup's
    ``Record.read`` would have read (tests/contract/test_fcgi_records.py).
    """

    __slots__ = ("_sock", "_buf", "_pos", "error")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0
        #: The exception behind the last failed read (reported as EOFError, as flup does).
        self.error: OSError | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def next_record(self) -> tuple[int, int] | None:
        """(type, request id) of the next record if it is wholly buffered (so that
        reading it makes no system call), else None."""
        found = next_record(self._buf, self._pos)
        return None if found is None else (found[0], found[1])

    def read(self) -> _Record:
        """The next record; EOFError if the connection ends (or fails) before it does."""
        while True:
            found = next_record(self._buf, self._pos)
            if found is not None:
                rec_type, request_id, content, self._pos = found
                return _Record(rec_type, request_id, content)
            try:
                data = self._sock.recv(65536)
            except OSError as exc:
                self.error = exc
                raise EOFError from exc
            if not data:
                raise EOFError
            self._buf = self._buf[self._pos:] + data if self._pos < len(self._buf) else data
            self._pos = 0


class _ProtocolError(Exception):
    """The peer sent something no FastCGI web server sends."""


class _DiscardedInput:
    """FCGI_STDIN and FCGI_DATA of a request: read from the socket, then dropped."""

    __slots__ = ()

    def add_data(self, data: bytes) -> None:
        pass


_DISCARDED = _DiscardedInput()


class _Request:
    """What flup's ``Connection`` keeps about a request.

    Unlike flup's ``Request`` it has no output streams (the response is framed in one
    piece) and buffers no request body.
    """

    __slots__ = ("params", "params_data", "params_size", "stdin", "data", "requestId", "role",
                 "flags", "aborted")

    def __init__(self, conn: Any, input_stream_class: Any, timeout: Any) -> None:
        self.params: dict[str, str] = {}
        self.params_data: list[bytes] = []
        self.params_size = 0
        self.stdin = _DISCARDED
        self.data = _DISCARDED
        self.requestId = 0
        self.role = flup.FCGI_RESPONDER
        self.flags = 0
        self.aborted = False


class _Responder:
    """The ``server`` object flup's ``Connection`` talks to: runs the handler safely."""

    request_class = _Request
    capability = CAPABILITIES

    def __init__(self, handler: Handler, ctx: WorkerContext,
                 recorder: metrics.Recorder | None = None) -> None:
        self._handler = handler
        self.ctx = ctx
        #: This worker's metrics (e.g. ``recorder.abandoned()``).
        self.recorder = recorder if recorder is not None else metrics.NullRecorder()

    def skip(self, params: dict[str, str], why: str) -> None:
        """Count and log a request the web server gave up on before it started."""
        self.ctx.request_abandoned()
        self.recorder.abandoned()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("skipped a request abandoned by the web server (%s; %d so far): %r",
                      why, self.ctx.abandoned, params.get("QUERY_STRING", "")[:200])

    def respond(self, params: dict[str, str]) -> bytes:
        """The handler's CGI output, or the generic 500 if it raises (logged once)."""
        self.ctx.notify()
        try:
            body = self._handler(params)
            if not isinstance(body, (bytes, bytearray)):
                raise TypeError("handler returned %s, not bytes" % type(body).__name__)
            return bytes(body) if isinstance(body, bytearray) else body
        except Exception:
            log.exception("unhandled error for QUERY_STRING=%r", params.get("QUERY_STRING", ""))
            return INTERNAL_ERROR


class _Connection(flup.Connection):  # type: ignore[misc]  # flup has no type hints
    """flup's per-connection bookkeeping, with our reading, writing and request running.

    flup handles BEGIN_REQUEST (refusing a second request on a busy connection),
    routes STDIN/DATA, answers GET_VALUES and unknown management records, and
    decides in ``end_request`` whether the connection is kept (FCGI_KEEP_CONN).
    This class reads the records through a buffer, collects PARAMS before decoding
    them, runs each request inline once the records buffered behind its PARAMS are
    handled (unless the web server has abandoned it), and sends the records flup
    writes in one ``sendall`` per request.
    """

    _inputStreamClass = _DiscardedInput
    #: Record type to flup's (or our) handling method.
    _ACTIONS = {
        flup.FCGI_GET_VALUES: "_do_get_values",
        flup.FCGI_BEGIN_REQUEST: "_do_begin_request",
        flup.FCGI_ABORT_REQUEST: "_do_abort_request",
        flup.FCGI_PARAMS: "_do_params",
        flup.FCGI_STDIN: "_do_stdin",
        flup.FCGI_DATA: "_do_data",
    }

    def __init__(self, sock: socket.socket, addr: Any, responder: _Responder) -> None:
        super().__init__(sock, addr, responder, 0)
        self.fd = sock.fileno()
        self.closed = False
        self.opened_at = time.monotonic()
        self._fresh = True
        self._keepGoing = True
        self._reader = _RecordReader(sock)
        self._pending: list[bytes | memoryview] = []
        #: A request whose parameters are complete, waiting for the records behind them.
        self._ready: _Request | None = None

    def fileno(self) -> int:
        return self.fd

    def has_input(self) -> bool:
        """Whether a record is waiting, buffered here or in the kernel."""
        return bool(self._reader.buffered) or self.wait_input(0.0)

    def wait_input(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for the socket to become readable."""
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        return bool(poller.poll(max(0.0, seconds) * 1000.0))

    @property
    def fresh(self) -> bool:
        """No record received yet on this connection."""
        return self._fresh

    def pump(self) -> None:
        """Handle records until no request is half-received and nothing is buffered.

        Called when the socket is readable.  Blocking reads are bounded by the socket
        timeout; any read or write failure closes the connection.
        """
        try:
            while self._keepGoing:
                rec = self._reader.read()
                self._fresh = False
                self._handle(rec)
                if self._ready is not None and not self._follows_ready():
                    self._run_ready()
                if not self._requests and not self._reader.buffered:
                    return
        except EOFError:
            error = self._reader.error
            if error is not None:
                log.warning("closing connection from %s: %s", self.peer(), _reason(error))
            self.close(linger=False)
        except OSError as exc:
            log.warning("closing connection from %s: %s", self.peer(), _reason(exc))
            self.close(linger=False)
        except (_ProtocolError, ValueError, IndexError, struct.error) as exc:  # malformed
            log.warning("closing connection from %s: invalid FastCGI data (%s)", self.peer(),
                        exc or type(exc).__name__)
            self.close(linger=False)

    def _handle(self, rec: Any) -> None:
        action = self._ACTIONS.get(rec.type)
        if action is not None:
            getattr(self, action)(rec)
        elif rec.requestId == flup.FCGI_NULL_REQUEST_ID:
            self._do_unknown_type(rec)
        self._flush()

    def _do_params(self, inrec: Any) -> None:
        """Collect the FCGI_PARAMS stream and decode it once it is complete.

        flup decodes each record on its own, which breaks a name-value pair that
        spans two records (any value longer than a record can hold does).
        """
        req = self._requests.get(inrec.requestId)
        if req is None:
            return
        if inrec.contentLength:
            req.params_size += inrec.contentLength
            if req.params_size > MAX_PARAMS_BYTES:
                raise _ProtocolError("FCGI_PARAMS longer than %d bytes" % MAX_PARAMS_BYTES)
            req.params_data.append(inrec.contentData)
            return
        data = b"".join(req.params_data)
        req.params_data.clear()
        # CGI parameters are bytes; surrogate escapes keep every byte of a value (a raw
        # UTF-8 path in QUERY_STRING round-trips to the file system unchanged)
        req.params.update(decode_params(data))
        self._ready = req

    def _do_abort_request(self, inrec: Any) -> None:
        """FCGI_ABORT_REQUEST for a request not started yet (still receiving its
        parameters, or complete with the abort right behind them): end it unrun."""
        req = self._requests.get(inrec.requestId)
        if req is not None:
            if self._ready is req:
                self._ready = None
            self.server.skip(req.params, "FCGI_ABORT_REQUEST")
            self.end_request(req)

    def _follows_ready(self) -> bool:
        """Whether the next record is buffered and belongs to the request about to run
        (its FCGI_STDIN, FCGI_DATA or an FCGI_ABORT_REQUEST): handle it first."""
        assert self._ready is not None
        nxt = self._reader.next_record()
        return nxt is not None and nxt[1] == self._ready.requestId and nxt[0] in _FOLLOWERS

    def _run_ready(self) -> None:
        """Run the request whose parameters are complete, unless its peer is gone."""
        req, self._ready = self._ready, None
        if self.peer_gone():
            self.server.skip(req.params, "connection closed")
            self.close(linger=False)
            return
        self._start_request(req)

    def peer_gone(self) -> bool:
        """Whether the web server has closed the connection (FIN or reset received).

        POLLRDHUP is reported as soon as the peer's FIN has arrived, even while the
        request's own bytes are still unread; no web server half-closes a FastCGI
        connection it still expects an answer on.
        """
        poller = select.poll()
        poller.register(self.fd, _GONE)
        return any(events & _GONE for _, events in poller.poll(0))

    def _start_request(self, req: _Request) -> None:
        """Run a request (its FCGI_PARAMS stream is complete) and queue its answer."""
        responder: _Responder = self.server
        if req.role != flup.FCGI_RESPONDER:
            self.end_request(req, 0, flup.FCGI_UNKNOWN_ROLE)
            return
        try:
            body = responder.respond(req.params)
            self._pending.extend(stdout_records(req.requestId, body))
            self.end_request(req)
        finally:
            responder.ctx.request_done()

    def writeRecord(self, rec: Any) -> None:  # noqa: N802 - flup's name
        """flup writes END_REQUEST, GET_VALUES_RESULT, ... here: queue them for one send."""
        self._pending.append(encode_record(rec.type, rec.requestId, rec.contentData))

    def end_request(self, req: Any, appStatus: int = 0,  # noqa: N803 - flup's names
                    protocolStatus: int = flup.FCGI_REQUEST_COMPLETE, remove: bool = True) -> None:
        super().end_request(req, appStatus, protocolStatus, remove)
        self._flush()

    def _cleanupSocket(self) -> None:  # noqa: N802 - flup's name
        """flup calls this after END_REQUEST when FCGI_KEEP_CONN is not set."""
        self._flush()
        self.close(linger=True)

    def _flush(self) -> None:
        if self._pending and not self.closed:
            data = b"".join(self._pending)
            self._pending.clear()
            self._sock.sendall(data)

    def close(self, linger: bool) -> None:
        """Close the connection; with ``linger``, first let the peer finish sending.

        Closing a socket with unread input makes the kernel send a reset, and a reset
        can make the peer drop response bytes it has not read yet.  So the write side
        is shut down first and the input drained until the peer closes (bounded by
        :data:`LINGER_SECONDS`).
        """
        if self.closed:
            return
        self.closed = True
        self._keepGoing = False
        self._pending.clear()
        if linger:
            self._drain_input()
        self._sock.close()

    def _drain_input(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + LINGER_SECONDS
            while (remaining := deadline - time.monotonic()) > 0:
                self._sock.settimeout(remaining)
                if not self._sock.recv(65536):
                    break
        except OSError:
            pass

    def peer(self) -> str:
        addr = self._addr
        if isinstance(addr, tuple) and len(addr) >= 2:
            return "%s:%d" % (addr[0], addr[1])
        return "unix socket"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


# ---- the worker loop ------------------------------------------------------------------


class _Worker:
    """Accept connections and answer their requests, one at a time, until told to stop."""

    def __init__(self, listener: socket.socket, handler: Handler, settings: Any,
                 ctx: WorkerContext, recorder: metrics.Recorder | None = None) -> None:
        self._listener = listener
        self._ctx = ctx
        self._responder = _Responder(handler, ctx, recorder)
        self._allowed = sockets.allowed_peers(settings.fcgi_web_server_addrs or "")
        # Shorter than the supervisor's timeout: a stalled peer costs its connection,
        # not the whole worker.
        self._io_timeout = max(0.5, float(settings.timeout) / 2.0)
        self._conns: dict[int, _Connection] = {}

    def run(self) -> None:
        self._listener.setblocking(False)
        try:
            while self._ctx.alive:
                self._expire_silent_connections()
                watched: list[Any] = list(self._conns.values())
                if self._may_accept():
                    watched.append(self._listener)
                for ready in self._ctx.wait(watched):
                    if ready is not self._listener:
                        self._pump(ready)
                    elif self._ctx.alive:
                        self._accept()
            self._finish_pending()
        finally:
            for conn in list(self._conns.values()):
                conn.close(linger=conn.has_input())
            self._conns.clear()

    def _may_accept(self) -> bool:
        """Accept only with room left and no accepted connection still awaiting its
        first request: a worker that took several new connections at once would
        serve them one after the other while other workers sit idle."""
        return (len(self._conns) < MAX_CONNECTIONS_PER_WORKER
                and not any(conn.fresh for conn in self._conns.values()))

    def _expire_silent_connections(self) -> None:
        """Close new connections that sent nothing within the I/O timeout."""
        limit = time.monotonic() - self._io_timeout
        for conn in list(self._conns.values()):
            if conn.fresh and conn.opened_at < limit:
                log.info("closing connection from %s: no request within %g s",
                         conn.peer(), self._io_timeout)
                conn.close(linger=False)
                self._conns.pop(conn.fd, None)

    def _accept(self) -> None:
        accepted = sockets.accept(self._listener, self._allowed)
        if accepted is None:
            return
        sock, addr = accepted
        sock.settimeout(self._io_timeout)
        conn = _Connection(sock, addr, self._responder)
        self._conns[conn.fd] = conn

    def _pump(self, conn: _Connection) -> None:
        conn.pump()
        if conn.closed:
            self._conns.pop(conn.fd, None)

    def _finish_pending(self) -> None:
        """On the way out: answer the requests already sent to this worker.

        A connection accepted just before the stop signal gets a short grace to send
        its first request; an idle kept-alive connection is closed at once.
        """
        grace_end = time.monotonic() + FIRST_REQUEST_GRACE
        for conn in list(self._conns.values()):
            if conn.has_input() or (conn.fresh and conn.wait_input(grace_end - time.monotonic())):
                self._pump(conn)


def _worker_job(handler_factory: HandlerFactory, settings: Any,
                board: metrics.MetricsBoard | None,
                listener: socket.socket, ctx: WorkerContext) -> None:
    """The job run by each worker: build the handler (the boot phase), then serve."""
    handler = handler_factory()
    if getattr(handler, "heartbeat", False) is None:
        # long work inside one request (a pyramid build) proves the worker is alive
        handler.heartbeat = ctx.notify
    recorder = metrics.recorder(board, ctx.slot)
    if getattr(handler, "metrics", False) is None:
        handler.metrics = recorder  # the handler records its requests there
    ctx.ready()
    _Worker(listener, handler, settings, ctx, recorder).run()


def serve(handler_factory: HandlerFactory, settings: Any, sock: socket.socket) -> None:
    """Serve FastCGI on ``sock`` with a pool of ``settings.workers`` processes.

    Each worker calls ``handler_factory()`` once after the fork, then
    ``handler(params) -> bytes`` for every request; the bytes are the complete CGI
    output (header lines, blank line, body).  Returns after SIGTERM/SIGINT once
    every worker has finished; exits with status 3 if a worker cannot boot.

    With ``settings.metrics_bind`` the master also serves ``/metrics`` and
    ``/healthz`` there (:mod:`iipy.server.metrics`); if that address cannot be bound,
    ``metrics: <reason>`` goes to stderr and the process exits with status 1.
    SIGUSR1 reopens LOGFILE in the master and in every worker.
    """
    board = metrics.MetricsBoard(Supervisor.capacity) if settings.metrics_bind else None
    job = functools.partial(_worker_job, handler_factory, settings, board)
    supervisor = Supervisor(job, settings, reopen_logs=logsetup.reopen)
    exporter = None
    if board is not None:
        try:
            exporter = metrics.Exporter(settings.metrics_bind, board, supervisor)
        except (OSError, ValueError, OverflowError) as exc:
            board.close()
            _fail("metrics: %s" % (getattr(exc, "strerror", None) or exc), 1)
        exporter.start()
    try:
        status = supervisor.run(sock)
    finally:
        if exporter is not None:
            exporter.close()
        if board is not None:
            board.close()
    if status:
        sys.exit(status)
