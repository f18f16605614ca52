"""Settings: iipsrv's parsing, defaults and clamping; the table is complete."""

from __future__ import annotations

import dataclasses

import pytest

from iipy.settings import SETTINGS, Settings, settings_table_rst

#: Every environment variable iipsrv 1.1 reads (docs/protocol.md §9.1), and the later ones
#: iipy supports.
IIPSRV_VARIABLES = {
    "VERBOSITY", "LOGFILE", "MAX_IMAGE_CACHE_SIZE", "FILESYSTEM_PREFIX", "FILENAME_PATTERN",
    "JPEG_QUALITY", "MAX_CVT", "MAX_LAYERS", "ALLOW_UPSCALING", "CORS", "CACHE_CONTROL",
    "BASE_URL", "URI_MAP", "EMBED_ICC", "INTERPOLATION", "WATERMARK", "WATERMARK_PROBABILITY",
    "WATERMARK_OPACITY", "MEMCACHED_SERVERS", "MEMCACHED_TIMEOUT", "KAKADU_READMODE",
    "DECODER_MODULES", "OMP_NUM_THREADS", "FCGI_WEB_SERVER_ADDRS", "FILESYSTEM_SUFFIX",
    "CODEC_PASSTHROUGH",
    "PNG_QUALITY", "WEBP_QUALITY", "AVIF_QUALITY", "IIIF_VERSION", "COPYRIGHT", "IIIF_EXTRA_INFO",
}


def test_table_matches_dataclass():
    fields = [f.name for f in dataclasses.fields(Settings)]
    assert sorted(fields) == sorted(s.field for s in SETTINGS)
    assert len({s.env for s in SETTINGS}) == len(SETTINGS)


def test_every_iipsrv_variable_is_in_the_table():
    names = {s.env for s in SETTINGS}
    assert IIPSRV_VARIABLES <= names
    assert all(n in IIPSRV_VARIABLES or n.startswith("IIPY_") for n in names)


def test_defaults_are_iipsrvs():
    s = Settings.from_environ({})
    assert s.jpeg_quality == 75
    assert s.max_cvt == 5000
    assert s.cache_control == "max-age=86400"
    assert s.logfile == "/tmp/iipsrv.log"
    assert s.verbosity == 1
    assert s.memcached_servers == "localhost"
    assert s.memcached_timeout == 86400
    assert s.max_image_cache_size == 10.0
    assert s.filename_pattern == "_pyr_"
    assert s.allow_upscaling is True
    assert s.interpolation == 1
    assert s.workers >= 1
    assert s.server_token.startswith("iipy/")
    assert s.codec_passthrough is True
    # iipsrv 1.3's
    assert (s.png_quality, s.webp_quality, s.avif_quality) == (1, 50, 50)
    assert s.iiif_version == 3
    assert s.copyright == s.iiif_extra_info == ""


@pytest.mark.parametrize("env,field,value", [
    ({"JPEG_QUALITY": "101"}, "jpeg_quality", 100),
    ({"JPEG_QUALITY": "0"}, "jpeg_quality", 1),
    ({"JPEG_QUALITY": "90abc"}, "jpeg_quality", 90),
    ({"JPEG_QUALITY": "junk"}, "jpeg_quality", 1),
    ({"MAX_CVT": "-1"}, "max_cvt", 64),
    ({"MAX_CVT": "3000"}, "max_cvt", 3000),
    ({"ALLOW_UPSCALING": "yes"}, "allow_upscaling", False),
    ({"ALLOW_UPSCALING": "2"}, "allow_upscaling", True),
    ({"CODEC_PASSTHROUGH": "0"}, "codec_passthrough", False),
    ({"CODEC_PASSTHROUGH": "true"}, "codec_passthrough", False),  # atoi, as iipsrv 1.3
    ({"VERBOSITY": "-3"}, "verbosity", 0),
    ({"WATERMARK_OPACITY": "1.5"}, "watermark_opacity", 1.0),
    ({"MAX_IMAGE_CACHE_SIZE": "2.5"}, "max_image_cache_size", 2.5),
    ({"IIPY_SOCKET_MODE": "660"}, "socket_mode", 0o660),
    ({"IIPY_WORKERS": "0"}, "workers", 1),
    ({"IIPY_SERVER": "iipsrv/1.1"}, "server_token", "iipsrv/1.1"),
    ({"PNG_QUALITY": "12"}, "png_quality", 9),
    ({"PNG_QUALITY": "-4"}, "png_quality", 0),
    ({"WEBP_QUALITY": "-1"}, "webp_quality", -1),
    ({"WEBP_QUALITY": "-7"}, "webp_quality", -1),
    ({"WEBP_QUALITY": "120"}, "webp_quality", 100),
    ({"AVIF_QUALITY": "-1"}, "avif_quality", -1),
    ({"AVIF_QUALITY": "80x"}, "avif_quality", 80),
    ({"IIIF_VERSION": "2"}, "iiif_version", 2),
    ({"IIIF_VERSION": "1"}, "iiif_version", 2),
    ({"IIIF_VERSION": "0"}, "iiif_version", 3),
    ({"IIIF_VERSION": "4"}, "iiif_version", 3),
    ({"IIIF_VERSION": "junk"}, "iiif_version", 3),
])
def test_parsing(env, field, value):
    assert getattr(Settings.from_environ(env), field) == value


def test_frozen():
    s = Settings.from_environ({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.jpeg_quality = 5  # type: ignore[misc]


def test_readme_table_is_generated_from_settings():
    table = settings_table_rst()
    for s in SETTINGS:
        assert "``%s``" % s.env in table
    readme = (__import__("pathlib").Path(__file__).parents[2] / "README.rst").read_text()
    assert table in readme, "README.rst settings table is stale: run `iipy settings --rst`"
