"""Listening sockets for both front ends: binding (TCP or unix, as libfcgi reads a bind
address), the socket a web server hands over on file descriptor 0, and accepting
connections (TCP_NODELAY, FCGI_WEB_SERVER_ADDRS)."""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat

from iipy.settings import atoi

log = logging.getLogger(__name__)

#: The FastCGI specification's file descriptor of an inherited listening socket.
LISTENSOCK_FILENO = 0


class UnknownHost(Exception):
    """A bind address whose host name does not resolve to exactly one IPv4 address."""


def parse_bind_address(text: str) -> tuple[str, int] | str:
    """libfcgi's reading of a bind address: ``(host, port)`` for TCP, else a unix path.

    The text is split at its first ``:``; if what follows parses (C ``atoi``) to a
    non-zero port it is TCP, otherwise the whole text is a unix socket path.  An
    empty host or ``*`` means every interface.
    """
    host, colon, port_text = text.partition(":")
    port = atoi(port_text) if colon else 0
    if not port:
        return text
    return ("0.0.0.0" if host in ("", "*") else host), port


def bind_listener(address: str, backlog: int, socket_mode: int) -> socket.socket:
    """A listening socket on ``address`` (see :func:`parse_bind_address`); OSError on failure."""
    target = parse_bind_address(address)
    if isinstance(target, str):
        return _bind_unix(target, backlog, socket_mode)
    host, port = target
    return bind_tcp(_resolve_ipv4(host), port, backlog)


def _resolve_ipv4(host: str) -> str:
    """The one IPv4 address of ``host`` (libfcgi refuses names with several)."""
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror:
        raise UnknownHost("Unknown host: %s" % host) from None
    addresses = sorted({info[4][0] for info in infos})
    if len(addresses) != 1:
        raise UnknownHost("Host %s has %d addresses: choose one explicitly"
                           % (host, len(addresses)))
    return str(addresses[0])


def bind_tcp(ip: str, port: int, backlog: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((ip, port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def _bind_unix(path: str, backlog: int, socket_mode: int) -> socket.socket:
    """Bind a unix socket, replacing a stale one, with ``socket_mode`` permissions.

    Only an existing *socket* is removed (libfcgi unlinks whatever is there); a
    regular file at that path makes bind() fail instead of being deleted.  The mode
    is set before listen(), so nobody can connect while it is still the umask's.
    """
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, socket_mode)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def inherited_listener() -> socket.socket | None:
    """The listening socket on fd 0, or None when fd 0 is not one (CGI-only mode).

    libfcgi's test: ``getpeername()`` failing with ENOTCONN means an unconnected
    (listening) socket; a tty, a pipe, /dev/null (ENOTSOCK) or a connected socket
    do not qualify.
    """
    try:
        sock = socket.socket(fileno=LISTENSOCK_FILENO)
    except OSError:
        return None
    try:
        sock.getpeername()
    except OSError as exc:
        if exc.errno == errno.ENOTCONN and sock.type == socket.SOCK_STREAM:
            return sock
    sock.detach()  # leave fd 0 alone
    return None


def describe_local(sock: socket.socket) -> str:
    name = sock.getsockname()
    if isinstance(name, tuple):
        return "%s:%d" % (name[0], name[1])
    return "unix:%s" % (name.decode(errors="replace") if isinstance(name, bytes) else name)


def allowed_peers(text: str) -> frozenset[str]:
    """FCGI_WEB_SERVER_ADDRS: comma-separated IPv4 addresses; empty allows everyone."""
    return frozenset(part.strip() for part in text.split(",") if part.strip())


def accept(listener: socket.socket,
           allowed: frozenset[str] = frozenset()) -> tuple[socket.socket, object] | None:
    """The next connection on a non-blocking ``listener``, or None when another worker
    took it, the peer gave up, or the peer is not in ``allowed`` (closed at once).
    TCP connections get TCP_NODELAY: a response in several segments must not wait
    for a delayed ACK."""
    try:
        sock, addr = listener.accept()
    except (BlockingIOError, InterruptedError, ConnectionAbortedError):
        return None
    except OSError as exc:
        log.error("accept failed: %s", exc.strerror or exc)
        return None
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        if allowed and addr[0] not in allowed:
            log.warning("refusing connection from %s: not in FCGI_WEB_SERVER_ADDRS", addr[0])
            sock.close()
            return None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock, addr


def close(conn: socket.socket) -> None:
    """Shut down the writing side (so the peer reads the whole answer), then close."""
    try:
        conn.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    conn.close()
