"""Pre-fork supervisor: one master process and N worker processes sharing a socket.

The master binds nothing and serves nothing: it receives an already listening
socket, forks the workers, and then only supervises them.  It knows nothing about
FastCGI; a worker runs ``job(sock, ctx)``, where ``ctx`` is the
:class:`WorkerContext` that connects the job to the supervisor.

Why our own supervisor rather than flup's ``PreforkServer`` (ARCHITECTURE.md, "flup"): on
Python 3 flup's pool never grows, SIGUSR1 crashes its master, and SIGTERM/SIGHUP
wait for the next request.  Here:

* Signal handlers only enqueue the signal number; ``signal.set_wakeup_fd`` wakes the
  master's ``select`` (which never waits more than one tick), and the main loop
  acts on the queue.  SIGCHLD wakes the loop too, so dead workers are reaped and
  replaced at once.
* Workers report a heartbeat through an anonymous shared memory map: each one
  writes ``time.monotonic()`` into its own slot while it waits for work and at the
  start of every request, without a system call.  A worker silent for longer than
  ``settings.timeout`` is busy on one request for too long (or stuck): it gets
  SIGABRT (it logs where it was and exits), then SIGKILL after a grace period, and
  is replaced.
* A worker that fails before it calls ``ctx.ready()`` exits with
  :data:`WORKER_BOOT_ERROR`; the master then stops every worker and returns that
  status instead of forking replacements in a loop.
* ``settings.max_requests`` recycles a worker after that many requests plus up to
  10 % random jitter, so workers started together do not all restart together;
  ``settings.max_rss_mb`` recycles a worker whose anonymous resident memory (see
  :func:`anonymous_rss`) exceeds it after a request.  A recycled worker finishes the
  request in hand and exits with :data:`WORKER_RECYCLED`; the master logs it as
  recycled, not as a death, and forks its replacement at once.

Signals understood by the master:

=============  ==============================================================
SIGTERM/INT    stop accepting, let requests in progress finish, exit 0
SIGHUP         fork a new set of workers; the old ones finish their current
               request and exit
SIGTTIN/TTOU   one worker more / one fewer
SIGUSR1        reopen the log files (the ``reopen_logs`` callable), then send
               SIGUSR1 to every worker, which does the same between requests
=============  ==============================================================

Workers treat SIGTERM and SIGINT as "finish the current request, then exit",
SIGUSR1 as "reopen the log files before waiting for the next request", ignore the
other master-only signals, and exit by themselves when the master is gone.
"""

from __future__ import annotations

import collections
import logging
import mmap
import os
import random
import select
import signal
import socket
import sys
import time
import traceback
from dataclasses import dataclass
from types import FrameType
from typing import Any, Callable, NoReturn, Protocol, Sequence

log = logging.getLogger(__name__)

#: Exit status of a worker that failed before ``ctx.ready()``; also the master's.
WORKER_BOOT_ERROR = 3
#: Exit status of a worker whose job raised after it was ready.
WORKER_CRASHED = 1
#: Exit status of a worker stopped by SIGABRT after the heartbeat timeout.
WORKER_TIMED_OUT = 1
#: Exit status of a worker that retired itself (max requests, max resident memory).
WORKER_RECYCLED = 4

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_MASTER_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGUSR1,
    signal.SIGCHLD,
)
#: Signals that only mean something to the master; a worker must survive them
#: (a terminal hang-up or a ``kill -HUP`` sent to the whole process group).
_WORKER_IGNORED = (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU)
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class _Settings(Protocol):
    workers: int
    timeout: float
    max_requests: int
    max_rss_mb: int


class _Pollable(Protocol):
    def fileno(self) -> int: ...


Job = Callable[[socket.socket, "WorkerContext"], None]


def anonymous_rss() -> int:
    """This process's resident memory not backed by a file, in bytes (0 if unknown).

    ``resident - shared`` of ``/proc/self/statm``, i.e. RssAnon: the heap, arrays and
    the pages still shared copy-on-write with the master.  Pages of memory-mapped
    files (FITS data, pyramid levels, libraries) are left out: they are the kernel's
    page cache, shared by every worker and reclaimable, not the worker's growth.
    """
    try:
        with open("/proc/self/statm", "rb") as f:
            fields = f.read().split()
        return max(0, int(fields[1]) - int(fields[2])) * _PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return 0


class HeartbeatBoard:
    """Last-heartbeat times of the workers, one float64 slot each, shared across fork().

    The map is anonymous and ``MAP_SHARED``, so a worker's write is visible to the
    master without any system call on either side.  ``time.monotonic()`` reads
    CLOCK_MONOTONIC, which is the same clock in every process of the machine.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._map = mmap.mmap(-1, 8 * capacity)
        self._slots = memoryview(self._map).cast("d")

    def beat(self, slot: int, now: float | None = None) -> None:
        self._slots[slot] = time.monotonic() if now is None else now

    def last(self, slot: int) -> float:
        return float(self._slots[slot])

    def close(self) -> None:
        self._slots.release()
        self._map.close()


def _drain_pipe(fd: int) -> None:
    """Empty a non-blocking wake-up pipe (its bytes are signal numbers we do not need)."""
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _wake_pipe() -> tuple[int, int]:
    """A non-blocking, close-on-exec pipe for ``signal.set_wakeup_fd``."""
    return os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)


class WorkerContext:
    """The supervisor as seen by a job running in a worker process.

    A job must call :meth:`ready` once it has loaded what it needs (before that, an
    exception is a boot failure that stops the whole server), then loop while
    :attr:`alive`, waiting for work with :meth:`wait` (which also keeps the
    heartbeat going), calling :meth:`notify` when a request starts and
    :meth:`request_done` when it ends.
    """

    def __init__(
        self,
        worker_id: int,
        board: HeartbeatBoard,
        slot: int,
        timeout: float,
        max_requests: int,
        master_pid: int,
        wake_fd: int,
        max_rss: int = 0,
        reopen_logs: Callable[[], None] | None = None,
    ) -> None:
        self.worker_id = worker_id
        #: This worker's slot on the shared boards (heartbeat, metrics).
        self.slot = slot
        self.pid = os.getpid()
        self.max_requests = max_requests
        #: Anonymous resident memory (bytes) above which the worker recycles; 0: no limit.
        self.max_rss = max_rss
        self.requests = 0
        #: Requests the web server gave up on before they started, skipped unserved.
        self.abandoned = 0
        self.booted = False
        #: True once the worker retires itself (exit status WORKER_RECYCLED).
        self.recycled = False
        self._reopen_logs = reopen_logs
        self._reopen_pending = False
        #: Idle heartbeat period: well inside the timeout, so idle workers never look hung.
        self.beat_interval = min(1.0, timeout / 4.0)
        self._board = board
        self._slot = slot
        self._master_pid = master_pid
        self._wake_fd = wake_fd
        self._alive = True

    @property
    def alive(self) -> bool:
        """False once the worker should exit after the request in progress."""
        return self._alive

    def ready(self) -> None:
        """Mark the end of the boot phase: later exceptions are crashes, not boot errors."""
        self.booted = True
        self.notify()
        log.debug("worker %d (pid %d) booted", self.worker_id, self.pid)

    def notify(self) -> None:
        """Heartbeat: tell the master this worker is not stuck."""
        self._board.beat(self._slot)

    def request_done(self) -> None:
        """Count one request; recycle the worker once its max-requests quota is used up
        or its memory is above the limit."""
        self.requests += 1
        if self.max_requests and self.requests >= self.max_requests:
            self.recycle("served %d requests" % self.requests)
        elif self.max_rss and (rss := anonymous_rss()) > self.max_rss:
            self.recycle("resident memory %.1f MB is above the limit of %d MB"
                         % (rss / (1 << 20), self.max_rss >> 20))

    def request_abandoned(self) -> None:
        """Count one request skipped because the web server gave up on it."""
        self.abandoned += 1
        self.notify()

    def recycle(self, reason: str) -> None:
        """Exit after the request in progress, to be replaced by a fresh worker."""
        if self._alive:
            self.recycled = True
        self.stop(reason + ", recycling")

    def request_reopen(self) -> None:
        """SIGUSR1: reopen the log files the next time the worker waits for work."""
        self._reopen_pending = True

    def stop(self, reason: str) -> None:
        """Ask the job to return after the request in progress."""
        if self._alive:
            log.info("worker %d (pid %d): %s", self.worker_id, self.pid, reason)
        self._alive = False

    def wait(self, readers: Sequence[_Pollable], timeout: float | None = None) -> list[Any]:
        """Wait until one of ``readers`` is readable; return those that are.

        Returns early (possibly with an empty list) when a signal arrives, so a
        SIGTERM interrupts an idle worker at once, and after at most
        :attr:`beat_interval` seconds, so the heartbeat keeps going while idle.
        Hang-ups and errors count as readable: reading then reports them.
        """
        self.notify()
        if self._reopen_pending:
            self._reopen_pending = False
            if self._reopen_logs is not None:
                self._reopen_logs()
                log.info("worker %d (pid %d): log files reopened", self.worker_id, self.pid)
        if os.getppid() != self._master_pid:
            self.stop("master process is gone, exiting")
        if not self._alive:
            return []
        limit = self.beat_interval if timeout is None else min(timeout, self.beat_interval)
        poller = select.poll()
        by_fd: dict[int, Any] = {}
        for reader in readers:
            fd = reader.fileno()
            by_fd[fd] = reader
            poller.register(fd, select.POLLIN)
        poller.register(self._wake_fd, select.POLLIN)
        events = poller.poll(limit * 1000.0)
        self.notify()
        ready = []
        for fd, _ in events:
            if fd == self._wake_fd:
                _drain_pipe(fd)
            else:
                ready.append(by_fd[fd])
        return ready


@dataclass(frozen=True, slots=True)
class WorkerState:
    """One worker as :meth:`Supervisor.snapshot` reports it."""

    worker_id: int
    pid: int
    slot: int
    retiring: bool  # told to finish its request and exit (recycle, scale-down)
    timed_out: bool  # aborted after its timeout
    last_beat: float  # time.monotonic() of its last heartbeat


@dataclass(frozen=True, slots=True)
class SupervisorState:
    """The supervisor as :meth:`Supervisor.snapshot` reports it."""

    target: int  # workers wanted
    stopping: bool
    workers: tuple[WorkerState, ...]
    #: worker life-cycle counts: started, recycled, timed_out, died, stopped
    events: dict[str, int]


@dataclass
class _WorkerRecord:
    """The master's view of one worker process."""

    pid: int
    worker_id: int
    slot: int
    retiring: bool = False  # sent SIGTERM by a recycle or a scale-down
    aborted_at: float | None = None  # when SIGABRT was sent for a timeout
    killed: bool = False  # SIGKILL sent


class Supervisor:
    """Fork ``settings.workers`` processes running ``job(sock, ctx)`` and keep them healthy.

    ``run(sock)`` returns the master's exit status: 0 after SIGTERM/SIGINT,
    :data:`WORKER_BOOT_ERROR` if a worker could not boot.  It closes the master's
    copy of ``sock`` when it stops.  ``reopen_logs``, if given, is called on SIGUSR1
    in the master and in every worker.
    """

    #: Longest wait of the master's loop, in seconds.
    tick = 1.0
    #: Seconds between SIGABRT and SIGKILL for a worker past its timeout.
    kill_grace = 1.0
    #: Heartbeat slots: the most workers that can exist at once (old and new during SIGHUP).
    capacity = 1024

    def __init__(self, job: Job, settings: _Settings,
                 reopen_logs: Callable[[], None] | None = None) -> None:
        self._job = job
        self._target = max(1, int(settings.workers))
        self._timeout = float(settings.timeout)
        self._max_requests = max(0, int(settings.max_requests))
        self._max_rss = max(0, int(settings.max_rss_mb)) << 20
        self._reopen_logs = reopen_logs
        self._workers: dict[int, _WorkerRecord] = {}
        self._signals: collections.deque[int] = collections.deque()
        self._free_slots = list(range(self.capacity - 1, -1, -1))
        self._next_id = 1
        self._stopping = False
        self._status = 0
        #: Worker life-cycle counts (see ``snapshot``).
        self._events: collections.Counter[str] = collections.Counter()
        self._pid = os.getpid()
        self._sock: socket.socket | None = None
        self._board: HeartbeatBoard | None = None
        self._wake_r = self._wake_w = -1
        self._saved_handlers: dict[int, Any] = {}
        self._saved_wakeup_fd = -1

    # ---- life cycle -------------------------------------------------------------

    def run(self, sock: socket.socket) -> int:
        """Supervise workers on ``sock`` until SIGTERM/SIGINT or a boot failure."""
        self._sock = sock
        self._pid = os.getpid()
        self._board = HeartbeatBoard(self.capacity)
        self._wake_r, self._wake_w = _wake_pipe()
        self._install_signal_handlers()
        log.info("master pid %d: starting %d worker(s), timeout %g s",
                 self._pid, self._target, self._timeout)
        if self._max_rss and anonymous_rss() >= self._max_rss:
            log.warning("IIPY_MAX_RSS_MB=%d is below the master's own resident memory "
                        "(%d MB): every worker will be recycled after each request",
                        self._max_rss >> 20, anonymous_rss() >> 20)
        try:
            self._manage_workers()
            while not self._stopping:
                self._sleep(self._tick())
                self._reap()
                self._dispatch_signals()
                if self._stopping:
                    break
                self._murder_hung_workers()
                self._manage_workers()
            self._shutdown()
        finally:
            self._restore_signal_handlers()
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._board.close()
        log.info("master pid %d: exiting with status %d", self._pid, self._status)
        return self._status

    def _tick(self) -> float:
        """Wake often enough to notice a hung worker about on time, even with short timeouts."""
        return min(self.tick, self._timeout / 2.0)

    def _shutdown(self) -> None:
        """Graceful stop: workers finish the request they are on; stragglers are killed."""
        if self._sock is not None:
            self._sock.close()  # the master's copy; workers keep theirs until they exit
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + self._timeout + self.kill_grace
        if self._workers:
            log.info("waiting for %d worker(s) to finish", len(self._workers))
        while self._workers and time.monotonic() < deadline:
            self._sleep(min(self._tick(), max(0.0, deadline - time.monotonic())))
            self._reap()
            self._signals.clear()
            self._murder_hung_workers()
        if self._workers:
            log.warning("killing %d worker(s) still running", len(self._workers))
            self._signal_all(signal.SIGKILL)
            for pid in list(self._workers):
                self._wait_for(pid)

    # ---- signals ------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        for signum in _MASTER_SIGNALS:
            self._saved_handlers[signum] = signal.signal(signum, self._enqueue_signal)
        self._saved_wakeup_fd = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)

    def _restore_signal_handlers(self) -> None:
        signal.set_wakeup_fd(self._saved_wakeup_fd)
        for signum, handler in self._saved_handlers.items():
            signal.signal(signum, handler)
        self._saved_handlers.clear()

    def _enqueue_signal(self, signum: int, frame: FrameType | None) -> None:
        """The only thing a master signal handler does: the loop acts later."""
        self._signals.append(signum)

    def _sleep(self, seconds: float) -> None:
        """Wait for a signal (the wake-up pipe) or for ``seconds``."""
        try:
            ready, _, _ = select.select([self._wake_r], [], [], seconds)
        except InterruptedError:  # pragma: no cover - PEP 475 retries select
            return
        if ready:
            _drain_pipe(self._wake_r)

    def _dispatch_signals(self) -> None:
        while self._signals:
            signum = self._signals.popleft()
            if signum in _STOP_SIGNALS:
                log.info("%s received: stopping", signal.Signals(signum).name)
                self._stopping = True
            elif signum == signal.SIGHUP:
                self._recycle_all()
            elif signum == signal.SIGTTIN:
                self._target = min(self._target + 1, self.capacity // 2)
                log.info("SIGTTIN: %d worker(s) wanted", self._target)
            elif signum == signal.SIGTTOU:
                self._target = max(1, self._target - 1)
                log.info("SIGTTOU: %d worker(s) wanted", self._target)
            elif signum == signal.SIGUSR1:
                self._reopen()
            # SIGCHLD only wakes the loop: _reap runs on every pass.

    def _reopen(self) -> None:
        """SIGUSR1: reopen the master's log files, then have every worker do the same."""
        if self._reopen_logs is not None:
            self._reopen_logs()
            log.info("SIGUSR1 received: log files reopened")
        else:
            log.info("SIGUSR1 received (no log file to reopen)")
        self._signal_all(signal.SIGUSR1)

    # ---- workers ------------------------------------------------------------------

    def _active(self) -> list[_WorkerRecord]:
        """Workers that are meant to keep running, oldest first."""
        return sorted((w for w in self._workers.values() if not w.retiring),
                      key=lambda w: w.worker_id)

    def _manage_workers(self) -> None:
        """Fork missing workers; retire the oldest extra ones."""
        active = self._active()
        for _ in range(self._target - len(active)):
            if not self._spawn():
                break
        for worker in active[: max(0, len(active) - self._target)]:
            self._retire(worker)

    def _recycle_all(self) -> None:
        """SIGHUP: new workers first, then the old ones finish their request and exit."""
        old = self._active()
        log.info("SIGHUP received: replacing %d worker(s)", len(old))
        for worker in old:
            worker.retiring = True
        self._manage_workers()
        for worker in old:
            self._kill(worker, signal.SIGTERM)

    def _retire(self, worker: _WorkerRecord) -> None:
        worker.retiring = True
        self._kill(worker, signal.SIGTERM)

    def _spawn(self) -> bool:
        """Fork one worker; False if that was impossible (logged)."""
        assert self._board is not None and self._sock is not None
        if not self._free_slots:
            log.error("cannot start another worker: %d already running", len(self._workers))
            return False
        slot = self._free_slots.pop()
        worker_id = self._next_id
        self._next_id += 1
        self._board.beat(slot)  # booting counts against the timeout too
        # Block our signals across fork(): the child must not run the master's
        # handlers between fork() and installing its own.
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _MASTER_SIGNALS)
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            self._free_slots.append(slot)
            log.error("fork failed: %s", exc)
            return False
        if pid == 0:
            self._worker_main(worker_id, slot, old_mask)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        self._workers[pid] = _WorkerRecord(pid=pid, worker_id=worker_id, slot=slot)
        self._events["started"] += 1
        log.debug("worker %d started, pid %d", worker_id, pid)
        return True

    def _kill(self, worker: _WorkerRecord, signum: int) -> None:
        try:
            os.kill(worker.pid, signum)
        except ProcessLookupError:
            pass

    def _signal_all(self, signum: int) -> None:
        for worker in list(self._workers.values()):
            self._kill(worker, signum)

    def _murder_hung_workers(self) -> None:
        """SIGABRT workers silent for longer than the timeout; SIGKILL them after a grace."""
        assert self._board is not None
        now = time.monotonic()
        for worker in list(self._workers.values()):
            silent = now - self._board.last(worker.slot)
            if silent <= self._timeout:
                continue
            if worker.aborted_at is None:
                log.error("worker %d (pid %d) silent for %.1f s (timeout %g s): aborting it",
                          worker.worker_id, worker.pid, silent, self._timeout)
                worker.aborted_at = now
                self._kill(worker, signal.SIGABRT)
            elif not worker.killed and now - worker.aborted_at >= self.kill_grace:
                log.error("worker %d (pid %d) ignored SIGABRT: killing it",
                          worker.worker_id, worker.pid)
                worker.killed = True
                self._kill(worker, signal.SIGKILL)

    def _reap(self) -> None:
        """Collect every exited child (no zombies) and account for it."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._forget(pid, status)

    def _wait_for(self, pid: int) -> None:
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            self._workers.pop(pid, None)
            return
        self._forget(pid, status)

    def _forget(self, pid: int, status: int) -> None:
        worker = self._workers.pop(pid, None)
        if worker is None:
            return
        self._free_slots.append(worker.slot)
        code = os.waitstatus_to_exitcode(status)
        self._events[_exit_kind(worker, code, self._stopping)] += 1
        what = "worker %d (pid %d)" % (worker.worker_id, pid)
        if code == WORKER_BOOT_ERROR:
            log.error("%s failed to boot: stopping", what)
            if not self._stopping:
                self._stopping = True
                self._status = WORKER_BOOT_ERROR
        elif worker.aborted_at is not None:
            log.warning("%s was stopped after its timeout (exit %d)", what, code)
        elif code == WORKER_RECYCLED:
            log.info("%s recycled", what)
        elif code < 0:
            log.warning("%s was killed by %s", what, signal.Signals(-code).name)
        elif code != 0:
            log.warning("%s exited with status %d", what, code)
        else:
            log.info("%s exited", what)

    def snapshot(self) -> SupervisorState | None:
        """The workers and their last heartbeats, for the metrics exporter's thread (it
        only reads: copying the dict's values is one step under the GIL).  None before
        ``run`` has set up its board."""
        board = self._board
        if board is None:
            return None
        workers = tuple(self._workers.values())
        return SupervisorState(
            self._target, self._stopping,
            tuple(WorkerState(w.worker_id, w.pid, w.slot, w.retiring, w.aborted_at is not None,
                              board.last(w.slot)) for w in workers),
            dict(self._events))

    # ---- inside a worker --------------------------------------------------------

    def _worker_main(self, worker_id: int, slot: int, old_mask: Any) -> NoReturn:
        """Run the job in the freshly forked child; never returns."""
        status = WORKER_BOOT_ERROR
        ctx: WorkerContext | None = None
        try:
            ctx = self._become_worker(worker_id, slot, old_mask)
            self._job(self._sock, ctx)  # type: ignore[arg-type]
            status = WORKER_RECYCLED if ctx.recycled else 0
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            if ctx is not None and ctx.booted:
                log.exception("worker %d (pid %d) crashed", worker_id, os.getpid())
                status = WORKER_CRASHED
            else:
                log.exception("worker %d (pid %d) failed to boot", worker_id, os.getpid())
                status = WORKER_BOOT_ERROR
        finally:
            _exit(status)

    def _become_worker(self, worker_id: int, slot: int, old_mask: Any) -> WorkerContext:
        """Drop the master's state, install the worker's signal handling, reseed."""
        assert self._board is not None
        signal.set_wakeup_fd(-1)
        os.close(self._wake_r)
        os.close(self._wake_w)
        for signum in _MASTER_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        for signum in _WORKER_IGNORED:
            signal.signal(signum, signal.SIG_IGN)
        wake_r, wake_w = _wake_pipe()
        fixed_mmap_threshold()
        max_requests = self._max_requests
        random.seed()
        if max_requests:
            max_requests += random.randint(0, max_requests // 10)
        ctx = WorkerContext(worker_id, self._board, slot, self._timeout, max_requests,
                            self._pid, wake_r, self._max_rss, self._reopen_logs)

        def on_stop(signum: int, frame: FrameType | None) -> None:
            ctx.stop("%s received, exiting after the request in progress"
                     % signal.Signals(signum).name)

        def on_abort(signum: int, frame: FrameType | None) -> None:
            log.error("worker %d (pid %d) timed out, exiting; it was at:\n%s",
                      worker_id, os.getpid(), _job_stack(frame))
            _exit(WORKER_TIMED_OUT)

        def on_usr1(signum: int, frame: FrameType | None) -> None:
            ctx.request_reopen()

        for signum in _STOP_SIGNALS:
            signal.signal(signum, on_stop)
        signal.signal(signal.SIGUSR1, on_usr1)
        signal.signal(signal.SIGABRT, on_abort)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        return ctx


#: glibc's M_MMAP_THRESHOLD parameter of mallopt().
_M_MMAP_THRESHOLD = -3
#: Allocations from this size on get their own mapping, given back to the system on free.
MMAP_THRESHOLD = 1 << 20


def fixed_mmap_threshold() -> bool:
    """Keep large buffers out of the heap for the worker's whole life.

    glibc raises its mmap threshold each time a mapped block is freed (up to 32 MiB), so
    after one large export the next buffers of that size come from the heap and stay
    there: a worker that once encoded a 5000x5000 picture kept ~70 MB of freed memory.
    A fixed threshold disables that adjustment.  Returns False where the C library has
    no mallopt (the worker then runs with its library's own policy)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):
        return False


def _exit_kind(worker: _WorkerRecord, code: int, stopping: bool) -> str:
    """How a worker's exit is counted: ``timed_out`` (killed by the master for its
    timeout), ``recycled`` (asked to go: status 0; or retired by itself, its quota of
    requests or memory used up: :data:`WORKER_RECYCLED`), ``stopped`` (server
    shutdown), ``died`` (anything else)."""
    if worker.aborted_at is not None:
        return "timed_out"
    if stopping and code != WORKER_BOOT_ERROR:
        return "stopped"
    if worker.retiring or code in (0, WORKER_RECYCLED):
        return "recycled"
    return "died"


def _job_stack(frame: FrameType | None) -> str:
    """The stack of the job at ``frame``, without the master's frames above the fork."""
    if frame is None:
        return "(not in Python code)"
    entries = list(traceback.extract_stack(frame))
    for i, entry in enumerate(entries):
        if entry.name == "_worker_main" and entry.filename == __file__:
            del entries[:i + 1]
            break
    return "".join(traceback.format_list(entries)).rstrip()


def _exit(status: int) -> NoReturn:
    """Leave a worker without running the master's cleanup (atexit, finally blocks, ...)."""
    try:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(status)
