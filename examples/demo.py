"""Serve the example FITS files with iipy behind nginx (``bash examples/demo.sh --nginx``).

Writes examples/data/ (if missing), starts ``iipsrv.fcgi --bind`` on a free loopback port
and nginx from conf/nginx.conf.in in front of it, prints the URLs and waits; Ctrl-C (or
SIGTERM) stops both.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

from make_examples import make_all  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("demo: nothing listens on port %d" % port)


def main() -> int:
    data = ROOT / "examples" / "data"
    if not (data / "sky.fits").exists():
        print("demo: writing example FITS files into %s" % data)
        make_all(data)
    work = Path(tempfile.mkdtemp(prefix="iipy-demo-"))
    fcgi_port, http_port = free_port(), free_port()
    env = dict(os.environ, FILESYSTEM_PREFIX=str(data) + "/", LOGFILE=str(work / "iipy.log"),
               VERBOSITY="2", JPEG_QUALITY="90", IIPY_CACHE_DIR=str(work / "pyramids"))
    exe = Path(sys.executable).with_name("iipsrv.fcgi")
    iipy = subprocess.Popen([str(exe), "--bind", "127.0.0.1:%d" % fcgi_port], env=env)
    conf = (ROOT / "conf" / "nginx.conf.in").read_text()
    for key, value in {"@PORT@": str(http_port), "@FCGI_PASS@": "127.0.0.1:%d" % fcgi_port,
                       "@KEEPALIVE@": "on", "@PREFIX@": str(work),
                       "@STATIC@": str(ROOT / "examples")}.items():
        conf = conf.replace(key, value)
    (work / "nginx.conf").write_text(conf)
    nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
    cmd = [nginx_bin, "-c", str(work / "nginx.conf"), "-p", str(work)]
    if os.geteuid() == 0:  # keep the worker able to use the private work directory
        cmd += ["-g", "user root;"]
    nginx = subprocess.Popen(cmd)
    try:
        wait_port(fcgi_port)
        wait_port(http_port)
        base = "http://127.0.0.1:%d/fcgi-bin/iipsrv.fcgi" % http_port
        print("\niipy is serving %s behind nginx (logs in %s)\n" % (data, work))
        print("Metadata, as VisiOmatic 2 asks for it:")
        print("  %s?FIF=sky.fits&obj=IIP,1.0&obj=max-size&obj=tile-size&obj=resolution-number"
              "&obj=bits-per-channel&obj=min-max-sample-values" % base)
        print("A tile (smallest resolution) and a colour tile of the 3-band cube:")
        print("  %s?FIF=sky.fits&GAM=0.4545&CTW=1;1;1&JTL=0,0" % base)
        print("  %s?FIF=cube.fits&CTW=1,0,0;0,1,0;0,0,1&JTL=0,0" % base)
        print("\nCtrl-C stops the demo.")
        signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
        while iipy.poll() is None and nginx.poll() is None:
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for proc in (nginx, iipy):
            if proc.poll() is None:
                proc.terminate()
        for proc in (nginx, iipy):
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
