"""The ``iipy`` command: ``iipy pyramid`` builds what the server then only loads; ``iipy info``
opens file names that the request syntax would change."""

from __future__ import annotations

import os

import numpy as np
import pytest
from astropy.io import fits

from iipy import cli
from iipy.imaging import pyramid as pyramid_module
from iipy.protocols.iip import parser
from iipy.protocols.router import Application
from iipy.settings import Settings


def test_pyramid_prebuilds_what_the_server_then_loads(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(3)
    data = rng.normal(100, 5, (700, 1001)).astype(np.float32)
    fits.PrimaryHDU(data).writeto(tmp_path / "a.fits")
    cache = tmp_path / "cache"
    monkeypatch.setenv("IIPY_CACHE_DIR", str(cache))
    assert cli.main(["pyramid", str(tmp_path / "a.fits"), str(tmp_path / "missing.fits")]) == 1
    out, err = capsys.readouterr()
    assert "a.fits: 3 levels in %s" % cache in out
    assert "missing.fits is neither a file nor part of an image sequence" in err
    built = sorted(p.name for p in cache.iterdir() if p.is_dir())
    assert len(built) == 1

    def no_build(self, *args, **kwargs):
        raise AssertionError("the server built the pyramid again")

    monkeypatch.setattr(pyramid_module.Pyramid, "_build", no_build)
    app = Application(Settings.from_environ({"FILESYSTEM_PREFIX": str(tmp_path) + "/",
                                             "IIPY_CACHE_DIR": str(cache)}))
    response = app.handle({"QUERY_STRING": "FIF=a.fits&JTL=0,0"})
    assert response.status == 200 and response.body.startswith(b"\xff\xd8")


def test_pyramid_needs_a_file():
    with pytest.raises(SystemExit):
        cli.main(["pyramid"])


def test_pyramid_and_info_of_a_tiff(tmp_path, monkeypatch, capsys):
    """A TIFF holds its levels: nothing is built, the levels are the file's; ``info``
    reports them as the server does."""
    from tests.unit._tiff_files import random_levels, write_levels

    write_levels(tmp_path / "t.tif", random_levels((300, 500, 3), "u1", 2, seed=1),
                 description="hello")
    cache = tmp_path / "cache"
    monkeypatch.setenv("IIPY_CACHE_DIR", str(cache))
    assert cli.main(["pyramid", str(tmp_path / "t.tif")]) == 0
    out, _ = capsys.readouterr()
    assert "t.tif: 2 levels in the file, display range 0..255, 0..255, 0..255" in out
    assert not cache.exists() or not any(cache.iterdir())
    assert cli.main(["info", "--header", str(tmp_path / "t.tif")]) == 0
    out, _ = capsys.readouterr()
    assert "Resolutions:250 150,500 300\n" in out and "Channels:3\n" in out
    assert "TIFF:uint8 samples, srgb, 2 levels stored" in out and "  hello" in out


NAMES = ["a+b.fits", "50%.fits", "x&y.fits", "%41.fits", "sp ace.fits", "été.fits",
         "a=b;c.fits", "raw\udcff.fits"]


@pytest.mark.parametrize("name", NAMES)
def test_fif_argument_decodes_to_the_name(name):
    query = "FIF=" + cli.fif_argument(name + "[SCI,2]") + "&obj=max-size"
    assert [c.arg for c in parser.parse(query).commands] == [name + "[SCI,2]", "max-size"]


@pytest.mark.parametrize("name", NAMES)
def test_info_opens_names_with_query_characters(tmp_path, capsys, name, monkeypatch):
    path = os.path.join(os.fsencode(tmp_path), os.fsencode(name))
    fits.PrimaryHDU(np.zeros((30, 40), np.float32)).writeto(path)
    monkeypatch.setenv("IIPY_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["info", name]) == 0
    out = capsys.readouterr().out
    assert "Max-size:40 30\n" in out and "BITPIX:-32" in out
    assert cli.main(["info", name + "[0]"]) == 0
    assert "Max-size:40 30\n" in capsys.readouterr().out
