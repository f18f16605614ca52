"""The end-to-end infrastructure works without iipy: fixtures, nginx config, example data, TIFF writer.

The reference iipsrv 1.1 stands in for iipy here, so these tests pass before iipy
serves anything, and they pin what the parity tests build on: iipsrv 1.1 reads the
pyramids written by ``_tiff.write_pyramid_tiff`` with exactly the geometry and
metadata that iipy computes for FITS files.
"""

from __future__ import annotations

import io
import socket

import numpy as np
import pytest
import tifffile
from astropy.io import fits
from PIL import Image

from ._tiff import level_sizes, pyramid_levels, reduce_2x2, write_pyramid_tiff

pytestmark = pytest.mark.e2e

HOST = "127.0.0.1"

V2_METADATA = (
    "obj=IIP,1.0&obj=max-size&obj=tile-size&obj=resolution-number"
    "&obj=bits-per-channel&obj=min-max-sample-values&obj=resolutions"
)


# --------------------------------------------------------------------------- helpers


def test_wait_for_port_sees_a_listener_and_times_out_without_one(free_port, wait_for_port):
    port = free_port()
    with socket.socket() as listener:
        listener.bind((HOST, port))
        listener.listen()
        wait_for_port(HOST, port, timeout=1.0)
    with pytest.raises(TimeoutError):
        wait_for_port(HOST, port, timeout=0.1)


def test_wait_for_unix_sees_a_listener(unix_socket_path, wait_for_unix):
    path = unix_socket_path("probe.sock")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen()
        wait_for_unix(path, timeout=1.0)


# --------------------------------------------------------------------------- example data


def test_example_data_has_the_documented_layout(example_data):
    assert example_data.prefix == f"{example_data.dir}/"
    with fits.open(example_data["sky"]) as hdul:
        h, data = hdul[0].header, hdul[0].data
        assert (h["BITPIX"], h["NAXIS1"], h["NAXIS2"]) == (-32, 2048, 1536)
        assert (h["CTYPE1"], h["CTYPE2"]) == ("RA---TAN", "DEC--TAN")
        assert h["CD1_1"] == pytest.approx(-5.5e-5, rel=0.01) and h["CD2_2"] == pytest.approx(5.5e-5, rel=0.01)
        assert 0 < abs(h["CD1_2"]) < 1e-5
        assert {"EQUINOX", "RADESYS", "OBJECT", "TELESCOP", "FILTER", "BUNIT", "DATE-OBS"} <= set(h)
        assert 0 < np.isnan(data).sum() < 1000
        assert 95 < np.nanmedian(data) < 105
    with fits.open(example_data["cube"]) as hdul:
        h = hdul[0].header
        assert (h["NAXIS1"], h["NAXIS2"], h["NAXIS3"]) == (1200, 900, 3)
        assert [h[f"FILTER{i}"] for i in (1, 2, 3)] == ["g", "r", "i"]
    with fits.open(example_data["int16"], do_not_scale_image_data=True) as hdul:
        h, raw = hdul[0].header, hdul[0].data
        assert (h["BITPIX"], h["NAXIS1"], h["NAXIS2"]) == (16, 983, 1061)
        assert (h["BZERO"], h["BSCALE"], h["BLANK"]) == (32768, 1, -32768)
        assert 0 < (raw == -32768).sum() < 100
        assert "CD1_1" not in h and {"CDELT1", "PC1_1", "PC1_2"} <= set(h)


def test_make_all_is_deterministic(tmp_path, example_data, make_examples):
    again = make_examples.make_all(tmp_path)
    assert again.keys() == example_data.keys()
    for name, path in again.items():
        assert path.read_bytes() == example_data[name].read_bytes(), name


# --------------------------------------------------------------------------- nginx + iipsrv 1.1


def test_nginx_serves_static_files(nginx, tmp_path, free_port, http_get):
    (tmp_path / "hello.txt").write_text("hello from @STATIC@\n")
    url = nginx(f"{HOST}:{free_port()}", static_dir=tmp_path)  # no FastCGI server needed here
    assert "@" not in url.conf.read_text()  # every placeholder was rendered
    status, headers, body = http_get(f"{url}/hello.txt")
    assert status == 200
    assert headers["content-type"] == "text/plain"
    assert body == b"hello from @STATIC@\n"
    assert http_get(f"{url}/absent.txt")[0] == 404


@pytest.mark.parametrize("keepalive", [True, False], ids=["keepalive", "no-keepalive"])
def test_reference_iipsrv_behind_nginx_answers_errors(iipsrv_ref, nginx, tmp_path, http_get, keepalive):
    ref = iipsrv_ref(FILESYSTEM_PREFIX=f"{tmp_path}/")
    url = nginx(ref, keepalive=keepalive)
    for _ in range(2):  # a second request exercises the kept-alive (or a fresh) connection
        status, headers, body = http_get(url.iip + "?")
        assert status == 400
        assert headers["content-type"] == "text/html"
        assert body.lstrip().lower().startswith(b"<!doctype html>")
        status, headers, body = http_get(url.iip + "?FIF=missing.tif&obj=IIP,1.0")
        assert status == 404
        assert headers["server"] == "iipsrv/1.1"
        assert body == f"{tmp_path}/missing.tif is neither a file nor part of an image sequence".encode()


# --------------------------------------------------------------------------- pyramidal TIFF


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((1001, 701), [(1001, 701), (500, 350), (250, 175)]),
        ((1025, 513), [(1025, 513), (512, 256), (256, 128)]),
        ((513, 200), [(513, 200), (256, 100)]),
        ((256, 256), [(256, 256)]),
        ((8192, 8192), [(8192 >> k, 8192 >> k) for k in range(6)]),
    ],
)
def test_level_sizes_use_floor_halving(size, expected):
    assert level_sizes(*size, tile=256) == expected


def test_reduce_2x2_averages_finite_values_and_drops_odd_edges():
    level = np.array([[[1, 3, 5, 7, 100], [5, np.nan, 9, 11, 100], [100, 100, 100, 100, 100]]], np.float32)
    level2 = np.full((1, 2, 2), np.nan, np.float32)
    assert np.array_equal(reduce_2x2(level), np.array([[[3.0, 8.0]]], np.float32))
    assert np.isnan(reduce_2x2(level2)).all()
    assert reduce_2x2(np.array([[[1, 2], [2, 2]]], np.uint8))[0, 0, 0] == 2  # 1.75 rounds to 2


def smooth_image(width: int, height: int, channels: int = 1) -> np.ndarray:
    """A smooth float32 ramp from -2 to 12 (per channel offset), one NaN pixel, FITS axis order."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    planes = [-2 + 14 * (x / width) * 0.7 + 14 * (y / height) * 0.3 + c for c in range(channels)]
    data = np.stack(planes).astype(np.float32)
    data[:, 10, 20] = np.nan
    return data[0] if channels == 1 else data


def fits_description(width: int, height: int) -> str:
    """A 2880-byte FITS header (80-character cards, no separators), as STIFF stores it."""
    header = fits.Header()
    header["SIMPLE"] = True
    header["BITPIX"] = -32
    header["NAXIS"] = 2
    header["NAXIS1"] = width
    header["NAXIS2"] = height
    header["CTYPE1"] = "RA---TAN"
    header["CTYPE2"] = "DEC--TAN"
    header["CD1_1"] = -5e-5
    header["CD2_2"] = 5e-5
    return header.tostring(sep="", endcard=True, padding=True)


def test_pyramid_tiff_levels_are_top_level_tiled_ifds(tmp_path):
    data = smooth_image(1001, 701, channels=3)
    path = tmp_path / "cube.tif"
    sizes = write_pyramid_tiff(path, data, smin=[-2, -1, 0], smax=[12, 13, 14], description="cube")
    assert sizes == [(1001, 701), (500, 350), (250, 175)]
    expected = pyramid_levels(data)
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 3
        for page, (w, h), level in zip(tif.pages, sizes, expected):
            assert (page.imagewidth, page.imagelength, page.samplesperpixel) == (w, h, 3)
            assert (page.tilewidth, page.tilelength) == (256, 256)
            assert "SubIFDs" not in page.tags
            assert page.tags["SMinSampleValue"].value == (-2.0, -1.0, 0.0)
            assert page.tags["SMaxSampleValue"].value == (12.0, 13.0, 14.0)
            np.testing.assert_array_equal(page.asarray(), np.moveaxis(level, 0, -1))
        assert tif.pages[0].description == "cube"
        assert tif.pages[0].tags.get("ImageDescription1") is None


@pytest.fixture
def tiff_server(iipsrv_ref, nginx, tmp_path):
    """iipsrv 1.1 behind nginx, serving pyramids written into tmp_path; returns the IIP URL."""
    ref = iipsrv_ref(FILESYSTEM_PREFIX=f"{tmp_path}/")
    return nginx(ref, keepalive=True).iip


def test_iipsrv_reports_the_metadata_of_a_float_pyramid(tiff_server, tmp_path, http_get):
    description = fits_description(1001, 701)
    assert len(description) == 2880
    write_pyramid_tiff(tmp_path / "grey.tif", smooth_image(1001, 701), smin=-2, smax=12, description=description)
    status, headers, body = http_get(f"{tiff_server}?FIF=grey.tif&{V2_METADATA}&obj=subject")
    assert status == 200
    assert headers["content-type"] == "application/vnd.netfpx"
    assert body == (
        b"IIP:1.0\r\nMax-size:1001 701\r\nTile-size:256 256\r\nResolution-number:3\r\n"
        b"Bits-per-channel:32\r\nMin-Max-sample-values: -2  12\r\n"
        b"Resolutions:250 175,500 350,1001 701\r\n"
        b"subject/2880:" + description.encode("ascii") + b"\r\n"
    )


def test_iipsrv_reports_per_channel_min_max(tiff_server, tmp_path, http_get):
    write_pyramid_tiff(
        tmp_path / "cube5.tif", smooth_image(1025, 513, channels=5),
        smin=[-2, -1, 0, 1, 2.5], smax=[12, 13, 14, 15, 16.25],
    )
    status, _, body = http_get(f"{tiff_server}?FIF=cube5.tif&{V2_METADATA}")
    assert status == 200
    assert body == (
        b"IIP:1.0\r\nMax-size:1025 513\r\nTile-size:256 256\r\nResolution-number:3\r\n"
        b"Bits-per-channel:32\r\nMin-Max-sample-values: -2  12  -1  13  0  14  1  15  2.5  16.25\r\n"
        b"Resolutions:256 128,512 256,1025 513\r\n"
    )


def decode(jpeg: bytes) -> np.ndarray:
    """Pixels of a JPEG as a uint8 array (height, width[, 3])."""
    with Image.open(io.BytesIO(jpeg)) as im:
        assert im.format == "JPEG"
        return np.asarray(im)


def test_iipsrv_serves_partial_edge_tiles(tiff_server, tmp_path, http_get):
    write_pyramid_tiff(tmp_path / "grey.tif", smooth_image(1001, 701), smin=-2, smax=12)
    # Full resolution is r = 2 with a 4×3 grid; tile 11 is the bottom-right corner.
    status, headers, body = http_get(f"{tiff_server}?FIF=grey.tif&JTL=2,11")
    assert status == 200 and headers["content-type"] == "image/jpeg"
    assert decode(body).shape == (189, 233)
    assert decode(http_get(f"{tiff_server}?FIF=grey.tif&JTL=2,3")[2]).shape == (256, 233)
    # Resolution 1 is 500×350: a 2×2 grid whose right column is 244 wide, bottom row 94 high.
    assert decode(http_get(f"{tiff_server}?FIF=grey.tif&JTL=1,1")[2]).shape == (256, 244)
    assert decode(http_get(f"{tiff_server}?FIF=grey.tif&JTL=1,3")[2]).shape == (94, 244)
    assert http_get(f"{tiff_server}?FIF=grey.tif&JTL=2,12")[0] == 404


def test_iipsrv_serves_the_reduced_levels_we_wrote(tiff_server, tmp_path, http_get):
    data = smooth_image(1001, 701)
    write_pyramid_tiff(tmp_path / "grey.tif", data, smin=-2, smax=12)
    smallest = pyramid_levels(data)[-1]  # 250×175: the whole of resolution 0
    status, _, body = http_get(f"{tiff_server}?FIF=grey.tif&QLT=100&JTL=0,0")
    assert status == 200
    served = decode(body).astype(np.float64)
    # The float path of docs/protocol.md §6: normalise (NaN -> 0), scale to 255, truncate.
    v = np.nan_to_num((smallest - np.float32(-2)) / np.float32(14), nan=0.0)
    model = np.floor(np.clip(v * 255, 0, 255))
    assert served.shape == model.shape == (175, 250)
    assert np.abs(served - model).mean() < 1.0


def test_iipsrv_serves_three_channels_as_colour(tiff_server, tmp_path, http_get):
    write_pyramid_tiff(tmp_path / "rgb.tif", smooth_image(1001, 701, channels=3), smin=-2, smax=14)
    status, _, body = http_get(f"{tiff_server}?FIF=rgb.tif&JTL=2,11")
    assert status == 200
    assert decode(body).shape == (189, 233, 3)


def test_iipsrv_formats_min_max_as_float32(tiff_server, tmp_path, http_get):
    # iipsrv keeps SMin/SMaxSampleValue as C floats and prints them with %.9g.
    write_pyramid_tiff(tmp_path / "f.tif", np.zeros((300, 300), np.float32), smin=0.1, smax=123456789.0)
    body = http_get(f"{tiff_server}?FIF=f.tif&obj=min-max-sample-values")[2]
    assert body == b"\r\nMin-Max-sample-values: 0.100000001  123456792\r\n"


def test_iipsrv_ignores_subifd_pyramids(tiff_server, tmp_path, http_get):
    # Why write_pyramid_tiff chains the levels as top-level IFDs: SubIFDs are not read.
    data = smooth_image(1001, 701)
    with tifffile.TiffWriter(tmp_path / "sub.tif") as tif:
        tif.write(data, tile=(256, 256), subifds=2, metadata=None)
        for level in pyramid_levels(data)[1:]:
            tif.write(level, tile=(256, 256), subfiletype=1, metadata=None)
    body = http_get(f"{tiff_server}?FIF=sub.tif&obj=resolution-number&obj=resolutions")[2]
    assert body == b"\r\nResolution-number:1\r\nResolutions:1001 701\r\n"
