"""IIPY_DISPLAY_RANGE through the pyramid pass and ``obj=min-max-sample-values``: the default
``stiff`` against the real STIFF 2.4 binary (within 1 % of its range) on the example files and
on benchmark-like 2048x2048 images, STIFF's chunks followed exactly (rows read top first,
chunks cut in file order), every policy against its reference on a known image, images of one
tile from every sample, the policy in the pyramid's key, and the setting itself.

The STIFF tests need Debian's ``stiff``; they are skipped without it, and fail under CI=true.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from iipy.imaging import display
from iipy.imaging.display import display_range
from iipy.imaging.paths import resolve
from iipy.imaging.pyramid import RangePass
from iipy.protocols.router import Application
from iipy.settings import Settings
from tests.unit._stiff import run_stiff, sky_image, stiff_binary

ROOT = Path(__file__).resolve().parents[2]
F32 = np.float32
POLICIES = ["stiff", "mad", "zscale", "percentile:0.5,99.5", "minmax"]


def make_app(root: Path, policy: str | None = None, **env: str) -> Application:
    base = {"FILESYSTEM_PREFIX": str(root) + "/", "IIPY_CACHE_DIR": str(root / "cache"),
            "VERBOSITY": "0", "MEMCACHED_SERVERS": ""}
    if policy is not None:
        base["IIPY_DISPLAY_RANGE"] = policy
    base.update(env)
    return Application(Settings.from_environ(base))


def reported(app: Application, fif: str) -> list[tuple[float, float]]:
    """The (min, max) of each channel from ``obj=min-max-sample-values``."""
    r = app.handle({"QUERY_STRING": "FIF=%s&obj=min-max-sample-values" % fif})
    assert r.status == 200, r.body
    line = r.body.decode().strip()
    assert line.startswith("Min-Max-sample-values:"), line
    v = [float(x) for x in line.split(":", 1)[1].split()]
    return list(zip(v[0::2], v[1::2]))


def as_reported(lo: float, hi: float) -> tuple[float, float]:
    """A range as OBJ prints it (%.9g), read back."""
    return float("%.9g" % lo), float("%.9g" % hi)


def within_one_percent(got: tuple[float, float], ref: tuple[float, float]) -> None:
    span = ref[1] - ref[0]
    assert span > 0
    assert abs(got[0] - ref[0]) <= 0.01 * span, (got, ref)
    assert abs(got[1] - ref[1]) <= 0.01 * span, (got, ref)


# ---------------------------------------------------------------------------------------------
# stiff (the default) against STIFF
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stiff_files(tmp_path_factory):
    """{fif: [STIFF's (min, max) of each plane]} for the example files and two 2048x2048
    images: the sky of tests/unit/_stiff.py and the benchmark's image (bench/bench_stages.py);
    a cube's planes are run through STIFF as 2-D files."""
    stiff_binary()
    root = tmp_path_factory.mktemp("stiffroot")
    sys.path.insert(0, str(ROOT / "examples"))
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import make_examples
        from bench_stages import write_image
    finally:
        sys.path.remove(str(ROOT / "examples"))
        sys.path.remove(str(ROOT / "bench"))
    make_examples.make_all(root)
    fits.PrimaryHDU(sky_image(2048, 2048, 11, nstars=419)).writeto(root / "sky2048.fits")
    write_image(root / "bench2048.fits", 2048, 1)
    work = root / "stiff"
    work.mkdir()
    refs = {}
    for name in ("sky.fits", "int16.fits", "cube.fits", "sky2048.fits", "bench2048.fits"):
        data = fits.getdata(root / name)
        if data.ndim == 2:
            refs[name] = [run_stiff(root / name, work)]
            continue
        planes = []
        for k in range(data.shape[0]):
            plane = work / ("%s-plane%d.fits" % (Path(name).stem, k))
            fits.PrimaryHDU(data[k]).writeto(plane)
            planes.append(run_stiff(plane, work))
        refs[name] = planes
    return root, refs


@pytest.mark.parametrize("name", ["sky.fits", "int16.fits", "cube.fits", "sky2048.fits",
                                  "bench2048.fits"])
def test_default_range_is_stiffs(stiff_files, name) -> None:
    root, refs = stiff_files
    got = reported(make_app(root), name)  # no IIPY_DISPLAY_RANGE: stiff
    assert len(got) == len(refs[name])
    for g, ref in zip(got, refs[name]):
        within_one_percent(g, ref)


def test_mad_is_not_stiff(stiff_files) -> None:
    """The comparison can fail: the former default misses STIFF's maximum by far."""
    root, refs = stiff_files
    (lo, hi), = reported(make_app(root, "mad"), "sky2048.fits")
    ref = refs["sky2048.fits"][0]
    assert abs(hi - ref[1]) > 0.5 * (ref[1] - ref[0])


# ---------------------------------------------------------------------------------------------
# STIFF's chunks, exactly
# ---------------------------------------------------------------------------------------------


def test_stiff_chunks_are_cut_in_file_order(tmp_path, monkeypatch) -> None:
    """With a chunk of 100003 samples, a 1201x1103 image has 14 chunks, the last one short:
    the pyramid (reading rows top first, the reverse of the file) gets exactly the range of
    the whole image in file order; a pass that cut its chunks from the top would not."""
    monkeypatch.setattr(display, "STIFF_CHUNK", 100003)
    data = sky_image(1201, 1103, 21, nstars=300, galaxy=True)
    data[500:520, 100:140] = np.nan
    fits.PrimaryHDU(data).writeto(tmp_path / "f.fits")
    got = reported(make_app(tmp_path), "f.fits")
    want = display_range(data, "stiff")
    assert got == [as_reported(*want)]
    top_first = display_range(data[::-1], "stiff")
    assert as_reported(*top_first) != got[0]


def test_stiff_chunks_of_an_integer_cube_with_blank(tmp_path, monkeypatch) -> None:
    """Each plane has its own chunks; BLANK samples are left out, as NaN are."""
    monkeypatch.setattr(display, "STIFF_CHUNK", 50021)
    rng = np.random.default_rng(4)
    cube = np.stack([sky_image(901, 777, 30 + k, nstars=150) for k in range(3)])
    raw = np.clip(np.rint((cube - 1000.0) * 40.0), -32000, 32000).astype(np.int16)
    blank = rng.random(raw.shape) < 0.01
    raw[blank] = -32768
    hdu = fits.PrimaryHDU(raw)
    hdu.header["BLANK"] = -32768
    hdu.header["BSCALE"] = 0.025
    hdu.header["BZERO"] = 1000.0
    hdu.writeto(tmp_path / "c.fits")
    physical = (raw.astype(np.float64) * 0.025 + 1000.0).astype(F32)
    physical[blank] = np.nan
    got = reported(make_app(tmp_path), "c.fits")
    assert got == [as_reported(*display_range(physical[k], "stiff")) for k in range(3)]


@pytest.mark.parametrize("chunk", [7001, 97, 333])
def test_range_pass_feeds_stiff_in_file_order(chunk, monkeypatch) -> None:
    """RangePass on bands of rows in the order of the file (the bottom of the IIP image
    first, each band's last IIP row first), as the pyramid pass reads them: chunks longer
    than a row, shorter than a row (several ends in one row), and exactly a row."""
    monkeypatch.setattr(display, "STIFF_CHUNK", chunk)
    data = sky_image(333, 250, 5, nstars=40)  # file order: data[0] is IIP row 249
    data[100, 7] = np.nan
    rp = RangePass(display.Policy("stiff"))
    for y0 in reversed(range(0, 250, 37)):  # IIP rows [y0, y0 + n), bottom band first
        n = min(37, 250 - y0)
        rp.add(data[250 - y0 - n : 250 - y0], y0, n)
    r = rp.result()
    assert (r.lo, r.hi) == display_range(data, "stiff")


def test_range_pass_samples_the_grid(monkeypatch) -> None:
    """The other policies see the IIP rows y % step_y == 0, every step_x-th column,
    whatever the bands."""
    data = sky_image(333, 250, 6, nstars=40)
    iip = data[::-1]
    rp = RangePass(display.Policy("minmax"), 3, 2)
    for y0 in reversed(range(0, 250, 37)):
        n = min(37, 250 - y0)
        rp.add(data[250 - y0 - n : 250 - y0].astype(">f4"), y0, n)  # big-endian, as read
    grid = iip[::3, ::2]
    r = rp.result()
    assert (r.lo, r.hi) == (float(grid.min()), float(grid.max()))
    assert (r.lo, r.hi) != (float(iip.min()), float(iip.max()))


@pytest.mark.parametrize("policy", ["stiff", "mad"])
def test_ranges_of_a_pyramid_kept_in_memory(known, tmp_path, monkeypatch, policy) -> None:
    """A pyramid that cannot be on disk and keeps only its smallest levels reads the ranges
    on their own (every row for stiff, in bands): the same ranges as the pass that builds
    the levels."""
    from iipy.imaging import pyramid as pyramid_module

    monkeypatch.setattr(display, "STIFF_CHUNK", 100003)
    monkeypatch.setattr(pyramid_module, "MIN_KEPT_BYTES", 4 * 300 * 300)
    monkeypatch.setattr(pyramid_module, "BAND_BYTES", 4 * 37 * 1200)  # bands of 37 rows
    monkeypatch.setattr(pyramid_module, "_reported", pyramid_module.LRU(16))
    root, data = known
    blocker = tmp_path / "file"
    blocker.write_text("x")
    app = make_app(root, policy, IIPY_CACHE_DIR=str(blocker / "cache"),
                   IIPY_PYRAMID_MEMORY_MB="0")
    got = reported(app, "k.fits")
    pyramid = app.store.open(resolve("k.fits", app.settings)).pyramid
    assert not pyramid.on_disk and pyramid.levels[0] is None, pyramid.not_on_disk
    want = display_range(data, "stiff") if policy == "stiff" else \
        display_range(data[::-1][::2], policy)
    assert got == [as_reported(*want)]
    on_disk = reported(make_app(root, policy, IIPY_CACHE_DIR=str(tmp_path / "c")), "k.fits")
    assert got == on_disk


# ---------------------------------------------------------------------------------------------
# Every policy's reference
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    """A 1200x1100 float32 sky with stars, a galaxy and NaN: 1100 // 512 = 2, so the policies
    other than stiff see every 2nd row (IIP order, from the top) and every column."""
    root = tmp_path_factory.mktemp("known")
    data = sky_image(1200, 1100, 17, nstars=200, galaxy=True)
    data[40:60, 900:960] = np.nan
    fits.PrimaryHDU(data).writeto(root / "k.fits")
    return root, data


@pytest.mark.parametrize("policy", POLICIES)
def test_each_policy_gives_its_reference(known, tmp_path, policy) -> None:
    root, data = known
    app = make_app(root, policy, IIPY_CACHE_DIR=str(tmp_path / "cache"))
    got = reported(app, "k.fits")
    if policy == "stiff":
        want = display_range(data, "stiff")  # every sample, file order
    else:
        want = display_range(data[::-1][::2], policy)  # the sampling grid
    assert got == [as_reported(*want)]


def test_policies_on_hand_values(tmp_path) -> None:
    """minmax and percentile on a ramp whose answers are known without iipy: values 0..N-1
    over a 64x48 image (one tile, every sample)."""
    data = np.arange(64 * 48, dtype=F32).reshape(48, 64)
    fits.PrimaryHDU(data).writeto(tmp_path / "ramp.fits")
    n = data.size
    cases = {"minmax": (0.0, n - 1.0), "percentile:0,100": (0.0, n - 1.0),
             "percentile:25,75": (0.25 * (n - 1), 0.75 * (n - 1))}
    for policy, want in cases.items():
        app = make_app(tmp_path, policy, IIPY_CACHE_DIR=str(tmp_path / policy))
        assert reported(app, "ramp.fits") == [want], policy


@pytest.mark.parametrize("policy", ["minmax", "mad", "stiff"])
def test_one_tile_image_uses_every_sample(tmp_path, policy) -> None:
    """A 1100x1100 image with 2048-pixel tiles has no reduced level: its range comes from every
    sample, not the every-2nd-row grid (the brightest pixel sits on a row outside it)."""
    data = sky_image(1100, 1100, 23, nstars=120)
    data[1100 - 1 - 301, 77] = 1e6  # IIP row 301
    fits.PrimaryHDU(data).writeto(tmp_path / "one.fits")
    app = make_app(tmp_path, policy, IIPY_TILE_SIZE="2048")
    r = app.handle({"QUERY_STRING": "FIF=one.fits&obj=resolution-number"})
    assert r.body == b"\r\nResolution-number:1\r\n"
    got = reported(app, "one.fits")
    assert got == [as_reported(*display_range(data, policy))]
    if policy == "minmax":
        assert got[0][1] == 1e6


# ---------------------------------------------------------------------------------------------
# The policy and the pyramid on disk
# ---------------------------------------------------------------------------------------------


def test_a_changed_policy_gives_new_ranges(known, tmp_path) -> None:
    root, data = known
    cache = tmp_path / "shared"
    stiff = reported(make_app(root, "stiff", IIPY_CACHE_DIR=str(cache)), "k.fits")
    mad = reported(make_app(root, "mad", IIPY_CACHE_DIR=str(cache)), "k.fits")
    assert mad == [as_reported(*display_range(data[::-1][::2], "mad"))]
    assert mad != stiff
    metas = sorted(cache.glob("*/meta.json"))
    assert sorted(json.loads(m.read_text())["policy"] for m in metas) == ["mad", "stiff"]
    # reopened with the first policy: its pyramid is read back, with its ranges
    assert reported(make_app(root, "stiff", IIPY_CACHE_DIR=str(cache)), "k.fits") == stiff
    assert len(list(cache.glob("*/meta.json"))) == 2


# ---------------------------------------------------------------------------------------------
# The setting
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "want"), [
    ("stiff", "stiff"), (" MAD ", "mad"), ("ZScale", "zscale"), ("minmax", "minmax"),
    ("percentile: 0.5 , 99.5", "percentile:0.5,99.5"), ("percentile:1,99", "percentile:1,99"),
    ("percentile:0.1234567891,100", "percentile:0.1234567891,100"),
])
def test_setting_is_canonical(text, want) -> None:
    s = Settings.from_environ({"IIPY_DISPLAY_RANGE": text})
    assert s.display_range == want
    assert str(display.parse_policy(s.display_range)) == want


def test_setting_default_and_bad_values(caplog) -> None:
    assert Settings.from_environ({}).display_range == "stiff"
    for bad in ("", "sky", "percentile:50,40", "percentile:1", "mad:2"):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="iipy.settings"):
            assert Settings.from_environ({"IIPY_DISPLAY_RANGE": bad}).display_range == "stiff"
        assert any("IIPY_DISPLAY_RANGE" in r.getMessage() for r in caplog.records), bad
