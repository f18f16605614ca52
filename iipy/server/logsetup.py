"""Logging as iipsrv does it: LOGFILE (appended; ``syslog``; ``-`` for standard error)
and VERBOSITY (0 silent, 1 start-up summary and errors, 2 one line per request, 3 and
more: details).

With IIPY_LOG_FORMAT=json every line is one JSON object: ``time`` (UTC, ISO 8601 with
milliseconds), ``level``, ``pid``, then either the fields of a request (a record with
an ``iipy_fields`` attribute, see ``iipy.protocols.router``) or ``logger`` and
``message`` (and ``exception``, the traceback, when there is one).

:func:`reopen` closes LOGFILE and opens it again under its name: the supervisor calls
it on SIGUSR1 in the master and in every worker, so that after logrotate has renamed
the file (and sent the signal) new lines go to a new file.
"""

from __future__ import annotations

import datetime
import json
import logging
import logging.handlers
import sys

from iipy.settings import Settings

STARTUP = "iipy.startup"

log = logging.getLogger(__name__)


class LogFile(logging.FileHandler):
    """LOGFILE, appended to, and reopened on request."""

    def reopen(self) -> None:
        """Open the file's name again and switch to it; keep the old stream if that fails."""
        try:
            stream = self._open()
        except OSError as exc:
            log.warning("cannot reopen %s (%s): still writing to the file already open",
                        self.baseFilename, exc.strerror or exc)
            return
        self.acquire()
        try:
            old, self.stream = self.stream, stream
            if old is not None:
                old.close()
        finally:
            self.release()


def reopen() -> None:
    """Reopen LOGFILE if logging goes to a file (syslog and standard error need nothing)."""
    for handler in logging.getLogger("iipy").handlers:
        if isinstance(handler, LogFile):
            handler.reopen()


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
            handler = LogFile(settings.logfile, delay=False, encoding="utf-8",
                              errors="backslashreplace")
    except OSError:
        root.addHandler(logging.NullHandler())  # as iipsrv: no log if it cannot be opened
        root.setLevel(logging.CRITICAL + 1)
        return
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s iipy[%(process)d] %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel({1: logging.WARNING, 2: logging.INFO}.get(settings.verbosity, logging.DEBUG))
    logging.getLogger(STARTUP).setLevel(logging.INFO)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (see the module's docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
        out: dict[str, object] = {
            "time": stamp.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (stamp.microsecond // 1000),
            "level": record.levelname,
            "pid": record.process,
        }
        fields = getattr(record, "iipy_fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        else:
            out["logger"] = record.name
            out["message"] = record.getMessage()
            if record.exc_info:
                out["exception"] = self.formatException(record.exc_info)
        # ensure_ascii: undecodable request bytes (surrogate escapes) stay valid JSON
        return json.dumps(out, ensure_ascii=True, separators=(",", ":"))
