"""The viewer's page and static files, and where Leaflet comes from: served by iipy
itself (the default, ``--assets local``: the XStatic-Leaflet package installed with
iipy, or the directory named by IIPY_VIEWER_ASSETS), or a public CDN (``--assets cdn``)."""

from __future__ import annotations

import html
import mimetypes
import re
from pathlib import Path

from iipy import __version__, settings


class AssetError(Exception):
    """Leaflet cannot be found for ``--assets local``."""

STATIC_DIR = Path(__file__).resolve().parent / "static"
#: The Leaflet of ``--assets cdn``, on unpkg.com, with the Subresource Integrity hashes
#: of those exact files.
CDN_LEAFLET_VERSION = "1.9.4"
CDN_ASSETS = {
    "css": ("https://unpkg.com/leaflet@%s/dist/leaflet.css" % CDN_LEAFLET_VERSION,
            "sha256-p4NxAoJBhIIN+hmNHrzRCf9tD/miZyoHS5obTRR9BMY="),
    "js": ("https://unpkg.com/leaflet@%s/dist/leaflet.js" % CDN_LEAFLET_VERSION,
           "sha256-20nQCchB9co0qIjJZRGuk2/Z9VM+kNiyxNV1lvTlZBo="),
}
_STATIC_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
_CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "application/javascript",
                  ".css": "text/css", ".json": "application/json", ".png": "image/png",
                  ".svg": "image/svg+xml", ".map": "application/json"}


def packaged_leaflet() -> tuple[Path, str] | None:
    """(directory, version) of Leaflet's files in the XStatic-Leaflet package, or None
    when it is not installed."""
    try:
        import xstatic.pkg.leaflet as package
    except ImportError:
        return None
    return Path(package.BASE_DIR), str(package.VERSION)


def find_local_assets(environ: dict[str, str] | None = None) -> Path:
    """The directory holding ``leaflet.js`` and ``leaflet.css`` for ``--assets local``:
    IIPY_VIEWER_ASSETS when set (the directory, or a ``dist``, ``leaflet/dist`` or
    ``node_modules/leaflet/dist`` below it), else the XStatic-Leaflet package's."""
    env = settings.environ() if environ is None else environ
    given = env.get("IIPY_VIEWER_ASSETS")
    if given:
        candidates = [Path(given) / sub for sub in (
            Path("."), Path("dist"), Path("leaflet") / "dist",
            Path("node_modules") / "leaflet" / "dist")]
        where = given
    else:
        found = packaged_leaflet()
        candidates = [found[0]] if found else []
        where = "the XStatic-Leaflet package" if found else None
    for base in candidates:
        if (base / "leaflet.js").is_file() and (base / "leaflet.css").is_file():
            return base.resolve()
    if where is None:
        raise AssetError("--assets local: the XStatic-Leaflet package is not installed "
                         "(pip install XStatic-Leaflet), and IIPY_VIEWER_ASSETS is not set")
    raise AssetError("--assets local: no leaflet.js and leaflet.css in %s; set "
                     "IIPY_VIEWER_ASSETS to a directory holding them, or use --assets cdn"
                     % where)


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


def static_file(path: str, asset_dir: Path | None) -> tuple[Path, str] | None:
    """(file, content type) for a ``/static/...`` path, or None: the viewer's own files
    (plain names only), and Leaflet's under ``/static/leaflet/`` from ``asset_dir``."""
    rest = path[len("/static/"):]
    if rest.startswith("leaflet/"):
        if asset_dir is None:
            return None
        candidate = (asset_dir / rest[len("leaflet/"):]).resolve()
        if asset_dir not in candidate.parents or not candidate.is_file():
            return None
    else:
        if not _STATIC_NAME.match(rest) or rest == "index.html":
            return None
        candidate = STATIC_DIR / rest
        if not candidate.is_file():
            return None
    ctype = _CONTENT_TYPES.get(candidate.suffix) or mimetypes.guess_type(candidate.name)[0]
    return candidate, ctype or "application/octet-stream"
