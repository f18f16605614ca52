"""The request handler: FastCGI parameters in, CGI bytes out.  The only place where
exceptions become responses; nothing a client sends can make it raise.

HTTP methods: GET and POST are answered alike (from the query string, as iipsrv does;
a request body is ignored); HEAD gets the same headers, Content-Length included, and no
body; OPTIONS gets ``204 No Content`` (the CORS preflight answer when CORS is set);
anything else gets ``405 Method Not Allowed``.  A missing REQUEST_METHOD means GET.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from iipy.cache import build_cache
from iipy.errors import IIPyError
from iipy.imaging.store import ImageStore
from iipy.protocols.http import Responder, Response, error_response, parse_http_date
from iipy.protocols.iip import commands, parser
from iipy.protocols.iip.context import Context
from iipy.settings import Settings

log = logging.getLogger(__name__)


class Application:
    """One per worker process (created after fork): owns the open images and the
    response cache (its memcached connections are opened by this process)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.responder = Responder(settings)
        #: Set by the FastCGI worker: called during long work (pyramid builds), so the
        #: supervisor does not take a busy worker for a hung one.
        self.heartbeat: Callable[[], None] | None = None
        self.store = ImageStore(settings, progress=self._progress)
        self.cache = build_cache(settings)
        log.debug("response cache: %s", self.cache.describe())

    def _progress(self, what: str, fraction: float) -> None:
        if self.heartbeat is not None:
            self.heartbeat()

    def __call__(self, params: dict[str, str]) -> bytes:
        return self.handle(params).to_bytes()

    def request_string(self, params: dict[str, str]) -> str:
        if self.settings.uri_map:
            mapped = parser.map_uri(params.get("REQUEST_URI", ""), self.settings.uri_map)
            if mapped is not None:
                return mapped
        return params.get("QUERY_STRING", "")

    def handle(self, params: dict[str, str]) -> Response:
        method = params.get("REQUEST_METHOD") or "GET"
        if method == "GET" or method == "POST":
            return self.answer(params)
        if method == "HEAD":
            return self.answer(params).without_body()
        if method == "OPTIONS":
            return self.responder.preflight()
        log.info("405 %s [%s]", method[:32], params.get("QUERY_STRING", "")[:200])
        return self.responder.method_not_allowed()

    def answer(self, params: dict[str, str]) -> Response:
        """The response to a GET (also POST and HEAD, which send it without a body)."""
        start = time.perf_counter()
        query = self.request_string(params)
        if not query:
            return self.responder.advert()
        request = parser.parse(query)
        ims = params.get("HTTP_IF_MODIFIED_SINCE")
        cache = self.cache
        cache.begin_request()
        ctx = Context(self.settings, self.responder, self.store,
                      if_modified_since=parse_http_date(ims) if ims else None,
                      cache=cache)
        try:
            response = commands.run(request, ctx)
        except IIPyError as exc:
            response = error_response(self.responder, exc, query)
        except Exception:
            log.exception("unhandled error for %r", query)
            response = self.responder.internal_error()
        if log.isEnabledFor(logging.INFO):
            t = ctx.timings
            hit = cache.outcome()
            log.info("%d %s %.2f ms (read %.2f, render %.2f, encode %.2f, cache %.2f) "
                     "%d bytes, cache hit: %s",
                     response.status, query, 1e3 * (time.perf_counter() - start),
                     1e3 * t.read, 1e3 * t.render, 1e3 * t.encode, 1e3 * cache.elapsed,
                     len(response.body), hit)
        return response
