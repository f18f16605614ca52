"""The flup 1.0.3 behaviours iipy relies on or works around (ARCHITECTURE.md, "flup").

iipy.server.fcgi uses flup only for the FastCGI record layer: ``Record.read``,
``decode_pair``, and ``Connection``'s record bookkeeping, with our own reading,
writing and request running.  Each test pins one of those facts, so that a flup
upgrade that changes one fails here rather than in production.  The last section
drives iipy's connection class over a socketpair, in-process.
"""

from __future__ import annotations

import importlib.metadata
import logging
import socket
import struct
import threading

import pytest
from flup.server import fcgi_base as flup

from iipy.server import fcgi
from tests import fcgiclient as fc

END_REQUEST_COMPLETE = b"\x01\x03\x00\x01\x00\x08\x00\x00" + b"\x00" * 8


def test_flup_version_is_pinned():
    assert importlib.metadata.version("flup") == "1.0.3"


# ---- record parsing ---------------------------------------------------------------------


class _Chunks:
    """A socket stand-in whose recv() returns at most ``step`` bytes: Record.read must
    loop until it has a whole header, content and padding.  Besides recv(), Record.read
    only calls fileno() (for a debug message); iipy's buffered reader provides both."""

    def __init__(self, data: bytes, step: int = 3) -> None:
        self.data = data
        self.step = step
        self.calls = 0

    def fileno(self) -> int:
        return -1

    def recv(self, n: int) -> bytes:
        self.calls += 1
        chunk, self.data = self.data[:min(n, self.step)], self.data[min(n, self.step):]
        return chunk


def test_record_read_needs_only_recv_and_reassembles_short_reads():
    data = fc.record(fc.PARAMS, 7, b"x" * 13)  # 13 bytes of content, 3 of padding
    source = _Chunks(data + b"rest")
    rec = flup.Record()
    rec.read(source)
    assert (rec.version, rec.type, rec.requestId, rec.contentLength, rec.paddingLength) == (
        1, fc.PARAMS, 7, 13, 3)
    assert rec.contentData == b"x" * 13
    assert source.data == b"rest"  # padding consumed, nothing more


def test_record_read_turns_eof_and_errors_into_eoferror():
    with pytest.raises(EOFError):
        flup.Record().read(_Chunks(b""))
    with pytest.raises(EOFError):  # truncated content
        flup.Record().read(_Chunks(fc.record(fc.STDIN, 1, b"abcdef")[:10]))

    class Failing:
        def fileno(self):
            return -1

        def recv(self, n):
            raise ConnectionResetError(104, "Connection reset by peer")

    with pytest.raises(EOFError):  # which is why iipy's reader keeps the real error
        flup.Record().read(Failing())


@pytest.mark.parametrize("name_len, value_len",
                         [(1, 0), (127, 127), (128, 1), (5, 128), (300, 70000)])
def test_decode_pair_short_and_long_lengths(name_len, value_len):
    name, value = b"N" * name_len, b"v" * value_len
    encoded = fc.encode_params({name.decode(): value.decode()})
    pos, (got_name, got_value) = flup.decode_pair(encoded, 0)
    assert (pos, got_name, got_value) == (len(encoded), name, value)
    # the 4-byte form is used from 128 bytes on, with the top bit set
    assert len(encoded) == name_len + value_len + (4 if name_len > 127 else 1) + (
        4 if value_len > 127 else 1)


def test_encode_pair_matches_our_client():
    assert flup.encode_pair(b"A" * 200, b"b") == fc.encode_params({"A" * 200: "b"})


# ---- record writing -----------------------------------------------------------------------


def _flup_record_bytes(rec_type: int, request_id: int, content: bytes) -> bytes:
    a, b = socket.socketpair()
    with a, b:
        rec = flup.Record(rec_type, request_id)
        rec.contentData = content
        rec.contentLength = len(content)
        rec.write(a)
        a.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := b.recv(65536):
            out += chunk
    return out


@pytest.mark.parametrize("content", [b"", b"a", b"12345678", b"x" * 1001])
def test_our_record_encoding_is_flups(content):
    assert fcgi.encode_record(fc.STDOUT, 3, content) == _flup_record_bytes(fc.STDOUT, 3, content)


def test_end_request_body_bytes():
    body = struct.pack(flup.FCGI_EndRequestBody, 0, flup.FCGI_REQUEST_COMPLETE)
    assert _flup_record_bytes(flup.FCGI_END_REQUEST, 1, body) == END_REQUEST_COMPLETE
    assert fcgi.encode_record(flup.FCGI_END_REQUEST, 1, body) == END_REQUEST_COMPLETE


def test_flup_output_stream_splits_at_8k_which_we_avoid():
    """flup's OutputStream writes records of maxwrite - 8 = 8184 bytes, one send per
    piece; iipy frames the response itself in 65528-byte records and one sendall."""
    assert flup.BaseFCGIServer.maxwrite == 8192
    pieces = fcgi.stdout_records(1, b"z" * 70000)
    data = b"".join(pieces)
    reader = fc.RecordReader(_SocketLike(data))
    lengths = []
    while True:
        rec = reader.read()
        lengths.append(len(rec.content))
        if not rec.content:
            break
    assert lengths == [fcgi.MAX_RECORD_CONTENT, 70000 - fcgi.MAX_RECORD_CONTENT, 0]


class _SocketLike:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def fileno(self) -> int:
        return -1

    def recv(self, n: int) -> bytes:
        chunk, self.data = self.data[:n], self.data[n:]
        return chunk


# ---- Connection bookkeeping -----------------------------------------------------------------


class _Server:
    """The ``server`` attributes flup's Connection uses."""

    def __init__(self, capability=None):
        self.capability = capability or {}
        self.made = []

    def request_class(self, conn, input_stream_class, timeout):
        req = _Req()
        self.made.append((conn, input_stream_class, timeout))
        return req


class _Req:
    def __init__(self):
        self.params = {}
        self.stdin = _Sink()
        self.data = _Sink()


class _Sink:
    def __init__(self):
        self.chunks = []

    def add_data(self, data):
        self.chunks.append(data)


class _RecordingConnection(flup.Connection):
    def __init__(self, server):
        super().__init__(None, None, server, 0)
        self.written = []
        self.started = []
        self.cleaned = 0

    def writeRecord(self, rec):
        self.written.append((rec.type, rec.requestId, rec.contentData))

    def _cleanupSocket(self):
        self.cleaned += 1
        # the END_REQUEST record is written before the socket is cleaned up
        assert self.written and self.written[-1][0] == flup.FCGI_END_REQUEST

    def _start_request(self, req):
        self.started.append(req)


def _rec(rec_type, request_id, content=b""):
    rec = flup.Record(rec_type, request_id)
    rec.contentData = content
    rec.contentLength = len(content)
    return rec


def _begin(request_id=1, flags=0, role=flup.FCGI_RESPONDER):
    return _rec(flup.FCGI_BEGIN_REQUEST, request_id, struct.pack("!HB5x", role, flags))


def test_begin_request_records_id_role_flags_and_builds_request_via_server():
    server = _Server()
    conn = _RecordingConnection(server)
    conn._do_begin_request(_begin(5, flup.FCGI_KEEP_CONN, flup.FCGI_AUTHORIZER))
    req = conn._requests[5]
    assert (req.requestId, req.role, req.flags, req.aborted) == (5, flup.FCGI_AUTHORIZER, 1, False)
    assert server.made == [(conn, conn._inputStreamClass, 0)]


def test_params_are_decoded_record_by_record_so_split_pairs_break():
    """Worked around: flup decodes each FCGI_PARAMS record on its own, so a pair that
    spans two records (any value over 64 KiB does) raises.  iipy.server.fcgi collects the
    stream and decodes it with decode_pair once complete."""
    conn = _RecordingConnection(_Server())
    conn._do_begin_request(_begin())
    encoded = fc.encode_params({"QUERY_STRING": "a=1", "X" * 130: b"\xe9" * 200})
    conn._do_params(_rec(flup.FCGI_PARAMS, 1, encoded))
    assert conn.started == []
    conn._do_params(_rec(flup.FCGI_PARAMS, 1))
    (req,) = conn.started
    assert req.params == {"QUERY_STRING": "a=1", "X" * 130: "\xe9" * 200}  # flup: Latin-1

    conn = _RecordingConnection(_Server())
    conn._do_begin_request(_begin())
    with pytest.raises(IndexError):
        conn._do_params(_rec(flup.FCGI_PARAMS, 1, encoded[:1]))  # cut after a length byte

    conn = _RecordingConnection(_Server())
    conn._do_begin_request(_begin())
    conn._do_params(_rec(flup.FCGI_PARAMS, 1, encoded[:135]))  # cut inside a name: no error...
    assert conn._requests[1].params["QUERY_STRING"] == "a=1"
    assert "X" * 130 not in conn._requests[1].params  # ...but a truncated name instead


def test_stdin_goes_to_request_and_unknown_ids_are_ignored():
    conn = _RecordingConnection(_Server())
    conn._do_begin_request(_begin())
    conn._do_stdin(_rec(flup.FCGI_STDIN, 1, b"body"))
    conn._do_stdin(_rec(flup.FCGI_STDIN, 9, b"stray"))  # e.g. the tail of a finished request
    assert conn._requests[1].stdin.chunks == [b"body"]


def test_end_request_without_keep_conn_cleans_up_after_writing_end_record():
    conn = _RecordingConnection(_Server())
    conn._do_begin_request(_begin(1, 0))
    conn._keepGoing = True
    conn.end_request(conn._requests[1])
    assert conn.written == [(flup.FCGI_END_REQUEST, 1, END_REQUEST_COMPLETE[8:])]
    assert conn.cleaned == 1 and conn._keepGoing is False and conn._requests == {}


def test_end_request_with_keep_conn_keeps_the_connection():
    conn = _RecordingConnection(_Server())
    conn._do_begin_request(_begin(1, flup.FCGI_KEEP_CONN))
    conn._keepGoing = True
    conn.end_request(conn._requests[1])
    assert conn.cleaned == 0 and conn._keepGoing is True and conn._requests == {}


def test_second_begin_on_busy_connection_is_refused_cant_mpx():
    conn = _RecordingConnection(_Server())
    conn._do_begin_request(_begin(1, flup.FCGI_KEEP_CONN))
    conn._do_begin_request(_begin(2, flup.FCGI_KEEP_CONN))
    refusal = struct.pack("!LB3x", 0, flup.FCGI_CANT_MPX_CONN)
    assert conn.written == [(flup.FCGI_END_REQUEST, 2, refusal)]
    assert list(conn._requests) == [1]


def test_get_values_looks_names_up_as_bytes():
    """flup's own capability dict has str keys, so on Python 3 it never answers;
    iipy's has bytes keys."""
    names = fc.encode_params({"FCGI_MPXS_CONNS": "", "FCGI_MAX_CONNS": ""})
    query = _rec(flup.FCGI_GET_VALUES, 0, names)
    conn = _RecordingConnection(_Server({flup.FCGI_MPXS_CONNS: 0}))
    conn._do_get_values(query)
    assert conn.written == [(flup.FCGI_GET_VALUES_RESULT, 0, b"")]

    conn = _RecordingConnection(_Server(fcgi.CAPABILITIES))
    conn._do_get_values(query)
    ((rec_type, _, content),) = conn.written
    assert rec_type == flup.FCGI_GET_VALUES_RESULT
    assert fc.decode_params(content) == {b"FCGI_MPXS_CONNS": b"0", b"FCGI_MAX_CONNS": b"1"}


def test_unknown_management_record_gets_unknown_type():
    conn = _RecordingConnection(_Server())
    conn._do_unknown_type(_rec(42, 0))
    assert conn.written == [(flup.FCGI_UNKNOWN_TYPE, 0, bytes([42]) + bytes(7))]


def test_flup_request_run_would_send_traceback_to_stderr():
    """Worked around: iipy never uses flup's Request.run, which puts the traceback on
    FCGI_STDERR (nginx's error log) and an HTML page on FCGI_STDOUT."""

    class Boom:
        def handler(self, req):
            raise RuntimeError("secret detail")

        def error(self, req):
            flup.BaseFCGIServer.error(self, req)

        debug = False
        maxwrite = 8192

    written = []

    class Conn:
        server = Boom()

        def writeRecord(self, rec):
            written.append((rec.type, rec.contentData))

        def end_request(self, req, app, proto):
            written.append(("end", app, proto))

    conn = Conn()
    conn.server.inputStreamShrinkThreshold = 1024
    req = flup.Request(conn, flup.InputStream, 0)
    req.requestId = 1
    req.run()
    stderr = b"".join(c for t, *rest in written if t == flup.FCGI_STDERR for c in rest)
    stdout = b"".join(c for t, *rest in written if t == flup.FCGI_STDOUT for c in rest)
    assert b"secret detail" in stderr
    assert stdout.startswith(b"Status: 500 Internal Server Error\r\nContent-Type: text/html")


# ---- iipy's connection on top of flup, over a socketpair ----------------------------------


class _Ctx:
    def __init__(self):
        self.requests = 0
        self.abandoned = 0
        self.beats = 0

    def notify(self):
        self.beats += 1

    def request_done(self):
        self.requests += 1

    def request_abandoned(self):
        self.abandoned += 1


def _serve_pair(handler, client_bytes: bytes, *, hang_up_first=False):
    """Feed ``client_bytes`` to an iipy connection; return (all server output, ctx).

    Like a web server, the client reads the answers and closes its side when the
    server closes its own, or once the server has read everything (kept connections);
    with ``hang_up_first`` it closes its sending side right after sending, as a web
    server whose client went away.
    """
    ours, theirs = socket.socketpair()
    ctx = _Ctx()
    conn = fcgi._Connection(ours, "", fcgi._Responder(handler, ctx))
    out = bytearray()

    def read_answers():
        try:
            while chunk := theirs.recv(65536):
                out.extend(chunk)
        except OSError:
            pass
        _hang_up(theirs)

    theirs.sendall(client_bytes)
    if hang_up_first:
        _hang_up(theirs)
    reader = threading.Thread(target=read_answers)
    reader.start()
    ours.settimeout(2)
    while not conn.closed and conn.has_input():
        conn.pump()
    _hang_up(theirs)
    while not conn.closed and conn.wait_input(2):
        conn.pump()
    if not conn.closed:
        conn.close(linger=False)
    reader.join(5)
    theirs.close()
    return bytes(out), ctx


def _hang_up(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _records(data: bytes) -> list[fc.Record]:
    reader = fc.RecordReader(_SocketLike(data))
    out = []
    while reader.sock.data:
        out.append(reader.read())
    return out


def test_iipy_connection_keep_conn_two_requests_and_stdin_ignored():
    seen = []

    def handler(params):
        seen.append(params)
        return b"Content-Type: text/plain\r\n\r\n" + params["QUERY_STRING"].encode()

    data = (fc.request_bytes({"QUERY_STRING": "one"}, stdin=b"ignored body" * 10000, keep_conn=True)
            + fc.request_bytes({"QUERY_STRING": "two"}, keep_conn=True))
    out, ctx = _serve_pair(handler, data)
    recs = _records(out)
    assert [(r.type, r.content) for r in recs] == [
        (fc.STDOUT, b"Content-Type: text/plain\r\n\r\none"), (fc.STDOUT, b""),
        (fc.END_REQUEST, bytes(8)),
        (fc.STDOUT, b"Content-Type: text/plain\r\n\r\ntwo"), (fc.STDOUT, b""),
        (fc.END_REQUEST, bytes(8)),
    ]
    assert [p["QUERY_STRING"] for p in seen] == ["one", "two"]
    assert ctx.requests == 2 and ctx.beats == 2


def test_iipy_connection_handler_error_is_generic_500_without_stderr(caplog):
    def handler(params):
        raise ValueError("do not leak this")

    out, _ = _serve_pair(handler, fc.request_bytes({"QUERY_STRING": "x"}))
    recs = _records(out)
    assert all(r.type != fc.STDERR for r in recs)
    assert b"".join(r.content for r in recs if r.type == fc.STDOUT) == fcgi.INTERNAL_ERROR
    assert recs[-1].type == fc.END_REQUEST and recs[-1].content == bytes(8)
    assert out.endswith(END_REQUEST_COMPLETE)
    (logged,) = [r for r in caplog.records if r.exc_info]  # the traceback is logged once
    assert "do not leak this" in str(logged.exc_info[1])
    assert b"leak" not in out


def test_iipy_connection_unknown_role_and_get_values():
    data = (fc.begin_request(1, keep_conn=True, role=2) + fc.stream(fc.PARAMS, 1, b"")
            + fc.record(fc.GET_VALUES, 0, fc.encode_params({"FCGI_MAX_REQS": ""})))
    out, ctx = _serve_pair(lambda p: b"unused", data)
    recs = _records(out)
    unknown_role = struct.pack("!IB3x", 0, flup.FCGI_UNKNOWN_ROLE)
    assert (recs[0].type, recs[0].content) == (fc.END_REQUEST, unknown_role)
    assert recs[1].type == fc.GET_VALUES_RESULT
    assert fc.decode_params(recs[1].content) == {b"FCGI_MAX_REQS": b"1"}
    assert ctx.requests == 0


def test_iipy_connection_decodes_params_split_across_records():
    seen = []

    def handler(params):
        seen.append(params)
        return b"\r\n"

    encoded = fc.encode_params({"QUERY_STRING": "q", "BIG": "v" * 100000})
    data = (fc.begin_request(1) + fc.stream(fc.PARAMS, 1, encoded, chunk=1000)
            + fc.stream(fc.STDIN, 1, b""))
    out, ctx = _serve_pair(handler, data)
    assert seen == [{"QUERY_STRING": "q", "BIG": "v" * 100000}]
    assert out.endswith(END_REQUEST_COMPLETE)


def test_iipy_connection_closes_on_malformed_params(caplog):
    data = fc.begin_request(1) + fc.record(fc.PARAMS, 1, b"\x05") + fc.record(fc.PARAMS, 1)
    out, ctx = _serve_pair(lambda p: b"unused", data)
    assert out == b"" and ctx.requests == 0
    assert "invalid FastCGI data" in caplog.text


def _echo(seen):
    def handler(params):
        seen.append(params["QUERY_STRING"])
        return b"Content-Type: text/plain\r\n\r\n" + params["QUERY_STRING"].encode()
    return handler


def test_iipy_connection_skips_a_request_whose_web_server_hung_up(caplog):
    """A request followed by the end of the connection (nginx closing the upstream
    connection when its client went away) is never run: no handler call, no answer."""
    caplog.set_level(logging.DEBUG, logger="iipy.server.fcgi")
    seen = []
    out, ctx = _serve_pair(_echo(seen), fc.request_bytes({"QUERY_STRING": "gone"}),
                           hang_up_first=True)
    assert seen == [] and out == b""
    assert (ctx.abandoned, ctx.requests) == (1, 0)
    assert "skipped a request abandoned by the web server (connection closed; 1 so far): " \
           "'gone'" in caplog.text


def test_iipy_connection_skips_an_aborted_request_and_serves_the_next():
    """FCGI_ABORT_REQUEST right behind the parameters: END_REQUEST without output, the
    kept connection serves the next request."""
    seen = []
    data = (fc.request_bytes({"QUERY_STRING": "aborted"}, keep_conn=True)
            + fc.record(fc.ABORT_REQUEST, 1)
            + fc.request_bytes({"QUERY_STRING": "next"}, keep_conn=True))
    out, ctx = _serve_pair(_echo(seen), data)
    assert seen == ["next"]
    assert [(r.type, r.content) for r in _records(out)] == [
        (fc.END_REQUEST, bytes(8)),
        (fc.STDOUT, b"Content-Type: text/plain\r\n\r\nnext"), (fc.STDOUT, b""),
        (fc.END_REQUEST, bytes(8)),
    ]
    assert (ctx.abandoned, ctx.requests) == (1, 1)


def test_iipy_connection_skips_a_request_aborted_before_its_parameters_ended():
    seen = []
    params = fc.encode_params({"QUERY_STRING": "partial"})
    data = (fc.begin_request(1) + fc.record(fc.PARAMS, 1, params)
            + fc.record(fc.ABORT_REQUEST, 1))
    out, ctx = _serve_pair(_echo(seen), data)
    assert seen == []
    assert [(r.type, r.content) for r in _records(out)] == [(fc.END_REQUEST, bytes(8))]
    assert (ctx.abandoned, ctx.requests) == (1, 0)


def test_iipy_connection_runs_pipelined_requests_in_order():
    """Requests sent back to back on a kept connection all run, in order (the records
    of the next request are not read before the current one has run)."""
    seen = []
    data = b"".join(fc.request_bytes({"QUERY_STRING": "q%d" % i}, keep_conn=True)
                    for i in range(5))
    out, ctx = _serve_pair(_echo(seen), data)
    assert seen == ["q0", "q1", "q2", "q3", "q4"]
    assert [r.type for r in _records(out)].count(fc.END_REQUEST) == 5
    assert (ctx.abandoned, ctx.requests) == (0, 5)


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "reset"])
def test_iipy_connection_over_tcp_sees_a_closed_or_reset_peer(reset):
    """Over TCP the request bytes stay readable after the peer's FIN or reset; the
    connection still notices the peer is gone before running the request."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    ours, _ = listener.accept()
    listener.close()
    client.sendall(fc.request_bytes({"QUERY_STRING": "gone"}))
    if reset:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    ctx, seen = _Ctx(), []
    conn = fcgi._Connection(ours, ("127.0.0.1", 1), fcgi._Responder(_echo(seen), ctx))
    ours.settimeout(2)
    assert conn.wait_input(2)
    conn.pump()
    assert conn.closed and seen == [] and (ctx.abandoned, ctx.requests) == (1, 0)


def test_worker_gives_the_handler_its_heartbeat():
    """A handler with a ``heartbeat`` attribute set to None (iipy's Application) gets the
    worker's heartbeat before the worker reports ready."""
    from iipy.server import fcgi

    class Handler:
        heartbeat = None

        def __call__(self, params):
            return b""

    class Ready(Exception):
        pass

    class Ctx:
        slot = 0

        def notify(self):
            pass

        def ready(self):
            raise Ready

    handler, ctx = Handler(), Ctx()
    with pytest.raises(Ready):
        fcgi._worker_job(lambda: handler, None, None, None, ctx)  # no metrics board
    assert handler.heartbeat == ctx.notify
