"""``iipy.show`` (iipy/viewer/notebook.py) as a notebook uses it: the HTML it displays,
and the ``iipy serve`` it starts in the background, which answers, serves only the
file shown, is reused for the same file, and stops."""

from __future__ import annotations

import html
import json
import os
import re

import pytest
from astropy.io import fits
from astropy.wcs import WCS

import iipy
from tests.e2e.conftest import http_get

pytestmark = pytest.mark.e2e

IFRAME = re.compile(r'<iframe src="([^"]+)" style="width: 100%; height: 600px; border: 0" '
                    r'title="iipy viewer" allowfullscreen></iframe>')


@pytest.fixture
def notebook(monkeypatch: pytest.MonkeyPatch, tmp_path):
    """The notebook module, its servers writing their pyramids under tmp_path; every
    server is stopped at teardown, and must have exited cleanly."""
    for name in list(os.environ):
        if name.startswith("IIPY_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("IIPY_CACHE_DIR", str(tmp_path / "cache"))
    from iipy.viewer import notebook

    started = []
    real = notebook.Server

    def recording(*args, **kwargs):
        server = real(*args, **kwargs)
        started.append(server)
        return server

    monkeypatch.setattr(notebook, "Server", recording)
    yield notebook
    notebook.stop_all()
    assert [s.process.returncode for s in started] == [0] * len(started)


def test_show_starts_a_server_and_frames_the_viewer(notebook, example_data) -> None:
    with fits.open(example_data["sky"]) as hdul:
        wcs = WCS(hdul[0].header)
    ra, dec = (float(v) for v in wcs.all_pix2world([[700.5, 500.5]], 1)[0])
    view = iipy.show(example_data["sky"], stretch="asinh", center=(ra, dec), zoom=3)
    match = IFRAME.fullmatch(view._repr_html_())
    assert match, view._repr_html_()
    src = html.unescape(match.group(1))
    assert src == view.url
    base, _, fragment = src.partition("#")
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", base)
    assert fragment == "fif=sky.fits&ra=%r&dec=%r&zoom=3&stretch=asinh" % (ra, dec)

    # The server answers: the page, the image list (that file only), IIP, world coordinates.
    status, _, body = http_get(base)
    assert status == 200 and b"<title>iipy viewer</title>" in body
    status, _, body = http_get(base + "images.json")
    assert status == 200 and [i["fif"] for i in json.loads(body)["images"]] == ["sky.fits"]
    status, _, body = http_get(base + "iip?FIF=sky.fits&obj=IIP,1.0&obj=max-size")
    assert status == 200 and body == b"IIP:1.0\r\nMax-size:2048 1536\r\n"
    status, _, body = http_get(base + "wcs.json?FIF=sky.fits&world=%r,%r" % (ra, dec))
    x, y = json.loads(body)["pixel"]
    assert abs(x - 700.5) < 1e-6 and abs(y - 500.5) < 1e-6
    assert http_get(base + "iip?FIF=cube.fits&obj=max-size")[0] == 404

    # The same file: the same server; another file: another server.
    again = iipy.show(str(example_data["sky"]), colormap="hot", vmin=90, vmax=200,
                      width=800, height=400)
    assert again.url == base + "#fif=sky.fits&cmap=hot&min=90.0&max=200.0"
    assert 'style="width: 800px; height: 400px; border: 0"' in again._repr_html_()
    other = iipy.show(example_data["cube"])
    assert not other.url.startswith(base) and other.url.endswith("/#fif=cube.fits")
    assert len(notebook._servers) == 2
    with pytest.raises(ValueError, match="stretch must be one of"):
        iipy.show(example_data["sky"], stretch="cubic")
    with pytest.raises(FileNotFoundError):
        iipy.show(example_data.dir / "nothing.fits")

    processes = [s.process for s in notebook._servers.values()]
    notebook.stop_all()
    assert all(p.returncode == 0 for p in processes)
    with pytest.raises(OSError):
        http_get(base + "images.json", timeout=2)
