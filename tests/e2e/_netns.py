"""Network namespaces as hosts on one private network, for the fleet test.

:class:`Network` creates a "switch" namespace holding a bridge, and one namespace per
host, linked to the bridge by a veth pair; each host gets one private address on the
bridge's subnet and a loopback.  Nothing is created in, or changed about, the test
machine's own network namespace: the root namespace never sees an address, a link or
a route of ours.  Processes run in a host with ``ip netns exec``; the test process
reaches the hosts from threads that entered a namespace (:meth:`Network.executor`).

:meth:`Network.close` kills every process still running in the namespaces, deletes
them (which deletes their links) and checks that they are gone; namespaces left by an
earlier run that was killed (their owner pid is dead) are removed on creation.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Mapping, Sequence

IP_BIN = "/usr/sbin/ip"
NETNS_DIR = "/run/netns"
PREFIX = "iipyfleet-"
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be created here (no privilege, no ``ip``, no kernel support)."""


def ip(*args: str, check: bool = True) -> str:
    """Run ``ip ARGS`` and return its output; CalledProcessError (with stderr) on failure."""
    done = subprocess.run([IP_BIN, *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, [IP_BIN, *args], done.stdout,
                                            done.stderr)
    return done.stdout


def enter(namespace: str) -> None:
    """Move the calling thread into ``namespace`` (its sockets are created there)."""
    fd = os.open(os.path.join(NETNS_DIR, namespace), os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, "setns(%s): %s" % (namespace, os.strerror(err)))
    finally:
        os.close(fd)


def _owner_alive(name: str) -> bool:
    match = re.match(re.escape(PREFIX) + r"(\d+)-", name)
    if match is None:
        return True
    try:
        os.kill(int(match.group(1)), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _namespaces() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def _destroy(namespace: str) -> None:
    """Kill what runs in ``namespace``, then delete it (and so its links)."""
    for _ in range(50):
        pids = [int(p) for p in ip("netns", "pids", namespace, check=False).split()]
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    ip("netns", "del", namespace, check=False)


class Network:
    """A private IPv4 network of namespaces ("hosts") around one bridge."""

    def __init__(self, subnet: str = "10.77.14", bridge: str = "br0") -> None:
        self.subnet = subnet
        self.tag = "%s%d-" % (PREFIX, os.getpid())
        self.hosts: dict[str, str] = {}  # host name -> address
        self.namespaces: list[str] = []
        self._executors: list[ThreadPoolExecutor] = []
        for stale in _namespaces():
            if stale.startswith(PREFIX) and not _owner_alive(stale):
                _destroy(stale)
        self.switch = self._add_namespace("switch")
        try:
            ip("-n", self.switch, "link", "add", bridge, "type", "bridge")
            ip("-n", self.switch, "link", "set", bridge, "up")
        except (subprocess.CalledProcessError, OSError) as exc:
            self.close()
            raise NetnsUnavailable(_describe(exc)) from None
        self.bridge = bridge

    def _add_namespace(self, name: str) -> str:
        namespace = self.tag + name
        try:
            ip("netns", "add", namespace)
        except (subprocess.CalledProcessError, OSError) as exc:
            raise NetnsUnavailable(_describe(exc)) from None
        self.namespaces.append(namespace)
        ip("-n", namespace, "link", "set", "lo", "up")
        return namespace

    def namespace(self, host: str) -> str:
        return self.tag + host

    def add_host(self, host: str, octet: int) -> str:
        """A host namespace with ``eth0`` at ``<subnet>.<octet>/24`` on the bridge; its address."""
        namespace = self._add_namespace(host)
        port = "v-" + host
        address = "%s.%d" % (self.subnet, octet)
        ip("-n", namespace, "link", "add", "eth0", "type", "veth", "peer", "name", port,
           "netns", self.switch)
        ip("-n", self.switch, "link", "set", port, "master", self.bridge)
        ip("-n", self.switch, "link", "set", port, "up")
        ip("-n", namespace, "addr", "add", address + "/24", "dev", "eth0")
        ip("-n", namespace, "link", "set", "eth0", "up")
        self.hosts[host] = address
        return address

    def popen(self, host: str, cmd: Sequence[str], env: Mapping[str, str], cwd: str,
              output: str) -> subprocess.Popen:
        """Start ``cmd`` in ``host`` (its own session and process group), output to a file."""
        with open(output, "ab") as out:
            return subprocess.Popen([IP_BIN, "netns", "exec", self.namespace(host), *cmd],
                                    env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)

    def executor(self, host: str, workers: int = 1) -> ThreadPoolExecutor:
        """Threads living in ``host``'s namespace (shut down by :meth:`close`)."""
        pool = ThreadPoolExecutor(max_workers=workers, initializer=enter,
                                  initargs=(self.namespace(host),),
                                  thread_name_prefix="netns-" + host)
        self._executors.append(pool)
        return pool

    def check_enter(self) -> str:
        """'' if a thread can enter the switch namespace, else why not."""
        problem: list[str] = []

        def attempt() -> None:
            try:
                enter(self.switch)
            except OSError as exc:
                problem.append(str(exc))

        thread = threading.Thread(target=attempt)
        thread.start()
        thread.join()
        return problem[0] if problem else ""

    def pids(self) -> dict[str, list[int]]:
        """Processes running in each namespace."""
        return {ns: [int(p) for p in ip("netns", "pids", ns, check=False).split()]
                for ns in self.namespaces}

    def close(self) -> list[str]:
        """Kill every process left in the namespaces and delete them; the problems found."""
        for pool in self._executors:
            pool.shutdown(wait=True, cancel_futures=True)
        self._executors.clear()
        for namespace in reversed(self.namespaces):
            _destroy(namespace)
        left = [ns for ns in _namespaces() if ns.startswith(self.tag)]
        self.namespaces.clear()
        return ["namespaces not deleted: %s" % ", ".join(left)] if left else []


def _describe(exc: BaseException) -> str:
    if isinstance(exc, subprocess.CalledProcessError):
        return "`%s` failed: %s" % (" ".join(exc.cmd), (exc.stderr or "").strip())
    return str(exc)
