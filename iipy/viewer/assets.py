"""The viewer's page and static files, and where Leaflet comes from (a public CDN, or a
local copy with ``--assets local``)."""

from __future__ import annotations

import html
import mimetypes
import re
from pathlib import Path

from iipy import __version__, settings


class AssetError(Exception):
    """Leaflet cannot be found for ``--assets local``."""

STATIC_DIR = Path(__file__).resolve().parent / "static"
#: Where ``--assets local`` looks for Leaflet when IIPY_VIEWER_ASSETS is not set.
LOCAL_ASSET_CANDIDATES = (
    Path("node_modules") / "leaflet" / "dist",
    Path(__file__).resolve().parents[2] / "tests" / "e2e" / "browser" / "node_modules" / "leaflet" / "dist",
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


def find_local_assets(environ: dict[str, str] | None = None) -> Path:
    """The directory holding ``leaflet.js`` and ``leaflet.css`` for ``--assets local``."""
    env = settings.environ() if environ is None else environ
    given = env.get("IIPY_VIEWER_ASSETS")
    candidates = [Path(given)] if given else list(LOCAL_ASSET_CANDIDATES)
    for base in candidates:
        for sub in (Path("."), Path("dist"), Path("leaflet") / "dist",
                    Path("node_modules") / "leaflet" / "dist"):
            if (base / sub / "leaflet.js").is_file() and (base / sub / "leaflet.css").is_file():
                return (base / sub).resolve()
    where = given or " or ".join(str(c) for c in candidates)
    raise AssetError(
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
