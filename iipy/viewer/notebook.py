"""``iipy.show``: the viewer of ``iipy serve`` inline in a Jupyter notebook.

``show("m31.fits", stretch="asinh", center=(10.68, 41.27))`` starts ``iipy serve`` on the
file (or folder) in the background, as a child process on 127.0.0.1 and a free port,
or reuses the one already serving it, and returns a :class:`View` whose
``_repr_html_`` is an ``<iframe>`` of the viewer with the display state in its address
(the hash the viewer reads, documented in ``static/viewer.js``).

Each file (or folder) gets its own server, serving only it; they are stopped when the
interpreter exits (and, on Linux, when it dies: the kernel sends them SIGTERM).  The
browser showing the notebook must reach 127.0.0.1 of the machine running the kernel:
a local Jupyter, or a tunnel to a remote one.

This module stays cheap to import (no numpy, no astropy): ``import iipy`` re-exports
``show`` lazily.
"""

from __future__ import annotations

import atexit
import html
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from typing import Any
from urllib.parse import quote

from iipy import settings as settings_module

#: The line ``iipy serve`` prints with the viewer's address.
URL_LINE = re.compile(rb"Viewer: (http://127\.0\.0\.1:\d+/)")
#: Seconds a server may take to print its address.
START_TIMEOUT = 60.0
#: Seconds a server may take to stop after SIGTERM before it is killed.
STOP_TIMEOUT = 5.0
#: Worker processes of each server.
WORKERS = 2
STRETCHES = ("linear", "sqrt", "log", "asinh", "power", "equalise")
COLORMAPS = ("grey", "jet", "hot", "cold")
_SELECTOR = re.compile(r"^(.*?)(\[[^\[\]]*\])$")


class ShowError(RuntimeError):
    """The server could not be started."""


def _death_signal() -> Any:
    """A function for ``preexec_fn`` that asks Linux to send SIGTERM to the child when
    its parent dies (prctl PR_SET_PDEATHSIG), or None elsewhere.  libc is loaded here,
    before the fork, so the child only calls a function."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1: PR_SET_PDEATHSIG


class Server:
    """One ``iipy serve PATH`` child process and the address of its viewer."""

    def __init__(self, path: str, workers: int = WORKERS):
        self.path = path
        env = dict(settings_module.environ())
        # the child imports this very iipy, wherever it was imported from
        package_parent = os.path.dirname(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__))))
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_parent, env.get("PYTHONPATH", "")) if p)
        cmd = [sys.executable, "-m", "iipy.cli", "serve", path, "--port", "0",
               "--no-browser", "--workers", str(workers)]
        self.process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        env=env, start_new_session=True,
                                        preexec_fn=_death_signal())
        try:
            self.url = self._read_url()
        except BaseException:
            self.stop()
            raise
        threading.Thread(target=self._drain, name="iipy-serve-output", daemon=True).start()

    def _read_url(self) -> str:
        out = self.process.stdout
        assert out is not None
        seen = b""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            match = URL_LINE.search(seen)
            if match:
                return match.group(1).decode("ascii")
            left = deadline - time.monotonic()
            if left <= 0:
                raise ShowError("iipy serve %s did not start within %g s" % (
                    self.path, START_TIMEOUT))
            ready, _, _ = select.select([out], [], [], left)
            chunk = os.read(out.fileno(), 4096) if ready else b""
            if ready and not chunk:
                self.process.wait()
                raise ShowError("iipy serve %s exited with status %s: %s" % (
                    self.path, self.process.returncode,
                    seen.decode("utf-8", "replace").strip()[-500:]))
            seen += chunk

    def _drain(self) -> None:
        """Read (and drop) the rest of the server's output, so that it never blocks."""
        out = self.process.stdout
        try:
            while out is not None and os.read(out.fileno(), 65536):
                pass
        except (OSError, ValueError):
            pass

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM (the server lets its requests finish), SIGKILL to its process group
        after STOP_TIMEOUT."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


_servers: dict[str, Server] = {}
_lock = threading.Lock()


def server_for(path: str) -> Server:
    """The running server of ``path`` (a file, its selector left out, or a folder),
    started if needed."""
    key = os.path.realpath(path)
    with _lock:
        server = _servers.get(key)
        if server is None or not server.alive:
            if server is not None:
                server.stop()
            if not _servers:
                atexit.register(stop_all)
            server = _servers[key] = Server(path)
        return server


def stop_all() -> None:
    """Stop every server started by :func:`show`."""
    with _lock:
        servers = list(_servers.values())
        _servers.clear()
    for server in servers:
        server.stop()


class View:
    """The viewer at ``url``, shown as an ``<iframe>`` by Jupyter."""

    def __init__(self, url: str, width: str | int = "100%", height: int = 600):
        self.url = url
        self.width = width
        self.height = height

    def _repr_html_(self) -> str:
        width = "%dpx" % self.width if isinstance(self.width, int) else str(self.width)
        return ('<iframe src="%s" style="width: %s; height: %dpx; border: 0" '
                'title="iipy viewer" allowfullscreen></iframe>'
                % (html.escape(self.url, quote=True), html.escape(width, quote=True),
                   int(self.height)))

    def __repr__(self) -> str:
        return "iipy viewer: %s" % self.url


def _number(value: Any) -> str:
    number = float(value)
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError("not a finite number: %r" % (value,))
    return repr(number)


def view_hash(fif: str | None, stretch: str | None = None, center: Any = None,
              pixel: tuple[float, float] | None = None, zoom: int | None = None,
              colormap: str | None = None, vmin: float | None = None,
              vmax: float | None = None, gamma: float | None = None,
              beta: float | None = None) -> str:
    """The viewer's hash for these settings (see ``show``)."""
    parts = []
    if fif is not None:
        parts.append("fif=" + quote(fif, safe="/[],"))
    if center is not None:
        if hasattr(center, "ra") and hasattr(center, "dec"):  # an astropy SkyCoord
            center = (center.ra.deg, center.dec.deg)
        ra, dec = center
        parts += ["ra=" + _number(ra), "dec=" + _number(dec)]
    elif pixel is not None:
        parts += ["x=" + _number(pixel[0]), "y=" + _number(pixel[1])]
    if zoom is not None:
        parts.append("zoom=%d" % int(zoom))
    if stretch is not None:
        if stretch not in STRETCHES:
            raise ValueError("stretch must be one of %s" % ", ".join(STRETCHES))
        parts.append("stretch=" + stretch)
    if gamma is not None:
        parts.append("gamma=" + _number(gamma))
    if beta is not None:
        parts.append("beta=" + _number(beta))
    if colormap is not None:
        if colormap not in COLORMAPS:
            raise ValueError("colormap must be one of %s" % ", ".join(COLORMAPS))
        parts.append("cmap=" + colormap)
    if (vmin is None) != (vmax is None):
        raise ValueError("give both vmin and vmax, or neither")
    if vmin is not None:
        parts += ["min=" + _number(vmin), "max=" + _number(vmax)]
    return "#" + "&".join(parts) if parts else ""


def show(path: str | os.PathLike, *, stretch: str | None = None, center: Any = None,
         pixel: tuple[float, float] | None = None, zoom: int | None = None,
         colormap: str | None = None, vmin: float | None = None, vmax: float | None = None,
         gamma: float | None = None, beta: float | None = None,
         width: str | int = "100%", height: int = 600) -> View:
    """Show a FITS file (``m31.fits``, ``mosaic.fits[2]``) or a folder of them in the
    viewer of ``iipy serve``, inline in a notebook.

    ``stretch``: linear, sqrt, log, asinh, power (with ``gamma``, the display gamma) or
    equalise; ``beta``: the softening of asinh.  ``center``: (RA, Dec) in degrees (or
    an astropy SkyCoord), converted to a pixel with the image's own WCS; or ``pixel``:
    (x, y) FITS pixels.  ``zoom``: the map's zoom (0 shows the smallest level, each
    step doubles).  ``colormap``: grey, jet, hot or cold.  ``vmin``, ``vmax``: the display
    range, for every channel.  Anything not given is the viewer's default.  ``width``
    and ``height``: the frame's size (CSS width, pixels).
    """
    given = os.fspath(path)
    name, selector = given, ""
    match = _SELECTOR.match(given)
    if match and not os.path.exists(given) and os.path.isfile(match.group(1)):
        name, selector = match.group(1), match.group(2)
    if not os.path.exists(name):
        raise FileNotFoundError(given)
    fif = None if os.path.isdir(name) else os.path.basename(name) + selector
    fragment = view_hash(fif, stretch, center, pixel, zoom, colormap, vmin, vmax, gamma, beta)
    server = server_for(name)
    return View(server.url + fragment, width, height)
