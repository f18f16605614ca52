"""``iipy serve PATH...``: look at FITS files in a browser, without a web server.

The same :class:`~iipy.protocols.router.Application` that answers FastCGI requests sits behind a
small HTTP front end (the standard library's ``http.server`` request parser) on
127.0.0.1 and a free port:

``/``                      the viewer page (``iipy/viewer/static/index.html``)
``/static/NAME``           the viewer's script and style sheet (``iipy/viewer/static/``)
``/static/leaflet/...``    a local copy of Leaflet, with ``--assets local``
``/images.json``           the images that can be shown, as JSON
``/iip?QUERY``             IIP, exactly as ``iipsrv.fcgi?QUERY`` behind a web server;
                           ``/fcgi-bin/iipsrv.fcgi?QUERY`` is the same endpoint

Only the given paths are served.  Each folder is one ``FILESYSTEM_PREFIX`` (so the
application's own confinement applies: nothing outside the folder, even through
symbolic links); a file given by name makes its folder a prefix too, but the front
end lets through only the files named on the command line.  With one folder (or files
of one folder) ``FIF`` is the path inside it; with several, ``FIF`` starts with the
folder's label (``data/sky.fits``), which the front end removes before the request
reaches the application of that folder.

Concurrency: the pre-fork :class:`~iipy.server.prefork.Supervisor` runs ``--workers``
processes that accept HTTP connections on one shared listening socket, one request at
a time each (the browser asks for many tiles at once).  Every response closes its
connection, so no idle kept-alive connection ever holds a worker.

Building the reduced resolution levels of a large file on its first use prints its
progress on the terminal (standard error).  Leaflet comes from a public CDN by
default; ``--assets local`` serves a copy instead: the directory named by
``IIPY_VIEWER_ASSETS``, else ``node_modules/leaflet/dist`` in the current directory or
in ``tests/e2e/browser`` of a source checkout.
"""

from __future__ import annotations

import argparse
import email.utils
import functools
import html
import http.server
import json
import logging
import mimetypes
import os
import re
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TextIO
from urllib.parse import quote

from iipy import __version__

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
#: Paths of the IIP endpoint (the second is the usual iipsrv URL behind a web server).
IIP_PATHS = ("/iip", "/fcgi-bin/iipsrv.fcgi")
#: File names listed as images (``.fz``: tile-compressed with fpack).
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.fz", ".fit.fz", ".fts.fz")
#: Most images listed from the folders (a folder may hold a whole archive).
MAX_LISTED = 5000
#: Seconds a client may take to send its request before the connection is dropped.
CLIENT_TIMEOUT = 30.0
#: Seconds a worker may spend on one request unless IIPY_TIMEOUT says otherwise: the
#: first request on a large file waits for its pyramid, which may take minutes.
DEFAULT_TIMEOUT = 900.0
#: Default number of worker processes (IIPY_WORKERS or --workers override it).
DEFAULT_WORKERS = 4

STATIC_DIR = Path(__file__).resolve().parent / "static"
#: Where ``--assets local`` looks for Leaflet when IIPY_VIEWER_ASSETS is not set.
LOCAL_ASSET_CANDIDATES = (
    Path("node_modules") / "leaflet" / "dist",
    Path(__file__).resolve().parents[1] / "tests" / "e2e" / "browser" / "node_modules" / "leaflet" / "dist",
)
LEAFLET_VERSION = "1.9.4"
#: Leaflet on a public CDN, with the Subresource Integrity hashes of those exact files.
CDN_ASSETS = {
    "css": ("https://unpkg.com/leaflet@%s/dist/leaflet.css" % LEAFLET_VERSION,
            "sha256-p4NxAoJBhIIN+hmNHrzRCf9tD/miZyoHS5obTRR9BMY="),
    "js": ("https://unpkg.com/leaflet@%s/dist/leaflet.js" % LEAFLET_VERSION,
           "sha256-20nQCchB9co0qIjJZRGuk2/Z9VM+kNiyxNV1lvTlZBo="),
}
_STATIC_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
_CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "application/javascript",
                  ".css": "text/css", ".json": "application/json", ".png": "image/png",
                  ".svg": "image/svg+xml", ".map": "application/json"}
#: Commands whose argument names a file, like FIF (not implemented by iipy yet): allowed
#: only when one whole folder is served, where the application confines them itself.
_PATH_COMMANDS = frozenset({"iiif", "zoomify", "deepzoom"})


class ServeError(Exception):
    """A problem with the command line: printed, exit status 2."""


# ---- what is served ---------------------------------------------------------------------


@dataclass(frozen=True)
class Root:
    """One folder served as a FILESYSTEM_PREFIX.

    ``files`` are the names given on the command line when only those may be served
    (files, not folders, were given), None when the whole folder is served.
    """

    label: str
    directory: str
    files: frozenset[str] | None

    @property
    def prefix(self) -> str:
        return self.directory.rstrip("/") + "/"


def _is_fits_name(name: str) -> bool:
    return name.lower().endswith(FITS_SUFFIXES)


def build_roots(paths: list[str]) -> list[Root]:
    """The roots for the command line's paths: one per folder, files grouped by folder.

    A path may end with an extension selector (``mosaic.fits[2]``).  Raises
    :class:`ServeError` for a path that does not exist.
    """
    from iipy.imaging.paths import split_selector

    folders: dict[str, set[str] | None] = {}
    for given in paths:
        path, selector = given, ""
        if not os.path.exists(path):
            path, selector = split_selector(given)
            if not selector or not os.path.isfile(path):
                raise ServeError("%s: no such file or folder" % given)
        real = os.path.realpath(path)
        if os.path.isdir(real):
            folders[real] = None
        elif os.path.isfile(real):
            # A symbolic link is followed: its target's folder is the one served.
            directory = os.path.dirname(real)
            name = os.path.basename(real) + ("[%s]" % selector if selector else "")
            if directory in folders and folders[directory] is None:
                continue  # the whole folder is served already
            folders.setdefault(directory, set()).add(name)  # type: ignore[union-attr]
        else:
            raise ServeError("%s: not a regular file or folder" % given)
    if not folders:
        raise ServeError("nothing to serve")
    roots = []
    used: set[str] = set()
    for directory in sorted(folders):
        base = os.path.basename(directory.rstrip("/")) or "root"
        label, n = base, 1
        while label in used:
            n += 1
            label = "%s-%d" % (base, n)
        used.add(label)
        files = folders[directory]
        roots.append(Root(label if len(folders) > 1 else "", directory,
                          None if files is None else frozenset(files)))
    return roots


def _without_selector(name: str) -> str:
    from iipy.imaging.paths import split_selector

    return split_selector(name)[0]


def _encode_fif(path: str) -> str:
    """A FIF value that the application's URL decoding turns back into ``path``."""
    return quote(path.encode("utf-8", "surrogateescape"), safe="/[],;:=@!$'()*~")


class Catalogue:
    """The roots, the image list and the routing of IIP requests to a root."""

    def __init__(self, roots: list[Root]):
        self.roots = roots
        self._by_label = {root.label: i for i, root in enumerate(roots)}
        self._passthrough = len(roots) == 1 and roots[0].files is None
        # The file names that may be opened in each root (selectors removed).
        self._allowed = [None if root.files is None else frozenset(
            _without_selector(name) for name in root.files) for root in roots]

    def fif(self, root: Root, relative: str) -> str:
        return root.label + "/" + relative if root.label else relative

    def images(self, limit: int = MAX_LISTED) -> tuple[list[dict[str, Any]], bool]:
        """``([{fif, name, folder, bytes}, ...], truncated)``, sorted, FITS files only."""
        found: list[dict[str, Any]] = []
        for root in self.roots:
            names: list[str]
            if root.files is not None:
                names = sorted(root.files)
            else:
                names = list(_walk_fits(root.directory, limit - len(found) + 1))
            for name in names:
                if len(found) > limit:
                    break
                try:
                    size = os.stat(os.path.join(root.directory, _without_selector(name))).st_size
                except OSError:
                    continue
                found.append({"fif": self.fif(root, name), "name": name,
                              "folder": root.label or os.path.basename(root.directory),
                              "bytes": size})
        truncated = len(found) > limit
        return found[:limit], truncated

    def route(self, query: str) -> tuple[int, str] | None:
        """``(root index, query for that root's application)``, or None if the
        request names something that is not served."""
        if self._passthrough:
            return 0, query
        from iipy.imaging.paths import split_selector, strip_dotdot
        from iipy.protocols.iip.parser import url_decode

        target: int | None = None
        tokens = []
        for token in query.split("&"):
            key, sep, arg = token.partition("=")
            name = key.lower()
            if name in _PATH_COMMANDS:
                return None
            if name != "fif" or not sep or not arg:
                tokens.append(token)
                continue
            requested = url_decode(arg)
            if len(self.roots) == 1:
                index, relative = 0, requested
            else:
                label, slash, relative = requested.partition("/")
                index = self._by_label.get(label, -1)
                if not slash or index < 0:
                    return None
            allowed = self._allowed[index]
            if allowed is not None and split_selector(strip_dotdot(relative))[0] not in allowed:
                return None
            if target is not None and index != target:
                return None
            target = index
            tokens.append(key + "=" + _encode_fif(relative))
        return (target or 0), "&".join(tokens)


def _walk_fits(directory: str, limit: int):
    """FITS file names below ``directory`` (relative, sorted, hidden entries and links
    leading out of it skipped)."""
    count = 0
    inside = directory.rstrip("/") + "/"
    for top, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = os.path.relpath(top, directory)
        for name in sorted(files):
            if name.startswith(".") or not _is_fits_name(name):
                continue
            if not os.path.realpath(os.path.join(top, name)).startswith(inside):
                continue  # a link out of the folder: the application would refuse it
            yield name if rel == "." else os.path.join(rel, name)
            count += 1
            if count >= limit:
                return


# ---- viewer assets ------------------------------------------------------------------------


def find_local_assets(environ: dict[str, str] | None = None) -> Path:
    """The directory holding ``leaflet.js`` and ``leaflet.css`` for ``--assets local``."""
    env = os.environ if environ is None else environ
    given = env.get("IIPY_VIEWER_ASSETS")
    candidates = [Path(given)] if given else list(LOCAL_ASSET_CANDIDATES)
    for base in candidates:
        for sub in (Path("."), Path("dist"), Path("leaflet") / "dist",
                    Path("node_modules") / "leaflet" / "dist"):
            if (base / sub / "leaflet.js").is_file() and (base / sub / "leaflet.css").is_file():
                return (base / sub).resolve()
    where = given or " or ".join(str(c) for c in candidates)
    raise ServeError(
        "--assets local: no leaflet.js and leaflet.css in %s; run `npm install leaflet@%s` "
        "and set IIPY_VIEWER_ASSETS to node_modules/leaflet/dist" % (where, LEAFLET_VERSION))


def render_index(assets: str) -> bytes:
    """The viewer page with Leaflet's tags for ``assets`` (``cdn`` or ``local``)."""
    if assets == "local":
        css = '<link rel="stylesheet" href="static/leaflet/leaflet.css">'
        js = '<script src="static/leaflet/leaflet.js"></script>'
    else:
        (css_url, css_sri), (js_url, js_sri) = CDN_ASSETS["css"], CDN_ASSETS["js"]
        css = '<link rel="stylesheet" href="%s" integrity="%s" crossorigin="">' % (css_url, css_sri)
        js = '<script src="%s" integrity="%s" crossorigin=""></script>' % (js_url, js_sri)
    page = (STATIC_DIR / "index.html").read_text("utf-8")
    page = page.replace("{{LEAFLET_CSS}}", css).replace("{{LEAFLET_JS}}", js)
    page = page.replace("{{VERSION}}", html.escape(__version__))
    return page.encode("utf-8")


# ---- progress on the terminal -------------------------------------------------------------


class Progress:
    """The ``progress(what, fraction)`` callback of pyramid builds: a bar on a terminal,
    a few lines otherwise.  ``beat`` is called too, so that the supervisor sees a worker
    that builds as busy, not hung.

    The pyramid reports ``"<image>: level K of N"`` with the fraction of that level; the
    bar shows the whole build, each level weighted by its size (level K has a quarter
    of the pixels of level K - 1).
    """

    _LEVEL = re.compile(r"^(.*): level (\d+) of (\d+)$")

    def __init__(self, stream: TextIO, beat: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.stream = stream
        self.beat = beat
        self.clock = clock
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self._what = ""
        self._last = -1e9

    @classmethod
    def overall(cls, what: str, fraction: float) -> tuple[str, float, bool]:
        """(image, fraction of the whole build, finished) for one report."""
        match = cls._LEVEL.match(what)
        if match is None:
            return what, fraction, fraction >= 1.0
        name, level, count = match.group(1), int(match.group(2)), int(match.group(3))
        weights = [0.25 ** k for k in range(max(count, 1))]
        done = sum(weights[: level - 1]) + fraction * weights[min(level, count) - 1]
        return name, done / sum(weights), fraction >= 1.0 and level >= count

    def __call__(self, what: str, fraction: float) -> None:
        if self.beat is not None:
            self.beat()
        name, total, finished = self.overall(what, min(max(float(fraction), 0.0), 1.0))
        now = self.clock()
        new = name != self._what
        if not (new or finished) and now - self._last < (0.1 if self.tty else 2.0):
            return
        self._last = now
        self._what = name
        text = "iipy: building the reduced resolution levels of %s %3d%%" % (
            name, round(100 * total))
        try:
            if self.tty:
                width = 24
                filled = int(width * total)
                bar = "[" + "#" * filled + "-" * (width - filled) + "]"
                self.stream.write("\r\033[K%s %s%s" % (text, bar, " done\n" if finished else ""))
            else:
                self.stream.write(text + (" done" if finished else "") + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass  # the terminal went away: the server keeps serving


# ---- the HTTP front end ---------------------------------------------------------------------


def _http_date(timestamp: float) -> str:
    return email.utils.formatdate(timestamp, usegmt=True)


class FrontEnd:
    """Everything one worker needs to answer HTTP requests (built after the fork)."""

    def __init__(self, catalogue: Catalogue, settings: list[Any], assets: str,
                 asset_dir: Path | None, progress: Callable[[str, float], None] | None):
        from iipy.protocols.router import Application
        from iipy.protocols.http import Responder

        self.catalogue = catalogue
        self.apps = []
        for root_settings in settings:
            app = Application(root_settings)
            app.store.progress = progress
            self.apps.append(app)
        self.responder = Responder(settings[0])
        self.assets = assets
        self.asset_dir = asset_dir
        self.index = render_index(assets)
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

    def static(self, path: str) -> tuple[Path, str] | None:
        """(file, content type) for a ``/static/...`` path, or None."""
        rest = path[len("/static/"):]
        if rest.startswith("leaflet/"):
            if self.asset_dir is None:
                return None
            base = self.asset_dir
            candidate = (base / rest[len("leaflet/"):]).resolve()
            if base not in candidate.parents or not candidate.is_file():
                return None
        else:
            if not _STATIC_NAME.match(rest) or rest == "index.html":
                return None
            candidate = STATIC_DIR / rest
            if not candidate.is_file():
                return None
        ctype = _CONTENT_TYPES.get(candidate.suffix) or mimetypes.guess_type(candidate.name)[0]
        return candidate, ctype or "application/octet-stream"

    def image_list(self) -> bytes:
        images, truncated = self.catalogue.images()
        return json.dumps({"server": "iipy/" + __version__, "iip": "iip", "images": images,
                           "truncated": truncated}, indent=1).encode("utf-8")


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
            if path in IIP_PATHS:
                length = int(self.headers.get("Content-Length") or 0)
                if 0 < length <= 1 << 20:
                    self.rfile.read(length)  # a POST body is not read by iipsrv
                status, headers, body = front.iip(query, self._cgi_params(path, query))
            elif self.command not in ("GET", "HEAD"):
                status, headers, body = 405, [("Allow", "GET, HEAD")], b"Method Not Allowed\n"
            elif path in ("/", "/index.html"):
                status, body = 200, front.index
                headers = [("Content-Type", "text/html; charset=utf-8"),
                           ("Cache-Control", "no-cache")]
            elif path == "/images.json":
                status, body = 200, front.image_list()
                headers = [("Content-Type", "application/json"), ("Cache-Control", "no-cache")]
            elif path.startswith("/static/") and (found := front.static(path)) is not None:
                file, ctype = found
                status, body = 200, file.read_bytes()
                headers = [("Content-Type", ctype), ("Cache-Control", "no-cache"),
                           ("Last-Modified", _http_date(file.stat().st_mtime))]
            else:
                status, headers, body = 404, [("Content-Type", "text/plain")], b"Not Found\n"
        except Exception:
            log.exception("error answering %s", self.path)
            status, headers, body = 500, [("Content-Type", "text/plain")], b"Internal Server Error\n"
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


def _worker_job(make_front: Callable[[Any], FrontEnd], listener: socket.socket, ctx: Any) -> None:
    """What each worker process runs: accept a connection, answer it, repeat."""
    front = make_front(ctx)
    ctx.ready()
    listener.setblocking(False)
    while ctx.alive:
        for _ in ctx.wait([listener]):
            try:
                conn, addr = listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                continue  # another worker took it
            except OSError as exc:
                log.error("accept failed: %s", exc)
                continue
            ctx.notify()
            try:
                conn.setblocking(True)
                conn.settimeout(CLIENT_TIMEOUT)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                RequestHandler(conn, addr, front)
            except OSError as exc:  # the browser gave up on a tile (zoomed away)
                log.debug("connection from %s: %s", addr, exc)
            finally:
                _close(conn)
                ctx.request_done()


def _close(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    conn.close()


# ---- the command --------------------------------------------------------------------------


def _open_browser(url: str) -> None:
    """Open ``url`` in a graphical browser, if there is a display (a text browser would
    take the terminal over)."""
    if sys.platform not in ("darwin", "win32") and not (
            os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return
    try:
        import webbrowser

        webbrowser.open(url)
    except Exception as exc:  # pragma: no cover - depends on the desktop
        log.warning("could not open a browser: %s", exc)


def bind(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, port))
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


def serve_settings(environ: dict[str, str] | None = None, workers: int | None = None):
    """The settings of ``iipy serve``: the environment's, with local defaults.

    Unless set in the environment: log to standard error (VERBOSITY 1 shows warnings
    and errors only), no memcached, ``Cache-Control: no-cache`` (a file rewritten while
    it is being looked at shows its new pixels after a reload), a generous request
    timeout (first use of a large file builds its pyramid), and at most
    :data:`DEFAULT_WORKERS` workers.
    """
    from iipy.settings import Settings

    env = dict(os.environ if environ is None else environ)
    settings = Settings.from_environ(env)
    changes: dict[str, Any] = {"filesystem_suffix": "", "uri_map": ""}
    if "LOGFILE" not in env:
        changes["logfile"] = "-"
    if "MEMCACHED_SERVERS" not in env:
        changes["memcached_servers"] = ""
    if "CACHE_CONTROL" not in env:
        changes["cache_control"] = "no-cache"
    if "IIPY_TIMEOUT" not in env:
        changes["timeout"] = DEFAULT_TIMEOUT
    if workers is not None:
        changes["workers"] = max(1, workers)
    elif "IIPY_WORKERS" not in env:
        changes["workers"] = max(2, min(settings.workers, DEFAULT_WORKERS))
    return settings.replace(**changes)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="FITS file or folder (folders are searched for *.fits, *.fit, "
                             "*.fts and their .fz forms)")
    parser.add_argument("--port", type=int, default=0,
                        help="TCP port on 127.0.0.1 (default: a free port)")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default: IIPY_WORKERS, else up to %d)"
                             % DEFAULT_WORKERS)
    parser.add_argument("--assets", choices=("cdn", "local"), default="cdn",
                        help="where the page loads Leaflet from: a public CDN (default) or a "
                             "local copy (IIPY_VIEWER_ASSETS, else node_modules/leaflet/dist)")
    parser.add_argument("--no-browser", action="store_true",
                        help="do not open a web browser")


def main(args: argparse.Namespace) -> int:
    from iipy.server import logsetup
    from iipy.server.prefork import Supervisor

    try:
        roots = build_roots(args.paths)
        asset_dir = find_local_assets() if args.assets == "local" else None
    except ServeError as exc:
        print("iipy serve: %s" % exc, file=sys.stderr)
        return 2
    settings = serve_settings(workers=args.workers)
    logsetup.configure(settings)
    catalogue = Catalogue(roots)
    root_settings = [settings.replace(filesystem_prefix=root.prefix) for root in roots]
    # Import the heavy modules before forking, so that the workers share their pages.
    from iipy.protocols import router  # noqa: F401

    try:
        listener = bind(args.port)
    except OSError as exc:
        print("iipy serve: cannot listen on %s:%d: %s" % (HOST, args.port, exc.strerror or exc),
              file=sys.stderr)
        return 1
    port = listener.getsockname()[1]
    url = "http://%s:%d/" % (HOST, port)
    images, truncated = catalogue.images()
    out = sys.stdout
    for root in roots:
        what = ("%d file(s) of" % len(root.files)) if root.files is not None else "the folder"
        print("iipy serve: serving %s %s%s" % (
            what, root.directory, " as %s/" % root.label if root.label else ""), file=out)
    print("iipy serve: %d image(s)%s, %d worker(s), Leaflet from %s" % (
        len(images), " (list truncated)" if truncated else "", settings.workers,
        asset_dir or "the CDN (unpkg.com)"), file=out)
    if images:
        example = images[0]["fif"]
        print("iipy serve: IIP endpoint %siip, e.g. %siip?FIF=%s&obj=IIP,1.0&obj=max-size"
              % (url, url, _encode_fif(example)), file=out)
    print("\n  Viewer: %s\n\nCtrl-C stops the server." % url, file=out, flush=True)
    if not args.no_browser:
        _open_browser(url)

    def make_front(ctx: Any) -> FrontEnd:
        progress = Progress(sys.stderr, beat=ctx.notify)
        return FrontEnd(catalogue, root_settings, args.assets, asset_dir, progress)

    status = Supervisor(functools.partial(_worker_job, make_front), settings).run(listener)
    print("iipy serve: stopped", file=out, flush=True)
    return status
