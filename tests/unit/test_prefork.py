"""iipy.server.prefork.Supervisor with dummy jobs that idle, crash, hang or count requests.

Each test forks a master process running the supervisor (so its signal handlers
and children never touch the pytest process), lets the workers append events to a
file, and signals the master like an operator would.  Everything started is killed
at the end of the test, whatever happened.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import time
import traceback
from pathlib import Path
from typing import Callable

import pytest

from iipy.server.prefork import WORKER_BOOT_ERROR, Supervisor, WorkerContext, anonymous_rss
from iipy.settings import Settings


def _settings(workers=2, timeout=5.0, max_requests=0, max_rss_mb=0) -> Settings:
    """Real settings; a timeout below IIPY_TIMEOUT's 1 s floor is set directly, to keep
    the hang tests short."""
    settings = Settings.from_environ({
        "IIPY_WORKERS": str(workers),
        "IIPY_TIMEOUT": str(timeout),
        "IIPY_MAX_REQUESTS": str(max_requests),
        "IIPY_MAX_RSS_MB": str(max_rss_mb),
    })
    return settings.replace(timeout=timeout)


class QuickSupervisor(Supervisor):
    kill_grace = 0.3


class Master:
    """A forked master process and the events its workers wrote."""

    def __init__(self, tmp_path: Path, job: Callable, settings: Settings,
                 reopen_logs: Callable[[], None] | None = None) -> None:
        self.events_path = tmp_path / "events"
        self.log_path = tmp_path / "master.log"
        self.status: int | None = None
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        self.pid = os.fork()
        if self.pid == 0:  # the master
            status = 99
            try:
                root = logging.getLogger()
                root.handlers[:] = [logging.FileHandler(self.log_path)]
                root.handlers[0].setFormatter(
                    logging.Formatter("%(process)d %(levelname)s %(message)s"))
                root.setLevel(logging.DEBUG)
                status = QuickSupervisor(job, settings, reopen_logs).run(listener)
            except BaseException:
                with open(self.log_path, "a") as f:
                    f.write(traceback.format_exc())
            finally:
                os._exit(status)
        listener.close()

    # -- observing ------------------------------------------------------------------
    def events(self) -> list[tuple[str, int, str]]:
        """(event, worker pid, detail) tuples in the order they were written."""
        if not self.events_path.exists():
            return []
        out = []
        for line in self.events_path.read_text().splitlines():
            event, pid, detail = (line.split(" ", 2) + [""])[:3]
            out.append((event, int(pid), detail))
        return out

    def pids(self, event: str = "start") -> list[int]:
        return [pid for ev, pid, _ in self.events() if ev == event]

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def wait_until(self, predicate: Callable[[], object], timeout: float = 5.0,
                   what: str = "") -> float:
        """Poll ``predicate``; return the seconds it took, fail with the master log on timeout."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if predicate():
                return time.monotonic() - start
            self.poll()
            time.sleep(0.02)
        pytest.fail("timed out waiting for %s\nevents: %s\nlog:\n%s"
                    % (what, self.events(), self.log()))

    def poll(self) -> int | None:
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
        return self.status

    def wait_exit(self, timeout: float = 5.0) -> tuple[int, float]:
        """(exit status, seconds waited)."""
        took = self.wait_until(lambda: self.poll() is not None, timeout, "the master to exit")
        assert self.status is not None
        return self.status, took

    def send(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def kill_everything(self) -> None:
        for pid in [self.pid] + self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.status is None:
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass


@pytest.fixture
def start(tmp_path):
    masters: list[Master] = []

    def starter(job_factory: Callable[[Path], Callable], reopen: bool = False,
                **settings) -> Master:
        events = tmp_path / "events"
        reopen_logs = (lambda: _record(events, "reopen")) if reopen else None
        master = Master(tmp_path, job_factory(events), _settings(**settings), reopen_logs)
        masters.append(master)
        return master

    yield starter
    for master in masters:
        master.kill_everything()


def gone(pid: int) -> bool:
    """Exited and reaped: a zombie would still have a /proc entry."""
    return not os.path.exists("/proc/%d" % pid)


def _record(events: Path, event: str, detail: str = "") -> None:
    fd = os.open(events, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, ("%s %d %s\n" % (event, os.getpid(), detail)).encode())
    finally:
        os.close(fd)


def _first(marker: Path) -> bool:
    """True in exactly one worker: the first to create ``marker``."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


# ---- dummy jobs (factories taking the events file) ----------------------------------------


def idle_job(events: Path):
    def job(sock: socket.socket, ctx: WorkerContext) -> None:
        _record(events, "start", str(ctx.max_requests))
        ctx.ready()
        while ctx.alive:
            ctx.wait([sock])
        _record(events, "stop")
    return job


def crash_once_job(events: Path):
    def job(sock, ctx):
        _record(events, "start")
        ctx.ready()
        if _first(events.with_name("crashed")):
            raise RuntimeError("dummy crash")
        while ctx.alive:
            ctx.wait([])
    return job


def boot_failure_job(events: Path):
    def job(sock, ctx):
        _record(events, "start")
        raise ImportError("dummy boot failure")
    return job


def hang_once_job(events: Path, block_abort: bool = False):
    def job(sock, ctx):
        _record(events, "start")
        ctx.ready()
        if _first(events.with_name("hung")):
            if block_abort:
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGABRT})
            _record(events, "hang")
            time.sleep(60)
        while ctx.alive:
            ctx.wait([])
    return job


def counting_job(events: Path):
    def job(sock, ctx):
        _record(events, "start", str(ctx.max_requests))
        ctx.ready()
        while ctx.alive:
            ctx.notify()
            _record(events, "request")
            ctx.request_done()
            ctx.wait([], timeout=0.02)
        _record(events, "stop", str(ctx.requests))
    return job


def growing_job(events: Path):
    """Every "request" keeps 8 MB more of anonymous memory."""
    def job(sock, ctx):
        _record(events, "start")
        ctx.ready()
        kept = []
        while ctx.alive:
            ctx.notify()
            kept.append(b"\x01" * (8 << 20))
            _record(events, "request", str(anonymous_rss()))
            ctx.request_done()
            ctx.wait([], timeout=0.02)
        _record(events, "stop", str(ctx.requests))
    return job


def busy_job(events: Path):
    """Every worker is on a 0.4 s "request" as soon as it starts."""
    def job(sock, ctx):
        _record(events, "start")
        ctx.ready()
        ctx.notify()
        _record(events, "busy")
        time.sleep(0.4)  # a signal handler that returns does not cut the sleep short
        _record(events, "done")
        ctx.request_done()
        while ctx.alive:
            ctx.wait([])
        _record(events, "stop")
    return job


# ---- tests ----------------------------------------------------------------------------------


def test_starts_workers_and_stops_within_a_second_on_sigterm(start):
    master = start(idle_job, workers=3)
    master.wait_until(lambda: len(master.pids()) == 3, what="3 workers")
    master.send(signal.SIGTERM)
    status, took = master.wait_exit()
    assert status == 0
    assert took < 1.0
    assert sorted(master.pids("stop")) == sorted(master.pids())
    assert all(gone(pid) for pid in master.pids())


def test_sigint_stops_like_sigterm(start):
    master = start(idle_job, workers=1)
    master.wait_until(lambda: len(master.pids()) == 1, what="a worker")
    master.send(signal.SIGINT)
    assert master.wait_exit()[0] == 0


def test_crashed_worker_is_replaced(start):
    master = start(crash_once_job, workers=1)
    master.wait_until(lambda: len(set(master.pids())) == 2, what="a replacement")
    first = master.pids()[0]
    master.wait_until(lambda: gone(first), what="the crashed worker to be reaped")
    assert master.poll() is None
    assert "crashed" in master.log() and "dummy crash" in master.log()
    master.send(signal.SIGTERM)
    assert master.wait_exit()[0] == 0


def test_killed_worker_is_replaced_and_reaped(start):
    master = start(idle_job, workers=2)
    master.wait_until(lambda: len(master.pids()) == 2, what="2 workers")
    victim = master.pids()[0]
    os.kill(victim, signal.SIGKILL)
    master.wait_until(lambda: len(master.pids()) == 3, what="a replacement")
    master.wait_until(lambda: gone(victim), what="the killed worker to be reaped")
    assert "killed by SIGKILL" in master.log()
    master.send(signal.SIGTERM)
    assert master.wait_exit()[0] == 0


def test_boot_failure_stops_master_without_fork_loop(start):
    master = start(boot_failure_job, workers=2)
    status, _ = master.wait_exit(timeout=5)
    assert status == WORKER_BOOT_ERROR
    time.sleep(0.2)
    assert len(master.pids()) <= 2  # no replacement was forked
    assert "failed to boot" in master.log() and "dummy boot failure" in master.log()
    assert all(gone(pid) for pid in master.pids())


def test_hung_worker_is_aborted_after_timeout_and_replaced(start):
    master = start(hang_once_job, workers=1, timeout=0.5)
    master.wait_until(lambda: master.pids("hang"), what="the hang")
    hung_at = time.monotonic()
    master.wait_until(lambda: len(master.pids()) == 2, timeout=5, what="a replacement")
    assert time.monotonic() - hung_at >= 0.45  # not before the timeout
    log = master.log()
    assert "silent for" in log and "timed out, exiting" in log
    assert "time.sleep(60)" in log  # the worker logged where it was stuck
    master.send(signal.SIGTERM)
    assert master.wait_exit()[0] == 0


def test_hung_worker_ignoring_sigabrt_is_killed(start):
    master = start(lambda events: hang_once_job(events, block_abort=True), workers=1, timeout=0.5)
    master.wait_until(lambda: master.pids("hang"), what="the hang")
    master.wait_until(lambda: len(master.pids()) == 2, timeout=6, what="a replacement")
    assert "ignored SIGABRT: killing it" in master.log()
    assert gone(master.pids()[0])
    master.send(signal.SIGTERM)
    assert master.wait_exit()[0] == 0


def test_max_requests_recycles_workers(start):
    master = start(counting_job, workers=1, max_requests=3)
    master.wait_until(lambda: len(master.pids("stop")) >= 2, what="two recycled workers")
    first, second = master.pids()[:2]
    assert [d for ev, pid, d in master.events() if ev == "stop"][:2] == ["3", "3"]
    assert sum(1 for ev, pid, _ in master.events() if ev == "request" and pid == first) == 3
    assert first != second and master.poll() is None
    assert "worker 1 (pid %d) recycled" % first in master.log()
    assert "exited with status" not in master.log()
    master.send(signal.SIGTERM)
    assert master.wait_exit()[0] == 0


def test_max_requests_jitter_is_at_most_ten_percent(start):
    master = start(idle_job, workers=4, max_requests=100)
    master.wait_until(lambda: len(master.pids()) == 4, what="4 workers")
    limits = [int(d) for ev, _, d in master.events() if ev == "start"]
    assert all(100 <= n <= 110 for n in limits), limits


def test_sigterm_lets_busy_workers_finish(start):
    master = start(busy_job, workers=2)
    master.wait_until(lambda: len(master.pids("busy")) == 2, what="2 busy workers")
    master.send(signal.SIGTERM)
    status, _ = master.wait_exit()
    assert status == 0
    assert sorted(master.pids("done")) == sorted(master.pids())
    assert sorted(master.pids("stop")) == sorted(master.pids())


def test_sighup_replaces_every_worker_gracefully(start):
    master = start(busy_job, workers=2)
    master.wait_until(lambda: len(master.pids("busy")) == 2, what="2 busy workers")
    old = set(master.pids())
    master.send(signal.SIGHUP)
    master.wait_until(lambda: len(master.pids()) == 4, what="2 new workers")
    master.wait_until(lambda: all(gone(pid) for pid in old), what="the old workers to exit")
    assert old <= set(master.pids("done"))  # they finished their "request" first
    assert master.poll() is None
    master.send(signal.SIGTERM)
    assert master.wait_exit()[0] == 0


def test_ttin_ttou_add_and_remove_a_worker(start):
    master = start(idle_job, workers=1)
    master.wait_until(lambda: len(master.pids()) == 1, what="a worker")
    master.send(signal.SIGTTIN)
    master.wait_until(lambda: len(master.pids()) == 2, what="a second worker")
    master.send(signal.SIGTTOU)
    master.wait_until(lambda: len(master.pids("stop")) == 1, what="one worker to retire")
    assert master.pids("stop") == master.pids()[:1]  # the oldest one goes
    master.send(signal.SIGTERM)
    assert master.wait_exit()[0] == 0


def test_max_rss_recycles_a_growing_worker_after_its_request(start):
    limit = (anonymous_rss() >> 20) + 40  # the forked worker starts near the test's size
    master = start(growing_job, workers=1, max_rss_mb=limit)
    master.wait_until(lambda: len(master.pids("stop")) >= 2, what="two recycled workers")
    first = master.pids()[0]
    sizes = [int(d) for ev, pid, d in master.events() if ev == "request" and pid == first]
    # (measured just before the worker's own check: allow 1 MB of difference)
    mb = 1 << 20
    assert sizes[-1] > (limit - 1) * mb and all(s < (limit + 1) * mb for s in sizes[:-1]), \
        (limit, sizes)
    assert len(sizes) >= 3
    stops = [(pid, d) for ev, pid, d in master.events() if ev == "stop"]
    assert stops[0] == (first, str(len(sizes)))  # it finished the request that crossed
    log = master.log()
    assert re.search(r"worker 1 \(pid %d\): resident memory \d+\.\d MB is above the limit "
                     r"of %d MB, recycling" % (first, limit), log), log
    assert "worker 1 (pid %d) recycled" % first in log
    assert "exited with status" not in log and "killed" not in log
    assert master.poll() is None
    master.send(signal.SIGTERM)
    assert master.wait_exit()[0] == 0


def test_sigusr1_reopens_the_logs_in_the_master_and_every_worker(start):
    master = start(idle_job, reopen=True, workers=2)
    master.wait_until(lambda: len(master.pids()) == 2, what="2 workers")
    master.send(signal.SIGUSR1)
    expected = {master.pid, *master.pids()}
    master.wait_until(lambda: set(master.pids("reopen")) == expected, what="3 reopens")
    assert "SIGUSR1 received: log files reopened" in master.log()
    master.send(signal.SIGUSR1)
    master.wait_until(lambda: len(master.pids("reopen")) == 6, what="3 more reopens")
    time.sleep(0.2)
    assert master.poll() is None and len(master.pids()) == 2 and not master.pids("stop")
    master.send(signal.SIGTERM)
    assert master.wait_exit()[0] == 0


def test_sigusr1_without_log_files_is_logged(start):
    master = start(idle_job, workers=1)
    master.wait_until(lambda: len(master.pids()) == 1, what="a worker")
    master.send(signal.SIGUSR1)
    master.wait_until(lambda: "SIGUSR1 received (no log file" in master.log(), what="the line")
    time.sleep(0.2)
    assert master.poll() is None and len(master.pids()) == 1 and not master.pids("stop")
    master.send(signal.SIGTERM)
    assert master.wait_exit()[0] == 0


def test_workers_exit_when_the_master_dies(start):
    master = start(idle_job, workers=2, timeout=1.0)  # idle workers look up every 0.25 s
    master.wait_until(lambda: len(master.pids()) == 2, what="2 workers")
    master.send(signal.SIGKILL)
    master.wait_exit()
    master.wait_until(lambda: len(master.pids("stop")) == 2, timeout=3, what="orphans to exit")
