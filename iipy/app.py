"""The request handler: FastCGI parameters in, CGI bytes out.  The only place where
exceptions become responses; nothing a client sends can make it raise."""

from __future__ import annotations

import logging
import time

from . import commands, protocol
from .commands import Context
from .errors import HTTPError, InternalRequestError, NotModified
from .response import Responder, Response
from .settings import Settings
from .store import ImageStore

log = logging.getLogger(__name__)


class Application:
    """One per worker process (created after fork): owns the open images."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.responder = Responder(settings)
        self.store = ImageStore(settings)

    def __call__(self, params: dict[str, str]) -> bytes:
        return self.handle(params).to_bytes()

    def request_string(self, params: dict[str, str]) -> str:
        if self.settings.uri_map:
            mapped = protocol.map_uri(params.get("REQUEST_URI", ""), self.settings.uri_map)
            if mapped is not None:
                return mapped
        return params.get("QUERY_STRING", "")

    def handle(self, params: dict[str, str]) -> Response:
        start = time.perf_counter()
        query = self.request_string(params)
        if not query:
            return self.responder.advert()
        request = protocol.parse(query)
        ims = params.get("HTTP_IF_MODIFIED_SINCE")
        ctx = Context(self.settings, self.responder, self.store,
                      if_modified_since=commands.parse_http_date(ims) if ims else None)
        try:
            response = commands.run(request, ctx)
        except NotModified:
            response = self.responder.not_modified()
        except HTTPError as exc:
            log.warning("%s: %s [%s]", exc.status, exc.message, query)
            response = self.responder.http_error(exc.status, exc.message)
        except InternalRequestError as exc:
            log.warning("400: %s [%s]", exc, query)
            response = self.responder.advert()
        except Exception:
            log.exception("unhandled error for %r", query)
            response = self.responder.internal_error()
        if log.isEnabledFor(logging.INFO):
            t = ctx.timings
            log.info("%d %s %.2f ms (read %.2f, render %.2f, encode %.2f) %d bytes",
                     response.status, query, 1e3 * (time.perf_counter() - start),
                     1e3 * t.read, 1e3 * t.render, 1e3 * t.encode, len(response.body))
        return response
