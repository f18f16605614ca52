"""``iipy serve PATH...``: look at FITS files in a browser, without a web server.

The same :class:`~iipy.protocols.router.Application` that answers FastCGI requests sits behind a
small HTTP front end (the standard library's ``http.server`` request parser) on
127.0.0.1 and a free port:

``/``                      the viewer page (``iipy/viewer/static/index.html``)
``/static/NAME``           the viewer's script and style sheet (``iipy/viewer/static/``)
``/static/leaflet/...``    Leaflet (``--assets local``, the default)
``/images.json``           the images that can be shown, as JSON
``/wcs.json?FIF=..&..``    world coordinates of a pixel, or the pixel of a position
                           (``frontend.FrontEnd.world``)
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
progress on the terminal (standard error).  Leaflet is served by iipy itself under
``/static/leaflet/`` (``--assets local``, the default): the files of the XStatic-Leaflet
package installed with iipy, or those of the directory named by ``IIPY_VIEWER_ASSETS``;
the page then needs no network at all.  ``--assets cdn`` loads Leaflet from unpkg.com
instead.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from typing import Any

from iipy import settings as settings_module
from iipy.server import logsetup, sockets
from iipy.server.prefork import Supervisor
from iipy.settings import Settings
from iipy.viewer.assets import AssetError, find_local_assets
from iipy.viewer.catalogue import Catalogue, ServeError, build_roots, encode_fif
from iipy.viewer.frontend import HOST, FrontEnd, worker_job
from iipy.viewer.progress import Progress

log = logging.getLogger(__name__)

#: Seconds a worker may spend on one request unless IIPY_TIMEOUT says otherwise: the
#: first request on a large file waits for its pyramid, which may take minutes.
DEFAULT_TIMEOUT = 900.0
#: Connections waiting to be accepted (a browser opens a few per page).
LISTEN_BACKLOG = 128
#: Default number of worker processes (IIPY_WORKERS or --workers override it).
DEFAULT_WORKERS = 4


def _open_browser(url: str) -> None:
    """Open ``url`` in a graphical browser, if there is a display (a text browser would
    take the terminal over)."""
    if sys.platform not in ("darwin", "win32") and not (
            settings_module.environ().get("DISPLAY")
            or settings_module.environ().get("WAYLAND_DISPLAY")):
        return
    try:
        import webbrowser

        webbrowser.open(url)
    except Exception as exc:  # pragma: no cover - depends on the desktop
        log.warning("could not open a browser: %s", exc)


def serve_settings(environ: dict[str, str] | None = None, workers: int | None = None):
    """The settings of ``iipy serve``: the environment's, with local defaults.

    Unless set in the environment: log to standard error (VERBOSITY 1 shows warnings
    and errors only), no memcached, ``Cache-Control: no-cache`` (a file rewritten while
    it is being looked at shows its new pixels after a reload), a generous request
    timeout (first use of a large file builds its pyramid), and at most
    :data:`DEFAULT_WORKERS` workers.
    """
    env = dict(settings_module.environ() if environ is None else environ)
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
    parser.add_argument("--assets", choices=("local", "cdn"), default="local",
                        help="where the page loads Leaflet from: iipy itself (default: the "
                             "XStatic-Leaflet package, or IIPY_VIEWER_ASSETS), or a public CDN")
    parser.add_argument("--no-browser", action="store_true",
                        help="do not open a web browser")


def main(args: argparse.Namespace) -> int:
    try:
        roots = build_roots(args.paths)
        asset_dir = find_local_assets() if args.assets == "local" else None
    except (ServeError, AssetError) as exc:
        print("iipy serve: %s" % exc, file=sys.stderr)
        return 2
    settings = serve_settings(workers=args.workers)
    logsetup.configure(settings)
    catalogue = Catalogue(roots)
    root_settings = [settings.replace(filesystem_prefix=root.prefix) for root in roots]
    # Import the heavy modules before forking, so that the workers share their pages.
    import iipy.protocols.router  # noqa: F401

    try:
        listener = sockets.bind_tcp(HOST, args.port, LISTEN_BACKLOG)
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
              % (url, url, encode_fif(example)), file=out)
    print("\n  Viewer: %s\n\nCtrl-C stops the server." % url, file=out, flush=True)
    if not args.no_browser:
        _open_browser(url)

    def make_front(ctx: Any) -> FrontEnd:
        progress = Progress(sys.stderr, beat=ctx.notify)
        return FrontEnd(catalogue, root_settings, args.assets, asset_dir, progress)

    status = Supervisor(functools.partial(worker_job, make_front), settings,
                        reopen_logs=logsetup.reopen).run(listener)
    print("iipy serve: stopped", file=out, flush=True)
    return status
