"""The FastCGI layer alone: kept-alive requests answered with a fixed body, in one process.

    .venv/bin/python bench/bench_fcgi.py [--requests 20000] [--repeat 5] [--profile]

A socket pair stands in for nginx: the client side sends the records nginx sends
for a tile request (BEGIN_REQUEST with FCGI_KEEP_CONN, the usual CGI parameters,
the empty FCGI_STDIN), the worker's connection object handles them and a handler
returns a ready 6 KB CGI answer; the client reads the answer back.  Prints requests
per second (medians of ``--repeat`` runs) and, with ``--profile``, the cProfile of
one run: where the per-request Python time of the transport goes.  Figures go in
notes, not in assertions.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import socket
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from iipy.server import fcgi  # noqa: E402
from tests import fcgiclient as fc  # noqa: E402

#: What nginx's fastcgi_params sends for a VisiOmatic tile request.
PARAMS = {
    "QUERY_STRING": "FIF=/data/sky.fits&JTL=3,17",
    "REQUEST_METHOD": "GET", "CONTENT_TYPE": "", "CONTENT_LENGTH": "",
    "SCRIPT_NAME": "/fcgi-bin/iipsrv.fcgi", "REQUEST_URI": "/fcgi-bin/iipsrv.fcgi?FIF=/data/sky.fits&JTL=3,17",
    "DOCUMENT_URI": "/fcgi-bin/iipsrv.fcgi", "DOCUMENT_ROOT": "/usr/share/nginx/html",
    "SERVER_PROTOCOL": "HTTP/1.1", "REQUEST_SCHEME": "http", "GATEWAY_INTERFACE": "CGI/1.1",
    "SERVER_SOFTWARE": "nginx/1.22.1", "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "51234",
    "SERVER_ADDR": "127.0.0.1", "SERVER_PORT": "8080", "SERVER_NAME": "localhost",
    "REDIRECT_STATUS": "200", "HTTP_HOST": "127.0.0.1:8080",
    "HTTP_USER_AGENT": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0",
    "HTTP_ACCEPT": "image/avif,image/webp,*/*", "HTTP_ACCEPT_ENCODING": "gzip, deflate",
    "HTTP_ACCEPT_LANGUAGE": "en-US,en;q=0.9", "HTTP_CONNECTION": "keep-alive",
    "HTTP_REFERER": "http://127.0.0.1:8080/viewer.html",
}
ANSWER = b"Content-Type: image/jpeg\r\nContent-Length: 6000\r\n\r\n" + bytes(6000)


class _Ctx:
    abandoned = 0

    def notify(self) -> None:
        pass

    def request_done(self) -> None:
        pass

    def request_abandoned(self) -> None:
        self.abandoned += 1


def run(requests: int) -> float:
    """Requests per second over one kept-alive connection."""
    ours, theirs = socket.socketpair()
    conn = fcgi._Connection(ours, "", fcgi._Responder(lambda params: ANSWER, _Ctx()))
    request = fc.request_bytes(PARAMS, keep_conn=True)
    expect = len(b"".join(fcgi.stdout_records(1, ANSWER))) + 16
    start = time.perf_counter()
    for _ in range(requests):
        theirs.sendall(request)
        conn.pump()
        got = 0
        while got < expect:
            got += len(theirs.recv(65536))
    elapsed = time.perf_counter() - start
    conn.close(linger=False)
    theirs.close()
    return requests / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    run(1000)
    rates = [run(args.requests) for _ in range(args.repeat)]
    print("FastCGI layer: %.0f requests/s (median of %d; min %.0f, max %.0f), %.1f us/request"
          % (statistics.median(rates), len(rates), min(rates), max(rates),
             1e6 / statistics.median(rates)))
    if args.profile:
        prof = cProfile.Profile()
        prof.runcall(run, args.requests)
        pstats.Stats(prof).sort_stats("tottime").print_stats(18)


if __name__ == "__main__":
    main()
