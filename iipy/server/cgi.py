"""CGI output, as the request handler produces it and a web server reads it: header
lines, a blank line, the body; a ``Status:`` line gives the HTTP status."""

from __future__ import annotations

#: What the client gets when a request handler raises; the traceback only goes to the log.
INTERNAL_ERROR = (
    b"Status: 500 Internal Server Error\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: 21\r\n"
    b"\r\n"
    b"Internal Server Error"
)


def parse_cgi(raw: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    """CGI output to ``(status, headers, body)``: a ``Status:`` line becomes the HTTP
    status (200 without one) and is not sent as a header."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = raw.partition(b"\n\n")
    status = 200
    headers = []
    for line in head.decode("latin-1").splitlines():
        name, colon, value = line.partition(":")
        if not colon:
            continue
        value = value.strip()
        if name.strip().lower() == "status":
            try:
                status = int(value.split()[0])
            except (ValueError, IndexError):
                status = 500
        else:
            headers.append((name.strip(), value))
    return status, headers, body
