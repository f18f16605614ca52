"""``iipy serve`` without processes: what is served, the routing of FIF to a folder,
the CGI-to-HTTP translation, the settings, the viewer page and the progress output."""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from iipy.server import cgi
from iipy.viewer import assets, catalogue, command, frontend
from iipy.viewer.progress import Progress
from iipy.protocols.iip.parser import url_decode


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "a", tmp_path / "b" / "data"
    for folder, names in ((a, ("x.fits", "y.fit", "notes.txt", ".hidden.fits")),
                          (b, ("x.fits", "z.fits.fz"))):
        folder.mkdir(parents=True)
        for name in names:
            (folder / name).write_bytes(b"0" * 2880)
    (a / "sub").mkdir()
    (a / "sub" / "deep.fts").write_bytes(b"0" * 2880)
    return a, b


def test_one_folder_passes_requests_through(folders) -> None:
    a, _ = folders
    roots = catalogue.build_roots([str(a)])
    assert roots == [catalogue.Root("", str(a.resolve()), None)]
    cat = catalogue.Catalogue(roots)
    query = "FIF=../x.fits&obj=IIP,1.0"
    assert cat.route(query) == (0, query)  # confinement is the application's (prefix)
    images, truncated = cat.images()
    assert [i["fif"] for i in images] == ["x.fits", "y.fit", "sub/deep.fts"]  # top first
    assert not truncated


def test_files_let_only_themselves_through(folders) -> None:
    a, _ = folders
    cat = catalogue.Catalogue(catalogue.build_roots([str(a / "x.fits"), f"{a}/y.fit[1]"]))
    assert [i["fif"] for i in cat.images()[0]] == ["x.fits", "y.fit[1]"]
    assert cat.route("FIF=x.fits&JTL=0,0") == (0, "FIF=x.fits&JTL=0,0")
    assert cat.route("FIF=y.fit[2]&obj=max-size")[1] == "FIF=y.fit[2]&obj=max-size"
    assert cat.route("fif=%78.fits&JTL=0,0") == (0, "fif=x.fits&JTL=0,0")
    for refused in ("FIF=notes.txt", "FIF=sub/deep.fts", "FIF=./x.fits", "FIF=/etc/passwd",
                    "FIF=x.fits&FIF=notes.txt", "FIF=x.fits&IIIF=notes.txt/info.json",
                    "FIF", "FIF=x.fits&FIF", "FIF=x.fits&fIf"):
        assert cat.route(refused + "&obj=max-size") is None, refused
    assert cat.route("FIF=....//x.fits&JTL=0,0") is not None  # iipsrv's ../ removal: x.fits


def test_several_folders_get_labels(folders) -> None:
    a, b = folders
    roots = catalogue.build_roots([str(b), str(a), str(a / "x.fits")])
    assert [(r.label, r.files) for r in roots] == [("a", None), ("data", None)]
    cat = catalogue.Catalogue(roots)
    fifs = [i["fif"] for i in cat.images()[0]]
    assert fifs == ["a/x.fits", "a/y.fit", "a/sub/deep.fts", "data/x.fits", "data/z.fits.fz"]
    assert cat.route("FIF=data/x.fits&JTL=0,0") == (1, "FIF=x.fits&JTL=0,0")
    assert cat.route("obj=IIP,1.0&FIF=a/sub/deep.fts") == (0, "obj=IIP,1.0&FIF=sub/deep.fts")
    assert cat.route("FIF=x.fits&JTL=0,0") is None
    assert cat.route("FIF=zzz/x.fits&JTL=0,0") is None
    assert cat.route("FIF=a/x.fits&FIF=data/x.fits&JTL=0,0") is None
    # A name needing escapes reaches the application unchanged.
    routed = cat.route("FIF=a/odd%20name%26%2B%25.fits&JTL=0,0")
    assert routed is not None
    fif = routed[1].split("&", 1)[0][4:]
    assert url_decode(fif) == "odd name&+%.fits"


def test_links(folders, tmp_path: Path) -> None:
    a, b = folders
    (tmp_path / "link.fits").symlink_to(b / "x.fits")
    (a / "out.fits").symlink_to(b / "z.fits.fz")
    (a / "in.fits").symlink_to(a / "x.fits")
    roots = catalogue.build_roots([str(tmp_path / "link.fits")])
    assert roots == [catalogue.Root("", str(b.resolve()), frozenset({"x.fits"}))]
    names = [i["fif"] for i in catalogue.Catalogue(catalogue.build_roots([str(a)])).images()[0]]
    assert "in.fits" in names and "out.fits" not in names


def test_same_folder_names_are_told_apart(tmp_path: Path) -> None:
    one, two = tmp_path / "1" / "data", tmp_path / "2" / "data"
    one.mkdir(parents=True)
    two.mkdir(parents=True)
    assert [r.label for r in catalogue.build_roots([str(one), str(two)])] == ["data", "data-2"]


def test_missing_paths_are_errors(tmp_path: Path) -> None:
    with pytest.raises(catalogue.ServeError, match="no such file or folder"):
        catalogue.build_roots([str(tmp_path / "nope.fits")])
    with pytest.raises(catalogue.ServeError):
        catalogue.build_roots([str(tmp_path / "nope.fits[1]")])


def test_parse_cgi_turns_status_into_http() -> None:
    raw = b"Status: 404 Not Found\r\nServer: iipy\r\nContent-Length: 3\r\n\r\nabc"
    assert cgi.parse_cgi(raw) == (404, [("Server", "iipy"), ("Content-Length", "3")], b"abc")
    assert cgi.parse_cgi(b"Content-Type: text/plain\r\n\r\nok") == (
        200, [("Content-Type", "text/plain")], b"ok")
    assert cgi.parse_cgi(b"Status: 304 Not Modified\r\n\r\n")[0] == 304


def test_settings_for_a_laptop() -> None:
    settings = command.serve_settings({})
    assert settings.logfile == "-" and settings.memcached_servers == ""
    assert settings.cache_control == "no-cache" and settings.timeout == command.DEFAULT_TIMEOUT
    assert 2 <= settings.workers <= command.DEFAULT_WORKERS
    env = {"LOGFILE": "/tmp/x.log", "MEMCACHED_SERVERS": "localhost", "IIPY_WORKERS": "7",
           "IIPY_TIMEOUT": "30", "CACHE_CONTROL": "max-age=60", "URI_MAP": "a=>b"}
    settings = command.serve_settings(env)
    assert (settings.logfile, settings.memcached_servers, settings.workers, settings.timeout,
            settings.cache_control, settings.uri_map) == (
        "/tmp/x.log", "localhost", 7, 30.0, "max-age=60", "")
    assert command.serve_settings({}, workers=3).workers == 3


def test_index_page_assets() -> None:
    cdn = assets.render_index("cdn").decode()
    assert 'src="https://unpkg.com/leaflet@1.9.4/dist/leaflet.js"' in cdn
    assert 'integrity="sha256-' in cdn and "{{" not in cdn
    local = assets.render_index("local").decode()
    assert 'src="static/leaflet/leaflet.js"' in local and "unpkg" not in local


def test_local_assets_lookup(tmp_path: Path) -> None:
    dist = tmp_path / "node_modules" / "leaflet" / "dist"
    dist.mkdir(parents=True)
    (dist / "leaflet.js").write_text("")
    (dist / "leaflet.css").write_text("")
    for given in (dist, tmp_path / "node_modules" / "leaflet", tmp_path):
        assert assets.find_local_assets({"IIPY_VIEWER_ASSETS": str(given)}) == dist.resolve()
    with pytest.raises(assets.AssetError, match="no leaflet.js and leaflet.css in"):
        assets.find_local_assets({"IIPY_VIEWER_ASSETS": str(tmp_path / "elsewhere")})


def test_leaflet_comes_with_iipy() -> None:
    """Without IIPY_VIEWER_ASSETS, --assets local (the default) serves the files of the
    XStatic-Leaflet package, an install requirement: the page needs no network."""
    found = assets.packaged_leaflet()
    assert found is not None, "XStatic-Leaflet is not installed"
    directory, version = found
    assert version.startswith("1.9.")
    assert assets.find_local_assets({}) == directory.resolve()
    for name in ("leaflet.js", "leaflet.css", "images/layers.png"):
        assert assets.static_file("/static/leaflet/" + name, directory.resolve()) is not None
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    assert parser.parse_args(["x.fits"]).assets == "local"


def test_world_coordinates_endpoint(tmp_path: Path) -> None:
    """/wcs.json: the header's WCS both ways (astropy's numbers), and clean errors."""
    hdr = fits.Header()
    for key, value in dict(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRVAL1=150.1, CRVAL2=2.2,
                           CRPIX1=50.5, CRPIX2=40.5, CD1_1=-5e-5, CD1_2=1e-6, CD2_1=1e-6,
                           CD2_2=5e-5).items():
        hdr[key] = value
    fits.PrimaryHDU(np.zeros((80, 100), np.float32), hdr).writeto(tmp_path / "w.fits")
    fits.PrimaryHDU(np.zeros((8, 10), np.float32)).writeto(tmp_path / "plain.fits")
    (tmp_path / "other.fits").write_bytes(b"")
    roots = catalogue.build_roots([str(tmp_path / "w.fits"), str(tmp_path / "plain.fits")])
    env = {"IIPY_CACHE_DIR": str(tmp_path / "cache"), "VERBOSITY": "0"}
    front = frontend.FrontEnd(catalogue.Catalogue(roots), [
        command.serve_settings(env).replace(filesystem_prefix=root.prefix) for root in roots],
        "local", None, None)

    def get(query: str, status: int = 200) -> dict:
        code, headers, body = front.world(query)
        assert code == status and ("Content-Type", "application/json") in headers
        return json.loads(body)

    answer = get("FIF=w.fits&pixel=10,20.5")
    want = WCS(hdr).all_pix2world([[10, 20.5]], 1)[0]
    assert answer["celestial"] and answer["pixel"] == [10, 20.5]
    assert answer["world"] == pytest.approx(list(want), abs=1e-12)
    assert (answer["lon_name"], answer["lat_name"], answer["system"]) == ("RA", "Dec", "ICRS")
    back = get("FIF=w.fits&world=%r,%r" % tuple(float(v) for v in want))
    assert back["pixel"] == pytest.approx([10, 20.5], abs=1e-8)
    assert get("FIF=plain.fits&pixel=1,1") == {"celestial": False}
    assert "not served" in get("FIF=other.fits&pixel=1,1", 404)["error"]
    for bad in ("FIF=w.fits", "FIF=w.fits&pixel=1", "FIF=w.fits&pixel=nan,1",
                "FIF=w.fits&pixel=1,2&world=3,4", "pixel=1,2"):
        assert "expected" in get(bad, 400)["error"], bad
    # The far side of the projection has no pixel.
    assert get("FIF=w.fits&world=330.1,-2.2")["pixel"] is None


def test_static_files_stay_in_their_directories(tmp_path: Path) -> None:
    front = frontend.FrontEnd.__new__(frontend.FrontEnd)
    front.asset_dir = tmp_path
    (tmp_path / "leaflet.js").write_text("")
    assert front.static("/static/viewer.js")[1] == "application/javascript"
    assert front.static("/static/viewer.css")[1] == "text/css"
    assert front.static("/static/leaflet/leaflet.js") == (tmp_path / "leaflet.js",
                                                          "application/javascript")
    for path in ("/static/../serve.py", "/static/index.html", "/static/leaflet/../x",
                 "/static/leaflet/../../etc/passwd", "/static/.hidden", "/static/nope.js"):
        assert front.static(path) is None, path


class _Terminal(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_progress_on_a_terminal_and_in_a_log() -> None:
    now = [0.0]
    beats = []
    term = _Terminal(True)
    progress = Progress(term, beat=lambda: beats.append(1), clock=lambda: now[0])
    progress("big.fits: level 1 of 2", 0.5)
    progress("big.fits: level 1 of 2", 0.6)  # throttled
    now[0] = 1.0
    progress("big.fits: level 1 of 2", 1.0)
    progress("big.fits: level 2 of 2", 1.0)
    text = term.getvalue()
    assert "levels of big.fits  40% [#########" in text and " 48%" not in text
    assert " 80% [###################-----]" in text
    assert text.endswith("100% [########################] done\n")
    assert len(beats) == 4
    log = _Terminal(False)
    progress = Progress(log, clock=lambda: now[0])
    for level, f in ((1, 0.1), (1, 0.2), (1, 1.0), (2, 1.0)):
        progress(f"big.fits: level {level} of 2", f)
    assert log.getvalue().splitlines() == [
        "iipy: building the reduced resolution levels of big.fits   8%",
        "iipy: building the reduced resolution levels of big.fits 100% done"]


def test_progress_weights_levels_by_size() -> None:
    assert Progress.overall("a.fits: level 1 of 3", 1.0)[1] == pytest.approx(16 / 21)
    assert Progress.overall("a.fits: level 3 of 3", 1.0) == ("a.fits", 1.0, True)
    assert Progress.overall("something else", 0.5) == ("something else", 0.5, False)


def test_cli_has_serve() -> None:
    from iipy import cli

    with pytest.raises(SystemExit) as exc:
        cli.main(["serve", "--help"])
    assert exc.value.code == 0
    assert cli.main(["serve", "/nonexistent/path.fits"]) == 2


def test_static_directory_is_package_data() -> None:
    names = sorted(os.listdir(assets.STATIC_DIR))
    assert names == ["index.html", "viewer.css", "viewer.js"]


def test_importing_iipy_stays_cheap() -> None:
    """``iipy.show`` is re-exported lazily: ``import iipy`` loads nothing else of iipy,
    and the notebook module needs neither numpy nor astropy."""
    code = (
        "import sys, iipy\n"
        "def loaded(): return sorted(m for m in sys.modules if m.split('.')[0] in "
        "('numpy', 'astropy', 'PIL') or m.startswith('iipy.'))\n"
        "print(loaded())\n"
        "show = iipy.show\n"
        "from iipy.viewer import notebook\n"
        "assert show is notebook.show\n"
        "print(loaded())\n")
    root = Path(__file__).resolve().parents[2]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert out == ["[]", "['iipy.settings', 'iipy.viewer', 'iipy.viewer.notebook']"]
    with pytest.raises(AttributeError):
        getattr(__import__("iipy"), "nothing")


def test_notebook_frame_and_hash() -> None:
    """The state ``iipy.show`` puts in the viewer's address, and the frame's HTML."""
    from iipy.viewer import notebook

    assert notebook.view_hash("a b/m31.fits[1]", stretch="power", gamma=2.5, pixel=(10, 20.5),
                              zoom=2) == \
        "#fif=a%20b/m31.fits[1]&x=10.0&y=20.5&zoom=2&stretch=power&gamma=2.5"
    assert notebook.view_hash(None) == ""
    for bad in ({"stretch": "cubic"}, {"colormap": "viridis"}, {"vmin": 1},
                {"center": (float("nan"), 0)}):
        with pytest.raises(ValueError):
            notebook.view_hash("x.fits", **bad)
    frame = notebook.View('http://127.0.0.1:1/#fif=a"b<c>.fits', height=300)._repr_html_()
    assert frame == ('<iframe src="http://127.0.0.1:1/#fif=a&quot;b&lt;c&gt;.fits" '
                     'style="width: 100%; height: 300px; border: 0" title="iipy viewer" '
                     'allowfullscreen></iframe>')
