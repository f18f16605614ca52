"""Helpers for the process tests of iipy.server.fcgi: a tiny real server, ports, process trees.

The server is ``python -c SERVER_CODE [--bind ADDRESS ...]``: it calls
``iipy.server.fcgi.listener_from_argv`` and ``iipy.server.fcgi.serve`` exactly as ``python -m iipy``
does, with a trivial handler whose answer depends on QUERY_STRING:

=================  ==========================================================
``pid``            the worker's pid as the body
``sleep=S``        sleeps S seconds first (and touches ``$MARK_DIR/<pid>`` when it
                   starts, so a test knows the request is in progress)
``boom``           raises, to check the generic 500
``big=N``          an N-byte body
``grow=N``         keeps N MB more of anonymous memory for the worker's lifetime
``mark=NAME``      touches ``$MARK_DIR/NAME`` (so a test knows it ran), then as below
anything else      ``FIXED`` + the query string
=================  ==========================================================

``BOOT_FAIL=1`` in the environment makes the handler factory raise; ``LOG_LEVEL``
(default INFO) is the level of the log on standard error.
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
from typing import Callable

import pytest

from iipy.settings import SETTINGS

ROOT = Path(__file__).resolve().parents[2]
_SERVER_VARIABLES = frozenset(s.env for s in SETTINGS)

SERVER_CODE = r'''
import logging, os, sys, time
logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), stream=sys.stderr,
                    format="%(process)d %(levelname)s %(name)s: %(message)s")
from iipy.server import fcgi
from iipy.settings import Settings

def factory():
    if os.environ.get("BOOT_FAIL"):
        raise RuntimeError("handler factory failed")
    mark_dir = os.environ.get("MARK_DIR")
    kept = []

    def handler(params):
        qs = params.get("QUERY_STRING", "")
        if qs == "boom":
            raise RuntimeError("handler failed")
        if qs == "pid":
            body = str(os.getpid()).encode()
        elif qs.startswith("sleep="):
            if mark_dir:
                open(os.path.join(mark_dir, str(os.getpid())), "w").close()
            time.sleep(float(qs[6:]))
            body = b"slept " + qs[6:].encode()
        elif qs.startswith("big="):
            body = bytes(i % 251 for i in range(int(qs[4:])))
        elif qs.startswith("grow="):
            kept.append(b"\x01" * (int(qs[5:]) << 20))
            body = b"grew " + qs[5:].encode()
        else:
            if qs.startswith("mark=") and mark_dir:
                open(os.path.join(mark_dir, qs[5:]), "w").close()
            body = b"FIXED " + qs.encode("utf-8", "surrogateescape")
        return (b"Server: test\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n"
                % len(body)) + body
    return handler

settings = Settings.from_environ()
sock, description = fcgi.listener_from_argv(sys.argv, settings)
logging.getLogger("server").info("%s", description)
fcgi.serve(factory, settings, sock)
'''


def expected_output(query: str) -> bytes:
    """The exact CGI bytes the test handler returns for a plain query."""
    body = b"FIXED " + query.encode("utf-8", "surrogateescape")
    head = b"Server: test\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(body)
    return head + body


def require_binary(name: str) -> str:
    """The path of ``name``; under CI=true a missing binary fails the test, else skips it."""
    path = shutil.which(name) or next(
        (p for p in ("/usr/sbin/" + name, "/usr/bin/" + name) if os.access(p, os.X_OK)), None)
    if path is None:
        message = "%s is not installed" % name
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI=true: e2e binaries are required)")
        pytest.skip(message)
    return path


def short_tmpdir() -> str:
    """A directory short enough for unix socket paths (108 bytes at most); remove it after."""
    return tempfile.mkdtemp(prefix="iipy-", dir="/tmp")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(**extra: str) -> dict[str, str]:
    """The test's environment without any inherited server setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in _SERVER_VARIABLES}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("IIPY_WORKERS", "2")
    env.setdefault("IIPY_TIMEOUT", "10")
    env.update(extra)
    return env


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, what: str = "",
               proc: subprocess.Popen | None = None) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail("server exited (%s) while waiting for %s" % (proc.returncode, what))
        time.sleep(0.02)
    pytest.fail("timed out waiting for %s" % what)


def can_connect(address: tuple[str, int] | str) -> bool:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        try:
            s.connect(address)
        except OSError:
            return False
    return True


def child_pids(pid: int) -> set[int]:
    """Live (non-zombie) children of ``pid``, read from /proc."""
    out = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, ppid = fields[0], int(fields[1])
        if ppid == pid and state != "Z":
            out.add(int(entry))
    return out


class Server:
    """A running test server process; ``stop()`` kills it and its workers."""

    def __init__(self, args: list[str], env: dict[str, str], stdin: int | None = None,
                 log_path: Path | None = None, command: list[str] | None = None) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb") if log_path else subprocess.DEVNULL
        cmd = command if command is not None else [sys.executable, "-c", SERVER_CODE]
        self.proc = subprocess.Popen(cmd + args, env=env, stdin=stdin,
                                     stdout=subprocess.DEVNULL, stderr=self._log,
                                     cwd=str(ROOT), start_new_session=True)
        self.pid = self.proc.pid

    def workers(self) -> set[int]:
        return child_pids(self.pid)

    def wait_workers(self, n: int, timeout: float = 10.0,
                     exclude: set[int] = frozenset()) -> set[int]:  # type: ignore[assignment]
        """Wait until exactly ``n`` workers run, none of them in ``exclude``; return their pids."""
        def check() -> set[int] | None:
            workers = self.workers()
            return workers if len(workers) == n and not workers & exclude else None
        return wait_until(check, timeout, "%d workers" % n, self.proc)  # type: ignore[return-value]

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def log(self) -> str:
        if self.log_path and self.log_path.exists():
            return self.log_path.read_text(errors="replace")
        return ""

    def stop(self) -> None:
        """Kill the whole process group (master, workers), whatever state it is in."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        else:
            try:
                os.killpg(self.pid, signal.SIGKILL)  # orphaned workers, if any
            except ProcessLookupError:
                pass
        if self._log is not subprocess.DEVNULL:
            self._log.close()
