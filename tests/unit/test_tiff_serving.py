"""Tiled pyramidal TIFF served through the Application: every command on files written
at test time (tifffile; STIFF for the subject header), compared byte for byte where
iipsrv 1.1's bytes are known (OBJ, PFL, SPECTRA), pixel for pixel where the output is
lossless (CVT=png), within JPEG noise for tiles; CODEC_PASSTHROUGH; broken files."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from astropy.io import fits
import tifffile
from PIL import Image

from iipy.imaging import kernels
from iipy.protocols.router import Application
from iipy.settings import Settings

from ._tiff_files import as_planes, random_levels, smooth_rgb, stiff_pyramid, write_levels


def decode(body: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(body)))


@pytest.fixture
def root(tmp_path):
    d = tmp_path / "img"
    d.mkdir()
    return d


def make_app(root, **env) -> Application:
    base = {"FILESYSTEM_PREFIX": str(root) + "/", "IIPY_CACHE_DIR": str(root.parent / "c"),
            "VERBOSITY": "0", "MEMCACHED_SERVERS": "", "IIPY_SERVER": "iipsrv/1.1"}
    base.update(env)
    return Application(Settings.from_environ(base))


def get(app: Application, query: str, status: int = 200):
    r = app.handle({"QUERY_STRING": query})
    assert r.status == status, (query, r.status, r.body[:300])
    return r


def obj_body(app: Application, fif: str, *objects: str) -> bytes:
    return get(app, "FIF=" + fif + "".join("&obj=" + o for o in objects)).body


def float_levels() -> list[np.ndarray]:
    """983 x 701 float32, smooth, with its reduced levels stored *independently* of
    the full one (a level served from the wrong place, or re-binned, shows)."""
    y, x = np.mgrid[0:701, 0:983].astype(np.float64)
    full = (10.0 + 80.0 * x / 983 + 30.0 * np.sin(y / 97.0) ** 2).astype(np.float32)
    return [full, np.full((350, 491), 42.5, np.float32) + (x[:350, :491] % 7).astype(np.float32),
            np.full((175, 245), -3.25, np.float32)]


@pytest.fixture
def float_tiff(root):
    write_levels(root / "sky.tif", float_levels(),
                 extratags=[(340, "d", 1, (0.1,), True), (341, "d", 1, (1200.5,), True),
                            (315, "s", 0, "A. Astronomer", True)],
                 description="SIMPLE  =                    T / made here", software="maker 2",
                 datetime="2024:05:06 07:08:09")
    return "sky.tif"


# --------------------------------------------------------------------------- OBJ


def test_obj_answers_of_a_float_pyramid(root, float_tiff):
    """docs/protocol.md §5.2: iipsrv 1.1's lines for a TIFF: sizes, levels and tile size
    from the file, Bits-per-channel from BitsPerSample, Min-Max from SMin/SMaxSampleValue
    as C floats, a greyscale Colorspace line, the text tags."""
    app = make_app(root)
    body = obj_body(app, float_tiff, "IIP,1.0", "max-size", "tile-size", "resolution-number",
                    "bits-per-channel", "min-max-sample-values", "resolutions", "colorspace",
                    "horizontal-views", "vertical-views", "subject", "summary-info",
                    "title", "basic-info")
    assert body == (
        b"IIP:1.0\r\nMax-size:983 701\r\nTile-size:256 256\r\nResolution-number:3\r\n"
        b"Bits-per-channel:32\r\nMin-Max-sample-values: 0.100000001  1200.5\r\n"
        b"Resolutions:245 175,491 350,983 701\r\nColorspace,0-2,0:0 0 1 1 0\r\n"
        b"Horizontal-views:0\r\nVertical-views:90\r\n"
        b"subject/42:SIMPLE  =                    T / made here\r\n"
        # summary-info: no Copyright tag, so no copyright line; title: no line at all
        b"subject/42:SIMPLE  =                    T / made here\r\n"
        b"author/13:A. Astronomer\r\ncreate-dtm/19:2024:05:06 07:08:09\r\n"
        b"app-name/7:maker 2\r\n"
        b"IIP-server:3.65\r\nMax-size:983 701\r\nResolution-number:3\r\n"
        b"Colorspace,0-2,0:0 0 1 1 0\r\n")
    r = get(app, "FIF=sky.tif&obj=max-size")
    assert r.header("Last-Modified") is not None and r.header("Content-Type") == \
        "application/vnd.netfpx"


def test_obj_answers_of_rgb_16bit_and_subifd_files(root):
    """sRGB gives the 3-plane Colorspace line, 8-bit the type range 0..255 per channel;
    16-bit without tags 0..65535; a pyramid whose last level does not fit a tile and
    a pyramid in SubIFDs report the levels the file holds, not floor halving's."""
    write_levels(root / "rgb.tif", random_levels((700, 1000, 3), "u1", 2, seed=3),
                 compression="zlib")
    write_levels(root / "u16.tif", random_levels((300, 500), "u2", 1, seed=3), tile=(128, 64))
    write_levels(root / "sub.tif", random_levels((600, 900), "f4", 3, seed=3), subifds=True)
    app = make_app(root)
    assert obj_body(app, "rgb.tif", "resolution-number", "resolutions", "bits-per-channel",
                    "min-max-sample-values", "colorspace", "tile-size") == (
        b"\r\nResolution-number:2\r\nResolutions:500 350,1000 700\r\nBits-per-channel:8\r\n"
        b"Min-Max-sample-values: 0  255  0  255  0  255\r\n"
        b"Colorspace,0-1,0:0 0 3 3 0 1 2\r\nTile-size:256 256\r\n")
    assert obj_body(app, "u16.tif", "resolution-number", "bits-per-channel",
                    "min-max-sample-values", "tile-size") == (
        b"\r\nResolution-number:1\r\nBits-per-channel:16\r\n"
        b"Min-Max-sample-values: 0  65535\r\nTile-size:128 64\r\n")
    assert obj_body(app, "sub.tif", "resolution-number", "resolutions",
                    "min-max-sample-values") == (
        b"\r\nResolution-number:3\r\nResolutions:225 150,450 300,900 600\r\n"
        b"Min-Max-sample-values: 0  0\r\n")


def test_subject_is_the_image_description_bytes(root):
    """ImageDescription is sent as stored, bytes beyond ASCII included, and its length
    in bytes; STIFF's FITS header reaches VisiOmatic unchanged (docs/protocol.md §12.3)."""
    raw = b"caf\xe9 \x81\x8d header"
    write_levels(root / "bytes.tif", random_levels((40, 50), "u1", 1, seed=1), tile=(16, 16),
                 extratags=[(270, 1, len(raw), raw, True)])
    app = make_app(root)
    assert obj_body(app, "bytes.tif", "subject") == b"\r\nsubject/14:" + raw + b"\r\n"
    rng = np.random.default_rng(5)
    header = fits.Header()
    header["CTYPE1"], header["CTYPE2"] = "RA---TAN", "DEC--TAN"
    header["CRVAL1"], header["CRVAL2"] = 10.68, 41.27
    header["CRPIX1"], header["CRPIX2"] = 150.5, 100.5
    header["CD1_1"], header["CD2_2"] = -2.8e-4, 2.8e-4
    fits.writeto(root / "m31.fits", rng.normal(100, 10, (200, 300)).astype(np.float32), header)
    path = stiff_pyramid(str(root), "m31", [str(root / "m31.fits")])
    with tifffile.TiffFile(path) as tif:
        tag = tif.pages[0].tags[270]
        count, offset = tag.count, tag.valueoffset
    with open(path, "rb") as f:  # the tag's bytes up to the first NUL, as libtiff gives them
        f.seek(offset)
        stored = f.read(count).split(b"\0")[0]
    assert len(stored) > 800
    body = obj_body(app, "m31.tif", "subject")
    assert body == b"\r\nsubject/%d:" % len(stored) + stored + b"\r\n"
    cards = fits.Header.fromstring(stored.decode("ascii"))
    assert cards["CTYPE1"] == "RA---TAN" and cards["CRVAL2"] == 41.27


def test_the_content_decides_not_the_name(root, float_tiff):
    """A FITS file named .tif is FITS; a TIFF named .fits is TIFF (iipsrv decides by
    the first bytes, docs/protocol.md §4.1)."""
    fits.writeto(root / "really-fits.tif", np.zeros((30, 40), np.float32))
    os.rename(root / float_tiff, root / "really-tiff.fits")
    app = make_app(root)
    assert obj_body(app, "really-fits.tif", "max-size") == b"\r\nMax-size:40 30\r\n"
    assert obj_body(app, "really-tiff.fits", "max-size", "resolution-number") == \
        b"\r\nMax-size:983 701\r\nResolution-number:3\r\n"


# --------------------------------------------------------------------------- pixels


def model(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The float path of docs/protocol.md §6 for one channel, no modifier."""
    return kernels.reference.render(values.astype(np.float32), lo, hi)


def test_float_tiles_and_exports(root, float_tiff):
    """Tiles of every level come from the file's own level (not re-binned), normalised
    with SMin/SMaxSampleValue; CVT=png reads the best level the file holds."""
    levels = float_levels()
    app = make_app(root)
    for res, n, k, x, y in ((2, 0, 0, 0, 0), (2, 11, 0, 768, 512), (1, 1, 1, 256, 0),
                            (0, 0, 2, 0, 0)):
        got = decode(get(app, "FIF=sky.tif&QLT=100&JTL=%d,%d" % (res, n)).body)
        h, w = got.shape
        want = model(levels[k][y : y + h, x : x + w], np.float32(0.1), np.float32(1200.5))
        assert np.abs(got.astype(int) - want).max() <= 2, (res, n)
    got = decode(get(app, "FIF=sky.tif&MINMAX=1:40,50&WID=491&CVT=png").body)
    np.testing.assert_array_equal(got, model(levels[1], 40, 50))  # level 1 as stored
    got = decode(get(app, "FIF=sky.tif&MINMAX=1:-4,0&RGN=0,0,0.5,0.5&WID=122&CVT=png").body)
    assert got.shape == (87, 122) and (got == model(np.float32([[-3.25]]), -4, 0)).all()


def test_8bit_samples_are_sent_unchanged(root):
    """docs/protocol.md §6.2: 8-bit samples with no float operation are the output
    (every value, 0 and 255 included); a float operation or MINMAX goes through the
    pipeline with the type's range; 2 and 4 channels are flattened."""
    levels = random_levels((300, 400, 3), "u1", 2, seed=8)
    levels[0][0, :256] = np.arange(256, dtype=np.uint8)[:, None]
    write_levels(root / "rgb.tif", levels, compression="lzw")
    grey = random_levels((300, 400), "u1", 1, seed=9)
    write_levels(root / "grey.tif", grey, compression="zlib")
    rgba = random_levels((100, 120, 4), "u1", 1, seed=10)
    write_levels(root / "rgba.tif", rgba, photometric="rgb", extrasamples=("unassalpha",))
    app = make_app(root)
    np.testing.assert_array_equal(decode(get(app, "FIF=rgb.tif&CVT=png").body), levels[0])
    np.testing.assert_array_equal(decode(get(app, "FIF=rgb.tif&WID=200&CVT=png").body),
                                  levels[1])
    np.testing.assert_array_equal(decode(get(app, "FIF=grey.tif&CVT=png").body), grey[0])
    np.testing.assert_array_equal(decode(get(app, "FIF=rgba.tif&CVT=png").body),
                                  rgba[0][..., :3])
    # tiles: the same samples (grey at QLT=100: JPEG stays within 1 DN)
    tile = decode(get(app, "FIF=grey.tif&QLT=100&JTL=0,1").body).astype(int)
    assert tile.shape == (256, 144) and np.abs(tile - grey[0][:256, 256:]).max() <= 1
    tile = decode(get(app, "FIF=rgba.tif&QLT=100&COL=grey&JTL=0,0").body).astype(int)
    p = rgba[0].astype(np.uint32)
    want = (p[..., 0] * 19595 + p[..., 1] * 38470 + p[..., 2] * 7471) >> 16
    assert tile.shape == (100, 120) and np.abs(tile - want).max() <= 1
    with_gamma = decode(get(app, "FIF=rgb.tif&GAM=0.5&CVT=png").body)
    want = kernels.reference.render(as_planes(levels[0]).astype(np.float32), 0, 255, gamma=0.5)
    np.testing.assert_array_equal(with_gamma, want)
    stretched = decode(get(app, "FIF=grey.tif&MINMAX=1:100,200&CVT=png").body)
    np.testing.assert_array_equal(stretched, model(grey[0], 100, 200))
    # SMin/SMaxSampleValue on 8-bit data: reported, used by float operations only
    write_levels(root / "tags.tif", grey, extratags=[(340, "B", 1, (10,), True),
                                                     (341, "B", 1, (200,), True)])
    assert obj_body(app, "tags.tif", "min-max-sample-values") == \
        b"\r\nMin-Max-sample-values: 10  200\r\n"
    np.testing.assert_array_equal(decode(get(app, "FIF=tags.tif&CVT=png").body), grey[0])
    np.testing.assert_array_equal(decode(get(app, "FIF=tags.tif&CNT=1.0001&CVT=png").body),
                                  kernels.reference.render(grey[0].astype(np.float32), 10, 200,
                                                           contrast=1.0001))
    grey_col = decode(get(app, "FIF=rgb.tif&COL=grey&CVT=png").body)
    p = levels[0].astype(np.uint32)
    np.testing.assert_array_equal(
        grey_col, ((p[..., 0] * 19595 + p[..., 1] * 38470 + p[..., 2] * 7471) >> 16))


def test_16bit_goes_through_the_float_path(root):
    """16-bit samples are normalised with the type's range (or the tags), as iipsrv."""
    levels = random_levels((200, 300), "u2", 1, seed=11)
    write_levels(root / "u16.tif", levels, compression="zlib", predictor=2)
    write_levels(root / "u16tags.tif", levels, extratags=[(340, "H", 1, (1000,), True),
                                                          (341, "H", 1, (3000,), True)])
    app = make_app(root)
    np.testing.assert_array_equal(decode(get(app, "FIF=u16.tif&CVT=png").body),
                                  model(levels[0], 0, 65535))
    assert obj_body(app, "u16tags.tif", "min-max-sample-values") == \
        b"\r\nMin-Max-sample-values: 1000  3000\r\n"
    np.testing.assert_array_equal(decode(get(app, "FIF=u16tags.tif&CVT=png").body),
                                  model(levels[0], 1000, 3000))


# --------------------------------------------------------------------------- PFL, SPECTRA


def profile(app: Application, query: str) -> bytes:
    r = get(app, query)
    assert r.header("Content-Type") == "application/json"
    return r.body


def test_profiles_print_stored_samples(root, float_tiff):
    """docs/protocol.md §5.22 on TIFF: the samples of the level asked for, as stored;
    integer types with %g, floats with nine decimals, at every level."""
    levels = random_levels((300, 400, 3), "u1", 2, seed=8)
    write_levels(root / "rgb.tif", levels)
    u16 = random_levels((200, 300), "u2", 2, seed=2)
    write_levels(root / "u16.tif", u16, tile=(64, 64))
    app = make_app(root)
    flat = ",".join("%d" % v for v in levels[0][7, 10:14].ravel()).encode()
    assert profile(app, "FIF=rgb.tif&PFL=1:10,7-14,7") == b'{\n\t"profile": [' + flat + b"]\n}"
    flat = ",".join("%d" % v for v in levels[1][3:6, 20].ravel()).encode()  # level 1
    assert profile(app, "FIF=rgb.tif&PFL=0:20,3-20,6") == b'{\n\t"profile": [' + flat + b"]\n}"
    got = profile(app, "FIF=u16.tif&PFL=0:5,6")
    assert got == b'{\n\t"profile": [%d]\n}' % u16[1][6, 5]
    fl = float_levels()
    got = profile(app, "FIF=sky.tif&PFL=1:100,20-103,20")
    assert got == b'{\n\t"profile": [' + ",".join(
        "%.9f" % v for v in fl[1][20, 100:103]).encode() + b"]\n}"


def test_spectra_divides_integer_samples_as_iipsrv(root, float_tiff):
    """docs/protocol.md §5.23 on TIFF: 8-bit values / 255, 16-bit / 65535 (as a C
    float), float values as they are; one point per channel."""
    levels = random_levels((300, 400, 3), "u1", 1, seed=8)
    write_levels(root / "rgb.tif", levels)
    u16 = random_levels((200, 300), "u2", 1, seed=2)
    write_levels(root / "u16.tif", u16, tile=(64, 64))
    app = make_app(root)

    def points(query):
        body = get(app, query).body.decode()
        return [p.split("</reflectance>")[0] for p in body.split("<reflectance>")[1:]]

    want = ["%f" % np.float32(v / 255.0) for v in levels[0][260, 300]]
    assert points("FIF=rgb.tif&SPECTRA=0,3,44,4") == want
    assert points("FIF=u16.tif&SPECTRA=0,7,3,2") == ["%f" % np.float32(u16[0][66, 131] / 65535.0)]
    assert points("FIF=sky.tif&SPECTRA=2,0,10,20") == ["%f" % float_levels()[0][20, 10]]


# --------------------------------------------------------------------------- passthrough


@pytest.fixture
def jpeg_tiff(root):
    src = smooth_rgb(600, 512)
    write_levels(root / "photo.tif", [src, src[::2, ::2].copy()], compression="jpeg",
                 compressionargs={"level": 90})
    return src


def stored(path, index: int, page: int = 0) -> bytes:
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[page]
        with open(path, "rb") as f:
            f.seek(page.dataoffsets[index])
            return f.read(page.databytecounts[index])


def test_codec_passthrough(root, jpeg_tiff):
    """docs/protocol.md §5.3: a full JPEG tile of an 8-bit TIFF, asked for without any
    processing, is the stored stream itself, with JTL's headers, through the response
    cache; anything asked for (or CODEC_PASSTHROUGH=0) re-encodes it."""
    app = make_app(root)
    tile0 = stored(root / "photo.tif", 4)  # full resolution is 3 x 2 tiles: row 1, col 1
    r = get(app, "FIF=photo.tif&JTL=1,4")
    assert r.body == tile0
    assert [k for k, _ in r.headers] == ["Server", "X-Powered-By", "Content-Type",
                                         "Content-Length", "Last-Modified", "Cache-Control"]
    assert get(app, "FIF=photo.tif&QLT=75&JTL=1,4").body == tile0  # the default quality
    assert get(app, "FIF=photo.tif&TIL=1,4").body[8 + len(b"Tile,1,4,0/%d:" % (len(tile0) + 8)):
                                                   -2] == tile0
    for modifiers in ("QLT=90", "MINMAX=1:0,200", "GAM=0.5", "CNT=1.1", "INV", "CMP=jet",
                      "CTW=1,0,0;0,1,0;0,0,1", "SHD=10,20", "COL=grey", "ROT=90", "ROT=!0"):
        r = get(app, "FIF=photo.tif&%s&JTL=1,4" % modifiers)
        assert r.body != tile0, modifiers
    other = make_app(root, CODEC_PASSTHROUGH="0")
    again = get(other, "FIF=photo.tif&JTL=1,4").body
    assert again != tile0
    diff = np.abs(decode(again).astype(int) - decode(tile0).astype(int))
    assert diff.mean() < 1.5 and diff.max() <= 12
    # a full tile of the reduced level is passed through too; partial edge tiles are not
    assert get(app, "FIF=photo.tif&JTL=0,0").body == stored(root / "photo.tif", 0, page=1)
    assert get(app, "FIF=photo.tif&JTL=1,2").body != stored(root / "photo.tif", 2)
    assert decode(get(app, "FIF=photo.tif&JTL=1,2").body).shape == (256, 88, 3)
    assert decode(get(app, "FIF=photo.tif&JTL=0,1").body).shape == (256, 44, 3)


def test_passthrough_goes_through_the_response_cache(root, jpeg_tiff, monkeypatch):
    app = make_app(root)
    first = get(app, "FIF=photo.tif&JTL=1,0").body
    from iipy.imaging.sources.tiff import TiffImage

    def fail(*args):
        raise AssertionError("read again")

    monkeypatch.setattr(TiffImage, "stored_tile", fail)
    assert get(app, "FIF=photo.tif&JTL=1,0").body == first


# --------------------------------------------------------------------------- broken files


def test_broken_tiffs_are_file_errors(root, float_tiff):
    """A TIFF that is not tiled, truncated or has an undecodable tile: a 404 naming the
    image as requested, and the next request is served."""
    tifffile.imwrite(root / "strips.tif", np.zeros((100, 100), np.uint8), metadata=None)
    data = (root / float_tiff).read_bytes()
    (root / "cut.tif").write_bytes(data[:300])
    (root / "ii.tif").write_bytes(b"I I" + bytes(100))
    write_levels(root / "bad-tile.tif", random_levels((64, 64), "u2", 1, seed=2),
                 tile=(32, 32), compression="zlib")
    with tifffile.TiffFile(root / "bad-tile.tif") as tif:
        offset, count = tif.pages[0].dataoffsets[1], tif.pages[0].databytecounts[1]
    raw = bytearray((root / "bad-tile.tif").read_bytes())
    raw[offset : offset + count] = b"\x55" * count
    (root / "bad-tile.tif").write_bytes(bytes(raw))
    app = make_app(root)
    assert get(app, "FIF=strips.tif&obj=max-size", 404).body == \
        b"TIFF image 'strips.tif' is not tiled"
    assert get(app, "FIF=cut.tif&JTL=0,0", 404).body == b"Unable to open TIFF file 'cut.tif'"
    assert get(app, "FIF=ii.tif&obj=max-size", 404).body == b"Unable to open TIFF file 'ii.tif'"
    assert get(app, "FIF=bad-tile.tif&obj=max-size").body == b"\r\nMax-size:64 64\r\n"
    # a compression nobody decodes: described, its tiles refused (iipsrv 1.1 alike)
    with tifffile.TiffFile(root / "sky.tif") as tif:
        entry = tif.pages[0].tags[259].offset
    raw = bytearray((root / "sky.tif").read_bytes())
    raw[entry + 8 : entry + 10] = (34712).to_bytes(2, "little")
    (root / "j2k.tif").write_bytes(bytes(raw))
    assert get(app, "FIF=j2k.tif&obj=max-size").body == b"\r\nMax-size:983 701\r\n"
    assert get(app, "FIF=j2k.tif&JTL=2,0", 404).body == b"Unable to read data of 'j2k.tif'"
    assert get(app, "FIF=j2k.tif&JTL=0,0").body[:2] == b"\xff\xd8"  # level 2 is intact
    get(app, "FIF=bad-tile.tif&JTL=0,0")
    for query in ("JTL=0,1", "CVT=png", "PFL=0:40,0", "SPECTRA=0,1,0,0"):
        assert get(app, "FIF=bad-tile.tif&" + query, 404).body == \
            b"Unable to read data of 'bad-tile.tif'", query
    assert get(app, "FIF=sky.tif&obj=max-size").body == b"\r\nMax-size:983 701\r\n"
