"""``CVT=fits`` (docs/protocol.md §5.6): science cut-outs read back with astropy.

The checks do not trust iipy's geometry: every cut-out pixel is mapped to the world by
the cut-out's own WCS and back to the original image by the original's, and the value
found there in the original (one pixel, or the mean of the block around it) must be the
cut-out's value; the position must fall on a pixel (or block) centre within 0.01 pixel.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from iipy.protocols.router import Application
from iipy.settings import Settings

W, H = 1001, 701  # odd sizes: reduced levels drop FITS row 1 and the last column


def _app(tmp_path, **extra) -> Application:
    env = {"FILESYSTEM_PREFIX": str(tmp_path) + "/", "IIPY_CACHE_DIR": str(tmp_path / "c"),
           "VERBOSITY": "0", "MEMCACHED_SERVERS": ""}
    env.update({k: str(v) for k, v in extra.items()})
    return Application(Settings.from_environ(env))


def _wcs_cards(kind: str) -> dict:
    """A TAN WCS with a rotation: CD matrix, CDELT + PC, or CD with SIP distortion."""
    common = dict(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRVAL1=150.1, CRVAL2=2.2,
                  CRPIX1=480.3, CRPIX2=330.7, CUNIT1="deg", CUNIT2="deg", RADESYS="ICRS")
    if kind == "pc":
        return dict(common, CDELT1=-1.5e-4, CDELT2=1.5e-4, PC1_1=0.98, PC1_2=-0.2,
                    PC2_1=0.2, PC2_2=0.98)
    cards = dict(common, CD1_1=-1.47e-4, CD1_2=3e-5, CD2_1=3e-5, CD2_2=1.47e-4)
    if kind == "sip":
        cards.update(CTYPE1="RA---TAN-SIP", CTYPE2="DEC--TAN-SIP", A_ORDER=2, B_ORDER=2,
                     A_2_0=2e-6, A_0_2=-1e-6, A_1_1=1.5e-6, B_2_0=-1e-6, B_0_2=2e-6,
                     B_1_1=1e-6)
    return cards


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict:
    """``{kind: (folder, data, header)}``: f.fits with each WCS kind, written once."""
    out = {}
    for kind in ("cd", "pc", "sip"):
        folder = tmp_path_factory.mktemp("cvt-fits-" + kind)
        data, hdr = _image(kind)
        fits.PrimaryHDU(data, hdr).writeto(folder / "f.fits")
        out[kind] = folder, data, hdr
    return out


def _image(kind: str = "cd") -> tuple[np.ndarray, fits.Header]:
    rng = np.random.default_rng(7)
    data = rng.normal(1000.0, 30.0, (H, W)).astype(np.float32)
    hdr = fits.Header()
    for key, value in _wcs_cards(kind).items():
        hdr[key] = value
    hdr["OBJECT"] = "field"
    hdr["EXPTIME"] = 300.0
    return data, hdr


def _cvt(app: Application, query: str, status: int = 200):
    r = app.handle({"QUERY_STRING": query})
    assert r.status == status, (r.status, r.body[:300])
    return r


def _open(body: bytes) -> fits.PrimaryHDU:
    hdul = fits.open(io.BytesIO(body))
    hdul.verify("exception")
    assert len(hdul) == 1
    return hdul[0]


def _check_against_original(cut: fits.PrimaryHDU, data: np.ndarray, hdr: fits.Header,
                            scale: int) -> int:
    """Map every cut-out pixel into the original through the two WCSs; the value must
    be the original's there (the mean of the scale x scale block around it).  Returns
    the number of pixels checked."""
    original, cutwcs = WCS(hdr, naxis=2), WCS(cut.header, naxis=2)
    ny, nx = cut.data.shape[-2:]
    j, i = np.mgrid[0:ny, 0:nx]
    world = cutwcs.pixel_to_world(i.ravel(), j.ravel())
    px, py = original.world_to_pixel(world)  # 0-based
    # a block of scale pixels from 0-based c covers [c - 0.5, c + scale - 0.5]: its
    # centre is c + (scale - 1) / 2
    half = (scale - 1) / 2
    cx, cy = px - half, py - half
    assert np.abs(cx - np.round(cx)).max() < 0.01
    assert np.abs(cy - np.round(cy)).max() < 0.01
    cx, cy = np.round(cx).astype(int), np.round(cy).astype(int)
    if cx.size < scale * scale:
        blocks = np.array([data[y : y + scale, x : x + scale].astype(np.float64).mean()
                           for x, y in zip(cx, cy)])
    else:
        blocks = np.zeros(cx.shape)
        for dy in range(scale):
            for dx in range(scale):
                blocks += data[cy + dy, cx + dx].astype(np.float64)
        blocks /= scale * scale
    got = cut.data.reshape(-1, ny * nx)[0]
    np.testing.assert_allclose(got, blocks.astype(np.float32), rtol=2e-6)
    return got.size


@pytest.mark.parametrize("kind", ["cd", "pc", "sip"])
@pytest.mark.parametrize("query,scale", [
    ("RGN=0.1,0.2,0.3,0.25", 1),            # full resolution: the pixels themselves
    ("RGN=0.1,0.2,0.3,0.25&WID=150", 2),    # level 1: 2x2 means
    ("WID=250", 4),                         # level 2: 4x4 means
    ("RGN=0.5,0.5,0.5,0.5&WID=240", 2),     # the bottom-right corner (FITS row 1)
    ("RGN=0.5,0.5,0.5,0.5&WID=120", 4),
])
def test_cutout_values_and_wcs_agree_with_the_original(images, kind, query, scale):
    folder, data, hdr = images[kind]
    r = _cvt(_app(folder), "FIF=f.fits&%s&CVT=fits" % query)
    assert r.header("Content-Type") == "application/fits"
    assert r.header("Content-Disposition") == 'inline;filename="f.fits"'
    cut = _open(r.body)
    assert cut.header["BITPIX"] == -32 and cut.header["NAXIS"] == 2
    assert cut.header["OBJECT"] == "field" and cut.header["EXPTIME"] == 300.0
    assert "iipy CVT=fits" in str(cut.header["HISTORY"])
    assert _check_against_original(cut, data, hdr, scale) > 1000


def _finite_mean_2x2(a: np.ndarray) -> np.ndarray:
    h, w = a.shape[0] // 2, a.shape[1] // 2
    blocks = a[: 2 * h, : 2 * w].reshape(h, 2, w, 2)
    finite = np.isfinite(blocks)
    with np.errstate(invalid="ignore"):
        return np.where(finite, blocks, 0).sum(axis=(1, 3)) / finite.sum(axis=(1, 3))


def test_full_image_binned_is_the_pyramid_level(tmp_path):
    """WID = W/2 and W/4 give the whole image's levels 1 and 2: 2x2 means of the finite
    values, twice for 4x4, computed from the top (IIP orientation: FITS row 1 of an odd
    height is left out).  Without NaN, 4x4 means (test above)."""
    data, hdr = _image("cd")
    data[300:310, 400:405] = np.nan
    fits.PrimaryHDU(data, hdr).writeto(tmp_path / "f.fits")
    app = _app(tmp_path)
    want = data[::-1].astype(np.float64)  # IIP order
    for wid, b in ((500, 2), (250, 4)):
        cut = _open(_cvt(app, "FIF=f.fits&WID=%d&CVT=fits" % wid).body)
        want = _finite_mean_2x2(want)
        assert cut.data.shape == (H // b, W // b)
        np.testing.assert_allclose(cut.data, want[::-1], rtol=2e-6)  # NaN where want is
        assert np.isnan(want).any()  # blocks without any finite value stay NaN


def test_scaled_integers_and_blank(tmp_path):
    """BSCALE/BZERO applied, BLANK as NaN, float32 out, no scaling cards left."""
    raw = (np.arange(H * W, dtype=np.int64).reshape(H, W) % 30000 - 15000).astype(np.int16)
    raw[5, 7] = -32768
    hdu = fits.PrimaryHDU(raw)
    hdu.header["BSCALE"] = 0.5
    hdu.header["BZERO"] = 100.0
    hdu.header["BLANK"] = -32768
    hdu.writeto(tmp_path / "i.fits")
    cut = _open(_cvt(_app(tmp_path), "FIF=i.fits&RGN=0,0.9,0.1,0.1&CVT=fits").body)
    for key in ("BSCALE", "BZERO", "BLANK"):
        assert key not in cut.header
    assert cut.data.dtype == np.dtype(">f4")
    want = raw.astype(np.float64) * 0.5 + 100.0
    want[raw == -32768] = np.nan
    ny, nx = cut.data.shape  # the bottom-left corner: FITS rows 1..ny, columns 1..nx
    np.testing.assert_array_equal(cut.data, want[:ny, :nx].astype(np.float32))
    assert np.isnan(cut.data[5, 7])


def test_cube_keeps_its_third_axis(tmp_path):
    rng = np.random.default_rng(3)
    cube = rng.normal(10, 1, (3, H, W)).astype(np.float32)
    hdr = fits.Header()
    for key, value in _wcs_cards("cd").items():
        hdr[key] = value
    hdr.update(CTYPE3="WAVE", CRVAL3=5e-7, CDELT3=1e-7, CRPIX3=1.0, CUNIT3="m", CD3_3=1e-7)
    fits.PrimaryHDU(cube, hdr).writeto(tmp_path / "c.fits")
    cut = _open(_cvt(_app(tmp_path), "FIF=c.fits&RGN=0.2,0.2,0.4,0.4&WID=200&CVT=fits").body)
    assert cut.header["NAXIS"] == 3 and cut.header["NAXIS3"] == 3
    assert cut.header["CTYPE3"] == "WAVE" and cut.header["CD3_3"] == 1e-7
    for plane in range(3):
        one = fits.PrimaryHDU(cut.data[plane], cut.header)
        assert _check_against_original(one, cube[plane], hdr, 2) > 1000
    w = WCS(cut.header)
    assert w.pixel_to_world_values(0, 0, 2)[2] == pytest.approx(7e-7)


@pytest.mark.parametrize("query", ["", "WID=%s" % ("9" * 40), "WID=-1", "HEI=100000",
                                   "RGN=0,0,1,1&WID=900&HEI=900", "RGN=0.3,0.3,0.1,0.1",
                                   "WID=3&HEI=3"])
def test_sides_are_bounded_by_max_cvt(images, query):
    folder, data, hdr = images["cd"]
    app = _app(folder, MAX_CVT=64)
    cut = _open(_cvt(app, "FIF=f.fits&%s&CVT=fits" % query).body)
    ny, nx = cut.data.shape
    assert 1 <= nx <= 64 and 1 <= ny <= 64
    scale = round(abs(cut.header["CD2_2"] / hdr["CD2_2"]))
    assert _check_against_original(cut, data, hdr, scale) == nx * ny


def test_too_many_values_is_a_400(tmp_path):
    """A cube whose planes times pixels exceed MAX_CVT squared is refused before
    anything is read."""
    fits.PrimaryHDU(np.zeros((20, 64, 64), np.float32)).writeto(tmp_path / "c.fits")
    app = _app(tmp_path, MAX_CVT=64)
    r = _cvt(app, "FIF=c.fits&CVT=fits", status=400)
    assert r.body.startswith(b"CVT :: Error: 64x64 pixels x 20 channels")
    assert _open(_cvt(app, "FIF=c.fits&WID=8&CVT=fits").body).data.shape == (20, 8, 8)


def test_file_names_and_sources_without_fits(tmp_path):
    data, hdr = _image("cd")
    fits.PrimaryHDU(data, hdr).writeto(tmp_path / "m31.fits.fz")  # a name, not compressed
    app = _app(tmp_path)
    r = _cvt(app, "FIF=m31.fits.fz&WID=10&CVT=FITS")
    assert r.header("Content-Disposition") == 'inline;filename="m31.fits"'
    # a source that cannot write FITS (another file format): a clean 400
    image = app.store.open(__import__("iipy.imaging.paths", fromlist=["resolve"]).resolve(
        "m31.fits.fz", app.settings))

    class Other:
        def __getattr__(self, name):
            if name == "fits_cutout":
                raise AttributeError(name)
            return getattr(real, name)

    real, image.source = image.source, Other()
    r = _cvt(app, "FIF=m31.fits.fz&WID=10&CVT=fits", status=400)
    assert r.body == b"CVT :: Error: CVT=fits needs a FITS image"
    assert _cvt(app, "FIF=m31.fits.fz&WID=10&CVT=jpeg").header("Content-Type") == "image/jpeg"
