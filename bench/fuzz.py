"""Live fuzzer: mutated IIP requests against a real iipy behind nginx.

    .venv/bin/python bench/fuzz.py [--duration 60] [--count N] [--connections 4]
                                   [--workers 2] [--seed 1] [--fcgi-share 0.1]
    .venv/bin/python bench/fuzz.py --url http://host:port/fcgi-bin/iipsrv.fcgi \\
                                   --log /var/log/iipy.log --fif sky.fits --fif cube.fits

Without ``--url`` it writes the example images (examples/make_examples.py) and a few
unusual FITS files (a MEF, a tile-compressed HDU, a strip 3 pixels wide, one pixel,
all-NaN, a constant, a 64-bit float, a gzip file, a text file) into a temporary
directory, starts iipy (``iipsrv.fcgi``, ``--workers`` workers, LOGFILE with VERBOSITY=1)
and nginx with the shipped ``conf/nginx.conf.in`` in front of it, and stops both at the
end.

``--connections`` client processes each keep one HTTP connection open and send, until
``--duration`` seconds or ``--count`` requests in all, the requests VisiOmatic 2 sends
(metadata, tiles with its modifiers, profiles, snapshots) and the other commands (OBJ,
TIL, JTLS, SPECTRA, SDS, SHD, ROT, COL, CVT=png/fits, IIIF, Zoomify, DeepZoom), each
mutated 0 to 3 times: bytes flipped, cut, tokens repeated, deleted or swapped, numbers
made huge, negative, fractional or non-finite, parts percent-encoded, FIF pointed
outside the prefix, unknown commands, any command with garbage.  Bytes an HTTP request
line cannot carry are percent-encoded.  A share ``--fcgi-share`` of the requests goes
straight to iipy's FastCGI socket instead (only when this script started iipy), with
raw bytes nginx would refuse (spaces, controls, NUL, invalid UTF-8) in QUERY_STRING
and random methods, If-Modified-Since and REQUEST_URI values; a tenth of those are
malformed FastCGI records.

Counted: answers by status (nginx's own answers apart), 5xx answers, tracebacks and
error lines in the iipy log (and its standard error), worker deaths (the master's log
lines, and worker pids that changed), connection errors and timeouts, requests/s.
Every 5xx, traceback or death is printed with its request.  The exit status is 1 if
any 5xx, traceback, death or HTTP connection error was seen, else 0.

``--url`` works as well with ``iipy serve`` (``--url http://127.0.0.1:PORT/iip``).

Needs: nginx (apt), and for ``--url`` nothing but a reachable server.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import queue
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_tiles import free_port, run_main, stop_groups, wait_port  # noqa: E402
from tests.fcgiclient import FCGIClient, record, request_bytes, split_cgi  # noqa: E402

IIP_PATH = "/fcgi-bin/iipsrv.fcgi"
#: Master log lines of a worker that did not end by itself (iipy/server/prefork.py).
DEATH = re.compile(r"worker \d+ \(pid \d+\) (was killed by|exited with status|was stopped after"
                   r"|silent for|crashed|failed to boot)")
#: Log lines that are bugs: a traceback, the last-resort 500, an error without a response.
BUG = re.compile(r"Traceback|unhandled error|no response defined|Internal Server Error")
MAX_TARGET = 7000  # longest request target sent through nginx (its line limit is 8 kB)
REPORTED_CASES = 20  # 5xx answers printed in full


# --- the requests -----------------------------------------------------------------------------


V2_METADATA = ("obj=IIP,1.0&obj=max-size&obj=tile-size&obj=resolution-number"
               "&obj=bits-per-channel&obj=min-max-sample-values&obj=subject")
OBJECTS = ["IIP,1.0", "max-size", "tile-size", "resolution-number", "bits-per-channel",
           "min-max-sample-values", "subject", "resolutions", "dpi", "copyright", "title",
           "colorspace,0,0", "iip-opt-comm", "horizontal-views", "vertical-views", "iip-server"]
COMMANDS = ["FIF", "OBJ", "QLT", "MINMAX", "CNT", "GAM", "CMP", "INV", "CTW", "WID", "HEI",
            "RGN", "ROT", "SDS", "LYR", "ICC", "SHD", "COL", "JTL", "JTLS", "TIL", "CVT", "PFL",
            "SPECTRA", "IIIF", "Zoomify", "DeepZoom", "PTL", "CNV", "DTL", "FOO", "fif", "Obj"]
NUMBERS = ["0", "1", "-1", "2", "3", "255", "256", "65535", "2147483647", "2147483648",
           "-2147483649", "4294967296", "9223372036854775807", "9223372036854775808",
           "99999999999999999999", "1e308", "1e309", "-1e309", "1e-309", "5e-324", "nan",
           "-nan", "inf", "-inf", "infinity", "0x1p99999", "0x10", "-0", "0.5", "1.5e3",
           ".", "-", "+", "e", "1e", "", " ", "0" * 50 + "1"]
TRAVERSALS = ["../", "..%2F", "%2e%2e/", "....//", "..\\", "/etc/passwd", "/proc/self/environ",
              "//", "%00", "sub/../../", "./", "~root/", "a/../../b"]
CHARSET = (b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
           b"&=,;:-+.%[]!*_~/?'\"()<>{}|\\^`$@")


def base_requests(images: list[tuple[str, int, int, int]]) -> list[str]:
    """Valid requests for each image ``(fif, width, height, channels)``: what VisiOmatic 2
    sends, then the other commands."""
    out = []
    for fif, width, height, channels in images:
        nres, w, h = 1, width, height
        while w > 256 or h > 256:
            w, h, nres = w // 2, h // 2, nres + 1
        ctw = "1;1;1" if channels == 1 else ";".join(
            ",".join("1" if j == i else "0" for j in range(channels)) for i in range(3))
        f = "FIF=%s" % fif
        out.append("%s&%s" % (f, V2_METADATA))
        for r in range(nres):
            n = (max(1, width >> (nres - 1 - r)) + 255) // 256 * \
                ((max(1, height >> (nres - 1 - r)) + 255) // 256)
            for variant in ("GAM=0.4545&CTW=%s" % ctw, "CMP=jet&GAM=0.4545&CTW=%s" % ctw,
                            "INV&CNT=1.5&GAM=0.4545&MINMAX=1:90,400&CTW=%s&QLT=75" % ctw,
                            "GAM=log&CTW=%s" % ctw, "SHD=30,45&CTW=%s" % ctw,
                            "ROT=!90&COL=grey&CTW=%s" % ctw):
                out.append("%s&%s&JTL=%d,%d" % (f, variant, r, (7 * r + 3) % n))
        out += [
            "%s&PFL=%d:0,%d-%d,%d" % (f, nres - 1, height // 2, width - 1, height // 2),
            "%s&PFL=%d:%d,0-%d,%d" % (f, nres - 1, width // 3, width // 3, height - 1),
            "%s&PFL=%d:5,5-5,5" % (f, nres - 1),
            "%s&GAM=0.4545&CTW=%s&RGN=0.2,0.3,0.4,0.25&WID=640&CVT=jpeg" % (f, ctw),
            "%s&RGN=-0.1,-0.2,1.3,1.4&WID=800&CVT=jpeg" % f,
            "%s&WID=300&HEI=200&CVT=png" % f,
            "%s&RGN=0.4,0.4,0.2,0.2&WID=64&CVT=fits" % f,
            "%s&%s" % (f, "&".join("obj=" + o for o in OBJECTS)),
            "%s&TIL=%d,0-3" % (f, nres - 1),
            "%s&JTLS=0,%d,0,90" % (f, nres - 1),
            "%s&SPECTRA=%d,0,10,10" % (f, nres - 1),
            "%s&SDS=0,90&JTL=0,0" % f,
            "IIIF=%s/info.json" % fif,
            "IIIF=%s/full/max/0/default.jpg" % fif,
            "IIIF=%s/0,0,300,200/150,/90/gray.png" % fif,
            "Zoomify=%s/ImageProperties.xml" % fif,
            "Zoomify=%s/TileGroup0/0-0-0.jpg" % fif,
            "DeepZoom=%s.dzi" % fif,
            "DeepZoom=%s_files/8/0_0.jpg" % fif,
        ]
    return out


class Mutator:
    """Mutations of a request string (see the module's docstring)."""

    def __init__(self, rng: random.Random, names: list[str]):
        self.rng = rng
        self.names = names

    def __call__(self, query: str) -> str:
        rng = self.rng
        for _ in range(rng.choice((0, 1, 1, 1, 2, 2, 3))):
            query = rng.choice(self.MUTATIONS)(self, query)
        return query

    # each takes and returns the whole query string
    def flip(self, q: str) -> str:
        raw = bytearray(q.encode("utf-8", "surrogateescape"))
        for _ in range(self.rng.randint(1, 4)):
            i = self.rng.randrange(len(raw) + 1)
            byte = self.rng.choice(CHARSET) if self.rng.random() < 0.7 else self.rng.randrange(256)
            raw[i:i + 1] = bytes([byte])
        return raw.decode("utf-8", "surrogateescape")

    def truncate(self, q: str) -> str:
        return q[: self.rng.randrange(len(q) + 1)]

    def repeat(self, q: str) -> str:
        tokens = q.split("&")
        i = self.rng.randrange(len(tokens))
        times = self.rng.choice((2, 3, 10, 100, 1000))
        tokens[i:i + 1] = [tokens[i]] * times
        return "&".join(tokens)

    def delete(self, q: str) -> str:
        tokens = q.split("&")
        del tokens[self.rng.randrange(len(tokens))]
        return "&".join(tokens)

    def swap(self, q: str) -> str:
        tokens = q.split("&")
        self.rng.shuffle(tokens)
        return "&".join(tokens)

    def number(self, q: str) -> str:
        """Replace one number by another kind of number."""
        spans = [m.span() for m in re.finditer(r"-?[0-9]+(\.[0-9]*)?", q)]
        if not spans:
            return q
        a, b = self.rng.choice(spans)
        rng = self.rng
        choice = rng.randrange(5)
        if choice == 0:
            new = rng.choice(NUMBERS)
        elif choice == 1:
            new = "9" * rng.choice((20, 400, 4400, 5000))
        elif choice == 2:
            new = "-" + q[a:b].lstrip("-")
        elif choice == 3:
            new = "%.6fe%d" % (rng.uniform(-10, 10), rng.randint(-330, 330))
        else:
            new = str(rng.randint(-(1 << 70), 1 << 70))
        return q[:a] + new + q[b:]

    def encode(self, q: str) -> str:
        """Percent-encode a part (or a FIF), sometimes twice."""
        a = self.rng.randrange(len(q) + 1)
        b = self.rng.randrange(a, len(q) + 1)
        part = urllib.parse.quote(q[a:b].encode("utf-8", "surrogateescape"), safe="")
        if self.rng.random() < 0.2:
            part = urllib.parse.quote(part, safe="")
        return q[:a] + part + q[b:]

    def traversal(self, q: str) -> str:
        fif = self.rng.choice(TRAVERSALS) * self.rng.randint(1, 4) + self.rng.choice(
            self.names + ["etc/passwd", "", "sky.fits/..", "nonexistent.fits"])
        if "FIF=" in q:
            return re.sub(r"FIF=[^&]*", lambda m: "FIF=" + fif, q, count=1)
        return "FIF=%s&%s" % (fif, q)

    def unknown(self, q: str) -> str:
        name = "".join(self.rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabc_.[]") for _ in
                       range(self.rng.randint(1, 12)))
        return self.insert(q, "%s=%s" % (name, self.rng.choice(NUMBERS)))

    def garbage(self, q: str) -> str:
        """Any command with an argument of random bytes, numbers and separators."""
        arg = "".join(self.rng.choice([
            self.rng.choice(NUMBERS), ",", ";", ":", "-", "!", "[", "]",
            chr(self.rng.randrange(32, 127)), chr(self.rng.randrange(128, 0x3000))])
            for _ in range(self.rng.randint(0, 12)))
        return self.insert(q, "%s=%s" % (self.rng.choice(COMMANDS), arg))

    def selector(self, q: str) -> str:
        sel = self.rng.choice(["[0]", "[1]", "[2]", "[99]", "[*]", "[SCI]", "[sci,2]", "[]",
                               "[-1]", "[" + "9" * 40 + "]", "[%s" % "x", "]", "[[1]]"])
        return re.sub(r"(FIF=[^&]*)", lambda m: m.group(1) + sel, q, count=1)

    def insert(self, q: str, token: str) -> str:
        tokens = q.split("&")
        tokens.insert(self.rng.randrange(len(tokens) + 1), token)
        return "&".join(tokens)

    def separators(self, q: str) -> str:
        return q.replace("&", self.rng.choice(["&&", ";", "&=&", "& ", "&&&&"]), 1) \
            .replace("=", self.rng.choice(["==", "=", "", "=&"]), self.rng.randint(0, 2))

    MUTATIONS = [flip, flip, truncate, repeat, delete, swap, number, number, number, encode,
                 traversal, unknown, garbage, garbage, selector, separators]


def http_target(path: str, query: str) -> str:
    """The request target: bytes an HTTP request line cannot carry percent-encoded."""
    raw = query.encode("utf-8", "surrogateescape")
    safe = bytes(b if 0x21 <= b < 0x7f and b != 0x23 else 0 for b in raw)
    if 0 in safe:
        raw = b"".join(bytes([b]) if 0x21 <= b < 0x7f and b != 0x23 else b"%%%02X" % b
                       for b in raw)
    return path + "?" + raw.decode("ascii")


# --- one client process -----------------------------------------------------------------------


def client(index: int, args, base: list[str], names: list[str], deadline: float,
           sent: "multiprocessing.Value", results: "multiprocessing.Queue") -> None:
    """Send requests on one kept-alive HTTP connection (and raw FastCGI) until the
    deadline or the global count; put a summary on ``results``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    rng = random.Random(args.seed * 1000 + index)
    mutate = Mutator(rng, names)
    statuses: Counter = Counter()
    nginx_statuses: Counter = Counter()
    fcgi_statuses: Counter = Counter()
    cases: list[tuple[int, str]] = []
    errors = Counter()
    host, port = args.host, args.port
    conn = http.client.HTTPConnection(host, port, timeout=args.timeout)
    fcgi = FCGIClient(args.fcgi_address, timeout=args.timeout) if args.fcgi_address else None
    n = batch = 0
    while time.monotonic() < deadline:
        try:
            query = mutate(rng.choice(base))
        except Exception as exc:  # a bug of this script, not of the server
            errors["fuzz.py mutation: %s" % type(exc).__name__] += 1
            continue
        n += 1
        batch += 1
        if batch == 50:
            with sent.get_lock():
                sent.value += batch
                total = sent.value
            batch = 0
            if args.count and total >= args.count:
                break
        if fcgi is not None and rng.random() < args.fcgi_share:
            status = raw_fcgi(fcgi, rng, query, errors)
            if status is not None:
                fcgi_statuses[status] += 1
                if status >= 500 and len(cases) < REPORTED_CASES:
                    cases.append((status, "FastCGI " + repr(query)[:600]))
            continue
        target = http_target(args.path, query)
        if len(target) > MAX_TARGET:
            target = target[:MAX_TARGET]
        try:
            conn.request("GET", target, headers=random_headers(rng))
            response = conn.getresponse()
            body = response.read()
        except socket.timeout:
            errors["http timeout"] += 1
            cases.append((0, "timeout " + target[:600]))
            conn.close()
            conn = http.client.HTTPConnection(host, port, timeout=args.timeout)
            continue
        except (OSError, http.client.HTTPException) as exc:
            errors["http connection: %s" % type(exc).__name__] += 1
            if len(cases) < REPORTED_CASES:
                cases.append((0, "%s %s" % (type(exc).__name__, target[:600])))
            conn.close()
            conn = http.client.HTTPConnection(host, port, timeout=args.timeout)
            continue
        status = response.status
        if (response.getheader("Server") or "").startswith("nginx"):
            nginx_statuses[status] += 1  # nginx's own answer (a line it refused, a 502...)
        else:
            statuses[status] += 1
        if status >= 500 and len(cases) < REPORTED_CASES:
            cases.append((status, "%s -> %r" % (target[:600], body[:200])))
        if response.getheader("Connection", "").lower() == "close":
            conn.close()
            conn = http.client.HTTPConnection(host, port, timeout=args.timeout)
    with sent.get_lock():
        sent.value += batch
    results.put({"requests": n, "statuses": dict(statuses), "nginx": dict(nginx_statuses),
                 "fcgi": dict(fcgi_statuses), "errors": dict(errors), "cases": cases})


def random_headers(rng: random.Random) -> dict[str, str]:
    if rng.random() > 0.1:
        return {}
    return {"If-Modified-Since": rng.choice([
        "Mon, 01 Jan 2001 00:00:00 GMT", "Mon, 01 Jan 2100 00:00:00 GMT", "garbage", "",
        "Mon, 01 Jan 99999999999 00:00:00 GMT", "Mon, 01 Jan 2020 99999999999999:00:00 GMT",
        "1 Jan 9999 23:59:59 -2400"])}


def raw_fcgi(fcgi: FCGIClient, rng: random.Random, query: str, errors: Counter) -> int | None:
    """One request straight to iipy's socket: raw bytes in QUERY_STRING (and random other
    parameters), or, one time in ten, malformed records.  The status, or None."""
    raw = bytearray(query.encode("utf-8", "surrogateescape"))
    for _ in range(rng.randint(0, 4)):
        raw.insert(rng.randrange(len(raw) + 1), rng.randrange(256))
    params: dict[str, str | bytes] = {"QUERY_STRING": bytes(raw),
                                      "REQUEST_METHOD": rng.choice(["GET"] * 8 + [
                                          "HEAD", "POST", "OPTIONS", "PUT", "", "\x00"])}
    if rng.random() < 0.2:
        params["HTTP_IF_MODIFIED_SINCE"] = bytes(rng.randrange(256) for _ in range(20))
    if rng.random() < 0.1:
        params["REQUEST_URI"] = bytes(raw)
    if rng.random() < 0.1:
        params["CONTENT_LENGTH"] = rng.choice(["x", "-1", "99999999999999999999", "10"])
    try:
        if rng.random() < 0.1:
            malformed(fcgi, rng, params)
            return None
        out = fcgi.request(params, keep_conn=True)
    except (OSError, ValueError, EOFError) as exc:
        errors["fcgi connection: %s" % type(exc).__name__] += 1
        fcgi.close()
        return None
    except Exception as exc:  # the client's ProtocolError: a malformed answer
        errors["fcgi protocol: %s" % type(exc).__name__] += 1
        fcgi.close()
        return None
    try:
        headers, _ = split_cgi(out)
    except ValueError:
        errors["fcgi: no CGI header block"] += 1
        return None
    status = 200
    for name, value in headers:
        if name.lower() == "status":
            status = int(value.split()[0])
    return status


def malformed(fcgi: FCGIClient, rng: random.Random, params: dict) -> None:
    """A broken FastCGI conversation on a new connection: the server may close it, it
    must not die.  Any answer is read and ignored."""
    fcgi.close()
    good = request_bytes(params)
    kind = rng.randrange(5)
    if kind == 0:
        data = good[: rng.randrange(len(good))]  # cut anywhere
    elif kind == 1:
        data = bytearray(good)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        data = bytes(data)
    elif kind == 2:
        data = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    elif kind == 3:  # an unknown record type, a management record, then the request
        data = record(rng.randrange(11, 256), 0, b"x") + record(9, 0, b"") + good
    else:  # a request aborted before its parameters end
        data = good[:16] + record(2, 1, b"")
    sock = fcgi.connect()
    sock.settimeout(2.0)
    try:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass
    except OSError:
        pass
    finally:
        fcgi.close()


# --- the server -----------------------------------------------------------------------------


def write_images(directory: Path) -> list[tuple[str, int, int, int]]:
    """The examples and a few unusual files; ``(fif, width, height, channels)`` of each."""
    import numpy as np
    from astropy.io import fits

    sys.path.insert(0, str(ROOT / "examples"))
    import make_examples

    make_examples.make_all(directory)
    rng = np.random.default_rng(3)
    sky = rng.normal(100, 10, (700, 900)).astype(np.float32)
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(sky, name="SCI"),
                  fits.ImageHDU(sky[::-1] * 2, name="WHT")]).writeto(directory / "mef.fits")
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(
        rng.integers(0, 60000, (600, 800)).astype(np.uint16))]).writeto(directory / "comp.fits")
    fits.PrimaryHDU(sky[:, :3].T.copy()).writeto(directory / "strip.fits")  # 700 x 3
    fits.PrimaryHDU(np.ones((1, 1), np.float32)).writeto(directory / "one.fits")
    fits.PrimaryHDU(np.full((300, 300), np.nan, np.float32)).writeto(directory / "nan.fits")
    fits.PrimaryHDU(np.full((300, 400), 7, np.int32)).writeto(directory / "flat.fits")
    fits.PrimaryHDU(rng.normal(0, 1e300, (300, 300))).writeto(directory / "f64.fits")
    (directory / "sub").mkdir()
    shutil.copyfile(directory / "one.fits", directory / "sub" / "a b+c%.fits")
    import gzip
    (directory / "sky.fits.gz").write_bytes(gzip.compress((directory / "one.fits").read_bytes()))
    (directory / "text.fits").write_text("SIMPLE  = T\nnot really\n")
    return [("sky.fits", 2048, 1536, 1), ("cube.fits", 1200, 900, 3), ("int16.fits", 983, 1061, 1),
            ("mef.fits", 900, 700, 1), ("mef.fits[*]", 900, 700, 2), ("mef.fits[WHT]", 900, 700, 1),
            ("comp.fits", 800, 600, 1), ("strip.fits", 3, 700, 1), ("one.fits", 1, 1, 1),
            ("nan.fits", 300, 300, 1), ("flat.fits", 400, 300, 1), ("f64.fits", 300, 300, 1),
            ("sub/a%20b%2Bc%25.fits", 1, 1, 1), ("sky.fits.gz", 1, 1, 1), ("text.fits", 1, 1, 1)]


class Stack:
    """iipy and nginx (conf/nginx.conf.in) in a work directory; ``close()`` stops both."""

    def __init__(self, work: Path, workers: int):
        self.work = work
        self.children: list[subprocess.Popen] = []
        self.log = work / "iipy.log"
        self.output = work / "iipy.out"
        fcgi_port = free_port()
        self.fcgi_address = ("127.0.0.1", fcgi_port)
        env = {k: v for k, v in os.environ.items() if not k.startswith("IIPY_")}
        env.update(FILESYSTEM_PREFIX=str(work / "images") + "/", LOGFILE=str(self.log),
                   VERBOSITY="1", IIPY_WORKERS=str(workers), IIPY_CACHE_DIR=str(work / "cache"),
                   MEMCACHED_SERVERS="", MAX_CVT="2000", IIPY_TIMEOUT="30",
                   PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
        exe = Path(sys.executable).with_name("iipsrv.fcgi")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "iipy"]
        with open(self.output, "wb") as out:
            self.iipy = subprocess.Popen(cmd + ["--bind", "127.0.0.1:%d" % fcgi_port], env=env,
                                         stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.children.append(self.iipy)
        self.port = free_port()
        conf = (ROOT / "conf" / "nginx.conf.in").read_text()
        nginx_dir = work / "nginx"
        (nginx_dir / "html").mkdir(parents=True)
        for name, value in {"PORT": self.port, "FCGI_PASS": "127.0.0.1:%d" % fcgi_port,
                            "KEEPALIVE": "on", "PREFIX": nginx_dir,
                            "STATIC": nginx_dir / "html"}.items():
            conf = conf.replace("@%s@" % name, str(value))
        conf = conf.replace('access_log "%s/access.log" iipy;' % nginx_dir, "access_log off;")
        (nginx_dir / "nginx.conf").write_text(conf)
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        cmd = [nginx, "-c", str(nginx_dir / "nginx.conf"), "-p", str(nginx_dir) + "/"]
        if os.geteuid() == 0:
            cmd += ["-g", "user root;"]
        self.children.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                              start_new_session=True))
        wait_port(fcgi_port)
        wait_port(self.port)
        deadline = time.monotonic() + 30
        while len(self.workers()) < workers and time.monotonic() < deadline:
            time.sleep(0.05)

    def workers(self) -> set[int]:
        """The pids of iipy's workers (the master's live children)."""
        out = set()
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open("/proc/%s/stat" % entry) as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == self.iipy.pid and fields[0] != "Z":
                    out.add(int(entry))
        return out

    def close(self) -> None:
        stop_groups(self.children)


class LogWatch:
    """Counts the bug lines and worker deaths of a log file as it grows."""

    def __init__(self, path: Path | None):
        self.path = path
        self.offset = 0
        self.tracebacks = 0
        self.deaths = 0
        self.lines: list[str] = []
        self._rest = b""

    def poll(self) -> None:
        if self.path is None or not self.path.exists():
            return
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        data, self._rest = (self._rest + data).rsplit(b"\n", 1) if b"\n" in data else (
            b"", self._rest + data)
        for line in data.decode("utf-8", "replace").splitlines():
            bug, death = BUG.search(line), DEATH.search(line)
            self.tracebacks += line.startswith("Traceback")
            self.deaths += bool(death)
            if (bug or death) and len(self.lines) < 40:
                self.lines.append(line[:500])


# --- main -------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 2)[2],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    ap.add_argument("--count", type=int, default=0, help="stop after this many requests")
    ap.add_argument("--connections", type=int, default=4, help="client processes (default 4)")
    ap.add_argument("--workers", type=int, default=2, help="iipy workers (default 2)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=40.0, help="client timeout per request")
    ap.add_argument("--fcgi-share", type=float, default=0.1,
                    help="share of requests sent as raw FastCGI to iipy (default 0.1)")
    ap.add_argument("--report", type=float, default=30.0, help="seconds between progress lines")
    ap.add_argument("--url", help="fuzz this IIP endpoint instead of starting iipy and nginx")
    ap.add_argument("--log", help="with --url: iipy's LOGFILE, watched for tracebacks and deaths")
    ap.add_argument("--fif", action="append", default=[],
                    help="with --url: an image to fuzz (name[:width:height:channels])")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--json", help="write the summary as JSON to this file")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="iipy-fuzz-"))
    stack = None
    try:
        if args.url:
            parsed = urllib.parse.urlsplit(args.url)
            args.host, args.port = parsed.hostname, parsed.port or 80
            args.path = parsed.path or "/"
            images = []
            for spec in args.fif or ["sky.fits"]:
                name, *dims = spec.split(":")
                w, h, c = (list(map(int, dims)) + [2048, 1536, 1][len(dims):])[:3]
                images.append((name, w, h, c))
            args.fcgi_address = None
            watch = LogWatch(Path(args.log) if args.log else None)
        else:
            if not (shutil.which("nginx") or os.path.exists("/usr/sbin/nginx")):
                raise SystemExit("fuzz: nginx is not installed (apt-get install nginx-light)")
            (work / "images").mkdir()
            images = write_images(work / "images")
            stack = Stack(work, args.workers)
            args.host, args.port, args.path = "127.0.0.1", stack.port, IIP_PATH
            args.fcgi_address = stack.fcgi_address
            watch = LogWatch(stack.log)
        names = [fif for fif, *_ in images]
        base = base_requests(images)
        workers_before = stack.workers() if stack else set()
        print("fuzz: %d base requests on %d images, %d connections, %s" % (
            len(base), len(images), args.connections,
            "%d requests" % args.count if args.count else "%g s" % args.duration), flush=True)
        deadline = time.monotonic() + args.duration
        sent = multiprocessing.Value("q", 0)
        results: multiprocessing.Queue = multiprocessing.Queue()
        start = time.monotonic()
        procs = [multiprocessing.Process(target=client, args=(i, args, base, names, deadline,
                                                              sent, results))
                 for i in range(args.connections)]
        for p in procs:
            p.start()
        last = start
        summaries = []
        while len(summaries) < len(procs):
            try:
                summaries.append(results.get(timeout=0.5))
            except queue.Empty:
                if not any(p.is_alive() for p in procs) and results.empty():
                    print("fuzz: %d client process(es) died without a summary"
                          % (len(procs) - len(summaries)), flush=True)
                    break
            watch.poll()
            now = time.monotonic()
            if now - last >= args.report:
                last = now
                print("fuzz: %7.0f s  %9d requests  %6.0f/s  tracebacks %d  deaths %d" % (
                    now - start, sent.value, sent.value / (now - start), watch.tracebacks,
                    watch.deaths), flush=True)
        for p in procs:
            p.join()
        elapsed = time.monotonic() - start
        time.sleep(1.0)  # last log lines
        watch.poll()
        replaced = 0
        if stack is not None:
            workers_after = stack.workers()
            replaced = len(workers_before - workers_after)
            stderr = stack.output.read_text("utf-8", "replace")
            watch.tracebacks += stderr.count("Traceback")
    finally:
        if stack is not None:
            stack.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    total = sum(s["requests"] for s in summaries)
    statuses, nginx, fcgi, errors = Counter(), Counter(), Counter(), Counter()
    cases = []
    for s in summaries:
        statuses.update({int(k): v for k, v in s["statuses"].items()})
        nginx.update({int(k): v for k, v in s["nginx"].items()})
        fcgi.update({int(k): v for k, v in s["fcgi"].items()})
        errors.update(s["errors"])
        cases += s["cases"]
    fives = sum(v for k, v in (statuses + nginx + fcgi).items() if k >= 500)
    http_errors = sum(v for k, v in errors.items() if k.startswith("http"))
    http_errors += len(procs) - len(summaries)  # a client that died counts as an error
    deaths = max(watch.deaths, replaced)
    summary = {
        "requests": total, "seconds": round(elapsed, 1), "per_second": round(total / elapsed, 1),
        "statuses": dict(sorted(statuses.items())), "nginx_statuses": dict(sorted(nginx.items())),
        "fcgi_statuses": dict(sorted(fcgi.items())), "errors": dict(errors), "5xx": fives,
        "tracebacks": watch.tracebacks, "worker_deaths": deaths,
        "workers_replaced": replaced,
    }
    print("fuzz: %d requests in %.0f s (%.0f/s)" % (total, elapsed, total / elapsed))
    print("fuzz: the server's answers over HTTP %s" % dict(sorted(statuses.items())))
    print("fuzz: nginx's own answers %s" % dict(sorted(nginx.items())))
    print("fuzz: raw FastCGI answers %s" % dict(sorted(fcgi.items())))
    print("fuzz: connection errors and timeouts %s" % dict(errors))
    print("fuzz: 5xx %d, tracebacks %d, worker deaths %d" % (fives, watch.tracebacks, deaths))
    for status, what in cases[:REPORTED_CASES]:
        print("fuzz: case %s: %s" % (status or "error", what))
    for line in watch.lines:
        print("fuzz: log: %s" % line)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")
    return 1 if fives or watch.tracebacks or deaths or http_errors else 0


if __name__ == "__main__":
    run_main(main)
