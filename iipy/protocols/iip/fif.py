"""FIF (open an image, with the If-Modified-Since check) and SDS (choose the view of an
image sequence): docs/protocol.md §4.1, §5.1, §5.11."""

from __future__ import annotations

from iipy.errors import NotModified
from iipy.imaging.paths import resolve, sequence_ref
from iipy.imaging.store import OpenImage
from iipy.protocols.iip import parser
from iipy.protocols.iip.context import Context
from iipy.protocols.iip.parser import Command

def cmd_fif(ctx: Context, cmd: Command) -> None:
    ref = resolve(cmd.arg, ctx.settings)
    if ctx.if_modified_since is not None and ref.mtime <= ctx.if_modified_since:
        raise NotModified()
    ctx.opened(ref, ctx.store.open(ref))


def open_path(ctx: Context, path: str) -> OpenImage:
    """The image a path-like protocol (IIIF, DeepZoom, Zoomify) names, opened as FIF
    opens it (URL-decoded already; ``../`` removal, FILESYSTEM_PREFIX, confinement,
    If-Modified-Since), unless the request has already opened that path."""
    if ctx.image is None or ctx.ref is None or ctx.ref.fif != path:
        cmd_fif(ctx, Command("fif", "FIF", path))
    assert ctx.image is not None
    return ctx.image


def open_view(ctx: Context, horizontal: int, vertical: int) -> None:
    """Make the file of the current sequence at these view angles the image (SDS,
    JTLS); single files have one view and ignore the angles."""
    ref = ctx.ref
    if ref is None or ref.sequence is None or ref.angles == (horizontal, vertical):
        return
    new = sequence_ref(ref.fif, ref.selector, ref.sequence, horizontal, vertical,
                       ctx.settings)
    ctx.opened(new, ctx.store.open(new))


def cmd_sds(ctx: Context, cmd: Command) -> None:
    open_view(ctx, *parser.sds(cmd.arg))
