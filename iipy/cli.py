"""``iipy``: the command for people.

  iipy --version
  iipy serve PATH...           look at FITS files or folders in a browser (no web server needed)
  iipy info FILE.fits[EXT]     what the server reports for a file (OBJ answers, header)
  iipy pyramid FILE.fits...    build the reduced levels ahead of the first request
  iipy settings [--rst]        every setting, its effective value (or the README table)
  iipy cache [--prune]         the pyramid directory: size, bound, each pyramid; prune it
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.parse

from iipy import __version__

METADATA_OBJECTS = ("IIP,1.0", "max-size", "tile-size", "resolution-number",
                    "bits-per-channel", "min-max-sample-values", "resolutions")


def fif_argument(fif: str) -> str:
    """A FIF value as it must appear in a query string: percent-encoded (UTF-8, the
    undecodable bytes of a file name kept) wherever the request syntax would change it
    (``&`` ends a command, ``+`` is a space, ``%`` starts an escape), so that the
    parser's decoding gives back ``fif`` itself (docs/protocol.md §3.2)."""
    return urllib.parse.quote(fif.encode("utf-8", "surrogateescape"), safe="/[]*,:;=@!$'()~")


def cmd_info(args: argparse.Namespace) -> int:
    from iipy.protocols.router import Application
    from iipy.imaging.paths import resolve, split_selector
    from iipy.imaging.sources.fits import FitsImage
    from iipy.imaging.sources.tiff import TiffImage
    from iipy.settings import Settings

    name, selector = split_selector(args.file)
    path = os.path.abspath(name)
    settings = Settings.from_environ().replace(
        filesystem_prefix=os.path.dirname(path) + "/", filesystem_suffix="", verbosity=0)
    fif = os.path.basename(path) + ("[%s]" % selector if selector else "")
    app = Application(settings)
    query = "FIF=" + fif_argument(fif) + "".join("&obj=" + o for o in METADATA_OBJECTS)
    response = app.handle({"QUERY_STRING": query})
    if response.status != 200:
        sys.stderr.write("iipy info: %s: %s\n" % (args.file, response.body.decode(
            "utf-8", "replace").strip() or response.status))
        return 1
    sys.stdout.write(response.body.decode("utf-8", "replace").replace("\r\n", "\n"))
    source = app.store.open(resolve(fif, settings)).source
    labels = getattr(source, "labels", None)  # FITS channel labels
    print("Channels:%d%s" % (source.channels, "".join(
        " " + (label or "-") for label in labels) if labels and source.channels > 1 else ""))
    if isinstance(source, FitsImage):
        bscale, bzero, blank = source.scaling
        print("BITPIX:%d BSCALE:%g BZERO:%g BLANK:%s" % (source.bitpix, bscale, bzero, blank))
    elif isinstance(source, TiffImage):
        print("TIFF:%s samples, %s, %d levels stored" % (source.dtype, source.colourspace,
                                                          len(source.levels)))
    if args.header:
        subject = source.metadata("subject")
        print("subject (%d bytes):" % len(subject))
        for i in range(0, len(subject), 80):
            print("  " + subject[i : i + 80].rstrip())
    return 0


def cmd_pyramid(args: argparse.Namespace) -> int:
    """Build the shared pyramid of each file in IIPY_CACHE_DIR, as the server would on the
    first request, with a progress bar; a pyramid already there is only checked, and a
    TIFF, which holds its levels, is only opened."""
    import time

    from iipy.errors import IIPyError
    from iipy.imaging.paths import resolve, split_selector
    from iipy.imaging.pyramid import Pyramid
    from iipy.imaging.store import ImageStore
    from iipy.settings import Settings
    from iipy.viewer.progress import Progress

    base = Settings.from_environ().replace(filesystem_suffix="", verbosity=0)
    failed = 0
    for given in args.files:
        name, selector = split_selector(given)
        path = os.path.abspath(name)
        settings = base.replace(filesystem_prefix=os.path.dirname(path) + "/")
        fif = os.path.basename(path) + ("[%s]" % selector if selector else "")
        store = ImageStore(settings, progress=Progress(sys.stderr))
        start = time.monotonic()
        try:
            image = store.open(resolve(fif, settings))
            ranges = image.ranges  # builds (or loads) the pyramid
            if isinstance(image.pyramid, Pyramid):
                image.pyramid.complete()  # level 1 too, which the server writes later
        except IIPyError as exc:
            sys.stderr.write("iipy pyramid: %s: %s\n" % (given, exc.message))
            failed += 1
            continue
        if not isinstance(image.pyramid, Pyramid):  # a TIFF: its levels are in the file
            where = "the file"
        elif not image.pyramid.on_disk:
            sys.stderr.write("iipy pyramid: %s: not written to %s: %s\n" % (
                given, settings.cache_dir, image.pyramid.not_on_disk))
            failed += 1
            continue
        else:
            where = settings.cache_dir
        print("%s: %d levels in %s, display range %s (%.2f s)" % (
            given, image.grid.num_resolutions, where,
            ", ".join("%.6g..%.6g" % (r.lo, r.hi) for r in ranges),
            time.monotonic() - start))
    return 1 if failed else 0


def cmd_settings(args: argparse.Namespace) -> int:
    from iipy.settings import Settings, settings_table_rst

    if args.rst:
        print(settings_table_rst())
        return 0
    for name, value in Settings.from_environ().describe():
        print("%s=%s" % (name, oct(value) if name == "IIPY_SOCKET_MODE" else value))
    return 0


def _megabytes(n: int) -> str:
    return "%.1f MB" % (n / 1048576)


def cmd_cache(args: argparse.Namespace) -> int:
    import time

    from iipy.imaging import pyramid_dir
    from iipy.settings import Settings

    settings = Settings.from_environ()
    cache_dir = settings.cache_dir
    max_mb = args.max_mb if args.max_mb is not None else settings.cache_dir_max_mb
    bound = pyramid_dir.bound_bytes(cache_dir, max_mb)
    if args.prune:
        for gone in pyramid_dir.clean(cache_dir, bound):
            print("removed %s (%s, %s): %s" % (gone.key, gone.reason, _megabytes(gone.bytes),
                                                gone.image or "-"))
    entries = pyramid_dir.scan(cache_dir)
    exists = os.path.isdir(cache_dir)
    print("Directory: %s%s" % (cache_dir, "" if exists else " (does not exist)"))
    print("Size: %s in %d pyramid(s); bound %s (%s)" % (
        _megabytes(sum(e.bytes for e in entries)), sum(1 for e in entries if e.has_dir),
        _megabytes(bound), pyramid_dir.describe_bound(max_mb)))
    if not entries:
        return 0
    now = time.time()
    rows = [("SIZE", "LAST USE", "STATE", "IMAGE")]
    for e in sorted(entries, key=lambda e: e.last_use, reverse=True):
        if pyramid_dir.in_use(e):
            state = "in use" if e.meta is not None else "being built"
        else:
            state = e.stale(now) or ("complete" if e.meta is not None else
                                     "incomplete" if e.has_dir else "lock file only")
        rows.append((_megabytes(e.bytes),
                     time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.last_use)),
                     state, e.image or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for size, used, state, image in rows:
        print("%s  %s  %s  %s" % (size.rjust(widths[0]), used.ljust(widths[1]),
                                  state.ljust(widths[2]), image))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from iipy.viewer import command

    return command.main(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="iipy", description="image server for FITS and pyramidal TIFF files "
        "(IIP, IIIF, DeepZoom, Zoomify)")
    parser.add_argument("--version", action="version", version="iipy " + __version__)
    sub = parser.add_subparsers(dest="command")
    from iipy.viewer.command import add_arguments as serve_arguments

    p = sub.add_parser("serve", help="serve FITS files or folders with a viewer page on "
                       "127.0.0.1 (no web server needed)",
                       description="Serve the given FITS files and folders (only those) "
                       "on 127.0.0.1 with a built-in HTTP front end and a viewer page; "
                       "prints the URL. Ctrl-C stops it.")
    serve_arguments(p)
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("info", help="show what the server reports for a FITS or TIFF file")
    p.add_argument("file", help="FITS file, optionally with an extension selector: f.fits[2], "
                   "or tiled pyramidal TIFF")
    p.add_argument("--header", action="store_true", help="also print the header sent as subject")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("pyramid", help="build the reduced resolution levels of FITS files "
                       "ahead of their first request",
                       description="Build the shared pyramid of each file in IIPY_CACHE_DIR "
                       "(the directory the server uses), so that the first view of a large "
                       "file does not wait for it.")
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="FITS file, optionally with an extension selector: f.fits[2]")
    p.set_defaults(func=cmd_pyramid)
    p = sub.add_parser("settings", help="list the settings and their effective values")
    p.add_argument("--rst", action="store_true", help="print the README table instead")
    p.set_defaults(func=cmd_settings)
    p = sub.add_parser("cache", help="show the pyramid directory (IIPY_CACHE_DIR) and prune it",
                       description="Print IIPY_CACHE_DIR, its size and bound, and each "
                       "pyramid (size, last use, state, image), most recently used first. "
                       "--prune first removes pyramids of changed or removed images, "
                       "leftovers of builds that died, and the least recently used "
                       "pyramids beyond the bound; pyramids in use are kept.")
    p.add_argument("--prune", action="store_true",
                   help="remove stale entries and evict down to the bound")
    p.add_argument("--max-mb", type=int, metavar="N",
                   help="bound in MB (default: IIPY_CACHE_DIR_MAX_MB; 0: automatic)")
    p.set_defaults(func=cmd_cache)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
