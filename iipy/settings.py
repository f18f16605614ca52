"""Start-up configuration: iipsrv's environment variables, read once.

``SETTINGS`` is the one table of every variable iipy reads: iipsrv's own names with
iipsrv's parsing (C ``atoi``/``atof`` and the same clamping) and defaults, plus the
iipy-only ``IIPY_*`` variables.  ``Settings.from_environ`` is the only reader of the
environment; the result is frozen and passed down explicitly.  The README table and
``iipy settings`` are generated from ``SETTINGS``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

log = logging.getLogger(__name__)

# C's isspace() and digits: ASCII only (Python's \s and \d also match other Unicode
# blanks and digits, which C does not skip or read)
_INT_RE = re.compile(r"[ \t\n\v\f\r]*([+-]?)0*([0-9]+)")
_FLOAT_RE = re.compile(
    r"[ \t\n\v\f\r]*([+-]?)(?:(0x(?:[0-9a-f]+\.?[0-9a-f]*|\.[0-9a-f]+)(?:p[+-]?[0-9]+)?)"
    r"|((?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:e[+-]?[0-9]+)?|inf(?:inity)?|nan))", re.IGNORECASE
)
_LONG_MAX = (1 << 63) - 1
_LONG_MIN = -(1 << 63)


def atoi(text: str) -> int:
    """glibc ``atoi`` before its cast to ``int`` (``strtol``): leading blanks skipped,
    the longest decimal prefix, 0 if none, saturated at the 64-bit ``long`` limits (so
    thousands of digits never reach Python's int conversion limit)."""
    m = _INT_RE.match(text)
    if m is None:
        return 0
    sign, digits = m.groups()
    if len(digits) > 19:  # beyond any 64-bit value
        return _LONG_MIN if sign == "-" else _LONG_MAX
    value = -int(digits) if sign == "-" else int(digits)
    return max(_LONG_MIN, min(_LONG_MAX, value))


def atof(text: str) -> float:
    """C ``atof`` (``strtod``): leading blanks skipped, the longest decimal or
    hexadecimal (``0x1.8p3``) prefix, ``inf``, ``infinity`` or ``nan``; 0.0 if none;
    overflow gives an infinity."""
    m = _FLOAT_RE.match(text)
    if m is None:
        return 0.0
    sign, hexa, decimal = m.groups()
    if hexa is not None:
        try:
            value = float.fromhex(hexa)
        except OverflowError:
            value = math.inf
    else:
        value = float(decimal)
    return -value if sign == "-" else value


def c_int(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = atoi(text)
        if lo is not None and value < lo:
            value = lo
        if hi is not None and value > hi:
            value = hi
        return value

    return parse


def c_float(lo: float | None = None, hi: float | None = None) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = atof(text)
        if lo is not None and value < lo:
            value = lo
        if hi is not None and value > hi:
            value = hi
        return value

    return parse


def c_bool(text: str) -> bool:
    """iipsrv's boolean switches: ``atoi(text) != 0`` (so ``yes`` is false)."""
    return atoi(text) != 0


def c_str(text: str) -> str:
    return text


def max_cvt(text: str) -> int:
    """R11: values below 64 become 64 (so -1 does not disable the limit)."""
    return max(64, atoi(text))


def log_format(text: str) -> str:
    """IIPY_LOG_FORMAT: ``json`` (any case) or else ``text``."""
    return "json" if text.strip().lower() == "json" else "text"


def iiif_version(text: str) -> int:
    """IIIF_VERSION: 3 (Image API 3.0) or 2 (2.1).  As in iipsrv 1.3, values below 1 give
    the default 3; 1 (Image API 1.1, which iipy does not serve) is read as 2."""
    value = atoi(text)
    if value < 1:
        return 3
    return 2 if value <= 2 else 3


#: Display-range policies ``IIPY_DISPLAY_RANGE`` may name (``iipy.imaging.display`` computes
#: them; docs/protocol.md §4.2).
DISPLAY_RANGE_POLICIES = ("stiff", "mad", "zscale", "percentile", "minmax")
DEFAULT_DISPLAY_RANGE = "stiff"


def split_display_range(text: str) -> tuple[str, tuple[float, ...]]:
    """The policy a display-range text names, as (name, parameters): case and blanks around
    the name and the numbers are ignored; ``percentile:LO,HI`` needs 0 <= LO < HI <= 100.
    ValueError if the text names no policy.

    >>> split_display_range(" Percentile: 0.5, 99.5"), split_display_range("STIFF")
    (('percentile', (0.5, 99.5)), ('stiff', ()))
    """
    if not isinstance(text, str):
        raise ValueError("a display-range policy is a string")
    name, sep, arg = text.strip().lower().partition(":")
    name = name.strip()
    if name == "percentile":
        parts = arg.split(",")
        if not sep or len(parts) != 2:
            raise ValueError("percentile needs two numbers: percentile:LO,HI")
        try:
            lo, hi = (float(p) + 0.0 for p in parts)  # + 0.0: -0 is 0
        except ValueError:
            raise ValueError("percentile needs two numbers: percentile:LO,HI") from None
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError("percentile:LO,HI needs 0 <= LO < HI <= 100")
        return "percentile", (lo, hi)
    if name in DISPLAY_RANGE_POLICIES and not sep:
        return name, ()
    raise ValueError("unknown display-range policy %r (%s)" % (
        text, ", ".join("percentile:LO,HI" if p == "percentile" else p
                        for p in DISPLAY_RANGE_POLICIES)))


def format_display_range(name: str, params: tuple[float, ...] = ()) -> str:
    """The canonical text of a policy, which reads back to the same numbers:
    ``percentile:0.5,99.5``, ``stiff``."""
    if not params:
        return name
    numbers = []
    for p in params:
        r = repr(float(p))
        numbers.append(r[:-2] if r.endswith(".0") else r)
    return "%s:%s" % (name, ",".join(numbers))


def display_range_policy(text: str) -> str:
    """IIPY_DISPLAY_RANGE: the canonical text of the policy; a text that names none is
    logged and gives the default (a start-up setting never stops the server)."""
    try:
        return format_display_range(*split_display_range(text))
    except ValueError as exc:
        log.warning("IIPY_DISPLAY_RANGE: %s; using %s", exc, DEFAULT_DISPLAY_RANGE)
        return DEFAULT_DISPLAY_RANGE


def octal_mode(text: str) -> int:
    try:
        return int(text, 8) & 0o777
    except ValueError:
        return 0o666


@dataclass(frozen=True, slots=True)
class Setting:
    env: str  # iipsrv's name, unchanged; settings only iipy has are IIPY_*
    field: str  # attribute of Settings
    parse: Callable[[str], Any]
    default: Any  # a value, or a zero-argument callable computing it
    doc: str
    ignored: bool = False  # accepted for compatibility, no effect


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or "/var/tmp"
    return os.path.join(base, "iipy-%d" % os.getuid())


SETTINGS: tuple[Setting, ...] = (
    # --- iipsrv 1.1 variables -------------------------------------------------------
    Setting("VERBOSITY", "verbosity", c_int(lo=0), 1,
            "Log level: 0 silent, 1 start-up summary and errors, 2 one line per request "
            "with its timings, 3 and more: details."),
    Setting("LOGFILE", "logfile", c_str, "/tmp/iipsrv.log",
            "Log file, appended to; `syslog` logs to syslog; `-` logs to standard error."),
    Setting("MAX_IMAGE_CACHE_SIZE", "max_image_cache_size", c_float(lo=0.0), 10.0,
            "Per-process in-memory tile cache, in MB."),
    Setting("FILESYSTEM_PREFIX", "filesystem_prefix", c_str, "",
            "Prepended to every FIF path (plain concatenation: give the trailing `/`). "
            "No request can reach a file outside it."),
    Setting("FILESYSTEM_SUFFIX", "filesystem_suffix", c_str, "",
            "Appended to every FIF path (iipsrv 1.2)."),
    Setting("FILENAME_PATTERN", "filename_pattern", c_str, "_pyr_",
            "Image-sequence file name pattern."),
    Setting("JPEG_QUALITY", "jpeg_quality", c_int(lo=1, hi=100), 75,
            "Default JPEG quality, 1-100 (QLT overrides it per request)."),
    Setting("MAX_CVT", "max_cvt", max_cvt, 5000,
            "Largest CVT output width or height; values below 64 count as 64."),
    Setting("ALLOW_UPSCALING", "allow_upscaling", c_bool, True,
            "CVT may be larger than the resolution level it reads (0 forbids)."),
    Setting("CORS", "cors", c_str, "",
            "Value of Access-Control-Allow-Origin; empty: no CORS headers."),
    Setting("CACHE_CONTROL", "cache_control", c_str, "max-age=86400",
            "Value of the Cache-Control header on successful responses."),
    Setting("BASE_URL", "base_url", c_str, "", "Base URL used for IIIF identifiers."),
    Setting("URI_MAP", "uri_map", c_str, "",
            "`prefix=>protocol` URI mapping (protocol IIP, IIIF, DeepZoom or Zoomify); "
            "several mappings separated by commas."),
    Setting("PNG_QUALITY", "png_quality", c_int(lo=0, hi=9), 1,
            "PNG compression level, 0 (none) to 9 (smallest), as iipsrv 1.2."),
    Setting("WEBP_QUALITY", "webp_quality", c_int(lo=-1, hi=100), 50,
            "WebP quality, 0-100; -1 for lossless (iipsrv 1.2)."),
    Setting("AVIF_QUALITY", "avif_quality", c_int(lo=-1, hi=100), 50,
            "AVIF quality, 0-100; -1 for the lossless quantiser (iipsrv 1.3)."),
    Setting("IIIF_VERSION", "iiif_version", iiif_version, 3,
            "IIIF Image API version of info.json when the request does not ask for one: "
            "3 (3.0) or 2 (2.1)."),
    Setting("COPYRIGHT", "copyright", c_str, "",
            "IIIF `rights` (a URI); in 2.1 `license` (a URI) or `attribution` (text)."),
    Setting("IIIF_EXTRA_INFO", "iiif_extra_info", c_str, "",
            "Fields added to every IIIF info.json: `\"key\": value` pairs or a JSON object."),
    Setting("INTERPOLATION", "interpolation", c_int(), 1,
            "CVT resampling: 0 nearest neighbour, anything else bilinear."),
    Setting("WATERMARK", "watermark", c_str, "", "Watermark image file."),
    Setting("WATERMARK_PROBABILITY", "watermark_probability", c_float(lo=0.0, hi=1.0), 1.0,
            "Chance that a tile gets the watermark."),
    Setting("WATERMARK_OPACITY", "watermark_opacity", c_float(lo=0.0, hi=1.0), 1.0,
            "Watermark opacity."),
    Setting("MEMCACHED_SERVERS", "memcached_servers", c_str, "localhost",
            "Comma-separated memcached servers, `host[:port]`; empty disables memcached."),
    Setting("MEMCACHED_TIMEOUT", "memcached_timeout", c_int(lo=0), 86400,
            "Expiry of memcached entries, in seconds."),
    Setting("MAX_LAYERS", "max_layers", c_int(), 0,
            "JPEG2000 quality layers: no effect (iipy reads no JPEG2000).", ignored=True),
    Setting("EMBED_ICC", "embed_icc", c_int(), 1,
            "ICC profile embedding: iipy embeds none.", ignored=True),
    Setting("KAKADU_READMODE", "kakadu_readmode", c_int(), 0,
            "Kakadu decoder mode: no effect.", ignored=True),
    Setting("DECODER_MODULES", "decoder_modules", c_str, "",
            "iipsrv decoder plug-ins: no effect.", ignored=True),
    Setting("OMP_NUM_THREADS", "omp_num_threads", c_int(), 0,
            "OpenMP threads in iipsrv; iipy uses worker processes (IIPY_WORKERS).",
            ignored=True),
    Setting("FCGI_WEB_SERVER_ADDRS", "fcgi_web_server_addrs", c_str, "",
            "Comma-separated IPv4 addresses allowed to connect over TCP; empty: any."),
    Setting("CODEC_PASSTHROUGH", "codec_passthrough", c_bool, True,
            "Send a TIFF's stored JPEG tiles undecoded when a JTL asks for no processing "
            "(iipsrv 1.3)."),
    # --- iipy only --------------------------------------------------------------------
    Setting("IIPY_WORKERS", "workers", c_int(lo=1, hi=256), _cpu_count,
            "Worker processes (default: one per CPU)."),
    Setting("IIPY_TIMEOUT", "timeout", c_float(lo=1.0), 60.0,
            "Seconds a worker may spend on one request before it is killed and replaced."),
    Setting("IIPY_MAX_REQUESTS", "max_requests", c_int(lo=0), 0,
            "Recycle a worker after this many requests (plus up to 10% jitter); 0: never."),
    Setting("IIPY_MAX_RSS_MB", "max_rss_mb", c_int(lo=0), 0,
            "Recycle a worker whose resident memory, memory-mapped files not counted, is "
            "above this many MB after a request; 0: never."),
    Setting("IIPY_SOCKET_MODE", "socket_mode", octal_mode, 0o666,
            "Permissions (octal) of a unix socket created with --bind."),
    Setting("IIPY_CACHE_DIR", "cache_dir", c_str, _default_cache_dir,
            "Directory for the shared reduced-resolution pyramids."),
    Setting("IIPY_CACHE_DIR_MAX_MB", "cache_dir_max_mb", c_int(lo=0), 0,
            "Bound of IIPY_CACHE_DIR in MB, least recently used pyramids evicted; 0: 10 % of "
            "its disk, at most 10240."),
    Setting("IIPY_PYRAMID_MEMORY_MB", "pyramid_memory_mb", c_int(lo=0), 256,
            "Per-worker MB for reduced levels of pyramids that cannot be on disk; larger levels "
            "are read per request."),
    Setting("IIPY_TILE_SIZE", "tile_size", c_int(lo=16, hi=4096), 256,
            "Tile width and height in pixels."),
    Setting("IIPY_SERVER", "server_token", c_str, "iipy/%s",
            "Value of the Server header (`iipsrv/1.1` gives iipsrv's exact bytes)."),
    Setting("IIPY_METRICS_BIND", "metrics_bind", c_str, "",
            "`HOST:PORT` where the master serves Prometheus `/metrics` and `/healthz`; "
            "empty: off."),
    Setting("IIPY_LOG_FORMAT", "log_format", log_format, "text",
            "`text`: iipsrv-style log lines; `json`: one JSON object per line (per request "
            "at VERBOSITY=2)."),
    Setting("IIPY_DISPLAY_RANGE", "display_range", display_range_policy, DEFAULT_DISPLAY_RANGE,
            "Default display range of each channel: `stiff` (as STIFF), `mad`, `zscale`, "
            "`percentile:LO,HI` or `minmax` (see Display: ranges and stretches)."),
)


@dataclass(frozen=True, slots=True)
class Settings:
    verbosity: int
    logfile: str
    max_image_cache_size: float
    filesystem_prefix: str
    filesystem_suffix: str
    filename_pattern: str
    jpeg_quality: int
    max_cvt: int
    allow_upscaling: bool
    cors: str
    cache_control: str
    base_url: str
    uri_map: str
    png_quality: int
    webp_quality: int
    avif_quality: int
    iiif_version: int
    copyright: str
    iiif_extra_info: str
    interpolation: int
    watermark: str
    watermark_probability: float
    watermark_opacity: float
    memcached_servers: str
    memcached_timeout: int
    max_layers: int
    embed_icc: int
    kakadu_readmode: int
    decoder_modules: str
    omp_num_threads: int
    fcgi_web_server_addrs: str
    codec_passthrough: bool
    workers: int
    timeout: float
    max_requests: int
    max_rss_mb: int
    socket_mode: int
    cache_dir: str
    cache_dir_max_mb: int
    pyramid_memory_mb: int
    tile_size: int
    server_token: str
    metrics_bind: str
    log_format: str
    display_range: str

    @classmethod
    def from_environ(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """Build the settings from ``env`` (default: ``os.environ``); unset means default."""
        if env is None:
            env = os.environ
        values: dict[str, Any] = {}
        for s in SETTINGS:
            if s.env in env:
                raw = env[s.env]
                value = s.parse(raw)
                if s.ignored:
                    log.debug("%s=%r is accepted and ignored", s.env, raw)
            else:
                value = s.default() if callable(s.default) else s.default
            values[s.field] = value
        if values["server_token"] == "iipy/%s":
            from iipy import __version__

            values["server_token"] = "iipy/" + __version__
        return cls(**values)

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)

    def describe(self) -> list[tuple[str, Any]]:
        """(variable, effective value) pairs, in table order."""
        return [(s.env, getattr(self, s.field)) for s in SETTINGS]


def environ() -> Mapping[str, str]:
    """The process environment.  This module is the only one that reads it: the server's
    settings come from ``Settings.from_environ``, ``iipy serve`` asks here for the
    few variables of the local desktop it looks at (DISPLAY, IIPY_VIEWER_ASSETS), and
    ``iipy.show`` for the environment of the server it starts."""
    return os.environ


def settings_table_rst() -> str:
    """The README's settings table, generated from SETTINGS."""
    rows = [("Variable", "Default", "Meaning")]
    for s in SETTINGS:
        default = s.default
        if callable(default):
            default = {"IIPY_WORKERS": "number of CPUs",
                       "IIPY_CACHE_DIR": "$XDG_CACHE_HOME/iipy-UID or /var/tmp/iipy-UID"}[s.env]
        elif isinstance(default, bool):
            default = "1" if default else "0"
        elif s.env == "IIPY_SOCKET_MODE":
            default = "0666"
        elif s.env == "IIPY_SERVER":
            default = "iipy/VERSION"
        doc = s.doc + (" *Accepted and ignored.*" if s.ignored else "")
        rows.append(("``%s``" % s.env, "``%s``" % default if default != "" else "(empty)", doc))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    sep = "  ".join("=" * w for w in widths)
    lines = [sep, "  ".join(c.ljust(w) for c, w in zip(rows[0], widths)).rstrip(), sep]
    for r in rows[1:]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    lines.append(sep)
    return "\n".join(lines)
