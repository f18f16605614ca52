"""The state of one IIP request while its commands run, and the response cache it uses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Protocol

from iipy.errors import IIPError, ImageUnavailable
from iipy.imaging import render
from iipy.imaging.paths import ImageRef
from iipy.imaging.store import ImageStore, OpenImage
from iipy.protocols.http import Responder, Response
from iipy.settings import Settings


@dataclass(slots=True)
class Timings:
    """Seconds spent per stage of one request (logged at VERBOSITY >= 2)."""

    read: float = 0.0
    render: float = 0.0
    encode: float = 0.0
    cache_hit: bool = False


class TileCache(Protocol):
    """Where finished responses are kept (see ``iipy.cache``)."""

    def get(self, key: tuple) -> bytes | None: ...

    def set(self, key: tuple, value: bytes) -> None: ...


class NoCache:
    def get(self, key: tuple) -> bytes | None:
        return None

    def set(self, key: tuple, value: bytes) -> None:
        pass


@dataclass(slots=True)
class Context:
    """The state of one request while its commands run."""

    settings: Settings
    responder: Responder
    store: ImageStore
    if_modified_since: float | None = None
    #: The request's FastCGI parameters (IIIF reads the host, the URI and headers).
    params: Mapping[str, str] = field(default_factory=dict)
    #: The request string as received, and whether it came from URI_MAP.
    request_string: str = ""
    mapped: bool = False
    cache: TileCache = field(default_factory=NoCache)
    image: OpenImage | None = None
    ref: ImageRef | None = None  # as resolved by FIF (or SDS, for a sequence)
    view: render.View = field(default_factory=render.View)
    width: int = 0
    height: int = 0
    region: tuple[float, float, float, float] | None = None
    rotation: int = 0
    mirror: bool = False
    protocol_line: bool = False
    lines: list[str] = field(default_factory=list)
    errors: list[IIPError] = field(default_factory=list)
    output: Response | None = None
    timings: Timings = field(default_factory=Timings)
    command: str = ""  # the command running, or the last one run (for the log and metrics)
    #: Every image the request resolved, in order (FIF, SDS, the path-like protocols).
    refs: list[ImageRef] = field(default_factory=list)
    #: Whether the answer may depend on the Accept header (IIIF's version negotiation).
    read_accept: bool = False
    #: Set by the router when it may keep the answer under its request string: stores
    #: of ``cached`` then wait in ``pending`` until the router knows the answer.
    defer_stores: bool = False
    pending: list[tuple[tuple, Response]] = field(default_factory=list)
    #: The last response ``cached`` returned (from the cache or just made).
    last_cached: Response | None = None

    def require_image(self, argument: str = "") -> OpenImage | None:
        if self.image is None:
            self.errors.append(ImageUnavailable(argument))
        return self.image

    def cached(self, key: tuple, produce: Callable[[], Response]) -> Response:
        """The response for ``key`` from the cache, or ``produce()`` stored there.

        ``key`` must hold everything that changes the bytes besides the settings: the
        output command and its arguments, the image identity, the view.  With
        ``defer_stores`` the store is left to the router (``pending``)."""
        raw = self.cache.get(key)
        if raw is not None:
            self.timings.cache_hit = True
            response = Response.from_bytes(raw)
        else:
            response = produce()
            if response.cacheable:
                if self.defer_stores:
                    self.pending.append((key, response))
                else:
                    self.cache.set(key, response.to_bytes())
        self.last_cached = response
        return response

    def opened(self, ref: ImageRef, image: OpenImage) -> None:
        """Make ``image`` (resolved as ``ref``) the request's image."""
        self.image = image
        self.ref = ref
        self.refs.append(ref)

    @property
    def quality(self) -> int:
        q = self.view.quality
        return self.settings.jpeg_quality if q is None else q
