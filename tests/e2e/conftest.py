"""Fixtures for end-to-end tests: real iipy, nginx, spawn-fcgi and reference iipsrv processes.

Everything listens on 127.0.0.1 (or on a Unix socket) and writes only below pytest's
temporary directories.  Each factory fixture returns a function that starts one
process per call and stops every process it started at teardown: SIGTERM to the
process, SIGKILL to its whole process group after 5 s.  Teardown *fails the test*
(an error in teardown) when a process

* wrote ``Traceback`` to its log file, to its stdout/stderr or, for nginx, to the
  nginx error log (FastCGI stderr lands there), unless ``handle.allow_traceback``
  was set to True by the test;
* needed SIGKILL, or left processes of its group (e.g. workers) behind.

Factories (all keyword arguments in UPPER CASE are environment variables; a value
of None removes the variable from the environment):

``iipy_server(*, bind=None, args=(), **env) -> ServerProcess``
    ``iipsrv.fcgi --bind 127.0.0.1:<free port>`` (or ``bind=<unix socket path>``)
    with FILESYSTEM_PREFIX = the example data directory, LOGFILE, VERBOSITY=2,
    IIPY_WORKERS=2 and IIPY_CACHE_DIR in a temporary directory.
``spawn_fcgi(*, socket_path=None, **env) -> ServerProcess``
    ``spawn-fcgi -n -a 127.0.0.1 -p <port> -- iipsrv.fcgi``: iipy inherits the
    listening socket as fd 0 (the mod_fcgid/spawn-fcgi start-up mode).
``iipsrv_ref(*, bind=None, **env) -> ServerProcess``
    the reference iipsrv 1.1 (Debian iipimage-server) with memcached pointed at a
    closed port, so that nothing is cached between requests.
``nginx(fcgi_pass, *, keepalive=True, static_dir=None) -> NginxURL``
    nginx with the shipped ``conf/nginx.conf.in``; returns ``"http://127.0.0.1:<port>"``
    (a str with extra attributes).  The IIP endpoint is ``url.iip``.
``memcached(*, memory_mb=16) -> ServerProcess``
    a private memcached on 127.0.0.1 (``MEMCACHED_SERVERS=handle.fcgi_pass``).

Helpers, also available as session fixtures of the same name: ``free_port() -> int``,
``wait_for_port(host, port, timeout)``, ``wait_for_unix(path, timeout)``,
``http_get(url, headers=None) -> (status, headers, body)``.  Other fixtures:
``example_data``/``example_prefix`` (the example FITS files), ``make_examples``
(the generator module), ``unix_socket_path`` (short socket paths).

A binary that is not installed skips the test with a reason, or fails it when the
environment variable CI is ``true`` (CI must run every end-to-end test).
"""

from __future__ import annotations

import http.client
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
NGINX_TEMPLATE = REPO_ROOT / "conf" / "nginx.conf.in"
MAKE_EXAMPLES = REPO_ROOT / "examples" / "make_examples.py"

HOST = "127.0.0.1"
NGINX_BIN = "/usr/sbin/nginx"
SPAWN_FCGI_BIN = "/usr/bin/spawn-fcgi"
MEMCACHED_BIN = "/usr/bin/memcached"
IIPSRV_REF_BIN = "/usr/lib/iipimage-server/iipsrv.fcgi"
#: Location of the FastCGI server in the nginx configuration.
IIP_PATH = "/fcgi-bin/iipsrv.fcgi"

START_TIMEOUT = 20.0  # seconds for a server to accept connections
STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL
POLL_INTERVAL = 0.02

#: Variables read by iipsrv or iipy; inherited values are dropped so that the
#: developer's shell cannot change what the tests see.
SERVER_ENV_NAMES = frozenset(
    """VERBOSITY LOGFILE MAX_IMAGE_CACHE_SIZE FILESYSTEM_PREFIX FILESYSTEM_SUFFIX FILENAME_PATTERN
    JPEG_QUALITY PNG_QUALITY WEBP_QUALITY MAX_CVT MAX_LAYERS ALLOW_UPSCALING CORS CACHE_CONTROL
    BASE_URL URI_MAP EMBED_ICC INTERPOLATION WATERMARK WATERMARK_PROBABILITY WATERMARK_OPACITY
    MEMCACHED_SERVERS MEMCACHED_TIMEOUT KAKADU_READMODE DECODER_MODULES IIIF_VERSION
    MAX_METADATA_CACHE_SIZE FCGI_WEB_SERVER_ADDRS CODEC_PASSTHROUGH AVIF_QUALITY COPYRIGHT
    IIIF_EXTRA_INFO""".split()
)


# --------------------------------------------------------------------------- helpers


def in_ci() -> bool:
    """True when the environment variable CI is ``true`` (or ``1``)."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1"}


def missing(reason: str) -> NoReturn:
    """Skip the current test because something is not installed; fail it under CI."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: end-to-end tests must not be skipped)", pytrace=False)
    pytest.skip(reason)


def require_executable(path: str, package: str) -> str:
    """Return *path* if it is an executable file (or a name found on PATH), else skip/fail."""
    found = path if os.access(path, os.X_OK) else shutil.which(os.path.basename(path))
    if not found:
        missing(f"{path} not found (install the Debian package {package})")
    return found


def free_port(host: str = HOST) -> int:
    """Return a TCP port on *host* that is free right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _wait_until(ready: Callable[[], bool], what: str, timeout: float, proc: subprocess.Popen | None) -> None:
    """Poll *ready* until it returns True; raise if *proc* exits or *timeout* passes."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc is not None and proc.poll() is not None:
            raise ProcessExited(f"process {proc.pid} exited with status {proc.returncode} before {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout:g} s")
        time.sleep(POLL_INTERVAL)


class ProcessExited(RuntimeError):
    """A process exited while we were waiting for it to become ready."""


def _can_connect(family: int, address: object) -> bool:
    """True if a stream connection to *address* succeeds (it is closed at once)."""
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(address)
        except OSError:
            return False
        return True


def wait_for_port(host: str, port: int, timeout: float = START_TIMEOUT, proc: subprocess.Popen | None = None) -> None:
    """Wait until a TCP connection to *host*:*port* succeeds.

    Raises TimeoutError after *timeout* seconds, or ProcessExited as soon as the
    optional *proc* has exited.
    """
    _wait_until(lambda: _can_connect(socket.AF_INET, (host, port)), f"{host}:{port}", timeout, proc)


def wait_for_unix(
    path: str | os.PathLike[str], timeout: float = START_TIMEOUT, proc: subprocess.Popen | None = None
) -> None:
    """Wait until the Unix socket *path* exists and accepts a connection (see :func:`wait_for_port`)."""
    path = os.fspath(path)
    _wait_until(lambda: os.path.exists(path) and _can_connect(socket.AF_UNIX, path), path, timeout, proc)


def http_get(
    url: str, headers: Mapping[str, str] | None = None, *, method: str = "GET", timeout: float = 30.0
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """Send one HTTP request (redirects are not followed) and return ``(status, headers, body)``.

    The path and query are sent exactly as written in *url* (no re-encoding), so a
    bare ``?`` is kept.  *headers* of the answer is an ``http.client.HTTPMessage``:
    case-insensitive ``headers["content-type"]``, ``headers.get(name)``,
    ``headers.get_all(name)``.
    """
    match = re.fullmatch(r"http://([^/?#]+)(.*)", url, flags=re.DOTALL)
    if match is None:
        raise ValueError(f"not an http:// URL: {url!r}")
    netloc, target = match.groups()
    conn = http.client.HTTPConnection(netloc, timeout=timeout)
    try:
        conn.request(method, target or "/", headers=dict(headers or {}))
        resp = conn.getresponse()
        return resp.status, resp.msg, resp.read()
    finally:
        conn.close()


def render_template(text: str, values: Mapping[str, object]) -> str:
    """Replace each ``@NAME@`` in *text* by ``str(values[NAME])``; every placeholder must be given."""
    rendered = text
    for name, value in values.items():
        rendered = rendered.replace(f"@{name}@", str(value))
    left = sorted(set(re.findall(r"@[A-Z][A-Z0-9_]*@", rendered)))
    if left:
        raise KeyError(f"template placeholders without a value: {', '.join(left)}")
    return rendered


def iipy_command() -> list[str]:
    """The command that starts iipy: the ``iipsrv.fcgi`` console script of this Python, or ``-m iipy``."""
    script = Path(sys.executable).parent / "iipsrv.fcgi"
    if os.access(script, os.X_OK):
        return [str(script)]
    if (REPO_ROOT / "iipy" / "__main__.py").exists() or importlib.util.find_spec("iipy.__main__") is not None:
        return [sys.executable, "-m", "iipy"]
    missing(f"iipy is not installed ({script} missing and no iipy/__main__.py)")


def server_env(defaults: Mapping[str, object], overrides: Mapping[str, object | None]) -> dict[str, str]:
    """os.environ without inherited server variables, plus *defaults*, plus *overrides*.

    An override of None removes the variable.
    """
    env = {k: v for k, v in os.environ.items() if k not in SERVER_ENV_NAMES and not k.startswith("IIPY_")}
    for name, value in {**defaults, **overrides}.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = str(value)
    return env


def _live_group_members(pgid: int) -> list[int]:
    """PIDs of processes (zombies excluded) in process group *pgid*."""
    try:
        entries = os.listdir("/proc")
    except OSError:  # no procfs: ask the kernel whether the group still exists
        try:
            os.killpg(pgid, 0)
        except OSError:
            return []
        return [pgid]
    members = []
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        state, _ppid, pgrp = stat[stat.rindex(")") + 2 :].split()[:3]
        if int(pgrp) == pgid and state not in {"Z", "X"}:
            members.append(int(name))
    return members


def _kill_group(pgid: int) -> None:
    """SIGKILL every process of group *pgid* (a group this module created) and wait for them."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return
    try:
        _wait_until(lambda: not _live_group_members(pgid), "killed processes to exit", 2.0, None)
    except TimeoutError:
        pass


def _tail(path: Path | None, nbytes: int = 4000) -> str:
    """The last *nbytes* of a text file, or '' if it does not exist."""
    if path is None or not path.exists():
        return ""
    data = path.read_bytes()[-nbytes:]
    return data.decode("utf-8", "replace")


# --------------------------------------------------------------------------- process handles


@dataclass
class ServerProcess:
    """A started server (iipy, iipsrv or nginx) and where it writes.

    ``bind`` is the listening address as given on a command line (``127.0.0.1:PORT``
    or a Unix socket path); ``address`` is the same as a Python socket address
    (``(host, port)`` or path); ``fcgi_pass`` the nginx form (``127.0.0.1:PORT`` or
    ``unix:PATH``).  ``logfile`` is the server's LOGFILE (nginx: error.log) and
    ``output`` its captured stdout and stderr.
    """

    name: str
    proc: subprocess.Popen
    bind: str
    logfile: Path | None
    output: Path
    workdir: Path
    env: dict[str, str] = field(repr=False, default_factory=dict)
    allow_traceback: bool = False
    stopped: bool = False

    @property
    def is_unix(self) -> bool:
        """True if the server listens on a Unix socket."""
        return _is_unix_bind(self.bind)

    @property
    def address(self) -> tuple[str, int] | str:
        """``(host, port)`` for TCP, the socket path for a Unix socket."""
        if self.is_unix:
            return self.bind
        host, port = self.bind.rsplit(":", 1)
        return (HOST if host in {"", "*", "0.0.0.0"} else host), int(port)

    @property
    def port(self) -> int | None:
        """The TCP port, or None for a Unix socket."""
        return None if self.is_unix else int(self.bind.rsplit(":", 1)[1])

    @property
    def fcgi_pass(self) -> str:
        """The address in nginx ``fastcgi_pass``/``server`` syntax."""
        if self.is_unix:
            return f"unix:{self.bind}"
        host, port = self.address
        return f"{host}:{port}"

    def log_text(self) -> str:
        """The whole log file ('' if the server has not written one)."""
        if self.logfile is None or not self.logfile.exists():
            return ""
        return self.logfile.read_text("utf-8", "replace")

    def output_text(self) -> str:
        """Everything the process wrote to stdout and stderr so far."""
        return self.output.read_text("utf-8", "replace") if self.output.exists() else ""

    def stop(self, timeout: float = STOP_TIMEOUT) -> list[str]:
        """Stop the process (idempotent) and return the problems found, if any.

        SIGTERM first; SIGKILL to the whole process group after *timeout* seconds;
        processes of the group still alive 2 s after the leader exited are killed.
        """
        if self.stopped:
            return []
        self.stopped = True
        problems = []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                problems.append(f"{self.name} did not exit within {timeout:g} s of SIGTERM and was killed")
                _kill_group(self.proc.pid)
                self.proc.wait()
        try:
            _wait_until(lambda: not _live_group_members(self.proc.pid), "process group exit", 2.0, None)
        except TimeoutError:
            left = _live_group_members(self.proc.pid)
            problems.append(f"{self.name}: processes {left} outlived the main process and were killed")
            _kill_group(self.proc.pid)
        if not self.allow_traceback:
            for path in (self.logfile, self.output):
                if path is not None and path.exists() and b"Traceback" in path.read_bytes():
                    problems.append(f"{self.name}: 'Traceback' in {path}:\n{_tail(path)}")
        return problems


class NginxURL(str):
    """The base URL of a running nginx (``http://127.0.0.1:PORT``), with its details.

    Attributes: ``server`` (the :class:`ServerProcess`), ``port``, ``prefix`` (the
    directory with logs and temporary files), ``conf`` (the rendered configuration),
    ``error_log``, ``access_log``, ``static_dir`` and ``iip`` (the URL of the
    FastCGI endpoint, ``url + IIP_PATH``).
    """

    server: ServerProcess
    port: int
    prefix: Path
    conf: Path
    static_dir: Path

    def __new__(cls, port: int, server: ServerProcess, prefix: Path, conf: Path, static_dir: Path) -> "NginxURL":
        url = super().__new__(cls, f"http://{HOST}:{port}")
        url.port, url.server, url.prefix, url.conf, url.static_dir = port, server, prefix, conf, static_dir
        return url

    @property
    def error_log(self) -> Path:
        """nginx's error log (FastCGI stderr output also lands here)."""
        return self.prefix / "error.log"

    @property
    def access_log(self) -> Path:
        """nginx's access log (format ``iipy`` of conf/nginx.conf.in)."""
        return self.prefix / "access.log"

    @property
    def iip(self) -> str:
        """The URL of the IIP endpoint, without a query."""
        return self + IIP_PATH


def _is_unix_bind(bind: str) -> bool:
    """True if *bind* names a Unix socket rather than HOST:PORT (iipsrv's rule, simplified)."""
    return not re.search(r":\d+$", bind)


class Launcher:
    """Starts processes for one fixture and stops all of them at teardown."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory, kind: str) -> None:
        self.tmp_path_factory = tmp_path_factory
        self.kind = kind
        self.started: list[ServerProcess] = []

    def workdir(self) -> Path:
        """A fresh directory for one process's logs and files."""
        return self.tmp_path_factory.mktemp(self.kind)

    def start(
        self,
        cmd: list[str],
        env: Mapping[str, str],
        bind: str,
        workdir: Path,
        logfile: Path | None,
    ) -> ServerProcess:
        """Start *cmd* in its own process group and wait until *bind* accepts connections."""
        output = workdir / "output.log"
        with open(output, "ab") as out:
            proc = subprocess.Popen(
                cmd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=workdir,
                start_new_session=True,
            )
        handle = ServerProcess(self.kind, proc, bind, logfile, output, workdir, env=dict(env))
        self.started.append(handle)
        try:
            if handle.is_unix:
                wait_for_unix(bind, proc=proc)
            else:
                host, port = handle.address
                wait_for_port(host, port, proc=proc)
        except (TimeoutError, ProcessExited) as exc:
            handle.stop()
            pytest.fail(
                f"{self.kind} did not start ({exc}): {' '.join(cmd)}\n"
                f"--- output ---\n{_tail(output)}\n--- log ---\n{_tail(logfile)}",
                pytrace=False,
            )
        return handle

    def close(self) -> None:
        """Stop every process in reverse start order; fail the test on any problem."""
        problems = []
        for handle in reversed(self.started):
            problems.extend(handle.stop())
        if problems:
            pytest.fail("\n\n".join(problems), pytrace=False)


def _iipy_env(cmd: list[str], workdir: Path, prefix: str, overrides: Mapping[str, object | None]) -> dict[str, str]:
    """The environment of an iipy process writing its log and cache below *workdir*."""
    (workdir / "cache").mkdir(exist_ok=True)
    defaults: dict[str, object] = {
        "FILESYSTEM_PREFIX": prefix,
        "LOGFILE": workdir / "iipy.log",
        "VERBOSITY": 2,
        "IIPY_WORKERS": 2,
        "IIPY_CACHE_DIR": workdir / "cache",
        "MEMCACHED_SERVERS": "",  # tests that want memcached start their own
    }
    if cmd[1:2] == ["-m"]:  # running from the source tree: make sure it is importable
        defaults["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    return server_env(defaults, overrides)


def _logfile_of(env: Mapping[str, str], workdir: Path) -> Path | None:
    """The LOGFILE of *env* as a path (relative to the process's working directory), if any."""
    value = env.get("LOGFILE")
    return None if not value else workdir / value  # an absolute value replaces workdir


def _tcp_bind(bind: str | None) -> str:
    """*bind* itself, or ``127.0.0.1:<free port>``."""
    return bind if bind is not None else f"{HOST}:{free_port()}"


# --------------------------------------------------------------------------- helpers as fixtures
#
# Test modules may take the helpers as fixtures or import them from this module by its
# package name (``from tests.e2e.conftest import http_get``); never ``from conftest
# import``, which picks whichever conftest.py was loaded last.


@pytest.fixture(name="free_port", scope="session")
def _free_port_fixture() -> Callable[..., int]:
    """The :func:`free_port` helper: ``free_port() -> int``."""
    return free_port


@pytest.fixture(name="wait_for_port", scope="session")
def _wait_for_port_fixture() -> Callable[..., None]:
    """The :func:`wait_for_port` helper: ``wait_for_port(host, port, timeout=20.0, proc=None)``."""
    return wait_for_port


@pytest.fixture(name="wait_for_unix", scope="session")
def _wait_for_unix_fixture() -> Callable[..., None]:
    """The :func:`wait_for_unix` helper: ``wait_for_unix(path, timeout=20.0, proc=None)``."""
    return wait_for_unix


@pytest.fixture(name="http_get", scope="session")
def _http_get_fixture() -> Callable[..., tuple[int, http.client.HTTPMessage, bytes]]:
    """The :func:`http_get` helper: ``http_get(url, headers=None) -> (status, headers, body)``."""
    return http_get


# --------------------------------------------------------------------------- example data


class ExampleData(dict):
    """``{name: Path}`` of the example FITS files, plus ``dir`` and ``prefix`` (dir + '/')."""

    dir: Path
    prefix: str


def _load_make_examples() -> ModuleType:
    """Import examples/make_examples.py (not a package) by path."""
    spec = importlib.util.spec_from_file_location("make_examples", MAKE_EXAMPLES)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def make_examples() -> ModuleType:
    """The ``examples/make_examples.py`` module (``make_all``, ``make_sky``, ...)."""
    return _load_make_examples()


@pytest.fixture(scope="session")
def example_data(tmp_path_factory: pytest.TempPathFactory, make_examples: ModuleType) -> ExampleData:
    """The example images (sky, cube, int16) written once per session by ``make_all``.

    Keys are the file stems (``example_data["sky"]`` is ``.../sky.fits``); the FIF
    argument of a file is its name (``path.name``) under ``example_data.prefix``.
    """
    outdir = tmp_path_factory.mktemp("examples")
    data = ExampleData(make_examples.make_all(outdir))
    data.dir = outdir
    data.prefix = f"{outdir}/"
    return data


@pytest.fixture(scope="session")
def example_prefix(example_data: ExampleData) -> str:
    """The example data directory with a trailing '/', as FILESYSTEM_PREFIX."""
    return example_data.prefix


@pytest.fixture
def unix_socket_path() -> Iterator[Callable[[str], str]]:
    """Factory ``make(name="iipy.sock") -> path`` of a Unix socket in a short directory.

    Unix socket paths are limited to 107 bytes, which pytest's tmp_path can exceed,
    so the directory is created directly under the system temporary directory and
    removed at teardown.
    """
    root = Path(tempfile.mkdtemp(prefix="iipy-e2e-"))
    root.chmod(0o755)  # other users (e.g. nginx workers) may need to reach the socket

    def make(name: str = "iipy.sock") -> str:
        return str(root / name)

    yield make
    shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- factories


@pytest.fixture
def iipy_server(
    tmp_path_factory: pytest.TempPathFactory, example_prefix: str
) -> Iterator[Callable[..., ServerProcess]]:
    """Factory ``start(*, bind=None, args=(), **env) -> ServerProcess`` for iipy in standalone mode.

    Runs ``iipsrv.fcgi --bind BIND [*args]`` (BIND defaults to 127.0.0.1 and a free
    port; a path means a Unix socket) and waits until it accepts connections.
    Environment: os.environ (minus inherited server variables), FILESYSTEM_PREFIX =
    example data, LOGFILE = <workdir>/iipy.log, VERBOSITY=2, IIPY_WORKERS=2,
    IIPY_CACHE_DIR = <workdir>/cache, then *env* (None removes a variable).
    """
    launcher = Launcher(tmp_path_factory, "iipy")

    def start(*, bind: str | None = None, args: tuple[str, ...] | list[str] = (), **env: object) -> ServerProcess:
        cmd = iipy_command()
        workdir = launcher.workdir()
        full_env = _iipy_env(cmd, workdir, example_prefix, env)
        bind = _tcp_bind(bind)
        return launcher.start([*cmd, "--bind", bind, *args], full_env, bind, workdir, _logfile_of(full_env, workdir))

    yield start
    launcher.close()


@pytest.fixture
def spawn_fcgi(tmp_path_factory: pytest.TempPathFactory, example_prefix: str) -> Iterator[Callable[..., ServerProcess]]:
    """Factory ``start(*, socket_path=None, **env) -> ServerProcess``: iipy under spawn-fcgi.

    ``spawn-fcgi -n -a 127.0.0.1 -p PORT -- iipsrv.fcgi`` (or ``-s SOCKET``): spawn-fcgi
    binds the socket, puts it on fd 0 and replaces itself with iipy, so the handle's
    process is iipy.  Environment as for :func:`iipy_server`.
    """
    launcher = Launcher(tmp_path_factory, "spawn-fcgi")

    def start(*, socket_path: str | None = None, **env: object) -> ServerProcess:
        binary = require_executable(SPAWN_FCGI_BIN, "spawn-fcgi")
        cmd = iipy_command()
        workdir = launcher.workdir()
        full_env = _iipy_env(cmd, workdir, example_prefix, env)
        if socket_path is not None:
            bind, where = socket_path, ["-s", socket_path]
        else:
            bind = _tcp_bind(None)
            where = ["-a", HOST, "-p", bind.rsplit(":", 1)[1]]
        cmd = [binary, "-n", *where, "--", *cmd]
        return launcher.start(cmd, full_env, bind, workdir, _logfile_of(full_env, workdir))

    yield start
    launcher.close()


@pytest.fixture
def iipsrv_ref(tmp_path_factory: pytest.TempPathFactory, example_prefix: str) -> Iterator[Callable[..., ServerProcess]]:
    """Factory ``start(*, bind=None, **env) -> ServerProcess`` for the reference iipsrv 1.1.

    ``/usr/lib/iipimage-server/iipsrv.fcgi --bind BIND`` with FILESYSTEM_PREFIX =
    example data (override it: iipsrv reads TIFF, not FITS), LOGFILE =
    <workdir>/iipsrv.log, VERBOSITY=2 and MEMCACHED_SERVERS=127.0.0.1:1 (a closed
    port: nothing is cached), then *env*.
    """
    launcher = Launcher(tmp_path_factory, "iipsrv")

    def start(*, bind: str | None = None, **env: object) -> ServerProcess:
        binary = require_executable(IIPSRV_REF_BIN, "iipimage-server")
        workdir = launcher.workdir()
        defaults = {
            "FILESYSTEM_PREFIX": example_prefix,
            "LOGFILE": workdir / "iipsrv.log",
            "VERBOSITY": 2,
            "MEMCACHED_SERVERS": f"{HOST}:1",
        }
        full_env = server_env(defaults, env)
        bind = _tcp_bind(bind)
        return launcher.start([binary, "--bind", bind], full_env, bind, workdir, _logfile_of(full_env, workdir))

    yield start
    launcher.close()


def _fcgi_pass_of(target: object) -> str:
    """nginx ``server`` syntax for a ServerProcess, ``(host, port)``, a path or a ready string."""
    if isinstance(target, ServerProcess):
        return target.fcgi_pass
    if isinstance(target, tuple):
        return f"{target[0]}:{target[1]}"
    if isinstance(target, Path):
        return f"unix:{target}"
    return str(target)


@pytest.fixture
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., NginxURL]]:
    """Factory ``start(fcgi_pass, *, keepalive=True, static_dir=None) -> NginxURL``.

    Renders ``conf/nginx.conf.in`` (``@FCGI_PASS@`` from *fcgi_pass*: a
    ServerProcess, ``"HOST:PORT"``, ``"unix:PATH"``, a ``(host, port)`` tuple or a
    socket Path; ``@KEEPALIVE@`` on/off; ``@STATIC@`` = *static_dir* or an empty
    ``<prefix>/html``), runs ``nginx -c CONF -p PREFIX`` in the foreground and
    returns its base URL once it accepts connections.  As root, ``-g 'user root;'``
    is added so the worker can read pytest's private temporary directories.
    """
    launcher = Launcher(tmp_path_factory, "nginx")

    def start(
        fcgi_pass: object, *, keepalive: bool | str = True, static_dir: str | os.PathLike[str] | None = None
    ) -> NginxURL:
        binary = require_executable(NGINX_BIN, "nginx-light")
        prefix = launcher.workdir()
        static = Path(static_dir) if static_dir is not None else prefix / "html"
        static.mkdir(parents=True, exist_ok=True)
        port = free_port()
        keep = keepalive if isinstance(keepalive, str) else ("on" if keepalive else "off")
        if keep not in {"on", "off"}:
            raise ValueError(f"keepalive must be a bool, 'on' or 'off', not {keepalive!r}")
        conf = prefix / "nginx.conf"
        conf.write_text(
            render_template(
                NGINX_TEMPLATE.read_text(),
                {
                    "PORT": port,
                    "FCGI_PASS": _fcgi_pass_of(fcgi_pass),
                    "KEEPALIVE": keep,
                    "PREFIX": prefix,
                    "STATIC": static,
                },
            )
        )
        cmd = [binary, "-c", str(conf), "-p", f"{prefix}/"]
        if os.geteuid() == 0:
            cmd += ["-g", "user root;"]
        server = launcher.start(cmd, dict(os.environ), f"{HOST}:{port}", prefix, prefix / "error.log")
        return NginxURL(port, server, prefix, conf, static)

    yield start
    launcher.close()


@pytest.fixture
def memcached(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., ServerProcess]]:
    """Factory ``start(*, memory_mb=16) -> ServerProcess``: a private memcached.

    Listens on 127.0.0.1 and a free TCP port (UDP off); use
    ``MEMCACHED_SERVERS=handle.fcgi_pass`` to point a server at it.  Stopping it
    in the middle of a test (``handle.stop()``) simulates a memcached outage.
    """
    launcher = Launcher(tmp_path_factory, "memcached")

    def start(*, memory_mb: int = 16) -> ServerProcess:
        binary = require_executable(MEMCACHED_BIN, "memcached")
        bind = _tcp_bind(None)
        cmd = [binary, "-l", HOST, "-p", bind.rsplit(":", 1)[1], "-U", "0", "-m", str(memory_mb)]
        if os.geteuid() == 0:
            cmd += ["-u", "root"]  # memcached refuses to run as root otherwise
        return launcher.start(cmd, dict(os.environ), bind, launcher.workdir(), None)

    yield start
    launcher.close()
