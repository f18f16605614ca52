"""Errors, as iipsrv has them: IIP errors (an ``Error/...`` line, HTTP 400) and
plain HTTP errors (a status and a short text body).

Lower layers raise these (or their own domain errors, which ``commands`` translates);
``app`` is the only place where an exception becomes a response.
"""

from __future__ import annotations

from typing import ClassVar


class IIPyError(Exception):
    """Base class of every error that has a defined response."""


class IIPError(IIPyError):
    """An IIP protocol error: ``Error/<n>:<code> <argument>`` with status 400.

    ``str(exc)`` is the argument echoed back to the client.
    """

    code: ClassVar[str] = "2 1"

    @property
    def argument(self) -> str:
        return self.args[0] if self.args else ""


class ImageUnavailable(IIPError):
    """A command that needs an image ran with no image open."""

    code = "1 3"


class MalformedRequest(IIPError):
    """The request produced nothing (no output, no OBJ line, no other error)."""

    code = "2 1"


class UnsupportedCommand(IIPError):
    code = "2 2"


class UnsupportedObject(IIPError):
    code = "3 2"


class HTTPError(IIPyError):
    """A plain error: ``Status: <status>`` and ``str(exc)`` as a text body."""

    status: ClassVar[str] = "400 Bad Request"

    @property
    def message(self) -> str:
        return self.args[0] if self.args else ""


class BadArgument(HTTPError):
    status = "400 Bad Request"


class FileNotFound(HTTPError):
    """Missing, unreadable or unsupported image, or a resolution/tile out of range."""

    status = "404 Not Found"


class InternalRequestError(IIPyError):
    """Where iipsrv raises a bare exception and answers with its HTML page and status 400
    (negative tile numbers, PFL out of range).  ``str(exc)`` is logged, never sent."""


class NotModified(IIPyError):
    """If-Modified-Since is not older than the image: the request ends with a 304."""
