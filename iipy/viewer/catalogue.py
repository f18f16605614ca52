"""What ``iipy serve`` serves: the folders and files given on its command line (each
folder one FILESYSTEM_PREFIX), the list of images, and the routing of each IIP request
to the folder it names.  A request naming anything else is refused."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from iipy.imaging.paths import split_selector, strip_dotdot
from iipy.protocols.iip.parser import parse

#: File names listed as images (``.fz``: tile-compressed with fpack).
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.fz", ".fit.fz", ".fts.fz")
#: Most images listed from the folders (a folder may hold a whole archive).
MAX_LISTED = 5000
#: Commands whose argument names a file, like FIF (IIIF, Zoomify, DeepZoom): allowed
#: only when one whole folder is served, where the application confines them itself.
_PATH_COMMANDS = frozenset({"iiif", "zoomify", "deepzoom"})


class ServeError(Exception):
    """A problem with the command line: printed, exit status 2."""


@dataclass(frozen=True)
class Root:
    """One folder served as a FILESYSTEM_PREFIX.

    ``files`` are the names given on the command line when only those may be served
    (files, not folders, were given), None when the whole folder is served.
    """

    label: str
    directory: str
    files: frozenset[str] | None

    @property
    def prefix(self) -> str:
        return self.directory.rstrip("/") + "/"


def _is_fits_name(name: str) -> bool:
    return name.lower().endswith(FITS_SUFFIXES)


def build_roots(paths: list[str]) -> list[Root]:
    """The roots for the command line's paths: one per folder, files grouped by folder.

    A path may end with an extension selector (``mosaic.fits[2]``).  Raises
    :class:`ServeError` for a path that does not exist.
    """
    folders: dict[str, set[str] | None] = {}
    for given in paths:
        path, selector = given, ""
        if not os.path.exists(path):
            path, selector = split_selector(given)
            if not selector or not os.path.isfile(path):
                raise ServeError("%s: no such file or folder" % given)
        real = os.path.realpath(path)
        if os.path.isdir(real):
            folders[real] = None
        elif os.path.isfile(real):
            # A symbolic link is followed: its target's folder is the one served.
            directory = os.path.dirname(real)
            name = os.path.basename(real) + ("[%s]" % selector if selector else "")
            if directory in folders and folders[directory] is None:
                continue  # the whole folder is served already
            folders.setdefault(directory, set()).add(name)  # type: ignore[union-attr]
        else:
            raise ServeError("%s: not a regular file or folder" % given)
    if not folders:
        raise ServeError("nothing to serve")
    roots = []
    used: set[str] = set()
    for directory in sorted(folders):
        base = os.path.basename(directory.rstrip("/")) or "root"
        label, n = base, 1
        while label in used:
            n += 1
            label = "%s-%d" % (base, n)
        used.add(label)
        files = folders[directory]
        roots.append(Root(label if len(folders) > 1 else "", directory,
                          None if files is None else frozenset(files)))
    return roots


def _without_selector(name: str) -> str:
    return split_selector(name)[0]


def encode_fif(path: str) -> str:
    """A FIF value that the application's URL decoding turns back into ``path``."""
    return quote(path.encode("utf-8", "surrogateescape"), safe="/[],;:=@!$'()*~")


class Catalogue:
    """The roots, the image list and the routing of IIP requests to a root."""

    def __init__(self, roots: list[Root]):
        self.roots = roots
        self._by_label = {root.label: i for i, root in enumerate(roots)}
        self._passthrough = len(roots) == 1 and roots[0].files is None
        # The file names that may be opened in each root (selectors removed).
        self._allowed = [None if root.files is None else frozenset(
            _without_selector(name) for name in root.files) for root in roots]

    def fif(self, root: Root, relative: str) -> str:
        return root.label + "/" + relative if root.label else relative

    def images(self, limit: int = MAX_LISTED) -> tuple[list[dict[str, Any]], bool]:
        """``([{fif, name, folder, bytes}, ...], truncated)``, sorted, FITS files only."""
        found: list[dict[str, Any]] = []
        for root in self.roots:
            names: list[str]
            if root.files is not None:
                names = sorted(root.files)
            else:
                names = list(_walk_fits(root.directory, limit - len(found) + 1))
            for name in names:
                if len(found) > limit:
                    break
                try:
                    size = os.stat(os.path.join(root.directory, _without_selector(name))).st_size
                except OSError:
                    continue
                found.append({"fif": self.fif(root, name), "name": name,
                              "folder": root.label or os.path.basename(root.directory),
                              "bytes": size})
        truncated = len(found) > limit
        return found[:limit], truncated

    def route(self, query: str) -> tuple[int, str] | None:
        """``(root index, query for that root's application)``, or None if the
        request names something that is not served.  The query is read by the IIP
        parser itself, so every form it accepts (a bare ``FIF`` token included) is
        checked."""
        if self._passthrough:
            return 0, query
        target: int | None = None
        tokens = []
        for cmd in parse(query).commands:
            if cmd.name in _PATH_COMMANDS:
                return None
            if cmd.name != "fif":
                tokens.append(cmd.raw_name + "=" + cmd.arg)
                continue
            if len(self.roots) == 1:
                index, relative = 0, cmd.arg
            else:
                label, slash, relative = cmd.arg.partition("/")
                index = self._by_label.get(label, -1)
                if not slash or index < 0:
                    return None
            allowed = self._allowed[index]
            if allowed is not None and split_selector(strip_dotdot(relative))[0] not in allowed:
                return None
            if target is not None and index != target:
                return None
            target = index
            tokens.append(cmd.raw_name + "=" + encode_fif(relative))
        return (target or 0), "&".join(tokens)


def _walk_fits(directory: str, limit: int):
    """FITS file names below ``directory`` (relative, sorted, hidden entries and links
    leading out of it skipped)."""
    count = 0
    inside = directory.rstrip("/") + "/"
    for top, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = os.path.relpath(top, directory)
        for name in sorted(files):
            if name.startswith(".") or not _is_fits_name(name):
                continue
            if not os.path.realpath(os.path.join(top, name)).startswith(inside):
                continue  # a link out of the folder: the application would refuse it
            yield name if rel == "." else os.path.join(rel, name)
            count += 1
            if count >= limit:
                return
