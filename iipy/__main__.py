"""``iipsrv.fcgi`` / ``python -m iipy``: the FastCGI server, started as iipsrv is.

Spawned by a web server (listening socket on fd 0) or standalone with
``--bind ADDRESS [--backlog N]``; configured by iipsrv's environment variables.
"""

from __future__ import annotations

import logging
import sys


def fcgi_main(argv: list[str] | None = None) -> None:
    from iipy import __version__
    from iipy.server import logsetup
    from iipy.settings import Settings

    argv = list(sys.argv if argv is None else argv)
    settings = Settings.from_environ()
    logsetup.configure(settings)
    log = logging.getLogger(logsetup.STARTUP)

    # Import the heavy modules before forking, so that the workers share their pages.
    from iipy.protocols import router
    from iipy.server import fcgi

    sock, where = fcgi.listener_from_argv(argv, settings)
    log.info("iipy %s starting: %s, %d workers", __version__, where, settings.workers)
    for name, value in settings.describe():
        log.info("  %s = %r", name, value)
    if not settings.filesystem_prefix:
        log.info("  FILESYSTEM_PREFIX is empty: any path this user can read can be served")
    fcgi.serve(lambda: router.Application(settings), settings, sock)


if __name__ == "__main__":
    fcgi_main()
