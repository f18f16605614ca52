"""Pyramid builds reported on the terminal while ``iipy serve`` runs."""

from __future__ import annotations

import re
import time
from typing import Callable, TextIO

class Progress:
    """The ``progress(what, fraction)`` callback of pyramid builds: a bar on a terminal,
    a few lines otherwise.  ``beat`` is called too, so that the supervisor sees a worker
    that builds as busy, not hung.

    The pyramid reports ``"<image>: level K of N"`` with the fraction of that level; the
    bar shows the whole build, each level weighted by its size (level K has a quarter
    of the pixels of level K - 1).
    """

    _LEVEL = re.compile(r"^(.*): level (\d+) of (\d+)$")

    def __init__(self, stream: TextIO, beat: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.stream = stream
        self.beat = beat
        self.clock = clock
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self._what = ""
        self._last = -1e9

    @classmethod
    def overall(cls, what: str, fraction: float) -> tuple[str, float, bool]:
        """(image, fraction of the whole build, finished) for one report."""
        match = cls._LEVEL.match(what)
        if match is None:
            return what, fraction, fraction >= 1.0
        name, level, count = match.group(1), int(match.group(2)), int(match.group(3))
        weights = [0.25 ** k for k in range(max(count, 1))]
        done = sum(weights[: level - 1]) + fraction * weights[min(level, count) - 1]
        return name, done / sum(weights), fraction >= 1.0 and level >= count

    def __call__(self, what: str, fraction: float) -> None:
        if self.beat is not None:
            self.beat()
        name, total, finished = self.overall(what, min(max(float(fraction), 0.0), 1.0))
        now = self.clock()
        new = name != self._what
        if not (new or finished) and now - self._last < (0.1 if self.tty else 2.0):
            return
        self._last = now
        self._what = name
        text = "iipy: building the reduced resolution levels of %s %3d%%" % (
            name, round(100 * total))
        try:
            if self.tty:
                width = 24
                filled = int(width * total)
                bar = "[" + "#" * filled + "-" * (width - filled) + "]"
                self.stream.write("\r\033[K%s %s%s" % (text, bar, " done\n" if finished else ""))
            else:
                self.stream.write(text + (" done" if finished else "") + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass  # the terminal went away: the server keeps serving
