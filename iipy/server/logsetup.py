"""Logging as iipsrv does it: LOGFILE (appended; ``syslog``; ``-`` for standard error)
and VERBOSITY (0 silent, 1 start-up summary and errors, 2 one line per request, 3 and
more: details)."""

from __future__ import annotations

import logging
import logging.handlers
import sys

from iipy.settings import Settings

STARTUP = "iipy.startup"


def configure(settings: Settings) -> None:
    root = logging.getLogger("iipy")
    root.handlers.clear()
    root.propagate = False
    if settings.verbosity <= 0:
        root.addHandler(logging.NullHandler())
        root.setLevel(logging.CRITICAL + 1)
        return
    try:
        if settings.logfile == "syslog":
            handler: logging.Handler = logging.handlers.SysLogHandler(address="/dev/log")
        elif settings.logfile == "-":
            handler = logging.StreamHandler(sys.stderr)
            sys.stderr.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
        else:
            # requests may carry any bytes (surrogate escapes): never fail on them
            handler = logging.FileHandler(settings.logfile, delay=False, encoding="utf-8",
                                          errors="backslashreplace")
    except OSError:
        root.addHandler(logging.NullHandler())  # as iipsrv: no log if it cannot be opened
        root.setLevel(logging.CRITICAL + 1)
        return
    handler.setFormatter(logging.Formatter(
        "%(asctime)s iipy[%(process)d] %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel({1: logging.WARNING, 2: logging.INFO}.get(settings.verbosity, logging.DEBUG))
    logging.getLogger(STARTUP).setLevel(logging.INFO)
