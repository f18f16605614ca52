"""The small HTTP front end of ``iipy serve``: the standard library's request parser in
front of the same :class:`~iipy.protocols.router.Application` that answers FastCGI
requests, one connection at a time per worker of the pre-fork supervisor."""

from __future__ import annotations

import http.server
import json
import logging
import math
import socket
import time
from pathlib import Path
from typing import Any, Callable

from iipy import __version__
from iipy.errors import ImagingError
from iipy.imaging.paths import resolve
from iipy.protocols.http import Responder, http_date
from iipy.protocols.iip.parser import parse
from iipy.protocols.router import Application
from iipy.server import sockets
from iipy.server.cgi import INTERNAL_ERROR, parse_cgi
from iipy.viewer import assets as assets_module
from iipy.viewer.catalogue import Catalogue

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
#: Paths of the IIP endpoint (the second is the usual iipsrv URL behind a web server).
IIP_PATHS = ("/iip", "/fcgi-bin/iipsrv.fcgi")
#: Seconds a client may take to send its request before the connection is dropped.
CLIENT_TIMEOUT = 30.0
#: The world-coordinate endpoint of the viewer (``FrontEnd.world``).
WCS_PATH = "/wcs.json"

Answer = tuple[int, list[tuple[str, str]], bytes]


def _json(status: int, value: dict[str, Any]) -> Answer:
    return status, [("Content-Type", "application/json"), ("Cache-Control", "no-cache")], \
        json.dumps(value).encode("utf-8")


def _point(text: str) -> tuple[float, float] | None:
    """``"x,y"`` as two finite floats, or None."""
    parts = text.split(",")
    if len(parts) != 2:
        return None
    try:
        a, b = float(parts[0]), float(parts[1])
    except ValueError:
        return None
    return (a, b) if math.isfinite(a) and math.isfinite(b) else None


class FrontEnd:
    """Everything one worker needs to answer HTTP requests (built after the fork)."""

    def __init__(self, catalogue: Catalogue, settings: list[Any], assets: str,
                 asset_dir: Path | None, progress: Callable[[str, float], None] | None):
        self.catalogue = catalogue
        self.apps = []
        for root_settings in settings:
            app = Application(root_settings)
            app.store.progress = progress
            self.apps.append(app)
        self.responder = Responder(settings[0])
        self.assets = assets
        self.asset_dir = asset_dir
        self.index = assets_module.render_index(assets)
        self.started = time.time()

    def iip(self, query: str, params: dict[str, str]) -> tuple[int, list[tuple[str, str]], bytes]:
        """Run one IIP request through the right application, as a web server would:
        the CGI output is split into the status, the header lines and the body."""
        routed = self.catalogue.route(query)
        if routed is None:
            raw = self.responder.http_error(
                "404 Not Found", "not served by this iipy serve: %s" % query).to_bytes()
        else:
            index, rewritten = routed
            params = dict(params, QUERY_STRING=rewritten)
            raw = self.apps[index](params)
        return parse_cgi(raw)

    def world(self, query: str) -> Answer:
        """``/wcs.json?FIF=<image>&pixel=<x>,<y>``: the world coordinates of FITS pixel
        (x, y) (1-based, first row at the bottom); ``&world=<lon>,<lat>`` (degrees): the
        pixel of that position.  The image's own header gives them (the FITS source's
        celestial WCS), so every projection and distortion astropy knows is honoured.

        JSON: ``{"celestial": true, "lon_name": "RA", "lat_name": "Dec", "system":
        "ICRS", "pixel": [x, y], "world": [lon, lat]}`` (``null`` for a point the
        projection does not reach), ``{"celestial": false}`` for an image without
        celestial axes; 404 for an image that is not served or cannot be read, 400 for
        a malformed request."""
        routed = self.catalogue.route(query)
        if routed is None:
            return _json(404, {"error": "not served by this iipy serve"})
        index, rewritten = routed
        fif, pixel, world = None, None, None
        for cmd in parse(rewritten).commands:
            if cmd.name == "fif":
                fif = cmd.arg
            elif cmd.name == "pixel":
                pixel = _point(cmd.arg)
            elif cmd.name == "world":
                world = _point(cmd.arg)
        if fif is None or (pixel is None) == (world is None):
            return _json(400, {"error": "expected FIF=<image> and pixel=<x>,<y> or "
                                        "world=<lon>,<lat> (finite numbers)"})
        app = self.apps[index]
        try:
            image = app.store.open(resolve(fif, app.settings))
        except ImagingError as exc:
            return _json(404, {"error": exc.message})
        celestial_of = getattr(image.source, "celestial", None)
        celestial = celestial_of() if celestial_of is not None else None
        if celestial is None:
            return _json(200, {"celestial": False})
        if pixel is not None:
            world = celestial.pixel_to_world(*pixel)
        else:
            pixel = celestial.world_to_pixel(*world)
        return _json(200, {"celestial": True, "lon_name": celestial.lon_name,
                           "lat_name": celestial.lat_name, "system": celestial.system,
                           "pixel": None if pixel is None else list(pixel),
                           "world": None if world is None else list(world)})

    def static(self, path: str) -> tuple[Path, str] | None:
        """(file, content type) for a ``/static/...`` path, or None."""
        return assets_module.static_file(path, self.asset_dir)

    def image_list(self) -> bytes:
        images, truncated = self.catalogue.images()
        return json.dumps({"server": "iipy/" + __version__, "iip": "iip", "images": images,
                           "truncated": truncated}, indent=1).encode("utf-8")


class RequestHandler(http.server.BaseHTTPRequestHandler):
    """One HTTP request (the connection is closed after the answer)."""

    server_version = "iipy/" + __version__
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = CLIENT_TIMEOUT
    server: FrontEnd  # type: ignore[assignment]

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._answer(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(head=True)

    def do_POST(self) -> None:  # noqa: N802
        self._answer(head=False)

    def do_OPTIONS(self) -> None:  # noqa: N802
        self._answer(head=False)

    def _answer(self, head: bool) -> None:
        self.close_connection = True
        path, _, query = self.path.partition("?")
        front = self.server
        try:
            length_text = (self.headers.get("Content-Length") or "0").strip()
            if not length_text.isdigit():
                status, headers, body = 400, [("Content-Type", "text/plain")], \
                    b"Bad Request: Content-Length is not a number\n"
            elif path in IIP_PATHS:
                length = int(length_text)
                if 0 < length <= 1 << 20:
                    self.rfile.read(length)  # a POST body is not read by iipsrv
                status, headers, body = front.iip(query, self._cgi_params(path, query))
            elif self.command not in ("GET", "HEAD"):
                status, headers, body = 405, [("Allow", "GET, HEAD")], b"Method Not Allowed\n"
            elif path in ("/", "/index.html"):
                status, body = 200, front.index
                headers = [("Content-Type", "text/html; charset=utf-8"),
                           ("Cache-Control", "no-cache")]
            elif path == WCS_PATH:
                status, headers, body = front.world(query)
            elif path == "/images.json":
                status, body = 200, front.image_list()
                headers = [("Content-Type", "application/json"), ("Cache-Control", "no-cache")]
            elif path.startswith("/static/") and (found := front.static(path)) is not None:
                file, ctype = found
                status, body = 200, file.read_bytes()
                headers = [("Content-Type", ctype), ("Cache-Control", "no-cache"),
                           ("Last-Modified", http_date(file.stat().st_mtime))]
            else:
                status, headers, body = 404, [("Content-Type", "text/plain")], b"Not Found\n"
        except Exception:
            log.exception("error answering %s", self.path)
            status, headers, body = parse_cgi(INTERNAL_ERROR)
        self._send(status, headers, body, head)

    def _cgi_params(self, path: str, query: str) -> dict[str, str]:
        """The FastCGI parameters nginx passes with conf/nginx.conf.in."""
        params = {
            "QUERY_STRING": query,
            "REQUEST_URI": self.path,
            "REQUEST_METHOD": self.command,
            "SERVER_PROTOCOL": self.request_version,
            "SCRIPT_NAME": path,
            "PATH_INFO": "",
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": self.headers.get("Content-Length", ""),
        }
        for name, value in self.headers.items():
            key = "HTTP_" + name.upper().replace("-", "_")
            if key not in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
                params[key] = value
        return params

    def _send(self, status: int, headers: list[tuple[str, str]], body: bytes, head: bool) -> None:
        self.send_response_only(status)
        names = {name.lower() for name, _ in headers}
        for name, value in headers:
            if name.lower() not in ("connection", "transfer-encoding"):
                self.send_header(name, value)
        if "date" not in names:
            self.send_header("Date", self.date_time_string())
        if status not in (204, 304) and "content-length" not in names:
            self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if not head and status not in (204, 304):
            self.wfile.write(body)
        self.log_request(status, len(body))

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
        log.info("%s %s", self.address_string(), format % args)

    def log_error(self, format: str, *args: Any) -> None:  # noqa: A002
        log.info("%s %s", self.address_string(), format % args)


def worker_job(make_front: Callable[[Any], FrontEnd], listener: socket.socket, ctx: Any) -> None:
    """What each worker process runs: accept a connection, answer it, repeat."""
    front = make_front(ctx)
    ctx.ready()
    listener.setblocking(False)
    while ctx.alive:
        for _ in ctx.wait([listener]):
            accepted = sockets.accept(listener)
            if accepted is None:
                continue  # another worker took it
            conn, addr = accepted
            ctx.notify()
            try:
                conn.setblocking(True)
                conn.settimeout(CLIENT_TIMEOUT)
                RequestHandler(conn, addr, front)
            except OSError as exc:  # the browser gave up on a tile (zoomed away)
                log.debug("connection from %s: %s", addr, exc)
            finally:
                sockets.close(conn)
                ctx.request_done()
