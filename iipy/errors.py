"""The errors iipy answers with, in two families, and nothing about HTTP.

*Domain errors* are raised by ``iipy.imaging`` and say what went wrong with an image
(missing, not an image, compressed with gzip, no such HDU, unreadable, a tile out of
range).  *Protocol errors* are raised by ``iipy.protocols``: IIP errors carry their IIP
code (``Error/<n>:<code> <argument>``), argument errors a short text.  One table in
``iipy.protocols.http`` (``ERROR_STATUS``) turns every class into its status, headers
and body; anything else that escapes a request is a bug, logged with its traceback and
answered with a bare 500.

``str(exc)`` is the text sent to the client (for IIP errors: the argument echoed back).
"""

from __future__ import annotations

from typing import ClassVar


class IIPyError(Exception):
    """Base class of every error that has a defined response."""

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


# ---- domain errors: what is wrong with an image ----------------------------------------


class ImagingError(IIPyError):
    """An image cannot be served as asked."""


class ImageNotFound(ImagingError):
    """No file at the path (or not a regular file, or outside FILESYSTEM_PREFIX), and no
    image sequence by that name."""


class NotAnImage(ImagingError):
    """The file exists but is of a type iipy does not read."""


class CompressedFile(ImagingError):
    """A whole-file compressed FITS (gzip): it cannot be read in place."""


class NoSuchHDU(ImagingError):
    """The file, or the extension a selector names, holds no image iipy can serve."""


class UnreadableImage(ImagingError):
    """The file is damaged, truncated or cannot be read."""


class OutOfRange(ImagingError):
    """A resolution or a tile that the image does not have."""


class PyramidUnavailable(ImagingError):
    """The reduced levels cannot be built (nor kept in memory) for this image."""


# ---- protocol errors ------------------------------------------------------------------


class InvalidArgument(IIPyError):
    """A request argument that cannot be honoured (a profile outside the image, too many
    values asked): status 400 with a short text."""


class UnsatisfiableRequest(IIPyError):
    """A well-formed request the image cannot satisfy where the protocol says 404 (a IIIF
    2.1 size beyond the advertised limits)."""


class NotImplementedFeature(IIPyError):
    """A valid request for a feature that is switched off (IIIF upscaling when
    ALLOW_UPSCALING=0): 501."""


class InternalRequestError(IIPyError):
    """Where iipsrv raises a bare exception and answers with its HTML page and status 400
    (negative tile numbers, PFL out of range).  ``str(exc)`` is logged, never sent."""


class NotModified(IIPyError):
    """If-Modified-Since is not older than the image: the request ends with a 304."""


class IIPError(IIPyError):
    """An IIP protocol error: ``Error/<n>:<code> <argument>`` with status 400.

    ``str(exc)`` is the argument echoed back to the client.
    """

    code: ClassVar[str] = "2 1"

    @property
    def argument(self) -> str:
        return self.message


class ImageUnavailable(IIPError):
    """A command that needs an image ran with no image open."""

    code = "1 3"


class MalformedRequest(IIPError):
    """The request produced nothing (no output, no OBJ line, no other error)."""

    code = "2 1"


class UnsupportedCommand(IIPError):
    """A command name iipy does not know."""

    code = "2 2"


class UnsupportedObject(IIPError):
    """An OBJ argument iipy does not know."""

    code = "3 2"
