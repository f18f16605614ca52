"""A small FastCGI client for the tests (standard library only).

It speaks to the server the way nginx does: request id 1, FCGI_RESPONDER, the
parameters, the (possibly empty) FCGI_STDIN stream, and optionally FCGI_KEEP_CONN
to reuse the connection for the next request.  It is written independently of
flup so that the tests do not check flup against itself.
"""

from __future__ import annotations

import socket
import struct
from typing import Mapping

VERSION = 1
BEGIN_REQUEST = 1
ABORT_REQUEST = 2
END_REQUEST = 3
PARAMS = 4
STDIN = 5
STDOUT = 6
STDERR = 7
DATA = 8
GET_VALUES = 9
GET_VALUES_RESULT = 10
UNKNOWN_TYPE = 11

RESPONDER = 1
KEEP_CONN = 1
REQUEST_COMPLETE = 0

_HEADER = struct.Struct("!BBHHBx")
_MAX_CONTENT = 65535


class ProtocolError(Exception):
    """The server sent something a FastCGI client cannot accept."""


def record(rec_type: int, request_id: int, content: bytes = b"", pad: bool = True) -> bytes:
    """Encode one record (content up to 65535 bytes), padded to 8 bytes if ``pad``."""
    if len(content) > _MAX_CONTENT:
        raise ValueError("record content too long")
    padding = -len(content) & 7 if pad else 0
    header = _HEADER.pack(VERSION, rec_type, request_id, len(content), padding)
    return header + content + bytes(padding)


def stream(rec_type: int, request_id: int, data: bytes, chunk: int = _MAX_CONTENT) -> bytes:
    """A whole stream: records of at most ``chunk`` bytes, then the empty record."""
    out = [record(rec_type, request_id, data[i:i + chunk]) for i in range(0, len(data), chunk)]
    out.append(record(rec_type, request_id))
    return b"".join(out)


def encode_length(n: int) -> bytes:
    return bytes([n]) if n < 128 else struct.pack("!I", n | 0x80000000)


def encode_params(params: Mapping[str, str | bytes]) -> bytes:
    """Name-value pairs; str values are sent as UTF-8 (surrogate escapes give back any
    byte), as web servers pass the raw bytes of the request."""
    out = []
    for name, value in params.items():
        n = name.encode("latin-1")
        v = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
        out.append(encode_length(len(n)) + encode_length(len(v)) + n + v)
    return b"".join(out)


def decode_params(data: bytes) -> dict[bytes, bytes]:
    pairs = {}
    pos = 0
    while pos < len(data):
        lengths = []
        for _ in range(2):
            if data[pos] & 0x80:
                lengths.append(struct.unpack("!I", data[pos:pos + 4])[0] & 0x7FFFFFFF)
                pos += 4
            else:
                lengths.append(data[pos])
                pos += 1
        name = data[pos:pos + lengths[0]]
        pos += lengths[0]
        pairs[name] = data[pos:pos + lengths[1]]
        pos += lengths[1]
    return pairs


def begin_request(request_id: int = 1, keep_conn: bool = False, role: int = RESPONDER) -> bytes:
    body = struct.pack("!HB5x", role, KEEP_CONN if keep_conn else 0)
    return record(BEGIN_REQUEST, request_id, body)


def request_bytes(params: Mapping[str, str | bytes], stdin: bytes = b"", keep_conn: bool = False,
                  request_id: int = 1) -> bytes:
    """Every record of one request, as nginx sends them."""
    return (begin_request(request_id, keep_conn)
            + stream(PARAMS, request_id, encode_params(params))
            + stream(STDIN, request_id, stdin))


class Record:
    __slots__ = ("type", "request_id", "content")

    def __init__(self, rec_type: int, request_id: int, content: bytes) -> None:
        self.type = rec_type
        self.request_id = request_id
        self.content = content

    def __repr__(self) -> str:
        return "Record(type=%d, id=%d, %d bytes)" % (self.type, self.request_id, len(self.content))


class RecordReader:
    """Reads records from a socket and keeps the raw bytes seen (for exact-byte checks)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.raw = bytearray()

    def _exactly(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError("connection closed after %d of %d bytes" % (len(buf), n))
            buf += chunk
        self.raw += buf
        return bytes(buf)

    def read(self) -> Record:
        version, rec_type, request_id, length, padding = _HEADER.unpack(self._exactly(8))
        if version != VERSION:
            raise ProtocolError("bad version %d" % version)
        content = self._exactly(length) if length else b""
        if padding:
            self._exactly(padding)
        return Record(rec_type, request_id, content)


class Response:
    """What one request produced."""

    def __init__(self) -> None:
        self.stdout = b""
        self.stderr = b""
        self.app_status: int | None = None
        self.protocol_status: int | None = None
        self.records: list[Record] = []
        self.raw = b""


class FCGIClient:
    """FastCGI client for one server address: ``(host, port)`` or a unix socket path.

    ``request()`` returns the concatenated FCGI_STDOUT content; ``last`` holds the
    whole :class:`Response` (app status, protocol status, records, raw bytes).
    With ``keep_conn=True`` the connection is left open and reused by the next call.
    """

    def __init__(self, address: tuple[str, int] | str, timeout: float = 10.0) -> None:
        self.address = address
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.last: Response | None = None
        self.connections = 0  # how many connections were opened

    # -- connection ----------------------------------------------------------------
    def connect(self) -> socket.socket:
        if self.sock is None:
            if isinstance(self.address, str):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            else:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.address)
            except BaseException:
                sock.close()
                raise
            self.sock = sock
            self.connections += 1
        return self.sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def __enter__(self) -> "FCGIClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests --------------------------------------------------------------------
    @property
    def app_status(self) -> int | None:
        return self.last.app_status if self.last else None

    @property
    def protocol_status(self) -> int | None:
        return self.last.protocol_status if self.last else None

    def request(self, params: Mapping[str, str | bytes], stdin: bytes = b"",
                keep_conn: bool = False, request_id: int = 1) -> bytes:
        """Send one request and return its FCGI_STDOUT content."""
        sock = self.connect()
        try:
            sock.sendall(request_bytes(params, stdin, keep_conn, request_id))
            response = self.read_response(request_id)
        except BaseException:
            self.close()
            raise
        if not keep_conn:
            self.close()
        return response.stdout

    def read_response(self, request_id: int = 1) -> Response:
        """Read records until FCGI_END_REQUEST for ``request_id``."""
        assert self.sock is not None
        reader = RecordReader(self.sock)
        response = Response()
        stdout, stderr = [], []
        while True:
            rec = reader.read()
            response.records.append(rec)
            if rec.request_id != request_id:
                raise ProtocolError("unexpected %r" % rec)
            if rec.type == STDOUT:
                stdout.append(rec.content)
            elif rec.type == STDERR:
                stderr.append(rec.content)
            elif rec.type == END_REQUEST:
                response.app_status, response.protocol_status = struct.unpack("!IB3x", rec.content)
                break
            else:
                raise ProtocolError("unexpected %r" % rec)
        response.stdout = b"".join(stdout)
        response.stderr = b"".join(stderr)
        response.raw = bytes(reader.raw)
        self.last = response
        return response

    def send_raw(self, data: bytes) -> None:
        self.connect().sendall(data)

    def get_values(self, names: list[str]) -> dict[str, str]:
        """FCGI_GET_VALUES on the current (or a new) connection."""
        sock = self.connect()
        sock.sendall(record(GET_VALUES, 0, encode_params({n: "" for n in names})))
        rec = RecordReader(sock).read()
        if rec.type != GET_VALUES_RESULT:
            raise ProtocolError("unexpected %r" % rec)
        pairs = decode_params(rec.content).items()
        return {k.decode("latin-1"): v.decode("latin-1") for k, v in pairs}


def split_cgi(raw: bytes) -> tuple[list[tuple[str, str]], bytes]:
    """CGI output to ``([(name, value), ...], body)``; the header block ends at a blank line."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = raw.partition(b"\n\n")
    if not sep:
        raise ValueError("no blank line after the CGI headers")
    headers = []
    for line in head.replace(b"\r\n", b"\n").split(b"\n"):
        name, colon, value = line.partition(b":")
        if not colon:
            raise ValueError("malformed header line %r" % line)
        headers.append((name.decode("latin-1"), value.strip().decode("latin-1")))
    return headers, body
