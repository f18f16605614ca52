"""The deployments of README.rst "Deployment", each with the real web server and the
exact configuration files of conf/:

* Apache 2.4 + mod_fcgid with the drop-in for Debian's iipsrv snippet
  (conf/apache-fcgid.conf.in, inside the minimal server conf/apache2.conf.in): Apache
  spawns ``.venv/bin/iipsrv.fcgi`` with the socket on fd 0 and passes the settings
  with FcgidInitialEnv; the snippet differs from Debian's only by the program's path;
  with conf/apache-pathstyle.conf.in beside it, path-style IIIF, DeepZoom and Zoomify
  URLs reach the same processes;
* nginx's path-style location of conf/nginx.conf.in with URI_MAP;
* nginx with ``fastcgi_pass`` to a standalone iipy over TCP (kept-alive connections)
  and over a unix socket (conf/nginx.conf.in), and balancing two iipy instances
  (conf/nginx-upstream.conf.in), one of which then stops;
* lighttpd starting iipy itself (``bin-path``) and connecting to a standalone iipy
  (``host``/``port``) (conf/lighttpd*.conf.in);
* spawn-fcgi behind nginx, with the documented command line;
* the systemd unit conf/iipy.service with conf/iipy.env: ``systemd-analyze verify``
  where available, then its ExecStart (and ExecReload) run by hand with the
  environment file, behind nginx.

Each test starts the web server on a loopback port, asks it for the metadata and for
tiles (a partial edge tile included, several at once), checks them, and stops every
process it started.
"""

from __future__ import annotations

import grp
import io
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from tests.e2e._serve import pids_with, reap_leftovers
from tests.e2e.conftest import (HOST, REPO_ROOT, Launcher, free_port, http_get, iipy_command,
                                missing, render_template, require_executable, server_env)

pytestmark = pytest.mark.e2e

CONF = REPO_ROOT / "conf"
APACHE_BIN = "/usr/sbin/apache2"
APACHE_MODULES = "/usr/lib/apache2/modules"
DEBIAN_IIPSRV_SNIPPET = Path("/etc/apache2/mods-available/iipsrv.conf")
LIGHTTPD_BIN = "/usr/sbin/lighttpd"
NGINX_BIN = "/usr/sbin/nginx"
SYSTEMD_ANALYZE = "/usr/bin/systemd-analyze"
#: Where conf/iipy.service expects iipy (replaced by this checkout's).
UNIT_EXECUTABLE = "/opt/iipy/bin/iipsrv.fcgi"

V2_METADATA = ("obj=IIP,1.0&obj=max-size&obj=tile-size&obj=resolution-number"
               "&obj=bits-per-channel&obj=min-max-sample-values&obj=subject")


# ---- what every deployment must answer ------------------------------------------------------


def check_iip(endpoint: str) -> None:
    """Metadata and tiles through ``endpoint`` (the URL of iipsrv.fcgi, no query)."""
    status, headers, body = http_get(f"{endpoint}?FIF=sky.fits&{V2_METADATA}")
    assert status == 200, body[:300]
    assert headers["Content-Type"] == "application/vnd.netfpx"
    text = body.decode("latin-1")
    for line in ("IIP:1.0\r\n", "Max-size:2048 1536\r\n", "Tile-size:256 256\r\n",
                 "Resolution-number:4\r\n", "Bits-per-channel:32\r\n"):
        assert line in text, (line, text[:300])
    assert re.search(r"Min-Max-sample-values: \S+  \S+\r\n", text)
    assert re.search(r"subject/\d+:SIMPLE  =", text)

    def tile(query: str) -> tuple[int, tuple[int, int], str]:
        status, headers, body = http_get(f"{endpoint}?{query}")
        assert status == 200, (query, body[:300])
        assert headers["Content-Type"] == "image/jpeg"
        with Image.open(io.BytesIO(body)) as im:
            return status, im.size, im.mode

    assert tile("FIF=sky.fits&GAM=0.4545&CTW=1;1;1&JTL=0,0") == (200, (256, 192), "L")
    # The last column of int16.fits (983 x 1061) at full resolution is 215 pixels wide.
    assert tile("FIF=int16.fits&CTW=1;1;1&JTL=3,3") == (200, (215, 256), "L")
    assert tile("FIF=cube.fits&CTW=1,0,0;0,1,0;0,0,1&JTL=1,0")[1:] == ((256, 225), "RGB")
    # Several requests at once, as a browser sends them.
    queries = [f"FIF=sky.fits&CMP=jet&GAM=0.4545&CTW=1;1;1&JTL=3,{n}" for n in range(12)]
    with ThreadPoolExecutor(6) as pool:
        sizes = list(pool.map(lambda q: tile(q)[1], queries))
    assert sizes == [(256, 256)] * 12
    status, _, _ = http_get(f"{endpoint}?FIF=missing.fits&obj=max-size")
    assert status == 404


def check_pathstyle(base: str, script: str) -> None:
    """Path-style IIIF, DeepZoom and Zoomify URLs under ``base`` (``http://host:port``),
    and the same image through the query-string endpoint ``base + script``."""
    status, headers, body = http_get(f"{base}/iiif/sky.fits")
    assert status == 303 and headers["Location"] == f"{base}/iiif/sky.fits/info.json", body
    status, headers, body = http_get(f"{base}/iiif/sky.fits/info.json")
    assert status == 200, body[:300]
    assert headers["Content-Type"].startswith("application/ld+json")
    info = json.loads(body)
    assert info["id"] == f"{base}/iiif/sky.fits"
    assert (info["width"], info["height"]) == (2048, 1536)
    status, headers, tile = http_get(f"{base}/iiif/sky.fits/0,0,256,256/256,/0/default.jpg")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    status, _, jtl = http_get(f"{base}{script}?FIF=sky.fits&JTL=3,0")
    assert status == 200 and tile == jtl
    status, headers, body = http_get(f"{base}/iiif/sky.fits/full/300,/90/gray.png")
    assert status == 200 and headers["Content-Type"] == "image/png"
    with Image.open(io.BytesIO(body)) as im:
        assert (im.size, im.mode) == ((225, 300), "L")
    status, _, body = http_get(f"{base}/deepzoom/sky.fits.dzi")
    assert status == 200 and b'<Size Width="2048" Height="1536"/>' in body
    status, _, body = http_get(f"{base}/deepzoom/sky.fits_files/11/0_0.jpg")
    assert status == 200 and body == jtl
    status, _, body = http_get(f"{base}/zoomify/sky.fits/ImageProperties.xml")
    assert status == 200 and b'WIDTH="2048" HEIGHT="1536"' in body
    status, _, body = http_get(f"{base}/zoomify/sky.fits/TileGroup0/3-0-0.jpg")
    assert status == 200 and body == jtl
    # an identifier with an encoded slash (./sky.fits)
    status, _, body = http_get(f"{base}/iiif/.%2Fsky.fits/full/64,/0/default.jpg")
    assert status == 200 and body[:2] == b"\xff\xd8", body[:200]
    status, _, _ = http_get(f"{base}/iiif/missing.fits/info.json")
    assert status == 404
    status, _, _ = http_get(f"{base}/iiif/sky.fits/full/max/0/default.gif")
    assert status == 400


def _config_lines(text: str) -> list[str]:
    """The directives of an Apache configuration: no comments, no blank lines."""
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def _established_to(port: int) -> int:
    """TCP connections in state ESTABLISHED whose remote end is 127.0.0.1:port."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote, state = fields[2], fields[3]
        address, _, hex_port = remote.partition(":")
        if state == "01" and int(hex_port, 16) == port and address == "0100007F":
            count += 1
    return count


def _apache_user() -> tuple[str, str] | None:
    """(user, group) Apache switches to when started as root; None when not root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("www-data")
    except KeyError:
        missing("user www-data does not exist (Apache's user on Debian)")
    return "www-data", "www-data"


def _can_run_as(user: str, argv: list[str]) -> bool:
    runuser = shutil.which("runuser") or "/usr/sbin/runuser"
    try:
        done = subprocess.run([runuser, "-u", user, "--", *argv], cwd="/",
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _launcher_for(user: str, workdir: Path) -> str:
    """The iipsrv.fcgi Apache will start as ``user``.

    Normally ``.venv/bin/iipsrv.fcgi`` itself.  When the virtual environment's Python
    is out of that user's reach (a Python installed under /root, e.g. by pyenv), an
    equivalent launcher: a virtual environment of the system's Python of the same
    version that loads this one's packages, and a script starting iipy exactly as the
    console script does.  Without such a Python the test is skipped.
    """
    script = Path(iipy_command()[0])
    probe = [str(script.parent / "python"), "-c", "import iipy.protocols.router"]
    if _can_run_as(user, probe):
        return str(script)
    version = "python%d.%d" % sys.version_info[:2]
    system_python = Path("/usr/bin") / version
    site = Path(sys.prefix) / "lib" / version / "site-packages"
    reason = (f"{script.parent / 'python'} cannot be run by {user} (Apache's user), "
              f"and there is no {system_python} to load its packages")
    if not system_python.exists():
        pytest.skip(reason)
    venv = workdir / "launcher"
    subprocess.run([str(system_python), "-m", "venv", "--without-pip", str(venv)], check=True)
    own_site = venv / "lib" / version / "site-packages"
    (own_site / "iipy-checkout.pth").write_text(f"import site; site.addsitedir({str(site)!r})\n")
    launcher = venv / "bin" / "iipsrv.fcgi"
    launcher.write_text(f"#!{venv}/bin/python\nimport sys\nfrom iipy.__main__ import fcgi_main\n"
                        "sys.exit(fcgi_main())\n")
    launcher.chmod(0o755)
    for path in [venv, *venv.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o005 | (0o050 if path.is_dir() else 0))
    if not _can_run_as(user, [str(venv / "bin" / "python"), "-c", "import iipy.protocols.router"]):
        pytest.skip(reason)
    warnings.warn(f"{script.parent / 'python'} is out of reach of {user}: Apache starts "
                  f"{launcher} instead (same code, packages and start-up, system Python)")
    return str(launcher)


@pytest.fixture
def public_dir() -> Path:
    """A directory any user can enter (Apache's children run as www-data)."""
    path = Path(tempfile.mkdtemp(prefix="iipy-deploy-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _copy_examples(example_data, target: Path) -> Path:
    target.mkdir(mode=0o755)
    for path in example_data.values():
        try:
            os.link(path, target / path.name)
        except OSError:
            shutil.copy2(path, target / path.name)
        (target / path.name).chmod(0o644)
    return target


# ---- Apache + mod_fcgid ---------------------------------------------------------------------


def test_apache_dropin_differs_from_debian_only_by_the_program(tmp_path: Path) -> None:
    """conf/apache-fcgid.conf.in = Debian's iipsrv snippet with another ScriptAlias."""
    if not DEBIAN_IIPSRV_SNIPPET.exists():
        missing(f"{DEBIAN_IIPSRV_SNIPPET} not found (install the Debian package iipimage-server)")
    ours = _config_lines(render_template((CONF / "apache-fcgid.conf.in").read_text(),
                                         {"IIPSRV_FCGI": "/opt/iipy/bin/iipsrv.fcgi"}))
    debian = _config_lines(DEBIAN_IIPSRV_SNIPPET.read_text())
    assert len(ours) == len(debian)
    different = [(a, b) for a, b in zip(ours, debian) if a != b]
    assert different == [('ScriptAlias /iipsrv/iipsrv.fcgi "/opt/iipy/bin/iipsrv.fcgi"',
                          'ScriptAlias /iipsrv/ "/usr/lib/iipimage-server/"')]


def _run_apache(tmp_path_factory, example_data, public_dir: Path, check,
                snippets: tuple[str, ...] = ("apache-fcgid.conf.in",)) -> tuple[str, Path]:
    """Apache with conf/apache2.conf.in around ``snippets`` of conf/ (rendered and
    joined); ``check(base_url)`` runs while it is up.  Returns iipy's log and its
    directory."""
    apache = require_executable(APACHE_BIN, "apache2")
    if not Path(APACHE_MODULES, "mod_fcgid.so").exists():
        missing("mod_fcgid.so not found (install the Debian package libapache2-mod-fcgid)")
    account = _apache_user()
    user, group = account or (pwd.getpwuid(os.geteuid()).pw_name,
                              grp.getgrgid(os.getegid()).gr_name)
    program = _launcher_for(user, public_dir) if account else iipy_command()[0]
    data = _copy_examples(example_data, public_dir / "data")
    (public_dir / "htdocs").mkdir(mode=0o755)  # (mod_fcgid creates and owns fcgid/)
    iipy_dir = public_dir / "iipy"  # iipy's log and pyramids: written by Apache's user
    (iipy_dir / "cache").mkdir(parents=True)
    if account:
        for path in (iipy_dir, iipy_dir / "cache"):
            shutil.chown(path, user, group)
    snippet = public_dir / "iipsrv.conf"
    text = "\n".join(render_template((CONF / name).read_text(), {"IIPSRV_FCGI": program})
                     for name in snippets)
    if os.environ.get("PYTHONPATH"):  # the checkout under test, not an installed iipy
        text += '\nFcgidInitialEnv PYTHONPATH "%s"\n' % os.environ["PYTHONPATH"]
    snippet.write_text(text)
    port = free_port()
    conf = public_dir / "apache2.conf"
    conf.write_text(render_template((CONF / "apache2.conf.in").read_text(), {
        "PORT": port, "PREFIX": public_dir, "MODULES": APACHE_MODULES, "USER": user,
        "GROUP": group, "IIPY_CONF": snippet, "FILESYSTEM_PREFIX": f"{data}/",
        "LOGFILE": iipy_dir / "iipy.log", "IIPY_CACHE_DIR": iipy_dir / "cache"}))
    launcher = Launcher(tmp_path_factory, "apache2")
    try:
        launcher.start([apache, "-f", str(conf), "-DFOREGROUND"], dict(os.environ),
                       f"{HOST}:{port}", public_dir, public_dir / "error.log")
        check(f"http://{HOST}:{port}")
        log = (iipy_dir / "iipy.log").read_text()
        # iipy runs as Apache's user, spawned with the listening socket on fd 0
        pids = pids_with(str(iipy_dir))
        assert pids, "no iipy process found"
        assert all(os.stat(f"/proc/{pid}").st_uid == pwd.getpwnam(user).pw_uid for pid in pids)
        assert any(os.readlink(f"/proc/{pid}/fd/0").startswith("socket:") for pid in pids)
    finally:
        launcher.close()
        left = reap_leftovers(str(iipy_dir))
        assert not left, f"iipy processes {left} outlived Apache"
    return log, data


def test_apache_mod_fcgid_spawns_iipy(tmp_path_factory, example_data, public_dir: Path) -> None:
    log, data = _run_apache(tmp_path_factory, example_data, public_dir,
                            lambda base: check_iip(f"{base}/iipsrv/iipsrv.fcgi"))
    # the settings of the snippet (JPEG_QUALITY) and of the server (FILESYSTEM_PREFIX)
    assert "socket inherited on file descriptor 0" in log
    assert "JPEG_QUALITY = 90" in log and f"FILESYSTEM_PREFIX = '{data}/'" in log


def test_apache_path_style_urls(tmp_path_factory, example_data, public_dir: Path) -> None:
    """conf/apache-pathstyle.conf.in beside the drop-in: /iiif/..., /deepzoom/... and
    /zoomify/... reach the iipy processes of /iipsrv/iipsrv.fcgi, which answer both."""
    log, _ = _run_apache(tmp_path_factory, example_data, public_dir,
                         lambda base: check_pathstyle(base, "/iipsrv/iipsrv.fcgi"),
                         ("apache-fcgid.conf.in", "apache-pathstyle.conf.in"))
    assert "URI_MAP = 'iiif=>IIIF,deepzoom=>DeepZoom,zoomify=>Zoomify'" in log


# ---- nginx ---------------------------------------------------------------------------------


def test_nginx_tcp_keepalive(iipy_server, nginx) -> None:
    server = iipy_server()
    web = nginx(server, keepalive=True)
    assert "fastcgi_keep_conn on;" in web.conf.read_text()
    check_iip(web.iip)
    # Kept alive: idle FastCGI connections from nginx to iipy stay open between requests.
    assert _established_to(server.port) >= 1


def test_nginx_path_style_urls(iipy_server, nginx) -> None:
    """The path-style location of conf/nginx.conf.in, with URI_MAP as documented there."""
    server = iipy_server(URI_MAP="iiif=>IIIF,deepzoom=>DeepZoom,zoomify=>Zoomify")
    web = nginx(server, keepalive=True)
    assert "location ~ ^/(iiif|deepzoom|zoomify)/ {" in web.conf.read_text()
    check_pathstyle(web, "/fcgi-bin/iipsrv.fcgi")
    check_iip(web.iip)


def test_nginx_unix_socket(iipy_server, nginx, unix_socket_path) -> None:
    server = iipy_server(bind=unix_socket_path())
    web = nginx(server, keepalive=True)
    assert f"server unix:{server.bind};" in web.conf.read_text()
    check_iip(web.iip)


def test_nginx_upstream_two_instances(tmp_path_factory, iipy_server) -> None:
    binary = require_executable(NGINX_BIN, "nginx-light")
    first, second = iipy_server(), iipy_server()
    launcher = Launcher(tmp_path_factory, "nginx-upstream")
    try:
        prefix = launcher.workdir()
        (prefix / "html").mkdir()
        port = free_port()
        conf = prefix / "nginx.conf"
        conf.write_text(render_template((CONF / "nginx-upstream.conf.in").read_text(), {
            "PORT": port, "FCGI_PASS_1": first.fcgi_pass, "FCGI_PASS_2": second.fcgi_pass,
            "PREFIX": prefix, "STATIC": prefix / "html"}))
        cmd = [binary, "-c", str(conf), "-p", f"{prefix}/"]
        if os.geteuid() == 0:
            cmd += ["-g", "user root;"]
        launcher.start(cmd, dict(os.environ), f"{HOST}:{port}", prefix, prefix / "error.log")
        endpoint = f"http://{HOST}:{port}/fcgi-bin/iipsrv.fcgi"
        check_iip(endpoint)
        # Both instances answered requests (VERBOSITY=2 logs one line per request).
        for handle in (first, second):
            assert handle.log_text().count("JTL=") >= 3, handle.log_text()[-2000:]
        # One instance stops: every request still succeeds, through the other one.
        first.stop()
        for n in range(8):
            status, _, body = http_get(f"{endpoint}?FIF=sky.fits&CTW=1;1;1&JTL=2,{n}")
            assert status == 200 and body[:2] == b"\xff\xd8"
    finally:
        launcher.close()


# ---- lighttpd ------------------------------------------------------------------------------


def _start_lighttpd(launcher: Launcher, snippet: str, values: dict) -> str:
    """lighttpd with conf/lighttpd.conf.in including ``conf/<snippet>``; the IIP URL."""
    binary = require_executable(LIGHTTPD_BIN, "lighttpd")
    prefix = launcher.workdir()
    (prefix / "html").mkdir()
    fastcgi = prefix / "fastcgi.conf"
    fastcgi.write_text(render_template((CONF / snippet).read_text(), values))
    port = free_port()
    conf = prefix / "lighttpd.conf"
    conf.write_text(render_template((CONF / "lighttpd.conf.in").read_text(), {
        "PORT": port, "PREFIX": prefix, "STATIC": prefix / "html", "FASTCGI_CONF": fastcgi}))
    subprocess.run([binary, "-tt", "-f", str(conf)], check=True, capture_output=True)
    launcher.start([binary, "-D", "-f", str(conf)], server_env({}, {}), f"{HOST}:{port}",
                   prefix, prefix / "error.log")
    return f"http://{HOST}:{port}/fcgi-bin/iipsrv.fcgi"


def test_lighttpd_bin_path_spawns_iipy(tmp_path_factory, example_data, unix_socket_path) -> None:
    launcher = Launcher(tmp_path_factory, "lighttpd")
    iipy_dir = tmp_path_factory.mktemp("lighttpd-iipy")
    try:
        endpoint = _start_lighttpd(launcher, "lighttpd-fastcgi-spawn.conf.in", {
            "IIPSRV_FCGI": iipy_command()[0], "SOCKET": unix_socket_path("lighttpd-iipy.sock"),
            "FILESYSTEM_PREFIX": example_data.prefix, "LOGFILE": iipy_dir / "iipy.log",
            "IIPY_CACHE_DIR": iipy_dir / "cache"})
        check_iip(endpoint)
        log = (iipy_dir / "iipy.log").read_text()
        assert "socket inherited on file descriptor 0" in log
        pids = pids_with(str(iipy_dir))
        assert any(os.readlink(f"/proc/{pid}/fd/0").startswith("socket:") for pid in pids)
    finally:
        launcher.close()
        left = reap_leftovers(str(iipy_dir))
        assert not left, f"iipy processes {left} outlived lighttpd"


def test_lighttpd_host_port(tmp_path_factory, iipy_server) -> None:
    server = iipy_server()
    host, port = server.address
    launcher = Launcher(tmp_path_factory, "lighttpd")
    try:
        endpoint = _start_lighttpd(launcher, "lighttpd-fastcgi-tcp.conf.in",
                                   {"FCGI_HOST": host, "FCGI_PORT": port})
        check_iip(endpoint)
    finally:
        launcher.close()


# ---- spawn-fcgi ----------------------------------------------------------------------------


def test_spawn_fcgi_behind_nginx(spawn_fcgi, nginx) -> None:
    """``spawn-fcgi -n -a 127.0.0.1 -p PORT -- iipsrv.fcgi`` (README), nginx in front."""
    server = spawn_fcgi(JPEG_QUALITY=90)
    web = nginx(server, keepalive=True)
    check_iip(web.iip)
    assert "socket inherited on file descriptor 0" in server.log_text()


# ---- systemd -------------------------------------------------------------------------------


def _unit_values(text: str, section: str) -> dict[str, str]:
    """``Key=value`` lines of one section of a unit file (the last one wins)."""
    values: dict[str, str] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = line.strip("[]")
        elif current == section:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def _environment_file(text: str) -> dict[str, str]:
    """systemd's EnvironmentFile= syntax for the simple lines conf/iipy.env uses."""
    env = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key.strip()), raw
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def _expand(command: str, env: dict[str, str]) -> list[str]:
    """systemd's expansion of an Exec line: ``${NAME}`` is one word, ``$NAME`` splits."""
    words = []
    for word in shlex.split(command):
        if re.fullmatch(r"\$[A-Za-z_][A-Za-z0-9_]*", word):
            words.extend(env.get(word[1:], "").split())
        else:
            words.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}",
                                lambda m: env.get(m.group(1), ""), word))
    return words


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """``systemd-analyze verify`` accepts conf/iipy.service (with this checkout's program)."""
    if not os.access(SYSTEMD_ANALYZE, os.X_OK):
        pytest.skip(f"{SYSTEMD_ANALYZE} not available: the unit is only run by hand below")
    unit = tmp_path / "iipy.service"
    unit.write_text((CONF / "iipy.service").read_text().replace(UNIT_EXECUTABLE,
                                                                iipy_command()[0]))
    done = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", str(unit)],
                          capture_output=True, text=True, timeout=60)
    output = (done.stdout + done.stderr).strip()
    if done.returncode != 0 and ("Failed to" in output and "bus" in output.lower()):
        pytest.skip(f"systemd-analyze cannot run here: {output}")
    assert done.returncode == 0 and "iipy.service" not in output, output


def test_systemd_execstart_by_hand(tmp_path_factory, example_data, nginx) -> None:
    """The unit's ExecStart, with its environment file, behind nginx; ExecReload; stop."""
    unit_text = (CONF / "iipy.service").read_text()
    service = _unit_values(unit_text, "Service")
    assert service["EnvironmentFile"] == "/etc/iipy/iipy.env"
    assert service["KillMode"] == "mixed"
    file_env = _environment_file((CONF / "iipy.env").read_text())
    assert file_env["IIPY_BIND"] == "127.0.0.1:9000"
    workdir = tmp_path_factory.mktemp("systemd")
    port = free_port()
    # The file's values, with the paths and the port of this test.
    env = dict(file_env, IIPY_BIND=f"{HOST}:{port}", FILESYSTEM_PREFIX=example_data.prefix,
               IIPY_CACHE_DIR=str(workdir / "cache"), LOGFILE=str(workdir / "iipy.log"))
    argv = _expand(service["ExecStart"], env)
    assert argv == [UNIT_EXECUTABLE, "--bind", f"{HOST}:{port}"]
    argv[0] = iipy_command()[0]
    launcher = Launcher(tmp_path_factory, "systemd-iipy")
    try:
        handle = launcher.start(argv, server_env({}, env), f"{HOST}:{port}", workdir,
                                workdir / "iipy.log")
        web = nginx(handle, keepalive=True)
        check_iip(web.iip)
        log = handle.log_text()
        assert "JPEG_QUALITY = 90" in log and "MEMCACHED_SERVERS = ''" in log
        # systemctl reload: ExecReload with $MAINPID; the workers are replaced, and
        # requests keep being answered.
        workers = _children(handle.proc.pid)
        reload = _expand(service["ExecReload"], {"MAINPID": str(handle.proc.pid)})
        assert reload[1:] == ["-HUP", str(handle.proc.pid)]
        subprocess.run(reload, check=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (_children(handle.proc.pid) & workers):
            time.sleep(0.05)
        assert not _children(handle.proc.pid) & workers, "workers not replaced after reload"
        check_iip(web.iip)
        # systemctl stop with KillMode=mixed: SIGTERM to the main process only.
        handle.proc.send_signal(signal.SIGTERM)
        assert handle.proc.wait(10) == 0
    finally:
        launcher.close()


def _children(pid: int) -> set[int]:
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.add(int(entry))
    return out
