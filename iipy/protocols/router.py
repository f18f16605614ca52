"""The request handler: FastCGI parameters in, CGI bytes out.  The only place where
exceptions become responses; nothing a client sends can make it raise.

HTTP methods: GET and POST are answered alike (from the query string, as iipsrv does;
a request body is ignored); HEAD gets the same headers, Content-Length included, and no
body; OPTIONS gets ``204 No Content`` (the CORS preflight answer when CORS is set);
anything else gets ``405 Method Not Allowed``.  A missing REQUEST_METHOD means GET.

Cache hits are answered before parsing: a GET, POST or HEAD without If-Modified-Since
is looked up under its request string, and the stored answer is sent as it is when the
files it was made from are unchanged (docs/protocol.md §4.3); the normal path stores
the answers it makes (``Application._keep``).

Every request is accounted for once it is answered: counted on the worker's metrics
recorder (when the FastCGI worker set one), and logged at VERBOSITY=2, either as
iipsrv-style text (the status, the request string, the milliseconds of the whole and
of reading, rendering, encoding and the cache, the body's bytes, the cache layer that
answered) or, with IIPY_LOG_FORMAT=json, as the fields of one JSON object that
``iipy.server.logsetup`` writes.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Mapping, Protocol

from iipy.cache import LayeredCache, RequestEntry, build_cache
from iipy.errors import IIPyError
from iipy.imaging import paths
from iipy.imaging.store import ImageStore
from iipy.protocols.http import Responder, Response, error_response, parse_http_date
from iipy.protocols.iip import commands, parser
from iipy.protocols.iip.context import Context, Timings
from iipy.settings import Settings

log = logging.getLogger(__name__)

#: Commands named by the first command of a request in another protocol.
OTHER_PROTOCOLS = frozenset({"iiif", "zoomify", "deepzoom"})


class Metrics(Protocol):
    """Where a worker counts its requests (the FastCGI worker sets one; see
    ``iipy.server.metrics``).  Label values outside the recorder's fixed sets are
    counted as ``other``."""

    def request(self, protocol: str, command: str, status: int, nbytes: int,
                stages: Mapping[str, float], lookups: Mapping[str, tuple[int, int]],
                memcached_errors: int = 0) -> None: ...

    def pyramid_built(self, seconds: float) -> None: ...


class Application:
    """One per worker process (created after fork): owns the open images and the
    response cache (its memcached connections are opened by this process)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.responder = Responder(settings)
        #: Set by the FastCGI worker: called during long work (pyramid builds), so the
        #: supervisor does not take a busy worker for a hung one.
        self.heartbeat: Callable[[], None] | None = None
        #: Set by the FastCGI worker: counts every request (``/metrics``).
        self.metrics: Metrics | None = None
        self.store = ImageStore(settings, progress=self._progress, on_build=self._built)
        self.cache = build_cache(settings)
        self._early_lookup = self.cache.enabled
        self._json_log = settings.log_format == "json"
        log.debug("response cache: %s", self.cache.describe())

    def _progress(self, what: str, fraction: float) -> None:
        if self.heartbeat is not None:
            self.heartbeat()

    def _built(self, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.pyramid_built(seconds)

    def __call__(self, params: dict[str, str]) -> bytes:
        """The CGI bytes of one request (what the FastCGI worker sends): an answer kept
        under its request string is sent as stored, never turned into a ``Response``."""
        start = time.perf_counter()
        method = params.get("REQUEST_METHOD") or "GET"
        raw, digest = self._early(params, method, start)
        if raw is not None:
            return raw
        return self._handle(params, method, start, digest).to_bytes()

    def request_string(self, params: dict[str, str]) -> tuple[str, bool]:
        """The request string and whether it comes from URI_MAP (docs/protocol.md §3.1)."""
        if self.settings.uri_map:
            mapped = parser.map_uri(params.get("REQUEST_URI", ""), self.settings.uri_map)
            if mapped is not None:
                return mapped, True
        return params.get("QUERY_STRING", ""), False

    def handle(self, params: dict[str, str]) -> Response:
        """The response to one request (``__call__`` gives its bytes)."""
        start = time.perf_counter()
        method = params.get("REQUEST_METHOD") or "GET"
        raw, digest = self._early(params, method, start)
        if raw is not None:
            return Response.from_bytes(raw)
        return self._handle(params, method, start, digest)

    def _early(self, params: dict[str, str], method: str,
               start: float) -> tuple[bytes | None, str | None]:
        """The lookup before parsing (docs/protocol.md §4.3).

        Returns the bytes of the answer kept under this request string when every file
        it was made from is unchanged (the request is accounted for here), else None;
        and the request digest under which the normal path keeps its answer (None when
        the request is not looked up this way: no cache, OPTIONS and other methods,
        If-Modified-Since, an empty request string)."""
        if (not self._early_lookup or method not in _EARLY_METHODS
                or params.get("HTTP_IF_MODIFIED_SINCE")):
            return None, None
        query, mapped = self.request_string(params)
        if not query:
            return None, None
        cache = self.cache
        cache.begin_request()
        accept = params.get("HTTP_ACCEPT", "") if _may_vary_on_accept(query) else None
        digest = cache.hasher.request_digest(query, mapped, accept)
        found = cache.get_request(digest)
        if found is None:
            return None, digest
        t0 = time.perf_counter()
        entry = RequestEntry.unpack(found[0])
        fresh = entry is not None and entry.status == 200 and all(
            paths.unchanged(requested, real, mtime_ns, size, self.settings)
            for requested, real, mtime_ns, size in entry.files)
        cache.elapsed += time.perf_counter() - t0
        if not fresh:
            return None, digest  # the normal path runs, and keeps its answer instead
        assert entry is not None
        cache.record_hit(found[1])
        response = entry.response
        body_at = response.find(b"\r\n\r\n") + 4
        raw = response[:body_at] if method == "HEAD" else response
        trace = _Trace()
        trace.protocol, trace.command, trace.query, trace.cache = \
            entry.protocol, entry.command, query, cache
        if not self._json_log and log.isEnabledFor(logging.INFO):
            log.info(_LOG_LINE, entry.status, query, 1e3 * (time.perf_counter() - start),
                     0.0, 0.0, 0.0, 1e3 * cache.elapsed, len(response) - body_at, found[1])
        self._account(method, trace, entry.status, len(raw) - body_at,
                      time.perf_counter() - start)
        return raw, digest

    def _handle(self, params: dict[str, str], method: str, start: float,
                digest: str | None) -> Response:
        """The normal path (``digest``: see ``_early``)."""
        trace = _Trace()
        if method == "GET" or method == "POST":
            response = self.answer(params, trace, digest)
        elif method == "HEAD":
            response = self.answer(params, trace, digest).without_body()
        elif method == "OPTIONS":
            trace.protocol, trace.command = "http", "options"
            response = self.responder.preflight()
        else:
            trace.protocol, trace.command = "http", "method"
            if not self._json_log:
                log.info("405 %s [%s]", method[:32], params.get("QUERY_STRING", "")[:200])
            response = self.responder.method_not_allowed()
        self._account(method, trace, response.status, len(response.body),
                      time.perf_counter() - start)
        return response

    def answer(self, params: dict[str, str], trace: "_Trace | None" = None,
               digest: str | None = None) -> Response:
        """The response to a GET (also POST and HEAD, which send it without a body).
        ``trace`` collects what the log line and the metrics report.  With ``digest``
        (from ``_early``, whose lookup began the cache's request) a cacheable answer
        is kept under it."""
        if trace is None:
            trace = _Trace()
        start = time.perf_counter()
        query, mapped = self.request_string(params)
        trace.query = query
        if not query:
            return self.responder.advert()
        request = parser.parse(query)
        trace.parse = time.perf_counter() - start
        if request.commands and request.commands[0].name in OTHER_PROTOCOLS:
            trace.protocol = request.commands[0].name
        ims = params.get("HTTP_IF_MODIFIED_SINCE")
        cache = self.cache
        if digest is None:
            cache.begin_request()
        ctx = Context(self.settings, self.responder, self.store,
                      if_modified_since=parse_http_date(ims) if ims else None,
                      params=params, request_string=query, mapped=mapped, cache=cache,
                      defer_stores=digest is not None)
        try:
            response = commands.run(request, ctx)
        except IIPyError as exc:
            response = error_response(self.responder, exc, query)
        except Exception:
            log.exception("unhandled error for %r", query)
            response = self.responder.internal_error()
        if ctx.command in OTHER_PROTOCOLS:  # also after modifiers: GAM=0.4545&IIIF=...
            trace.protocol = ctx.command
        trace.command = ctx.command if ctx.command in _KNOWN_COMMANDS else "other"
        if digest is not None:
            self._keep(ctx, response, digest, trace)
        trace.timings = ctx.timings
        trace.cache = cache
        if not self._json_log and log.isEnabledFor(logging.INFO):
            t = ctx.timings
            hit = cache.outcome()
            log.info(_LOG_LINE, response.status, query, 1e3 * (time.perf_counter() - start),
                     1e3 * t.read, 1e3 * t.render, 1e3 * t.encode, 1e3 * cache.elapsed,
                     len(response.body), hit)
        return response

    def _keep(self, ctx: Context, response: Response, digest: str, trace: "_Trace") -> None:
        """Store what the commands left to store (``Context.pending``): the answer under
        the request digest when it is a cacheable response ``Context.cached`` gave and
        the files it was made from can be checked again (not those of an image
        sequence); every other response under its normalised key.  One store per
        response and layer."""
        kept = None
        if (response.cacheable and response is ctx.last_cached and ctx.refs
                and all(ref.requested and ref.sequence is None for ref in ctx.refs)
                and (not ctx.read_accept or _may_vary_on_accept(ctx.request_string))):
            files = tuple((ref.requested, ref.path, ref.mtime_ns, ref.size) for ref in ctx.refs)
            entry = RequestEntry(response.status, trace.protocol, trace.command, files,
                                 response.to_bytes())
            self.cache.set_digest(digest, entry.pack())
            kept = response
        for key, made in ctx.pending:
            if made is not kept:
                self.cache.set(key, made.to_bytes())

    def _account(self, method: str, trace: "_Trace", status: int, nbytes: int,
                 total: float) -> None:
        """The request's metrics and, with IIPY_LOG_FORMAT=json, its log line (``nbytes``:
        the body's bytes as sent)."""
        stages = trace.stages(total)
        cache = trace.cache
        if self.metrics is not None:
            lookups = ({layer: (hits, misses) for layer, (hits, misses) in cache.lookups.items()}
                       if cache is not None else {})
            self.metrics.request(trace.protocol, trace.command, status, nbytes, stages,
                                 lookups, cache.memcached_errors() if cache is not None else 0)
        if self._json_log and log.isEnabledFor(logging.INFO):
            hit = cache.outcome() if cache is not None else "-"
            fields: dict[str, Any] = {
                "event": "request", "method": method[:32],
                "protocol": trace.protocol, "command": trace.command, "query": trace.query,
                "status": status, "bytes": nbytes,
                "ms": {stage: round(1e3 * seconds, 3) for stage, seconds in stages.items()},
                "cache": None if hit == "-" else hit,
            }
            log.info("%d %s", status, trace.query, extra={"iipy_fields": fields})


#: Values of the ``command`` of a request's log line and metrics: the IIP commands and
#: the other protocols' names; anything else is ``other``.
_KNOWN_COMMANDS = frozenset(commands.HANDLERS) | OTHER_PROTOCOLS

#: The methods answered from the request string: those looked up before parsing.
_EARLY_METHODS = frozenset({"GET", "POST", "HEAD"})

#: The request log line (VERBOSITY >= 2, IIPY_LOG_FORMAT=text).
_LOG_LINE = ("%d %s %.2f ms (read %.2f, render %.2f, encode %.2f, cache %.2f) "
             "%d bytes, cache hit: %s")


def _may_vary_on_accept(query: str) -> bool:
    """Whether the answer to ``query`` may depend on the Accept header: only IIIF reads
    it (version negotiation), and command names are not URL-decoded, so a IIIF
    request holds ``iiif`` in some case."""
    return "iiif" in query.lower()


class _Trace:
    """What one request did, for its log line and its metrics."""

    __slots__ = ("protocol", "command", "query", "parse", "timings", "cache")

    def __init__(self) -> None:
        self.protocol = "iip"
        self.command = "none"  # no command: the advert page
        self.query = ""
        self.parse: float | None = None
        self.timings: Timings | None = None
        self.cache: LayeredCache | None = None

    def stages(self, total: float) -> dict[str, float]:
        """Seconds per stage, for the stages the request went through."""
        out: dict[str, float] = {}
        if self.parse is not None:
            out["parse"] = self.parse
        if self.cache is not None and self.cache.looked_up and self.cache.enabled:
            out["cache"] = self.cache.elapsed
        t = self.timings
        if t is not None:
            for stage in ("read", "render", "encode"):
                seconds = getattr(t, stage)
                if seconds > 0.0:
                    out[stage] = seconds
        out["total"] = total
        return out
