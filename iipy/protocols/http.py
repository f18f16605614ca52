"""Responses as iipsrv writes them: CGI header lines in iipsrv's order, a blank line,
the body (docs/protocol.md §8).

Two deliberate differences from iipsrv 1.1, both supersets: every response with a body
carries ``Content-Length`` (last, unless iipsrv already sends it), and when CORS is set
the two CORS lines are on every response, not only on the text ones.
"""

from __future__ import annotations

import datetime
import email.utils
import logging
from dataclasses import dataclass

from iipy.errors import (CompressedFile, IIPError, IIPyError, ImageNotFound, InternalRequestError,
                         InvalidArgument, NoSuchHDU, NotAnImage, NotImplementedFeature,
                         NotModified, OutOfRange, PyramidUnavailable, UnreadableImage,
                         UnsatisfiableRequest)
from iipy.settings import Settings

log = logging.getLogger(__name__)

Headers = tuple[tuple[str, str], ...]

#: The HTTP methods iipy answers (``Allow``; anything else gets 405).
ALLOWED_METHODS = "GET, HEAD, POST, OPTIONS"

ADVERT_HTML = (
    b'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
    b"<title>iipy: IIP image server</title></head><body>"
    b"<h1>iipy</h1><p>An IIP image server for FITS files, compatible with iipsrv "
    b"(IIPImage) clients.</p><p>This address answers IIP requests such as "
    b"<code>?FIF=image.fits&amp;obj=IIP,1.0&amp;obj=max-size</code>.</p></body></html>"
)


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: Headers
    body: bytes

    def to_bytes(self) -> bytes:
        """The exact bytes written to FCGI_STDOUT."""
        head = "".join("%s: %s\r\n" % hv for hv in self.headers)
        return head.encode("latin-1") + b"\r\n" + self.body

    @classmethod
    def from_bytes(cls, raw: bytes) -> "Response":
        """Inverse of ``to_bytes`` (for responses kept in a cache)."""
        head, _, body = raw.partition(b"\r\n\r\n")
        headers = tuple(tuple(line.decode("latin-1").split(": ", 1)) for line in head.split(b"\r\n"))
        status = 200
        for name, value in headers:
            if name == "Status":
                status = int(value.split()[0])
        return cls(status, headers, body)  # type: ignore[arg-type]

    def header(self, name: str) -> str | None:
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return None

    @property
    def cacheable(self) -> bool:
        return self.status == 200

    def without_body(self) -> "Response":
        """The answer to HEAD: the same headers (Content-Length still that of the full
        body), no body."""
        return Response(self.status, self.headers, b"")


def http_date(timestamp: float) -> str:
    """``Sat, 21 Nov 2026 05:31:43 GMT``."""
    return email.utils.formatdate(int(timestamp), usegmt=True)


def parse_http_date(value: str) -> float | None:
    """An If-Modified-Since value as a Unix time, or None when it cannot be read (the
    header is then ignored, docs/protocol.md §8.6)."""
    try:
        parsed = email.utils.parsedate_to_datetime(value)
        if parsed is None:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=datetime.timezone.utc)
        return parsed.timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):  # a year or an hour of
        return None  # 14 digits overflows a C int inside the time functions


class Responder:
    """Builds every kind of response for one configuration."""

    def __init__(self, settings: Settings):
        self.server = ("Server", settings.server_token)
        self.cache_control = ("Cache-Control", settings.cache_control)
        if settings.cors:
            self.cors: Headers = (
                ("Access-Control-Allow-Origin", settings.cors),
                ("Access-Control-Allow-Headers", "X-Requested-With"),
            )
        else:
            self.cors = ()

    @staticmethod
    def _finish(status: int, headers: list[tuple[str, str]], body: bytes) -> Response:
        if status != 304 and not any(k == "Content-Length" for k, _ in headers):
            headers.append(("Content-Length", str(len(body))))
        return Response(status, tuple(headers), body)

    # --- successful answers -----------------------------------------------------------

    def obj_text(self, body: bytes, mtime: float | None) -> Response:
        headers = [self.server, ("X-Powered-By", "IIPImage"), self.cache_control]
        if mtime is not None:
            headers.append(("Last-Modified", http_date(mtime)))
        headers.append(("Content-Type", "application/vnd.netfpx"))
        headers.extend(self.cors)
        return self._finish(200, headers, body)

    def tile(self, jpeg: bytes, mtime: float, content_type: str = "image/jpeg") -> Response:
        headers = [
            self.server,
            ("X-Powered-By", "IIPImage"),
            ("Content-Type", content_type),
            ("Content-Length", str(len(jpeg))),
            ("Last-Modified", http_date(mtime)),
            self.cache_control,
        ]
        headers.extend(self.cors)
        return self._finish(200, headers, jpeg)

    def export(self, data: bytes, mtime: float, filename: str,
               content_type: str = "image/jpeg") -> Response:
        headers = [
            self.server,
            ("X-Powered-By", "IIPImage"),
            self.cache_control,
            ("Last-Modified", http_date(mtime)),
            ("Content-Type", content_type),
            ("Content-Disposition", 'inline;filename="%s"' % filename),
        ]
        headers.extend(self.cors)
        return self._finish(200, headers, data)

    def document(self, body: bytes, mtime: float, content_type: str,
                 cache_control: str | None = None) -> Response:
        """PFL (JSON), SPECTRA, Zoomify and DeepZoom (XML), TIL, IIIF info.json;
        ``cache_control`` replaces CACHE_CONTROL's value."""
        headers = [self.server, ("Content-Type", content_type),
                   ("Last-Modified", http_date(mtime)),
                   self.cache_control if cache_control is None
                   else ("Cache-Control", cache_control)]
        headers.extend(self.cors)
        return self._finish(200, headers, body)

    def redirect(self, location: str) -> Response:
        """IIIF's ``303 See Other`` to an image's info.json: iipsrv 1.1's lines (Status,
        Location, Server), then the CORS lines and ``Content-Length: 0``."""
        headers = [("Status", "303 See Other"), ("Location", location), self.server]
        headers.extend(self.cors)
        return self._finish(303, headers, b"")

    # --- errors -------------------------------------------------------------------------

    def iip_error(self, errors: list[IIPError]) -> Response:
        """One ``Error/<n>:<code> <arg>`` line per error; each line is cut after 31
        characters while ``<n>`` counts the whole text (iipsrv's 32-byte buffer)."""
        body = b"".join(_error_line(exc.code, exc.argument) for exc in errors)
        headers = [self.server, ("Cache-Control", "no-cache"),
                   ("Content-Type", "application/vnd.netfpx")]
        headers.extend(self.cors)
        headers.append(("Status", "400 Bad Request"))
        headers.append(("Content-Disposition",
                        'inline;filename="IIPisAMadGameClosedToOurUnderstanding.netfpx"'))
        return self._finish(400, headers, body)

    def http_error(self, status: str, message: str) -> Response:
        headers = [("Status", status), self.server]
        headers.extend(self.cors)
        return self._finish(int(status.split()[0]), headers,
                            message.encode("utf-8", "surrogateescape"))

    def not_modified(self) -> Response:
        """iipsrv's 304 bytes; with CORS set, its two lines too (a cross-origin page's
        revalidation must pass the browser's CORS check like the first answer did)."""
        return self._finish(304, [("Status", "304 Not Modified"), self.server, *self.cors], b"")

    def preflight(self) -> Response:
        """OPTIONS (a CORS preflight): ``204 No Content``.  With CORS set, the allowed
        origin, methods and request headers, cacheable by the browser for a day;
        without, only ``Allow``: the browser then refuses the cross-origin request, as
        it would without any answer."""
        headers = [("Status", "204 No Content"), self.server, ("Allow", ALLOWED_METHODS)]
        if self.cors:
            headers += [self.cors[0],
                        ("Access-Control-Allow-Methods", ALLOWED_METHODS),
                        ("Access-Control-Allow-Headers", "X-Requested-With, If-Modified-Since"),
                        ("Access-Control-Max-Age", "86400")]
        return Response(204, tuple(headers), b"")  # 204: no Content-Length (RFC 9110)

    def method_not_allowed(self) -> Response:
        headers = [("Status", "405 Method Not Allowed"), self.server,
                   ("Allow", ALLOWED_METHODS), ("Content-Type", "text/plain")]
        headers.extend(self.cors)
        return self._finish(405, headers, b"Method Not Allowed: use %s\n"
                            % ALLOWED_METHODS.encode("ascii"))

    def advert(self) -> Response:
        headers = [self.server, ("Content-Type", "text/html"), ("Status", "400 Bad Request"),
                   ("Content-Disposition", 'inline;filename="iipsrv.html"')]
        headers.extend(self.cors)
        return self._finish(400, headers, ADVERT_HTML)

    def internal_error(self) -> Response:
        headers = [("Status", "500 Internal Server Error"), self.server,
                   ("Content-Type", "text/plain")]
        headers.extend(self.cors)
        return self._finish(500, headers, b"Internal Server Error")


def _error_line(code: str, arg: str) -> bytes:
    text = "%s %s" % (code, arg)
    raw = text.encode("utf-8", "surrogateescape")
    line = b"Error/%d:" % len(raw) + raw
    return line[:31] + b"\r\n"


# ---- the error table ------------------------------------------------------------------

#: Status of each error class answered with a short text (file errors are 404s, as every
#: read failure is in iipsrv; argument errors 400s).  Looked up along the class's MRO.
ERROR_STATUS: dict[type[IIPyError], str] = {
    ImageNotFound: "404 Not Found",
    NoSuchHDU: "404 Not Found",
    UnreadableImage: "404 Not Found",
    OutOfRange: "404 Not Found",
    PyramidUnavailable: "404 Not Found",
    UnsatisfiableRequest: "404 Not Found",
    CompressedFile: "400 Bad Request",
    InvalidArgument: "400 Bad Request",
    NotImplementedFeature: "501 Not Implemented",
}


def error_response(responder: Responder, exc: IIPyError, query: str) -> Response:
    """The one place where an error becomes a response (and a log line).

    IIP errors give ``Error/...`` lines, NotModified iipsrv's 304, the errors for which
    iipsrv raises a bare exception (and unsupported files) its HTML page with status 400,
    and every class of ``ERROR_STATUS`` its status with ``str(exc)`` as the body."""
    if isinstance(exc, NotModified):
        return responder.not_modified()
    if isinstance(exc, IIPError):
        return responder.iip_error([exc])
    if isinstance(exc, (InternalRequestError, NotAnImage)):
        log.warning("400: %s [%s]", exc.message, query)
        return responder.advert()
    for cls in type(exc).__mro__:
        status = ERROR_STATUS.get(cls)  # type: ignore[call-overload]
        if status is not None:
            log.warning("%s: %s [%s]", status, exc.message, query)
            return responder.http_error(status, exc.message)
    log.error("no response defined for %s: %s [%s]", type(exc).__name__, exc.message, query)
    return responder.internal_error()
